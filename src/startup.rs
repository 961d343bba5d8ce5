//! Building and running the server.
//!
//! [`Application::build`] does what `ratchet serve` needs from a [`Config`] (database, migrations,
//! signing key); [`Application::from_parts`] takes ready-made parts, which is how tests inject a
//! fresh database, a throwaway key and a controllable clock. Either way the listener is bound
//! before `run_until_stopped`, so the caller knows the address (port 0 works).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, DatabaseConfig, GcConfig};
use crate::config::{HttpConfig, TransportLimits};
use crate::grpc::TokenServiceImpl;
use crate::grpc::access::AccessLayer;
use crate::grpc::authz::{self, AuthorizationImpl, AuthorizationService};
use crate::grpc::budget::{self, BudgetLayer, MemoryBudget};
use crate::grpc::message_limit::MessageLimitLayer;
use crate::grpc::panic::CatchPanicLayer;
use crate::grpc::pb::{self, token_service_server::TokenServiceServer};
use crate::grpc::shed::ShedLayer;
use crate::issuer::cleanup::{self, CleanupReport, CleanupSettings, Sweep};
use crate::issuer::{Issuer, Policy, RuntimeIssuer};
use crate::keys::secret::SecretSource;
use crate::keys::source::{KeySource, Origin};
use crate::keys::{KeySet, Keyring, ServerSecret};
use crate::policy::AccessSettings;
use crate::store::cached::{CachedStore, FamilyCache};
use crate::store::postgres::PgTarget;
use crate::store::sqlite::{DatabaseLock, SqliteTarget};
use crate::store::{Backend, FamilyStore as _, RuntimeStore, Target};
use crate::transport::idle::ActivityLayer;
use crate::transport::{self, PeerIdentityLayer, TransportConfig};

/// Largest request accepted. Far above any valid request (8 KiB of claims plus 128 names of
/// 255 bytes), so that oversized *fields* reach validation and get a named INVALID_ARGUMENT.
/// Bigger requests get RESOURCE_EXHAUSTED ([`MessageLimitLayer`]). What a request may decode to
/// is bounded apart (`grpc::codec`), and what all calls in flight hold together (`grpc::budget`).
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// The services whose calls are charged to the request memory budget (`grpc::budget`), with
/// their message limits.
const METERED: [(&str, usize); 2] = [
    ("/ratchet.v1.TokenService/", MAX_REQUEST_BYTES),
    ("/envoy.service.auth.v3.Authorization/", authz::MAX_CHECK_BYTES),
];
/// Largest health or reflection request: a service, file or symbol name, far under this. These
/// calls are not charged to the request budget (a health probe must never be refused for
/// memory), so their own limit is what bounds them.
const MAX_HEALTH_REQUEST_BYTES: usize = 4 * 1024;
/// Longest any RPC may run, whatever the client's deadline; see [`request_timeout`].
const MIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long shutdown waits for in-flight calls and connections before closing them anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Families whose liveness Introspect keeps in memory (an entry is a few dozen bytes).
const FAMILY_CACHE_CAPACITY: usize = 100_000;
/// How often the health service re-checks the database.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Everything a server is made of.
pub struct Parts {
    pub listen: SocketAddr,
    /// Where families and tokens are kept ([`Backend::open`]).
    pub store: Backend,
    pub keys: KeySet,
    /// Where to read the keys again (on SIGHUP and every `keys_reload_interval`); `None`: the
    /// keys never change.
    pub key_source: Option<KeySource>,
    pub keys_reload_interval: Duration,
    /// The JWKS/discovery listener, if any.
    pub http: Option<HttpConfig>,
    /// Byte budget of the verified access-token cache (zero: verify every time).
    pub verified_cache_bytes: usize,
    /// Keys refresh-token seals and page tokens (see [`crate::keys::secret`]).
    pub secret: ServerSecret,
    pub policy: Policy,
    pub clock: Arc<dyn Clock>,
    /// How long Introspect trusts a cached "family is live" while revocations made elsewhere are
    /// not known to reach this server (zero: always ask the database, and no listener).
    pub family_cache_ttl: Duration,
    pub cleanup: CleanupSettings,
    /// How often the background cleanup runs (zero: never; `ratchet gc` by hand instead).
    pub cleanup_interval: Duration,
    pub limits: TransportLimits,
    /// Who may call what, reflection, the Rotate limit.
    pub access: AccessSettings,
    /// TLS, mutual TLS and caller identity; the default is plaintext.
    pub transport: TransportConfig,
}

