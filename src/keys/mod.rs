//! Signing keys: minting access tokens ([`mint`]), verifying them ([`verify`]), the keys
//! themselves ([`signing_key`]; [`algorithm`]: EdDSA, ES256, RS256), their public JWKs ([`jwk`]), key files
//! ([`keyfile`]), the key directory with each key's state ([`directory`]), and the server secret
//! ([`secret`]).
//!
//! Everything outside this module sees [`Keyring`]: "sign these claims", "verify this token",
//! "the JWK Set", and "switch to this key set" — the last without stopping the others: the
//! current set sits behind an atomic pointer, so a key rotation never blocks or drops a request.

pub mod algorithm;
pub mod directory;
pub mod jwk;
pub mod keyfile;
pub mod mint;
pub mod secret;
pub mod signing_key;
pub mod source;
pub mod verify;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use algorithm::KeyAlgorithm;
pub use jwk::Jwks;
pub use mint::AccessClaims;
pub use secret::ServerSecret;
pub use signing_key::SigningKey;
pub use verify::{VerifiedToken, VerifyError};

/// Failures loading, creating or using keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is not a PEM-encoded Ed25519, P-256 or RSA (2048 bits or more) private key: {reason}")]
    Format { path: std::path::PathBuf, reason: String },
    #[error("key directory {path}: {reason}")]
    Directory { path: std::path::PathBuf, reason: String },
    #[error("secret file {path} is not usable: {reason}")]
    SecretFormat { path: std::path::PathBuf, reason: String },
    #[error(
        "key file {path} may be read by group or others (mode {mode:o}): run `chmod 600 {path}` \
         (or mount it with mode 0400/0600)"
    )]
    Exposed { path: std::path::PathBuf, mode: u32 },
    #[error("cannot generate a key: the system random generator failed")]
    Random,
    #[error("signing failed: {0}")]
    Sign(&'static str),
}

/// The keys a server holds: one active key that signs, and published keys that only verify.
#[derive(Debug)]
pub struct KeySet {
    active: Arc<SigningKey>,
    /// Every key by `kid`, the active one included.
    by_kid: HashMap<String, Arc<SigningKey>>,
}

impl KeySet {
    pub fn new(active: SigningKey, published: impl IntoIterator<Item = SigningKey>) -> Self {
        let active = Arc::new(active);
        let mut by_kid = HashMap::from([(active.kid().to_owned(), active.clone())]);
        for key in published {
            by_kid.insert(key.kid().to_owned(), Arc::new(key));
        }
        Self { active, by_kid }
    }

    /// A set of one key, which signs.
    pub fn single(key: SigningKey) -> Self {
        Self::new(key, [])
    }

    pub fn active_kid(&self) -> &str {
        self.active.kid()
    }

    /// Keys in the set.
    pub fn len(&self) -> usize {
        self.by_kid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }

    /// Every key's `kid`, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.by_kid.keys().cloned().collect();
        kids.sort();
        kids
    }

    fn jwks(&self) -> Jwks {
        // Sorted by kid so that the same set always serves the same bytes (and ETag).
        let mut keys: Vec<&Arc<SigningKey>> = self.by_kid.values().collect();
        keys.sort_by(|a, b| a.kid().cmp(b.kid()));
        Jwks::new(keys.into_iter().map(|key| &key.jwk))
    }
}

/// What [`Keyring::replace`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// The new active key, if it changed.
    pub activated: Option<String>,
}

impl KeyChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.activated.is_none()
    }
}

/// Default byte budget of the verified-token cache: ~27,000 typical tokens (~1.2 KiB an entry),
/// or ~2,800 tokens carrying 8 KiB of extra claims (~11.5 KiB an entry).
pub const DEFAULT_VERIFIED_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Bytes an entry costs beyond its strings: the struct in its `Arc`, the key's `String`, the
/// cache's slot and hash-table bucket, and allocator headers for its ~10 allocations.
const ENTRY_OVERHEAD: usize = size_of::<VerifiedToken>() + 2 * size_of::<usize>() + size_of::<String>() + 64 + 10 * 16;

/// What one cache entry costs: a weight in bytes, so that the budget bounds memory whatever the
/// tokens look like, rather than a count that long tokens multiply.
fn entry_bytes(token: &str, verified: &VerifiedToken) -> usize {
    ENTRY_OVERHEAD + token.len() + verified.heap_bytes()
}

#[derive(Debug, Clone, Copy)]
struct EntryBytes;

