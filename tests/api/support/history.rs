//! What the clients of a fault test were told (Issue, Rotate, replay, Revoke, Introspect),
//! recorded for `ratchet-history`'s checker (issue 19), and the store's final state dumped for
//! it: the checker, not hand-written asserts, then decides whether the two fit (no refresh token
//! accepted twice, every acknowledged rotation durable, no branch, no effect from a definite
//! failure, no Introspect saying active after a revocation). A history that does not fit is kept
//! as JSON lines, one call each, for `ratchet_history::check_files`.
//!
//! A call's outcome is recorded as the checker's docs say a client must read it: only an
//! `UNAVAILABLE` that ratchet itself sent ("storage temporarily unavailable") is a definite
//! failure; one from the transport, a cut connection, a client deadline or `INTERNAL` is
//! unknown.

use std::sync::Mutex;
use std::time::Instant;

use ratchet::grpc::pb::{IntrospectResponse, RevokeResponse, TokenPair};
use ratchet::grpc::status::reason;
use ratchet::issuer::refresh_token::RefreshToken;
use ratchet_history::history::{
    Answer, Call, Code, Failure, FamilyId, Outcome, RevokeTarget, TokenId, TokenRef, Unknown, UnknownCause,
};
use ratchet_history::{FinalState, Op, Options, Report, write_history};
use sqlx::PgPool;
use tonic::Status;
use tonic_types::StatusExt as _;

/// The start of ratchet's own UNAVAILABLE message: the only UNAVAILABLE that says nothing happened.
const RATCHET_UNAVAILABLE: &str = "storage temporarily unavailable";

/// The store's families and refresh tokens as the checker reads them (`ratchet_history::state`).
const DUMP: &str = "select json_build_object('families', coalesce(json_agg(json_build_object(
    'id', f.id, 'subject', f.subject, 'client_id', f.client_id, 'revoked', f.revoked_reason,
    'tokens', (select coalesce(json_agg(json_build_object(
        'id', encode(t.hash, 'hex'), 'parent', encode(t.parent_hash, 'hex'),
        'spent', t.spent_at is not null, 'successor', encode(t.successor_hash, 'hex'))), '[]')
      from refresh_tokens t where t.family_id = f.id))), '[]'))
from families f";

/// Every call the test's clients made, with its outcome and times.
pub struct History {
    started: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Default for History {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }
}

impl History {
    /// Records an Issue for `subject` (client id empty, as `support::issue` sends it), invoked at
    /// `invoked`.
    pub fn issue(&self, invoked: Instant, subject: &str, result: &Result<TokenPair, Status>) {
        let call = Call::Issue {
            subject: subject.to_owned(),
            client_id: String::new(),
        };
        self.record(invoked, call, result);
    }

    /// Records a Rotate of `token`, invoked at `invoked`.
    pub fn rotate(&self, invoked: Instant, token: &str, result: &Result<TokenPair, Status>) {
        self.record(invoked, Call::Rotate { token: token_id(token) }, result);
    }

    /// Records a Rotate of `token` known to be spent (a replay), invoked at `invoked`.
    pub fn replay(&self, invoked: Instant, token: &str, result: &Result<TokenPair, Status>) {
        self.record(invoked, Call::Replay { token: token_id(token) }, result);
    }

    /// Records a Revoke of the family `family`, invoked at `invoked`.
    pub fn revoke_family(&self, invoked: Instant, family: &str, result: &Result<RevokeResponse, Status>) {
        let outcome = match result {
            Ok(answer) => Outcome::Ok(Answer::Revoked(answer.families_revoked)),
            Err(status) => outcome_of(status),
        };
        let call = Call::Revoke(RevokeTarget::Family(FamilyId(family.to_owned())));
        self.push(invoked, call, outcome);
    }

    /// Records an Introspect of the refresh token `token`, invoked at `invoked`.
    pub fn introspect(&self, invoked: Instant, token: &str, result: &Result<IntrospectResponse, Status>) {
        let outcome = match result {
            Ok(answer) => Outcome::Ok(Answer::Introspected {
                active: answer.active,
                family: (!answer.family_id.is_empty()).then(|| FamilyId(answer.family_id.clone())),
            }),
            Err(status) => outcome_of(status),
        };
        let call = Call::Introspect(TokenRef::RefreshToken(token_id(token)));
        self.push(invoked, call, outcome);
    }

