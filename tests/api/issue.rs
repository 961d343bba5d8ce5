//! Issue: the pair it returns, the access token's claims, what it stores, and the requests it
//! refuses. Every test runs on every backend; what is stored is read through [`TestApp::dump`]
//! and [`TestApp::stored_families`], which look into either database.
//!
//! [`TestApp::dump`]: crate::support::TestApp::dump
//! [`TestApp::stored_families`]: crate::support::TestApp::stored_families

use ratchet::grpc::pb::{IssueRequest, ListSessionsRequest};

use crate::support::{AUDIENCE, Db, ISSUER, TestApp, assert_invalid_argument, jwt_part, on_every_backend};

fn claims(json: serde_json::Value) -> prost_types::Struct {
    fn value(v: serde_json::Value) -> prost_types::Value {
        use prost_types::value::Kind;
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
            serde_json::Value::String(s) => Kind::StringValue(s),
            serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
                values: a.into_iter().map(value).collect(),
            }),
            serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
                fields: o.into_iter().map(|(k, v)| (k, value(v))).collect(),
            }),
        };
        prost_types::Value { kind: Some(kind) }
    }
    match value(json).kind {
        Some(prost_types::value::Kind::StructValue(s)) => s,
        _ => panic!("claims must be an object"),
    }
}

/// The payload and header of a JWT, without verifying it (the tests below check what was signed).
fn payload(jwt: &str) -> serde_json::Value {
    jwt_part(jwt, 1)
}

fn header(jwt: &str) -> serde_json::Value {
    jwt_part(jwt, 0)
}

async fn issue_returns_a_pair_and_an_rfc_9068_access_token(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let pair = app
        .client
        .clone()
        .issue(IssueRequest {
            subject: "alice".into(),
            scopes: vec!["read".into(), "write".into()],
            audiences: vec!["orders".into(), "billing".into()],
            client_id: "web".into(),
            claims: Some(claims(serde_json::json!({"tenant": "acme", "level": 3}))),
        })
        .await
        .unwrap()
        .into_inner();

    assert_eq!(pair.token_type, "Bearer");
    assert_eq!(pair.expires_in, 15 * 60);
    assert_eq!(
        pair.refresh_expires_at,
        (app.now() + time::Duration::days(7)).unix_timestamp()
    );
    assert!(pair.refresh_token.starts_with("rt_") && pair.refresh_token.len() >= 46);
    uuid::Uuid::parse_str(&pair.family_id).unwrap();

    let header = header(&pair.access_token);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "EdDSA");
    assert!(header["kid"].as_str().is_some_and(|kid| !kid.is_empty()));
    let claims = payload(&pair.access_token);
    let now = app.now().unix_timestamp();
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], serde_json::json!(["orders", "billing"]));
    assert_eq!(claims["client_id"], "web");
    assert_eq!(claims["scope"], "read write");
    assert_eq!(claims["sid"], pair.family_id.as_str());
    assert_eq!(claims["iat"], now);
    assert_eq!(claims["nbf"], now);
    assert_eq!(claims["exp"], now + 900);
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["level"], 3);
    assert!(claims["jti"].as_str().is_some_and(|jti| !jti.is_empty()));
    app.stop().await;
}

async fn refresh_tokens_are_stored_only_as_hashes(db: Db) {
    use base64::Engine as _;
    let app = TestApp::builder(db).spawn().await;
    let pair = app.issue("alice").await;
    let rotated = app.rotate(&pair.refresh_token).await.unwrap();
    // Every value of every table, not just the token columns: the secret is nowhere, neither as
    // the token's text nor as its raw bytes.
    let dump = app.dump().await;
    let hashes: Vec<&Vec<u8>> = dump
        .iter()
        .filter(|stored| stored.table == "refresh_tokens" && stored.column == "hash")
        .map(|stored| &stored.bytes)
        .collect();
    assert_eq!(hashes.len(), 2);
    assert!(hashes.iter().all(|h| h.len() == 32));
    for token in [&pair.refresh_token, &rotated.refresh_token] {
        let text = &token[3..];
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).unwrap();
        for stored in &dump {
            for needle in [text.as_bytes(), bytes.as_slice()] {
                assert!(
                    !stored.bytes.windows(needle.len()).any(|w| w == needle),
                    "a token secret in {}.{}",
                    stored.table,
                    stored.column
                );
            }
        }
    }
    app.stop().await;
}

