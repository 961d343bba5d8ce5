//! Where a PostgreSQL database is ([`PgTarget`]), the session settings every connection gets
//! ([`tune`]), and the pool they are kept in ([`pool`], see [`super::pool`] for why not sqlx's).

use std::fmt;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use super::hosts::PgHosts;
use super::pool::ConnectionPool;
use crate::database_url::DatabaseUrl;

/// How connections are opened and how long anything may take.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// PostgreSQL's `statement_timeout` and `lock_timeout`, and the bound on waiting for a
    /// connection: past it the caller gets UNAVAILABLE (nothing happened) rather than a hang.
    pub timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Our session settings on top of `options` (from a URL, or from a test harness).
pub fn tune(options: PgConnectOptions, settings: &PoolSettings) -> PgConnectOptions {
    let timeout = format!("{}ms", settings.timeout.as_millis());
    options.application_name("ratchet").options([
        ("default_transaction_isolation", "serializable"),
        // PostgreSQL bounds every statement, so that a statement given up on is one that did
        // not happen (a client-side timeout could abandon one that still commits).
        ("statement_timeout", timeout.as_str()),
        ("lock_timeout", timeout.as_str()),
        // A session stuck inside a transaction must not hold row locks forever.
        ("idle_in_transaction_session_timeout", "30s"),
    ])
}

/// A pool for `hosts` with our session settings; see [`ConnectionPool`] for how connections
/// are checked, and why not sqlx's pool.
pub fn pool(hosts: impl Into<PgHosts>, settings: &PoolSettings) -> ConnectionPool {
    ConnectionPool::new(
        tuned(&hosts.into(), settings),
        settings.max_connections,
        settings.timeout,
    )
}

/// `hosts`, each with our session settings ([`tune`]).
pub fn tuned(hosts: &PgHosts, settings: &PoolSettings) -> PgHosts {
    hosts.map(|options| tune(options, settings))
}

/// Where a PostgreSQL database is and how to talk to it: what `--database-url` and the pool flags
/// resolve to.
#[derive(Clone)]
pub struct PgTarget {
    /// Kept to create the database if it is missing.
    pub url: DatabaseUrl,
    /// The server, or the servers of a multi-host URL (which one a connection goes to: [`PgHosts`]).
    pub hosts: PgHosts,
    /// How long start-up keeps trying while the database cannot be reached ([`super::wait`]).
    pub wait: Duration,
    pub settings: PoolSettings,
}

/// By hand: `PgConnectOptions`' own `Debug` prints the password; the redacted URL says the same.
impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTarget")
            .field("url", &self.url)
            .field("wait", &self.wait)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}
