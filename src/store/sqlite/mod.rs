//! [`FamilyStore`] on SQLite: the store `ratchet serve` keeps in its data directory when no
//! `DATABASE_URL` is set. One process (a lock file, [`DatabaseLock`], keeps a second out), with
//! the same guarantees as PostgreSQL: the contract suite (`store::contract`) runs on both.
//!
//! How it keeps them:
//! - **One writer.** All writes go through one connection, each in a transaction that starts
//!   with `BEGIN IMMEDIATE`, which takes SQLite's write lock up front. Two rotations of one token
//!   can then never both read "unspent": the second reads what the first committed. (sqlx's own
//!   `begin()` issues a deferred `BEGIN`, which takes the lock only at the first write: two
//!   transactions could both read, and one would fail on upgrading with SQLITE_BUSY, which no busy
//!   timeout can wait out.) A pool of one rather than writers racing for the lock on a larger
//!   pool: SQLite admits one writer at a time anyway, and its busy handler polls with sleeps of
//!   up to 100 ms, unfair to whoever waits longest; sqlx's pool queue is first come, first served
//!   and wakes the next writer the moment the connection is back. So contention in this process
//!   is a queue, never an error: 64 concurrent Rotates of one token are 1 pair and 63 reuses.
//!   The busy timeout is left for *other* processes (`ratchet gc` or `migrate` run by hand, the
//!   `sqlite3` shell).
//! - **Readers beside it.** Reads (Introspect's family status, ListSessions, the cleanup's scans,
//!   health) go to a small pool of read-only (`query_only`) connections: in WAL mode they read the
//!   last commit without waiting for, or holding up, the writer.
//! - **Durability.** WAL with `synchronous = FULL`: every COMMIT is on disk before it returns,
//!   so a rotation that was answered survives SIGKILL and power loss alike. Not NORMAL, which in
//!   WAL mode may lose the last commits on power loss: a lost spend would make its refresh token
//!   spendable a second time, and the successor already handed out unknown.
//! - **The same invariants in the schema** (see `migrations/sqlite/`), foreign keys on.
//!
//! Where the database is and how connections are opened is in `target`, the lock file and the
//! files' modes in `lock`, the rotation transaction in `spend`, the statements in `sql`,
//! their rows in `rows`, bounds and error sorting in `run`.
//!
//! What it leaves out: revocations made elsewhere (there is no elsewhere: one process), and
//! PostgreSQL's retries of serialization failures and lost answers (a local file has neither).

mod lock;
mod rows;
mod run;
mod spend;
mod sql;
mod target;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::sqlite::{Sqlite, SqliteConnection, SqlitePool, SqlitePoolOptions};
use sqlx::types::Json;
use sqlx::{Transaction, query, query_as};
use time::OffsetDateTime;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

pub use self::lock::{DatabaseLock, LockError};
use self::rows::{EventRow, SessionRow, TokenRow, instant, micros};
use self::run::{Kind, classify};
pub use self::target::{DATABASE_FILE, SqliteSettings, SqliteTarget};
use super::{
    AuditEvent, EventFilter, EventKind, FamilyStatus, FamilyStore, IdleWindow, MigrateError, NewFamily, Purged,
    RefreshTokenRecord, Revocation, RevokeReason, SessionCursor, SessionRecord, SpendOutcome, SpendRequest, StoreError,
    SweepLock, audit,
};
use crate::domain::{Actor, FamilyId, TokenHash};
use crate::telemetry::metrics::PoolGauges;

/// The migrations in `migrations/sqlite/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// Creates the database file if it is missing, switches it to WAL, and applies pending
/// migrations ([`MIGRATOR`]).
///
/// # Errors
/// The file cannot be created, opened or migrated.
pub async fn migrate(target: &SqliteTarget) -> Result<(), MigrateError> {
    lock::refuse_if_shared(&target.path).map_err(|e| MigrateError::Create(e.into()))?;
    lock::prepare_file(&target.path).map_err(|e| MigrateError::Create(e.into()))?;
    let mut connection = SqliteConnection::connect_with(&target.options())
        .await
        .map_err(|e| MigrateError::Unreachable(e.into()))?;
    MIGRATOR
        .run(&mut connection)
        .await
        .map_err(|e| MigrateError::Apply(e.into()))?;
    connection.close().await.map_err(|e| MigrateError::Close(e.into()))
}

