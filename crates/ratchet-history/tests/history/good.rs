//! Histories ratchet may produce: each passes.

use std::time::Duration;

use ratchet_history::Options;
use ratchet_history::history::Code;
use ratchet_history::state::{FamilyState, RevokeReason::*, TokenState};

use crate::support::*;

#[test]
fn a_plain_chain_of_rotations_passes() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), pair("f1", "t1"))
        .call(1, rotate("t1"), pair("f1", "t2"))
        .call(1, introspect("t2"), active("f1"))
        .call(1, introspect("t1"), inactive())
        .call(1, introspect_access("f1"), active("f1"));
    let report = passes(&h, &state(vec![chain("f1", "alice", &["t0", "t1", "t2"])]), &strict());
    assert_eq!((report.stats.ops, report.stats.ok, report.stats.tokens), (6, 6, 3));
}

#[test]
fn a_re_delivery_within_the_grace_window_returning_the_identical_pair_is_the_same_acceptance() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), pair("f1", "t1"))
        .call(1, rotate("t0"), pair("f1", "t1"))
        .call(1, rotate("t1"), pair("f1", "t2"));
    passes(&h, &state(vec![chain("f1", "alice", &["t0", "t1", "t2"])]), &grace());
}

#[test]
fn an_unknown_rotation_that_happened_makes_the_retry_reused_without_a_grace_window() {
    // The first Rotate's answer was lost; it did spend t0 (into tx, which the client never saw),
    // so the retry is reuse and the family is revoked.
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), outcome_unknown())
        .call(1, rotate("t0"), reused());
    let family = revoked_for(chain("f1", "alice", &["t0", "tx"]), Reuse);
    let report = passes(&h, &state(vec![family]), &strict());
    assert_eq!(report.stats.unknown_rotations_happened, 1);
}

#[test]
fn an_unknown_rotation_that_happened_is_answered_again_within_the_grace_window() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), cut())
        .call(1, rotate("t0"), pair("f1", "t1"))
        .call(1, rotate("t1"), pair("f1", "t2"));
    passes(&h, &state(vec![chain("f1", "alice", &["t0", "t1", "t2"])]), &grace());
}

#[test]
fn an_unknown_rotation_that_did_not_happen_leaves_the_retry_to_spend_the_token() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), outcome_unknown())
        .call(1, rotate("t0"), pair("f1", "t1"));
    let report = passes(&h, &state(vec![chain("f1", "alice", &["t0", "t1"])]), &strict());
    assert_eq!(report.stats.unknown_rotations_not_happened, 1);
}

#[test]
fn an_unknown_rotation_may_land_after_the_client_gave_up() {
    // The cut Rotate reaches the database after the retry spent t0: it is reuse, and revokes the
    // family, though the client had moved on before the retry was even sent.
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), cut())
        .call(1, rotate("t0"), pair("f1", "t1"))
        .call(1, rotate("t1"), token_revoked());
    let family = revoked_for(chain("f1", "alice", &["t0", "t1"]), Reuse);
    passes(&h, &state(vec![family]), &strict());
}

#[test]
fn a_replay_is_answered_reused_and_its_family_stays_revoked() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), pair("f1", "t1"))
        .call(2, replay("t0"), reused())
        .call(1, rotate("t1"), token_revoked())
        .call(1, introspect("t1"), inactive())
        .call(2, replay("t0"), reused());
    let family = revoked_for(chain("f1", "alice", &["t0", "t1"]), Reuse);
    passes(&h, &state(vec![family]), &strict());
}

#[test]
fn a_family_revoked_before_a_replay_may_keep_its_first_reason() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), pair("f1", "t1"))
        .call(2, revoke_family("f1"), revoked(1))
        .call(2, replay("t0"), reused());
    let family = revoked_for(chain("f1", "alice", &["t0", "t1"]), Revoke);
    passes(&h, &state(vec![family]), &strict());
}

#[test]
fn revokes_by_family_token_and_subject_pass() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "a0"))
        .call(2, issue("bob"), pair("f2", "b0"))
        .call(3, issue("carol"), pair("f3", "c0"))
        .call(4, issue("carol"), pair("f4", "d0"))
        .call(1, revoke_family("f1"), revoked(1))
        .call(2, revoke_token("b0"), revoked(1))
        .call(3, revoke_subject("carol"), revoked(2))
        .call(1, rotate("a0"), token_revoked())
        .call(4, introspect_access("f4"), inactive())
        .call(1, revoke_family("f1"), revoked(0));
    let families = vec![
        revoked_for(chain("f1", "alice", &["a0"]), Revoke),
        revoked_for(chain("f2", "bob", &["b0"]), Revoke),
        revoked_for(chain("f3", "carol", &["c0"]), Revoke),
        revoked_for(chain("f4", "carol", &["d0"]), Revoke),
    ];
    passes(&h, &state(families), &strict());
}

