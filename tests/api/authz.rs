//! Envoy's external authorization (issue 9): `envoy.service.auth.v3.Authorization/Check` on the
//! server's gRPC port, called as Envoy calls it, through the client generated from Envoy's protos.
//!
//! Where they run: Check judges a token by its signature and by its family's status in the store
//! (through the family cache), so every test runs on every backend, except two that stay on
//! PostgreSQL: the one that cuts the PostgreSQL connection with a proxy (a database that goes
//! away; an embedded SQLite file does not), and the fuzz run, which soaks Check's input parsing
//! for `FUZZ_SECONDS`: no input carries a token we signed, so none gets past the signature check
//! to the store, and a second run on SQLite would double its time and test nothing new.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HeaderAppendAction, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::google::protobuf::value::Kind;
use ratchet::grpc::pb::IssueRequest;
use ratchet::keys::KeyAlgorithm;
use ratchet::store::postgres::PoolSettings;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::{AUDIENCE, Db, Forger, Proxy, TestApp, channel, check_request, on_every_backend, test_policy};

async fn client(app: &TestApp) -> AuthorizationClient<Channel> {
    AuthorizationClient::new(channel(app.addr).await)
}

/// A Check as Envoy sends it ([`check_request`]).
fn request(headers: &[(&str, &str)], extensions: &[(&str, &str)]) -> CheckRequest {
    check_request(headers, extensions)
}

async fn check(app: &TestApp, request: CheckRequest) -> CheckResponse {
    client(app)
        .await
        .check(request)
        .await
        .expect("Check answers")
        .into_inner()
}

async fn check_bearer(app: &TestApp, token: &str, extensions: &[(&str, &str)]) -> CheckResponse {
    check(
        app,
        request(&[("authorization", &format!("Bearer {token}"))], extensions),
    )
    .await
}

/// The gRPC code inside the answer, its HTTP status and its `www-authenticate` challenge.
fn denial(answer: &CheckResponse) -> (Code, i32, String) {
    let code = Code::from(answer.status.as_ref().expect("a status").code);
    let Some(HttpResponse::DeniedResponse(denied)) = &answer.http_response else {
        panic!("not a denial: {answer:?}");
    };
    assert!(answer.dynamic_metadata.is_none());
    let challenges: Vec<_> = denied
        .headers
        .iter()
        .map(|h| h.header.as_ref().unwrap())
        .filter(|h| h.key == "www-authenticate")
        .collect();
    assert_eq!(challenges.len(), 1, "exactly one challenge: {denied:?}");
    (code, denied.status.as_ref().unwrap().code, challenges[0].value.clone())
}

#[track_caller]
fn assert_no_credentials(answer: &CheckResponse, what: &str) {
    assert_eq!(denial(answer), (Code::Unauthenticated, 401, "Bearer".into()), "{what}");
}

#[track_caller]
fn assert_invalid_token(answer: &CheckResponse, what: &str) {
    assert_eq!(
        denial(answer),
        (Code::Unauthenticated, 401, "Bearer error=\"invalid_token\"".into()),
        "{what}"
    );
}