/// SQLite-backed [`FamilyStore`]. Cheap to clone (it shares its pools).
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
    timeout: Duration,
    path: PathBuf,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// A store on `target`, connecting lazily (as the PostgreSQL store does).
    pub fn open(target: &SqliteTarget) -> Self {
        let timeout = target.settings.timeout;
        // No test before each acquire: a SQLite connection is a thread of this process, not a
        // socket that can go stale.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timeout)
            .test_before_acquire(false)
            .connect_lazy_with(target.options());
        let readers = SqlitePoolOptions::new()
            .max_connections(target.settings.readers.max(1))
            .acquire_timeout(timeout)
            .test_before_acquire(false)
            .connect_lazy_with(target.reader_options());
        Self {
            writer,
            readers,
            timeout,
            path: target.path.clone(),
        }
    }

    /// Its connections now (the writer and the readers together), for the metrics. sqlx's pool
    /// does not tell how many wait for a connection.
    pub fn gauges(&self) -> PoolGauges {
        let pools = [&self.writer, &self.readers];
        let idle: usize = pools.iter().map(|pool| pool.num_idle()).sum();
        let size: usize = pools.iter().map(|pool| pool.size() as usize).sum();
        let max: usize = pools
            .iter()
            .map(|pool| pool.options().get_max_connections() as usize)
            .sum();
        PoolGauges {
            in_use: size.saturating_sub(idle),
            idle,
            waiting: None,
            max,
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bound on waiting for the writer, and for another process's lock.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Closes every connection; waits for those in use to come back.
    pub async fn close(&self) {
        self.writer.close().await;
        self.readers.close().await;
    }

    /// A write transaction holding the write lock from its start (see the module docs).
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(classify)
    }

    /// One batch of the cleanup: `statement` with its cutoff `before` and `limit`, in a write
    /// transaction of its own; how many rows it changed.
    async fn batch_before(
        &self,
        statement: &'static str,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.bounded(Kind::Write, async {
            let mut tx = self.begin_write().await?;
            let changed = query(statement)
                .bind(micros(before))
                .bind(i64::from(limit))
                .execute(&mut *tx)
                .await
                .map_err(classify)?
                .rows_affected();
            tx.commit().await.map_err(classify)?;
            Ok(changed)
        })
        .await
    }
}

fn hyphenated(id: FamilyId) -> Hyphenated {
    id.as_uuid().hyphenated()
}

fn family_id(id: Hyphenated) -> FamilyId {
    FamilyId::from_uuid(id.into_uuid())
}

/// Records `kind` (with `detail`) at `now` by `actor` for each of `families`, in the transaction
/// of the change it records (see [`super::audit`]).
async fn record_events(
    tx: &mut SqliteConnection,
    now: i64,
    kind: EventKind,
    detail: Option<&str>,
    families: &[Hyphenated],
    actor: &Actor,
) -> Result<(), StoreError> {
    if families.is_empty() {
        return Ok(());
    }
    let ids = Json(families.iter().map(ToString::to_string).collect::<Vec<_>>());
    query(sql::RECORD_EVENTS)
        .bind(now)
        .bind(kind.as_str())
        .bind(actor.caller.as_deref())
        .bind(actor.request_id.as_deref())
        .bind(detail)
        .bind(ids)
        .execute(tx)
        .await
        .map_err(classify)?;
    Ok(())
}

impl FamilyStore for SqliteStore {
    async fn create_family(&self, new: &NewFamily, actor: &Actor) -> Result<Vec<FamilyId>, StoreError> {
        let family = &new.family;
        let id = hyphenated(family.id);
        let now = micros(family.created_at);
        let first_expires_at = micros(new.first.expires_at);
        let keep_others = i64::from(new.max_live.saturating_sub(1));
        self.bounded(Kind::Write, async {
            let mut tx = self.begin_write().await?;
            query(sql::INSERT_FAMILY)
                .bind(id)
                .bind(&family.subject)
                .bind(&family.client_id)
                .bind(Json(&family.scopes))
                .bind(Json(&family.audiences))
                .bind(Json(&family.claims))
                .bind(now)
                .bind(first_expires_at)
                .bind(micros(family.expires_at))
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            query(sql::INSERT_FIRST_TOKEN)
                .bind(&new.first.hash.0[..])
                .bind(id)
                .bind(now)
                .bind(first_expires_at)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            let evicted: Vec<(Hyphenated,)> = query_as(sql::EVICT)
                .bind(&family.subject)
                .bind(&family.client_id)
                .bind(now)
                .bind(id)
                .bind(keep_others)
                .fetch_all(&mut *tx)
                .await
                .map_err(classify)?;
            let evicted: Vec<Hyphenated> = evicted.into_iter().map(|(id,)| id).collect();
            record_events(&mut tx, now, EventKind::Issued, None, &[id], actor).await?;
            record_events(&mut tx, now, EventKind::Evicted, None, &evicted, actor).await?;
            tx.commit().await.map_err(classify)?;
            Ok(evicted.into_iter().map(family_id).collect())
        })
        .await
    }

