//! Resource limits: what an oversized request gets, and that the connection it came on survives;
//! what a request may decode to, and what the calls in flight may hold together. (Every RPC's
//! worst requests against the real binary's peak memory: `memory.rs`.)
//!
//! Where they run: the rotate rate limit (a replay loop, a chain rotated flat out: rotations
//! through the store, and a refused token that must not have been spent) on every backend; a
//! chain alternating between two replicas on one database on PostgreSQL. The rest on PostgreSQL
//! only: size, decoding and header limits and the request memory budget are the
//! transport's, refused before the store;
//! the memory test introspects 3,000 large tokens of one session (the verified-token cache's
//! memory; the family is looked up once, so a second run on SQLite would double a long test for
//! nothing); the concurrency test stalls spends with a PL/pgSQL trigger.

use std::sync::atomic::Ordering;

use futures::StreamExt as _;
use ratchet::grpc::pb::token_service_client::TokenServiceClient;
use ratchet::grpc::pb::{IntrospectRequest, IntrospectResponse, IssueRequest, RotateRequest};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use ratchet::keys::{AccessClaims, KeyAlgorithm, KeySet, Keyring, SigningKey};

use crate::support::{
    AUDIENCE, Db, ISSUER, TestApp, assert_invalid_argument, channel, counting_channel, introspect, issue,
    on_every_backend,
};

/// Claims holding one string claim of `bytes` bytes.
fn claims_of(bytes: usize) -> prost_types::Struct {
    let value = prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue("x".repeat(bytes))),
    };
    prost_types::Struct {
        fields: [("blob".to_owned(), value)].into(),
    }
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_request_over_the_size_limit_is_resource_exhausted_and_the_connection_lives_on(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let app = TestApp::builder(options).spawn().await;
    let (channel, opened) = counting_channel(app.addr).await;
    let client = TokenServiceClient::new(channel);
    issue(&client, "alice").await;

    let oversized = client
        .clone()
        .issue(IssueRequest {
            subject: "alice".into(),
            claims: Some(claims_of(2 * 1024 * 1024)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(oversized.code(), Code::ResourceExhausted, "{oversized:?}");

    issue(&client, "alice").await;
    assert_eq!(
        opened.load(Ordering::SeqCst),
        1,
        "the oversized call must not cost the connection"
    );
    app.stop().await;
}

fn empty_values(n: usize) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::ListValue(prost_types::ListValue {
            values: vec![prost_types::Value::default(); n],
        })),
    }
}