#[test]
fn racing_rotations_of_one_token_give_one_pair_and_reuse_for_the_rest() {
    // Three clients present t0 at once; the database takes one, the others see it spent (and
    // the first of them revokes the family), possibly answering before the winner does.
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .at(1, 100, 180, rotate("t0"), pair("f1", "t1"))
        .at(2, 101, 150, rotate("t0"), reused())
        .at(3, 102, 160, rotate("t0"), reused())
        .at(1, 190, 195, rotate("t1"), token_revoked());
    let family = revoked_for(chain("f1", "alice", &["t0", "t1"]), Reuse);
    passes(&h, &state(vec![family]), &strict());
}

#[test]
fn an_issue_with_an_unknown_outcome_may_have_created_a_family_nobody_was_told_about() {
    let mut h = History::new();
    h.call(1, issue("alice"), outcome_unknown())
        .call(1, issue("alice"), pair("f1", "t0"))
        .call(2, issue("bob"), cut());
    // One of the two unknown Issues happened (alice's), one did not.
    let families = vec![chain("f1", "alice", &["t0"]), chain("f0", "alice", &["u0"])];
    passes(&h, &state(families), &strict());
}

#[test]
fn a_definite_failure_does_nothing() {
    let mut h = History::new();
    h.call(1, issue("alice"), unavailable())
        .call(1, issue("alice"), pair("f1", "t0"))
        .call(1, rotate("t0"), unavailable())
        .call(1, rotate("t0"), failed(Code::ResourceExhausted, Some("RATE_LIMITED")))
        .call(1, revoke_family("f1"), unavailable())
        .call(1, rotate("t0"), pair("f1", "t1"))
        .call(1, rotate("nonsense"), token_invalid());
    passes(&h, &state(vec![chain("f1", "alice", &["t0", "t1"])]), &strict());
}

#[test]
fn a_later_issue_over_the_sessions_cap_evicts_the_oldest_family() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "a0"))
        .call(1, issue("alice"), pair("f2", "b0"))
        .call(1, rotate("a0"), token_revoked());
    let families = vec![
        revoked_for(chain("f1", "alice", &["a0"]), Evicted),
        chain("f2", "alice", &["b0"]),
    ];
    passes(&h, &state(families), &strict());
}

#[test]
fn a_revoke_by_subject_answered_unavailable_may_have_revoked_some_families() {
    // Revoke by subject commits in batches: UNAVAILABLE after the first batch leaves it revoked.
    let mut h = History::new();
    h.call(1, issue("carol"), pair("f1", "a0"))
        .call(1, issue("carol"), pair("f2", "b0"))
        .call(2, revoke_subject("carol"), unavailable());
    let families = vec![
        revoked_for(chain("f1", "carol", &["a0"]), Revoke),
        chain("f2", "carol", &["b0"]),
    ];
    passes(&h, &state(families), &strict());
}

#[test]
fn a_replica_may_introspect_active_within_the_allowed_staleness() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .at(2, 100, 110, revoke_family("f1"), revoked(1))
        .at(3, 150, 160, introspect_access("f1"), active("f1"));
    let family = revoked_for(chain("f1", "alice", &["t0"]), Revoke);
    let options = Options {
        introspect_staleness: Duration::from_nanos(100),
        ..Options::default()
    };
    passes(&h, &state(vec![family]), &options);
}

#[test]
fn an_introspect_overlapping_the_revocation_may_say_either() {
    let mut h = History::new();
    h.call(1, issue("alice"), pair("f1", "t0"))
        .at(2, 100, 110, revoke_family("f1"), revoked(1))
        .at(3, 105, 120, introspect_access("f1"), active("f1"));
    let family = revoked_for(chain("f1", "alice", &["t0"]), Revoke);
    passes(&h, &state(vec![family]), &strict());
}

#[test]
fn a_family_created_by_an_unknown_issue_is_judged_on_its_own() {
    // Nobody knows its first token, so nothing may have spent it; its store shape still counts.
    let mut h = History::new();
    h.call(1, issue("alice"), outcome_unknown());
    let family = FamilyState {
        tokens: vec![TokenState {
            id: "u0".into(),
            parent: None,
            spent: false,
            successor: None,
        }],
        ..chain("f9", "alice", &[])
    };
    passes(&h, &state(vec![family]), &strict());
}
