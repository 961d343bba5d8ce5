//! Minting access tokens: RFC 9068 JWTs, header `typ: at+jwt`, signed with the active key
//! (EdDSA, ES256 or RS256: whichever that key was made for).
//!
//! The JWS compact serialisation is assembled here (header and payload base64url, joined by a
//! dot, then the signature) so that the parsed key and the encoded header are reused for every
//! token; verification, where the untrusted input is, stays with jsonwebtoken.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Header;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{KeyAlgorithm, KeyError, Keyring};

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
        let payload = serde_json::to_vec(claims).map_err(|_| KeyError::Sign("claims do not serialise"))?;
        let generation = self.current.load();
        let key = &generation.keys.active;
        let mut token = String::with_capacity(key.encoded_header.len() + payload.len() * 4 / 3 + 360);
        token.push_str(&key.encoded_header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = key.sign(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
        Ok(token)
    }
}

/// The base64url JOSE header of every token signed by the key `kid`.
pub(super) fn encoded_header(alg: KeyAlgorithm, kid: &str) -> Result<String, serde_json::Error> {
    let mut header = Header::new(alg.jwt());
    header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
    header.kid = Some(kid.to_owned());
    Ok(URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?))
}
