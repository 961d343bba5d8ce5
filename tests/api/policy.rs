//! The caller policy (issue 11): who may call which RPC and mint what, through the real server.
//! Callers authenticate with API keys here (mutual TLS is the transport's part); the mTLS path is
//! exercised on the layer itself with a [`PeerIdentity`] put into the request's extensions.
//!
//! Where they run: the tests that Issue (or Rotate) through a policy, and count what the store
//! holds afterwards, run on every backend. The ones that never reach the store stay on
//! PostgreSQL: a refused RPC, health and reflection (transport only), the layer on its own, the
//! configuration checks of `serve`, and the binary test (the `ratchet serve` process on
//! DATABASE_URL, with its SIGHUP reload).

use std::sync::Arc;
use std::time::Duration;

use ratchet::grpc::access::{AccessLayer, AuthorizedCaller};
use ratchet::grpc::pb::{IssueRequest, ListSessionsRequest, RotateRequest};
use ratchet::grpc::status::reason;
use ratchet::policy::file::api_key_sha256;
use ratchet::policy::reload::{PolicyFile, Reloaded};
use ratchet::transport::PeerIdentity;
use ratchet::transport::identity::SpiffeId;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt as _;
use tower::{Layer as _, ServiceExt as _};

use crate::support::{
    AUDIENCE, BIN, Db, Server, TestApp, database_url, free_port, list_services, on_every_backend, policy_file,
};

pub const LOGIN_KEY: &str = "login-key-0123456789";
pub const BARE_KEY: &str = "bare-key-0123456789";

/// The issue's example, with API keys: `login` may Issue and Rotate within patterns, `bare` has
/// no lists, `admin` may do anything.
pub fn example_policy() -> String {
    format!(
        r#"
        [[caller]]
        name = "login"
        api_key_sha256 = "{login}"
        rpcs = ["Issue", "Rotate", "Revoke"]
        audiences = ["api", "web-*"]
        scopes = ["read", "write", "admin:*"]
        claims = ["tenant"]

        [[caller]]
        name = "bare"
        api_key_sha256 = "{bare}"
        rpcs = ["Issue"]

        [[caller]]
        name = "mesh-peer"
        id = "spiffe://corp.example/ns/auth/sa/login"
        rpcs = ["Introspect"]
        "#,
        login = api_key_sha256(LOGIN_KEY),
        bare = api_key_sha256(BARE_KEY),
    )
}

/// A server enforcing the policy in `text`; the file, to reload it.
pub async fn spawn_with_policy(db: Db, text: &str) -> (TestApp, Arc<PolicyFile>) {
    let file = Arc::new(PolicyFile::load(&policy_file(text)).unwrap());
    let policy = file.clone();
    let app = TestApp::builder(db)
        .adjust(|parts| parts.settings.access.policy = Some(policy))
        .spawn()
        .await;
    (app, file)
}

/// `message` with `key` as `x-api-key`.
pub fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("x-api-key", key.parse().unwrap());
    request
}

fn issue_request(audiences: &[&str], scopes: &[&str], claims: &[&str]) -> IssueRequest {
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
    IssueRequest {
        subject: "alice".into(),
        audiences: strings(audiences),
        scopes: strings(scopes),
        claims: Some(prost_types::Struct {
            fields: claims
                .iter()
                .map(|c| {
                    let value = prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue("v".into())),
                    };
                    ((*c).to_owned(), value)
                })
                .collect(),
        }),
        ..Default::default()
    }
}

async fn issue_as(app: &TestApp, key: &str, request: IssueRequest) -> Result<ratchet::grpc::pb::TokenPair, Status> {
    app.client
        .clone()
        .issue(with_key(request, key))
        .await
        .map(tonic::Response::into_inner)
}

#[track_caller]
fn assert_denied(status: &Status, refused: &str, name: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(name), "{status:?} should name {name}");
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, reason::NOT_ALLOWED);
    assert_eq!(info.metadata["refused"], refused);
    assert_eq!(info.metadata["name"], name);
}

#[track_caller]
fn assert_unknown_caller(status: &Status) {
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, reason::CALLER_UNKNOWN, "not a token failure");
}

