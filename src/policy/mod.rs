//! Who may call what (issue 11): the caller policy, as plain Rust.
//!
//! A policy file ([`file`]) lists callers, each known by its transport identity (a SPIFFE ID or
//! DNS SAN) or by the SHA-256 of an API key, with the RPCs it may call and what it may mint
//! (audiences, scopes and extra-claim names, as [`pattern`]s), and optionally its own rate limit
//! ([`limits`]). This module answers "who is this" ([`CallerPolicy::resolve`]), "may they call
//! this RPC" ([`Caller::may_call`]) and "may they issue this" ([`Caller::check_issue`]);
//! [`limits`] also holds the per-family Rotate limit. Enforcement, and turning refusals into
//! gRPC answers, is the transport's job (`grpc/access.rs`, `grpc/status.rs`): nothing here knows
//! tonic.

pub mod file;
pub mod limits;
pub mod pattern;
pub mod reload;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{SHA256, digest};

use crate::issuer::types::IssueParams;
use limits::CallerRate;
use pattern::Patterns;

/// Who may call what and the abuse limits, as `serve` runs them.
#[derive(Debug, Clone)]
pub struct AccessSettings {
    /// `None`: open mode, anyone who reaches the port may call anything.
    pub policy: Option<Arc<reload::PolicyFile>>,
    /// How often the policy file is checked for changes.
    pub reload_interval: std::time::Duration,
    /// Whether gRPC server reflection is served.
    pub reflection: bool,
    pub rotate_limit: limits::RotateLimit,
}

impl Default for AccessSettings {
    /// Open mode with reflection and the default Rotate limit.
    fn default() -> Self {
        Self {
            policy: None,
            reload_interval: std::time::Duration::from_secs(10),
            reflection: true,
            rotate_limit: limits::RotateLimit::default(),
        }
    }
}

/// The RPC names a policy may grant, as the API spells them (`Check` is Envoy's ext_authz).
pub const RPC_NAMES: [&str; 7] = [
    "Issue",
    "Rotate",
    "Revoke",
    "Introspect",
    "ListSessions",
    "GetJwks",
    "Check",
];

/// One caller of the policy file.
#[derive(Debug)]
pub struct Caller {
    /// Shown in logs and security events; never a secret.
    pub name: String,
    /// `None`: every RPC (`"*"`).
    rpcs: Option<Vec<String>>,
    audiences: Patterns,
    scopes: Patterns,
    claims: Patterns,
    pub(crate) rate: Option<Arc<CallerRate>>,
}

/// What a known caller asked for and may not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Rpc(String),
    Audience(String),
    Scope(String),
    Claim(String),
}

/// A known caller asked for something the policy does not grant it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("caller {caller:?} may not {}", describe(.refused))]
pub struct Refusal {
    pub caller: String,
    pub refused: Refused,
}

fn describe(refused: &Refused) -> String {
    match refused {
        Refused::Rpc(name) => format!("call {name}"),
        Refused::Audience(name) => format!("issue audience {name:?}"),
        Refused::Scope(name) => format!("issue scope {name:?}"),
        Refused::Claim(name) => format!("issue claim {name:?}"),
    }
}

impl Refused {
    /// What kind of thing was refused: `rpc`, `audience`, `scope` or `claim`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Rpc(_) => "rpc",
            Self::Audience(_) => "audience",
            Self::Scope(_) => "scope",
            Self::Claim(_) => "claim",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Rpc(n) | Self::Audience(n) | Self::Scope(n) | Self::Claim(n) => n,
        }
    }
}

impl Caller {
    pub fn may_call(&self, rpc: &str) -> bool {
        self.rpcs.as_ref().is_none_or(|names| names.iter().any(|n| n == rpc))
    }

    /// # Errors
    /// The caller may not call `rpc`.
    pub fn check_rpc(&self, rpc: &str) -> Result<(), Refusal> {
        if self.may_call(rpc) {
            Ok(())
        } else {
            Err(self.refuse(Refused::Rpc(rpc.to_owned())))
        }
    }

