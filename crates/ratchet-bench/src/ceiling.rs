//! The Introspect ceiling: a bare tonic server on ratchet's own proto that answers Introspect
//! from a `HashMap` and nothing else: no signature, no cache, no caller policy, no layers, no
//! logging, no metrics. Issue hands out tokens of a real ratchet token's length (so that a
//! request and its lookup carry as many bytes) and remembers the answer Introspect will give,
//! with every field ratchet fills (so that the answer encodes to as many bytes).
//!
//! `bench/run.sh` runs it beside the server and drives it with the same `introspect-hot` load:
//! ratchet's server CPU per call over this one's is what ratchet's own work costs (issue 18's
//! target is at most 1.15×; the smoke run fails above 1.5×). Run by `ratchet-bench
//! --serve-ceiling ADDR`, until killed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use ratchet::grpc::pb::token_service_server::{TokenService, TokenServiceServer};
use ratchet::grpc::pb::{
    GetJwksRequest, GetJwksResponse, IntrospectRequest, IntrospectResponse, IssueRequest, ListSessionsRequest,
    ListSessionsResponse, RevokeRequest, RevokeResponse, RotateRequest, TokenPair,
};
use tonic::{Request, Response, Status};

/// The length of the access token ratchet issues for the load generator's Issue request (an
/// EdDSA JWT with its header, claims and signature; the `access_token_bytes` of a
/// `bench/run.sh` line of ratchet's, which `bench/report.py` compares with this one's).
pub const ACCESS_TOKEN_BYTES: usize = 548;
/// `rt_` and 43 characters of base64url, as ratchet's refresh tokens.
const REFRESH_TOKEN_BYTES: usize = 46;
const ACCESS_TTL_SECONDS: i64 = 900;

/// Serves the ceiling on `addr` until the process is killed.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    eprintln!("ceiling: serving Issue and Introspect from a HashMap on {addr}");
    tonic::transport::Server::builder()
        .add_service(TokenServiceServer::new(Ceiling::default()))
        .serve(addr)
        .await?;
    Ok(())
}

#[derive(Default)]
struct Ceiling {
    answers: RwLock<HashMap<String, IntrospectResponse>>,
    issued: AtomicU64,
}

/// `prefix` and `n` in hex, padded with `x` to `len` bytes.
fn padded(prefix: &str, n: u64, len: usize) -> String {
    let mut token = format!("{prefix}{n:016x}");
    token.extend(std::iter::repeat_n('x', len.saturating_sub(token.len())));
    token
}

/// A uuid's length, as ratchet's family and token ids.
fn id(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

#[tonic::async_trait]
impl TokenService for Ceiling {
    async fn issue(&self, request: Request<IssueRequest>) -> Result<Response<TokenPair>, Status> {
        let request = request.into_inner();
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let access_token = padded("eyJ", n, ACCESS_TOKEN_BYTES);
        let now = now();
        let answer = IntrospectResponse {
            active: true,
            token_type: "access_token".into(),
            subject: request.subject,
            scopes: request.scopes,
            audiences: vec!["ratchet".into()],
            client_id: request.client_id,
            issuer: "ratchet".into(),
            jti: id(n),
            family_id: id(n),
            issued_at: now,
            expires_at: now + ACCESS_TTL_SECONDS,
        };
        self.answers
            .write()
            .map_err(|_| Status::internal("poisoned"))?
            .insert(access_token.clone(), answer);
        Ok(Response::new(TokenPair {
            access_token,
            refresh_token: padded("rt_", n, REFRESH_TOKEN_BYTES),
            token_type: "Bearer".into(),
            expires_in: ACCESS_TTL_SECONDS,
            refresh_expires_at: now + 7 * 24 * 3600,
            family_id: id(n),
        }))
    }

    async fn introspect(&self, request: Request<IntrospectRequest>) -> Result<Response<IntrospectResponse>, Status> {
        let token = request.into_inner().token;
        let answer = self
            .answers
            .read()
            .map_err(|_| Status::internal("poisoned"))?
            .get(&token)
            .cloned()
            .unwrap_or_default();
        Ok(Response::new(answer))
    }

    async fn rotate(&self, _: Request<RotateRequest>) -> Result<Response<TokenPair>, Status> {
        Err(Status::unimplemented("the ceiling serves Issue and Introspect only"))
    }

    async fn revoke(&self, _: Request<RevokeRequest>) -> Result<Response<RevokeResponse>, Status> {
        Err(Status::unimplemented("the ceiling serves Issue and Introspect only"))
    }

    async fn list_sessions(&self, _: Request<ListSessionsRequest>) -> Result<Response<ListSessionsResponse>, Status> {
        Err(Status::unimplemented("the ceiling serves Issue and Introspect only"))
    }

    async fn get_jwks(&self, _: Request<GetJwksRequest>) -> Result<Response<GetJwksResponse>, Status> {
        Err(Status::unimplemented("the ceiling serves Issue and Introspect only"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_a_real_tokens_length_and_differ() {
        let (a, b) = (
            padded("eyJ", 1, ACCESS_TOKEN_BYTES),
            padded("eyJ", 2, ACCESS_TOKEN_BYTES),
        );
        assert_eq!(a.len(), ACCESS_TOKEN_BYTES);
        assert_ne!(a, b);
        assert_eq!(padded("rt_", 7, REFRESH_TOKEN_BYTES).len(), REFRESH_TOKEN_BYTES);
        assert_eq!(id(3).len(), 36);
    }

    #[tokio::test]
    async fn an_issued_token_introspects_active_and_any_other_inactive() {
        let ceiling = Ceiling::default();
        let pair = ceiling
            .issue(Request::new(IssueRequest {
                subject: "alice".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let introspect = |token: String| {
            ceiling.introspect(Request::new(IntrospectRequest {
                token,
                token_type_hint: String::new(),
            }))
        };
        let answer = introspect(pair.access_token).await.unwrap().into_inner();
        assert!(answer.active);
        assert_eq!(answer.subject, "alice");
        assert!(!introspect("eyJnope".into()).await.unwrap().into_inner().active);
    }
}