/// `{"k": {"k": ... []}}`: `depth` objects and arrays, the claims object included.
fn nested_claims(depth: usize) -> prost_types::Struct {
    let mut value = empty_values(0);
    for _ in 2..depth {
        value = prost_types::Value {
            kind: Some(prost_types::value::Kind::StructValue(prost_types::Struct {
                fields: [("k".to_owned(), value)].into(),
            })),
        };
    }
    prost_types::Struct {
        fields: [("k".to_owned(), value)].into(),
    }
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn issue_requests_past_the_decoders_bounds_are_resource_exhausted_and_just_within_them_judged_as_usual(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let app = TestApp::builder(options).spawn().await;
    let request = |scopes: usize, audiences: usize, claims: Option<prost_types::Struct>| IssueRequest {
        subject: "alice".into(),
        scopes: vec!["s".into(); scopes],
        audiences: vec!["a".into(); audiences],
        claims,
        ..Default::default()
    };
    let values = |n: usize| prost_types::Struct {
        fields: [("l".to_owned(), empty_values(n - 1))].into(),
    };
    for (past, named) in [
        (request(1025, 0, None), "scopes"),
        (request(0, 1025, None), "audiences"),
        (request(0, 0, Some(values(8193))), "claims"),
        (request(0, 0, Some(nested_claims(33))), "claims"),
    ] {
        let refused = app.client.clone().issue(past).await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains(named), "{refused:?}");
    }
    // At the bounds: decoded, and validated as ever.
    let over_64 = app.client.clone().issue(request(1024, 0, None)).await.unwrap_err();
    assert_invalid_argument(&over_64, "scopes");
    let over_8_kib = app
        .client
        .clone()
        .issue(request(0, 0, Some(values(8192))))
        .await
        .unwrap_err();
    assert_invalid_argument(&over_8_kib, "claims");
    app.client
        .clone()
        .issue(request(1, 1, Some(nested_claims(32))))
        .await
        .expect("32 deep is within every rule");
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn beyond_the_request_memory_budget_large_calls_are_refused_with_retry_after_and_small_ones_still_pass(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    use std::time::{Duration, Instant};

    let app = TestApp::builder(options).spawn().await;
    let pair = issue(&app.client, "alice").await;
    // Under the 1 MiB message limit; decoded, about 2 MiB charged to the budget.
    let large = IntrospectRequest {
        token: "a".repeat(1000 << 10),
        ..Default::default()
    };
    // Each sends its message and keeps its stream open: the server holds the message until the
    // stream ends, and the charge with it. Sixteen fill the 32 MiB budget.
    let held = channel(app.addr).await;
    let holders: Vec<_> = (0..24)
        .map(|_| {
            let (mut grpc, large) = (tonic::client::Grpc::new(held.clone()), large.clone());
            tokio::spawn(async move {
                grpc.ready().await.unwrap();
                let stream = futures::stream::once(async move { large }).chain(futures::stream::pending());
                let codec = tonic_prost::ProstCodec::<IntrospectRequest, IntrospectResponse>::default();
                let path = http::uri::PathAndQuery::from_static("/ratchet.v1.TokenService/Introspect");
                grpc.client_streaming(tonic::Request::new(stream), path, codec).await
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(20);
    let busy = loop {
        match app.client.clone().introspect(large.clone()).await {
            Err(status) if status.code() == Code::ResourceExhausted => break status,
            other => {
                assert!(Instant::now() < deadline, "never refused: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(busy.message().contains("in flight"), "{busy:?}");
    assert_eq!(
        busy.metadata().get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1")
    );
    assert!(
        introspect(&app.client, &pair.access_token).await.active,
        "a small call is never refused for the budget"
    );

    for holder in holders {
        holder.abort();
    }
    // Given back as the held calls end: the large call is judged again (too long for a token).
    loop {
        match app.client.clone().introspect(large.clone()).await {
            Err(status) if status.code() == Code::InvalidArgument => break,
            other => {
                assert!(Instant::now() < deadline, "the budget never came back: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    app.stop().await;
}

/// Resident memory of this process (server and client alike: nextest runs each test in a
/// process of its own).
fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Just under the 8 KiB claims limit in many small claims: the worst case for memory per byte
/// of token, since every claim is a separate allocation once parsed.
fn many_small_claims() -> serde_json::Map<String, serde_json::Value> {
    (0..650)
        .map(|i| (format!("k{i:04}"), serde_json::Value::from("v")))
        .collect()
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn introspecting_thousands_of_large_access_tokens_keeps_memory_near_the_cache_budget(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    const TOKENS: usize = 3_000;
    const BUDGET: usize = 4 * 1024 * 1024;
    // The server's key, and a copy of it to mint with here: 3,000 distinct tokens of one live
    // session, without 3,000 Issue calls (which this test is not about).
    let (key, der) = SigningKey::generate(KeyAlgorithm::EdDSA).unwrap();
    let minter = Keyring::new(KeySet::single(SigningKey::from_pkcs8_der(&der).unwrap()), 0);
    let app = TestApp::builder(options)
        .adjust(|parts| {
            parts.keys = KeySet::single(key);
            parts.settings.verified_cache_bytes = BUDGET;
        })
        .spawn()
        .await;
    let pair = issue(&app.client, "alice").await;
    let now = app.now().unix_timestamp();
    let tokens: Vec<String> = (0..TOKENS)
        .map(|i| {
            let claims = AccessClaims {
                iss: ISSUER.into(),
                sub: "alice".into(),
                aud: vec![AUDIENCE.into()],
                exp: now + 900,
                iat: now,
                nbf: now,
                jti: format!("jti-{i}"),
                client_id: String::new(),
                scope: String::new(),
                sid: pair.family_id.clone(),
                extra: many_small_claims(),
            };
            minter.sign(&claims).unwrap()
        })
        .collect();
    assert!(tokens[0].len() > 10_000, "{} bytes", tokens[0].len());

    let before = resident_bytes();
    futures::stream::iter(&tokens)
        .map(|token| introspect(&app.client, token))
        .buffer_unordered(16)
        .for_each(|answer| async move { assert!(answer.active) })
        .await;
    let growth = resident_bytes().saturating_sub(before);
    eprintln!("resident memory grew by {} MiB", growth >> 20);
    assert!(
        growth < BUDGET + (48 << 20),
        "introspecting {TOKENS} tokens grew the process by {} MiB",
        growth >> 20
    );
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn beyond_the_concurrency_limit_calls_are_shed_at_once_and_health_still_answers(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let app = TestApp::builder(options)
        .adjust(|parts| parts.settings.limits.max_concurrent_requests = 2)
        .spawn()
        .await;
    let pairs = [issue(&app.client, "alice").await, issue(&app.client, "bob").await];
    // Two rotations that take two seconds each hold both permits.
    app.hook_spends("perform pg_sleep(2); return new;").await;
    let slow: Vec<_> = pairs
        .iter()
        .map(|pair| {
            let mut client = app.client.clone();
            let refresh_token = pair.refresh_token.clone();
            tokio::spawn(async move { client.rotate(RotateRequest { refresh_token }).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let started = std::time::Instant::now();
    let shed = app
        .client
        .clone()
        .issue(IssueRequest {
            subject: "carol".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert_eq!(
        shed.metadata().get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1")
    );
    assert!(
        started.elapsed() < std::time::Duration::from_millis(500),
        "shed at once, not queued"
    );
    assert_eq!(app.health().await, ServingStatus::Serving, "probes are never shed");

    for call in slow {
        call.await.unwrap().expect("the calls in flight finish");
    }
    app.unhook_spends().await;
    issue(&app.client, "carol").await; // the permits came back
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn metadata_beyond_the_header_limit_is_refused_and_the_server_goes_on(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let app = TestApp::builder(options)
        .adjust(|parts| parts.settings.limits.max_header_bytes = 4096)
        .spawn()
        .await;
    let mut request = tonic::Request::new(IssueRequest {
        subject: "alice".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-padding", "p".repeat(8192).parse().unwrap());
    let refused = app.client.clone().issue(request).await;
    assert!(refused.is_err(), "8 KiB of metadata over a 4 KiB limit: {refused:?}");
    // Refused before any work: nothing was issued, and the next caller is served.
    assert!(app.sessions("alice").await.is_empty());
    issue(&app.client, "bob").await;
    app.stop().await;
}

/// Rotates until the first refusal; the number of calls that got through and the refusal.
async fn rotate_until_refused(
    app: &crate::support::TestApp,
    mut token: String,
    follow_chain: bool,
) -> (usize, String, tonic::Status) {
    for calls in 0..1_000 {
        match app.rotate(&token).await {
            Ok(pair) if follow_chain => token = pair.refresh_token,
            Ok(_) => {}
            Err(status) if status.code() == Code::ResourceExhausted => return (calls, token, status),
            Err(_) => {}
        }
    }
    panic!("1000 rotations and no limit");
}

#[track_caller]
fn assert_rate_limited(status: &tonic::Status) {
    use tonic_types::StatusExt as _;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, ratchet::grpc::status::reason::RATE_LIMITED);
    assert_eq!(info.metadata["limit"], "rotate");
    assert!(status.get_details_retry_info().is_some(), "{status:?}");
    assert!(status.metadata().get("retry-after").is_some(), "{status:?}");
}

async fn a_spent_token_replayed_in_a_loop_is_stopped_within_a_few_hundred_calls(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let pair = issue(&app.client, "alice").await;
    app.rotate(&pair.refresh_token).await.unwrap();
    let (calls, _, status) = rotate_until_refused(&app, pair.refresh_token, false).await;
    assert!(calls <= 300, "{calls} replays reached the database");
    assert_rate_limited(&status);
    app.stop().await;
}

async fn a_chain_rotated_flat_out_is_stopped_and_its_token_still_rotates_after_the_pause(db: Db) {
    use tonic_types::StatusExt as _;
    let app = TestApp::builder(db).spawn().await;
    let pair = issue(&app.client, "alice").await;
    let (calls, refused_token, status) = rotate_until_refused(&app, pair.refresh_token, true).await;
    assert!((64..=300).contains(&calls), "stopped after {calls} rotations");
    assert_rate_limited(&status);

    // Refused without spending: the token rotates once the family's bucket has room, by the
    // server's clock (the store keeps the bucket).
    let wait = status.get_details_retry_info().unwrap().retry_delay.unwrap();
    app.advance(time::Duration::try_from(wait).unwrap());
    let next = app
        .rotate(&refused_token)
        .await
        .expect("the refused token was not spent");
    assert_eq!(next.family_id, pair.family_id);
    app.stop().await;
}

on_every_backend!(
    a_spent_token_replayed_in_a_loop_is_stopped_within_a_few_hundred_calls,
    a_chain_rotated_flat_out_is_stopped_and_its_token_still_rotates_after_the_pause,
);

/// Issue 19: the family's Rotate limit holds across replicas, because the store keeps it. Two
/// servers on one database, a chain whose every rotation goes to the other one: neither sees a
/// token twice (so neither's per-token bucket fills), and before the store kept the family's
/// bucket neither knew the family of a token the other had handed out. The chain is stopped
/// after its burst all the same, and the refused token, unspent, rotates on either after the
/// pause.
#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_chain_alternating_between_two_replicas_is_stopped_after_one_burst_as_on_one_server(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    use tonic_types::StatusExt as _;
    const BURST: usize = 5;
    let limit = ratchet::domain::RotateLimit {
        per_second: std::num::NonZeroU32::new(1).unwrap(),
        burst: std::num::NonZeroU32::new(u32::try_from(BURST).unwrap()).unwrap(),
    };
    let first = TestApp::builder(options)
        .adjust(move |parts| parts.settings.policy.rotate_limit = limit)
        .spawn()
        .await;
    let second = first
        .replica()
        .adjust(move |parts| parts.settings.policy.rotate_limit = limit)
        .spawn()
        .await;
    let replicas = [first, second];
    let pair = issue(&replicas[0].client, "alice").await;
    let mut token = pair.refresh_token;
    let mut rotated = 0;
    let status = loop {
        match replicas[rotated % 2].rotate(&token).await {
            Ok(next) => token = next.refresh_token,
            Err(status) => break status,
        }
        rotated += 1;
        assert!(
            rotated <= BURST,
            "{rotated} rotations of one family through two replicas"
        );
    };
    assert_eq!(rotated, BURST, "{status:?}");
    assert_rate_limited(&status);

    let wait = status.get_details_retry_info().unwrap().retry_delay.unwrap();
    for app in &replicas {
        app.advance(time::Duration::try_from(wait).unwrap());
    }
    let next = replicas[(rotated + 1) % 2]
        .rotate(&token)
        .await
        .expect("the refused token was not spent");
    assert_eq!(next.family_id, pair.family_id);
    for app in replicas {
        app.stop().await;
    }
}
