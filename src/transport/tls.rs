//! The server's TLS material — certificate chain, private key, client CA — read from PEM files
//! and swapped whole while the server runs.
//!
//! Mesh certificates are short-lived (SPIRE and cert-manager rotate them hourly), so the files
//! are read again on SIGHUP and every `--tls-reload-interval` ([`reload`]). Every reading that
//! changes something is a new *generation* of the material, and each listener ([`ListenerTls`])
//! builds a rustls configuration of its own for each generation, at the first handshake after it.
//! Established connections keep the keys they negotiated, so a rotation drops nobody.
//! A file that fails to load keeps the old material and says why; at start it is a configuration
//! error.
//!
//! Session resumption (issue 20): a resumed TLS session skips the certificates, so it must not
//! outlive what they proved.
//! - A listener that asks for client certificates resumes nothing (no session cache, no tickets):
//!   a resumed session would carry the identity of a client certificate checked against a client
//!   CA that may since have been replaced, and past the certificate's `notAfter`. Each connection
//!   proves its certificate afresh: a full handshake, about 200 µs more server CPU than a
//!   resumption (BENCHMARKS.md, "TLS handshakes"), once per connection, and connections live for
//!   minutes.
//! - Other listeners (server certificate only, the JWKS listener) keep rustls' stateful session
//!   cache and TLS 1.3 tickets, in the configuration of one generation: a session made before a
//!   reload is in a cache that no new handshake consults, so it is never resumed after it.
//!
//! Left out: OCSP stapling, CRLs (short-lived certificates make them moot), SNI-based selection,
//! stateless tickets (a ticket key to rotate and share, for what a per-process cache does).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{RootCertStore, ServerConfig};
use tokio::sync::watch;

use crate::keys::KeyError;
use crate::telemetry::metrics::{self, Reload};

/// Where the TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, or the traditional RSA/EC blocks); readable by its owner only.
    pub key: PathBuf,
    /// PEM CA certificates that client certificates must chain to; `None`: no client
    /// certificates are asked for.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    /// The key file may be read by others ([`crate::files`]' rule for every private key).
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The one crypto provider: aws-lc-rs, as everywhere else in ratchet (no ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What one reading of the files gave.
struct Material {
    /// Which reading: every change of the files is a new generation.
    generation: u64,
    key: Arc<CertifiedKey>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// The files' bytes, to tell whether a reading changed anything.
    read: Vec<Vec<u8>>,
}

/// Not the files' bytes: one of them is the private key.
impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("generation", &self.generation)
            .field("client_ca", &self.verifier.is_some())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.into(),
        source,
    })
}

fn format(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Format {
        path: path.into(),
        reason: reason.to_string(),
    }
}

/// The private key must be its owner's alone ([`crate::files`]' rule for every secret file), and
/// is refused in the words of any other key file.
fn refuse_if_shared(path: &Path) -> Result<(), TlsError> {
    match crate::files::shared_mode(path) {
        Ok(None) => Ok(()),
        Ok(Some(mode)) => Err(KeyError::Exposed {
            path: path.into(),
            mode,
        }
        .into()),
        Err(source) => Err(KeyError::Io {
            action: "inspect",
            path: path.into(),
            source,
        }
        .into()),
    }
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format(path, e))?;
    if certs.is_empty() {
        return Err(format(path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

impl Material {
    fn load(files: &TlsFiles, provider: &Arc<CryptoProvider>, generation: u64) -> Result<Self, TlsError> {
        refuse_if_shared(&files.key)?;
        let cert_pem = read(&files.cert)?;
        let key_pem = read(&files.key)?;
        let chain = certificates(&files.cert, &cert_pem)?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format(&files.key, e))?;
        // Also checks that the key is the certificate's.
        let key = CertifiedKey::from_der(chain, private, provider).map_err(|e| format(&files.key, e))?;
        let mut read = vec![cert_pem, key_pem];
        let verifier = match &files.client_ca {
            Some(path) => {
                let ca_pem = self::read(path)?;
                let mut roots = RootCertStore::empty();
                for ca in certificates(path, &ca_pem)? {
                    roots.add(ca).map_err(|e| format(path, e))?;
                }
                read.push(ca_pem);
                Some(
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        // No CA names hinted: a workload has one certificate and presents it
                        // without them.
                        .clear_root_hint_subjects()
                        .build()
                        .map_err(|e| format(path, e))?,
                )
            }
            None => None,
        };
        Ok(Self {
            generation,
            key: Arc::new(key),
            verifier,
            read,
        })
    }

    /// A rustls configuration serving this material, offering `alpn`, asking for client
    /// certificates if `client_auth` and there is a client CA; see the module docs for
    /// resumption.
    fn server_config(
        &self,
        provider: &Arc<CryptoProvider>,
        alpn: &[Vec<u8>],
        client_auth: bool,
    ) -> Result<Arc<ServerConfig>, rustls::Error> {
        let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let (builder, asks_for_certificates) = match (&self.verifier, client_auth) {
            (Some(verifier), true) => (builder.with_client_cert_verifier(verifier.clone()), true),
            _ => (builder.with_no_client_auth(), false),
        };
        let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(self.key.clone())));
        config.alpn_protocols = alpn.to_vec();
        if asks_for_certificates {
            config.session_storage = Arc::new(NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
            // `ticketer` is rustls' default, which makes no (stateless) tickets.
        }
        // Otherwise the builder's default: a cache of 256 sessions of this configuration's own.
        Ok(Arc::new(config))
    }
}

/// The current TLS material, swapped whole by [`Reloadable::reload`].
#[derive(Debug)]
pub struct Reloadable {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<Material>,
    /// The last generation given out.
    generations: AtomicU64,
}

/// Whether a reading changed the material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    Changed,
    Unchanged,
}

