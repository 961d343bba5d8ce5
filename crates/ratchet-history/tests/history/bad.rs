//! Histories or states ratchet must never produce: each is caught, as exactly the property it
//! breaks.

use std::time::Duration;

use ratchet_history::history::{Code, Outcome};
use ratchet_history::state::{RevokeReason::*, TokenState};
use ratchet_history::{Kind, Options, check};

use crate::support::*;

#[test]
fn a_second_acceptance_of_a_token_without_a_grace_window_is_caught() {
    // The identical pair twice, but the server has no grace window: the second answer spent
    // the token again (or answered a retry it must refuse).
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), pair("f1", "t1"))
        .call(2, replay("t0"), pair("f1", "t1"));
    let report = fails_with(
        &h,
        &state(vec![chain("f1", "alice", &["t0", "t1"])]),
        &strict(),
        Kind::DoubleAcceptance,
    );
    assert!(report.violations[0].message.contains("accepted 2 times"), "{report}");
}

#[test]
fn an_acceptance_after_the_token_was_seen_spent_is_caught() {
    // TOKEN_REUSED says t0 was spent already; then an OK Rotate of it: spent twice.
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), cut())
        .call(2, replay("t0"), reused())
        .call(1, rotate("t0"), pair("f1", "t1"));
    let family = revoked_for(chain("f1", "alice", &["t0", "t1"]), Reuse);
    // Without a grace window the OK is the spend, and it came after the token was seen spent;
    // it also came after the revocation was seen, which is a contradiction of its own.
    let report = check(&h.ops, &state(vec![family]), &strict());
    assert_eq!(
        report.kinds(),
        vec![Kind::DoubleAcceptance, Kind::Contradiction],
        "{report}"
    );
}

#[test]
fn a_grace_retry_after_the_successor_was_spent_is_caught() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), pair("f1", "t1"))
        .call(1, rotate("t1"), pair("f1", "t2"))
        .call(2, replay("t0"), pair("f1", "t1"));
    fails_with(
        &h,
        &state(vec![chain("f1", "alice", &["t0", "t1", "t2"])]),
        &grace(),
        Kind::DoubleAcceptance,
    );
}

#[test]
fn a_lost_acknowledged_rotation_is_caught() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), pair("f1", "t1"));
    let report = fails_with(
        &h,
        &state(vec![chain("f1", "alice", &["t0"])]),
        &strict(),
        Kind::LostAcknowledged,
    );
    let printed = report.to_string();
    assert!(
        printed.contains("Rotate of t0 returned t1, but t0 is unspent"),
        "{printed}"
    );
}

#[test]
fn a_rotation_replaced_by_another_successor_is_caught() {
    // Acknowledged t0 -> t1, but the store has t0 -> tx (an unknown Rotate's spend won after a
    // failover lost the acknowledged one).
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(2, rotate("t0"), cut())
        .call(1, rotate("t0"), pair("f1", "t1"));
    fails_with(
        &h,
        &state(vec![chain("f1", "alice", &["t0", "tx"])]),
        &strict(),
        Kind::LostAcknowledged,
    );
}

#[test]
fn a_lost_acknowledged_issue_is_caught() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, issue("alice"), pair("f2", "u0"));
    fails_with(
        &h,
        &state(vec![chain("f1", "alice", &["t0"])]),
        &strict(),
        Kind::LostAcknowledged,
    );
}

#[test]
fn a_handed_out_token_refused_as_unknown_is_caught() {
    // What asynchronous replication looks like after a failover: the newest token is gone.
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), pair("f1", "t1"))
        .call(1, rotate("t1"), token_invalid());
    fails_with(
        &h,
        &state(vec![chain("f1", "alice", &["t0", "t1"])]),
        &strict(),
        Kind::LostAcknowledged,
    );
}

#[test]
fn a_lost_acknowledged_revoke_is_caught() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, revoke_family("f1"), revoked(1));
    fails_with(
        &h,
        &state(vec![chain("f1", "alice", &["t0"])]),
        &strict(),
        Kind::LostAcknowledged,
    );
}

#[test]
fn a_reuse_without_revocation_is_caught() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), pair("f1", "t1"))
        .call(2, replay("t0"), reused());
    let report = fails_with(
        &h,
        &state(vec![chain("f1", "alice", &["t0", "t1"])]),
        &strict(),
        Kind::ReuseNotRevoked,
    );
    assert_eq!(report.violations[0].family.as_ref().map(|f| f.0.as_str()), Some("f1"));
}

