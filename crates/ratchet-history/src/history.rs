//! The history: one JSON line per operation a test client made, with its call, its outcome and
//! when it was invoked and completed.
//!
//! A line, spaced out (the file has one object per line, no spaces needed):
//!
//! ```json
//! {"process": 3, "op": 17, "invoked_ns": 1204331002, "completed_ns": 1206100345,
//!  "call": {"rotate": {"token": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}},
//!  "outcome": {"ok": {"pair": {"family": "0b9a1f5c-7d2e-4c1a-9a57-3f0e1d2c4b6a",
//!                              "token": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"}}}}
//! ```
//!
//! - `process`: the logical client that made the call. A process makes one call at a time.
//! - `op`: the call's number within its process; `(process, op)` is unique in a history.
//! - `invoked_ns`, `completed_ns`: nanoseconds since the start of the run, on **one monotonic
//!   clock** (a `std::time::Instant` taken once when the run starts, shared by every recorder of
//!   the run), read just before the request is sent and just after its answer (or failure) is
//!   in. Monotonic, not wall-clock: the checker orders calls by these times ("A completed before B
//!   was invoked"), and an NTP step on the test machine would reorder them. Nanoseconds because
//!   that is what `Instant` gives; a `u64` of them lasts 584 years. Nothing is compared with the
//!   server's or the database's clocks. Consequence: all recorders of one history run in one
//!   process (which the chaos tests do: many client tasks, one recorder).
//! - `call`: what was asked, `{"<rpc>": <inputs>}`:
//!   - `{"issue": {"subject": "s1", "client_id": "chaos"}}`
//!   - `{"rotate": {"token": "<token id>"}}`
//!   - `{"replay": {"token": "<token id>"}}`: a Rotate made on purpose with a refresh token the
//!     client knows to be spent (to test reuse detection). Judged exactly like `rotate`; the
//!     label is for the person reading the history.
//!   - `{"revoke": {"family": "<family id>"}}`, `{"revoke": {"subject": "s1"}}`,
//!     `{"revoke": {"token": {"refresh_token": "<token id>"}}}`,
//!     `{"revoke": {"token": {"access_token": {"family": "<family id>", "jti": "…"}}}}`
//!   - `{"introspect": {"refresh_token": "<token id>"}}`,
//!     `{"introspect": {"access_token": {"family": "<family id>", "jti": "…"}}}`
//! - `outcome`: how it ended, one of
//!   - `{"ok": <answer>}`: ratchet answered OK. The answer fits the call: `{"pair": {"family":
//!     …, "token": …}}` for issue, rotate and replay (the family id and the *new* refresh
//!     token's id), `{"revoked": 1}` for revoke (`RevokeResponse.families_revoked`),
//!     `{"introspected": {"active": true, "family": "<family id>"}}` for introspect (`family` is
//!     null when inactive).
//!   - `{"failed": {"code": "UNAUTHENTICATED", "reason": "TOKEN_REUSED"}}`: a *definite*
//!     failure, an answer ratchet itself sent that says what did or did not happen (see
//!     [`Failure`]). `reason` is the `google.rpc.ErrorInfo` reason, omitted when there is none;
//!     an optional `message` is kept for the reader.
//!   - `{"unknown": {"cause": "outcome_unknown"}}`: the client cannot know whether the call took
//!     effect (see [`Unknown`]); optional `code` and `message` for the reader.
//!
//! Identifiers are opaque to the checker and only compared, so the recorder and the store dump
//! must spell them the same way:
//! - a **token id** is the lowercase hex of the SHA-256 that ratchet stores for a refresh token
//!   (`refresh_tokens.hash`): SHA-256 of the token's 32 secret bytes, i.e. of the base64url
//!   (no padding) text after the `rt_` prefix, decoded. The checker never sees a plaintext token,
//!   so a history can be attached to a bug report.
//! - a **family id** is the UUID as ratchet prints it (`TokenPair.family_id`: lowercase,
//!   hyphenated), which is also how PostgreSQL prints a `uuid`.
//!
//! Only the RPCs that change or reveal token state are recorded; ListSessions, GetJwks and health
//! checks are not.

