//! TLS, mutual TLS and caller identity over real sockets, with certificates made here (rcgen): a
//! CA, a server certificate for 127.0.0.1/localhost, client certificates with a SPIFFE ID, with
//! only a DNS name, and one from another CA. What identity each request carried is seen through
//! the transport's test probe (there is no caller policy to observe it through yet).
//!
//! Where they run: on PostgreSQL only; what they test is the transport, which is the same
//! whatever the store.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ratchet::transport::{PeerIdentity, TlsFiles, TransportConfig};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::binary::BIN;
use crate::helpers::{TestApp, spawn_app_adjusted};

/// A certificate authority of the test's own.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate chain and its key, as PEM.
struct Leaf {
    cert_pem: String,
    key_pem: String,
}

impl Leaf {
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn sign(&self, mut params: CertificateParams, usage: ExtendedKeyUsagePurpose) -> Leaf {
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost (new key, new serial, each call).
    fn server(&self) -> Leaf {
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        self.sign(params, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with these SANs.
    fn client(&self, sans: &[SanType]) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans.to_vec();
        self.sign(params, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

fn uri(value: &str) -> SanType {
    SanType::URI(value.try_into().unwrap())
}

fn dns(value: &str) -> SanType {
    SanType::DnsName(value.try_into().unwrap())
}

const SPIFFE_ID: &str = "spiffe://ratchet.test/ns/shop/sa/frontend";

/// A scratch directory holding the server's files.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("ratchet-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    /// Writes the server's certificate and key the way a rotation does: each to a temporary file
    /// renamed over the old one, so that no reader sees half a file.
    fn install(&self, server: &Leaf) {
        write_atomically(&self.dir.join("cert.pem"), &server.cert_pem, 0o644);
        write_atomically(&self.dir.join("key.pem"), &server.key_pem, 0o600);
    }

    fn tls(&self, server: &Leaf, client_ca: Option<&Ca>) -> TlsFiles {
        self.install(server);
        let client_ca = client_ca.map(|ca| {
            let path = self.dir.join("client-ca.pem");
            std::fs::write(&path, ca.pem()).unwrap();
            path
        });
        TlsFiles {
            cert: self.dir.join("cert.pem"),
            key: self.dir.join("key.pem"),
            client_ca,
        }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_atomically(path: &Path, text: &str, mode: u32) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text).unwrap();
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// The identities the server's requests carried, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Option<PeerIdentity>>>>);

impl Seen {
    fn last(&self) -> Option<Option<String>> {
        self.0
            .lock()
            .unwrap()
            .last()
            .map(|seen| seen.as_ref().map(|id| id.as_str().to_owned()))
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The last identity seen, with its kind.
    fn last_identity(&self) -> Option<Option<PeerIdentity>> {
        self.0.lock().unwrap().last().cloned()
    }
}

/// A server with `tls` (plaintext if `None`) and `trust_xfcc`, whose requests' identities `Seen`
/// records.
async fn spawn(options: PgConnectOptions, tls: Option<TlsFiles>, trust_xfcc: bool) -> (TestApp, Seen) {
    let seen = Seen::default();
    let record = seen.clone();
    let app = spawn_app_adjusted(options, move |parts| {
        parts.settings.transport = TransportConfig {
            tls,
            tls_reload_interval: Duration::from_secs(1),
            trust_xfcc,
            probe: Some(Arc::new(move |identity| {
                record.0.lock().unwrap().push(identity.cloned())
            })),
        };
    })
    .await;
    (app, seen)
}

/// A client trusting `ca`, presenting `client`'s certificate if given, offering `alpn`.
fn client_config(ca: &Ca, client: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).unwrap();
    let builder = ClientConfig::builder_with_provider(ratchet::transport::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some(client) => builder.with_client_auth_cert(client.chain(), client.key()).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr` (as `localhost`).
async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// A gRPC channel over TLS that counts the connections it opens.
fn tls_channel(addr: SocketAddr, config: Arc<ClientConfig>) -> (Channel, Arc<AtomicUsize>) {
    let opened = Arc::new(AtomicUsize::new(0));
    let counter = opened.clone();
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
            counter.fetch_add(1, Ordering::SeqCst);
            let config = config.clone();
            async move { connect(addr, config).await.map(hyper_util::rt::TokioIo::new) }
        }));
    (channel, opened)
}

/// One health check over `channel`: any answer means the call got through.
async fn call(channel: Channel) -> Result<(), tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map(|_| ())
}

/// The leaf certificate the server presents to a new connection.
async fn served_certificate(addr: SocketAddr, ca: &Ca) -> CertificateDer<'static> {
    let tls = connect(addr, client_config(ca, None, &[b"h2"])).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

fn leaf_der(leaf: &Leaf) -> CertificateDer<'static> {
    leaf.chain().remove(0)
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn with_tls_on_a_plaintext_client_is_refused_and_a_tls_client_without_a_certificate_is_served_unnamed(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let ca = Ca::new("server CA");
    let files = Files::new();
    let (app, seen) = spawn(options, Some(files.tls(&ca.server(), None)), false).await;

    let plaintext = Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect_lazy();
    assert!(call(plaintext).await.is_err(), "plaintext must not be served");
    assert_eq!(seen.count(), 0, "no request got through");

    // Connections that never finish their handshake do not hold up anyone else's.
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let (channel, _) = tls_channel(app.addr, client_config(&ca, None, &[b"h2"]));
    tokio::time::timeout(Duration::from_secs(5), call(channel))
        .await
        .expect("served while others stall their handshakes")
        .expect("a TLS client is served");
    assert_eq!(seen.last(), Some(None), "no client certificate: no identity");
    drop(silent);
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn with_a_client_ca_the_callers_spiffe_id_or_dns_name_reaches_every_request(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let files = Files::new();
    let (app, seen) = spawn(options, Some(files.tls(&server_ca.server(), Some(&client_ca))), false).await;

    // SPIFFE ID first, whatever comes before it.
    let spiffe = client_ca.client(&[dns("frontend.shop"), uri("https://not.spiffe"), uri(SPIFFE_ID)]);
    let (channel, _) = tls_channel(app.addr, client_config(&server_ca, Some(&spiffe), &[b"h2"]));
    call(channel.clone())
        .await
        .expect("a client of the client CA is served");
    assert_eq!(seen.last(), Some(Some(SPIFFE_ID.to_owned())));
    call(channel).await.unwrap();
    assert_eq!(
        seen.last(),
        Some(Some(SPIFFE_ID.to_owned())),
        "every request on the connection"
    );

    let named = client_ca.client(&[dns("batch.internal"), dns("other.internal")]);
    let (channel, _) = tls_channel(app.addr, client_config(&server_ca, Some(&named), &[b"h2"]));
    call(channel).await.unwrap();
    assert_eq!(
        seen.last(),
        Some(Some("batch.internal".to_owned())),
        "else the first DNS name"
    );
    assert!(
        matches!(seen.last_identity(), Some(Some(PeerIdentity::Dns(_)))),
        "of its kind"
    );

    let nameless = client_ca.client(&[]);
    let (channel, _) = tls_channel(app.addr, client_config(&server_ca, Some(&nameless), &[b"h2"]));
    call(channel)
        .await
        .expect("no name is for the policy to judge, not the transport");
    assert_eq!(seen.last(), Some(None));
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn with_a_client_ca_clients_without_its_certificate_are_refused_at_the_handshake(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let files = Files::new();
    let (app, seen) = spawn(options, Some(files.tls(&server_ca.server(), Some(&client_ca))), false).await;

    let stranger = Ca::new("another CA").client(&[uri(SPIFFE_ID)]);
    for client in [Some(&stranger), None] {
        let (channel, _) = tls_channel(app.addr, client_config(&server_ca, client, &[b"h2"]));
        assert!(call(channel).await.is_err(), "refused");
    }
    assert_eq!(seen.count(), 0, "no request got through");
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_rotated_certificate_is_served_to_new_connections_while_established_ones_keep_working(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let files = Files::new();
    let first = ca.server();
    let (app, seen) = spawn(options, Some(files.tls(&first, Some(&client_ca))), false).await;
    let client = client_ca.client(&[uri(SPIFFE_ID)]);
    let (established, opened) = tls_channel(app.addr, client_config(&ca, Some(&client), &[b"h2"]));
    call(established.clone()).await.unwrap();
    assert_eq!(served_certificate(app.addr, &ca).await, leaf_der(&first));

    // A half-rotated pair (the new certificate, the old key) is refused; the old pair stays.
    write_atomically(&files.dir.join("cert.pem"), &ca.server().cert_pem, 0o644);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        served_certificate(app.addr, &ca).await,
        leaf_der(&first),
        "a bad pair is not loaded"
    );

    let second = ca.server();
    files.install(&second);
    let deadline = Instant::now() + Duration::from_secs(15);
    while served_certificate(app.addr, &ca).await != leaf_der(&second) {
        assert!(Instant::now() < deadline, "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    call(established).await.expect("the established connection still works");
    assert_eq!(
        opened.load(Ordering::SeqCst),
        1,
        "on the same connection, not a new one"
    );
    assert_eq!(seen.last(), Some(Some(SPIFFE_ID.to_owned())));
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn the_http_listener_serves_the_jwks_over_tls(_pool: PgPoolOptions, options: PgConnectOptions) {
    let ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let files = Files::new();
    let (app, _) = spawn(options, Some(files.tls(&ca.server(), Some(&client_ca))), false).await;
    let http = app.http_addr.unwrap();

    // No client certificate needed: the JWKS is public.
    let mut tls = connect(http, client_config(&ca, None, &[b"http/1.1"])).await.unwrap();
    tls.write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    // Whether the server closes with close_notify or not, what it sent is in `raw`.
    let _ = tls.read_to_end(&mut raw).await;
    let answer = String::from_utf8_lossy(&raw);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"keys\""), "{answer}");

    let plaintext = crate::helpers::http_get(http, "/.well-known/jwks.json", &[]);
    let refused = tokio::time::timeout(Duration::from_secs(5), tokio::spawn(plaintext)).await;
    assert!(
        !matches!(refused, Ok(Ok(ref answer)) if answer.status == 200),
        "plaintext HTTP must not be served"
    );
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn the_binary_reads_a_rotated_certificate_on_sighup(_pool: PgPoolOptions, options: PgConnectOptions) {
    let ca = Ca::new("server CA");
    let files = Files::new();
    let first = ca.server();
    let tls = files.tls(&first, None);
    let url = crate::binary::database_url(&options, options.get_database().unwrap());
    let addr: SocketAddr = format!("127.0.0.1:{}", crate::binary::free_port()).parse().unwrap();
    let (cert, key) = (tls.cert.to_str().unwrap(), tls.key.to_str().unwrap());
    let server = crate::binary::Server::start_with(
        &url,
        &files.dir.join("data"),
        &files.dir.join("server.log"),
        addr,
        // An interval long enough that only the signal can explain a reload.
        &[
            ("RATCHET_TLS_CERT", cert),
            ("RATCHET_TLS_KEY", key),
            ("RATCHET_TLS_RELOAD_INTERVAL", "1h"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let served = loop {
        match connect(addr, client_config(&ca, None, &[b"h2"])).await {
            Ok(tls) => break tls.get_ref().1.peer_certificates().unwrap()[0].clone(),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(error) => panic!("server never came up over TLS: {error}"),
        }
    };
    assert_eq!(served, leaf_der(&first));

    let second = ca.server();
    files.install(&second);
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_certificate(addr, &ca).await != leaf_der(&second) {
        assert!(Instant::now() < deadline, "SIGHUP did not load the new certificate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill();
}

const XFCC: &str = "x-forwarded-client-cert";

/// A plaintext health check with an XFCC header.
async fn call_with_xfcc(addr: SocketAddr, header: &str) {
    let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
    request.metadata_mut().insert(XFCC, header.parse().unwrap());
    HealthClient::new(crate::helpers::channel(addr).await)
        .check(request)
        .await
        .unwrap();
}

/// The SHA-256 Envoy writes as `Hash=` (any 64 lower-case hex digits will do here).
const HASH: &str = "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688";

/// The element Envoy (`SANITIZE_SET`, `set_current_client_cert_details: {subject, uri, dns}`)
/// writes for a client certificate with these SANs.
fn envoy_element(uri_sans: &[&str], dns_sans: &[&str]) -> String {
    let mut fields = vec![
        "By=spiffe://ratchet.test/ns/auth/sa/ratchet".to_owned(),
        format!("Hash={HASH}"),
        r#"Subject="CN=client,O=Shop\, Inc.""#.to_owned(),
    ];
    if uri_sans.is_empty() {
        fields.push("URI=".to_owned());
    }
    fields.extend(uri_sans.iter().map(|uri| format!("URI={uri}")));
    fields.extend(dns_sans.iter().map(|dns| format!("DNS={dns}")));
    fields.join(";")
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_trusted_sidecars_xfcc_header_names_the_caller(_pool: PgPoolOptions, options: PgConnectOptions) {
    let (app, seen) = spawn(options, None, true).await;
    call_with_xfcc(app.addr, &envoy_element(&[SPIFFE_ID], &["frontend.shop"])).await;
    assert_eq!(seen.last(), Some(Some(SPIFFE_ID.to_owned())));
    // APPEND_FORWARD: the last element is our sidecar's; what the client sent before it is not.
    call_with_xfcc(
        app.addr,
        &format!("URI=spiffe://ratchet.test/forged,{}", envoy_element(&[SPIFFE_ID], &[])),
    )
    .await;
    assert_eq!(seen.last(), Some(Some(SPIFFE_ID.to_owned())));
    // A certificate without URI SAN: its first DNS name, as a DNS identity.
    call_with_xfcc(app.addr, &envoy_element(&[], &["Batch.Internal", "other.internal"])).await;
    assert_eq!(seen.last(), Some(Some("batch.internal".to_owned())));
    assert!(matches!(seen.last_identity(), Some(Some(PeerIdentity::Dns(_)))));
    call(crate::helpers::channel(app.addr).await).await.unwrap();
    assert_eq!(seen.last(), Some(None), "no header, no identity");
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn an_xfcc_header_is_ignored_unless_trusted(_pool: PgPoolOptions, options: PgConnectOptions) {
    let (app, seen) = spawn(options, None, false).await;
    call_with_xfcc(app.addr, &format!("URI={SPIFFE_ID}")).await;
    assert_eq!(seen.last(), Some(None));
    app.stop().await;
}

#[test]
fn trusting_xfcc_with_tls_or_off_loopback_is_a_configuration_error() {
    let ca = Ca::new("server CA");
    let files = Files::new();
    let tls = files.tls(&ca.server(), None);
    let cert = tls.cert.to_str().unwrap();
    let key = tls.key.to_str().unwrap();
    for (args, why) in [
        (vec!["--listen", "0.0.0.0:0"], "loopback"),
        (
            vec!["--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key],
            "TLS",
        ),
    ] {
        let output = std::process::Command::new(BIN)
            .arg("serve")
            .args(&args)
            .env("RATCHET_TRUST_XFCC", "true")
            // Never reached when the configuration is refused.
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("RATCHET_DATA_DIR", std::env::temp_dir().join("ratchet-never-created"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains("trust-xfcc") && stderr.contains(why),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_tls_key_others_may_read_is_a_configuration_error() {
    let ca = Ca::new("server CA");
    let files = Files::new();
    let tls = files.tls(&ca.server(), None);
    std::fs::set_permissions(&tls.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("RATCHET_TLS_CERT", &tls.cert)
        .env("RATCHET_TLS_KEY", &tls.key)
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("RATCHET_DATA_DIR", std::env::temp_dir().join("ratchet-never-created"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("tls: ") && stderr.contains("key.pem"), "{stderr}");
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn the_caller_policy_judges_the_mtls_identity_end_to_end(_pool: PgPoolOptions, options: PgConnectOptions) {
    use ratchet::grpc::pb::token_service_client::TokenServiceClient;

    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let files = Files::new();
    let tls = files.tls(&server_ca.server(), Some(&client_ca));
    let app = spawn_with_policy(
        options,
        tls_transport(tls, Duration::from_secs(60)),
        &format!("[[caller]]\nname = \"frontend\"\nid = \"{SPIFFE_ID}\"\nrpcs = [\"Issue\"]\n"),
    )
    .await;
    let issue = |channel: Channel| issue_over(channel, None, None);

    // The named workload may Issue, and only Issue.
    let frontend = client_ca.client(&[uri(SPIFFE_ID)]);
    let (channel, _) = tls_channel(app.addr, client_config(&server_ca, Some(&frontend), &[b"h2"]));
    issue(channel.clone()).await.expect("the policy's caller may issue");
    let refused = TokenServiceClient::new(channel)
        .list_sessions(ratchet::grpc::pb::ListSessionsRequest {
            subject: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // A certificate of the same CA for another workload: a caller the policy does not know.
    let stranger = client_ca.client(&[uri("spiffe://ratchet.test/ns/shop/sa/other")]);
    let (channel, _) = tls_channel(app.addr, client_config(&server_ca, Some(&stranger), &[b"h2"]));
    let unknown = issue(channel).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unauthenticated, "{unknown:?}");
    app.stop().await;
}

/// A TLS server with the given gRPC idle timeout and HTTP header read timeout.
async fn spawn_with_timeouts(options: PgConnectOptions, tls: TlsFiles, idle: Duration, header: Duration) -> TestApp {
    spawn_app_adjusted(options, move |parts| {
        parts.settings.transport = tls_transport(tls, Duration::from_secs(60));
        parts.settings.limits.idle_timeout = idle;
        parts.settings.http.as_mut().unwrap().limits.header_read_timeout = header;
    })
    .await
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn over_tls_an_idle_grpc_connection_is_closed_and_the_client_reconnects(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let ca = Ca::new("server CA");
    let files = Files::new();
    let idle = Duration::from_secs(1);
    let app = spawn_with_timeouts(options, files.tls(&ca.server(), None), idle, Duration::from_secs(10)).await;
    let (channel, opened) = tls_channel(app.addr, client_config(&ca, None, &[b"h2"]));
    call(channel.clone()).await.unwrap();
    tokio::time::sleep(idle / 2).await;
    call(channel.clone()).await.unwrap();
    assert_eq!(opened.load(Ordering::SeqCst), 1, "busy within the timeout: kept");

    tokio::time::sleep(idle * 2).await;
    call(channel).await.expect("the client reconnects after the idle close");
    assert_eq!(
        opened.load(Ordering::SeqCst),
        2,
        "idle past the timeout: closed, so a new connection"
    );
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn over_tls_an_http_client_dribbling_its_request_head_is_disconnected(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let ca = Ca::new("server CA");
    let files = Files::new();
    let header = Duration::from_secs(1);
    let app = spawn_with_timeouts(options, files.tls(&ca.server(), None), Duration::ZERO, header).await;
    let mut tls = connect(app.http_addr.unwrap(), client_config(&ca, None, &[b"http/1.1"]))
        .await
        .unwrap();
    tls.write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: local")
        .await
        .unwrap();
    let started = Instant::now();
    let mut raw = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut raw)).await;
    assert!(closed.is_ok(), "still connected after 5 s");
    assert!(started.elapsed() >= header / 2, "closed after {:?}", started.elapsed());
    app.stop().await;
}

/// A server enforcing the policy `text`, with `transport`.
/// TLS from `tls`, re-read every `reload`, and no XFCC.
fn tls_transport(tls: TlsFiles, reload: Duration) -> TransportConfig {
    TransportConfig {
        tls: Some(tls),
        tls_reload_interval: reload,
        trust_xfcc: false,
        probe: None,
    }
}

async fn spawn_with_policy(options: PgConnectOptions, transport: TransportConfig, text: &str) -> TestApp {
    let policy = Arc::new(ratchet::policy::reload::PolicyFile::load(&crate::policy::policy_file(text)).unwrap());
    spawn_app_adjusted(options, move |parts| {
        parts.settings.transport = transport;
        parts.settings.access.policy = Some(policy);
    })
    .await
}

/// Issue for `alice` over `channel`, with an XFCC header and an API key if given.
async fn issue_over(
    channel: Channel,
    xfcc: Option<&str>,
    key: Option<&str>,
) -> Result<ratchet::grpc::pb::TokenPair, tonic::Status> {
    let mut request = tonic::Request::new(ratchet::grpc::pb::IssueRequest {
        subject: "alice".into(),
        ..Default::default()
    });
    if let Some(header) = xfcc {
        request.metadata_mut().insert(XFCC, header.parse().unwrap());
    }
    if let Some(key) = key {
        request.metadata_mut().insert("x-api-key", key.parse().unwrap());
    }
    ratchet::grpc::pb::token_service_client::TokenServiceClient::new(channel)
        .issue(request)
        .await
        .map(tonic::Response::into_inner)
}

#[track_caller]
fn assert_caller_unknown(result: Result<ratchet::grpc::pb::TokenPair, tonic::Status>) {
    use tonic_types::StatusExt as _;
    let status = result.expect_err("must not be served as anybody");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, ratchet::grpc::status::reason::CALLER_UNKNOWN, "{status:?}");
}

const LOGIN: &str = "spiffe://ratchet.test/ns/auth/sa/login";

/// `login` by SPIFFE ID and `gateway` by API key may Issue. (Written as files were before
/// `dns =`, so that the tests that use it also run, and fail, on the code before issue 20.)
fn login_policy() -> String {
    format!(
        r#"
        [[caller]]
        name = "login"
        id = "{LOGIN}"
        rpcs = ["Issue"]

        [[caller]]
        name = "gateway"
        api_key_sha256 = "{}"
        rpcs = ["Issue"]
        "#,
        ratchet::policy::file::api_key_sha256("gateway-key-0123456789")
    )
}

/// A server doing mutual TLS with certificates of `client_ca`, under the policy `text`.
async fn spawn_mtls_with_policy(
    options: PgConnectOptions,
    files: &Files,
    server_ca: &Ca,
    client_ca: &Ca,
    text: &str,
) -> TestApp {
    let transport = TransportConfig {
        tls: Some(files.tls(&server_ca.server(), Some(client_ca))),
        ..TransportConfig::default()
    };
    spawn_with_policy(options, transport, text).await
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_dns_san_holding_a_spiffe_id_is_not_that_spiffe_caller(_pool: PgPoolOptions, options: PgConnectOptions) {
    let (server_ca, client_ca, files) = (Ca::new("server CA"), Ca::new("client CA"), Files::new());
    let app = spawn_mtls_with_policy(options, &files, &server_ca, &client_ca, &login_policy()).await;
    let over = |client: &Leaf| tls_channel(app.addr, client_config(&server_ca, Some(client), &[b"h2"])).0;

    // The real `login`: a URI SAN.
    let login = client_ca.client(&[uri(LOGIN)]);
    issue_over(over(&login), None, None)
        .await
        .expect("the SPIFFE caller may issue");

    // The same text in a DNS SAN is no identity at all, so not `login`.
    let impostor = client_ca.client(&[dns(LOGIN)]);
    assert_caller_unknown(issue_over(over(&impostor), None, None).await);
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_dns_san_names_the_caller_of_its_dns_entry_case_insensitively(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let (server_ca, client_ca, files) = (Ca::new("server CA"), Ca::new("client CA"), Files::new());
    // `batch` by DNS name may only ListSessions; `login` (by SPIFFE ID) may Issue.
    let text = format!(
        "{}\n[[caller]]\nname = \"batch\"\ndns = \"batch.internal\"\nrpcs = [\"ListSessions\"]\n",
        login_policy()
    );
    let app = spawn_mtls_with_policy(options, &files, &server_ca, &client_ca, &text).await;
    let over = |client: &Leaf| tls_channel(app.addr, client_config(&server_ca, Some(client), &[b"h2"])).0;

    // A DNS SAN names a `dns =` caller (case-insensitively), and only that one.
    let batch = client_ca.client(&[dns("Batch.Internal")]);
    let refused = issue_over(over(&batch), None, None).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::PermissionDenied,
        "batch, which may not Issue: {refused:?}"
    );
    assert!(refused.message().contains("batch"), "{refused:?}");
    ratchet::grpc::pb::token_service_client::TokenServiceClient::new(over(&batch))
        .list_sessions(ratchet::grpc::pb::ListSessionsRequest {
            subject: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("batch may list sessions");
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_forged_xfcc_element_is_unauthenticated_never_the_caller_it_names(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let transport = TransportConfig {
        trust_xfcc: true,
        ..TransportConfig::default()
    };
    let app = spawn_with_policy(options, transport, &login_policy()).await;
    let plain = || crate::helpers::channel(app.addr);

    // What Envoy writes for `login`'s certificate: served as `login`.
    let real = envoy_element(&[LOGIN], &["login.auth"]);
    issue_over(plain().await, Some(&real), None)
        .await
        .expect("login may issue");

    // The issue's reproduction: a certificate whose URI SAN is
    // `spiffe://ratchet.test/ns/evil/sa/x,URI=spiffe://ratchet.test/ns/auth/sa/login`, as Envoy
    // writes it (unquoted). Split at the comma, the last element names `login`.
    let forged = envoy_element(
        &[&format!("spiffe://ratchet.test/ns/evil/sa/x,URI={LOGIN}")],
        &["evil.example"],
    );
    assert_caller_unknown(issue_over(plain().await, Some(&forged), None).await);
    // A key beside it does not make it readable: the transport's word is broken, so no call.
    assert_caller_unknown(issue_over(plain().await, Some(&forged), Some("gateway-key-0123456789")).await);
    issue_over(plain().await, None, Some("gateway-key-0123456789"))
        .await
        .expect("the key alone is fine");

    // The same with `;` (a second URI field), and a SPIFFE ID in a DNS SAN.
    for forged in [
        envoy_element(&[&format!("spiffe://ratchet.test/ns/evil/sa/x;URI={LOGIN}")], &[]),
        envoy_element(&[], &[LOGIN]),
    ] {
        assert_caller_unknown(issue_over(plain().await, Some(&forged), None).await);
    }
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn without_a_policy_a_malformed_xfcc_header_names_nobody(_pool: PgPoolOptions, options: PgConnectOptions) {
    let (app, seen) = spawn(options, None, true).await;
    let forged = envoy_element(&[&format!("spiffe://ratchet.test/ns/evil/sa/x,URI={LOGIN}")], &[]);
    // Open mode serves everyone anyway; what matters is that nobody is named, least of all login.
    issue_over(crate::helpers::channel(app.addr).await, Some(&forged), None)
        .await
        .expect("open mode");
    assert_eq!(seen.last(), Some(None));
    app.stop().await;
}

/// Presents its certificate only while allowed: a client that kept a session and then lost (or
/// never had) the certificate's key. rustls resumes a session only with the configuration that
/// made it, so the same configuration must be able to go without.
#[derive(Debug)]
struct Presents {
    key: Arc<rustls::sign::CertifiedKey>,
    allowed: std::sync::atomic::AtomicBool,
}

impl rustls::client::ResolvesClientCert for Presents {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.allowed.load(Ordering::SeqCst).then(|| self.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client trusting `ca` that presents `client`'s certificate while its switch allows, and keeps
/// the sessions the server offers (rustls' default).
fn switchable_config(ca: &Ca, client: &Leaf) -> (Arc<ClientConfig>, Arc<Presents>) {
    let provider = ratchet::transport::tls::provider();
    let presents = Arc::new(Presents {
        key: Arc::new(rustls::sign::CertifiedKey::from_der(client.chain(), client.key(), &provider).unwrap()),
        allowed: true.into(),
    });
    let mut roots = RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(presents.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    (Arc::new(config), presents)
}

/// Whether a new connection with `config` resumed a session (TLS 1.3: a full handshake
/// otherwise), and the server certificate it was shown.
async fn resumed(addr: SocketAddr, config: Arc<ClientConfig>) -> (bool, CertificateDer<'static>) {
    let tls = connect(addr, config).await.unwrap();
    let (_, state) = tls.get_ref();
    let kind = state.handshake_kind().unwrap();
    (
        kind == rustls::HandshakeKind::Resumed,
        state.peer_certificates().unwrap()[0].clone(),
    )
}

/// A JWKS request over TLS with `config`, read to its end (so the session tickets that follow
/// the handshake reach the client's store).
async fn jwks_over_tls(addr: SocketAddr, config: Arc<ClientConfig>) -> String {
    let mut tls = connect(addr, config).await.unwrap();
    tls.write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    String::from_utf8_lossy(&raw).into_owned()
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_tls_session_made_before_the_client_ca_changed_cannot_be_resumed_to_call_as_its_caller(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let server_ca = Ca::new("server CA");
    let old_ca = Ca::new("old client CA");
    let files = Files::new();
    let tls = files.tls(&server_ca.server(), Some(&old_ca));
    let app = spawn_with_policy(
        options,
        tls_transport(tls, Duration::from_secs(1)),
        &format!("[[caller]]\nname = \"login\"\nid = \"{LOGIN}\"\nrpcs = [\"Issue\"]\n"),
    )
    .await;
    let issue = |channel: Channel| issue_over(channel, None, None);

    // `login` calls with its certificate; its client keeps the sessions the server offers.
    let (login, certificate) = switchable_config(&server_ca, &old_ca.client(&[uri(LOGIN)]));
    let (channel, _) = tls_channel(app.addr, login.clone());
    issue(channel.clone()).await.expect("login may issue");
    drop(channel);

    // The old CA is replaced; once reloaded, a certificate of the new one is accepted.
    let new_ca = Ca::new("new client CA");
    write_atomically(&files.dir.join("client-ca.pem"), &new_ca.pem(), 0o644);
    let (renewed, _) = switchable_config(&server_ca, &new_ca.client(&[uri(LOGIN)]));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (channel, _) = tls_channel(app.addr, renewed.clone());
        if issue(channel).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the new client CA was never loaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The old session, offered with no certificate at all, must not make anyone `login`.
    certificate.allowed.store(false, Ordering::SeqCst);
    let (channel, _) = tls_channel(app.addr, login);
    let resumed_call = issue(channel).await;
    assert!(
        resumed_call.is_err(),
        "a session made under the old client CA was resumed and Issue ran as login: {resumed_call:?}"
    );

    // Nor does any session resume on a listener that asks for client certificates: each
    // connection proves its certificate afresh.
    let (again, _) = resumed(app.addr, renewed.clone()).await;
    assert!(!again, "a session was resumed on the mutual TLS listener");
    let (channel, _) = tls_channel(app.addr, renewed);
    issue(channel)
        .await
        .expect("a fresh handshake with the new CA's certificate still works");
    app.stop().await;
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn a_tls_session_made_before_the_server_certificate_changed_is_not_resumed_after_it(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let ca = Ca::new("server CA");
    let files = Files::new();
    let first = ca.server();
    let (app, _) = spawn(options, Some(files.tls(&first, None)), false).await;
    // One configuration each: rustls resumes a session only with the configuration that made it.
    let grpc = client_config(&ca, None, &[b"h2"]);
    let http = client_config(&ca, None, &[b"http/1.1"]);
    let http_addr = app.http_addr.unwrap();

    // Without client certificates sessions resume (both listeners), as long as nothing changed.
    let (channel, _) = tls_channel(app.addr, grpc.clone());
    call(channel).await.unwrap();
    assert!(jwks_over_tls(http_addr, http.clone()).await.starts_with("HTTP/1.1 200"));
    assert_eq!(resumed(app.addr, grpc.clone()).await, (true, leaf_der(&first)), "gRPC");
    assert_eq!(resumed(http_addr, http.clone()).await, (true, leaf_der(&first)), "HTTP");
    let (channel, _) = tls_channel(app.addr, grpc.clone());
    call(channel).await.unwrap();
    assert!(jwks_over_tls(http_addr, http.clone()).await.starts_with("HTTP/1.1 200"));

    let second = ca.server();
    files.install(&second);
    let deadline = Instant::now() + Duration::from_secs(15);
    while served_certificate(app.addr, &ca).await != leaf_der(&second) {
        assert!(Instant::now() < deadline, "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        resumed(app.addr, grpc).await,
        (false, leaf_der(&second)),
        "gRPC: a session of the old certificate was resumed"
    );
    assert_eq!(
        resumed(http_addr, http).await,
        (false, leaf_der(&second)),
        "HTTP: a session of the old certificate was resumed"
    );
    app.stop().await;
}
