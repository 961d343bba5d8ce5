//! Shutdown under load (issue 17, "Lifecycle"), through the real binary on both stores: SIGTERM in
//! the middle of a burst of Rotates from many clients, each rotating its own chain as fast as it
//! can. Then: a health `Watch` said NOT_SERVING and ended; every call either succeeded or was
//! refused UNAVAILABLE (safe to retry: nothing happened); a call started after the signal is
//! UNAVAILABLE; the process exited 0 by itself, well within `--shutdown-grace`; and, read in the
//! database before a restart, every chain is one chain whose only live token is the last one its
//! client received, with exactly one token per rotation the client saw succeed (so no refused
//! call did anything). A restarted server then rotates each of those tokens.
//!
//! And a call that outlives the grace: held by a proxy delaying PostgreSQL's answers, it is cut
//! at the grace with a status that says what the client may assume (a write: DEADLINE_EXCEEDED,
//! OUTCOME_UNKNOWN; a read: UNAVAILABLE), and the process still exits 0, bounded. PostgreSQL
//! only: nothing holds a SQLite statement open from outside the process (the write lock would,
//! but only by a second writer, which the server's own lock on the data directory refuses); the
//! cut itself does not depend on the store (`grpc::cut`'s unit test).

use std::path::Path;
use std::time::{Duration, Instant};

use ratchet::grpc::pb::token_service_client::TokenServiceClient;
use ratchet::grpc::pb::{ListSessionsRequest, RotateRequest, TokenPair};
use ratchet::grpc::status::reason;
use ratchet::issuer::refresh_token::RefreshToken;
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_types::StatusExt as _;

use crate::support::{BIN, DataDir, DatabaseGuard, Proxy, Server, channel, database_url, free_port, issue};

/// Clients rotating at once, each on a connection of its own.
const CLIENTS: usize = 24;
/// The grace of the burst test: far longer than the drain needs, so that an exit before it shows
/// the drain ended by itself.
const GRACE: Duration = Duration::from_secs(10);
/// Rotations flat out: the per-family Rotate limit would refuse them.
const UNLIMITED: [(&str, &str); 3] = [
    ("RATCHET_ROTATE_BURST", "1000000"),
    ("RATCHET_ROTATE_PER_SECOND", "1000000"),
    ("RATCHET_SHUTDOWN_GRACE", "10s"),
];

/// What one client saw of its chain.
struct Chain {
    family_id: String,
    /// The last refresh token it received.
    last: String,
    /// Rotations it saw succeed.
    rotations: u64,
    /// When the last of them was answered.
    last_answer: Instant,
    /// How its run ended: the first refusal.
    refused: Status,
}

/// Rotates `first`'s chain as fast as it can until a call is refused (or a minute passes: the
/// server never stopped, which the caller then reports).
async fn rotate_until_refused(mut client: TokenServiceClient<Channel>, first: TokenPair) -> Chain {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut chain = Chain {
        family_id: first.family_id,
        last: first.refresh_token,
        rotations: 0,
        last_answer: Instant::now(),
        refused: Status::ok("never refused"),
    };
    while Instant::now() < deadline {
        let rotated = client
            .rotate(RotateRequest {
                refresh_token: chain.last.clone(),
            })
            .await;
        match rotated {
            Ok(pair) => {
                chain.last = pair.into_inner().refresh_token;
                chain.rotations += 1;
                chain.last_answer = Instant::now();
            }
            Err(status) => {
                chain.refused = status;
                break;
            }
        }
    }
    chain
}

/// A health `Watch` of the whole server, once it has said SERVING.
async fn watch_until_serving(addr: std::net::SocketAddr) -> tonic::Streaming<HealthCheckResponse> {
    let mut stream = HealthClient::new(channel(addr).await)
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = stream.message().await.unwrap().expect("a status").status;
        if status == ServingStatus::Serving as i32 {
            return stream;
        }
        assert!(Instant::now() < deadline, "never SERVING");
    }
}

