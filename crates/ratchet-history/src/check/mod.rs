//! The checker: reads nothing, prints nothing; [`check`] is a pure function of a history, a final
//! state and [`Options`].
//!
//! It runs in passes over one index ([`Ctx`]): the input's form, the store's shape
//! ([`store`]), each refresh token's rotations ([`tokens`]), each family's creation and
//! revocation, and Introspect ([`families`]). Each pass adds [`Violation`]s; none stops the
//! others, so one run reports everything it can.

mod families;
mod store;
mod tokens;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::history::{Answer, Call, Code, FamilyId, Op, Outcome, RevokeTarget, TokenId, TokenRef};
use crate::report::{Kind, Report, Stats, Violation};
use crate::state::{FamilyState, FinalState, TokenState};

/// How the server under test was configured, where that changes what is correct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// The server ran with a reuse grace window (`RATCHET_REUSE_GRACE` above zero): a Rotate of a
    /// token spent moments ago, whose successor is unspent, may answer OK with the *same* pair,
    /// and that is the same acceptance, not a second one. The checker does not hold it to the
    /// window's length (the server's clock is not the history's), only to "identical pair, and
    /// not after the successor was spent or the family revoked".
    pub grace_window: bool,
    /// How long after a revocation (or a spend) completed an Introspect may still say active.
    /// Zero (the default) for one server, where Introspect reads what Revoke wrote. With several
    /// replicas another replica's revocation arrives by LISTEN/NOTIFY "within milliseconds (a
    /// second at worst)" (README); while a replica's listener is reconnecting it trusts a cached
    /// "live" for up to `RATCHET_FAMILY_CACHE_TTL` (5 s) plus 2 s. Pick the bound the test's
    /// faults allow.
    pub introspect_staleness: Duration,
}

/// Checks `history` against the `state` the store was left in.
///
/// Decides, per family: each refresh token accepted at most once; every acknowledged write
/// durable; every detected reuse followed by the family's revocation; no effect from a call that
/// failed definitely; no branch, in the store or in the history; every unknown outcome resolved
/// one way or the other consistently with what came after; and (with its tolerance) no
/// Introspect saying active after a revocation completed. See [`Kind`] for each violation.
pub fn check(history: &[Op], state: &FinalState, options: &Options) -> Report {
    let mut ctx = Ctx::new(history, state, options);
    ctx.validate();
    ctx.index();
    ctx.collect_revocation_evidence();
    ctx.check_store_shape();
    ctx.check_issues();
    ctx.check_tokens();
    ctx.check_revocations();
    ctx.check_introspection();
    ctx.into_report()
}

/// What an outcome tells about the call's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Ok,
    /// May or may not have taken effect, at any time after invocation.
    Unknown,
    /// A definite failure that did nothing.
    Refused,
    /// UNAUTHENTICATED/TOKEN_INVALID: the store did not know the token.
    TokenInvalid,
    /// UNAUTHENTICATED/TOKEN_REVOKED: the token was unspent and its family revoked.
    TokenRevoked,
    /// UNAUTHENTICATED/TOKEN_REUSED: the token was spent, and its family is revoked by now.
    TokenReused,
    /// UNAVAILABLE to a Revoke by subject: batches commit one by one, so any of the subject's
    /// families may have been revoked.
    Partial,
}

impl Class {
    /// Whether the call may have changed the store.
    fn may_have_acted(self) -> bool {
        matches!(self, Self::Ok | Self::Unknown | Self::Partial)
    }

    /// Whether the outcome is definite, so that its completion time bounds when it took effect.
    fn definite(self) -> bool {
        !matches!(self, Self::Unknown | Self::Partial)
    }
}

/// What definite answers said about a family's revocation: each says it was revoked by the
/// time the answer completed.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// The one that completed first.
    first: Option<usize>,
    /// TOKEN_REUSED answers for its tokens.
    reused: Vec<usize>,
    /// TOKEN_REVOKED answers, and OK Revokes by id or token of the family once it existed. (OK
    /// Revokes by subject count only towards `first`: there may be thousands per family.)
    others: Vec<usize>,
}

