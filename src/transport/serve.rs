//! Serving accepted connections on both listeners, each bounded in how long it may sit idle.
//!
//! - [`grpc`]: tonic serves each connection as before (same settings, layers, max connection age,
//!   drain), but as a server of its own whose shutdown signal is "this connection has been idle
//!   for `--idle-timeout`, or the whole server is stopping". tonic has no per-connection idle
//!   timeout and offers no other way to make hyper close one connection gracefully; this way the
//!   client gets an HTTP/2 GOAWAY, exactly as for `--max-connection-age` or shutdown, never a
//!   connection cut under it. A request arriving as the GOAWAY leaves is still served (hyper only
//!   refuses streams after the final GOAWAY, which then names the last one it took), and a client
//!   simply opens a new connection for its next call.
//! - [`http`]: the JWKS listener, by hand rather than `axum::serve` (which sets no timer, so
//!   hyper's HTTP/1 header read timeout never fires, and has no idle timeout or connection cap):
//!   at most `--http-max-connections` at once (further ones wait in the kernel's backlog, like
//!   TLS handshakes beyond their cap), a client that has not sent a complete request head within
//!   `--http-header-read-timeout` is dropped (slowloris), and a connection with no request in
//!   flight for `--http-idle-timeout` is closed gracefully.
//!
//! Left out: accepting and TLS (`accept`), counting requests (`idle`).

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tonic::codegen::{Bytes, StdError};
use tonic::service::Routes;
use tonic::transport::server::Router;
use tower_layer::Layer;
use tower_service::Service;

use super::accept::Conn;
use super::idle::{Activity, Tracked};

/// Serves the gRPC `router` on each connection from `incoming` until `shutdown` resolves, then
/// has every connection drain (GOAWAY) and waits for them. With `idle_timeout`, a connection with
/// no call in flight for that long is closed the same way.
pub async fn grpc<L, ResBody>(
    router: Router<L>,
    incoming: impl Stream<Item = io::Result<Conn>>,
    idle_timeout: Option<Duration>,
    shutdown: impl Future<Output = ()>,
) where
    L: Layer<Routes> + Clone + Send + Sync + 'static,
    L::Service: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    <L::Service as Service<http::Request<tonic::body::Body>>>::Future: Send,
    <L::Service as Service<http::Request<tonic::body::Body>>>::Error: Into<StdError> + Send,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<StdError>,
{
    let (stop, stopping) = watch::channel(false);
    // Each connection's task holds a receiver: all of them gone, all connections closed.
    let (all_closed, open) = watch::channel(());
    {
        let mut incoming = pin!(incoming);
        let mut shutdown = pin!(shutdown);
        loop {
            let conn = tokio::select! {
                () = &mut shutdown => break,
                conn = incoming.next() => conn,
            };
            let mut conn = match conn {
                Some(Ok(conn)) => conn,
                Some(Err(error)) => {
                    accept_failed(&error).await;
                    continue;
                }
                None => break,
            };
            let activity = Activity::default();
            conn.track(activity.clone());
            let mut stopping = stopping.clone();
            let signal = async move {
                let stop = async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                };
                match idle_timeout {
                    Some(timeout) => tokio::select! {
                        () = activity.idle(timeout) => tracing::debug!(?timeout, "closing an idle gRPC connection"),
                        () = stop => {}
                    },
                    None => stop.await,
                }
            };
            // One connection, then nothing: tonic must not take the stream's end for a shutdown.
            let one = futures_util::stream::once(std::future::ready(Ok::<_, io::Error>(conn)))
                .chain(futures_util::stream::pending());
            let served = router.clone().serve_with_incoming_shutdown(one, signal);
            let open = open.clone();
            tokio::spawn(async move {
                if let Err(error) = served.await {
                    tracing::debug!(%error, "failed serving a gRPC connection");
                }
                drop(open);
            });
        }
    }
    // `incoming` is gone: the listener is closed. Now drain.
    let _ = stop.send(true);
    drop(open);
    all_closed.closed().await;
}

/// Bounds on the HTTP (JWKS) listener's connections; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// A client must send a complete request head within this (HTTP/1, also between keep-alive
    /// requests), and its first request within this of connecting (either protocol).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// Serves `router` on the connections from `incoming` within `limits` until `shutdown`
/// resolves; then lets requests in flight finish and waits for the connections to close.
pub async fn http(
    router: axum::Router,
    incoming: impl Stream<Item = io::Result<Conn>>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop, stopping) = watch::channel(false);
    let (all_closed, open) = watch::channel(());
    {
        let mut incoming = pin!(incoming);
        let mut shutdown = pin!(shutdown);
        loop {
            // A permit first: at the cap, connections wait to be accepted, costing nothing here.
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break, // never closed
                },
            };
            let conn = tokio::select! {
                () = &mut shutdown => break,
                conn = incoming.next() => conn,
            };
            match conn {
                Some(Ok(conn)) => {
                    tokio::spawn(http_connection(
                        router.clone(),
                        conn,
                        limits,
                        stopping.clone(),
                        (permit, open.clone()),
                    ));
                }
                Some(Err(error)) => accept_failed(&error).await,
                None => break,
            }
        }
    }
    let _ = stop.send(true);
    drop(open);
    all_closed.closed().await;
}

/// One HTTP connection, until it closes; `_held` (its connection permit and its place among the
/// open connections) goes with it.
async fn http_connection(
    router: axum::Router,
    conn: Conn,
    limits: HttpLimits,
    mut stopping: watch::Receiver<bool>,
    _held: (OwnedSemaphorePermit, watch::Receiver<()>),
) {
    let activity = Activity::default();
    let service = TowerToHyperService::new(Tracked::new(router, activity.clone()));
    let mut builder = Builder::new(TokioExecutor::new());
    // Without a timer hyper never enforces the header read timeout.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let mut conn = pin!(builder.serve_connection(TokioIo::new(conn), service));
    // hyper's own timeout starts once it knows the protocol; this one covers a client that never
    // sends enough to tell (nothing at all, or a stalled HTTP/2 preface).
    let mut no_request = pin!(activity.no_request_within(limits.header_read_timeout));
    let mut idle = pin!(activity.idle(limits.idle_timeout));
    let mut stop = pin!(stopping.wait_for(|stop| *stop));
    let mut closing = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%error, "HTTP connection ended with an error");
                }
                return;
            }
            () = &mut no_request, if !closing => {
                tracing::debug!("closing an HTTP connection that sent no request in time");
                closing = true;
            }
            () = &mut idle, if !closing => {
                tracing::debug!("closing an idle HTTP connection");
                closing = true;
            }
            _ = &mut stop, if !closing => closing = true,
        }
        conn.as_mut().graceful_shutdown();
    }
}

/// A peer that gave up before it was accepted is nothing to report; out of file descriptors and
/// the like, pause rather than spin.
async fn accept_failed(error: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        tracing::debug!(%error, "a connection ended before it was accepted");
        return;
    }
    tracing::warn!(%error, "cannot accept a connection");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
