//! Where a SQLite database is ([`SqliteTarget`]), how its connections are opened, and the bounds
//! they run within ([`SqliteSettings`]). Claiming the database for this process is in
//! [`super::lock`].

use std::path::PathBuf;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

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
    /// database already in WAL takes no lock; [`super::migrate`] switches a new one, before any pool.
    pub(super) fn options(&self) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(&self.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(self.settings.timeout)
    }

    pub(super) fn reader_options(&self) -> SqliteConnectOptions {
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
}
