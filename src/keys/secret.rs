//! The server secret: a key the database never sees, for what ratchet hands out or keeps and must
//! later open or check itself.
//!
//! Two things are keyed by it, each with its own HKDF label: the *seals* that keep a rotated
//! refresh token's successor openable during the reuse grace window (a database dump plus an old
//! refresh token must not open them), and ListSessions *page tokens* (a caller must not forge
//! one, nor use one handed out for another subject).
//!
//! Where it comes from: the file named by `RATCHET_SEAL_KEY` (read, or created with mode 0600 on
//! first use, like the generated signing key), else it is derived from the signing key's private
//! key material — which every replica already shares and which is kept as secret, so that
//! nothing new has to be provisioned. Replicas must agree on it, or a retry within the grace
//! window that lands on another replica cannot be answered.

use std::fs;
use std::path::Path;

use aws_lc_rs::hkdf::{HKDF_SHA256, Prk};
use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use super::KeyError;

/// Random bytes in a generated secret file, and the least a configured one must hold.
const SECRET_BYTES: usize = 32;
/// HKDF-Extract salt: separates this use of the key material from any other.
const EXTRACT_SALT: &[u8] = b"ratchet/v1/server-secret";

/// A secret file whose text starts with this holds an already extracted key (base64url of the
/// 32-byte HKDF PRK) rather than key material: how a key directory created around a legacy
/// signing key keeps the secret that key implied, without keeping the key itself.
const EXTRACTED_PREFIX: &str = "prk:";

/// Keys derived from the server secret, one per purpose (HKDF-Expand with a fixed label).
#[derive(Clone)]
pub struct ServerSecret {
    prk: Prk,
    /// The PRK's bytes, to hand the same secret on (see [`EXTRACTED_PREFIX`]).
    extracted: [u8; 32],
}

/// Where the secret came from, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Loaded,
    Created,
    DerivedFromSigningKey,
}

impl ServerSecret {
    /// A secret from key material of at least 32 bytes of entropy.
    pub fn from_key_material(material: &[u8]) -> Self {
        // HKDF-Extract is HMAC(salt, material) (RFC 5869 §2.2); computed by hand to keep its bytes.
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, EXTRACT_SALT), material);
        let mut extracted = [0u8; 32];
        extracted.copy_from_slice(tag.as_ref());
        Self::from_extracted(extracted)
    }

    fn from_extracted(extracted: [u8; 32]) -> Self {
        Self {
            prk: Prk::new_less_safe(HKDF_SHA256, &extracted),
            extracted,
        }
    }

    /// Writes this secret to a new file at `path` (mode 0600) in a form that loads back as the
    /// same secret.
    ///
    /// # Errors
    /// The file exists or cannot be written.
    pub(super) fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let text = format!("{EXTRACTED_PREFIX}{}\n", URL_SAFE_NO_PAD.encode(self.extracted));
        super::keyfile::write_new_pem(path, &text)
    }

    /// A fresh random secret, in memory only (tests).
    ///
    /// # Errors
    /// The system random generator failed.
    pub fn generate() -> Result<Self, KeyError> {
        let mut material = [0u8; SECRET_BYTES];
        aws_lc_rs::rand::fill(&mut material).map_err(|_| KeyError::Random)?;
        Ok(Self::from_key_material(&material))
    }

    /// 32 bytes for `label` and `input`: HKDF-Expand(secret, label ‖ input). `label` must be a
    /// fixed string naming the purpose, and `input` must encode its parts unambiguously.
    pub fn derive(&self, label: &'static [u8], input: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let info = [label, input];
        // Only fails for an output longer than 255 hash lengths; 32 bytes never is.
        if let Ok(okm) = self.prk.expand(&info, HKDF_SHA256) {
            let _ = okm.fill(&mut out);
        }
        out
    }

    /// The secret in the file at `path`, created (mode 0600, never overwritten) if missing.
    ///
    /// # Errors
    /// The file cannot be read or created, is readable by group or others, or holds fewer than
    /// 32 bytes (base64).
    pub fn load_or_create(path: &Path) -> Result<(Self, SecretSource), KeyError> {
        let io = |action, source| KeyError::Io {
            action,
            path: path.into(),
            source,
        };
        if path.exists() {
            super::keyfile::refuse_if_shared(path)?;
            let text = fs::read_to_string(path).map_err(|e| io("read", e))?;
            let text = text.trim();
            if let Some(extracted) = text.strip_prefix(EXTRACTED_PREFIX) {
                let extracted = URL_SAFE_NO_PAD
                    .decode(extracted)
                    .ok()
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                    .ok_or_else(|| KeyError::SecretFormat {
                        path: path.into(),
                        reason: format!("expected {EXTRACTED_PREFIX} and 32 bytes of base64url"),
                    })?;
                return Ok((Self::from_extracted(extracted), SecretSource::Loaded));
            }
            let material = URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .or_else(|_| STANDARD.decode(text))
                .map_err(|_| KeyError::SecretFormat {
                    path: path.into(),
                    reason: "expected base64 text".into(),
                })?;
            if material.len() < SECRET_BYTES {
                return Err(KeyError::SecretFormat {
                    path: path.into(),
                    reason: format!("expected at least {SECRET_BYTES} bytes, found {}", material.len()),
                });
            }
            return Ok((Self::from_key_material(&material), SecretSource::Loaded));
        }
        let mut material = [0u8; SECRET_BYTES];
        aws_lc_rs::rand::fill(&mut material).map_err(|_| KeyError::Random)?;
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            crate::files::create_private_dir(dir).map_err(|e| io("create the directory of", e))?;
        }
        // A new file only: if another process raced us to it, fail rather than overwrite its secret.
        let text = format!("{}\n", URL_SAFE_NO_PAD.encode(material));
        crate::files::write_new(path, text.as_bytes()).map_err(|(action, e)| io(action, e))?;
        Ok((Self::from_key_material(&material), SecretSource::Created))
    }
}

