//! Connection limits over real sockets: idle gRPC connections are closed (and busy ones never),
//! both listeners cap their connections and cut those that send no request in time, and health
//! `Watch` streams are counted.
//!
//! Where they run: on PostgreSQL only; what they test is the transport, which is the same
//! whatever the store.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ratchet::grpc::pb::RotateRequest;
use ratchet::grpc::pb::token_service_client::TokenServiceClient;
use ratchet::http::JWKS_PATH;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::Channel;

use crate::helpers::{channel, http_get, issue, spawn_app_adjusted};

/// The connections a [`watched_channel`] opened, and how many of them have ended.
#[derive(Default)]
struct Watch {
    opened: AtomicUsize,
    ended: AtomicUsize,
}

impl Watch {
    fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }

    fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }
}

/// A TCP stream that counts on its [`Watch`] when it ends: when it reads the end of the stream
/// (the server closed it), or is dropped (the client closed it, as tonic's does once the server's
/// GOAWAY leaves it no call to wait for).
struct Watched {
    stream: TcpStream,
    watch: Arc<Watch>,
    ended: bool,
}

impl Watched {
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.watch.ended.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.end();
    }
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() == before {
            this.end();
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A plaintext channel to `addr` whose connections are watched: opened, and ended by the server.
async fn watched_channel(addr: SocketAddr) -> (Channel, Arc<Watch>) {
    let watch = Arc::new(Watch::default());
    let counter = watch.clone();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let watch = counter.clone();
            async move {
                let stream = TcpStream::connect(addr).await?;
                watch.opened.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(Watched {
                    stream,
                    watch,
                    ended: false,
                }))
            }
        }))
        .await
        .unwrap();
    (channel, watch)
}

