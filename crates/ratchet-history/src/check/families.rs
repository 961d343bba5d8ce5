//! Each family's creation and revocation, and what Introspect said about it.
//!
//! Creation: an OK Issue's family is stored with the token it returned as first token; a stored
//! family no OK Issue returned must be one an Issue with an unknown outcome created (same subject
//! and client, at most one family per such Issue).
//!
//! Revocation: what revokes a family, by the reason the store records —
//! `revoke`: a Revoke naming it (by id, by one of its tokens, or by its subject) that was OK, had
//! an unknown outcome, or (by subject) answered UNAVAILABLE after some batches committed;
//! `reuse`: a Rotate of one of its spent tokens answered TOKEN_REUSED, or with an unknown outcome
//! and not the call that spent the token; `evicted`: another Issue for the same subject and client
//! that was OK or unknown and not certainly over before this family was created. Definite answers
//! also say *by when* a family was revoked (an OK Revoke of a family that existed, TOKEN_REUSED,
//! TOKEN_REVOKED): the revocation must then be in the final state, an explanation for its reason
//! must have been sent by then, no Rotate sent afterwards may be OK, and no Introspect sent more
//! than [`super::Options::introspect_staleness`] afterwards may say active.

use std::collections::{BTreeMap, HashMap};

use super::{Class, Ctx, Seen};
use crate::history::{Answer, Call, FamilyId, Outcome, RevokeTarget, TokenId, TokenRef};
use crate::report::Kind;
use crate::state::{FamilyState, RevokeReason};

