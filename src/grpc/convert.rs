//! Proto messages to domain types and back. Parsing happens here, at the edge: a request that
//! breaks a rule is refused with the field's name before the domain sees it.

use prost_types::value::Kind;
use serde_json::{Map, Number, Value};
use time::OffsetDateTime;

use super::pb;
use crate::domain::{FamilyId, FieldError};
use crate::issuer::sessions::PageRequest;
use crate::issuer::types::{
    Audiences, ClaimPath, ClientId, ExtraClaims, IssueParams, PresentedToken, RevokeTarget, Scopes, Subject,
};
use crate::issuer::{ActiveToken, Session, SessionsPage, TokenPair};

/// Parses an IssueRequest; `default_audience` stands in for an empty `audiences`.
///
/// # Errors
/// The first field that breaks a rule.
pub fn issue_params(request: pb::IssueRequest, default_audience: &str) -> Result<IssueParams, FieldError> {
    Ok(IssueParams {
        subject: Subject::parse(request.subject)?,
        scopes: Scopes::parse(request.scopes)?,
        audiences: Audiences::parse(request.audiences, default_audience)?,
        client_id: ClientId::parse(request.client_id)?,
        claims: ExtraClaims::parse(request.claims.map(struct_to_json).transpose()?.unwrap_or_default())?,
    })
}

impl TryFrom<pb::RotateRequest> for PresentedToken {
    type Error = FieldError;

    fn try_from(request: pb::RotateRequest) -> Result<Self, FieldError> {
        PresentedToken::parse("refresh_token", request.refresh_token)
    }
}

impl TryFrom<pb::IntrospectRequest> for PresentedToken {
    type Error = FieldError;

    /// `token_type_hint` is only a hint (RFC 7662 §2.1): every token type is tried anyway, and
    /// our two kinds are told apart by their shape, so it is not even read.
    fn try_from(request: pb::IntrospectRequest) -> Result<Self, FieldError> {
        PresentedToken::parse("token", request.token)
    }
}

impl TryFrom<pb::RevokeRequest> for RevokeTarget {
    type Error = FieldError;

    fn try_from(request: pb::RevokeRequest) -> Result<Self, FieldError> {
        use pb::revoke_request::Target;
        match request.target {
            Some(Target::Token(token)) => PresentedToken::parse("token", token).map(RevokeTarget::Token),
            Some(Target::FamilyId(id)) => FamilyId::parse("family_id", &id).map(RevokeTarget::Family),
            Some(Target::Subject(subject)) => Subject::parse(subject).map(RevokeTarget::Subject),
            None => Err(FieldError::new(
                "target",
                "one of token, family_id or subject is required",
            )),
        }
    }
}

/// Parses a ListSessionsRequest: whose sessions, and which page.
///
/// # Errors
/// The first field that breaks a rule.
pub fn sessions_request(request: pb::ListSessionsRequest) -> Result<(Subject, PageRequest), FieldError> {
    Ok((
        Subject::parse(request.subject)?,
        PageRequest::parse(request.page_size, request.page_token)?,
    ))
}

impl From<TokenPair> for pb::TokenPair {
    fn from(pair: TokenPair) -> Self {
        Self {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token.expose(),
            token_type: "Bearer".to_owned(),
            expires_in: pair.expires_in,
            refresh_expires_at: pair.refresh_expires_at.unix_timestamp(),
            family_id: pair.family_id.to_string(),
        }
    }
}

/// RFC 7662 §2.2: an inactive token answers `active: false` and nothing else.
pub fn introspection(active: Option<ActiveToken>) -> pb::IntrospectResponse {
    let Some(token) = active else {
        return pb::IntrospectResponse::default();
    };
    pb::IntrospectResponse {
        active: true,
        token_type: token.token_type.as_str().to_owned(),
        subject: token.subject,
        scopes: token.scopes,
        audiences: token.audiences,
        client_id: token.client_id,
        issuer: token.issuer,
        jti: token.jti,
        family_id: token.family_id.to_string(),
        issued_at: token.issued_at,
        expires_at: token.expires_at,
    }
}

impl From<SessionsPage> for pb::ListSessionsResponse {
    fn from(page: SessionsPage) -> Self {
        Self {
            sessions: page.sessions.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }
    }
}

impl From<Session> for pb::Session {
    fn from(session: Session) -> Self {
        let secs = OffsetDateTime::unix_timestamp;
        Self {
            family_id: session.family_id.to_string(),
            client_id: session.client_id,
            scopes: session.scopes,
            created_at: secs(session.created_at),
            last_rotated_at: secs(session.last_rotated_at),
            expires_at: secs(session.expires_at),
            idle_expires_at: secs(session.idle_expires_at),
        }
    }
}

/// `google.protobuf.Struct` to a JSON object. Numbers arrive as doubles; whole ones within the
/// exactly representable range become JSON integers so that `"level": 3` stays `3`, not `3.0`.
fn struct_to_json(value: prost_types::Struct) -> Result<Map<String, Value>, FieldError> {
    object_to_json(value, &ClaimPath::Root)
}

fn object_to_json(value: prost_types::Struct, path: &ClaimPath<'_>) -> Result<Map<String, Value>, FieldError> {
    value
        .fields
        .into_iter()
        .map(|(name, v)| {
            let value = value_to_json(v, &ClaimPath::Member(path, &name))?;
            Ok((name, value))
        })
        .collect()
}

fn value_to_json(value: prost_types::Value, path: &ClaimPath<'_>) -> Result<Value, FieldError> {
    /// 2^53: beyond it not every integer is a double.
    const MAX_EXACT: f64 = 9_007_199_254_740_992.0;
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() <= MAX_EXACT {
                #[allow(clippy::cast_possible_truncation)] // whole and within ±2^53: exact
                Value::Number(Number::from(n as i64))
            } else {
                Value::Number(
                    Number::from_f64(n).ok_or_else(|| FieldError::new(path.render(), "must be a finite number"))?,
                )
            }
        }
        Some(Kind::StructValue(s)) => Value::Object(object_to_json(s, path)?),
        Some(Kind::ListValue(list)) => Value::Array(
            list.values
                .into_iter()
                .enumerate()
                .map(|(i, v)| value_to_json(v, &ClaimPath::Index(path, i)))
                .collect::<Result<_, _>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::{ListValue, Struct};

    fn number(n: f64) -> prost_types::Value {
        prost_types::Value {
            kind: Some(Kind::NumberValue(n)),
        }
    }

    #[test]
    fn struct_claims_become_json_with_integers_kept_whole() {
        let s = Struct {
            fields: [
                ("level".to_string(), number(3.0)),
                ("ratio".to_string(), number(0.5)),
                (
                    "tags".to_string(),
                    prost_types::Value {
                        kind: Some(Kind::ListValue(ListValue {
                            values: vec![prost_types::Value {
                                kind: Some(Kind::StringValue("a".into())),
                            }],
                        })),
                    },
                ),
            ]
            .into(),
        };
        let json = Value::Object(struct_to_json(s).unwrap());
        assert_eq!(json, serde_json::json!({"level": 3, "ratio": 0.5, "tags": ["a"]}));
    }

    #[test]
    fn non_finite_numbers_are_refused_with_their_path() {
        let s = Struct {
            fields: [("x".to_string(), number(f64::NAN))].into(),
        };
        assert_eq!(struct_to_json(s).unwrap_err().field, "claims.x");
    }

    #[test]
    fn an_empty_revoke_target_names_the_field() {
        let err = RevokeTarget::try_from(pb::RevokeRequest { target: None }).unwrap_err();
        assert_eq!(err.field, "target");
    }
}
