//! Request ids (issue 17): every call to our services gets one, the caller's `x-request-id` if it
//! is sane, else a new one; it comes back in the answer's metadata, on errors too (a refusal of
//! the policy before any handler ran included), and every log line of the call carries it with
//! the RPC, the caller and, once known, the family; the line that ends the call adds its status
//! and latency.
//!
//! Where they run: the answers on every backend (Issue and Rotate reach the store); the log lines
//! through the binary on SQLite, which needs no database server (what a line carries is the
//! transport's, whatever the store).

use ratchet::grpc::pb::revoke_request::Target;
use ratchet::grpc::pb::{IntrospectRequest, IssueRequest, RevokeRequest, RotateRequest};
use ratchet::policy::file::api_key_sha256;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request};

use crate::support::{DataDir, Db, TestApp, on_every_backend, policy_file};

const KEY: &str = "request-id-test-key-0123";

fn with_id<T>(message: T, id: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().expect("a valid metadata value"));
    request
}

fn id_of(metadata: &MetadataMap) -> String {
    metadata
        .get("x-request-id")
        .expect("every answer carries x-request-id")
        .to_str()
        .unwrap()
        .to_owned()
}

fn is_ours(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|byte| byte.is_ascii_hexdigit())
}

fn alice() -> IssueRequest {
    IssueRequest {
        subject: "alice".into(),
        ..Default::default()
    }
}

async fn every_answer_carries_the_callers_request_id_or_a_new_one(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let mut client = app.client.clone();

    let issued = client.issue(with_id(alice(), "login-7f3a")).await.unwrap();
    assert_eq!(id_of(issued.metadata()), "login-7f3a");
    let pair = issued.into_inner();
    let rotate = || RotateRequest {
        refresh_token: pair.refresh_token.clone(),
    };
    client.rotate(rotate()).await.unwrap();
    // An error from the handler (a replay) and one from validation, before any store work.
    let replay = client.rotate(with_id(rotate(), "replay-1")).await.unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated);
    assert_eq!(id_of(replay.metadata()), "replay-1");
    let invalid = client
        .issue(with_id(IssueRequest::default(), "no-subject"))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert_eq!(id_of(invalid.metadata()), "no-subject");

    // None given: a new one for each call.
    let introspect = || IntrospectRequest {
        token: pair.access_token.clone(),
        ..Default::default()
    };
    let first = id_of(client.introspect(introspect()).await.unwrap().metadata());
    let second = id_of(client.introspect(introspect()).await.unwrap().metadata());
    assert!(is_ours(&first) && is_ours(&second), "{first} {second}");
    assert_ne!(first, second);

    // Not sane: replaced, never echoed (too long; shaped like one of our refresh tokens, which
    // must not reach a log line by way of the id).
    for insane in ["x".repeat(129), pair.refresh_token.clone()] {
        let answer = client.introspect(with_id(introspect(), &insane)).await.unwrap();
        let id = id_of(answer.metadata());
        assert!(is_ours(&id), "{insane:?} was kept as {id:?}");
    }
    app.stop().await;
}

on_every_backend!(every_answer_carries_the_callers_request_id_or_a_new_one);

