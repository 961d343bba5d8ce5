use ratchet::grpc::pb::{IssueRequest, ListSessionsRequest, RevokeRequest, Session, revoke_request::Target};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use time::Duration;

use crate::helpers::{TestApp, assert_invalid_argument, spawn_app_with, test_policy};

async fn sessions(app: &TestApp, subject: &str) -> Vec<Session> {
    app.client
        .clone()
        .list_sessions(ListSessionsRequest {
            subject: subject.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .sessions
}

#[sqlx::test]
async fn list_sessions_shows_live_families_newest_first(_pool: PgPoolOptions, options: PgConnectOptions) {
    let policy = ratchet::issuer::Policy {
        refresh_ttl: Duration::hours(1),
        ..test_policy()
    };
    let app = spawn_app_with(options, policy).await;
    let start = app.now().unix_timestamp();
    let old = app.issue("alice").await; // will idle-expire
    app.advance(Duration::minutes(30));
    let revoked = app.issue("alice").await;
    app.advance(Duration::minutes(1));
    let phone = app
        .client
        .clone()
        .issue(IssueRequest {
            subject: "alice".into(),
            client_id: "phone".into(),
            scopes: vec!["read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    app.issue("bob").await;
    app.client
        .clone()
        .revoke(RevokeRequest {
            target: Some(Target::FamilyId(revoked.family_id.clone())),
        })
        .await
        .unwrap();
    app.advance(Duration::minutes(10));
    app.rotate(&phone.refresh_token).await.unwrap();
    let listed = sessions(&app, "alice").await;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].family_id, phone.family_id);
    assert_eq!(listed[0].client_id, "phone");
    assert_eq!(listed[0].scopes, ["read"]);
    assert_eq!(listed[0].created_at, start + 31 * 60);
    assert_eq!(listed[0].last_rotated_at, start + 41 * 60);
    assert_eq!(listed[0].idle_expires_at, start + 101 * 60);
    assert_eq!(listed[0].expires_at, start + 31 * 60 + 30 * 86_400);
    assert_eq!(listed[1].family_id, old.family_id);
    assert_eq!(listed[1].last_rotated_at, listed[1].created_at);

    app.advance(Duration::minutes(20)); // the first session is idle past an hour
    let listed = sessions(&app, "alice").await;
    assert_eq!(
        listed.iter().map(|s| s.family_id.as_str()).collect::<Vec<_>>(),
        [phone.family_id.as_str()]
    );
    assert!(sessions(&app, "nobody").await.is_empty());
    app.stop().await;
}

#[sqlx::test]
async fn list_sessions_needs_a_subject_without_control_characters(_pool: PgPoolOptions, options: PgConnectOptions) {
    let app = spawn_app_with(options, test_policy()).await;
    for subject in ["", "alice\u{0}"] {
        let status = app
            .client
            .clone()
            .list_sessions(ListSessionsRequest {
                subject: subject.into(),
            })
            .await
            .unwrap_err();
        assert_invalid_argument(&status, "subject");
    }
    app.stop().await;
}