/// Alice's sessions: every request here issues for her. Through the store, not ListSessions,
/// which the policy under test may refuse.
async fn families(app: &TestApp) -> usize {
    app.live_families("alice").await
}

async fn a_call_without_a_known_caller_is_unauthenticated_and_does_nothing(db: Db) {
    let (app, _) = spawn_with_policy(db, &example_policy()).await;
    let no_key = app
        .client
        .clone()
        .issue(issue_request(&[], &[], &[]))
        .await
        .unwrap_err();
    assert_unknown_caller(&no_key);
    let wrong_key = issue_as(&app, "not-a-key", issue_request(&[], &[], &[]))
        .await
        .unwrap_err();
    assert_unknown_caller(&wrong_key);
    assert!(!wrong_key.message().contains("not-a-key"), "the key is never echoed");
    let rotate = app
        .client
        .clone()
        .rotate(RotateRequest {
            refresh_token: "rt_x".into(),
        })
        .await
        .unwrap_err();
    assert_unknown_caller(&rotate);
    assert_eq!(families(&app).await, 0);
    app.stop().await;
}

async fn api_keys_work_as_a_bearer_or_as_x_api_key(db: Db) {
    let (app, _) = spawn_with_policy(db, &example_policy()).await;
    issue_as(&app, LOGIN_KEY, issue_request(&[], &[], &[])).await.unwrap();
    let mut bearer = Request::new(issue_request(&[], &[], &[]));
    bearer
        .metadata_mut()
        .insert("authorization", format!("Bearer {LOGIN_KEY}").parse().unwrap());
    app.client.clone().issue(bearer).await.unwrap();
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn an_rpc_the_caller_may_not_call_is_permission_denied_naming_it(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let (app, _) = spawn_with_policy(Db::Postgres(options), &example_policy()).await;
    let status = app
        .client
        .clone()
        .list_sessions(with_key(
            ListSessionsRequest {
                subject: "alice".into(),
                ..Default::default()
            },
            LOGIN_KEY,
        ))
        .await
        .unwrap_err();
    assert_denied(&status, "rpc", "ListSessions");
    assert!(status.message().contains("login"), "names the caller: {status:?}");
    app.stop().await;
}

async fn each_audience_scope_and_claim_must_match_the_callers_patterns(db: Db) {
    let (app, _) = spawn_with_policy(db, &example_policy()).await;
    let allowed = issue_request(&["api", "web-shop"], &["read", "admin:users"], &["tenant"]);
    issue_as(&app, LOGIN_KEY, allowed).await.unwrap();
    for (request, refused, name) in [
        (issue_request(&["api", "billing"], &[], &[]), "audience", "billing"),
        (issue_request(&["web"], &[], &[]), "audience", "web"),
        (issue_request(&[], &["read", "delete"], &[]), "scope", "delete"),
        (issue_request(&[], &["admin"], &[]), "scope", "admin"),
        (issue_request(&[], &[], &["tenant", "role"]), "claim", "role"),
    ] {
        let status = issue_as(&app, LOGIN_KEY, request).await.unwrap_err();
        assert_denied(&status, refused, name);
    }
    assert_eq!(families(&app).await, 1, "refused before any database work");
    app.stop().await;
}

async fn a_caller_without_lists_may_issue_only_the_default_audience(db: Db) {
    let (app, _) = spawn_with_policy(db, &example_policy()).await;
    let pair = issue_as(&app, BARE_KEY, issue_request(&[], &[], &[])).await.unwrap();
    assert_eq!(
        crate::support::jwt_part(&pair.access_token, 1)["aud"],
        serde_json::json!([AUDIENCE])
    );
    issue_as(&app, BARE_KEY, issue_request(&[AUDIENCE], &[], &[]))
        .await
        .unwrap();
    for (request, refused, name) in [
        (issue_request(&["api"], &[], &[]), "audience", "api"),
        (issue_request(&[], &["read"], &[]), "scope", "read"),
        (issue_request(&[], &[], &["tenant"]), "claim", "tenant"),
    ] {
        assert_denied(&issue_as(&app, BARE_KEY, request).await.unwrap_err(), refused, name);
    }
    app.stop().await;
}

async fn star_allows_every_rpc_audience_scope_and_claim(db: Db) {
    let key = "admin-key-0123456789";
    let text = format!(
        "[[caller]]\nname = \"admin\"\napi_key_sha256 = \"{}\"\nrpcs = [\"*\"]\naudiences = [\"*\"]\nscopes = [\"*\"]\nclaims = [\"*\"]\n",
        api_key_sha256(key)
    );
    let (app, _) = spawn_with_policy(db, &text).await;
    issue_as(&app, key, issue_request(&["anything"], &["at:all"], &["x"]))
        .await
        .unwrap();
    app.client
        .clone()
        .list_sessions(with_key(
            ListSessionsRequest {
                subject: "alice".into(),
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap();
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn health_and_reflection_stay_open_under_a_policy(_pool: PgPoolOptions, options: PgConnectOptions) {
    let (app, _) = spawn_with_policy(Db::Postgres(options), &example_policy()).await;
    app.wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let services = list_services(app.addr).await;
    assert!(services.contains(&"ratchet.v1.TokenService".to_owned()), "{services:?}");
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn reflection_can_be_turned_off(_pool: PgPoolOptions, options: PgConnectOptions) {
    let app = TestApp::builder(options)
        .adjust(|parts| parts.settings.access.reflection = false)
        .spawn()
        .await;
    let mut client = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
        crate::support::channel(app.addr).await,
    );
    let status = client
        .server_reflection_info(futures::stream::iter(Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    app.stop().await;
}

async fn a_reload_puts_a_new_policy_in_force_and_a_broken_file_keeps_the_old_one(db: Db) {
    let (app, file) = spawn_with_policy(db, &example_policy()).await;
    let newcomer = "newcomer-key-0123456789";
    assert_unknown_caller(
        &issue_as(&app, newcomer, issue_request(&[], &[], &[]))
            .await
            .unwrap_err(),
    );

    let added = format!(
        "{}\n[[caller]]\nname = \"newcomer\"\napi_key_sha256 = \"{}\"\nrpcs = [\"Issue\"]\n",
        example_policy(),
        api_key_sha256(newcomer)
    );
    std::fs::write(file.path(), &added).unwrap();
    assert_eq!(file.reload().unwrap(), Reloaded::Changed { callers: 4 });
    issue_as(&app, newcomer, issue_request(&[], &[], &[])).await.unwrap();

    std::fs::write(file.path(), "[[caller]]\nname = \"x\"\nscopez = 1\n").unwrap();
    assert!(file.reload().is_err());
    issue_as(&app, newcomer, issue_request(&[], &[], &[]))
        .await
        .expect("the old policy is still in force");
    app.stop().await;
}

async fn over_its_rate_a_caller_is_resource_exhausted_with_retry_info_before_any_database_work(db: Db) {
    let key = "limited-key-0123456789";
    let text = format!(
        "[[caller]]\nname = \"limited\"\napi_key_sha256 = \"{}\"\nrpcs = [\"Issue\"]\nrate = {{ per_second = 1, burst = 2 }}\n",
        api_key_sha256(key)
    );
    let (app, _) = spawn_with_policy(db, &text).await;
    issue_as(&app, key, issue_request(&[], &[], &[])).await.unwrap();
    issue_as(&app, key, issue_request(&[], &[], &[])).await.unwrap();
    let status = issue_as(&app, key, issue_request(&[], &[], &[])).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let retry = status.get_details_retry_info().expect("a RetryInfo detail");
    assert!(retry.retry_delay.unwrap() <= Duration::from_secs(1), "{retry:?}");
    assert_eq!(status.metadata().get("retry-after").unwrap(), "1");
    assert_eq!(status.get_details_error_info().unwrap().reason, reason::RATE_LIMITED);
    assert_eq!(families(&app).await, 2, "the refused call wrote nothing");

    tokio::time::sleep(retry.retry_delay.unwrap()).await;
    issue_as(&app, key, issue_request(&[], &[], &[]))
        .await
        .expect("allowed again after the pause");
    app.stop().await;
}

const ANYONE_KEY: &str = "anyone-key-0123456789";
const ISSUER_KEY: &str = "issuer-key-0123456789";
const SUPPORT_KEY: &str = "support-key-0123456789";

/// The issue's reproduction (issue 20, item 5): `issuer` may Issue for audience `api`, but only
/// for some subjects and its own client id; `support` may list and revoke sessions of `user-*`
/// only; `anyone` may do anything (it stands for the other callers whose sessions are at stake).
fn scoped_policy() -> String {
    format!(
        r#"
        [[caller]]
        name = "anyone"
        api_key_sha256 = "{anyone}"
        rpcs = ["*"]
        audiences = ["*"]

        [[caller]]
        name = "issuer"
        api_key_sha256 = "{issuer}"
        rpcs = ["Issue"]
        audiences = ["api"]
        subjects = ["victim", "user-*"]
        client_ids = ["issuer-app"]

        [[caller]]
        name = "support"
        api_key_sha256 = "{support}"
        rpcs = ["Revoke", "ListSessions"]
        subjects = ["user-*"]
        "#,
        anyone = api_key_sha256(ANYONE_KEY),
        issuer = api_key_sha256(ISSUER_KEY),
        support = api_key_sha256(SUPPORT_KEY),
    )
}

fn issue_for(subject: &str, client_id: &str) -> IssueRequest {
    IssueRequest {
        subject: subject.into(),
        client_id: client_id.into(),
        audiences: vec!["api".into()],
        ..Default::default()
    }
}

async fn a_caller_limited_to_some_subjects_and_client_ids_can_neither_mint_others_nor_evict_their_sessions(db: Db) {
    let (app, _) = spawn_with_policy(db, &scoped_policy()).await;
    // Another caller's user, on client `web`: the victim's oldest session from now on.
    let victim = issue_as(&app, ANYONE_KEY, issue_for("victim", "web")).await.unwrap();
    app.clock.advance(time::Duration::SECOND);

    for (request, refused, name) in [
        (issue_for("root", "web"), "subject", "root"),
        (issue_for("root", "issuer-app"), "subject", "root"),
        (issue_for("victim", "web"), "client_id", "web"),
        (issue_for("victim", ""), "client_id", ""),
    ] {
        assert_denied(&issue_as(&app, ISSUER_KEY, request).await.unwrap_err(), refused, name);
    }
    assert_eq!(app.live_families("root").await, 0, "refused before any database work");

    // As many sessions as the cap allows (RATCHET_MAX_SESSIONS, 100), and one more, of the
    // victim on the client `issuer` may issue for: the cap evicts only sessions of that client.
    for _ in 0..=crate::support::test_policy().max_sessions {
        issue_as(&app, ISSUER_KEY, issue_for("victim", "issuer-app"))
            .await
            .unwrap();
    }
    let active = app
        .client
        .clone()
        .introspect(with_key(
            ratchet::grpc::pb::IntrospectRequest {
                token: victim.access_token.clone(),
                ..Default::default()
            },
            ANYONE_KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(active.active, "the victim's access token is still active");
    app.client
        .clone()
        .rotate(with_key(
            RotateRequest {
                refresh_token: victim.refresh_token.clone(),
            },
            ANYONE_KEY,
        ))
        .await
        .expect("the victim's session was not evicted");
    app.stop().await;
}

async fn revoke_and_list_sessions_act_only_on_the_callers_subjects_and_hide_other_families(db: Db) {
    use ratchet::grpc::pb::RevokeRequest;
    use ratchet::grpc::pb::revoke_request::Target;

    let (app, _) = spawn_with_policy(db, &scoped_policy()).await;
    let user = issue_as(&app, ANYONE_KEY, issue_for("user-1", "web")).await.unwrap();
    let root = issue_as(&app, ANYONE_KEY, issue_for("root", "web")).await.unwrap();
    let revoke = |target: Target| {
        let client = app.client.clone();
        async move {
            client
                .clone()
                .revoke(with_key(RevokeRequest { target: Some(target) }, SUPPORT_KEY))
                .await
                .map(|r| r.into_inner().families_revoked)
        }
    };
    let list = |subject: &str| {
        let (mut client, subject) = (app.client.clone(), subject.to_owned());
        async move {
            client
                .list_sessions(with_key(
                    ListSessionsRequest {
                        subject,
                        ..Default::default()
                    },
                    SUPPORT_KEY,
                ))
                .await
        }
    };

    // A subject named outright: PERMISSION_DENIED naming it.
    assert_denied(&list("root").await.unwrap_err(), "subject", "root");
    assert_denied(
        &revoke(Target::Subject("root".into())).await.unwrap_err(),
        "subject",
        "root",
    );
    assert_eq!(list("user-1").await.unwrap().into_inner().sessions.len(), 1);

    // A family of another subject, by id or by either token: answered exactly as a family that
    // does not exist.
    let unknown = revoke(Target::FamilyId(uuid::Uuid::new_v4().to_string()))
        .await
        .unwrap();
    assert_eq!(unknown, 0);
    for target in [
        Target::FamilyId(root.family_id.clone()),
        Target::Token(root.refresh_token.clone()),
        Target::Token(root.access_token.clone()),
    ] {
        assert_eq!(revoke(target).await.unwrap(), unknown);
    }
    assert_eq!(app.live_families("root").await, 1, "root's session is untouched");

    // Its own subjects' families, by id or token: revoked.
    assert_eq!(revoke(Target::Token(user.refresh_token.clone())).await.unwrap(), 1);
    assert_eq!(app.live_families("user-1").await, 0);
    app.stop().await;
}

on_every_backend!(
    a_caller_limited_to_some_subjects_and_client_ids_can_neither_mint_others_nor_evict_their_sessions,
    revoke_and_list_sessions_act_only_on_the_callers_subjects_and_hide_other_families,
    a_call_without_a_known_caller_is_unauthenticated_and_does_nothing,
    api_keys_work_as_a_bearer_or_as_x_api_key,
    each_audience_scope_and_claim_must_match_the_callers_patterns,
    a_caller_without_lists_may_issue_only_the_default_audience,
    star_allows_every_rpc_audience_scope_and_claim,
    a_reload_puts_a_new_policy_in_force_and_a_broken_file_keeps_the_old_one,
    over_its_rate_a_caller_is_resource_exhausted_with_retry_info_before_any_database_work,
);

/// The mTLS path: the transport puts a [`PeerIdentity`] into the extensions; the layer resolves
/// it, refuses what the caller may not call, and hands the caller on to the handler.
#[tokio::test]
async fn a_peer_identity_from_the_transport_names_the_caller() {
    let file = Arc::new(PolicyFile::load(&policy_file(&example_policy())).unwrap());
    let inner = tower::service_fn(|request: http::Request<()>| async move {
        let caller = request.extensions().get::<AuthorizedCaller>().map(|c| c.0.name.clone());
        Ok::<_, std::convert::Infallible>(http::Response::new(caller))
    });
    let service = AccessLayer::new(Some(file)).layer(inner);
    let call = |path: &str, identity: Option<&str>| {
        let mut request = http::Request::builder().uri(path).body(()).unwrap();
        if let Some(identity) = identity {
            request
                .extensions_mut()
                .insert(PeerIdentity::Spiffe(SpiffeId::parse(identity).unwrap()));
        }
        service.clone().oneshot(request)
    };
    let peer = Some("spiffe://corp.example/ns/auth/sa/login");
    let admitted = call("/ratchet.v1.TokenService/Introspect", peer).await.unwrap();
    assert_eq!(admitted.body().as_deref(), Some("mesh-peer"));
    let denied = call("/ratchet.v1.TokenService/Issue", peer).await.unwrap();
    assert_eq!(denied.headers()["grpc-status"], "7", "PERMISSION_DENIED");
    let stranger = call("/ratchet.v1.TokenService/Introspect", Some("spiffe://elsewhere"))
        .await
        .unwrap();
    assert_eq!(stranger.headers()["grpc-status"], "16", "UNAUTHENTICATED");
    let check = call("/envoy.service.auth.v3.Authorization/Check", peer).await.unwrap();
    assert_eq!(check.headers()["grpc-status"], "7", "Check is an RPC like the others");
    let health = call("/grpc.health.v1.Health/Check", None).await.unwrap();
    assert!(health.headers().get("grpc-status").is_none(), "health is open");
}

fn serve_refused(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = std::process::Command::new(BIN)
        .arg("serve")
        // Never reached when the configuration is refused.
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("RATCHET_LISTEN", "127.0.0.1:0")
        .env("RATCHET_DATA_DIR", std::env::temp_dir().join("ratchet-never-created"))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn require_auth_without_a_policy_refuses_to_start_saying_why() {
    let (code, stderr) = serve_refused(&[("RATCHET_REQUIRE_AUTH", "true")]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("require-auth") && stderr.contains("RATCHET_POLICY"),
        "{stderr}"
    );
}

#[test]
fn an_id_that_is_a_dns_name_is_a_configuration_error_that_says_to_use_dns() {
    let path = policy_file("[[caller]]\nname = \"batch\"\nid = \"batch.internal\"\nrpcs = [\"Issue\"]\n");
    let (code, stderr) = serve_refused(&[("RATCHET_POLICY", path.to_str().unwrap())]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains(r#"dns = "batch.internal""#), "{stderr}");
}

#[test]
fn a_broken_policy_file_at_start_is_a_configuration_error() {
    let path = policy_file("[[caller]]\nname = \"a\"\nid = \"x\"\nrpcs = [\"Isue\"]\n");
    let (code, stderr) = serve_refused(&[("RATCHET_POLICY", path.to_str().unwrap())]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("Isue"), "{stderr}");
    let (code, stderr) = serve_refused(&[("RATCHET_POLICY", "/nonexistent/policy.toml")]);
    assert_eq!(code, Some(64), "{stderr}");
}

/// The binary: open mode warns at start; with a policy, SIGHUP reloads it and the caller's name
/// is in the call's log lines.
#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn the_binary_warns_when_open_and_reloads_its_policy_on_sighup(_pool: PgPoolOptions, options: PgConnectOptions) {
    let url = database_url(&options, options.get_database().unwrap());
    let scratch = std::env::temp_dir().join(format!("ratchet-policy-bin-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch).unwrap();

    let open_log = scratch.join("open.log");
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let open = Server::start_with(&url, &scratch.join("data"), &open_log, addr, &[]);
    open.client().await;
    // Wait for the line itself, not only for the port to answer: on a loaded machine the line was
    // once missing when the server was killed at once (a port `free_port` handed out can answer
    // for another test's server before this one is up).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(&open_log).unwrap();
        if log.contains("NO CALLER POLICY") || std::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    open.kill();
    assert!(log.contains("NO CALLER POLICY"), "{log}");

    let path = policy_file(&example_policy());
    let log_path = scratch.join("policy.log");
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let server = Server::start_with(
        &url,
        &scratch.join("data"),
        &log_path,
        addr,
        &[("RATCHET_POLICY", path.to_str().unwrap())],
    );
    let client = server.client().await;
    let newcomer = "newcomer-key-0123456789";
    let refused = client
        .clone()
        .issue(with_key(issue_request(&[], &[], &[]), newcomer))
        .await
        .unwrap_err();
    assert_unknown_caller(&refused);
    client
        .clone()
        .issue(with_key(issue_request(&[], &[], &[]), LOGIN_KEY))
        .await
        .unwrap();

    std::fs::write(
        &path,
        format!(
            "{}\n[[caller]]\nname = \"newcomer\"\napi_key_sha256 = \"{}\"\nrpcs = [\"Issue\"]\n",
            example_policy(),
            api_key_sha256(newcomer)
        ),
    )
    .unwrap();
    server.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client
        .clone()
        .issue(with_key(issue_request(&[], &[], &[]), newcomer))
        .await
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "SIGHUP did not reload the policy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains("NO CALLER POLICY"), "{log}");
    // The call's context names the RPC, its request id and the caller.
    assert!(
        log.lines()
            .any(|line| line.contains("rpc{rpc=Issue request_id=") && line.contains(" caller=login}")),
        "{log}"
    );
    assert!(log.contains("caller policy reloaded"), "{log}");
    assert!(!log.contains(LOGIN_KEY) && !log.contains(newcomer), "no key in the log");
    std::fs::remove_dir_all(&scratch).unwrap();
}

/// Refusals are security events anyone can cause at will: 300 guessed API keys used to write 300
/// WARN lines. Now each (event, caller or peer) is logged once, then counted: the binary's log has
/// a handful of lines, and the last names how many were left out (SECURITY.md, "A flood of
/// refusals").
#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn three_hundred_guessed_api_keys_write_a_handful_of_log_lines_that_count_the_rest(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let url = database_url(&options, options.get_database().unwrap());
    let scratch = std::env::temp_dir().join(format!("ratchet-throttle-bin-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch).unwrap();
    let log_path = scratch.join("server.log");
    let policy = policy_file(&example_policy());
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let server = Server::start_with(
        &url,
        &scratch.join("data"),
        &log_path,
        addr,
        &[
            ("RATCHET_POLICY", policy.to_str().unwrap()),
            ("RATCHET_LOG_FORMAT", "json"),
        ],
    );
    let client = server.client().await;
    for guess in 0..300 {
        let key = format!("guessed-key-{guess:04}-0123456789");
        let refused = client
            .clone()
            .issue(with_key(issue_request(&[], &[], &[]), &key))
            .await
            .unwrap_err();
        assert_unknown_caller(&refused);
    }
    // A known caller calling what it may not, 100 times: counted per caller.
    for _ in 0..100 {
        let refused = client
            .clone()
            .rotate(with_key(
                RotateRequest {
                    refresh_token: "rt_x".into(),
                },
                BARE_KEY,
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    assert!(server.terminate().await.success());

    let log = std::fs::read_to_string(&log_path).unwrap();
    let security: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["target"] == "security")
        .collect();
    let about = |message: &str, event: &str| -> Vec<serde_json::Value> {
        security
            .iter()
            .filter(|line| line["fields"]["message"] == message || line["fields"]["event"] == event)
            .cloned()
            .collect()
    };
    for (message, event, calls) in [
        ("call refused: unknown caller", "unknown caller", 300),
        ("call refused by the caller policy", "call refused", 100),
    ] {
        let lines = about(message, event);
        assert!(!lines.is_empty(), "{message}: logged at all\n{log}");
        assert_eq!(
            lines[0]["fields"]["message"], message,
            "the first is logged as it happens"
        );
        assert!(
            lines.len() <= 3,
            "{calls} refusals wrote {} lines about {event:?}:\n{lines:#?}",
            lines.len()
        );
        // A line as it happens is one refusal and those left out before it; a summary is only
        // those left out.
        let accounted: u64 = lines
            .iter()
            .map(|line| {
                u64::from(line["fields"]["message"] == message) + line["fields"]["suppressed"].as_u64().unwrap()
            })
            .sum();
        assert_eq!(accounted, calls, "every refusal is logged or counted: {lines:#?}");
        assert!(
            lines.last().unwrap()["fields"]["suppressed"].as_u64().unwrap() > 0,
            "the last line counts those left out: {lines:#?}"
        );
    }
    assert!(!log.contains("guessed-key-"), "no key in the log");
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn access_settings_default_to_reflection_on_and_a_rotate_burst_above_64_and_are_validated() {
    use clap::Parser as _;
    let config = |extra: &[&str]| {
        let mut argv = vec!["ratchet", "serve"];
        argv.extend_from_slice(extra);
        match ratchet::cli::Cli::try_parse_from(argv).unwrap().command {
            ratchet::cli::Command::Serve(args) => ratchet::config::Config::from_args(*args),
            _ => unreachable!(),
        }
    };
    let defaults = config(&[]).unwrap().settings;
    assert!(defaults.access.policy.is_none() && defaults.access.reflection);
    let rotate_limit = defaults.policy.rotate_limit;
    assert_eq!(rotate_limit.burst.get(), 100);
    assert!(rotate_limit.burst.get() > 64, "the 64-way race must reach the database");
    assert_eq!(rotate_limit.per_second.get(), 1);
    assert!(!config(&["--reflection", "false"]).unwrap().settings.access.reflection);

    let problems = config(&["--rotate-burst", "0", "--rotate-per-second", "0", "--require-auth"]).unwrap_err();
    assert_eq!(problems.len(), 3, "{problems:?}");
    for flag in ["rotate-burst:", "rotate-per-second:", "require-auth:"] {
        assert!(problems.iter().any(|p| p.starts_with(flag)), "{flag} in {problems:?}");
    }
    let path = policy_file(&example_policy());
    let with_policy = config(&["--require-auth", "--policy", path.to_str().unwrap()]).unwrap();
    assert_eq!(with_policy.settings.access.policy.unwrap().current().len(), 3);
}
