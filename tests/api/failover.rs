//! A primary and its synchronous standby, named together in one multi-host `DATABASE_URL`
//! (issue 19): the real binary finds the primary, survives the primary turning read-only with
//! retry-safe errors only, and follows the standby's promotion without a restart, losing no
//! acknowledged rotation.
//!
//! The failover here is the one a manager such as pg_auto_failover or Patroni performs, by hand:
//! the old primary stops accepting writes (here: `default_transaction_read_only`, so that it
//! stays up and ratchet's connections to it stay open, the harder case), then the standby is
//! promoted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ratchet::grpc::pb::RotateRequest;
use ratchet::store::postgres::{self, PoolSettings};
use ratchet_history::{Kind, Options, Report};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnection, PgPoolOptions};
use tonic::Code;

use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{
    Observed, PrivateCluster, Proxy, SERVING_AGAIN_WITHIN, Server, Shared, TestApp, assert_token_error, finish_chains,
    health_at, http_get, issue, migrate, serving_again, start_chains_while, without_rotate_limit,
};

async fn scalar(cluster: &PrivateCluster, database: &str, query: &str) -> String {
    let mut connection = PgConnection::connect_with(&cluster.options().database(database))
        .await
        .unwrap();
    let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_owned()))
        .fetch_one(&mut connection)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    connection.close().await.unwrap();
    value
}

/// Waits until `check` holds, for at most `within`; panics with `what` otherwise.
async fn eventually<F: AsyncFn() -> bool>(within: Duration, what: &str, check: F) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn rotate(
    client: &mut ratchet::grpc::pb::token_service_client::TokenServiceClient<tonic::transport::Channel>,
    token: &str,
) -> Result<String, tonic::Status> {
    client
        .rotate(RotateRequest {
            refresh_token: token.to_owned(),
        })
        .await
        .map(|answer| answer.into_inner().refresh_token)
}

async fn serving(server: &Server) -> bool {
    health_at(server.addr).await == ServingStatus::Serving
}

async fn listener_connected(server: &Server) -> bool {
    let metrics = http_get(server.http, "/metrics", &[]).await;
    metrics
        .body
        .lines()
        .any(|line| line == "ratchet_revocation_listener_connected 1")
}

#[tokio::test]
async fn a_multi_host_url_finds_the_primary_and_follows_its_standby_promoted_without_a_restart() {
    let primary = PrivateCluster::start().await;
    let standby = primary.start_standby().await;
    primary.replicate_synchronously().await;

    // The standby first: a connection must pass it by for the host that accepts writes.
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/ratchet?sslmode=disable",
        standby.port(),
        primary.port()
    );
    migrate(&url);
    assert_eq!(
        scalar(&primary, "ratchet", "select count(*)::text from families").await,
        "0",
        "created and migrated on the primary"
    );

    let scratch = primary.dir().join("ratchet");
    let log = scratch.join("server.log");
    std::fs::create_dir_all(&scratch).unwrap();
    let server = Server::start(&url, &scratch.join("data"), &log);
    let mut client = server.client().await;
    let first = issue(&client, "alice").await.refresh_token;
    let mut token = rotate(&mut client, &first).await.unwrap();
    for _ in 0..3 {
        token = rotate(&mut client, &token).await.unwrap();
    }
    let sessions = scalar(
        &primary,
        "postgres",
        "select count(*)::text from pg_stat_activity where application_name = 'ratchet'",
    )
    .await;
    assert_ne!(sessions, "0", "ratchet's pool is on the primary");
    eventually(
        Duration::from_secs(10),
        "the revocation listener is connected",
        async || listener_connected(&server).await,
    )
    .await;

    // The primary stops accepting writes; ratchet's open connections to it stay open.
    primary.alter_system("default_transaction_read_only = on").await;
    // Health says so before any write has been refused: orchestrators stop routing to it.
    eventually(Duration::from_secs(10), "health turns NOT_SERVING", async || {
        !serving(&server).await
    })
    .await;
    // No server accepts writes: refused as UNAVAILABLE (nothing happened: the token still rotates
    // below), however many times it is asked.
    for _ in 0..3 {
        let refused = rotate(&mut client, &token).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    }

    standby.promote().await;
    let promoted = Instant::now();
    eventually(Duration::from_secs(10), "health turns SERVING again", async || {
        serving(&server).await
    })
    .await;
    let rotated = loop {
        match rotate(&mut client, &token).await {
            Ok(next) => break next,
            Err(status) if status.code() == Code::Unavailable => {
                assert!(
                    promoted.elapsed() < SERVING_AGAIN_WITHIN,
                    "not serving writes {SERVING_AGAIN_WITHIN:?} after the promotion: {status:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("the last acknowledged token must rotate once on the new primary: {status:?}"),
        }
    };
    // The chain goes on on the new primary, and its history came with it: the first token of the
    // chain, spent before the failover, is refused as reused.
    let next = rotate(&mut client, &rotated).await.unwrap();
    assert_token_error(&rotate(&mut client, &first).await.unwrap_err(), "TOKEN_REUSED");
    assert_token_error(&rotate(&mut client, &next).await.unwrap_err(), "TOKEN_REVOKED");
    assert_eq!(
        scalar(
            &standby,
            "ratchet",
            "select count(*)::text from families where revoked_reason = 'reuse'"
        )
        .await,
        "1",
        "the reuse revoked the family on the new primary"
    );
    // The revocation listener left the old primary and subscribed on the new one.
    eventually(
        Duration::from_secs(10),
        "the listener follows the new primary",
        async || {
            listener_connected(&server).await
                && scalar(
                    &standby,
                    "postgres",
                    "select count(*)::text from pg_stat_activity where application_name = 'ratchet-revocations'",
                )
                .await
                    == "1"
        },
    )
    .await;
    assert!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("no longer accepts writes"),
        "the switch is logged"
    );
    server.terminate().await;
}

