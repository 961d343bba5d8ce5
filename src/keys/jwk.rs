//! Public keys as JSON Web Keys (RFC 7517, with RFC 8037 for Ed25519) and the JWK Set verifiers
//! fetch; `kid` is the RFC 7638 thumbprint.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use super::algorithm::KeyAlgorithm;

/// The public half of a key, as published. Private members (`d`, `p`, `q`, ...) do not exist in
/// this type, so no code path can publish one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublicJwk {
    kty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    crv: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    kid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    alg: Option<&'static str>,
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    use_: Option<&'static str>,
}

fn b64(bytes: &[u8]) -> Option<String> {
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

impl PublicJwk {
    fn bare(kty: &'static str) -> Self {
        Self {
            kty,
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
            kid: String::new(),
            alg: None,
            use_: None,
        }
    }

    /// An Ed25519 public key (RFC 8037 §2).
    pub(super) fn okp(x: &[u8]) -> Self {
        Self {
            crv: Some("Ed25519"),
            x: b64(x),
            ..Self::bare("OKP")
        }
    }

    /// A P-256 public key from its affine coordinates (RFC 7518 §6.2).
    pub(super) fn ec(x: &[u8], y: &[u8]) -> Self {
        Self {
            crv: Some("P-256"),
            x: b64(x),
            y: b64(y),
            ..Self::bare("EC")
        }
    }

    /// An RSA public key from its modulus and exponent, big-endian without leading zeros
    /// (RFC 7518 §6.3).
    pub(super) fn rsa(n: &[u8], e: &[u8]) -> Self {
        Self {
            n: b64(n),
            e: b64(e),
            ..Self::bare("RSA")
        }
    }

    /// The same key as published: with its `kid`, `alg` and `use: sig`.
    pub(super) fn with_kid(self, kid: &str, alg: KeyAlgorithm) -> Self {
        Self {
            kid: kid.to_owned(),
            alg: Some(alg.name()),
            use_: Some("sig"),
            ..self
        }
    }

    /// The RFC 7638 thumbprint (SHA-256, base64url), jsonwebtoken's: stable across restarts,
    /// replicas and serialisations. Its output is identical to the hand-written canonical form
    /// this replaced, byte for byte; the RFCs' examples below decide that.
    ///
    /// # Errors
    /// A key type and curve jsonwebtoken cannot thumbprint (none of ours: Ed25519, P-256, RSA).
    pub(super) fn thumbprint(&self) -> Result<String, String> {
        use jsonwebtoken::jwk::{
            AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters, EllipticCurveKeyType,
            Jwk, OctetKeyPairParameters, OctetKeyPairType, RSAKeyParameters, RSAKeyType, ThumbprintHash,
        };
        let member = |value: &Option<String>| value.clone().unwrap_or_default();
        let algorithm = match self.kty {
            "RSA" => AlgorithmParameters::RSA(RSAKeyParameters {
                key_type: RSAKeyType::RSA,
                n: member(&self.n),
                e: member(&self.e),
            }),
            "EC" => AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: EllipticCurveKeyType::EC,
                curve: EllipticCurve::P256,
                x: member(&self.x),
                y: member(&self.y),
            }),
            _ => AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: member(&self.x),
            }),
        };
        let jwk = Jwk {
            common: CommonParameters::default(),
            algorithm,
        };
        jwk.thumbprint(ThumbprintHash::SHA256).map_err(|e| e.to_string())
    }
}

/// A JWK Set as served: the JSON text and its entity tag, computed once per key set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwks {
    /// `{"keys":[...]}`, compact.
    pub json: String,
    /// A strong HTTP entity tag, quotes included: changes whenever the set changes.
    pub etag: String,
}

impl Jwks {
    pub(super) fn new<'a>(keys: impl IntoIterator<Item = &'a PublicJwk>) -> Self {
        #[derive(Serialize)]
        struct Set<'a> {
            keys: Vec<&'a PublicJwk>,
        }
        let set = Set {
            keys: keys.into_iter().collect(),
        };
        // Serialising plain strings and a Vec cannot fail.
        let json = serde_json::to_string(&set).unwrap_or_else(|_| r#"{"keys":[]}"#.to_owned());
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, json.as_bytes());
        let etag = format!("\"{}\"", URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16]));
        Self { json, etag }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_match_the_rfcs_examples() {
        // RFC 8037 A.3: the example Ed25519 public key.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        assert_eq!(
            PublicJwk::okp(&x).thumbprint().unwrap(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        // RFC 7638 §3.1: the example RSA key.
        let n = URL_SAFE_NO_PAD.decode("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw").unwrap();
        let e = URL_SAFE_NO_PAD.decode("AQAB").unwrap();
        assert_eq!(
            PublicJwk::rsa(&n, &e).thumbprint().unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        // P-256: no RFC example, so the canonical form RFC 7638 §3.2 prescribes, hashed here.
        let (x, y) = ([1u8; 32], [2u8; 32]);
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(x),
            URL_SAFE_NO_PAD.encode(y)
        );
        let expected = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            canonical.as_bytes(),
        ));
        assert_eq!(PublicJwk::ec(&x, &y).thumbprint().unwrap(), expected);
    }

    #[test]
    fn a_published_key_carries_kid_alg_and_use_and_the_etag_follows_the_set() {
        let jwk = PublicJwk::ec(&[1; 32], &[2; 32]).with_kid("k1", KeyAlgorithm::ES256);
        let value = serde_json::to_value(&jwk).unwrap();
        assert_eq!(value["kty"], "EC");
        assert_eq!(value["crv"], "P-256");
        assert_eq!(value["kid"], "k1");
        assert_eq!(value["alg"], "ES256");
        assert_eq!(value["use"], "sig");
        assert!(value.get("n").is_none() && value.get("d").is_none());
        let one = Jwks::new([&jwk]);
        let other = PublicJwk::okp(&[3; 32]).with_kid("k2", KeyAlgorithm::EdDSA);
        let two = Jwks::new([&jwk, &other]);
        assert_ne!(one.etag, two.etag);
        assert_eq!(one, Jwks::new([&jwk]));
    }
}
