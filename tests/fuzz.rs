//! Fuzzing everything that parses untrusted input: access tokens (JWT headers, payloads and
//! signatures), refresh tokens, every request field, the key directory's manifest, caller policy
//! files, XFCC headers and ext_authz route requirements (and Check itself, end to end, in
//! `tests/api/authz.rs`). Each target runs random and structured inputs for `FUZZ_SECONDS` (default 5; CI's
//! run of the suite uses the default, well under its 60 s bound) and must never panic; Introspect's
//! verifier must never accept anything it did not sign.
//!
//! cargo-fuzz needs a nightly toolchain, which our machines cannot install; proptest drives the
//! inputs instead. A failing input is shrunk and written to `tests/fuzz.regressions`, and
//! proptest replays every input in that file first on every later run: commit it, and a crash
//! input becomes a regression test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a fuzz target fails by panicking

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use ratchet::grpc::convert;
use ratchet::grpc::pb;
use ratchet::issuer::refresh_token::RefreshToken;
use ratchet::issuer::types::PresentedToken;
use ratchet::keys::directory::KeyDirectory;
use ratchet::keys::{AccessClaims, Keyring};

fn budget() -> Duration {
    let seconds = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(seconds)
}

/// Runs `check` on inputs from `strategy` until the budget is spent.
fn fuzz<S: Strategy>(strategy: S, check: impl Fn(S::Value))
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        source_file: Some(file!()),
        ..Config::default()
    });
    let deadline = Instant::now() + budget();
    let mut rounds = 0;
    while Instant::now() < deadline || rounds == 0 {
        runner
            .run(&strategy, |value| {
                check(value);
                Ok(())
            })
            .unwrap();
        rounds += 1;
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// JSON values that look like what a JWT header or payload holds, and some that do not.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)),
        ".{0,40}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("EdDSA"),
            Just("ES256"),
            Just("RS256"),
            Just("HS256"),
            Just("none"),
            Just("at+jwt")
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("alg".to_string()),
                    Just("typ".to_string()),
                    Just("kid".to_string()),
                    Just("crit".to_string()),
                    Just("exp".to_string()),
                    Just("iss".to_string()),
                    Just("aud".to_string()),
                    Just("sub".to_string()),
                    "[a-z]{1,8}"
                ],
                inner,
                0..8
            )
            .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

#[test]
fn access_tokens_never_panic_and_nothing_unsigned_verifies() {
    let keys = Keyring::generate().unwrap();
    let genuine = keys
        .sign(&AccessClaims {
            iss: "https://fuzz.test".into(),
            sub: "alice".into(),
            aud: vec!["api".into()],
            exp: 2_000_000_000,
            iat: 1,
            nbf: 1,
            jti: "j".into(),
            client_id: String::new(),
            scope: String::new(),
            sid: "s".into(),
            extra: serde_json::Map::new(),
        })
        .unwrap();
    let kid = keys.active_kid();
    let genuine_signature = genuine.rsplit('.').next().unwrap().to_owned();
    let token = prop_oneof![
        // anything at all
        ".{0,300}",
        // three base64url parts of random bytes
        (
            proptest::collection::vec(any::<u8>(), 0..80),
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec(any::<u8>(), 0..80)
        )
            .prop_map(|(h, p, s)| format!("{}.{}.{}", b64(&h), b64(&p), b64(&s))),
        // structured JSON header and payload, with our kid or not, and a real signature of ours
        // (for another message) or random bytes
        (json_value(), json_value(), any::<bool>(), any::<bool>()).prop_map(move |(header, payload, our_kid, real)| {
            let mut header = header;
            if our_kid && let Some(object) = header.as_object_mut() {
                object.insert("kid".into(), kid.clone().into());
                object.insert("typ".into(), "at+jwt".into());
            }
            let signature = if real {
                genuine_signature.clone()
            } else {
                b64(b"not a signature")
            };
            format!(
                "{}.{}.{signature}",
                b64(&serde_json::to_vec(&header).unwrap()),
                b64(&serde_json::to_vec(&payload).unwrap())
            )
        }),
    ];
    fuzz(token, |token| {
        assert!(
            keys.verify(&token, "https://fuzz.test").is_err() || token == genuine,
            "accepted a token we never signed: {token}"
        );
        let _ = PresentedToken::parse("token", token);
    });
}