/// The index every pass reads, and the violations they write.
struct Ctx<'a> {
    options: &'a Options,
    /// By invocation time; an op's index here is its position in time.
    ops: Vec<&'a Op>,
    class: Vec<Class>,
    families: BTreeMap<&'a FamilyId, &'a FamilyState>,
    stored: HashMap<&'a TokenId, (&'a FamilyState, &'a TokenState)>,
    /// Each token's family: the store's, else what OK answers said.
    family_of: HashMap<&'a TokenId, &'a FamilyId>,
    /// OK Issues and Rotates whose answer handed out the token.
    producers: HashMap<&'a TokenId, Vec<usize>>,
    /// Rotates and replays presenting the token.
    presented: BTreeMap<&'a TokenId, Vec<usize>>,
    /// OK Issues answering the family.
    issued: HashMap<&'a FamilyId, Vec<usize>>,
    /// Rotates and replays of the family's tokens.
    rotations_of: HashMap<&'a FamilyId, Vec<usize>>,
    /// Revokes naming the family by id or by one of its tokens.
    revokes_of: HashMap<&'a FamilyId, Vec<usize>>,
    /// Revokes by subject.
    revokes_by_subject: HashMap<&'a str, Vec<usize>>,
    /// Issues by subject and client.
    issues_by_key: HashMap<(&'a str, &'a str), Vec<usize>>,
    /// Families by subject: the store's, and acknowledged ones missing from it.
    families_of_subject: HashMap<&'a str, Vec<&'a FamilyId>>,
    /// What definite answers said about each family's revocation (see [`families`]).
    evidence: HashMap<&'a FamilyId, Seen>,
    /// The call chosen to have spent each spent token (see [`tokens`]).
    spender: HashMap<&'a TokenId, usize>,
    /// Tokens whose answers are broken beyond judging (a history branch): later passes skip them.
    broken: HashSet<&'a TokenId>,
    violations: Vec<(usize, Violation)>,
    stats: Stats,
}

impl<'a> Ctx<'a> {
    fn new(history: &'a [Op], state: &'a FinalState, options: &'a Options) -> Self {
        let mut ops: Vec<&Op> = history.iter().collect();
        ops.sort_by_key(|op| (op.invoked_ns, op.completed_ns, op.process, op.op));
        let class = ops.iter().map(|op| classify(op)).collect();
        Self {
            options,
            ops,
            class,
            families: BTreeMap::new(),
            stored: HashMap::new(),
            family_of: HashMap::new(),
            producers: HashMap::new(),
            presented: BTreeMap::new(),
            issued: HashMap::new(),
            rotations_of: HashMap::new(),
            revokes_of: HashMap::new(),
            revokes_by_subject: HashMap::new(),
            issues_by_key: HashMap::new(),
            families_of_subject: HashMap::new(),
            evidence: HashMap::new(),
            spender: HashMap::new(),
            broken: HashSet::new(),
            violations: Vec::new(),
            stats: Stats {
                ops: history.len(),
                families: state.families.len(),
                tokens: state.families.iter().map(|f| f.tokens.len()).sum(),
                ..Stats::default()
            },
        }
        .with_state(state)
    }

    fn with_state(mut self, state: &'a FinalState) -> Self {
        let mut duplicates = Vec::new();
        for family in &state.families {
            if self.families.insert(&family.id, family).is_some() {
                duplicates.push(format!("family {} appears twice", family.id));
            }
            for token in &family.tokens {
                if self.stored.insert(&token.id, (family, token)).is_some() {
                    duplicates.push(format!("token {} appears twice", token.id));
                }
                self.family_of.insert(&token.id, &family.id);
            }
        }
        for problem in duplicates {
            self.report(
                Kind::Malformed,
                None,
                format!("final state: {problem}"),
                &[],
                Vec::new(),
            );
        }
        self
    }

