//! When to read a file again: on SIGHUP, every interval, until the server stops. The key
//! directory, the TLS files and the caller policy are all re-read this way, each by a task of its
//! own that keeps what it has when a reading fails.

use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

/// The moments to reload something (see the module docs).
pub struct ReloadTrigger {
    what: &'static str,
    interval: Duration,
    hangup: Option<Signal>,
    stopped: watch::Receiver<bool>,
}

impl ReloadTrigger {
    /// Triggers for reloading `what` (named in logs) every `interval` and on SIGHUP, until
    /// `stopped` changes.
    pub fn new(what: &'static str, interval: Duration, stopped: watch::Receiver<bool>) -> Self {
        let hangup = match signal(SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; {what} is re-read every interval only");
                None
            }
        };
        Self {
            what,
            interval,
            hangup,
            stopped,
        }
    }

    /// Waits for the next moment to reload; `false` once the server stops.
    pub async fn next(&mut self) -> bool {
        let hangup = async {
            match self.hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(self.interval) => true,
            _ = hangup => {
                tracing::info!("SIGHUP: reading {} again", self.what);
                true
            }
            _ = self.stopped.changed() => false,
        }
    }
}
