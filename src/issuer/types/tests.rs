use super::*;
use proptest::prelude::*;

#[test]
fn subject_limits_are_enforced_and_name_the_field() {
    assert_eq!(Subject::parse(String::new()).unwrap_err().field, "subject");
    assert!(Subject::parse("a".repeat(255)).is_ok());
    assert!(Subject::parse("a".repeat(256)).unwrap_err().problem.contains("255"));
}

#[test]
fn scopes_must_be_scope_tokens_and_are_deduplicated() {
    let scopes = Scopes::parse(vec!["read".into(), "write".into(), "read".into()]).unwrap();
    assert_eq!(scopes.to_claim(), "read write");
    assert_eq!(Scopes::parse(vec!["a b".into()]).unwrap_err().field, "scopes[0]");
    assert_eq!(
        Scopes::parse(vec!["ok".into(), String::new()]).unwrap_err().field,
        "scopes[1]"
    );
    assert!(Scopes::parse(vec!["x".into(); 65]).is_err());
}

#[test]
fn empty_audiences_fall_back_to_the_default() {
    assert_eq!(Audiences::parse(vec![], "api").unwrap().as_slice(), ["api"]);
    assert_eq!(
        Audiences::parse(vec!["".into()], "api").unwrap_err().field,
        "audiences[0]"
    );
}

#[test]
fn reserved_and_oversized_claims_are_refused() {
    let mut claims = Map::new();
    claims.insert("sid".into(), Value::from("x"));
    assert_eq!(ExtraClaims::parse(claims).unwrap_err().field, "claims.sid");
    let mut big = Map::new();
    big.insert("blob".into(), Value::from("x".repeat(MAX_CLAIMS_BYTES)));
    assert_eq!(ExtraClaims::parse(big).unwrap_err().field, "claims");
}

#[test]
fn control_characters_are_refused_in_every_name_and_name_the_field() {
    for bad in ["a\0b", "\n", "tab\there", "esc\u{1b}[31m", "del\u{7f}", "\u{1f}"] {
        assert_eq!(Subject::parse(bad.into()).unwrap_err().field, "subject", "{bad:?}");
        assert_eq!(ClientId::parse(bad.into()).unwrap_err().field, "client_id", "{bad:?}");
        assert_eq!(
            Scopes::parse(vec!["a".into(), "b".into(), bad.into()])
                .unwrap_err()
                .field,
            "scopes[2]"
        );
        assert_eq!(
            Audiences::parse(vec![bad.into()], "api").unwrap_err().field,
            "audiences[0]"
        );
    }
    // Printable text beyond ASCII is fine.
    assert!(Subject::parse("zoë ✓ \u{a0} 日本 עברית".into()).is_ok());
}

#[test]
fn format_characters_separators_c1_controls_and_noncharacters_are_refused_in_names() {
    for bad in [
        "next\u{85}line", // NEL, a C1 control: a line break to many log readers
        "\u{202e}nimda",  // RIGHT-TO-LEFT OVERRIDE: shows as "admin"
        "ad\u{200b}min",  // ZERO WIDTH SPACE: looks like "admin"
        "a\u{200d}b",     // ZERO WIDTH JOINER
        "a\u{feff}",      // BOM / ZERO WIDTH NO-BREAK SPACE
        "a\u{2028}b",     // LINE SEPARATOR (Zl)
        "a\u{2029}b",     // PARAGRAPH SEPARATOR (Zp)
        "a\u{fdd0}",      // noncharacters
        "a\u{fffe}",
        "a\u{10ffff}",
        "tag\u{e0041}", // a TAG character (Cf)
    ] {
        assert_eq!(Subject::parse(bad.into()).unwrap_err().field, "subject", "{bad:?}");
        assert_eq!(ClientId::parse(bad.into()).unwrap_err().field, "client_id", "{bad:?}");
        assert_eq!(
            Scopes::parse(vec![bad.into()]).unwrap_err().field,
            "scopes[0]",
            "{bad:?}"
        );
        assert_eq!(
            Audiences::parse(vec![bad.into()], "api").unwrap_err().field,
            "audiences[0]",
            "{bad:?}"
        );
        let err = ExtraClaims::parse(claims_of(serde_json::json!({ bad: 1 }))).unwrap_err();
        assert!(err.field.starts_with("claims."), "{bad:?}: {err}");
        assert!(
            !err.to_string().chars().any(is_forbidden_in_name),
            "the answer echoes the name escaped: {err}"
        );
    }
}

#[test]
fn claim_values_are_free_text_but_for_controls_separators_and_noncharacters() {
    // A right-to-left display name with its marks, an emoji sequence joined by U+200D.
    let fine = serde_json::json!({"name": "\u{202b}שלום\u{202c}", "team": "👩\u{200d}💻"});
    assert!(ExtraClaims::parse(claims_of(fine)).is_ok());
    for bad in ["a\u{85}", "a\u{2028}", "a\u{ffff}"] {
        let err = ExtraClaims::parse(claims_of(serde_json::json!({"name": bad}))).unwrap_err();
        assert_eq!(err.field, "claims.name", "{bad:?}");
    }
}