#[test]
fn a_reuse_whose_family_was_revoked_only_later_for_another_reason_is_caught() {
    // The reuse must have revoked the family; a Revoke sent afterwards cannot have come first.
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), pair("f1", "t1"))
        .call(2, replay("t0"), reused())
        .call(3, revoke_family("f1"), revoked(1));
    let family = revoked_for(chain("f1", "alice", &["t0", "t1"]), Revoke);
    fails_with(&h, &state(vec![family]), &strict(), Kind::ReuseNotRevoked);
}

#[test]
fn a_spend_by_a_rotate_that_answered_unavailable_is_caught() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), unavailable())
        .call(1, rotate("t0"), failed(Code::ResourceExhausted, Some("RATE_LIMITED")));
    let report = fails_with(
        &h,
        &state(vec![chain("f1", "alice", &["t0", "tx"])]),
        &strict(),
        Kind::UnexplainedSpend,
    );
    let printed = report.to_string();
    assert!(
        printed.contains("UNAVAILABLE, RESOURCE_EXHAUSTED/RATE_LIMITED"),
        "{printed}"
    );
}

#[test]
fn a_spend_no_rotate_asked_for_is_caught() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"));
    fails_with(
        &h,
        &state(vec![chain("f1", "alice", &["t0", "tx"])]),
        &strict(),
        Kind::UnexplainedSpend,
    );
}

#[test]
fn a_revocation_by_a_revoke_that_answered_unavailable_is_caught() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, revoke_family("f1"), unavailable());
    let family = revoked_for(chain("f1", "alice", &["t0"]), Revoke);
    fails_with(&h, &state(vec![family]), &strict(), Kind::UnexplainedRevocation);
}

#[test]
fn a_revocation_for_reuse_without_any_reuse_is_caught() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), pair("f1", "t1"));
    let family = revoked_for(chain("f1", "alice", &["t0", "t1"]), Reuse);
    fails_with(&h, &state(vec![family]), &strict(), Kind::UnexplainedRevocation);
}

#[test]
fn a_family_seen_revoked_before_anything_revoked_it_is_caught() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), token_revoked())
        .call(2, revoke_family("f1"), revoked(1));
    let family = revoked_for(chain("f1", "alice", &["t0"]), Revoke);
    fails_with(&h, &state(vec![family]), &strict(), Kind::UnexplainedRevocation);
}

#[test]
fn a_branch_in_the_store_is_caught() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), pair("f1", "t1"));
    let mut family = chain("f1", "alice", &["t0", "t1"]);
    family.tokens.push(TokenState {
        id: "t2".into(),
        parent: Some("t0".into()),
        spent: false,
        successor: None,
    });
    let report = fails_with(&h, &state(vec![family]), &strict(), Kind::StoreBranch);
    let printed = report.to_string();
    assert!(printed.contains("t0 has 2 children: t1, t2"), "{printed}");
    assert!(
        printed.contains(r#"{"id":"t2","parent":"t0","spent":false,"successor":null}"#),
        "{printed}"
    );
}

#[test]
fn two_first_tokens_in_one_family_are_caught() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"));
    let mut family = chain("f1", "alice", &["t0"]);
    family.tokens.push(TokenState {
        id: "u0".into(),
        parent: None,
        spent: false,
        successor: None,
    });
    fails_with(&h, &state(vec![family]), &strict(), Kind::StoreBranch);
}

#[test]
fn a_branch_in_the_history_is_caught() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .at(1, 100, 110, rotate("t0"), pair("f1", "t1"))
        .at(2, 101, 111, rotate("t0"), pair("f1", "t2"));
    let report = fails_with(
        &h,
        &state(vec![chain("f1", "alice", &["t0", "t1"])]),
        &grace(),
        Kind::HistoryBranch,
    );
    assert!(
        report.to_string().contains("2 different successors: t1, t2"),
        "{report}"
    );
}

#[test]
fn a_family_no_issue_created_is_caught() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(2, issue("bob"), unavailable());
    let families = vec![chain("f1", "alice", &["t0"]), chain("f2", "bob", &["u0"])];
    let report = fails_with(&h, &state(families), &strict(), Kind::UnexplainedFamily);
    assert_eq!(report.violations[0].family.as_ref().map(|f| f.0.as_str()), Some("f2"));
}

