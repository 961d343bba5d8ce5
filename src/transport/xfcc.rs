//! Envoy's `x-forwarded-client-cert` (XFCC) header: who called the sidecar that terminated mutual
//! TLS in front of us, for deployments where the mesh, not ratchet, does TLS.
//!
//! Format (Envoy's docs, "x-forwarded-client-cert"): elements separated by `,`, one per proxy
//! that handled the client's certificate; each element is `Key=Value` pairs separated by `;`
//! (`By=…;Hash=…;Cert="…";URI=spiffe://…;DNS=…`); a value may be double-quoted, and inside
//! quotes `\"` is a quote and `,`/`;`/`=` are plain characters.
//!
//! Which element: the **last** one. With Envoy's `SANITIZE_SET` there is exactly one (the sidecar
//! drops what the client sent and sets its own); with `APPEND_FORWARD` every proxy appends its
//! element, so the last is the one our own sidecar added, and everything before it came from
//! further away — possibly from the client itself. An earlier element is never used, even when
//! the last one names nobody.
//!
//! The identity follows the certificate rule ([`super::identity`]): the element's first `URI=`
//! that is a SPIFFE ID, else its first `DNS=`. Whether to read the header at all is decided
//! elsewhere (only with `--trust-xfcc`, only on a plaintext loopback listener): this module only
//! parses, and never panics, whatever the input (property-tested).

use crate::grpc::caller::PeerIdentity;

use super::identity::{accept, is_spiffe};

/// The header's name (HTTP/2 header names are lower case).
pub const HEADER: &str = "x-forwarded-client-cert";

/// Longer headers are not parsed (no identity). Envoy's element with `Cert=` (a URL-encoded PEM)
/// and a chain can reach tens of KiB; HTTP/2 header lists beyond 64 KiB are refused anyway.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The identity the nearest proxy's element of `value` names, if any.
pub fn identity(value: &str) -> Option<PeerIdentity> {
    if value.len() > MAX_HEADER_BYTES {
        return None;
    }
    let nearest = nearest_element(value)?;
    let mut uri = None;
    let mut dns = None;
    for pair in split_unquoted(nearest, b';')? {
        let Some((key, raw)) = pair.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.eq_ignore_ascii_case("URI") && uri.is_none() {
            let value = unquote(raw.trim());
            if is_spiffe(&value) {
                uri = Some(value);
            }
        } else if key.eq_ignore_ascii_case("DNS") && dns.is_none() {
            dns = Some(unquote(raw.trim()));
        }
    }
    accept(uri.or(dns)?.as_str())
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

/// `s` split at every `sep` outside double quotes (`\` escapes the next character inside them);
/// `None` if a quote is left open.
fn split_unquoted(s: &str, sep: u8) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, byte) in s.bytes().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && byte == b'\\' {
            escaped = true;
        } else if byte == b'"' {
            quoted = !quoted;
        } else if byte == sep && !quoted {
            // `sep` is ASCII, so `i` is a character boundary.
            parts.push(s.get(start..i).unwrap_or_default());
            start = i + 1;
        }
    }
    parts.push(s.get(start..).unwrap_or_default());
    (!quoted).then_some(parts)
}

/// `raw` without its surrounding quotes and escapes, if quoted; as it is otherwise.
fn unquote(raw: &str) -> String {
    let Some(inner) = raw.strip_prefix('"').and_then(|rest| rest.strip_suffix('"')) else {
        return raw.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn id(value: &str) -> Option<String> {
        identity(value).map(|identity| identity.0)
    }

    #[test]
    fn envoy_sanitize_set_element_names_its_spiffe_uri() {
        let header = r#"By=spiffe://cluster.local/ns/auth/sa/ratchet;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;Subject="CN=client,O=Acme\, Inc.";URI=spiffe://cluster.local/ns/shop/sa/frontend;DNS=frontend.shop"#;
        assert_eq!(
            id(header).as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/frontend")
        );
    }

    #[test]
    fn with_append_forward_the_last_element_is_the_nearest_proxy() {
        let header = "By=spiffe://a;URI=spiffe://td/forged-by-client,By=spiffe://b;URI=spiffe://td/real";
        assert_eq!(id(header).as_deref(), Some("spiffe://td/real"));
        // The nearest names nobody: an earlier element is never used instead.
        assert_eq!(id("URI=spiffe://td/forged,By=spiffe://b;Hash=00"), None);
    }

    #[test]
    fn without_a_spiffe_uri_the_first_dns_name_is_the_identity() {
        assert_eq!(
            id("Hash=00;URI=https://not-spiffe;DNS=a.example;DNS=b.example").as_deref(),
            Some("a.example")
        );
        assert_eq!(id("Hash=00").as_deref(), None);
    }

    #[test]
    fn quoted_values_may_hold_separators_and_escaped_quotes() {
        assert_eq!(
            id(r#"Subject="a,b;c=\"d\"";URI="spiffe://td/x""#).as_deref(),
            Some("spiffe://td/x")
        );
        assert_eq!(id(r#"URI="spiffe://td/a\"b""#).as_deref(), Some(r#"spiffe://td/a"b"#));
    }

    #[test]
    fn what_a_client_put_before_the_nearest_element_cannot_reach_into_it() {
        // An unbalanced quote from the client (APPEND_FORWARD) would swallow the sidecar's
        // separator in a forward scan and leave `DNS=evil` as the identity.
        let header = r#"DNS=evil;X=",By=spiffe://b;Hash=00;Subject="CN=x";URI=spiffe://td/real"#;
        assert_eq!(id(header).as_deref(), Some("spiffe://td/real"));
        assert_eq!(id(r#"URI="spiffe://td/open"#), None, "a quote left open names nobody");
    }

    #[test]
    fn keys_are_case_insensitive_and_padding_is_ignored() {
        assert_eq!(id(" uri = spiffe://td/x ").as_deref(), Some("spiffe://td/x"));
    }

    #[test]
    fn oversized_or_empty_headers_name_nobody() {
        assert_eq!(id(""), None);
        assert_eq!(id(&format!("URI=spiffe://td/{}", "a".repeat(MAX_HEADER_BYTES))), None);
        assert_eq!(id("URI=spiffe://td/a b"), None, "no spaces or control characters");
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
        fn a_quoted_spiffe_id_survives_any_earlier_elements(
            earlier in r#"[ -~]{0,40}"#,  // anything a client may send, unbalanced quotes too
            path in r#"[a-z0-9/._\-",;=]{1,40}"#,
        ) {
            let escaped = path.replace('\\', r"\\").replace('"', r#"\""#);
            let header = format!(r#"{earlier},By=spiffe://b;URI="spiffe://td/{escaped}""#);
            prop_assert_eq!(id(&header), Some(format!("spiffe://td/{path}")));
        }
    }
}
