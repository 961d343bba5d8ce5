//! The deployment artefacts are checked, not just written (issue 17, "Packaging and deployment"):
//! the Dockerfile (hadolint; its build stage's cargo command, run as written on exactly the files
//! `.dockerignore` lets through, builds a binary that runs and links only what the runtime image
//! has), the Kubernetes manifests (the Kubernetes schema, strict; every flag and variable one that
//! `ratchet` knows; the objects agree with each other), the Prometheus alerts (`promtool check
//! rules`, and `promtool test rules` with a unit test per alert), and the Grafana dashboard (every
//! metric its queries, and the alerts', name is one ratchet exports).
//!
//! The tools are pinned and installed by `scripts/test`: hadolint and kubernetes-validate (PyPI)
//! into `target/deploy-python`, named by `RATCHET_DEPLOY_PYTHONPATH`; promtool (Debian's
//! `prometheus`) on the PATH, or at `RATCHET_PROMTOOL`. A missing tool fails its test, saying how
//! to get it: nothing here skips.
//!
//! What it leaves out: `docker build` itself (no daemon here) and a cluster (the schema and the
//! cross-checks stand in for `kubectl apply`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic: that is how they fail

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The Kubernetes version whose schema the manifests must pass: the newest kubernetes-validate
/// 1.37.0 ships.
const KUBERNETES_VERSION: &str = "1.37.0";

/// Variables and flags the manifests and the image set that `ratchet` does not know yet, because
/// the part of issue 17 that adds them is on another branch. Each must still arrive: once one is
/// in `--help` this test fails until its entry is deleted here, so the list only shrinks.
/// `(name, why)`.
const PENDING: &[(&str, &str)] = &[];

