//! The key directory (`RATCHET_KEYS_DIR`): every signing key of a deployment and its state.
//!
//! ```text
//! keys/
//!   keys.json          the manifest: each key's kid, algorithm, state and creation time
//!   <kid>.pem          one PKCS#8 private key per key, mode 0600
//!   server-secret      keys refresh-token seals and page tokens (see `secret`), mode 0600
//! ```
//!
//! A key is **active** (signs new tokens; exactly one is) or **published** (in the JWKS and
//! accepted, but not signing: about to be activated, or recently replaced). Retiring a key removes
//! it from the manifest and deletes its file: tokens it signed stop verifying.
//!
//! The manifest is the one source of truth and is only ever replaced whole (written to a
//! temporary file, synced, renamed), so a server reading the directory at any moment sees the old
//! state or the new one, never a mix. Changes take the directory's lock file, so two `ratchet
//! keys` commands, or two servers initialising an empty directory at once, cannot interleave.
//! Replicas share the directory (the same volume or the same Kubernetes secret mounted into each)
//! and so agree on the keys; each server re-reads it on SIGHUP and every `--keys-reload-interval`.

use std::collections::HashSet;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::algorithm::KeyAlgorithm;
use super::keyfile;
use super::signing_key::SigningKey;
use super::{KeyError, KeySet, ServerSecret};

pub const MANIFEST_FILE: &str = "keys.json";
pub const SECRET_FILE: &str = "server-secret";
const LOCK_FILE: &str = ".lock";
const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Active,
    Published,
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Active => "active",
            Self::Published => "published",
        })
    }
}

/// One key as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    pub kid: String,
    pub alg: KeyAlgorithm,
    pub state: KeyState,
    /// RFC 3339, UTC.
    pub created: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    version: u32,
    keys: Vec<KeyEntry>,
}

/// A key directory on disk.
#[derive(Debug, Clone)]
pub struct KeyDirectory {
    path: PathBuf,
}

/// What a change to the directory did, for the CLI to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imported {
    /// The directory already had a manifest.
    Nothing,
    /// The directory was created empty.
    Created,
    /// The directory was created around this existing (pre-directory) signing key, now active.
    LegacyKey(String),
}

