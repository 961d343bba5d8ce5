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
//! Left out: per-caller counts (health callers are anonymous by design).

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

/// The health service answering from `reporter`, with at most `max_watches` `Watch` streams open.
pub fn service(reporter: HealthReporter, max_watches: usize) -> HealthServer<CappedHealth> {
    HealthServer::new(CappedHealth {
        inner: HealthService::from_health_reporter(reporter),
        watches: Arc::new(Semaphore::new(max_watches)),
        max_watches,
        full: AtomicBool::new(false),
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
            _permit: permit,
        }))
    }
}

/// A `Watch` stream holding its slot until it is dropped.
pub struct Counted {
    inner: WatchStream,
    _permit: OwnedSemaphorePermit,
}

impl Stream for Counted {
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}
