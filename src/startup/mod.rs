//! Building and running the server.
//!
//! [`Application::build`] does what `ratchet serve` needs from a [`Config`] (database, migrations,
//! signing key); [`Application::from_parts`] takes ready-made parts, which is how tests inject a
//! fresh database, a throwaway key and a controllable clock. Either way the listener is bound
//! before `run_until_stopped`, so the caller knows the address (port 0 works).
//!
//! The [`Settings`] pass through unchanged: the application keeps them and reads each where it is
//! used. `router` builds the gRPC router (its layers in order); `tasks` owns the background tasks
//! that shutdown stops and drains.

mod router;
mod tasks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, EventsConfig, GcConfig, MetricsConfig, Settings};
use crate::grpc::TokenServiceImpl;
use crate::grpc::authz::AuthorizationImpl;
use crate::issuer::cleanup::{self, CleanupReport, Sweep};
use crate::issuer::{Issuer, RuntimeIssuer};
use crate::keys::secret::SecretSource;
use crate::keys::source::{self, KeySource, Origin};
use crate::keys::{KeySet, Keyring, ServerSecret};
use crate::shutdown::{Stage, Stages};
use crate::store::cached::{CachedStore, FamilyCache};
use crate::store::sqlite::DatabaseLock;
use crate::store::{AuditEvent, Backend, FamilyStore as _, RuntimeStore, Target};
use crate::telemetry::metrics::{self, Cache, Exporter};
use crate::transport;
use tasks::{Background, set_health};

/// After the shutdown grace, how long the answers to the calls cut then (`grpc::cut`) get to be
/// written before their connections are dropped anyway: a round trip, and a client that stopped
/// reading (its flow-control window full) is not waited for.
const CUT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long closing the store may take at the end: on SQLite closing waits for connections still
/// held by a write cut at the grace (which runs on to its own timeout); the process is exiting,
/// and the database rolls back whatever such a write left uncommitted.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Families whose liveness Introspect keeps in memory (an entry is a few dozen bytes).
const FAMILY_CACHE_CAPACITY: usize = 100_000;

/// Everything a server is made of: its settings as configured, and what is made from the rest of
/// the configuration at start (or injected by tests).
pub struct Parts {
    pub settings: Settings,
    /// Where families and tokens are kept ([`Backend::open`]).
    pub store: Backend,
    pub keys: KeySet,
    /// Where to read the keys again (on SIGHUP and every `keys_reload_interval`); `None`: the
    /// keys never change.
    pub key_source: Option<KeySource>,
    /// Keys refresh-token seals and page tokens (see [`crate::keys::secret`]).
    pub secret: ServerSecret,
    pub clock: Arc<dyn Clock>,
}

pub struct Application {
    settings: Settings,
    listener: TcpListener,
    /// The JWKS/discovery listener, if `settings.http` asks for one.
    http_listener: Option<TcpListener>,
    /// What `/metrics` serves, if it is served anywhere (`settings.metrics`).
    metrics: Option<Arc<Exporter>>,
    /// `/metrics`' own listener (`--metrics-listen ADDR`).
    metrics_listener: Option<TcpListener>,
    keys: Arc<Keyring>,
    key_source: Option<KeySource>,
    store: Backend,
    service: TokenServiceImpl<RuntimeStore>,
    /// Envoy's ext_authz Check, on the same issuer (and caches) as the token service.
    authorization: AuthorizationImpl<RuntimeStore>,
    /// Kept current by the revocation listener, if there is one.
    family_cache: Option<Arc<FamilyCache>>,
    clock: Arc<dyn Clock>,
    request_timeout: Duration,
    /// TLS material of both listeners, if TLS is on.
    tls: Option<Arc<transport::Reloadable>>,
    /// On SQLite, this process's claim on the database, held until the server stops.
    database_lock: Option<DatabaseLock>,
}

/// Creates the database if it is missing, then applies pending migrations.
///
/// # Errors
/// The database cannot be reached, created or migrated.
pub async fn migrate(target: &Target) -> anyhow::Result<()> {
    Backend::wait_until_reachable(target).await?;
    Backend::migrate(target).await?;
    tracing::info!("database schema is up to date");
    Ok(())
}

