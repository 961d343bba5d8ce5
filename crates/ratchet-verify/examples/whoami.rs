//! A gRPC service that accepts only ratchet access tokens, and a client to call it.
//!
//! ```sh
//! # next to a running ratchet (JWKS on 127.0.0.1:8080, issuer "ratchet"):
//! cargo run -p ratchet-verify --example whoami -- serve
//! # get an access token from ratchet's Issue, then:
//! cargo run -p ratchet-verify --example whoami -- call eyJ...
//! ```
//!
//! Settings: `RATCHET_JWKS_URL` (default `http://127.0.0.1:8080/.well-known/jwks.json`),
//! `RATCHET_ISSUER` (default `ratchet`), `WHOAMI_AUDIENCE` (optional), `WHOAMI_LISTEN` (default
//! `127.0.0.1:50052`).
//!
//! The service is `example.Whoami/Whoami`: an empty request (`google.protobuf.Empty`), a string
//! answer (`google.protobuf.StringValue`), written by hand on `tonic::server::Grpc` so that the
//! example needs no `.proto` file and no protoc. A real service generates its code with
//! tonic-build as usual; the wiring is the same: one `.layer(..)` on the server, and
//! `request.extensions().get::<Claims>()` in the handler.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use ratchet_verify::{Claims, Verifier, VerifyLayer};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Error = Box<dyn std::error::Error + Send + Sync>;

const PATH: &str = "/example.Whoami/Whoami";

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["serve"] => serve().await,
        ["call", token] => call(token).await,
        _ => Err("usage: whoami serve | whoami call <access token>".into()),
    }
}

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn serve() -> Result<(), Error> {
    let jwks_url = setting("RATCHET_JWKS_URL", "http://127.0.0.1:8080/.well-known/jwks.json");
    let issuer = setting("RATCHET_ISSUER", "ratchet");
    let mut verifier = Verifier::builder(&jwks_url, &issuer);
    if let Ok(audience) = std::env::var("WHOAMI_AUDIENCE") {
        verifier = verifier.audience(audience);
    }
    let verifier = verifier.build()?;
    // Optional: the service starts either way, and answers UNAVAILABLE until the keys come.
    if let Err(error) = verifier.refresh().await {
        eprintln!("key set not fetched yet ({error}); retrying in the background");
    }

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<Whoami>().await;
    let listen = setting("WHOAMI_LISTEN", "127.0.0.1:50052").parse()?;
    eprintln!("whoami on {listen}, trusting {issuer} keys from {jwks_url}");
    Server::builder()
        // Every service of this server requires a token, except health checks.
        .layer(VerifyLayer::new(verifier).exempt("/grpc.health.v1.Health/"))
        .add_service(Whoami)
        .add_service(health)
        .serve_with_shutdown(listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// The handler: the claims are in the request extensions, put there by the layer.
fn whoami(request: Request<()>) -> Result<Response<String>, Status> {
    let claims = request
        .extensions()
        .get::<Claims>()
        .ok_or_else(|| Status::unauthenticated("no verified access token"))?;
    let scopes: Vec<&str> = claims.scopes().collect();
    Ok(Response::new(format!(
        "sub={} client_id={} scopes={scopes:?} session={} expires_at={}",
        claims.sub,
        claims.client_id.as_deref().unwrap_or("-"),
        claims.sid,
        claims.exp
    )))
}

async fn call(token: &str) -> Result<(), Error> {
    let address = format!("http://{}", setting("WHOAMI_LISTEN", "127.0.0.1:50052"));
    let channel = Channel::from_shared(address)?.connect().await?;
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await?;
    let mut request = Request::new(());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let path = http::uri::PathAndQuery::from_static(PATH);
    match client.unary(request, path, ProstCodec::<(), String>::default()).await {
        Ok(answer) => println!("{}", answer.into_inner()),
        Err(status) => {
            let reason = tonic_types::StatusExt::get_details_error_info(&status).map(|info| info.reason);
            println!("{:?}: {} (reason {reason:?})", status.code(), status.message());
        }
    }
    Ok(())
}

/// `example.Whoami`, by hand: what tonic-build would generate for one unary method.
#[derive(Clone)]
struct Whoami;

impl NamedService for Whoami {
    const NAME: &'static str = "example.Whoami";
}

impl tower_service::Service<http::Request<Body>> for Whoami {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != PATH {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<String, ()>::default());
            Ok(grpc.unary(WhoamiMethod, request).await)
        })
    }
}

struct WhoamiMethod;

impl tonic::server::UnaryService<()> for WhoamiMethod {
    type Response = String;
    type Future = BoxFuture<Result<Response<String>, Status>>;

    fn call(&mut self, request: Request<()>) -> Self::Future {
        let answer = whoami(request);
        Box::pin(async move { answer })
    }
}
