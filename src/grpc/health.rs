//! The gRPC health service (`grpc.health.v1.Health`), tonic-health's, with its `Watch` streams
//! counted.
//!
//! Health needs no credentials (probes and load balancers call it) and is never shed, and a
//! `Watch` is a stream that lasts as long as its caller likes, keeping its connection busy (never
//! idle). Uncounted, anyone who can connect could open them without end: each holds a task, a
//! stream and a connection open (issue 20). So at most `--max-health-watches` are open at once;
//! one more is refused RESOURCE_EXHAUSTED, and a slot is free again as soon as a stream ends
//! (the caller cancels it or its connection closes). `Check` is not limited: it answers at once.
//!
//! On shutdown a `Watch` carries NOT_SERVING, then ends with UNAVAILABLE once the server drains
//! ([`Stage::Draining`]): a watcher learns at once, and its stream, which would otherwise last
//! until the grace is over, does not hold up the drain (or the rolling update behind it).
//!
//! Left out: per-caller counts (health callers are anonymous by design).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService, WatchStream};

use crate::shutdown::{Stage, StageWatch};

/// The health service answering from `reporter`, with at most `max_watches` `Watch` streams open,
/// each ended once `stage` reaches draining.
pub fn service(reporter: HealthReporter, max_watches: usize, stage: StageWatch) -> HealthServer<CappedHealth> {
    HealthServer::new(CappedHealth {
        inner: HealthService::from_health_reporter(reporter),
        watches: Arc::new(Semaphore::new(max_watches)),
        max_watches,
        full: AtomicBool::new(false),
        stage,
    })
}

/// See the module docs.
#[derive(Debug)]
pub struct CappedHealth {
    inner: HealthService,
    watches: Arc<Semaphore>,
    max_watches: usize,
    /// Whether the refusals since the cap was last reached were logged: one line per time it is
    /// reached, not one per refusal (every refusal is an answer the caller sees).
    full: AtomicBool,
    stage: StageWatch,
}

#[tonic::async_trait]
impl Health for CappedHealth {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = Counted;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Counted>, Status> {
        let Ok(permit) = self.watches.clone().try_acquire_owned() else {
            if !self.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(target: "security", limit = self.max_watches,
                    "health Watch streams at their cap: refusing more until one ends");
            }
            return Err(Status::resource_exhausted(
                "too many health Watch streams open; retry after a pause",
            ));
        };
        self.full.store(false, Ordering::Relaxed);
        let stream = self.inner.watch(request).await?.into_inner();
        Ok(Response::new(Counted {
            inner: stream,
            draining: Some(Box::pin(self.stage.clone().reached(Stage::Draining))),
            ended: false,
            _permit: permit,
        }))
    }
}

/// A `Watch` stream holding its slot until it is dropped, and ending once the server drains.
pub struct Counted {
    inner: WatchStream,
    /// Resolves once the server drains; `None` once it has.
    draining: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Whether the stream has ended for the drain.
    ended: bool,
    _permit: OwnedSemaphorePermit,
}

impl Stream for Counted {
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(draining) = &mut this.draining
            && draining.as_mut().poll(cx).is_ready()
        {
            this.draining = None;
        }
        // Status changes first: NOT_SERVING is set before the drain starts, so the stream
        // carries it before it ends.
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Pending if this.draining.is_none() => {
                this.ended = true;
                Poll::Ready(Some(Err(Status::unavailable(
                    "server shutting down: watch another replica",
                ))))
            }
            other => other,
        }
    }
}
