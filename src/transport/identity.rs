//! Who is calling, as the transport established it: a [`PeerIdentity`], which is *either* a SPIFFE
//! ID *or* a DNS name, and keeps its kind. The transport (mutual TLS, or a trusted sidecar's
//! `x-forwarded-client-cert` header, [`super::xfcc`]) puts one into every request's extensions
//! ([`super::layer`]); the caller policy reads it there.
//!
//! Kinds never mix: a SPIFFE ID comes only from a URI SAN and must be a valid SPIFFE ID
//! ([`SpiffeId`]); a DNS name comes only from a DNS SAN and must be a valid DNS name ([`DnsName`]).
//! A certificate whose DNS SAN reads `spiffe://td/ns/auth/sa/login` is *not* that SPIFFE ID: the
//! text is no DNS name, so it names nobody. A SAN that is neither is no identity. The two
//! grammars are disjoint as well (a DNS name has no `:` or `/`), so even the printed forms cannot
//! be taken for one another in a log.
//!
//! From a certificate ([`from_certificate`]) the identity is the first URI SAN that is a valid
//! SPIFFE ID, else the first DNS SAN that is a valid DNS name, else none. Nothing here verifies
//! anything: rustls has checked the chain against the client CA before this runs. A request
//! without an identity still proceeds: the caller policy decides what an unnamed caller may do.

use std::fmt;
use std::sync::Arc;

use x509_parser::extensions::GeneralName;

/// Longest SPIFFE ID taken: the SPIFFE ID spec (§2.3) has implementations support 2048 bytes and
/// none generate more.
pub const MAX_SPIFFE_ID_BYTES: usize = 2048;
/// Longest trust domain: RFC 3986's 255 bytes for a host (SPIFFE ID spec §2.3).
const MAX_TRUST_DOMAIN_BYTES: usize = 255;

const SPIFFE_SCHEME: &str = "spiffe://";

/// A caller's identity, with its kind. Equal only to an identity of the same kind and text.
///
/// The text is shared (`Arc<str>`): an identity read once per connection is handed to every
/// request on it without copying.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    /// From a URI SAN (or an XFCC `URI=`).
    Spiffe(SpiffeId),
    /// From a DNS SAN (or an XFCC `DNS=`).
    Dns(DnsName),
}

impl PeerIdentity {
    /// The identity's text: the SPIFFE ID, or the DNS name (lower case).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Spiffe(id) => id.as_str(),
            Self::Dns(name) => name.as_str(),
        }
    }

    /// `spiffe` or `dns`: what the policy file calls it (`id =` / `dns =`) and logs show.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Spiffe(_) => "spiffe",
            Self::Dns(_) => "dns",
        }
    }
}