    /// Checks the history's form; an op whose outcome cannot be read is taken as unknown, which
    /// asserts nothing.
    fn validate(&mut self) {
        let mut seen = HashSet::new();
        for index in 0..self.ops.len() {
            let op = self.ops[index];
            let mut problems = Vec::new();
            if !seen.insert((op.process, op.op)) {
                problems.push(format!("op id {}/{} used twice", op.process, op.op));
            }
            if op.completed_ns < op.invoked_ns {
                problems.push("completed before it was invoked".to_owned());
            }
            match &op.outcome {
                Outcome::Ok(answer) if !fits(&op.call, answer) => {
                    problems.push("the OK answer does not fit the call".to_owned());
                    self.class[index] = Class::Unknown;
                }
                Outcome::Failed(failure) if !definite_code(failure.code) => {
                    problems.push(format!(
                        "{} is not a definite failure: record it as unknown",
                        failure.code.as_str()
                    ));
                    self.class[index] = Class::Unknown;
                }
                _ => {}
            }
            for problem in problems {
                self.report(
                    Kind::Malformed,
                    None,
                    format!("history: {problem}"),
                    &[index],
                    Vec::new(),
                );
            }
        }
        for class in &self.class {
            match class {
                Class::Ok => self.stats.ok += 1,
                Class::Unknown => self.stats.unknown += 1,
                _ => self.stats.failed += 1,
            }
        }
    }

    /// Which op handed out which token, which op presented it, and each token's family. An OK
    /// answer that puts a token in another family than the store does is a contradiction.
    fn index(&mut self) {
        let mut conflicts = Vec::new();
        for index in 0..self.ops.len() {
            let op = self.ops[index];
            if let Some(token) = op.presented() {
                self.presented.entry(token).or_default().push(index);
            }
            let (Class::Ok, Outcome::Ok(Answer::Pair { family, token })) = (self.class[index], &op.outcome) else {
                continue;
            };
            self.producers.entry(token).or_default().push(index);
            if matches!(op.call, Call::Issue { .. }) {
                self.issued.entry(family).or_default().push(index);
            }
            let named = [Some(token), op.presented()];
            for token in named.into_iter().flatten() {
                match self.family_of.get(token) {
                    Some(known) if *known != family => conflicts.push((index, token, *known, family)),
                    Some(_) => {}
                    None => {
                        self.family_of.insert(token, family);
                    }
                }
            }
        }
        // Now that every token's family is known: the ops concerning each family.
        for index in 0..self.ops.len() {
            match &self.ops[index].call {
                Call::Rotate { token } | Call::Replay { token } => {
                    if let Some(family) = self.family_of.get(token) {
                        self.rotations_of.entry(family).or_default().push(index);
                    }
                }
                Call::Revoke(RevokeTarget::Subject(subject)) => {
                    self.revokes_by_subject.entry(subject).or_default().push(index);
                }
                Call::Revoke(
                    RevokeTarget::Family(family) | RevokeTarget::Token(TokenRef::AccessToken { family, .. }),
                ) => self.revokes_of.entry(family).or_default().push(index),
                Call::Revoke(RevokeTarget::Token(TokenRef::RefreshToken(token))) => {
                    if let Some(family) = self.family_of.get(token) {
                        self.revokes_of.entry(family).or_default().push(index);
                    }
                }
                Call::Issue { subject, client_id } => {
                    self.issues_by_key.entry((subject, client_id)).or_default().push(index);
                }
                Call::Introspect(_) => {}
            }
        }
        for family in self.families.values() {
            self.families_of_subject
                .entry(&family.subject)
                .or_default()
                .push(&family.id);
        }
        for (family, issues) in &self.issued {
            if self.families.contains_key(family) {
                continue;
            }
            if let Some(Call::Issue { subject, .. }) = issues.first().map(|&i| &self.ops[i].call) {
                self.families_of_subject.entry(subject).or_default().push(family);
            }
        }
        for (index, token, known, answered) in conflicts {
            let tokens = self.stored_tokens(&[token]);
            self.report(
                Kind::Contradiction,
                Some(known),
                format!("an OK answer puts token {token} in family {answered}, but it belongs to family {known}"),
                &[index],
                tokens,
            );
        }
    }

    fn into_report(mut self) -> Report {
        self.violations.sort_by_key(|(first, _)| *first);
        Report {
            violations: self.violations.into_iter().map(|(_, v)| v).collect(),
            stats: self.stats,
        }
    }

