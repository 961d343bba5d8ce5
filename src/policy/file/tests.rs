use serde_json::json;

use super::*;
use crate::issuer::types::{Audiences, ClientId, ExtraClaims, IssueParams, Scopes, Subject};
use crate::policy::{Refused, Unauthenticated};

const EXAMPLE: &str = r#"
    [[caller]]
    name = "login"
    id = "spiffe://corp.example/ns/auth/sa/login"
    rpcs = ["Issue", "Rotate", "Revoke", "ListSessions"]
    audiences = ["api", "web-*"]
    scopes = ["read", "write", "admin:*"]
    claims = ["tenant"]
    rate = { per_second = 200, burst = 400 }

    [[caller]]
    name = "gateway"
    api_key_sha256 = "KEYHASH"
    rpcs = ["*"]
    audiences = ["*"]
"#;

fn spiffe(id: &str) -> PeerIdentity {
    PeerIdentity::Spiffe(SpiffeId::parse(id).unwrap())
}

fn dns(name: &str) -> PeerIdentity {
    PeerIdentity::Dns(DnsName::parse(name).unwrap())
}

fn example() -> CallerPolicy {
    parse(&EXAMPLE.replace("KEYHASH", &api_key_sha256("gw-secret")), None).unwrap()
}

fn params(audiences: &[&str], scopes: &[&str], claims: serde_json::Value) -> IssueParams {
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    IssueParams {
        subject: Subject::parse("alice".into()).unwrap(),
        scopes: Scopes::parse(strings(scopes)).unwrap(),
        audiences: Audiences::parse(strings(audiences), "default-api").unwrap(),
        client_id: ClientId::parse(String::new()).unwrap(),
        claims: ExtraClaims::parse(claims.as_object().unwrap().clone()).unwrap(),
    }
}

#[test]
fn the_issues_example_parses_and_callers_resolve_by_identity_or_key() {
    let policy = example();
    assert_eq!(policy.len(), 2);
    let login = policy
        .resolve(Some(&spiffe("spiffe://corp.example/ns/auth/sa/login")), None)
        .unwrap();
    assert_eq!(login.name, "login");
    assert!(login.may_call("Issue") && !login.may_call("Introspect"));
    let gateway = policy.resolve(None, Some(b"gw-secret")).unwrap();
    assert_eq!(gateway.name, "gateway");
    assert!(gateway.may_call("Check"), "* allows every RPC");
}

#[test]
fn debug_output_names_callers_but_never_a_key_hash() {
    let shown = format!("{:?}", example());
    assert!(shown.contains("gateway") && shown.contains("login"), "{shown}");
    assert!(!shown.contains(&api_key_sha256("gw-secret")), "{shown}");
}

#[test]
fn unknown_or_missing_credentials_are_unauthenticated() {
    let policy = example();
    assert_eq!(policy.resolve(None, None).unwrap_err(), Unauthenticated::NoCredentials);
    assert_eq!(
        policy.resolve(Some(&spiffe("spiffe://x")), None).unwrap_err(),
        Unauthenticated::UnknownIdentity
    );
    assert_eq!(
        policy.resolve(None, Some(b"wrong")).unwrap_err(),
        Unauthenticated::UnknownKey
    );
    // An unknown identity with a known key: the key names the caller.
    assert_eq!(
        policy
            .resolve(Some(&spiffe("spiffe://x")), Some(b"gw-secret"))
            .unwrap()
            .name,
        "gateway"
    );
    // A known identity with a wrong key, or one naming another caller: refused.
    let login = spiffe("spiffe://corp.example/ns/auth/sa/login");
    let login = Some(&login);
    assert_eq!(
        policy.resolve(login, Some(b"wrong")).unwrap_err(),
        Unauthenticated::UnknownKey
    );
    assert_eq!(
        policy.resolve(login, Some(b"gw-secret")).unwrap_err(),
        Unauthenticated::Conflicting
    );
}