/// Rotations under load while the standby's replication link is cut for `STALL`, then the primary
/// killed and the standby promoted: the checker's verdict on what the clients were told against
/// what the new primary holds.
async fn failover_after_the_replication_link_was_cut(synchronous: bool) -> (Report, Observed) {
    const STALL: Duration = Duration::from_secs(5);
    let primary = PrivateCluster::start().await;
    let options = primary.create_database("ratchet").await;
    let link = Proxy::in_front_of(&primary.options()).await;
    let standby = primary.start_standby_through(link.addr().port()).await;
    if synchronous {
        primary.replicate_synchronously().await;
    }
    let hosts = primary.with_standby_hosts(&standby, "ratchet");
    // The store's timeout (and with it the backstop on a silent answer) is well inside STALL.
    let settings = PoolSettings {
        max_connections: 8,
        timeout: Duration::from_secs(1),
    };
    let app = TestApp::builder(options)
        .pool(settings.clone())
        .on_pool(postgres::pool(hosts, &settings))
        // Re-deliveries within the window: a client that retries gets the pair it missed.
        .reuse_grace(time::Duration::seconds(30))
        .adjust(without_rotate_limit)
        .spawn()
        .await;
    let observed = Shared::default();
    let stop = Arc::new(AtomicBool::new(false));
    let go_on = {
        let stop = stop.clone();
        move || !stop.load(Ordering::Relaxed)
    };
    let chains = start_chains_while(&app.client, &observed, go_on).await;

    tokio::time::sleep(Duration::from_secs(1)).await;
    link.cut().await;
    tokio::time::sleep(STALL).await;
    primary.crash().await;
    standby.promote().await;
    serving_again(&app.client, &observed, Instant::now()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    finish_chains(chains).await;
    let observed = std::mem::take(&mut *observed.lock().unwrap());
    let new_primary = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(standby.options().database("ratchet"))
        .await
        .unwrap();
    let options = Options {
        grace_window: true,
        ..Default::default()
    };
    let report = observed.history.report(&new_primary, &options).await;
    eprintln!("synchronous: {synchronous}; {:?}\n{report}", report.stats);
    new_primary.close().await;
    app.stop().await;
    (report, observed)
}

/// Why README and SECURITY.md require synchronous replication: with an asynchronous standby, a
/// failover after the standby fell behind loses rotations that clients were told succeeded, and
/// the history checker says so.
#[tokio::test]
async fn with_asynchronous_replication_a_failover_loses_acknowledged_rotations_and_the_checker_says_so() {
    let (report, _) = failover_after_the_replication_link_was_cut(false).await;
    assert!(
        report.kinds().contains(&Kind::LostAcknowledged),
        "the standby fell 5 s behind and was promoted: acknowledged rotations must be missing\n{report}"
    );
}

/// The same failover with a synchronous standby: while the link is cut no rotation is
/// acknowledged (each waits for the standby, then is resolved on the new primary), and nothing a
/// client was told is lost.
#[tokio::test]
async fn with_synchronous_replication_the_same_failover_loses_no_acknowledged_rotation() {
    let (report, observed) = failover_after_the_replication_link_was_cut(true).await;
    assert!(report.is_ok(), "the history does not fit the new primary:\n{report}");
    assert!(observed.unexpected.is_empty(), "{:?}", observed.unexpected);
}
