//! Running one statement to a definite outcome, within bounds.
//!
//! - Serialization failures and deadlocks (SQLSTATE 40001, 40P01) are retried with jittered
//!   exponential backoff ([`RetryPolicy`]).
//! - A statement refused because its server no longer accepts writes (SQLSTATE 25006: a
//!   failover made it a standby) did nothing: its connection and every idle one are closed, and
//!   it runs again on a new connection, which goes to the server that accepts writes now
//!   (`hosts`), within the same bounds.
//! - A statement is never abandoned while PostgreSQL may still commit it: statements are bounded
//!   by PostgreSQL itself (`statement_timeout`, `lock_timeout`: a statement cancelled that way did
//!   not happen), and only a *backstop* well past that bound gives up on a connection whose
//!   network went silent.
//! - A write whose answer was lost (the connection broke, or the backstop fired, after the
//!   statement was sent) has an unknown outcome. Every write of the store is idempotent, so it is
//!   resolved by running the same statement again on another connection: that either finds the
//!   first run's effect and reports it, or does the work now — and a late copy of the first run
//!   then finds it done. Only if the database stays unreachable for a whole further timeout does
//!   the caller hear [`StoreError::OutcomeUnknown`]. A read that lost its answer is simply
//!   [`StoreError::Unavailable`].
//! - Anything else the database refuses is sorted into "nothing happened, retry later"
//!   ([`StoreError::Unavailable`]), "bad input" ([`StoreError::InvalidData`]) or "bug".

use std::future::Future;
use std::time::Duration;

use deadpool::managed::PoolError;
use tokio::time::Instant;

use super::PgStore;
use super::pool::PooledConnection;
use crate::store::StoreError;
use crate::telemetry::metrics::{self, Resolution};

/// How long past PostgreSQL's own statement timeout a statement's answer is awaited before the
/// connection is given up as silent (a network that drops packets without resetting anything).
const BACKSTOP_MARGIN: Duration = Duration::from_secs(2);
/// First and longest pause between runs that resolve a lost answer.
const RESOLVE_DELAY: (Duration, Duration) = (Duration::from_millis(20), Duration::from_millis(500));

/// Bounded retries of serialization failures; all attempts together are also bounded by the
/// store's timeout.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 64 clients racing for one token settle in two attempts each (lose the spend, then find
    /// the token spent and the family revoked by the first loser). Unrelated rotations conflict
    /// too: SERIALIZABLE tracks B-tree reads per index *page*, and while the tables are small
    /// every row shares a few pages. On a fresh database at K=64 about 4% of rotations conflicted
    /// and a few lost 12 times in a row (bench, issue 3); 40 attempts with backoff capped at 50 ms
    /// wait at most about a second.
    fn default() -> Self {
        Self {
            max_attempts: 40,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(50),
        }
    }
}

/// Whether a lost answer may leave something done, and how running it again tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Read,
    /// An idempotent write: running it again reports what the first run did.
    Write,
    /// An insert of rows with fresh random keys: run again after the first run committed, it
    /// fails on a unique key (SQLSTATE 23505), which then means "done" (what it would have
    /// returned is lost: the default stands in).
    Insert,
}

/// How one attempt ended.
enum Attempt<T> {
    /// PostgreSQL answered: a result, or an error (after which nothing of the statement stays).
    Answered(Result<T, sqlx::Error>),
    /// No connection: nothing was sent.
    NoConnection(StoreError),
    /// The statement may have been sent, and its answer never came.
    Lost(Box<dyn std::error::Error + Send + Sync>),
}