pub struct Application {
    listener: TcpListener,
    http_listener: Option<(TcpListener, HttpConfig)>,
    keys: Arc<Keyring>,
    key_source: Option<KeySource>,
    keys_reload_interval: Duration,
    issuer: String,
    store: Backend,
    service: TokenServiceImpl<RuntimeStore>,
    /// Envoy's ext_authz Check, on the same issuer (and caches) as the token service.
    authorization: AuthorizationImpl<RuntimeStore>,
    /// Kept current by the revocation listener, if there is one.
    family_cache: Option<Arc<FamilyCache>>,
    clock: Arc<dyn Clock>,
    cleanup: CleanupSettings,
    cleanup_interval: Duration,
    request_timeout: Duration,
    limits: TransportLimits,
    access: AccessSettings,
    /// TLS material of both listeners, if TLS is on.
    tls: Option<Arc<transport::Reloadable>>,
    tls_reload_interval: Duration,
    peer_identity: PeerIdentityLayer,
    /// On SQLite, this process's claim on the database, held until the server stops.
    database_lock: Option<DatabaseLock>,
}

/// Longest any RPC may run: enough for a write to wait for a connection, run, and have a lost
/// answer resolved (each bounded by the store's timeout; see `store::postgres::run`), so that
/// the server's own limit never cuts a write short of its outcome.
fn request_timeout(db_timeout: Duration) -> Duration {
    (db_timeout * 4 + Duration::from_secs(5)).max(MIN_REQUEST_TIMEOUT)
}

/// Where the configured database is: the one place the configuration becomes a [`Target`].
fn target(database: &DatabaseConfig) -> Target {
    match database {
        DatabaseConfig::Postgres { url, options, pool } => Target::Postgres(PgTarget {
            url: url.clone(),
            options: options.clone(),
            settings: pool.clone(),
        }),
        DatabaseConfig::Sqlite { path, settings } => Target::Sqlite(SqliteTarget {
            path: path.clone(),
            settings: settings.clone(),
        }),
    }
}

/// Creates the database if it is missing, then applies pending migrations.
///
/// # Errors
/// The database cannot be reached, created or migrated.
pub async fn migrate(database: &DatabaseConfig) -> anyhow::Result<()> {
    migrate_target(&target(database)).await
}

async fn migrate_target(target: &Target) -> anyhow::Result<()> {
    Backend::migrate(target).await?;
    tracing::info!("database schema is up to date");
    Ok(())
}

/// One cleanup pass on the configured database, with the system clock (`ratchet gc`).
///
/// # Errors
/// The database cannot be reached or the pass fails.
pub async fn collect_garbage(config: &GcConfig) -> anyhow::Result<CleanupReport> {
    let store = Backend::open(&target(&config.database));
    let report = cleanup::collect_garbage(&store, SystemClock.now(), &config.cleanup, &mut Sweep::default()).await;
    store.close().await;
    report.context("cleanup failed")
}

