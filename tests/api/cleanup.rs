//! Storage stays bounded: the cleanup pass (what `serve` runs in the background and `ratchet gc`
//! by hand) deletes families that ended more than the retention ago, with their tokens, and
//! clears seals whose grace window is over; live families and their history stay. Servers
//! sharing a PostgreSQL database take turns at it.

use ratchet::grpc::status::reason;
use ratchet::issuer::cleanup::{CleanupReport, CleanupSettings};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use time::Duration;
use tonic_types::StatusExt as _;

use crate::support::{Db, TestApp, assert_token_error, on_every_backend, test_cleanup, test_policy};

fn retention(retention: Duration) -> CleanupSettings {
    CleanupSettings {
        retention,
        ..test_cleanup()
    }
}

async fn cleanup_removes_families_that_ended_and_keeps_live_ones_rotating(db: Db) {
    let policy = ratchet::issuer::Policy {
        refresh_ttl: Duration::hours(1),
        ..test_policy()
    };
    let app = TestApp::builder(db).policy(policy).spawn().await;
    let settings = retention(Duration::hours(1));
    // Idle-expires an hour after its one rotation: two tokens.
    let idle = app.issue("alice").await;
    let idle = app.rotate(&idle.refresh_token).await.unwrap();
    // Revoked at once: one token.
    let revoked = app.issue("bob").await;
    app.revoke_family(&revoked.family_id).await;
    // Kept alive by rotating every 50 minutes.
    let live = app.issue("carol").await;
    let mut current = live.clone();
    for _ in 0..4 {
        app.advance(Duration::minutes(50));
        current = app.rotate(&current.refresh_token).await.unwrap();
    }
    // 200 minutes on: both ended more than the retention (an hour) ago. Still there, they are
    // answered with their reasons.
    assert_token_error(
        &app.rotate(&idle.refresh_token).await.unwrap_err(),
        reason::TOKEN_EXPIRED,
    );
    assert_token_error(
        &app.rotate(&revoked.refresh_token).await.unwrap_err(),
        reason::TOKEN_REVOKED,
    );

    let report = app.collect_garbage(&settings).await;
    assert_eq!(
        report,
        CleanupReport {
            families: 2,
            tokens: 3,
            seals: 0,
            // Kept for --audit-retention (90 days), far longer than these 200 minutes.
            events: 0,
            skipped: false,
        }
    );
    // Gone: nothing is known about them any more.
    for gone in [&idle.refresh_token, &revoked.refresh_token] {
        assert_token_error(&app.rotate(gone).await.unwrap_err(), reason::TOKEN_INVALID);
    }
    // The live family still rotates, and its spent tokens are still there to catch a replay.
    let next = app.rotate(&current.refresh_token).await.unwrap();
    assert!(app.introspect(&next.access_token).await.active);
    assert_eq!(app.collect_garbage(&settings).await, CleanupReport::default());
    assert_token_error(
        &app.rotate(&live.refresh_token).await.unwrap_err(),
        reason::TOKEN_REUSED,
    );
    app.stop().await;
}

async fn a_family_that_ended_within_the_retention_is_kept(db: Db) {
    let app = TestApp::builder(db).policy(test_policy()).spawn().await;
    let pair = app.issue("alice").await;
    let next = app.rotate(&pair.refresh_token).await.unwrap();
    // Reuse revokes the family; a day's retention keeps the evidence.
    app.rotate(&pair.refresh_token).await.unwrap_err();
    app.advance(Duration::hours(23));
    assert_eq!(app.collect_garbage(&test_cleanup()).await, CleanupReport::default());
    assert_token_error(
        &app.rotate(&pair.refresh_token).await.unwrap_err(),
        reason::TOKEN_REUSED,
    );
    app.advance(Duration::hours(2));
    let report = app.collect_garbage(&test_cleanup()).await;
    assert_eq!((report.families, report.tokens), (1, 2));
    assert_token_error(
        &app.rotate(&next.refresh_token).await.unwrap_err(),
        reason::TOKEN_INVALID,
    );
    app.stop().await;
}