/// One cleanup pass on the configured database, with the system clock (`ratchet gc`).
///
/// # Errors
/// The database cannot be reached or the pass fails.
pub async fn collect_garbage(config: &GcConfig) -> anyhow::Result<CleanupReport> {
    Backend::wait_until_reachable(&config.database).await?;
    let store = Backend::open(&config.database);
    let report = cleanup::collect_garbage(&store, SystemClock.now(), &config.cleanup, &mut Sweep::default()).await;
    store.close().await;
    report.context("cleanup failed")
}

/// The audit events `config` asks for, newest first (`ratchet events`). Reads beside a running
/// server: on SQLite from a reading connection, without the lock file `serve` holds (which is
/// for writers), and never creating a database that is not there.
///
/// # Errors
/// There is no database, it cannot be reached, or the read fails.
pub async fn events(config: &EventsConfig) -> anyhow::Result<Vec<AuditEvent>> {
    if let Some(path) = config.sqlite_path() {
        anyhow::ensure!(
            path.exists(),
            "there is no SQLite database at {} (set --data-dir or DATABASE_URL to where the server keeps it)",
            path.display()
        );
    }
    Backend::wait_until_reachable(&config.database).await?;
    let store = Backend::open(&config.database);
    let events = store.events(&config.filter).await;
    store.close().await;
    events.context("cannot read the audit events")
}

