//! What one connection is doing ([`Activity`]): its requests in flight, and waiting until it has
//! been idle for a while. The data only: [`super::idle`] counts requests on it, [`super::accept`]
//! hands each connection one (in its `PeerInfo`), and [`super::serve`] waits on it.
//!
//! Its own module, below both `accept` and `idle`, because each of those needs it and `idle`
//! also reads `accept`'s `PeerInfo`: kept in `idle`, the two imported each other.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// What one connection is doing. Cloned into every request on it (through [`PeerInfo`](super::accept::PeerInfo), or
/// directly by `serve`'s HTTP listener).
#[derive(Debug, Clone)]
pub struct Activity(Arc<watch::Sender<Counts>>);

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    in_flight: usize,
    /// Requests ever started on the connection.
    started: u64,
}

impl Default for Activity {
    fn default() -> Self {
        Self(Arc::new(watch::channel(Counts::default()).0))
    }
}

impl Activity {
    /// A request starts; it is in flight until the guard is dropped.
    pub fn start(&self) -> InFlight {
        self.0.send_modify(|counts| {
            counts.in_flight += 1;
            counts.started += 1;
        });
        InFlight(self.clone())
    }

    /// Resolves once no request has been in flight for `timeout` without a break. A request that
    /// starts (and even ends) in the meantime starts the wait over.
    pub async fn idle(&self, timeout: Duration) {
        let mut counts = self.0.subscribe();
        loop {
            // The sender lives in `self`: the channel cannot close while we wait.
            if counts.wait_for(|counts| counts.in_flight == 0).await.is_err() {
                return std::future::pending().await;
            }
            tokio::select! {
                () = tokio::time::sleep(timeout) => return,
                changed = counts.changed() => if changed.is_err() {
                    return std::future::pending().await;
                },
            }
        }
    }

    /// Resolves after `timeout` if no request has started by then; never otherwise.
    pub async fn no_request_within(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
        if self.has_started() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether a request has ever started.
    pub fn has_started(&self) -> bool {
        self.0.borrow().started > 0
    }

    #[cfg(test)]
    pub(super) fn in_flight(&self) -> usize {
        self.0.borrow().in_flight
    }
}

/// One request in flight on its connection, until dropped.
#[derive(Debug)]
pub struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .0
            .send_modify(|counts| counts.in_flight = counts.in_flight.saturating_sub(1));
    }
}