/// Never print key material, not even in debug output.
impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecret(..)")
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn temp_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir()
            .join(format!("ratchet-secret-{}", uuid::Uuid::new_v4()))
            .join(name)
    }

    #[test]
    fn a_created_secret_is_private_and_the_same_when_loaded_again() {
        let path = temp_path("seal-key");
        let (created, source) = ServerSecret::load_or_create(&path).unwrap();
        assert_eq!(source, SecretSource::Created);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (loaded, source) = ServerSecret::load_or_create(&path).unwrap();
        assert_eq!(source, SecretSource::Loaded);
        assert_eq!(created.derive(b"t", b"x"), loaded.derive(b"t", b"x"));
    }

    #[test]
    fn a_secret_readable_by_others_or_too_short_is_refused() {
        let path = temp_path("seal-key");
        ServerSecret::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = ServerSecret::load_or_create(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        let short = temp_path("short");
        fs::create_dir_all(short.parent().unwrap()).unwrap();
        fs::write(&short, URL_SAFE_NO_PAD.encode([7u8; 16])).unwrap();
        fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            ServerSecret::load_or_create(&short),
            Err(KeyError::SecretFormat { .. })
        ));
    }

    #[test]
    fn a_secret_written_on_loads_back_as_the_same_secret() {
        let original = ServerSecret::from_key_material(b"some signing key material, 32+ bytes");
        let path = temp_path("continued");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        original.write_new(&path).unwrap();
        let (loaded, _) = ServerSecret::load_or_create(&path).unwrap();
        assert_eq!(loaded.derive(b"seal", b"x"), original.derive(b"seal", b"x"));
        // and the hand-made extract is HKDF's own
        let salt = aws_lc_rs::hkdf::Salt::new(HKDF_SHA256, EXTRACT_SALT);
        let prk = salt.extract(b"some signing key material, 32+ bytes");
        let mut expected = [0u8; 32];
        prk.expand(&[b"seal".as_slice(), b"x"], HKDF_SHA256)
            .unwrap()
            .fill(&mut expected)
            .unwrap();
        assert_eq!(original.derive(b"seal", b"x"), expected);
    }

    #[test]
    fn labels_and_secrets_separate_derived_keys() {
        let a = ServerSecret::from_key_material(&[1; 32]);
        let b = ServerSecret::from_key_material(&[2; 32]);
        assert_ne!(a.derive(b"seal", b"x"), a.derive(b"page", b"x"));
        assert_ne!(a.derive(b"seal", b"x"), b.derive(b"seal", b"x"));
        assert_eq!(a.derive(b"seal", b"x"), a.derive(b"seal", b"x"));
    }
}
