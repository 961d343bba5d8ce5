//! The file formats: what a recorder writes and a store dump gives, read back exactly.

use std::io::Cursor;

use ratchet_history::history::{Answer, Call, Code, Outcome, RevokeTarget, TokenRef, UnknownCause};
use ratchet_history::state::RevokeReason;
use ratchet_history::{FinalState, Options, check_files, read_history, write_history};

/// One line per call and outcome kind, in the exact form `write_op` produces. The recorder's
/// author reads this list.
const LINES: &[&str] = &[
    r#"{"process":1,"op":0,"invoked_ns":1000,"completed_ns":5000,"call":{"issue":{"subject":"s1","client_id":"chaos"}},"outcome":{"ok":{"pair":{"family":"cdec0b1a-4f97-4aa2-8dc2-9a60e1f19913","token":"ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"}}}}"#,
    r#"{"process":1,"op":1,"invoked_ns":6000,"completed_ns":9000,"call":{"rotate":{"token":"ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"}},"outcome":{"ok":{"pair":{"family":"cdec0b1a-4f97-4aa2-8dc2-9a60e1f19913","token":"3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d"}}}}"#,
    r#"{"process":2,"op":0,"invoked_ns":9500,"completed_ns":9900,"call":{"replay":{"token":"ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"}},"outcome":{"failed":{"code":"UNAUTHENTICATED","reason":"TOKEN_REUSED"}}}"#,
    r#"{"process":1,"op":2,"invoked_ns":10000,"completed_ns":10400,"call":{"rotate":{"token":"3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d"}},"outcome":{"failed":{"code":"UNAUTHENTICATED","reason":"TOKEN_REVOKED","message":"refresh token has been revoked"}}}"#,
    r#"{"process":3,"op":0,"invoked_ns":11000,"completed_ns":2011000,"call":{"rotate":{"token":"2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6"}},"outcome":{"unknown":{"cause":"outcome_unknown","code":"DEADLINE_EXCEEDED"}}}"#,
    r#"{"process":4,"op":0,"invoked_ns":12000,"completed_ns":12900,"call":{"rotate":{"token":"18ac3e7343f016890c510e93f935261169d9e3f565436429830faf0934f4f8e4"}},"outcome":{"unknown":{"cause":"transport","message":"connection reset by peer"}}}"#,
    r#"{"process":4,"op":1,"invoked_ns":13000,"completed_ns":13100,"call":{"rotate":{"token":"18ac3e7343f016890c510e93f935261169d9e3f565436429830faf0934f4f8e4"}},"outcome":{"failed":{"code":"UNAVAILABLE","message":"storage temporarily unavailable, nothing was done: retry with backoff"}}}"#,
    r#"{"process":5,"op":0,"invoked_ns":14000,"completed_ns":14500,"call":{"revoke":{"family":"cdec0b1a-4f97-4aa2-8dc2-9a60e1f19913"}},"outcome":{"ok":{"revoked":0}}}"#,
    r#"{"process":5,"op":1,"invoked_ns":15000,"completed_ns":15500,"call":{"revoke":{"subject":"s1"}},"outcome":{"ok":{"revoked":1}}}"#,
    r#"{"process":5,"op":2,"invoked_ns":16000,"completed_ns":16500,"call":{"revoke":{"token":{"refresh_token":"2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6"}}},"outcome":{"ok":{"revoked":0}}}"#,
    r#"{"process":5,"op":3,"invoked_ns":17000,"completed_ns":17500,"call":{"revoke":{"token":{"access_token":{"family":"cdec0b1a-4f97-4aa2-8dc2-9a60e1f19913","jti":"0f3c2b1a"}}}},"outcome":{"unknown":{"cause":"cancelled","code":"CANCELLED"}}}"#,
    r#"{"process":6,"op":0,"invoked_ns":18000,"completed_ns":18200,"call":{"introspect":{"refresh_token":"3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d"}},"outcome":{"ok":{"introspected":{"active":false,"family":null}}}}"#,
    r#"{"process":6,"op":1,"invoked_ns":19000,"completed_ns":19200,"call":{"introspect":{"access_token":{"family":"cdec0b1a-4f97-4aa2-8dc2-9a60e1f19913","jti":"0f3c2b1a"}}},"outcome":{"ok":{"introspected":{"active":true,"family":"cdec0b1a-4f97-4aa2-8dc2-9a60e1f19913"}}}}"#,
    r#"{"process":7,"op":0,"invoked_ns":20000,"completed_ns":20100,"call":{"issue":{"subject":"s2","client_id":"chaos"}},"outcome":{"failed":{"code":"RESOURCE_EXHAUSTED","reason":"RATE_LIMITED"}}}"#,
    r#"{"process":7,"op":1,"invoked_ns":21000,"completed_ns":21900,"call":{"issue":{"subject":"s2","client_id":"chaos"}},"outcome":{"unknown":{"cause":"internal","code":"INTERNAL","message":"internal error (id 3f2a9c1b0d4e)"}}}"#,
];

