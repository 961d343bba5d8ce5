//! Telling an idle connection from a busy one (issue 11): tonic and hyper bound a connection's
//! age and find dead peers with PINGs, but neither closes a connection that is merely idle.
//!
//! Each connection gets an [`Activity`]: its requests in flight, counted by [`ActivityLayer`]
//! from the moment the service is called until the response body is finished or dropped (so a
//! streaming response counts for as long as it streams). [`Activity::idle`] resolves once no
//! request has been in flight for a whole timeout; `serve` then shuts the connection down
//! gracefully (HTTP/2 GOAWAY). Like grpc-go's `MaxConnectionIdle`: only requests count, so
//! keepalive PINGs, WINDOW_UPDATEs and the like keep nothing open, and a connection with a
//! request in flight is never closed for idleness, however long the request takes.
//!
//! Left out: deciding what to do when idle (see `serve`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tower_layer::Layer;
use tower_service::Service;

use super::accept::PeerInfo;
use super::activity::{Activity, InFlight};

/// Counts each request in flight on its connection's [`Activity`], found in the request's
/// [`PeerInfo`] (a connection without one is not counted: nothing watches it).
#[derive(Debug, Clone, Copy, Default)]
pub struct ActivityLayer;

impl<S> Layer<S> for ActivityLayer {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Tracked { inner, activity: None }
    }
}

/// See [`ActivityLayer`].
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    /// Counts here rather than on the request's [`PeerInfo`] (a service made per connection).
    activity: Option<Activity>,
}

impl<S> Tracked<S> {
    /// `inner`, counting every request on `activity`.
    pub fn new(inner: S, activity: Activity) -> Self {
        Self {
            inner,
            activity: Some(activity),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Tracked<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<TrackedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let activity = self.activity.as_ref().or_else(|| {
            request
                .extensions()
                .get::<PeerInfo>()
                .and_then(|info| info.activity.as_ref())
        });
        let in_flight = activity.map(Activity::start);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| TrackedBody {
                inner: Box::pin(body),
                _in_flight: in_flight,
            }))
        })
    }
}

/// A response body that keeps its request in flight until it is finished or dropped.
pub struct TrackedBody<B> {
    inner: Pin<Box<B>>,
    _in_flight: Option<InFlight>,
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use super::*;

    /// Answers at once with a body of one frame that is only finished when polled.
    #[derive(Clone)]
    struct Answers;

    impl Service<http::Request<()>> for Answers {
        type Response = http::Response<String>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<http::Response<String>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::ready(Ok(http::Response::new("answer".to_owned())))
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn a_request_is_in_flight_until_its_response_body_is_dropped_and_idleness_restarts_after_it() {
        use tokio::time::{Instant, timeout};
        let activity = Activity::default();
        let mut service = Tracked::new(Answers, activity.clone());
        let idle = activity.idle(300 * MS);
        let mut idle = std::pin::pin!(idle);

        assert!(timeout(150 * MS, &mut idle).await.is_err());
        let response = service.call(http::Request::new(())).await.unwrap();
        assert_eq!(activity.in_flight(), 1, "answered, but its body is not sent yet");
        assert!(
            timeout(600 * MS, &mut idle).await.is_err(),
            "never idle with a request in flight"
        );

        drop(response);
        assert_eq!(activity.in_flight(), 0);
        assert!(timeout(150 * MS, &mut idle).await.is_err());
        // A request that starts and ends starts the wait over.
        drop(service.call(http::Request::new(())).await.unwrap());
        let ended = Instant::now();
        timeout(5000 * MS, &mut idle).await.unwrap();
        let waited = ended.elapsed();
        assert!(waited >= 300 * MS, "{waited:?}");
    }

    #[tokio::test]
    async fn a_connection_without_a_request_is_noticed_and_one_with_a_request_is_not() {
        use tokio::time::timeout;
        let quiet = Activity::default();
        let used = Activity::default();
        drop(used.start());
        assert!(timeout(2000 * MS, quiet.no_request_within(100 * MS)).await.is_ok());
        assert!(timeout(300 * MS, used.no_request_within(100 * MS)).await.is_err());
    }

    #[test]
    fn a_connection_has_started_a_request_from_its_first_on() {
        let activity = Activity::default();
        assert!(!activity.has_started());
        drop(activity.start());
        assert!(activity.has_started(), "even once it is over");
    }
}