    /// See `SqliteStore::spend_token` (`spend.rs`).
    async fn spend(&self, request: &SpendRequest, actor: &Actor) -> Result<SpendOutcome, StoreError> {
        self.spend_token(request, actor).await
    }

    async fn refresh_token(&self, hash: &TokenHash) -> Result<Option<RefreshTokenRecord>, StoreError> {
        self.bounded(Kind::Read, async {
            let row: Option<TokenRow> = query_as(sql::PRESENTED_TOKEN)
                .bind(&hash.0[..])
                .fetch_optional(&self.readers)
                .await
                .map_err(classify)?;
            row.map(TokenRow::into_record).transpose()
        })
        .await
    }

    async fn family_status(&self, id: FamilyId) -> Result<Option<FamilyStatus>, StoreError> {
        self.bounded(Kind::Read, async {
            let row: Option<(bool, i64)> = query_as(sql::FAMILY_STATUS)
                .bind(hyphenated(id))
                .fetch_optional(&self.readers)
                .await
                .map_err(classify)?;
            row.map(|(revoked, expires_at)| {
                Ok(FamilyStatus {
                    revoked,
                    expires_at: instant(expires_at)?,
                })
            })
            .transpose()
        })
        .await
    }

    async fn family_subject(&self, id: FamilyId) -> Result<Option<String>, StoreError> {
        self.bounded(Kind::Read, async {
            let row: Option<(String,)> = query_as(sql::FAMILY_SUBJECT)
                .bind(hyphenated(id))
                .fetch_optional(&self.readers)
                .await
                .map_err(classify)?;
            Ok(row.map(|(subject,)| subject))
        })
        .await
    }

    async fn revoke_family(
        &self,
        id: FamilyId,
        now: OffsetDateTime,
        reason: RevokeReason,
        actor: &Actor,
    ) -> Result<Revocation, StoreError> {
        self.bounded(Kind::Write, async {
            let mut tx = self.begin_write().await?;
            let found: Option<(Option<i64>,)> = query_as(sql::FAMILY_REVOKED_AT)
                .bind(hyphenated(id))
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?;
            let revocation = match found {
                None => Revocation::Unknown,
                Some((Some(_),)) => Revocation::AlreadyRevoked,
                Some((None,)) => {
                    query(sql::REVOKE_FAMILY)
                        .bind(hyphenated(id))
                        .bind(micros(now))
                        .bind(reason.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(classify)?;
                    let (kind, detail) = reason.event();
                    record_events(&mut tx, micros(now), kind, detail, &[hyphenated(id)], actor).await?;
                    Revocation::Revoked
                }
            };
            tx.commit().await.map_err(classify)?;
            Ok(revocation)
        })
        .await
    }

    async fn revoke_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
        limit: u32,
        actor: &Actor,
    ) -> Result<Vec<FamilyId>, StoreError> {
        self.bounded(Kind::Write, async {
            let mut tx = self.begin_write().await?;
            let ids: Vec<(Hyphenated,)> = query_as(sql::REVOKE_SUBJECT)
                .bind(subject)
                .bind(micros(now))
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await
                .map_err(classify)?;
            let ids: Vec<Hyphenated> = ids.into_iter().map(|(id,)| id).collect();
            let detail = Some(super::TargetKind::Subject.as_str());
            record_events(&mut tx, micros(now), EventKind::Revoked, detail, &ids, actor).await?;
            tx.commit().await.map_err(classify)?;
            Ok(ids.into_iter().map(family_id).collect())
        })
        .await
    }

    async fn live_families(
        &self,
        subject: &str,
        now: OffsetDateTime,
        after: Option<SessionCursor>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        self.bounded(Kind::Read, async {
            let statement = match after {
                None => sql::LIVE_FAMILIES,
                Some(_) => sql::LIVE_FAMILIES_AFTER,
            };
            let query = query_as(statement)
                .bind(subject)
                .bind(micros(now))
                .bind(i64::from(limit));
            let query = match after {
                None => query,
                Some(cursor) => query.bind(micros(cursor.created_at)).bind(hyphenated(cursor.id)),
            };
            let rows: Vec<SessionRow> = query.fetch_all(&self.readers).await.map_err(classify)?;
            rows.into_iter().map(TryInto::try_into).collect()
        })
        .await
    }

    async fn revoked_families(&self, revoked_before: OffsetDateTime, limit: u32) -> Result<Vec<FamilyId>, StoreError> {
        self.bounded(Kind::Read, async {
            let ids: Vec<(Hyphenated,)> = query_as(sql::REVOKED_FAMILIES)
                .bind(micros(revoked_before))
                .bind(i64::from(limit))
                .fetch_all(&self.readers)
                .await
                .map_err(classify)?;
            Ok(ids.into_iter().map(|(id,)| family_id(id)).collect())
        })
        .await
    }

