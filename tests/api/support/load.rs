//! A Rotate load for fault tests: [`CHAINS`] clients each rotating a chain of its own flat out,
//! retrying the same token after anything that is not a token verdict (what a well-behaved client
//! does), everything they were told recorded ([`Observed`], with a [`History`] for the checker),
//! and the invariants that must hold afterwards, read from the store's tables
//! ([`check_invariants`]): no refresh token accepted into two successors; every successor a client
//! saw rotated on, or still working (or its family revoked because a reuse was detected); every
//! family one chain with at most one unspent token; every detected reuse revoked its family.
//!
//! Shared by the faults that happen to one server (`faults.rs`) and the failovers a manager
//! performs (`autofailover.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ratchet::grpc::pb::token_service_client::TokenServiceClient;
use ratchet::grpc::pb::{IssueRequest, RotateRequest};
use ratchet::grpc::status::reason;
use ratchet::issuer::refresh_token::RefreshToken;
use sqlx::PgPool;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

use super::{History, issue};

/// These tests rotate chains and replay tokens flat out, which is what the per-family Rotate
/// limit exists to stop (`limits.rs` tests that); here the database's behaviour is under test, so
/// the limit is lifted.
pub fn without_rotate_limit(parts: &mut ratchet::startup::Parts) {
    // The largest the command line accepts (a replenish interval of a microsecond).
    let max = std::num::NonZeroU32::new(1_000_000).unwrap();
    parts.settings.policy.rotate_limit = ratchet::domain::RotateLimit {
        per_second: max,
        burst: max,
    };
}

/// The binary's environment for a chain load: a grace window (a client retrying a call a fault
/// cut off gets the same pair), a 2 s database timeout, and the Rotate limit lifted (see
/// [`without_rotate_limit`]).
pub const CHAIN_LOAD_ENV: [(&str, &str); 4] = [
    ("RATCHET_REUSE_GRACE", "30s"),
    ("RATCHET_DB_TIMEOUT", "2s"),
    ("RATCHET_ROTATE_BURST", "1000000"),
    ("RATCHET_ROTATE_PER_SECOND", "1000000"),
];

/// What the clients saw.
#[derive(Default)]
pub struct Observed {
    /// Presented refresh token -> every successor it was answered with.
    pub answers: HashMap<String, Vec<String>>,
    /// Families of tokens refused with TOKEN_REUSED.
    pub reused: Vec<String>,
    pub unavailable: usize,
    pub unknown: usize,
    /// The slowest UNAVAILABLE answer.
    pub slowest_unavailable: Duration,
    /// Anything not expected in the scenario.
    pub unexpected: Vec<String>,
    /// Every call, for the history checker.
    pub history: History,
}

pub type Shared = Arc<Mutex<Observed>>;

