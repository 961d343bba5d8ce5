//! A private, throwaway PostgreSQL cluster that a test starts, stops, restarts and kills itself.
//!
//! Fault tests cannot do that to the shared server on 5432 (every other test runs on it), so each
//! gets a cluster of its own: `initdb` into a temporary directory, `pg_ctl start` on a free port
//! of 127.0.0.1 with trust authentication, and, when the cluster is dropped, an immediate stop
//! and the directory removed, also when the test panicked. A start takes about a second (initdb
//! is most of it); a restart about 0.2 s.
//!
//! The server binaries are looked up the way `scripts/test` does: `initdb` on the PATH, else the
//! newest `/usr/lib/postgresql/*/bin`. Without them [`PrivateCluster::start`] fails and says so:
//! a fault test never skips silently. As root (here and in CI) the server runs as the `postgres`
//! OS user through `runuser`, because PostgreSQL refuses to run as root.
//!
//! Every control (`restart`, `kill`, ...) is async and runs its commands on tokio's blocking
//! pool: the test's runtime, and with it the application under test, keeps running while the
//! database goes away and comes back, which is the whole point of a fault test.
//!
//! Not covered: a test process killed outright (SIGKILL, a nextest timeout) runs no `Drop`; its
//! cluster keeps running and its `ratchet-cluster-*` directory stays in the temporary directory.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};

/// Where distributions install the server binaries, one directory per major version.
const VERSIONED_BINDIRS: &str = "/usr/lib/postgresql";
/// How long a killed server's processes may take to exit before the test fails.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL cluster of the test's own, stopped and deleted on drop.
pub struct PrivateCluster {
    control: Control,
}

/// Everything needed to run the cluster's commands; cheap to clone into a blocking task.
#[derive(Debug, Clone)]
struct Control {
    bindir: PathBuf,
    dir: PathBuf,
    port: u16,
    /// We are root: every server command runs as the `postgres` OS user.
    as_postgres: bool,
}

impl PrivateCluster {
    /// Creates a cluster in a new temporary directory and starts it on a free port.
    ///
    /// # Panics
    /// No PostgreSQL server binaries are installed, or initdb or the start fails (the message
    /// carries the command's output and the server log).
    pub async fn start() -> Self {
        blocking(|| Control::create(None)).await
    }

    /// A hot standby of this cluster (`pg_basebackup -R`, streaming), in a directory and on a port
    /// of its own, started. It is synchronous if this cluster sets `synchronous_standby_names`.
    pub async fn start_standby(&self) -> Self {
        self.start_standby_through(self.control.port).await
    }

    /// As [`start_standby`](Self::start_standby), reaching this cluster through `port` on
    /// 127.0.0.1 (a [`Proxy`](super::Proxy) in front of it): its replication link can then be cut.
    pub async fn start_standby_through(&self, port: u16) -> Self {
        blocking(move || Control::create(Some(port))).await
    }

    /// `pg_ctl promote`: a standby becomes a primary that accepts writes (waits until it does).
    pub async fn promote(&self) {
        let control = self.control.clone();
        blocking(move || {
            control.run(control.pg_ctl().args(["-w", "promote"]));
        })
        .await;
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.control.port
    }

