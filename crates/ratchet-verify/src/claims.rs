//! The claims of a verified access token, as a handler reads them.
//!
//! Only verified tokens become [`Claims`]: there is no public way to parse one without a
//! signature check.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// What a verified ratchet access token says (RFC 9068 §2.2). Times are Unix seconds.
///
/// The tower layer puts one into the request extensions:
/// `request.extensions().get::<ratchet_verify::Claims>()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    /// ratchet always sends an array; a single string (RFC 7519 §4.1.3 allows it) reads as one.
    #[serde(deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    /// ratchet always sends it; RFC 9068 does not require it, so neither does this crate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub jti: String,
    /// Absent when the session has no client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Space-separated (RFC 8693 §4.2); absent when there are none. See [`scopes`](Self::scopes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The session (refresh-token family) id: what Revoke names.
    pub sid: String,
    /// Every other claim: the ones the caller of Issue added.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Claims {
    /// The scopes, one by one.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope
            .as_deref()
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
    }

    /// Whether the token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn ratchet_claims_parse_with_extras_and_scopes() {
        let claims: Claims = serde_json::from_value(json!({
            "iss": "ratchet", "sub": "alice", "aud": ["api", "billing"], "exp": 20, "iat": 10,
            "nbf": 10, "jti": "j", "client_id": "web", "scope": "read  write", "sid": "s",
            "tenant": "acme"
        }))
        .unwrap();
        assert_eq!(claims.aud, ["api", "billing"]);
        assert_eq!(claims.scopes().collect::<Vec<_>>(), ["read", "write"]);
        assert!(claims.has_scope("write") && !claims.has_scope("admin"));
        assert_eq!(claims.client_id.as_deref(), Some("web"));
        assert_eq!(claims.extra, Map::from_iter([("tenant".to_owned(), json!("acme"))]));
    }

    #[test]
    fn optional_claims_may_be_absent_and_a_single_audience_may_be_a_string() {
        let claims: Claims = serde_json::from_value(json!({
            "iss": "ratchet", "sub": "alice", "aud": "api", "exp": 20, "iat": 10, "jti": "j", "sid": "s"
        }))
        .unwrap();
        assert_eq!(claims.aud, ["api"]);
        assert_eq!(
            (claims.nbf, claims.client_id.as_deref(), claims.scopes().count()),
            (None, None, 0)
        );
    }

    #[test]
    fn every_required_claim_is_required() {
        let full = json!({
            "iss": "ratchet", "sub": "alice", "aud": ["api"], "exp": 20, "iat": 10, "jti": "j", "sid": "s"
        });
        serde_json::from_value::<Claims>(full.clone()).unwrap();
        for claim in ["iss", "sub", "aud", "exp", "iat", "jti", "sid"] {
            let mut partial = full.clone();
            partial.as_object_mut().unwrap().remove(claim);
            assert!(
                serde_json::from_value::<Claims>(partial).is_err(),
                "{claim} is required"
            );
        }
        let mut float_exp = full;
        float_exp["exp"] = json!(20.5);
        assert!(serde_json::from_value::<Claims>(float_exp).is_err());
    }
}
