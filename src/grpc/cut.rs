//! The end of the shutdown grace (`--shutdown-grace`): a call still in flight then is answered
//! rather than left to die with its connection. A write (Issue, Rotate, Revoke) may or may not
//! have taken effect, so it gets DEADLINE_EXCEEDED with OUTCOME_UNKNOWN, as when storage stops
//! answering mid-write; anything else did nothing and gets UNAVAILABLE, safe to retry on another
//! replica (`status::cut_at_shutdown`). Without this the client of a cut call sees its connection
//! close under it, which tonic reports as UNKNOWN or INTERNAL: nothing a client can act on.
//!
//! Only the answer is cut: a write runs on a task of its own (`service::detached`) and goes on
//! until the process exits; the transaction commits or not, which is why its outcome is unknown.
//! Cost while serving: a boxed future and a clone of the stage's receiver per call; measured
//! +29, +111 and +89 ns (medians, three runs) on a Rotate-shaped call through a stub service
//! (`cargo bench --bench requests -- cut/`, on a shared 2-core machine under load).
//!
//! Left out: the order of the shutdown steps (`startup`) and the drain itself (`transport::serve`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::status;
use crate::shutdown::{Stage, StageWatch};

/// Calls whose cut answer is "outcome unknown": they change state.
const WRITES: [&str; 3] = [
    "/ratchet.v1.TokenService/Issue",
    "/ratchet.v1.TokenService/Rotate",
    "/ratchet.v1.TokenService/Revoke",
];

/// Answers the calls in flight once the stop reaches [`Stage::Cut`]; see the module docs.
#[derive(Debug, Clone)]
pub struct CutLayer {
    stage: StageWatch,
}

impl CutLayer {
    pub fn new(stage: StageWatch) -> Self {
        Self { stage }
    }
}

impl<S> Layer<S> for CutLayer {
    type Service = Cut<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cut {
            inner,
            stage: self.stage.clone(),
        }
    }
}

/// See [`CutLayer`].
#[derive(Debug, Clone)]
pub struct Cut<S> {
    inner: S,
    stage: StageWatch,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Cut<S>
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
        let write = WRITES.contains(&request.uri().path());
        if self.stage.has_reached(Stage::Cut) {
            // Not started: nothing was done, whatever the call.
            return Box::pin(std::future::ready(Ok(status::cut_at_shutdown(false).into_http())));
        }
        let answer = self.inner.call(request);
        let cut = self.stage.clone().reached(Stage::Cut);
        Box::pin(async move {
            tokio::select! {
                biased;
                answer = answer => answer,
                () = cut => Ok(status::cut_at_shutdown(write).into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use tonic::Code;
    use tower_service::Service as _;

    use super::*;
    use crate::shutdown::Stages;

    /// A service that never answers.
    #[derive(Clone)]
    struct Hangs;

    impl Service<http::Request<()>> for Hangs {
        type Response = http::Response<()>;
        type Error = Infallible;
        type Future = BoxFuture<Result<http::Response<()>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            Box::pin(std::future::pending())
        }
    }

    fn call_to(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    fn code(response: &http::Response<()>) -> Code {
        tonic::Status::from_header_map(response.headers())
            .expect("a grpc-status")
            .code()
    }

    #[tokio::test]
    async fn at_the_cut_a_write_is_outcome_unknown_and_a_read_unavailable() {
        let stages = Stages::default();
        let mut cut = CutLayer::new(stages.watch()).layer(Hangs);
        let rotate = cut.call(call_to("/ratchet.v1.TokenService/Rotate"));
        let introspect = cut.call(call_to("/ratchet.v1.TokenService/Introspect"));
        stages.enter(Stage::Draining);
        let (rotate, introspect) = (tokio::spawn(rotate), tokio::spawn(introspect));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!rotate.is_finished(), "draining lets calls finish");
        stages.enter(Stage::Cut);
        let rotate = rotate.await.unwrap().unwrap();
        assert_eq!(code(&rotate), Code::DeadlineExceeded);
        assert_eq!(code(&introspect.await.unwrap().unwrap()), Code::Unavailable);
        let late = cut.call(call_to("/ratchet.v1.TokenService/Rotate")).await.unwrap();
        assert_eq!(code(&late), Code::Unavailable, "a call after the cut never started");
    }
}
