//! A history checker for ratchet (issue 19): instead of hand-written asserts after a fault, a
//! test records every call its clients made and dumps the store when it is over, and [`check()`]
//! decides whether what the clients were told and what the store holds fit together.
//!
//! # Layout
//! - [`history`]: the recorded calls, one JSON line each ([`Op`]), with [`read_history`] and
//!   [`write_op`]. Its docs give the exact format.
//! - [`state`]: the store's families and refresh tokens at the end ([`FinalState`]), with the SQL
//!   that dumps it from PostgreSQL.
//! - [`check()`] with [`Options`]; [`Report`] lists the [`Violation`]s (`Display` prints each
//!   with the calls involved, in time order, as their history lines).
//! - [`check_files`]: the two files in, a verdict out.
//!
//! # What an outcome means
//! The checker takes ratchet at its word (README, "Calling it"):
//! - **OK**: it happened, and is durable: an acknowledged rotation stays in the store across a
//!   failover (with synchronous replication; issue 19 says what asynchronous replication loses).
//! - **`UNAVAILABLE`**: "database unreachable or overloaded; **nothing happened**: retry with
//!   backoff" (README); token.proto adds the one exception, Revoke by subject, which commits in
//!   batches, so after UNAVAILABLE some of the subject's families may be revoked. The same holds
//!   for the other definite failures: `INVALID_ARGUMENT`, `PERMISSION_DENIED`,
//!   `RESOURCE_EXHAUSTED` ("nothing was done") and `UNAUTHENTICATED` (the token refused; for
//!   `TOKEN_REUSED` the family is revoked by the time of the answer).
//! - **`DEADLINE_EXCEEDED` / `OUTCOME_UNKNOWN`**: "a write was sent, its answer lost, and the
//!   database stayed unreachable while ratchet tried to learn the outcome: it may or may not have
//!   happened" (README). So may a call whose connection was cut, whose client deadline expired or
//!   that was cancelled (ratchet carries a call through when its caller hangs up), or that
//!   failed `INTERNAL`. The checker lets such a call take effect at any time after it was sent
//!   (a commit waiting on a synchronous standby becomes visible when the standby is promoted,
//!   after the client gave up), or never, and requires one of the two to fit everything else.
//!
//! # What is checked, per family
//! Each refresh token accepted at most once (a grace-window re-delivery returning the identical
//! pair is the same acceptance); every acknowledged write durable; every detected reuse
//! followed by the family's revocation; no effect from a definite failure (a spent token, a
//! family, a revocation must each be explained by a call that was OK or unknown); no branch, in
//! the final state (one chain per family) or in the history (two successors for one token);
//! unknown outcomes resolved consistently; optionally, no Introspect saying active after a
//! revocation completed. [`report::Kind`] lists each with its exact condition.
//!
//! # What it leaves out
//! Expiry (run with lifetimes longer than the run: `TOKEN_EXPIRED` is taken as doing nothing and
//! asked nothing of), the cleanup (dump before it runs: every acknowledged token must still be
//! there), ListSessions, access tokens beyond the family they name, and the grace window's length
//! (only whether there is one). It checks one history against one final state; it is not a
//! general linearizability checker, and does not search every order of concurrent calls: the
//! final state fixes what happened to each token, and each answer is checked against that.

pub mod history;
pub mod report;
pub mod state;

mod check;

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

pub use check::{Options, check};
pub use history::{Op, read_history, write_history, write_op};
pub use report::{Kind, Report, Violation};
pub use state::FinalState;

/// Reads a history (JSON lines) and a final state (JSON) from files and checks them.
///
/// # Errors
/// A message naming the file when one cannot be read or parsed, or the whole [`Report`] printed
/// when the check fails.
pub fn check_files(history: &Path, state: &Path, options: &Options) -> Result<Report, String> {
    let open = |path: &Path| File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()));
    let ops = read_history(BufReader::new(open(history)?)).map_err(|e| format!("{}: {e}", history.display()))?;
    let final_state =
        FinalState::read(BufReader::new(open(state)?)).map_err(|e| format!("{}: {e}", state.display()))?;
    let report = check(&ops, &final_state, options);
    if report.is_ok() {
        Ok(report)
    } else {
        Err(report.to_string())
    }
}
