//! Revocation reaches every replica (issue 8): two servers on one database, each with its own
//! family cache and a cache TTL of an hour, so that only the revocation listener can explain B
//! seeing a revocation made through A within a second. Every way a family gets revoked is
//! covered, and so is a listener whose connection is cut while a revocation happens.
//!
//! Where they run: PostgreSQL only, by nature: two servers on one database and the LISTEN/NOTIFY
//! revocation listener (SQLite has one serving process and no listener).

use std::time::{Duration, Instant};

use ratchet::grpc::pb::{IssueRequest, RevokeRequest, TokenPair, revoke_request::Target};
use ratchet::issuer::Policy;
use ratchet::store::postgres::revocations::{APPLICATION_NAME, CHANNEL};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use crate::helpers::{TestApp, listen_via, spawn_app_adjusted, test_policy};
use crate::proxy::Proxy;

/// Far longer than any test: a cached "live" never expires by itself here.
const HOUR: Duration = Duration::from_secs(60 * 60);
/// The requirement: another server's revocation shows within this.
const PROPAGATION: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(20);

/// Server A and its replica B, both caching "live" for an hour, B's listener subscribed.
async fn two_servers(options: PgConnectOptions, policy: Policy) -> (TestApp, TestApp) {
    let a = spawn_app_adjusted(options, |parts| {
        parts.settings.family_cache_ttl = HOUR;
        parts.settings.policy = policy.clone();
    })
    .await;
    let b = a
        .spawn_replica(|parts| {
            parts.settings.family_cache_ttl = HOUR;
            parts.settings.policy = policy;
        })
        .await;
    wait_for_listeners(&a, APPLICATION_NAME, 2).await;
    (a, b)
}

/// Waits (at most 10 s) until `count` listener connections named `name` have subscribed (their
/// LISTEN, or a probe after it, is the last statement they ran).
async fn wait_for_listeners(app: &TestApp, name: &str, count: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let subscribed: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and application_name = $1 and state = 'idle'
               and (query like 'LISTEN%' or query = 'select 1')",
        )
        .bind(name)
        .fetch_one(app.db())
        .await
        .unwrap();
        if subscribed >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{count} listeners named {name} never subscribed"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// B knows the family of `pair` live (and has cached that).
async fn cached_live(b: &TestApp, pair: &TokenPair) {
    for _ in 0..2 {
        assert!(
            b.introspect(&pair.access_token).await.active,
            "live before the revocation"
        );
    }
}

