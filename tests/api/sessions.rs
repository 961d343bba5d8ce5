use ratchet::grpc::pb::{IssueRequest, ListSessionsRequest, Session};
use time::Duration;

use ratchet::grpc::status::reason;
use tonic::Status;

use crate::support::{Db, TestApp, assert_invalid_argument, assert_token_error, on_every_backend, test_policy};

async fn list_sessions_shows_live_families_newest_first(db: Db) {
    let policy = ratchet::issuer::Policy {
        refresh_ttl: Duration::hours(1),
        ..test_policy()
    };
    let app = TestApp::builder(db).policy(policy).spawn().await;
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
    app.revoke_family(&revoked.family_id).await;
    app.advance(Duration::minutes(10));
    app.rotate(&phone.refresh_token).await.unwrap();
    let listed = app.sessions("alice").await;
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
    let listed = app.sessions("alice").await;
    assert_eq!(
        listed.iter().map(|s| s.family_id.as_str()).collect::<Vec<_>>(),
        [phone.family_id.as_str()]
    );
    assert!(app.sessions("nobody").await.is_empty());
    app.stop().await;
}

async fn list_sessions_needs_a_subject_without_control_characters(db: Db) {
    let app = TestApp::builder(db).policy(test_policy()).spawn().await;
    for subject in ["", "alice\u{0}"] {
        let status = app
            .client
            .clone()
            .list_sessions(ListSessionsRequest {
                subject: subject.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_invalid_argument(&status, "subject");
    }
    app.stop().await;
}

async fn page(
    app: &TestApp,
    subject: &str,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<Session>, String), Status> {
    app.client
        .clone()
        .list_sessions(ListSessionsRequest {
            subject: subject.into(),
            page_size,
            page_token: page_token.into(),
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            (r.sessions, r.next_page_token)
        })
}

async fn sessions_come_in_pages_that_walk_the_whole_list_once(db: Db) {
    let app = TestApp::builder(db).policy(test_policy()).spawn().await;
    let mut issued = Vec::new();
    for _ in 0..7 {
        issued.push(app.issue("alice").await.family_id);
        app.advance(Duration::seconds(1));
    }
    issued.reverse(); // newest first
    let (first, token) = page(&app, "alice", 3, "").await.unwrap();
    assert_eq!(first.len(), 3);
    assert!(!token.is_empty());
    // A session created meanwhile does not disturb the walk.
    app.issue("alice").await;
    let (second, token) = page(&app, "alice", 3, &token).await.unwrap();
    let (third, token) = page(&app, "alice", 3, &token).await.unwrap();
    assert_eq!(third.len(), 1);
    assert!(token.is_empty(), "the last page has no next page token");
    let walked: Vec<_> = first
        .iter()
        .chain(&second)
        .chain(&third)
        .map(|s| s.family_id.clone())
        .collect();
    assert_eq!(walked, issued);
    // No size: the default, 50; a huge size is lowered, not refused.
    assert_eq!(page(&app, "alice", 0, "").await.unwrap().0.len(), 8);
    assert_eq!(page(&app, "alice", 1_000_000, "").await.unwrap().0.len(), 8);
    app.stop().await;
}

async fn a_negative_page_size_or_a_foreign_page_token_is_invalid_argument(db: Db) {
    let app = TestApp::builder(db).policy(test_policy()).spawn().await;
    for _ in 0..3 {
        app.issue("alice").await;
        app.issue("bob").await;
    }
    assert_invalid_argument(&page(&app, "alice", -1, "").await.unwrap_err(), "page_size");
    let (_, alices) = page(&app, "alice", 1, "").await.unwrap();
    // Another subject's token, a token we never handed out, a tampered one.
    let mut tampered = alices.clone().into_bytes();
    tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
    for bad in [alices.clone(), "garbage".into(), String::from_utf8(tampered).unwrap()] {
        let subject = if bad == alices { "bob" } else { "alice" };
        assert_invalid_argument(&page(&app, subject, 1, &bad).await.unwrap_err(), "page_token");
    }
    assert_eq!(page(&app, "alice", 5, &alices).await.unwrap().0.len(), 2);
    app.stop().await;
}

async fn beyond_the_sessions_cap_issue_revokes_the_oldest_session_of_that_client(db: Db) {
    let policy = ratchet::issuer::Policy {
        max_sessions: 3,
        ..test_policy()
    };
    let app = TestApp::builder(db).policy(policy).spawn().await;
    let phone = app
        .client
        .clone()
        .issue(IssueRequest {
            subject: "alice".into(),
            client_id: "phone".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut web = Vec::new();
    for _ in 0..4 {
        app.advance(Duration::seconds(1));
        web.push(app.issue("alice").await);
    }
    // The oldest web session went; the others and the phone's stay.
    assert!(!app.introspect(&web[0].access_token).await.active);
    assert_token_error(
        &app.rotate(&web[0].refresh_token).await.unwrap_err(),
        reason::TOKEN_REVOKED,
    );
    for pair in web[1..].iter().chain([&phone]) {
        assert!(app.introspect(&pair.access_token).await.active);
    }
    let listed = app.sessions("alice").await;
    assert_eq!(listed.len(), 4);
    assert!(listed.iter().all(|s| s.family_id != web[0].family_id));
    app.stop().await;
}

on_every_backend!(
    list_sessions_shows_live_families_newest_first,
    list_sessions_needs_a_subject_without_control_characters,
    sessions_come_in_pages_that_walk_the_whole_list_once,
    a_negative_page_size_or_a_foreign_page_token_is_invalid_argument,
    beyond_the_sessions_cap_issue_revokes_the_oldest_session_of_that_client,
);
