//! Signing keys as verifiers see them: the JWK Set over gRPC and HTTP, every algorithm, key
//! rotation through the key directory, and every forgery a verifier must refuse.
//!
//! Every test runs on every backend: each issues tokens (through the store) and has them verified
//! or refused by Introspect, whose family check reads the store too.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use ratchet::grpc::pb::IntrospectResponse;
use ratchet::keys::directory::KeyDirectory;
use ratchet::keys::source::KeySource;
use ratchet::keys::{KeyAlgorithm, KeySet, SigningKey};

use crate::helpers::{Db, ISSUER, TestApp, jwt_part, on_every_backend};

const NOW: &str = "2026-11-30T08:00:00Z";

/// A server whose only key is a new `alg` key, and that key's PKCS#8 PEM (to forge with).
pub async fn app_with(db: Db, alg: KeyAlgorithm) -> (TestApp, String) {
    app_with_adjusted(db, alg, |_| {}).await
}

/// [`app_with`], with `adjust` applied to the server's parts.
pub async fn app_with_adjusted(
    db: Db,
    alg: KeyAlgorithm,
    adjust: impl FnOnce(&mut ratchet::startup::Parts),
) -> (TestApp, String) {
    let (key, der) = SigningKey::generate(alg).unwrap();
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der));
    let app = db
        .spawn_adjusted(|parts| {
            parts.keys = KeySet::single(key);
            adjust(parts);
        })
        .await;
    (app, pem)
}

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

