//! Keeping storage bounded: delete families that ended a while ago, with their refresh tokens,
//! and clear seals whose grace window is over.
//!
//! A family ends when it expires (idle or absolute) or is revoked; it is kept for a retention
//! period after that, so that a token of a recently ended family is still answered with the
//! right reason (TOKEN_REUSED, TOKEN_REVOKED, TOKEN_EXPIRED) rather than TOKEN_INVALID. Spent
//! tokens of *live* families stay: presenting one is how theft is detected.
//!
//! Work goes in small batches, each its own short statement, so that nothing Rotate waits on is
//! held for long. [`collect_garbage`] is one full pass; `serve` runs one every interval in the
//! background, `ratchet gc` once by hand. It works on the store alone (no keys needed).

use std::time::Duration as StdDuration;

use time::{Duration, OffsetDateTime};

use super::Error;
use crate::store::FamilyStore;

/// The longest reuse grace window the configuration allows. Seals older than this are cleared
/// whatever the configured window: a seal is only ever opened within the window, so this is
/// always safe, also for `ratchet gc`, which does not know the server's window.
pub const MAX_REUSE_GRACE: Duration = Duration::minutes(10);

/// How cleanup runs.
#[derive(Debug, Clone, Copy)]
pub struct CleanupSettings {
    /// How long an ended family is kept.
    pub retention: Duration,
    /// Rows per statement.
    pub batch: u32,
    /// Pause between batches, leaving the database to the requests.
    pub pause: StdDuration,
}

/// What one pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub families: u64,
    pub tokens: u64,
    pub seals: u64,
}

/// One full cleanup pass at `now`.
///
/// # Errors
/// [`Error::Unavailable`] (what was removed before stays removed; the next pass goes on).
#[tracing::instrument(name = "cleanup", skip_all)]
pub async fn collect_garbage<S: FamilyStore>(
    store: &S,
    now: OffsetDateTime,
    settings: &CleanupSettings,
) -> Result<CleanupReport, Error> {
    let out_of_range = || Error::Internal("time arithmetic out of range".into());
    let ended_before = now.checked_sub(settings.retention).ok_or_else(out_of_range)?;
    let sealed_before = now.checked_sub(MAX_REUSE_GRACE).ok_or_else(out_of_range)?;
    let mut report = CleanupReport::default();
    loop {
        let purged = store.purge_ended(ended_before, settings.batch).await?;
        report.families += purged.families;
        report.tokens += purged.tokens;
        if purged.families == 0 && purged.tokens == 0 {
            break;
        }
        tokio::time::sleep(settings.pause).await;
    }
    loop {
        let cleared = store.clear_seals(sealed_before, settings.batch).await?;
        report.seals += cleared;
        if cleared < u64::from(settings.batch) {
            break;
        }
        tokio::time::sleep(settings.pause).await;
    }
    if report != CleanupReport::default() {
        tracing::info!(
            families = report.families,
            tokens = report.tokens,
            seals = report.seals,
            "cleanup removed ended families and expired seals"
        );
    }
    Ok(report)
}
