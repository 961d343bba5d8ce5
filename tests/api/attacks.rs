//! The attacker's scenarios from the security review, each against a real server and database:
//! a database dump with old refresh tokens in hand, a replay whose caller hangs up before the
//! answer, an answer lost on the network after the spend was sent, a second unspent token forced
//! into a family, and a database session that silently is not SERIALIZABLE.
//!
//! Where they run: the dump tests on every backend (a stolen SQLite file is the same threat as a
//! PostgreSQL dump; [`TestApp::dump`] reads either), and so does the schema refusing a branched
//! family ([`TestApp::force_refresh_token`] writes behind the server into either). The rest on
//! PostgreSQL only, by nature: they cut or delay the PostgreSQL connection with a proxy, stall a
//! statement past PostgreSQL's statement timeout with a PL/pgSQL trigger, or strip the startup
//! options that make a PostgreSQL session SERIALIZABLE.

use std::collections::HashSet;
use std::time::Duration;

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ratchet::grpc::pb::{RotateRequest, TokenPair};
use ratchet::grpc::status::reason;
use ratchet::issuer::refresh_token::RefreshToken;
use ratchet::store::postgres::PoolSettings;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::Code;

use crate::support::{Db, Proxy, TestApp, assert_token_error, on_every_backend, test_policy};

fn secret_of(token: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(&token[3..]).unwrap()
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    digest(&SHA256, bytes).as_ref().to_vec()
}

/// Every 32-byte value anywhere in the database, as a dump would have it.
async fn dump_values(app: &TestApp) -> HashSet<Vec<u8>> {
    app.dump()
        .await
        .into_iter()
        .map(|stored| stored.bytes)
        .filter(|bytes| bytes.len() == 32)
        .collect()
}

/// How many seals a dump holds.
async fn seals(app: &TestApp) -> usize {
    app.dump()
        .await
        .iter()
        .filter(|stored| stored.table == "seals" && stored.column == "seal")
        .count()
}

/// What an attacker holding `dump` and the refresh tokens `known` learns with the seal scheme of
/// ratchet before the fix — pad = SHA-256(context ‖ spent secret), seal = successor XOR pad —
/// applied to every 32-byte value of the dump, again with every secret learned, until nothing new
/// comes: the secrets of every refresh token whose hash is in the dump.
fn unseal_with_the_old_scheme(dump: &HashSet<Vec<u8>>, known: &[Vec<u8>]) -> HashSet<Vec<u8>> {
    let mut learned: HashSet<Vec<u8>> = known.iter().cloned().collect();
    let mut frontier: Vec<Vec<u8>> = known.to_vec();
    while let Some(secret) = frontier.pop() {
        let pad = sha256(&[b"ratchet/v1/refresh-successor-seal".as_slice(), &secret].concat());
        for value in dump {
            let candidate: Vec<u8> = value.iter().zip(&pad).map(|(v, p)| v ^ p).collect();
            if dump.contains(&sha256(&candidate)) && learned.insert(candidate.clone()) {
                frontier.push(candidate);
            }
        }
    }
    learned
}

async fn rotate_chain(app: &TestApp, length: usize) -> Vec<TokenPair> {
    let mut chain = vec![app.issue("alice").await];
    for _ in 0..length {
        let next = app.rotate(&chain.last().unwrap().refresh_token).await.unwrap();
        chain.push(next);
    }
    chain
}

async fn a_database_dump_and_old_refresh_tokens_do_not_lead_to_later_ones(db: Db) {
    // With a grace window, the worst case: seals exist.
    let app = TestApp::builder(db)
        .reuse_grace(time::Duration::seconds(60))
        .spawn()
        .await;
    let chain = rotate_chain(&app, 5).await;
    let secrets: Vec<Vec<u8>> = chain.iter().map(|p| secret_of(&p.refresh_token)).collect();
    let dump = dump_values(&app).await;
    // The dump holds what the attack needs: every token's hash.
    for secret in &secrets {
        assert!(dump.contains(&sha256(secret)));
    }

    // The first token of the family, from an old device or a log: nothing later follows.
    let learned = unseal_with_the_old_scheme(&dump, &secrets[..1]);
    for (i, secret) in secrets.iter().enumerate().skip(1) {
        assert!(
            !learned.contains(secret),
            "token {i} of the chain was unsealed from the dump"
        );
    }
    // Even every spent token together does not open the live one, whose seal is still there
    // (the grace window may need it): it is keyed by a secret that is not in the database.
    let learned = unseal_with_the_old_scheme(&dump, &secrets[..5]);
    assert!(
        !learned.contains(&secrets[5]),
        "the live token was unsealed from the dump"
    );
    // And the real thing still works.
    app.rotate(&chain[5].refresh_token).await.unwrap();
    app.stop().await;
}