impl Reloadable {
    /// Reads the files.
    ///
    /// # Errors
    /// A file cannot be read, does not hold what it should, the key is not the certificate's or
    /// may be read by others.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let material = Material::load(&files, &provider, 0)?;
        Ok(Arc::new(Self {
            files,
            provider,
            current: ArcSwap::from_pointee(material),
            generations: AtomicU64::new(0),
        }))
    }

    /// Reads the files again and switches to them if they changed. New handshakes use the new
    /// material (and none resumes a session made before); established connections are not
    /// touched.
    ///
    /// # Errors
    /// As [`Reloadable::load`]; the current material stays.
    pub fn reload(&self) -> Result<Reloaded, TlsError> {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let material = Material::load(&self.files, &self.provider, generation)?;
        if self.current.load().read == material.read {
            return Ok(Reloaded::Unchanged);
        }
        self.current.store(Arc::new(material));
        Ok(Reloaded::Changed)
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The TLS configuration of a listener serving this material, offering `alpn` (most
    /// preferred first). `client_auth`: whether client certificates are asked for (when a client
    /// CA is configured).
    ///
    /// # Errors
    /// rustls refuses the provider's protocol versions (it does not: they are rustls' own).
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]], client_auth: bool) -> Result<ListenerTls, rustls::Error> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let material = self.current.load_full();
        let config = material.server_config(&self.provider, &alpn, client_auth)?;
        Ok(ListenerTls {
            material: self.clone(),
            alpn,
            client_auth,
            built: ArcSwap::from_pointee((material.generation, config)),
        })
    }
}

/// One listener's TLS configuration, following the material's generations (see the module docs).
#[derive(Debug)]
pub struct ListenerTls {
    material: Arc<Reloadable>,
    alpn: Vec<Vec<u8>>,
    client_auth: bool,
    /// The configuration of the generation it was built for.
    built: ArcSwap<(u64, Arc<ServerConfig>)>,
}

impl ListenerTls {
    /// The configuration for a new connection: that of the current generation, built at its first
    /// connection. A session resumes only within the configuration (the generation) that made it.
    ///
    /// # Errors
    /// As [`Reloadable::server_config`]; the connection is then refused, never served with the
    /// configuration (and sessions) of an older generation.
    pub fn current(&self) -> Result<Arc<ServerConfig>, rustls::Error> {
        let material = self.material.current.load();
        let built = self.built.load();
        if built.0 == material.generation {
            return Ok(built.1.clone());
        }
        let config = material.server_config(&self.material.provider, &self.alpn, self.client_auth)?;
        self.built.store(Arc::new((material.generation, config.clone())));
        Ok(config)
    }
}

/// Reads the TLS files again on SIGHUP and every `interval` (as `keys::source::reload` does for
/// the key directory); a reading that fails is logged and the current material stays.
pub async fn reload(material: Arc<Reloadable>, interval: Duration, stopped: watch::Receiver<bool>) {
    let mut trigger = crate::reload::ReloadTrigger::new("the TLS files", interval, stopped);
    while trigger.next().await {
        let reading = material.clone();
        let reading = tokio::task::spawn_blocking(move || reading.reload()).await;
        metrics::reloaded(Reload::Tls, matches!(reading, Ok(Ok(_))));
        match reading {
            Ok(Ok(Reloaded::Changed)) => tracing::info!(target: "security", "TLS certificate reloaded"),
            Ok(Ok(Reloaded::Unchanged)) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot load the TLS files; keeping the current certificate")
            }
            Err(error) => tracing::error!(%error, "TLS reload panicked; keeping the current certificate"),
        }
    }
}
