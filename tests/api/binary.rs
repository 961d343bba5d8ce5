//! The `ratchet` binary as an operator runs it: `migrate` creates and migrates a database,
//! `serve` answers gRPC (with reflection for grpcurl), tokens survive a restart because the
//! key directory created on the first start is reused, SIGTERM stops it cleanly, and no token ever reaches its logs.
//!
//! Where they run: on PostgreSQL (DATABASE_URL). The binary on SQLite, as an operator runs it
//! with no DATABASE_URL, is `sqlite.rs`'s; the last two tests are PostgreSQL by nature (session
//! isolation, two processes on one database).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ratchet::grpc::pb::RotateRequest;
use ratchet::grpc::pb::token_service_client::TokenServiceClient;
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use tonic_reflection::pb::v1::ServerReflectionRequest;

use crate::helpers::{introspect, issue};
use crate::proxy::Proxy;
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

pub fn database_url(options: &PgConnectOptions, database: &str) -> String {
    format!(
        "postgres://{}@{}:{}/{database}",
        options.get_username(),
        options.get_host(),
        options.get_port()
    )
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
    fn start(url: &str, data_dir: &Path, log: &Path) -> Self {
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

#[sqlx::test(migrations = false)]
async fn the_binary_migrates_serves_survives_a_restart_and_never_logs_tokens(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    // `migrate` must create the database itself, so use a name nobody has created.
    let database = format!("ratchet_bin_{}", uuid::Uuid::new_v4().simple());
    let url = database_url(&options, &database);
    let scratch = std::env::temp_dir().join(&database);
    std::fs::create_dir_all(&scratch).unwrap();
    let log = scratch.join("server.log");

    let migrate = Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));

    let server = Server::start(&url, &scratch.join("data"), &log);
    let mut client = server.client().await;
    let pair = issue(&client, "alice").await;
    let rotated = client
        .rotate(RotateRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let survivor = issue(&client, "carol").await;
    let reused = client
        .rotate(RotateRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reused.code(), tonic::Code::Unauthenticated);
    let services = list_services(server.addr).await;
    assert!(
        services.contains(&"ratchet.v1.TokenService".to_string()),
        "{services:?}"
    );
    assert!(services.contains(&"grpc.health.v1.Health".to_string()), "{services:?}");
    assert!(server.terminate().await.success(), "a clean exit on SIGTERM");

    // A second start reuses the key directory the first one created.
    let server = Server::start(&url, &scratch.join("data"), &log);
    let client = server.client().await;
    let other = issue(&client, "bob").await;
    let answer = introspect(&client, &other.access_token).await;
    assert!(answer.active);
    let answer = introspect(&client, &rotated.access_token).await;
    assert!(
        !answer.active,
        "its family was revoked by the reuse above, across the restart too"
    );
    let from_the_first_start = introspect(&client, &survivor.access_token).await;
    assert!(
        from_the_first_start.active,
        "signed before the restart, still verifiable after it"
    );
    assert!(server.terminate().await.success());

    // `ratchet gc` by hand: with no retention, the family revoked for reuse goes, with its two
    // tokens; the live ones stay.
    let gc = Command::new(BIN)
        .args(["gc", "--gc-retention", "0s"])
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
    assert_eq!(
        String::from_utf8_lossy(&gc.stdout).trim(),
        "removed 1 families and 2 refresh tokens; cleared 0 expired seals"
    );

    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("created a key directory with a new EdDSA key") && logs.contains("loaded the key directory"),
        "{logs}"
    );
    for pair in [&pair, &rotated, &survivor, &other] {
        for token in [&pair.refresh_token, &pair.access_token] {
            assert!(!logs.contains(token.as_str()), "a token leaked into the logs");
            assert!(!logs.contains(&token[3..20]), "part of a token leaked into the logs");
        }
    }

    let mut admin = PgConnection::connect_with(&options).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("drop database {database} with (force)")))
        .execute(&mut admin)
        .await
        .unwrap();
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn an_absurd_duration_is_a_configuration_error_naming_the_flag() {
    // 8000y parses but is absurd; the second overflows humantime itself.
    for value in ["8000y", "99999999999999999999y"] {
        let output = Command::new(BIN)
            .args(["serve", "--family-ttl", value])
            // Never reached when the configuration is refused; should it be accepted, the start
            // fails fast on a refused connection instead of serving forever.
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("RATCHET_LISTEN", "127.0.0.1:0")
            .env("RATCHET_DATA_DIR", std::env::temp_dir().join("ratchet-never-created"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{value}: {stderr}");
        assert!(stderr.contains("family-ttl"), "{value}: {stderr}");
    }
}

pub async fn list_services(addr: SocketAddr) -> Vec<String> {
    let mut client = ServerReflectionClient::new(crate::helpers::channel(addr).await);
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

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn serve_refuses_a_database_session_that_is_not_serializable(_pool: PgPoolOptions, options: PgConnectOptions) {
    // Behind a pooler that drops startup parameters, ours included.
    let proxy = Proxy::in_front_of(&options).await;
    proxy.strip_startup_options();
    let routed = proxy.route(options.clone());
    let url = format!(
        "postgres://{}@127.0.0.1:{}/{}?sslmode=disable",
        routed.get_username(),
        routed.get_port(),
        options.get_database().unwrap()
    );
    let scratch = std::env::temp_dir().join(format!("ratchet-isolation-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch).unwrap();
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut server = Server::start_with(&url, &scratch.join("data"), &scratch.join("log"), addr, &[]);
    let status = server
        .wait(Duration::from_secs(20))
        .await
        .expect("serve should refuse to start");
    assert!(!status.success());
    let log = std::fs::read_to_string(scratch.join("log")).unwrap();
    assert!(
        log.contains("refusing to serve") && log.contains("not 'serializable'"),
        "{log}"
    );
    std::fs::remove_dir_all(&scratch).unwrap();
}

/// Issue 8, literally: two `ratchet serve` processes on one database, sharing the signing key
/// (the second reuses the key the first generated in the shared data directory), each caching
/// "live" for an hour. A revocation through one shows in the other's Introspect within a second.
#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn two_server_processes_on_one_database_see_each_others_revocations_within_a_second(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let url = format!(
        "{}?sslmode=disable",
        database_url(&options, options.get_database().unwrap())
    );
    let scratch = std::env::temp_dir().join(format!("ratchet-two-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch).unwrap();
    let data = scratch.join("data");
    let env = [("RATCHET_FAMILY_CACHE_TTL", "1h")];
    let start = |name: &str| {
        let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Server::start_with(&url, &data, &scratch.join(name), addr, &env)
    };
    let a = start("a.log");
    let a_client = a.client().await;
    // Only now: the first start writes the key that the second must reuse.
    let b = start("b.log");
    let b_client = b.client().await;

    let pair = issue(&a_client, "alice").await;
    assert!(
        introspect(&b_client, &pair.access_token).await.active,
        "B verifies A's token"
    );
    assert!(
        introspect(&b_client, &pair.access_token).await.active,
        "and caches it live"
    );
    let mut db = PgConnection::connect_with(&options).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listeners: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and application_name = 'ratchet-revocations'
               and state = 'idle' and (query like 'LISTEN%' or query = 'select 1')",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        if listeners == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the two listeners never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    a_client
        .clone()
        .revoke(ratchet::grpc::pb::RevokeRequest {
            target: Some(ratchet::grpc::pb::revoke_request::Target::FamilyId(
                pair.family_id.clone(),
            )),
        })
        .await
        .unwrap();
    let revoked_at = Instant::now();
    while introspect(&b_client, &pair.access_token).await.active {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "B still says active a second after A revoked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    db.close().await.unwrap();
    assert!(b.terminate().await.success());
    assert!(a.terminate().await.success());
    std::fs::remove_dir_all(&scratch).unwrap();
}
