//! Starting a real server for a test: its own database (from `#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]`,
//! or a SQLite file of its own: [`spawn_sqlite_app`]), a throwaway signing key, a clock the test
//! controls, a real socket on 127.0.0.1:0 and a connected client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Once};

use ratchet::clock::{Clock as _, ManualClock};
use ratchet::config::Settings;
use ratchet::grpc::pb::token_service_client::TokenServiceClient;
use ratchet::grpc::pb::{IssueRequest, TokenPair};
use ratchet::issuer::Policy;
use ratchet::issuer::cleanup::{CleanupReport, CleanupSettings};
use ratchet::keys::{KeyAlgorithm, KeySet, Keyring, ServerSecret, SigningKey};
use ratchet::startup::{Application, Parts};
use ratchet::store::Backend;
use ratchet::store::postgres::ConnectionPool;
use ratchet::store::postgres::{self, PgStore, PoolSettings};
use ratchet::store::sqlite::{self, SqliteSettings, SqliteStore, SqliteTarget};
use sqlx::postgres::{PgConnectOptions, PgPool};
use time::{Duration, OffsetDateTime};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt as _;

pub const ISSUER: &str = "https://ratchet.test";
pub const AUDIENCE: &str = "default-api";

/// The policy tests start from; each test adjusts what it exercises.
pub fn test_policy() -> Policy {
    Policy {
        issuer: ISSUER.to_owned(),
        default_audience: AUDIENCE.to_owned(),
        access_ttl: Duration::minutes(15),
        refresh_ttl: Duration::days(7),
        family_ttl: Duration::days(30),
        reuse_grace: Duration::ZERO,
        leeway: Duration::seconds(5),
        max_sessions: 100,
    }
}

/// Cleanup as `serve` runs it by default, but only when a test asks ([`TestApp::collect_garbage`]).
pub fn test_cleanup() -> CleanupSettings {
    CleanupSettings {
        retention: Duration::days(1),
        batch: 1000,
        sweep_windows: None,
        pause: std::time::Duration::ZERO,
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// The JWKS/discovery HTTP listener.
    pub http_addr: Option<SocketAddr>,
    /// The server's keys (to rotate them from a test).
    pub keys: Arc<Keyring>,
    pub client: TokenServiceClient<Channel>,
    pub clock: Arc<ManualClock>,
    /// The server's own store, for maintenance the binary runs outside the API (`ratchet gc`).
    pub store: Backend,
    /// On PostgreSQL, a second pool on the same database, for looking behind the API (what is
    /// stored); see [`TestApp::db`].
    db: Option<PgPool>,
    /// What a replica needs to share with it ([`TestApp::spawn_replica`]).
    identity: Identity,
    /// Where its PostgreSQL database is.
    options: Option<PgConnectOptions>,
    /// Its SQLite database file, removed when it stops.
    sqlite: Option<PathBuf>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<anyhow::Result<()>>,
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            ratchet::telemetry::init(ratchet::telemetry::LogFormat::Text);
        }
    });
}

/// A server on its own database with the default test policy.
pub async fn spawn_app(options: PgConnectOptions) -> TestApp {
    spawn_app_with(options, test_policy()).await
}

pub async fn spawn_app_with(options: PgConnectOptions, policy: Policy) -> TestApp {
    spawn_app_adjusted(options, |parts| parts.settings.policy = policy).await
}

/// A server whose parts (all but the clock) `adjust` changes first: for settings few tests need.
pub async fn spawn_app_adjusted(options: PgConnectOptions, adjust: impl FnOnce(&mut Parts)) -> TestApp {
    let settings = PoolSettings {
        max_connections: 8,
        timeout: std::time::Duration::from_secs(5),
    };
    let pool = postgres::pool(options.clone(), &settings);
    start(on(pool, &settings), options, adjust).await
}

/// A server whose database pool uses `settings` (its size, its timeout).
pub async fn spawn_app_with_settings(options: PgConnectOptions, settings: PoolSettings, policy: Policy) -> TestApp {
    spawn_app_with_settings_adjusted(options, settings, |parts| parts.settings.policy = policy).await
}

