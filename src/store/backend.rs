//! [`Backend`]: the store the server runs on, chosen at run time from the configuration.
//!
//! [`FamilyStore`] returns `impl Future`, so it cannot be a `dyn` trait object. An enum that
//! delegates costs one match per call instead, and lets startup, the health
//! watcher, `ratchet migrate` and `ratchet gc` work with whichever backend is configured without
//! a generic parameter reaching the transport ([`super::RuntimeStore`] is the one concrete type).
//! What only a whole backend does, and the trait does not, is here too: where it is
//! ([`Target`]), migrating, telling a misconfigured database from one that is down, the
//! revocation listener, closing.
//!
//! Each backend's future is boxed here, one allocation per store call. Unboxed, a store call's
//! future is as large as the larger backend's (kilobytes: sqlx's statement, its retries and
//! timeouts), and so is every future that awaits it, up to the handler's; each is moved whole at
//! every step from the handler to its task (with `grpc::service::detached`'s box, `memcpy` per
//! Rotate went from ~184,000 instructions to ~12,000: BENCHMARKS.md, "Rotate: where the server's
//! CPU goes").
//!
//! A backend is a variant of [`Target`] and of [`Backend`], an arm in each match below (the
//! trait's methods share one, generated), and one line in the contract suite (`store::contract`)
//! that every backend passes: PostgreSQL (replicas, production) and SQLite (one process:
//! development, small single-node installs).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use super::cached::FamilyCache;
use super::postgres::{self, PgStore, PgTarget};
use super::sqlite::{self, DatabaseLock, LockError, SqliteStore, SqliteTarget};
use super::{
    AuditEvent, EventFilter, FamilyStatus, FamilyStore, IdleWindow, MigrateError, NewFamily, Purged,
    RefreshTokenRecord, Revocation, RevokeReason, SessionCursor, SessionRecord, SpendOutcome, SpendRequest, StoreError,
    SweepLock,
};
use crate::domain::{Actor, FamilyId, TokenHash};
use crate::telemetry::metrics::PoolGauges;

/// Which backend, and where: what the database configuration resolves to.
#[derive(Debug, Clone)]
pub enum Target {
    Postgres(PgTarget),
    Sqlite(SqliteTarget),
}

/// Which store and where, for the log: never a password (the URL is shown redacted).
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postgres(target) => write!(f, "PostgreSQL at {}", target.url),
            Self::Sqlite(target) => write!(f, "SQLite at {}", target.path.display()),
        }
    }
}

/// One of the backends, behind the one [`FamilyStore`]. Cheap to clone (it shares its pool).
#[derive(Debug, Clone)]
pub enum Backend {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

impl Backend {
    /// The store at `target`. Connects lazily: this succeeds, and the server starts reporting
    /// NOT_SERVING, while the database is down.
    pub fn open(target: &Target) -> Self {
        match target {
            Target::Postgres(target) => Self::Postgres(PgStore::open(target)),
            Target::Sqlite(target) => Self::Sqlite(SqliteStore::open(target)),
        }
    }

    /// Claims the database at `target` for this process, for as long as the returned lock lives:
    /// a SQLite database serves one process ([`SqliteTarget::lock`]). PostgreSQL needs no claim:
    /// replicas share it.
    ///
    /// # Errors
    /// Another process holds the SQLite database, or its lock file cannot be taken.
    pub fn claim(target: &Target) -> Result<Option<DatabaseLock>, LockError> {
        match target {
            Target::Postgres(_) => Ok(None),
            Target::Sqlite(target) => target.lock().map(Some),
        }
    }

    /// At start: waits (up to PostgreSQL's `--db-wait`) until the database can be reached, see
    /// [`postgres::wait`]. Nothing to wait for on SQLite.
    ///
    /// # Errors
    /// The database could not be reached in time.
    pub async fn wait_until_reachable(target: &Target) -> Result<(), postgres::wait::Unreachable> {
        match target {
            Target::Postgres(target) => postgres::wait::until_reachable(target).await,
            Target::Sqlite(_) => Ok(()),
        }
    }

    /// Creates the database at `target` if it is missing, then applies pending migrations.
    ///
    /// # Errors
    /// The database cannot be reached, created or migrated.
    pub async fn migrate(target: &Target) -> Result<(), MigrateError> {
        match target {
            Target::Postgres(target) => postgres::migrate(target).await,
            Target::Sqlite(target) => sqlite::migrate(target).await,
        }
    }

    /// Asks the database once, and fails only if it answers but is configured so that serving
    /// would be wrong (for PostgreSQL: a session that is not SERIALIZABLE). Start-up has already
    /// waited for the database to answer (`--db-wait`, [`Backend::wait_until_reachable`]); one
    /// that stops answering after that is no reason to refuse to start: health says NOT_SERVING
    /// until it is back.
    ///
    /// # Errors
    /// The misconfiguration.
    pub async fn check_configuration(&self) -> Result<(), StoreError> {
        match self.ping().await {
            Err(error) if self.is_misconfigured(&error) => Err(error),
            _ => Ok(()),
        }
    }

    fn is_misconfigured(&self, error: &StoreError) -> bool {
        match self {
            Self::Postgres(_) => postgres::is_misconfigured(error),
            // Every setting that matters is ours (see `sqlite`), set on each connection.
            Self::Sqlite(_) => false,
        }
    }

    /// Bound on any one storage operation; the server's own request timeout is derived from it.
    pub fn timeout(&self) -> Duration {
        match self {
            Self::Postgres(store) => store.timeout(),
            Self::Sqlite(store) => store.timeout(),
        }
    }

    /// Its connection pool now, for the metrics (sampled at each scrape).
    pub fn pool_gauges(&self) -> PoolGauges {
        match self {
            Self::Postgres(store) => store.pool().gauges(),
            Self::Sqlite(store) => store.gauges(),
        }
    }

    /// Keeps `cache` current with revocations committed by anyone else sharing the database
    /// (other replicas, an operator), until `stopped` changes.
    pub async fn listen_for_revocations(&self, cache: Arc<FamilyCache>, stopped: watch::Receiver<bool>) {
        match self {
            Self::Postgres(store) => store.listen_for_revocations(cache, stopped).await,
            // One process: every revocation passes through its own cache. Nothing to listen to.
            Self::Sqlite(_) => drop((cache, stopped)),
        }
    }

    /// Closes every connection; waits for those in use to come back.
    pub async fn close(&self) {
        match self {
            Self::Postgres(store) => store.pool().close().await,
            Self::Sqlite(store) => store.close().await,
        }
    }
}

/// Every method is one match and a call: no boxing, no allocation. Written once for all methods
/// (the list is [`super::family_store_methods`]): a backend is a variant, not a method edit.
macro_rules! dispatch {
    ($($method:ident($($arg:ident: $type:ty),*) -> $ok:ty;)*) => {
        impl FamilyStore for Backend {
            $(
                async fn $method(&self, $($arg: $type),*) -> Result<$ok, StoreError> {
                    // Boxed: see the module docs.
                    match self {
                        Self::Postgres(store) => Box::pin(store.$method($($arg),*)).await,
                        Self::Sqlite(store) => Box::pin(store.$method($($arg),*)).await,
                    }
                }
            )*
        }
    };
}
super::family_store_methods!(dispatch);
