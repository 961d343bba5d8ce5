//! The database going away: callers get UNAVAILABLE quickly, health says NOT_SERVING, nothing
//! hangs, and nothing stored is lost or corrupted when it comes back.
//!
//! Where they run: PostgreSQL only, by nature: a proxy cuts the PostgreSQL connection, or a
//! PL/pgSQL trigger stalls a spend or fails it as a lost SERIALIZABLE race would (an embedded
//! SQLite file neither goes away nor has such conflicts: its writers take the database lock).

use std::time::{Duration, Instant};

use ratchet::store::postgres::{self, PoolSettings};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::TcpListener;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{Proxy, TestApp, test_policy};

fn fast_failing() -> PoolSettings {
    PoolSettings {
        max_connections: 4,
        timeout: Duration::from_secs(1),
    }
}

/// Awaits a call that must fail with UNAVAILABLE, and within `within`.
async fn assert_unavailable_within<T: std::fmt::Debug>(
    within: Duration,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) {
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("no hang")
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < within, "took {:?}", started.elapsed());
}

#[tokio::test]
async fn with_no_database_calls_fail_fast_with_unavailable() {
    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let options = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(closed.port())
        .username("postgres");
    let pool = postgres::pool(options.clone(), &fast_failing());
    let app = TestApp::builder(options)
        .pool(fast_failing())
        .on_pool(pool)
        .policy(test_policy())
        .spawn()
        .await;

    let mut client = app.client.clone();
    let call = client.issue(ratchet::grpc::pb::IssueRequest {
        subject: "alice".into(),
        ..Default::default()
    });
    assert_unavailable_within(Duration::from_secs(5), call).await;
    assert_eq!(app.health().await, ServingStatus::NotServing);
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn losing_the_database_mid_flight_is_unavailable_and_recoverable(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let proxy = Proxy::in_front_of(&options).await;
    let pool = postgres::pool(proxy.route(options.clone()), &fast_failing());
    let app = TestApp::builder(options)
        .pool(fast_failing())
        .on_pool(pool)
        .policy(test_policy())
        .spawn()
        .await;

    let pair = app.issue("alice").await;
    app.wait_for_health(ServingStatus::Serving).await;

    proxy.cut().await;
    // Once the server has noticed (health), and pooled connections idle long enough to be
    // checked before use: nothing can be sent, so every call knows that nothing happened. (A
    // call that finds its connection cut mid-statement cannot know that: see the rotate tests.)
    app.wait_for_health(ServingStatus::NotServing).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        assert_unavailable_within(Duration::from_secs(2), app.rotate(&pair.refresh_token)).await;
    }
    let introspect = app
        .client
        .clone()
        .introspect(ratchet::grpc::pb::IntrospectRequest {
            token: pair.access_token.clone(),
            token_type_hint: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(introspect.code(), Code::Unavailable);
    app.wait_for_health(ServingStatus::NotServing).await;

    proxy.restore().await;
    app.wait_for_health(ServingStatus::Serving).await;
    // The failed attempts spent nothing: the token still rotates, exactly once.
    let next = app.rotate(&pair.refresh_token).await.unwrap();
    assert!(app.introspect(&next.access_token).await.active);
    app.stop().await;
    proxy.cut().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn endless_serialization_conflicts_end_in_unavailable_within_the_timeout_and_spend_nothing(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let app = TestApp::builder(options)
        .pool(fast_failing())
        .policy(test_policy())
        .spawn()
        .await;
    let pair = app.issue("alice").await;
    // Every spend now fails the way a lost SERIALIZABLE race does.
    app.hook_spends("raise exception 'simulated conflict' using errcode = 'serialization_failure';")
        .await;

    // All attempts together stay within the store's timeout (1 s here), plus slack for the call.
    assert_unavailable_within(Duration::from_secs(3), app.rotate(&pair.refresh_token)).await;

    app.unhook_spends().await;
    // Nothing was spent by the failed attempts: the token rotates, exactly once.
    let next = app.rotate(&pair.refresh_token).await.unwrap();
    assert!(app.introspect(&next.access_token).await.active);
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_caller_that_gives_up_mid_rotation_gets_the_missed_pair_on_retry_within_the_grace_window(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    // One connection: the retry can only run once the abandoned call's connection is back.
    let settings = PoolSettings {
        max_connections: 1,
        timeout: Duration::from_secs(5),
    };
    let policy = ratchet::issuer::Policy {
        reuse_grace: time::Duration::seconds(30),
        ..test_policy()
    };
    let app = TestApp::builder(options).pool(settings).policy(policy).spawn().await;
    let pair = app.issue("alice").await;
    app.hook_spends("perform pg_sleep(0.5); return new;").await;

    let mut request = tonic::Request::new(ratchet::grpc::pb::RotateRequest {
        refresh_token: pair.refresh_token.clone(),
    });
    request.set_timeout(Duration::from_millis(100));
    let status = app.client.clone().rotate(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    app.unhook_spends().await;

    // The abandoned rotation committed in the database; the retry gets its result, every time.
    let retry = tokio::time::timeout(Duration::from_secs(10), app.rotate(&pair.refresh_token))
        .await
        .expect("no hang")
        .unwrap();
    let again = app.rotate(&pair.refresh_token).await.unwrap();
    assert_eq!(retry.refresh_token, again.refresh_token);
    let next = app.rotate(&retry.refresh_token).await.unwrap();
    assert!(app.introspect(&next.access_token).await.active);
    app.stop().await;
}