impl Application {
    /// What `ratchet serve` runs: migrations (unless disabled), the signing key, the pool.
    ///
    /// # Errors
    /// Migrations fail, the key cannot be loaded or created, or the address cannot be bound.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let target = target(&config.database);
        match &target {
            Target::Postgres(_) => tracing::info!("store: {target}"),
            Target::Sqlite(_) => {
                tracing::info!("store: {target} (one process; set DATABASE_URL to run replicas on PostgreSQL)")
            }
        }
        // Before migrating: a second server on the same SQLite file stops here.
        let database_lock = Backend::claim(&target)?;
        if config.migrate {
            migrate_target(&target).await?;
        }
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let (keys, origin) = config.keys.load_at_start(&now)?;
        let dir = config.keys.dir.path().display();
        match &origin {
            Origin::Directory => {
                tracing::info!(kid = keys.active_kid(), keys = keys.len(), %dir, "loaded the key directory");
                if let Some(path) = config.keys.signing_key.as_deref() {
                    tracing::warn!(path = %path.display(), "RATCHET_SIGNING_KEY is ignored: the key directory decides which keys sign");
                }
            }
            Origin::Created => tracing::warn!(kid = keys.active_kid(), %dir,
                "no keys found: created a key directory with a new EdDSA key; keep it (and give every replica the same one) so tokens survive restarts"),
            Origin::Legacy(path) => tracing::info!(kid = keys.active_kid(), path = %path.display(),
                "signing with a single key (no key directory yet: `ratchet keys` creates one around this key)"),
        }
        let secret = match &config.seal_key {
            Some(path) => {
                let (secret, source) = ServerSecret::load_or_create(path)?;
                match source {
                    SecretSource::Created => {
                        tracing::warn!(path = %path.display(), "created a new server secret (RATCHET_SEAL_KEY); give every replica this file")
                    }
                    _ => tracing::info!(path = %path.display(), "loaded the server secret (RATCHET_SEAL_KEY)"),
                }
                secret
            }
            None => config.keys.server_secret(&keys, &origin)?,
        };
        let store = Backend::open(&target);
        // Refuse to serve on a misconfigured database (a session that is not SERIALIZABLE); one
        // that is down only means NOT_SERVING until it is back.
        store.check_configuration().await.context("refusing to serve")?;
        let mut app = Self::from_parts(Parts {
            listen: config.listen,
            store,
            keys,
            key_source: Some(config.keys),
            keys_reload_interval: config.keys_reload_interval,
            http: config.http,
            verified_cache_bytes: config.verified_cache_bytes,
            secret,
            policy: config.policy,
            clock: Arc::new(SystemClock),
            family_cache_ttl: config.family_cache_ttl,
            cleanup: config.cleanup,
            cleanup_interval: config.cleanup_interval,
            limits: config.limits,
            access: config.access,
            transport: config.transport,
        })
        .await?;
        app.database_lock = database_lock;
        Ok(app)
    }

    /// Binds the listener and wires the service.
    ///
    /// # Errors
    /// The address cannot be bound, the TLS files cannot be loaded, or XFCC is to be trusted
    /// where it cannot be.
    pub async fn from_parts(parts: Parts) -> anyhow::Result<Self> {
        let TransportConfig {
            tls,
            tls_reload_interval,
            trust_xfcc,
            probe,
        } = parts.transport;
        if trust_xfcc && let Some(problem) = transport::xfcc_problem(parts.listen, tls.is_some()) {
            anyhow::bail!(problem);
        }
        let tls = tls
            .map(transport::Reloadable::load)
            .transpose()
            .context("cannot load the TLS files")?;
        let listener = TcpListener::bind(parts.listen)
            .await
            .with_context(|| format!("cannot listen on {}", parts.listen))?;
        let http_listener = match parts.http {
            Some(http) => Some((
                TcpListener::bind(http.listen)
                    .await
                    .with_context(|| format!("cannot listen on {} (HTTP)", http.listen))?,
                http,
            )),
            None => None,
        };
        let store = parts.store;
        let db_timeout = store.timeout();
        let cached: RuntimeStore = CachedStore::new(store.clone(), FAMILY_CACHE_CAPACITY, parts.family_cache_ttl);
        // Without a cache there is nothing for revocations to reach.
        let family_cache = (!parts.family_cache_ttl.is_zero()).then(|| cached.cache());
        let keys = Arc::new(Keyring::new(parts.keys, parts.verified_cache_bytes));
        let issuer_name = parts.policy.issuer.clone();
        let issuer: Arc<RuntimeIssuer> = Arc::new(Issuer::new(cached, keys.clone(), parts.secret, parts.policy));
        Ok(Self {
            listener,
            http_listener,
            keys,
            key_source: parts.key_source,
            keys_reload_interval: parts.keys_reload_interval,
            issuer: issuer_name,
            store,
            service: TokenServiceImpl::new(issuer.clone(), parts.clock.clone(), parts.access.rotate_limit),
            authorization: AuthorizationImpl::new(issuer, parts.clock.clone()),
            family_cache,
            clock: parts.clock,
            cleanup: parts.cleanup,
            cleanup_interval: parts.cleanup_interval,
            request_timeout: request_timeout(db_timeout),
            limits: parts.limits,
            access: parts.access,
            tls,
            tls_reload_interval,
            peer_identity: PeerIdentityLayer::new(trust_xfcc, probe),
            database_lock: None,
        })
    }

    /// The store the server runs on (for maintenance such as [`cleanup::collect_garbage`]).
    pub fn store(&self) -> Backend {
        self.store.clone()
    }

    /// # Errors
    /// The OS cannot tell the bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The HTTP (JWKS) listener's address, if there is one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_listener
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// The keys the server signs and verifies with.
    pub fn keys(&self) -> Arc<Keyring> {
        self.keys.clone()
    }

    /// Serves until `shutdown` resolves, then reports NOT_SERVING, drains in-flight calls and
    /// closes the pool.
    ///
    /// # Errors
    /// The bound address cannot be read, or the TLS or reflection services cannot be set up (a
    /// connection that fails is logged, never an error of the server).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        let reporter = HealthReporter::new();
        set_health(&reporter, ServingStatus::NotServing).await;
        let health_service = crate::grpc::health::service(reporter.clone(), self.limits.max_health_watches)
            .max_decoding_message_size(MAX_HEALTH_REQUEST_BYTES);
        let (stop_health, stopped) = watch::channel(false);
        let health_task = tokio::spawn(watch_health(self.store.clone(), reporter.clone(), stopped.clone()));
        let listener_task = self.family_cache.map(|cache| {
            let store = self.store.clone();
            let stopped = stopped.clone();
            tokio::spawn(async move { store.listen_for_revocations(cache, stopped).await })
        });
        let cleanup_task = (!self.cleanup_interval.is_zero()).then(|| {
            tokio::spawn(clean_periodically(
                self.store.clone(),
                self.clock.clone(),
                self.cleanup,
                self.cleanup_interval,
                stopped.clone(),
            ))
        });
        let keys_task = self.key_source.map(|source| {
            tokio::spawn(reload_keys(
                self.keys.clone(),
                source,
                self.keys_reload_interval,
                stopped.clone(),
            ))
        });
        let policy_task = match &self.access.policy {
            Some(file) => {
                tracing::info!(target: "security", path = %file.path().display(), callers = file.current().len(), "caller policy in force");
                Some(tokio::spawn(crate::policy::reload::watch(
                    file.clone(),
                    self.access.reload_interval,
                    stopped.clone(),
                )))
            }
            None => {
                tracing::warn!(target: "security", "NO CALLER POLICY: anyone who can reach this port may issue any token and revoke any session; set RATCHET_POLICY (and RATCHET_REQUIRE_AUTH=true to refuse to start without one)");
                None
            }
        };
        let throttle_task = tokio::spawn(crate::telemetry::throttle::report_suppressed(stopped.clone()));
        let tls_task = self
            .tls
            .clone()
            .map(|tls| tokio::spawn(transport::tls::reload(tls, self.tls_reload_interval, stopped.clone())));
        let (grpc_tls, http_tls) = match &self.tls {
            Some(tls) => (
                Some(tls.server_config(transport::GRPC_ALPN, true)?),
                // No client certificates on the JWKS: it is public (see `transport`).
                Some(tls.server_config(transport::HTTP_ALPN, false)?),
            ),
            None => (None, None),
        };
        let http_task = match self.http_listener {
            Some((listener, config)) => {
                let router = crate::http::router(
                    self.keys.clone(),
                    &self.issuer,
                    config.jwks_max_age,
                    config.jwks_uri.as_deref(),
                );
                let mut stopped = stopped.clone();
                tracing::info!(addr = %listener.local_addr()?, tls = http_tls.is_some(), "serving the JWKS over HTTP");
                let connections = transport::accept::connections(listener, http_tls);
                Some(tokio::spawn(transport::serve::http(
                    router,
                    connections,
                    config.limits,
                    async move {
                        let _ = stopped.wait_for(|stopped| *stopped).await;
                    },
                )))
            }
            None => None,
        };

        let reflection = self.access.reflection;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?
            .max_decoding_message_size(MAX_HEALTH_REQUEST_BYTES);
        // grpcurl and older tools still ask the v1alpha service.
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?
            .max_decoding_message_size(MAX_HEALTH_REQUEST_BYTES);
        let tokens = TokenServiceServer::new(self.service).max_decoding_message_size(MAX_REQUEST_BYTES);
        // Its own, smaller limit: a Check is a request's headers (see `authz::MAX_CHECK_BYTES`).
        // Not in reflection: envoy-types ships no descriptor set.
        let authorization = AuthorizationService::new(self.authorization, authz::MAX_CHECK_BYTES);

        tracing::info!(%addr, tls = grpc_tls.is_some(), mutual_tls = self.tls.as_ref().is_some_and(|tls| tls.requires_client_certificates()), "serving gRPC");
        let incoming = transport::accept::connections(self.listener, grpc_tls);
        let (draining, drain_started) = tokio::sync::oneshot::channel::<()>();
        let limits = self.limits;
        let router = Server::builder()
            .timeout(self.request_timeout)
            .max_concurrent_streams(limits.max_streams_per_connection)
            .http2_max_header_list_size(limits.max_header_bytes)
            .http2_keepalive_interval(
                (!limits.http2_keepalive_interval.is_zero()).then_some(limits.http2_keepalive_interval),
            )
            .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
            .max_connection_age(if limits.max_connection_age.is_zero() {
                // tonic has no "never"; a century is.
                Duration::from_secs(100 * 365 * 24 * 3600)
            } else {
                limits.max_connection_age
            })
            // Outermost: a call is in flight (the connection not idle) until its answer is sent.
            .layer(ActivityLayer)
            .layer(CatchPanicLayer)
            .layer(ShedLayer::new(limits.max_concurrent_requests))
            // Inside the shedding: only calls let in are charged.
            .layer(BudgetLayer::new(
                Arc::new(MemoryBudget::new(budget::BUDGET_BYTES)),
                &METERED,
            ))
            .layer(MessageLimitLayer)
            .layer(self.peer_identity)
            // Reads the caller's `PeerIdentity` from the extensions: whatever puts it there
            // (the TLS/XFCC layer) must be added before this line, i.e. outside it.
            .layer(AccessLayer::new(self.access.policy.clone()))
            .add_service(health_service)
            .add_optional_service(reflection.then_some(reflection_v1))
            .add_optional_service(reflection.then_some(reflection_v1alpha))
            .add_service(tokens)
            .add_service(authorization);
        let connection_limits = transport::serve::GrpcLimits {
            max_connections: limits.max_connections,
            first_request_timeout: limits.first_request_timeout,
            idle_timeout: (!limits.idle_timeout.is_zero()).then_some(limits.idle_timeout),
        };
        let serve = transport::serve::grpc(router, incoming, connection_limits, async {
            shutdown.await;
            let _ = stop_health.send(true);
            set_health(&reporter, ServingStatus::NotServing).await;
            tracing::info!("draining in-flight calls");
            let _ = draining.send(());
        });
        // A client that never closes its connection must not keep the process alive forever.
        let drain_deadline = async {
            if drain_started.await.is_ok() {
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = serve => {},
            () = drain_deadline => {
                tracing::warn!(timeout = ?DRAIN_TIMEOUT, "drain timed out; closing the remaining connections");
            }
        }
        health_task.abort();
        // Stopped by now: the shutdown signalled it. It closes its connection; waiting is bounded
        // in case the database hangs.
        if let Some(mut task) = listener_task
            && tokio::time::timeout(Duration::from_secs(2), &mut task).await.is_err()
        {
            task.abort();
        }
        for task in [cleanup_task, keys_task, policy_task, tls_task, http_task]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        throttle_task.abort();
        // The last counts of refusals left out of the log, which no later line would carry.
        crate::telemetry::throttle::report_all_suppressed();
        self.store.close().await;
        // Only now may another server open the SQLite database.
        drop(self.database_lock);
        tracing::info!("stopped");
        Ok(())
    }
}