pub fn reason_of(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// Presents `token` once; records what came back. `Ok(successor)`, or the failure.
pub async fn rotate_once(
    client: &TokenServiceClient<Channel>,
    token: &str,
    observed: &Shared,
) -> Result<String, Status> {
    present(client, token, observed, false).await
}

/// [`rotate_once`] for a token the caller knows was spent (a replay), recorded as one.
pub async fn replay_once(
    client: &TokenServiceClient<Channel>,
    token: &str,
    observed: &Shared,
) -> Result<String, Status> {
    present(client, token, observed, true).await
}

async fn present(
    client: &TokenServiceClient<Channel>,
    token: &str,
    observed: &Shared,
    replay: bool,
) -> Result<String, Status> {
    let started = Instant::now();
    let mut request = tonic::Request::new(RotateRequest {
        refresh_token: token.to_owned(),
    });
    request.set_timeout(Duration::from_secs(20));
    let result = client.clone().rotate(request).await.map(tonic::Response::into_inner);
    let mut observed = observed.lock().unwrap();
    if replay {
        observed.history.replay(started, token, &result);
    } else {
        observed.history.rotate(started, token, &result);
    }
    match result {
        Ok(pair) => {
            let next = pair.refresh_token;
            observed.answers.entry(token.to_owned()).or_default().push(next.clone());
            Ok(next)
        }
        Err(status) => {
            match (status.code(), reason_of(&status).as_deref()) {
                (Code::Unavailable, None) => {
                    observed.unavailable += 1;
                    observed.slowest_unavailable = observed.slowest_unavailable.max(started.elapsed());
                }
                (Code::DeadlineExceeded, Some(reason::OUTCOME_UNKNOWN)) => observed.unknown += 1,
                _ => {}
            }
            Err(status)
        }
    }
}

/// One client rotating its own chain while `go_on()` holds, through each of `replicas` in turn
/// (call by call), retrying the same token after any failure that is not a token verdict (what a
/// well-behaved client does). Returns its last token.
async fn rotate_chain(
    replicas: Vec<TokenServiceClient<Channel>>,
    first: String,
    go_on: impl Fn() -> bool,
    observed: Shared,
) -> String {
    let mut current = first;
    for client in replicas.iter().cycle() {
        if !go_on() {
            break;
        }
        match rotate_once(client, &current, &observed).await {
            Ok(next) => current = next,
            Err(status) if status.code() == Code::Unauthenticated => {
                let mut observed = observed.lock().unwrap();
                observed.unexpected.push(format!("{status:?}"));
                return current;
            }
            // The database or the server is away: try the same token again shortly.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    current
}

fn hash_of(token: &str) -> Vec<u8> {
    RefreshToken::parse(token).unwrap().hash().0.to_vec()
}

/// Checks the invariants in the module docs. Reads the tables: the chain structure is exactly
/// what the API does not show.
pub async fn check_invariants(db: &PgPool, observed: &Observed) {
    eprintln!(
        "rotations seen: {}, UNAVAILABLE: {} (slowest {:?}), OUTCOME_UNKNOWN: {}, reuse detected: {}",
        observed.answers.len(),
        observed.unavailable,
        observed.slowest_unavailable,
        observed.unknown,
        observed.reused.len()
    );
    assert!(observed.answers.len() >= 100, "too little load to prove anything");
    for answers in observed.answers.values() {
        assert!(
            answers.iter().all(|a| *a == answers[0]),
            "a refresh token was accepted into {} different successors",
            answers.len()
        );
    }
    for successor in observed.answers.values().map(|answers| &answers[0]) {
        let (spent, revoked_for): (bool, Option<String>) = sqlx::query_as(
            "select t.spent_at is not null, f.revoked_reason
             from refresh_tokens t join families f on f.id = t.family_id where t.hash = $1",
        )
        .bind(hash_of(successor))
        .fetch_one(db)
        .await
        .expect("every successor a client saw is stored");
        // Rotated on, or still working, or its family fell to a detected reuse or a Revoke call.
        assert!(
            spent || matches!(revoked_for.as_deref(), None | Some("reuse" | "revoke")),
            "a successor a client saw is neither rotated on nor working ({revoked_for:?})"
        );
    }
    let broken: Vec<(uuid::Uuid,)> = sqlx::query_as(
        "select f.id from families f
         where (select count(*) from refresh_tokens t where t.family_id = f.id and t.spent_at is null) > 1
            or (select count(*) from refresh_tokens t where t.family_id = f.id)
               <> 1 + (select count(*) from refresh_tokens t where t.family_id = f.id and t.spent_at is not null)
            or (select count(*) from refresh_tokens t where t.family_id = f.id
                and not exists (select 1 from refresh_tokens p where p.successor_hash = t.hash)) <> 1",
    )
    .fetch_all(db)
    .await
    .unwrap();
    assert!(broken.is_empty(), "families that are not one chain: {broken:?}");
    let (shared, foreign, dangling): (i64, i64, i64) = sqlx::query_as(
        "select
            (select count(*) from (select successor_hash from refresh_tokens where successor_hash is not null
                                   group by 1 having count(*) > 1) d),
            (select count(*) from refresh_tokens t join refresh_tokens s on s.hash = t.successor_hash
             where s.family_id <> t.family_id),
            (select count(*) from refresh_tokens t where t.successor_hash is not null
             and not exists (select 1 from refresh_tokens s where s.hash = t.successor_hash))",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!((shared, foreign, dangling), (0, 0, 0), "successor links are not chains");
    for family in &observed.reused {
        let (revoked,): (bool,) = sqlx::query_as("select revoked_at is not null from families where id = $1::uuid")
            .bind(family)
            .fetch_one(db)
            .await
            .unwrap();
        assert!(revoked, "a detected reuse left its family live");
    }
}

/// Every chain's last token still rotates: the service recovered by itself. A retry-safe failure
/// (the database still settling after a fault) is retried, as a client would, for at most
/// [`SERVING_AGAIN_WITHIN`]; a token verdict is not.
pub async fn assert_chains_rotate(client: &TokenServiceClient<Channel>, last: &[String], observed: &Shared) {
    let deadline = Instant::now() + SERVING_AGAIN_WITHIN;
    for token in last {
        loop {
            match rotate_once(client, token, observed).await {
                Ok(_) => break,
                Err(status) if status.code() != Code::Unauthenticated && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) => panic!("a chain did not survive: {status:?}"),
            }
        }
    }
}

pub const CHAINS: usize = 8;

/// [`CHAINS`] clients, each issuing a family and rotating its chain until `until`.
pub async fn start_chains(
    client: &TokenServiceClient<Channel>,
    until: Instant,
    observed: &Shared,
) -> Vec<tokio::task::JoinHandle<String>> {
    start_chains_while(client, observed, move || Instant::now() < until).await
}

/// [`CHAINS`] clients, each issuing a family and rotating its chain while `go_on()` holds.
pub async fn start_chains_while(
    client: &TokenServiceClient<Channel>,
    observed: &Shared,
    go_on: impl Fn() -> bool + Clone + Send + 'static,
) -> Vec<tokio::task::JoinHandle<String>> {
    start_chains_across(std::slice::from_ref(client), observed, go_on).await
}

/// [`CHAINS`] clients, each issuing a family and rotating its chain while `go_on()` holds, every
/// call to the next of `replicas` (servers on one database): a chain's every token is presented
/// to another replica than the one that handed it out.
pub async fn start_chains_across(
    replicas: &[TokenServiceClient<Channel>],
    observed: &Shared,
    go_on: impl Fn() -> bool + Clone + Send + 'static,
) -> Vec<tokio::task::JoinHandle<String>> {
    let mut clients = Vec::new();
    for i in 0..CHAINS {
        let (subject, invoked) = (format!("user{i}"), Instant::now());
        let pair = issue(&replicas[i % replicas.len()], &subject).await;
        observed
            .lock()
            .unwrap()
            .history
            .issue(invoked, &subject, &Ok(pair.clone()));
        let first = pair.refresh_token;
        clients.push(tokio::spawn(rotate_chain(
            replicas.to_vec(),
            first,
            go_on.clone(),
            observed.clone(),
        )));
    }
    clients
}

/// Each chain's last token, once its client is done.
pub async fn finish_chains(clients: Vec<tokio::task::JoinHandle<String>>) -> Vec<String> {
    let mut last = Vec::new();
    for client in clients {
        last.push(client.await.unwrap());
    }
    last
}

/// How soon after a new primary accepts writes ratchet must be serving again (issue 19).
pub const SERVING_AGAIN_WITHIN: Duration = Duration::from_secs(10);

/// Issues until one succeeds, every attempt recorded for the checker, and returns how long after
/// `since` (when a new primary accepted writes, or was promoted) it did.
///
/// # Panics
/// None succeeded within [`SERVING_AGAIN_WITHIN`] of `since`.
pub async fn serving_again(client: &TokenServiceClient<Channel>, observed: &Shared, since: Instant) -> Duration {
    serving_again_within(client, observed, since, SERVING_AGAIN_WITHIN).await
}

/// [`serving_again`] within `within` of `since`.
pub async fn serving_again_within(
    client: &TokenServiceClient<Channel>,
    observed: &Shared,
    since: Instant,
    within: Duration,
) -> Duration {
    loop {
        let invoked = Instant::now();
        let request = IssueRequest {
            subject: "after-failover".into(),
            ..Default::default()
        };
        let result = client.clone().issue(request).await.map(tonic::Response::into_inner);
        observed
            .lock()
            .unwrap()
            .history
            .issue(invoked, "after-failover", &result);
        if result.is_ok() {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < within,
            "no Issue succeeded within {within:?} of the new primary accepting writes: {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The end of a chain-load fault test: waits for the chains' clients, then every chain's last
/// token must rotate (the service recovered by itself), no answer may have been unexpected, the
/// invariants must hold on the database `db` names, and the history checker must find that what
/// the clients were told fits it. `grace_window`: the server answers a retry within a reuse grace
/// window with the same pair (the checker's [`ratchet_history::Options::grace_window`]). Returns
/// what they saw, for the test's own asserts.
pub async fn judge(
    client: &TokenServiceClient<Channel>,
    chains: Vec<tokio::task::JoinHandle<String>>,
    observed: &Shared,
    db: sqlx::postgres::PgConnectOptions,
    grace_window: bool,
) -> Observed {
    let last = finish_chains(chains).await;
    assert_chains_rotate(client, &last, observed).await;
    let observed = std::mem::take(&mut *observed.lock().unwrap());
    assert!(observed.unexpected.is_empty(), "{:?}", observed.unexpected);
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(db)
        .await
        .unwrap();
    check_invariants(&db, &observed).await;
    let options = ratchet_history::Options {
        grace_window,
        ..Default::default()
    };
    observed.history.check(&db, &options).await;
    db.close().await;
    observed
}