async fn without_a_grace_window_no_seal_is_stored_at_all(db: Db) {
    let app = TestApp::builder(db).reuse_grace(time::Duration::ZERO).spawn().await;
    rotate_chain(&app, 3).await;
    // Looking at the dump itself: this is about what a dump holds.
    assert_eq!(seals(&app).await, 0);
    app.stop().await;
}

async fn a_seal_is_cleared_when_the_token_it_seals_is_spent(db: Db) {
    let app = TestApp::builder(db)
        .reuse_grace(time::Duration::seconds(60))
        .spawn()
        .await;
    let chain = rotate_chain(&app, 4).await;
    assert_eq!(
        seals(&app).await,
        1,
        "only the live token, which a retry of the last rotation may need"
    );
    // The retry that seal exists for still works.
    let retried = app.rotate(&chain[3].refresh_token).await.unwrap();
    assert_eq!(retried.refresh_token, chain[4].refresh_token);
    app.stop().await;
}

on_every_backend!(
    a_database_dump_and_old_refresh_tokens_do_not_lead_to_later_ones,
    without_a_grace_window_no_seal_is_stored_at_all,
    a_seal_is_cleared_when_the_token_it_seals_is_spent,
    the_database_refuses_a_second_successor_or_a_second_first_token,
    the_database_refuses_a_parent_from_another_family,
);

