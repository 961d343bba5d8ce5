//! What every call to our services is, before anything decides about it: its RPC, its request
//! id, the context every log line of the call is written in, and the metrics that count and time
//! it.
//!
//! [`CallLayer`] is the outermost of the layers that know gRPC (`startup::router`), so that even
//! a call shed for load, refused by the policy or ended by a panic
//! - is named by its RPC ([`Rpc`]),
//! - carries a request id ([`RequestId`]: the caller's `x-request-id` if sane, else a new one),
//!   which is on its log lines and goes back in the response's `x-request-id` metadata, on errors too
//!   (a trailers-only error response carries it beside `grpc-status`),
//! - is logged when it ends with its status and latency: at INFO when the status says the server
//!   failed (INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, UNKNOWN, DATA_LOSS), else at DEBUG, so
//!   that the default level writes nothing per successful call,
//! - is counted and timed (`ratchet_grpc_requests_total{rpc, code}`,
//!   `ratchet_grpc_request_duration_seconds{rpc}`) from its arrival to its status, whoever answered
//!   it. The status is where gRPC puts it: in the headers of a trailers-only answer (every error,
//!   every refusal of a layer), else in the trailers after the message, so the answer's body is
//!   watched until its trailers pass. A call dropped before its status (no answer yet, or its body
//!   not yet sent) is one the client gave up on: CANCELLED. Unknown methods are not counted (no
//!   label value ever comes from a request's path).
//!
//! One layer rather than one per concern, and nothing boxed: every call of every RPC pays for
//! it, so it reads the clock once at the start and once at the status, and allocates only the
//! call's context (BENCHMARKS.md, "Logging at info").
//!
//! The context (`telemetry::context`, not a `tracing` span: a span costs every call whether it
//! logs or not) carries `rpc`, `request_id`, and two fields filled in later: `caller` (by the
//! access layer, once it knows who calls) and `family` (by the handlers of Issue, Rotate and
//! Revoke, once the family is known). Health and reflection calls get none of this: probes are
//! not calls anyone needs to trace, and they run every few seconds.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{HeaderMap, HeaderName};
use http_body::{Body, Frame, SizeHint};
use tower_layer::Layer;
use tower_service::Service;

use crate::policy::RPC_NAMES;
use crate::telemetry::context::CallContext;
use crate::telemetry::metrics::{self, CODE_CANCELLED, CODE_OK, CODE_UNKNOWN};
use crate::telemetry::request_id::{self, RequestId};

const X_REQUEST_ID: HeaderName = HeaderName::from_static(request_id::HEADER);
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Services every peer may call whatever the policy (`grpc::access`), and that are not traced.
const OPEN_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The method a call is to (`Issue` for `/ratchet.v1.TokenService/Issue`): what its log lines name
/// and what the caller policy grants (`grpc::access`, which reads it from the path itself, so that
/// it never depends on this layer being there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rpc(Cow<'static, str>);

impl Rpc {
    /// The RPC a path names: `None` for health and reflection. A method we do not serve keeps its
    /// name (the policy refuses it, or tonic answers UNIMPLEMENTED).
    pub fn of_path(path: &str) -> Option<Self> {
        let (service, method) = split_path(path).unwrap_or(("", ""));
        if OPEN_SERVICES.contains(&service) {
            return None;
        }
        Some(Self(match RPC_NAMES.iter().find(|name| **name == method) {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(method.to_owned()),
        }))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_name(self) -> Cow<'static, str> {
        self.0
    }
}

/// `/package.Service/Method` to (service, method).
fn split_path(path: &str) -> Option<(&str, &str)> {
    path.strip_prefix('/')?.split_once('/')
}

/// Names every call, gives it its request id and context, counts and times it, and logs its end;
/// see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallLayer;

impl<S> Layer<S> for CallLayer {
    type Service = Call<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Call { inner }
    }
}

