//! The audit trail as the store keeps it: the kinds of event ([`EventKind`]), an event as read
//! back ([`AuditEvent`]) and what `ratchet events` filters by ([`EventFilter`]).
//!
//! Events are written by the store's own writes, each in the same transaction (on PostgreSQL the
//! same statement) as the change it records, with the [`Actor`](crate::domain::Actor) the write
//! was given: no event without its change, no change without its event, and a write run again
//! (a lost answer resolved, see the store's module docs) finds its change done and records
//! nothing more. An event holds ids, names and times, never a token, a hash or a seal.
//!
//! What it leaves out: printing events (the CLI) and how long they are kept (the cleanup).

use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;

use crate::domain::FamilyId;

/// What happened to a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Issue created it.
    Issued,
    /// A refresh token of it was spent into its successor (recorded only with
    /// `--audit-rotations`: [`super::SpendRequest::audit_rotation`]).
    Rotated,
    /// A spent refresh token of it was presented again, and it was revoked for that.
    ReuseDetected,
    /// Revoke ended it ([`AuditEvent::detail`] says what the call named).
    Revoked,
    /// Issue beyond the sessions cap revoked it, the oldest of its subject and client.
    Evicted,
}

impl EventKind {
    pub const ALL: [Self; 5] = [
        Self::Issued,
        Self::Rotated,
        Self::ReuseDetected,
        Self::Revoked,
        Self::Evicted,
    ];

    /// As stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Rotated => "rotated",
            Self::ReuseDetected => "reuse_detected",
            Self::Revoked => "revoked",
            Self::Evicted => "evicted",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Not one of [`EventKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be one of issued, rotated, reuse_detected, revoked, evicted")]
pub struct UnknownKind;

impl FromStr for EventKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, UnknownKind> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == s).ok_or(UnknownKind)
    }
}

/// What a Revoke call named: recorded with its `revoked` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Family,
    Token,
    Subject,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Family => "family",
            Self::Token => "token",
            Self::Subject => "subject",
        }
    }
}

/// One event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Larger for a later event; breaks ties between events of one instant.
    pub id: i64,
    pub at: OffsetDateTime,
    pub kind: EventKind,
    pub family_id: FamilyId,
    pub subject: String,
    pub client_id: String,
    /// The caller policy's name of who made the call; `None` in open mode.
    pub caller: Option<String>,
    pub request_id: Option<String>,
    /// For [`EventKind::Revoked`]: what the call named (`family`, `token`, `subject`).
    pub detail: Option<String>,
}

/// Which events to read: those matching every filter given, newest first (`at`, then `id`,
/// descending), at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    pub family: Option<FamilyId>,
    pub subject: Option<String>,
    pub kind: Option<EventKind>,
    /// At or after this time.
    pub since: Option<OffsetDateTime>,
    pub limit: u32,
}

impl EventFilter {
    /// Every event, newest first, at most `limit`.
    pub fn latest(limit: u32) -> Self {
        Self {
            family: None,
            subject: None,
            kind: None,
            since: None,
            limit,
        }
    }
}

/// The statement of a filtered read of `columns`, newest first, from fixed fragments only (no
/// value is ever written into SQL: each filter binds the next parameter, numbered by `param`,
/// and the limit the one after them), so that each combination of filters is a statement its
/// indexes serve. Bind the filters given, in the order of [`EventFilter`]'s fields, then the
/// limit.
pub(super) fn select_statement(filter: &EventFilter, columns: &str, param: impl Fn(usize) -> String) -> String {
    let mut conditions = Vec::new();
    let mut next = 0;
    let mut condition = |column: &str, op: &str| {
        next += 1;
        conditions.push(format!("{column} {op} {}", param(next)));
    };
    if filter.family.is_some() {
        condition("family_id", "=");
    }
    if filter.subject.is_some() {
        condition("subject", "=");
    }
    if filter.kind.is_some() {
        condition("kind", "=");
    }
    if filter.since.is_some() {
        condition("at", ">=");
    }
    let conditions = if conditions.is_empty() {
        String::new()
    } else {
        format!("where {}", conditions.join(" and "))
    };
    let limit = param(next + 1);
    format!("select {columns} from audit_events {conditions} order by at desc, id desc limit {limit}")
}