#[test]
fn more_families_than_unknown_issues_is_caught() {
    let mut h = History::new();
    h.call(1, issue("alice"), cut());
    let families = vec![chain("f1", "alice", &["t0"]), chain("f2", "alice", &["u0"])];
    fails_with(&h, &state(families), &strict(), Kind::UnexplainedFamily);
}

#[test]
fn a_rotation_accepted_after_the_revocation_completed_is_caught() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(2, revoke_family("f1"), revoked(1))
        .call(1, rotate("t0"), pair("f1", "t1"));
    let family = revoked_for(chain("f1", "alice", &["t0", "t1"]), Revoke);
    fails_with(&h, &state(vec![family]), &strict(), Kind::Contradiction);
}

#[test]
fn a_token_refused_as_revoked_that_is_spent_in_the_end_is_caught() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .at(2, 100, 200, rotate("t0"), cut())
        .at(3, 110, 120, revoke_family("f1"), revoked(1))
        .at(1, 130, 140, rotate("t0"), token_revoked());
    let family = revoked_for(chain("f1", "alice", &["t0", "tx"]), Revoke);
    fails_with(&h, &state(vec![family]), &strict(), Kind::Contradiction);
}

#[test]
fn an_introspect_active_after_the_revocation_completed_is_caught() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .at(2, 100, 110, revoke_family("f1"), revoked(1))
        .at(3, 150, 160, introspect_access("f1"), active("f1"));
    let family = revoked_for(chain("f1", "alice", &["t0"]), Revoke);
    fails_with(&h, &state(vec![family.clone()]), &strict(), Kind::StaleIntrospect);
    // A replica's tolerance that is too short does not excuse it either.
    let options = Options {
        introspect_staleness: Duration::from_nanos(39),
        ..Options::default()
    };
    fails_with(&h, &state(vec![family]), &options, Kind::StaleIntrospect);
}

#[test]
fn an_introspect_active_for_a_spent_refresh_token_is_caught() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), pair("f1", "t1"))
        .call(2, introspect("t0"), active("f1"));
    fails_with(
        &h,
        &state(vec![chain("f1", "alice", &["t0", "t1"])]),
        &strict(),
        Kind::StaleIntrospect,
    );
}

#[test]
fn a_history_that_is_not_well_formed_is_reported_as_such() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        // DEADLINE_EXCEEDED is never definite: it must be recorded as unknown
        .call(1, rotate("t0"), failed(Code::DeadlineExceeded, Some("OUTCOME_UNKNOWN")))
        // an Issue answered with a revoke count
        .call(
            1,
            issue("alice"),
            Outcome::Ok(ratchet_history::history::Answer::Revoked(1)),
        );
    h.ops[2].op = 0; // a duplicate op id
    let report = fails_with(
        &h,
        &state(vec![chain("f1", "alice", &["t0", "t1"])]),
        &strict(),
        Kind::Malformed,
    );
    assert_eq!(report.violations.len(), 3, "{report}");
}

#[test]
fn the_report_prints_the_violating_operations_in_time_order() {
    // Recorded in completion order, as a shared recorder writes them: the refusal first.
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .at(1, 300, 310, rotate("t1"), token_invalid())
        .at(1, 100, 110, rotate("t0"), pair("f1", "t1"));
    let report = check(&h.ops, &state(vec![chain("f1", "alice", &["t0", "t1"])]), &strict());
    let printed = report.to_string();
    let expected = "\
history check FAILED: 1 violation(s) (3 ops: 2 ok, 1 failed, 0 unknown; 1 families, 2 tokens; unknown rotations: 0 happened, 0 did not, 0 undecided)
1. acknowledged write lost (family f1): t1 was handed out by an OK call, then refused as unknown (TOKEN_INVALID)
   operations, in invocation order:
     {\"process\":1,\"op\":2,\"invoked_ns\":100,\"completed_ns\":110,\"call\":{\"rotate\":{\"token\":\"t0\"}},\"outcome\":{\"ok\":{\"pair\":{\"family\":\"f1\",\"token\":\"t1\"}}}}
     {\"process\":1,\"op\":1,\"invoked_ns\":300,\"completed_ns\":310,\"call\":{\"rotate\":{\"token\":\"t1\"}},\"outcome\":{\"failed\":{\"code\":\"UNAUTHENTICATED\",\"reason\":\"TOKEN_INVALID\"}}}
   stored tokens:
     {\"id\":\"t1\",\"parent\":\"t0\",\"spent\":false,\"successor\":null}
";
    assert_eq!(printed, expected);
}
