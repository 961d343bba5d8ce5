//! The domain's own identifiers, below both [`crate::issuer`] and [`crate::store`]: what a family
//! is called ([`FamilyId`]), what storage knows a refresh token by ([`TokenHash`]), a successor's
//! sealed secret ([`Seal`]), the error a value that breaks a rule is refused with
//! ([`FieldError`]), who made a change ([`Actor`], for the audit trail), and how fast a family
//! may rotate ([`RotateLimit`], which the store enforces).
//!
//! They live here, not in `issuer`, so that the store (and each backend) can speak of them
//! without importing the use cases: imports only go down (`issuer` -> `store` trait <- backends).
//! What it leaves out: how these values are made ([`crate::issuer::refresh_token`] generates,
//! hashes and seals tokens) and the records a store keeps ([`crate::store`]).

use std::fmt;
use std::num::NonZeroU32;

use uuid::Uuid;

/// A request field that breaks a rule. Shown to the caller, so it never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// A family (login session) id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FamilyId(Uuid);

impl FamilyId {
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    /// # Errors
    /// `value` is not a UUID.
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        Uuid::try_parse(value)
            .map(Self)
            .map_err(|_| FieldError::new(field, "must be a UUID"))
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for FamilyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// SHA-256 of a refresh token's secret: what storage knows a token by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

/// A successor's secret sealed under its parent's secret and the server secret (see
/// [`crate::issuer::refresh_token`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Seal(pub [u8; 32]);

/// Never print a hash: it finds the token's row.
impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

impl fmt::Debug for Seal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seal(..)")
    }
}

/// Who made a change, as the audit trail records it: the caller policy's name for the caller
/// (`None` in open mode, where nobody is asked who they are) and the call's request id. Built by
/// the gRPC handlers and passed down to the store's writes, which record it with their change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    pub caller: Option<String>,
    pub request_id: Option<String>,
}

impl Actor {
    /// No call behind the change (tests, tools).
    pub const NOBODY: Self = Self {
        caller: None,
        request_id: None,
    };
}

/// The per-family Rotate limit: a token bucket of `burst` rotations, refilled at `per_second`.
/// The store keeps each family's bucket on the family's row and checks it in the spend itself
/// (GCRA: the row holds when the bucket will be full again), so every replica on one database
/// enforces one limit; each server also keeps a bucket per presented token in memory, which a
/// replay loop of one token runs out of before it costs the database anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotateLimit {
    /// Sustained rotations a second, per family and per presented token.
    pub per_second: NonZeroU32,
    /// Rotations allowed at once; must stay above 64 (see `policy::limits`).
    pub burst: NonZeroU32,
}

impl Default for RotateLimit {
    fn default() -> Self {
        Self {
            per_second: NonZeroU32::MIN,
            burst: NonZeroU32::new(100).unwrap_or(NonZeroU32::MAX),
        }
    }
}

impl RotateLimit {
    /// What one rotation adds to a family's schedule: a second over the rate, in whole
    /// microseconds (what both stores keep time in), at least one.
    pub fn interval_micros(self) -> i64 {
        (1_000_000 / i64::from(self.per_second.get())).max(1)
    }

    /// How far past now a family's schedule may run and still take a rotation, in microseconds:
    /// `burst - 1` intervals, so that a family at rest takes `burst` at once.
    pub fn tolerance_micros(self) -> i64 {
        self.interval_micros() * i64::from(self.burst.get() - 1)
    }
}
