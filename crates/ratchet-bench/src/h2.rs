//! The load generator's gRPC transport: one HTTP/2 connection per handle, straight on hyper.
//!
//! tonic's `Channel` puts a buffer task between every caller and the connection (an mpsc hop and
//! a task wake-up per request) and a reconnect layer; on this 2-core machine the load generator
//! shares the CPU with the server and the database, so every microsecond it spends is taken from
//! what it measures. hyper's `SendRequest` is itself a cheap clonable handle to the connection
//! task. The generated tonic client still encodes and decodes the messages.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ratchet::grpc::pb::token_service_client::TokenServiceClient;
use tokio::net::TcpStream;
use tonic::body::Body;

use crate::authz::AuthzClient;

pub type Client = TokenServiceClient<Connection>;

/// Both services' clients on one connection.
#[derive(Clone)]
pub struct Clients {
    pub tokens: Client,
    /// Envoy's ext_authz service on the same connection.
    pub authz: AuthzClient,
}

/// A handle to one HTTP/2 connection; clones share it.
#[derive(Clone)]
pub struct Connection {
    send: http2::SendRequest<Body>,
    /// `x-api-key`, added to every request.
    api_key: Option<http::HeaderValue>,
}

impl tower_service::Service<http::Request<Body>> for Connection {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if let Some(key) = &self.api_key {
            request.headers_mut().insert("x-api-key", key.clone());
        }
        Box::pin(self.send.send_request(request))
    }
}

impl Connection {
    pub fn new(send: http2::SendRequest<Body>, api_key: Option<http::HeaderValue>) -> Self {
        Self { send, api_key }
    }
}

/// Opens one connection to `addr` (`http://host:port`).
pub async fn connect(addr: &str, api_key: Option<&str>) -> anyhow::Result<Clients> {
    let origin: http::Uri = addr.parse()?;
    let authority = origin
        .authority()
        .ok_or_else(|| anyhow::anyhow!("--addr needs host:port: {addr}"))?
        .as_str()
        .to_owned();
    let stream = TcpStream::connect(&authority).await?;
    stream.set_nodelay(true)?;
    let (send, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("connection to the server ended: {error}");
        }
    });
    let api_key = api_key.map(http::HeaderValue::from_str).transpose()?;
    let connection = Connection { send, api_key };
    Ok(Clients {
        tokens: TokenServiceClient::with_origin(connection.clone(), origin.clone()),
        authz: AuthzClient::new(connection, origin),
    })
}
