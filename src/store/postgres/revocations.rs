//! The revocation listener: a task per server that LISTENs on the channel the database announces
//! every revoked family on (the trigger in `migrations/postgres/20261201000001_revocation_notify.sql`)
//! and marks each one revoked in this server's [`FamilyCache`]. That is how a revocation made through
//! another replica, or by an operator's SQL, reaches this server's Introspect within
//! milliseconds, without Introspect asking the database about families it knows to be live.
//!
//! Notifications are not queued for a listener that is not connected: whatever is committed while
//! the connection is down is lost. So:
//! - the moment the connection is lost (or its probe fails), the cache stops counting on the
//!   listener ([`FamilyCache::current_until`]`(None)`), and cached "live" is trusted only for
//!   `--family-cache-ttl`;
//! - once subscribed again, the cache forgets everything ([`FamilyCache::forget_all`]): a family
//!   revoked during the gap is read from the database at its next Introspect;
//! - a connection can also die without a word (a network partition leaves no FIN): every
//!   [`PROBE_INTERVAL`] a probe on it proves it alive, and each answer renews the listener's
//!   word for two intervals. A probe that fails or hangs ends the connection;
//! - revocations are committed on the server that accepts writes: the listener connects to that
//!   one of several hosts (`hosts`), and a probe that finds its server read-only (a failover
//!   left it behind as a standby) ends the connection too, so that the next one follows.
//!
//! It reconnects by itself, with exponential backoff, and stops when the server does. What it
//! leaves out: everything but revocations (nothing else is cached across replicas).
//!
//! sqlx's [`PgListener`] (it is the only way sqlx hands out notifications) on a one-connection
//! sqlx pool of its own, opened for each connection attempt: the listener's own reconnection is
//! turned off, because reconnecting must forget the cache and only this loop knows that.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgListener, PgNotification, PgPoolOptions};
use tokio::sync::watch;

use super::hosts::PgHosts;
use crate::domain::FamilyId;
use crate::store::cached::FamilyCache;
use crate::telemetry::metrics;

/// The channel the trigger notifies on; the payload is the family id.
pub const CHANNEL: &str = "ratchet_family_revoked";
/// `application_name` of the listener's connection, to tell it apart in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "ratchet-revocations";
/// How often the connection is proven alive. Each answer vouches for the next two intervals, so
/// a silently dead connection costs at most two seconds of trust beyond `--family-cache-ttl`.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two connection attempts: how late the listener may be back after the
/// database is.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long shutdown waits for the connection to close politely.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The pool's hosts (the same servers, user, password and TLS) for the listener's connection.
pub fn options(pool_hosts: &PgHosts) -> PgHosts {
    pool_hosts.map(|options| options.application_name(APPLICATION_NAME))
}

