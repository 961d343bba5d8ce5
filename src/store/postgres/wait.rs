//! Waiting at start for a PostgreSQL database that cannot be reached yet (`--db-wait`): in a
//! deployment the database often starts alongside ratchet, and exiting at the first refused
//! connection would only make the orchestrator restart us in a loop with less to log.
//!
//! Only "not reachable" is waited out: a refused or broken connection, a try that timed out, or
//! a server that says it is still starting up. Any other answer (bad password, missing database,
//! a certificate that does not verify, a pooler that drops our settings) means the database is there, and the step that follows
//! reports it as it always did. Not for SQLite: a file opens or it does not.

use std::time::Duration;

use sqlx::Connection as _;
use tokio::time::Instant;

use super::target::{PgTarget, tuned};

/// The first pause between tries; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Long enough not to flood the database's log while it starts, short enough that ratchet is up
/// within two seconds of the database.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// SQLSTATE `cannot_connect_now`: "the database system is starting up" (or shutting down, or in
/// recovery without hot standby): it answers, but only to say "later".
const CANNOT_CONNECT_NOW: &str = "57P03";

/// The database could not be reached within `--db-wait`. One line, without the URL's password.
#[derive(Debug, thiserror::Error)]
#[error("database not reachable within --db-wait ({waited}, tries: {tries}): {reason}")]
pub struct Unreachable {
    pub tries: u32,
    /// How long it kept trying, to the millisecond (`1s 3ms`).
    pub waited: String,
    /// Why the last try failed.
    pub reason: String,
}

/// Tries to connect to `target` until it answers or `target.wait` has passed, with a capped
/// backoff, logging each failed try at WARN. Returns as soon as the database answers anything,
/// even an error that is not about reachability (see the module docs).
///
/// # Errors
/// [`Unreachable`]: the last try failed and the wait is over.
pub async fn until_reachable(target: &PgTarget) -> Result<(), Unreachable> {
    let hosts = tuned(&target.hosts, &target.settings);
    let per_host = hosts.per_host(target.settings.timeout);
    let started = Instant::now();
    let deadline = started + target.wait;
    let mut backoff = FIRST_BACKOFF;
    let mut tries = 0;
    loop {
        tries += 1;
        // A try is bounded like any database operation: a host that drops packets would
        // otherwise hold it for the system's TCP timeout (minutes).
        let reason = match tokio::time::timeout(target.settings.timeout, hosts.connect(per_host)).await {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
                return Ok(());
            }
            Ok(Err(error)) if !is_unreachable(&error) => return Ok(()),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!(
                "no answer within {} (--db-timeout)",
                humantime::format_duration(target.settings.timeout)
            ),
        };
        let now = Instant::now();
        if now >= deadline {
            let waited =
                Duration::from_millis(u64::try_from(now.duration_since(started).as_millis()).unwrap_or(u64::MAX));
            tracing::warn!(database = %target.url, tries, %reason, "database not reachable; giving up (--db-wait)");
            return Err(Unreachable {
                tries,
                waited: humantime::format_duration(waited).to_string(),
                reason,
            });
        }
        let pause = backoff.min(deadline - now);
        tracing::warn!(
            database = %target.url,
            tries,
            %reason,
            retry_in = %humantime::format_duration(whole_millis(pause)),
            "database not reachable yet; retrying (--db-wait)"
        );
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Whether `error` says the database could not be reached (worth waiting out), rather than that
/// it answered.
fn is_unreachable(error: &sqlx::Error) -> bool {
    match error {
        // tokio-rustls reports a failed handshake (a certificate the CA did not sign, say) as
        // InvalidData: a configuration mistake that waiting will not fix. So is `Tls`.
        sqlx::Error::Io(error) => error.kind() != std::io::ErrorKind::InvalidData,
        sqlx::Error::Database(error) => error.code().as_deref() == Some(CANNOT_CONNECT_NOW),
        _ => false,
    }
}

/// `duration` without its sub-millisecond part, which would only clutter the log (`245ms 486us`).
fn whole_millis(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}