    /// `alter system set <setting>`, then a reload: every session takes it, open ones too.
    pub async fn alter_system(&self, setting: &str) {
        let mut admin = PgConnection::connect_with(&self.options()).await.unwrap();
        // Each on its own: ALTER SYSTEM refuses to run in the implicit transaction of a batch.
        for statement in [
            format!("alter system set {setting}"),
            "select pg_reload_conf()".to_owned(),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        admin.close().await.unwrap();
    }

    /// Makes this primary's commits wait for its standby ([`Self::start_standby`]), and waits
    /// (at most 10 s) until the standby streams synchronously: from then on, a commit
    /// acknowledged is on the standby too.
    pub async fn replicate_synchronously(&self) {
        self.alter_system("synchronous_standby_names = '*'").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut admin = PgConnection::connect_with(&self.options()).await.unwrap();
            let sync: i64 = sqlx::query_scalar("select count(*) from pg_stat_replication where sync_state = 'sync'")
                .fetch_one(&mut admin)
                .await
                .unwrap();
            admin.close().await.unwrap();
            if sync == 1 {
                return;
            }
            assert!(Instant::now() < deadline, "the standby never became synchronous");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Connection options for its `postgres` database: user `postgres`, no password, no TLS.
    pub fn options(&self) -> PgConnectOptions {
        PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.control.port)
            .username("postgres")
            .database("postgres")
            .ssl_mode(PgSslMode::Disable)
    }

    /// A `postgres://` URL for `database` on this cluster, for the binary's `DATABASE_URL`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=disable",
            self.control.port
        )
    }

    /// `database` on this primary and on `standby`, as one multi-host `DATABASE_URL` names them
    /// (this one first).
    pub fn with_standby_hosts(&self, standby: &Self, database: &str) -> ratchet::store::postgres::PgHosts {
        ratchet::store::postgres::PgHosts::parse(&format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{database}?sslmode=disable",
            self.port(),
            standby.port()
        ))
        .unwrap()
    }

    /// Its temporary directory: `data/` (the cluster), `log` (the server log), the socket.
    pub fn dir(&self) -> &Path {
        &self.control.dir
    }

    /// The server log so far, for assertions and for explaining a failure.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.control.dir.join("log")).unwrap_or_default()
    }

    /// Creates database `name`, applies the service's migrations to it, and returns options for it.
    ///
    /// # Panics
    /// The cluster is not running, or creating or migrating fails.
    pub async fn create_database(&self, name: &str) -> PgConnectOptions {
        let mut admin = PgConnection::connect_with(&self.options())
            .await
            .expect("connect to the private cluster");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "create database \"{}\"",
            name.replace('"', "\"\"")
        )))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        admin.close().await.expect("close the admin connection");

        let options = self.options().database(name);
        let mut connection = PgConnection::connect_with(&options)
            .await
            .unwrap_or_else(|e| panic!("connect to database {name}: {e}"));
        ratchet::store::postgres::MIGRATOR
            .run(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("migrate database {name}: {e}"));
        connection.close().await.expect("close the migrating connection");
        options
    }

    /// A clean shutdown (`pg_ctl stop -m fast`): open connections are told and closed.
    pub async fn stop_fast(&self) {
        let control = self.control.clone();
        blocking(move || control.stop("fast")).await;
    }

    /// Starts the stopped (or crashed) cluster again: same port, same data.
    pub async fn start_again(&self) {
        let control = self.control.clone();
        blocking(move || control.start_server().unwrap_or_else(|e| panic!("{e}"))).await;
    }

    /// [`stop_fast`](Self::stop_fast), then [`start_again`](Self::start_again): every connection
    /// made before is gone, the data is not.
    pub async fn restart(&self) {
        self.stop_fast().await;
        self.start_again().await;
    }

    /// SIGKILL to the postmaster, and waits until it and its backends are gone: a crash, with no
    /// shutdown checkpoint. The cluster stays down until [`start_again`](Self::start_again).
    pub async fn crash(&self) {
        let control = self.control.clone();
        blocking(move || control.crash()).await;
    }

    /// [`crash`](Self::crash), then [`start_again`](Self::start_again), which runs crash
    /// recovery: what was committed before the kill is still there.
    pub async fn kill(&self) {
        self.crash().await;
        self.start_again().await;
    }
}

impl Drop for PrivateCluster {
    /// Immediate stop and the directory removed. Runs during a panic too, so it only reports.
    fn drop(&mut self) {
        self.control.stop_if_running();
        if let Err(e) = std::fs::remove_dir_all(&self.control.dir) {
            eprintln!(
                "cannot remove the private cluster at {}: {e}",
                self.control.dir.display()
            );
        }
    }
}

