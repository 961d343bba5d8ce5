//! The final store state: every family and every refresh token in the database when the run is
//! over, as one JSON document.
//!
//! ```json
//! {"families": [
//!   {"id": "0b9a1f5c-7d2e-4c1a-9a57-3f0e1d2c4b6a", "subject": "s1", "client_id": "chaos",
//!    "revoked": "reuse",
//!    "tokens": [
//!      {"id": "9f86…", "parent": null,    "spent": true,  "successor": "6030…"},
//!      {"id": "6030…", "parent": "9f86…", "spent": false, "successor": null}]}]}
//! ```
//!
//! `revoked` is null for a live family, else `families.revoked_reason`: `revoke`, `reuse` or
//! `evicted`. Token ids are the lowercase hex of `refresh_tokens.hash`, as in the history. Token
//! order does not matter.
//!
//! Dump it **before anything cleans up** (the cleanup deletes ended families and, before that,
//! their spent tokens oldest first): the checker requires every family an acknowledged Issue
//! created, and every token an acknowledged Rotate created, to be present. Run the chaos tests
//! with `ratchet gc` off and lifetimes longer than the run; expiry is not modelled either (a
//! `TOKEN_EXPIRED` answer is taken as a refusal that did nothing, and nothing is asked of it).
//!
//! From PostgreSQL, in one statement (`psql -Atc`, or `query_scalar::<_, serde_json::Value>`):
//!
//! ```sql
//! select json_build_object('families', coalesce(json_agg(json_build_object(
//!     'id', f.id, 'subject', f.subject, 'client_id', f.client_id, 'revoked', f.revoked_reason,
//!     'tokens', (select coalesce(json_agg(json_build_object(
//!         'id', encode(t.hash, 'hex'), 'parent', encode(t.parent_hash, 'hex'),
//!         'spent', t.spent_at is not null, 'successor', encode(t.successor_hash, 'hex'))), '[]')
//!       from refresh_tokens t where t.family_id = f.id))), '[]'))
//! from families f
//! ```
//!
//! From SQLite the same shape comes from `json_object`/`json_group_array` with `hex(...)`,
//! lowercased (`lower(hex(hash))`, which is null for a null `parent_hash`).

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::history::{FamilyId, TokenId};

/// Every family and refresh token in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinalState {
    pub families: Vec<FamilyState>,
}

/// One family as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilyState {
    pub id: FamilyId,
    /// Needed to tell which Issue with an unknown outcome created a family that no Issue
    /// acknowledged, which Revoke by subject reached it, and which Issue evicted it.
    pub subject: String,
    pub client_id: String,
    /// `None`: live.
    #[serde(default)]
    pub revoked: Option<RevokeReason>,
    pub tokens: Vec<TokenState>,
}

/// Why a family was revoked (`families.revoked_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// An explicit Revoke (by family, token or subject).
    Revoke,
    /// A spent refresh token was presented again.
    Reuse,
    /// Issue went over the sessions cap for the subject and client and revoked the oldest.
    Evicted,
}

/// One refresh token as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenState {
    pub id: TokenId,
    /// `refresh_tokens.parent_hash`: the token this one was rotated from; `None` for the first.
    #[serde(default)]
    pub parent: Option<TokenId>,
    pub spent: bool,
    /// `refresh_tokens.successor_hash`: what it was rotated into (present exactly when spent).
    #[serde(default)]
    pub successor: Option<TokenId>,
}

/// Why a final state could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the final store state: {0}")]
pub struct ReadStateError(#[from] serde_json::Error);

impl FinalState {
    /// Reads a final state document.
    ///
    /// # Errors
    /// When `input` cannot be read or is not a [`FinalState`].
    pub fn read(input: impl Read) -> Result<Self, ReadStateError> {
        Ok(serde_json::from_reader(input)?)
    }

    /// Writes it as one JSON document.
    ///
    /// # Errors
    /// Whatever writing to `output` returns.
    pub fn write(&self, mut output: impl Write) -> io::Result<()> {
        serde_json::to_writer(&mut output, self)?;
        output.write_all(b"\n")
    }
}

impl TokenState {
    /// The token as a line of a report.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|error| format!("<token {}: {error}>", self.id))
    }
}