use std::fmt;
use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};

/// A refresh token, by the lowercase hex of the SHA-256 ratchet stores for it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenId(pub String);

/// A family (one login session), by its UUID as ratchet prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FamilyId(pub String);

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for FamilyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for TokenId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

impl From<&str> for FamilyId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

/// One operation: a call, its outcome, and when it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Op {
    pub process: u64,
    pub op: u64,
    pub invoked_ns: u64,
    pub completed_ns: u64,
    pub call: Call,
    pub outcome: Outcome,
}

/// What was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Call {
    Issue {
        subject: String,
        client_id: String,
    },
    Rotate {
        token: TokenId,
    },
    /// A Rotate with a token known to be spent; judged like [`Call::Rotate`].
    Replay {
        token: TokenId,
    },
    Revoke(RevokeTarget),
    Introspect(TokenRef),
}

/// What a Revoke names (`RevokeRequest.target`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RevokeTarget {
    Family(FamilyId),
    /// Every live family of the subject, whatever its client.
    Subject(String),
    Token(TokenRef),
}

/// A token presented to Revoke or Introspect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenRef {
    RefreshToken(TokenId),
    /// An access token, by the family it names (`sid`) and its `jti`; the checker uses only the
    /// family.
    AccessToken {
        family: FamilyId,
        jti: String,
    },
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    Ok(Answer),
    Failed(Failure),
    Unknown(Unknown),
}

/// An OK answer; which one depends on the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Answer {
    /// Issue, Rotate, Replay: the family and the new refresh token.
    Pair { family: FamilyId, token: TokenId },
    /// Revoke: how many families this call revoked.
    Revoked(u32),
    /// Introspect.
    Introspected {
        active: bool,
        #[serde(default)]
        family: Option<FamilyId>,
    },
}

/// A definite failure: an answer ratchet sent that says what happened.
///
/// Only these codes are definite, each meaning *nothing was done* except where noted:
/// `INVALID_ARGUMENT`, `PERMISSION_DENIED`, `RESOURCE_EXHAUSTED`, `UNAVAILABLE` (README: "database
/// unreachable or overloaded; **nothing happened**"; but a Revoke by subject works in batches
/// that each commit, so after UNAVAILABLE some of the subject's families may be revoked), and
/// `UNAUTHENTICATED`, whose reason says what ratchet saw: `TOKEN_INVALID` (no such token),
/// `TOKEN_EXPIRED`, `TOKEN_REVOKED` (the family was revoked and the token unspent),
/// `TOKEN_REUSED` (the token was already spent, and the family is revoked by the time of this
/// answer), `CALLER_UNKNOWN`. Any other code is not a definite failure and must be recorded as
/// [`Unknown`]; the checker reports a `failed` with another code as a malformed history.
///
/// **The recorder must not take every `UNAVAILABLE` for ratchet's.** tonic's client also reports
/// a broken connection (reset, closed, refused) as `UNAVAILABLE`, and a proxy in between answers
/// `UNAVAILABLE` for a reset upstream: the request may have reached ratchet and run. Only an
/// `UNAVAILABLE` that ratchet sent (its message starts "storage temporarily unavailable"; tonic's
/// own carry the transport error as their `source()`) is a `failed`; the others are
/// `{"unknown": {"cause": "transport"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    pub code: Code,
    /// `google.rpc.ErrorInfo.reason` (domain `ratchet`), when the status carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// An outcome the client cannot know: the call may have taken effect or not, and if it did, the