impl Application {
    /// What `ratchet serve` runs: migrations (unless disabled), the signing key, the pool.
    ///
    /// # Errors
    /// Migrations fail, the key cannot be loaded or created, or the address cannot be bound.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let target = &config.database;
        match target {
            Target::Postgres(_) => tracing::info!("store: {target}"),
            Target::Sqlite(_) => {
                tracing::info!("store: {target} (one process; set DATABASE_URL to run replicas on PostgreSQL)")
            }
        }
        // Before migrating: a second server on the same SQLite file stops here.
        let database_lock = Backend::claim(target)?;
        // A database starting alongside us is waited for (`--db-wait`), with or without
        // migrations: one still down after that is a failed start, for the orchestrator to see.
        if config.migrate {
            migrate(target).await?;
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
        // Without migrations, only now: a mistake in the local files (keys, secret) is told at
        // once rather than after the wait.
        if !config.migrate {
            Backend::wait_until_reachable(target).await?;
        }
        let store = Backend::open(target);
        // Refuse to serve on a misconfigured database (a session that is not SERIALIZABLE); one
        // that went down again since the wait above only means NOT_SERVING until it is back.
        store.check_configuration().await.context("refusing to serve")?;
        let mut app = Self::from_parts(Parts {
            settings: config.settings,
            store,
            keys,
            key_source: Some(config.keys),
            secret,
            clock: Arc::new(SystemClock),
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
        let settings = parts.settings;
        let tls_files = settings.transport.tls.clone();
        if settings.transport.trust_xfcc
            && let Some(problem) = transport::xfcc_problem(settings.listen, tls_files.is_some())
        {
            anyhow::bail!(problem);
        }
        let tls = tls_files
            .map(transport::Reloadable::load)
            .transpose()
            .context("cannot load the TLS files")?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let http_listener = match &settings.http {
            Some(http) => Some(
                TcpListener::bind(http.listen)
                    .await
                    .with_context(|| format!("cannot listen on {} (HTTP)", http.listen))?,
            ),
            None => None,
        };
        let metrics_listener = match settings.metrics {
            MetricsConfig::Listen { addr, .. } => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (metrics)"))?,
            ),
            MetricsConfig::OnHttp | MetricsConfig::Off => None,
        };
        let store = parts.store;
        let cached: RuntimeStore = CachedStore::new(store.clone(), FAMILY_CACHE_CAPACITY, settings.family_cache_ttl);
        // Without a cache there is nothing for revocations to reach.
        let family_cache = (!settings.family_cache_ttl.is_zero()).then(|| cached.cache());
        let keys = Arc::new(Keyring::new(parts.keys, settings.verified_cache_bytes));
        let serves_metrics = match settings.metrics {
            MetricsConfig::OnHttp => settings.http.is_some(),
            MetricsConfig::Listen { .. } => true,
            MetricsConfig::Off => false,
        };
        let metrics = if serves_metrics {
            Some(Arc::new(exporter(store.clone(), cached.cache(), keys.clone())?))
        } else {
            if settings.metrics == MetricsConfig::OnHttp {
                tracing::info!(
                    "no metrics: they are served on the HTTP listener, which is off; set RATCHET_METRICS_LISTEN"
                );
            }
            None
        };
        let issuer: Arc<RuntimeIssuer> =
            Arc::new(Issuer::new(cached, keys.clone(), parts.secret, settings.policy.clone()));
        Ok(Self {
            listener,
            http_listener,
            metrics,
            metrics_listener,
            keys,
            key_source: parts.key_source,
            request_timeout: router::request_timeout(store.timeout()),
            store,
            service: TokenServiceImpl::new(issuer.clone(), parts.clock.clone()),
            authorization: AuthorizationImpl::new(issuer, parts.clock.clone()),
            family_cache,
            clock: parts.clock,
            tls,
            database_lock: None,
            settings,
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
            .and_then(|listener| listener.local_addr().ok())
    }

    /// `/metrics`' own listener's address, if it has one (`--metrics-listen ADDR`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// The keys the server signs and verifies with.
    pub fn keys(&self) -> Arc<Keyring> {
        self.keys.clone()
    }

    /// Serves until `shutdown` resolves, then, in order: stops the background tasks and reports
    /// NOT_SERVING; closes the listener and has every connection drain (GOAWAY: new calls are
    /// refused UNAVAILABLE, calls in flight finish); at the end of the shutdown grace answers the
    /// calls still in flight (`grpc::cut`) and drops their connections; waits for the tasks
    /// (bounded), closes the pool and releases the database.
    ///
    /// # Errors
    /// The bound address cannot be read, or the TLS or reflection services cannot be set up (a
    /// connection that fails is logged, never an error of the server).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        let reporter = HealthReporter::new();
        set_health(&reporter, ServingStatus::NotServing).await;
        let (grpc_tls, http_tls) = match &self.tls {
            Some(tls) => (
                Some(tls.server_config(transport::GRPC_ALPN, true)?),
                // No client certificates on the JWKS: it is public (see `transport`).
                Some(tls.server_config(transport::HTTP_ALPN, false)?),
            ),
            None => (None, None),
        };
        let mut background = Background::new();
        self.spawn_background(&mut background, &reporter);
        if let (Some(listener), Some(http)) = (self.http_listener, &self.settings.http) {
            let mut router = crate::http::router(
                self.keys.clone(),
                &self.settings.policy.issuer,
                http.jwks_max_age,
                http.jwks_uri.as_deref(),
            );
            if let (MetricsConfig::OnHttp, Some(exporter)) = (self.settings.metrics, &self.metrics) {
                router = router.merge(crate::http::metrics_router(exporter.clone()));
            }
            let mut stopped = background.stopped();
            tracing::info!(addr = %listener.local_addr()?, tls = http_tls.is_some(), "serving the JWKS over HTTP");
            let connections = transport::accept::connections(listener, http_tls);
            background.spawn(transport::serve::http(router, connections, http.limits, async move {
                let _ = stopped.wait_for(|stopped| *stopped).await;
            }));
        }

        if let (Some(listener), MetricsConfig::Listen { limits, .. }, Some(exporter)) =
            (self.metrics_listener, self.settings.metrics, &self.metrics)
        {
            let router = crate::http::metrics_router(exporter.clone());
            let mut stopped = background.stopped();
            // Plain HTTP: an address for the scraper only (see README), never the public one.
            tracing::info!(addr = %listener.local_addr()?, "serving metrics over HTTP");
            let connections = transport::accept::connections(listener, None);
            background.spawn(transport::serve::http(router, connections, limits, async move {
                let _ = stopped.wait_for(|stopped| *stopped).await;
            }));
        }

        tracing::info!(%addr, tls = grpc_tls.is_some(), mutual_tls = self.tls.as_ref().is_some_and(|tls| tls.requires_client_certificates()), "serving gRPC");
        let incoming = transport::accept::connections(self.listener, grpc_tls);
        let stages = Stages::default();
        let grace = self.settings.shutdown_grace;
        let services = router::Services {
            tokens: self.service,
            authorization: self.authorization,
            health: reporter.clone(),
            stage: stages.watch(),
        };
        let serve = router::serve(&self.settings, self.request_timeout, services, incoming, async {
            shutdown.await;
            // First, so that the health watcher cannot report SERVING again.
            background.stop();
            // Before anything is refused: a load balancer watching health moves away first.
            set_health(&reporter, ServingStatus::NotServing).await;
            tracing::info!(?grace, "draining in-flight calls");
            stages.enter(Stage::Draining);
        });
        // A call that outlives the grace is answered and cut; a client that never closes its
        // connection must not keep the process alive either.
        let deadline = async {
            stages.watch().reached(Stage::Draining).await;
            tokio::time::sleep(grace).await;
            tracing::warn!(?grace, "shutdown grace is over: cutting the calls still in flight");
            stages.enter(Stage::Cut);
            tokio::time::sleep(CUT_TIMEOUT).await;
        };
        let served = tokio::select! {
            served = serve => served,
            () = deadline => {
                tracing::warn!("connections still open after the cut; closing them");
                Ok(())
            }
        };
        background.drain().await;
        // The last counts of refusals left out of the log, which no later line would carry.
        crate::telemetry::throttle::report_all_suppressed();
        if tokio::time::timeout(CLOSE_TIMEOUT, self.store.close()).await.is_err() {
            tracing::warn!("the store did not close in time; exiting anyway");
        }
        // Only now may another server open the SQLite database.
        drop(self.database_lock);
        served?;
        tracing::info!("stopped");
        Ok(())
    }

    /// Starts what runs beside the gRPC listener until the server stops: see `tasks`.
    fn spawn_background(&self, background: &mut Background, reporter: &HealthReporter) {
        let stopped = background.stopped();
        background.spawn(tasks::watch_health(
            self.store.clone(),
            reporter.clone(),
            stopped.clone(),
        ));
        if let Some(cache) = self.family_cache.clone() {
            let store = self.store.clone();
            let stopped = stopped.clone();
            background.spawn(async move { store.listen_for_revocations(cache, stopped).await });
        }
        if !self.settings.cleanup_interval.is_zero() {
            background.spawn(tasks::clean_periodically(
                self.store.clone(),
                self.clock.clone(),
                self.settings.cleanup,
                self.settings.cleanup_interval,
                stopped.clone(),
            ));
        }
        // The reloads, each keeping what it has when a reading fails.
        if let Some(key_source) = self.key_source.clone() {
            background.spawn(source::reload(
                self.keys.clone(),
                key_source,
                self.settings.keys_reload_interval,
                stopped.clone(),
            ));
        }
        match &self.settings.access.policy {
            Some(file) => {
                tracing::info!(target: "security", path = %file.path().display(), callers = file.current().len(), "caller policy in force");
                background.spawn(crate::policy::reload::watch(
                    file.clone(),
                    self.settings.access.reload_interval,
                    stopped.clone(),
                ));
            }
            None => {
                tracing::warn!(target: "security", "NO CALLER POLICY: anyone who can reach this port may issue any token and revoke any session; set RATCHET_POLICY (and RATCHET_REQUIRE_AUTH=true to refuse to start without one)");
            }
        }
        if let Some(tls) = self.tls.clone() {
            background.spawn(transport::tls::reload(
                tls,
                self.settings.transport.tls_reload_interval,
                stopped.clone(),
            ));
        }
        if let Some(exporter) = self.metrics.clone() {
            background.spawn(tasks::metrics_upkeep(exporter, stopped.clone()));
        }
        background.spawn(crate::telemetry::throttle::report_suppressed(stopped));
    }
}

/// The process's metrics recorder (installed now if it is not yet), with the gauges of this
/// server's pool and caches sampled at each scrape.
///
/// # Errors
/// Another metrics recorder was installed in this process.
fn exporter(store: Backend, family_cache: Arc<FamilyCache>, keys: Arc<Keyring>) -> anyhow::Result<Exporter> {
    Ok(metrics::install()?.with_sampler(move || {
        metrics::pool(store.pool_gauges());
        metrics::cache_bytes(Cache::Family, family_cache.bytes());
        metrics::cache_bytes(Cache::Verified, keys.verified_cache_bytes());
    }))
}
