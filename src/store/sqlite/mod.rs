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
//! The statements are in `sql`, their rows in `rows`, bounds and error sorting in `run`.
//! What it leaves out: revocations made elsewhere (there is no elsewhere: one process), and
//! PostgreSQL's retries of serialization failures and lost answers (a local file has neither).

mod rows;
mod run;
mod sql;

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{Transaction, query, query_as};
use time::OffsetDateTime;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use self::rows::{SessionRow, TokenRow, instant, micros};
use self::run::{Kind, classify};
use super::{
    FamilyRecord, FamilyStatus, FamilyStore, IdleWindow, MigrateError, NewFamily, Purged, RefreshTokenRecord,
    Revocation, RevokeReason, SessionCursor, SessionRecord, SpendOutcome, SpendRequest, StoreError,
};
use crate::domain::{FamilyId, TokenHash};

/// The migrations in `migrations/sqlite/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// Page cache of each reading connection, in KiB (SQLite's default is 2,000).
const READER_CACHE_KIB: u32 = 256;

/// The database's file name in the data directory.
pub const DATABASE_FILE: &str = "ratchet.db";

/// How connections are opened and how long anything may take.
#[derive(Debug, Clone)]
pub struct SqliteSettings {
    /// Most reading connections (each is a thread of sqlx's); the writer is one more.
    pub readers: u32,
    /// The bound on waiting for the writer, and SQLite's busy timeout (waiting for another
    /// process's write lock): past it the caller gets UNAVAILABLE (nothing happened).
    pub timeout: Duration,
}

impl Default for SqliteSettings {
    fn default() -> Self {
        Self {
            readers: 4,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Where a SQLite database is: what an unset `DATABASE_URL` (or a `sqlite:` one) resolves to.
#[derive(Debug, Clone)]
pub struct SqliteTarget {
    pub path: PathBuf,
    pub settings: SqliteSettings,
}

impl SqliteTarget {
    /// The options every connection shares. WAL and FULL: see the module docs. Setting WAL on a
    /// database already in WAL takes no lock; [`migrate`] switches a new one, before any pool.
    fn options(&self) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(&self.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(self.settings.timeout)
    }

    fn reader_options(&self) -> SqliteConnectOptions {
        // A reader that tried to write would take the write lock beside the writer. Its page
        // cache is small: each connection keeps a private one (2 MiB by default), so 16 readers
        // on a busy Introspect grew the server by ~30 MiB (bench: peak RSS 64 MiB, against
        // 15 MiB on PostgreSQL) for pages the kernel caches once for all of them anyway; a
        // reader does point lookups by primary key, a few pages each.
        self.options()
            .pragma("query_only", "ON")
            .pragma("cache_size", format!("-{READER_CACHE_KIB}"))
    }

    /// `<database>.lock`.
    pub fn lock_path(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(".lock");
        PathBuf::from(name)
    }

    /// Takes the database's lock file for as long as the returned [`DatabaseLock`] lives, so that
    /// a second server on the same file refuses to start instead of serving beside this one (its
    /// cache would not see this one's revocations, and replicas belong on PostgreSQL anyway).
    /// `flock(2)` underneath: the kernel releases it when the process ends, however it ends, so a
    /// SIGKILLed server leaves nothing to clean up. (Not on NFS, where SQLite's own locking is not
    /// to be trusted either.)
    ///
    /// # Errors
    /// [`LockError::InUse`] while another process holds it; [`LockError::Io`] when the lock file
    /// cannot be created.
    pub fn lock(&self) -> Result<DatabaseLock, LockError> {
        let path = self.lock_path();
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        // An existing database that others may read is refused before anything uses it (the
        // files hold token hashes, seals and every subject); a new one is created private, even
        // when `--no-migrate` leaves creating it to SQLite (which would use the umask).
        refuse_if_shared(&self.path)?;
        prepare_file(&self.path).map_err(io)?;
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path)
                    .ok()
                    .and_then(|pid| pid.trim().parse::<u32>().ok())
                    .map_or_else(|| "another process".to_owned(), |pid| format!("process {pid}"));
                return Err(LockError::InUse {
                    database: self.path.clone(),
                    holder,
                    lock: path,
                });
            }
            Err(fs::TryLockError::Error(error)) => return Err(io(error)),
        }
        // Who holds it, for the message a second server prints; the lock is what counts.
        let _ = file.set_len(0).and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(DatabaseLock { _file: file, path })
    }
}