async fn cleanup_goes_in_small_batches_through_long_chains_and_sweeps_for_idle_ones(db: Db) {
    let app = TestApp::builder(db).policy(test_policy()).spawn().await;
    let mut chains = Vec::new();
    for i in 0..5 {
        let mut pair = app.issue(&format!("user{i}")).await;
        for _ in 0..3 {
            pair = app.rotate(&pair.refresh_token).await.unwrap();
        }
        chains.push(pair);
    }
    for pair in &chains {
        app.revoke_family(&pair.family_id).await;
    }
    // Three more that only idle-expire (within the family's lifetime): found by the sweep, which
    // goes two families at a time here too.
    for i in 0..3 {
        let pair = app.issue(&format!("idle{i}")).await;
        app.rotate(&pair.refresh_token).await.unwrap();
    }
    app.advance(Duration::days(9));
    let settings = CleanupSettings {
        batch: 2,
        ..test_cleanup()
    };
    let report = app.collect_garbage(&settings).await;
    assert_eq!((report.families, report.tokens), (8, 26));
    app.stop().await;
}

async fn seals_left_over_after_the_grace_window_are_cleared(db: Db) {
    let policy = ratchet::issuer::Policy {
        reuse_grace: Duration::seconds(60),
        ..test_policy()
    };
    let app = TestApp::builder(db).policy(policy).spawn().await;
    let pair = app.issue("alice").await;
    let next = app.rotate(&pair.refresh_token).await.unwrap();
    // Within the longest possible window (10 minutes) the seal stays ...
    app.advance(Duration::minutes(9));
    assert_eq!(app.collect_garbage(&test_cleanup()).await.seals, 0);
    // ... after it, it goes; the successor itself is untouched.
    app.advance(Duration::minutes(2));
    assert_eq!(app.collect_garbage(&test_cleanup()).await.seals, 1);
    app.rotate(&next.refresh_token).await.unwrap();
    app.stop().await;
}

/// Two replicas cleaning every 20 ms; a third party (standing in for a replica mid-sweep) holds
/// the sweep lock: neither replica removes anything until it lets go, then one of them does.
#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn replicas_take_turns_at_cleanup_and_skip_while_another_sweeps(
    _pool: sqlx::postgres::PgPoolOptions,
    options: PgConnectOptions,
) {
    let background = |parts: &mut ratchet::startup::Parts| {
        parts.settings.cleanup_interval = std::time::Duration::from_millis(20);
    };
    let a = TestApp::builder(options.clone()).adjust(background).spawn().await;
    let b = a.replica().adjust(background).spawn().await;
    let mut sweeper = PgConnection::connect_with(&options).await.unwrap();
    // The replicas already take turns every 20 ms, each holding the lock for a pass over an
    // empty database: a moment when neither holds it comes within milliseconds.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (taken,): (bool,) = sqlx::query_as("select pg_try_advisory_lock($1)")
            .bind(ratchet::store::postgres::SWEEP_LOCK_KEY)
            .fetch_one(&mut sweeper)
            .await
            .unwrap();
        if taken {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a replica held the sweep lock for 5 s over an empty database"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }

    let pair = a.issue("alice").await;
    a.revoke_family(&pair.family_id).await;
    // Two days on for both (each has its own clock): past the day's retention.
    a.advance(Duration::days(2));
    b.advance(Duration::days(2));
    // Many rounds of both replicas: all skipped, the family is still there.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for app in [&a, &b] {
        assert_token_error(
            &app.rotate(&pair.refresh_token).await.unwrap_err(),
            reason::TOKEN_REVOKED,
        );
    }

    let (released,): (bool,) = sqlx::query_as("select pg_advisory_unlock($1)")
        .bind(ratchet::store::postgres::SWEEP_LOCK_KEY)
        .fetch_one(&mut sweeper)
        .await
        .unwrap();
    assert!(released);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let error = a.rotate(&pair.refresh_token).await.unwrap_err();
        if error
            .get_details_error_info()
            .is_some_and(|info| info.reason == reason::TOKEN_INVALID)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no replica swept after the lock was let go"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    sweeper.close().await.unwrap();
    b.stop().await;
    a.stop().await;
}

on_every_backend!(
    cleanup_removes_families_that_ended_and_keeps_live_ones_rotating,
    a_family_that_ended_within_the_retention_is_kept,
    cleanup_goes_in_small_batches_through_long_chains_and_sweeps_for_idle_ones,
    seals_left_over_after_the_grace_window_are_cleared,
);
