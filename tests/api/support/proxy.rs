//! A TCP proxy between a test's clients and PostgreSQL that injects network faults on command.
//!
//! Point a client at [`Proxy::route`]`(options)` instead of the server, then, while it runs:
//! - [`cut`](Proxy::cut) closes every proxied connection and refuses new ones until
//!   [`restore`](Proxy::restore): the database vanished from the network;
//! - [`cut_after_forwarding`](Proxy::cut_after_forwarding) lets one client->server chunk carrying a
//!   pattern reach the server, then cuts: the server got the request (a COMMIT, say) but the
//!   client never learns how it ended;
//! - [`delay_responses`](Proxy::delay_responses) holds every server->client chunk: a slow network
//!   or a loaded server;
//! - [`strip_startup_options`](Proxy::strip_startup_options) drops the `options` startup parameter
//!   of new connections, as some connection poolers do: our
//!   `-c default_transaction_isolation=serializable` never reaches the server.
//!
//! `Proxy` is its own handle: clone it into whatever task needs to pull the plug. Its tasks run on
//! the test's runtime and end with it (or at a cut).
//!
//! It knows PostgreSQL's wire protocol only as far as the startup packet; everything after is
//! opaque bytes. So the client must not use TLS for the byte-level faults: [`Proxy::route`]
//! disables it. Patterns match raw bytes on the wire, which has two consequences for SQL text:
//! sqlx sends a statement's text only in its Parse message, i.e. the first time a connection
//! prepares it (cached statements travel by name), and in the extended protocol the chunk that
//! carries Parse usually also carries Bind/Execute/Sync, but nothing guarantees it.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions, PgSslMode};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Longest pattern [`Proxy::cut_after_forwarding`] takes; each connection keeps one byte less of
/// the previous chunk to find a pattern split across two reads.
const MAX_PATTERN: usize = 256;
/// PostgreSQL's own bound on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
const MAX_STARTUP_PACKET: usize = 10_000;
/// Protocol 3.0 in a StartupMessage; the minor version is ignored.
const PROTOCOL_MAJOR_3: u32 = 3;
/// Request codes a client may send before its StartupMessage to ask for encryption.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// A fault-injecting TCP proxy in front of one PostgreSQL server; a cheap, clonable handle.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

struct Shared {
    addr: SocketAddr,
    upstream: SocketAddr,
    faults: Mutex<Faults>,
    /// Bumped by every cut. The accept loop and each connection watch it, and end when it moves.
    cuts: watch::Sender<u64>,
    /// The accept loop, and the cut generation it started in: the proxy is up while no cut has
    /// happened since. A tokio mutex, as cut and restore hold it across awaits so that they do
    /// not interleave.
    accept: tokio::sync::Mutex<Option<(u64, JoinHandle<()>)>>,
    /// Whether the armed [`Proxy::cut_after_forwarding`] went off.
    fired: AtomicBool,
}

#[derive(Default)]
struct Faults {
    cut_after: Option<Vec<u8>>,
    delay: Duration,
    strip_options: bool,
}

