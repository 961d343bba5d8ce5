//! Minting access tokens: RFC 9068 JWTs, header `typ: at+jwt`, signed with the active key.

use jsonwebtoken::{Algorithm, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{KeyError, Keyring};

/// RFC 9068 media type, in the short form §2.1 asks for.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// The claims of an access token. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    /// Always an array, even with one audience: simpler for verifiers than RFC 7519's either-or.
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The family (session) id.
    pub sid: String,
    /// The caller's extra claims; the reserved names above can never collide with these, because
    /// Issue refuses them.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Keyring {
    /// Signs `claims` with the active key.
    ///
    /// # Errors
    /// The signing backend failed (only with a corrupt key; keys are checked when loaded).
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(self.active.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.active.encoding).map_err(KeyError::Sign)
    }
}