impl Control {
    /// initdb (or, given a primary's port, a base backup of it as a standby) and the first start,
    /// in a new directory that the returned cluster owns (so a failure half-way still removes it).
    fn create(standby_of: Option<u16>) -> PrivateCluster {
        let bindir = server_bindir().unwrap_or_else(|e| panic!("{e}"));
        let dir = std::env::temp_dir().join(format!("ratchet-cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        // What we just created belongs to our effective user: uid 0 means we are root.
        let as_postgres = std::fs::metadata(&dir).map(|m| m.uid() == 0).unwrap_or(false);
        let mut cluster = PrivateCluster {
            control: Control {
                bindir,
                dir,
                port: free_port(),
                as_postgres,
            },
        };
        let control = &cluster.control;
        if as_postgres {
            let chown = Command::new("chown").arg("postgres").arg(&control.dir).output();
            if !chown.as_ref().is_ok_and(|o| o.status.success()) {
                panic!(
                    "running as root and cannot hand {} to a 'postgres' OS user to run PostgreSQL: {chown:?}",
                    control.dir.display()
                );
            }
        }
        match standby_of {
            None => control.run(control.server_command("initdb").arg("-D").arg(control.data()).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ])),
            // initdb's trust configuration admits replication connections from 127.0.0.1. A fast
            // checkpoint: the default spreads it over minutes once the primary has data.
            Some(primary) => control.run(
                control
                    .server_command("pg_basebackup")
                    .arg("-D")
                    .arg(control.data())
                    .args(["-h", "127.0.0.1", "-p", &primary.to_string(), "-U", "postgres"])
                    .args(["-R", "-X", "stream", "--no-sync", "--checkpoint=fast"]),
            ),
        };

        // The free port may be taken by someone else before the server binds it: try others.
        let mut attempts = 0;
        loop {
            match cluster.control.start_server() {
                Ok(()) => return cluster,
                Err(e) if attempts < 3 && e.contains("already in use") => {
                    attempts += 1;
                    cluster.control.port = free_port();
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `program` from the server binaries, as the `postgres` OS user when we are root.
    fn server_command(&self, program: &str) -> Command {
        let program = self.bindir.join(program);
        let mut command = if self.as_postgres {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(program);
            runuser
        } else {
            Command::new(program)
        };
        // Our working directory may be one the postgres user cannot enter.
        command.current_dir(&self.dir);
        command
    }

    /// Runs `command`, panicking with its output if it fails.
    fn run(&self, command: &mut Command) -> Output {
        self.try_run(command).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `command`; a failure explains itself with the command's output and the server log.
    fn try_run(&self, command: &mut Command) -> Result<Output, String> {
        let output = command.output().map_err(|e| format!("cannot run {command:?}: {e}"))?;
        if output.status.success() {
            return Ok(output);
        }
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let log_tail: Vec<&str> = log.lines().rev().take(20).collect();
        Err(format!(
            "{command:?} failed ({}):\n{}{}\nserver log (last lines):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            log_tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        ))
    }

    /// `pg_ctl start`, waiting until the server accepts connections (after crash recovery, if any).
    fn start_server(&self) -> Result<(), String> {
        let server_options = format!(
            // A throwaway cluster needs neither durability nor the default 128 MB of buffers.
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=16MB",
            self.port,
            self.dir.display()
        );
        self.try_run(
            self.pg_ctl()
                .arg("-l")
                .arg(self.dir.join("log"))
                .args(["-w", "start", "-o"])
                .arg(server_options),
        )
        .map(drop)
    }

    fn stop(&self, mode: &str) {
        self.run(self.pg_ctl().args(["-m", mode, "-w", "stop"]));
    }

    /// `pg_ctl -D <data>`, for the arguments to follow.
    fn pg_ctl(&self) -> Command {
        let mut command = self.server_command("pg_ctl");
        command.arg("-D").arg(self.data());
        command
    }

    /// The postmaster's pid, while `postmaster.pid` exists.
    fn postmaster(&self) -> Option<u32> {
        let lock = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        lock.lines().next()?.trim().parse().ok()
    }

    fn crash(&self) {
        let postmaster = self.postmaster().expect("the cluster is not running");
        // Its backends, before the kill reparents them.
        let mut doomed = children(postmaster);
        doomed.push(postmaster);
        self.run(Command::new("kill").args(["-KILL", &postmaster.to_string()]));
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while doomed.iter().any(|&pid| is_alive(pid)) {
            assert!(Instant::now() < deadline, "the killed server's processes did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
        // A dead postmaster stays a zombie until whoever adopted it reaps it, which a container's
        // init may do late; the next postmaster would see the pid still taken and refuse to start.
        // Every process that had the data directory open is gone, so its lock files are stale
        // (the one for the data directory, and the one for the socket).
        let _ = std::fs::remove_file(self.data().join("postmaster.pid"));
        let _ = std::fs::remove_file(self.dir.join(format!(".s.PGSQL.{}.lock", self.port)));
    }

    /// The immediate stop for `Drop`: never panics, never waits long.
    fn stop_if_running(&self) {
        let Some(postmaster) = self.postmaster() else {
            return;
        };
        if !is_alive(postmaster) {
            return;
        }
        let stopped = self.try_run(self.pg_ctl().args(["-m", "immediate", "-t", "10", "-w", "stop"]));
        if let Err(e) = stopped {
            eprintln!("{e}");
            let _ = Command::new("kill").args(["-KILL", &postmaster.to_string()]).status();
        }
    }
}

/// The server binaries' directory, found as `scripts/test` finds it (see [`find_bindir`]).
pub(super) fn server_bindir() -> Result<PathBuf, String> {
    find_bindir(std::env::var_os("PATH").as_deref(), Path::new(VERSIONED_BINDIRS))
}

/// The directory holding `initdb` and `pg_ctl`: the one on `path`, else the newest version under
/// `versioned` (`/usr/lib/postgresql/<major>/bin`).
fn find_bindir(path: Option<&OsStr>, versioned: &Path) -> Result<PathBuf, String> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = path.into_iter().flat_map(std::env::split_paths).find(|d| has_tools(d)) {
        // Where the PATH entry points (`/usr/local/bin/initdb` may be a link into the server's
        // own directory), for the tools not linked beside it (`pg_basebackup`).
        let real = dir.join("initdb").canonicalize().ok();
        return Ok(real
            .and_then(|initdb| initdb.parent().map(Path::to_owned))
            .unwrap_or(dir));
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(versioned)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            let bin = entry.path().join("bin");
            has_tools(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        format!(
            "no PostgreSQL server binaries (initdb, pg_ctl) on the PATH ({}) or under {}/*/bin: \
             fault tests need them to run a private cluster; install them \
             (for example: apt-get install postgresql)",
            path.map(OsString::from).unwrap_or_default().to_string_lossy(),
            versioned.display()
        )
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Pids whose parent is `parent`, from /proc.
fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let (_, ppid) = state_and_parent(pid)?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// Running, in any state but zombie (a zombie holds no files and no shared memory).
fn is_alive(pid: u32) -> bool {
    state_and_parent(pid).is_some_and(|(state, _)| state != 'Z')
}

/// A process's state letter and parent pid from `/proc/<pid>/stat`: `pid (comm) S ppid ...`,
/// where `comm` may itself hold spaces and parentheses, hence the last `)`.
fn state_and_parent(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// Runs `work` on the blocking pool, re-raising its panic here so the test fails with its message.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[tokio::test]
async fn a_private_cluster_keeps_committed_data_across_a_restart_and_a_sigkill_and_leaves_nothing_behind() {
    let cluster = PrivateCluster::start().await;
    let options = cluster.create_database("ratchet").await;
    let mut before = PgConnection::connect_with(&options).await.unwrap();
    let families: i64 = sqlx::query_scalar("select count(*) from families")
        .fetch_one(&mut before)
        .await
        .expect("the schema is migrated");
    assert_eq!(families, 0);

    cluster.restart().await;
    assert!(
        sqlx::query("select 1").execute(&mut before).await.is_err(),
        "a connection from before the restart must be gone"
    );
    let mut after = PgConnection::connect(&cluster.url("ratchet")).await.unwrap();
    sqlx::raw_sql("create table kept (note text); insert into kept values ('committed before the kill')")
        .execute(&mut after)
        .await
        .unwrap();

    cluster.kill().await;
    assert!(
        sqlx::query("select 1").execute(&mut after).await.is_err(),
        "a connection from before the kill must be gone"
    );
    assert!(
        cluster.log().contains("was interrupted"),
        "a SIGKILL, not a clean stop, so the start ran crash recovery:\n{}",
        cluster.log()
    );
    let mut recovered = PgConnection::connect_with(&options).await.unwrap();
    let note: String = sqlx::query_scalar("select note from kept")
        .fetch_one(&mut recovered)
        .await
        .unwrap();
    assert_eq!(note, "committed before the kill");
    recovered.close().await.unwrap();

    let dir = cluster.dir().to_owned();
    let postmaster = cluster.control.postmaster().unwrap();
    drop(cluster);
    assert!(!dir.exists(), "{} should be removed", dir.display());
    assert!(!is_alive(postmaster), "the server should be stopped");
    assert!(PgConnection::connect_with(&options).await.is_err());
}

#[tokio::test]
async fn a_test_that_panics_still_stops_and_removes_its_private_cluster() {
    let (sender, receiver) = std::sync::mpsc::channel();
    let test = tokio::spawn(async move {
        let cluster = PrivateCluster::start().await;
        sender
            .send((cluster.dir().to_owned(), cluster.control.postmaster().unwrap()))
            .unwrap();
        panic!("the test fails with its cluster running");
    });
    assert!(test.await.unwrap_err().is_panic());
    let (dir, postmaster) = receiver.recv().unwrap();
    assert!(!dir.exists(), "{} should be removed", dir.display());
    assert!(!is_alive(postmaster), "the server should be stopped");
}

#[test]
fn without_server_binaries_starting_a_cluster_fails_and_says_what_to_install() {
    let nowhere = std::env::temp_dir().join(format!("ratchet-no-postgres-{}", uuid::Uuid::new_v4().simple()));
    let error = find_bindir(Some(OsStr::new("/nonexistent")), &nowhere).unwrap_err();
    assert!(error.contains("no PostgreSQL server binaries"), "{error}");
    assert!(error.contains("apt-get install postgresql"), "{error}");
}

#[test]
fn without_server_binaries_on_the_path_the_newest_installed_version_is_used() {
    let root = std::env::temp_dir().join(format!("ratchet-fake-postgres-{}", uuid::Uuid::new_v4().simple()));
    for version in ["9.6", "15", "16", "notaversion"] {
        let bin = root.join(version).join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("initdb"), "").unwrap();
        std::fs::write(bin.join("pg_ctl"), "").unwrap();
    }
    std::fs::create_dir_all(root.join("17").join("bin")).unwrap(); // no binaries: not a candidate

    let found = find_bindir(Some(OsStr::new("/nonexistent")), &root);
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(found.unwrap(), root.join("16").join("bin"));
}