/// Held for the life of a server on SQLite; see [`SqliteTarget::lock`]. The file stays when the
/// lock goes: deleting it would race with a server that is just opening it.
#[derive(Debug)]
pub struct DatabaseLock {
    _file: fs::File,
    path: PathBuf,
}

impl DatabaseLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why [`SqliteTarget::lock`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "the SQLite database {} is in use by {holder} (it holds {}): SQLite serves one process; \
         to run several, use PostgreSQL (set DATABASE_URL)",
        database.display(),
        lock.display()
    )]
    InUse {
        database: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    /// The database, or its `-wal` or `-shm` file, may be read by group or others.
    #[error(
        "the SQLite database file {} may be read by group or others (mode {mode:o}): it holds every \
         session's subject, token hashes and seals; run `chmod 600 {}` (and the same for its -wal \
         and -shm files, if any)",
        path.display(),
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("cannot take the lock file {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The database file and the `-wal` and `-shm` files beside it, when they exist.
fn database_files(database: &Path) -> [PathBuf; 3] {
    let beside = |suffix: &str| {
        let mut name = database.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [database.to_path_buf(), beside("-wal"), beside("-shm")]
}

/// Refuses a database that group or others may read, as key files are refused
/// (`keys::keyfile`): a copy of it is everything an attacker needs to learn who has sessions,
/// and to test guessed refresh tokens offline. A file that does not exist yet is created private.
///
/// # Errors
/// [`LockError::Exposed`] naming the first such file; [`LockError::Io`] when one cannot be
/// inspected.
fn refuse_if_shared(database: &Path) -> Result<(), LockError> {
    use std::os::unix::fs::PermissionsExt as _;
    for path in database_files(database) {
        let mode = match fs::metadata(&path) {
            Ok(metadata) => metadata.permissions().mode() & 0o777,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(LockError::Io { path, source }),
        };
        if mode & 0o077 != 0 {
            return Err(LockError::Exposed { path, mode });
        }
    }
    Ok(())
}

/// Creates the database's directory if missing.
fn prepare_directory(database: &Path) -> std::io::Result<()> {
    match database.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => fs::create_dir_all(dir),
        _ => Ok(()),
    }
}

/// Creates the directory and an empty database file readable by its owner only, if missing:
/// the file holds token hashes and seals. SQLite gives its `-wal` and `-shm` files the same mode.
fn prepare_file(database: &Path) -> std::io::Result<()> {
    prepare_directory(database)?;
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(database)
    {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

/// Creates the database file if it is missing, switches it to WAL, and applies pending
/// migrations ([`MIGRATOR`]).
///
/// # Errors
/// The file cannot be created, opened or migrated.
pub async fn migrate(target: &SqliteTarget) -> Result<(), MigrateError> {
    refuse_if_shared(&target.path).map_err(|e| MigrateError::Create(e.into()))?;
    prepare_file(&target.path).map_err(|e| MigrateError::Create(e.into()))?;
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
}

fn hyphenated(id: FamilyId) -> Hyphenated {
    id.as_uuid().hyphenated()
}

fn family_id(id: Hyphenated) -> FamilyId {
    FamilyId::from_uuid(id.into_uuid())
}

/// Whether presenting the spent token of `row` again at `now` is a client's retry within the
/// grace window (answered with the same successor), the same condition as PostgreSQL's `SPEND`
/// and `rotation::judge`: spent after `retry_after`, and the successor still sealed (only with a
/// grace window), unspent and unexpired.
fn is_retry(row: &TokenRow, spent_at: i64, retry_after: i64, now: i64) -> bool {
    row.successor_seal.is_some()
        && spent_at > retry_after
        && !row.successor_spent.unwrap_or(false)
        && row.successor_expires_at.is_some_and(|expires_at| expires_at > now)
}

impl FamilyStore for SqliteStore {
    async fn create_family(&self, new: &NewFamily) -> Result<Vec<FamilyId>, StoreError> {
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
            tx.commit().await.map_err(classify)?;
            Ok(evicted.into_iter().map(|(id,)| family_id(id)).collect())
        })
        .await
    }

    /// PostgreSQL's `SPEND` as a transaction: read the presented token under the write lock,
    /// then exactly one of: spend it into the successor (live), revoke the family (a replay that
    /// is neither a retry nor this request again), or nothing. The answer is the token as read.
    async fn spend(&self, request: &SpendRequest) -> Result<SpendOutcome, StoreError> {
        let presented = &request.presented.0[..];
        let successor = &request.successor.hash.0[..];
        let now = micros(request.now);
        self.bounded(Kind::Write, async {
            let mut tx = self.begin_write().await?;
            let statement = match request.successor_seal {
                Some(_) => sql::PRESENTED_TOKEN_SEALED,
                None => sql::PRESENTED_TOKEN,
            };
            let row: Option<TokenRow> = query_as(statement)
                .bind(presented)
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?;
            let Some(row) = row else {
                tx.rollback().await.map_err(classify)?;
                return Ok(SpendOutcome::Refused {
                    token: None,
                    revoked_for_reuse: false,
                });
            };
            let family_live = row.family.revoked_at.is_none() && row.family.expires_at > now;

            if row.spent_at.is_none() && family_live && row.token_expires_at > now {
                let family = row.family.id;
                let expires_at = micros(request.successor.expires_at).min(row.family.expires_at);
                // Spent first: the schema allows one unspent token per family.
                query(sql::SPEND_TOKEN)
                    .bind(now)
                    .bind(successor)
                    .bind(presented)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
                query(sql::INSERT_SUCCESSOR)
                    .bind(successor)
                    .bind(family)
                    .bind(presented)
                    .bind(now)
                    .bind(expires_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
                if let Some(seal) = &request.successor_seal {
                    query(sql::UNSEAL)
                        .bind(presented)
                        .execute(&mut *tx)
                        .await
                        .map_err(classify)?;
                    query(sql::SEAL)
                        .bind(successor)
                        .bind(&seal.0[..])
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(classify)?;
                }
                query(sql::TOUCH_FAMILY)
                    .bind(now)
                    .bind(expires_at)
                    .bind(family)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
                tx.commit().await.map_err(classify)?;
                let successor_expires_at = instant(expires_at)?;
                let mut family: FamilyRecord = row.family.try_into()?;
                family.last_rotated_at = request.now;
                family.refresh_expires_at = successor_expires_at;
                return Ok(SpendOutcome::Spent {
                    family,
                    successor_expires_at,
                });
            }

            let reused = row.spent_at.is_some_and(|spent_at| {
                family_live
                    && !row.spent_into(&request.successor.hash)
                    && !is_retry(&row, spent_at, micros(request.retry_after), now)
            });
            if reused {
                // Detection and revocation in one transaction: once it commits, the family is
                // revoked whatever happens to the caller.
                query(sql::REVOKE_FOR_REUSE)
                    .bind(now)
                    .bind(row.family.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
                tx.commit().await.map_err(classify)?;
            } else {
                tx.rollback().await.map_err(classify)?;
            }
            // Spent into our own successor: an earlier delivery of this request did it.
            if !reused
                && row.spent_into(&request.successor.hash)
                && let Some(expires_at) = row.successor_expires_at
            {
                return Ok(SpendOutcome::Spent {
                    family: row.family.try_into()?,
                    successor_expires_at: instant(expires_at)?,
                });
            }
            Ok(SpendOutcome::Refused {
                token: Some(row.into_record()?),
                revoked_for_reuse: reused,
            })
        })
        .await
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
            tx.commit().await.map_err(classify)?;
            Ok(ids.into_iter().map(|(id,)| family_id(id)).collect())
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
        self.bounded(Kind::Write, async {
            let mut tx = self.begin_write().await?;
            let cleared = query(sql::CLEAR_SEALS)
                .bind(micros(sealed_before))
                .bind(i64::from(limit))
                .execute(&mut *tx)
                .await
                .map_err(classify)?
                .rows_affected();
            tx.commit().await.map_err(classify)?;
            Ok(cleared)
        })
        .await
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
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;
    use crate::store::NewRefreshToken;

    /// A fresh, migrated database under the temporary directory; removed when dropped.
    struct Scratch(SqliteTarget);

    impl Scratch {
        async fn new(timeout: Duration) -> Self {
            let name = format!("ratchet-sqlite-{}.db", Uuid::new_v4().simple());
            let target = SqliteTarget {
                path: std::env::temp_dir().join(name),
                settings: SqliteSettings { readers: 2, timeout },
            };
            migrate(&target).await.unwrap();
            Self(target)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm", ".lock"] {
                let mut path = self.0.path.clone().into_os_string();
                path.push(suffix);
                let _ = fs::remove_file(path);
            }
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn new_family() -> NewFamily {
        let now = now();
        NewFamily {
            family: FamilyRecord {
                id: FamilyId::new_random(),
                subject: "alice".into(),
                client_id: "app".into(),
                scopes: vec![],
                audiences: vec!["api".into()],
                claims: Map::new(),
                created_at: now,
                last_rotated_at: now,
                refresh_expires_at: now + time::Duration::hours(1),
                expires_at: now + time::Duration::days(1),
                revoked_at: None,
            },
            first: NewRefreshToken {
                hash: TokenHash(rand::random()),
                expires_at: now + time::Duration::hours(1),
            },
            max_live: 100,
        }
    }

    fn spend_of(presented: TokenHash) -> SpendRequest {
        SpendRequest {
            presented,
            successor: NewRefreshToken {
                hash: TokenHash(rand::random()),
                expires_at: now() + time::Duration::hours(1),
            },
            successor_seal: None,
            now: now(),
            retry_after: now(),
        }
    }

    #[tokio::test]
    async fn writers_in_two_processes_wait_for_each_other_instead_of_failing() {
        // Two stores on one file have a writer each, as the server and a `ratchet gc` run by
        // hand do. With a deferred BEGIN both would read "unspent" and one would fail to upgrade
        // its lock (SQLITE_BUSY, which the busy timeout cannot wait out); BEGIN IMMEDIATE makes
        // the second wait, then read the spend, then revoke.
        let scratch = Scratch::new(Duration::from_secs(5)).await;
        let (a, b) = (SqliteStore::open(&scratch.0), SqliteStore::open(&scratch.0));
        let (a, b) = (&a, &b);
        let new = new_family();
        a.create_family(&new).await.unwrap();
        let requests: Vec<SpendRequest> = (0..16).map(|_| spend_of(new.first.hash)).collect();
        let outcomes = futures::future::join_all(requests.iter().enumerate().map(|(i, request)| async move {
            if i % 2 == 0 {
                a.spend(request).await
            } else {
                b.spend(request).await
            }
        }))
        .await;
        let outcomes: Vec<SpendOutcome> = outcomes.into_iter().map(Result::unwrap).collect();
        let spent = outcomes
            .iter()
            .filter(|o| matches!(o, SpendOutcome::Spent { .. }))
            .count();
        let revokers = outcomes
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    SpendOutcome::Refused {
                        revoked_for_reuse: true,
                        ..
                    }
                )
            })
            .count();
        assert_eq!((spent, revokers), (1, 1), "{outcomes:#?}");
        a.close().await;
        b.close().await;
    }

    #[tokio::test]
    async fn a_write_lock_held_past_the_timeout_is_unavailable_and_nothing_happens() {
        let scratch = Scratch::new(Duration::from_millis(200)).await;
        let store = SqliteStore::open(&scratch.0);
        let new = new_family();
        store.create_family(&new).await.unwrap();
        // Another process (the sqlite3 shell, say) holds the write lock.
        let mut other = SqliteConnection::connect_with(&scratch.0.options()).await.unwrap();
        let held = other.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let started = std::time::Instant::now();
        let error = store.spend(&spend_of(new.first.hash)).await.unwrap_err();
        assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "bounded by the store's timeout"
        );
        held.rollback().await.unwrap();
        assert_eq!(
            store.refresh_token(&new.first.hash).await.unwrap().unwrap().spent_at,
            None,
            "nothing was spent"
        );
        assert!(matches!(
            store.spend(&spend_of(new.first.hash)).await.unwrap(),
            SpendOutcome::Spent { .. }
        ));
        other.close().await.unwrap();
        store.close().await;
    }

    #[tokio::test]
    async fn one_process_at_a_time_holds_the_lock_file() {
        let scratch = Scratch::new(Duration::from_secs(1)).await;
        let lock = scratch.0.lock().unwrap();
        assert_eq!(lock.path(), scratch.0.lock_path());
        let error = scratch.0.lock().unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, LockError::InUse { .. }), "{error:?}");
        assert!(
            message.contains(&format!("process {}", std::process::id())) && message.contains("PostgreSQL"),
            "{message}"
        );
        drop(lock);
        scratch.0.lock().unwrap();
    }

    #[tokio::test]
    async fn the_database_and_its_lock_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::temp_dir().join(format!("ratchet-mode-{}", Uuid::new_v4().simple()));
        let target = SqliteTarget {
            path: path.join("ratchet.db"),
            settings: SqliteSettings::default(),
        };
        let lock = target.lock().unwrap();
        for file in [target.path.clone(), target.lock_path()] {
            let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
        drop(lock);
        fs::remove_dir_all(path).unwrap();
    }
}
