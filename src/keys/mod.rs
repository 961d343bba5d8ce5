//! Signing keys: minting access tokens ([`mint`]), verifying them ([`verify`]) and key files
//! ([`keyfile`]).
//!
//! Everything outside this module sees only [`Keyring`]: "sign these claims" and "verify this
//! token". Key rotation, JWKS publication and more algorithms plug in here without touching the
//! use cases. Today a keyring holds one Ed25519 key, which both signs and verifies.

pub mod keyfile;
pub mod mint;
pub mod secret;
pub mod verify;

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;

pub use mint::AccessClaims;
pub use secret::ServerSecret;
pub use verify::{VerifiedToken, VerifyError};

/// Failures loading, creating or using keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot {action} key file {path}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is not a PEM-encoded PKCS#8 Ed25519 private key: {reason}")]
    Format { path: std::path::PathBuf, reason: String },
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

/// One Ed25519 key pair with its key id.
pub struct SigningKey {
    kid: String,
    /// Parsed once: parsing PKCS#8 validates the key with a scalar multiplication, which cost as
    /// much as the signature itself when jsonwebtoken's `encode` did it for every token.
    pair: Ed25519KeyPair,
    /// The JOSE header, already base64url-encoded: it is the same for every token of this key.
    encoded_header: String,
    decoding: DecodingKey,
    /// The server secret derived from this key's private material, for deployments that do not
    /// configure one of their own (see [`secret`]).
    derived_secret: ServerSecret,
}

impl SigningKey {
    /// A key from PKCS#8 DER (v1 as written by `openssl genpkey -algorithm ed25519`, or v2).
    ///
    /// # Errors
    /// The bytes are not an Ed25519 PKCS#8 private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, String> {
        let pair = Ed25519KeyPair::from_pkcs8(der).map_err(|e| e.to_string())?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = thumbprint(&public);
        let encoded_header = mint::encoded_header(&kid).map_err(|e| e.to_string())?;
        Ok(Self {
            kid,
            pair,
            encoded_header,
            decoding: DecodingKey::from_ed_der(&public),
            derived_secret: ServerSecret::from_key_material(der),
        })
    }

    /// A new random key, in memory only (tests, and the first start without a key file).
    ///
    /// # Errors
    /// The system random generator failed.
    pub fn generate() -> Result<(Self, Vec<u8>), KeyError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let der = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Random)?;
        let der = der.as_ref().to_vec();
        let key = Self::from_pkcs8_der(&der).map_err(|_| KeyError::Random)?;
        Ok((key, der))
    }

    /// The RFC 7638 JWK thumbprint, used as `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A server secret derived from this key's private material: as secret as the key, and the
    /// same on every replica that shares it.
    pub fn derived_secret(&self) -> ServerSecret {
        self.derived_secret.clone()
    }
}

/// RFC 7638 thumbprint of an Ed25519 public key (RFC 8037 OKP JWK): SHA-256 over the required
/// members in lexicographic order, base64url. Stable across restarts and replicas sharing a key.
fn thumbprint(public: &[u8]) -> String {
    let jwk = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public)
    );
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, jwk.as_bytes()))
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

/// The keys this server signs with and accepts.
pub struct Keyring {
    active: SigningKey,
    /// Verification keys by `kid`; the active key is always among them.
    verifying: HashMap<String, DecodingKey>,
    /// Access tokens whose signature was checked, kept so that repeated introspection of the same
    /// token (sidecars ask per request) costs a lookup instead of an Ed25519 verification, the
    /// most expensive step of Introspect. Exact token text -> what it says. Sound because a
    /// token's signature check depends only on its text and the key set; removing a key (key
    /// rotation) must clear it. `None` when the budget is zero.
    verified: Option<VerifiedCache>,
    /// Entries heavier than this skip the cache: a few huge tokens must not evict thousands of
    /// ordinary ones.
    verified_entry_limit: usize,
}

impl Keyring {
    /// A keyring signing with `active`, whose verified-token cache holds at most
    /// `verified_cache_bytes` (approximately: see [`entry_bytes`]); zero disables the cache.
    pub fn new(active: SigningKey, verified_cache_bytes: usize) -> Self {
        let verifying = HashMap::from([(active.kid.clone(), active.decoding.clone())]);
        // A guess at the entry count, for sizing the cache's tables: typical tokens weigh ~1 KiB.
        let estimated_entries = verified_cache_bytes / 1024;
        let verified = (verified_cache_bytes > 0).then(|| {
            let budget = u64::try_from(verified_cache_bytes).unwrap_or(u64::MAX);
            VerifiedCache::with_weighter(estimated_entries.max(1), budget, EntryBytes)
        });
        Self {
            active,
            verifying,
            verified,
            verified_entry_limit: verified_cache_bytes / 64,
        }
    }

    /// A keyring with a fresh random key and the default cache budget; for tests and benchmarks.
    ///
    /// # Errors
    /// The system random generator failed.
    pub fn generate() -> Result<Self, KeyError> {
        SigningKey::generate().map(|(key, _)| Self::new(key, DEFAULT_VERIFIED_CACHE_BYTES))
    }

    pub fn active_kid(&self) -> &str {
        self.active.kid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_rfc_8037_appendix_a3() {
        // RFC 8037 A.3: the thumbprint of the example Ed25519 public key.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        assert_eq!(thumbprint(&x), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }
}