impl KeyDirectory {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the directory holds a manifest (else the server runs on a single legacy key, or
    /// initialises the directory).
    pub fn exists(&self) -> bool {
        self.path.join(MANIFEST_FILE).exists()
    }

    fn io(&self, action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KeyError {
        let path = path.to_path_buf();
        move |source| KeyError::Io { action, path, source }
    }

    fn invalid(&self, reason: impl Into<String>) -> KeyError {
        KeyError::Directory {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn key_path(&self, kid: &str) -> PathBuf {
        self.path.join(format!("{kid}.pem"))
    }

    fn read_manifest(&self) -> Result<Manifest, KeyError> {
        let path = self.path.join(MANIFEST_FILE);
        let text = fs::read(&path).map_err(self.io("read", &path))?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| self.invalid(format!("{MANIFEST_FILE}: {e}")))?;
        if manifest.version != MANIFEST_VERSION {
            return Err(self.invalid(format!(
                "{MANIFEST_FILE}: version {} is not supported (this ratchet reads {MANIFEST_VERSION})",
                manifest.version
            )));
        }
        Ok(manifest)
    }

    /// Replaces the manifest atomically: readers see the old one or the new one.
    fn write_manifest(&self, manifest: &Manifest) -> Result<(), KeyError> {
        let path = self.path.join(MANIFEST_FILE);
        let temporary = self.path.join(format!(".{MANIFEST_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(manifest).map_err(|e| self.invalid(e.to_string()))?;
        let _ = fs::remove_file(&temporary);
        let mut file = crate::files::private_options()
            .write(true)
            .create_new(true)
            .open(&temporary)
            .map_err(self.io("create", &temporary))?;
        file.write_all(&text)
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .map_err(self.io("write", &temporary))?;
        fs::rename(&temporary, &path).map_err(self.io("replace", &path))?;
        // The rename itself must survive a crash too.
        fs::File::open(&self.path)
            .and_then(|dir| dir.sync_all())
            .map_err(self.io("sync", &self.path))
    }

    /// Runs `change` holding the directory's lock (created, with the directory, if missing).
    fn locked<T>(&self, change: impl FnOnce() -> Result<T, KeyError>) -> Result<T, KeyError> {
        crate::files::create_private_dir(&self.path).map_err(self.io("create", &self.path))?;
        let lock_path = self.path.join(LOCK_FILE);
        let lock = crate::files::private_options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(self.io("open", &lock_path))?;
        lock.lock().map_err(self.io("lock", &lock_path))?;
        let result = change();
        let _ = lock.unlock();
        result
    }

    /// Creates the manifest if there is none: around `legacy` (a key from before key directories,
    /// which becomes the active key, with the server secret it implied so that nothing in flight
    /// breaks), or empty.
    ///
    /// # Errors
    /// The directory cannot be created or written.
    pub fn initialize(&self, legacy: Option<&Path>, now: &str) -> Result<Imported, KeyError> {
        // Without taking the lock when there is nothing to do: `ratchet keys list` must work on
        // a read-only mount (a Kubernetes secret).
        if self.exists() {
            return Ok(Imported::Nothing);
        }
        self.locked(|| self.initialize_locked(legacy, None, now))
    }

    /// Creates the manifest, around `legacy` or with a new `first` key (active) or empty, in one
    /// write: a server reading the directory without the lock never sees a manifest without its
    /// active key.
    fn initialize_locked(
        &self,
        legacy: Option<&Path>,
        first: Option<KeyAlgorithm>,
        now: &str,
    ) -> Result<Imported, KeyError> {
        if self.exists() {
            return Ok(Imported::Nothing);
        }
        let mut manifest = Manifest {
            version: MANIFEST_VERSION,
            keys: Vec::new(),
        };
        let secret_path = self.path.join(SECRET_FILE);
        let imported = match legacy {
            Some(path) => {
                let (key, pem) = keyfile::load_with_pem(path)?;
                keyfile::write_new_pem(&self.key_path(key.kid()), &pem).or_else(|error| {
                    // A copy left by an interrupted earlier attempt is fine if it is this key.
                    match keyfile::load(&self.key_path(key.kid())) {
                        Ok(existing) if existing.kid() == key.kid() => Ok(()),
                        _ => Err(error),
                    }
                })?;
                if !secret_path.exists() {
                    key.derived_secret().write_new(&secret_path)?;
                }
                manifest.keys.push(KeyEntry {
                    kid: key.kid().to_owned(),
                    alg: key.alg(),
                    state: KeyState::Active,
                    created: now.to_owned(),
                });
                Imported::LegacyKey(key.kid().to_owned())
            }
            None => {
                ServerSecret::load_or_create(&secret_path)?;
                if let Some(alg) = first {
                    let (key, der) = SigningKey::generate(alg)?;
                    keyfile::write_new(&self.key_path(key.kid()), &der)?;
                    manifest.keys.push(KeyEntry {
                        kid: key.kid().to_owned(),
                        alg,
                        state: KeyState::Active,
                        created: now.to_owned(),
                    });
                }
                Imported::Created
            }
        };
        self.write_manifest(&manifest)?;
        Ok(imported)
    }

    /// Creates the directory with one new `alg` key, active, unless it has a manifest already:
    /// a server's first start. Two servers starting at once on an empty shared directory end up
    /// with the same single key. Returns whether it created the directory.
    ///
    /// # Errors
    /// The directory cannot be created or written.
    pub fn bootstrap(&self, alg: KeyAlgorithm, now: &str) -> Result<bool, KeyError> {
        if self.exists() {
            return Ok(false);
        }
        self.locked(|| Ok(self.initialize_locked(None, Some(alg), now)? == Imported::Created))
    }

    /// The keys, in manifest order.
    ///
    /// # Errors
    /// There is no manifest or it is malformed.
    pub fn list(&self) -> Result<Vec<KeyEntry>, KeyError> {
        Ok(self.read_manifest()?.keys)
    }

    /// Reads and checks every key: exactly one active, each file present, private (mode 0600 or
    /// stricter), parseable, and the key the manifest says (same kid, same algorithm).
    ///
    /// # Errors
    /// Any of that does not hold; nothing is half-loaded.
    pub fn load(&self) -> Result<KeySet, KeyError> {
        let manifest = self.read_manifest()?;
        let mut active = None;
        let mut published = Vec::new();
        let mut seen = HashSet::new();
        for entry in &manifest.keys {
            if !seen.insert(entry.kid.as_str()) {
                return Err(self.invalid(format!("key {} is listed twice", entry.kid)));
            }
            let key = keyfile::load(&self.key_path(&entry.kid))?;
            if key.kid() != entry.kid || key.alg() != entry.alg {
                return Err(self.invalid(format!(
                    "{}.pem holds key {} ({}), not the {} key the manifest lists",
                    entry.kid,
                    key.kid(),
                    key.alg(),
                    entry.alg
                )));
            }
            match entry.state {
                KeyState::Active if active.is_some() => {
                    return Err(self.invalid("more than one key is active"));
                }
                KeyState::Active => active = Some(key),
                KeyState::Published => published.push(key),
            }
        }
        let active = active.ok_or_else(|| {
            self.invalid("no key is active: run `ratchet keys generate` (the first key becomes active) or `ratchet keys activate KID`")
        })?;
        Ok(KeySet::new(active, published))
    }

    /// The server secret kept in the directory, created if missing.
    ///
    /// # Errors
    /// It cannot be read or created, or is exposed.
    pub fn server_secret(&self) -> Result<ServerSecret, KeyError> {
        ServerSecret::load_or_create(&self.path.join(SECRET_FILE)).map(|(secret, _)| secret)
    }

    /// Adds a new key of `alg`: published, or active if it is the first key.
    ///
    /// # Errors
    /// The key cannot be generated or written.
    pub fn generate(&self, alg: KeyAlgorithm, now: &str) -> Result<KeyEntry, KeyError> {
        self.locked(|| self.generate_locked(alg, now))
    }

    fn generate_locked(&self, alg: KeyAlgorithm, now: &str) -> Result<KeyEntry, KeyError> {
        {
            let mut manifest = self.read_manifest()?;
            let (key, der) = SigningKey::generate(alg)?;
            // The file first: a crash before the manifest names it leaves an unused file, never a
            // manifest naming a missing key.
            keyfile::write_new(&self.key_path(key.kid()), &der)?;
            let state = if manifest.keys.iter().any(|k| k.state == KeyState::Active) {
                KeyState::Published
            } else {
                KeyState::Active
            };
            let entry = KeyEntry {
                kid: key.kid().to_owned(),
                alg,
                state,
                created: now.to_owned(),
            };
            manifest.keys.push(entry.clone());
            self.write_manifest(&manifest)?;
            Ok(entry)
        }
    }

    /// Makes `kid` the key that signs; the key that signed until now stays published.
    ///
    /// # Errors
    /// No such key.
    pub fn activate(&self, kid: &str) -> Result<(), KeyError> {
        self.locked(|| {
            let mut manifest = self.read_manifest()?;
            if !manifest.keys.iter().any(|k| k.kid == kid) {
                return Err(self.invalid(format!("no key {kid}")));
            }
            for entry in &mut manifest.keys {
                entry.state = if entry.kid == kid {
                    KeyState::Active
                } else {
                    KeyState::Published
                };
            }
            self.write_manifest(&manifest)
        })
    }

    /// Removes `kid` from the set and deletes its private key.
    ///
    /// # Errors
    /// No such key, or it is the active one (activate another first).
    pub fn retire(&self, kid: &str) -> Result<(), KeyError> {
        self.locked(|| {
            let mut manifest = self.read_manifest()?;
            match manifest.keys.iter().find(|k| k.kid == kid) {
                None => return Err(self.invalid(format!("no key {kid}"))),
                Some(entry) if entry.state == KeyState::Active => {
                    return Err(self.invalid(format!(
                        "key {kid} is active: activate another key first, and retire this one once the \
                         access tokens it signed have expired"
                    )));
                }
                Some(_) => {}
            }
            manifest.keys.retain(|k| k.kid != kid);
            // The manifest first: a crash before the file is gone leaves a key nobody trusts.
            self.write_manifest(&manifest)?;
            let path = self.key_path(kid);
            fs::remove_file(&path).map_err(self.io("delete", &path))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const NOW: &str = "2026-11-30T08:00:00Z";

    fn temp_dir() -> KeyDirectory {
        KeyDirectory::new(std::env::temp_dir().join(format!("ratchet-keys-{}", uuid::Uuid::new_v4())))
    }

    #[test]
    fn the_first_key_activates_later_ones_are_published_and_activation_moves() {
        let dir = temp_dir();
        assert_eq!(dir.initialize(None, NOW).unwrap(), Imported::Created);
        assert!(dir.load().is_err(), "an empty set has no active key");
        let first = dir.generate(KeyAlgorithm::EdDSA, NOW).unwrap();
        let second = dir.generate(KeyAlgorithm::ES256, NOW).unwrap();
        let third = dir.generate(KeyAlgorithm::RS256, NOW).unwrap();
        assert_eq!(first.state, KeyState::Active);
        assert_eq!((second.state, third.state), (KeyState::Published, KeyState::Published));
        assert_eq!(dir.load().unwrap().active_kid(), first.kid);

        dir.activate(&third.kid).unwrap();
        let set = dir.load().unwrap();
        assert_eq!(set.active_kid(), third.kid);
        assert_eq!(set.len(), 3);
        assert!(dir.retire(&third.kid).is_err(), "the active key cannot be retired");
        dir.retire(&first.kid).unwrap();
        assert_eq!(dir.load().unwrap().len(), 2);
        assert!(!dir.path().join(format!("{}.pem", first.kid)).exists());
        for entry in dir.list().unwrap() {
            let mode = fs::metadata(dir.path().join(format!("{}.pem", entry.kid)))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_reader_that_sees_a_bootstrapped_manifest_always_finds_its_active_key() {
        // Replicas starting together: one creates the directory while the others read it
        // without the lock. A manifest must never be visible before its first key is in it.
        for _ in 0..10 {
            let dir = temp_dir();
            let writer = {
                let dir = dir.clone();
                std::thread::spawn(move || dir.bootstrap(KeyAlgorithm::EdDSA, NOW).unwrap())
            };
            while !dir.exists() {
                std::hint::spin_loop();
            }
            let loaded = dir.load();
            assert!(writer.join().unwrap());
            assert!(loaded.is_ok(), "{:?}", loaded.err());
        }
    }

    #[test]
    fn a_group_readable_key_or_a_manifest_that_lies_is_refused() {
        let dir = temp_dir();
        dir.initialize(None, NOW).unwrap();
        let entry = dir.generate(KeyAlgorithm::EdDSA, NOW).unwrap();
        let path = dir.path().join(format!("{}.pem", entry.kid));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let error = dir.load().unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

        let other = dir.generate(KeyAlgorithm::ES256, NOW).unwrap();
        // Swap the files: each now holds the other key.
        let other_path = dir.path().join(format!("{}.pem", other.kid));
        let (a, b) = (fs::read(&path).unwrap(), fs::read(&other_path).unwrap());
        fs::write(&path, b).unwrap();
        fs::write(&other_path, a).unwrap();
        let error = dir.load().unwrap_err().to_string();
        assert!(error.contains("not the"), "{error}");
    }

    #[test]
    fn a_legacy_key_becomes_the_active_key_with_the_secret_it_implied() {
        let dir = temp_dir();
        let legacy = dir.path().with_extension("legacy.pem");
        let (key, der) = SigningKey::generate(KeyAlgorithm::EdDSA).unwrap();
        keyfile::write_new(&legacy, &der).unwrap();
        assert_eq!(
            dir.initialize(Some(&legacy), NOW).unwrap(),
            Imported::LegacyKey(key.kid().to_owned())
        );
        assert_eq!(dir.initialize(Some(&legacy), NOW).unwrap(), Imported::Nothing);
        assert_eq!(dir.load().unwrap().active_kid(), key.kid());
        let secret = dir.server_secret().unwrap();
        assert_eq!(
            secret.derive(b"seal", b"x"),
            key.derived_secret().derive(b"seal", b"x"),
            "seals made before the directory existed still open"
        );
    }
}
