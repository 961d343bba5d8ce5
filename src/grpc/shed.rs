//! Load shedding: at most `--max-concurrent-requests` calls in flight across every connection;
//! one more is answered RESOURCE_EXHAUSTED at once (with a `retry-after` of one second), instead
//! of waiting in an unbounded queue that grows memory and latency for everyone until the
//! deadlines of all of them pass.
//!
//! Health checks are never shed: a probe that fails under load would have the orchestrator
//! restart a server that is merely busy, which makes the overload worse.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

/// Requests to this path prefix are never shed.
const HEALTH: &str = "/grpc.health.v1.Health/";

/// Bounds the calls in flight over the whole server; see the module docs.
#[derive(Debug, Clone)]
pub struct ShedLayer {
    permits: Arc<Semaphore>,
}

impl ShedLayer {
    /// At most `max` calls in flight.
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            permits: self.permits.clone(),
        }
    }
}

/// See [`ShedLayer`].
#[derive(Debug, Clone)]
pub struct Shed<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Shed<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let permit: Option<OwnedSemaphorePermit> = if request.uri().path().starts_with(HEALTH) {
            None
        } else {
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => return Box::pin(std::future::ready(Ok(overloaded()))),
            }
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            // Held until the handler has answered (for our unary calls, the whole work).
            drop(permit);
            answer
        })
    }
}

fn overloaded<B: Default>() -> http::Response<B> {
    crate::telemetry::metrics::shed(crate::telemetry::metrics::Shed::Concurrency);
    let mut response =
        Status::resource_exhausted("server overloaded: too many calls in flight; retry after a pause").into_http();
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower_service::Service as _;

    use super::*;

    /// A service that answers only when `release` is notified.
    #[derive(Clone)]
    struct Waits(Arc<tokio::sync::Notify>);

    impl Service<http::Request<()>> for Waits {
        type Response = http::Response<()>;
        type Error = Infallible;
        type Future = BoxFuture<Result<http::Response<()>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let release = self.0.clone();
            Box::pin(async move {
                release.notified().await;
                Ok(http::Response::new(()))
            })
        }
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn beyond_the_limit_calls_are_shed_at_once_but_health_checks_never_and_permits_come_back() {
        let release = Arc::new(tokio::sync::Notify::new());
        let layer = ShedLayer::new(2);
        let mut service = layer.layer(Waits(release.clone()));
        let first = tokio::spawn(service.call(request("/ratchet.v1.TokenService/Rotate")));
        let second = tokio::spawn(service.call(request("/ratchet.v1.TokenService/Rotate")));
        tokio::task::yield_now().await;

        let shed = service.call(request("/ratchet.v1.TokenService/Issue")).await.unwrap();
        assert_eq!(shed.headers()["grpc-status"], "8");
        assert_eq!(shed.headers()["retry-after"], "1");
        let health = tokio::spawn(service.call(request("/grpc.health.v1.Health/Check")));
        tokio::task::yield_now().await;

        release.notify_waiters();
        for call in [first, second, health] {
            assert!(call.await.unwrap().unwrap().headers().get("grpc-status").is_none());
        }
        // The permits came back: two more fit.
        let third = tokio::spawn(service.call(request("/ratchet.v1.TokenService/Rotate")));
        let fourth = tokio::spawn(service.call(request("/ratchet.v1.TokenService/Rotate")));
        tokio::task::yield_now().await;
        release.notify_waiters();
        for call in [third, fourth] {
            assert!(call.await.unwrap().unwrap().headers().get("grpc-status").is_none());
        }
    }
}