/// The metrics a real server exports, by the names PromQL uses for them (a histogram by its base
/// name, whose series are `<name>_bucket`, `_sum` and `_count`), and which of them are
/// histograms: read off the `# TYPE` lines of a scrape of `ratchet serve` on PostgreSQL
/// (DATABASE_URL; the pool's `waiting` gauge and the revocation listener's are PostgreSQL's
/// only), on a database of its own, after an Issue, a Rotate, a replay (refused by the Rotate
/// limit) and an Introspect.
fn scraped_metrics() -> (BTreeSet<String>, BTreeSet<String>) {
    let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (server_url, _) = base.rsplit_once('/').expect("DATABASE_URL names a database");
    let database = format!("ratchet_deploy_{}", std::process::id());
    let url = format!("{server_url}/{database}");
    let migrate = run(Command::new(env!("CARGO_BIN_EXE_ratchet"))
        .arg("migrate")
        .env("DATABASE_URL", &url));
    assert!(migrate.status.success(), "ratchet migrate: {}", text(&migrate.stderr));
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (grpc, http) = (free_port(), free_port());
    let data = std::env::temp_dir().join(&database);
    let mut server = Command::new(env!("CARGO_BIN_EXE_ratchet"))
        .args(["serve", "--no-migrate"])
        .env("DATABASE_URL", &url)
        .env("RATCHET_LISTEN", format!("127.0.0.1:{grpc}"))
        .env("RATCHET_HTTP_LISTEN", format!("127.0.0.1:{http}"))
        .env("RATCHET_DATA_DIR", &data)
        // One rotation per family at once: the replay below is refused by the Rotate limit, so
        // that the refusals counter (labelled by caller, hence made at the first refusal) is in
        // the scrape.
        .env("RATCHET_ROTATE_BURST", "1")
        .env_remove("RATCHET_METRICS_LISTEN")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let scrape = runtime.block_on(async {
        use ratchet::grpc::pb::token_service_client::TokenServiceClient;
        use ratchet::grpc::pb::{IntrospectRequest, IssueRequest, RotateRequest};
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut client = loop {
            match TokenServiceClient::connect(format!("http://127.0.0.1:{grpc}")).await {
                Ok(client) => break client,
                Err(error) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the server never answered: {error}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        };
        let pair = client
            .issue(IssueRequest {
                subject: "alice".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let rotate = || RotateRequest {
            refresh_token: pair.refresh_token.clone(),
        };
        client.rotate(rotate()).await.unwrap();
        client.rotate(rotate()).await.unwrap_err();
        client
            .introspect(IntrospectRequest {
                token: pair.access_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", http)).await.unwrap();
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: ratchet\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    });
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&data);
    runtime.block_on(async {
        use sqlx::Connection as _;
        let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "drop database if exists {database} with (force)"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    });
    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    let mut names = BTreeSet::new();
    let mut histograms = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(typed) = line.strip_prefix("# TYPE ") {
            let mut words = typed.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            names.insert(name.to_owned());
            if kind == "histogram" {
                histograms.insert(name.to_owned());
            }
        }
    }
    (names, histograms)
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The directory the pinned Python tools are installed in (`scripts/test` does it).
fn deploy_python() -> PathBuf {
    let dir = std::env::var_os("RATCHET_DEPLOY_PYTHONPATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "RATCHET_DEPLOY_PYTHONPATH is not set: run scripts/test, which installs hadolint and \
             kubernetes-validate (pinned) into target/deploy-python and sets it"
            )
        });
    assert!(
        dir.join("bin/hadolint").is_file() && dir.join("kubernetes_validate").is_dir(),
        "{} lacks hadolint or kubernetes-validate: delete it and run scripts/test again",
        dir.display()
    );
    dir
}

/// `python3` with the pinned tools (and PyYAML, which kubernetes-validate brings) importable.
fn python() -> Command {
    let mut command = Command::new("python3");
    command.env("PYTHONPATH", deploy_python());
    command
}

/// promtool: `RATCHET_PROMTOOL`, else the one on the PATH.
fn promtool() -> Command {
    let path = std::env::var_os("RATCHET_PROMTOOL").unwrap_or_else(|| "promtool".into());
    let found = Command::new(&path).arg("--version").output();
    assert!(
        found.as_ref().is_ok_and(|out| out.status.success()),
        "promtool not found ({}): install Debian's `prometheus` package (scripts/test does, as root), \
         or set RATCHET_PROMTOOL",
        Path::new(&path).display()
    );
    Command::new(path)
}

/// Every YAML document in `files`, as JSON, each with the file it came from.
fn yaml_documents(files: &[PathBuf]) -> Vec<(PathBuf, Value)> {
    let script = "import json, sys, yaml\n\
                  json.dump([[f, d] for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d is not None], sys.stdout)";
    let out = run(python().arg("-c").arg(script).args(files));
    assert!(out.status.success(), "cannot parse YAML: {}", text(&out.stderr));
    let docs: Vec<(PathBuf, Value)> = serde_json::from_slice(&out.stdout).unwrap();
    docs
}

fn kubernetes_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// The manifests (every `.yaml` of `deploy/kubernetes` but the kustomization), sorted.
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(kubernetes_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .filter(|path| path.file_name().is_some_and(|name| name != "kustomization.yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/kubernetes");
    files
}

/// The manifests' objects by kind and name.
fn objects() -> BTreeMap<(String, String), Value> {
    let mut objects = BTreeMap::new();
    for (file, doc) in yaml_documents(&manifest_files()) {
        let kind = doc["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no kind", file.display()))
            .to_owned();
        let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
        assert!(
            objects.insert((kind.clone(), name.clone()), doc).is_none(),
            "{kind} {name} twice"
        );
    }
    objects
}

fn object<'a>(objects: &'a BTreeMap<(String, String), Value>, kind: &str, name: &str) -> &'a Value {
    objects
        .get(&(kind.to_owned(), name.to_owned()))
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

// ----------------------------------------------------------------------------------------------
// The Dockerfile

/// One instruction of a Dockerfile: its keyword (upper case) and the rest, continuation lines
/// joined.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

/// The Dockerfile's instructions, split into stages (each starts with its `FROM`).
fn dockerfile_stages() -> Vec<Vec<Instruction>> {
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    let mut logical = String::new();
    for line in read(&repo().join("Dockerfile")).lines() {
        let line = line.trim();
        if logical.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if line.starts_with('#') {
            continue; // a comment between continuation lines
        }
        if let Some(head) = line.strip_suffix('\\') {
            logical.push_str(head);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let (keyword, args) = logical.split_once(char::is_whitespace).unwrap_or((&logical, ""));
        let instruction = Instruction {
            keyword: keyword.to_uppercase(),
            args: args.split_whitespace().collect::<Vec<_>>().join(" "),
        };
        if instruction.keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("a Dockerfile starts with FROM")
            .push(instruction);
        logical.clear();
    }
    stages
}

fn stage_named<'a>(stages: &'a [Vec<Instruction>], name: &str) -> &'a [Instruction] {
    stages
        .iter()
        .find(|stage| stage[0].args.to_lowercase().ends_with(&format!(" as {name}")))
        .unwrap_or_else(|| panic!("no stage `AS {name}` in the Dockerfile"))
}

