//! `ratchet.v1.TokenService`: decode, call the issuer, encode. Nothing else belongs here.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::pb::{self, token_service_server::TokenService};
use crate::clock::Clock;
use crate::issuer::Issuer;
use crate::issuer::types::{PresentedToken, RevokeTarget, Subject};
use crate::store::FamilyStore;

pub struct TokenServiceImpl<S> {
    issuer: Arc<Issuer<S>>,
    clock: Arc<dyn Clock>,
}

impl<S> TokenServiceImpl<S> {
    pub fn new(issuer: Arc<Issuer<S>>, clock: Arc<dyn Clock>) -> Self {
        Self { issuer, clock }
    }
}

#[tonic::async_trait]
impl<S: FamilyStore> TokenService for TokenServiceImpl<S> {
    async fn issue(&self, request: Request<pb::IssueRequest>) -> Result<Response<pb::TokenPair>, Status> {
        let params = convert::issue_params(request.into_inner(), &self.issuer.policy().default_audience)?;
        let pair = self.issuer.issue(params, self.clock.now()).await?;
        Ok(Response::new(pair.into()))
    }

    async fn rotate(&self, request: Request<pb::RotateRequest>) -> Result<Response<pb::TokenPair>, Status> {
        let token = PresentedToken::try_from(request.into_inner())?;
        let pair = self.issuer.rotate(token, self.clock.now()).await?;
        Ok(Response::new(pair.into()))
    }

    async fn revoke(&self, request: Request<pb::RevokeRequest>) -> Result<Response<pb::RevokeResponse>, Status> {
        let target = RevokeTarget::try_from(request.into_inner())?;
        let families_revoked = self.issuer.revoke(target, self.clock.now()).await?;
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
        let subject = Subject::try_from(request.into_inner())?;
        let sessions = self.issuer.list_sessions(subject, self.clock.now()).await?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: sessions.into_iter().map(Into::into).collect(),
        }))
    }
}
