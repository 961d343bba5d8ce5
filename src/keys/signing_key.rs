//! One signing key of any algorithm we issue with: EdDSA (Ed25519, the default), ES256 (P-256)
//! and RS256 (RSA of at least 2048 bits).
//!
//! A key is made for exactly one algorithm, decided by its private key's type when it is parsed:
//! the verifier takes the algorithm from the key, never from the token (RFC 8725 §3.1).

use std::fmt;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair,
};
use jsonwebtoken::DecodingKey;

use super::algorithm::KeyAlgorithm;
use super::jwk::PublicJwk;
use super::{KeyError, ServerSecret, mint};

/// Smallest RSA modulus we sign or verify with (RFC 7518 §3.3 asks for 2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 2048 / 8;

/// The parsed private key, ready to sign: parsing validates the key (a scalar multiplication for
/// Ed25519, more for RSA), which cost as much as a signature when it was done per token.
enum Signer {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// One key pair with its key id, ready to sign and to verify.
pub struct SigningKey {
    kid: String,
    alg: KeyAlgorithm,
    signer: Signer,
    /// The JOSE header, already base64url-encoded: it is the same for every token of this key.
    pub(super) encoded_header: String,
    pub(super) decoding: DecodingKey,
    pub(super) jwk: PublicJwk,
    /// A server secret derived from this key's private material, for deployments that configure
    /// none of their own (see [`super::secret`]).
    derived_secret: ServerSecret,
}

impl SigningKey {
    /// A key from PKCS#8 DER (v1 as `openssl genpkey` writes it, or v2); its type decides the
    /// algorithm.
    ///
    /// # Errors
    /// The bytes are not a PKCS#8 Ed25519, P-256 or RSA (≥ 2048 bits) private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, String> {
        let signer = if let Ok(pair) = Ed25519KeyPair::from_pkcs8(der) {
            Signer::Ed25519(pair)
        } else if let Ok(pair) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
            Signer::P256(pair)
        } else if let Ok(pair) = RsaKeyPair::from_pkcs8(der) {
            Signer::Rsa(pair)
        } else {
            return Err("not a PKCS#8 Ed25519, P-256 or RSA private key".into());
        };
        Self::from_signer(signer, der)
    }

    /// A key from an RSA `RSAPrivateKey` (PKCS#1, PEM tag `RSA PRIVATE KEY`) or a SEC1 P-256
    /// `ECPrivateKey` (PEM tag `EC PRIVATE KEY`), as older openssl commands write them.
    ///
    /// # Errors
    /// The bytes are not such a key.
    pub fn from_traditional_der(tag: &str, der: &[u8]) -> Result<Self, String> {
        let signer = match tag {
            "RSA PRIVATE KEY" => Signer::Rsa(RsaKeyPair::from_der(der).map_err(|e| e.to_string())?),
            "EC PRIVATE KEY" => Signer::P256(
                EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(|e| e.to_string())?,
            ),
            other => return Err(format!("unsupported PEM block {other}")),
        };
        Self::from_signer(signer, der)
    }

    fn from_signer(signer: Signer, der: &[u8]) -> Result<Self, String> {
        let (alg, jwk, decoding) = match &signer {
            Signer::Ed25519(pair) => {
                let x = pair.public_key().as_ref();
                (KeyAlgorithm::EdDSA, PublicJwk::okp(x), DecodingKey::from_ed_der(x))
            }
            Signer::P256(pair) => {
                // The uncompressed point: 0x04 ‖ x ‖ y, 32 bytes each.
                let point = pair.public_key().as_ref();
                let (x, y) = point
                    .get(1..)
                    .filter(|xy| point.first() == Some(&4) && xy.len() == 64)
                    .map(|xy| xy.split_at(32))
                    .ok_or("unexpected P-256 public key encoding")?;
                (
                    KeyAlgorithm::ES256,
                    PublicJwk::ec(x, y),
                    DecodingKey::from_ec_der(point),
                )
            }
            Signer::Rsa(pair) => {
                if pair.public_modulus_len() < MIN_RSA_MODULUS_BYTES {
                    return Err(format!(
                        "RSA key of {} bits; at least 2048 are required",
                        pair.public_modulus_len() * 8
                    ));
                }
                let public = pair.public_key();
                let n = public.modulus().big_endian_without_leading_zero();
                let e = public.exponent().big_endian_without_leading_zero();
                (
                    KeyAlgorithm::RS256,
                    PublicJwk::rsa(n, e),
                    DecodingKey::from_rsa_raw_components(n, e),
                )
            }
        };
        let kid = jwk.thumbprint()?;
        let encoded_header = mint::encoded_header(alg, &kid).map_err(|e| e.to_string())?;
        Ok(Self {
            jwk: jwk.with_kid(&kid, alg),
            kid,
            alg,
            signer,
            encoded_header,
            decoding,
            derived_secret: ServerSecret::from_key_material(der),
        })
    }

    /// A new random key and its PKCS#8 DER.
    ///
    /// # Errors
    /// The system random generator failed.
    pub fn generate(alg: KeyAlgorithm) -> Result<(Self, Vec<u8>), KeyError> {
        let rng = SystemRandom::new();
        let der = match alg {
            KeyAlgorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng).map(|doc| doc.as_ref().to_vec()),
            KeyAlgorithm::ES256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map(|doc| doc.as_ref().to_vec())
            }
            KeyAlgorithm::RS256 => RsaKeyPair::generate(KeySize::Rsa2048)
                .and_then(|pair| pair.as_der())
                .map(|der| der.as_ref().to_vec()),
        }
        .map_err(|_| KeyError::Random)?;
        let key = Self::from_pkcs8_der(&der).map_err(|_| KeyError::Random)?;
        Ok((key, der))
    }

    /// The RFC 7638 JWK thumbprint, used as `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> KeyAlgorithm {
        self.alg
    }

    /// A server secret derived from this key's private material: as secret as the key, and the
    /// same on every replica that shares it.
    pub fn derived_secret(&self) -> ServerSecret {
        self.derived_secret.clone()
    }

    /// The JWS signature of `message` (for ES256 the fixed-width `r ‖ s` JWS wants).
    pub(super) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.signer {
            Signer::Ed25519(pair) => pair
                .try_sign(message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| KeyError::Sign("Ed25519 signing failed")),
            Signer::P256(pair) => pair
                .sign(&SystemRandom::new(), message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| KeyError::Sign("ES256 signing failed")),
            Signer::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut signature)
                    .map_err(|_| KeyError::Sign("RS256 signing failed"))?;
                Ok(signature)
            }
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_generates_a_key_that_parses_back_to_the_same_kid() {
        for alg in KeyAlgorithm::ALL {
            let (key, der) = SigningKey::generate(alg).unwrap();
            assert_eq!(key.alg(), alg);
            let again = SigningKey::from_pkcs8_der(&der).unwrap();
            assert_eq!(again.kid(), key.kid(), "{alg}");
            assert_eq!(again.alg(), alg);
        }
    }

    #[test]
    fn algorithm_names_parse_case_insensitively_and_nothing_else_does() {
        assert_eq!("es256".parse::<KeyAlgorithm>(), Ok(KeyAlgorithm::ES256));
        assert_eq!("EdDSA".parse::<KeyAlgorithm>(), Ok(KeyAlgorithm::EdDSA));
        assert!("HS256".parse::<KeyAlgorithm>().is_err());
        assert!("none".parse::<KeyAlgorithm>().is_err());
    }
}
