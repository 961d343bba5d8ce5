//! Who may call what (issue 11): the caller policy, as plain Rust.
//!
//! A policy file ([`file`](mod@file)) lists callers, each known by its transport identity (a SPIFFE ID, or a
//! DNS name; each matches only an identity of its own kind) or by the SHA-256 of an API key, with
//! the RPCs it may call, what it may mint (audiences, scopes and extra-claim names, as
//! [`pattern`]s), for whom (subjects and client ids, any if not listed), and optionally its own
//! rate limit ([`limits`]). This module answers "who is this" ([`CallerPolicy::resolve`]), "may
//! they call this RPC" ([`Caller::may_call`]), "may they issue this" ([`Caller::check_issue`]) and
//! "may they act on this subject's sessions" ([`Caller::check_subject`]);
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
use crate::transport::PeerIdentity;
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
}

impl Default for AccessSettings {
    /// Open mode with reflection.
    fn default() -> Self {
        Self {
            policy: None,
            reload_interval: std::time::Duration::from_secs(10),
            reflection: true,
        }
    }
}

/// The RPC names a policy may grant, as the API spells them (`Check` is Envoy's ext_authz): the
/// method segment of the gRPC path, which is how `grpc/access.rs` names a call.
///
/// Written out because the policy sits below `grpc` and cannot read its generated code; a test in
/// `grpc` holds it to the services' descriptors (ours, and Envoy's `Check` path), so an RPC added to
/// the proto without being added here fails the tests instead of being one no caller can be granted
/// (only `rpcs = ["*"]` would reach it).
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
    /// Whose tokens it may issue and whose sessions it may list and revoke; `None`: anyone's.
    subjects: Option<Patterns>,
    /// For which clients it may issue (and so whose sessions Issue's cap may evict); `None`: any.
    client_ids: Option<Patterns>,
    pub(crate) rate: Option<Arc<CallerRate>>,
}

/// What a known caller asked for and may not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Rpc(String),
    Audience(String),
    Scope(String),
    Claim(String),
    Subject(String),
    ClientId(String),
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
        Refused::Subject(name) => format!("act for subject {name:?}"),
        Refused::ClientId(name) => format!("issue for client_id {name:?}"),
    }
}

impl Refused {
    /// What kind of thing was refused: `rpc`, `audience`, `scope`, `claim`, `subject` or
    /// `client_id` (the request field's name).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Rpc(_) => "rpc",
            Self::Audience(_) => "audience",
            Self::Scope(_) => "scope",
            Self::Claim(_) => "claim",
            Self::Subject(_) => "subject",
            Self::ClientId(_) => "client_id",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Rpc(n)
            | Self::Audience(n)
            | Self::Scope(n)
            | Self::Claim(n)
            | Self::Subject(n)
            | Self::ClientId(n) => n,
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

    /// Whether this caller may mint what `params` asks for: the subject and client id must match
    /// its `subjects` and `client_ids` (if it has them), every audience, scope and extra claim
    /// name one of its patterns. The server's default audience is always allowed: a caller with
    /// no `audiences` may still issue tokens for it, which is what an Issue naming no audience
    /// gets. An Issue naming no client id is for client `""`, which only `*` matches.
    ///
    /// Because Issue's sessions cap evicts only sessions of the same subject *and* client id as
    /// the new one, this check is also what keeps a caller from ending sessions it could not
    /// have issued.
    ///
    /// # Errors
    /// The subject, client id, or the first audience, scope or claim name the caller may not
    /// issue.
    pub fn check_issue(&self, params: &IssueParams, default_audience: &str) -> Result<(), Refusal> {
        self.check_subject(params.subject.as_str())?;
        let client_id = params.client_id.as_str();
        if self.client_ids.as_ref().is_some_and(|p| !p.allows(client_id)) {
            return Err(self.refuse(Refused::ClientId(client_id.to_owned())));
        }
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

    /// Whether this caller may act for `subject`: issue its tokens, list or revoke its sessions.
    ///
    /// # Errors
    /// The subject is outside the caller's `subjects`.
    pub fn check_subject(&self, subject: &str) -> Result<(), Refusal> {
        if self.may_act_for(subject) {
            Ok(())
        } else {
            Err(self.refuse(Refused::Subject(subject.to_owned())))
        }
    }

    /// Whether `subject` is within the caller's `subjects` (always, without the list).
    pub fn may_act_for(&self, subject: &str) -> bool {
        self.subjects.as_ref().is_none_or(|p| p.allows(subject))
    }

    /// Whether the caller has a `subjects` list: only then does acting on a family by id need its
    /// subject looked up.
    pub fn limits_subjects(&self) -> bool {
        self.subjects.is_some()
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
    /// A trusted sidecar's `x-forwarded-client-cert` header that is not as Envoy writes it: the
    /// caller cannot be named, and is not taken for nobody (or, with a key, for the key's caller)
    /// either.
    #[error("the x-forwarded-client-cert header is malformed: the caller cannot be named")]
    MalformedIdentity,
}

/// The parsed policy file: every caller, by identity (of its kind) and by API key hash.
#[derive(Default)]
pub struct CallerPolicy {
    by_identity: HashMap<PeerIdentity, Arc<Caller>>,
    /// Searched whole on every lookup (see [`CallerPolicy::resolve`]).
    by_key: Vec<([u8; 32], Arc<Caller>)>,
}

impl CallerPolicy {
    /// The caller a request's credentials name.
    ///
    /// - The identity is the transport's (mTLS or a trusted XFCC header): not a secret, looked up
    ///   in a map by kind and text, so a DNS name never finds a caller named by SPIFFE ID.
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
    pub fn resolve(
        &self,
        identity: Option<&PeerIdentity>,
        api_key: Option<&[u8]>,
    ) -> Result<Arc<Caller>, Unauthenticated> {
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
