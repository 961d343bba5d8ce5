//! Verifying access tokens we signed.
//!
//! Only the signature, the header and `iss` are checked here; the time claims are left to the
//! caller, which owns the clock (jsonwebtoken would read the system clock and, by default, allow
//! 60 seconds of leeway on `exp`, which RFC 9068 does not want for our own tokens).

use std::sync::Arc;

use jsonwebtoken::{Algorithm, Validation, decode, decode_header};

use super::{AccessClaims, Keyring, mint::ACCESS_TOKEN_TYP};

/// Why a token is not a valid access token of ours. Deliberately coarse: callers answer
/// "inactive" or TOKEN_INVALID for all of these, and details stay in debug logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("not a JWT, or an algorithm or type we do not issue")]
    Malformed,
    #[error("signed by a key we do not know")]
    UnknownKey,
    #[error("bad signature or claims")]
    Rejected,
}

impl Keyring {
    /// Checks that `token` is an access token signed by one of our keys for `issuer`, and returns
    /// its claims. `exp`, `nbf` and `iat` are *not* checked.
    ///
    /// # Errors
    /// See [`VerifyError`].
    pub fn verify(&self, token: &str, issuer: &str) -> Result<Arc<AccessClaims>, VerifyError> {
        if let Some(claims) = self.verified.get(token)
            && claims.iss == issuer
        {
            return Ok(claims);
        }
        // Only valid tokens are remembered: garbage cannot crowd out real entries.
        let claims = Arc::new(self.verify_signature(token, issuer)?);
        self.verified.insert(token.to_owned(), claims.clone());
        Ok(claims)
    }

    /// [`verify`](Self::verify) without the cache: always checks the signature.
    ///
    /// # Errors
    /// See [`VerifyError`].
    pub fn verify_signature(&self, token: &str, issuer: &str) -> Result<AccessClaims, VerifyError> {
        // `alg: none` and every algorithm but EdDSA fail here or at the check below, before any
        // key is chosen (RFC 8725 §3.1).
        let header = decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if header.alg != Algorithm::EdDSA || header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return Err(VerifyError::Malformed);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying.get(kid))
            .ok_or(VerifyError::UnknownKey)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.set_issuer(&[issuer]);
        decode::<AccessClaims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|_| VerifyError::Rejected)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::Map;

    use super::*;

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: "https://issuer.test".into(),
            sub: "alice".into(),
            aud: vec!["api".into()],
            exp: 2_000_000_000,
            iat: 1_000,
            nbf: 1_000,
            jti: "j1".into(),
            client_id: "web".into(),
            scope: "read write".into(),
            sid: "s1".into(),
            extra: Map::from_iter([("tenant".to_string(), serde_json::json!("acme"))]),
        }
    }

    #[test]
    fn a_minted_token_verifies_with_its_claims() {
        let keys = Keyring::generate().unwrap();
        let token = keys.sign(&claims()).unwrap();
        assert_eq!(*keys.verify(&token, "https://issuer.test").unwrap(), claims());
        // the second time from the cache, same answer
        assert_eq!(*keys.verify(&token, "https://issuer.test").unwrap(), claims());
        let header = decode_header(&token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.kid.as_deref(), Some(keys.active_kid()));
    }

    #[test]
    fn wrong_issuer_other_key_tampering_and_alg_none_are_rejected() {
        let keys = Keyring::generate().unwrap();
        let token = keys.sign(&claims()).unwrap();
        keys.verify(&token, "https://issuer.test").unwrap(); // cached now
        assert!(keys.verify(&token, "https://other.test").is_err());
        assert!(
            Keyring::generate()
                .unwrap()
                .verify(&token, "https://issuer.test")
                .is_err()
        );

        let parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims();
        forged.sub = "mallory".into();
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], body, parts[2]);
        assert_eq!(
            keys.verify(&tampered, "https://issuer.test"),
            Err(VerifyError::Rejected)
        );

        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt"}"#);
        assert_eq!(
            keys.verify(&format!("{none}.{body}."), "https://issuer.test"),
            Err(VerifyError::Malformed)
        );
        assert!(keys.verify("garbage", "https://issuer.test").is_err());
    }
}
