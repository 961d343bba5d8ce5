//! Files only their owner may read: creating them (mode 0600, directories 0700) and refusing an
//! existing one that group or others may read.
//!
//! Every file ratchet keeps a secret in goes through here: private keys and the key directory
//! (`keys`), the server secret (`keys::secret`), the TLS private key (`transport::tls`), and the
//! SQLite database with its `-wal`, `-shm` and lock files (`store::sqlite`). A copy of any of them
//! is enough to forge tokens, open grace-window seals, or test guessed refresh tokens offline, so
//! one rule and one implementation, at the bottom of the crate where every layer can import it.
//!
//! What it leaves out: the wording of the refusal. Each caller names the file for what it is (a
//! key file, a database) and says how to fix it, in its own error type.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Permission bits that let someone other than the owner in (group and others, any access).
const SHARED_BITS: u32 = 0o077;

/// Options that create files readable and writable by their owner only; the caller says how to
/// open (`write`, `create_new`, ...). The mode applies only when the file is created: an existing
/// file keeps its own, which is what [`shared_mode`] is for.
pub fn private_options() -> fs::OpenOptions {
    let mut options = fs::OpenOptions::new();
    options.mode(0o600);
    options
}

/// Writes `bytes` to a new file at `path` (mode 0600) and syncs it to disk.
///
/// # Errors
/// `Err((action, error))`: `"create"` when the file exists already (never overwritten: another
/// process may have raced us to it) or cannot be created, `"write"` when writing or syncing failed.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<(), (&'static str, std::io::Error)> {
    let mut file = private_options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| ("create", e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| ("write", e))
}

/// Creates `dir` (and its parents) readable by the owner only, if it does not exist. An existing
/// directory keeps its mode.
///
/// # Errors
/// The directory cannot be created.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// The permission bits of `path` (`mode & 0o777`) if group or others have any access to it;
/// `None` when only its owner does.
///
/// # Errors
/// The file cannot be inspected (`NotFound` included: whether a missing file is fine is the
/// caller's to say).
pub fn shared_mode(path: &Path) -> std::io::Result<Option<u32>> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    Ok((mode & SHARED_BITS != 0).then_some(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("ratchet-files-{}", uuid::Uuid::new_v4()))
    }

    #[test]
    fn created_files_and_directories_are_private_and_never_overwritten() {
        let dir = temp_dir().join("nested");
        create_private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let path = dir.join("secret");
        write_new(&path, b"one").unwrap();
        assert_eq!(shared_mode(&path).unwrap(), None);
        let (action, _) = write_new(&path, b"two").unwrap_err();
        assert_eq!(action, "create");
        assert_eq!(fs::read(&path).unwrap(), b"one");
    }

    #[test]
    fn any_access_for_group_or_others_is_shared() {
        let dir = temp_dir();
        create_private_dir(&dir).unwrap();
        let path = dir.join("file");
        write_new(&path, b"x").unwrap();
        for (mode, shared) in [
            (0o400, false),
            (0o600, false),
            (0o640, true),
            (0o604, true),
            (0o610, true),
        ] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(shared_mode(&path).unwrap(), shared.then_some(mode), "{mode:o}");
        }
        assert!(shared_mode(&dir.join("missing")).is_err());
    }
}