    /// Whether this caller may mint what `params` asks for: every audience, scope and extra
    /// claim name must match one of its patterns. The server's default audience is always
    /// allowed: a caller with no `audiences` may still issue tokens for it, which is what an
    /// Issue naming no audience gets.
    ///
    /// # Errors
    /// The first audience, scope or claim name the caller may not issue.
    pub fn check_issue(&self, params: &IssueParams, default_audience: &str) -> Result<(), Refusal> {
        if let Some(audience) = params
            .audiences
            .as_slice()
            .iter()
            .find(|a| a.as_str() != default_audience && !self.audiences.allows(a))
        {
            return Err(self.refuse(Refused::Audience(audience.clone())));
        }
        if let Some(scope) = params.scopes.as_slice().iter().find(|s| !self.scopes.allows(s)) {
            return Err(self.refuse(Refused::Scope(scope.clone())));
        }
        if let Some(claim) = params.claims.as_map().keys().find(|c| !self.claims.allows(c)) {
            return Err(self.refuse(Refused::Claim(claim.clone())));
        }
        Ok(())
    }

    fn refuse(&self, refused: Refused) -> Refusal {
        Refusal {
            caller: self.name.clone(),
            refused,
        }
    }
}

/// Why a request could not be tied to a caller of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error("no credentials: present a client certificate or an API key")]
    NoCredentials,
    #[error("the client certificate's identity is not a caller of this server")]
    UnknownIdentity,
    #[error("the API key is not a caller of this server")]
    UnknownKey,
    #[error("the client certificate and the API key name different callers")]
    Conflicting,
}

/// The parsed policy file: every caller, by identity and by API key hash.
#[derive(Default)]
pub struct CallerPolicy {
    by_identity: HashMap<String, Arc<Caller>>,
    /// Searched whole on every lookup (see [`CallerPolicy::resolve`]).
    by_key: Vec<([u8; 32], Arc<Caller>)>,
}

impl CallerPolicy {
    /// The caller a request's credentials name.
    ///
    /// - The identity is the transport's (mTLS or a trusted XFCC header): not a secret, looked up
    ///   in a map.
    /// - An API key is hashed (SHA-256) and compared in constant time with *every* configured
    ///   hash, with no early exit, so the time taken says nothing about which entry, if any,
    ///   came close. (A map keyed by the hash would leak little, as keys are meant to be random,
    ///   but an operator may well configure a guessable one; a handful of 32-byte compares costs
    ///   nothing.)
    /// - Both presented: both must name a caller, and the same one; an identity the file does not
    ///   know is ignored when the key is known (a mesh may give every workload a certificate,
    ///   while only some are callers). A wrong API key is never silently ignored.
    ///
    /// # Errors
    /// [`Unauthenticated`]: why no caller could be found.
    pub fn resolve(&self, identity: Option<&str>, api_key: Option<&[u8]>) -> Result<Arc<Caller>, Unauthenticated> {
        let by_identity = identity.and_then(|id| self.by_identity.get(id));
        let by_key = api_key.map(|key| self.by_key(key));
        match (identity, by_identity, by_key) {
            (None, _, None) => Err(Unauthenticated::NoCredentials),
            (Some(_), None, None) => Err(Unauthenticated::UnknownIdentity),
            (_, _, Some(None)) => Err(Unauthenticated::UnknownKey),
            (_, Some(a), Some(Some(b))) if !Arc::ptr_eq(a, &b) => Err(Unauthenticated::Conflicting),
            (_, _, Some(Some(caller))) => Ok(caller),
            (_, Some(caller), None) => Ok(caller.clone()),
        }
    }

    fn by_key(&self, key: &[u8]) -> Option<Arc<Caller>> {
        let hash = digest(&SHA256, key);
        let mut found = None;
        for (candidate, caller) in &self.by_key {
            if verify_slices_are_equal(hash.as_ref(), candidate).is_ok() {
                found = Some(caller.clone());
            }
        }
        found
    }

    /// How many callers the file names.
    pub fn len(&self) -> usize {
        self.by_identity.len() + self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The caller named `name`, if any (to carry rate-limit state over a reload).
    fn named(&self, name: &str) -> Option<&Arc<Caller>> {
        self.by_identity
            .values()
            .chain(self.by_key.iter().map(|(_, c)| c))
            .find(|c| c.name == name)
    }
}

/// By hand: callers by name only, never an API key's hash (a configuration printout must not
/// hand out what to brute-force a weak key against).
impl fmt::Debug for CallerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self
            .by_identity
            .values()
            .chain(self.by_key.iter().map(|(_, c)| c))
            .map(|c| c.name.as_str())
            .collect();
        names.sort_unstable();
        f.debug_struct("CallerPolicy").field("callers", &names).finish()
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.kind(), self.name())
    }
}