/// The shell commands of a `RUN` (options such as `--mount=` dropped), split at `&&`.
fn run_commands(instruction: &Instruction) -> Vec<String> {
    let words: Vec<&str> = instruction
        .args
        .split(' ')
        .skip_while(|word| word.starts_with("--"))
        .collect();
    words
        .join(" ")
        .split("&&")
        .map(|command| command.trim().to_owned())
        .collect()
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let hadolint = deploy_python().join("bin/hadolint");
    let out = run(Command::new(&hadolint)
        .args(["--no-color", "Dockerfile"])
        .current_dir(repo()));
    assert!(
        out.status.success(),
        "hadolint found problems in the Dockerfile:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let version = run(Command::new(&hadolint).arg("--version"));
    assert!(
        text(&version.stdout).contains("2.15.1"),
        "hadolint is not the pinned 2.15.1"
    );
}

#[test]
fn the_runtime_image_runs_as_a_numeric_non_root_user_exposes_its_listeners_and_has_no_healthcheck() {
    let stages = dockerfile_stages();
    let runtime = stages.last().unwrap();
    let all: Vec<&Instruction> = stages.iter().flatten().collect();
    assert!(
        all.iter().all(|i| i.keyword != "HEALTHCHECK"),
        "the image must have no HEALTHCHECK: Kubernetes probes the gRPC health service"
    );
    let user = runtime
        .iter()
        .rev()
        .find(|i| i.keyword == "USER")
        .expect("the runtime stage sets USER");
    let uid = user.args.split(':').next().unwrap();
    // Kubernetes' runAsNonRoot can only check a numeric user.
    assert!(
        uid.parse::<u32>().is_ok_and(|uid| uid != 0),
        "USER {} is not a numeric non-root user",
        user.args
    );
    // Every listener the image configures is exposed.
    let exposed: BTreeSet<&str> = runtime
        .iter()
        .filter(|i| i.keyword == "EXPOSE")
        .flat_map(|i| i.args.split(' '))
        .collect();
    let env = runtime
        .iter()
        .filter(|i| i.keyword == "ENV")
        .map(|i| i.args.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let listens: Vec<&str> = env
        .split(' ')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(name, _)| name.ends_with("_LISTEN"))
        .map(|(_, addr)| addr.rsplit(':').next().unwrap())
        .collect();
    assert_eq!(
        listens.len(),
        3,
        "gRPC, HTTP and metrics listeners in the image's ENV: {env}"
    );
    for port in listens {
        assert!(exposed.contains(port), "port {port} is listened on but not EXPOSEd");
    }
    // What the runtime stage copies from the build stage, the build stage makes.
    let build = stage_named(&stages, "build");
    let made: Vec<String> = build
        .iter()
        .filter(|i| i.keyword == "RUN")
        .flat_map(run_commands)
        .filter_map(|command| command.split(' ').next_back().map(str::to_owned))
        .collect();
    for copy in runtime
        .iter()
        .filter(|i| i.keyword == "COPY" && i.args.contains("--from=build"))
    {
        let source = copy.args.split(' ').rev().nth(1).unwrap();
        assert!(
            made.iter().any(|m| m == source),
            "the runtime stage copies {source}, which the build stage does not make"
        );
    }
}

/// `.dockerignore` as Docker applies it, for the patterns it uses: `name`, `dir/name`, `*` within
/// a path element, and a leading `**/`. Anything else fails the test rather than be misread.
fn docker_ignored(patterns: &[String], path: &str) -> bool {
    fn glob(pattern: &str, name: &str) -> bool {
        match pattern.split_once('*') {
            None => pattern == name,
            Some((head, tail)) => {
                name.starts_with(head)
                    && (head.len()..=name.len()).any(|at| name.is_char_boundary(at) && glob(tail, &name[at..]))
            }
        }
    }
    // A pattern matches a path or any directory above it.
    fn matches(pattern: &[&str], path: &[&str]) -> bool {
        match (pattern.first(), path.first()) {
            (Some(&"**"), _) => (0..=path.len()).any(|skip| matches(&pattern[1..], &path[skip..])),
            (None, _) => true,
            (Some(_), None) => false,
            (Some(p), Some(name)) => glob(p, name) && matches(&pattern[1..], &path[1..]),
        }
    }
    let elements: Vec<&str> = path.split('/').collect();
    patterns.iter().any(|pattern| {
        assert!(
            !pattern.contains(['!', '?', '[', '\\']),
            ".dockerignore pattern {pattern:?} uses syntax this test does not read: extend docker_ignored"
        );
        let pattern: Vec<&str> = pattern.trim_matches('/').split('/').collect();
        matches(&pattern, &elements)
    })
}

#[test]
fn dockerignore_patterns_match_as_docker_matches_them() {
    let patterns: Vec<String> = ["target", "**/target", "**/*.db", ".env", "bench/results"]
        .map(str::to_owned)
        .to_vec();
    for ignored in [
        "target/debug/ratchet",
        "crates/x/target/a",
        "ratchet-data/ratchet.db",
        ".env",
        "bench/results/r.jsonl",
    ] {
        assert!(docker_ignored(&patterns, ignored), "{ignored} should be ignored");
    }
    for kept in ["src/main.rs", "bench/run.sh", "targets.rs", "src/.env.rs", "a.dbx"] {
        assert!(!docker_ignored(&patterns, kept), "{kept} should be kept");
    }
}

/// The build context `docker build .` sends: the repository's files (tracked, and untracked ones
/// git does not ignore) less what `.dockerignore` excludes.
fn docker_context_files() -> Vec<String> {
    let patterns: Vec<String> = read(&repo().join(".dockerignore"))
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let out = run(Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(repo()));
    assert!(out.status.success(), "git ls-files: {}", text(&out.stderr));
    let files: Vec<String> = text(&out.stdout)
        .split('\0')
        .filter(|path| !path.is_empty() && repo().join(path).is_file())
        .filter(|path| !docker_ignored(&patterns, path))
        .map(str::to_owned)
        .collect();
    for secret in [".env", "ratchet-data/keys/keys.json"] {
        assert!(
            !files.iter().any(|f| f.as_str() == secret),
            "{secret} would be sent to the Docker daemon"
        );
    }
    files
}

#[test]
fn the_docker_context_has_what_the_build_reads_and_no_local_state() {
    let files = docker_context_files();
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "src/main.rs",
        "proto/ratchet/v1/token.proto",
    ] {
        assert!(
            files.iter().any(|f| f == needed),
            "{needed} is not in the Docker build context"
        );
    }
    assert!(
        files.iter().any(|f| f.starts_with("migrations/postgres/")),
        "the migrations are not in the context"
    );
    // git ls-files does not list what git ignores, but Docker sends it unless .dockerignore says not to.
    let patterns: Vec<String> = read(&repo().join(".dockerignore"))
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for ignored in read(&repo().join(".gitignore"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let path = format!("{}/x", ignored.trim_start_matches('/'));
        assert!(
            docker_ignored(&patterns, &path),
            "git ignores {ignored} but Docker would send it"
        );
    }
}

/// The build stage's `RUN`, run as written: `COPY . .` into `WORKDIR /src` is a copy of the
/// context (mtimes kept, so that a second run rebuilds nothing), and its cargo command runs there.
/// The target directory is `target/dockerfile-build/target` rather than the context's `target`
/// (the Dockerfile's cache mount), so that the build survives the context being laid out anew.
///
/// A release build with the optimiser turned down (below; `RATCHET_DOCKERFILE_BUILD=full` keeps
/// it): minutes from scratch (CI), seconds when nothing changed. `.config/nextest.toml` gives it
/// the time and runs it alone.
#[test]
fn the_dockerfile_build_stage_builds_a_binary_that_runs() {
    let stages = dockerfile_stages();
    let build = stage_named(&stages, "build");
    assert!(
        build[0].args.starts_with("rust:"),
        "the build stage starts from the rust image: {}",
        build[0].args
    );
    // The image's toolchain is the one this test builds with, and new enough for the crate.
    let image_rust = build[0]
        .args
        .trim_start_matches("rust:")
        .split('-')
        .next()
        .unwrap()
        .to_owned();
    let local = text(&run(Command::new("rustc").arg("--version")).stdout);
    assert!(
        local.starts_with(&format!("rustc {image_rust}.")),
        "the Dockerfile builds with rust {image_rust}, this test with {local}: keep them the same"
    );
    let manifest = read(&repo().join("Cargo.toml"));
    let rust_version = manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    let version = |v: &str| v.split('.').map(|n| n.parse::<u32>().unwrap()).collect::<Vec<_>>();
    assert!(
        version(&image_rust) >= version(rust_version),
        "rust:{image_rust} is older than rust-version {rust_version}"
    );

    let keywords: Vec<&str> = build.iter().map(|i| i.keyword.as_str()).collect();
    assert_eq!(
        keywords,
        ["FROM", "WORKDIR", "COPY", "RUN"],
        "the build stage's shape changed: update this test"
    );
    assert_eq!(build[1].args, "/src");
    assert_eq!(build[2].args, ". .");
    let commands = run_commands(&build[3]);
    let cargo: Vec<&str> = commands[0].split(' ').collect();
    assert_eq!(
        cargo[..2],
        ["cargo", "build"],
        "the build stage's RUN starts with cargo build: {commands:?}"
    );
    assert!(
        cargo.contains(&"--locked") && cargo.contains(&"--release"),
        "{commands:?}"
    );
    assert!(
        !commands[0].contains(['"', '\'', '$']),
        "quoting or variables in {:?}: run it through a shell here",
        commands[0]
    );
    let copy = commands
        .iter()
        .find_map(|c| c.strip_prefix("cp "))
        .expect("the RUN copies the binary out of the cache-mounted target directory");
    let built = copy.split(' ').next().unwrap();
    let built = built.strip_prefix("target/").expect("the binary comes from target/");

    let scratch = repo().join("target/dockerfile-build");
    let context = scratch.join("context");
    if context.exists() {
        std::fs::remove_dir_all(&context).unwrap();
    }
    for file in docker_context_files() {
        let (from, to) = (repo().join(&file), context.join(&file));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap();
        let modified = std::fs::metadata(&from).unwrap().modified().unwrap();
        std::fs::File::options()
            .write(true)
            .open(&to)
            .unwrap()
            .set_modified(modified)
            .unwrap();
    }
    let target = scratch.join("target");
    let mut command = Command::new(cargo[0]);
    command
        .args(&cargo[1..])
        .current_dir(&context)
        .env("CARGO_TARGET_DIR", &target);
    // As in the image: no flags from the environment that runs the tests.
    for name in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTC_WRAPPER",
    ] {
        command.env_remove(name);
    }
    // The optimiser is what makes a release build take 20 minutes on two busy cores, and it
    // decides nothing this test is about (the context, the lock file, the target, the toolchain,
    // the build script, the libraries linked): turned down unless RATCHET_DOCKERFILE_BUILD=full.
    if std::env::var("RATCHET_DOCKERFILE_BUILD").as_deref() != Ok("full") {
        command
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "0")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "256")
            .env("CARGO_PROFILE_RELEASE_INCREMENTAL", "true");
    }
    let out = run(&mut command);
    assert!(
        out.status.success(),
        "`{}` failed in the build context:\n{}",
        commands[0],
        text(&out.stderr)
    );

    let binary = target.join(built);
    let out = run(Command::new(&binary).arg("--version"));
    assert!(
        out.status.success(),
        "{} --version: {}",
        binary.display(),
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout).trim(),
        format!("ratchet {}", env!("CARGO_PKG_VERSION"))
    );

    // The runtime image is distroless/cc: glibc, libgcc and libstdc++, nothing else.
    let out = Command::new("readelf").arg("-d").arg(&binary).output();
    let out = out.unwrap_or_else(|e| panic!("cannot run readelf (binutils) to list the binary's libraries: {e}"));
    assert!(out.status.success(), "readelf: {}", text(&out.stderr));
    let needed: Vec<String> = text(&out.stdout)
        .lines()
        .filter(|line| line.contains("(NEEDED)"))
        .filter_map(|line| line.split('[').nth(1).map(|lib| lib.trim_end_matches(']').to_owned()))
        .collect();
    assert!(
        !needed.is_empty(),
        "readelf found no NEEDED entries: {}",
        text(&out.stdout)
    );
    let in_image = [
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
        "libstdc++.so.6",
    ];
    for lib in &needed {
        assert!(
            in_image.contains(&lib.as_str()) || lib.starts_with("ld-linux"),
            "the binary needs {lib}, which gcr.io/distroless/cc does not have"
        );
    }
}

