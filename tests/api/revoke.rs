use ratchet::grpc::pb::{RevokeRequest, revoke_request::Target};
use ratchet::grpc::status::reason;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use time::Duration;

use ratchet::store::postgres::PoolSettings;

use crate::support::{Db, TestApp, assert_invalid_argument, assert_token_error, on_every_backend, test_policy};

async fn revoke(app: &TestApp, target: Target) -> Result<u32, tonic::Status> {
    app.client
        .clone()
        .revoke(RevokeRequest { target: Some(target) })
        .await
        .map(|r| r.into_inner().families_revoked)
}

async fn revoking_by_refresh_token_kills_the_family_and_twice_is_fine(db: Db) {
    let app = TestApp::builder(db).spawn().await;
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

async fn revoking_by_access_token_works_even_after_its_exp(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let pair = app.issue("alice").await;
    app.advance(Duration::hours(1));
    assert_eq!(revoke(&app, Target::Token(pair.access_token.clone())).await.unwrap(), 1);
    assert_token_error(
        &app.rotate(&pair.refresh_token).await.unwrap_err(),
        reason::TOKEN_REVOKED,
    );
    app.stop().await;
}

async fn revoking_by_family_id(db: Db) {
    let app = TestApp::builder(db).spawn().await;
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

async fn revoking_by_subject_ends_every_session_of_that_subject_only(db: Db) {
    let app = TestApp::builder(db).spawn().await;
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

async fn unknown_tokens_revoke_nothing_and_bad_requests_name_the_field(db: Db) {
    let app = TestApp::builder(db).spawn().await;
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

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn revoking_a_subject_with_a_hundred_thousand_sessions_stays_within_the_statement_timeout(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    // Revoking 100k families in one statement takes about two seconds here: past this timeout.
    let settings = PoolSettings {
        max_connections: 4,
        timeout: std::time::Duration::from_secs(1),
    };
    let app = TestApp::builder(options)
        .pool(settings)
        .policy(test_policy())
        .spawn()
        .await;
    let pair = app.issue("mallory").await;
    // Setup only: far more families than the API would let one client keep.
    sqlx::raw_sql(
        "insert into families (id, subject, client_id, scopes, audiences, claims, created_at,
                               last_rotated_at, refresh_expires_at, expires_at)
         select gen_random_uuid(), 'mallory', 'c' || (i % 1000), '{}', '{api}', '{}', f.created_at,
                f.created_at, f.refresh_expires_at, f.expires_at
         from generate_series(1, 100000) i, families f;
         analyze families;",
    )
    .execute(app.db())
    .await
    .unwrap();
    let revoked = app
        .client
        .clone()
        .revoke(RevokeRequest {
            target: Some(Target::Subject("mallory".into())),
        })
        .await
        .unwrap()
        .into_inner()
        .families_revoked;
    assert_eq!(revoked, 100_001);
    assert_token_error(
        &app.rotate(&pair.refresh_token).await.unwrap_err(),
        reason::TOKEN_REVOKED,
    );
    app.stop().await;
}

on_every_backend!(
    revoking_by_refresh_token_kills_the_family_and_twice_is_fine,
    revoking_by_access_token_works_even_after_its_exp,
    revoking_by_family_id,
    revoking_by_subject_ends_every_session_of_that_subject_only,
    unknown_tokens_revoke_nothing_and_bad_requests_name_the_field,
);