/// The headers an allow sets, by name, each checked to overwrite.
fn allowed(answer: &CheckResponse) -> (HashMap<String, String>, Vec<String>) {
    assert_eq!(answer.status.as_ref().unwrap().code, Code::Ok as i32, "{answer:?}");
    let Some(HttpResponse::OkResponse(ok)) = &answer.http_response else {
        panic!("not an allow: {answer:?}");
    };
    let mut set = HashMap::new();
    for option in &ok.headers {
        assert_eq!(option.append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
        let header = option.header.as_ref().unwrap();
        assert!(set.insert(header.key.clone(), header.value.clone()).is_none());
    }
    (set, ok.headers_to_remove.clone())
}

async fn issue_with(app: &TestApp, scopes: &[&str], audiences: &[&str]) -> ratchet::grpc::pb::TokenPair {
    app.client
        .clone()
        .issue(IssueRequest {
            subject: "alice".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            audiences: audiences.iter().map(|s| (*s).to_owned()).collect(),
            client_id: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn a_live_token_is_allowed_with_identity_headers_and_its_claims_in_the_metadata(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let pair = issue_with(&app, &["read", "write"], &[]).await;
    let answer = check_bearer(&app, &pair.access_token, &[]).await;
    let (set, removed) = allowed(&answer);
    assert_eq!(set["x-ratchet-subject"], "alice");
    assert_eq!(set["x-ratchet-client-id"], "web");
    assert_eq!(set["x-ratchet-scopes"], "read write");
    assert_eq!(set["x-ratchet-family-id"], pair.family_id);
    assert_eq!(set.len(), 4);
    assert!(removed.is_empty());

    let metadata = answer.dynamic_metadata.as_ref().expect("dynamic metadata");
    let Some(Kind::StructValue(claims)) = &metadata.fields["ratchet"].kind else {
        panic!("claims under `ratchet`: {metadata:?}");
    };
    let text = |name: &str| match &claims.fields[name].kind {
        Some(Kind::StringValue(value)) => value.clone(),
        other => panic!("{name}: {other:?}"),
    };
    let list = |name: &str| match &claims.fields[name].kind {
        Some(Kind::ListValue(list)) => list
            .values
            .iter()
            .map(|v| match &v.kind {
                Some(Kind::StringValue(s)) => s.clone(),
                other => panic!("{name}: {other:?}"),
            })
            .collect::<Vec<_>>(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(text("sub"), "alice");
    assert_eq!(text("client_id"), "web");
    assert_eq!(text("family_id"), pair.family_id);
    assert!(!text("jti").is_empty());
    assert_eq!(text("scope"), "read write");
    assert_eq!(list("aud"), [AUDIENCE]);
    assert_eq!(
        claims.fields["exp"].kind,
        Some(Kind::NumberValue((app.now().unix_timestamp() + 900) as f64))
    );

    // The scheme is case-insensitive, and so are header names (Envoy's are lower-case anyway).
    let answer = check(
        &app,
        request(&[("Authorization", &format!("bEaReR {}", pair.access_token))], &[]),
    )
    .await;
    assert_eq!(allowed(&answer).0["x-ratchet-subject"], "alice");
    app.stop().await;
}

async fn spoofed_identity_headers_are_overwritten_or_removed(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let pair = issue_with(&app, &[], &[]).await;
    let bearer = format!("Bearer {}", pair.access_token);
    let answer = check(
        &app,
        request(
            &[
                ("authorization", &bearer),
                ("x-ratchet-subject", "root"),
                ("x-ratchet-scopes", "admin"),
                ("x-ratchet-client-id", "trusted"),
                ("x-ratchet-role", "admin"),
                ("X-Ratchet-Tenant", "other"),
                ("x-request-id", "keep-me"),
            ],
            &[],
        ),
    )
    .await;
    let (set, mut removed) = allowed(&answer);
    assert_eq!(set["x-ratchet-subject"], "alice");
    // Empty, and still set (overwriting the client's "admin"): Envoy would drop an empty header
    // value unless told to keep it.
    assert_eq!(set["x-ratchet-scopes"], "");
    let Some(HttpResponse::OkResponse(ok)) = &answer.http_response else {
        unreachable!()
    };
    assert!(ok.headers.iter().all(|h| h.keep_empty_value));
    removed.sort();
    // Envoy removes after it sets: the names it sets must not be listed.
    assert_eq!(removed, ["x-ratchet-role", "x-ratchet-tenant"]);
    app.stop().await;
}

/// CGI and WSGI (`HTTP_X_RATCHET_SUBJECT`), Rack and PHP fold case and `-`/`_` (PHP and old
/// Apache also `.`): a client's `x_ratchet_subject` would reach such an upstream as our
/// `x-ratchet-subject`, so every spelling that folds into `x-ratchet-*` is removed, the ones that
/// fold into a header we set included (they are other headers to Envoy, so setting ours does not
/// overwrite them). SECURITY.md, "Identity headers behind a mesh".
async fn every_spelling_an_upstream_folds_into_one_of_ours_is_removed(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let pair = issue_with(&app, &[], &[]).await;
    let bearer = format!("Bearer {}", pair.access_token);
    let spellings = [
        ("x_ratchet_subject", "admin"),
        ("X_RATCHET_SCOPES", "admin"),
        ("x-ratchet_client-id", "trusted"),
        ("x_ratchet-family_id", "other"),
        ("X.Ratchet.Subject", "admin"),
        ("x_ratchet_role", "admin"),
    ];
    let untouched = [
        ("x-ratchets-x", "v"),
        ("xx-ratchet-x", "v"),
        ("x-request-id", "keep-me"),
    ];
    let mut headers = vec![("authorization", bearer.as_str()), ("x-ratchet-subject", "root")];
    headers.extend(spellings);
    headers.extend(untouched);
    let mut expected: Vec<String> = spellings.iter().map(|(name, _)| name.to_ascii_lowercase()).collect();
    expected.sort();

    let answer = check(&app, request(&headers, &[])).await;
    let (set, mut removed) = allowed(&answer);
    assert_eq!(set["x-ratchet-subject"], "alice");
    removed.sort();
    assert_eq!(removed, expected, "the `headers` map");

    // The same through `header_map` (Envoy's `encode_raw_headers`).
    let mut raw = request(&[], &[]);
    let http = raw
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap();
    http.header_map = Some(HeaderMap {
        headers: headers
            .iter()
            .map(|(key, value)| HeaderValue {
                key: (*key).to_owned(),
                raw_value: value.as_bytes().to_vec(),
                ..Default::default()
            })
            .collect(),
    });
    let (set, mut removed) = allowed(&check(&app, raw).await);
    assert_eq!(set["x-ratchet-subject"], "alice");
    removed.sort();
    assert_eq!(removed, expected, "the `header_map` list");
    app.stop().await;
}

/// A typo in a route's key (`ratchet.required_scope`) used to mean "no requirement": an allow.
/// Any key that looks like ours and is not one we define denies, as an unreadable value does.
async fn a_route_naming_an_unknown_ratchet_key_denies_every_request(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let pair = issue_with(&app, &["orders:read"], &["orders"]).await;
    let token = &pair.access_token;
    for key in [
        "ratchet.required_scope",
        "Ratchet.Required_Scopes",
        "RATCHET.AUDIENCE",
        "ratchet.Audience",
        "ratchet_required_scopes",
        "ratchet-audience",
        "ratchet.",
        "ratchet.scopes",
    ] {
        assert_eq!(
            denial(&check_bearer(&app, token, &[(key, "orders:read")]).await),
            (
                Code::PermissionDenied,
                403,
                "Bearer error=\"insufficient_scope\"".into()
            ),
            "{key}"
        );
        // Beside a correct key too: the typo may be the stricter requirement.
        assert_eq!(
            denial(&check_bearer(&app, token, &[("ratchet.audience", "orders"), (key, "admin")]).await).1,
            403,
            "{key} beside a known key"
        );
    }
    // Keys of ours spelt right, and keys of others, still allow.
    allowed(
        &check_bearer(
            &app,
            token,
            &[
                ("ratchet.required_scopes", "orders:read"),
                ("ratchet.audience", "orders"),
                ("team", "orders"),
                ("ratchetry", "x"),
            ],
        )
        .await,
    );
    app.stop().await;
}

async fn requests_without_bearer_credentials_get_a_bare_challenge(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let pair = app.issue("alice").await;
    assert_no_credentials(&check(&app, request(&[], &[])).await, "no header");
    assert_no_credentials(
        &check(&app, request(&[("authorization", "Basic dXNlcjpwYXNz")], &[])).await,
        "another scheme",
    );
    assert_no_credentials(
        &check(&app, request(&[("authorization", &pair.access_token)], &[])).await,
        "a token without the scheme",
    );
    assert_no_credentials(
        &check(
            &app,
            request(&[("x-token", &format!("Bearer {}", pair.access_token))], &[]),
        )
        .await,
        "a token in another header",
    );
    assert_no_credentials(&check(&app, CheckRequest::default()).await, "no attributes");
    let no_http = CheckRequest {
        attributes: Some(AttributeContext::default()),
    };
    assert_no_credentials(&check(&app, no_http).await, "no http attributes");
    app.stop().await;
}

async fn malformed_unknown_expired_and_refresh_tokens_are_invalid_token(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let pair = app.issue("alice").await;
    let token = &pair.access_token;
    for (what, value) in [
        ("an empty bearer", "Bearer".to_owned()),
        ("blanks only", "Bearer    ".to_owned()),
        ("two tokens", format!("Bearer {token} {token}")),
        ("two headers, joined by Envoy", format!("Bearer {token},Bearer {token}")),
        ("not a token68", format!("Bearer \"{token}\"")),
        ("garbage", "Bearer garbage".to_owned()),
        ("a truncated token", format!("Bearer {}", &token[..token.len() - 4])),
        ("a refresh token", format!("Bearer {}", pair.refresh_token)),
    ] {
        assert_invalid_token(&check(&app, request(&[("authorization", &value)], &[])).await, what);
    }
    assert_eq!(allowed(&check_bearer(&app, token, &[]).await).0.len(), 4);
    // exp is exact, as for Introspect.
    app.advance(time::Duration::seconds(899));
    allowed(&check_bearer(&app, token, &[]).await);
    app.advance(time::Duration::seconds(1));
    assert_invalid_token(&check_bearer(&app, token, &[]).await, "expired");
    app.stop().await;
}

async fn every_forgery_is_invalid_token_for_every_algorithm(db: Db) {
    for alg in KeyAlgorithm::ALL {
        let app = TestApp::builder(db.clone()).algorithm(alg).spawn().await;
        let pem = app.key_pem();
        let pair = app.issue("alice").await;
        let forger = Forger::new(alg, &pem, &pair.access_token);
        allowed(&check_bearer(&app, &forger.resigned(), &[]).await);
        for (case, token) in forger.forgeries(&app.jwks().await, app.now().unix_timestamp()) {
            assert_invalid_token(&check_bearer(&app, &token, &[]).await, &format!("{alg}: {case}"));
        }
        app.stop().await;
    }
}

async fn a_family_revoked_through_revoke_is_denied_on_the_next_check(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let pair = app.issue("alice").await;
    // Cached live first: the revocation must reach the caches, not just the database.
    for _ in 0..2 {
        allowed(&check_bearer(&app, &pair.access_token, &[]).await);
    }
    app.revoke_family(&pair.family_id).await;
    assert_invalid_token(&check_bearer(&app, &pair.access_token, &[]).await, "revoked");
    app.stop().await;
}

async fn routes_require_scopes_and_an_audience_through_context_extensions(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let pair = issue_with(&app, &["orders:read", "profile"], &["orders", "billing"]).await;
    let token = &pair.access_token;
    let scopes = "ratchet.required_scopes";
    let audience = "ratchet.audience";

    allowed(&check_bearer(&app, token, &[(scopes, "orders:read"), (audience, "orders")]).await);
    allowed(&check_bearer(&app, token, &[(scopes, " profile  orders:read ")]).await);
    assert_eq!(
        denial(&check_bearer(&app, token, &[(scopes, "orders:read orders:write admin")]).await),
        (
            Code::PermissionDenied,
            403,
            "Bearer error=\"insufficient_scope\", scope=\"orders:write admin\"".into()
        ),
        "the missing scopes are named"
    );
    assert_eq!(
        denial(&check_bearer(&app, token, &[(audience, "payments")]).await),
        (
            Code::PermissionDenied,
            403,
            "Bearer error=\"insufficient_scope\"".into()
        ),
        "wrong audience"
    );
    // A route whose requirements cannot be read denies everything (fails closed).
    assert_eq!(
        denial(&check_bearer(&app, token, &[(scopes, "say\"hi\"")]).await).1,
        403
    );
    // An invalid token is 401 whatever the route requires.
    assert_invalid_token(
        &check_bearer(&app, "garbage", &[(scopes, "admin")]).await,
        "invalid beats insufficient",
    );
    app.stop().await;
}

async fn garbage_is_denied_and_a_check_over_the_size_limit_is_resource_exhausted(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let pair = app.issue("alice").await;
    // Over Check's 256 KiB: an error, which Envoy answers with a denial (`failure_mode_allow`
    // off, as docs/mesh.md requires); under it, a header too big to be a token is just that.
    for (name, value) in [
        ("x-big", "a".repeat(2 << 20)),
        ("authorization", format!("Bearer {}", "a".repeat(257 << 10))),
    ] {
        let refused = client(&app)
            .await
            .check(request(&[(name, &value)], &[]))
            .await
            .expect_err("over the size limit");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{name}: {refused:?}");
    }
    let extensions: Vec<(String, String)> = (0..257).map(|i| (format!("x.{i}"), String::new())).collect();
    let extensions: Vec<(&str, &str)> = extensions.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let refused = client(&app)
        .await
        .check(request(&[], &extensions))
        .await
        .expect_err("257 context extensions");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let big = "a".repeat(200 << 10);
    assert_no_credentials(&check(&app, request(&[("x-big", &big)], &[])).await, "a 200 KiB header");
    assert_invalid_token(
        &check(&app, request(&[("authorization", &format!("Bearer {big}"))], &[])).await,
        "a 200 KiB token",
    );
    let many: Vec<(String, String)> = (0..1100).map(|i| (format!("x-h{i}"), "v".to_owned())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(
        denial(&check(&app, request(&many, &[])).await),
        (Code::InvalidArgument, 400, "Bearer error=\"invalid_request\"".into()),
        "1,100 headers"
    );
    assert_invalid_token(
        &check(&app, request(&[("authorization", "Bearer \u{0}\u{7f}\u{ffff}")], &[])).await,
        "control characters",
    );
    let huge_scopes = "s ".repeat(100_000);
    assert_eq!(
        denial(&check_bearer(&app, &pair.access_token, &[("ratchet.required_scopes", &huge_scopes)]).await).1,
        403,
        "huge context extension"
    );

    // Envoy's `encode_raw_headers`: the headers come as a list of raw values instead.
    let raw = |headers: &[(&str, &[u8])]| CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    header_map: Some(HeaderMap {
                        headers: headers
                            .iter()
                            .map(|(k, v)| HeaderValue {
                                key: (*k).to_owned(),
                                raw_value: v.to_vec(),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let bearer = format!("Bearer {}", pair.access_token);
    allowed(&check(&app, raw(&[("authorization", bearer.as_bytes())])).await);
    assert_invalid_token(
        &check(
            &app,
            raw(&[
                ("authorization", bearer.as_bytes()),
                ("authorization", bearer.as_bytes()),
            ]),
        )
        .await,
        "two authorization headers",
    );
    assert_invalid_token(
        &check(&app, raw(&[("authorization", b"Bearer \xff\xfe")])).await,
        "not UTF-8",
    );
    // Still serving, and still allowing.
    allowed(&check_bearer(&app, &pair.access_token, &[]).await);
    app.stop().await;
}

on_every_backend!(
    a_live_token_is_allowed_with_identity_headers_and_its_claims_in_the_metadata,
    spoofed_identity_headers_are_overwritten_or_removed,
    every_spelling_an_upstream_folds_into_one_of_ours_is_removed,
    a_route_naming_an_unknown_ratchet_key_denies_every_request,
    requests_without_bearer_credentials_get_a_bare_challenge,
    malformed_unknown_expired_and_refresh_tokens_are_invalid_token,
    every_forgery_is_invalid_token_for_every_algorithm,
    a_family_revoked_through_revoke_is_denied_on_the_next_check,
    routes_require_scopes_and_an_audience_through_context_extensions,
    garbage_is_denied_and_a_check_over_the_size_limit_is_resource_exhausted,
    the_health_service_knows_the_authorization_service,
);

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_hot_token_needs_no_database_and_an_uncached_family_without_one_is_unavailable(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    // The server reaches PostgreSQL only through a proxy the test cuts.
    let settings = PoolSettings {
        max_connections: 4,
        timeout: Duration::from_secs(1),
    };
    let proxy = Proxy::in_front_of(&options).await;
    let pool = ratchet::store::postgres::pool(proxy.route(options.clone()), &settings);
    let app = TestApp::builder(options)
        .pool(settings)
        .on_pool(pool)
        .policy(test_policy())
        .spawn()
        .await;
    let hot = app.issue("alice").await;
    let cold = app.issue("bob").await;
    allowed(&check_bearer(&app, &hot.access_token, &[]).await);

    proxy.cut().await;
    app.wait_for_health(ServingStatus::NotServing).await;
    // No database at all, and the hot token is still judged: signature and family both from
    // memory, as Introspect does.
    for _ in 0..100 {
        allowed(&check_bearer(&app, &hot.access_token, &[]).await);
    }
    // A family it has never seen must be looked up: a ratchet-side failure, so a gRPC error
    // (Envoy's failure_mode_allow decides), not a denial.
    let status = client(&app)
        .await
        .check(request(
            &[("authorization", &format!("Bearer {}", cold.access_token))],
            &[],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // Bad input needs no database: still a denial.
    assert_invalid_token(&check_bearer(&app, "garbage", &[]).await, "garbage while down");

    proxy.restore().await;
    app.wait_for_health(ServingStatus::Serving).await;
    allowed(&check_bearer(&app, &cold.access_token, &[]).await);
    app.stop().await;
    proxy.cut().await;
}

async fn the_health_service_knows_the_authorization_service(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    app.wait_for_health(ServingStatus::Serving).await;
    let answer = HealthClient::new(channel(app.addr).await)
        .check(HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status, ServingStatus::Serving as i32);
    app.stop().await;
}

/// Fuzzing Check end to end (issue 11: everything that parses untrusted input): random header
/// names and values, bearer-ish credentials and route extensions, for `FUZZ_SECONDS` (default 5).
/// Whatever comes in, the answer is a decision (never a gRPC error: with `failure_mode_allow` an
/// error would be an allow), and never an allow: no input here carries a token we signed.
///
/// Driven by proptest's runner, like `tests/fuzz.rs`: a failing input is shrunk and written to
/// `tests/api/authz.regressions`, which is replayed first on every later run (commit it: a crash
/// input becomes a regression test). The runner is synchronous, so it runs on a thread of its
/// own with its own client runtime while this test's runtime serves the app.
#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn fuzzed_checks_are_always_answered_with_a_denial(_pool: PgPoolOptions, options: PgConnectOptions) {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};

    let app = TestApp::builder(options).spawn().await;
    let addr = app.addr;
    let header = (
        prop_oneof![
            Just("authorization".to_string()),
            Just("Authorization".to_string()),
            Just("x-ratchet-subject".to_string()),
            "[a-zA-Z0-9-]{0,20}"
        ],
        prop_oneof![
            "Bearer [A-Za-z0-9._~+/=-]{0,400}",
            "(bearer|BEARER|Basic|Bearer ) ?.{0,100}",
            ".{0,200}",
            "eyJ[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,90}"
        ],
    );
    let extension = (
        prop_oneof![
            Just("ratchet.required_scopes".to_string()),
            Just("ratchet.audience".to_string()),
            ".{0,20}"
        ],
        ".{0,300}",
    );
    let strategy = (
        proptest::collection::vec(header, 0..12),
        proptest::collection::vec(extension, 0..4),
        any::<bool>(),
    );
    let budget = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let checked = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = runtime.block_on(async { AuthorizationClient::new(channel(addr).await) });
        let mut runner = TestRunner::new(Config {
            cases: 32,
            failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
            source_file: Some(file!()),
            ..Config::default()
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(budget);
        let mut checked = 0;
        while std::time::Instant::now() < deadline || checked == 0 {
            let outcome = runner.run(&strategy, |(headers, extensions, no_http)| {
                let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                let extensions: Vec<(&str, &str)> = extensions.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                let mut input = request(&headers, &extensions);
                if no_http && let Some(attributes) = input.attributes.as_mut() {
                    attributes.request = None;
                }
                let answer = runtime.block_on(client.clone().check(input));
                let answer =
                    answer.map_err(|status| TestCaseError::fail(format!("an error, not a decision: {status:?}")))?;
                let code = answer.into_inner().status.map_or(0, |status| status.code);
                prop_assert_ne!(code, Code::Ok as i32, "allowed");
                Ok(())
            });
            if let Err(failure) = outcome {
                panic!("{failure}");
            }
            checked += 32;
        }
        checked
    })
    .await
    .unwrap();
    assert!(checked > 10, "{checked} checks");
    app.stop().await;
}
