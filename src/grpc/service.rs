//! `ratchet.v1.TokenService`: decode, call the issuer, encode. Nothing else belongs here.

use std::future::Future;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use super::pb::{self, token_service_server::TokenService};
use super::{access, convert};
use crate::clock::Clock;
use crate::issuer::types::{PresentedToken, RevokeTarget};
use crate::issuer::{Error, Issuer};
use crate::policy::limits::RotateLimiter;
use crate::store::FamilyStore;
use crate::telemetry::context;
use crate::telemetry::metrics::{self, Refusal};

/// Runs a use case that writes on a task of its own and awaits it. A caller that goes away (its
/// deadline, a reset stream) drops this future, not the work: a write that reached the database
/// is carried through, its outcome resolved and logged, and its connection left in step.
///
/// The work is boxed and spawned at once, so that the handler's future holds only the task's
/// handle and each move of the work (into the task's cell, between its stages) is a pointer's.
/// A use case's future had been several KiB, moved whole about fifteen times per call: callgrind
/// counted ~170,000 instructions of `memcpy` per Rotate, over a third of the server's
/// (BENCHMARKS.md, "Rotate: where the server's CPU goes"; the store's futures are boxed too,
/// `store::backend`).
fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> impl Future<Output = Result<T, Status>> {
    // In the call's context, so that the use case's lines name the call, the RPC and the
    // caller (and in its span, at debug).
    let task = tokio::spawn(context::in_current_call(Box::pin(work).in_current_span()));
    async move {
        match task.await {
            Ok(result) => result.map_err(Status::from),
            // A panic in the use case: INTERNAL with an error id, like any other bug.
            Err(join) => Err(Error::Internal(Box::new(join)).into()),
        }
    }
}

pub struct TokenServiceImpl<S> {
    issuer: Arc<Issuer<S>>,
    clock: Arc<dyn Clock>,
    /// Each presented token's Rotate limit, checked before Rotate's statement (the family's is
    /// the store's), and the security log of both.
    rotate_limit: Arc<RotateLimiter>,
}

impl<S: FamilyStore> TokenServiceImpl<S> {
    pub fn new(issuer: Arc<Issuer<S>>, clock: Arc<dyn Clock>) -> Self {
        let rotate_limit = Arc::new(RotateLimiter::new(issuer.policy().rotate_limit));
        Self {
            issuer,
            clock,
            rotate_limit,
        }
    }
}

#[tonic::async_trait]
impl<S: FamilyStore> TokenService for TokenServiceImpl<S> {
    async fn issue(&self, request: Request<pb::IssueRequest>) -> Result<Response<pb::TokenPair>, Status> {
        let caller = access::caller(&request);
        let actor = access::actor(&request);
        let default_audience = &self.issuer.policy().default_audience;
        let params = convert::issue_params(request.into_inner(), default_audience)?;
        access::check_issue(caller.as_deref(), &params, default_audience)?;
        let (issuer, now) = (self.issuer.clone(), self.clock.now());
        let pair = detached(async move { issuer.issue(params, &actor, now).await }).await?;
        context::record_family(pair.family_id);
        Ok(Response::new(pair.into()))
    }

    async fn rotate(&self, request: Request<pb::RotateRequest>) -> Result<Response<pb::TokenPair>, Status> {
        let actor = access::actor(&request);
        let (_, extensions, message) = request.into_parts();
        let token = PresentedToken::try_from(message)?;
        let refused = || {
            let caller = extensions.get::<access::AuthorizedCaller>();
            metrics::refused(Refusal::RotateLimit, caller.map_or("", |caller| &caller.0.name));
        };
        // Before the statement: over the limit, the token is not spent.
        self.rotate_limit.check(&token).inspect_err(|_| refused())?;
        let (issuer, now, limiter) = (self.issuer.clone(), self.clock.now(), self.rotate_limit.clone());
        let pair = detached(async move {
            issuer.rotate(token, &actor, now).await.inspect_err(|error| {
                if let Error::RotateLimited { family, .. } = error {
                    limiter.family_refused(family.as_uuid());
                }
            })
        })
        .await
        // The family's limit, which the store enforces: the only RESOURCE_EXHAUSTED of Rotate.
        .inspect_err(|status| {
            if status.code() == tonic::Code::ResourceExhausted {
                refused();
            }
        })?;
        context::record_family(pair.family_id);
        Ok(Response::new(pair.into()))
    }

    async fn revoke(&self, request: Request<pb::RevokeRequest>) -> Result<Response<pb::RevokeResponse>, Status> {
        let caller = access::caller(&request);
        let actor = access::actor(&request);
        let target = RevokeTarget::try_from(request.into_inner())?;
        match &target {
            RevokeTarget::Subject(subject) => access::check_subject(caller.as_deref(), subject.as_str())?,
            RevokeTarget::Family(family) => context::record_family(family),
            RevokeTarget::Token(_) => {}
        }
        let subjects = access::subjects(caller);
        let (issuer, now) = (self.issuer.clone(), self.clock.now());
        let families_revoked = detached(async move { issuer.revoke(target, subjects, &actor, now).await }).await?;
        Ok(Response::new(pb::RevokeResponse { families_revoked }))
    }

    async fn introspect(
        &self,
        request: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        let token = PresentedToken::try_from(request.into_inner())?;
        let active = self.issuer.introspect(token, self.clock.now()).await?;
        Ok(Response::new(convert::introspection(active)))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = access::caller(&request);
        let (subject, page) = convert::sessions_request(request.into_inner())?;
        access::check_subject(caller.as_deref(), subject.as_str())?;
        let page = self.issuer.list_sessions(subject, page, self.clock.now()).await?;
        Ok(Response::new(page.into()))
    }

    async fn get_jwks(&self, _: Request<pb::GetJwksRequest>) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(pb::GetJwksResponse {
            jwks_json: self.issuer.jwks().json.clone(),
        }))
    }
}
