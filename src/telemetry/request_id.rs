//! The id that ties one call to its log lines, its audit events and the caller's own records.
//!
//! A caller that sends `x-request-id` gets its own id back, so that its logs and ours can be
//! joined; anything that is not a sane id is replaced by one of ours rather than refused (an odd
//! header is no reason to fail a call). Sane: 1 to [`MAX_LEN`] visible ASCII characters (no
//! spaces, no control characters: it is written into log lines as it is), and not shaped like a
//! credential: a caller that puts a token where an id goes must not have it written to our logs
//! (ratchet's refresh tokens start `rt_`, and every JWT starts `eyJ`, the base64 of `{"`).
//!
//! Ours are 32 hex digits: a random prefix drawn once per process, so that replicas never make
//! the same id, and a counter, so that making one costs no randomness per call. They are not
//! secrets and need not be unguessable: an id names a call, it grants nothing.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;

/// The metadata key a request id travels under, both ways.
pub const HEADER: &str = "x-request-id";
/// Longest id taken from a caller.
pub const MAX_LEN: usize = 128;

/// One call's id (in the request's extensions; see `grpc::call`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The caller's id if it is sane (see the module docs), else a new one.
    pub fn from_caller(given: Option<&HeaderValue>) -> Self {
        match given {
            Some(value) if is_sane(value.as_bytes()) => Self(value.clone()),
            _ => Self::new(),
        }
    }

    /// A new id, unique across processes.
    pub fn new() -> Self {
        let prefix = *PREFIX.get_or_init(random_prefix);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut text = [0u8; 32];
        hex(prefix, &mut text[..16]);
        hex(count, &mut text[16..]);
        // Hex digits are always a valid header value.
        Self(HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("0")))
    }

    pub fn as_str(&self) -> &str {
        // Only visible ASCII is ever held (checked on the way in), which `to_str` accepts.
        self.0.to_str().unwrap_or_default()
    }

    /// As response metadata: marked sensitive, which HTTP/2 sends as a literal never to be
    /// indexed. A value that differs on every answer gains nothing from the connection's HPACK
    /// table and would only evict what does; searching the table for it cost Introspect about
    /// 4,000 instructions a call, 4% of it (callgrind:
    /// `bench/history/20261207T1600Z-issue17-callgrind.txt`).
    pub fn header_value(&self) -> HeaderValue {
        let mut value = self.0.clone();
        value.set_sensitive(true);
        value
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

static PREFIX: OnceLock<u64> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn random_prefix() -> u64 {
    let mut bytes = [0u8; 8];
    // Without randomness the prefix is the process id and the start time: unique enough for
    // telling calls apart, which is all an id is for.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        return (u64::from(std::process::id()) << 32) ^ (nanos as u64);
    }
    u64::from_be_bytes(bytes)
}

fn hex(value: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, slot) in out.iter_mut().enumerate() {
        let shift = 60 - 4 * i;
        *slot = DIGITS[((value >> shift) & 0xf) as usize];
    }
}

fn is_sane(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id.iter().all(|byte| (0x21..=0x7e).contains(byte))
        && !id.starts_with(b"rt_")
        && !id.starts_with(b"eyJ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(id: &[u8]) -> RequestId {
        RequestId::from_caller(Some(&HeaderValue::from_bytes(id).unwrap()))
    }

    #[test]
    fn a_sane_id_from_the_caller_is_kept() {
        for id in [
            "abc",
            "req-42",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            &"x".repeat(MAX_LEN),
        ] {
            assert_eq!(given(id.as_bytes()).as_str(), id);
        }
    }

    #[test]
    fn anything_else_gets_a_new_id() {
        let long = "x".repeat(MAX_LEN + 1);
        let credential_shaped = [
            "rt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "eyJhbGciOiJFZERTQSJ9.e30.sig",
        ];
        for id in ["", "has space", "tab\there", long.as_str(), "caf\u{e9}"]
            .into_iter()
            .chain(credential_shaped)
        {
            let made = given(id.as_bytes());
            assert_ne!(made.as_str(), id);
            assert_eq!(made.as_str().len(), 32, "{made}");
        }
        assert_eq!(RequestId::from_caller(None).as_str().len(), 32);
    }

    #[test]
    fn the_answers_copy_is_never_indexed() {
        assert!(RequestId::new().header_value().is_sensitive());
    }

    #[test]
    fn new_ids_are_distinct_hex_with_one_prefix_per_process() {
        let (a, b) = (RequestId::new(), RequestId::new());
        assert_ne!(a, b);
        assert_eq!(a.as_str()[..16], b.as_str()[..16]);
        assert!(a.as_str().bytes().all(|byte| byte.is_ascii_hexdigit()), "{a}");
    }
}