fn claims_of(json: Value) -> Map<String, Value> {
    match json {
        Value::Object(map) => map,
        _ => unreachable!(),
    }
}

#[test]
fn control_characters_in_claim_values_are_refused_at_any_depth_with_their_path() {
    let cases = [
        (serde_json::json!({"tenant": "ac\0me"}), "claims.tenant"),
        (serde_json::json!({"a": {"b": ["x", "y", "\u{7f}"]}}), "claims.a.b[2]"),
        (serde_json::json!({"list": [{"deep": "\r\n"}]}), "claims.list[0].deep"),
    ];
    for (json, field) in cases {
        assert_eq!(ExtraClaims::parse(claims_of(json)).unwrap_err().field, field);
    }
    let fine = serde_json::json!({"tenant": "acme", "n": 3, "ok": true, "none": null, "a": {"b": ["x"]}});
    assert!(ExtraClaims::parse(claims_of(fine)).is_ok());
}

#[test]
fn a_control_character_in_a_claim_name_is_refused_and_echoed_escaped() {
    let err = ExtraClaims::parse(claims_of(serde_json::json!({"ten\0ant": "x"}))).unwrap_err();
    assert_eq!(err.field, "claims.ten\\0ant");
    let err = ExtraClaims::parse(claims_of(serde_json::json!({"a": {"\u{1b}[2J": 1}}))).unwrap_err();
    assert_eq!(err.field, "claims.a.\\u{1b}[2J");
    assert!(!err.to_string().chars().any(|c| c.is_ascii_control()), "{err}");
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        "\\PC{0,6}|[\\x00-\\x20\\x7f]{0,3}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-c\\x00\\x1f]{1,3}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn strings_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(values) => values.iter().for_each(|v| strings_in(v, out)),
        Value::Object(object) => object.iter().for_each(|(name, v)| {
            out.push(name.clone());
            strings_in(v, out);
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[test]
fn every_name_the_specs_give_a_meaning_is_reserved() {
    let added_for_rfc_9068_8693_and_oidc = [
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
    ];
    for name in added_for_rfc_9068_8693_and_oidc.iter().chain(RESERVED_CLAIMS.iter()) {
        let mut claims = Map::new();
        claims.insert((*name).into(), Value::from("x"));
        let err = ExtraClaims::parse(claims).unwrap_err();
        assert_eq!(err.field, format!("claims.{name}"));
    }
    let mut near_misses = Map::new();
    near_misses.insert("actor".into(), Value::from("x"));
    near_misses.insert("ACR".into(), Value::from("x"));
    assert!(ExtraClaims::parse(near_misses).is_ok());
}

proptest! {
    #[test]
    fn subject_parse_never_panics_and_accepts_exactly_the_bounded(s in ".{0,300}") {
        use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory as _};
        // Spelled out again rather than calling the rule under test.
        let forbidden = |c: char| {
            c.is_control()
                || matches!(c.general_category(), G::Format | G::LineSeparator | G::ParagraphSeparator)
                || (0xFDD0..=0xFDEF).contains(&u32::from(c))
                || u32::from(c) % 0x10000 >= 0xFFFE
        };
        let ok = !s.is_empty() && s.len() <= MAX_NAME_BYTES && !s.chars().any(forbidden);
        prop_assert_eq!(Subject::parse(s).is_ok(), ok);
    }

    #[test]
    fn accepted_names_and_claims_never_hold_a_control_character(
        name in "[a\\x00-\\x1f\\x7f\\u{80}-\\u{a0}]{0,8}",
        claims in proptest::collection::btree_map("[a-c\\x00\\x7f]{1,3}", any_json(), 0..4),
    ) {
        let has_control = |s: &str| s.chars().any(|c| ('\0'..='\u{1f}').contains(&c) || c == '\u{7f}');
        if let Ok(subject) = Subject::parse(name.clone()) {
            prop_assert!(!has_control(subject.as_str()));
        }
        if let Ok(client) = ClientId::parse(name.clone()) {
            prop_assert!(!has_control(client.as_str()));
        }
        if let Ok(audiences) = Audiences::parse(vec![name.clone()], "api") {
            prop_assert!(audiences.as_slice().iter().all(|a| !has_control(a)));
        }
        if let Ok(scopes) = Scopes::parse(vec![name]) {
            prop_assert!(scopes.as_slice().iter().all(|s| !has_control(s)));
        }
        if let Ok(accepted) = ExtraClaims::parse(claims.into_iter().collect()) {
            let mut strings = Vec::new();
            strings_in(&Value::Object(accepted.as_map().clone()), &mut strings);
            prop_assert!(strings.iter().all(|s| !has_control(s)), "{:?}", strings);
        }
    }

    #[test]
    fn accepted_scopes_never_contain_a_separator(v in proptest::collection::vec("[ -~]{0,8}", 0..10)) {
        if let Ok(scopes) = Scopes::parse(v) {
            for scope in scopes.as_slice() {
                prop_assert!(!scope.is_empty() && !scope.contains(' '));
            }
        }
    }
}