/// As [`spawn_app_with_settings`], with `adjust` changing the other parts.
pub async fn spawn_app_with_settings_adjusted(
    options: PgConnectOptions,
    settings: PoolSettings,
    adjust: impl FnOnce(&mut Parts),
) -> TestApp {
    let pool = postgres::pool(options.clone(), &settings);
    start(on(pool, &settings), options, adjust).await
}

/// What replicas of one deployment share: the signing key (so that each verifies the others'
/// access tokens) and the server secret.
#[derive(Clone)]
struct Identity {
    key_der: Vec<u8>,
    secret: ServerSecret,
}

impl Identity {
    fn generate() -> Self {
        Self {
            key_der: SigningKey::generate(KeyAlgorithm::EdDSA).unwrap().1,
            secret: ServerSecret::generate().unwrap(),
        }
    }
}

/// A server on a SQLite database file of its own under the temporary directory (removed by
/// [`TestApp::stop`]), with the test defaults and then `adjust` applied: what `ratchet serve` runs
/// on with no `DATABASE_URL`.
pub async fn spawn_sqlite_app(adjust: impl FnOnce(&mut Parts)) -> TestApp {
    let name = format!("ratchet-api-{}.db", uuid::Uuid::new_v4().simple());
    let target = SqliteTarget {
        path: std::env::temp_dir().join(name),
        settings: SqliteSettings::default(),
    };
    sqlite::migrate(&target).await.expect("migrate the SQLite database");
    let store = Backend::Sqlite(SqliteStore::open(&target));
    let mut app = start_as(Identity::generate(), store, None, adjust).await;
    app.sqlite = Some(target.path);
    app
}

/// Where a test that runs on every backend ([`on_every_backend!`]) starts its server. Cloned by
/// tests that start several servers one after another (one per key algorithm, say): on PostgreSQL
/// they share the test's database, on SQLite each gets a file of its own.
#[expect(clippy::large_enum_variant, reason = "one per test")]
#[derive(Clone)]
pub enum Db {
    /// A fresh PostgreSQL database of the test's own (from `#[sqlx::test]`).
    Postgres(PgConnectOptions),
    /// A fresh SQLite file.
    Sqlite,
}

impl Db {
    pub async fn spawn(self) -> TestApp {
        self.spawn_adjusted(|_| {}).await
    }

    pub async fn spawn_with(self, policy: Policy) -> TestApp {
        self.spawn_adjusted(|parts| parts.settings.policy = policy).await
    }

    pub async fn spawn_with_grace(self, grace: Duration) -> TestApp {
        self.spawn_with(Policy {
            reuse_grace: grace,
            ..test_policy()
        })
        .await
    }

    pub async fn spawn_adjusted(self, adjust: impl FnOnce(&mut Parts)) -> TestApp {
        match self {
            Self::Postgres(options) => spawn_app_adjusted(options, adjust).await,
            Self::Sqlite => spawn_sqlite_app(adjust).await,
        }
    }
}

/// Runs each `async fn name(db: Db)` of the calling module twice, as `postgres::name` (on a
/// `#[sqlx::test]` database) and `sqlite::name`: one test, every backend, no copies.
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
                async fn $test(_pool: sqlx::postgres::PgPoolOptions, options: sqlx::postgres::PgConnectOptions) {
                    super::$test($crate::helpers::Db::Postgres(options)).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::helpers::Db::Sqlite).await;
                }
            )*
        }
    };
}
pub(crate) use on_every_backend;

/// A server on `pool` (which may point anywhere, even at nothing).
pub async fn spawn_on_pool(
    pool: ConnectionPool,
    settings: PoolSettings,
    policy: Policy,
    inspect: PgConnectOptions,
) -> TestApp {
    start(on(pool, &settings), inspect, |parts| parts.settings.policy = policy).await
}

/// The store a server on `pool` runs on.
fn on(pool: ConnectionPool, settings: &PoolSettings) -> Backend {
    Backend::Postgres(PgStore::new(pool, settings))
}

/// Has the server's revocation listener connect with `options` instead of where its pool does.
pub fn listen_via(parts: &mut Parts, options: PgConnectOptions) {
    let Backend::Postgres(store) = &parts.store else {
        panic!("only PostgreSQL has a revocation listener")
    };
    parts.store = Backend::Postgres(store.clone().with_listener_options(options));
}

async fn start(store: Backend, inspect: PgConnectOptions, adjust: impl FnOnce(&mut Parts)) -> TestApp {
    start_as(Identity::generate(), store, Some(inspect), adjust).await
}

