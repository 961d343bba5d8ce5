//! The server's TLS material — certificate chain, private key, client CA — read from PEM files
//! and swapped whole while the server runs.
//!
//! Mesh certificates are short-lived (SPIRE and cert-manager rotate them hourly), so the files
//! are read again on SIGHUP and every `--tls-reload-interval` ([`reload`]). Each new handshake asks
//! [`Reloadable`] for the current material (rustls' `ResolvesServerCert` and a client verifier
//! that delegates to the current `WebPkiClientVerifier`); established connections keep the keys
//! they negotiated, so a rotation drops nobody. A file that fails to load keeps the old material
//! and says why; at start it is a configuration error.
//!
//! Left out: OCSP stapling, CRLs (short-lived certificates make them moot), SNI-based selection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use tokio::sync::watch;

use crate::keys::KeyError;

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
    /// The key file may be read by others ([`crate::keys::keyfile`]'s rule for every private key).
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The one crypto provider: aws-lc-rs, as everywhere else in ratchet (no ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What one reading of the files gave.
struct Material {
    key: Arc<CertifiedKey>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// The files' bytes, to tell whether a reading changed anything.
    read: Vec<Vec<u8>>,
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
    fn load(files: &TlsFiles, provider: &Arc<CryptoProvider>) -> Result<Self, TlsError> {
        crate::keys::keyfile::refuse_if_shared(&files.key)?;
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
                        .build()
                        .map_err(|e| format(path, e))?,
                )
            }
            None => None,
        };
        Ok(Self {
            key: Arc::new(key),
            verifier,
            read,
        })
    }
}

/// The current TLS material, swapped whole by [`Reloadable::reload`].
#[derive(Debug)]
pub struct Reloadable {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    key: ArcSwap<CertifiedKey>,
    /// `Some` exactly when `files.client_ca` is.
    verifier: Option<ArcSwap<Arc<dyn ClientCertVerifier>>>,
    read: ArcSwap<Vec<Vec<u8>>>,
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
        let material = Material::load(&files, &provider)?;
        Ok(Arc::new(Self {
            files,
            provider,
            key: ArcSwap::new(material.key),
            verifier: material.verifier.map(ArcSwap::from_pointee),
            read: ArcSwap::from_pointee(material.read),
        }))
    }

    /// Reads the files again and switches to them if they changed. New handshakes use the new
    /// material; established connections are not touched.
    ///
    /// # Errors
    /// As [`Reloadable::load`]; the current material stays.
    pub fn reload(&self) -> Result<Reloaded, TlsError> {
        let material = Material::load(&self.files, &self.provider)?;
        if **self.read.load() == material.read {
            return Ok(Reloaded::Unchanged);
        }
        self.key.store(material.key);
        if let (Some(current), Some(new)) = (&self.verifier, material.verifier) {
            current.store(Arc::new(new));
        }
        self.read.store(Arc::new(material.read));
        Ok(Reloaded::Changed)
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.verifier.is_some()
    }

    /// A rustls configuration serving this material, offering `alpn` (most preferred first).
    /// `client_auth`: whether client certificates are asked for (when a client CA is configured).
    pub fn server_config(
        self: &Arc<Self>,
        alpn: &[&[u8]],
        client_auth: bool,
    ) -> Result<Arc<ServerConfig>, rustls::Error> {
        let builder =
            ServerConfig::builder_with_provider(self.provider.clone()).with_safe_default_protocol_versions()?;
        let builder = if client_auth && self.verifier.is_some() {
            builder.with_client_cert_verifier(Arc::new(CurrentVerifier(self.clone())))
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_cert_resolver(Arc::new(CurrentKey(self.clone())));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// Resolves every handshake to the current certificate.
#[derive(Debug)]
struct CurrentKey(Arc<Reloadable>);

impl ResolvesServerCert for CurrentKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.key.load_full())
    }
}

/// Verifies client certificates with the current client CA.
#[derive(Debug)]
struct CurrentVerifier(Arc<Reloadable>);

impl CurrentVerifier {
    fn current(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        self.0
            .verifier
            .as_ref()
            .map(|verifier| Arc::clone(&**verifier.load()))
            .ok_or_else(|| rustls::Error::General("no client CA".into()))
    }
}

impl ClientCertVerifier for CurrentVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: they would have to borrow from material that may be swapped meanwhile, and
    /// clients with one certificate (every workload) present it without them.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()?.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Reads the TLS files again on SIGHUP and every `interval` (as `startup::reload_keys` does for
/// the key directory); a reading that fails is logged and the current material stays.
pub async fn reload(material: Arc<Reloadable>, interval: Duration, stopped: watch::Receiver<bool>) {
    let mut trigger = crate::reload::ReloadTrigger::new("the TLS files", interval, stopped);
    while trigger.next().await {
        let reading = material.clone();
        match tokio::task::spawn_blocking(move || reading.reload()).await {
            Ok(Ok(Reloaded::Changed)) => tracing::info!(target: "security", "TLS certificate reloaded"),
            Ok(Ok(Reloaded::Unchanged)) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot load the TLS files; keeping the current certificate")
            }
            Err(error) => tracing::error!(%error, "TLS reload panicked; keeping the current certificate"),
        }
    }
}
