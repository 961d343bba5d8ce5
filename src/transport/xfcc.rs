//! Envoy's `x-forwarded-client-cert` (XFCC) header: who called the sidecar that terminated mutual
//! TLS in front of us, for deployments where the mesh, not ratchet, does TLS.
//!
//! Format (Envoy's docs, "x-forwarded-client-cert", and `mutateXfccRequestHeader` in Envoy's
//! `conn_manager_utility.cc`): elements separated by `,`, one per proxy that handled the client's
//! certificate; each element is `Key=Value` fields separated by `;`, written in this order: `By`
//! (once per URI SAN of the proxy's own certificate), `Hash` (the client certificate's SHA-256, 64
//! lower-case hex digits, always there for a client certificate), then as configured `Cert` and
//! `Chain` (quoted, URL-encoded PEM), `Subject` (always quoted), `URI` (once per URI SAN, or once
//! and empty when there is none) and `DNS` (once per DNS SAN). Only the quoted values may hold
//! `,`, `;` or `=`.
//!
//! `By`, `URI` and `DNS` are written **unquoted**, so a certificate whose SAN holds a `,` or `;`
//! (which a valid SPIFFE ID or DNS name never does, but a careless CA may sign) makes Envoy write
//! what reads as extra fields or elements: `URI=spiffe://td/evil,URI=spiffe://td/login` splits
//! into two elements, the second naming `login`. So an identity is taken only from an element
//! that is exactly as Envoy writes it ([`identity`]): known keys in Envoy's order, `Hash` present
//! and well-formed, `Cert`/`Chain`/`Subject` quoted, at most one `URI` field, and every `URI`
//! value a valid SPIFFE ID and every `DNS` value a valid DNS name ([`super::identity`]). Anything
//! else is [`MalformedXfcc`], never a guess: ratchet does not decide which half of a broken
//! element to believe.
//!
//! What this cannot catch: a SAN that smuggles a *whole* well-formed element after a `,` (or
//! whole fields after an empty `URI=`) writes a header that is byte for byte one Envoy could have
//! written for another certificate. Only the CA can prevent that, by signing valid names only (a
//! SPIFFE CA such as SPIRE or Istio's does); where it might not, let ratchet terminate mutual TLS
//! itself, where SANs are structured and nothing needs parsing.
//!
//! Which element: the **last** one. With Envoy's `SANITIZE_SET` there is exactly one (the sidecar
//! drops what the client sent and sets its own); with `APPEND_FORWARD` every proxy appends its
//! element, so the last is the one our own sidecar added, and everything before it came from
//! further away — possibly from the client itself, so it is neither used nor judged.
//!
//! The identity follows the certificate rule: the element's `URI` if it is not empty, else its
//! first `DNS`, else nobody. Whether to read the header at all is decided elsewhere (only with
//! `--trust-xfcc`, only on a plaintext loopback listener): this module only parses, allocates
//! nothing but the identity it returns, and never panics, whatever the input (property-tested).

use std::fmt;

use super::identity::{DnsName, PeerIdentity, SpiffeId};

/// The header's name (HTTP/2 header names are lower case).
pub const HEADER: &str = "x-forwarded-client-cert";

/// Longer headers are malformed. Envoy's element with `Cert=` (a URL-encoded PEM) and a chain
/// can reach tens of KiB; HTTP/2 header lists beyond 64 KiB are refused anyway.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A trusted XFCC header that is not as Envoy writes it for valid names: the layer puts this into
/// the request's extensions instead of an identity, so that the caller policy refuses the call
/// (`UNAUTHENTICATED`) rather than treat it as unnamed, or as somebody. The text says what was
/// wrong, for the log; it never quotes the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedXfcc(pub &'static str);

impl fmt::Display for MalformedXfcc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The keys Envoy writes, in the order it writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    By,
    Hash,
    Cert,
    Chain,
    Subject,
    Uri,
    Dns,
}

impl Key {
    /// Exactly as Envoy spells them: it never writes another case, or padding.
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "By" => Self::By,
            "Hash" => Self::Hash,
            "Cert" => Self::Cert,
            "Chain" => Self::Chain,
            "Subject" => Self::Subject,
            "URI" => Self::Uri,
            "DNS" => Self::Dns,
            _ => return None,
        })
    }

    /// Whether Envoy may write the key more than once in one element (one per SAN). `URI` may,
    /// for a certificate with several URI SANs, but then no one of them is *the* SPIFFE ID (an
    /// X.509-SVID has exactly one), and a second `URI` is what a `;` smuggled into a SAN makes:
    /// refused below.
    fn repeats(self) -> bool {
        matches!(self, Self::By | Self::Uri | Self::Dns)
    }
}