impl Proxy {
    /// A proxy on a free port of 127.0.0.1, forwarding to `upstream`.
    ///
    /// # Panics
    /// No port can be bound.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let shared = Arc::new(Shared {
            addr: listener.local_addr().expect("the proxy's address"),
            upstream,
            faults: Mutex::default(),
            cuts: watch::Sender::new(0),
            accept: tokio::sync::Mutex::new(None),
            fired: AtomicBool::new(false),
        });
        *shared.accept.lock().await = Some(spawn_accept_loop(&shared, listener));
        Self { shared }
    }

    /// A proxy in front of the server `options` point at.
    ///
    /// # Panics
    /// Its host does not resolve.
    pub async fn in_front_of(options: &PgConnectOptions) -> Self {
        let upstream = tokio::net::lookup_host((options.get_host(), options.get_port()))
            .await
            .ok()
            // IPv4 first: "localhost" may resolve to ::1 where the server does not listen.
            .and_then(|addrs| addrs.min_by_key(SocketAddr::is_ipv6))
            .unwrap_or_else(|| panic!("cannot resolve {}", options.get_host()));
        Self::start(upstream).await
    }

    /// Where it listens, for a `DATABASE_URL` through it (add `sslmode=disable`).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// A URL for the `ratchet` binary to reach `database` as `options`' user through the proxy
    /// (without TLS, so that the proxy sees the protocol).
    pub fn database_url(&self, options: &PgConnectOptions, database: &str) -> String {
        format!(
            "postgres://{}@{}/{database}?sslmode=disable",
            options.get_username(),
            self.addr()
        )
    }

    /// `options` (user, database, settings) through the proxy, without TLS so that the proxy
    /// sees the protocol.
    pub fn route(&self, options: PgConnectOptions) -> PgConnectOptions {
        options
            .host(&self.shared.addr.ip().to_string())
            .port(self.shared.addr.port())
            .ssl_mode(PgSslMode::Disable)
    }

    /// Closes every proxied connection and the listener: connecting is refused until
    /// [`restore`](Self::restore). Returns once all of them are closed.
    pub async fn cut(&self) {
        let mut accept = self.shared.accept.lock().await;
        self.shared.cut_now();
        if let Some((_, task)) = accept.take() {
            let _ = task.await;
        }
    }

    /// Listens again, on the same address. Faults that were set stay set.
    ///
    /// # Panics
    /// The address was taken in the meantime.
    pub async fn restore(&self) {
        let mut accept = self.shared.accept.lock().await;
        if let Some((generation, task)) = accept.take() {
            if generation == *self.shared.cuts.borrow() {
                // Still up.
                *accept = Some((generation, task));
                return;
            }
            // Cut by cut_after_forwarding: its listener must be closed before we bind again.
            let _ = task.await;
        }
        let listener = TcpListener::bind(self.shared.addr)
            .await
            .expect("bind the proxy's address again");
        *accept = Some(spawn_accept_loop(&self.shared, listener));
    }

    /// Arms a one-shot cut: the next client->server chunk containing `pattern` (also when it is
    /// split across two reads) is forwarded to the server, then every connection is closed and
    /// new ones refused, as after [`cut`](Self::cut), until [`restore`](Self::restore). Arming
    /// again replaces the pattern and clears [`fired`](Self::fired).
    ///
    /// # Panics
    /// `pattern` is empty or longer than 256 bytes.
    pub fn cut_after_forwarding(&self, pattern: impl Into<Vec<u8>>) {
        let pattern = pattern.into();
        assert!(
            !pattern.is_empty() && pattern.len() <= MAX_PATTERN,
            "a pattern of 1 to {MAX_PATTERN} bytes"
        );
        self.shared.fired.store(false, Ordering::SeqCst);
        self.shared.faults().cut_after = Some(pattern);
    }

    /// [`cut_after_forwarding`](Self::cut_after_forwarding), then [`restore`](Self::restore)
    /// `after` it went off: a network that drops one request's answer and comes back. Await the
    /// handle to know the network is back.
    pub fn cut_once_after_forwarding(&self, pattern: impl Into<Vec<u8>>, after: Duration) -> JoinHandle<()> {
        self.cut_after_forwarding(pattern);
        let proxy = self.clone();
        tokio::spawn(async move {
            while !proxy.fired() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(after).await;
            proxy.restore().await;
        })
    }

    /// Whether the armed [`cut_after_forwarding`](Self::cut_after_forwarding) went off.
    pub fn fired(&self) -> bool {
        self.shared.fired.load(Ordering::SeqCst)
    }

    /// Holds every server->client chunk read from now on for `delay` before passing it on
    /// (`Duration::ZERO`: no delay). Each chunk waits in turn, so a new connection's handshake,
    /// several round trips, takes several delays.
    pub fn delay_responses(&self, delay: Duration) {
        self.shared.faults().delay = delay;
    }

    /// From now on, drops the `options` parameter from the StartupMessage of new connections.
    /// A client that asks for TLS first is told no, so it goes on in plaintext (or, if it
    /// requires TLS, gives up).
    pub fn strip_startup_options(&self) {
        self.shared.faults().strip_options = true;
    }
}

impl Shared {
    fn faults(&self) -> MutexGuard<'_, Faults> {
        // A test that panicked while holding the lock has failed already; the faults are intact.
        self.faults.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ends the accept loop and every connection (they watch `cuts`).
    fn cut_now(&self) {
        self.cuts.send_modify(|generation| *generation += 1);
    }

    /// Whether the armed pattern occurs in `chunk` or across `tail` (the end of the previous
    /// chunk) and `chunk`; if so, it is disarmed, so that only one connection fires.
    fn take_pattern_in(&self, tail: &[u8], chunk: &[u8]) -> bool {
        let mut faults = self.faults();
        let found = faults
            .cut_after
            .as_deref()
            .is_some_and(|pattern| occurs_across(tail, chunk, pattern));
        if found {
            faults.cut_after = None;
        }
        found
    }
}

