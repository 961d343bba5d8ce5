//! Counts and times every call of ours (`ratchet_grpc_requests_total{rpc, code}`,
//! `ratchet_grpc_request_duration_seconds{rpc}`): from its arrival to its status, whoever
//! answered it (a handler, the caller policy, load shedding, the panic guard), since the layer
//! sits outside all of those.
//!
//! The status is where gRPC puts it: in the response headers of a trailers-only answer (every
//! error, and every refusal of a layer), else in the trailers after the message, so the answer's
//! body is watched until its trailers pass. A call dropped before its status (the answer not yet
//! made, or its body not yet sent) is one the client gave up on: CANCELLED. Health, reflection and unknown methods are not counted (no label value ever
//! comes from a request's path).
//!
//! Cost per call: two clock reads, one header lookup, an atomic add and a histogram sample on
//! handles resolved at start (`telemetry::metrics`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tower_layer::Layer;
use tower_service::Service;

use crate::telemetry::metrics::{self, CODE_CANCELLED, CODE_UNKNOWN, Rpc};

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observed { inner }
    }
}

/// See [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct Observed<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Observed<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = metrics::enabled()
            .then(|| Rpc::from_path(request.uri().path()))
            .flatten()
            .map(|rpc| Call {
                rpc,
                started: Instant::now(),
            });
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            let mut call = call;
            // Trailers-only: the status is already here, and the body is empty.
            if let Some(code) = status(response.headers())
                && let Some(call) = call.take()
            {
                call.end(code);
            }
            Ok(response.map(|body| ObservedBody {
                inner: Box::pin(body),
                call,
            }))
        })
    }
}

/// A call being counted: it ends with its status, or, dropped first, as CANCELLED (the client
/// went away: a reset stream, its deadline) whether it had an answer yet or not.
struct Call {
    rpc: Rpc,
    started: Instant,
}

impl Call {
    fn end(self, code: u8) {
        let call = std::mem::ManuallyDrop::new(self);
        metrics::call(call.rpc, code, call.started.elapsed());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        metrics::call(self.rpc, CODE_CANCELLED, self.started.elapsed());
    }
}

/// The `grpc-status` in `headers`, if there is one (an unreadable one is UNKNOWN).
fn status(headers: &HeaderMap) -> Option<u8> {
    let value = headers.get("grpc-status")?;
    Some(
        std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(CODE_UNKNOWN),
    )
}

/// An answer's body, watched for the status in its trailers.
pub struct ObservedBody<B> {
    inner: Pin<Box<B>>,
    /// Until the status is seen (dropped before: CANCELLED).
    call: Option<Call>,
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let frame = ready!(self.inner.as_mut().poll_frame(cx));
        if self.call.is_some() {
            let code = match &frame {
                Some(Ok(frame)) => frame
                    .trailers_ref()
                    .map(|trailers| status(trailers).unwrap_or(CODE_UNKNOWN)),
                // The body failed or ended without trailers: no status reached the client.
                Some(Err(_)) | None => Some(CODE_UNKNOWN),
            };
            if let Some(code) = code
                && let Some(call) = self.call.take()
            {
                call.end(code);
            }
        }
        Poll::Ready(frame)
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
    use super::*;

    #[test]
    fn the_code_names_are_tonics_codes_in_order() {
        for (number, name) in metrics::CODES.iter().enumerate() {
            let code = tonic::Code::from(i32::try_from(number).unwrap());
            // tonic spells them in CamelCase: the spec's names without underscores.
            assert_eq!(format!("{code:?}").to_uppercase(), name.replace('_', ""), "{number}");
        }
    }

    #[test]
    fn a_status_is_read_from_its_header_and_an_unreadable_one_is_unknown() {
        let mut headers = HeaderMap::new();
        assert_eq!(status(&headers), None);
        headers.insert("grpc-status", "16".parse().unwrap());
        assert_eq!(status(&headers), Some(16));
        headers.insert("grpc-status", "sixteen".parse().unwrap());
        assert_eq!(status(&headers), Some(CODE_UNKNOWN));
    }
}