/// The identity the nearest element of `value` names: `Ok(None)` if that element is well-formed
/// and names nobody (an empty `URI=` and no `DNS=`).
///
/// # Errors
/// [`MalformedXfcc`]: the header is too long, its quotes do not balance, or its last element is
/// not as Envoy writes it for valid names (see the module docs).
pub fn identity(value: &str) -> Result<Option<PeerIdentity>, MalformedXfcc> {
    if value.len() > MAX_HEADER_BYTES {
        return Err(MalformedXfcc("the header is longer than 64 KiB"));
    }
    let nearest = nearest_element(value).ok_or(MalformedXfcc("a quote is left open"))?;
    let mut previous: Option<Key> = None;
    let mut hash = false;
    let mut uri: Option<&str> = None;
    let mut dns: Option<&str> = None;
    let mut rest = Some(nearest);
    while let Some(text) = rest {
        let (field, after) = next_field(text)?;
        rest = after;
        let (name, value) = field.split_once('=').ok_or(MalformedXfcc("a field without '='"))?;
        let key = Key::parse(name).ok_or(MalformedXfcc("a field Envoy does not write"))?;
        match previous {
            Some(before) if before > key => {
                return Err(MalformedXfcc(
                    "fields out of Envoy's order (By, Hash, Cert, Chain, Subject, URI, DNS)",
                ));
            }
            Some(before) if before == key && !key.repeats() => {
                return Err(MalformedXfcc("a field Envoy writes once is repeated"));
            }
            _ => previous = Some(key),
        }
        match key {
            Key::By if value.is_empty() || value.contains('"') => {
                return Err(MalformedXfcc("By is not a bare URI"));
            }
            Key::Hash if value.len() != 64 || !value.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
                return Err(MalformedXfcc("Hash is not a SHA-256 in lower-case hex"));
            }
            Key::Hash => hash = true,
            Key::Cert | Key::Chain | Key::Subject if !is_quoted(value) => {
                return Err(MalformedXfcc("Cert, Chain and Subject must be quoted"));
            }
            Key::Uri if uri.is_some() => return Err(MalformedXfcc("more than one URI field")),
            Key::Uri => {
                if !value.is_empty() {
                    SpiffeId::validate(value).map_err(|_| MalformedXfcc("URI is not a SPIFFE ID"))?;
                }
                uri = Some(value);
            }
            Key::Dns => {
                DnsName::validate(value).map_err(|_| MalformedXfcc("DNS is not a DNS name"))?;
                dns = dns.or(Some(value));
            }
            Key::By | Key::Cert | Key::Chain | Key::Subject => {}
        }
    }
    if !hash {
        return Err(MalformedXfcc("no Hash field"));
    }
    // Validated above: these do not fail.
    Ok(match (uri.filter(|u| !u.is_empty()), dns) {
        (Some(uri), _) => SpiffeId::parse(uri).ok().map(PeerIdentity::Spiffe),
        (None, Some(dns)) => DnsName::parse(dns).ok().map(PeerIdentity::Dns),
        (None, None) => None,
    })
}

/// Whether `value` is one double-quoted string (its inner quotes escaped; [`next_field`] has
/// checked they balance).
fn is_quoted(value: &str) -> bool {
    value.len() >= 2 && value.starts_with('"') && value.ends_with('"')
}

/// The last element of `value`, found scanning **backwards**, so that what comes before it (with
/// `APPEND_FORWARD`, whatever the client sent, unbalanced quotes and all) cannot change where it
/// starts. A quote is escaped when an odd number of backslashes precede it. `None` if its quotes
/// do not balance.
fn nearest_element(value: &str) -> Option<&str> {
    let bytes = value.as_bytes();
    let mut quoted = false;
    for i in (0..bytes.len()).rev() {
        match bytes[i] {
            b'"' => {
                let backslashes = bytes[..i].iter().rev().take_while(|&&b| b == b'\\').count();
                if backslashes % 2 == 0 {
                    quoted = !quoted;
                }
            }
            // `,` is ASCII, so `i + 1` is a character boundary.
            b',' if !quoted => return value.get(i + 1..),
            _ => {}
        }
    }
    (!quoted).then_some(value)
}