    fn record(&self, invoked: Instant, call: Call, result: &Result<TokenPair, Status>) {
        let outcome = match result {
            Ok(pair) => Outcome::Ok(Answer::Pair {
                family: FamilyId(pair.family_id.clone()),
                token: token_id(&pair.refresh_token),
            }),
            Err(status) => outcome_of(status),
        };
        self.push(invoked, call, outcome);
    }

    /// One test process, whose calls are told apart by their number.
    fn push(&self, invoked: Instant, call: Call, outcome: Outcome) {
        let mut ops = self.ops.lock().unwrap();
        let op = Op {
            process: 0,
            op: ops.len() as u64,
            invoked_ns: self.nanos(invoked),
            completed_ns: self.nanos(Instant::now()),
            call,
            outcome,
        };
        ops.push(op);
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Dumps `db`'s families and tokens and checks the history against them; panics with the
    /// checker's report (the first violating calls) when they do not fit.
    /// The whole history is then kept as JSON lines, one call each, in a file of the temporary
    /// directory named in the message, for `ratchet_history::check_files` or a person to read.
    pub async fn check(&self, db: &PgPool, options: &Options) -> Report {
        let report = self.report(db, options).await;
        if !report.is_ok() {
            let path = std::env::temp_dir().join(format!("ratchet-history-{}.jsonl", uuid::Uuid::new_v4().simple()));
            let kept = std::fs::File::create(&path)
                .and_then(|file| write_history(std::io::BufWriter::new(file), &self.ops.lock().unwrap()));
            panic!(
                "the history does not fit the store (history: {}, {kept:?}):\n{report}",
                path.display()
            );
        }
        report
    }

    /// The checker's verdict on the history against `db`'s families and tokens, whatever it is.
    pub async fn report(&self, db: &PgPool, options: &Options) -> Report {
        let dump: serde_json::Value = sqlx::query_scalar(DUMP).fetch_one(db).await.unwrap();
        let state: FinalState = serde_json::from_value(dump).unwrap();
        let ops = self.ops.lock().unwrap().clone();
        ratchet_history::check(&ops, &state, options)
    }
}

/// The checker's token id: the lowercase hex of the SHA-256 ratchet stores.
fn token_id(token: &str) -> TokenId {
    let hash = RefreshToken::parse(token).unwrap().hash().0;
    TokenId(hash.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// How a client must read `status` (see the module docs).
fn outcome_of(status: &Status) -> Outcome {
    let reason = status.get_details_error_info().map(|info| info.reason);
    let code = Code::from_i32(status.code() as i32).unwrap_or(Code::Unknown);
    let failed = || {
        Outcome::Failed(Failure {
            code,
            reason: reason.clone(),
            message: Some(status.message().to_owned()),
        })
    };
    let unknown = |cause| {
        Outcome::Unknown(Unknown {
            cause,
            code: Some(code),
            message: Some(status.message().to_owned()),
        })
    };
    match status.code() {
        tonic::Code::Unavailable if status.message().starts_with(RATCHET_UNAVAILABLE) => failed(),
        tonic::Code::Unavailable | tonic::Code::Unknown => unknown(UnknownCause::Transport),
        tonic::Code::InvalidArgument
        | tonic::Code::PermissionDenied
        | tonic::Code::ResourceExhausted
        | tonic::Code::Unauthenticated => failed(),
        tonic::Code::DeadlineExceeded if reason.as_deref() == Some(reason::OUTCOME_UNKNOWN) => {
            unknown(UnknownCause::OutcomeUnknown)
        }
        tonic::Code::DeadlineExceeded => unknown(UnknownCause::DeadlineExceeded),
        tonic::Code::Cancelled => unknown(UnknownCause::Cancelled),
        tonic::Code::Internal => unknown(UnknownCause::Internal),
        _ => unknown(UnknownCause::Other),
    }
}
