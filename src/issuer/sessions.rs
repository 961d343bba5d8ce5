//! ListSessions, in pages (AIP-158): a subject's live families, newest first.
//!
//! A page token is the position of the last session of the page before (its `created_at` and
//! id, so that paging is a keyset walk and stays exact while sessions come and go), with a MAC
//! from the server secret over that position *and the subject*: a token ratchet did not hand out,
//! or handed out for another subject, is refused rather than read. It reveals nothing but a
//! creation time and a family id of the same subject, which the caller has seen anyway.

use aws_lc_rs::constant_time::verify_slices_are_equal;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use time::OffsetDateTime;
use uuid::Uuid;

use super::types::Subject;
use super::{Error, Issuer};
use crate::domain::{FamilyId, FieldError};
use crate::keys::ServerSecret;
use crate::store::{FamilyStore, SessionCursor, SessionRecord};

/// Sessions per page when the request names no size.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Most sessions per page; a larger size is lowered to this (AIP-158).
pub const MAX_PAGE_SIZE: u32 = 500;

const PAGE_TOKEN_LABEL: &[u8] = b"ratchet/v1/list-sessions-page-token";
const PAGE_TOKEN_VERSION: u8 = 1;
/// Version, creation time in Unix microseconds, family id.
const POSITION_BYTES: usize = 1 + 8 + 16;
const MAC_BYTES: usize = 16;

/// One live family, for ListSessions.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub family_id: FamilyId,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub created_at: OffsetDateTime,
    pub last_rotated_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub idle_expires_at: OffsetDateTime,
}

/// One page of sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionsPage {
    pub sessions: Vec<Session>,
    /// Empty on the last page.
    pub next_page_token: String,
}

/// Which page to list, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub size: u32,
    /// Empty for the first page; otherwise checked by [`Issuer::list_sessions`].
    pub token: String,
}

