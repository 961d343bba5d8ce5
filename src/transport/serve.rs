//! Serving accepted connections on both listeners: a cap on how many are open, a deadline for the
//! first request, a bound on how long each may sit idle.
//!
//! - Both listeners take a permit before they accept a connection (`next_connection`): at the
//!   cap (`--max-connections`, `--http-max-connections`) further connections wait in the kernel's
//!   backlog, costing nothing here (over TLS, up to [`super::accept::MAX_HANDSHAKES`] more are
//!   accepted for their handshakes, then wait). The permit goes with the connection's transport
//!   (`Held`), so it is free again the moment the connection is.
//! - A connection that has not completed its first request's headers within the deadline
//!   (`--first-request-timeout`, `--http-header-read-timeout`) is closed gracefully (a GOAWAY:
//!   a client that connected ahead of its first call learns that nothing was started and
//!   reconnects when it has one), and [`FIRST_REQUEST_GRACE`] later cut: its transport fails the
//!   next read. The cut is what bounds a hostile client: HTTP/2's graceful close waits for the
//!   peer to answer a PING, which a client that sent nothing, or only the connection preface,
//!   need never do (issue 20: 550 such plaintext connections were all still open after 40 s,
//!   held until the idle timeout).
//! - [`grpc`]: tonic serves each connection as before (same settings, layers, max connection age,
//!   drain), but as a server of its own whose shutdown signal is "this connection has been idle
//!   for `--idle-timeout`, has closed, or the whole server is stopping". tonic has no
//!   per-connection idle timeout and offers no other way to make hyper close one connection
//!   gracefully; this way the client gets an HTTP/2 GOAWAY, exactly as for `--max-connection-age`
//!   or shutdown, never a connection cut under it. A request arriving as the GOAWAY leaves is
//!   still served (hyper only refuses streams after the final GOAWAY, which then names the last
//!   one it took), and a client simply opens a new connection for its next call.
//! - [`http`](fn@http): the JWKS listener, by hand rather than `axum::serve` (which sets no timer, so
//!   hyper's HTTP/1 header read timeout never fires, and has no idle timeout or connection cap):
//!   a client that has not sent a complete request head within `--http-header-read-timeout` is
//!   dropped (slowloris; hyper's own timeout for each later HTTP/1 request head), and a
//!   connection with no request in flight for `--http-idle-timeout` is closed gracefully.
//!
//! Left out: accepting and TLS (`accept`), counting requests (`idle`).

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::time::Sleep;
use tonic::codegen::{Bytes, StdError};
use tonic::service::Routes;
use tonic::transport::server::Router;
use tower_layer::Layer;
use tower_service::Service;

use super::accept::{Conn, PeerInfo};
use super::activity::Activity;
use super::idle::Tracked;

/// How long after the first request deadline's GOAWAY a connection is cut: one round trip for
/// the client to answer the GOAWAY's PING and close (milliseconds within a data centre).
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Bounds on the gRPC listener's connections; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcLimits {
    /// Connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// A connection must complete its first request's headers within this, or is closed (and cut
    /// [`FIRST_REQUEST_GRACE`] later).
    pub first_request_timeout: Duration,
    /// A connection with no call in flight for this long is closed gracefully; `None`: never.
    pub idle_timeout: Option<Duration>,
}