    async fn idle_window(
        &self,
        after: Option<FamilyId>,
        window: u32,
        ended_before: OffsetDateTime,
    ) -> Result<IdleWindow, StoreError> {
        // The nil UUID sorts first, and random (v4) ids are never nil.
        let after = after.map_or(Uuid::nil(), |id| id.as_uuid()).hyphenated();
        self.bounded(Kind::Read, async {
            let rows: Vec<(Hyphenated, bool)> = query_as(sql::IDLE_WINDOW)
                .bind(after)
                .bind(i64::from(window))
                .bind(micros(ended_before))
                .fetch_all(&self.readers)
                .await
                .map_err(classify)?;
            Ok(IdleWindow {
                last: rows.last().map(|(id, _)| family_id(*id)),
                ended: rows
                    .into_iter()
                    .filter_map(|(id, ended)| ended.then_some(family_id(id)))
                    .collect(),
            })
        })
        .await
    }

    async fn purge_families(&self, families: &[FamilyId], limit: u32) -> Result<Purged, StoreError> {
        let mut purged = Purged::default();
        if families.is_empty() {
            return Ok(purged);
        }
        let ids = Json(
            families
                .iter()
                .map(|&id| hyphenated(id).to_string())
                .collect::<Vec<_>>(),
        );
        // Spent tokens first, a batch per transaction (each holds the write lock, which every
        // rotation waits for): the families go once none are left.
        loop {
            let deleted = self
                .bounded(Kind::Write, async {
                    let mut tx = self.begin_write().await?;
                    let deleted = query(sql::PURGE_SPENT_TOKENS)
                        .bind(&ids)
                        .bind(i64::from(limit))
                        .execute(&mut *tx)
                        .await
                        .map_err(classify)?
                        .rows_affected();
                    query(sql::UNLINK_ORPHANS)
                        .bind(&ids)
                        .execute(&mut *tx)
                        .await
                        .map_err(classify)?;
                    tx.commit().await.map_err(classify)?;
                    Ok(deleted)
                })
                .await?;
            purged.tokens += deleted;
            if deleted < u64::from(limit) {
                break;
            }
        }
        let (families, tokens) = self
            .bounded(Kind::Write, async {
                let mut tx = self.begin_write().await?;
                let tokens = query(sql::PURGE_LAST_TOKENS)
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?
                    .rows_affected();
                let families = query(sql::PURGE_FAMILIES)
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?
                    .rows_affected();
                tx.commit().await.map_err(classify)?;
                Ok((families, tokens))
            })
            .await?;
        purged.families += families;
        purged.tokens += tokens;
        Ok(purged)
    }

    async fn clear_seals(&self, sealed_before: OffsetDateTime, limit: u32) -> Result<u64, StoreError> {
        self.batch_before(sql::CLEAR_SEALS, sealed_before, limit).await
    }

    /// From the reading connections: in WAL mode a reader sees the last commit without waiting
    /// for the writer or holding it up.
    async fn events(&self, filter: &EventFilter) -> Result<Vec<AuditEvent>, StoreError> {
        let statement = audit::select_statement(filter, sql::EVENT_COLUMNS, |n| format!("?{n}"));
        self.bounded(Kind::Read, async {
            // Built from fixed fragments (`audit::select_statement`); every value is bound.
            let mut query = query_as::<_, EventRow>(sqlx::AssertSqlSafe(statement));
            if let Some(family) = filter.family {
                query = query.bind(hyphenated(family));
            }
            if let Some(subject) = &filter.subject {
                query = query.bind(subject.as_str());
            }
            if let Some(kind) = filter.kind {
                query = query.bind(kind.as_str());
            }
            if let Some(since) = filter.since {
                query = query.bind(micros(since));
            }
            let rows = query
                .bind(i64::from(filter.limit))
                .fetch_all(&self.readers)
                .await
                .map_err(classify)?;
            rows.into_iter().map(TryInto::try_into).collect()
        })
        .await
    }

    async fn purge_events(&self, before: OffsetDateTime, limit: u32) -> Result<u64, StoreError> {
        self.batch_before(sql::PURGE_EVENTS, before, limit).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(Kind::Read, async {
            query(sql::PING)
                .execute(&self.readers)
                .await
                .map_err(classify)
                .map(drop)
        })
        .await
    }

    /// One process owns the database file (the lock file, [`DatabaseLock`]), so there is no
    /// other server to take turns with.
    async fn sweep_lock(&self) -> Result<Option<SweepLock>, StoreError> {
        Ok(Some(SweepLock::unshared()))
    }
}
