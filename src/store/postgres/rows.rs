//! Rows as the statements in [`super::sql`] return them, and their conversion to domain records.

use serde_json::{Map, Value};
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{FamilyId, Seal, TokenHash};
use crate::store::{AuditEvent, FamilyRecord, RefreshTokenRecord, SessionRecord, StoreError, Successor};

#[derive(sqlx::FromRow)]
pub(super) struct FamilyRow {
    id: Uuid,
    subject: String,
    client_id: String,
    scopes: Vec<String>,
    audiences: Vec<String>,
    claims: Json<Map<String, Value>>,
    created_at: OffsetDateTime,
    last_rotated_at: OffsetDateTime,
    refresh_expires_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    revoked_at: Option<OffsetDateTime>,
}

impl From<FamilyRow> for FamilyRecord {
    fn from(row: FamilyRow) -> Self {
        Self {
            id: FamilyId::from_uuid(row.id),
            subject: row.subject,
            client_id: row.client_id,
            scopes: row.scopes,
            audiences: row.audiences,
            claims: row.claims.0,
            created_at: row.created_at,
            last_rotated_at: row.last_rotated_at,
            refresh_expires_at: row.refresh_expires_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
        }
    }
}

/// What `SPEND_LIVE` returns when it spent the token: the family as the rotation left it.
#[derive(sqlx::FromRow)]
pub(super) struct SpentRow {
    #[sqlx(flatten)]
    pub family: FamilyRow,
    pub new_expires_at: OffsetDateTime,
}

/// The presented token, its family and its successor (`PRESENTED_TOKEN`, and `SPEND`'s answer).
#[derive(sqlx::FromRow)]
pub(super) struct TokenRow {
    #[sqlx(flatten)]
    pub family: FamilyRow,
    token_created_at: OffsetDateTime,
    token_expires_at: OffsetDateTime,
    spent_at: Option<OffsetDateTime>,
    successor_hash: Option<Vec<u8>>,
    successor_seal: Option<Vec<u8>>,
    pub successor_expires_at: Option<OffsetDateTime>,
    successor_spent: Option<bool>,
    /// Set only by the spend statement, when it spent the token.
    #[sqlx(default)]
    pub new_expires_at: Option<OffsetDateTime>,
    /// Set only by the spend statement: it revoked the family for reuse.
    #[sqlx(default)]
    pub revoked_for_reuse: Option<bool>,
    /// Set only by the spend statement, when the family's Rotate bucket is full: when it will
    /// have room again.
    #[sqlx(default)]
    pub limited_until: Option<OffsetDateTime>,
}

fn to_array(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

impl TokenRow {
    /// Whether the token is unspent.
    pub fn is_unspent(&self) -> bool {
        self.spent_at.is_none()
    }

    /// Whether the token was spent into `successor`.
    pub fn spent_into(&self, successor: &TokenHash) -> bool {
        self.successor_hash.as_deref() == Some(&successor.0[..])
    }

    pub fn into_record(self) -> RefreshTokenRecord {
        let successor = match (
            self.successor_hash.as_deref().and_then(to_array),
            self.successor_expires_at,
        ) {
            (Some(hash), Some(expires_at)) => Some(Successor {
                hash: TokenHash(hash),
                seal: self.successor_seal.as_deref().and_then(to_array).map(Seal),
                expires_at,
                spent: self.successor_spent.unwrap_or(false),
            }),
            _ => None,
        };
        RefreshTokenRecord {
            family: self.family.into(),
            created_at: self.token_created_at,
            expires_at: self.token_expires_at,
            spent_at: self.spent_at,
            successor,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct SessionRow {
    id: Uuid,
    client_id: String,
    scopes: Vec<String>,
    created_at: OffsetDateTime,
    last_rotated_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    refresh_expires_at: OffsetDateTime,
}

impl From<SessionRow> for SessionRecord {
    fn from(row: SessionRow) -> Self {
        Self {
            id: FamilyId::from_uuid(row.id),
            client_id: row.client_id,
            scopes: row.scopes,
            created_at: row.created_at,
            last_rotated_at: row.last_rotated_at,
            expires_at: row.expires_at,
            refresh_expires_at: row.refresh_expires_at,
        }
    }
}

/// An audit event as `sql::EVENT_COLUMNS` reads it.
#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    id: i64,
    at: OffsetDateTime,
    kind: String,
    family_id: Uuid,
    subject: String,
    client_id: String,
    caller: Option<String>,
    request_id: Option<String>,
    detail: Option<String>,
}

impl TryFrom<EventRow> for AuditEvent {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: row.id,
            at: row.at,
            // The schema's check admits only known kinds.
            kind: row
                .kind
                .parse()
                .map_err(|_| StoreError::Internal(format!("unknown audit event kind {:?}", row.kind).into()))?,
            family_id: FamilyId::from_uuid(row.family_id),
            subject: row.subject,
            client_id: row.client_id,
            caller: row.caller,
            request_id: row.request_id,
            detail: row.detail,
        })
    }
}