// ----------------------------------------------------------------------------------------------
// Kubernetes

#[test]
fn the_kubernetes_manifests_pass_the_kubernetes_schema_strictly() {
    let files = manifest_files();
    let out = run(python()
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            KUBERNETES_VERSION,
        ])
        .args(&files));
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "kubernetes-validate --strict failed:\n{report}");
    // Every file was validated against a schema (a kind without one is only a warning).
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy();
        assert!(
            report
                .lines()
                .any(|line| line.contains(&*name) && line.contains("passed")),
            "{name} was not validated:\n{report}"
        );
    }
    assert!(!report.contains("WARN"), "{report}");
    // The kustomization lists exactly these files.
    let (_, kustomization) = yaml_documents(&[kubernetes_dir().join("kustomization.yaml")]).remove(0);
    let listed: BTreeSet<String> = array(&kustomization["resources"])
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let present: BTreeSet<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, present, "kustomization.yaml's resources");
}

/// The flags and `[env: NAME]` variables of `ratchet <subcommand> --help`.
fn help_names(subcommand: &str) -> BTreeSet<String> {
    let out = run(Command::new(env!("CARGO_BIN_EXE_ratchet")).args([subcommand, "--help"]));
    assert!(
        out.status.success(),
        "ratchet {subcommand} --help: {}",
        text(&out.stderr)
    );
    let help = text(&out.stdout);
    let mut names = BTreeSet::new();
    for word in help.split(|c: char| c.is_whitespace() || c == ',') {
        if let Some(flag) = word.strip_prefix("--") {
            names.insert(format!("--{}", flag.split(['=', '<', ' ']).next().unwrap()));
        }
    }
    for (_, rest) in help.match_indices("[env: ").map(|(i, _)| help.split_at(i + 6)) {
        names.insert(rest.split(['=', ']']).next().unwrap().to_owned());
    }
    names
}