/// Per family, as stored: tokens, unspent tokens, tokens with a parent, distinct parents, whether
/// the family is revoked. The same SQL on both stores.
const CHAINS: &str = "select cast(t.family_id as text), count(*),
        sum(case when t.spent_at is null then 1 else 0 end),
        count(t.parent_hash), count(distinct t.parent_hash),
        cast(max(case when f.revoked_reason is null then 0 else 1 end) as bigint)
    from refresh_tokens t join families f on f.id = t.family_id
    group by t.family_id";
/// The unspent tokens' hashes, by family.
const LIVE: &str = "select cast(family_id as text), hash from refresh_tokens where spent_at is null";

type Stored = (String, i64, i64, i64, i64, i64);

/// The burst, the signal and what the clients and the health watcher saw; returns the chains.
/// `server` is the one the clients reach; the caller restarts it afterwards.
async fn burst_then_sigterm(server: &mut Server, log: &dyn Fn() -> String) -> Vec<Chain> {
    let mut health = watch_until_serving(server.addr).await;
    let mut runs = Vec::new();
    for i in 0..CLIENTS {
        // A connection of its own: the GOAWAY reaches every one of them mid-burst.
        let client = TokenServiceClient::new(channel(server.addr).await);
        let first = issue(&client, &format!("user{i}")).await;
        runs.push(tokio::spawn(rotate_until_refused(client, first)));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let signalled = Instant::now();
    server.signal("TERM");

    // Health first: NOT_SERVING, then the stream ends (it must not hold up the drain).
    let said = tokio::time::timeout(Duration::from_secs(3), health.message())
        .await
        .expect("health told the stop at once")
        .expect("NOT_SERVING before the stream ends")
        .expect("a status");
    assert_eq!(said.status, ServingStatus::NotServing as i32);
    let ended = tokio::time::timeout(Duration::from_secs(3), health.message())
        .await
        .expect("the Watch ended with the drain");
    let ended = ended.expect_err("a Watch ends with a status once the server drains");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");

    // Draining now: the listener is closed, so a call started now is refused.
    let late = TokenServiceClient::new(
        Endpoint::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect_lazy(),
    )
    .rotate(RotateRequest {
        refresh_token: "rt1.anything".into(),
    })
    .await
    .expect_err("a call started after SIGTERM");
    assert_eq!(late.code(), Code::Unavailable, "{late:?}");

    let exit = server.wait(GRACE + Duration::from_secs(5)).await;
    let took = signalled.elapsed();
    let exit = exit.unwrap_or_else(|| panic!("still running {took:?} after SIGTERM:\n{}", log()));
    assert!(exit.success(), "exit {exit:?}:\n{}", log());
    assert!(
        took < GRACE,
        "the drain should end by itself, long before the grace: {took:?}"
    );
    let mut chains = Vec::new();
    for run in runs {
        chains.push(run.await.unwrap());
    }
    let rotations: u64 = chains.iter().map(|chain| chain.rotations).sum();
    let after_the_signal = chains.iter().filter(|chain| chain.last_answer > signalled).count();
    eprintln!(
        "{rotations} rotations; {after_the_signal} of {CLIENTS} clients had a call answered after SIGTERM; exit after {took:?}"
    );
    assert!(rotations >= CLIENTS as u64, "too little load to prove anything");
    assert!(
        after_the_signal > 0,
        "no call in flight at SIGTERM was let finish (or none was in flight)"
    );
    for chain in &chains {
        // Refused at the GOAWAY or never sent (never started), or at a closed listener: either
        // way nothing happened, which the stored chains below confirm.
        assert!(
            chain.refused.code() == Code::Unavailable || never_reached_the_server(&chain.refused),
            "{:?}\n{}",
            chain.refused,
            log()
        );
    }
    chains
}

/// The invariants of the module docs, on what the store holds after the stop.
fn assert_chains_intact(chains: &[Chain], stored: &[Stored], live: &[(String, Vec<u8>)]) {
    assert_eq!(stored.len(), chains.len(), "one family per client");
    for chain in chains {
        let id = &chain.family_id;
        let (_, tokens, unspent, with_parent, parents, revoked) = stored
            .iter()
            .find(|row| &row.0 == id)
            .unwrap_or_else(|| panic!("family {id} is not stored"));
        assert_eq!(
            *tokens,
            i64::try_from(chain.rotations).unwrap() + 1,
            "{id}: the first token and one per rotation the client saw: none more (a refused call did something) nor fewer (a success was lost)"
        );
        assert_eq!(*unspent, 1, "{id}: one live token");
        assert_eq!(with_parent, parents, "{id}: no token has two successors");
        let last = RefreshToken::parse(&chain.last).unwrap().hash().0.to_vec();
        assert!(
            live.iter().any(|(family, hash)| family == id && *hash == last),
            "{id}: the live token is the last one the client received"
        );
        assert_eq!(*revoked, 0, "{id}: not revoked");
    }
}

/// Each client's last token rotates on the restarted server.
async fn assert_last_tokens_rotate(client: &TokenServiceClient<Channel>, chains: &[Chain]) {
    for chain in chains {
        let next = client
            .clone()
            .rotate(RotateRequest {
                refresh_token: chain.last.clone(),
            })
            .await
            .unwrap_or_else(|status| {
                panic!(
                    "{}: the last token received is not durable: {status:?}",
                    chain.family_id
                )
            })
            .into_inner();
        assert_eq!(next.family_id, chain.family_id);
    }
}

#[sqlx::test(migrations = false)]
async fn sigterm_mid_burst_on_postgres_drains_refuses_new_calls_unavailable_and_loses_nothing(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let database = format!("ratchet_shutdown_{}", uuid::Uuid::new_v4().simple());
    let _dropped_last = DatabaseGuard::new(&options, &database);
    let url = database_url(&options, &database);
    let migrate = std::process::Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    let scratch = std::env::temp_dir().join(&database);
    std::fs::create_dir_all(&scratch).unwrap();
    let log = scratch.join("server.log");
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut server = Server::start_with(&url, &scratch.join("data"), &log, addr, &UNLIMITED);
    server.client().await;

    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let chains = burst_then_sigterm(&mut server, &read_log).await;
    let mut db = PgConnection::connect(&url).await.unwrap();
    let stored: Vec<Stored> = sqlx::query_as(CHAINS).fetch_all(&mut db).await.unwrap();
    let live: Vec<(String, Vec<u8>)> = sqlx::query_as(LIVE).fetch_all(&mut db).await.unwrap();
    assert_chains_intact(&chains, &stored, &live);
    db.close().await.unwrap();

    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let restarted = Server::start_with(&url, &scratch.join("data"), &log, addr, &UNLIMITED);
    assert_last_tokens_rotate(&restarted.client().await, &chains).await;
    assert!(restarted.terminate().await.success());
    let _ = std::fs::remove_dir_all(&scratch);
}

#[tokio::test]
async fn sigterm_mid_burst_on_sqlite_drains_refuses_new_calls_unavailable_and_loses_nothing() {
    let dir = DataDir::new();
    let (mut server, _, log) = dir.serve_with("first.log", &UNLIMITED).await;
    let read_log = || dir.log(&log);
    let chains = burst_then_sigterm(&mut server, &read_log).await;
    let mut db = read_only_sqlite(&dir.0.join("data").join("ratchet.db")).await;
    let stored: Vec<Stored> = sqlx::query_as(CHAINS).fetch_all(&mut db).await.unwrap();
    let live: Vec<(String, Vec<u8>)> = sqlx::query_as(LIVE).fetch_all(&mut db).await.unwrap();
    drop(db);
    assert_chains_intact(&chains, &stored, &live);

    let (restarted, client, _) = dir.serve_with("second.log", &UNLIMITED).await;
    assert_last_tokens_rotate(&client, &chains).await;
    assert!(restarted.terminate().await.success());
}

#[sqlx::test(migrations = false)]
async fn a_call_that_outlives_the_grace_is_answered_at_the_grace_and_the_process_still_exits(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let database = format!("ratchet_shutdown_{}", uuid::Uuid::new_v4().simple());
    let _dropped_last = DatabaseGuard::new(&options, &database);
    let migrate = std::process::Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", database_url(&options, &database))
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    let proxy = Proxy::in_front_of(&options).await;
    let url = proxy.database_url(&options, &database);
    let scratch = std::env::temp_dir().join(&database);
    std::fs::create_dir_all(&scratch).unwrap();
    let log = scratch.join("server.log");
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let grace = Duration::from_secs(1);
    // The store's own timeout far beyond the delay: only the grace can end the calls.
    let env = [("RATCHET_SHUTDOWN_GRACE", "1s"), ("RATCHET_DB_TIMEOUT", "30s")];
    let mut server = Server::start_with(&url, &scratch.join("data"), &log, addr, &env);
    let client = server.client().await;
    let pair = issue(&client, "alice").await;

    // Every answer of the database now takes 5 s: a Rotate (a write) and a ListSessions (a read)
    // are held in flight.
    proxy.delay_responses(Duration::from_secs(5));
    let rotate = tokio::spawn({
        let mut client = client.clone();
        let refresh_token = pair.refresh_token.clone();
        async move {
            let started = Instant::now();
            let answer = client.rotate(RotateRequest { refresh_token }).await;
            (answer.map(|_| ()), started.elapsed())
        }
    });
    let list = tokio::spawn({
        let mut client = client.clone();
        async move {
            let request = ListSessionsRequest {
                subject: "alice".into(),
                ..Default::default()
            };
            client.list_sessions(request).await.map(|_| ())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!rotate.is_finished() && !list.is_finished(), "the calls are held");
    let signalled = Instant::now();
    server.signal("TERM");

    let (rotated, _) = rotate.await.unwrap();
    let cut_after = signalled.elapsed();
    let listed = list.await.unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let rotated = rotated.expect_err("a Rotate held past the grace is cut");
    assert_eq!(rotated.code(), Code::DeadlineExceeded, "{rotated:?}\n{}", read_log());
    let info = rotated.get_details_error_info().expect("an ErrorInfo detail");
    assert_eq!(
        info.reason,
        reason::OUTCOME_UNKNOWN,
        "a write cut mid-way may have happened"
    );
    let listed = listed.expect_err("a ListSessions held past the grace is cut");
    assert_eq!(listed.code(), Code::Unavailable, "{listed:?}");
    assert!(
        cut_after >= grace && cut_after < grace + Duration::from_secs(2),
        "cut at the grace (1 s), not before nor long after: {cut_after:?}"
    );

    let exit = server
        .wait(grace + Duration::from_secs(8))
        .await
        .unwrap_or_else(|| panic!("still running after the grace and the cut:\n{}", read_log()));
    assert!(exit.success(), "{exit:?}\n{}", read_log());
    let took = signalled.elapsed();
    assert!(
        took < grace + Duration::from_secs(5),
        "exits within the grace, the cut and the bounded stop of its tasks: {took:?}"
    );
    let logged = read_log();
    assert!(logged.contains("shutdown grace is over"), "{logged}");

    proxy.restore().await;
    let _ = std::fs::remove_dir_all(&scratch);
}

async fn read_only_sqlite(file: &Path) -> sqlx::sqlite::SqliteConnection {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(file).read_only(true);
    sqlx::sqlite::SqliteConnection::connect_with(&options).await.unwrap()
}

/// A call the client's HTTP/2 connection never let reach the server, so never processed and safe
/// to retry; the server cannot choose how a client reports it, and tonic's client reports neither
/// case as UNAVAILABLE, which gRPC's own guidance would say:
/// - its stream was refused because the server's GOAWAY (NO_ERROR) had arrived: not sent, or
///   above the GOAWAY's last stream (RFC 9113 §6.8). tonic: INTERNAL, "h2 protocol error". Seen
///   when a Rotate was sent in the instant the GOAWAY crossed it.
/// - it was still queued in the client (hyper's dispatch channel) when the connection closed
///   after the drain: hyper's `Canceled`, "connection closed". tonic: CANCELLED. Seen under CPU
///   load, when the client's task ran only after the server had closed the connection.
///
/// Either way the stored chains prove nothing happened (`assert_chains_intact`).
fn never_reached_the_server(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
        }
        // Not `return`: an h2 error reaches tonic wrapped in a hyper one.
        if error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        source = error.source();
    }
    false
}
