//! Who may call what, enforced around every call (issue 11).
//!
//! [`AccessLayer`] wraps the whole server. For each call it
//! 1. tells the RPC from the gRPC path ([`Rpc`], `grpc/call.rs`; `Issue` for
//!    `/ratchet.v1.TokenService/Issue`, `Check` for Envoy's); health and reflection are always
//!    open, so that probes and tools work whatever the policy says;
//! 2. resolves the caller from the transport's [`PeerIdentity`] (request extensions, put there by
//!    the TLS/XFCC layer; a trusted XFCC header the layer found malformed is `UNAUTHENTICATED`
//!    whatever else the request carries) and the API key (`authorization: Bearer <key>` or `x-api-key`; on
//!    ratchet's own API a bearer is always an API key, ratchet's tokens never travel there), then
//!    strips the key from the request so nothing after this layer can log it;
//! 3. checks the RPC and the caller's own rate limit, before any handler, hence before any
//!    database work;
//! 4. records the caller's name in the call's `rpc` span (opened by the call layer) and puts the
//!    caller in the request's extensions ([`caller`]), where Issue, Revoke and ListSessions find
//!    it to check what it may mint and for whom.
//!
//! Without a policy file everything is let through (open mode, warned about at start). That
//! includes a request whose trusted XFCC header is malformed: in open mode
//! nothing reads an identity, so there is nobody it could be taken for, and refusing would turn a
//! certificate with an odd SAN into an outage for a deployment that never asked who calls.

use std::borrow::Cow;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::HeaderName;
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;
use tracing::field;

