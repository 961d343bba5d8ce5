//! The caller's identity out of its (already verified) client certificate: the first URI SAN that
//! is a SPIFFE ID, else the first DNS SAN, else none. The same rule names the caller of a trusted
//! `x-forwarded-client-cert` header ([`super::xfcc`]).
//!
//! Nothing here verifies anything: rustls has checked the chain against the client CA before this
//! runs. A certificate with neither kind of SAN (or one that does not parse) gives no identity,
//! and the request still proceeds: the caller policy decides what an unnamed caller may do.

use x509_parser::extensions::GeneralName;

use crate::grpc::caller::PeerIdentity;

/// Longest identity taken. The SPIFFE ID spec caps an ID at 2048 bytes; a DNS name is at most 253.
pub const MAX_IDENTITY_BYTES: usize = 2048;

const SPIFFE_SCHEME: &str = "spiffe://";

/// `value` as an identity if it is one we accept: not empty, bounded, printable ASCII (a URI or
/// a DNS name never needs more, and a log line never gets a control character from a peer).
pub(super) fn accept(value: &str) -> Option<PeerIdentity> {
    let ok = !value.is_empty() && value.len() <= MAX_IDENTITY_BYTES && value.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| PeerIdentity(value.to_owned()))
}

/// Whether `uri` is a SPIFFE ID (the scheme is case-insensitive, RFC 3986 §3.1).
pub(super) fn is_spiffe(uri: &str) -> bool {
    uri.get(..SPIFFE_SCHEME.len())
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case(SPIFFE_SCHEME))
}

/// The identity the end-entity certificate `der` names, if any.
pub fn from_certificate(der: &[u8]) -> Option<PeerIdentity> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let sans = certificate.subject_alternative_name().ok()??;
    let names = &sans.value.general_names;
    let spiffe = names.iter().find_map(|name| match name {
        GeneralName::URI(uri) if is_spiffe(uri) => Some(*uri),
        _ => None,
    });
    let dns = || {
        names.iter().find_map(|name| match name {
            GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        })
    };
    accept(spiffe.or_else(dns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_no_identity() {
        assert_eq!(from_certificate(b""), None);
        assert_eq!(from_certificate(&[0x30, 0x82, 0xff, 0xff, 0x00]), None);
    }

    #[test]
    fn only_printable_bounded_values_are_identities() {
        assert_eq!(
            accept("spiffe://td/ns/a"),
            Some(PeerIdentity("spiffe://td/ns/a".into()))
        );
        assert_eq!(accept(""), None);
        assert_eq!(accept("a\nb"), None);
        assert_eq!(accept("a b"), None);
        assert_eq!(accept(&"a".repeat(MAX_IDENTITY_BYTES + 1)), None);
        assert!(accept(&"a".repeat(MAX_IDENTITY_BYTES)).is_some());
    }

    #[test]
    fn the_spiffe_scheme_is_case_insensitive() {
        assert!(is_spiffe("spiffe://td/x"));
        assert!(is_spiffe("SPIFFE://td/x"));
        assert!(!is_spiffe("https://td/x"));
        assert!(!is_spiffe("spiffe:/"));
    }
}