/// What the image and the manifests set for `ratchet`: `(where, subcommand, flag or variable)`.
fn names_set_for_ratchet() -> Vec<(String, String, String)> {
    let mut set = Vec::new();
    for ((kind, name), object) in objects() {
        let pod = match kind.as_str() {
            "Deployment" | "Job" => &object["spec"]["template"]["spec"],
            _ => continue,
        };
        for container in array(&pod["containers"]) {
            if !container["image"].as_str().unwrap().starts_with("ratchet:") {
                continue;
            }
            let args: Vec<&str> = array(&container["args"]).iter().map(|a| a.as_str().unwrap()).collect();
            let subcommand = args.first().copied().unwrap_or("serve").to_owned();
            let place = format!("{kind} {name}");
            for arg in args.get(1..).unwrap_or_default() {
                assert!(arg.starts_with("--"), "{place}: argument {arg} is not a flag");
                let flag = arg.split('=').next().unwrap();
                set.push((place.clone(), subcommand.clone(), flag.to_owned()));
            }
            for env in array(&container["env"]) {
                set.push((
                    place.clone(),
                    subcommand.clone(),
                    env["name"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    let stages = dockerfile_stages();
    for env in stages.last().unwrap().iter().filter(|i| i.keyword == "ENV") {
        for pair in env.args.split(' ') {
            let (name, _) = pair.split_once('=').expect("ENV NAME=value");
            set.push(("Dockerfile".to_owned(), "serve".to_owned(), name.to_owned()));
        }
    }
    set
}

#[test]
fn every_flag_and_variable_the_image_and_manifests_set_is_one_ratchet_knows() {
    let mut helps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let set = names_set_for_ratchet();
    assert!(
        set.iter()
            .any(|(_, sub, name)| sub == "serve" && name == "--no-migrate"),
        "the server runs with --no-migrate"
    );
    assert!(
        set.iter()
            .any(|(place, sub, _)| place.starts_with("Job") && sub == "migrate"),
        "a Job runs ratchet migrate"
    );
    for (place, subcommand, name) in &set {
        let known = helps
            .entry(subcommand.clone())
            .or_insert_with(|| help_names(subcommand));
        if PENDING.iter().any(|(pending, _)| *pending == name.as_str()) {
            continue;
        }
        assert!(
            known.contains(name),
            "{place} sets {name}, which `ratchet {subcommand} --help` does not list"
        );
    }
    // The pending names must still arrive: once one is known, delete it from PENDING.
    let serve = helps.entry("serve".to_owned()).or_insert_with(|| help_names("serve"));
    for (name, why) in PENDING {
        assert!(
            !serve.contains(*name),
            "{name} ({why}) is in `ratchet serve --help` now: delete it from PENDING in tests/deploy.rs"
        );
        assert!(
            set.iter().any(|(_, _, n)| n.as_str() == *name),
            "{name} is PENDING but nothing sets it"
        );
    }
}

#[test]
fn the_kubernetes_objects_agree_with_each_other_and_with_the_server() {
    let objects = objects();
    let deployment = object(&objects, "Deployment", "ratchet");
    let pod = &deployment["spec"]["template"]["spec"];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &Value| {
        selector
            .as_object()
            .unwrap()
            .iter()
            .all(|(key, value)| &labels[key] == value)
    };
    assert!(
        selects(&deployment["spec"]["selector"]["matchLabels"]),
        "the Deployment's selector"
    );
    assert!(
        selects(&object(&objects, "Service", "ratchet")["spec"]["selector"]),
        "the Service's selector"
    );
    assert!(
        selects(&object(&objects, "PodDisruptionBudget", "ratchet")["spec"]["selector"]["matchLabels"]),
        "the PodDisruptionBudget's selector"
    );
    let policy = object(&objects, "NetworkPolicy", "ratchet");
    assert!(
        selects(&policy["spec"]["podSelector"]["matchLabels"]),
        "the NetworkPolicy's selector"
    );
    let job = object(&objects, "Job", "ratchet-migrate");
    let job_labels = &job["spec"]["template"]["metadata"]["labels"];
    assert!(
        policy["spec"]["podSelector"]["matchLabels"]
            .as_object()
            .unwrap()
            .iter()
            .all(|(key, value)| &job_labels[key] == value),
        "the NetworkPolicy (egress to PostgreSQL) applies to the migrate Job too"
    );

    // Every container, init containers and the Job's included, is locked down.
    for (place, spec) in [("Deployment", pod), ("Job", &job["spec"]["template"]["spec"])] {
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{place}");
        assert_eq!(spec["automountServiceAccountToken"], false, "{place}");
        for container in array(&spec["containers"]).iter().chain(array(&spec["initContainers"])) {
            let context = &container["securityContext"];
            let name = &container["name"];
            assert_eq!(context["readOnlyRootFilesystem"], true, "{place} {name}");
            assert_eq!(context["allowPrivilegeEscalation"], false, "{place} {name}");
            assert_eq!(
                context["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{place} {name}"
            );
            assert!(
                container["resources"]["limits"]["memory"].is_string(),
                "{place} {name}: memory limit"
            );
            assert!(
                container["resources"]["requests"]["cpu"].is_string(),
                "{place} {name}: cpu request"
            );
        }
    }

    let server = array(&pod["containers"])
        .iter()
        .find(|c| c["name"] == "ratchet")
        .expect("a container named ratchet");
    let ports: BTreeMap<&str, u64> = array(&server["ports"])
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["containerPort"].as_u64().unwrap()))
        .collect();
    let env: BTreeMap<&str, &Value> = array(&server["env"])
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e.get("value").unwrap_or(&e["valueFrom"])))
        .collect();
    // Each listener is on its named port.
    for (variable, port) in [
        ("RATCHET_LISTEN", "grpc"),
        ("RATCHET_HTTP_LISTEN", "http"),
        ("RATCHET_METRICS_LISTEN", "metrics"),
    ] {
        let addr = env[variable].as_str().unwrap();
        assert_eq!(
            addr,
            format!("0.0.0.0:{}", ports[port]),
            "{variable} and the {port} port"
        );
    }
    assert!(
        env["DATABASE_URL"]["secretKeyRef"].is_object(),
        "DATABASE_URL comes from a Secret"
    );
    let port_of = |port: &Value| match port {
        Value::String(name) => *ports
            .get(name.as_str())
            .unwrap_or_else(|| panic!("no port named {name}")),
        other => other.as_u64().unwrap(),
    };
    // Probes: readiness on the service ratchet reports NOT_SERVING for while the database is down
    // (src/startup/tasks.rs), on the gRPC port; liveness and start-up on something that is not
    // the database.
    let readiness = &server["readinessProbe"]["grpc"];
    assert_eq!(port_of(&readiness["port"]), ports["grpc"]);
    let proto = read(&repo().join("proto/ratchet/v1/token.proto"));
    let service = readiness["service"].as_str().unwrap();
    let (package, name) = service.rsplit_once('.').unwrap();
    assert!(
        proto.contains(&format!("package {package};")) && proto.contains(&format!("service {name} ")),
        "readiness probes {service}, which is not in the proto"
    );
    let tasks = read(&repo().join("src/startup/tasks.rs"));
    assert!(
        tasks.contains(&format!("\"{service}\"")),
        "the health watcher does not report {service}"
    );
    for probe in ["livenessProbe", "startupProbe"] {
        let get = &server[probe]["httpGet"];
        assert_eq!(port_of(&get["port"]), ports["http"], "{probe}");
        assert_eq!(get["path"], "/.well-known/jwks.json", "{probe}");
    }
    // The start-up probe outlasts the database wait (then exit 69, and a restart).
    let startup = &server["startupProbe"];
    let startup_seconds = startup["periodSeconds"].as_u64().unwrap() * startup["failureThreshold"].as_u64().unwrap();
    let seconds = |value: &Value| value.as_str().unwrap().trim_end_matches('s').parse::<u64>().unwrap();
    assert!(
        startup_seconds > seconds(env["RATCHET_DB_WAIT"]),
        "startup probe {startup_seconds} s"
    );
    // SIGTERM comes after the preStop sleep; the drain (--shutdown-grace) must end before SIGKILL.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap();
    let drain = seconds(env["RATCHET_SHUTDOWN_GRACE"]);
    assert!(
        grace >= pre_stop + drain + 5,
        "terminationGracePeriodSeconds {grace} < {pre_stop} + {drain} + 5"
    );

    // Volumes: every mount names one; the key directory is a Secret's keys, copied owner-only.
    let volumes: BTreeMap<&str, &Value> = array(&pod["volumes"])
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    for container in array(&pod["containers"]).iter().chain(array(&pod["initContainers"])) {
        for mount in array(&container["volumeMounts"]) {
            assert!(volumes.contains_key(mount["name"].as_str().unwrap()), "mount {mount}");
        }
    }
    let keys_dir = env["RATCHET_KEYS_DIR"].as_str().unwrap();
    let keys_mount = array(&server["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == keys_dir)
        .expect("RATCHET_KEYS_DIR is a mounted volume");
    assert_eq!(keys_mount["readOnly"], true);
    assert_eq!(
        volumes[keys_mount["name"].as_str().unwrap()]["emptyDir"]["medium"],
        "Memory"
    );
    assert!(
        volumes.values().any(|v| v["secret"]["secretName"] == "ratchet-keys"),
        "the keys come from the ratchet-keys Secret"
    );

    // The Service and the NetworkPolicy name the container's ports.
    for port in array(&object(&objects, "Service", "ratchet")["spec"]["ports"]) {
        let target = port["targetPort"].as_str().unwrap();
        assert_eq!(port["port"].as_u64().unwrap(), ports[target], "Service port {target}");
    }
    let allowed: BTreeSet<&str> = array(&policy["spec"]["ingress"])
        .iter()
        .flat_map(|rule| array(&rule["ports"]))
        .map(|p| p["port"].as_str().unwrap())
        .collect();
    assert_eq!(
        allowed,
        ports.keys().copied().collect::<BTreeSet<_>>(),
        "the NetworkPolicy's ingress ports"
    );
}

// ----------------------------------------------------------------------------------------------
// Prometheus and Grafana

fn prometheus_dir() -> PathBuf {
    repo().join("deploy/prometheus")
}

#[test]
fn the_alerts_pass_promtool_check_and_their_unit_tests() {
    let out = run(promtool()
        .args(["check", "rules"])
        .arg(prometheus_dir().join("alerts.yaml")));
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = run(promtool()
        .args(["test", "rules", "alerts.test.yaml"])
        .current_dir(prometheus_dir()));
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // A unit test per alert: each is expected to fire somewhere, and to stay quiet somewhere.
    let alerts: Vec<String> = alert_rules().into_iter().map(|(name, _)| name).collect();
    assert_eq!(alerts.len(), 6, "{alerts:?}");
    let (_, tests) = yaml_documents(&[prometheus_dir().join("alerts.test.yaml")]).remove(0);
    for alert in &alerts {
        let cases: Vec<&Value> = array(&tests["tests"])
            .iter()
            .flat_map(|t| array(&t["alert_rule_test"]))
            .filter(|case| case["alertname"] == alert.as_str())
            .collect();
        assert!(
            cases.iter().any(|c| !array(&c["exp_alerts"]).is_empty()),
            "no test where {alert} fires"
        );
        assert!(
            cases.iter().any(|c| array(&c["exp_alerts"]).is_empty()),
            "no test where {alert} stays quiet"
        );
    }
}

/// `(alert name, expression)` of every rule in alerts.yaml.
fn alert_rules() -> Vec<(String, String)> {
    let (_, alerts) = yaml_documents(&[prometheus_dir().join("alerts.yaml")]).remove(0);
    array(&alerts["groups"])
        .iter()
        .flat_map(|group| array(&group["rules"]))
        .map(|rule| {
            (
                rule["alert"].as_str().unwrap().to_owned(),
                rule["expr"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Every PromQL expression of the dashboard: its panels' targets and its template variables'
/// queries (`label_values(metric, label)` counts as its metric).
fn dashboard_expressions() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(&read(&repo().join("deploy/grafana/ratchet.json"))).unwrap();
    let mut expressions = Vec::new();
    let mut ids = BTreeSet::new();
    for panel in array(&dashboard["panels"]) {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel id {} twice",
            panel["id"]
        );
        if panel["type"] == "row" {
            continue;
        }
        let targets = array(&panel["targets"]);
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "panel {}", panel["title"]);
            expressions.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for variable in array(&dashboard["templating"]["list"]) {
        if let Some(query) = variable["query"]["query"].as_str() {
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map_or(query, |(metric, _)| metric);
            expressions.push(inner.to_owned());
        }
    }
    expressions
}

/// The metric names a PromQL expression selects: identifiers in selector position (not
/// functions, keywords, label names, the labels of `by`/`without`/`on`/`ignoring`/`group_*`, nor
/// Grafana's `$variables`); histogram series (`_bucket`, `_sum`, `_count` of a name in
/// `histograms`) by their base name. Reusable: the lead's check against a real scrape passes the
/// dashboard's and the alerts' expressions through this too.
fn promql_metric_names(expr: &str, histograms: &[&str]) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and", "or", "unless", "bool", "offset", "Inf", "NaN", "inf", "nan", "atan2",
    ];
    const GROUPINGS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_to = |from: usize, close: char| {
        let mut j = from;
        let mut quoted = None;
        while j < chars.len() {
            match (quoted, chars[j]) {
                (Some(q), c) if c == q && chars[j - 1] != '\\' => quoted = None,
                (Some(_), _) => {}
                (None, '"' | '\'' | '`') => quoted = Some(chars[j]),
                (None, c) if c == close => return j + 1,
                _ => {}
            }
            j += 1;
        }
        panic!("unclosed {close:?} in {expr}")
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_to(i + 1, '}'); // label matchers
        } else if c == '[' {
            i = skip_to(i + 1, ']'); // a range or subquery
        } else if matches!(c, '"' | '\'' | '`') {
            i = skip_to(i + 1, c);
        } else if c == '$' {
            i += 1; // a Grafana variable: $name or ${name}
            if chars.get(i) == Some(&'{') {
                i = skip_to(i + 1, '}');
            } else {
                while i < chars.len() && ident_char(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            while i < chars.len() && (ident_char(chars[i]) || chars[i] == '.') {
                i += 1; // a number (1e3, 0x1f, 0.99) or a duration (5m)
            }
        } else if ident_start(c) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            // `sum by (x) (...)`, `topk without (x) (...)`: an aggregation whose grouping comes first.
            let next_word: String = chars[next..].iter().take_while(|c| ident_char(**c)).collect();
            if GROUPINGS.contains(&word.as_str()) {
                if chars.get(next) == Some(&'(') {
                    i = skip_to(next + 1, ')');
                }
            } else if chars.get(next) == Some(&'(')
                || KEYWORDS.contains(&word.as_str())
                || matches!(next_word.as_str(), "by" | "without")
            {
                // a function call, or a keyword
            } else {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|suffix| word.strip_suffix(suffix))
                    .find(|base| histograms.contains(base));
                names.insert(base.unwrap_or(&word).to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_promql_name_extractor_finds_metrics_and_nothing_else() {
    let names = |expr: &str| promql_metric_names(expr, &["http_duration_seconds"]);
    let set = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(
        names(r#"sum by (rpc, code) (rate(a_total{job=~"$job", code!="OK"}[$__rate_interval]))"#),
        set(&["a_total"])
    );
    assert_eq!(
        names("histogram_quantile(0.99, sum without (instance) (rate(http_duration_seconds_bucket[5m]))) > 0.2"),
        set(&["http_duration_seconds"])
    );
    assert_eq!(
        names(
            "max without (state) (pool{state=\"in_use\"}) / on (instance) group_left(version) pool_max >= 0.9 or waiting > 0"
        ),
        set(&["pool", "pool_max", "waiting"])
    );
    assert_eq!(
        names("time() - start_seconds{instance=~\"${instance}\"} offset 1h"),
        set(&["start_seconds"])
    );
    assert_eq!(
        names("sum(rate(other_count[1m])) / 1e3"),
        set(&["other_count"]),
        "a _count of no histogram"
    );
    assert_eq!(names("up == bool 1 and on() vector(1)"), set(&["up"]));
}

#[test]
fn every_metric_the_dashboard_and_the_alerts_name_is_in_a_real_scrape() {
    let (scraped, histograms) = scraped_metrics();
    let histograms: Vec<&str> = histograms.iter().map(String::as_str).collect();
    let mut expressions: Vec<(String, String)> = alert_rules()
        .into_iter()
        .map(|(alert, expr)| (format!("alert {alert}"), expr))
        .collect();
    expressions.extend(
        dashboard_expressions()
            .into_iter()
            .map(|expr| ("the dashboard".to_owned(), expr)),
    );
    // The unit tests' input series too: a test of a misspelt series would pass on nothing.
    let (_, tests) = yaml_documents(&[prometheus_dir().join("alerts.test.yaml")]).remove(0);
    for series in array(&tests["tests"]).iter().flat_map(|t| array(&t["input_series"])) {
        expressions.push((
            "alerts.test.yaml".to_owned(),
            series["series"].as_str().unwrap().to_owned(),
        ));
    }
    let mut used = BTreeSet::new();
    let mut missing = Vec::new();
    for (place, expr) in &expressions {
        let names = promql_metric_names(expr, &histograms);
        assert!(!names.is_empty(), "{place}: no metric in {expr}");
        for name in names {
            if !scraped.contains(&name) {
                missing.push(format!(
                    "{place} queries {name}, which a real server does not export: {expr}"
                ));
            }
            used.insert(name);
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    // The dashboard covers what the issue asks it to show.
    for shown in [
        "ratchet_grpc_requests_total",
        "ratchet_grpc_request_duration_seconds",
        "ratchet_reuse_detections_total",
        "ratchet_store_pool_connections",
        "ratchet_cache_hits_total",
        "ratchet_cache_bytes",
        "process_resident_memory_bytes",
    ] {
        assert!(used.contains(shown), "nothing shows {shown}");
    }
}
