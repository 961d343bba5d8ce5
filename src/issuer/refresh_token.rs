//! Opaque refresh tokens: `rt_` + base64url(32 bytes from the OS CSPRNG).
//!
//! Only [`TokenHash`] (SHA-256 of the secret bytes) is ever stored. A fast unsalted hash is right
//! here, unlike for passwords: the input is 256 uniformly random bits, so there is nothing to
//! guess, and lookups by hash must be one index probe.
//!
//! The reuse grace window needs to hand out the same successor twice without storing it. A
//! spent token's row keeps its successor's secret XOR-ed with a pad derived from the spent
//! token's own secret ([`RefreshToken::seal`]): only someone holding the spent token can open it,
//! and each pad is used once, because a token is spent once. A database dump alone reveals no
//! usable token.

use std::fmt;

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const PREFIX: &str = "rt_";
const SECRET_BYTES: usize = 32;
/// `rt_` + 43 characters of unpadded base64url.
const ENCODED_LEN: usize = PREFIX.len() + 43;
const SEAL_CONTEXT: &[u8] = b"ratchet/v1/refresh-successor-seal";

/// A refresh token's secret. Deliberately neither `Debug`-printable nor `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken {
    secret: [u8; SECRET_BYTES],
}

/// SHA-256 of a refresh token's secret: what storage knows a token by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

/// A successor's secret sealed under its parent's secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Seal(pub [u8; SECRET_BYTES]);

impl RefreshToken {
    /// A fresh token from the operating system's CSPRNG.
    ///
    /// # Errors
    /// The OS has no randomness to give; nothing sensible can be issued then.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut secret = [0u8; SECRET_BYTES];
        getrandom::fill(&mut secret)?;
        Ok(Self { secret })
    }

    /// Reads a presented token; `None` when it is not of our format.
    pub fn parse(presented: &str) -> Option<Self> {
        if presented.len() != ENCODED_LEN {
            return None;
        }
        let encoded = presented.strip_prefix(PREFIX)?;
        let mut secret = [0u8; SECRET_BYTES];
        let len = URL_SAFE_NO_PAD.decode_slice(encoded, &mut secret).ok()?;
        // Canonical encoding only, so one secret has exactly one spelling.
        (len == SECRET_BYTES && URL_SAFE_NO_PAD.encode(secret) == encoded).then_some(Self { secret })
    }

    /// Whether `presented` looks like one of ours, without validating it.
    pub fn has_prefix(presented: &str) -> bool {
        presented.starts_with(PREFIX)
    }

    /// The string handed to the client. Call only to put it in a response.
    pub fn expose(&self) -> String {
        let mut out = String::with_capacity(ENCODED_LEN);
        out.push_str(PREFIX);
        URL_SAFE_NO_PAD.encode_string(self.secret, &mut out);
        out
    }

    pub fn hash(&self) -> TokenHash {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, &self.secret).as_ref());
        TokenHash(out)
    }

    /// Seals `successor` so that only a holder of `self` can open it.
    pub fn seal(&self, successor: &RefreshToken) -> Seal {
        let pad = self.pad();
        Seal(std::array::from_fn(|i| successor.secret[i] ^ pad[i]))
    }

    /// Opens a seal made by [`seal`](Self::seal) on this token.
    pub fn unseal(&self, seal: &Seal) -> RefreshToken {
        let pad = self.pad();
        RefreshToken {
            secret: std::array::from_fn(|i| seal.0[i] ^ pad[i]),
        }
    }

    fn pad(&self) -> [u8; SECRET_BYTES] {
        let mut input = Vec::with_capacity(SEAL_CONTEXT.len() + SECRET_BYTES);
        input.extend_from_slice(SEAL_CONTEXT);
        input.extend_from_slice(&self.secret);
        let mut pad = [0u8; SECRET_BYTES];
        pad.copy_from_slice(digest(&SHA256, &input).as_ref());
        pad
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken(..)")
    }
}

impl fmt::Debug for Seal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seal(..)")
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_tokens_round_trip_and_differ() {
        let a = RefreshToken::generate().unwrap();
        let b = RefreshToken::generate().unwrap();
        assert_ne!(a, b);
        let text = a.expose();
        assert!(text.starts_with("rt_") && text.len() == ENCODED_LEN);
        assert_eq!(RefreshToken::parse(&text), Some(a.clone()));
        assert_eq!(RefreshToken::parse(&text).unwrap().hash(), a.hash());
    }

    #[test]
    fn a_seal_opens_only_with_the_parent() {
        let parent = RefreshToken::generate().unwrap();
        let child = RefreshToken::generate().unwrap();
        let seal = parent.seal(&child);
        assert_eq!(parent.unseal(&seal), child);
        assert_ne!(RefreshToken::generate().unwrap().unseal(&seal), child);
        assert_ne!(seal.0, child.secret);
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = RefreshToken::generate().unwrap().expose();
        for bad in [
            String::new(),
            "rt_".into(),
            good[..good.len() - 1].to_string(),
            format!("xx_{}", &good[3..]),
            format!("{}=", &good[..good.len() - 1]),
            good.replace('_', "/"),
        ] {
            assert_eq!(RefreshToken::parse(&bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = RefreshToken::parse(&s);
        }

        #[test]
        fn parse_inverts_expose(bytes in proptest::array::uniform32(any::<u8>())) {
            let token = RefreshToken { secret: bytes };
            prop_assert_eq!(RefreshToken::parse(&token.expose()), Some(token));
        }
    }
}
