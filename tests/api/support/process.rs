//! The real `ratchet` binary in a child process: where it is ([`BIN`]), a free port for it, a
//! database URL for it, the running [`Server`] (on PostgreSQL or, through [`DataDir`], on
//! SQLite), and what its reflection lists.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ratchet::grpc::pb::token_service_client::TokenServiceClient;
use sqlx::postgres::PgConnectOptions;
use tonic::transport::Channel;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

pub const BIN: &str = env!("CARGO_BIN_EXE_ratchet");

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `ratchet migrate` on `url`; panics with its output if it fails.
pub fn migrate(url: &str) {
    let migrate = Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", url)
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
}

pub fn database_url(options: &PgConnectOptions, database: &str) -> String {
    format!(
        "postgres://{}@{}:{}/{database}",
        options.get_username(),
        options.get_host(),
        options.get_port()
    )
}

/// Drops `database` (created by a test through the binary, outside `sqlx::test`'s own), with
/// whoever is still connected to it.
pub async fn drop_database(options: &PgConnectOptions, database: &str) {
    use sqlx::Connection as _;
    let mut admin = sqlx::PgConnection::connect_with(options).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database if exists {database} with (force)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

/// Drops a database a test created through the binary when it goes out of scope, whether the
/// test ends or fails: a failed assert left its database on the shared server (two did in one
/// session's runs). Declared right after the database is named, it is dropped last.
pub struct DatabaseGuard {
    options: PgConnectOptions,
    database: String,
}

impl DatabaseGuard {
    pub fn new(options: &PgConnectOptions, database: &str) -> Self {
        Self {
            options: options.clone(),
            database: database.to_owned(),
        }
    }
}

impl Drop for DatabaseGuard {
    fn drop(&mut self) {
        let (options, database) = (self.options.clone(), std::mem::take(&mut self.database));
        // On a thread and a runtime of its own: `drop` cannot await, and may run while the test's
        // runtime unwinds. A failure to drop must not turn a test's failure into an abort.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(drop_database(&options, &database));
        })
        .join();
        if dropped.is_err() {
            eprintln!("could not drop a test database (see the panic above)");
        }
    }
}

/// The real `ratchet serve` in a child process.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The JWKS/discovery HTTP listener (a free port of its own: the default, 8080, would be
    /// shared by every test's server).
    pub http: SocketAddr,
}

impl Server {
    pub fn start(url: &str, data_dir: &Path, log: &Path) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::start_with(url, data_dir, log, addr, &[])
    }

    /// `ratchet serve --no-migrate` on `addr`, with `env` on top of the test defaults.
    pub fn start_with(url: &str, data_dir: &Path, log: &Path, addr: SocketAddr, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BIN);
        command.args(["serve", "--no-migrate"]).env("DATABASE_URL", url);
        Self::spawn(command, data_dir, log, addr, env)
    }

    /// `ratchet serve` on `addr` with no `DATABASE_URL`, as on a fresh machine: SQLite in
    /// `data_dir`, migrated at start; `env` on top of the test defaults.
    pub fn start_on_sqlite_with(data_dir: &Path, log: &Path, addr: SocketAddr, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BIN);
        command.arg("serve").env_remove("DATABASE_URL");
        Self::spawn(command, data_dir, log, addr, env)
    }

    fn spawn(mut command: Command, data_dir: &Path, log: &Path, addr: SocketAddr, env: &[(&str, &str)]) -> Self {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = command
            .args(["--issuer", "https://bin.test"])
            .env("RATCHET_LISTEN", addr.to_string())
            .env("RATCHET_DATA_DIR", data_dir)
            .env("RATCHET_HTTP_LISTEN", http.to_string())
            // As chatty as it gets: even debug logs must not carry a token.
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
            .spawn()
            .unwrap();
        Self { child, addr, http }
    }

    /// Its process id (to read its memory from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`HUP`, `TERM`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Its exit status, once it exits by itself within `within`.
    pub async fn wait(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// SIGKILL: no drain, no cleanup, whatever was in flight is cut.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn client(&self) -> TokenServiceClient<tonic::transport::Channel> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match TokenServiceClient::connect(format!("http://{}", self.addr)).await {
                Ok(client) => return client,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("server never came up: {e}"),
            }
        }
    }

    /// SIGTERM, then the exit status. Waits asynchronously: our own client connections must keep
    /// being driven to answer the server's GOAWAY while it drains.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn list_services(addr: SocketAddr) -> Vec<String> {
    let mut client = ServerReflectionClient::new(super::channel(addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match answers.message().await.unwrap().and_then(|a| a.message_response) {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

/// A data directory of its own, removed at the end.
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn new() -> Self {
        let root = std::env::temp_dir().join(format!("ratchet-sqlite-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root).unwrap();
        Self(root)
    }

    /// `ratchet serve` with no DATABASE_URL, keeping everything in `data/`, and a client
    /// connected to *it*; returns the name of its log. `free_port` only finds a port that was free
    /// a moment ago: a server of another test may take it first, and then this one exits ("cannot
    /// listen") while the client reaches the other one, which knows none of this test's tokens.
    /// The log line saying this server serves on that address settles it; a taken port is tried
    /// again with another.
    pub async fn serve(&self, name: &str) -> (Server, TokenServiceClient<Channel>, String) {
        self.serve_with(name, &[]).await
    }

    /// [`Self::serve`] with `env` on top of the test defaults (which must keep `ratchet::startup`'s
    /// info lines: the one saying where it serves is awaited).
    pub async fn serve_with(&self, name: &str, env: &[(&str, &str)]) -> (Server, TokenServiceClient<Channel>, String) {
        for attempt in 0..5 {
            let log = format!("{name}.{attempt}");
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut server = Server::start_on_sqlite_with(&self.0.join("data"), &self.0.join(&log), addr, env);
            let client = server.client().await;
            let serving = format!("{addr}");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let text = self.log(&log);
                if text
                    .lines()
                    .any(|line| line.contains("serving gRPC") && line.contains(&serving))
                {
                    return (server, client, log);
                }
                if text.contains("cannot listen") {
                    assert!(server.wait(Duration::from_secs(5)).await.is_some(), "{text}");
                    break;
                }
                assert!(Instant::now() < deadline, "{text}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("no free port in five attempts")
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.0.join(name)).unwrap_or_default()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `signal` (`-KILL`, `-QUIT`...) to every process of each of `groups`; quietly.
pub fn signal_groups(signal: &str, groups: &[i32]) {
    for group in groups {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{group}")])
            .stderr(Stdio::null())
            .status();
    }
}

/// Some process of group `group` is still running (zombies aside).
pub fn group_alive(group: i32) -> bool {
    std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|entry| {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
        let Some(fields) = stat
            .rfind(')')
            .map(|end| stat[end + 1..].split_whitespace().collect::<Vec<_>>())
        else {
            return false;
        };
        fields.first().is_some_and(|state| *state != "Z") && fields.get(2) == Some(&group.to_string().as_str())
    })
}
