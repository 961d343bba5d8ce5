//! Each refresh token's rotations: accepted at most once, acknowledged ⇒ durable, spent only by a
//! call that may have spent it.
//!
//! The store spends a token at most once, by one call (the *spender*), into one successor; every
//! later Rotate of it is a grace-window retry (OK, the identical pair) or reuse (TOKEN_REUSED,
//! the family revoked). The final state says whether the token was spent and into what; the
//! checker then looks for a spender among the calls that may have acted (OK or unknown outcome)
//! such that the other answers fit around it:
//!
//! - without a grace window an OK Rotate *is* the spend, so it is the spender; with one, any OK
//!   may be a retry, and the spender is taken to be the earliest call that may have acted (the
//!   choice that constrains the others least: everything after it may be a retry or reuse);
//! - every TOKEN_REUSED must come after the spender was sent (it saw the token spent);
//! - no TOKEN_REVOKED for a token the final state has spent (the answer says "unspent, family
//!   revoked", a revoked family's token is never spent afterwards, and a spent token in a revoked
//!   family is answered TOKEN_REUSED);
//! - a grace retry never comes after the successor was spent.
//!
//! This is how an unknown outcome is resolved: the final state says whether the token was spent
//! and into which successor, and the answers that came after must fit the world that implies. An
//! unknown Rotate followed by an OK one (no grace) did not happen as a spend, or the OK's
//! successor would not be the stored one; an unknown Rotate followed by TOKEN_REUSED did.

use super::{Class, Ctx, describe};
use crate::history::TokenId;
use crate::report::Kind;

