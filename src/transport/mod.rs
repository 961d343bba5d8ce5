//! Transport security and caller identity (issue 11): TLS and mutual TLS on the gRPC and HTTP
//! listeners, and who is calling.
//!
//! - [`tls`]: the certificate, key and client CA, read from PEM files and swapped on SIGHUP or
//!   when they change, without dropping a connection.
//! - [`accept`]: the accept loop; TLS handshakes run each in their own bounded task.
//! - [`serve`], [`idle`] and [`activity`]: serving each connection, closed gracefully once idle
//!   (each connection's requests in flight, counted by a layer); the HTTP listener's header read
//!   timeout and connection cap.
//! - [`identity`] and [`xfcc`]: a caller's [`PeerIdentity`] (a SPIFFE ID or a DNS name, never one
//!   taken for the other) from its client certificate or from a trusted sidecar's
//!   `x-forwarded-client-cert` header.
//! - [`layer`]: puts that identity into each request's extensions, or marks a trusted header that
//!   is not as Envoy writes it ([`MalformedXfcc`]).
//!
//! Left out on purpose: deciding what a caller may do (the caller policy reads the identity), and
//! client certificates on the HTTP listener (the JWKS is public: every verifier must be able to
//! fetch it, certificate or not).

pub mod accept;
pub mod activity;
pub mod identity;
pub mod idle;
pub mod layer;
pub mod serve;
pub mod tls;
pub mod xfcc;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub use identity::PeerIdentity;
pub use layer::{PeerIdentityLayer, PeerProbe};
pub use tls::{Reloadable, TlsFiles};
pub use xfcc::MalformedXfcc;

/// ALPN of the gRPC listener: HTTP/2 only.
pub const GRPC_ALPN: &[&[u8]] = &[b"h2"];
/// ALPN of the HTTP listener: what axum serves.
pub const HTTP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// How the listeners talk to callers. The default is plaintext, trusting no header.
#[derive(Clone)]
pub struct TransportConfig {
    /// TLS on both listeners; `None`: plaintext.
    pub tls: Option<TlsFiles>,
    /// How often the TLS files are read again (SIGHUP reads them at once).
    pub tls_reload_interval: Duration,
    /// Take the caller's identity from `x-forwarded-client-cert` (only allowed on a plaintext
    /// loopback listener: see [`xfcc_problem`]).
    pub trust_xfcc: bool,
    /// Sees each request's identity (tests only; see [`PeerProbe`]).
    pub probe: Option<PeerProbe>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            tls: None,
            tls_reload_interval: Duration::from_secs(60),
            trust_xfcc: false,
            probe: None,
        }
    }
}

impl fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportConfig")
            .field("tls", &self.tls)
            .field("tls_reload_interval", &self.tls_reload_interval)
            .field("trust_xfcc", &self.trust_xfcc)
            .finish_non_exhaustive()
    }
}

/// Why `--trust-xfcc` cannot be honoured for a gRPC listener on `listen`, if it cannot.
///
/// The header is only as trustworthy as the only peer that can reach the listener: the sidecar
/// next to us, on loopback, that terminated the caller's mutual TLS and replaced (or appended to)
/// whatever header the caller sent. On any other address anyone who can connect can write the
/// header and be whoever they like. With TLS on, ratchet does mutual TLS itself and the client
/// certificate, not a header, names the caller.
pub fn xfcc_problem(listen: SocketAddr, tls: bool) -> Option<String> {
    if tls {
        Some("trust-xfcc: only for a plaintext listener behind a sidecar; with TLS on, client certificates name the caller".into())
    } else if !listen.ip().is_loopback() {
        Some(format!(
            "trust-xfcc: the gRPC listener must be bound to loopback (it is {listen}): anyone who can connect could forge the header"
        ))
    } else {
        None
    }
}