async fn start_as(
    identity: Identity,
    store: Backend,
    inspect: Option<PgConnectOptions>,
    adjust: impl FnOnce(&mut Parts),
) -> TestApp {
    init_logs();
    // A fixed, whole-second start keeps expiry arithmetic in tests exact.
    let clock = Arc::new(ManualClock::new(
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
    ));
    // What `ratchet serve` runs with by default, but for what a test server needs to differ in.
    let mut settings = Settings::defaults().expect("the defaults are valid");
    settings.listen = "127.0.0.1:0".parse().unwrap();
    if let Some(http) = settings.http.as_mut() {
        http.listen = "127.0.0.1:0".parse().unwrap();
    }
    settings.policy = test_policy();
    // Test servers trust a cached "family is live" for a minute; tests of that bound set their own.
    settings.family_cache_ttl = std::time::Duration::from_secs(60);
    settings.cleanup = test_cleanup();
    // No background cleanup: tests run a pass when they mean to.
    settings.cleanup_interval = std::time::Duration::ZERO;
    let mut parts = Parts {
        settings,
        store,
        keys: KeySet::single(SigningKey::from_pkcs8_der(&identity.key_der).unwrap()),
        key_source: None,
        secret: identity.secret.clone(),
        clock: clock.clone(),
    };
    adjust(&mut parts);
    let tls = parts.settings.transport.tls.is_some();
    let app = Application::from_parts(parts).await.expect("build the application");
    let addr = app.local_addr().unwrap();
    let http_addr = app.http_addr();
    let keys = app.keys();
    let store = app.store();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    // A TLS server refuses this plaintext client: TLS tests bring their own (tests/api/tls.rs).
    let client = if tls {
        TokenServiceClient::new(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_lazy(),
        )
    } else {
        TokenServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect to the server")
    };
    let db = inspect.clone().map(|inspect| {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy_with(inspect)
    });
    TestApp {
        addr,
        http_addr,
        keys,
        client,
        clock,
        store,
        db,
        identity,
        options: inspect,
        sqlite: None,
        stop: Some(stop),
        server,
    }
}