/// See [`CallLayer`].
#[derive(Debug, Clone)]
pub struct Call<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Call<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<CallBody<ResBody>>;
    type Error = S::Error;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        let Some(rpc) = Rpc::of_path(path) else {
            return CallFuture {
                inner: self.inner.call(request),
                traced: None,
            };
        };
        let started = Instant::now();
        let counted = metrics::enabled()
            .then(|| metrics::Rpc::from_path(path))
            .flatten()
            .map(|rpc| Counted { rpc, started });
        let id = RequestId::from_caller(request.headers().get(X_REQUEST_ID));
        request.extensions_mut().insert(id.clone());
        let call = CallContext::new(rpc.into_name(), id);
        let inner = {
            let _entered = call.enter();
            self.inner.call(request)
        };
        CallFuture {
            inner,
            traced: Some(Traced { call, started, counted }),
        }
    }
}

/// What a traced call carries until its answer: see [`CallFuture`].
struct Traced {
    call: Arc<CallContext>,
    started: Instant,
    counted: Option<Counted>,
}

pin_project_lite::pin_project! {
    /// A call's answer, awaited in its context, stamped with its request id, logged, and counted
    /// (or, when its status comes in the trailers, handed to its body to count).
    pub struct CallFuture<F> {
        #[pin]
        inner: F,
        // `None` for the calls not traced (health, reflection), and once answered.
        traced: Option<Traced>,
    }
}

impl<F, B, E> Future for CallFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<CallBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let entered = this.traced.as_ref().map(|traced| traced.call.enter());
        let answer = ready!(this.inner.poll(cx));
        drop(entered);
        let Some(traced) = this.traced.take() else {
            return Poll::Ready(answer.map(|response| response.map(CallBody::uncounted)));
        };
        let _entered = traced.call.enter();
        let mut counted = traced.counted;
        Poll::Ready(match answer {
            Ok(mut response) => {
                response
                    .headers_mut()
                    .insert(X_REQUEST_ID, traced.call.request_id().header_value());
                // Trailers-only (every error, every refusal of a layer): the status is here.
                // Otherwise it comes in the trailers, after the message: OK so far.
                let code = status(response.headers());
                log_end(code.unwrap_or(CODE_OK), traced.started);
                if let Some(code) = code
                    && let Some(counted) = counted.take()
                {
                    counted.end(code);
                }
                Ok(response.map(|inner| CallBody { inner, counted }))
            }
            // The connection failed, not the call answered: hyper resets the stream. The call
            // is counted as CANCELLED (`counted` dropped): no status reached the client.
            Err(error) => {
                tracing::info!(latency_us = elapsed_us(traced.started), "call failed without an answer");
                Err(error)
            }
        })
    }
}

/// A call being counted (`ratchet_grpc_requests_total`, `ratchet_grpc_request_duration_seconds`):
/// it ends with its status, or, dropped first, as CANCELLED (the client went away: a reset
/// stream, its deadline) whether it had an answer yet or not.
struct Counted {
    rpc: metrics::Rpc,
    started: Instant,
}

impl Counted {
    fn end(self, code: u8) {
        let counted = std::mem::ManuallyDrop::new(self);
        metrics::call(counted.rpc, code, counted.started.elapsed());
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        metrics::call(self.rpc, CODE_CANCELLED, self.started.elapsed());
    }
}

pin_project_lite::pin_project! {
    /// An answer's body, watched for the status in its trailers while its call is counted.
    pub struct CallBody<B> {
        #[pin]
        inner: B,
        // Until the status is seen (dropped before: CANCELLED).
        counted: Option<Counted>,
    }
}

impl<B> CallBody<B> {
    fn uncounted(inner: B) -> Self {
        Self { inner, counted: None }
    }
}

