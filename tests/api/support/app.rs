//! Starting a real server for a test, one way ([`TestApp::builder`]): its own database (from
//! `#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]`, or a SQLite file of its own:
//! [`Db::Sqlite`]), a throwaway signing key, a clock the test controls, a real socket on
//! 127.0.0.1:0 and a connected client; and what a test does with the running server. Looking
//! behind the API at what it stored is [`super::store`]'s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Once};

use super::{HttpAnswer, health_at, http_get, introspect, issue};
use ratchet::clock::{Clock as _, ManualClock};
use ratchet::config::Settings;
use ratchet::grpc::pb::TokenPair;
use ratchet::grpc::pb::token_service_client::TokenServiceClient;
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
use tonic::Status;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

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
        audit_rotations: false,
        rotate_limit: ratchet::domain::RotateLimit::default(),
    }
}

/// Cleanup as `serve` runs it by default, but only when a test asks ([`TestApp::collect_garbage`]).
pub fn test_cleanup() -> CleanupSettings {
    CleanupSettings {
        retention: Duration::days(1),
        audit_retention: Duration::days(90),
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
    pub(super) db: Option<PgPool>,
    /// What a replica needs to share with it ([`TestApp::replica`]).
    identity: Identity,
    /// Where its PostgreSQL database is.
    options: Option<PgConnectOptions>,
    /// Its SQLite database file, removed when it stops.
    pub(super) sqlite: Option<PathBuf>,
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

/// What replicas of one deployment share: the signing key (so that each verifies the others'
/// access tokens) and the server secret.
#[derive(Clone)]
struct Identity {
    key_der: Vec<u8>,
    secret: ServerSecret,
}

impl Identity {
    fn generate(algorithm: KeyAlgorithm) -> Self {
        Self {
            key_der: SigningKey::generate(algorithm).unwrap().1,
            secret: ServerSecret::generate().unwrap(),
        }
    }
}

/// Where a test server keeps its families: what [`TestApp::builder`] starts from. Cloned by tests
/// that start several servers one after another (one per key algorithm, say): on PostgreSQL they
/// share the test's database, on SQLite each gets a file of its own.
#[expect(clippy::large_enum_variant, reason = "one per test")]
#[derive(Clone)]
pub enum Db {
    /// A fresh PostgreSQL database of the test's own (from `#[sqlx::test]`).
    Postgres(PgConnectOptions),
    /// A fresh SQLite file under the temporary directory (removed by [`TestApp::stop`]): what
    /// `ratchet serve` runs on with no `DATABASE_URL`.
    Sqlite,
}

impl From<PgConnectOptions> for Db {
    fn from(options: PgConnectOptions) -> Self {
        Self::Postgres(options)
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
                    super::$test($crate::support::Db::Postgres(options)).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::support::Db::Sqlite).await;
                }
            )*
        }
    };
}
pub(crate) use on_every_backend;

/// Has the server's revocation listener connect with `options` instead of where its pool does.
pub fn listen_via(parts: &mut Parts, options: PgConnectOptions) {
    let Backend::Postgres(store) = &parts.store else {
        panic!("only PostgreSQL has a revocation listener")
    };
    parts.store = Backend::Postgres(store.clone().with_listener_options(options));
}

/// A change to the parts of a server about to start ([`TestAppBuilder::adjust`]).
type Adjustment<'a> = Box<dyn FnOnce(&mut Parts) + 'a>;

/// The one way a test starts an in-process server: [`TestApp::builder`] (or
/// [`TestApp::replica`]), then what the test needs to differ from the defaults, then
/// [`spawn`](Self::spawn). Everything not named keeps the test defaults of [`Self::spawn`].
#[must_use = "a builder starts nothing until `spawn`"]
pub struct TestAppBuilder<'a> {
    db: Db,
    pool: PoolSettings,
    /// A pool the test made itself (pointing anywhere, even at nothing); `db` is then only where
    /// the test looks behind the API.
    on_pool: Option<ConnectionPool>,
    identity: Identity,
    now: OffsetDateTime,
    adjust: Vec<Adjustment<'a>>,
}