async fn empty_audiences_get_the_default_audience(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let pair = app.issue("bob").await;
    assert_eq!(payload(&pair.access_token)["aud"], serde_json::json!([AUDIENCE]));
    assert!(payload(&pair.access_token).get("client_id").is_none());
    app.stop().await;
}

async fn malformed_issue_requests_are_invalid_argument_naming_the_field(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let ok = || IssueRequest {
        subject: "alice".into(),
        ..Default::default()
    };
    let cases: Vec<(IssueRequest, &str)> = vec![
        (
            IssueRequest {
                subject: String::new(),
                ..ok()
            },
            "subject",
        ),
        (
            IssueRequest {
                subject: "s".repeat(256),
                ..ok()
            },
            "subject",
        ),
        (
            IssueRequest {
                client_id: "c".repeat(256),
                ..ok()
            },
            "client_id",
        ),
        (
            IssueRequest {
                scopes: vec!["a".repeat(256)],
                ..ok()
            },
            "scopes[0]",
        ),
        (
            IssueRequest {
                scopes: vec!["two words".into()],
                ..ok()
            },
            "scopes[0]",
        ),
        (
            IssueRequest {
                scopes: (0..65).map(|i| format!("s{i}")).collect(),
                ..ok()
            },
            "scopes",
        ),
        (
            IssueRequest {
                audiences: vec!["a".repeat(256)],
                ..ok()
            },
            "audiences[0]",
        ),
        (
            IssueRequest {
                audiences: (0..65).map(|i| format!("a{i}")).collect(),
                ..ok()
            },
            "audiences",
        ),
        (
            IssueRequest {
                claims: Some(claims(serde_json::json!({"blob": "x".repeat(9000)}))),
                ..ok()
            },
            "claims",
        ),
    ];
    for (request, field) in cases {
        let status = app.client.clone().issue(request).await.unwrap_err();
        assert_invalid_argument(&status, field);
    }
    for reserved in [
        "iss",
        "sub",
        "aud",
        "exp",
        "nbf",
        "iat",
        "jti",
        "client_id",
        "scope",
        "sid",
        "cnf",
        "act",
        "may_act",
        "azp",
        "auth_time",
        "acr",
        "amr",
        "nonce",
        "at_hash",
        "c_hash",
        "typ",
    ] {
        let request = IssueRequest {
            claims: Some(claims(serde_json::json!({ reserved: "x" }))),
            ..ok()
        };
        let status = app.client.clone().issue(request).await.unwrap_err();
        assert_invalid_argument(&status, &format!("claims.{reserved}"));
    }
    assert_eq!(
        app.stored_families().await,
        0,
        "a refused request must leave nothing behind"
    );
    app.stop().await;
}

async fn control_characters_anywhere_in_an_issue_request_are_invalid_argument_naming_the_field(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let ok = || IssueRequest {
        subject: "alice".into(),
        ..Default::default()
    };
    let cases: Vec<(IssueRequest, &str)> = vec![
        // PostgreSQL refuses NUL in jsonb: before validation caught it, this was INTERNAL.
        (
            IssueRequest {
                claims: Some(claims(serde_json::json!({"org": {"teams": ["a", "b", "x\u{0}y"]}}))),
                ..ok()
            },
            "claims.org.teams[2]",
        ),
        (
            IssueRequest {
                claims: Some(claims(serde_json::json!({"tenant": "acme\n"}))),
                ..ok()
            },
            "claims.tenant",
        ),
        (
            IssueRequest {
                claims: Some(claims(serde_json::json!({"ten\u{1b}ant": "acme"}))),
                ..ok()
            },
            "claims.ten\\u{1b}ant",
        ),
        (
            IssueRequest {
                subject: "alice\u{0}".into(),
                ..ok()
            },
            "subject",
        ),
        (
            IssueRequest {
                client_id: "web\r\n".into(),
                ..ok()
            },
            "client_id",
        ),
        (
            IssueRequest {
                audiences: vec!["api\u{7f}".into()],
                ..ok()
            },
            "audiences[0]",
        ),
    ];
    for (request, field) in cases {
        let status = app.client.clone().issue(request).await.unwrap_err();
        assert_invalid_argument(&status, field);
        assert!(
            !status.message().chars().any(|c| c.is_ascii_control()),
            "the answer echoes no raw control character: {:?}",
            status.message()
        );
    }
    app.stop().await;
}