const TOKEN_SERVICE: &str = "ratchet.v1.TokenService";

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    // "" is the server as a whole, as grpc-health-probe asks by default.
    reporter.set_service_status("", status).await;
    reporter.set_service_status(TOKEN_SERVICE, status).await;
    reporter.set_service_status(authz::SERVICE_NAME, status).await;
}

/// Keeps the health status in step with the database: SERVING while it answers.
async fn watch_health(store: Backend, reporter: HealthReporter, mut stopped: watch::Receiver<bool>) {
    let mut last = None;
    loop {
        let status = match tokio::time::timeout(HEALTH_INTERVAL, store.ping()).await {
            Ok(Ok(())) => ServingStatus::Serving,
            _ => ServingStatus::NotServing,
        };
        if *stopped.borrow() {
            return;
        }
        if last != Some(status) {
            if status == ServingStatus::NotServing && last.is_some() {
                tracing::warn!("database unreachable: health is NOT_SERVING");
            } else if status == ServingStatus::Serving {
                tracing::info!("database reachable: health is SERVING");
            }
            set_health(&reporter, status).await;
            last = Some(status);
        }
        tokio::select! {
            () = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// Reads the key directory again on SIGHUP and every `interval`, and switches to what it holds.
/// A server still on a legacy key switches over when `ratchet keys` creates the directory around
/// it. A directory that fails to load (a half-copied secret, a key file with the wrong mode) is
/// logged and ignored: the server keeps the keys it has rather than stop signing.
async fn reload_keys(keys: Arc<Keyring>, source: KeySource, interval: Duration, stopped: watch::Receiver<bool>) {
    let mut trigger = crate::reload::ReloadTrigger::new("the key directory", interval, stopped);
    while trigger.next().await {
        let reading = source.clone();
        match tokio::task::spawn_blocking(move || reading.load_directory()).await {
            Ok(Ok(Some(set))) => {
                let change = keys.replace(set);
                if !change.is_empty() {
                    tracing::info!(added = ?change.added, removed = ?change.removed, activated = ?change.activated,
                        active = %keys.active_kid(), "key set changed");
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(error)) => {
                tracing::error!(error = %error, "cannot load the key directory; keeping the current keys")
            }
            Err(error) => tracing::error!(%error, "key reload panicked; keeping the current keys"),
        }
    }
}

/// Runs a cleanup pass every `interval` until stopped. A failed pass is logged and retried at the
/// next interval; replicas each run their own (the batches are idempotent).
async fn clean_periodically(
    store: Backend,
    clock: Arc<dyn Clock>,
    settings: CleanupSettings,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut sweep = Sweep::default();
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stopped.changed() => return,
        }
        if let Err(error) = cleanup::collect_garbage(&store, clock.now(), &settings, &mut sweep).await {
            tracing::warn!(%error, "cleanup pass failed; trying again at the next interval");
        }
    }
}