/// Polls B's Introspect of `access_token` every 20 ms until it says inactive; fails if that
/// takes longer than `within`.
async fn inactive_within(b: &TestApp, access_token: &str, within: Duration, what: &str) {
    let start = Instant::now();
    loop {
        if !b.introspect(access_token).await.active {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{what}: B still says active {within:?} after the revocation"
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn revoke(app: &TestApp, target: Target) -> u32 {
    app.client
        .clone()
        .revoke(RevokeRequest { target: Some(target) })
        .await
        .expect("revoke")
        .into_inner()
        .families_revoked
}

async fn stop(a: TestApp, b: TestApp) {
    b.stop().await;
    a.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_family_revoked_by_id_on_one_server_is_inactive_on_another_within_a_second(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let (a, b) = two_servers(options, test_policy()).await;
    let pair = a.issue("alice").await;
    cached_live(&b, &pair).await;
    assert_eq!(revoke(&a, Target::FamilyId(pair.family_id.clone())).await, 1);
    inactive_within(&b, &pair.access_token, PROPAGATION, "by family id").await;
    stop(a, b).await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_family_revoked_by_refresh_or_access_token_on_one_server_is_inactive_on_another_within_a_second(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let (a, b) = two_servers(options, test_policy()).await;
    let by_refresh = a.issue("alice").await;
    let by_access = a.issue("bob").await;
    cached_live(&b, &by_refresh).await;
    cached_live(&b, &by_access).await;
    assert_eq!(revoke(&a, Target::Token(by_refresh.refresh_token.clone())).await, 1);
    inactive_within(&b, &by_refresh.access_token, PROPAGATION, "by refresh token").await;
    assert_eq!(revoke(&a, Target::Token(by_access.access_token.clone())).await, 1);
    inactive_within(&b, &by_access.access_token, PROPAGATION, "by access token").await;
    stop(a, b).await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_subject_revoked_on_one_server_is_inactive_on_another_within_a_second(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let (a, b) = two_servers(options, test_policy()).await;
    let first = a.issue("alice").await;
    let second = a.issue("alice").await;
    let other = a.issue("bob").await;
    for pair in [&first, &second, &other] {
        cached_live(&b, pair).await;
    }
    assert_eq!(revoke(&a, Target::Subject("alice".into())).await, 2);
    inactive_within(&b, &first.access_token, PROPAGATION, "by subject").await;
    inactive_within(&b, &second.access_token, PROPAGATION, "by subject").await;
    assert!(
        b.introspect(&other.access_token).await.active,
        "another subject's family"
    );
    stop(a, b).await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_family_revoked_for_refresh_token_reuse_on_one_server_is_inactive_on_another_within_a_second(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let (a, b) = two_servers(options, test_policy()).await;
    let first = a.issue("alice").await;
    let second = a.rotate(&first.refresh_token).await.unwrap();
    cached_live(&b, &second).await;
    // The spent token again: theft, the family goes.
    a.rotate(&first.refresh_token).await.unwrap_err();
    inactive_within(&b, &second.access_token, PROPAGATION, "reuse").await;
    stop(a, b).await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_family_evicted_by_the_sessions_cap_on_one_server_is_inactive_on_another_within_a_second(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let policy = Policy {
        max_sessions: 1,
        ..test_policy()
    };
    let (a, b) = two_servers(options, policy).await;
    let oldest = a.issue("alice").await;
    cached_live(&b, &oldest).await;
    let newest = a.issue("alice").await;
    inactive_within(&b, &oldest.access_token, PROPAGATION, "sessions cap").await;
    assert!(b.introspect(&newest.access_token).await.active);
    stop(a, b).await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_family_revoked_by_hand_in_sql_is_inactive_on_every_server_within_a_second(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let (a, b) = two_servers(options, test_policy()).await;
    let pair = a.issue("alice").await;
    cached_live(&a, &pair).await;
    cached_live(&b, &pair).await;
    sqlx::query("update families set revoked_at = now(), revoked_reason = 'revoke' where id = $1::uuid")
        .bind(&pair.family_id)
        .execute(a.db())
        .await
        .unwrap();
    inactive_within(&a, &pair.access_token, PROPAGATION, "operator's SQL, A").await;
    inactive_within(&b, &pair.access_token, PROPAGATION, "operator's SQL, B").await;
    stop(a, b).await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn rotation_announces_nothing_and_each_revocation_announces_its_family_once(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let a = spawn_app_adjusted(options, |_| {}).await;
    let mut listener = PgListener::connect_with(a.db()).await.unwrap();
    listener.listen(CHANNEL).await.unwrap();
    let pair = a.issue("alice").await;
    let mut refresh = pair.refresh_token.clone();
    for _ in 0..5 {
        refresh = a.rotate(&refresh).await.unwrap().refresh_token;
    }
    assert_eq!(revoke(&a, Target::FamilyId(pair.family_id.clone())).await, 1);
    // Revoking it again changes nothing, so it announces nothing.
    assert_eq!(revoke(&a, Target::FamilyId(pair.family_id.clone())).await, 0);
    let other = a
        .client
        .clone()
        .issue(IssueRequest {
            subject: "bob".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoke(&a, Target::FamilyId(other.family_id.clone())).await, 1);
    // Notifications arrive in commit order: anything the rotations or the second revocation
    // had announced would come between these two.
    let mut received = Vec::new();
    while received.len() < 2 {
        let notification = tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .expect("a notification")
            .unwrap();
        received.push(notification.payload().to_owned());
    }
    assert_eq!(received, [pair.family_id, other.family_id]);
    drop(listener);
    a.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_revocation_while_the_listener_is_cut_off_is_seen_as_soon_as_it_is_back(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    // B's listener reaches PostgreSQL through a proxy that the test cuts; its pool does not.
    let proxy = Proxy::in_front_of(&options).await;
    let a = spawn_app_adjusted(options.clone(), |parts| parts.settings.family_cache_ttl = HOUR).await;
    let b = a
        .spawn_replica(|parts| {
            parts.settings.family_cache_ttl = HOUR;
            listen_via(parts, proxy.route(options.clone()).application_name("listener-of-b"));
        })
        .await;
    wait_for_listeners(&a, "listener-of-b", 1).await;
    let pair = a.issue("alice").await;
    cached_live(&b, &pair).await;

    proxy.cut().await;
    assert_eq!(revoke(&a, Target::FamilyId(pair.family_id.clone())).await, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The notification is lost for good, and the cached "live" is an hour young: this is what
    // reconnecting has to repair.
    assert!(b.introspect(&pair.access_token).await.active, "B could not have known");

    proxy.restore().await;
    wait_for_listeners(&a, "listener-of-b", 1).await;
    // Subscribing again forgot everything cached before: B asks the database.
    inactive_within(&b, &pair.access_token, PROPAGATION, "after the listener is back").await;
    stop(a, b).await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn while_the_listener_is_cut_off_a_cached_live_is_trusted_no_longer_than_the_ttl(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    const TTL: Duration = Duration::from_secs(2);
    let proxy = Proxy::in_front_of(&options).await;
    let a = spawn_app_adjusted(options.clone(), |parts| parts.settings.family_cache_ttl = HOUR).await;
    let b = a
        .spawn_replica(|parts| {
            parts.settings.family_cache_ttl = TTL;
            listen_via(parts, proxy.route(options.clone()).application_name("listener-of-b"));
        })
        .await;
    wait_for_listeners(&a, "listener-of-b", 1).await;
    let pair = a.issue("alice").await;
    let cached_at = Instant::now();
    cached_live(&b, &pair).await;

    proxy.cut().await;
    assert_eq!(revoke(&a, Target::FamilyId(pair.family_id.clone())).await, 1);
    // The listener never comes back: only the TTL ends the cached "live".
    let deadline = TTL + Duration::from_millis(500);
    inactive_within(
        &b,
        &pair.access_token,
        deadline.saturating_sub(cached_at.elapsed()),
        "listener down",
    )
    .await;
    stop(a, b).await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_listener_whose_backend_is_terminated_subscribes_again_and_revocations_flow_again(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let (a, b) = two_servers(options, test_policy()).await;
    // What an operator, idle_session_timeout or a failover does to it.
    // Found first, terminated after: in one WHERE clause nothing stops PostgreSQL from calling
    // pg_terminate_backend before it checked the other conditions (on other tests' sessions).
    let killed: Vec<i32> = sqlx::query_scalar(
        "select pid from pg_stat_activity where datname = current_database() and application_name = $1",
    )
    .bind(APPLICATION_NAME)
    .fetch_all(a.db())
    .await
    .unwrap();
    assert_eq!(killed.len(), 2, "both servers' listeners, found by application_name");
    for pid in &killed {
        let terminated: bool = sqlx::query_scalar("select pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(a.db())
            .await
            .unwrap();
        assert!(terminated);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let back: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and application_name = $1 and pid <> all($2)
               and state = 'idle' and (query like 'LISTEN%' or query = 'select 1')",
        )
        .bind(APPLICATION_NAME)
        .bind(&killed)
        .fetch_one(a.db())
        .await
        .unwrap();
        if back == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the listeners did not come back");
        tokio::time::sleep(POLL).await;
    }
    let pair = a.issue("alice").await;
    cached_live(&b, &pair).await;
    assert_eq!(revoke(&a, Target::FamilyId(pair.family_id.clone())).await, 1);
    inactive_within(&b, &pair.access_token, PROPAGATION, "after the listener came back").await;
    stop(a, b).await;
}
