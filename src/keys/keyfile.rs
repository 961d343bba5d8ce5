//! Signing keys on disk: PEM-encoded PKCS#8 Ed25519 private keys.
//!
//! Without a configured key, `serve` creates one in its data directory on the first start and
//! reuses it afterwards, so tokens stay verifiable across restarts. The file is created with mode
//! 0600 and never overwritten.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::{KeyError, SigningKey};

/// File name of the generated key inside the data directory.
pub const GENERATED_KEY_FILE: &str = "signing-key.pem";

/// Where the key came from, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Configured(PathBuf),
    Reused(PathBuf),
    Created(PathBuf),
}

/// Loads the key at `path`.
///
/// # Errors
/// The file cannot be read or is not a PKCS#8 Ed25519 private key in PEM.
pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
    let text = fs::read(path).map_err(|source| KeyError::Io {
        action: "read",
        path: path.into(),
        source,
    })?;
    let format = |reason: String| KeyError::Format {
        path: path.into(),
        reason,
    };
    let block = pem::parse(text).map_err(|e| format(e.to_string()))?;
    if block.tag() != "PRIVATE KEY" {
        return Err(format(format!("expected a PRIVATE KEY block, found {}", block.tag())));
    }
    SigningKey::from_pkcs8_der(block.contents()).map_err(format)
}

/// The configured key if there is one, else the data directory's key, created on first use.
///
/// # Errors
/// The key cannot be read, created or parsed.
pub fn load_or_create(configured: Option<&Path>, data_dir: &Path) -> Result<(SigningKey, KeySource), KeyError> {
    if let Some(path) = configured {
        return Ok((load(path)?, KeySource::Configured(path.into())));
    }
    let path = data_dir.join(GENERATED_KEY_FILE);
    if path.exists() {
        return Ok((load(&path)?, KeySource::Reused(path)));
    }
    let io = |action, source| KeyError::Io {
        action,
        path: path.clone(),
        source,
    };
    create_private_dir(data_dir).map_err(|e| io("create the directory of", e))?;
    let (key, der) = SigningKey::generate()?;
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der));
    // create_new: if another process raced us to it, fail rather than overwrite its key.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io("create", e))?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write", e))?;
    Ok((key, KeySource::Created(path)))
}

/// Creates `dir` (and its parents) readable by the owner only, if it does not exist.
pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Refuses a secret file that group or others may read: whoever can read it can forge or open
/// what it protects.
pub(super) fn refuse_if_shared(path: &Path) -> Result<(), KeyError> {
    let mode = fs::metadata(path)
        .map_err(|source| KeyError::Io {
            action: "inspect",
            path: path.into(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed {
            path: path.into(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ratchet-keyfile-{name}-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn first_start_creates_a_private_key_that_later_starts_reuse() {
        let dir = temp_dir("create").join("data");
        let (first, source) = load_or_create(None, &dir).unwrap();
        let path = dir.join(GENERATED_KEY_FILE);
        assert_eq!(source, KeySource::Created(path.clone()));
        let mode = fs::metadata(&path).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        let (second, source) = load_or_create(None, &dir).unwrap();
        assert_eq!(source, KeySource::Reused(path));
        assert_eq!(first.kid(), second.kid());
    }

    #[test]
    fn openssl_style_v1_keys_load_and_garbage_is_refused() {
        let dir = temp_dir("load");
        // `openssl genpkey -algorithm ed25519` output (PKCS#8 v1), RFC 8410 §10.3 example key.
        let v1 = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let path = dir.join("v1.pem");
        fs::write(&path, v1).unwrap();
        assert!(load(&path).is_ok());
        let bad = dir.join("bad.pem");
        fs::write(&bad, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").unwrap();
        assert!(matches!(load(&bad), Err(KeyError::Format { .. })));
        assert!(matches!(load(&dir.join("missing.pem")), Err(KeyError::Io { .. })));
    }
}
