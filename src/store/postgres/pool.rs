//! The PostgreSQL connection pool: deadpool managing sqlx [`PgConnection`]s.
//!
//! Why not sqlx's own pool: it pings every connection when it goes back to the pool (a `Sync`
//! and a wait for `ReadyForQuery`), and that cannot be turned off. For ratchet, whose operations
//! are one statement each, that doubles the round trips: per Rotate, a second wake-up of the
//! database backend and of the server, the ~80 µs of database CPU per rotation that pgbench
//! running the same statement did not spend (issue 3, BENCHMARKS.md).
//!
//! What the ping protected against is an operation abandoned half-way (a timeout, a caller that
//! hung up) leaving the connection mid-protocol. Here a connection goes straight back into use
//! only if the operation that used it came to an end with PostgreSQL's answer
//! ([`PooledConnection::finished`]). One abandoned mid-operation is recovered in the background
//! instead: it waits for PostgreSQL to finish the abandoned statement and answer a `Sync`, then
//! rejoins the pool; if that fails or takes too long it is closed. (Closing every abandoned
//! connection would be simpler, but callers give up most when the database is slow, and a new
//! connection costs PostgreSQL a process: the pool would churn exactly when it can least afford
//! it.) A connection that sat idle for a while is pinged before use, so that after a database
//! restart the dead ones are found and replaced before a request uses them (a request is never
//! retried on a new connection after an I/O error, because a statement whose answer was lost
//! may have committed).
//!
//! deadpool (rather than a hand-written pool): small, widely used (deadpool-postgres, -redis),
//! fair FIFO/LIFO waiting, cancellation-safe, and its recycle hook is exactly the place for the
//! checks above.

use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, Object, QueueMode, RecycleError, RecycleResult};
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

use super::hosts::PgHosts;
use crate::telemetry::metrics::PoolGauges;

/// A connection idle for longer than this is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);
/// Connections are replaced after this long, so that PostgreSQL backends do not grow forever
/// and a moved database (DNS, failover) is picked up.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// A pool of at most `max_connections`, opened lazily: the server starts (and reports
/// NOT_SERVING) even while the database is down. Cheap to clone.
#[derive(Clone)]
pub struct ConnectionPool {
    inner: managed::Pool<Manager>,
    /// How long an abandoned connection may take to come back in step.
    recovery: Duration,
}

impl std::fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.inner.status();
        f.debug_struct("ConnectionPool")
            .field("max_size", &status.max_size)
            .field("size", &status.size)
            .field("available", &status.available)
            .finish()
    }
}

/// A connection and whether it can be trusted.
pub struct Connection {
    raw: PgConnection,
    /// When the last operation on it finished with the database's answer; `None` while an
    /// operation is running, and after one was abandoned until it is recovered.
    idle_since: Option<Instant>,
}

/// A checked-out connection. Dropping it returns it to the pool, after recovering it in the
/// background if its operation was abandoned (see the module docs).
pub struct PooledConnection {
    object: Option<Object<Manager>>,
    recovery: Duration,
}

impl PooledConnection {
    /// The connection, for one operation. Marks it in use until [`Self::finished`].
    pub fn begin(&mut self) -> &mut PgConnection {
        let connection = self.connection();
        connection.idle_since = None;
        &mut connection.raw
    }

    /// The operation ended with the database's answer (a result or a database error): the
    /// protocol is in step and the connection can be used again.
    pub fn finished(&mut self) {
        self.connection().idle_since = Some(Instant::now());
    }

    /// The connection is in step but must not be used again (its server no longer accepts
    /// writes): closed, and removed from the pool.
    pub fn discard(mut self) {
        if let Some(object) = self.object.take() {
            drop(Object::take(object));
        }
    }

    fn connection(&mut self) -> &mut Connection {
        match &mut self.object {
            Some(object) => object,
            None => unreachable!("the object is only taken on drop"),
        }
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        let Some(object) = self.object.take() else {
            return;
        };
        if object.idle_since.is_some() {
            return; // in step: back to the pool as it is dropped
        }
        // Without a runtime (shutting down) it goes back untrusted, and `recycle` refuses it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(recover(object, self.recovery));
        }
    }
}

/// Brings an abandoned connection back in step, or removes it from the pool.
async fn recover(mut object: Object<Manager>, within: Duration) {
    let resync = async {
        // `ping` sends a Sync and reads up to its ReadyForQuery, flushing whatever the abandoned
        // operation left unsent. The abandoned statement's own error, if it failed, comes first.
        for _ in 0..3 {
            match object.raw.ping().await {
                Ok(()) => return true,
                Err(sqlx::Error::Database(_)) => continue,
                Err(_) => return false,
            }
        }
        false
    };
    if tokio::time::timeout(within, resync).await == Ok(true) {
        tracing::debug!("database connection back in step after an abandoned operation");
        object.idle_since = Some(Instant::now());
    } else {
        tracing::debug!("closing a database connection left out of step by an abandoned operation");
        drop(Object::take(object));
    }
}

