use std::collections::HashSet;

use futures::future::join_all;
use ratchet::grpc::status::reason;
use time::Duration;

use crate::support::{Db, TestApp, assert_invalid_argument, assert_token_error, on_every_backend, test_policy};

async fn rotation_spends_the_old_token_and_the_new_pair_works(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let first = app.issue("alice").await;
    app.advance(Duration::minutes(1));
    let second = app.rotate(&first.refresh_token).await.unwrap();

    assert_eq!(second.family_id, first.family_id);
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    assert_eq!(
        second.refresh_expires_at,
        (app.now() + Duration::days(7)).unix_timestamp()
    );
    let old = app.introspect(&first.refresh_token).await;
    assert!(!old.active, "a spent refresh token is inactive");
    let new = app.introspect(&second.refresh_token).await;
    assert!(new.active);
    assert_eq!(new.token_type, "refresh_token");
    assert!(app.introspect(&second.access_token).await.active);

    let third = app.rotate(&second.refresh_token).await.unwrap();
    assert_eq!(third.family_id, first.family_id);
    app.stop().await;
}

async fn reused_refresh_token_revokes_the_whole_family(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let first = app.issue("alice").await;
    let second = app.rotate(&first.refresh_token).await.unwrap();
    let other_session = app.issue("alice").await;

    let status = app.rotate(&first.refresh_token).await.unwrap_err();
    assert_token_error(&status, reason::TOKEN_REUSED);

    // Every token of the family is dead, access tokens included ...
    assert_token_error(
        &app.rotate(&second.refresh_token).await.unwrap_err(),
        reason::TOKEN_REVOKED,
    );
    assert!(!app.introspect(&second.access_token).await.active);
    assert!(!app.introspect(&first.access_token).await.active);
    assert!(!app.introspect(&second.refresh_token).await.active);
    // ... and the revocation was committed, not rolled back with the error.
    assert_eq!(app.revoked_reason(&first.family_id).await.as_deref(), Some("reuse"));
    // Other sessions of the same subject are untouched.
    assert!(app.introspect(&other_session.access_token).await.active);
    app.rotate(&other_session.refresh_token).await.unwrap();
    app.stop().await;
}

async fn sixty_four_concurrent_rotations_of_one_token_let_exactly_one_win(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let pair = app.issue("alice").await;
    let attempts = (0..64).map(|_| {
        let app = &app;
        let token = pair.refresh_token.clone();
        async move { app.rotate(&token).await }
    });
    let results = join_all(attempts).await;

    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one rotation succeeds");
    for status in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_token_error(status, reason::TOKEN_REUSED);
    }
    // Theft was detected, so the winner's tokens died with the family.
    assert!(!app.introspect(&winners[0].refresh_token).await.active);
    assert_eq!(
        app.stored_refresh_tokens(Some(&pair.family_id)).await,
        2,
        "the family never branched"
    );
    app.stop().await;
}

async fn within_the_grace_window_concurrent_retries_all_get_the_same_refresh_token(db: Db) {
    let app = TestApp::builder(db).reuse_grace(Duration::seconds(30)).spawn().await;
    let pair = app.issue("alice").await;
    let attempts = (0..64).map(|_| {
        let app = &app;
        let token = pair.refresh_token.clone();
        async move { app.rotate(&token).await }
    });
    let results = join_all(attempts).await;
    let successes: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(
        successes.len(),
        64,
        "{:?}",
        results.iter().find_map(|r| r.as_ref().err())
    );
    let refresh: HashSet<_> = successes.iter().map(|p| p.refresh_token.as_str()).collect();
    assert_eq!(refresh.len(), 1, "every answer carries the same refresh token");
    let access: HashSet<_> = successes.iter().map(|p| p.access_token.as_str()).collect();
    assert_eq!(access.len(), 64, "each answer has its own access token (own jti)");

    // The family never branched and the successor is live.
    let next = successes[0].refresh_token.clone();
    assert!(app.introspect(&next).await.active);
    assert_eq!(app.stored_refresh_tokens(None).await, 2);
    app.stop().await;
}

async fn a_retry_after_the_grace_window_is_reuse(db: Db) {
    let app = TestApp::builder(db).reuse_grace(Duration::seconds(10)).spawn().await;
    let first = app.issue("alice").await;
    let second = app.rotate(&first.refresh_token).await.unwrap();
    app.advance(Duration::seconds(9));
    let retried = app.rotate(&first.refresh_token).await.unwrap();
    assert_eq!(retried.refresh_token, second.refresh_token);
    assert_eq!(retried.refresh_expires_at, second.refresh_expires_at);
    app.advance(Duration::seconds(1));
    assert_token_error(
        &app.rotate(&first.refresh_token).await.unwrap_err(),
        reason::TOKEN_REUSED,
    );
    assert_token_error(
        &app.rotate(&second.refresh_token).await.unwrap_err(),
        reason::TOKEN_REVOKED,
    );
    app.stop().await;
}