/// Listens until `stopped` changes (or its sender is gone), keeping `cache` current. `timeout`
/// bounds connecting and each probe.
pub async fn listen(hosts: PgHosts, cache: Arc<FamilyCache>, timeout: Duration, mut stopped: watch::Receiver<bool>) {
    let mut backoff = FIRST_BACKOFF;
    let mut was_up = true;
    metrics::revocation_listener_connected(false);
    loop {
        let ended = session(&hosts, &cache, timeout, &mut stopped).await;
        cache.current_until(None);
        metrics::revocation_listener_connected(false);
        match ended {
            Ended::Stopped => return,
            Ended::Lost { subscribed, error } => {
                if subscribed {
                    backoff = FIRST_BACKOFF;
                }
                // Once per outage at warn, every retry at debug. The error never holds the
                // password (sqlx does not print connect options).
                if subscribed || was_up {
                    tracing::warn!(%error, "revocation listener lost its database connection: \
                        other replicas' revocations reach Introspect only through --family-cache-ttl until it is back");
                } else {
                    tracing::debug!(%error, ?backoff, "revocation listener still cannot connect");
                }
                was_up = false;
            }
        }
        tokio::select! {
            _ = stopped.changed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

enum Ended {
    Stopped,
    Lost { subscribed: bool, error: String },
}

/// One connection: subscribe, forget the cache, then apply notifications and probe until the
/// connection fails or the server stops.
async fn session(
    hosts: &PgHosts,
    cache: &FamilyCache,
    timeout: Duration,
    stopped: &mut watch::Receiver<bool>,
) -> Ended {
    // The server that accepts writes, where revocations are committed (a standby refuses LISTEN).
    let options = tokio::select! {
        _ = stopped.changed() => return Ended::Stopped,
        located = hosts.locate(hosts.per_host(timeout)) => match located {
            Ok(options) => options,
            Err(error) => return Ended::Lost { subscribed: false, error: error.to_string() },
        },
    };
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(timeout)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options);
    let lost = |error: &dyn std::fmt::Display, subscribed| Ended::Lost {
        subscribed,
        error: error.to_string(),
    };
    let subscribed = tokio::select! {
        _ = stopped.changed() => return Ended::Stopped,
        subscribed = subscribe(&pool, timeout) => subscribed,
    };
    let mut listener = match subscribed {
        Ok(listener) => listener,
        Err(error) => return lost(&error, false),
    };
    // Whatever was cached before this subscription may have missed a notification.
    cache.forget_all();
    metrics::revocation_listener_connected(true);
    tracing::info!("revocation listener subscribed: other replicas' revocations reach Introspect at once");
    let ended = run(&mut listener, cache, timeout, stopped).await;
    if matches!(ended, Ended::Stopped) {
        // Politely (UNLISTEN, then Terminate), so that PostgreSQL logs no lost connection and a
        // test's database can be dropped right after.
        drop(listener);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, pool.close()).await;
    }
    ended
}

async fn subscribe(pool: &sqlx::PgPool, timeout: Duration) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // Reconnection is this module's job: it has to forget the cache first.
    listener.eager_reconnect(false);
    listener.ignore_pool_close_event(true);
    tokio::time::timeout(timeout, listener.listen(CHANNEL))
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    Ok(listener)
}

async fn run(
    listener: &mut PgListener,
    cache: &FamilyCache,
    timeout: Duration,
    stopped: &mut watch::Receiver<bool>,
) -> Ended {
    // LISTEN has taken effect: every revocation committed from now on is delivered to us.
    cache.current_until(Some(Instant::now() + 2 * PROBE_INTERVAL));
    let mut next_probe = tokio::time::Instant::now() + PROBE_INTERVAL;
    loop {
        tokio::select! {
            // The probe before notifications: a burst of them (100k families of one subject)
            // must not starve it, or the listener's word would lapse while it is working.
            biased;
            _ = stopped.changed() => return Ended::Stopped,
            () = tokio::time::sleep_until(next_probe) => {
                let sent = Instant::now();
                let probe = sqlx::query_scalar::<_, String>("select current_setting('transaction_read_only')");
                let probe = tokio::time::timeout(timeout, probe.fetch_one(&mut *listener)).await;
                match probe {
                    Ok(Ok(read_only)) if read_only == "off" => {}
                    Ok(Ok(_)) => return Ended::Lost { subscribed: true, error: "the server no longer accepts writes".into() },
                    Ok(Err(error)) => return Ended::Lost { subscribed: true, error: error.to_string() },
                    Err(_) => return Ended::Lost { subscribed: true, error: "probe timed out".into() },
                }
                // PostgreSQL sends a session's pending notifications before the ReadyForQuery
                // that ends a statement (and, when idle, at once): what was committed before the
                // probe was sent is in the buffer now. Apply it before vouching for it.
                while let Some(notification) = listener.next_buffered() {
                    apply(cache, &notification);
                }
                cache.current_until(Some(sent + 2 * PROBE_INTERVAL));
                next_probe = tokio::time::Instant::now() + PROBE_INTERVAL;
            }
            received = listener.try_recv() => match received {
                Ok(Some(notification)) => apply(cache, &notification),
                Ok(None) => return Ended::Lost { subscribed: true, error: "connection closed".into() },
                Err(error) => return Ended::Lost { subscribed: true, error: error.to_string() },
            },
        }
    }
}

fn apply(cache: &FamilyCache, notification: &PgNotification) {
    match FamilyId::parse("payload", notification.payload()) {
        Ok(id) => cache.mark_revoked_elsewhere(id),
        // Not from our trigger (someone else notifying on our channel): nothing to trust.
        Err(_) => tracing::warn!(channel = CHANNEL, "ignored a notification that is not a family id"),
    }
}