impl<'a> Ctx<'a> {
    /// OK Issues are durable; every stored family was created by some Issue.
    pub(super) fn check_issues(&mut self) {
        let mut issued: Vec<(&'a FamilyId, Vec<usize>)> =
            self.issued.iter().map(|(family, ops)| (*family, ops.clone())).collect();
        issued.sort();
        for (family, ops) in issued {
            if ops.len() > 1 {
                self.report(
                    Kind::Contradiction,
                    Some(family),
                    format!("{} OK Issues returned the same family", ops.len()),
                    &ops,
                    Vec::new(),
                );
            }
            for &index in &ops {
                let Some((_, first)) = self.pair(index) else { continue };
                let problem = match self.families.get(family) {
                    None => Some("the family is not in the store".to_owned()),
                    Some(stored) => match stored.tokens.iter().find(|t| &t.id == first) {
                        None => Some(format!("its first token {first} is not in the family")),
                        Some(token) if token.parent.is_some() => {
                            Some(format!("{first} is not the family's first token"))
                        }
                        Some(_) => None,
                    },
                };
                if let Some(problem) = problem {
                    let tokens = self.families.get(family).map(|f| f.tokens.clone()).unwrap_or_default();
                    self.report(
                        Kind::LostAcknowledged,
                        Some(family),
                        format!("Issue returned family {family} with {first}, but {problem}"),
                        &[index],
                        tokens,
                    );
                }
            }
        }

        // Stored families no OK Issue returned, against Issues with unknown outcomes, per subject
        // and client.
        let mut orphans: BTreeMap<(&'a str, &'a str), Vec<&'a FamilyState>> = BTreeMap::new();
        for (id, family) in &self.families {
            if !self.issued.contains_key(id) {
                orphans
                    .entry((family.subject.as_str(), family.client_id.as_str()))
                    .or_default()
                    .push(family);
            }
        }
        for ((subject, client_id), families) in orphans {
            let issues: Vec<usize> = self
                .issues_by_key
                .get(&(subject, client_id))
                .into_iter()
                .flatten()
                .copied()
                .filter(|&i| self.class[i] != Class::Ok)
                .collect();
            let unknown = issues.iter().filter(|&&i| self.class[i] == Class::Unknown).count();
            if families.len() <= unknown {
                continue;
            }
            for family in families {
                self.report(
                    Kind::UnexplainedFamily,
                    Some(&family.id),
                    format!(
                        "no OK Issue returned this family (subject {subject:?}, client {client_id:?}), and the store has more such families than there were Issues for them with an unknown outcome ({unknown})"
                    ),
                    &issues,
                    family.tokens.clone(),
                );
            }
        }
    }

    pub(super) fn check_revocations(&mut self) {
        let mut families: Vec<&'a FamilyId> = self.families.keys().copied().collect();
        families.extend(self.evidence.keys().copied());
        families.sort();
        families.dedup();
        let evicters = self.evicters();
        for family in families {
            let seen = self.evidence.get(family).cloned().unwrap_or_default();
            self.check_revocation(family, &seen, &evicters);
        }
    }

    fn check_revocation(&mut self, family: &'a FamilyId, seen: &Seen, evicters: &Evicters<'a>) {
        if let Some(first) = seen.first {
            self.check_rotations_after(family, first);
        }
        let Some(stored) = self.families.get(family).copied() else {
            return; // a missing family is reported with its Issue
        };
        let Some(reason) = stored.revoked else {
            if !seen.reused.is_empty() {
                self.report(
                    Kind::ReuseNotRevoked,
                    Some(family),
                    "a Rotate was answered TOKEN_REUSED, but the family is live in the final state".to_owned(),
                    &seen.reused,
                    Vec::new(),
                );
            } else if let Some(first) = seen.first {
                let mut involved = seen.others.clone();
                involved.push(first);
                self.report(
                    Kind::LostAcknowledged,
                    Some(family),
                    "answers said the family was revoked (an OK Revoke, or TOKEN_REVOKED), but it is live in the final state"
                        .to_owned(),
                    &involved,
                    Vec::new(),
                );
            }
            return;
        };

        let Some(earliest) = self.earliest_revoker(stored, reason, evicters) else {
            let tried = self.attempted_revokers(stored, reason);
            self.report(
                Kind::UnexplainedRevocation,
                Some(family),
                format!(
                    "the family is revoked for {} but no call that may have acted can have done that ({})",
                    reason_name(reason),
                    match reason {
                        RevokeReason::Revoke => "no Revoke naming it was OK or had an unknown outcome",
                        RevokeReason::Reuse =>
                            "no Rotate of its spent tokens was answered TOKEN_REUSED or had an unknown outcome",
                        RevokeReason::Evicted => "no other Issue for its subject and client was OK or unknown",
                    }
                ),
                &tried,
                Vec::new(),
            );
            return;
        };
        // Whatever revoked it must have been sent before the revocation was first seen.
        let Some(first) = seen.first else { return };
        if self.op(earliest).invoked_ns < self.op(first).completed_ns {
            return;
        }
        let mut involved = self.revokers(stored, reason);
        involved.push(first);
        if !seen.reused.is_empty() && reason != RevokeReason::Reuse {
            involved.extend(&seen.reused);
            self.report(
                Kind::ReuseNotRevoked,
                Some(family),
                format!(
                    "a Rotate was answered TOKEN_REUSED, but the family is revoked for {}, which no call could have done before",
                    reason_name(reason)
                ),
                &involved,
                Vec::new(),
            );
        } else {
            self.report(
                Kind::UnexplainedRevocation,
                Some(family),
                format!(
                    "the family was seen revoked before any call that can revoke it for {} was sent",
                    reason_name(reason)
                ),
                &involved,
                Vec::new(),
            );
        }
    }

    /// No OK Rotate of the family's tokens was sent after its revocation was seen complete.
    fn check_rotations_after(&mut self, family: &'a FamilyId, first_seen: usize) {
        let late: Vec<usize> = self
            .rotations_of
            .get(family)
            .into_iter()
            .flatten()
            .copied()
            .filter(|&i| self.class[i] == Class::Ok && self.before(first_seen, i))
            .collect();
        if late.is_empty() {
            return;
        }
        let mut involved = late;
        involved.push(first_seen);
        self.report(
            Kind::Contradiction,
            Some(family),
            "a Rotate was accepted after the family's revocation had completed".to_owned(),
            &involved,
            Vec::new(),
        );
    }

    /// Definite answers that say a family was revoked by their completion: an OK Revoke of a
    /// family that existed when it was sent, TOKEN_REUSED, TOKEN_REVOKED.
    pub(super) fn collect_revocation_evidence(&mut self) {
        let mut seen: HashMap<&'a FamilyId, Seen> = HashMap::new();
        for index in 0..self.ops.len() {
            let op = self.op(index);
            let (family, existed) = match (self.class[index], &op.call) {
                (Class::TokenReused | Class::TokenRevoked, _) => {
                    (op.presented().and_then(|t| self.family_of.get(t).copied()), true)
                }
                (
                    Class::Ok,
                    Call::Revoke(
                        RevokeTarget::Family(family) | RevokeTarget::Token(TokenRef::AccessToken { family, .. }),
                    ),
                ) => (
                    Some(family),
                    self.created_at(family).is_some_and(|at| at < op.invoked_ns),
                ),
                (Class::Ok, Call::Revoke(RevokeTarget::Token(TokenRef::RefreshToken(token)))) => (
                    self.family_of.get(token).copied(),
                    self.handed_out_at(token).is_some_and(|at| at < op.invoked_ns),
                ),
                _ => continue,
            };
            let Some(family) = family.filter(|_| existed) else {
                continue;
            };
            let entry = seen.entry(family).or_default();
            if self.class[index] == Class::TokenReused {
                entry.reused.push(index);
            } else {
                entry.others.push(index);
            }
            self.note_first(entry, index);
        }
        // OK Revokes by subject: for each family of the subject, the one that completed first
        // among those sent after the family existed. By invocation, with a suffix minimum of
        // completion, so that this costs O(log n) per family however many there are.
        for (subject, revokes) in &self.revokes_by_subject {
            let ok: Vec<usize> = revokes
                .iter()
                .copied()
                .filter(|&i| self.class[i] == Class::Ok)
                .collect();
            let Some(&last) = ok.last() else { continue };
            let mut first_after = vec![last; ok.len()];
            for at in (0..ok.len().saturating_sub(1)).rev() {
                let (here, later) = (ok[at], first_after[at + 1]);
                first_after[at] = if self.op(here).completed_ns <= self.op(later).completed_ns {
                    here
                } else {
                    later
                };
            }
            for family in self.families_of_subject.get(subject).into_iter().flatten() {
                let Some(created) = self.created_at(family) else {
                    continue;
                };
                let from = ok.partition_point(|&i| self.op(i).invoked_ns <= created);
                if let Some(&index) = first_after.get(from) {
                    let entry = seen.entry(family).or_default();
                    self.note_first(entry, index);
                }
            }
        }
        self.evidence = seen;
    }

    fn note_first(&self, seen: &mut Seen, index: usize) {
        if seen
            .first
            .is_none_or(|first| self.op(index).completed_ns < self.op(first).completed_ns)
        {
            seen.first = Some(index);
        }
    }

    /// The first call (by invocation) that may have revoked `family` for `reason`.
    fn earliest_revoker(
        &self,
        family: &'a FamilyState,
        reason: RevokeReason,
        evicters: &Evicters<'a>,
    ) -> Option<usize> {
        let first_of = |ops: Option<&Vec<usize>>| {
            ops.into_iter()
                .flatten()
                .copied()
                .find(|&i| self.may_revoke(i, family, reason))
        };
        match reason {
            RevokeReason::Revoke => {
                let by_target = first_of(self.revokes_of.get(&family.id));
                let by_subject = self
                    .revokes_by_subject
                    .get(family.subject.as_str())
                    .into_iter()
                    .flatten()
                    .copied()
                    .find(|&i| self.class[i].may_have_acted());
                by_target.into_iter().chain(by_subject).min()
            }
            RevokeReason::Reuse => first_of(self.rotations_of.get(&family.id)),
            RevokeReason::Evicted => evicters.earliest(self, family),
        }
    }

    /// Calls that may have revoked `family` for `reason` (for reports).
    fn revokers(&self, family: &'a FamilyState, reason: RevokeReason) -> Vec<usize> {
        self.attempted_revokers(family, reason)
            .into_iter()
            .filter(|&i| self.may_revoke(i, family, reason))
            .collect()
    }

    /// Calls of the kind that would explain the revocation, whatever their outcome: shown when
    /// none of them may have acted.
    fn attempted_revokers(&self, family: &'a FamilyState, reason: RevokeReason) -> Vec<usize> {
        let none = Vec::new();
        let related: Vec<&Vec<usize>> = match reason {
            RevokeReason::Revoke => vec![
                self.revokes_of.get(&family.id).unwrap_or(&none),
                self.revokes_by_subject.get(family.subject.as_str()).unwrap_or(&none),
            ],
            RevokeReason::Reuse => vec![self.rotations_of.get(&family.id).unwrap_or(&none)],
            RevokeReason::Evicted => vec![
                self.issues_by_key
                    .get(&(family.subject.as_str(), family.client_id.as_str()))
                    .unwrap_or(&none),
            ],
        };
        let mut ops: Vec<usize> = related
            .into_iter()
            .flatten()
            .copied()
            .filter(|&i| self.aims_to_revoke(i, family, reason))
            .collect();
        ops.sort_unstable();
        ops
    }

    fn may_revoke(&self, index: usize, family: &'a FamilyState, reason: RevokeReason) -> bool {
        if !self.aims_to_revoke(index, family, reason) {
            return false;
        }
        let class = self.class[index];
        match reason {
            RevokeReason::Revoke => class.may_have_acted(),
            RevokeReason::Reuse => {
                let token = self.op(index).presented();
                let spent = token.and_then(|t| self.stored.get(t)).is_some_and(|(_, t)| t.spent);
                let spender = token.and_then(|t| self.spender.get(t)).copied();
                class == Class::TokenReused || (class == Class::Unknown && spent && spender != Some(index))
            }
            RevokeReason::Evicted => {
                let own = self.issued.get(&family.id).is_some_and(|ops| ops.contains(&index));
                let created = self.issued.get(&family.id).and_then(|ops| ops.first().copied());
                let over_before = created.is_some_and(|c| self.before(index, c));
                class.may_have_acted() && !own && !over_before
            }
        }
    }

    /// Per subject and client, the Issues that may have acted, indexed to find the first that
    /// may have evicted a given family without scanning them all.
    fn evicters(&self) -> Evicters<'a> {
        let mut by_key = HashMap::new();
        for (key, issues) in &self.issues_by_key {
            let actors: Vec<usize> = issues
                .iter()
                .copied()
                .filter(|&i| self.class[i].may_have_acted())
                .collect();
            // latest[p]: of actors[..p], the one whose effect may come latest (an unknown
            // outcome: any time), as (that time, index).
            let mut latest = Vec::with_capacity(actors.len() + 1);
            latest.push(None);
            for &i in &actors {
                let until = if self.class[i].definite() {
                    self.op(i).completed_ns
                } else {
                    u64::MAX
                };
                let before = latest.last().copied().flatten();
                latest.push(match before {
                    Some((t, _)) if t >= until => before,
                    _ => Some((until, i)),
                });
            }
            by_key.insert(*key, Actors { issues: actors, latest });
        }
        Evicters { by_key }
    }

