//! Signing keys as verifiers see them: the JWK Set over gRPC and HTTP, every algorithm, key
//! rotation through the key directory, and every forgery a verifier must refuse.
//!
//! Every test runs on every backend: each issues tokens (through the store) and has them verified
//! or refused by Introspect, whose family check reads the store too.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ratchet::grpc::pb::IntrospectResponse;
use ratchet::keys::directory::KeyDirectory;
use ratchet::keys::source::KeySource;
use ratchet::keys::{KeyAlgorithm, KeySet, SigningKey};

use crate::support::{Db, Forger, ISSUER, TestApp, jwt_part, on_every_backend};

const NOW: &str = "2026-11-30T08:00:00Z";

async fn the_jwks_is_served_over_grpc_and_http_with_caching_headers_and_no_private_part(db: Db) {
    let app = TestApp::builder(db).algorithm(KeyAlgorithm::EdDSA).spawn().await;
    let pem = app.key_pem();
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
        let app = TestApp::builder(db.clone()).algorithm(alg).spawn().await;
        let _ = app.key_pem();
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

async fn introspect_refuses_every_forgery_for_every_algorithm(db: Db) {
    for alg in KeyAlgorithm::ALL {
        let app = TestApp::builder(db.clone()).algorithm(alg).spawn().await;
        let pem = app.key_pem();
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
    let app = TestApp::builder(db)
        .adjust(|parts| {
            parts.keys = source.load_directory().unwrap().unwrap();
            parts.key_source = Some(source.clone());
            parts.settings.keys_reload_interval = Duration::from_millis(100);
        })
        .spawn()
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
    let app = TestApp::builder(Db::Sqlite).spawn().await;
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
    let absolute = crate::support::http_get(
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
    let app = TestApp::builder(Db::Sqlite)
        .adjust(|parts| parts.settings.policy.issuer = "ratchet".into())
        .spawn()
        .await;
    let discovery = app.http_get("/.well-known/openid-configuration", &[]).await;
    assert_eq!(discovery.status, 404);
    assert_eq!(app.http_get("/.well-known/jwks.json", &[]).await.status, 200);
    app.stop().await;

    let configured = "https://keys.example/ratchet/jwks.json";
    let app = TestApp::builder(Db::Sqlite)
        .adjust(|parts| {
            parts.settings.policy.issuer = "ratchet".into();
            parts.settings.http.as_mut().unwrap().jwks_uri = Some(configured.into());
        })
        .spawn()
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
