//! Hand-made histories and states: short readable ids (`f1`, `t0`), calls that follow each other
//! unless a test places them in time itself.

use ratchet_history::history::{
    Answer, Call, Code, Failure, FamilyId, Op, Outcome, RevokeTarget, TokenId, TokenRef, Unknown, UnknownCause,
};
use ratchet_history::state::{FamilyState, FinalState, RevokeReason, TokenState};
use ratchet_history::{Kind, Options, Report, check};

/// A history under construction. Calls made with [`History::call`] follow each other: each takes
/// 5 ns and starts 10 ns after the previous one started.
#[derive(Default)]
pub struct History {
    pub ops: Vec<Op>,
    clock: u64,
    next: std::collections::HashMap<u64, u64>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next call, after the previous one completed.
    pub fn call(&mut self, process: u64, call: Call, outcome: Outcome) -> &mut Self {
        let at = self.clock;
        self.at(process, at, at + 5, call, outcome)
    }

    /// A call placed in time by the test (for overlapping calls).
    pub fn at(&mut self, process: u64, invoked: u64, completed: u64, call: Call, outcome: Outcome) -> &mut Self {
        let op = self.next.entry(process).or_default();
        self.ops.push(Op {
            process,
            op: *op,
            invoked_ns: invoked,
            completed_ns: completed,
            call,
            outcome,
        });
        *op += 1;
        self.clock = self.clock.max(completed) + 5;
        self
    }
}

// Calls.
pub fn issue(subject: &str) -> Call {
    Call::Issue {
        subject: subject.into(),
        client_id: "web".into(),
    }
}
pub fn rotate(token: &str) -> Call {
    Call::Rotate { token: token.into() }
}
pub fn replay(token: &str) -> Call {
    Call::Replay { token: token.into() }
}
pub fn revoke_family(family: &str) -> Call {
    Call::Revoke(RevokeTarget::Family(family.into()))
}
pub fn revoke_subject(subject: &str) -> Call {
    Call::Revoke(RevokeTarget::Subject(subject.into()))
}
pub fn revoke_token(token: &str) -> Call {
    Call::Revoke(RevokeTarget::Token(TokenRef::RefreshToken(token.into())))
}
pub fn introspect(token: &str) -> Call {
    Call::Introspect(TokenRef::RefreshToken(token.into()))
}
pub fn introspect_access(family: &str) -> Call {
    Call::Introspect(TokenRef::AccessToken {
        family: family.into(),
        jti: "j".into(),
    })
}

// Outcomes.
pub fn pair(family: &str, token: &str) -> Outcome {
    Outcome::Ok(Answer::Pair {
        family: family.into(),
        token: token.into(),
    })
}
pub fn revoked(count: u32) -> Outcome {
    Outcome::Ok(Answer::Revoked(count))
}
pub fn active(family: &str) -> Outcome {
    Outcome::Ok(Answer::Introspected {
        active: true,
        family: Some(family.into()),
    })
}
pub fn inactive() -> Outcome {
    Outcome::Ok(Answer::Introspected {
        active: false,
        family: None,
    })
}
pub fn failed(code: Code, reason: Option<&str>) -> Outcome {
    Outcome::Failed(Failure {
        code,
        reason: reason.map(str::to_owned),
        message: None,
    })
}
pub fn reused() -> Outcome {
    failed(Code::Unauthenticated, Some("TOKEN_REUSED"))
}
pub fn token_revoked() -> Outcome {
    failed(Code::Unauthenticated, Some("TOKEN_REVOKED"))
}
pub fn token_invalid() -> Outcome {
    failed(Code::Unauthenticated, Some("TOKEN_INVALID"))
}
pub fn unavailable() -> Outcome {
    failed(Code::Unavailable, None)
}
pub fn outcome_unknown() -> Outcome {
    Outcome::Unknown(Unknown {
        cause: UnknownCause::OutcomeUnknown,
        code: Some(Code::DeadlineExceeded),
        message: None,
    })
}
pub fn cut() -> Outcome {
    Outcome::Unknown(Unknown {
        cause: UnknownCause::Transport,
        code: None,
        message: Some("connection reset".into()),
    })
}

// States.

/// A family whose tokens form the chain `tokens` (the last unspent), live.
pub fn chain(id: &str, subject: &str, tokens: &[&str]) -> FamilyState {
    let tokens = tokens
        .iter()
        .enumerate()
        .map(|(i, token)| TokenState {
            id: TokenId::from(*token),
            parent: i.checked_sub(1).map(|p| TokenId::from(tokens[p])),
            spent: i + 1 < tokens.len(),
            successor: tokens.get(i + 1).map(|s| TokenId::from(*s)),
        })
        .collect();
    FamilyState {
        id: FamilyId::from(id),
        subject: subject.into(),
        client_id: "web".into(),
        revoked: None,
        tokens,
    }
}

pub fn revoked_for(mut family: FamilyState, reason: RevokeReason) -> FamilyState {
    family.revoked = Some(reason);
    family
}

pub fn state(families: Vec<FamilyState>) -> FinalState {
    FinalState { families }
}

/// Checks and asserts the history passes, printing the report if not.
pub fn passes(history: &History, state: &FinalState, options: &Options) -> Report {
    let report = check(&history.ops, state, options);
    assert!(report.is_ok(), "expected a pass, got:\n{report}");
    report
}

/// Checks and asserts that exactly `kind` is found (possibly several times), and that the report
/// names it.
pub fn fails_with(history: &History, state: &FinalState, options: &Options, kind: Kind) -> Report {
    let report = check(&history.ops, state, options);
    assert_eq!(report.kinds(), vec![kind], "expected only {kind:?}, got:\n{report}");
    let printed = report.to_string();
    assert!(
        printed.contains(kind.as_str()),
        "the report does not name {kind:?}:\n{printed}"
    );
    report
}

pub fn strict() -> Options {
    Options::default()
}

pub fn grace() -> Options {
    Options {
        grace_window: true,
        ..Options::default()
    }
}
