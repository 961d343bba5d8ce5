//! Who is calling, as the transport established it (issue 11).
//!
//! The transport (mutual TLS, or a trusted sidecar's `x-forwarded-client-cert` header) puts a
//! [`PeerIdentity`] into every request's extensions; the caller policy reads it there (together
//! with API keys, which travel in the request's own metadata). A request without one comes from a
//! peer the transport could not name.

/// The caller's transport identity: the SPIFFE ID (URI SAN `spiffe://…`) of its client
/// certificate, else the certificate's first DNS SAN, or the `URI=` field of a trusted
/// `x-forwarded-client-cert` header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity(pub String);

impl PeerIdentity {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