impl quick_cache::Weighter<String, Arc<VerifiedToken>> for EntryBytes {
    fn weight(&self, token: &String, verified: &Arc<VerifiedToken>) -> u64 {
        u64::try_from(entry_bytes(token, verified)).unwrap_or(u64::MAX)
    }
}

type VerifiedCache = quick_cache::sync::Cache<String, Arc<VerifiedToken>, EntryBytes>;

/// One key set with what is derived from it; replaced whole.
struct Generation {
    keys: KeySet,
    jwks: Arc<Jwks>,
    /// Access tokens whose signature was checked, kept so that repeated introspection of the same
    /// token (sidecars ask per request) costs a lookup instead of a signature verification, the
    /// most expensive step of Introspect. Exact token text -> what it says. Sound because a
    /// token's signature check depends only on its text and the key set: a generation that
    /// removes a key starts an empty cache, one that only adds or activates keys shares it.
    /// `None` when the budget is zero.
    verified: Arc<Option<VerifiedCache>>,
}

/// The keys this server signs with and accepts.
pub struct Keyring {
    current: ArcSwap<Generation>,
    cache_bytes: usize,
    /// Entries heavier than this skip the cache: a few huge tokens must not evict thousands of
    /// ordinary ones.
    verified_entry_limit: usize,
}

fn verified_cache(bytes: usize) -> Arc<Option<VerifiedCache>> {
    // A guess at the entry count, for sizing the cache's tables: typical tokens weigh ~1 KiB.
    let estimated_entries = bytes / 1024;
    Arc::new((bytes > 0).then(|| {
        let budget = u64::try_from(bytes).unwrap_or(u64::MAX);
        VerifiedCache::with_weighter(estimated_entries.max(1), budget, EntryBytes)
    }))
}

impl Keyring {
    /// A keyring with `keys`, whose verified-token cache holds at most `verified_cache_bytes`
    /// (approximately: see `entry_bytes`); zero disables the cache.
    pub fn new(keys: KeySet, verified_cache_bytes: usize) -> Self {
        let generation = Generation {
            jwks: Arc::new(keys.jwks()),
            keys,
            verified: verified_cache(verified_cache_bytes),
        };
        Self {
            current: ArcSwap::from_pointee(generation),
            cache_bytes: verified_cache_bytes,
            verified_entry_limit: verified_cache_bytes / 64,
        }
    }

    /// A keyring with a fresh random EdDSA key and the default cache budget; for tests and
    /// benchmarks.
    ///
    /// # Errors
    /// The system random generator failed.
    pub fn generate() -> Result<Self, KeyError> {
        SigningKey::generate(KeyAlgorithm::EdDSA)
            .map(|(key, _)| Self::new(KeySet::single(key), DEFAULT_VERIFIED_CACHE_BYTES))
    }

    /// Switches to `keys`: calls in flight finish with the set they started with, later calls
    /// use the new one. Tokens of removed keys stop verifying at once, cached or not.
    pub fn replace(&self, keys: KeySet) -> KeyChange {
        let old = self.current.load();
        let change = KeyChange {
            added: keys
                .kids()
                .into_iter()
                .filter(|kid| !old.keys.by_kid.contains_key(kid))
                .collect(),
            removed: old
                .keys
                .kids()
                .into_iter()
                .filter(|kid| !keys.by_kid.contains_key(kid))
                .collect(),
            activated: (keys.active_kid() != old.keys.active_kid()).then(|| keys.active_kid().to_owned()),
        };
        if change.is_empty() {
            return change;
        }
        let verified = if change.removed.is_empty() {
            old.verified.clone()
        } else {
            verified_cache(self.cache_bytes)
        };
        self.current.store(Arc::new(Generation {
            jwks: Arc::new(keys.jwks()),
            keys,
            verified,
        }));
        change
    }

    /// What the verified-token cache holds, in bytes (estimated as its budget counts them).
    pub fn verified_cache_bytes(&self) -> u64 {
        Option::as_ref(&self.current.load().verified).map_or(0, quick_cache::sync::Cache::weight)
    }

    pub fn active_kid(&self) -> String {
        self.current.load().keys.active_kid().to_owned()
    }

    /// Every key's `kid`, sorted.
    pub fn kids(&self) -> Vec<String> {
        self.current.load().keys.kids()
    }

    /// The JWK Set of every key: what verifiers fetch.
    pub fn jwks(&self) -> Arc<Jwks> {
        self.current.load().jwks.clone()
    }
}
