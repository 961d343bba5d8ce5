//! SIGINT and SIGTERM mean the same thing: stop accepting, finish what is in flight, exit.
//!
//! [`signal`] is the request to stop; [`Stages`] tells the parts that act on it where the stop
//! has got to ([`Stage`]): the health service ends its `Watch` streams once draining (after they
//! carried NOT_SERVING), and the calls still in flight when the grace is over are answered and
//! cut (`grpc::cut`). Leaves out the order of the steps, which is `startup`'s.

use tokio::sync::watch;

/// Resolves at the first SIGINT or SIGTERM.
pub async fn signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT will stop the server");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested");
}

/// How far a stopping server has got, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Serving,
    /// Health says NOT_SERVING, the listener is closed, connections have their GOAWAY: calls in
    /// flight are finishing, within the grace.
    Draining,
    /// The grace is over: the calls still in flight are answered and cut.
    Cut,
}

/// The one place a server's [`Stage`] moves (forward only); see the module docs.
#[derive(Debug)]
pub struct Stages(watch::Sender<Stage>);

impl Default for Stages {
    fn default() -> Self {
        Self(watch::Sender::new(Stage::Serving))
    }
}

impl Stages {
    /// Moves to `stage`, unless already there or past it.
    pub fn enter(&self, stage: Stage) {
        self.0.send_if_modified(|current| {
            let later = stage > *current;
            if later {
                *current = stage;
            }
            later
        });
    }

    /// What a part that acts on the stop watches.
    pub fn watch(&self) -> StageWatch {
        StageWatch(self.0.subscribe())
    }
}

/// A receiver of the [`Stages`]: cheap to clone, one per call or stream that waits on it.
#[derive(Debug, Clone)]
pub struct StageWatch(watch::Receiver<Stage>);

impl StageWatch {
    /// A watch that stays [`Stage::Serving`] (tests and servers that never stop).
    pub fn serving() -> Self {
        Self(watch::Sender::new(Stage::Serving).subscribe())
    }

    /// Whether `stage` has been reached.
    pub fn has_reached(&self, stage: Stage) -> bool {
        *self.0.borrow() >= stage
    }

    /// Resolves once `stage` has been reached (at once if it has); never if the [`Stages`] are
    /// dropped before.
    pub async fn reached(mut self, stage: Stage) {
        if self.0.wait_for(|current| *current >= stage).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
