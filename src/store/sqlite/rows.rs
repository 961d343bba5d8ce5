//! Rows as the statements in [`super::sql`] return them, and their conversion to domain records:
//! times from integer microseconds, ids from text, lists and claims from JSON.

use serde_json::{Map, Value};
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::fmt::Hyphenated;

use crate::domain::{FamilyId, Seal, TokenHash};
use crate::store::{AuditEvent, FamilyRecord, RefreshTokenRecord, SessionRecord, StoreError, Successor};

/// `at` as stored: whole microseconds since the epoch (PostgreSQL's precision), rounded down.
pub(super) fn micros(at: OffsetDateTime) -> i64 {
    // Cannot fail: `time` stops at year 9999, far inside i64 microseconds (year 294,000).
    i64::try_from(at.unix_timestamp_nanos().div_euclid(1000)).unwrap_or(i64::MAX)
}

/// A stored time. Only a value written by something else can be out of range.
pub(super) fn instant(micros: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .map_err(|e| StoreError::Internal(format!("a stored time is out of range: {e}").into()))
}

fn optional_instant(micros: Option<i64>) -> Result<Option<OffsetDateTime>, StoreError> {
    micros.map(instant).transpose()
}

#[derive(sqlx::FromRow)]
pub(super) struct FamilyRow {
    pub id: Hyphenated,
    subject: String,
    client_id: String,
    scopes: Json<Vec<String>>,
    audiences: Json<Vec<String>>,
    claims: Json<Map<String, Value>>,
    created_at: i64,
    last_rotated_at: i64,
    refresh_expires_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

impl TryFrom<FamilyRow> for FamilyRecord {
    type Error = StoreError;

    fn try_from(row: FamilyRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: FamilyId::from_uuid(row.id.into_uuid()),
            subject: row.subject,
            client_id: row.client_id,
            scopes: row.scopes.0,
            audiences: row.audiences.0,
            claims: row.claims.0,
            created_at: instant(row.created_at)?,
            last_rotated_at: instant(row.last_rotated_at)?,
            refresh_expires_at: instant(row.refresh_expires_at)?,
            expires_at: instant(row.expires_at)?,
            revoked_at: optional_instant(row.revoked_at)?,
        })
    }
}

/// The presented token, its family and its successor (`PRESENTED_TOKEN`).
#[derive(sqlx::FromRow)]
pub(super) struct TokenRow {
    #[sqlx(flatten)]
    pub family: FamilyRow,
    /// When the family's Rotate bucket is full again (GCRA; null: full).
    pub rotate_tat: Option<i64>,
    token_created_at: i64,
    pub token_expires_at: i64,
    pub spent_at: Option<i64>,
    successor_hash: Option<Vec<u8>>,
    pub successor_seal: Option<Vec<u8>>,
    pub successor_expires_at: Option<i64>,
    pub successor_spent: Option<bool>,
}

fn to_array(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

impl TokenRow {
    /// Whether the token was spent into `successor`.
    pub fn spent_into(&self, successor: &TokenHash) -> bool {
        self.successor_hash.as_deref() == Some(&successor.0[..])
    }

    pub fn into_record(self) -> Result<RefreshTokenRecord, StoreError> {
        let successor = match (
            self.successor_hash.as_deref().and_then(to_array),
            self.successor_expires_at,
        ) {
            (Some(hash), Some(expires_at)) => Some(Successor {
                hash: TokenHash(hash),
                seal: self.successor_seal.as_deref().and_then(to_array).map(Seal),
                expires_at: instant(expires_at)?,
                spent: self.successor_spent.unwrap_or(false),
            }),
            _ => None,
        };
        Ok(RefreshTokenRecord {
            family: self.family.try_into()?,
            created_at: instant(self.token_created_at)?,
            expires_at: instant(self.token_expires_at)?,
            spent_at: optional_instant(self.spent_at)?,
            successor,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct SessionRow {
    id: Hyphenated,
    client_id: String,
    scopes: Json<Vec<String>>,
    created_at: i64,
    last_rotated_at: i64,
    expires_at: i64,
    refresh_expires_at: i64,
}

impl TryFrom<SessionRow> for SessionRecord {
    type Error = StoreError;

    fn try_from(row: SessionRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: FamilyId::from_uuid(row.id.into_uuid()),
            client_id: row.client_id,
            scopes: row.scopes.0,
            created_at: instant(row.created_at)?,
            last_rotated_at: instant(row.last_rotated_at)?,
            expires_at: instant(row.expires_at)?,
            refresh_expires_at: instant(row.refresh_expires_at)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_keep_microseconds_and_order() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_800_000_000_123_456_789).unwrap();
        assert_eq!(micros(at), 1_800_000_000_123_456);
        assert_eq!(
            instant(micros(at)).unwrap(),
            OffsetDateTime::from_unix_timestamp_nanos(1_800_000_000_123_456_000).unwrap()
        );
        let before = OffsetDateTime::from_unix_timestamp(-1).unwrap();
        assert!(micros(before) < micros(OffsetDateTime::UNIX_EPOCH));
        assert!(instant(i64::MAX).is_err());
    }
}

/// An audit event as `sql::EVENT_COLUMNS` reads it.
#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    id: i64,
    at: i64,
    kind: String,
    family_id: Hyphenated,
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
            at: instant(row.at)?,
            // The schema's check admits only known kinds.
            kind: row
                .kind
                .parse()
                .map_err(|_| StoreError::Internal(format!("unknown audit event kind {:?}", row.kind).into()))?,
            family_id: FamilyId::from_uuid(row.family_id.into_uuid()),
            subject: row.subject,
            client_id: row.client_id,
            caller: row.caller,
            request_id: row.request_id,
            detail: row.detail,
        })
    }
}