impl PageRequest {
    /// `size` as the request gives it: zero means the default, more than [`MAX_PAGE_SIZE`] is
    /// lowered to it.
    ///
    /// # Errors
    /// A negative size.
    pub fn parse(size: i32, token: String) -> Result<Self, FieldError> {
        let size = u32::try_from(size).map_err(|_| FieldError::new("page_size", "must not be negative"))?;
        let size = match size {
            0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        Ok(Self { size, token })
    }
}

impl<S: FamilyStore> Issuer<S> {
    /// One page of the live sessions of `subject`, newest first.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a page token this server did not hand out for `subject`;
    /// [`Error::Unavailable`].
    #[tracing::instrument(level = "debug", name = "list_sessions", skip_all)]
    pub async fn list_sessions(
        &self,
        subject: Subject,
        page: PageRequest,
        now: OffsetDateTime,
    ) -> Result<SessionsPage, Error> {
        let after = match page.token.as_str() {
            "" => None,
            token => Some(read_page_token(token, &subject, &self.secret)?),
        };
        // One more than a page: whether it comes tells whether there is a next page.
        let mut rows = self
            .store
            .live_families(subject.as_str(), now, after, page.size + 1)
            .await?;
        let next_page_token = if rows.len() > page.size as usize {
            rows.truncate(page.size as usize);
            rows.last().map_or_else(String::new, |last| {
                page_token(
                    &SessionCursor {
                        created_at: last.created_at,
                        id: last.id,
                    },
                    &subject,
                    &self.secret,
                )
            })
        } else {
            String::new()
        };
        Ok(SessionsPage {
            sessions: rows.into_iter().map(Session::from).collect(),
            next_page_token,
        })
    }
}

impl From<SessionRecord> for Session {
    fn from(f: SessionRecord) -> Self {
        Self {
            family_id: f.id,
            client_id: f.client_id,
            scopes: f.scopes,
            created_at: f.created_at,
            last_rotated_at: f.last_rotated_at,
            expires_at: f.expires_at,
            idle_expires_at: f.refresh_expires_at,
        }
    }
}

fn position(cursor: &SessionCursor) -> [u8; POSITION_BYTES] {
    let micros = i64::try_from(cursor.created_at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX);
    let mut out = [0u8; POSITION_BYTES];
    out[0] = PAGE_TOKEN_VERSION;
    out[1..9].copy_from_slice(&micros.to_be_bytes());
    out[9..].copy_from_slice(cursor.id.as_uuid().as_bytes());
    out
}

/// MAC over the position and the subject (the position is fixed-length, so the two cannot run
/// into each other).
fn mac(position: &[u8; POSITION_BYTES], subject: &Subject, secret: &ServerSecret) -> [u8; MAC_BYTES] {
    let mut input = Vec::with_capacity(POSITION_BYTES + subject.as_str().len());
    input.extend_from_slice(position);
    input.extend_from_slice(subject.as_str().as_bytes());
    let full = secret.derive(PAGE_TOKEN_LABEL, &input);
    let mut out = [0u8; MAC_BYTES];
    out.copy_from_slice(&full[..MAC_BYTES]);
    out
}

fn page_token(cursor: &SessionCursor, subject: &Subject, secret: &ServerSecret) -> String {
    let position = position(cursor);
    let mut token = Vec::with_capacity(POSITION_BYTES + MAC_BYTES);
    token.extend_from_slice(&position);
    token.extend_from_slice(&mac(&position, subject, secret));
    URL_SAFE_NO_PAD.encode(token)
}

fn read_page_token(token: &str, subject: &Subject, secret: &ServerSecret) -> Result<SessionCursor, FieldError> {
    let refused = || {
        FieldError::new(
            "page_token",
            "is not a page token this server handed out for this subject",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| refused())?;
    if bytes.len() != POSITION_BYTES + MAC_BYTES || bytes[0] != PAGE_TOKEN_VERSION {
        return Err(refused());
    }
    let (position, given) = bytes.split_at(POSITION_BYTES);
    let position: [u8; POSITION_BYTES] = position.try_into().map_err(|_| refused())?;
    verify_slices_are_equal(&mac(&position, subject, secret), given).map_err(|_| refused())?;
    let micros = i64::from_be_bytes(position[1..9].try_into().map_err(|_| refused())?);
    let created_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).map_err(|_| refused())?;
    let id = Uuid::from_slice(&position[9..]).map_err(|_| refused())?;
    Ok(SessionCursor {
        created_at,
        id: FamilyId::from_uuid(id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> SessionCursor {
        SessionCursor {
            created_at: OffsetDateTime::from_unix_timestamp_nanos(1_800_000_000_123_456_000).unwrap(),
            id: FamilyId::new_random(),
        }
    }

    fn subject(s: &str) -> Subject {
        Subject::parse(s.into()).unwrap()
    }

    #[test]
    fn a_page_token_reads_back_for_its_subject_only() {
        let secret = ServerSecret::generate().unwrap();
        let cursor = cursor();
        let token = page_token(&cursor, &subject("alice"), &secret);
        assert_eq!(read_page_token(&token, &subject("alice"), &secret), Ok(cursor));
        let refused = read_page_token(&token, &subject("bob"), &secret).unwrap_err();
        assert_eq!(refused.field, "page_token");
        assert!(read_page_token(&token, &subject("alice"), &ServerSecret::generate().unwrap()).is_err());
    }

    #[test]
    fn forged_and_garbled_page_tokens_are_refused() {
        let secret = ServerSecret::generate().unwrap();
        let token = page_token(&cursor(), &subject("alice"), &secret);
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[5] ^= 1; // another position, same MAC
        for bad in [
            URL_SAFE_NO_PAD.encode(&bytes),
            token[..token.len() - 2].to_string(),
            "garbage!".into(),
            "AAAA".into(),
        ] {
            assert!(read_page_token(&bad, &subject("alice"), &secret).is_err(), "{bad}");
        }
    }

    #[test]
    fn page_sizes_default_cap_and_refuse_negatives() {
        assert_eq!(PageRequest::parse(0, String::new()).unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(PageRequest::parse(7, String::new()).unwrap().size, 7);
        assert_eq!(PageRequest::parse(100_000, String::new()).unwrap().size, MAX_PAGE_SIZE);
        assert_eq!(PageRequest::parse(-1, String::new()).unwrap_err().field, "page_size");
    }
}