impl TestApp {
    /// A server on `db` (a [`Db`], or the `PgConnectOptions` of a `#[sqlx::test]` database).
    pub fn builder<'a>(db: impl Into<Db>) -> TestAppBuilder<'a> {
        TestAppBuilder {
            db: db.into(),
            pool: PoolSettings {
                max_connections: 8,
                timeout: std::time::Duration::from_secs(5),
            },
            on_pool: None,
            identity: Identity::generate(KeyAlgorithm::EdDSA),
            // A fixed, whole-second start keeps expiry arithmetic in tests exact.
            now: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
            adjust: Vec::new(),
        }
    }

    /// Another server process of the same deployment: the same database, signing key and server
    /// secret, its own pool, cache, revocation listener and clock (set to this one's `now`).
    pub fn replica<'a>(&self) -> TestAppBuilder<'a> {
        let options = self.options.clone().expect("replicas share a PostgreSQL database");
        TestAppBuilder {
            identity: self.identity.clone(),
            now: self.now(),
            ..Self::builder(options)
        }
    }
}

impl<'a> TestAppBuilder<'a> {
    /// The issuing policy (default: [`test_policy`]).
    pub fn policy(self, policy: Policy) -> Self {
        self.adjust(move |parts| parts.settings.policy = policy)
    }

    /// [`test_policy`] with a reuse grace of `grace`.
    pub fn reuse_grace(self, grace: Duration) -> Self {
        self.adjust(move |parts| parts.settings.policy.reuse_grace = grace)
    }

    /// The database pool's size and timeout (PostgreSQL only).
    pub fn pool(mut self, settings: PoolSettings) -> Self {
        self.pool = settings;
        self
    }

    /// Runs the server on `pool` (which may point anywhere, even at nothing) instead of one of
    /// its own on the test's database, which then serves only for looking behind the API.
    pub fn on_pool(mut self, pool: ConnectionPool) -> Self {
        self.on_pool = Some(pool);
        self
    }

    /// A fresh signing key of `algorithm` (default: EdDSA); [`TestApp::key_pem`] gives it back.
    pub fn algorithm(mut self, algorithm: KeyAlgorithm) -> Self {
        self.identity = Identity::generate(algorithm);
        self
    }

    /// Changes the server's parts after the test defaults and whatever was set before: for
    /// settings few tests need. Applied in the order given.
    pub fn adjust(mut self, adjust: impl FnOnce(&mut Parts) + 'a) -> Self {
        self.adjust.push(Box::new(adjust));
        self
    }

    /// Builds the application, runs it on its own task and connects a client.
    pub async fn spawn(self) -> TestApp {
        init_logs();
        let (store, inspect, sqlite) = match self.db {
            Db::Postgres(options) => {
                let pool = self
                    .on_pool
                    .unwrap_or_else(|| postgres::pool(options.clone(), &self.pool));
                (Backend::Postgres(PgStore::new(pool, &self.pool)), Some(options), None)
            }
            Db::Sqlite => {
                assert!(self.on_pool.is_none(), "a pool of one's own is PostgreSQL's");
                let name = format!("ratchet-api-{}.db", uuid::Uuid::new_v4().simple());
                let target = SqliteTarget {
                    path: std::env::temp_dir().join(name),
                    settings: SqliteSettings::default(),
                };
                sqlite::migrate(&target).await.expect("migrate the SQLite database");
                (Backend::Sqlite(SqliteStore::open(&target)), None, Some(target.path))
            }
        };
        let identity = self.identity;
        let clock = Arc::new(ManualClock::new(self.now));
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
        for adjust in self.adjust {
            adjust(&mut parts);
        }
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
            sqlite,
            stop: Some(stop),
            server,
        }
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

    /// The server's signing key as PKCS#8 PEM (to forge with).
    pub fn key_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PRIVATE KEY", self.identity.key_der.clone()))
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

    /// What the health service says of the token service.
    pub async fn health(&self) -> ServingStatus {
        health_at(self.addr).await
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