/// Waits (at most `limit`) until `done`; whether it came.
async fn eventually(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

const IDLE: Duration = Duration::from_secs(1);

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn an_idle_grpc_connection_is_closed_after_the_idle_timeout_whatever_its_keepalive_pings(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let app = spawn_app_adjusted(options, |parts| {
        parts.settings.limits.idle_timeout = IDLE;
        // Five PINGs a second, answered by the client: they must not count as activity.
        parts.settings.limits.http2_keepalive_interval = Duration::from_millis(200);
    })
    .await;
    let (watched, watch) = watched_channel(app.addr).await;
    let client = TokenServiceClient::new(watched);
    issue(&client, "alice").await;
    tokio::time::sleep(IDLE / 2).await;
    assert_eq!(watch.ended(), 0, "closed before it was idle for the timeout");

    assert!(
        eventually(3 * IDLE, || watch.ended() == 1).await,
        "an idle connection is still open"
    );
    // The client was told (GOAWAY) and closed the connection; it opens a new one for its next
    // call, and a fresh channel is served as well.
    issue(&client, "alice").await;
    assert_eq!(watch.opened(), 2);
    issue(&TokenServiceClient::new(channel(app.addr).await), "bob").await;
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_call_longer_than_the_idle_timeout_is_not_cut_and_the_connection_is_idle_from_its_end(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let app = spawn_app_adjusted(options, |parts| parts.settings.limits.idle_timeout = IDLE).await;
    let pair = app.issue("alice").await;
    // A Rotate held up in the database for two and a half idle timeouts.
    app.hook_spends("perform pg_sleep(2.5); return new;").await;
    let (watched, watch) = watched_channel(app.addr).await;
    let started = Instant::now();
    // Kept: dropping the last handle on a channel closes its connection.
    let mut client = TokenServiceClient::new(watched);
    client
        .rotate(RotateRequest {
            refresh_token: pair.refresh_token,
        })
        .await
        .expect("a call in flight is never cut");
    assert!(started.elapsed() >= 2 * IDLE, "{:?}", started.elapsed());
    assert_eq!(
        (watch.opened(), watch.ended()),
        (1, 0),
        "the call's connection stayed open"
    );

    let ended = Instant::now();
    assert!(
        eventually(3 * IDLE, || watch.ended() == 1).await,
        "idle after the call, yet still open"
    );
    assert!(
        ended.elapsed() >= IDLE / 2,
        "closed {:?} after the call",
        ended.elapsed()
    );
    drop(client);
    app.unhook_spends().await;
    app.stop().await;
}

/// Reads until the server closes `stream` (or resets it); how long after `opened` that was, or
/// `None` if it was still open after `limit`.
async fn closed_within(mut stream: TcpStream, opened: Instant, limit: Duration) -> Option<Duration> {
    let mut answer = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut answer))
        .await
        .ok()
        .map(|_| opened.elapsed())
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_slowloris_http_client_is_disconnected_after_the_header_read_timeout(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let app = spawn_app_adjusted(options, |parts| {
        parts.settings.http.as_mut().unwrap().limits.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let http = app.http_addr.unwrap();
    let opened = Instant::now();
    // Half a request head, then nothing; and a client that sends nothing at all.
    let mut dribbling = TcpStream::connect(http).await.unwrap();
    dribbling
        .write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: ratchet\r\nX-Slow: ")
        .await
        .unwrap();
    let silent = TcpStream::connect(http).await.unwrap();
    for (client, stream) in [("dribbling", dribbling), ("silent", silent)] {
        let after = closed_within(stream, opened, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("the {client} client is still connected after 5 s"));
        assert!(after >= Duration::from_millis(800), "{client}: closed after {after:?}");
    }
    assert_eq!(app.http_get(JWKS_PATH, &[]).await.status, 200, "others are served");
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn beyond_the_http_connection_cap_a_new_connection_waits_for_a_free_one(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let app = spawn_app_adjusted(options, |parts| {
        parts.settings.http.as_mut().unwrap().limits.max_connections = 2;
    })
    .await;
    let http = app.http_addr.unwrap();
    let first = TcpStream::connect(http).await.unwrap();
    let _second = TcpStream::connect(http).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let waiting = tokio::spawn(http_get(http, JWKS_PATH, &[]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "served beyond the cap of 3 connections");
    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("served once a connection was free")
        .unwrap();
    assert_eq!(answer.status, 200);
    app.stop().await;
}

/// The HTTP/2 connection preface and an empty SETTINGS frame: what every HTTP/2 client sends
/// first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// The preface, then the start of a request: a HEADERS frame on stream 1 without END_HEADERS
/// (`:method POST`, `:scheme http`), whose CONTINUATION never comes.
fn partial_request() -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    bytes.extend_from_slice(&[0x00, 0x00, 0x02, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x83, 0x86]);
    bytes
}

/// Connections to `addr` that send nothing, only the preface, and half a request; each with what
/// it sent.
async fn stalled_connections(addr: SocketAddr) -> Vec<(&'static str, TcpStream)> {
    let mut stalled = Vec::new();
    for (what, bytes) in [
        ("silent", Vec::new()),
        ("preface only", PREFACE.to_vec()),
        ("half a request", partial_request()),
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        stalled.push((what, stream));
    }
    stalled
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_grpc_connection_that_sends_no_complete_request_in_time_is_cut(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let deadline = Duration::from_secs(1);
    let app = spawn_app_adjusted(options, |parts| parts.settings.limits.first_request_timeout = deadline).await;
    let opened = Instant::now();
    let stalled = stalled_connections(app.addr).await;
    // A client that connects ahead of its first call, and one that calls at once.
    let (early, early_watch) = watched_channel(app.addr).await;
    let client = TokenServiceClient::new(channel(app.addr).await);
    issue(&client, "alice").await;
    for (what, stream) in stalled {
        let after = closed_within(stream, opened, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{what}: still connected after 5 s (first request deadline {deadline:?})"));
        assert!(after >= deadline * 4 / 5, "{what}: cut after {after:?}");
    }
    // The early client was told (GOAWAY) and reconnects for its call; the other is not cut later
    // for being slow to call again.
    assert!(
        eventually(Duration::from_secs(3), || early_watch.ended() == 1).await,
        "the early client's unused connection is still open"
    );
    issue(&TokenServiceClient::new(early), "bob").await;
    assert_eq!(early_watch.opened(), 2);
    issue(&client, "alice").await;
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn an_http_connection_that_sends_only_the_http2_preface_is_cut_after_the_header_read_timeout(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let timeout = Duration::from_secs(1);
    let app = spawn_app_adjusted(options, |parts| {
        parts.settings.http.as_mut().unwrap().limits.header_read_timeout = timeout;
    })
    .await;
    let opened = Instant::now();
    for (what, stream) in stalled_connections(app.http_addr.unwrap()).await {
        let after = closed_within(stream, opened, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{what}: still connected after 5 s (header read timeout {timeout:?})"));
        assert!(after >= timeout * 4 / 5, "{what}: cut after {after:?}");
    }
    assert_eq!(app.http_get(JWKS_PATH, &[]).await.status, 200, "others are served");
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn beyond_the_grpc_connection_cap_a_new_connection_waits_until_one_closes(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let app = spawn_app_adjusted(options, |parts| parts.settings.limits.max_connections = 3).await;
    // The test app's own client holds one connection; two idle plaintext ones fill the cap (the
    // first request deadline is 10 s).
    let first = TcpStream::connect(app.addr).await.unwrap();
    let second = TcpStream::connect(app.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let addr = app.addr;
    let waiting = tokio::spawn(async move { issue(&TokenServiceClient::new(channel(addr).await), "alice").await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "served beyond the cap of 3 connections");
    drop(first);
    tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("served once a connection closed")
        .unwrap();
    drop(second);
    app.stop().await;
}

/// A health `Watch` of the whole server, once its first answer has come.
async fn watch_health(
    addr: SocketAddr,
) -> Result<tonic::Streaming<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut stream = HealthClient::new(channel(addr).await)
        .watch(HealthCheckRequest { service: String::new() })
        .await?
        .into_inner();
    stream.message().await?.expect("a first status");
    Ok(stream)
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn health_watch_streams_beyond_the_cap_are_refused_until_one_ends(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let app = spawn_app_adjusted(options, |parts| parts.settings.limits.max_health_watches = 3).await;
    let mut watching = Vec::new();
    for _ in 0..3 {
        watching.push(watch_health(app.addr).await.expect("a watch under the cap"));
    }
    let refused = watch_health(app.addr)
        .await
        .expect_err("a fourth watch beyond the cap of 3");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    app.health().await; // Check is not limited

    drop(watching.pop());
    let deadline = Instant::now() + Duration::from_secs(3);
    let freed = loop {
        match watch_health(app.addr).await {
            Ok(stream) => break stream,
            Err(status) if status.code() == tonic::Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(status) => panic!("a watch after one ended: {status:?}"),
        }
    };
    drop((freed, watching));
    app.stop().await;
}