async fn a_retry_after_the_successor_was_used_is_reuse_even_within_the_grace_window(db: Db) {
    let app = TestApp::builder(db).reuse_grace(Duration::seconds(60)).spawn().await;
    let first = app.issue("alice").await;
    let second = app.rotate(&first.refresh_token).await.unwrap();
    let third = app.rotate(&second.refresh_token).await.unwrap();
    assert_token_error(
        &app.rotate(&first.refresh_token).await.unwrap_err(),
        reason::TOKEN_REUSED,
    );
    assert!(!app.introspect(&third.refresh_token).await.active);
    app.stop().await;
}

async fn refresh_tokens_expire_after_the_idle_lifetime(db: Db) {
    let app = TestApp::builder(db)
        .policy(ratchet::issuer::Policy {
            refresh_ttl: Duration::hours(1),
            ..test_policy()
        })
        .spawn()
        .await;
    let first = app.issue("alice").await;
    app.advance(Duration::minutes(59));
    let second = app.rotate(&first.refresh_token).await.unwrap();
    // A rotation restarts the idle clock.
    app.advance(Duration::minutes(59));
    let third = app.rotate(&second.refresh_token).await.unwrap();
    app.advance(Duration::hours(1));
    assert!(!app.introspect(&third.refresh_token).await.active);
    assert_token_error(
        &app.rotate(&third.refresh_token).await.unwrap_err(),
        reason::TOKEN_EXPIRED,
    );
    app.stop().await;
}

async fn no_rotation_outlives_the_family(db: Db) {
    let policy = ratchet::issuer::Policy {
        refresh_ttl: Duration::hours(1),
        family_ttl: Duration::minutes(90),
        access_ttl: Duration::minutes(15),
        ..test_policy()
    };
    let app = TestApp::builder(db).policy(policy).spawn().await;
    let issued_at = app.now();
    let first = app.issue("alice").await;
    let family_end = (issued_at + Duration::minutes(90)).unix_timestamp();
    app.advance(Duration::minutes(50));
    let second = app.rotate(&first.refresh_token).await.unwrap();
    // The new refresh token is capped at the family's end ...
    assert_eq!(second.refresh_expires_at, family_end);
    assert_eq!(second.expires_in, 15 * 60);
    app.advance(Duration::minutes(30));
    let second = app.rotate(&second.refresh_token).await.unwrap();
    // ... and so is the access token.
    assert_eq!(second.refresh_expires_at, family_end);
    assert_eq!(second.expires_in, 10 * 60);
    app.advance(Duration::minutes(10));
    assert_token_error(
        &app.rotate(&second.refresh_token).await.unwrap_err(),
        reason::TOKEN_EXPIRED,
    );
    assert!(!app.introspect(&second.access_token).await.active);
    app.stop().await;
}

async fn garbage_truncated_and_tampered_refresh_tokens_are_invalid(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let pair = app.issue("alice").await;
    let token = pair.refresh_token.clone();
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [
        "garbage".to_string(),
        token[..token.len() - 1].to_string(),
        tampered,
        format!("{token}x"),
        "rt_".to_string(),
        pair.access_token.clone(),
        "\u{0}\u{1}".to_string(),
    ] {
        let status = app.rotate(&bad).await.unwrap_err();
        assert_token_error(&status, reason::TOKEN_INVALID);
    }
    // None of that disturbed the real token.
    app.rotate(&token).await.unwrap();
    app.stop().await;
}

async fn an_empty_or_huge_refresh_token_is_invalid_argument(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    assert_invalid_argument(&app.rotate("").await.unwrap_err(), "refresh_token");
    let huge = app.rotate(&"x".repeat(100_000)).await.unwrap_err();
    assert_invalid_argument(&huge, "refresh_token");
    app.stop().await;
}

on_every_backend!(
    rotation_spends_the_old_token_and_the_new_pair_works,
    reused_refresh_token_revokes_the_whole_family,
    sixty_four_concurrent_rotations_of_one_token_let_exactly_one_win,
    within_the_grace_window_concurrent_retries_all_get_the_same_refresh_token,
    a_retry_after_the_grace_window_is_reuse,
    a_retry_after_the_successor_was_used_is_reuse_even_within_the_grace_window,
    refresh_tokens_expire_after_the_idle_lifetime,
    no_rotation_outlives_the_family,
    garbage_truncated_and_tampered_refresh_tokens_are_invalid,
    an_empty_or_huge_refresh_token_is_invalid_argument,
);
