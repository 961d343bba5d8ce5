//! The tower layer: `authorization: Bearer <token>` in, [`Claims`] in the request extensions out,
//! or a gRPC error answer without calling the service.
//!
//! Works on `http::Request`s, so it fits both `tonic::transport::Server::builder().layer(..)`
//! (every service of the server) and `tower::ServiceBuilder` around one service. Failures answer
//! the way ratchet does: `UNAUTHENTICATED` with a `google.rpc.ErrorInfo` (domain `ratchet`, reason
//! `TOKEN_INVALID` or `TOKEN_EXPIRED`), or `UNAVAILABLE` when the key set cannot be had. The
//! answer and the logs never hold the token.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};
use tower_layer::Layer;
use tower_service::Service;

use crate::claims::Claims;
use crate::error::VerifyError;
use crate::verifier::Verifier;

/// Requires a verified ratchet access token on every request, except under exempt path prefixes.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// # let verifier = ratchet_verify::Verifier::new("http://ratchet:8080/.well-known/jwks.json", "ratchet")?;
/// # let (_, health) = tonic_health::server::health_reporter();
/// let auth = ratchet_verify::VerifyLayer::new(verifier).exempt("/grpc.health.v1.Health/");
/// tonic::transport::Server::builder()
///     .layer(auth)
///     .add_service(health)
///     .serve("127.0.0.1:50051".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct VerifyLayer {
    verifier: Verifier,
    exempt: Arc<[String]>,
}

impl VerifyLayer {
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            exempt: Arc::new([]),
        }
    }

    /// Lets requests whose path starts with `prefix` through unverified and without claims, e.g.
    /// `"/grpc.health.v1.Health/"` so that probes need no token. A gRPC path is
    /// `/<package>.<Service>/<Method>`: end a service prefix with `/`, or `/pkg.Health` would also
    /// exempt `/pkg.HealthAdmin/…`.
    pub fn exempt(mut self, prefix: impl Into<String>) -> Self {
        let mut exempt = self.exempt.to_vec();
        exempt.push(prefix.into());
        self.exempt = exempt.into();
        self
    }
}

impl<S> Layer<S> for VerifyLayer {
    type Service = VerifyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifyService {
            inner,
            verifier: self.verifier.clone(),
            exempt: self.exempt.clone(),
        }
    }
}

/// The service [`VerifyLayer`] wraps around another.
#[derive(Debug, Clone)]
pub struct VerifyService<S> {
    inner: S,
    verifier: Verifier,
    exempt: Arc<[String]>,
}

/// So that `ServiceBuilder::new().layer(VerifyLayer::new(v)).service(svc)` can still be given to
/// tonic's `Server::add_service`, which routes by the service's name.
impl<S: tonic::server::NamedService> tonic::server::NamedService for VerifyService<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for VerifyService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready is the one to call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        if self.exempt.iter().any(|prefix| path.starts_with(prefix.as_str())) {
            return Box::pin(inner.call(request));
        }
        let token = bearer_token(request.headers()).map(str::to_owned);
        let verifier = self.verifier.clone();
        Box::pin(async move {
            let verified = match token {
                Ok(token) => verifier.verify(&token).await,
                Err(error) => Err(error),
            };
            match verified {
                Ok(claims) => {
                    request.extensions_mut().insert::<Claims>(claims);
                    inner.call(request).await
                }
                Err(error) => {
                    tracing::debug!(reason = error.as_str(), path = request.uri().path(), "request refused");
                    Ok(to_status(error).into_http())
                }
            }
        })
    }
}

/// The token of the one `authorization` header, which must use the Bearer scheme (RFC 6750 §2.1;
/// the scheme is case-insensitive, RFC 9110 §11.1). Two such headers are refused: which one a proxy
/// or the service would read is not ours to guess.
fn bearer_token(headers: &http::HeaderMap) -> Result<&str, VerifyError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(if headers.contains_key(AUTHORIZATION) {
            VerifyError::Malformed
        } else {
            VerifyError::MissingToken
        });
    };
    let value = value.to_str().map_err(|_| VerifyError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(VerifyError::MissingToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(VerifyError::MissingToken);
    }
    match token.trim() {
        "" => Err(VerifyError::MissingToken),
        token => Ok(token),
    }
}

/// The gRPC answer to a refused token, as ratchet gives it.
pub fn to_status(error: VerifyError) -> Status {
    match error.reason() {
        Some(reason) => Status::with_error_details(
            Code::Unauthenticated,
            format!("access token refused: {error}"),
            ErrorDetails::with_error_info(
                reason,
                crate::ERROR_DOMAIN,
                std::collections::HashMap::<String, String>::new(),
            ),
        ),
        None => Status::unavailable("cannot verify access tokens now: the issuer's keys are unavailable, retry later"),
    }
}

impl From<VerifyError> for Status {
    fn from(error: VerifyError) -> Self {
        to_status(error)
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer abc.def.ghi", "bearer abc.def.ghi", "BEARER  abc.def.ghi "] {
            assert_eq!(bearer_token(&headers(&[value])), Ok("abc.def.ghi"), "{value}");
        }
    }

    #[test]
    fn other_schemes_empty_tokens_and_duplicates_are_refused() {
        assert_eq!(bearer_token(&headers(&[])), Err(VerifyError::MissingToken));
        for value in ["Basic YWxpY2U6cw==", "Bearer", "Bearer ", "Bearerabc", "abc.def.ghi"] {
            assert_eq!(
                bearer_token(&headers(&[value])),
                Err(VerifyError::MissingToken),
                "{value}"
            );
        }
        assert_eq!(
            bearer_token(&headers(&["Bearer a.b.c", "Bearer d.e.f"])),
            Err(VerifyError::Malformed)
        );
    }

    #[test]
    fn statuses_carry_ratchets_reasons_and_keys_unavailable_is_unavailable() {
        let expired = to_status(VerifyError::Expired);
        assert_eq!(expired.code(), Code::Unauthenticated);
        let info = expired.get_details_error_info().unwrap();
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("TOKEN_EXPIRED", "ratchet")
        );
        let forged = to_status(VerifyError::BadSignature);
        assert_eq!(forged.get_details_error_info().unwrap().reason, "TOKEN_INVALID");
        let unavailable = to_status(VerifyError::KeysUnavailable);
        assert_eq!(unavailable.code(), Code::Unavailable);
        assert!(unavailable.get_details_error_info().is_none());
    }
}