/// A new session does not run SERIALIZABLE although ratchet asked for it.
#[derive(Debug, thiserror::Error)]
#[error(
    "the database session runs at isolation level '{found}', not 'serializable': ratchet sets \
     default_transaction_isolation as a startup parameter, and something between ratchet and \
     PostgreSQL (a connection pooler such as PgBouncer?) dropped it. Connect ratchet to PostgreSQL \
     directly, or configure the pooler to pass the parameter (or set \
     default_transaction_isolation = 'serializable' for ratchet's role or database)"
)]
pub struct NotSerializable {
    pub found: String,
}

pub struct Manager {
    hosts: PgHosts,
    /// How long opening a connection may spend on each host.
    per_host: Duration,
}

impl managed::Manager for Manager {
    type Type = Connection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<Connection, sqlx::Error> {
        // Boxed: opening a connection is rare, and this future, held inline, would make every
        // checkout's future (and every store call's, which awaits one) larger, and moved whole
        // several times per call (callgrind: +7.8k instructions of memcpy per Rotate).
        let mut raw = Box::pin(self.hosts.connect(self.per_host)).await?;
        // One-time use of refresh tokens rests on every statement being SERIALIZABLE, which we
        // ask for as a startup parameter. A connection pooler in front of PostgreSQL may drop
        // startup parameters without a word: check what the session really runs.
        let (isolation,): (String,) = sqlx::query_as("select current_setting('default_transaction_isolation')")
            .fetch_one(&mut raw)
            .await?;
        if isolation != "serializable" {
            let _ = raw.close().await;
            return Err(sqlx::Error::Configuration(Box::new(NotSerializable {
                found: isolation,
            })));
        }
        Ok(Connection {
            raw,
            idle_since: Some(Instant::now()),
        })
    }

    async fn recycle(&self, connection: &mut Connection, metrics: &Metrics) -> RecycleResult<sqlx::Error> {
        let Some(idle_since) = connection.idle_since else {
            return Err(RecycleError::message("an operation on it was abandoned"));
        };
        if metrics.age() > MAX_LIFETIME {
            return Err(RecycleError::message("reached its maximum lifetime"));
        }
        if idle_since.elapsed() > PING_IF_IDLE_FOR {
            connection.raw.ping().await?;
        }
        Ok(())
    }
}

impl ConnectionPool {
    /// `recovery`: how long a connection whose operation was abandoned may take to finish the
    /// abandoned statement before it is closed (the statement timeout is a good choice); it
    /// also bounds opening a connection, over all of `hosts`.
    pub fn new(hosts: PgHosts, max_connections: u32, recovery: Duration) -> Self {
        let per_host = hosts.per_host(recovery);
        let inner = managed::Pool::builder(Manager { hosts, per_host })
            .max_size(usize::try_from(max_connections).unwrap_or(usize::MAX).max(1))
            // The most recently used connection first: under light load a few backends stay warm
            // and the rest go idle (and get pinged before their next use) instead of all being
            // cycled through.
            .queue_mode(QueueMode::Lifo)
            .build();
        match inner {
            Ok(inner) => Self { inner, recovery },
            // Only fails for timeouts without a runtime, and none are set: the caller bounds
            // every operation, waiting included (`PgStore::run`).
            Err(error) => unreachable!("deadpool pool without timeouts: {error}"),
        }
    }

    /// Its connections now, for the metrics: in use, idle, operations waiting for one, and the
    /// most it opens.
    pub fn gauges(&self) -> PoolGauges {
        let status = self.inner.status();
        PoolGauges {
            in_use: status.size.saturating_sub(status.available),
            idle: status.available,
            waiting: Some(status.waiting),
            max: status.max_size,
        }
    }

    /// Where its connections go and what they are opened with (the revocation listener and the
    /// sweep lock open their own alike).
    pub fn hosts(&self) -> &PgHosts {
        &self.inner.manager().hosts
    }

    /// How long opening a connection may spend on each host.
    pub fn per_host(&self) -> Duration {
        self.inner.manager().per_host
    }

    /// Closes every idle connection: after one found its server read-only (a failover), the
    /// others, opened to the same server, would each fail one statement before being replaced.
    pub fn drop_idle(&self) {
        let removed = self.inner.retain(|_, _| false).removed;
        drop(removed);
    }

