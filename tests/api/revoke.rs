use ratchet::grpc::pb::{RevokeRequest, revoke_request::Target};
use ratchet::grpc::status::reason;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use time::Duration;

use crate::helpers::{TestApp, assert_invalid_argument, assert_token_error, spawn_app};

async fn revoke(app: &TestApp, target: Target) -> Result<u32, tonic::Status> {
    app.client
        .clone()
        .revoke(RevokeRequest { target: Some(target) })
        .await
        .map(|r| r.into_inner().families_revoked)
}

#[sqlx::test]
async fn revoking_by_refresh_token_kills_the_family_and_twice_is_fine(_pool: PgPoolOptions, options: PgConnectOptions) {
    let app = spawn_app(options).await;
    let first = app.issue("alice").await;
    let second = app.rotate(&first.refresh_token).await.unwrap();
    // Even a spent token of the family names it.
    assert_eq!(
        revoke(&app, Target::Token(first.refresh_token.clone())).await.unwrap(),
        1
    );
    assert_eq!(
        revoke(&app, Target::Token(second.refresh_token.clone())).await.unwrap(),
        0
    );
    assert!(!app.introspect(&second.access_token).await.active);
    assert_token_error(
        &app.rotate(&second.refresh_token).await.unwrap_err(),
        reason::TOKEN_REVOKED,
    );
    app.stop().await;
}

#[sqlx::test]
async fn revoking_by_access_token_works_even_after_its_exp(_pool: PgPoolOptions, options: PgConnectOptions) {
    let app = spawn_app(options).await;
    let pair = app.issue("alice").await;
    app.advance(Duration::hours(1));
    assert_eq!(revoke(&app, Target::Token(pair.access_token.clone())).await.unwrap(), 1);
    assert_token_error(
        &app.rotate(&pair.refresh_token).await.unwrap_err(),
        reason::TOKEN_REVOKED,
    );
    app.stop().await;
}

#[sqlx::test]
async fn revoking_by_family_id(_pool: PgPoolOptions, options: PgConnectOptions) {
    let app = spawn_app(options).await;
    let pair = app.issue("alice").await;
    let other = app.issue("alice").await;
    assert_eq!(revoke(&app, Target::FamilyId(pair.family_id.clone())).await.unwrap(), 1);
    assert_eq!(revoke(&app, Target::FamilyId(pair.family_id.clone())).await.unwrap(), 0);
    assert!(!app.introspect(&pair.access_token).await.active);
    assert!(!app.introspect(&pair.refresh_token).await.active);
    assert!(app.introspect(&other.access_token).await.active);
    assert_eq!(
        revoke(&app, Target::FamilyId(uuid::Uuid::new_v4().to_string()))
            .await
            .unwrap(),
        0
    );
    app.stop().await;
}

#[sqlx::test]
async fn revoking_by_subject_ends_every_session_of_that_subject_only(_pool: PgPoolOptions, options: PgConnectOptions) {
    let app = spawn_app(options).await;
    let a1 = app.issue("alice").await;
    let a2 = app.issue("alice").await;
    let b = app.issue("bob").await;
    assert_eq!(revoke(&app, Target::Subject("alice".into())).await.unwrap(), 2);
    assert_eq!(revoke(&app, Target::Subject("alice".into())).await.unwrap(), 0);
    for pair in [&a1, &a2] {
        assert!(!app.introspect(&pair.access_token).await.active);
        assert_token_error(
            &app.rotate(&pair.refresh_token).await.unwrap_err(),
            reason::TOKEN_REVOKED,
        );
    }
    assert!(app.introspect(&b.access_token).await.active);
    app.stop().await;
}

#[sqlx::test]
async fn unknown_tokens_revoke_nothing_and_bad_requests_name_the_field(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let app = spawn_app(options).await;
    assert_eq!(revoke(&app, Target::Token("garbage".into())).await.unwrap(), 0);
    assert_eq!(
        revoke(
            &app,
            Target::Token("rt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into())
        )
        .await
        .unwrap(),
        0
    );
    let empty = app
        .client
        .clone()
        .revoke(RevokeRequest { target: None })
        .await
        .unwrap_err();
    assert_invalid_argument(&empty, "target");
    assert_invalid_argument(
        &revoke(&app, Target::FamilyId("not-a-uuid".into())).await.unwrap_err(),
        "family_id",
    );
    assert_invalid_argument(
        &revoke(&app, Target::Subject(String::new())).await.unwrap_err(),
        "subject",
    );
    assert_invalid_argument(
        &revoke(&app, Target::Subject("alice\u{0}".into())).await.unwrap_err(),
        "subject",
    );
    assert_invalid_argument(&revoke(&app, Target::Token(String::new())).await.unwrap_err(), "token");
    app.stop().await;
}
