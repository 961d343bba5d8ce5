//! Forged access tokens: each differs from a genuine one in one respect, and a verifier must
//! refuse every one ([`Forger`]).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use ratchet::keys::KeyAlgorithm;

use super::jwt_part;

fn encoding_key(alg: KeyAlgorithm, pem: &str) -> EncodingKey {
    match alg {
        KeyAlgorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        KeyAlgorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        KeyAlgorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .unwrap()
}

fn b64(json: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
}

fn alg_header(alg: KeyAlgorithm) -> jsonwebtoken::Algorithm {
    match alg {
        KeyAlgorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        KeyAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
        KeyAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
    }
}

/// Makes tokens that look like the server's but must not verify, each differing from a genuine
/// one in one respect. Holds a copy of the server's private key, so that "signed by our key" is
/// never why a case is refused unless the case is about the signature.
pub struct Forger {
    alg: KeyAlgorithm,
    key: EncodingKey,
    /// A genuine token's claims and its key id.
    claims: serde_json::Value,
    kid: String,
    genuine: String,
}

impl Forger {
    pub fn new(alg: KeyAlgorithm, pem: &str, genuine: &str) -> Self {
        Self {
            alg,
            key: encoding_key(alg, pem),
            claims: jwt_part(genuine, 1),
            kid: jwt_part(genuine, 0)["kid"].as_str().unwrap().to_owned(),
            genuine: genuine.to_owned(),
        }
    }

    fn header(&self, typ: Option<&str>, kid: &str) -> Header {
        Header {
            typ: typ.map(Into::into),
            kid: Some(kid.into()),
            ..Header::new(alg_header(self.alg))
        }
    }

    fn sign(&self, header: &Header, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(header, claims, &self.key).unwrap()
    }

    /// The genuine claims signed again by the forger: must verify (proves the forger's signing).
    pub fn resigned(&self) -> String {
        self.sign(&self.header(Some("at+jwt"), &self.kid), &self.claims)
    }

    fn with(&self, name: &str, value: serde_json::Value) -> String {
        let mut claims = self.claims.clone();
        claims[name] = value;
        self.sign(&self.header(Some("at+jwt"), &self.kid), &claims)
    }

    fn hs256(&self, secret: &[u8]) -> String {
        let header = Header {
            typ: Some("at+jwt".into()),
            kid: Some(self.kid.clone()),
            ..Header::new(jsonwebtoken::Algorithm::HS256)
        };
        jsonwebtoken::encode(&header, &self.claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    /// Every forgery, named; `jwks` is the published set (an attacker's HMAC "secret"), `now`
    /// the verifier's Unix time.
    pub fn forgeries(&self, jwks: &serde_json::Value, now: i64) -> Vec<(&'static str, String)> {
        let jwk = &jwks["keys"][0];
        let public_part = jwk
            .get("x")
            .or(jwk.get("n"))
            .and_then(|v| v.as_str())
            .map(|v| URL_SAFE_NO_PAD.decode(v).unwrap())
            .unwrap();
        let (head, signature) = self.genuine.rsplit_once('.').unwrap();
        let mut flipped = URL_SAFE_NO_PAD.decode(signature).unwrap();
        flipped[7] ^= 1;
        let none = serde_json::json!({"alg": "none", "typ": "at+jwt", "kid": self.kid});
        vec![
            ("alg none", format!("{}.{}.", b64(&none), b64(&self.claims))),
            (
                "HS256 keyed with the JWKS text",
                self.hs256(jwks.to_string().as_bytes()),
            ),
            ("HS256 keyed with the public key", self.hs256(&public_part)),
            (
                "unknown kid",
                self.sign(&self.header(Some("at+jwt"), "no-such-key"), &self.claims),
            ),
            ("wrong iss", self.with("iss", "https://evil.test".into())),
            (
                "wrong typ",
                self.sign(&self.header(Some("JWT"), &self.kid), &self.claims),
            ),
            ("no typ", self.sign(&self.header(None, &self.kid), &self.claims)),
            (
                "a critical extension nobody understands",
                self.sign(
                    &Header {
                        crit: Some(vec!["urn:example:must-understand".into()]),
                        ..self.header(Some("at+jwt"), &self.kid)
                    },
                    &self.claims,
                ),
            ),
            // Beyond any verifier's leeway (ratchet-verify allows 30 s; Introspect's exactness at
            // the `exp` second is introspect.rs's test).
            ("expired", self.with("exp", (now - 120).into())),
            ("not yet valid", self.with("nbf", (now + 120).into())),
            (
                "flipped signature byte",
                format!("{head}.{}", URL_SAFE_NO_PAD.encode(&flipped)),
            ),
        ]
    }
}