impl PgStore {
    /// Runs `op` on a pooled connection until it has a definite outcome, or runs out of attempts
    /// or time (see the module docs). Waiting for connections and starting attempts are bounded
    /// by the store's timeout; resolving a lost write gets one more timeout.
    ///
    /// `op` takes the connection and gives it back with the outcome (rather than borrowing it,
    /// which would need a higher-ranked closure that cannot capture the caller's references).
    pub(super) async fn run<T: Default, F, Fut>(&self, kind: Kind, op: F) -> Result<T, StoreError>
    where
        F: Fn(PooledConnection) -> Fut,
        Fut: Future<Output = (PooledConnection, Result<T, sqlx::Error>)>,
    {
        let mut deadline = Instant::now() + self.timeout;
        let mut conflict_delay = self.retry.base_delay;
        let mut resolve_delay = RESOLVE_DELAY.0;
        let mut attempts = 0;
        // Set once a write's answer was lost: from then on, every run is resolving it.
        let mut lost: Option<Box<dyn std::error::Error + Send + Sync>> = None;
        loop {
            attempts += 1;
            let pause = match self.attempt(&op, deadline).await {
                Attempt::Answered(Ok(value)) => {
                    if lost.is_some() {
                        metrics::resolved(Resolution::Applied);
                    }
                    return Ok(value);
                }
                Attempt::Answered(Err(error)) if is_serialization_conflict(&error) || is_read_only(&error) => {
                    tracing::debug!(attempts, %error, "nothing done (a serialization conflict, or a read-only server), retrying");
                    if attempts >= self.retry.max_attempts {
                        return Err(match lost {
                            Some(lost) => unknown(lost),
                            None => StoreError::Contention { attempts },
                        });
                    }
                    if is_serialization_conflict(&error) {
                        metrics::serialization_retry();
                    }
                    // Full jitter: racing clients spread out instead of colliding again.
                    let pause = conflict_delay.mul_f64(unit_random());
                    conflict_delay = (conflict_delay * 2).min(self.retry.max_delay);
                    pause
                }
                Attempt::Answered(Err(error))
                    if kind == Kind::Insert && lost.is_some() && sqlstate(&error).as_deref() == Some("23505") =>
                {
                    tracing::info!("a lost insert had committed");
                    metrics::resolved(Resolution::Applied);
                    return Ok(T::default());
                }
                Attempt::Answered(Err(error)) => match (classify(error), lost.is_some()) {
                    // This run did nothing, but the lost one may still have: keep asking.
                    (StoreError::Unavailable(_), true) => next_resolve_delay(&mut resolve_delay),
                    (error, lost) => {
                        if lost {
                            // Refused outright (bad data, a bug): neither run did anything.
                            metrics::resolved(Resolution::NotApplied);
                        }
                        return Err(error);
                    }
                },
                Attempt::NoConnection(error) if lost.is_none() => return Err(error),
                Attempt::NoConnection(_) => next_resolve_delay(&mut resolve_delay),
                Attempt::Lost(error) => match kind {
                    Kind::Read => return Err(StoreError::Unavailable(error)),
                    Kind::Write | Kind::Insert => {
                        if lost.is_none() {
                            tracing::warn!(%error, "lost the answer to a write; running it again to learn its outcome");
                            deadline = Instant::now() + self.timeout;
                            lost = Some(error);
                        }
                        next_resolve_delay(&mut resolve_delay)
                    }
                },
            };
            if Instant::now() + pause >= deadline {
                return Err(match lost {
                    Some(lost) => unknown(lost),
                    None => StoreError::Contention { attempts },
                });
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// One attempt of `op`: a connection within `deadline`, then the statement, awaited until
    /// PostgreSQL answers or the backstop fires.
    async fn attempt<T, F, Fut>(&self, op: &F, deadline: Instant) -> Attempt<T>
    where
        F: Fn(PooledConnection) -> Fut,
        Fut: Future<Output = (PooledConnection, Result<T, sqlx::Error>)>,
    {
        let connection = match tokio::time::timeout_at(deadline, self.pool.get()).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(PoolError::Backend(error))) => return Attempt::NoConnection(classify(error)),
            Ok(Err(error)) => return Attempt::NoConnection(StoreError::Unavailable(Box::new(error))),
            Err(elapsed) => return Attempt::NoConnection(StoreError::Unavailable(Box::new(elapsed))),
        };
        // Dropping the future on the backstop drops the connection mid-protocol; the pool then
        // brings it back in step or closes it (see `pool`).
        match tokio::time::timeout(self.timeout + BACKSTOP_MARGIN, op(connection)).await {
            Err(elapsed) => Attempt::Lost(Box::new(elapsed)),
            Ok((connection, Err(error))) if is_read_only(&error) => {
                tracing::warn!("the database server no longer accepts writes (a failover?): reconnecting");
                connection.discard();
                self.pool.drop_idle();
                Attempt::Answered(Err(error))
            }
            Ok((mut connection, outcome)) => match outcome {
                // An answer: the protocol is in step, the connection can be used again.
                Ok(_) | Err(sqlx::Error::Database(_)) => {
                    connection.finished();
                    Attempt::Answered(outcome)
                }
                Err(error @ (sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_))) => {
                    Attempt::Lost(Box::new(error))
                }
                Err(sqlx::Error::WorkerCrashed) => Attempt::Lost(Box::new(sqlx::Error::WorkerCrashed)),
                Err(error) => Attempt::Answered(Err(error)),
            },
        }
    }
}

