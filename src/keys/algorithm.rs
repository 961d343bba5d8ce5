//! The JWS algorithms ratchet signs with ([`KeyAlgorithm`]) and their names.
//!
//! Its own module because both a key ([`super::signing_key`]) and its published JWK
//! ([`super::jwk`]) name the algorithm, and the key builds its JWK: kept beside the key, the two
//! imported each other.

use std::fmt;
use std::str::FromStr;

use jsonwebtoken::Algorithm;

/// The JWS algorithms ratchet signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum KeyAlgorithm {
    EdDSA,
    ES256,
    RS256,
}

impl KeyAlgorithm {
    pub const ALL: [Self; 3] = [Self::EdDSA, Self::ES256, Self::RS256];

    /// The `alg` header value and JWK member.
    pub fn name(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
        }
    }

    pub(super) fn jwt(self) -> Algorithm {
        match self {
            Self::EdDSA => Algorithm::EdDSA,
            Self::ES256 => Algorithm::ES256,
            Self::RS256 => Algorithm::RS256,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|alg| alg.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown algorithm {s:?}: expected EdDSA, ES256 or RS256"))
    }
}
