//! Metrics (issue 17): `GET /metrics` scraped for real after real calls, read as Prometheus reads
//! it, and checked by `promtool check metrics`.
//!
//! The counters are the process's, and a test compares a scrape after its calls with one before:
//! the runner (`cargo nextest`, `scripts/test`) gives every test a process of its own, so no
//! other test's calls land in between.
//!
//! Where they run: the calls that reach the store (rotations, reuse, revocations, Check's cache
//! lookups, the pool) run on every backend. The caller policy's refusals never reach the store:
//! PostgreSQL only, like the rest of the policy's tests. Where `/metrics` is served is the
//! binary's flags: `ratchet serve` on SQLite, as on a fresh machine.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use ratchet::grpc::pb::{IssueRequest, RotateRequest};
use ratchet::policy::file::api_key_sha256;
use ratchet::policy::reload::PolicyFile;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::Code;

use crate::support::{BIN, DataDir, Db, TestApp, channel, http_get, on_every_backend, policy_file};

/// One series of a scrape: its name and labels.
type Series = (String, BTreeMap<String, String>);

/// A scrape as Prometheus reads it: every sample by series.
struct Scrape {
    text: String,
    samples: BTreeMap<Series, f64>,
}

impl Scrape {
    fn parse(text: String) -> Self {
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|line| !line.is_empty() && !line.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("a sample line: series value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, parse_labels(labels.strip_suffix('}').expect("closing brace"))),
                None => (series, BTreeMap::new()),
            };
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number in {line:?}"));
            assert!(
                samples.insert((name.to_owned(), labels), value).is_none(),
                "series twice: {line}"
            );
        }
        Self { text, samples }
    }

    /// The sample of `name` with exactly `labels`, if the scrape has it.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        self.samples.get(&(name.to_owned(), labels)).copied()
    }

    /// [`Self::get`], or 0 for a series not there yet (a counter that never moved).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    fn has_metric(&self, name: &str) -> bool {
        self.samples.keys().any(|(series, _)| series == name)
    }
}

/// `a="x",b="y"` (values as the text format escapes them).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").expect("name=\"value\"");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("a closing quote") {
                (_, '\\') => match chars.next().expect("an escaped character").1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

async fn scrape(app: &TestApp) -> Scrape {
    let answer = app.http_get("/metrics", &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer
            .header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        answer.headers
    );
    Scrape::parse(answer.body)
}

