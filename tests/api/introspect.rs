use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ratchet::grpc::pb::{IntrospectRequest, IntrospectResponse, IssueRequest};
use time::Duration;

use crate::support::{AUDIENCE, Db, ISSUER, TestApp, assert_invalid_argument, jwt_part, on_every_backend};

async fn a_fresh_access_token_introspects_active_with_every_field(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let pair = app
        .client
        .clone()
        .issue(IssueRequest {
            subject: "alice".into(),
            scopes: vec!["read".into(), "write".into()],
            client_id: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let now = app.now().unix_timestamp();

    let access = app.introspect(&pair.access_token).await;
    assert!(access.active);
    assert_eq!(access.token_type, "access_token");
    assert_eq!(access.subject, "alice");
    assert_eq!(access.scopes, ["read", "write"]);
    assert_eq!(access.audiences, [AUDIENCE]);
    assert_eq!(access.client_id, "web");
    assert_eq!(access.issuer, ISSUER);
    assert!(!access.jti.is_empty());
    assert_eq!(access.family_id, pair.family_id);
    assert_eq!(access.issued_at, now);
    assert_eq!(access.expires_at, now + 900);

    let refresh = app.introspect(&pair.refresh_token).await;
    assert!(refresh.active);
    assert_eq!(refresh.token_type, "refresh_token");
    assert_eq!(refresh.subject, "alice");
    assert_eq!(refresh.scopes, ["read", "write"]);
    assert_eq!(refresh.client_id, "web");
    assert_eq!(refresh.family_id, pair.family_id);
    assert_eq!(refresh.issued_at, now);
    assert_eq!(refresh.expires_at, pair.refresh_expires_at);
    assert!(refresh.jti.is_empty());

    // The hint is only a hint.
    let hinted = app
        .client
        .clone()
        .introspect(IntrospectRequest {
            token: pair.access_token.clone(),
            token_type_hint: "refresh_token".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(hinted.active);
    app.stop().await;
}

async fn access_tokens_are_inactive_from_their_exp_second_on(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let pair = app.issue("alice").await;
    app.advance(Duration::seconds(899));
    assert!(app.introspect(&pair.access_token).await.active);
    app.advance(Duration::seconds(1));
    assert_eq!(
        app.introspect(&pair.access_token).await,
        IntrospectResponse::default(),
        "no leeway on exp"
    );
    app.stop().await;
}

async fn future_nbf_is_tolerated_only_within_the_leeway(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let pair = app.issue("alice").await;
    // A verifier whose clock is behind ours sees the token's nbf/iat in its future.
    app.advance(-Duration::seconds(5));
    assert!(
        app.introspect(&pair.access_token).await.active,
        "5 s of skew is tolerated"
    );
    app.advance(-Duration::seconds(1));
    assert!(!app.introspect(&pair.access_token).await.active, "6 s is not");
    app.stop().await;
}

fn b64(json: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
}

async fn garbage_forged_tampered_and_alg_none_tokens_are_inactive_not_errors(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let pair = app.issue("alice").await;
    let parts: Vec<&str> = pair.access_token.split('.').collect();
    let mut claims = jwt_part(&pair.access_token, 1);
    claims["sub"] = "mallory".into();
    let header = jwt_part(&pair.access_token, 0);

    // A token signed by a key of the same kind that is not ours, with our kid.
    let other = ratchet::keys::Keyring::generate().unwrap();
    let forged_claims: ratchet::keys::AccessClaims = serde_json::from_value(claims.clone()).unwrap();
    let forged = other.sign(&forged_claims).unwrap();
    let forged_parts: Vec<&str> = forged.split('.').collect();
    let forged_with_our_kid = format!("{}.{}.{}", parts[0], forged_parts[1], forged_parts[2]);

    let mut hs256 = header.clone();
    hs256["alg"] = "HS256".into();
    let mut none = header.clone();
    none["alg"] = "none".into();
    let mut jwt_typ = header.clone();
    jwt_typ["typ"] = "JWT".into();

    for bad in [
        "garbage".to_string(),
        "a.b.c".to_string(),
        pair.access_token[..pair.access_token.len() - 5].to_string(),
        format!("{}.{}.{}", parts[0], b64(&claims), parts[2]),
        format!("{}.{}.", b64(&none), b64(&claims)),
        format!("{}.{}.{}", b64(&none), parts[1], parts[2]),
        format!("{}.{}.{}", b64(&hs256), parts[1], parts[2]),
        format!("{}.{}.{}", b64(&jwt_typ), parts[1], parts[2]),
        forged,
        forged_with_our_kid,
        format!("{}x", pair.refresh_token),
        "rt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string(),
    ] {
        let answer = app.introspect(&bad).await;
        assert_eq!(answer, IntrospectResponse::default(), "{bad}");
    }
    assert!(app.introspect(&pair.access_token).await.active);
    app.stop().await;
}

async fn an_empty_token_is_invalid_argument(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let status = app
        .client
        .clone()
        .introspect(IntrospectRequest::default())
        .await
        .unwrap_err();
    assert_invalid_argument(&status, "token");
    app.stop().await;
}

on_every_backend!(
    a_fresh_access_token_introspects_active_with_every_field,
    access_tokens_are_inactive_from_their_exp_second_on,
    future_nbf_is_tolerated_only_within_the_leeway,
    garbage_forged_tampered_and_alg_none_tokens_are_inactive_not_errors,
    an_empty_token_is_invalid_argument,
);