#[test]
fn issue_checks_every_audience_scope_and_claim_name() {
    let policy = example();
    let login = policy
        .resolve(Some(&spiffe("spiffe://corp.example/ns/auth/sa/login")), None)
        .unwrap();
    let ok = params(&["api", "web-shop"], &["read", "admin:users"], json!({"tenant": "t1"}));
    login.check_issue(&ok, "default-api").unwrap();
    login.check_issue(&params(&[], &[], json!({})), "default-api").unwrap();
    let refused = |p: IssueParams| login.check_issue(&p, "default-api").unwrap_err().refused;
    assert_eq!(
        refused(params(&["web"], &[], json!({}))),
        Refused::Audience("web".into())
    );
    assert_eq!(
        refused(params(&[], &["admin"], json!({}))),
        Refused::Scope("admin".into())
    );
    assert_eq!(
        refused(params(&[], &[], json!({"role": 1}))),
        Refused::Claim("role".into())
    );
}

#[test]
fn missing_lists_allow_only_the_default_audience_and_nothing_else() {
    let policy = parse(
        &format!(
            "[[caller]]\nname = \"bare\"\napi_key_sha256 = \"{}\"",
            api_key_sha256("k")
        ),
        None,
    )
    .unwrap();
    let bare = policy.resolve(None, Some(b"k")).unwrap();
    assert!(!bare.may_call("Issue"), "no rpcs: no RPC");
    bare.check_issue(&params(&[], &[], json!({})), "default-api").unwrap();
    bare.check_issue(&params(&["default-api"], &[], json!({})), "default-api")
        .unwrap();
    assert!(
        bare.check_issue(&params(&["api"], &[], json!({})), "default-api")
            .is_err()
    );
    assert!(
        bare.check_issue(&params(&[], &["read"], json!({})), "default-api")
            .is_err()
    );
    assert!(
        bare.check_issue(&params(&[], &[], json!({"t": 1})), "default-api")
            .is_err()
    );
}

#[test]
fn every_problem_of_a_broken_file_is_reported_naming_its_caller() {
    let problems = parse(
        r#"
        [[caller]]
        name = "a"
        id = "x"
        api_key_sha256 = "00"
        rpcs = ["Isue"]
        scopes = ["a*b"]
        rate = { per_second = 0 }

        [[caller]]
        name = "a"
        id = "x"
        "#,
        None,
    )
    .unwrap_err();
    let all = problems.join("\n");
    for expected in [
        "caller \"a\": rpcs: unknown method \"Isue\"",
        "caller \"a\": scopes: \"a*b\"",
        "caller \"a\": rate:",
        "caller \"a\": needs exactly one of id, dns and api_key_sha256",
        "caller \"a\": a second caller of this name",
    ] {
        assert!(all.contains(expected), "{expected} in {all}");
    }
    let typo = parse("[[caller]]\nname = \"a\"\nid = \"x\"\nscope = [\"read\"]", None).unwrap_err();
    assert!(typo[0].contains("scope"), "{typo:?}");
    assert!(parse("not toml [", None).is_err());
}

#[test]
fn a_caller_keeps_its_rate_limit_state_over_a_reload_unless_its_rate_changed() {
    let text = |rate: u32| {
        format!("[[caller]]\nname = \"a\"\nid = \"spiffe://td/a\"\nrate = {{ per_second = {rate}, burst = 1 }}")
    };
    let first = parse(&text(1), None).unwrap();
    let limiter = |p: &CallerPolicy| p.named("a").unwrap().rate.clone().unwrap();
    let same = parse(&text(1), Some(&first)).unwrap();
    assert!(Arc::ptr_eq(&limiter(&first), &limiter(&same)));
    let changed = parse(&text(2), Some(&first)).unwrap();
    assert!(!Arc::ptr_eq(&limiter(&first), &limiter(&changed)));
}

