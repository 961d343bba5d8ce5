//! Why a token was refused, why the key set could not be fetched, and why a configuration is
//! unusable: one enum each.
//!
//! [`VerifyError`] is deliberately as fine-grained as the checks, so that a service can log and
//! count each cause; on the wire (see [`crate::layer`]) the caller sees only ratchet's own reasons,
//! `TOKEN_EXPIRED` for an expired token and `TOKEN_INVALID` for everything else, like the issuer.

use std::time::Duration;

use jsonwebtoken::Algorithm;

/// Why a token is not a valid ratchet access token for this service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// No `authorization: Bearer …` metadata (only the tower layer answers this).
    #[error("missing bearer token")]
    MissingToken,
    /// Not a compact JWS, bad base64 or JSON, or a required claim missing or mistyped.
    #[error("malformed token")]
    Malformed,
    /// `typ` is not `at+jwt` (RFC 9068 §4): an ID token or another JWT of the same issuer.
    #[error("not an access token (typ)")]
    WrongType,
    /// `alg` is `none`, symmetric, not allowed by this verifier, or not the algorithm the key was
    /// published for (RFC 8725 §3.1).
    #[error("algorithm not allowed")]
    DisallowedAlgorithm,
    /// No `kid`, or a `kid` that the issuer's key set does not hold (unknown, or retired).
    #[error("signed by an unknown key")]
    UnknownKey,
    /// The signature does not verify with the key named by `kid`.
    #[error("bad signature")]
    BadSignature,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// None of `aud` is an audience this verifier accepts.
    #[error("wrong audience")]
    WrongAudience,
    /// `exp` is past, beyond the leeway.
    #[error("token expired")]
    Expired,
    /// `nbf` or `iat` is in the future, beyond the leeway.
    #[error("token not yet valid")]
    NotYetValid,
    /// The issuer's key set was never fetched, is older than the staleness bound, or the fetch
    /// that should have found this token's key failed: the token may be fine, we cannot tell.
    #[error("signing keys unavailable")]
    KeysUnavailable,
}

impl VerifyError {
    /// A stable machine-readable name, for logs and metrics (`"unknown_key"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::Malformed => "malformed",
            Self::WrongType => "wrong_type",
            Self::DisallowedAlgorithm => "disallowed_algorithm",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::KeysUnavailable => "keys_unavailable",
        }
    }

    /// ratchet's `google.rpc.ErrorInfo` reason for this failure, or `None` when the failure is
    /// ours and not the token's ([`KeysUnavailable`](Self::KeysUnavailable): gRPC `UNAVAILABLE`).
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Self::KeysUnavailable => None,
            Self::Expired => Some(crate::reason::TOKEN_EXPIRED),
            _ => Some(crate::reason::TOKEN_INVALID),
        }
    }
}

/// Why fetching the key set (or the discovery document) failed. Past the first successful fetch
/// these are logged and the last good key set is kept, within the staleness bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("request failed: {0}")]
    Transport(String),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    #[error("answer is not a usable document: {0}")]
    Invalid(String),
}

/// A configuration that cannot work; returned by [`Builder::build`](crate::Builder::build) and
/// [`Builder::discover`](crate::Builder::discover).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{what} is not an http(s) URL: {url}")]
    Url { what: &'static str, url: String },
    #[error("the expected issuer is empty")]
    EmptyIssuer,
    #[error("an audience is empty")]
    EmptyAudience,
    #[error("no algorithm is allowed")]
    NoAlgorithm,
    #[error("{0:?} is symmetric: a public key set can never verify it safely")]
    SymmetricAlgorithm(Algorithm),
    #[error("{what} must be between {min:?} and {max:?}, not {value:?}")]
    OutOfRange {
        what: &'static str,
        value: Duration,
        min: Duration,
        max: Duration,
    },
    #[error("the minimum refresh interval is above the maximum")]
    RefreshBounds,
    #[error("the response size limit must be at least 1 KiB")]
    ResponseLimit,
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("must be called within a tokio runtime (the key set is refreshed by a background task)")]
    NoRuntime,
    #[error("discovery failed: {0}")]
    Discovery(#[source] FetchError),
    #[error("discovery document names issuer {found:?}, expected {expected:?}")]
    DiscoveryIssuer { expected: String, found: String },
}
