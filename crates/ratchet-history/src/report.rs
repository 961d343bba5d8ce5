//! What the checker found: each violation with the operations and stored tokens that show it,
//! printable for a person reading a failed run.

use std::fmt;

use crate::history::{FamilyId, Op};
use crate::state::TokenState;

/// Violations printed in full by [`Report`]'s `Display`; the rest are counted.
const SHOWN_VIOLATIONS: usize = 20;
/// Operations printed per violation: the first ones in time order.
const SHOWN_OPS: usize = 12;
/// Stored tokens printed per violation.
const SHOWN_TOKENS: usize = 12;

/// The properties the checker decides; each [`Violation`] breaks one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The history or the state is not well formed (a duplicate op id, an answer that does not
    /// fit its call, a `failed` with a code that is not a definite failure, a token in two
    /// families...). Nothing else about the affected part can be trusted.
    Malformed,
    /// A refresh token accepted twice: two OK Rotates of it that are not one acceptance (without
    /// a grace window any second OK is; with one, a re-delivery must return the identical pair
    /// while the successor is unspent), or an OK Rotate of a token already seen spent.
    DoubleAcceptance,
    /// An acknowledged write is not in the final state, or a later answer showed it gone: an OK
    /// Issue's family or first token, an OK Rotate's spend and successor, an OK Revoke's
    /// revocation, a `TOKEN_REVOKED` or `TOKEN_REUSED` that the final state does not bear out, a
    /// `TOKEN_INVALID` for a token an OK call had handed out.
    LostAcknowledged,
    /// `TOKEN_REUSED` was answered but the family is not revoked in the final state, or is
    /// revoked for a reason that cannot have come first.
    ReuseNotRevoked,
    /// A refresh token is spent in the final state but no Rotate of it was OK or had an unknown
    /// outcome: only definite failures (or nothing) presented it.
    UnexplainedSpend,
    /// A family is revoked in the final state (or was seen revoked) and no call that was OK or
    /// had an unknown outcome can have done it, for its reason, in time.
    UnexplainedRevocation,
    /// A family in the final state that no Issue created: not returned by an OK Issue, and more
    /// such families for a subject and client than Issues with unknown outcomes for them.
    UnexplainedFamily,
    /// A family in the final state is not one chain: a token with two successors, two first
    /// tokens, two unspent tokens, a successor that does not name its parent, a cycle.
    StoreBranch,
    /// The history itself shows two different successors accepted for one refresh token.
    HistoryBranch,
    /// Answers that no order of the calls explains: a Rotate accepted after its family's
    /// revocation had completed, a token refused as revoked (so unspent) that is spent in the
    /// final state, a family seen revoked before any call could revoke it.
    Contradiction,
    /// Introspect said active for a token whose family's revocation (or whose own spend) had
    /// completed more than the allowed staleness before the Introspect was sent.
    StaleIntrospect,
}

impl Kind {
    /// A short name, for test assertions and log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed input",
            Self::DoubleAcceptance => "refresh token accepted twice",
            Self::LostAcknowledged => "acknowledged write lost",
            Self::ReuseNotRevoked => "reuse detected but family not revoked",
            Self::UnexplainedSpend => "spend without a call that may have made it",
            Self::UnexplainedRevocation => "revocation without a call that may have made it",
            Self::UnexplainedFamily => "family without an Issue that may have created it",
            Self::StoreBranch => "family branched in the store",
            Self::HistoryBranch => "family branched in the history",
            Self::Contradiction => "answers no order of the calls explains",
            Self::StaleIntrospect => "introspect active after revocation or spend",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One broken property, with the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub kind: Kind,
    /// The family it concerns, when there is one.
    pub family: Option<FamilyId>,
    /// What is wrong, in a sentence that names the tokens and calls involved.
    pub message: String,
    /// The operations involved, in invocation order.
    pub ops: Vec<Op>,
    /// The stored tokens involved.
    pub tokens: Vec<TokenState>,
}

/// Counts that say how much the run exercised, printed with the verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub ops: usize,
    pub families: usize,
    pub tokens: usize,
    /// Calls that were OK.
    pub ok: usize,
    /// Calls that failed definitely.
    pub failed: usize,
    /// Calls with an unknown outcome.
    pub unknown: usize,
    /// Rotates (and replays) with an unknown outcome.
    pub unknown_rotations: usize,
    /// Rotates with an unknown outcome that the final state shows spent their token (the only
    /// call that can have).
    pub unknown_rotations_happened: usize,
    /// Rotates with an unknown outcome that the final state shows did not spend their token.
    pub unknown_rotations_not_happened: usize,
}

/// The checker's verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// In order of their first operation's invocation; those with no operation (the store's
    /// shape) last.
    pub violations: Vec<Violation>,
    pub stats: Stats,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// The kinds found, each once, in [`Kind`] order.
    pub fn kinds(&self) -> Vec<Kind> {
        let mut kinds: Vec<Kind> = self.violations.iter().map(|v| v.kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        kinds
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        let verdict = if self.is_ok() {
            "history check passed".to_owned()
        } else {
            format!("history check FAILED: {} violation(s)", self.violations.len())
        };
        writeln!(
            f,
            "{verdict} ({} ops: {} ok, {} failed, {} unknown; {} families, {} tokens; unknown rotations: {} happened, {} did not, {} undecided)",
            s.ops,
            s.ok,
            s.failed,
            s.unknown,
            s.families,
            s.tokens,
            s.unknown_rotations_happened,
            s.unknown_rotations_not_happened,
            s.unknown_rotations
                .saturating_sub(s.unknown_rotations_happened + s.unknown_rotations_not_happened),
        )?;
        for (index, violation) in self.violations.iter().take(SHOWN_VIOLATIONS).enumerate() {
            write!(f, "{}. {violation}", index + 1)?;
        }
        if self.violations.len() > SHOWN_VIOLATIONS {
            writeln!(f, "... and {} more", self.violations.len() - SHOWN_VIOLATIONS)?;
        }
        Ok(())
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.family {
            Some(family) => writeln!(f, "{} (family {family}): {}", self.kind, self.message)?,
            None => writeln!(f, "{}: {}", self.kind, self.message)?,
        }
        if !self.ops.is_empty() {
            writeln!(f, "   operations, in invocation order:")?;
            for op in self.ops.iter().take(SHOWN_OPS) {
                writeln!(f, "     {}", op.to_line())?;
            }
            if self.ops.len() > SHOWN_OPS {
                writeln!(f, "     ... and {} more", self.ops.len() - SHOWN_OPS)?;
            }
        }
        if !self.tokens.is_empty() {
            writeln!(f, "   stored tokens:")?;
            for token in self.tokens.iter().take(SHOWN_TOKENS) {
                writeln!(f, "     {}", token.to_line())?;
            }
            if self.tokens.len() > SHOWN_TOKENS {
                writeln!(f, "     ... and {} more", self.tokens.len() - SHOWN_TOKENS)?;
            }
        }
        Ok(())
    }
}
