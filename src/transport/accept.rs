//! Accepting connections: plain TCP as before, or TLS with each handshake in its own task.
//!
//! A handshake never runs in the accept loop: a client that opens a connection and sends nothing
//! (slowloris) would stop everyone else. Each one is spawned, bounded by [`HANDSHAKE_TIMEOUT`],
//! and at most [`MAX_HANDSHAKES`] run at once; finished connections are handed to the server
//! through a channel, carrying what the handshake established ([`PeerInfo`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::activity::Activity;
use super::identity::PeerIdentity;
use super::tls::ListenerTls;

/// Longest a TLS handshake may take before the connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; further connections wait to be accepted (in the
/// kernel's backlog) rather than each costing a task and a buffer.
pub const MAX_HANDSHAKES: usize = 1024;

/// What the transport knows of a connection's peer; every request on it carries a copy in its
/// extensions (tonic's `Connected`), from which [`super::layer`] takes the identity.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    /// From its client certificate (mutual TLS); `None` on plaintext or without a certificate
    /// that names one.
    pub identity: Option<PeerIdentity>,
    /// Its requests in flight, for the idle timeout (see [`super::idle`]); `None`: not watched.
    pub activity: Option<Activity>,
}

/// A connection as the servers see it.
#[derive(Debug)]
pub enum Conn {
    Plain(TcpStream, PeerInfo),
    Tls(Box<TlsStream<TcpStream>>, PeerInfo),
}

impl Conn {
    /// A plaintext connection.
    pub fn plain(stream: TcpStream) -> Self {
        let info = PeerInfo {
            remote_addr: stream.peer_addr().ok(),
            identity: None,
            activity: None,
        };
        Self::Plain(stream, info)
    }

    pub fn peer_info(&self) -> PeerInfo {
        match self {
            Self::Plain(_, info) | Self::Tls(_, info) => info.clone(),
        }
    }

    /// Has every request on this connection counted on `activity`.
    pub fn track(&mut self, activity: Activity) {
        match self {
            Self::Plain(_, info) | Self::Tls(_, info) => info.activity = Some(activity),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream, _) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream, _) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream, _) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream, _) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream, _) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream, _) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream, _) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream, _) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream, _) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Tls(stream, _) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    /// Deliberately `false`, though both streams could: h2 copies a DATA payload into its write
    /// buffer, behind the frames before it and ahead of the trailers after it, only below a
    /// threshold, 256 bytes with vectored writes and 1 KiB without. Above it the payload is
    /// chained as a separate buffer and h2 flushes it before it can buffer anything else, so each
    /// answer between the two (an allow, a token pair) took two `writev`s, the trailers alone in
    /// the second: measured, two system calls per Check instead of one and ~5 µs of server CPU.
    /// Copying a payload under 1 KiB costs far less than a system call.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// Connections from `listener`, for either server: with `tls`, those that completed a handshake
/// ([`incoming`]); without, TCP connections accepted only as the server asks for the next one (so
/// that one at its connection cap leaves them in the kernel's backlog).
pub fn connections(
    listener: TcpListener,
    tls: Option<ListenerTls>,
) -> Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>> {
    use futures_util::StreamExt as _;
    match tls {
        Some(tls) => Box::pin(incoming(listener, Some(tls))),
        None => Box::pin(
            tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .map(|accepted| accepted.map(Conn::plain)),
        ),
    }
}

/// Connections from `listener`: TCP ones as they are, or, with `tls`, those that completed a
/// handshake. Ends (and closes the listener) when the receiving side is dropped.
pub fn incoming(listener: TcpListener, tls: Option<ListenerTls>) -> impl Stream<Item = io::Result<Conn>> + Send {
    let (sender, receiver) = mpsc::channel::<Conn>(64);
    tokio::spawn(accept_loop(listener, tls, sender));
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|conn| (Ok(conn), receiver))
    })
}

/// Accepts connections until the receiver is gone.
async fn accept_loop(listener: TcpListener, tls: Option<ListenerTls>, sender: mpsc::Sender<Conn>) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        // A permit first: at the limit, connections wait in the backlog.
        let permit = tokio::select! {
            permit = handshakes.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = sender.closed() => return,
        };
        let (stream, remote_addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = sender.closed() => return,
        };
        let _ = stream.set_nodelay(true);
        let Some(tls) = &tls else {
            drop(permit);
            if sender.send(Conn::plain(stream)).await.is_err() {
                return;
            }
            continue;
        };
        // The current generation's configuration, so that no session of an older one resumes.
        let acceptor = match tls.current() {
            Ok(config) => TlsAcceptor::from(config),
            Err(error) => {
                tracing::error!(%error, "cannot configure TLS for a connection; refusing it");
                continue;
            }
        };
        let sender = sender.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let identity = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| super::identity::from_certificate(leaf));
                    let info = PeerInfo {
                        remote_addr: Some(remote_addr),
                        identity,
                        activity: None,
                    };
                    let _ = sender.send(Conn::Tls(Box::new(tls), info)).await;
                }
                // Not logged above debug: scanners, health probes and plaintext clients do this
                // all day.
                Ok(Err(error)) => tracing::debug!(%remote_addr, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%remote_addr, "TLS handshake timed out"),
            }
        });
    }
}