/// `promtool check metrics` on `scrape`: it must be there (Debian's `prometheus` package), and
/// it must find nothing wrong, lint included.
fn assert_promtool_passes(scrape: &Scrape) {
    use std::io::Write as _;
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|error| {
        panic!(
            "promtool is needed to check the scrape (`apt-get install prometheus`; scripts/test installs it): {error}"
        )
    });
    child.stdin.take().unwrap().write_all(scrape.text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A Check as Envoy sends it, with `headers` and the route's `required_scopes`.
fn check_request(headers: &[(&str, &str)], required_scopes: &str) -> CheckRequest {
    let scopes = [("ratchet.required_scopes", required_scopes)];
    crate::support::check_request(headers, if required_scopes.is_empty() { &[] } else { &scopes })
}

const REQUESTS: &str = "ratchet_grpc_requests_total";

on_every_backend!(real_calls_move_their_counters_and_the_scrape_passes_promtool);

async fn real_calls_move_their_counters_and_the_scrape_passes_promtool(db: Db) {
    let on_postgres = matches!(db, Db::Postgres(_));
    let app = TestApp::builder(db).spawn().await;
    let before = scrape(&app).await;

    let pair = app.issue("alice").await;
    let other = app.issue("alice").await;
    let refused = app
        .client
        .clone()
        .issue(IssueRequest::default())
        .await
        .expect_err("an Issue without a subject");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let next = app.rotate(&pair.refresh_token).await.expect("rotate");
    let reused = app
        .rotate(&pair.refresh_token)
        .await
        .expect_err("the spent token again");
    assert_eq!(reused.code(), Code::Unauthenticated);
    app.revoke_family(&other.family_id).await;
    // Check: a live token (allowed, then refused for a scope it lacks, then allowed again), no
    // credentials (401), and the revoked family's token (401).
    let fresh = app.issue("bob").await;
    let live = format!("Bearer {}", fresh.access_token);
    let revoked = format!("Bearer {}", other.access_token);
    let mut authz = AuthorizationClient::new(channel(app.addr).await);
    for (authorization, scopes) in [
        (Some(&live), ""),
        (None, ""),
        (Some(&revoked), ""),
        (Some(&live), "admin"),
        (Some(&live), ""),
    ] {
        let headers: Vec<(&str, &str)> = authorization
            .map(|value| ("authorization", value.as_str()))
            .into_iter()
            .collect();
        authz
            .check(check_request(&headers, scopes))
            .await
            .expect("Check answers");
    }

    let after = scrape(&app).await;
    let moved = |name: &str, labels: &[(&str, &str)]| after.value(name, labels) - before.value(name, labels);
    let calls = |rpc: &str, code: &str| moved(REQUESTS, &[("rpc", rpc), ("code", code)]);
    assert_eq!(calls("Issue", "OK"), 3.0);
    assert_eq!(calls("Issue", "INVALID_ARGUMENT"), 1.0);
    assert_eq!(calls("Rotate", "OK"), 1.0);
    assert_eq!(calls("Rotate", "UNAUTHENTICATED"), 1.0);
    assert_eq!(calls("Revoke", "OK"), 1.0);
    // Check's denials are answers (OK) that say "deny".
    assert_eq!(calls("Check", "OK"), 5.0);
    let durations = "ratchet_grpc_request_duration_seconds_count";
    assert_eq!(moved(durations, &[("rpc", "Rotate")]), 2.0);
    assert_eq!(moved(durations, &[("rpc", "Check")]), 5.0);
    assert!(after.value("ratchet_grpc_request_duration_seconds_sum", &[("rpc", "Rotate")]) > 0.0);
    assert_eq!(
        after.value(
            "ratchet_grpc_request_duration_seconds_bucket",
            &[("rpc", "Issue"), ("le", "+Inf")]
        ),
        after.value(durations, &[("rpc", "Issue")]),
    );

    assert_eq!(moved("ratchet_rotations_total", &[]), 1.0);
    assert_eq!(moved("ratchet_reuse_detections_total", &[]), 1.0);
    assert_eq!(moved("ratchet_revocations_total", &[("target", "reuse")]), 1.0);
    assert_eq!(moved("ratchet_revocations_total", &[("target", "family")]), 1.0);
    assert_eq!(moved("ratchet_revocations_total", &[("target", "subject")]), 0.0);
    let decisions = "ratchet_authz_decisions_total";
    assert_eq!(moved(decisions, &[("decision", "allow")]), 2.0);
    assert_eq!(moved(decisions, &[("decision", "unauthenticated")]), 2.0);
    assert_eq!(moved(decisions, &[("decision", "denied")]), 1.0);
    // Each token's signature checked once, then found in the verified cache; each family read
    // once, then answered from the family cache.
    for cache in ["verified", "family"] {
        assert!(
            moved("ratchet_cache_misses_total", &[("cache", cache)]) >= 1.0,
            "{cache}"
        );
        assert!(moved("ratchet_cache_hits_total", &[("cache", cache)]) >= 1.0, "{cache}");
    }
    assert!(after.value("ratchet_cache_bytes", &[("cache", "verified")]) > 0.0);
    assert!(after.value("ratchet_cache_bytes", &[("cache", "family")]) > 0.0);

    assert_eq!(
        after.get("ratchet_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        Some(1.0)
    );
    assert!(after.value("ratchet_store_pool_max_connections", &[]) >= 1.0);
    assert!(
        after
            .get("ratchet_store_pool_connections", &[("state", "idle")])
            .is_some()
    );
    assert!(
        after
            .get("ratchet_store_pool_connections", &[("state", "in_use")])
            .is_some()
    );
    // PostgreSQL's pool tells who waits; sqlx's (SQLite) does not.
    assert_eq!(after.has_metric("ratchet_store_pool_waiting"), on_postgres);
    for process in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(after.has_metric(process), "{process}");
    }
    assert!(after.value("process_resident_memory_bytes", &[]) > 1e6);
    if on_postgres {
        wait_for_listener(&app).await;
    } else {
        assert!(
            !after.has_metric("ratchet_revocation_listener_connected"),
            "SQLite runs no listener"
        );
    }

    // Nothing a caller holds or the store keys on is in a label.
    for secret in [
        &pair.refresh_token,
        &pair.access_token,
        &next.refresh_token,
        &other.family_id,
        &"alice".to_owned(),
    ] {
        assert!(!after.text.contains(secret.as_str()), "{secret} in the scrape");
    }
    assert_promtool_passes(&after);
    app.stop().await;
}

/// The revocation listener subscribes shortly after start: the gauge says so.
async fn wait_for_listener(app: &TestApp) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = scrape(app).await;
        if now.get("ratchet_revocation_listener_connected", &[]) == Some(1.0) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the listener never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const LOGIN_KEY: &str = "login-key-0123456789";

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn refusals_are_counted_by_reason_and_by_the_policys_caller_name(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let policy = format!(
        "[[caller]]\nname = \"login\"\napi_key_sha256 = \"{}\"\nrpcs = [\"Issue\"]\n",
        api_key_sha256(LOGIN_KEY)
    );
    let file = Arc::new(PolicyFile::load(&policy_file(&policy)).unwrap());
    let app = TestApp::builder(options)
        .adjust(|parts| parts.settings.access.policy = Some(file))
        .spawn()
        .await;
    let before = scrape(&app).await;
    let with_key = |key: &str| {
        let mut request = tonic::Request::new(RotateRequest {
            refresh_token: "rt_whatever".into(),
        });
        request.metadata_mut().insert("x-api-key", key.parse().unwrap());
        request
    };
    let denied = app.client.clone().rotate(with_key(LOGIN_KEY)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let unknown = app
        .client
        .clone()
        .rotate(with_key("not-a-key-of-anyone"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);

    let after = scrape(&app).await;
    let refusals = "ratchet_access_refusals_total";
    let moved = |labels: &[(&str, &str)]| after.value(refusals, labels) - before.value(refusals, labels);
    assert_eq!(moved(&[("reason", "policy"), ("caller", "login")]), 1.0);
    assert_eq!(moved(&[("reason", "unknown_caller"), ("caller", "")]), 1.0);
    let calls = |code: &str| {
        let labels = [("rpc", "Rotate"), ("code", code)];
        after.value(REQUESTS, &labels) - before.value(REQUESTS, &labels)
    };
    assert_eq!(calls("PERMISSION_DENIED"), 1.0);
    assert_eq!(calls("UNAUTHENTICATED"), 1.0);
    assert!(!after.text.contains(LOGIN_KEY), "an API key in the scrape");
    assert_promtool_passes(&after);
    app.stop().await;
}

/// `GET /metrics` on `addr`: its status, and whether it is a scrape of ours.
async fn metrics_at(addr: std::net::SocketAddr) -> (u16, bool) {
    let answer = http_get(addr, "/metrics", &[]).await;
    (answer.status, answer.body.contains("ratchet_build_info{"))
}

#[tokio::test]
async fn metrics_listen_moves_metrics_to_their_own_port_and_off_serves_them_nowhere() {
    let data = DataDir::new();
    let (server, _client, _) = data.serve("default").await;
    assert_eq!(
        metrics_at(server.http).await,
        (200, true),
        "on the HTTP listener by default"
    );
    server.terminate().await;

    let port = crate::support::free_port();
    let own: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (server, _client, log) = data
        .serve_with("own", &[("RATCHET_METRICS_LISTEN", &own.to_string())])
        .await;
    assert!(
        data.log(&log)
            .lines()
            .any(|line| line.contains("serving metrics") && line.contains(&own.to_string())),
        "{}",
        data.log(&log)
    );
    assert_eq!(metrics_at(own).await, (200, true));
    assert_eq!(metrics_at(server.http).await.0, 404, "not on the HTTP listener as well");
    let jwks = http_get(server.http, "/.well-known/jwks.json", &[]).await;
    assert_eq!(jwks.status, 200, "the HTTP listener still serves the JWKS");
    server.terminate().await;

    let (server, _client, _) = data.serve_with("off", &[("RATCHET_METRICS_LISTEN", "off")]).await;
    assert_eq!(metrics_at(server.http).await.0, 404);
    server.terminate().await;
}

#[test]
fn a_metrics_address_that_does_not_parse_is_a_configuration_error() {
    let output = Command::new(BIN)
        .args(["serve", "--metrics-listen", "everywhere"])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("RATCHET_LISTEN", "127.0.0.1:0")
        .env("RATCHET_DATA_DIR", std::env::temp_dir().join("ratchet-never-created"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("metrics-listen"), "{stderr}");
}