async fn the_jwks_is_served_over_grpc_and_http_with_caching_headers_and_no_private_part(db: Db) {
    let (app, pem) = app_with(db, KeyAlgorithm::EdDSA).await;
    let pair = app.issue("alice").await;
    let kid = jwt_part(&pair.access_token, 0)["kid"].as_str().unwrap().to_owned();

    let jwks = app.jwks().await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    assert_eq!(key["kid"], kid.as_str());
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );
    assert_eq!((key["alg"].as_str(), key["use"].as_str()), (Some("EdDSA"), Some("sig")));
    assert!(key.get("d").is_none(), "no private part: {key}");

    let answer = app.http_get("/.well-known/jwks.json", &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json(), jwks, "HTTP and gRPC serve the same set");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("cache-control"), Some("public, max-age=300"));
    let etag = answer.header("etag").unwrap().to_owned();
    let again = app
        .http_get("/.well-known/jwks.json", &[("If-None-Match", &etag)])
        .await;
    assert_eq!((again.status, again.body.as_str()), (304, ""));
    let stale = app
        .http_get("/.well-known/jwks.json", &[("If-None-Match", "\"old\"")])
        .await;
    assert_eq!(stale.status, 200);

    let discovery = app.http_get("/.well-known/openid-configuration", &[]).await.json();
    assert_eq!(discovery["issuer"], ISSUER);
    assert_eq!(discovery["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));

    // A new key changes the set and its ETag.
    let (published, _) = SigningKey::generate(KeyAlgorithm::ES256).unwrap();
    let current = app.keys.active_kid();
    let same_active = SigningKey::from_pkcs8_der(pem::parse(&pem).unwrap().contents()).unwrap();
    app.keys.replace(KeySet::new(same_active, [published]));
    let changed = app
        .http_get("/.well-known/jwks.json", &[("If-None-Match", &etag)])
        .await;
    assert_eq!(changed.status, 200);
    assert_ne!(changed.header("etag"), Some(etag.as_str()));
    assert_eq!(changed.json()["keys"].as_array().unwrap().len(), 2);
    assert_eq!(app.keys.active_kid(), current);
    app.stop().await;
}

async fn every_algorithm_signs_tokens_that_introspect_and_match_their_jwk(db: Db) {
    for alg in KeyAlgorithm::ALL {
        let (app, _) = app_with(db.clone(), alg).await;
        let pair = app.issue("alice").await;
        let header = jwt_part(&pair.access_token, 0);
        assert_eq!(header["alg"], alg.name());
        assert_eq!(header["typ"], "at+jwt");
        let jwks = app.jwks().await;
        let jwk = &jwks["keys"][0];
        assert_eq!(jwk["kid"], header["kid"], "{alg}");
        assert_eq!(jwk["alg"], alg.name());
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(jwk.get(private).is_none(), "{alg}: {private} published");
        }
        assert!(app.introspect(&pair.access_token).await.active, "{alg}");
        app.stop().await;
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

async fn introspect_refuses_every_forgery_for_every_algorithm(db: Db) {
    for alg in KeyAlgorithm::ALL {
        let (app, pem) = app_with(db.clone(), alg).await;
        let pair = app.issue("alice").await;
        let forger = Forger::new(alg, &pem, &pair.access_token);
        assert!(
            app.introspect(&forger.resigned()).await.active,
            "{alg}: the forger's signing"
        );
        for (case, token) in forger.forgeries(&app.jwks().await, app.now().unix_timestamp()) {
            let answer = app.introspect(&token).await;
            assert_eq!(answer, IntrospectResponse::default(), "{alg}: {case}");
        }
        // A kid pointing at a retired key: the server's only key is replaced by another.
        assert!(app.introspect(&pair.access_token).await.active);
        let (other, _) = SigningKey::generate(alg).unwrap();
        app.keys.replace(KeySet::single(other));
        assert_eq!(
            app.introspect(&pair.access_token).await,
            IntrospectResponse::default(),
            "{alg}: retired key"
        );
        app.stop().await;
    }
}

fn temp_keys_dir() -> PathBuf {
    std::env::temp_dir().join(format!("ratchet-keys-api-{}", uuid::Uuid::new_v4()))
}

/// Polls `check` every 20 ms for up to 5 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_rotation_through_the_key_directory_keeps_every_token_valid_until_its_key_retires(db: Db) {
    let path = temp_keys_dir();
    let dir = KeyDirectory::new(&path);
    assert!(dir.bootstrap(KeyAlgorithm::EdDSA, NOW).unwrap());
    let source = KeySource::directory(&path);
    let app = db
        .spawn_adjusted(|parts| {
            parts.keys = source.load_directory().unwrap().unwrap();
            parts.key_source = Some(source.clone());
            parts.settings.keys_reload_interval = Duration::from_millis(100);
        })
        .await;
    let old_kid = app.keys.active_kid();
    let kid_of = |token: &str| jwt_part(token, 0)["kid"].as_str().unwrap().to_owned();
    let before = app.issue("alice").await;
    // Calls keep flowing through every step: none may fail while the key set is switched.
    let (stop_traffic, mut traffic_stopped) = tokio::sync::watch::channel(false);
    let traffic = {
        let client = app.client.clone();
        tokio::spawn(async move {
            let (mut calls, mut failures) = (0u32, Vec::new());
            while !*traffic_stopped.borrow_and_update() {
                let mut client = client.clone();
                let issued = client
                    .issue(ratchet::grpc::pb::IssueRequest {
                        subject: "traffic".into(),
                        ..Default::default()
                    })
                    .await;
                match issued {
                    Ok(pair) => {
                        let token = pair.into_inner().access_token;
                        let answer = client
                            .introspect(ratchet::grpc::pb::IntrospectRequest {
                                token,
                                ..Default::default()
                            })
                            .await;
                        if let Err(status) = answer {
                            failures.push(status);
                        }
                    }
                    Err(status) => failures.push(status),
                }
                calls += 1;
            }
            (calls, failures)
        })
    };

    // generate: published, in the JWKS, not signing yet
    let new = dir.generate(KeyAlgorithm::ES256, NOW).unwrap();
    eventually("the new key is published", async || {
        app.http_get("/.well-known/jwks.json", &[]).await.json()["keys"]
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    let between = app.issue("alice").await;
    assert_eq!(kid_of(&between.access_token), old_kid);

    // activate: new tokens are signed by the new key
    dir.activate(&new.kid).unwrap();
    eventually("the new key signs", async || app.keys.active_kid() == new.kid).await;
    let after = app.issue("alice").await;
    assert_eq!(kid_of(&after.access_token), new.kid);
    assert_eq!(jwt_part(&after.access_token, 0)["alg"], "ES256");
    for pair in [&before, &between, &after] {
        assert!(app.introspect(&pair.access_token).await.active);
    }

    // retire the old key: what it signed stops verifying, the rest goes on
    dir.retire(&old_kid).unwrap();
    eventually("the old key is gone", async || app.keys.kids() == vec![new.kid.clone()]).await;
    assert!(!app.introspect(&before.access_token).await.active);
    assert!(!app.introspect(&between.access_token).await.active);
    assert!(app.introspect(&after.access_token).await.active);

    stop_traffic.send(true).unwrap();
    let (calls, failures) = traffic.await.unwrap();
    assert!(calls > 10, "traffic flowed: {calls} calls");
    assert!(failures.is_empty(), "calls failed during the rotation: {failures:?}");

    // A broken directory (a key file others may read) is refused and the keys in use stay.
    use std::os::unix::fs::PermissionsExt as _;
    let third = dir.generate(KeyAlgorithm::RS256, NOW).unwrap();
    std::fs::set_permissions(
        path.join(format!("{}.pem", third.kid)),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(app.keys.kids(), vec![new.kid.clone()]);
    assert!(app.introspect(&after.access_token).await.active);
    app.stop().await;
}

/// Both answers are `Cache-Control: public`: a URL taken from the request would let one client
/// poison a shared cache with its own `jwks_uri` (SECURITY.md, "A poisoned discovery document").
#[tokio::test]
async fn discovery_and_jwks_answers_take_nothing_from_the_host_or_forwarded_headers() {
    let app = crate::helpers::spawn_sqlite_app(|_| {}).await;
    let addr = app.http_addr.unwrap();
    let discovery = app.http_get("/.well-known/openid-configuration", &[]).await;
    assert_eq!(discovery.status, 200);
    let jwks = app.http_get("/.well-known/jwks.json", &[]).await;

    let hostile: [&[(&str, &str)]; 4] = [
        &[("Host", "evil.example")],
        &[("X-Forwarded-Host", "evil.example"), ("X-Forwarded-Proto", "https")],
        &[
            ("Host", "evil.example:8443"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Port", "8443"),
            ("X-Forwarded-Prefix", "/evil"),
            ("Forwarded", "host=evil.example;proto=https"),
        ],
        &[("Host", "")],
    ];
    for headers in hostile {
        let answer = app.http_get("/.well-known/openid-configuration", headers).await;
        assert_eq!(
            (answer.status, &answer.body, answer.header("cache-control")),
            (discovery.status, &discovery.body, discovery.header("cache-control")),
            "discovery with {headers:?}"
        );
        let answer = app.http_get("/.well-known/jwks.json", headers).await;
        assert_eq!(
            (answer.status, &answer.body, answer.header("etag")),
            (jwks.status, &jwks.body, jwks.header("etag")),
            "the JWKS with {headers:?}"
        );
    }
    // An absolute-form request target is HTTP/1.1's `:authority` (RFC 9112 §3.2.2).
    let absolute = crate::helpers::http_get(
        addr,
        "http://evil.example/.well-known/openid-configuration",
        &[("Host", "evil.example")],
    )
    .await;
    assert_eq!((absolute.status, &absolute.body), (discovery.status, &discovery.body));
    assert_eq!(
        discovery.json(),
        serde_json::json!({ "issuer": ISSUER, "jwks_uri": format!("{ISSUER}/.well-known/jwks.json") })
    );
    assert_eq!(discovery.header("cache-control"), Some("public, max-age=300"));
    assert!(!discovery.body.contains("evil") && !discovery.body.contains(&addr.to_string()));
    app.stop().await;
}

/// `jwks_uri` is required (OIDC Discovery §3): with no URL to announce there is no document, and
/// never one guessed from the request; `--jwks-uri` is announced as given.
#[tokio::test]
async fn an_issuer_that_is_not_a_url_serves_discovery_only_with_a_configured_jwks_uri() {
    let app = crate::helpers::spawn_sqlite_app(|parts| parts.settings.policy.issuer = "ratchet".into()).await;
    let discovery = app.http_get("/.well-known/openid-configuration", &[]).await;
    assert_eq!(discovery.status, 404);
    assert_eq!(app.http_get("/.well-known/jwks.json", &[]).await.status, 200);
    app.stop().await;

    let configured = "https://keys.example/ratchet/jwks.json";
    let app = crate::helpers::spawn_sqlite_app(|parts| {
        parts.settings.policy.issuer = "ratchet".into();
        parts.settings.http.as_mut().unwrap().jwks_uri = Some(configured.into());
    })
    .await;
    let discovery = app
        .http_get("/.well-known/openid-configuration", &[("Host", "evil.example")])
        .await;
    assert_eq!(
        discovery.json(),
        serde_json::json!({ "issuer": "ratchet", "jwks_uri": configured })
    );
    app.stop().await;
}

on_every_backend!(
    the_jwks_is_served_over_grpc_and_http_with_caching_headers_and_no_private_part,
    every_algorithm_signs_tokens_that_introspect_and_match_their_jwk,
    introspect_refuses_every_forgery_for_every_algorithm,
    a_rotation_through_the_key_directory_keeps_every_token_valid_until_its_key_retires,
);