/// Issue 20: the old rule refused C0 and DEL only, so a bidi override, a zero-width space, a C1
/// line break (U+0085) or a line separator passed into `sub`, the logs and `x-ratchet-subject`,
/// where `\u{202e}nimda` reads as `admin`. Every name field refuses them now, naming the field and
/// echoing nothing raw; Revoke and ListSessions parse subjects by the same rule.
async fn names_holding_format_characters_separators_or_noncharacters_are_invalid_argument(db: Db) {
    let app = TestApp::builder(db).spawn().await;
    let ok = || IssueRequest {
        subject: "alice".into(),
        ..Default::default()
    };
    let cases: Vec<(IssueRequest, &str)> = vec![
        (
            IssueRequest {
                subject: "\u{202e}nimda".into(),
                ..ok()
            },
            "subject",
        ),
        (
            IssueRequest {
                subject: "alice\u{85}admin".into(),
                ..ok()
            },
            "subject",
        ),
        (
            IssueRequest {
                client_id: "w\u{200b}eb".into(),
                ..ok()
            },
            "client_id",
        ),
        (
            IssueRequest {
                scopes: vec!["read".into(), "ad\u{2028}min".into()],
                ..ok()
            },
            "scopes[1]",
        ),
        (
            IssueRequest {
                audiences: vec!["api\u{feff}".into()],
                ..ok()
            },
            "audiences[0]",
        ),
        (
            IssueRequest {
                claims: Some(claims(serde_json::json!({"ten\u{200d}ant": "acme"}))),
                ..ok()
            },
            "claims.ten\\u{200d}ant",
        ),
        (
            IssueRequest {
                claims: Some(claims(serde_json::json!({"tenant": "acme\u{2029}"}))),
                ..ok()
            },
            "claims.tenant",
        ),
        (
            IssueRequest {
                subject: "alice\u{fffe}".into(),
                ..ok()
            },
            "subject",
        ),
    ];
    for (request, field) in cases {
        let status = app.client.clone().issue(request).await.unwrap_err();
        assert_invalid_argument(&status, field);
        assert!(
            !status
                .message()
                .chars()
                .any(|c| c.is_control() || matches!(c, '\u{202e}' | '\u{200b}' | '\u{200d}' | '\u{2028}' | '\u{2029}')),
            "the answer echoes nothing raw: {:?}",
            status.message()
        );
    }
    let list = app
        .client
        .clone()
        .list_sessions(ListSessionsRequest {
            subject: "\u{202e}nimda".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid_argument(&list, "subject");
    // Free text in a claim value is not a name: a right-to-left display name keeps its marks.
    app.client
        .clone()
        .issue(IssueRequest {
            claims: Some(claims(serde_json::json!({"name": "\u{202b}שלום\u{202c}"}))),
            ..ok()
        })
        .await
        .unwrap();
    app.stop().await;
}

on_every_backend!(
    names_holding_format_characters_separators_or_noncharacters_are_invalid_argument,
    issue_returns_a_pair_and_an_rfc_9068_access_token,
    refresh_tokens_are_stored_only_as_hashes,
    empty_audiences_get_the_default_audience,
    malformed_issue_requests_are_invalid_argument_naming_the_field,
    control_characters_anywhere_in_an_issue_request_are_invalid_argument_naming_the_field,
);
