//! Opaque refresh tokens: `rt_` + base64url(32 bytes from the OS CSPRNG).
//!
//! Only [`TokenHash`] (SHA-256 of the secret bytes) is ever stored. A fast unsalted hash is right
//! here, unlike for passwords: the input is 256 uniformly random bits, so there is nothing to
//! guess, and lookups by hash must be one index probe.
//!
//! The reuse grace window needs to hand out the same successor twice without storing it. While
//! the window may need it, the successor's row keeps its secret XOR-ed with a pad
//! ([`RefreshToken::seal`]) derived with HKDF from the server secret *and* the spent token's
//! secret: opening it takes the spent token in hand plus a key that is not in the database, so a
//! database dump, even together with old refresh tokens, opens nothing. Each pad is used once,
//! because a token is spent once. No seal is made without a grace window, and a seal is cleared
//! when the token it seals is spent (and by the cleanup once the window is over).

use std::fmt;

use aws_lc_rs::digest::{SHA256, digest};

use crate::domain::{Seal, TokenHash};
use crate::keys::ServerSecret;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const PREFIX: &str = "rt_";
const SECRET_BYTES: usize = 32;
/// `rt_` + 43 characters of unpadded base64url.
const ENCODED_LEN: usize = PREFIX.len() + 43;
/// HKDF label of seal pads.
const SEAL_LABEL: &[u8] = b"ratchet/v1/refresh-successor-seal";

/// A refresh token's secret. Deliberately neither `Debug`-printable nor `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken {
    secret: [u8; SECRET_BYTES],
}

impl RefreshToken {
    /// A fresh token from aws-lc's CSPRNG (seeded from the operating system), the one random
    /// source of the service: the same generator that makes its signing keys.
    ///
    /// # Errors
    /// The generator has no randomness to give; nothing sensible can be issued then.
    pub fn generate() -> Result<Self, aws_lc_rs::error::Unspecified> {
        let mut secret = [0u8; SECRET_BYTES];
        aws_lc_rs::rand::fill(&mut secret)?;
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

    /// Seals `successor` so that only a holder of `self` *and* of `secret` can open it.
    pub fn seal(&self, successor: &RefreshToken, secret: &ServerSecret) -> Seal {
        let pad = self.pad(secret);
        Seal(std::array::from_fn(|i| successor.secret[i] ^ pad[i]))
    }

    /// Opens a seal made by [`seal`](Self::seal) on this token with the same secret. (With any
    /// other token or secret it yields garbage: check the result's hash.)
    pub fn unseal(&self, seal: &Seal, secret: &ServerSecret) -> RefreshToken {
        let pad = self.pad(secret);
        RefreshToken {
            secret: std::array::from_fn(|i| seal.0[i] ^ pad[i]),
        }
    }

    fn pad(&self, secret: &ServerSecret) -> [u8; SECRET_BYTES] {
        secret.derive(SEAL_LABEL, &self.secret)
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken(..)")
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
    fn a_seal_opens_only_with_the_parent_and_the_same_server_secret() {
        let secret = ServerSecret::generate().unwrap();
        let parent = RefreshToken::generate().unwrap();
        let child = RefreshToken::generate().unwrap();
        let seal = parent.seal(&child, &secret);
        assert_eq!(parent.unseal(&seal, &secret), child);
        assert_ne!(RefreshToken::generate().unwrap().unseal(&seal, &secret), child);
        assert_ne!(parent.unseal(&seal, &ServerSecret::generate().unwrap()), child);
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
