//! Micro-benchmarks of the pure, CPU-bound parts of a request: minting and verifying access
//! tokens, and generating, hashing and sealing refresh tokens. `cargo bench --bench tokens`.

#![allow(clippy::unwrap_used)] // a benchmark that fails should panic

use criterion::{Criterion, criterion_group, criterion_main};
use ratchet::issuer::refresh_token::RefreshToken;
use ratchet::keys::{AccessClaims, KeyAlgorithm, KeySet, Keyring, ServerSecret, SigningKey};
use serde_json::Map;

fn claims() -> AccessClaims {
    AccessClaims {
        iss: "https://ratchet.example".into(),
        sub: "user-1234567890".into(),
        aud: vec!["orders".into()],
        exp: 2_000_000_000,
        iat: 1_900_000_000,
        nbf: 1_900_000_000,
        jti: "0b5e1f8e-8a61-4a4c-9d7e-0f2f1b7b6c11".into(),
        client_id: "web".into(),
        scope: "read write".into(),
        sid: "6f1c0e6e-6a2b-4a8e-9c0b-2b6f1a3d9e10".into(),
        extra: Map::from_iter([("tenant".to_string(), serde_json::json!("acme"))]),
    }
}

/// Minting and verifying with a key of each algorithm; `access_token/*` is the default, EdDSA.
fn access_tokens(c: &mut Criterion) {
    let claims = claims();
    for alg in KeyAlgorithm::ALL {
        let keys = Keyring::new(KeySet::single(SigningKey::generate(alg).unwrap().0), 1 << 20);
        let token = keys.sign(&claims).unwrap();
        let group = if alg == KeyAlgorithm::EdDSA {
            "access_token".to_owned()
        } else {
            format!("access_token_{alg}")
        };
        c.bench_function(&format!("{group}/mint"), |b| b.iter(|| keys.sign(&claims).unwrap()));
        c.bench_function(&format!("{group}/verify_signature"), |b| {
            b.iter(|| keys.verify_signature(&token, "https://ratchet.example").unwrap())
        });
        c.bench_function(&format!("{group}/verify_cached"), |b| {
            b.iter(|| keys.verify(&token, "https://ratchet.example").unwrap())
        });
    }
}

fn refresh_tokens(c: &mut Criterion) {
    let parent = RefreshToken::generate().unwrap();
    let text = parent.expose();
    c.bench_function("refresh_token/generate", |b| {
        b.iter(|| RefreshToken::generate().unwrap())
    });
    c.bench_function("refresh_token/parse_and_hash", |b| {
        b.iter(|| RefreshToken::parse(&text).unwrap().hash())
    });
    c.bench_function("refresh_token/seal", |b| {
        let child = RefreshToken::generate().unwrap();
        let secret = ServerSecret::generate().unwrap();
        b.iter(|| parent.seal(&child, &secret))
    });
}

criterion_group!(benches, access_tokens, refresh_tokens);
criterion_main!(benches);