/// The first field of `element` (up to a `;` outside double quotes, `\` escaping the next
/// character inside them) and what follows that `;`, if any.
///
/// # Errors
/// A quote is left open.
fn next_field(element: &str) -> Result<(&str, Option<&str>), MalformedXfcc> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, byte) in element.bytes().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && byte == b'\\' {
            escaped = true;
        } else if byte == b'"' {
            quoted = !quoted;
        } else if byte == b';' && !quoted {
            // `;` is ASCII, so `i` and `i + 1` are character boundaries.
            return Ok((
                element.get(..i).unwrap_or_default(),
                Some(element.get(i + 1..).unwrap_or_default()),
            ));
        }
    }
    if quoted {
        Err(MalformedXfcc("a quote is left open"))
    } else {
        Ok((element, None))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HASH: &str = "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688";

    fn id(value: &str) -> Result<Option<String>, MalformedXfcc> {
        identity(value).map(|identity| identity.map(|i| i.as_str().to_owned()))
    }

    fn spiffe(value: &str) -> Option<String> {
        match identity(value) {
            Ok(Some(PeerIdentity::Spiffe(id))) => Some(id.as_str().to_owned()),
            _ => None,
        }
    }

    fn dns(value: &str) -> Option<String> {
        match identity(value) {
            Ok(Some(PeerIdentity::Dns(name))) => Some(name.as_str().to_owned()),
            _ => None,
        }
    }

    #[test]
    fn envoys_element_names_its_spiffe_uri() {
        let header = format!(
            r#"By=spiffe://cluster.local/ns/auth/sa/ratchet;Hash={HASH};Cert="-----BEGIN%20CERTIFICATE-----%0A";Chain="x";Subject="CN=client,O=Acme\, Inc.";URI=spiffe://cluster.local/ns/shop/sa/frontend;DNS=frontend.shop"#
        );
        assert_eq!(
            spiffe(&header).as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/frontend")
        );
        // Only Hash is required: every other field is up to the sidecar's configuration.
        assert_eq!(
            spiffe(&format!("Hash={HASH};URI=spiffe://td/x")).as_deref(),
            Some("spiffe://td/x")
        );
    }

    #[test]
    fn without_a_uri_the_first_dns_name_is_the_identity() {
        // Envoy writes an empty `URI=` for a certificate without URI SAN; with `uri: false`, none.
        for header in [
            format!("Hash={HASH};URI=;DNS=A.example;DNS=b.example"),
            format!("Hash={HASH};DNS=a.example;DNS=b.example"),
        ] {
            assert_eq!(dns(&header).as_deref(), Some("a.example"), "{header}");
        }
        assert_eq!(
            id(&format!("Hash={HASH};URI=")),
            Ok(None),
            "names nobody, and is well-formed"
        );
        assert_eq!(id(&format!("Hash={HASH}")), Ok(None));
    }

    #[test]
    fn with_append_forward_only_the_last_element_counts() {
        let header =
            format!("By=spiffe://a;URI=spiffe://td/forged-by-client,By=spiffe://b;Hash={HASH};URI=spiffe://td/real");
        assert_eq!(spiffe(&header).as_deref(), Some("spiffe://td/real"));
        // The nearest names nobody: an earlier element is never used instead.
        assert_eq!(
            id(&format!("Hash={HASH};URI=spiffe://td/forged,By=spiffe://b;Hash={HASH}")),
            Ok(None)
        );
        // And earlier elements, the client's words, are not judged.
        assert!(id(&format!("garbage;;\"=,Hash={HASH};URI=spiffe://td/real")).is_ok());
    }

    #[test]
    fn a_san_holding_separators_cannot_name_another_caller() {
        // The issue's reproduction: a URI SAN `spiffe://td/ns/evil/sa/x,URI=spiffe://td/ns/auth/sa/login`
        // as Envoy writes it. The last element has no Hash.
        let forged = format!(
            r#"By=spiffe://td/ns/auth/sa/ratchet;Hash={HASH};Subject="CN=x";URI=spiffe://td/ns/evil/sa/x,URI=spiffe://td/ns/auth/sa/login;DNS=x.example"#
        );
        assert_eq!(id(&forged), Err(MalformedXfcc("no Hash field")));
        // With `;`, in one element: a second URI, or a URI that is no SPIFFE ID.
        let two_uris = format!("Hash={HASH};URI=spiffe://td/evil;URI=spiffe://td/ns/auth/sa/login");
        assert_eq!(id(&two_uris), Err(MalformedXfcc("more than one URI field")));
        assert!(id(&format!("Hash={HASH};URI=spiffe://td/evil;x=1")).is_err());
        // A DNS SAN smuggling a URI after it: out of order.
        let late_uri = format!("Hash={HASH};URI=;DNS=evil.example;URI=spiffe://td/ns/auth/sa/login");
        assert!(id(&late_uri).is_err());
        // A DNS value that is no DNS name (here, a SPIFFE ID in a DNS SAN).
        assert_eq!(
            id(&format!("Hash={HASH};URI=;DNS=spiffe://td/ns/auth/sa/login")),
            Err(MalformedXfcc("DNS is not a DNS name"))
        );
    }

    #[test]
    fn anything_envoy_would_not_write_is_malformed() {
        for header in [
            String::new(),
            "URI=spiffe://td/x".into(),
            format!("Hash={};URI=spiffe://td/x", &HASH[..63]),
            format!("Hash={};URI=spiffe://td/x", HASH.to_uppercase()),
            format!("URI=spiffe://td/x;Hash={HASH}"),
            format!("Hash={HASH};Hash={HASH};URI=spiffe://td/x"),
            format!("Hash={HASH};Subject=CN=x;URI=spiffe://td/x"),
            format!("Hash={HASH};URI=\"spiffe://td/x\""),
            format!("Hash={HASH};uri=spiffe://td/x"),
            format!("Hash={HASH}; URI=spiffe://td/x"),
            format!("Hash={HASH};URI=spiffe://td/x;Foo=bar"),
            format!("Hash={HASH};URI=spiffe://td/x;"),
            format!("Hash={HASH};URI=https://td/x"),
            format!("Hash={HASH};URI=spiffe://td/a b"),
            format!("Hash={HASH};URI=spiffe://td/x;DNS="),
            format!("Hash={HASH};Subject=\"open;URI=spiffe://td/x"),
            format!("By=;Hash={HASH}"),
            format!("Hash={HASH};URI=spiffe://td/{}", "a".repeat(MAX_HEADER_BYTES)),
        ] {
            assert!(id(&header).is_err(), "{header:?} gave {:?}", id(&header));
        }
    }

    #[test]
    fn quoted_values_may_hold_separators_and_escaped_quotes() {
        let header = format!(r#"Hash={HASH};Subject="a,b;c=\"d\", URI=spiffe://td/forged";URI=spiffe://td/x"#);
        assert_eq!(spiffe(&header).as_deref(), Some("spiffe://td/x"));
    }

    #[test]
    fn what_a_client_put_before_the_nearest_element_cannot_reach_into_it() {
        // An unbalanced quote from the client (APPEND_FORWARD) would swallow the sidecar's
        // separator in a forward scan.
        let header = format!(r#"DNS=evil;X=",By=spiffe://b;Hash={HASH};Subject="CN=x";URI=spiffe://td/real"#);
        assert_eq!(spiffe(&header).as_deref(), Some("spiffe://td/real"));
        assert!(
            id(&format!(r#"Hash={HASH};Subject="open"#)).is_err(),
            "a quote left open"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(value in any::<String>()) {
            let _ = identity(&value);
        }

        #[test]
        fn arbitrary_xfcc_shaped_input_never_panics(value in r#"([A-Za-z]{0,4}=?"?[\\",;= a-z:/]{0,12}"?[,;]?){0,12}"#) {
            let _ = identity(&value);
        }

        #[test]
        fn a_spiffe_id_survives_any_earlier_elements(
            earlier in r#"[ -~]{0,40}"#,  // anything a client may send, unbalanced quotes too
            path in r#"[a-z0-9._\-]{1,20}(/[a-zA-Z0-9_\-]{1,10}){0,3}"#,
        ) {
            prop_assume!(!path.split('/').any(|s| s == "." || s == ".."));
            let header = format!(r#"{earlier},By=spiffe://b;Hash={HASH};Subject="CN=\"x\",O=y";URI=spiffe://td/{path}"#);
            prop_assert_eq!(spiffe(&header), Some(format!("spiffe://td/{path}")));
        }

        /// Whatever a SAN holds, as Envoy would write it, the identity is the certificate's own
        /// SAN (when that is valid) or the header is refused; never something else.
        #[test]
        fn a_san_as_envoy_writes_it_names_itself_or_nobody(san in r#"spiffe://td/[a-zA-Z0-9/._\-,;="]{0,30}"#) {
            let header = format!("By=spiffe://td/ratchet;Hash={HASH};Subject=\"\";URI={san};DNS=a.example");
            match identity(&header) {
                Ok(Some(identity)) => prop_assert_eq!(identity.as_str(), san.as_str()),
                Ok(None) => prop_assert!(false, "a URI was written: {}", header),
                Err(_) => prop_assert!(SpiffeId::parse(&san).is_err()),
            }
        }
    }
}
