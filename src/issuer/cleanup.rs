//! Keeping storage bounded: delete families that ended a while ago, with their refresh tokens,
//! clear seals whose grace window is over, and delete audit events past their retention (oldest
//! first, a batch per statement).
//!
//! A family ends when it expires (idle or absolute) or is revoked; it is kept for a retention
//! period after that, so that a token of a recently ended family is still answered with the
//! right reason (TOKEN_REUSED, TOKEN_REVOKED, TOKEN_EXPIRED) rather than TOKEN_INVALID. Spent
//! tokens of *live* families stay: presenting one is how theft is detected.
//!
//! Revoked families are found through an index on the revocation time. Expiry (idle, or the
//! absolute end, whichever comes first) has no index: the column moves with every rotation, and
//! an index on it would cost every Rotate (see the migration). So a *sweep* walks the families a
//! window at a time, picking up where the last pass stopped: every pass looks at
//! `sweep_windows` windows, and a full sweep of a large table takes several passes (50,000
//! families a minute by default).
//!
//! Work goes in small batches, each its own short statement, so that nothing Rotate waits on is
//! held for long. [`collect_garbage`] is one pass; `serve` runs one every interval in the
//! background, `ratchet gc` one with an unbounded sweep by hand. It works on the store alone
//! (no keys needed).
//!
//! Servers sharing a database take turns: a pass first takes the store's sweep lock
//! ([`FamilyStore::sweep_lock`]), and a server that finds another holding it skips its round
//! (nothing is lost: the one holding it is doing the same work). Running side by side would be
//! safe, every batch being idempotent, but it would double the load on the database for nothing.

use std::time::Duration as StdDuration;

use time::{Duration, OffsetDateTime};

use super::Error;
use crate::domain::FamilyId;
use crate::store::FamilyStore;
use crate::telemetry::metrics::{self, Removed};

/// The longest reuse grace window the configuration allows. Seals older than this are cleared
/// whatever the configured window: a seal is only ever opened within the window, so this is
/// always safe, also for `ratchet gc`, which does not know the server's window.
pub const MAX_REUSE_GRACE: Duration = Duration::minutes(10);

/// How cleanup runs.
#[derive(Debug, Clone, Copy)]
pub struct CleanupSettings {
    /// How long an ended family is kept.
    pub retention: Duration,
    /// How long an audit event is kept (`--audit-retention`).
    pub audit_retention: Duration,
    /// Rows per statement, and families per sweep window.
    pub batch: u32,
    /// Sweep windows per pass; `None`: sweep the whole table.
    pub sweep_windows: Option<u32>,
    /// Pause between batches, leaving the database to the requests.
    pub pause: StdDuration,
}

/// Where the idle sweep stands between passes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sweep {
    after: Option<FamilyId>,
}

/// What one pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub families: u64,
    pub tokens: u64,
    pub seals: u64,
    /// Audit events past their retention.
    pub events: u64,
    /// Another server held the sweep lock, so this pass did nothing.
    pub skipped: bool,
}

/// One cleanup pass at `now`, continuing the idle sweep from `sweep`; skipped (and reported
/// so) while another server sharing the store runs one.
///
/// # Errors
/// [`Error::Unavailable`] (what was removed before stays removed; the next pass goes on).
#[tracing::instrument(name = "cleanup", skip_all)]
pub async fn collect_garbage<S: FamilyStore>(
    store: &S,
    now: OffsetDateTime,
    settings: &CleanupSettings,
    sweep: &mut Sweep,
) -> Result<CleanupReport, Error> {
    let out_of_range = || Error::Internal("time arithmetic out of range".into());
    let ended_before = now.checked_sub(settings.retention).ok_or_else(out_of_range)?;
    let sealed_before = now.checked_sub(MAX_REUSE_GRACE).ok_or_else(out_of_range)?;
    let recorded_before = now.checked_sub(settings.audit_retention).ok_or_else(out_of_range)?;
    let Some(_turn) = store.sweep_lock().await? else {
        tracing::debug!("another server is cleaning up; skipping this pass");
        return Ok(CleanupReport {
            skipped: true,
            ..CleanupReport::default()
        });
    };
    let mut report = CleanupReport::default();
    let mut purge = async |families: &[FamilyId]| -> Result<(), Error> {
        let purged = store.purge_families(families, settings.batch).await?;
        // Per batch, as each commits: a pass that fails later has still removed these.
        metrics::cleaned(Removed::Families, purged.families);
        metrics::cleaned(Removed::Tokens, purged.tokens);
        report.families += purged.families;
        report.tokens += purged.tokens;
        Ok(())
    };
    loop {
        let revoked = store.revoked_families(ended_before, settings.batch).await?;
        if revoked.is_empty() {
            break;
        }
        purge(&revoked).await?;
        tokio::time::sleep(settings.pause).await;
    }
    let mut windows = 0;
    while settings.sweep_windows.is_none_or(|most| windows < most) {
        windows += 1;
        let window = store.idle_window(sweep.after, settings.batch, ended_before).await?;
        purge(&window.ended).await?;
        sweep.after = window.last;
        if sweep.after.is_none() {
            break; // the end of the table: the next pass starts over
        }
        tokio::time::sleep(settings.pause).await;
    }
    loop {
        let cleared = store.clear_seals(sealed_before, settings.batch).await?;
        metrics::cleaned(Removed::Seals, cleared);
        report.seals += cleared;
        if cleared < u64::from(settings.batch) {
            break;
        }
        tokio::time::sleep(settings.pause).await;
    }
    loop {
        let deleted = store.purge_events(recorded_before, settings.batch).await?;
        metrics::cleaned(Removed::Events, deleted);
        report.events += deleted;
        if deleted < u64::from(settings.batch) {
            break;
        }
        tokio::time::sleep(settings.pause).await;
    }
    if report != CleanupReport::default() {
        tracing::info!(
            families = report.families,
            tokens = report.tokens,
            seals = report.seals,
            events = report.events,
            "cleanup removed ended families, expired seals and audit events past their retention"
        );
    }
    Ok(report)
}
