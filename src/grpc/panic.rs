//! A panic while answering a call becomes INTERNAL with an error id, like any internal error
//! (`status.rs`), instead of a reset stream or, for a panic in `Service::call`, a dead connection.
//!
//! Without this layer a panic unwinds out of the task hyper runs the call in: the client gets a
//! stream reset (`Unknown`/`Cancelled`, depending on the client) that says nothing about what
//! happened, and a panic in `call` itself, which hyper runs on the connection's task, takes every
//! call on that connection with it. Here both are caught and answered as a proper gRPC response:
//! HTTP 200, `application/grpc`, `grpc-status: 13` in a trailers-only response, with the id that
//! the log line carrying the panic message also has.
//!
//! Why not tower-http's `CatchPanicLayer`: it does the same `catch_unwind`, but answers HTTP 500
//! unless given a custom responder, and would bring tower-http into the tree for what is a few
//! lines over futures-util, which tonic already depends on. Cost on the hot path: `catch_unwind`
//! is free until something panics, and the future stays unboxed (a `fn` pointer, not a closure).
//!
//! Not covered: a panic while a streaming response body is being polled (after the headers went
//! out). Every RPC we serve is unary, and tonic builds a unary answer's body before returning it.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use futures_util::FutureExt as _;
use futures_util::future::{CatchUnwind, Either, Map, Ready, ready};
use tower_layer::Layer;
use tower_service::Service;

use super::status;

/// Wraps a server so that panics answer INTERNAL with an error id.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic { inner }
    }
}

/// See [`CatchPanicLayer`].
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

type Answer<B, E> = Result<http::Response<B>, E>;
type Caught<F, B, E> = Map<CatchUnwind<AssertUnwindSafe<F>>, fn(std::thread::Result<Answer<B, E>>) -> Answer<B, E>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CatchPanic<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Either<Caught<S::Future, ResBody, S::Error>, Ready<Answer<ResBody, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // The inner service is only borrowed across the unwind; tonic's routes keep no state that
        // a half-finished `call` could leave inconsistent.
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(future) => Either::Left(AssertUnwindSafe(future).catch_unwind().map(recover)),
            Err(payload) => Either::Right(ready(Ok(panicked(payload.as_ref())))),
        }
    }
}

fn recover<B: Default, E>(result: std::thread::Result<Answer<B, E>>) -> Answer<B, E> {
    result.unwrap_or_else(|payload| Ok(panicked(payload.as_ref())))
}

fn panicked<B: Default>(payload: &(dyn Any + Send)) -> http::Response<B> {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)");
    let id = status::error_id();
    tracing::error!(error_id = %id, panic = message, "a call panicked");
    status::internal(&id).into_http()
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures_util::future::BoxFuture;
    use tonic::{Code, Status};
    use tower_service::Service as _;

    use super::*;

    fn assert_internal_with_id(response: &http::Response<()>) {
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(response.headers()["grpc-status"], "13");
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().starts_with("internal error (id "), "{status:?}");
        assert!(!status.message().contains("boom"), "the panic message stays in the log");
    }

    #[tokio::test]
    async fn a_panic_in_the_calls_future_answers_grpc_internal_with_an_error_id() {
        let inner = tower::service_fn(
            |_: http::Request<()>| -> BoxFuture<'static, Result<http::Response<()>, Infallible>> {
                Box::pin(async { panic!("boom") })
            },
        );
        let response = CatchPanicLayer.layer(inner).call(http::Request::new(())).await.unwrap();
        assert_internal_with_id(&response);
    }

    #[tokio::test]
    async fn a_panic_in_call_itself_answers_grpc_internal_with_an_error_id() {
        let inner = tower::service_fn(
            |_: http::Request<()>| -> Ready<Result<http::Response<()>, Infallible>> { panic!("boom") },
        );
        let response = CatchPanicLayer.layer(inner).call(http::Request::new(())).await.unwrap();
        assert_internal_with_id(&response);
    }
}