#[test]
fn refresh_tokens_never_panic_and_parse_exactly_what_expose_writes() {
    let text = prop_oneof![".{0,120}", "rt_[A-Za-z0-9_=+/-]{0,60}", "[ -~]{40,50}"];
    fuzz(text, |text| {
        if let Some(token) = RefreshToken::parse(&text) {
            assert_eq!(token.expose(), text, "one spelling per secret");
        }
    });
}

#[test]
fn every_request_field_is_parsed_without_panicking() {
    let strings = proptest::collection::vec(".{0,300}", 0..70);
    let request = (
        ".{0,300}",
        strings.clone(),
        strings,
        ".{0,300}",
        json_value(),
        any::<i32>(),
        ".{0,200}",
    );
    fuzz(
        request,
        |(subject, scopes, audiences, client_id, claims, page_size, page_token)| {
            let claims = claims.as_object().map(|object| {
                let fields = object
                    .iter()
                    .map(|(name, value)| (name.clone(), to_prost(value)))
                    .collect();
                prost_types::Struct { fields }
            });
            let _ = convert::issue_params(
                pb::IssueRequest {
                    subject: subject.clone(),
                    scopes,
                    audiences,
                    client_id,
                    claims,
                },
                "api",
            );
            let _ = convert::sessions_request(pb::ListSessionsRequest {
                subject,
                page_size,
                page_token,
            });
        },
    );
}

fn to_prost(value: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(values) => Kind::ListValue(prost_types::ListValue {
            values: values.iter().map(to_prost).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map.iter().map(|(k, v)| (k.clone(), to_prost(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[test]
fn a_key_manifest_of_any_content_is_refused_or_loaded_never_a_panic() {
    let dir = std::env::temp_dir().join(format!("ratchet-fuzz-keys-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        json_value().prop_map(|value| value.to_string()),
        (json_value(), proptest::collection::vec(json_value(), 0..4))
            .prop_map(|(version, keys)| { serde_json::json!({"version": version, "keys": keys}).to_string() }),
    ];
    let directory = KeyDirectory::new(&dir);
    fuzz(manifest, |text| {
        std::fs::write(dir.join("keys.json"), text).unwrap();
        let _ = directory.load();
        let _ = directory.list();
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn policy_files_of_any_content_are_refused_or_loaded_never_a_panic() {
    let line = prop_oneof![
        Just("[[caller]]".to_string()),
        "(name|id|api_key_sha256|rpcs|audiences|scopes|claims|rate) = .{0,60}",
        "(name|id) = \"[a-z:/.*-]{0,30}\"",
        "(rpcs|scopes|audiences|claims) = \\[(\"[A-Za-z*:-]{0,10}\", ?){0,4}\\]",
        "rate = \\{ per_second = -?[0-9]{1,12}, burst = -?[0-9]{1,12} \\}",
        "api_key_sha256 = \"[0-9a-fA-F]{60,68}\"",
        ".{0,80}",
    ];
    fuzz(proptest::collection::vec(line, 0..20), |lines| {
        let _ = ratchet::policy::file::parse(&lines.join("\n"), None);
    });
}

#[test]
fn xfcc_headers_of_any_content_never_panic() {
    let element = prop_oneof![
        "(By|Hash|Cert|Chain|Subject|URI|DNS)=\"?[^,;]{0,40}\"?",
        "URI=spiffe://[a-z./]{0,30}",
        ".{0,60}",
    ];
    let header = proptest::collection::vec(proptest::collection::vec(element, 0..5), 0..4).prop_map(|elements| {
        elements
            .into_iter()
            .map(|fields| fields.join(";"))
            .collect::<Vec<_>>()
            .join(",")
    });
    fuzz(header, |value| {
        let _ = ratchet::transport::xfcc::identity(&value);
    });
}

#[test]
fn route_requirements_of_any_content_never_panic() {
    fuzz((".{0,600}", ".{0,300}"), |(scopes, audience)| {
        let _ = ratchet::issuer::authorize::Requirements::parse(&scopes, &audience);
    });
}
