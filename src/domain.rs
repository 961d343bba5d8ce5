//! The domain's own identifiers, below both [`crate::issuer`] and [`crate::store`]: what a family
//! is called ([`FamilyId`]), what storage knows a refresh token by ([`TokenHash`]), a successor's
//! sealed secret ([`Seal`]), the error a value that breaks a rule is refused with
//! ([`FieldError`]), and who made a change ([`Actor`], for the audit trail).
//!
//! They live here, not in `issuer`, so that the store (and each backend) can speak of them
//! without importing the use cases: imports only go down (`issuer` -> `store` trait <- backends).
//! What it leaves out: how these values are made ([`crate::issuer::refresh_token`] generates,
//! hashes and seals tokens) and the records a store keeps ([`crate::store`]).

use std::fmt;

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
