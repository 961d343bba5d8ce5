//! How ended families are removed: the retention, the batch size, and (for `serve`) how often the
//! background pass runs and how much of the idle sweep each pass does.

use std::time::Duration;

use super::bounds::{AUDIT_RETENTION, GC_BATCH, GC_INTERVAL, GC_RETENTION};
use super::problems::Problems;
use crate::cli::CleanupArgs;
use crate::issuer::cleanup::CleanupSettings;

/// Idle-sweep windows per background cleanup pass: 50 windows of --gc-batch (1000) families a
/// minute by default, so a table of a million families is swept in 20 minutes, at a few
/// milliseconds of database time per window.
const SWEEP_WINDOWS: u32 = 50;
/// Pause between cleanup batches: leaves the database to the requests.
const CLEANUP_PAUSE: Duration = Duration::from_millis(10);

/// Cleanup as the background pass runs it: a slice of the idle sweep per pass.
pub(super) fn collect(args: &CleanupArgs, problems: &mut Problems) -> CleanupSettings {
    CleanupSettings {
        retention: problems.time_duration("gc-retention", &args.gc_retention, &GC_RETENTION),
        audit_retention: problems.time_duration("audit-retention", &args.audit_retention, &AUDIT_RETENTION),
        batch: problems.count("gc-batch", args.gc_batch, &GC_BATCH),
        sweep_windows: Some(SWEEP_WINDOWS),
        pause: CLEANUP_PAUSE,
    }
}

/// `--gc-interval`; zero: no background cleanup.
pub(super) fn interval(value: &str, problems: &mut Problems) -> Duration {
    problems.duration("gc-interval", value, &GC_INTERVAL)
}
