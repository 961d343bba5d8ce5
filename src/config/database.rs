//! `--database-url`, `--db-max-connections`, `--db-timeout`, `--db-wait`: which store, and where. Resolves
//! straight to the store's own [`Target`], so that what the flags say and what the store opens
//! are one value.

use std::path::{Path, PathBuf};

use super::bounds::{DB_MAX_CONNECTIONS, DB_TIMEOUT, DB_WAIT};
use super::problems::Problems;
use crate::cli::DatabaseArgs;
use crate::store::Target;
use crate::store::postgres::{PgHosts, PgTarget, PoolSettings};
use crate::store::sqlite::{DATABASE_FILE, SqliteSettings, SqliteTarget};

/// Where the database is (`ratchet migrate`): PostgreSQL when `DATABASE_URL` names one, SQLite in
/// `data_dir` when it is unset.
///
/// # Errors
/// Every problem found, one message each.
pub fn target(args: &DatabaseArgs, data_dir: &Path) -> Result<Target, Vec<String>> {
    let mut problems = Problems::default();
    let target = collect(args, data_dir, &mut problems);
    problems.into_result(target)
}

/// As [`target`], adding its problems to `problems`.
pub(super) fn collect(args: &DatabaseArgs, data_dir: &Path, problems: &mut Problems) -> Option<Target> {
    let max_connections: u32 = problems.count("db-max-connections", args.db_max_connections, &DB_MAX_CONNECTIONS);
    let timeout = problems.duration("db-timeout", &args.db_timeout, &DB_TIMEOUT);
    let wait = problems.duration("db-wait", &args.db_wait, &DB_WAIT);
    let sqlite = |path: PathBuf| {
        Target::Sqlite(SqliteTarget {
            path,
            settings: SqliteSettings {
                readers: max_connections,
                timeout,
            },
        })
    };
    // An empty DATABASE_URL (`DATABASE_URL= ratchet serve`) is no URL.
    let Some(url) = args.database_url.as_ref().filter(|url| !url.expose().is_empty()) else {
        return Some(sqlite(data_dir.join(DATABASE_FILE)));
    };
    if let Some(rest) = url.expose().strip_prefix("sqlite:") {
        // `sqlite://PATH` or `sqlite:PATH`, as sqlx writes them; a file, never in memory
        // (nothing would survive a restart) and without options (the store sets its own).
        let path = rest.strip_prefix("//").unwrap_or(rest);
        let usable = !path.is_empty() && !path.contains('?') && !path.contains(":memory:");
        problems.check(usable, || {
            "database-url: a sqlite: URL names a database file (sqlite:PATH), without options".into()
        });
        return usable.then(|| sqlite(PathBuf::from(path)));
    }
    // The URL may hold a password: never echo it.
    match PgHosts::parse(url.expose()) {
        Ok(hosts) => Some(Target::Postgres(PgTarget {
            url: url.clone(),
            hosts,
            wait,
            settings: PoolSettings {
                max_connections,
                timeout,
            },
        })),
        // The error never holds the URL (sqlx's errors are reduced to "unparseable").
        Err(e) => {
            problems.push(format!("database-url: not a valid PostgreSQL URL ({e})"));
            None
        }
    }
}
