//! Private keys on disk: PEM files holding a PKCS#8 key (`PRIVATE KEY`, any algorithm we sign
//! with), or the traditional `RSA PRIVATE KEY` / `EC PRIVATE KEY` blocks older openssl commands
//! write.
//!
//! Before key directories ([`super::directory`]) a server signed with one key: the file named by
//! `RATCHET_SIGNING_KEY`, or `signing-key.pem` it created in its data directory on first start.
//! Such a *legacy* key keeps working as the active key until a key directory takes over (and
//! `ratchet keys` imports it then). Every private key file must be readable by its owner only.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls::pki_types::pem::{PemObject as _, SectionKind};

use super::{KeyError, SigningKey};

/// File name of the key earlier versions generated inside the data directory.
pub const GENERATED_KEY_FILE: &str = "signing-key.pem";

/// The legacy single key, if there is one: the configured file, else the one an earlier version
/// created in the data directory.
pub fn find_legacy(configured: Option<&Path>, data_dir: &Path) -> Option<PathBuf> {
    configured
        .map(Path::to_path_buf)
        .or_else(|| Some(data_dir.join(GENERATED_KEY_FILE)).filter(|path| path.exists()))
}

/// Loads the key at `path`.
///
/// # Errors
/// The file cannot be read, may be read by group or others, or holds no key we can sign with.
pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
    load_with_pem(path).map(|(key, _)| key)
}

/// Loads the key at `path`, with the file's text (to copy it elsewhere unchanged).
///
/// # Errors
/// As [`load`].
pub fn load_with_pem(path: &Path) -> Result<(SigningKey, String), KeyError> {
    refuse_if_shared(path)?;
    let text = fs::read_to_string(path).map_err(|source| KeyError::Io {
        action: "read",
        path: path.into(),
        source,
    })?;
    let format = |reason: String| KeyError::Format {
        path: path.into(),
        reason,
    };
    // rustls' PEM reader (already in the tree for TLS), not a PEM crate of our own: the first
    // block of a kind it knows.
    let (kind, der) = <(SectionKind, Vec<u8>)>::from_pem_slice(text.as_bytes()).map_err(|e| format(e.to_string()))?;
    let key = match kind {
        SectionKind::PrivateKey => SigningKey::from_pkcs8_der(&der),
        SectionKind::RsaPrivateKey => SigningKey::from_traditional_der("RSA PRIVATE KEY", &der),
        SectionKind::EcPrivateKey => SigningKey::from_traditional_der("EC PRIVATE KEY", &der),
        other => Err(format!("expected a PRIVATE KEY block, found {other:?}")),
    }
    .map_err(format)?;
    Ok((key, text))
}

/// Writes a new key file (mode 0600) holding the PKCS#8 `der`.
///
/// # Errors
/// The file exists already (never overwritten: another process may have raced us to it) or
/// cannot be written.
pub fn write_new(path: &Path, der: &[u8]) -> Result<(), KeyError> {
    write_new_pem(path, &pkcs8_pem(der))
}

/// `der` as a `PRIVATE KEY` PEM block: base64 in lines of 64, CRLF line ends, byte for byte what
/// the `pem` crate wrote before rustls' reader replaced it (files written by either look the same).
fn pkcs8_pem(der: &[u8]) -> String {
    let base64 = STANDARD.encode(der);
    let mut text = String::from("-----BEGIN PRIVATE KEY-----\r\n");
    // base64 is ASCII, so every 64-byte chunk is a whole str.
    for line in base64.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).unwrap_or_default());
        text.push_str("\r\n");
    }
    text.push_str("-----END PRIVATE KEY-----\r\n");
    text
}

/// Writes `pem` to a new file (mode 0600).
///
/// # Errors
/// As [`write_new`].
pub fn write_new_pem(path: &Path, pem: &str) -> Result<(), KeyError> {
    crate::files::write_new(path, pem.as_bytes()).map_err(|(action, source)| KeyError::Io {
        action,
        path: path.into(),
        source,
    })
}

/// Refuses a secret file that group or others may read: whoever can read it can forge or open
/// what it protects ([`crate::files`]' rule, in a key file's words).
pub(super) fn refuse_if_shared(path: &Path) -> Result<(), KeyError> {
    match crate::files::shared_mode(path) {
        Ok(None) => Ok(()),
        Ok(Some(mode)) => Err(KeyError::Exposed {
            path: path.into(),
            mode,
        }),
        Err(source) => Err(KeyError::Io {
            action: "inspect",
            path: path.into(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ratchet-keyfile-{name}-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn written_keys_are_what_the_pem_crate_wrote_and_load_back() {
        let (_, der) = SigningKey::generate(super::super::KeyAlgorithm::RS256).unwrap();
        assert_eq!(pkcs8_pem(&der), pem::encode(&pem::Pem::new("PRIVATE KEY", der.clone())));
        let path = temp_dir("pem").join("key.pem");
        write_new(&path, &der).unwrap();
        assert_eq!(load(&path).unwrap().alg(), super::super::KeyAlgorithm::RS256);
    }

    fn write_private(path: &Path, text: &str) {
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn openssl_style_keys_load_and_garbage_is_refused() {
        let dir = temp_dir("load");
        // `openssl genpkey -algorithm ed25519` output (PKCS#8 v1), RFC 8410 §10.3 example key.
        let v1 = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let path = dir.join("v1.pem");
        write_private(&path, v1);
        assert_eq!(load(&path).unwrap().alg(), super::super::KeyAlgorithm::EdDSA);
        let bad = dir.join("bad.pem");
        write_private(&bad, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
        assert!(matches!(load(&bad), Err(KeyError::Format { .. })));
        assert!(matches!(load(&dir.join("missing.pem")), Err(KeyError::Io { .. })));
    }

    #[test]
    fn a_key_file_others_may_read_is_refused_with_the_fix() {
        let dir = temp_dir("mode");
        let path = dir.join("key.pem");
        let (_, der) = SigningKey::generate(super::super::KeyAlgorithm::EdDSA).unwrap();
        write_new(&path, &der).unwrap();
        assert!(load(&path).is_ok());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = load(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        assert!(write_new(&path, &der).is_err(), "never overwritten");
    }
}