fn spawn_accept_loop(shared: &Arc<Shared>, listener: TcpListener) -> (u64, JoinHandle<()>) {
    // Subscribed here, not in the task: a cut between this spawn and the task's first poll must
    // still end it.
    let mut cuts = shared.cuts.subscribe();
    let generation = *cuts.borrow_and_update();
    (generation, tokio::spawn(accept_loop(shared.clone(), listener, cuts)))
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, mut cuts: watch::Receiver<u64>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = cuts.changed() => break,
            accepted = listener.accept() => {
                if let Ok((client, _)) = accepted {
                    connections.spawn(connection(shared.clone(), client, cuts.clone()));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Refuse new connections first, then wait until every proxied one is closed.
    drop(listener);
    connections.shutdown().await;
}

async fn connection(shared: Arc<Shared>, client: TcpStream, mut cuts: watch::Receiver<u64>) {
    tokio::select! {
        biased;
        _ = cuts.changed() => {}
        () = forward(&shared, client) => {}
    }
    // Dropping both sockets closes both directions.
}

/// Relays one connection until either side closes, or it carried the armed pattern.
async fn forward(shared: &Shared, mut client: TcpStream) {
    let Ok(mut server) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    // Chunks should leave as they came: Nagle would merge or hold them.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let strip = shared.faults().strip_options;
    if strip && relay_startup_without_options(&mut client, &mut server).await.is_err() {
        return;
    }
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = client_to_server(shared, client_read, server_write) => {}
        _ = server_to_client(shared, server_read, client_write) => {}
    }
}

/// Copies client->server; after forwarding the chunk with the armed pattern, cuts the proxy.
async fn client_to_server(shared: &Shared, mut from: OwnedReadHalf, mut to: OwnedWriteHalf) -> io::Result<()> {
    let mut buffer = vec![0; 16 * 1024];
    let mut tail = Vec::with_capacity(MAX_PATTERN);
    loop {
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        let chunk = &buffer[..read];
        let fire = shared.take_pattern_in(&tail, chunk);
        to.write_all(chunk).await?;
        if fire {
            // Both before any socket closes, so a client that sees its connection fail sees
            // `fired` too. On loopback the chunk is in the server's receive buffer once
            // write_all returns, so closing now cannot lose it.
            shared.fired.store(true, Ordering::SeqCst);
            shared.cut_now();
            return Ok(());
        }
        keep_tail(&mut tail, chunk);
    }
}

/// Copies server->client, holding each chunk for the delay set when it arrived.
async fn server_to_client(shared: &Shared, mut from: OwnedReadHalf, mut to: OwnedWriteHalf) -> io::Result<()> {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        let delay = shared.faults().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        to.write_all(&buffer[..read]).await?;
    }
}

/// Whether `pattern` occurs in `chunk`, or starts in `tail` and ends in `chunk`. A match lying
/// wholly in `tail` does not count: that chunk was checked already.
fn occurs_across(tail: &[u8], chunk: &[u8], pattern: &[u8]) -> bool {
    let carried = &tail[tail.len().saturating_sub(pattern.len() - 1)..];
    let window = [carried, chunk].concat();
    window.windows(pattern.len()).any(|candidate| candidate == pattern)
}

/// Keeps the last `MAX_PATTERN - 1` bytes of what has passed, the most a split pattern can
/// have in the previous chunk.
fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    tail.extend_from_slice(chunk);
    let excess = tail.len().saturating_sub(MAX_PATTERN - 1);
    tail.drain(..excess);
}

/// Reads the client's startup packets; answers a request for TLS or GSS encryption with 'N'
/// (go on in plaintext) and passes the StartupMessage on without its `options`.
async fn relay_startup_without_options(client: &mut TcpStream, server: &mut TcpStream) -> io::Result<()> {
    loop {
        let packet = read_startup_packet(client).await?;
        match u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]) {
            SSL_REQUEST | GSSENC_REQUEST => client.write_all(b"N").await?,
            _ => return server.write_all(&without_options(&packet)).await,
        }
    }
}

