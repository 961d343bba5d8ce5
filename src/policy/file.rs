//! The policy file (`RATCHET_POLICY`): TOML, read with the `toml` crate (the format's reference
//! implementation for Rust, maintained by the toml-rs project that cargo itself relies on; it was
//! already in the build through tonic-prost-build). Unknown keys are refused, so a typo such as
//! `scope = [..]` is a configuration error instead of a caller quietly allowed nothing.
//!
//! ```toml
//! [[caller]]
//! name = "login"
//! id = "spiffe://corp.example/ns/auth/sa/login"   # or dns = "<DNS SAN>", or api_key_sha256 = "<64 hex>"
//! rpcs = ["Issue", "Rotate", "Revoke", "ListSessions"]
//! audiences = ["api", "web-*"]
//! scopes = ["read", "write", "admin:*"]
//! claims = ["tenant"]
//! subjects = ["user-*"]                           # optional; missing: any subject
//! client_ids = ["web", "mobile"]                  # optional; missing: any client id
//! rate = { per_second = 200, burst = 400 }
//! ```
//!
//! A caller is named by exactly one of `id` (a valid SPIFFE ID, matching only the SPIFFE ID of a
//! URI SAN), `dns` (a valid DNS name, matching only a DNS SAN, case-insensitively) and
//! `api_key_sha256`. `id` does not take a DNS name: `id = "host.example"` is an error that says to
//! write `dns = "host.example"`, so that no entry can be read as one kind and matched as another.
//!
//! `subjects` and `client_ids` are patterns like `audiences`, but a *missing* list allows any
//! (files written before them keep their meaning), while a present one allows only what it
//! matches (`[]`: nothing). Issue checks both; Revoke and ListSessions check `subjects` against
//! the subject they act on (for a family or token, the family's subject, and a family outside
//! them is answered as if it did not exist). Every problem in a file is reported at once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::limits::{CallerRate, Rate};
use super::pattern::Patterns;
use super::{Caller, CallerPolicy, RPC_NAMES};
use crate::transport::PeerIdentity;
use crate::transport::identity::{DnsName, SpiffeId};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    caller: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    id: Option<String>,
    dns: Option<String>,
    api_key_sha256: Option<String>,
    #[serde(default)]
    rpcs: Vec<String>,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    claims: Vec<String>,
    /// `None` (missing): any.
    subjects: Option<Vec<String>>,
    /// `None` (missing): any.
    client_ids: Option<Vec<String>>,
    rate: Option<Rate>,
}

/// Reads and parses the policy file at `path`.
///
/// # Errors
/// The file cannot be read, or every problem found in it.
pub fn load(path: &Path, previous: Option<&CallerPolicy>) -> Result<CallerPolicy, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
    parse(&text, previous)
}

/// Parses a policy. Callers that keep their name and rate over a reload keep their rate-limit
/// state (`previous`), so a SIGHUP does not hand everyone a fresh burst.
///
/// # Errors
/// Every problem found, one message each, naming the caller.
pub fn parse(text: &str, previous: Option<&CallerPolicy>) -> Result<CallerPolicy, Vec<String>> {
    let document: Document = toml::from_str(text).map_err(|e| vec![e.message().to_owned()])?;
    let mut problems = Vec::new();
    let mut policy = CallerPolicy::default();
    let mut names = HashMap::new();
    for (index, entry) in document.caller.into_iter().enumerate() {
        let who = if entry.name.is_empty() {
            format!("caller #{}", index + 1)
        } else {
            format!("caller {:?}", entry.name)
        };
        let mut problem = |p: String| problems.push(format!("{who}: {p}"));
        if entry.name.is_empty() || entry.name.chars().any(|c| c.is_control()) {
            problem("name must be non-empty text".into());
        } else if names.insert(entry.name.clone(), ()).is_some() {
            problem("a second caller of this name".into());
        }
        let rpcs = if entry.rpcs.iter().any(|r| r == "*") {
            None
        } else {
            for rpc in entry.rpcs.iter().filter(|r| !RPC_NAMES.contains(&r.as_str())) {
                problem(format!(
                    "rpcs: unknown method {rpc:?} (one of {}, or \"*\")",
                    RPC_NAMES.join(", ")
                ));
            }
            Some(entry.rpcs)
        };
        let mut patterns = |field: &str, texts: &[String]| {
            Patterns::parse(texts).unwrap_or_else(|bad| {
                for b in bad {
                    problem(format!("{field}: {b}"));
                }
                Patterns::default()
            })
        };
        let audiences = patterns("audiences", &entry.audiences);
        let scopes = patterns("scopes", &entry.scopes);
        let claims = patterns("claims", &entry.claims);
        let subjects = entry.subjects.as_deref().map(|texts| patterns("subjects", texts));
        let client_ids = entry.client_ids.as_deref().map(|texts| patterns("client_ids", texts));
        let rate = entry.rate.and_then(|rate| {
            let carried = previous
                .and_then(|p| p.named(&entry.name))
                .and_then(|c| c.rate.clone())
                .filter(|r| r.rate() == rate);
            carried.or_else(|| match CallerRate::new(rate) {
                Some(limit) => Some(Arc::new(limit)),
                None => {
                    problem("rate: per_second and burst must be at least 1".into());
                    None
                }
            })
        });
        let caller = Arc::new(Caller {
            name: entry.name,
            rpcs,
            audiences,
            scopes,
            claims,
            subjects,
            client_ids,
            rate,
        });
        match (entry.id, entry.dns, entry.api_key_sha256) {
            (Some(id), None, None) => match SpiffeId::parse(&id) {
                Ok(id) => {
                    if policy.by_identity.insert(PeerIdentity::Spiffe(id), caller).is_some() {
                        problem("id: another caller has the same id".into());
                    }
                }
                Err(_) if DnsName::parse(&id).is_ok() => problem(format!(
                    "id: {id:?} is a DNS name, not a SPIFFE ID: name a DNS-SAN caller with dns = {id:?}"
                )),
                Err(why) => problem(format!("id: {id:?} is not a SPIFFE ID: {why}")),
            },
            (None, Some(dns), None) => match DnsName::parse(&dns) {
                Ok(name) => {
                    if policy.by_identity.insert(PeerIdentity::Dns(name), caller).is_some() {
                        problem("dns: another caller has the same DNS name".into());
                    }
                }
                Err(_) if SpiffeId::parse(&dns).is_ok() => problem(format!(
                    "dns: {dns:?} is a SPIFFE ID, not a DNS name: name a SPIFFE caller with id = {dns:?}"
                )),
                Err(why) => problem(format!("dns: {dns:?}: {why}")),
            },
            (None, None, Some(hex)) => match decode_hash(&hex) {
                Some(hash) if policy.by_key.iter().any(|(h, _)| *h == hash) => {
                    problem("api_key_sha256: another caller has the same key".into());
                }
                Some(hash) => policy.by_key.push((hash, caller)),
                None => problem("api_key_sha256: must be 64 hex digits (the SHA-256 of the key)".into()),
            },
            _ => problem("needs exactly one of id, dns and api_key_sha256".into()),
        }
    }
    if problems.is_empty() { Ok(policy) } else { Err(problems) }
}

fn decode_hash(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// The SHA-256 of `key` in hex: what the policy file holds for an API key.
pub fn api_key_sha256(key: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// The tests are in a file of their own, so that this one holds only what the module does.
#[cfg(test)]
mod tests;