impl<B: Body> Body for CallBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if this.counted.is_some() {
            let code = match &frame {
                Some(Ok(frame)) => frame
                    .trailers_ref()
                    .map(|trailers| status(trailers).unwrap_or(CODE_UNKNOWN)),
                // The body failed or ended without trailers: no status reached the client.
                Some(Err(_)) | None => Some(CODE_UNKNOWN),
            };
            if let Some(code) = code
                && let Some(counted) = this.counted.take()
            {
                counted.end(code);
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

/// The `grpc-status` in `headers` (of an answer, or its trailers), as its number, if there is
/// one: an unreadable one is UNKNOWN.
fn status(headers: &HeaderMap) -> Option<u8> {
    let value = headers.get(GRPC_STATUS)?;
    Some(
        std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(CODE_UNKNOWN),
    )
}

/// Logs a call's end. Its latency is read only if the line is written: at the default level a
/// successful call writes nothing and reads the clock no second time here.
fn log_end(code: u8, started: Instant) {
    let status = code_name(code);
    if server_failed(code) {
        tracing::info!(status, latency_us = elapsed_us(started), "call ended");
    } else {
        tracing::debug!(status, latency_us = elapsed_us(started), "call ended");
    }
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Statuses that say the server, not the request, is at fault: INTERNAL, UNAVAILABLE,
/// DEADLINE_EXCEEDED, UNKNOWN, DATA_LOSS.
fn server_failed(code: u8) -> bool {
    matches!(code, 13 | 14 | 4 | 2 | 15)
}

/// The code's name as the gRPC spec writes it (what logs and metrics show); an unknown number
/// is UNKNOWN.
fn code_name(code: u8) -> &'static str {
    metrics::CODES
        .get(usize::from(code))
        .copied()
        .unwrap_or(metrics::CODES[usize::from(CODE_UNKNOWN)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_name_their_rpc_and_health_and_reflection_none() {
        assert_eq!(
            split_path("/ratchet.v1.TokenService/Issue"),
            Some(("ratchet.v1.TokenService", "Issue"))
        );
        assert_eq!(split_path("nonsense"), None);
        let rpc = |path| Rpc::of_path(path).map(|rpc| rpc.as_str().to_owned());
        assert_eq!(rpc("/ratchet.v1.TokenService/Rotate").as_deref(), Some("Rotate"));
        assert_eq!(
            rpc("/envoy.service.auth.v3.Authorization/Check").as_deref(),
            Some("Check")
        );
        assert_eq!(rpc("/ratchet.v1.TokenService/Nope").as_deref(), Some("Nope"));
        assert_eq!(rpc("/grpc.health.v1.Health/Check"), None);
        assert_eq!(rpc("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), None);
    }

    #[test]
    fn the_code_names_are_tonics_codes_in_order() {
        for (number, name) in metrics::CODES.iter().enumerate() {
            let code = tonic::Code::from(i32::try_from(number).unwrap());
            // tonic spells them in CamelCase: the spec's names without underscores.
            assert_eq!(format!("{code:?}").to_uppercase(), name.replace('_', ""), "{number}");
        }
        assert_eq!(code_name(200), "UNKNOWN");
    }

    #[test]
    fn the_server_failed_the_calls_whose_status_says_so() {
        let failed: Vec<&str> = (0..17).filter(|code| server_failed(*code)).map(code_name).collect();
        assert_eq!(
            failed,
            ["UNKNOWN", "DEADLINE_EXCEEDED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"]
        );
    }

    #[test]
    fn a_status_is_read_from_its_header_and_an_unreadable_one_is_unknown() {
        let mut headers = HeaderMap::new();
        assert_eq!(status(&headers), None);
        headers.insert(GRPC_STATUS, "14".parse().unwrap());
        assert_eq!(status(&headers), Some(14));
        assert_eq!(code_name(14), "UNAVAILABLE");
        headers.insert(GRPC_STATUS, "sixteen".parse().unwrap());
        assert_eq!(status(&headers), Some(CODE_UNKNOWN));
    }
}
