//! Oversized requests answer RESOURCE_EXHAUSTED, the code every gRPC implementation uses for a
//! message over the receive limit (grpc/grpc#10612, grpc-java#2906), instead of tonic's
//! OUT_OF_RANGE.
//!
//! tonic checks a request's 5-byte frame prefix against `max_decoding_message_size` before it
//! buffers the message, which is exactly what we want; only the code is off. Its unary handler
//! then answers as it answers any error: a trailers-only response, `grpc-status` in the HTTP
//! headers and the `Status` itself in the response extensions (`Status::into_http`). So this
//! layer looks at the response's extensions and rewrites the code when they hold an OUT_OF_RANGE
//! with tonic's decode-limit message (our handlers never answer OUT_OF_RANGE, see `status.rs`, and
//! `tests/api/limits.rs` fails if a tonic upgrade rewords the message). Checking the frame prefix
//! ourselves would mean wrapping every request body, for the same answer.

use std::task::{Context, Poll};

use futures_util::TryFutureExt as _;
use futures_util::future::MapOk;
use http::{HeaderName, HeaderValue};
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// How tonic 0.14 words a message over the decoding limit (`codec/decode.rs`).
const TONIC_DECODE_LIMIT: &str = "Error, decoded message length too large";

/// Wraps a server so that messages over the size limit answer RESOURCE_EXHAUSTED.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageLimitLayer;

impl<S> Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimit { inner }
    }
}

/// See [`MessageLimitLayer`].
#[derive(Debug, Clone)]
pub struct MessageLimit<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for MessageLimit<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    // A function pointer, not a closure: the future stays nameable and unboxed.
    type Future = MapOk<S::Future, fn(http::Response<ResBody>) -> http::Response<ResBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        self.inner.call(request).map_ok(rewrite_oversized)
    }
}

fn rewrite_oversized<B>(mut response: http::Response<B>) -> http::Response<B> {
    // The hot path: a normal answer carries no `Status` extension, and finding none is one
    // pointer check (no hashing, unlike a header lookup).
    let Some(status) = response.extensions().get::<Status>() else {
        return response;
    };
    if status.code() != Code::OutOfRange || !status.message().starts_with(TONIC_DECODE_LIMIT) {
        return response;
    }
    let status = Status::resource_exhausted(status.message());
    response
        .headers_mut()
        .insert(GRPC_STATUS, HeaderValue::from(Code::ResourceExhausted as i32));
    response.extensions_mut().insert(status);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailers_only(status: Status) -> http::Response<()> {
        status.into_http()
    }

    #[test]
    fn tonics_decode_limit_answer_becomes_resource_exhausted() {
        let response = rewrite_oversized(trailers_only(Status::out_of_range(
            "Error, decoded message length too large: found 2097185 bytes, the limit is: 1048576 bytes",
        )));
        assert_eq!(response.headers()[GRPC_STATUS], "8");
        assert_eq!(
            response.extensions().get::<Status>().map(Status::code),
            Some(Code::ResourceExhausted)
        );
    }

    #[test]
    fn other_out_of_range_answers_and_normal_answers_are_left_alone() {
        let response = rewrite_oversized(trailers_only(Status::out_of_range("page 7 of 3")));
        assert_eq!(response.headers()[GRPC_STATUS], "11");
        let response = rewrite_oversized(http::Response::new(()));
        assert!(response.headers().get(GRPC_STATUS).is_none());
    }
}
