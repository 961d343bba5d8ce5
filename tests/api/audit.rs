//! The audit trail as an incident responder reads it: the real server, called by named callers
//! (API keys under a caller policy), records what happened to each session, and `ratchet events`
//! prints it as JSON lines, newest first, while that server runs, on PostgreSQL and on SQLite
//! (where `serve` holds the database's lock file and `events` must read beside it). Retention,
//! through the cleanup, on every backend.
//!
//! What it leaves out: each store's promise (an event for every change, none for a refused one,
//! none twice), which the store contract suite proves on every backend (`store::contract`).

use std::process::Command;

use ratchet::grpc::pb::revoke_request::Target;
use ratchet::grpc::pb::token_service_client::TokenServiceClient;
use ratchet::grpc::pb::{IssueRequest, RevokeRequest, RotateRequest, TokenPair};
use ratchet::policy::file::api_key_sha256;
use ratchet::store::{EventFilter, EventKind, FamilyStore as _};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::support::{BIN, DataDir, Db, Server, TestApp, database_url, on_every_backend, policy_file, test_cleanup};

const LOGIN_KEY: &str = "audit-login-key-0123456789";
const SUPPORT_KEY: &str = "audit-support-key-0123456789";

/// `login` issues and rotates; `support-desk` revokes.
fn policy() -> String {
    format!(
        "[[caller]]\nname = \"login\"\napi_key_sha256 = \"{}\"\nrpcs = [\"Issue\", \"Rotate\"]\naudiences = [\"*\"]\nscopes = [\"*\"]\nclaims = [\"*\"]\n\
         [[caller]]\nname = \"support-desk\"\napi_key_sha256 = \"{}\"\nrpcs = [\"Revoke\"]\n",
        api_key_sha256(LOGIN_KEY),
        api_key_sha256(SUPPORT_KEY),
    )
}

fn as_caller<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("x-api-key", key.parse().unwrap());
    request
}

/// What [`incident`] did, to look for in the trail.
struct Incident {
    /// Issued, rotated twice, replayed (reuse detected).
    stolen: TokenPair,
    /// Issued, then revoked by the support desk by family id.
    ended: TokenPair,
    /// Issued for bob, then revoked with every session of bob's.
    bob: TokenPair,
    /// Every token handed out.
    tokens: Vec<String>,
}