    /// Whether the call is one that revokes `family` for `reason` when it acts.
    fn aims_to_revoke(&self, index: usize, family: &'a FamilyState, reason: RevokeReason) -> bool {
        let op = self.op(index);
        match (reason, &op.call) {
            (RevokeReason::Revoke, Call::Revoke(target)) => match target {
                RevokeTarget::Family(id) | RevokeTarget::Token(TokenRef::AccessToken { family: id, .. }) => {
                    *id == family.id
                }
                RevokeTarget::Token(TokenRef::RefreshToken(token)) => {
                    self.family_of.get(token).is_some_and(|f| **f == family.id)
                }
                RevokeTarget::Subject(subject) => *subject == family.subject,
            },
            (RevokeReason::Reuse, Call::Rotate { token } | Call::Replay { token }) => {
                self.family_of.get(token).is_some_and(|f| **f == family.id)
            }
            (RevokeReason::Evicted, Call::Issue { subject, client_id }) => {
                *subject == family.subject && *client_id == family.client_id
            }
            _ => false,
        }
    }

    /// Introspect never says active for a token whose family's revocation, or whose own spend,
    /// completed more than the allowed staleness before it was sent.
    pub(super) fn check_introspection(&mut self) {
        let staleness = u64::try_from(self.options.introspect_staleness.as_nanos()).unwrap_or(u64::MAX);
        // The last pass to read the evidence: take it, so that reporting may borrow self.
        let revoked = std::mem::take(&mut self.evidence);
        for index in 0..self.ops.len() {
            let op = self.op(index);
            let (
                Call::Introspect(token),
                Outcome::Ok(Answer::Introspected {
                    active: true,
                    family: answered,
                }),
            ) = (&op.call, &op.outcome)
            else {
                continue;
            };
            if self.class[index] != Class::Ok {
                continue;
            }
            let (family, refresh): (Option<&'a FamilyId>, Option<&'a TokenId>) = match token {
                TokenRef::RefreshToken(token) => (self.family_of.get(token).copied(), Some(token)),
                TokenRef::AccessToken { family, .. } => (Some(family), None),
            };
            if let (Some(family), Some(answered)) = (family, answered)
                && family != answered
            {
                self.report(
                    Kind::Contradiction,
                    Some(family),
                    format!("Introspect said the token belongs to family {answered}"),
                    &[index],
                    Vec::new(),
                );
            }
            let deadline = |i: usize| self.op(i).completed_ns.saturating_add(staleness) < op.invoked_ns;
            if let Some(family) = family {
                let seen = revoked.get(family).and_then(|s| s.first).filter(|&i| deadline(i));
                if let Some(seen) = seen {
                    self.report(
                        Kind::StaleIntrospect,
                        Some(family),
                        format!(
                            "Introspect said active {} ns after the family's revocation was seen complete (allowed: {staleness} ns)",
                            op.invoked_ns - self.op(seen).completed_ns
                        ),
                        &[seen, index],
                        Vec::new(),
                    );
                    continue;
                }
            }
            let Some(refresh) = refresh else { continue };
            let spent = self
                .presented
                .get(refresh)
                .into_iter()
                .flatten()
                .copied()
                .find(|&i| matches!(self.class[i], Class::Ok | Class::TokenReused) && deadline(i));
            if let Some(spent) = spent {
                self.report(
                    Kind::StaleIntrospect,
                    family,
                    format!(
                        "Introspect said {refresh} is active {} ns after it was seen spent (allowed: {staleness} ns)",
                        op.invoked_ns - self.op(spent).completed_ns
                    ),
                    &[spent, index],
                    Vec::new(),
                );
            }
        }
    }
}

