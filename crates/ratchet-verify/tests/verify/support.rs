//! What every test needs: keys of each algorithm made here, tokens signed by hand (so that broken
//! ones can be made too), and a real HTTP server on a local port that serves a key set and a
//! discovery document the test changes as it goes, counting requests and failing on demand.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

pub const ISSUER: &str = "https://ratchet.test";
/// A fixed "now" for the time checks (Unix seconds).
pub const NOW: i64 = 1_700_000_000;

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).unwrap()
}

enum Signer {
    Ed(Ed25519KeyPair),
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A signing key and its public JWK.
pub struct TestKey {
    pub kid: String,
    pub alg: &'static str,
    signer: Signer,
    /// The public key's bytes as an attacker would feed them to HMAC: raw Ed25519, the EC point,
    /// or the RSA modulus.
    pub public_bytes: Vec<u8>,
}

impl TestKey {
    pub fn ed25519(kid: &str) -> Self {
        let pair = Ed25519KeyPair::generate().unwrap();
        let public_bytes = pair.public_key().as_ref().to_vec();
        Self {
            kid: kid.into(),
            alg: "EdDSA",
            signer: Signer::Ed(pair),
            public_bytes,
        }
    }

    pub fn p256(kid: &str) -> Self {
        let pair = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let public_bytes = pair.public_key().as_ref().to_vec();
        Self {
            kid: kid.into(),
            alg: "ES256",
            signer: Signer::Ec(pair),
            public_bytes,
        }
    }

    pub fn rsa2048(kid: &str) -> Self {
        let pair = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let public_bytes = pair.public_key().modulus().big_endian_without_leading_zero().to_vec();
        Self {
            kid: kid.into(),
            alg: "RS256",
            signer: Signer::Rsa(pair),
            public_bytes,
        }
    }

    /// One of each algorithm ratchet signs with.
    pub fn each_algorithm() -> Vec<Self> {
        vec![Self::ed25519("ed-1"), Self::p256("ec-1"), Self::rsa2048("rsa-1")]
    }

    /// The public JWK, as ratchet publishes it.
    pub fn jwk(&self) -> Value {
        match &self.signer {
            Signer::Ed(_) => json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&self.public_bytes),
                "kid": self.kid, "alg": self.alg, "use": "sig"}),
            Signer::Ec(_) => json!({"kty": "EC", "crv": "P-256", "x": b64(&self.public_bytes[1..33]),
                "y": b64(&self.public_bytes[33..]), "kid": self.kid, "alg": self.alg, "use": "sig"}),
            Signer::Rsa(pair) => {
                let e = pair.public_key().exponent().big_endian_without_leading_zero().to_vec();
                json!({"kty": "RSA", "n": b64(&self.public_bytes), "e": b64(&e),
                    "kid": self.kid, "alg": self.alg, "use": "sig"})
            }
        }
    }

    /// The header ratchet writes for this key.
    pub fn header(&self) -> Value {
        json!({"alg": self.alg, "typ": "at+jwt", "kid": self.kid})
    }

    /// A token with the usual header.
    pub fn token(&self, claims: &Value) -> String {
        self.sign(&self.header(), claims)
    }

    /// A token with any header, signed with this key (for RSA, with the header's RSA algorithm).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        let rng = SystemRandom::new();
        let signature = match &self.signer {
            Signer::Ed(pair) => pair.sign(input.as_bytes()).as_ref().to_vec(),
            Signer::Ec(pair) => pair.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            Signer::Rsa(pair) => {
                // The padding and hash the header names, so that a token claiming another RSA
                // algorithm than the key's is still correctly signed: only the alg check stops it.
                let padding: &dyn signature::RsaEncoding = match header["alg"].as_str() {
                    Some("RS384") => &signature::RSA_PKCS1_SHA384,
                    Some("PS256") => &signature::RSA_PSS_SHA256,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(padding, &rng, input.as_bytes(), &mut signature).unwrap();
                signature
            }
        };
        format!("{input}.{}", b64(&signature))
    }
}

pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// HMAC-SHA256 over header and claims with `secret`: the key-confusion forgery.
pub fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = signing_input(header, claims);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    format!(
        "{input}.{}",
        b64(aws_lc_rs::hmac::sign(&key, input.as_bytes()).as_ref())
    )
}

/// The claims ratchet puts in a token, valid at `now`.
pub fn claims_at(now: i64) -> Value {
    json!({
        "iss": ISSUER, "sub": "alice", "aud": ["api"], "exp": now + 900, "iat": now, "nbf": now,
        "jti": "0f3c2a", "client_id": "web", "scope": "read write", "sid": "family-1", "tenant": "acme"
    })
}

pub fn claims() -> Value {
    claims_at(NOW)
}

pub fn unix_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// The key set server's state, which the test drives.
#[derive(Default)]
pub struct Jwks {
    keys: Mutex<Vec<Value>>,
    /// Bumped on every change; the ETag is derived from it.
    version: AtomicUsize,
    pub requests: AtomicUsize,
    pub not_modified: AtomicUsize,
    pub conditional: AtomicUsize,
    pub fail: AtomicBool,
    pub garbage: AtomicBool,
    pub etags: AtomicBool,
    pub cache_control: Mutex<Option<String>>,
    pub delay: Mutex<Duration>,
    pub padding: AtomicUsize,
    pub discovery_issuer: Mutex<String>,
}

impl Jwks {
    pub fn publish(&self, key: &TestKey) {
        self.keys.lock().unwrap().push(key.jwk());
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    pub fn retire(&self, kid: &str) {
        self.keys.lock().unwrap().retain(|key| key["kid"] != kid);
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn set_cache_control(&self, value: &str) {
        *self.cache_control.lock().unwrap() = Some(value.to_owned());
    }
}

/// A key set server on a free local port.
pub struct JwksServer {
    pub addr: SocketAddr,
    pub state: Arc<Jwks>,
}

impl JwksServer {
    pub async fn start(keys: &[&TestKey]) -> Self {
        let state = Arc::new(Jwks::default());
        *state.discovery_issuer.lock().unwrap() = ISSUER.to_owned();
        for key in keys {
            state.publish(key);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .route("/.well-known/openid-configuration", get(discovery))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A verifier of this server's keys, settings as the builder's defaults.
    pub fn verifier(&self) -> ratchet_verify::Builder {
        ratchet_verify::Verifier::builder(self.url(), ISSUER)
    }
}

async fn jwks(State(state): State<Arc<Jwks>>, headers: HeaderMap) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if state.fail.load(Ordering::SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
    }
    let etag = format!("\"v{}\"", state.version.load(Ordering::SeqCst));
    let mut response_headers = HeaderMap::new();
    if let Some(value) = state.cache_control.lock().unwrap().as_deref() {
        response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_str(value).unwrap());
    }
    if state.etags.load(Ordering::SeqCst) {
        response_headers.insert(header::ETAG, HeaderValue::from_str(&etag).unwrap());
        if let Some(presented) = headers.get(header::IF_NONE_MATCH) {
            state.conditional.fetch_add(1, Ordering::SeqCst);
            if presented.as_bytes() == etag.as_bytes() {
                state.not_modified.fetch_add(1, Ordering::SeqCst);
                return (StatusCode::NOT_MODIFIED, response_headers).into_response();
            }
        }
    }
    if state.garbage.load(Ordering::SeqCst) {
        return (StatusCode::OK, response_headers, "<html>oops</html>").into_response();
    }
    let keys = state.keys.lock().unwrap().clone();
    let mut body = json!({ "keys": keys });
    let padding = state.padding.load(Ordering::SeqCst);
    if padding > 0 {
        body["padding"] = json!("x".repeat(padding));
    }
    response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    (StatusCode::OK, response_headers, body.to_string()).into_response()
}

async fn discovery(State(state): State<Arc<Jwks>>, headers: HeaderMap) -> Response {
    let host = headers.get(header::HOST).unwrap().to_str().unwrap().to_owned();
    let issuer = state.discovery_issuer.lock().unwrap().clone();
    let body = json!({ "issuer": issuer, "jwks_uri": format!("http://{host}/.well-known/jwks.json") });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