/// A session stolen and replayed, one ended by the support desk, and bob's sessions ended by
/// subject.
async fn incident(client: &TokenServiceClient<Channel>) -> Incident {
    let mut client = client.clone();
    let issue = |subject: &str| IssueRequest {
        subject: subject.into(),
        client_id: "web".into(),
        ..Default::default()
    };
    let rotate = |token: &str| RotateRequest {
        refresh_token: token.into(),
    };
    let stolen = client
        .issue(as_caller(issue("alice"), LOGIN_KEY))
        .await
        .unwrap()
        .into_inner();
    let first = client
        .rotate(as_caller(rotate(&stolen.refresh_token), LOGIN_KEY))
        .await
        .unwrap()
        .into_inner();
    let second = client
        .rotate(as_caller(rotate(&first.refresh_token), LOGIN_KEY))
        .await
        .unwrap()
        .into_inner();
    let replay = client
        .rotate(as_caller(rotate(&stolen.refresh_token), LOGIN_KEY))
        .await
        .unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated);
    let ended = client
        .issue(as_caller(issue("alice"), LOGIN_KEY))
        .await
        .unwrap()
        .into_inner();
    let revoke = |target| RevokeRequest { target: Some(target) };
    // The support desk passes its ticket number as the request id.
    let mut by_ticket = as_caller(revoke(Target::FamilyId(ended.family_id.clone())), SUPPORT_KEY);
    by_ticket
        .metadata_mut()
        .insert("x-request-id", "ticket-4711".parse().unwrap());
    let answer = client.revoke(by_ticket).await.unwrap().into_inner();
    assert_eq!(answer.families_revoked, 1);
    let bob = client
        .issue(as_caller(issue("bob"), LOGIN_KEY))
        .await
        .unwrap()
        .into_inner();
    let answer = client
        .revoke(as_caller(revoke(Target::Subject("bob".into())), SUPPORT_KEY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.families_revoked, 1);
    // Refused: nothing is recorded for them.
    let unknown = client
        .revoke(as_caller(
            revoke(Target::FamilyId(uuid::Uuid::new_v4().to_string())),
            SUPPORT_KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unknown.families_revoked, 0);
    let mut tokens = Vec::new();
    for pair in [&stolen, &first, &second, &ended, &bob] {
        tokens.extend([pair.access_token.clone(), pair.refresh_token.clone()]);
    }
    Incident {
        stolen,
        ended,
        bob,
        tokens,
    }
}

/// `ratchet events ARGS` with `env`; its JSON lines. Panics unless it succeeded.
fn events(env: &[(&str, &str)], args: &[&str]) -> Vec<Value> {
    let output = events_command(env, args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ratchet events {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")))
        .collect()
}

fn events_command(env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("events")
        .args(args)
        .env_remove("DATABASE_URL")
        .envs(env.iter().copied());
    command
}

/// `field` of each event.
fn column<'a>(events: &'a [Value], field: &str) -> Vec<&'a str> {
    events
        .iter()
        .map(|event| event[field].as_str().unwrap_or("null"))
        .collect()
}

/// The responder's questions, asked of the binary while the server that wrote the trail runs.
fn the_responders_questions_are_answered(env: &[(&str, &str)], incident: &Incident) {
    // "Everything that happened to family X": newest first, who did it, and nothing else's.
    let stolen = events(env, &["--family", &incident.stolen.family_id]);
    assert_eq!(
        column(&stolen, "kind"),
        ["reuse_detected", "rotated", "rotated", "issued"],
        "{stolen:#?}"
    );
    assert!(stolen.iter().all(|event| event["caller"] == "login"), "{stolen:#?}");
    assert!(
        stolen
            .iter()
            .all(|event| event["subject"] == "alice" && event["client_id"] == "web")
    );
    let ids: Vec<i64> = stolen.iter().map(|event| event["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|pair| pair[0] > pair[1]), "newest first: {ids:?}");

    // "Every reuse detection today".
    let today = events(env, &["--kind", "reuse_detected", "--since", "24h"]);
    assert_eq!(column(&today, "family_id"), [incident.stolen.family_id.as_str()]);
    assert!(events(env, &["--kind", "reuse_detected", "--since", "2999-01-01T00:00:00Z"]).is_empty());

    // "Who revoked this session": by family id, and bob's by subject.
    let ended = events(env, &["--family", &incident.ended.family_id, "--kind", "revoked"]);
    assert_eq!(column(&ended, "caller"), ["support-desk"]);
    assert_eq!(column(&ended, "detail"), ["family"]);
    assert_eq!(
        column(&ended, "request_id"),
        ["ticket-4711"],
        "the caller's own request id"
    );
    let bob = events(env, &["--subject", "bob"]);
    assert_eq!(column(&bob, "kind"), ["revoked", "issued"]);
    assert_eq!(column(&bob, "caller"), ["support-desk", "login"]);
    assert_eq!(column(&bob, "detail"), ["subject", "null"]);
    assert_eq!(bob[0]["family_id"], incident.bob.family_id.as_str());

    // Everything, bounded: three issues, two rotations, one detection, two revocations.
    let all = events(env, &[]);
    assert_eq!(all.len(), 8, "{all:#?}");
    // Every call has a request id: the caller's, else one the server made (32 hex digits), one
    // per call.
    let ids = column(&all, "request_id");
    assert!(
        ids.iter()
            .all(|id| *id == "ticket-4711" || (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))),
        "{ids:?}"
    );
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "one id per call: {ids:?}");
    assert_eq!(events(env, &["--limit", "3"]), all[..3]);
    for event in &all {
        assert!(
            time::OffsetDateTime::parse(
                event["at"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339
            )
            .is_ok(),
            "{event}"
        );
    }

    // A dump of the trail holds no token: the lines above are there, and no token is among them.
    let dump = serde_json::to_string(&all).unwrap();
    for token in &incident.tokens {
        assert!(!dump.contains(token.as_str()), "a token in the audit trail");
        assert!(!dump.contains(&token[3..20]), "part of a token in the audit trail");
    }

    // Bad input: every problem named, exit 64, nothing printed.
    let bad = events_command(
        env,
        &[
            "--family", "nope", "--kind", "stolen", "--limit", "10001", "--since", "soon",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(bad.status.code(), Some(64), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(bad.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    for flag in ["family: ", "kind: ", "limit: ", "since: "] {
        assert!(stderr.contains(&format!("error: {flag}")), "{stderr}");
    }
}

/// With rotations audited, and a caller policy, so that each event names who did it.
fn server_env(policy: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("RATCHET_POLICY", policy.display().to_string()),
        ("RATCHET_AUDIT_ROTATIONS", "true".into()),
    ]
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn on_postgres_ratchet_events_answers_the_responders_questions_while_the_server_runs(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let url = database_url(&options, options.get_database().unwrap());
    let scratch = std::env::temp_dir().join(format!("ratchet-audit-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch).unwrap();
    let policy = policy_file(&policy());
    let env = server_env(&policy);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let addr = format!("127.0.0.1:{}", crate::support::free_port()).parse().unwrap();
    let server = Server::start_with(&url, &scratch.join("data"), &scratch.join("server.log"), addr, &env);
    let client = server.client().await;
    let incident = incident(&client).await;

    the_responders_questions_are_answered(&[("DATABASE_URL", &url)], &incident);
    assert!(server.terminate().await.success());
    let _ = std::fs::remove_dir_all(&scratch);
}

#[tokio::test]
async fn on_sqlite_ratchet_events_reads_beside_the_server_that_holds_the_database() {
    let dir = DataDir::new();
    let policy = policy_file(&policy());
    let env = server_env(&policy);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (server, client, _) = dir.serve_with("server.log", &env).await;
    let incident = incident(&client).await;

    let data = dir.0.join("data").display().to_string();
    the_responders_questions_are_answered(&[("RATCHET_DATA_DIR", &data)], &incident);
    // Reading took no claim on the database: the server still writes.
    let carol = IssueRequest {
        subject: "carol".into(),
        ..Default::default()
    };
    client.clone().issue(as_caller(carol, LOGIN_KEY)).await.unwrap();
    assert_eq!(events(&[("RATCHET_DATA_DIR", &data)], &["--subject", "carol"]).len(), 1);
    assert!(server.terminate().await.success());

    // No database: said so, and none is created.
    let empty = DataDir::new();
    let missing = empty.0.join("data").display().to_string();
    let output = events_command(&[("RATCHET_DATA_DIR", &missing)], &[]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("there is no SQLite database"), "{stderr}");
    assert!(!empty.0.join("data").join("ratchet.db").exists());
}

/// Events older than `--audit-retention` go with the cleanup; the others, and the families, stay
/// as their own rules say.
async fn the_cleanup_deletes_audit_events_past_their_retention(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let mut old = Vec::new();
    for _ in 0..3 {
        old.push(app.issue("alice").await.family_id);
    }
    app.advance(Duration::days(60));
    let recent = app.issue("alice").await;
    app.advance(Duration::days(31));
    let settings = ratchet::issuer::cleanup::CleanupSettings {
        audit_retention: Duration::days(90),
        batch: 2,
        ..test_cleanup()
    };

    let report = app.collect_garbage(&settings).await;
    assert_eq!(report.events, 3, "{report:?}");
    let left = app.store.events(&EventFilter::latest(100)).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].family_id.to_string(), recent.family_id);
    assert_eq!(left[0].kind, EventKind::Issued);
    assert_eq!(app.collect_garbage(&settings).await.events, 0);
    app.stop().await;
}

on_every_backend!(the_cleanup_deletes_audit_events_past_their_retention);