/// A server whose database connections go through `proxy`.
async fn behind(proxy: &Proxy, options: PgConnectOptions, grace: time::Duration) -> TestApp {
    let settings = PoolSettings {
        max_connections: 4,
        timeout: Duration::from_secs(5),
    };
    let policy = ratchet::issuer::Policy {
        reuse_grace: grace,
        ..test_policy()
    };
    let pool = ratchet::store::postgres::pool(proxy.route(options.clone()), &settings);
    TestApp::builder(options)
        .pool(settings)
        .on_pool(pool)
        .policy(policy)
        .spawn()
        .await
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_replay_whose_caller_hangs_up_before_the_answer_still_revokes_the_family(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let proxy = Proxy::in_front_of(&options).await;
    let app = behind(&proxy, options, time::Duration::ZERO).await;
    let first = app.issue("alice").await;
    let second = app.rotate(&first.refresh_token).await.unwrap();

    // The thief replays the spent token; the database's answer is slow to come back, and the
    // caller gives up long before it does.
    proxy.delay_responses(Duration::from_millis(1500));
    let mut replay = tonic::Request::new(RotateRequest {
        refresh_token: first.refresh_token.clone(),
    });
    replay.set_timeout(Duration::from_millis(200));
    let status = app.client.clone().rotate(replay).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    proxy.delay_responses(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // PostgreSQL saw the replay, so the family is revoked: the live token is dead.
    assert_token_error(
        &app.rotate(&second.refresh_token).await.unwrap_err(),
        reason::TOKEN_REVOKED,
    );
    let sessions = app.sessions("alice").await;
    assert!(sessions.is_empty());
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn an_answer_lost_after_the_spend_was_sent_never_turns_the_retry_into_reuse(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    // No grace window: the strict setting, where a lost answer used to log the user out.
    let proxy = Proxy::in_front_of(&options).await;
    let app = behind(&proxy, options, time::Duration::ZERO).await;
    let pair = app.issue("alice").await;
    // The spend carries the presented token's hash: cut the network right after it is forwarded,
    // and bring it back shortly after.
    let hash = RefreshToken::parse(&pair.refresh_token).unwrap().hash();
    let restorer = proxy.cut_once_after_forwarding(hash.0.to_vec(), Duration::from_millis(300));

    let first = app.rotate(&pair.refresh_token).await;
    restorer.await.unwrap();
    assert!(proxy.fired(), "the spend never went through the proxy");
    let next = match first {
        Ok(next) => next,
        // Allowed only if nothing happened: then the retry must succeed.
        Err(status) if status.code() == Code::Unavailable => app.rotate(&pair.refresh_token).await.unwrap(),
        Err(status) => panic!("a lost answer must resolve to the pair or UNAVAILABLE, got {status:?}"),
    };
    // The pair works, the family is live, and the old token is spent for good.
    assert!(app.introspect(&next.access_token).await.active);
    let after = app.rotate(&next.refresh_token).await.unwrap();
    assert_token_error(
        &app.rotate(&pair.refresh_token).await.unwrap_err(),
        reason::TOKEN_REUSED,
    );
    assert!(!app.introspect(&after.access_token).await.active);
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn an_issue_whose_answer_was_lost_is_resolved_into_one_session(_pool: PgPoolOptions, options: PgConnectOptions) {
    let proxy = Proxy::in_front_of(&options).await;
    let app = behind(&proxy, options, time::Duration::ZERO).await;
    app.issue("warm-up").await;
    // The insert carries the subject: cut right after it is forwarded, restore shortly after.
    let subject = format!("lost-{}", uuid::Uuid::new_v4().simple());
    let restorer = proxy.cut_once_after_forwarding(subject.clone().into_bytes(), Duration::from_millis(300));
    let pair = app
        .client
        .clone()
        .issue(ratchet::grpc::pb::IssueRequest {
            subject: subject.clone(),
            ..Default::default()
        })
        .await
        .expect("a lost answer is resolved, not an error")
        .into_inner();
    restorer.await.unwrap();
    assert!(proxy.fired(), "the insert never went through the proxy");
    // One session, and it works.
    let sessions = app.sessions(&subject).await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].family_id, pair.family_id);
    app.rotate(&pair.refresh_token).await.unwrap();
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_statement_past_the_database_timeout_is_unavailable_and_did_nothing(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let settings = PoolSettings {
        max_connections: 4,
        timeout: Duration::from_secs(1),
    };
    let app = TestApp::builder(options)
        .pool(settings)
        .policy(test_policy())
        .spawn()
        .await;
    let pair = app.issue("alice").await;
    app.hook_spends("perform pg_sleep(3); return new;").await;
    // PostgreSQL cancels it at its statement timeout: a definite "nothing happened".
    let status = app.rotate(&pair.refresh_token).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    app.unhook_spends().await;
    app.rotate(&pair.refresh_token).await.unwrap();
    app.stop().await;
}

async fn the_database_refuses_a_second_successor_or_a_second_first_token(db: Db) {
    let app = TestApp::builder(db).reuse_grace(time::Duration::ZERO).spawn().await;
    let first = app.issue("alice").await;
    app.rotate(&first.refresh_token).await.unwrap();
    // Whatever a future code path might do, the schema itself refuses a branch: the spent token
    // cannot get a second successor, and the family cannot get a second first token.
    let spent = RefreshToken::parse(&first.refresh_token).unwrap().hash().0.to_vec();
    for (parent, name) in [(Some(spent), "a second successor"), (None, "a second first token")] {
        let error = app.force_refresh_token(&first.family_id, parent).await.expect_err(name);
        assert!(
            error.as_database_error().is_some_and(|e| e.is_unique_violation()),
            "{name}: {error}"
        );
    }
    app.stop().await;
}

/// Issue 20: a token naming as its parent a token of *another* family used to be accepted by the
/// schema, and then (one successor per parent) that other family's live token could never be
/// rotated again: whatever wrote such a row would end someone else's session. The schema refuses it
/// now (a composite foreign key), and the family it aimed at is untouched.
async fn the_database_refuses_a_parent_from_another_family(db: Db) {
    let app = TestApp::builder(db).reuse_grace(time::Duration::ZERO).spawn().await;
    let victim = app.issue("alice").await;
    let other = app.issue("mallory").await;
    let victims_live_token = RefreshToken::parse(&victim.refresh_token).unwrap().hash().0.to_vec();
    let error = app
        .force_refresh_token(&other.family_id, Some(victims_live_token))
        .await
        .expect_err("a parent from another family");
    assert!(
        error.as_database_error().is_some_and(|e| e.is_foreign_key_violation()),
        "{error}"
    );
    app.rotate(&victim.refresh_token).await.unwrap();
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_session_that_is_not_serializable_is_never_used(_pool: PgPoolOptions, options: PgConnectOptions) {
    // A pooler in front of PostgreSQL that drops startup parameters, ours included.
    let proxy = Proxy::in_front_of(&options).await;
    proxy.strip_startup_options();
    let app = behind(&proxy, options, time::Duration::ZERO).await;
    let status = app
        .client
        .clone()
        .issue(ratchet::grpc::pb::IssueRequest {
            subject: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    app.stop().await;
}
