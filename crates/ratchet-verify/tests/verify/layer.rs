//! The tower layer end to end: a real tonic server on a local port, a tonic client over TCP, the
//! layer installed the two ways a service would (for the whole server, or on one service), and a
//! handler that answers with what it finds in the request extensions.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use ratchet_verify::{Claims, Verifier, VerifyLayer};
use serde_json::json;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_prost::ProstCodec;
use tonic_types::StatusExt as _;

use crate::support::{JwksServer, TestKey, claims_at, unix_now};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `test.Whoami/Whoami`: no request fields, answers "<sub> <scope> <tenant>" from the claims the
/// layer left, INTERNAL when there are none (a handler reached without them is the failure).
#[derive(Clone)]
struct Whoami;

impl NamedService for Whoami {
    const NAME: &'static str = "test.Whoami";
}

impl tower::Service<http::Request<Body>> for Whoami {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<String, ()>::default());
            Ok(grpc.unary(WhoamiMethod, request).await)
        })
    }
}

struct WhoamiMethod;

impl tonic::server::UnaryService<()> for WhoamiMethod {
    type Response = String;
    type Future = BoxFuture<Result<tonic::Response<String>, Status>>;

    fn call(&mut self, request: tonic::Request<()>) -> Self::Future {
        let answer = match request.extensions().get::<Claims>() {
            Some(claims) => Ok(tonic::Response::new(format!(
                "{} {} {}",
                claims.sub,
                claims.scope.as_deref().unwrap_or_default(),
                claims.extra["tenant"].as_str().unwrap_or_default()
            ))),
            None => Err(Status::internal("the handler saw no claims")),
        };
        Box::pin(async move { answer })
    }
}

/// How the layer is installed.
enum Wiring {
    WholeServer,
    OneService,
}