impl TestApp {
    /// Stops the server and closes every connection, so the test database can be dropped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.server).await.expect("server task").expect("server result");
        if let Some(db) = &self.db {
            db.close().await;
        }
        if let Some(database) = &self.sqlite {
            for suffix in ["", "-wal", "-shm"] {
                let mut path = database.clone().into_os_string();
                path.push(suffix);
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Why `family_id` was revoked, as stored (`None`: it is not), read behind the API on either
    /// backend.
    pub async fn revoked_reason(&self, family_id: &str) -> Option<String> {
        match (&self.db, &self.sqlite) {
            (Some(db), _) => sqlx::query_scalar("select revoked_reason from families where id = $1::uuid")
                .bind(family_id)
                .fetch_one(db)
                .await
                .unwrap(),
            (None, Some(file)) => sqlx::query_scalar("select revoked_reason from families where id = ?1")
                .bind(family_id)
                .fetch_one(&mut inspect_sqlite(file).await)
                .await
                .unwrap(),
            (None, None) => unreachable!("every server has a database"),
        }
    }

    /// How many refresh tokens are stored, spent ones included, in `family_id` or (`None`) in all.
    pub async fn stored_refresh_tokens(&self, family_id: Option<&str>) -> i64 {
        match (&self.db, &self.sqlite) {
            (Some(db), _) => {
                sqlx::query_scalar("select count(*) from refresh_tokens where $1::uuid is null or family_id = $1::uuid")
                    .bind(family_id)
                    .fetch_one(db)
                    .await
                    .unwrap()
            }
            (None, Some(file)) => {
                sqlx::query_scalar("select count(*) from refresh_tokens where ?1 is null or family_id = ?1")
                    .bind(family_id)
                    .fetch_one(&mut inspect_sqlite(file).await)
                    .await
                    .unwrap()
            }
            (None, None) => unreachable!("every server has a database"),
        }
    }

    /// How many families are stored, revoked and expired ones included: "did this leave anything
    /// behind", on either backend.
    pub async fn stored_families(&self) -> i64 {
        match (&self.db, &self.sqlite) {
            (Some(db), _) => sqlx::query_scalar("select count(*) from families")
                .fetch_one(db)
                .await
                .unwrap(),
            (None, Some(file)) => sqlx::query_scalar("select count(*) from families")
                .fetch_one(&mut inspect_sqlite(file).await)
                .await
                .unwrap(),
            (None, None) => unreachable!("every server has a database"),
        }
    }

    /// Inserts a refresh token behind the server's back into `family_id`, as the successor of the
    /// token hashed `parent` (`None`: as a first token), on either backend: what a future code
    /// path gone wrong might do, for tests that the schema itself refuses it. The token is
    /// inserted spent, so that only the index against branching can refuse it (SQLite also has
    /// one against a second unspent token, which would refuse an unspent one either way).
    pub async fn force_refresh_token(&self, family_id: &str, parent: Option<Vec<u8>>) -> Result<(), sqlx::Error> {
        match (&self.db, &self.sqlite) {
            (Some(db), _) => sqlx::query(
                "insert into refresh_tokens (hash, family_id, parent_hash, created_at, expires_at, spent_at, successor_hash)
                 values (sha256(gen_random_uuid()::text::bytea), $1::uuid, $2, now(), now() + interval '1 day',
                         now(), sha256(gen_random_uuid()::text::bytea))",
            )
            .bind(family_id)
            .bind(parent)
            .execute(db)
            .await
            .map(drop),
            (None, Some(file)) => {
                use sqlx::Connection as _;
                let options = sqlx::sqlite::SqliteConnectOptions::new().filename(file);
                let mut connection = sqlx::sqlite::SqliteConnection::connect_with(&options).await.unwrap();
                let result = sqlx::query(
                    "insert into refresh_tokens (hash, family_id, parent_hash, created_at, expires_at, spent_at, successor_hash)
                     values (randomblob(32), ?1, ?2, 0, 86400000000, 0, randomblob(32))",
                )
                .bind(family_id)
                .bind(parent)
                .execute(&mut connection)
                .await
                .map(drop);
                connection.close().await.unwrap();
                result
            }
            (None, None) => unreachable!("every server has a database"),
        }
    }

    /// Every value in every table, as an attacker's dump of the database (PostgreSQL's, or a copy
    /// of the SQLite file) has it: bytea/blob columns as their bytes, everything else as text.
    /// NULLs are left out. The tables are found, not listed, so a new one is dumped too.
    pub async fn dump(&self) -> Vec<Stored> {
        let mut stored = Vec::new();
        match (&self.db, &self.sqlite) {
            (Some(db), _) => {
                let tables: Vec<String> = sqlx::query_scalar(
                    "select table_name::text from information_schema.tables
                     where table_schema = current_schema() and table_type = 'BASE TABLE'",
                )
                .fetch_all(db)
                .await
                .unwrap();
                for table in tables {
                    let rows: Vec<serde_json::Value> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                        "select row_to_json(t)::jsonb from \"{table}\" t"
                    )))
                    .fetch_all(db)
                    .await
                    .unwrap();
                    for row in rows {
                        for (column, value) in row.as_object().unwrap() {
                            let bytes = match value {
                                serde_json::Value::Null => continue,
                                // bytea comes out as "\\x<hex>"
                                serde_json::Value::String(text) => match text.strip_prefix("\\x") {
                                    Some(hex) => (0..hex.len() / 2)
                                        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                                        .collect(),
                                    None => text.clone().into_bytes(),
                                },
                                other => other.to_string().into_bytes(),
                            };
                            stored.push(Stored {
                                table: table.clone(),
                                column: column.clone(),
                                bytes,
                            });
                        }
                    }
                }
            }
            (None, Some(file)) => {
                use sqlx::{Column as _, Row as _, TypeInfo as _, ValueRef as _};
                let mut connection = inspect_sqlite(file).await;
                let tables: Vec<String> = sqlx::query_scalar(
                    "select name from sqlite_schema where type = 'table' and name not like 'sqlite_%'",
                )
                .fetch_all(&mut connection)
                .await
                .unwrap();
                for table in tables {
                    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("select * from \"{table}\"")))
                        .fetch_all(&mut connection)
                        .await
                        .unwrap();
                    for row in rows {
                        for (i, column) in row.columns().iter().enumerate() {
                            let raw = row.try_get_raw(i).unwrap();
                            // The type of the value itself: SQLite's is per value, not per column.
                            let bytes = match raw.type_info().name() {
                                "NULL" => continue,
                                "BLOB" => row.get::<Vec<u8>, _>(i),
                                "INTEGER" => row.get::<i64, _>(i).to_string().into_bytes(),
                                "REAL" => row.get::<f64, _>(i).to_string().into_bytes(),
                                _ => row.get::<String, _>(i).into_bytes(),
                            };
                            stored.push(Stored {
                                table: table.clone(),
                                column: column.name().to_owned(),
                                bytes,
                            });
                        }
                    }
                }
            }
            (None, None) => unreachable!("every server has a database"),
        }
        stored
    }

    /// The second pool on its PostgreSQL database, for tests that look at what is stored (or
    /// change the schema under the server). Every such test runs on PostgreSQL only.
    pub fn db(&self) -> &PgPool {
        self.db
            .as_ref()
            .expect("a server on PostgreSQL (this one is on SQLite)")
    }
    /// Another server process of the same deployment: the same database, signing key and server
    /// secret, its own pool, cache, revocation listener and clock; `adjust` changes its parts.
    pub async fn spawn_replica(&self, adjust: impl FnOnce(&mut Parts)) -> TestApp {
        let settings = PoolSettings {
            max_connections: 8,
            timeout: std::time::Duration::from_secs(5),
        };
        let options = self.options.clone().expect("replicas share a PostgreSQL database");
        let pool = postgres::pool(options.clone(), &settings);
        let replica = start_as(self.identity.clone(), on(pool, &settings), Some(options), adjust).await;
        replica.clock.set(self.now());
        replica
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// `GET path` on the HTTP (JWKS) listener, with `headers`.
    pub async fn http_get(&self, path: &str, headers: &[(&str, &str)]) -> HttpAnswer {
        http_get(self.http_addr.expect("an HTTP listener"), path, headers).await
    }

    /// The JWK Set as the gRPC API serves it.
    pub async fn jwks(&self) -> serde_json::Value {
        let answer = self
            .client
            .clone()
            .get_jwks(ratchet::grpc::pb::GetJwksRequest {})
            .await
            .expect("GetJwks")
            .into_inner();
        serde_json::from_str(&answer.jwks_json).expect("the JWKS is JSON")
    }

    /// The first page of `subject`'s live sessions.
    pub async fn sessions(&self, subject: &str) -> Vec<ratchet::grpc::pb::Session> {
        self.client
            .clone()
            .list_sessions(ratchet::grpc::pb::ListSessionsRequest {
                subject: subject.into(),
                ..Default::default()
            })
            .await
            .expect("list sessions")
            .into_inner()
            .sessions
    }

    /// How many live families `subject` has at the server's `now`, read through the server's own
    /// store: for tests whose caller policy would refuse ListSessions, on any backend.
    pub async fn live_families(&self, subject: &str) -> usize {
        use ratchet::store::FamilyStore as _;
        self.store
            .live_families(subject, self.now(), None, 1000)
            .await
            .expect("list live families")
            .len()
    }

    /// Revokes one family by id through the API.
    pub async fn revoke_family(&self, family_id: &str) {
        self.client
            .clone()
            .revoke(ratchet::grpc::pb::RevokeRequest {
                target: Some(ratchet::grpc::pb::revoke_request::Target::FamilyId(family_id.into())),
            })
            .await
            .expect("revoke");
    }

    /// Runs `body` (PL/pgSQL, ending in `return new` or raising) before every update of a refresh
    /// token, i.e. in every spend, until [`Self::unhook_spends`]: a slow or failing database on
    /// demand.
    pub async fn hook_spends(&self, body: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "create function spend_hook() returns trigger language plpgsql as $$ begin {body} end $$;
             create trigger spend_hook before update on refresh_tokens
             for each row execute function spend_hook();"
        )))
        .execute(self.db())
        .await
        .unwrap();
    }

    pub async fn unhook_spends(&self) {
        sqlx::raw_sql("drop trigger spend_hook on refresh_tokens; drop function spend_hook();")
            .execute(self.db())
            .await
            .unwrap();
    }

    /// What the health service says of the token service.
    pub async fn health(&self) -> ServingStatus {
        let mut client = HealthClient::new(channel(self.addr).await);
        let answer = client
            .check(HealthCheckRequest {
                service: "ratchet.v1.TokenService".into(),
            })
            .await
            .unwrap()
            .into_inner();
        ServingStatus::try_from(answer.status).unwrap()
    }

    /// Waits (at most 15 s) until health says `want`.
    pub async fn wait_for_health(&self, want: ServingStatus) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while self.health().await != want {
            assert!(std::time::Instant::now() < deadline, "health never became {want:?}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// One cleanup pass at the server's `now` with a sweep from the start, as `ratchet gc` runs it.
    pub async fn collect_garbage(&self, settings: &CleanupSettings) -> CleanupReport {
        let mut sweep = ratchet::issuer::cleanup::Sweep::default();
        ratchet::issuer::cleanup::collect_garbage(&self.store, self.now(), settings, &mut sweep)
            .await
            .expect("cleanup pass")
    }

    pub async fn issue(&self, subject: &str) -> TokenPair {
        issue(&self.client, subject).await
    }

    pub async fn rotate(&self, refresh_token: &str) -> Result<TokenPair, Status> {
        self.client
            .clone()
            .rotate(ratchet::grpc::pb::RotateRequest {
                refresh_token: refresh_token.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn introspect(&self, token: &str) -> ratchet::grpc::pb::IntrospectResponse {
        introspect(&self.client, token).await
    }
}

/// One value of a [`TestApp::dump`].
#[derive(Debug)]
pub struct Stored {
    pub table: String,
    pub column: String,
    pub bytes: Vec<u8>,
}

/// A read-only connection to a test server's SQLite file, beside the server's own.
async fn inspect_sqlite(file: &std::path::Path) -> sqlx::sqlite::SqliteConnection {
    use sqlx::Connection as _;
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(file).read_only(true);
    sqlx::sqlite::SqliteConnection::connect_with(&options).await.unwrap()
}

/// Issues a pair for `subject` with nothing else set.
pub async fn issue(client: &TokenServiceClient<Channel>, subject: &str) -> TokenPair {
    client
        .clone()
        .issue(IssueRequest {
            subject: subject.into(),
            ..Default::default()
        })
        .await
        .expect("issue")
        .into_inner()
}

/// Introspects `token` without a hint.
pub async fn introspect(client: &TokenServiceClient<Channel>, token: &str) -> ratchet::grpc::pb::IntrospectResponse {
    client
        .clone()
        .introspect(ratchet::grpc::pb::IntrospectRequest {
            token: token.into(),
            token_type_hint: String::new(),
        })
        .await
        .expect("introspect")
        .into_inner()
}

/// Part `index` of a JWT (0 header, 1 payload) as JSON, without verifying anything.
pub fn jwt_part(jwt: &str, index: usize) -> serde_json::Value {
    use base64::Engine as _;
    let part = jwt.split('.').nth(index).expect("a JWT part");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON")
}

/// Asserts `status` is UNAUTHENTICATED with ErrorInfo `reason` in domain `ratchet`.
#[track_caller]
pub fn assert_token_error(status: &Status, reason: &str) {
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let info = status.get_details_error_info().expect("an ErrorInfo detail");
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "ratchet");
}

/// Asserts `status` is INVALID_ARGUMENT and its message names `field`.
#[track_caller]
pub fn assert_invalid_argument(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with(&format!("{field}:")),
        "message {:?} should name {field}",
        status.message()
    );
}

/// A plaintext gRPC channel to `addr`, for clients that have no `connect` of their own.
pub async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A channel to `addr` that counts the TCP connections it opens, so a test can tell "the call
/// failed and the connection lived on" from "the connection died and the channel quietly
/// reconnected".
pub async fn counting_channel(addr: SocketAddr) -> (Channel, Arc<std::sync::atomic::AtomicUsize>) {
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = opened.clone();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    (channel, opened)
}

/// An HTTP/1.1 answer: status, headers (names lower-cased) and body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

/// A plain HTTP/1.1 GET over a fresh connection (`Connection: close`), read to the end: enough
/// for the JWKS listener, without an HTTP client crate in the tests. `Host` is `addr` unless
/// `headers` name one.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpAnswer {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect over HTTP");
    let mut request = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect::<Vec<_>>();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    HttpAnswer { status, headers, body }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}
