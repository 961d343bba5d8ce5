//! The signing keys: where they are (the key directory, a legacy single key, the data directory),
//! how often they are re-read, the server secret's file, and the verified-token cache's budget.
//! The `keys` module knows nothing of flags: this is where flags become a [`KeySource`].

use std::path::PathBuf;
use std::time::Duration;

use super::bounds::{KEYS_RELOAD_INTERVAL, VERIFIED_CACHE_BYTES};
use super::problems::Problems;
use crate::cli::{KeySourceArgs, ServeArgs};
use crate::keys::directory::KeyDirectory;
use crate::keys::source::KeySource;

/// Where `--keys-dir`, `--signing-key` and `--data-dir` say the keys are (`serve` and every
/// `ratchet keys` command). The key directory defaults to `keys` in the data directory.
pub fn source(args: &KeySourceArgs) -> KeySource {
    KeySource {
        dir: KeyDirectory::new(args.keys_dir.clone().unwrap_or_else(|| args.data_dir.join("keys"))),
        signing_key: args.signing_key.clone(),
        data_dir: args.data_dir.clone(),
    }
}

/// What `serve` needs of the keys besides the keys themselves.
pub(super) struct KeySettings {
    pub(super) source: KeySource,
    pub(super) reload_interval: Duration,
    pub(super) seal_key: Option<PathBuf>,
    pub(super) verified_cache_bytes: usize,
}

pub(super) fn collect(args: &ServeArgs, problems: &mut Problems) -> KeySettings {
    KeySettings {
        source: source(&args.keys),
        reload_interval: problems.duration(
            "keys-reload-interval",
            &args.keys_reload_interval,
            &KEYS_RELOAD_INTERVAL,
        ),
        seal_key: args.seal_key.clone(),
        verified_cache_bytes: problems.count("verified-cache-bytes", args.verified_cache_bytes, &VERIFIED_CACHE_BYTES),
    }
}