/// A lost write still unresolved when time or attempts ran out.
fn unknown(lost: Box<dyn std::error::Error + Send + Sync>) -> StoreError {
    metrics::resolved(Resolution::Unknown);
    StoreError::OutcomeUnknown(lost)
}

fn next_resolve_delay(delay: &mut Duration) -> Duration {
    let pause = *delay;
    *delay = (*delay * 2).min(RESOLVE_DELAY.1);
    pause
}

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|db| db.code())
        .map(|code| code.into_owned())
}

fn is_serialization_conflict(error: &sqlx::Error) -> bool {
    matches!(sqlstate(error).as_deref(), Some("40001" | "40P01"))
}

/// SQLSTATE 25006, read_only_sql_transaction: refused before anything was written.
fn is_read_only(error: &sqlx::Error) -> bool {
    sqlstate(error).as_deref() == Some("25006")
}

/// Sorts an error that left nothing done into "try later", "bad input" and "bug".
fn classify(error: sqlx::Error) -> StoreError {
    let code = sqlstate(&error);
    match (&error, code.as_deref()) {
        // 22: data exception (a NUL byte in text, an out-of-range value): the request's fault.
        (_, Some(code)) if code.starts_with("22") => StoreError::InvalidData(Box::new(error)),
        // 08: connection exception; 53: insufficient resources (too many connections, out of
        // disk); 57: operator intervention (shutdown, statement_timeout cancel); 55P03: lock
        // timeout; 3D000: the database does not exist (yet).
        (_, Some(code))
            if code.starts_with("08") || code.starts_with("53") || code.starts_with("57") || code == "55P03" || code == "3D000" =>
        {
            StoreError::Unavailable(Box::new(error))
        }
        (
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            // Raised by our connection check (`pool`): a session that is not SERIALIZABLE.
            | sqlx::Error::Configuration(_),
            _,
        ) => StoreError::Unavailable(Box::new(error)),
        _ => StoreError::Internal(Box::new(error)),
    }
}

/// A uniform number in [0, 1) for the retry jitter, from aws-lc's generator (the service's one
/// random source). Should it ever fail, 0.5: the jitter only spreads retries out, and half the
/// delay is still a delay.
fn unit_random() -> f64 {
    let bits: Result<[u8; 8], _> = aws_lc_rs::rand::generate(&aws_lc_rs::rand::SystemRandom::new()).map(|r| r.expose());
    match bits {
        // The top 53 bits: as many as an f64 holds exactly, so every value is below 1.
        Ok(bits) => (u64::from_le_bytes(bits) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}
