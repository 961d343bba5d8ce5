//! Running one operation within bounds, and sorting SQLite's errors into [`StoreError`]s.
//!
//! Waiting is bounded twice over, and both bounds mean "nothing happened": waiting for the
//! connection (the writer is one connection, so this is where this process's writers queue) is
//! bounded by the pool's acquire timeout, and waiting for another process's write lock by
//! SQLite's busy timeout, both the store's timeout. Past them the caller hears
//! [`StoreError::Unavailable`], as on PostgreSQL past `lock_timeout`. Contention inside this
//! process is never an error: the writer's queue is first come, first served.
//!
//! The statements themselves are local and short; only a disk that stops answering makes one
//! hang. A *backstop* past both bounds gives up on it: a read is then unavailable, and a write's
//! outcome unknown (its COMMIT may still be written). A transaction given up on, or dropped,
//! before its COMMIT is rolled back by sqlx when the connection returns to its pool.

use std::future::Future;
use std::time::Duration;

use super::SqliteStore;
use crate::store::StoreError;

/// How long past the store's bounds an operation is awaited before it is given up.
const BACKSTOP_MARGIN: Duration = Duration::from_secs(2);

/// Whether giving up may leave something done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Read,
    Write,
}

impl SqliteStore {
    /// Runs `work` to its end or to the backstop, and sorts its error.
    pub(super) async fn bounded<T>(
        &self,
        kind: Kind,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // The connection wait and the busy wait can each take a whole timeout.
        let backstop = self.timeout * 2 + BACKSTOP_MARGIN;
        match tokio::time::timeout(backstop, work).await {
            Ok(outcome) => outcome,
            Err(elapsed) => Err(match kind {
                Kind::Read => StoreError::Unavailable(Box::new(elapsed)),
                Kind::Write => {
                    tracing::warn!("a write to SQLite did not finish in time; its outcome is unknown");
                    StoreError::OutcomeUnknown(Box::new(elapsed))
                }
            }),
        }
    }
}

/// SQLite's primary result codes we sort (<https://www.sqlite.org/rescode.html>).
mod code {
    pub const NOMEM: i32 = 7;
    pub const READONLY: i32 = 8;
    pub const BUSY: i32 = 5;
    pub const LOCKED: i32 = 6;
    pub const IOERR: i32 = 10;
    pub const CORRUPT: i32 = 11;
    pub const FULL: i32 = 13;
    pub const CANTOPEN: i32 = 14;
    pub const PROTOCOL: i32 = 15;
    pub const TOOBIG: i32 = 18;
    pub const MISMATCH: i32 = 20;
    pub const RANGE: i32 = 25;
    pub const NOTADB: i32 = 26;
}

/// The primary result code of a database error (sqlx reports the extended one).
fn primary_code(error: &sqlx::Error) -> Option<i32> {
    let code = error.as_database_error()?.code()?;
    code.parse::<i32>().ok().map(|extended| extended & 0xff)
}

/// Sorts an error that left nothing done (a failed statement or COMMIT rolls its transaction
/// back) into "try later", "bad input" and "bug".
pub(super) fn classify(error: sqlx::Error) -> StoreError {
    match primary_code(&error) {
        // Another process held the write lock past the busy timeout: PostgreSQL's lock_timeout.
        Some(code::BUSY | code::LOCKED) => StoreError::Unavailable(Box::new(error)),
        // Out of memory or disk, a file that cannot be opened or written, a broken disk: the
        // database cannot work now, as when PostgreSQL is down or out of disk.
        Some(
            code::NOMEM
            | code::READONLY
            | code::IOERR
            | code::CORRUPT
            | code::FULL
            | code::CANTOPEN
            | code::PROTOCOL
            | code::NOTADB,
        ) => StoreError::Unavailable(Box::new(error)),
        // A value the database refuses as such (too big, of the wrong type): PostgreSQL's 22xxx.
        Some(code::TOOBIG | code::MISMATCH | code::RANGE) => StoreError::InvalidData(Box::new(error)),
        Some(_) => StoreError::Internal(Box::new(error)),
        None => match error {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
                StoreError::Unavailable(Box::new(error))
            }
            _ => StoreError::Internal(Box::new(error)),
        },
    }
}