/// Serves the gRPC `router` on each connection from `incoming` within `limits` until `shutdown`
/// resolves, then has every connection drain (GOAWAY) and waits for them.
pub async fn grpc<L, ResBody>(
    router: Router<L>,
    incoming: impl Stream<Item = io::Result<Conn>>,
    limits: GrpcLimits,
    shutdown: impl Future<Output = ()>,
) where
    L: Layer<Routes> + Clone + Send + Sync + 'static,
    L::Service: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    <L::Service as Service<http::Request<tonic::body::Body>>>::Future: Send,
    <L::Service as Service<http::Request<tonic::body::Body>>>::Error: Into<StdError> + Send,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<StdError>,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop, stopping) = watch::channel(false);
    // Each connection's task holds a receiver: all of them gone, all connections closed.
    let (all_closed, open) = watch::channel(());
    {
        let mut incoming = pin!(incoming);
        let mut shutdown = pin!(shutdown);
        loop {
            let (mut conn, permit) = tokio::select! {
                () = &mut shutdown => break,
                next = next_connection(&permits, incoming.as_mut()) => match next {
                    Some(Ok(next)) => next,
                    Some(Err(error)) => {
                        accept_failed(&error).await;
                        continue;
                    }
                    None => break,
                },
            };
            let activity = Activity::default();
            conn.track(activity.clone());
            let (conn, gone) = Held::new(conn, permit, activity.clone(), limits.first_request_timeout);
            let mut stopping = stopping.clone();
            let signal = async move {
                let stop = async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                };
                // tonic's server of one connection ends only on its signal: the connection
                // ending by itself (its transport dropped) must be one, or the task and its
                // place among the open connections would outlive it.
                let ended = async move {
                    let _ = gone.await;
                };
                let idle = async {
                    match limits.idle_timeout {
                        Some(timeout) => {
                            activity.idle(timeout).await;
                            tracing::debug!(?timeout, "closing an idle gRPC connection");
                        }
                        None => std::future::pending().await,
                    }
                };
                let no_request = async {
                    activity.no_request_within(limits.first_request_timeout).await;
                    tracing::debug!("closing a gRPC connection that sent no request in time");
                };
                tokio::select! {
                    () = idle => {}
                    () = no_request => {}
                    () = stop => {}
                    () = ended => {}
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

/// The next connection from `incoming` and its permit of `permits`, taken first: at the cap the
/// connection is not accepted at all (see the module docs). Cancel-safe.
async fn next_connection(
    permits: &Arc<Semaphore>,
    mut incoming: Pin<&mut impl Stream<Item = io::Result<Conn>>>,
) -> Option<io::Result<(Conn, OwnedSemaphorePermit)>> {
    // Never closed.
    let permit = permits.clone().acquire_owned().await.ok()?;
    Some(incoming.next().await?.map(|conn| (conn, permit)))
}

/// A connection's transport as it is served: holds the connection's place under the cap until
/// it is dropped (hyper drops it when the connection ends), says so on the `oneshot` then, and
/// fails reads once the first request is late (see the module docs).
struct Held {
    conn: Conn,
    /// Until the first request has started; `None` after.
    first_request: Option<(Activity, Pin<Box<Sleep>>)>,
    _permit: OwnedSemaphorePermit,
    _gone: oneshot::Sender<()>,
}

impl Held {
    /// `conn` holding `permit`, cut unless a request has started on `activity` within
    /// `first_request` (and its grace); and what resolves once it is dropped.
    fn new(
        conn: Conn,
        permit: OwnedSemaphorePermit,
        activity: Activity,
        first_request: Duration,
    ) -> (Self, oneshot::Receiver<()>) {
        let (gone, dropped) = oneshot::channel();
        let held = Self {
            conn,
            first_request: Some((
                activity,
                Box::pin(tokio::time::sleep(first_request + FIRST_REQUEST_GRACE)),
            )),
            _permit: permit,
            _gone: gone,
        };
        (held, dropped)
    }
}

impl tonic::transport::server::Connected for Held {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.conn.peer_info()
    }
}

impl AsyncRead for Held {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // One branch per read once the first request has started.
        if let Some((activity, deadline)) = &mut this.first_request {
            if activity.has_started() {
                this.first_request = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                // Polling the timer registered this task: hyper reads again when it fires.
                tracing::debug!(peer = ?this.conn.peer_info().remote_addr, "cutting a connection that sent no request in time");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no request in time")));
            }
        }
        Pin::new(&mut this.conn).poll_read(cx, buf)
    }
}

impl AsyncWrite for Held {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write_vectored(cx, bufs)
    }

    /// As the connection's (see [`Conn`]'s).
    fn is_write_vectored(&self) -> bool {
        self.conn.is_write_vectored()
    }
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
            let next = tokio::select! {
                () = &mut shutdown => break,
                next = next_connection(&permits, incoming.as_mut()) => next,
            };
            match next {
                Some(Ok((conn, permit))) => {
                    tokio::spawn(http_connection(
                        router.clone(),
                        conn,
                        permit,
                        limits,
                        stopping.clone(),
                        open.clone(),
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

/// One HTTP connection, until it closes; `_open` (its place among the open connections) goes
/// with it.
async fn http_connection(
    router: axum::Router,
    conn: Conn,
    permit: OwnedSemaphorePermit,
    limits: HttpLimits,
    mut stopping: watch::Receiver<bool>,
    _open: watch::Receiver<()>,
) {
    let activity = Activity::default();
    let (conn, _) = Held::new(conn, permit, activity.clone(), limits.header_read_timeout);
    let service = TowerToHyperService::new(Tracked::new(router, activity.clone()));
    let mut builder = Builder::new(TokioExecutor::new());
    // Without a timer hyper never enforces the header read timeout.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let mut conn = pin!(builder.serve_connection(TokioIo::new(conn), service));
    // Held cuts the connection a grace after this, if the client does not close it.
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
