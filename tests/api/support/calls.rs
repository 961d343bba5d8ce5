//! The small call helpers every test module uses: one Issue or Introspect with nothing else set,
//! a Check as Envoy sends it, a JWT's parts, channels to a server, and the assertions on a refused
//! call's status.

use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use ratchet::grpc::pb::token_service_client::TokenServiceClient;
use ratchet::grpc::pb::{IssueRequest, TokenPair};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt as _;

/// Issues a pair for `subject` with nothing else set.
pub async fn issue(client: &TokenServiceClient<Channel>, subject: &str) -> TokenPair {
    client
        .clone()
        .issue(IssueRequest {
            subject: subject.into(),
            ..Default::default()
        })
        .await
        .expect("issue")
        .into_inner()
}

/// Introspects `token` without a hint.
pub async fn introspect(client: &TokenServiceClient<Channel>, token: &str) -> ratchet::grpc::pb::IntrospectResponse {
    client
        .clone()
        .introspect(ratchet::grpc::pb::IntrospectRequest {
            token: token.into(),
            token_type_hint: String::new(),
        })
        .await
        .expect("introspect")
        .into_inner()
}

/// Part `index` of a JWT (0 header, 1 payload) as JSON, without verifying anything.
pub fn jwt_part(jwt: &str, index: usize) -> serde_json::Value {
    use base64::Engine as _;
    let part = jwt.split('.').nth(index).expect("a JWT part");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON")
}

/// Asserts `status` is UNAUTHENTICATED with ErrorInfo `reason` in domain `ratchet`.
#[track_caller]
pub fn assert_token_error(status: &Status, reason: &str) {
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let info = status.get_details_error_info().expect("an ErrorInfo detail");
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "ratchet");
}

/// Asserts `status` is INVALID_ARGUMENT and its message names `field`.
#[track_caller]
pub fn assert_invalid_argument(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with(&format!("{field}:")),
        "message {:?} should name {field}",
        status.message()
    );
}

/// What the health service at `addr` says of the token service.
pub async fn health_at(addr: SocketAddr) -> ServingStatus {
    let mut client = HealthClient::new(channel(addr).await);
    let answer = client
        .check(HealthCheckRequest {
            service: "ratchet.v1.TokenService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(answer.status).unwrap()
}

/// A plaintext gRPC channel to `addr`, for clients that have no `connect` of their own.
pub async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A channel to `addr` that counts the TCP connections it opens, so a test can tell "the call
/// failed and the connection lived on" from "the connection died and the channel quietly
/// reconnected".
pub async fn counting_channel(addr: SocketAddr) -> (Channel, Arc<std::sync::atomic::AtomicUsize>) {
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = opened.clone();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    (channel, opened)
}

/// A Check as Envoy sends it: the HTTP request's headers, and the route's context extensions
/// (`ratchet.required_scopes`, say).
pub fn check_request(headers: &[(&str, &str)], extensions: &[(&str, &str)]) -> CheckRequest {
    let pairs = |pairs: &[(&str, &str)]| pairs.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/orders".into(),
                    headers: pairs(headers),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: pairs(extensions),
            ..Default::default()
        }),
    }
}