/// One startup-phase packet: an int32 length (counting itself), then that many bytes less four.
async fn read_startup_packet(from: &mut (impl AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
    let mut length = [0; 4];
    from.read_exact(&mut length).await?;
    let total = u32::from_be_bytes(length) as usize;
    if !(8..=MAX_STARTUP_PACKET).contains(&total) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a startup packet"));
    }
    let mut packet = vec![0; total];
    packet[..4].copy_from_slice(&length);
    from.read_exact(&mut packet[4..]).await?;
    Ok(packet)
}

/// A StartupMessage (int32 length, int32 protocol, NUL-terminated key and value strings, a final
/// NUL) without its `options` parameter, length recomputed. Anything else, or a message that does
/// not parse, is returned as it is, for the server to judge.
fn without_options(packet: &[u8]) -> Vec<u8> {
    let rewrite = || -> Option<Vec<u8>> {
        let protocol = u32::from_be_bytes(packet.get(4..8)?.try_into().ok()?);
        if protocol >> 16 != PROTOCOL_MAJOR_3 {
            return None;
        }
        let mut kept = Vec::with_capacity(packet.len());
        kept.extend_from_slice(&[0; 4]); // the length, filled in below
        kept.extend_from_slice(&packet[4..8]);
        let mut rest = packet.get(8..)?;
        loop {
            let key_end = rest.iter().position(|&b| b == 0)?;
            if key_end == 0 {
                break; // the final NUL
            }
            let value_end = key_end + 1 + rest[key_end + 1..].iter().position(|&b| b == 0)?;
            if &rest[..key_end] != b"options" {
                kept.extend_from_slice(&rest[..=value_end]);
            }
            rest = &rest[value_end + 1..];
        }
        kept.push(0);
        let length = u32::try_from(kept.len()).ok()?;
        kept[..4].copy_from_slice(&length.to_be_bytes());
        Some(kept)
    };
    rewrite().unwrap_or_else(|| packet.to_vec())
}

async fn isolation(connection: &mut PgConnection) -> String {
    sqlx::query_scalar("show default_transaction_isolation")
        .fetch_one(connection)
        .await
        .unwrap()
}

#[test]
fn a_pattern_split_across_two_reads_is_found_once() {
    let pattern = b"COMMIT";
    assert!(occurs_across(b"", b"xxCOMMITxx", pattern));
    assert!(occurs_across(b"...COM", b"MIT;", pattern));
    assert!(occurs_across(b"...COMMI", b"T", pattern));
    assert!(
        !occurs_across(b"...COMMIT", b"; select 1", pattern),
        "already found in that chunk"
    );
    assert!(!occurs_across(b"COM", b"MITT", b"XCOMMIT"));

    let mut tail = Vec::new();
    keep_tail(&mut tail, b"ab");
    keep_tail(&mut tail, &[b'c'; 2 * MAX_PATTERN]);
    assert_eq!(tail.len(), MAX_PATTERN - 1);
    assert!(tail.iter().all(|&b| b == b'c'));
}