/// A call the policy refuses never reaches a handler; its answer still names the call.
#[tokio::test]
async fn a_call_the_policy_refuses_still_gets_its_request_id_back() {
    let policy = format!(
        "[[caller]]\nname = \"reader\"\napi_key_sha256 = \"{}\"\nrpcs = [\"Introspect\"]\n",
        api_key_sha256(KEY)
    );
    let file = std::sync::Arc::new(ratchet::policy::reload::PolicyFile::load(&policy_file(&policy)).unwrap());
    let app = TestApp::builder(Db::Sqlite)
        .adjust(|parts| parts.settings.access.policy = Some(file))
        .spawn()
        .await;
    let refused = app.client.clone().issue(keyed(alice(), "refused-1")).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(id_of(refused.metadata()), "refused-1");
    let unknown = app
        .client
        .clone()
        .issue(with_id(alice(), "nobody-1"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert_eq!(id_of(unknown.metadata()), "nobody-1");
    app.stop().await;
}

/// Through the binary with JSON logs at debug: the line ending each call carries the request id,
/// the RPC, the caller, the family once known, the status and the latency; a line the call writes
/// from the task its write runs on carries them too; none carries a token.
#[tokio::test]
async fn every_log_line_of_a_call_carries_its_request_id_rpc_caller_status_and_latency() {
    let dir = DataDir::new();
    let policy = format!(
        "[[caller]]\nname = \"login-svc\"\napi_key_sha256 = \"{}\"\nrpcs = [\"*\"]\n",
        api_key_sha256(KEY)
    );
    let policy = policy_file(&policy);
    let (server, client, log) = dir
        .serve_with(
            "server.log",
            &[
                ("RATCHET_LOG_FORMAT", "json"),
                ("RUST_LOG", "info,ratchet::grpc::call=debug"),
                ("RATCHET_POLICY", policy.to_str().unwrap()),
            ],
        )
        .await;
    let pair = client
        .clone()
        .issue(keyed(alice(), "trace-issue"))
        .await
        .unwrap()
        .into_inner();
    let garbage = client
        .clone()
        .rotate(keyed(
            RotateRequest {
                refresh_token: "rt_not-a-token".into(),
            },
            "trace-rotate",
        ))
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::Unauthenticated);
    // A call without an id: the one in its log line is the one it was answered with.
    let mut unnamed = Request::new(alice());
    unnamed.metadata_mut().insert("x-api-key", KEY.parse().unwrap());
    let answered = client.clone().issue(unnamed).await.unwrap();
    let made = id_of(answered.metadata());
    let other = answered.into_inner();
    let revoke = RevokeRequest {
        target: Some(Target::FamilyId(other.family_id.clone())),
    };
    client.clone().revoke(keyed(revoke, "trace-revoke")).await.unwrap();
    assert!(server.terminate().await.success());

    let text = dir.log(&log);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let ended = |id: &str| {
        lines
            .iter()
            .find(|line| line["fields"]["message"] == "call ended" && line["call"]["request_id"] == id)
            .unwrap_or_else(|| panic!("no line ends the call {id}:\n{text}"))
            .clone()
    };
    let issued = ended("trace-issue");
    assert_eq!(issued["call"]["rpc"], "Issue", "{issued}");
    assert_eq!(issued["call"]["caller"], "login-svc", "{issued}");
    assert_eq!(issued["call"]["family"], pair_family(&pair.access_token), "{issued}");
    assert_eq!(issued["fields"]["status"], "OK", "{issued}");
    assert!(issued["fields"]["latency_us"].as_u64().is_some(), "{issued}");
    let rotated = ended("trace-rotate");
    assert_eq!(rotated["call"]["rpc"], "Rotate", "{rotated}");
    assert_eq!(rotated["fields"]["status"], "UNAUTHENTICATED", "{rotated}");
    assert_eq!(ended(&made)["call"]["family"], pair_family(&other.access_token));
    // Written by the revocation itself, on the task the write runs on (`grpc::service::detached`).
    let revoked = lines
        .iter()
        .find(|line| line["fields"]["message"] == "family revoked")
        .unwrap_or_else(|| panic!("no line of the revocation:\n{text}"));
    assert_eq!(revoked["call"]["request_id"], "trace-revoke", "{revoked}");
    assert_eq!(revoked["call"]["rpc"], "Revoke", "{revoked}");
    assert_eq!(revoked["call"]["caller"], "login-svc", "{revoked}");

    for token in [
        &pair.access_token,
        &pair.refresh_token,
        &other.access_token,
        &other.refresh_token,
    ] {
        assert!(!text.contains(&token[3..20]), "part of a token reached the log");
    }
    assert!(!text.contains(KEY), "the API key reached the log");
}

fn keyed<T>(message: T, id: &str) -> Request<T> {
    let mut request = with_id(message, id);
    request.metadata_mut().insert("x-api-key", KEY.parse().unwrap());
    request
}

/// The family id an access token names (its `sid` claim).
fn pair_family(access_token: &str) -> serde_json::Value {
    crate::support::jwt_part(access_token, 1)["sid"].clone()
}