    /// A connection: an idle one (checked as described in the module docs) or a new one.
    /// Unbounded in time; the caller bounds it.
    ///
    /// # Errors
    /// A new connection cannot be opened, or the pool is closed.
    pub async fn get(&self) -> Result<PooledConnection, managed::PoolError<sqlx::Error>> {
        Ok(PooledConnection {
            object: Some(self.inner.get().await?),
            recovery: self.recovery,
        })
    }

    /// Refuses new checkouts and closes the idle connections politely (a `Terminate` message,
    /// so PostgreSQL does not log an unexpected EOF). Call once in-flight work has drained.
    pub async fn close(&self) {
        let idle = self.inner.retain(|_, _| false).removed;
        self.inner.close();
        for connection in idle {
            let _ = connection.raw.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

    use super::*;
    use crate::store::postgres::{PoolSettings, tune};

    async fn backend_pid(pool: &ConnectionPool) -> Result<i32, sqlx::Error> {
        let mut connection = pool.get().await.unwrap();
        let (pid,): (i32,) = sqlx::query_as("select pg_backend_pid()")
            .fetch_one(connection.begin())
            .await?;
        connection.finished();
        Ok(pid)
    }

    /// A pool as the store makes it: our session settings, SERIALIZABLE included.
    fn pool(options: PgConnectOptions, max_connections: u32, recovery: Duration) -> ConnectionPool {
        let settings = PoolSettings {
            max_connections,
            timeout: Duration::from_secs(5),
        };
        ConnectionPool::new(PgHosts::one(tune(options, &settings)), max_connections, recovery)
    }

    #[sqlx::test(migrations = false)]
    async fn a_session_that_is_not_serializable_is_refused(_pool: PgPoolOptions, options: PgConnectOptions) {
        // Without our startup parameters, as behind a pooler that drops them.
        let pool = ConnectionPool::new(PgHosts::one(options), 1, Duration::from_secs(5));
        match pool.get().await {
            Err(managed::PoolError::Backend(sqlx::Error::Configuration(error))) => {
                assert!(error.to_string().contains("not 'serializable'"), "{error}");
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("a read committed session was handed out"),
        }
        pool.close().await;
    }

    #[sqlx::test(migrations = false)]
    async fn a_connection_whose_operation_finished_is_reused(_pool: PgPoolOptions, options: PgConnectOptions) {
        let pool = pool(options, 4, Duration::from_secs(5));
        let first = backend_pid(&pool).await.unwrap();
        assert_eq!(backend_pid(&pool).await.unwrap(), first);
        pool.close().await;
    }

    /// Starts `sql` on the pool's connection and gives up on it after 50 ms.
    async fn abandon(pool: &ConnectionPool, sql: &'static str) {
        let mut connection = pool.get().await.unwrap();
        let abandoned =
            tokio::time::timeout(Duration::from_millis(50), sqlx::query(sql).execute(connection.begin())).await;
        assert!(abandoned.is_err(), "the statement should have been cut off");
    }

    #[sqlx::test(migrations = false)]
    async fn a_connection_abandoned_mid_statement_is_brought_back_in_step_and_reused(
        _pool: PgPoolOptions,
        options: PgConnectOptions,
    ) {
        let pool = pool(options, 1, Duration::from_secs(5));
        let first = backend_pid(&pool).await.unwrap();
        // Cancelled while PostgreSQL is still working on it: its answer is still on the way.
        abandon(&pool, "select pg_sleep(0.5)").await;
        // The only connection comes back once the statement is done, in step: the next statement
        // gets its own answer, not the abandoned one's.
        let (answer,): (String,) = {
            let mut connection = pool.get().await.unwrap();
            let row = sqlx::query_as("select 'mine'")
                .fetch_one(connection.begin())
                .await
                .unwrap();
            connection.finished();
            row
        };
        assert_eq!(answer, "mine");
        assert_eq!(backend_pid(&pool).await.unwrap(), first, "the connection was replaced");
        pool.close().await;
    }

    #[sqlx::test(migrations = false)]
    async fn a_connection_that_cannot_be_recovered_in_time_is_closed(_pool: PgPoolOptions, options: PgConnectOptions) {
        let pool = pool(options, 1, Duration::from_millis(200));
        let first = backend_pid(&pool).await.unwrap();
        abandon(&pool, "select pg_sleep(1)").await;
        let second = backend_pid(&pool).await.unwrap();
        assert_ne!(second, first, "an out-of-step connection was handed out again");
        pool.close().await;
    }

    #[sqlx::test(migrations = false)]
    async fn closing_refuses_new_checkouts(_pool: PgPoolOptions, options: PgConnectOptions) {
        let pool = pool(options, 2, Duration::from_secs(5));
        backend_pid(&pool).await.unwrap();
        pool.close().await;
        assert!(matches!(pool.get().await, Err(managed::PoolError::Closed)));
    }
}
