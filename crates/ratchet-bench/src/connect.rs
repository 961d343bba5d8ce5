//! The `connect` scenario: every operation is a new connection — TCP, then TLS if `--tls-ca` is
//! given, then HTTP/2 — carrying one health Check, then closed. What accepting and handshaking a
//! connection costs the server, against the calls on a kept connection that the other scenarios
//! measure (issue 20 measured a full TLS handshake against a resumed one with it).
//!
//! Each handshake is counted as full or resumed, so a run shows that it measured what it says:
//! with `--tls-resume` the clients keep the sessions the server offers (one rustls configuration
//! shared by every worker, as rustls resumes only within the configuration that made a session)
//! and offer them on their next connection; without, every handshake is full.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context as _;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::Status;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::h2::Connection;
use crate::load::{Plan, Tally};

/// Where to connect, and how.
pub struct Target {
    origin: http::Uri,
    authority: String,
    /// The client's TLS configuration and the name it expects the server's certificate to have.
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// The TLS options of the scenario (see `Args`).
pub struct TlsOptions<'a> {
    pub ca: &'a Path,
    pub client: Option<(&'a Path, &'a Path)>,
    pub server_name: &'a str,
    pub resume: bool,
}

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificates from {}", path.display()))
}

impl Target {
    pub fn new(addr: &str, tls: Option<TlsOptions<'_>>) -> anyhow::Result<Self> {
        let origin: http::Uri = addr.parse()?;
        let authority = origin
            .authority()
            .ok_or_else(|| anyhow::anyhow!("--addr needs host:port: {addr}"))?
            .as_str()
            .to_owned();
        let tls = match tls {
            None => None,
            Some(options) => {
                let mut roots = RootCertStore::empty();
                for ca in certificates(options.ca)? {
                    roots.add(ca)?;
                }
                let builder =
                    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                        .with_safe_default_protocol_versions()?
                        .with_root_certificates(roots);
                let mut config = match options.client {
                    Some((cert, key)) => {
                        let key = PrivateKeyDer::from_pem_file(key)
                            .with_context(|| format!("cannot read the key {}", key.display()))?;
                        builder.with_client_auth_cert(certificates(cert)?, key)?
                    }
                    None => builder.with_no_client_auth(),
                };
                config.alpn_protocols = vec![b"h2".to_vec()];
                if !options.resume {
                    config.resumption = rustls::client::Resumption::disabled();
                }
                let name = ServerName::try_from(options.server_name.to_owned())?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
        };
        Ok(Self { origin, authority, tls })
    }

    /// One connection, one health Check, closed; whether its TLS handshake resumed a session.
    async fn once(&self) -> Result<Option<HandshakeKind>, Status> {
        let unavailable = |e: &dyn std::fmt::Display| Status::unavailable(e.to_string());
        let tcp = TcpStream::connect(&self.authority).await.map_err(|e| unavailable(&e))?;
        let _ = tcp.set_nodelay(true);
        let (kind, send) = match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| unavailable(&e))?;
                let kind = tls.get_ref().1.handshake_kind();
                (kind, handshake(tls).await?)
            }
            None => (None, handshake(tcp).await?),
        };
        let mut client = HealthClient::with_origin(Connection::new(send, None), self.origin.clone());
        client.check(HealthCheckRequest { service: String::new() }).await?;
        // Dropping the last handle closes the connection.
        Ok(kind)
    }
}

async fn handshake<T>(io: T) -> Result<http2::SendRequest<tonic::body::Body>, Status>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    tokio::spawn(connection);
    Ok(send)
}

/// Runs one worker until the plan's deadline or count.
pub async fn run(target: Arc<Target>, plan: Arc<Plan>) -> Tally {
    let mut tally = Tally::new();
    loop {
        if Instant::now() >= plan.until || (plan.count > 0 && plan.done.load(Ordering::Relaxed) >= plan.count) {
            break;
        }
        let start = Instant::now();
        let outcome = target.once().await;
        let end = Instant::now();
        if start >= plan.measure_from && end <= plan.until {
            if plan.count > 0 && plan.done.fetch_add(1, Ordering::Relaxed) >= plan.count {
                break;
            }
            match outcome {
                Ok(kind) => {
                    match kind {
                        Some(HandshakeKind::Resumed) => tally.resumed_handshakes += 1,
                        Some(_) => tally.full_handshakes += 1,
                        None => {}
                    }
                    tally.record_ok(end - start);
                }
                Err(status) => tally.record_error(&status),
            }
        }
    }
    tally
}