#[test]
fn id_names_only_a_spiffe_identity_and_dns_only_a_dns_one() {
    let policy = parse(
        r#"
        [[caller]]
        name = "workload"
        id = "spiffe://td/ns/auth/sa/login"

        [[caller]]
        name = "host"
        dns = "Batch.Internal"
        "#,
        None,
    )
    .unwrap();
    assert_eq!(
        policy
            .resolve(Some(&spiffe("spiffe://td/ns/auth/sa/login")), None)
            .unwrap()
            .name,
        "workload"
    );
    assert_eq!(policy.resolve(Some(&dns("batch.internal")), None).unwrap().name, "host");
    // The same text in the other kind is nobody.
    assert_eq!(
        policy
            .resolve(Some(&spiffe("spiffe://batch.internal")), None)
            .unwrap_err(),
        Unauthenticated::UnknownIdentity
    );
}

#[test]
fn an_id_that_is_a_dns_name_or_no_identity_at_all_is_refused_saying_what_to_write() {
    let problems = parse(
        r#"
        [[caller]]
        name = "old-style"
        id = "host.example"

        [[caller]]
        name = "mixed-up"
        dns = "spiffe://td/x"

        [[caller]]
        name = "broken"
        id = "spiffe://td/a,URI=spiffe://td/b"

        [[caller]]
        name = "both"
        id = "spiffe://td/c"
        dns = "c.example"
        "#,
        None,
    )
    .unwrap_err();
    let all = problems.join("\n");
    for expected in [
        r#"caller "old-style": id: "host.example" is a DNS name, not a SPIFFE ID: name a DNS-SAN caller with dns = "host.example""#,
        r#"caller "mixed-up": dns: "spiffe://td/x" is a SPIFFE ID"#,
        r#"caller "broken": id: "spiffe://td/a,URI=spiffe://td/b" is not a SPIFFE ID"#,
        r#"caller "both": needs exactly one of id, dns and api_key_sha256"#,
    ] {
        assert!(all.contains(expected), "{expected} in {all}");
    }
}

#[test]
fn subjects_and_client_ids_limit_issue_only_when_listed() {
    let with_lists = format!(
        "[[caller]]\nname = \"issuer\"\napi_key_sha256 = \"{}\"\nsubjects = [\"user-*\"]\nclient_ids = [\"issuer-app\"]\n",
        api_key_sha256("k")
    );
    let policy = parse(&with_lists, None).unwrap();
    let issuer = policy.resolve(None, Some(b"k")).unwrap();
    let mut allowed = params(&[], &[], json!({}));
    allowed.subject = Subject::parse("user-1".into()).unwrap();
    allowed.client_id = ClientId::parse("issuer-app".into()).unwrap();
    issuer.check_issue(&allowed, "default-api").unwrap();
    let mut root = allowed.clone();
    root.subject = Subject::parse("root".into()).unwrap();
    assert_eq!(
        issuer.check_issue(&root, "default-api").unwrap_err().refused,
        Refused::Subject("root".into())
    );
    let mut web = allowed.clone();
    web.client_id = ClientId::parse("web".into()).unwrap();
    assert_eq!(
        issuer.check_issue(&web, "default-api").unwrap_err().refused,
        Refused::ClientId("web".into())
    );
    let mut no_client = allowed;
    no_client.client_id = ClientId::parse(String::new()).unwrap();
    assert_eq!(
        issuer.check_issue(&no_client, "default-api").unwrap_err().refused,
        Refused::ClientId(String::new()),
        "no client id is client \"\", which a list must allow"
    );
    assert!(issuer.limits_subjects() && issuer.may_act_for("user-9") && !issuer.may_act_for("root"));

    // Without the lists (every file written before them): any subject, any client.
    let login = example();
    let login = login
        .resolve(Some(&spiffe("spiffe://corp.example/ns/auth/sa/login")), None)
        .unwrap();
    login.check_issue(&root, "default-api").unwrap();
    login.check_issue(&web, "default-api").unwrap();
    assert!(!login.limits_subjects() && login.may_act_for("anyone"));

    let problems = parse(&with_lists.replace("user-*", "a*b"), None).unwrap_err();
    assert!(problems[0].contains("subjects: \"a*b\""), "{problems:?}");
}