/// The identity's text; unambiguous, as the two grammars share no string.
impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a text is not an identity of the kind asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidIdentity(pub &'static str);

/// A valid SPIFFE ID (the SPIFFE ID spec, "SPIFFE-ID.md" §2): `spiffe://<trust domain><path>`,
/// the scheme in lower case; the trust domain of lower-case letters, digits, `.`, `-` and `_`
/// (no userinfo, no port); the path empty or `/`-separated segments of letters, digits, `.`, `-`
/// and `_`, none empty, `.` or `..` (so no trailing `/`); no query, no fragment, no
/// percent-encoding. None can hold `,`, `;`, `=`, `"` or a space, which is what keeps one out of
/// reach of XFCC's separators.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId(Arc<str>);

impl SpiffeId {
    /// # Errors
    /// What makes `text` no SPIFFE ID.
    pub fn parse(text: &str) -> Result<Self, InvalidIdentity> {
        Self::validate(text)?;
        Ok(Self(text.into()))
    }

    /// Whether `text` is a SPIFFE ID, without making one.
    ///
    /// # Errors
    /// What makes `text` no SPIFFE ID.
    pub fn validate(text: &str) -> Result<(), InvalidIdentity> {
        let rest = text
            .strip_prefix(SPIFFE_SCHEME)
            .ok_or(InvalidIdentity("a SPIFFE ID starts with spiffe://"))?;
        if text.len() > MAX_SPIFFE_ID_BYTES {
            return Err(InvalidIdentity("a SPIFFE ID is at most 2048 bytes"));
        }
        let (domain, path) = match rest.split_once('/') {
            Some((domain, path)) => (domain, Some(path)),
            None => (rest, None),
        };
        if domain.is_empty() || domain.len() > MAX_TRUST_DOMAIN_BYTES {
            return Err(InvalidIdentity("the trust domain must be 1 to 255 bytes"));
        }
        if !domain
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_'))
        {
            return Err(InvalidIdentity(
                "the trust domain may hold only lower-case letters, digits, '.', '-' and '_' (no port, userinfo, query or fragment)",
            ));
        }
        for segment in path.into_iter().flat_map(|path| path.split('/')) {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(InvalidIdentity(
                    "a path segment may not be empty, '.' or '..' (nor may the path end with '/')",
                ));
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            {
                return Err(InvalidIdentity(
                    "a path segment may hold only letters, digits, '.', '-' and '_' (no query, fragment or percent-encoding)",
                ));
            }
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A valid DNS name, in lower case (DNS names are case-insensitive): labels of letters, digits,
/// `-` and `_`, 1 to 63 bytes each, 253 at most in all, the last not a number (which would read
/// as an IP address); one trailing `.` is dropped. No wildcard: a `*` names many hosts, not one
/// caller. The grammar is rustls' (`rustls::pki_types::DnsName`), which is what validates names
/// in TLS anyway.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsName(Arc<str>);

impl DnsName {
    /// # Errors
    /// `text` is not a DNS name.
    pub fn parse(text: &str) -> Result<Self, InvalidIdentity> {
        let name = Self::checked(text)?;
        Ok(Self(name.as_ref().to_ascii_lowercase().into()))
    }

    /// Whether `text` is a DNS name, without making one.
    ///
    /// # Errors
    /// `text` is not a DNS name.
    pub fn validate(text: &str) -> Result<(), InvalidIdentity> {
        Self::checked(text).map(drop)
    }

    fn checked(text: &str) -> Result<rustls::pki_types::DnsName<'_>, InvalidIdentity> {
        rustls::pki_types::DnsName::try_from_str(text).map_err(|_| {
            InvalidIdentity("not a DNS name (labels of letters, digits, '-' and '_', at most 253 bytes, no wildcard)")
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The identity the end-entity certificate `der` names, if any (see the module docs).
pub fn from_certificate(der: &[u8]) -> Option<PeerIdentity> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let sans = certificate.subject_alternative_name().ok()??;
    let names = &sans.value.general_names;
    let spiffe = names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => SpiffeId::parse(uri).ok().map(PeerIdentity::Spiffe),
        _ => None,
    });
    spiffe.or_else(|| {
        names.iter().find_map(|name| match name {
            GeneralName::DNSName(dns) => DnsName::parse(dns).ok().map(PeerIdentity::Dns),
            _ => None,
        })
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn garbage_is_no_identity() {
        assert_eq!(from_certificate(b""), None);
        assert_eq!(from_certificate(&[0x30, 0x82, 0xff, 0xff, 0x00]), None);
    }

    #[test]
    fn spiffe_ids_follow_the_spec_grammar() {
        for valid in [
            "spiffe://td",
            "spiffe://td/ns/auth/sa/login",
            "spiffe://corp.example/a.b/C-d_e/...x",
            "spiffe://my_domain-1.example/9eebccd2-12bf-40a6-b262-65fe0487d453",
        ] {
            assert_eq!(
                SpiffeId::parse(valid).map(|id| id.as_str().to_owned()),
                Ok(valid.to_owned())
            );
        }
        for invalid in [
            "",
            "spiffe://",
            "spiffe:///path",
            "SPIFFE://td/x",
            "spiffe://TD/x",
            "spiffe://td:443/x",
            "spiffe://user@td/x",
            "spiffe://td/",
            "spiffe://td//x",
            "spiffe://td/./x",
            "spiffe://td/x/..",
            "spiffe://td/x?q=1",
            "spiffe://td/x#f",
            "spiffe://td/a%20b",
            "spiffe://td/a b",
            "spiffe://td/ns/evil/sa/x,URI=spiffe://td/ns/auth/sa/login",
            "spiffe://td/x;DNS=a",
            "spiffe://td/x\"",
            "https://td/x",
            "td/x",
        ] {
            assert!(SpiffeId::parse(invalid).is_err(), "{invalid:?}");
        }
        let longest = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_BYTES - 12));
        assert!(SpiffeId::parse(&longest).is_ok());
        assert!(SpiffeId::parse(&format!("{longest}a")).is_err());
        assert!(SpiffeId::parse(&format!("spiffe://{}", "a".repeat(256))).is_err());
    }

    #[test]
    fn dns_names_are_host_names_in_lower_case() {
        assert_eq!(DnsName::parse("Batch.Internal").unwrap().as_str(), "batch.internal");
        assert_eq!(DnsName::parse("a.example.").unwrap().as_str(), "a.example");
        assert!(DnsName::parse("_svc.x-1.example").is_ok());
        for invalid in [
            "",
            "spiffe://td/ns/auth/sa/login",
            "a.example:443",
            "a/b",
            "a;b",
            "a,b",
            "a=b",
            "a\"b",
            "a b",
            "*.example",
            "-a.example",
            "a..example",
            "10.0.0.1",
        ] {
            assert!(DnsName::parse(invalid).is_err(), "{invalid:?}");
        }
    }

    #[test]
    fn identities_of_different_kinds_are_never_equal() {
        // The only way to get the same text into both kinds would be a string both grammars
        // accept; there is none (a SPIFFE ID has `:`), so compare what each kind would make.
        let spiffe = PeerIdentity::Spiffe(SpiffeId::parse("spiffe://td/x").unwrap());
        assert!(DnsName::parse(spiffe.as_str()).is_err());
        assert_eq!(spiffe.kind(), "spiffe");
        assert_eq!(PeerIdentity::Dns(DnsName::parse("td").unwrap()).kind(), "dns");
    }

    proptest! {
        #[test]
        fn no_text_is_both_a_spiffe_id_and_a_dns_name(text in r"[a-zA-Z0-9:/._\-;,=]{0,40}") {
            prop_assert!(!(SpiffeId::parse(&text).is_ok() && DnsName::parse(&text).is_ok()));
        }

        #[test]
        fn no_identity_holds_an_xfcc_separator(text in r#"(spiffe://)?[ -~]{0,40}"#) {
            for value in [SpiffeId::parse(&text).map(|i| i.as_str().to_owned()), DnsName::parse(&text).map(|i| i.as_str().to_owned())].into_iter().flatten() {
                prop_assert!(!value.contains([',', ';', '=', '"', ' ']), "{value}");
            }
        }
    }
}