use super::call::Rpc;
use crate::domain::Actor;
use crate::issuer::Subjects;
use crate::issuer::types::IssueParams;
use crate::policy::reload::PolicyFile;
use crate::policy::{Caller, Unauthenticated};
use crate::telemetry::context;
use crate::telemetry::metrics::{self, Refusal};
use crate::telemetry::request_id::RequestId;
use crate::telemetry::throttle;
use crate::transport::accept::PeerInfo;
use crate::transport::{MalformedXfcc, PeerIdentity};

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The caller a call was admitted as (in the request's extensions); absent in open mode.
#[derive(Debug, Clone)]
pub struct AuthorizedCaller(pub Arc<Caller>);

/// The caller `request` was admitted as, if a policy is in force.
pub fn caller<T>(request: &tonic::Request<T>) -> Option<Arc<Caller>> {
    request.extensions().get::<AuthorizedCaller>().map(|c| c.0.clone())
}

/// Who is making this call, for the audit trail: the caller policy's name for the caller (none
/// in open mode) and the call's request id.
pub fn actor<T>(request: &tonic::Request<T>) -> Actor {
    Actor {
        caller: caller(request).map(|caller| caller.name.clone()),
        // Put there by `grpc::call` for every RPC.
        request_id: request.extensions().get::<RequestId>().map(|id| id.as_str().to_owned()),
    }
}

/// Whether the caller may mint what `params` asks for (anything, in open mode).
///
/// # Errors
/// PERMISSION_DENIED naming the audience, scope or claim refused.
pub fn check_issue(caller: Option<&Caller>, params: &IssueParams, default_audience: &str) -> Result<(), Status> {
    let Some(caller) = caller else { return Ok(()) };
    caller.check_issue(params, default_audience).map_err(|refusal| {
        metrics::refused(Refusal::Policy, &caller.name);
        if let Some(suppressed) = throttle::security_event("issue refused", &caller.name) {
            tracing::warn!(target: "security", caller = %caller.name, refused = %refusal.refused, suppressed, "issue refused by the caller policy");
        }
        Status::from(refusal)
    })
}

/// Whether the caller may act for `subject` (list or revoke its sessions); anyone, in open mode.
///
/// # Errors
/// PERMISSION_DENIED naming the subject.
pub fn check_subject(caller: Option<&Caller>, subject: &str) -> Result<(), Status> {
    let Some(caller) = caller else { return Ok(()) };
    caller.check_subject(subject).map_err(|refusal| {
        metrics::refused(Refusal::Policy, &caller.name);
        tracing::warn!(target: "security", caller = %caller.name, refused = %refusal.refused, "call refused by the caller policy");
        Status::from(refusal)
    })
}

/// The subjects whose families the caller may revoke by id or token: any in open mode or
/// without a `subjects` list (then no family's subject needs looking up).
pub fn subjects(caller: Option<Arc<Caller>>) -> Subjects {
    match caller {
        Some(caller) if caller.limits_subjects() => Subjects::only(move |subject| caller.may_act_for(subject)),
        _ => Subjects::Any,
    }
}

/// Puts the caller policy around every call; see the module comment.
#[derive(Debug, Clone)]
pub struct AccessLayer {
    policy: Option<Arc<PolicyFile>>,
}

impl AccessLayer {
    /// `None`: open mode, every call is let through.
    pub fn new(policy: Option<Arc<PolicyFile>>) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Access {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// See [`AccessLayer`].
#[derive(Debug, Clone)]
pub struct Access<S> {
    inner: S,
    policy: Option<Arc<PolicyFile>>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Access<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<http::Response<ResBody>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // Health and reflection: open to all. From the path, not from anything another layer
        // put in the request: without that layer, a call must not pass as open.
        let Some(rpc) = Rpc::of_path(request.uri().path()) else {
            return Either::Left(self.inner.call(request));
        };
        // Taken out in open mode too: no handler ever sees a key it could log.
        let key = take_api_key(request.headers_mut());
        if let Some(policy) = &self.policy {
            match admit(policy, &request, key.as_deref(), rpc.as_str()) {
                Ok(caller) => {
                    // In the call's context (`grpc::call`), for every later line of the call.
                    context::record_caller(&caller.name);
                    request.extensions_mut().insert(AuthorizedCaller(caller));
                }
                Err(status) => return Either::Right(ready(Ok(status.into_http()))),
            }
        }
        Either::Left(self.inner.call(request))
    }
}

/// Resolves the caller, checks the RPC and the caller's rate.
fn admit<B>(
    policy: &PolicyFile,
    request: &http::Request<B>,
    key: Option<&[u8]>,
    rpc: &str,
) -> Result<Arc<Caller>, Status> {
    if let Some(malformed) = request.extensions().get::<MalformedXfcc>() {
        metrics::refused(Refusal::UnknownCaller, "");
        let remote = remote_ip(request);
        let who = remote.map(|ip| ip.to_string()).unwrap_or_default();
        if let Some(suppressed) = throttle::security_event("malformed xfcc", &who) {
            // Never quoting the header: it may be long, and it is the sender's words.
            tracing::warn!(target: "security", rpc, xfcc = %malformed, remote = remote.map(field::display), api_key = key.is_some(), suppressed, "call refused: malformed x-forwarded-client-cert");
        }
        return Err(Unauthenticated::MalformedIdentity.into());
    }
    let identity = request.extensions().get::<PeerIdentity>();
    let caller = policy.current().resolve(identity, key).map_err(|error: Unauthenticated| {
        metrics::refused(Refusal::UnknownCaller, "");
        let remote = remote_ip(request);
        // Counted per identity, else per address (not per port: each connection has its own).
        let who = match (identity, remote) {
            (Some(identity), _) => Cow::Borrowed(identity.as_str()),
            (None, Some(ip)) => Cow::Owned(ip.to_string()),
            (None, None) => Cow::Borrowed(""),
        };
        if let Some(suppressed) = throttle::security_event("unknown caller", &who) {
            // The identity is not a secret; the key never appears.
            tracing::warn!(target: "security", rpc, peer = identity.map(PeerIdentity::as_str), peer_kind = identity.map(PeerIdentity::kind), remote = remote.map(field::display), api_key = key.is_some(), %error, suppressed, "call refused: unknown caller");
        }
        Status::from(error)
    })?;
    caller.check_rpc(rpc).map_err(|refusal| {
        metrics::refused(Refusal::Policy, &caller.name);
        if let Some(suppressed) = throttle::security_event("call refused", &caller.name) {
            tracing::warn!(target: "security", caller = %caller.name, refused = %refusal.refused, suppressed, "call refused by the caller policy");
        }
        Status::from(refusal)
    })?;
    if let Some(rate) = &caller.rate {
        // Not a security event: a busy caller is not an attack, and logging every refusal
        // would let a caller flood the log.
        rate.check().inspect_err(|_| {
            metrics::refused(Refusal::RateLimit, &caller.name);
            tracing::debug!(caller = %caller.name, rpc, "caller over its rate limit");
        })?;
    }
    Ok(caller)
}

/// The address the request's connection came from, if the transport knows it.
fn remote_ip<B>(request: &http::Request<B>) -> Option<std::net::IpAddr> {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|info| info.remote_addr)
        .map(|addr| addr.ip())
}

/// The API key of a request, removed from its headers: `authorization: Bearer <key>` (scheme
/// case-insensitive, RFC 9110 §11.1), else `x-api-key`.
fn take_api_key(headers: &mut http::HeaderMap) -> Option<Vec<u8>> {
    let bearer = headers.remove(http::header::AUTHORIZATION).and_then(|value| {
        let value = value.as_bytes();
        (value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ")).then(|| value[7..].trim_ascii().to_vec())
    });
    let x_api_key = headers.remove(X_API_KEY).map(|v| v.as_bytes().trim_ascii().to_vec());
    bearer.or(x_api_key).filter(|key| !key.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_key_comes_from_a_bearer_or_x_api_key_and_is_stripped() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, "bearer  k1 ".parse().unwrap());
        headers.insert(X_API_KEY, "k2".parse().unwrap());
        assert_eq!(take_api_key(&mut headers).as_deref(), Some(&b"k1"[..]));
        assert!(headers.is_empty(), "no key is left for a handler to log");
        headers.insert(X_API_KEY, "k2".parse().unwrap());
        assert_eq!(take_api_key(&mut headers).as_deref(), Some(&b"k2"[..]));
        headers.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(take_api_key(&mut headers), None);
    }
}