/// A tonic server with Whoami and the health service, and a channel to it.
async fn serve(verifier: Verifier, wiring: Wiring) -> Channel {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let incoming = TcpIncoming::from(listener);
    match wiring {
        Wiring::WholeServer => {
            let router = Server::builder()
                .layer(VerifyLayer::new(verifier).exempt("/grpc.health.v1.Health/"))
                .add_service(Whoami)
                .add_service(health);
            tokio::spawn(router.serve_with_incoming(incoming));
        }
        Wiring::OneService => {
            let whoami = tower::ServiceBuilder::new()
                .layer(VerifyLayer::new(verifier))
                .service(Whoami);
            let router = Server::builder().add_service(whoami).add_service(health);
            tokio::spawn(router.serve_with_incoming(incoming));
        }
    }
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn whoami(channel: &Channel, authorization: Option<&str>) -> Result<String, Status> {
    let mut client = tonic::client::Grpc::new(channel.clone());
    client.ready().await.unwrap();
    let mut request = tonic::Request::new(());
    if let Some(value) = authorization {
        request.metadata_mut().insert("authorization", value.parse().unwrap());
    }
    let path = PathAndQuery::from_static("/test.Whoami/Whoami");
    client
        .unary(request, path, ProstCodec::<(), String>::default())
        .await
        .map(tonic::Response::into_inner)
}

/// The refusal's code and ErrorInfo reason, after checking the domain and that no part of the
/// answer holds the token.
fn refusal(status: &Status, token: &str) -> (Code, Option<String>) {
    let answer = format!("{status:?} {:?}", status.metadata());
    if token.len() > 8 {
        assert!(!answer.contains(token), "the answer holds the token: {answer}");
        assert!(!String::from_utf8_lossy(status.details()).contains(token));
    }
    let info = status.get_details_error_info();
    if let Some(info) = &info {
        assert_eq!(info.domain, "ratchet");
    }
    (status.code(), info.map(|info| info.reason))
}

async fn setup(wiring: Wiring) -> (JwksServer, TestKey, Channel) {
    let key = TestKey::ed25519("ed-1");
    let server = JwksServer::start(&[&key]).await;
    let verifier = server.verifier().audience("api").build().unwrap();
    verifier.refresh().await.unwrap();
    let channel = serve(verifier, wiring).await;
    (server, key, channel)
}

#[tokio::test]
async fn the_claims_of_a_valid_token_reach_the_handler() {
    for wiring in [Wiring::WholeServer, Wiring::OneService] {
        let (_server, key, channel) = setup(wiring).await;
        let token = key.token(&claims_at(unix_now()));
        let answer = whoami(&channel, Some(&format!("Bearer {token}"))).await.unwrap();
        assert_eq!(answer, "alice read write acme");
        let answer = whoami(&channel, Some(&format!("bearer {token}"))).await.unwrap();
        assert_eq!(answer, "alice read write acme");
    }
}

#[tokio::test]
async fn a_missing_or_unusable_authorization_is_unauthenticated_token_invalid() {
    for wiring in [Wiring::WholeServer, Wiring::OneService] {
        let (_server, key, channel) = setup(wiring).await;
        let token = key.token(&claims_at(unix_now()));
        let status = whoami(&channel, None).await.unwrap_err();
        assert_eq!(
            refusal(&status, ""),
            (Code::Unauthenticated, Some("TOKEN_INVALID".into()))
        );
        assert!(
            status.message().contains("missing bearer token"),
            "{}",
            status.message()
        );
        for value in [format!("Basic {token}"), token.clone(), "Bearer ".into()] {
            let status = whoami(&channel, Some(&value)).await.unwrap_err();
            assert_eq!(
                refusal(&status, &token),
                (Code::Unauthenticated, Some("TOKEN_INVALID".into()))
            );
        }
    }
}

#[tokio::test]
async fn forged_foreign_and_expired_tokens_are_refused_with_ratchets_reasons() {
    let (_server, key, channel) = setup(Wiring::WholeServer).await;
    let now = unix_now();
    let (input, _) = key
        .token(&claims_at(now))
        .rsplit_once('.')
        .map(|(i, s)| (i.to_owned(), s.to_owned()))
        .unwrap();
    let forged = format!("{input}.{}", crate::support::b64(&[7; 64]));
    let stranger = TestKey::ed25519("stranger").token(&claims_at(now));
    let mut other_audience = claims_at(now);
    other_audience["aud"] = json!(["billing"]);
    let foreign = key.token(&other_audience);
    for token in [forged, stranger, foreign] {
        let status = whoami(&channel, Some(&format!("Bearer {token}"))).await.unwrap_err();
        assert_eq!(
            refusal(&status, &token),
            (Code::Unauthenticated, Some("TOKEN_INVALID".into()))
        );
    }
    let expired = key.token(&claims_at(now - 3600));
    let status = whoami(&channel, Some(&format!("Bearer {expired}"))).await.unwrap_err();
    assert_eq!(
        refusal(&status, &expired),
        (Code::Unauthenticated, Some("TOKEN_EXPIRED".into()))
    );
}

#[tokio::test]
async fn exempt_paths_need_no_token_and_everything_else_does() {
    let (_server, _key, channel) = setup(Wiring::WholeServer).await;
    let mut health = HealthClient::new(channel.clone());
    let answer = health.check(HealthCheckRequest { service: String::new() }).await;
    assert!(answer.is_ok(), "{answer:?}");
    let status = whoami(&channel, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn keys_that_cannot_be_had_are_unavailable_not_unauthenticated() {
    let key = TestKey::ed25519("ed-1");
    let server = JwksServer::start(&[&key]).await;
    server.state.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let verifier = server.verifier().build().unwrap();
    let channel = serve(verifier, Wiring::WholeServer).await;
    let token = key.token(&claims_at(unix_now()));
    let status = whoami(&channel, Some(&format!("Bearer {token}"))).await.unwrap_err();
    assert_eq!(refusal(&status, &token), (Code::Unavailable, None));
}