#[test]
fn every_documented_line_reads_and_writes_back_identically() {
    let text = LINES.join("\n");
    let ops = read_history(Cursor::new(text.as_bytes())).unwrap();
    assert_eq!(ops.len(), LINES.len());
    let mut written = Vec::new();
    write_history(&mut written, &ops).unwrap();
    assert_eq!(String::from_utf8(written).unwrap(), format!("{text}\n"));

    assert!(matches!(&ops[0].call, Call::Issue { subject, .. } if subject == "s1"));
    assert!(matches!(&ops[2].outcome, Outcome::Failed(f) if f.code == Code::Unauthenticated));
    assert!(matches!(&ops[4].outcome, Outcome::Unknown(u) if u.cause == UnknownCause::OutcomeUnknown));
    assert!(matches!(&ops[8].call, Call::Revoke(RevokeTarget::Subject(s)) if s == "s1"));
    assert!(matches!(&ops[8].outcome, Outcome::Ok(Answer::Revoked(1))));
    assert!(matches!(
        &ops[12].call,
        Call::Introspect(TokenRef::AccessToken { jti, .. }) if jti == "0f3c2b1a"
    ));
}

#[test]
fn a_line_that_is_not_an_op_is_named_by_its_number() {
    let text = format!(
        "{}\n\n{}\n",
        LINES[0],
        r#"{"process":1,"op":1,"invoked_ns":1,"completed_ns":2,"call":{"rotate":{"tokn":"x"}},"outcome":{"ok":{"revoked":1}}}"#
    );
    let error = read_history(Cursor::new(text.as_bytes())).unwrap_err();
    assert!(error.to_string().starts_with("history line 3: "), "{error}");
    assert!(error.to_string().contains("tokn"), "{error}");
}

#[test]
fn grpc_codes_convert_from_their_numbers() {
    assert_eq!(Code::from_i32(14), Some(Code::Unavailable));
    assert_eq!(Code::from_i32(4).map(Code::as_str), Some("DEADLINE_EXCEEDED"));
    assert_eq!(Code::from_i32(0), None);
    assert_eq!(Code::from_i32(17), None);
}

/// Verbatim what the dump statement in `state`'s docs printed (`psql -At`) for a database
/// holding these two families (checked against the real schema, PostgreSQL 15).
const STATE: &str = r#"{"families" : [{"id" : "cdec0b1a-4f97-4aa2-8dc2-9a60e1f19913", "subject" : "s1", "client_id" : "chaos", "revoked" : "reuse", "tokens" : [{"id" : "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb", "parent" : null, "spent" : true, "successor" : "3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d"}, {"id" : "3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d", "parent" : "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb", "spent" : false, "successor" : null}]}, {"id" : "0b9a1f5c-7d2e-4c1a-9a57-3f0e1d2c4b6a", "subject" : "s2", "client_id" : "chaos", "revoked" : null, "tokens" : [{"id" : "2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6", "parent" : null, "spent" : false, "successor" : null}]}]}"#;

#[test]
fn the_documented_state_reads_and_writes_back() {
    let state = FinalState::read(STATE.as_bytes()).unwrap();
    assert_eq!(state.families[0].revoked, Some(RevokeReason::Reuse));
    assert_eq!(state.families[0].tokens.len(), 2);
    assert_eq!(state.families[1].revoked, None);
    assert_eq!(state.families[1].tokens[0].parent, None);
    let mut written = Vec::new();
    state.write(&mut written).unwrap();
    assert_eq!(FinalState::read(written.as_slice()).unwrap(), state);
}

#[test]
fn check_files_reads_both_files_and_gives_the_verdict() {
    let dir = std::env::temp_dir().join(format!("ratchet-history-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let history = dir.join("history.jsonl");
    let state = dir.join("state.json");
    // The second family of the dump is explained by the Issue for s2 with an unknown outcome.
    let lines = [LINES[0], LINES[1], LINES[2], LINES[14]];
    std::fs::write(&history, lines.join("\n")).unwrap();
    std::fs::write(&state, STATE).unwrap();
    let report = check_files(&history, &state, &Options::default()).unwrap();
    assert_eq!(report.stats.ops, 4);

    // The same history against a store where the family was never revoked: the replay's
    // TOKEN_REUSED is not followed by a revocation.
    std::fs::write(&state, STATE.replace(r#""revoked" : "reuse""#, r#""revoked" : null"#)).unwrap();
    let error = check_files(&history, &state, &Options::default()).unwrap_err();
    assert!(error.contains("reuse detected but family not revoked"), "{error}");

    let missing = dir.join("missing.jsonl");
    let error = check_files(&missing, &state, &Options::default()).unwrap_err();
    assert!(error.starts_with("cannot open "), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}