    /// Records a violation with the given ops (indices into `self.ops`), printed in time order.
    fn report(
        &mut self,
        kind: Kind,
        family: Option<&FamilyId>,
        message: String,
        ops: &[usize],
        tokens: Vec<TokenState>,
    ) {
        let mut ops = ops.to_vec();
        ops.sort_unstable();
        ops.dedup();
        let first = ops.first().copied().unwrap_or(usize::MAX);
        let violation = Violation {
            kind,
            family: family.cloned(),
            message,
            ops: ops.iter().map(|&i| self.ops[i].clone()).collect(),
            tokens,
        };
        self.violations.push((first, violation));
    }

    /// The stored state of these tokens, those that are stored.
    fn stored_tokens(&self, ids: &[&TokenId]) -> Vec<TokenState> {
        ids.iter()
            .filter_map(|id| self.stored.get(id).map(|(_, token)| (*token).clone()))
            .collect()
    }

    fn op(&self, index: usize) -> &'a Op {
        self.ops[index]
    }

    /// Whether op `a` certainly took effect (if at all) before op `b` was sent: `a` had a
    /// definite outcome and completed before `b` was invoked.
    fn before(&self, a: usize, b: usize) -> bool {
        self.class[a].definite() && self.ops[a].completed_ns < self.ops[b].invoked_ns
    }

    /// The answer's family and new token, for an OK Issue, Rotate or Replay.
    fn pair(&self, index: usize) -> Option<(&'a FamilyId, &'a TokenId)> {
        match (&self.ops[index].outcome, self.class[index]) {
            (Outcome::Ok(Answer::Pair { family, token }), Class::Ok) => Some((family, token)),
            _ => None,
        }
    }

    /// When the token was first handed out by an OK answer.
    fn handed_out_at(&self, token: &TokenId) -> Option<u64> {
        self.producers
            .get(token)?
            .iter()
            .map(|&i| self.ops[i].completed_ns)
            .min()
    }

    /// When the family's creation was first acknowledged.
    fn created_at(&self, family: &FamilyId) -> Option<u64> {
        self.issued.get(family)?.iter().map(|&i| self.ops[i].completed_ns).min()
    }
}

fn classify(op: &Op) -> Class {
    match &op.outcome {
        Outcome::Ok(_) => Class::Ok,
        Outcome::Unknown(_) => Class::Unknown,
        Outcome::Failed(failure) => match (failure.code, failure.reason.as_deref(), &op.call) {
            (Code::Unavailable, _, Call::Revoke(RevokeTarget::Subject(_))) => Class::Partial,
            (Code::Unauthenticated, Some("TOKEN_INVALID"), Call::Rotate { .. } | Call::Replay { .. }) => {
                Class::TokenInvalid
            }
            (Code::Unauthenticated, Some("TOKEN_REVOKED"), Call::Rotate { .. } | Call::Replay { .. }) => {
                Class::TokenRevoked
            }
            (Code::Unauthenticated, Some("TOKEN_REUSED"), Call::Rotate { .. } | Call::Replay { .. }) => {
                Class::TokenReused
            }
            _ => Class::Refused,
        },
    }
}

/// The codes ratchet sends only when it knows what happened (see [`crate::history::Failure`]).
fn definite_code(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::ResourceExhausted
            | Code::Unavailable
            | Code::Unauthenticated
    )
}

fn fits(call: &Call, answer: &Answer) -> bool {
    matches!(
        (call, answer),
        (
            Call::Issue { .. } | Call::Rotate { .. } | Call::Replay { .. },
            Answer::Pair { .. }
        ) | (Call::Revoke(_), Answer::Revoked(_))
            | (Call::Introspect(_), Answer::Introspected { .. })
    )
}

/// "token abc… (unspent)" and the like, for messages.
fn describe(token: Option<&TokenState>) -> String {
    match token {
        None => "not in the store".to_owned(),
        Some(TokenState {
            spent: true,
            successor: Some(successor),
            ..
        }) => format!("spent into {successor}"),
        Some(TokenState { spent: true, .. }) => "spent, with no successor".to_owned(),
        Some(_) => "unspent".to_owned(),
    }
}