#[test]
fn stripping_drops_only_the_options_parameter_and_recomputes_the_length() {
    let startup = |pairs: &[(&str, &str)]| {
        let mut body = 196_608_u32.to_be_bytes().to_vec();
        for (key, value) in pairs {
            body.extend_from_slice(key.as_bytes());
            body.push(0);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = u32::try_from(body.len() + 4).unwrap().to_be_bytes().to_vec();
        packet.extend(body);
        packet
    };
    let original = startup(&[
        ("user", "postgres"),
        ("options", "-c default_transaction_isolation=serializable"),
        ("database", "ratchet"),
    ]);
    assert_eq!(
        without_options(&original),
        startup(&[("user", "postgres"), ("database", "ratchet")])
    );
    let plain = startup(&[("user", "postgres")]);
    assert_eq!(without_options(&plain), plain);
    let mut cancel = 16_u32.to_be_bytes().to_vec();
    cancel.extend_from_slice(&80_877_102_u32.to_be_bytes());
    cancel.extend_from_slice(&[1; 8]);
    assert_eq!(without_options(&cancel), cancel, "not a StartupMessage: untouched");
    let truncated = &original[..original.len() - 10];
    assert_eq!(without_options(truncated), truncated, "does not parse: untouched");
}

#[sqlx::test(migrations = false)]
async fn a_proxy_that_strips_startup_options_loses_the_serializable_default(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let serializable = options
        .clone()
        .options([("default_transaction_isolation", "serializable")]);
    let server_default = isolation(&mut PgConnection::connect_with(&options).await.unwrap()).await;
    assert_ne!(
        server_default, "serializable",
        "the test needs a server that defaults to something else"
    );
    let proxy = Proxy::in_front_of(&options).await;
    let mut passed = PgConnection::connect_with(&proxy.route(serializable.clone()))
        .await
        .unwrap();
    assert_eq!(isolation(&mut passed).await, "serializable", "untouched unless asked");

    proxy.strip_startup_options();
    // With TLS preferred the client asks for it first: the proxy says no, the client goes on.
    let through = proxy.route(serializable).ssl_mode(PgSslMode::Prefer);
    let mut stripped = PgConnection::connect_with(&through).await.unwrap();
    assert_eq!(isolation(&mut stripped).await, server_default);
    let database: String = sqlx::query_scalar("select current_database()")
        .fetch_one(&mut stripped)
        .await
        .unwrap();
    assert_eq!(
        database,
        options.get_database().unwrap(),
        "the other parameters still arrive"
    );
    assert_eq!(
        isolation(&mut passed).await,
        "serializable",
        "open connections stay as they were"
    );
}

#[sqlx::test(migrations = false)]
async fn a_cut_closes_open_connections_and_refuses_new_ones_until_restored(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let proxy = Proxy::in_front_of(&options).await;
    let mut open = PgConnection::connect_with(&proxy.route(options.clone())).await.unwrap();
    proxy.cut().await;
    assert!(sqlx::raw_sql("select 1").execute(&mut open).await.is_err());
    assert!(PgConnection::connect_with(&proxy.route(options.clone())).await.is_err());
    assert!(
        TcpStream::connect(proxy.addr()).await.is_err(),
        "refused, not accepted and closed"
    );
    proxy.restore().await;
    proxy.restore().await; // restoring what is up changes nothing
    let mut again = PgConnection::connect_with(&proxy.route(options)).await.unwrap();
    sqlx::raw_sql("select 1").execute(&mut again).await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn cutting_after_forwarding_a_pattern_lets_the_server_run_it_while_every_client_loses_its_connection(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let proxy = Proxy::in_front_of(&options).await;
    let mut doomed = PgConnection::connect_with(&proxy.route(options.clone())).await.unwrap();
    let mut bystander = PgConnection::connect_with(&proxy.route(options.clone())).await.unwrap();
    proxy.cut_after_forwarding("forwarded_before_the_cut");
    sqlx::raw_sql("select 'no pattern here'")
        .execute(&mut bystander)
        .await
        .unwrap();
    assert!(!proxy.fired());

    let outcome = sqlx::raw_sql("create table forwarded_before_the_cut (id int)")
        .execute(&mut doomed)
        .await;
    assert!(outcome.is_err(), "the client must not learn the outcome: {outcome:?}");
    assert!(proxy.fired());
    assert!(
        sqlx::raw_sql("select 1").execute(&mut bystander).await.is_err(),
        "every proxied connection is closed"
    );
    assert!(
        PgConnection::connect_with(&proxy.route(options.clone())).await.is_err(),
        "no new connections until restored"
    );

    proxy.restore().await;
    let mut after = PgConnection::connect_with(&proxy.route(options)).await.unwrap();
    // The server got the statement and ran it; its backend may still be finishing.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let exists: bool = sqlx::query_scalar("select to_regclass('forwarded_before_the_cut') is not null")
            .fetch_one(&mut after)
            .await
            .unwrap();
        if exists {
            break;
        }
        assert!(Instant::now() < deadline, "the forwarded statement never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::raw_sql("select 'forwarded_before_the_cut'")
        .execute(&mut after)
        .await
        .expect("one-shot: the pattern no longer cuts");
}

#[sqlx::test(migrations = false)]
async fn delayed_responses_make_a_query_take_at_least_the_delay(_pool: PgPoolOptions, options: PgConnectOptions) {
    const DELAY: Duration = Duration::from_millis(400);
    let proxy = Proxy::in_front_of(&options).await;
    let mut connection = PgConnection::connect_with(&proxy.route(options)).await.unwrap();

    proxy.delay_responses(DELAY);
    let started = Instant::now();
    sqlx::raw_sql("select 1").execute(&mut connection).await.unwrap();
    assert!(started.elapsed() >= DELAY, "took {:?}", started.elapsed());

    proxy.delay_responses(Duration::ZERO);
    let started = Instant::now();
    sqlx::raw_sql("select 1").execute(&mut connection).await.unwrap();
    assert!(
        started.elapsed() < DELAY,
        "no delay any more, took {:?}",
        started.elapsed()
    );
}