/// effect may land *after* the client gave up (ratchet carries a call through when its caller
/// hangs up, and a commit waiting on a synchronous standby becomes visible when that standby is
/// promoted). The checker therefore lets an unknown call take effect at any time after its
/// invocation, or never.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unknown {
    pub cause: UnknownCause,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why the outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownCause {
    /// `DEADLINE_EXCEEDED` with ErrorInfo reason `OUTCOME_UNKNOWN`. README: "a write was sent,
    /// its answer lost, and the database stayed unreachable while ratchet tried to learn the
    /// outcome: it may or may not have happened".
    OutcomeUnknown,
    /// `DEADLINE_EXCEEDED` without that reason: the client's own deadline expired (ratchet still
    /// completes the call).
    DeadlineExceeded,
    /// The connection was cut, reset or refused, or the client library or a proxy reported
    /// `UNAVAILABLE`/`UNKNOWN` on its own (see [`Failure`]).
    Transport,
    /// `CANCELLED`: the client gave up.
    Cancelled,
    /// `INTERNAL`: a bug on the server, which may have struck after the write.
    Internal,
    /// Anything else; put the code in `code`.
    Other,
}

/// The gRPC status codes, spelled as in the gRPC spec (`grpc/doc/statuscodes.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    /// The name the gRPC spec gives it (`UNAVAILABLE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancelled => "CANCELLED",
            Self::Unknown => "UNKNOWN",
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::NotFound => "NOT_FOUND",
            Self::AlreadyExists => "ALREADY_EXISTS",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Self::FailedPrecondition => "FAILED_PRECONDITION",
            Self::Aborted => "ABORTED",
            Self::OutOfRange => "OUT_OF_RANGE",
            Self::Unimplemented => "UNIMPLEMENTED",
            Self::Internal => "INTERNAL",
            Self::Unavailable => "UNAVAILABLE",
            Self::DataLoss => "DATA_LOSS",
            Self::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The code for gRPC's numeric value (tonic's `Code as i32`); `None` for 0 (OK) and values
    /// outside 1..=16.
    pub fn from_i32(value: i32) -> Option<Self> {
        Some(match value {
            1 => Self::Cancelled,
            2 => Self::Unknown,
            3 => Self::InvalidArgument,
            4 => Self::DeadlineExceeded,
            5 => Self::NotFound,
            6 => Self::AlreadyExists,
            7 => Self::PermissionDenied,
            8 => Self::ResourceExhausted,
            9 => Self::FailedPrecondition,
            10 => Self::Aborted,
            11 => Self::OutOfRange,
            12 => Self::Unimplemented,
            13 => Self::Internal,
            14 => Self::Unavailable,
            15 => Self::DataLoss,
            16 => Self::Unauthenticated,
            _ => return None,
        })
    }
}

/// Why a history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read the history")]
    Io(#[from] io::Error),
    #[error("history line {line}: {source}")]
    Line {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

/// Reads a history: one [`Op`] per line, in any order (the checker orders them by time); blank
/// lines are skipped.
///
/// # Errors
/// [`ReadError::Io`] when reading fails, [`ReadError::Line`] (with its 1-based number) for a
/// line that is not an [`Op`].
pub fn read_history(input: impl BufRead) -> Result<Vec<Op>, ReadError> {
    let mut ops = Vec::new();
    for (index, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line).map_err(|source| ReadError::Line {
            line: index + 1,
            source,
        })?;
        ops.push(op);
    }
    Ok(ops)
}

/// Writes one operation as one line. A recorder shared by many client tasks calls this under
/// its lock as each call completes.
///
/// # Errors
/// Whatever writing to `output` returns.
pub fn write_op(mut output: impl Write, op: &Op) -> io::Result<()> {
    serde_json::to_writer(&mut output, op)?;
    output.write_all(b"\n")
}

/// Writes a whole history, one line per operation.
///
/// # Errors
/// Whatever writing to `output` returns.
pub fn write_history(mut output: impl Write, ops: &[Op]) -> io::Result<()> {
    for op in ops {
        write_op(&mut output, op)?;
    }
    output.flush()
}

impl Op {
    /// The op as its history line, for reports.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|error| format!("<op {}/{}: {error}>", self.process, self.op))
    }

    /// The refresh token a Rotate or Replay presents.
    pub fn presented(&self) -> Option<&TokenId> {
        match &self.call {
            Call::Rotate { token } | Call::Replay { token } => Some(token),
            _ => None,
        }
    }
}
