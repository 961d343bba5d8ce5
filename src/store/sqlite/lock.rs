//! One process per SQLite database: the lock file a server holds for as long as it runs
//! ([`SqliteTarget::lock`]), and the database's files kept private (created 0600, refused when
//! group or others may read them, by [`crate::files`]' rule).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::SqliteTarget;

impl SqliteTarget {
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
        let mut file = crate::files::private_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
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
/// ([`crate::files`]): a copy of it is everything an attacker needs to learn who has sessions,
/// and to test guessed refresh tokens offline. A file that does not exist yet is created private.
///
/// # Errors
/// [`LockError::Exposed`] naming the first such file; [`LockError::Io`] when one cannot be
/// inspected.
pub(super) fn refuse_if_shared(database: &Path) -> Result<(), LockError> {
    for path in database_files(database) {
        match crate::files::shared_mode(&path) {
            Ok(None) => {}
            Ok(Some(mode)) => return Err(LockError::Exposed { path, mode }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(LockError::Io { path, source }),
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
pub(super) fn prepare_file(database: &Path) -> std::io::Result<()> {
    prepare_directory(database)?;
    match crate::files::private_options()
        .write(true)
        .create_new(true)
        .open(database)
    {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}
