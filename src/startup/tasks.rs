//! The server's background tasks, owned by one set: the health watcher, the revocation listener,
//! the periodic cleanup, the reloads (keys, caller policy, TLS files), the refusal-count reporter,
//! the metrics' upkeep, and the HTTP and metrics listeners. One signal stops them all; shutdown
//! then waits for them, bounded, and aborts what is left, so no task outlives the pool it uses.
//! Leaves out the gRPC listener itself, which [`super::Application::run_until_stopped`] drives and drains first.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::clock::Clock;
use crate::issuer::cleanup::{self, CleanupSettings, Sweep};
use crate::store::{Backend, FamilyStore as _};
use crate::telemetry::metrics::{self, Exporter};

/// How long the tasks get, once told to stop, to return by themselves before they are aborted.
/// The one that needs it is the revocation listener, which closes its database connection; the
/// bound is for a database that hangs.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the health service re-checks the database.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// See the module docs.
pub(super) struct Background {
    tasks: JoinSet<()>,
    stop: watch::Sender<bool>,
}

impl Background {
    pub(super) fn new() -> Self {
        Self {
            tasks: JoinSet::new(),
            stop: watch::Sender::new(false),
        }
    }

    /// What every task watches: it changes to `true` once, when the server stops.
    pub(super) fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub(super) fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Tells every task to stop: each finishes what it is doing (a reload, a cleanup batch) and
    /// returns.
    pub(super) fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Stops the tasks (if not yet told to) and waits up to [`STOP_TIMEOUT`] for them to return;
    /// aborts the rest.
    pub(super) async fn drain(mut self) {
        self.stop();
        let all_returned = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(STOP_TIMEOUT, all_returned).await.is_err() {
            tracing::debug!(left = self.tasks.len(), "background tasks still running; aborting them");
        }
        self.tasks.shutdown().await;
    }
}

const TOKEN_SERVICE: &str = "ratchet.v1.TokenService";

pub(super) async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    // "" is the server as a whole, as grpc-health-probe asks by default.
    reporter.set_service_status("", status).await;
    reporter.set_service_status(TOKEN_SERVICE, status).await;
    reporter
        .set_service_status(crate::grpc::authz::SERVICE_NAME, status)
        .await;
}

/// Keeps the health status in step with the database: SERVING while it answers.
pub(super) async fn watch_health(store: Backend, reporter: HealthReporter, mut stopped: watch::Receiver<bool>) {
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

/// Folds the latency samples into the histograms every few seconds, so that they do not pile
/// up between scrapes (or without any).
pub(super) async fn metrics_upkeep(exporter: Arc<Exporter>, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(metrics::UPKEEP_INTERVAL) => exporter.run_upkeep(),
            _ = stopped.changed() => return,
        }
    }
}

/// Runs a cleanup pass every `interval` until stopped. A failed pass is logged and retried at the
/// next interval. Replicas each run this, and take turns through the store's sweep lock: while
/// one sweeps, the others skip their round (see [`cleanup`]).
pub(super) async fn clean_periodically(
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