fn reason_name(reason: RevokeReason) -> &'static str {
    match reason {
        RevokeReason::Revoke => "revoke",
        RevokeReason::Reuse => "reuse",
        RevokeReason::Evicted => "evicted",
    }
}

/// Issues that may have evicted a family, per subject and client (see [`Ctx::evicters`]).
struct Evicters<'a> {
    by_key: HashMap<(&'a str, &'a str), Actors>,
}

/// The Issues for one subject and client that may have acted.
struct Actors {
    /// In invocation order.
    issues: Vec<usize>,
    /// For each prefix of `issues`: the one whose effect may land latest, as (the latest time,
    /// its index); `None` for the empty prefix.
    latest: Vec<Option<(u64, usize)>>,
}

impl<'a> Evicters<'a> {
    /// The first Issue that may have evicted `family`: another Issue for its subject and client
    /// that may have acted and did not certainly complete before the family's Issue was sent.
    ///
    /// Those sent after the family's Issue all qualify, and the first of them is the earliest
    /// sent after it. Those sent before qualify when their effect may come after it was sent
    /// (unknown, or completing later); all of them were sent before the family existed, hence
    /// before any answer could show it revoked, so any one of them serves as well as the first.
    fn earliest(&self, ctx: &Ctx<'a>, family: &'a FamilyState) -> Option<usize> {
        let Actors { issues: actors, latest } =
            self.by_key.get(&(family.subject.as_str(), family.client_id.as_str()))?;
        let own: &[usize] = ctx.issued.get(&family.id).map_or(&[], Vec::as_slice);
        let Some(&created) = own.first() else {
            // Made by an Issue with an unknown outcome: any other Issue may have evicted it.
            return actors.first().copied();
        };
        let sent = ctx.op(created).invoked_ns;
        let at = actors.partition_point(|&i| i < created);
        let before = latest[at].filter(|&(until, _)| until >= sent).map(|(_, i)| i);
        let after = actors[at..].iter().copied().find(|i| !own.contains(i));
        before.or(after)
    }
}
