//! What every call to our services is, before anything decides about it: its RPC, its request
//! id, and the `rpc` span that every log line of the call is written in.
//!
//! [`CallLayer`] is the outermost of the layers that know gRPC (`startup::router`), so that even
//! a call shed for load, refused by the policy or ended by a panic
//! - is named by its RPC ([`Rpc`], in the request's extensions, for the layers inside),
//! - carries a request id ([`RequestId`]: the caller's `x-request-id` if sane, else a new one),
//!   which is in the span and goes back in the response's `x-request-id` metadata, on errors too
//!   (a trailers-only error response carries it beside `grpc-status`),
//! - is logged when it ends with its status and latency: at INFO when the status says the server
//!   failed (INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, UNKNOWN, DATA_LOSS), else at DEBUG, so
//!   that the default level writes nothing per successful call.
//!
//! The span carries `rpc`, `request_id`, and two fields filled in later: `caller` (by the access
//! layer, once it knows who calls) and `family` (by the handlers of Issue, Rotate and Revoke, once
//! the family is known). Health and reflection calls get none of this: probes are not calls
//! anyone needs to trace, and they run every few seconds.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::Either;
use http::HeaderName;
use tower_layer::Layer;
use tower_service::Service;
use tracing::{Span, field};

use crate::policy::RPC_NAMES;
use crate::telemetry::request_id::{self, RequestId};

const X_REQUEST_ID: HeaderName = HeaderName::from_static(request_id::HEADER);
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Services every peer may call whatever the policy (`grpc::access`), and that are not traced.
const OPEN_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The method a call is to (`Issue` for `/ratchet.v1.TokenService/Issue`), in the request's
/// extensions of every call but health and reflection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rpc(Cow<'static, str>);

impl Rpc {
    /// The RPC a path names: `None` for health and reflection. A method we do not serve keeps its
    /// name (the policy refuses it, or tonic answers UNIMPLEMENTED).
    fn of_path(path: &str) -> Option<Self> {
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
}

/// `/package.Service/Method` to (service, method).
fn split_path(path: &str) -> Option<(&str, &str)> {
    path.strip_prefix('/')?.split_once('/')
}

/// Names every call, gives it its request id and span, and logs its end; see the module docs.
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
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Either<S::Future, Traced<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let Some(rpc) = Rpc::of_path(request.uri().path()) else {
            return Either::Left(self.inner.call(request));
        };
        let id = RequestId::from_caller(request.headers().get(X_REQUEST_ID));
        let span = tracing::info_span!(
            "rpc",
            rpc = rpc.as_str(),
            request_id = id.as_str(),
            caller = field::Empty,
            family = field::Empty
        );
        let extensions = request.extensions_mut();
        extensions.insert(rpc);
        extensions.insert(id.clone());
        let started = Instant::now();
        let inner = span.in_scope(|| self.inner.call(request));
        Either::Right(Traced {
            inner,
            span,
            id,
            started,
        })
    }
}

pin_project_lite::pin_project! {
    /// A call's answer, awaited in its span, stamped with its request id and logged.
    pub struct Traced<F> {
        #[pin]
        inner: F,
        span: Span,
        id: RequestId,
        started: Instant,
    }
}

impl<F, B, E> Future for Traced<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let mut answer = std::task::ready!(this.inner.poll(cx));
        match &mut answer {
            Ok(response) => {
                response.headers_mut().insert(X_REQUEST_ID, this.id.header_value());
                log_end(status_of(response.headers()), this.started.elapsed());
            }
            // The connection is failed, not the call answered: hyper resets the stream.
            Err(_) => tracing::info!(latency_us = elapsed_us(*this.started), "call failed without an answer"),
        }
        Poll::Ready(answer)
    }
}

/// The status of an answer: in its headers when it is an error (tonic sends errors
/// trailers-only); an answer whose status comes in the trailers, after a message, is OK, as
/// every unary answer with a message is.
fn status_of(headers: &http::HeaderMap) -> tonic::Code {
    headers
        .get(GRPC_STATUS)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

fn log_end(status: tonic::Code, latency: std::time::Duration) {
    let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    let status = code_name(status);
    if server_failed(status) {
        tracing::info!(status, latency_us, "call ended");
    } else {
        tracing::debug!(status, latency_us, "call ended");
    }
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Statuses that say the server, not the request, is at fault.
fn server_failed(status: &str) -> bool {
    matches!(
        status,
        "INTERNAL" | "UNAVAILABLE" | "DEADLINE_EXCEEDED" | "UNKNOWN" | "DATA_LOSS"
    )
}

/// The code's name as the gRPC spec writes it (what logs and metrics show).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Records the family a call acts on in its span, for every later line of the call.
pub fn record_family(family: impl std::fmt::Display) {
    Span::current().record("family", field::display(family));
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
    fn an_error_status_is_read_from_the_headers_and_no_status_is_ok() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(status_of(&headers), tonic::Code::Ok);
        headers.insert(GRPC_STATUS, http::HeaderValue::from_static("14"));
        assert_eq!(status_of(&headers), tonic::Code::Unavailable);
        assert_eq!(code_name(status_of(&headers)), "UNAVAILABLE");
    }
}
