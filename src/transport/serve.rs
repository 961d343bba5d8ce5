//! Serving accepted connections, each bounded in how long it may sit idle.
//!
//! [`grpc`]: tonic serves each connection as before (same settings, layers, max connection age,
//! drain), but as a server of its own whose shutdown signal is "this connection has been idle
//! for `--idle-timeout`, or the whole server is stopping". tonic has no per-connection idle
//! timeout and offers no other way to make hyper close one connection gracefully; this way the
//! client gets an HTTP/2 GOAWAY, exactly as for `--max-connection-age` or shutdown, never a
//! connection cut under it. A request arriving as the GOAWAY leaves is still served (hyper only
//! refuses streams after the final GOAWAY, which then names the last one it took), and a client
//! simply opens a new connection for its next call.
//!
//! Left out: accepting and TLS (`accept`), counting requests (`idle`).

use std::future::Future;
use std::io;
use std::pin::pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};
use tokio::sync::watch;
use tonic::codegen::{Bytes, StdError};
use tonic::service::Routes;
use tonic::transport::server::Router;
use tower_layer::Layer;
use tower_service::Service;

use super::accept::Conn;
use super::idle::Activity;

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

/// Out of file descriptors and the like: pause rather than spin.
async fn accept_failed(error: &io::Error) {
    tracing::warn!(%error, "cannot accept a connection");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
