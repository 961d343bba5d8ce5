//! The store's shape: each family is one chain of refresh tokens.
//!
//! From the first token (the only one without a parent), each spent token names its successor,
//! which names it as parent, in the same family; the last is the only unspent one, and every
//! token is on the chain. ratchet's schema enforces most of this (one successor per parent, one
//! first token per family, a parent in the same family); this pass re-checks it so that a
//! schema change, a hand-written SQL fix or a SQLite path that forgets one cannot go unnoticed.

use std::collections::{HashMap, HashSet};

use super::Ctx;
use crate::history::TokenId;
use crate::report::Kind;
use crate::state::{FamilyState, TokenState};

impl<'a> Ctx<'a> {
    pub(super) fn check_store_shape(&mut self) {
        let families: Vec<&'a FamilyState> = self.families.values().copied().collect();
        for family in families {
            let problems = chain_problems(family);
            if !problems.is_empty() {
                self.report(
                    Kind::StoreBranch,
                    Some(&family.id),
                    format!("the family is not one chain: {}", problems.join("; ")),
                    &[],
                    family.tokens.clone(),
                );
            }
        }
    }
}

/// Everything that keeps `family` from being one chain; empty when it is one.
fn chain_problems(family: &FamilyState) -> Vec<String> {
    let mut problems = Vec::new();
    if family.tokens.is_empty() {
        problems.push("it has no refresh token (Issue stores the family and its first token together)".to_owned());
        return problems;
    }
    let by_id: HashMap<&TokenId, &TokenState> = family.tokens.iter().map(|t| (&t.id, t)).collect();
    let mut children: HashMap<&TokenId, Vec<&TokenId>> = HashMap::new();
    for token in &family.tokens {
        if token.spent != token.successor.is_some() {
            problems.push(if token.spent {
                format!("{} is spent without a successor", token.id)
            } else {
                format!("{} is unspent but names a successor", token.id)
            });
        }
        if let Some(successor) = &token.successor {
            match by_id.get(successor) {
                None => problems.push(format!("{}'s successor {successor} is not in the family", token.id)),
                Some(next) if next.parent.as_ref() != Some(&token.id) => problems.push(format!(
                    "{}'s successor {successor} names {} as its parent",
                    token.id,
                    next.parent.as_ref().map_or("none".to_owned(), ToString::to_string)
                )),
                Some(_) => {}
            }
        }
        if let Some(parent) = &token.parent {
            children.entry(parent).or_default().push(&token.id);
            match by_id.get(parent) {
                None => problems.push(format!("{}'s parent {parent} is not in the family", token.id)),
                Some(before) if before.successor.as_ref() != Some(&token.id) => problems.push(format!(
                    "{}'s parent {parent} was spent into {}",
                    token.id,
                    before
                        .successor
                        .as_ref()
                        .map_or("nothing".to_owned(), ToString::to_string)
                )),
                Some(_) => {}
            }
        }
    }
    let mut branched: Vec<_> = children.iter().filter(|(_, c)| c.len() > 1).collect();
    branched.sort();
    for (parent, kids) in branched {
        let kids: Vec<String> = kids.iter().map(ToString::to_string).collect();
        problems.push(format!("{parent} has {} children: {}", kids.len(), kids.join(", ")));
    }
    let firsts: Vec<&TokenId> = family
        .tokens
        .iter()
        .filter(|t| t.parent.is_none())
        .map(|t| &t.id)
        .collect();
    if firsts.len() != 1 {
        let ids: Vec<String> = firsts.iter().map(ToString::to_string).collect();
        problems.push(format!(
            "{} first tokens (without a parent): [{}]",
            firsts.len(),
            ids.join(", ")
        ));
    }
    let unspent: Vec<String> = family
        .tokens
        .iter()
        .filter(|t| !t.spent)
        .map(|t| t.id.to_string())
        .collect();
    if unspent.len() > 1 {
        problems.push(format!("{} unspent tokens: {}", unspent.len(), unspent.join(", ")));
    }
    // Walk the chain from the (single) first token: it must reach every token, once.
    if let [first] = firsts.as_slice() {
        let mut seen = HashSet::new();
        let mut at = by_id.get(*first).copied();
        while let Some(token) = at {
            if !seen.insert(&token.id) {
                problems.push(format!("the chain loops back to {}", token.id));
                break;
            }
            at = token.successor.as_ref().and_then(|s| by_id.get(s).copied());
        }
        let off: Vec<String> = family
            .tokens
            .iter()
            .filter(|t| !seen.contains(&t.id))
            .map(|t| t.id.to_string())
            .collect();
        if !off.is_empty() && problems.is_empty() {
            problems.push(format!("tokens off the chain: {}", off.join(", ")));
        }
    }
    problems
}
