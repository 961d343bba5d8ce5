//! Reading a JWK Set (RFC 7517 §5) into verification keys by `kid`.
//!
//! A key is kept only if it says everything a safe verifier needs: a `kid` (keys are chosen by
//! `kid` only), an `alg` this verifier allows (a key is only ever used for the algorithm it was
//! published for, RFC 8725 §3.1), a `kty`/`crv` that fits that `alg`, and no `use` other than
//! `sig`. Anything else in the set (another key type, a future algorithm, an encryption key) is
//! skipped, not an error: the issuer may publish more than this version understands. A `kid` that
//! appears twice is dropped altogether, since which of the two signed a token cannot be told.
//!
//! Left out: `x5c`/`x5u` certificate chains (ratchet publishes bare keys) and symmetric `oct` keys
//! (never verifiable from a public set).

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use crate::error::FetchError;

/// One verification key: what it verifies and the algorithm it was published for.
pub(crate) struct Key {
    pub(crate) alg: Algorithm,
    pub(crate) decoding: DecodingKey,
}

/// Verification keys by `kid`.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: HashMap<String, Arc<Key>>,
}

impl KeySet {
    pub(crate) fn get(&self, kid: &str) -> Option<Arc<Key>> {
        self.keys.get(kid).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The usable keys of the JWK Set `body`, among `allowed` algorithms.
    ///
    /// # Errors
    /// The body is not a JSON object with a `keys` array.
    pub(crate) fn parse(body: &[u8], allowed: &[Algorithm]) -> Result<Self, FetchError> {
        #[derive(Deserialize)]
        struct Set {
            keys: Vec<serde_json::Value>,
        }
        let set: Set = serde_json::from_slice(body).map_err(|e| FetchError::Invalid(format!("not a JWK Set: {e}")))?;
        let mut keys: HashMap<String, Arc<Key>> = HashMap::with_capacity(set.keys.len());
        let mut duplicates = Vec::new();
        for value in set.keys {
            let jwk = match serde_json::from_value::<Jwk>(value) {
                Ok(jwk) => jwk,
                Err(error) => {
                    tracing::debug!(%error, "skipping a JWK that does not parse");
                    continue;
                }
            };
            let kid = jwk.kid.clone();
            match jwk.into_key(allowed) {
                Ok(key) => {
                    if keys.insert(kid.clone(), Arc::new(key)).is_some() {
                        duplicates.push(kid);
                    }
                }
                Err(why) => tracing::debug!(kid, why, "skipping a JWK"),
            }
        }
        for kid in duplicates {
            tracing::warn!(kid, "the key set holds two keys with this kid: neither is used");
            keys.remove(&kid);
        }
        Ok(Self { keys })
    }
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: String,
    alg: String,
    #[serde(rename = "use")]
    usage: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

impl Jwk {
    fn into_key(self, allowed: &[Algorithm]) -> Result<Key, &'static str> {
        if self.usage.as_deref().is_some_and(|usage| usage != "sig") {
            return Err("not a signature key");
        }
        let alg = Algorithm::from_str(&self.alg).map_err(|_| "unknown alg")?;
        if !allowed.contains(&alg) {
            return Err("alg not allowed");
        }
        let crv = self.crv.as_deref();
        let decoding = match (alg, self.kty.as_str()) {
            (Algorithm::EdDSA, "OKP") if crv == Some("Ed25519") => {
                DecodingKey::from_ed_components(coordinate(self.x.as_deref(), 32)?)
            }
            (Algorithm::ES256, "EC") if crv == Some("P-256") => {
                DecodingKey::from_ec_components(coordinate(self.x.as_deref(), 32)?, coordinate(self.y.as_deref(), 32)?)
            }
            (Algorithm::ES384, "EC") if crv == Some("P-384") => {
                DecodingKey::from_ec_components(coordinate(self.x.as_deref(), 48)?, coordinate(self.y.as_deref(), 48)?)
            }
            (
                Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512,
                "RSA",
            ) => DecodingKey::from_rsa_components(self.n.as_deref().ok_or("no n")?, self.e.as_deref().ok_or("no e")?),
            _ => return Err("kty or crv does not fit alg"),
        }
        .map_err(|_| "bad key material")?;
        Ok(Key { alg, decoding })
    }
}

/// A curve coordinate of `bytes` bytes, base64url without padding (RFC 7518 §6.2.1.2, RFC 8037
/// §2): checked by length, since jsonwebtoken would concatenate coordinates of any length.
fn coordinate(value: Option<&str>, bytes: usize) -> Result<&str, &'static str> {
    let value = value.ok_or("missing coordinate")?;
    if value.len() == (bytes * 4).div_ceil(3) {
        Ok(value)
    } else {
        Err("coordinate of the wrong length")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    const ALL: &[Algorithm] = &[Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256];

    fn parse(keys: serde_json::Value) -> KeySet {
        KeySet::parse(json!({ "keys": keys }).to_string().as_bytes(), ALL).unwrap()
    }

    fn ed(kid: &str) -> serde_json::Value {
        json!({"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": kid, "alg": "EdDSA", "use": "sig"})
    }

    #[test]
    fn a_well_formed_key_is_kept_under_its_kid_with_its_alg() {
        let set = parse(json!([ed("k1")]));
        assert_eq!(set.len(), 1);
        assert_eq!(set.get("k1").unwrap().alg, Algorithm::EdDSA);
        assert!(set.get("k2").is_none());
    }

    #[test]
    fn keys_missing_what_a_safe_verifier_needs_are_skipped() {
        let mut no_alg = ed("no-alg");
        no_alg.as_object_mut().unwrap().remove("alg");
        let mut no_kid = ed("x");
        no_kid.as_object_mut().unwrap().remove("kid");
        let mut enc = ed("enc");
        enc["use"] = json!("enc");
        let mut hs = ed("hs");
        hs["alg"] = json!("HS256");
        let mut mismatch = ed("mismatch");
        mismatch["alg"] = json!("ES256");
        let oct = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "oct", "alg": "HS256"});
        let future = json!({"kty": "AKP", "kid": "pq", "alg": "ML-DSA-44", "pub": "AAAA"});
        let mut short = ed("short");
        short["x"] = json!(&ED_X[..42]);
        let ec_lopsided = json!({"kty": "EC", "crv": "P-256", "kid": "ec", "alg": "ES256",
            "x": format!("{ED_X}A"), "y": &ED_X[..42]});
        let set = parse(json!([
            no_alg,
            no_kid,
            enc,
            hs,
            mismatch,
            oct,
            future,
            short,
            ec_lopsided,
            ed("good")
        ]));
        assert_eq!(set.len(), 1, "only the good key is left");
        assert!(set.get("good").is_some());
    }

    #[test]
    fn a_kid_published_twice_is_not_used_at_all() {
        let set = parse(json!([ed("twice"), ed("twice"), ed("once")]));
        assert!(set.get("twice").is_none());
        assert!(set.get("once").is_some());
    }

    #[test]
    fn an_algorithm_the_verifier_does_not_allow_is_skipped() {
        let body = json!({ "keys": [ed("k1")] }).to_string();
        let set = KeySet::parse(body.as_bytes(), &[Algorithm::ES256]).unwrap();
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn a_body_that_is_not_a_key_set_is_an_error() {
        for body in ["", "[]", "{}", r#"{"keys": 1}"#, "<html>"] {
            assert!(KeySet::parse(body.as_bytes(), ALL).is_err(), "{body}");
        }
        assert_eq!(KeySet::parse(br#"{"keys": []}"#, ALL).unwrap().len(), 0);
    }
}
