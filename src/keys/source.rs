//! Where a server's keys come from, in order: the key directory if it has a manifest; else a
//! legacy single key (`RATCHET_SIGNING_KEY`, or the `signing-key.pem` an earlier version created
//! in the data directory), so that upgrades need no action; else a new key directory with one
//! new EdDSA key, created on first start. While serving, [`reload`] re-reads the source on SIGHUP
//! and every interval, as the caller policy and the TLS files are.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::algorithm::KeyAlgorithm;
use super::directory::{Imported, KeyDirectory};
use super::{KeyError, KeySet, Keyring, ServerSecret, keyfile};
use crate::telemetry::metrics::{self, Reload};

/// Where the keys are configured to be.
#[derive(Debug, Clone)]
pub struct KeySource {
    pub dir: KeyDirectory,
    /// `RATCHET_SIGNING_KEY`, if set.
    pub signing_key: Option<PathBuf>,
    pub data_dir: PathBuf,
}

/// Which keys a server started with, for its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Directory,
    /// A key directory created on this start, around a new key.
    Created,
    Legacy(PathBuf),
}

impl KeySource {
    /// The key directory `dir` alone (tests).
    pub fn directory(dir: &Path) -> Self {
        Self {
            dir: KeyDirectory::new(dir),
            signing_key: None,
            data_dir: dir.to_path_buf(),
        }
    }

    /// The legacy single key, if there is one.
    pub fn legacy(&self) -> Option<PathBuf> {
        keyfile::find_legacy(self.signing_key.as_deref(), &self.data_dir)
    }

    /// The keys to start with, creating the key directory if there are none at all.
    ///
    /// # Errors
    /// The keys cannot be read, are exposed, or cannot be created.
    pub fn load_at_start(&self, now: &str) -> Result<(KeySet, Origin), KeyError> {
        if let Some(keys) = self.load_directory()? {
            return Ok((keys, Origin::Directory));
        }
        if let Some(path) = self.legacy() {
            return Ok((KeySet::single(keyfile::load(&path)?), Origin::Legacy(path)));
        }
        let created = self.dir.bootstrap(KeyAlgorithm::EdDSA, now)?;
        let keys = self.dir.load()?;
        Ok((keys, if created { Origin::Created } else { Origin::Directory }))
    }

    /// The key directory's keys, if it has a manifest (what a reload reads).
    ///
    /// # Errors
    /// The directory is there but its keys cannot be read or are exposed.
    pub fn load_directory(&self) -> Result<Option<KeySet>, KeyError> {
        if self.dir.exists() {
            self.dir.load().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The server secret when none is configured: the key directory's, else the one derived from
    /// the legacy key (which the key directory inherits when it is created around that key).
    ///
    /// # Errors
    /// The secret file cannot be read or created.
    pub fn server_secret(&self, keys: &KeySet, origin: &Origin) -> Result<ServerSecret, KeyError> {
        match origin {
            Origin::Legacy(_) => Ok(keys.active.derived_secret()),
            Origin::Directory | Origin::Created => self.dir.server_secret(),
        }
    }

    /// Creates the key directory around the legacy key if it does not exist yet: what every
    /// `ratchet keys` command does first.
    ///
    /// # Errors
    /// The directory cannot be created or the legacy key read.
    pub fn initialize(&self, now: &str) -> Result<Imported, KeyError> {
        self.dir.initialize(self.legacy().as_deref(), now)
    }
}

/// Reads the key directory again on SIGHUP and every `interval`, and switches `keys` to what it
/// holds, until `stopped`. A server still on a legacy key switches over when `ratchet keys`
/// creates the directory around it. A directory that fails to load (a half-copied secret, a key
/// file with the wrong mode) is logged and ignored: the server keeps the keys it has rather than
/// stop signing.
pub async fn reload(keys: Arc<Keyring>, source: KeySource, interval: Duration, stopped: watch::Receiver<bool>) {
    let mut trigger = crate::reload::ReloadTrigger::new("the key directory", interval, stopped);
    while trigger.next().await {
        let reading = source.clone();
        let reading = tokio::task::spawn_blocking(move || reading.load_directory()).await;
        metrics::reloaded(Reload::Keys, matches!(reading, Ok(Ok(_))));
        match reading {
            Ok(Ok(Some(set))) => {
                let change = keys.replace(set);
                if !change.is_empty() {
                    tracing::info!(added = ?change.added, removed = ?change.removed, activated = ?change.activated,
                        active = %keys.active_kid(), "key set changed");
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(error)) => {
                tracing::error!(error = %error, "cannot load the key directory; keeping the current keys")
            }
            Err(error) => tracing::error!(%error, "key reload panicked; keeping the current keys"),
        }
    }
}