impl<'a> Ctx<'a> {
    pub(super) fn check_tokens(&mut self) {
        let presented: Vec<(&'a TokenId, Vec<usize>)> = self
            .presented
            .iter()
            .map(|(token, ops)| (*token, ops.clone()))
            .collect();
        for (token, ops) in &presented {
            self.check_token(token, ops);
        }
        // Spent tokens no call presented at all.
        let mut unpresented: Vec<&'a TokenId> = self
            .stored
            .iter()
            .filter(|(id, (_, token))| token.spent && !self.presented.contains_key(*id))
            .map(|(id, _)| *id)
            .collect();
        unpresented.sort();
        for token in unpresented {
            let family = self.family_of.get(token).copied();
            let tokens = self.stored_tokens(&[token]);
            self.report(
                Kind::UnexplainedSpend,
                family,
                format!("{token} is spent in the final state, but no Rotate presented it"),
                &[],
                tokens,
            );
        }
    }

    fn check_token(&mut self, token: &'a TokenId, ops: &[usize]) {
        let family = self.family_of.get(token).copied();
        let oks: Vec<usize> = ops.iter().copied().filter(|&i| self.class[i] == Class::Ok).collect();
        let mut successors: Vec<&'a TokenId> = oks.iter().filter_map(|&i| self.pair(i).map(|(_, t)| t)).collect();
        successors.sort();
        successors.dedup();

        if successors.len() > 1 {
            let list: Vec<String> = successors.iter().map(ToString::to_string).collect();
            let tokens = self.stored_tokens(&[token]);
            self.report(
                Kind::HistoryBranch,
                family,
                format!(
                    "{token} was accepted into {} different successors: {}",
                    list.len(),
                    list.join(", ")
                ),
                &oks,
                tokens,
            );
            self.broken.insert(token);
            return;
        }
        let mut double = false;
        if !self.options.grace_window && oks.len() > 1 {
            let tokens = self.stored_tokens(&[token]);
            self.report(
                Kind::DoubleAcceptance,
                family,
                format!(
                    "{token} was accepted {} times, and the server has no grace window that would make a second answer a retry",
                    oks.len()
                ),
                &oks,
                tokens,
            );
            double = true;
        }

        self.check_invalid(token, ops);
        let acknowledged = successors.first().copied();
        if let Some(successor) = acknowledged {
            self.check_durable(token, successor, &oks);
        }

        let Some(&(_, stored)) = self.stored.get(token) else {
            return;
        };
        let reused: Vec<usize> = ops
            .iter()
            .copied()
            .filter(|&i| self.class[i] == Class::TokenReused)
            .collect();
        let unknowns = ops.iter().filter(|&&i| self.class[i] == Class::Unknown).count();
        if !stored.spent {
            self.stats.unknown_rotations_not_happened += unknowns;
            self.stats.unknown_rotations += unknowns;
            if !reused.is_empty() {
                self.report(
                    Kind::LostAcknowledged,
                    family,
                    format!("TOKEN_REUSED said {token} was spent, but the final state has it unspent"),
                    &reused,
                    vec![stored.clone()],
                );
            }
            return;
        }
        self.stats.unknown_rotations += unknowns;
        let Some(stored_successor) = &stored.successor else {
            return; // the store's shape is broken; reported there
        };

        // Who spent it.
        let candidates: Vec<usize> = ops
            .iter()
            .copied()
            .filter(|&i| self.class[i].may_have_acted())
            .collect();
        if candidates.is_empty() {
            let refusals: Vec<String> = ops.iter().map(|&i| self.answer(i)).collect();
            self.report(
                Kind::UnexplainedSpend,
                family,
                format!(
                    "{token} is {}, but every Rotate of it failed definitely ({})",
                    describe(Some(stored)),
                    refusals.join(", ")
                ),
                ops,
                vec![stored.clone()],
            );
            return;
        }
        if acknowledged.is_some_and(|s| s != stored_successor) {
            return; // a lost acknowledged rotation, reported by check_durable
        }
        let spender = if !self.options.grace_window && !oks.is_empty() {
            oks[0]
        } else {
            candidates[0]
        };
        self.spender.insert(token, spender);
        if !self.options.grace_window && !oks.is_empty() {
            self.stats.unknown_rotations_not_happened += unknowns;
        } else if oks.is_empty() && unknowns == 1 {
            self.stats.unknown_rotations_happened += 1;
        }

        // TOKEN_REUSED saw it spent: the spender must have been sent by then.
        let early: Vec<usize> = reused.iter().copied().filter(|&r| self.before(r, spender)).collect();
        if !early.is_empty() {
            let mut involved = early.clone();
            involved.push(spender);
            if self.class[spender] == Class::Ok {
                if !double {
                    self.report(
                        Kind::DoubleAcceptance,
                        family,
                        format!("{token} was answered TOKEN_REUSED (already spent) before the OK Rotate that spent it was sent"),
                        &involved,
                        vec![stored.clone()],
                    );
                }
            } else {
                self.report(
                    Kind::UnexplainedSpend,
                    family,
                    format!("{token} was answered TOKEN_REUSED (already spent) before any Rotate that could spend it was sent"),
                    &involved,
                    vec![stored.clone()],
                );
            }
        }

        // TOKEN_REVOKED says "unspent, family revoked"; a revoked family's token is never spent.
        let revoked: Vec<usize> = ops
            .iter()
            .copied()
            .filter(|&i| self.class[i] == Class::TokenRevoked)
            .collect();
        if !revoked.is_empty() {
            let mut involved = revoked.clone();
            involved.push(spender);
            self.report(
                Kind::Contradiction,
                family,
                format!(
                    "{token} was refused as revoked (unspent, in a revoked family) yet is {} in the final state: a revoked family's token cannot be spent, and a spent one is answered TOKEN_REUSED",
                    describe(Some(stored))
                ),
                &involved,
                vec![stored.clone()],
            );
        }

        // A grace retry hands out the successor again: never once the successor itself was spent.
        if self.options.grace_window {
            self.check_late_retries(token, stored_successor, &oks, spender);
        }
    }

    /// An OK Rotate's spend and successor are in the final state.
    fn check_durable(&mut self, token: &'a TokenId, successor: &'a TokenId, oks: &[usize]) {
        let family = self.family_of.get(token).copied();
        let here = self.stored.get(token).map(|(_, t)| *t);
        let next = self.stored.get(successor).map(|(_, t)| *t);
        let problem = match (here, next) {
            (None, _) => Some(format!("{token} is not in the store")),
            (Some(here), _) if here.successor.as_ref() != Some(successor) => {
                Some(format!("{token} is {} in the final state", describe(Some(here))))
            }
            (_, None) => Some(format!("the successor {successor} is not in the store")),
            (_, Some(next)) if next.parent.as_ref() != Some(token) => Some(format!(
                "the successor {successor} names {} as its parent",
                next.parent.as_ref().map_or("none".to_owned(), ToString::to_string)
            )),
            _ => None,
        };
        if let Some(problem) = problem {
            let tokens = self.stored_tokens(&[token, successor]);
            self.report(
                Kind::LostAcknowledged,
                family,
                format!("Rotate of {token} returned {successor}, but {problem}"),
                oks,
                tokens,
            );
        }
    }

    /// TOKEN_INVALID ("no such token") for a token an OK call had already handed out: the store
    /// lost it, for a while at least.
    fn check_invalid(&mut self, token: &'a TokenId, ops: &[usize]) {
        let Some(handed_out) = self.handed_out_at(token) else {
            return; // a token the client made up: TOKEN_INVALID is right
        };
        let invalid: Vec<usize> = ops
            .iter()
            .copied()
            .filter(|&i| self.class[i] == Class::TokenInvalid && handed_out < self.op(i).invoked_ns)
            .collect();
        if invalid.is_empty() {
            return;
        }
        let mut involved = invalid;
        involved.extend(self.producers.get(token).into_iter().flatten().copied());
        let family = self.family_of.get(token).copied();
        let tokens = self.stored_tokens(&[token]);
        self.report(
            Kind::LostAcknowledged,
            family,
            format!("{token} was handed out by an OK call, then refused as unknown (TOKEN_INVALID)"),
            &involved,
            tokens,
        );
    }

    /// With a grace window, OK answers other than the spender are retries; a retry after the
    /// successor was spent would hand out a spent token (the family moved on): accepted twice.
    fn check_late_retries(&mut self, token: &'a TokenId, successor: &'a TokenId, oks: &[usize], spender: usize) {
        let Some(next_ops) = self.presented.get(successor) else {
            return;
        };
        let next_spent: Vec<usize> = next_ops
            .iter()
            .copied()
            .filter(|&i| self.class[i] == Class::Ok)
            .collect();
        let late: Vec<usize> = oks
            .iter()
            .copied()
            .filter(|&r| r != spender && next_spent.iter().any(|&n| self.before(n, r)))
            .collect();
        if late.is_empty() {
            return;
        }
        let mut involved = late;
        involved.extend(next_spent);
        let family = self.family_of.get(token).copied();
        let tokens = self.stored_tokens(&[token, successor]);
        self.report(
            Kind::DoubleAcceptance,
            family,
            format!(
                "{token} was accepted again (as a grace-window retry) after its successor {successor} had been spent"
            ),
            &involved,
            tokens,
        );
    }

    /// "OK", "UNAVAILABLE", "UNAUTHENTICATED/TOKEN_REUSED", "unknown (transport)": for messages.
    pub(super) fn answer(&self, index: usize) -> String {
        use crate::history::Outcome;
        match &self.op(index).outcome {
            Outcome::Ok(_) => "OK".to_owned(),
            Outcome::Failed(failure) => match &failure.reason {
                Some(reason) => format!("{}/{reason}", failure.code.as_str()),
                None => failure.code.as_str().to_owned(),
            },
            Outcome::Unknown(unknown) => format!("unknown ({:?})", unknown.cause),
        }
    }
}
