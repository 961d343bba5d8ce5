//! Interoperability: verifiers outside the server check its tokens against the JWK Set it serves
//! over HTTP, for every algorithm, and refuse every forgery Introspect refuses: an independent JWT
//! library (Python's PyJWT, which ratchet does not use), and our own `ratchet-verify`.
//!
//! `scripts/test` installs PyJWT into `target/interop-python` (or set RATCHET_INTEROP_PYTHONPATH
//! to a directory holding `jwt` and `cryptography`); without it this test fails and says so.
//!
//! Both tests run on every backend: the tokens verified are issued through the store.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use ratchet::clock::{Clock as _, SystemClock};
use ratchet::keys::KeyAlgorithm;

use crate::support::{AUDIENCE, Db, Forger, ISSUER, TestApp, on_every_backend};

fn python_path() -> PathBuf {
    std::env::var_os("RATCHET_INTEROP_PYTHONPATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/interop-python"))
}

/// Runs the PyJWT verifier on `tokens`; its verdict per name.
fn pyjwt_verify(jwks_uri: &str, tokens: &[(&'static str, String)]) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/pyjwt_verify.py");
    let request = serde_json::json!({
        "jwks_uri": jwks_uri,
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "tokens": tokens.iter().map(|(name, token)| serde_json::json!({"name": name, "token": token})).collect::<Vec<_>>(),
    });
    let mut child = Command::new("python3")
        .arg(&script)
        .env("PYTHONPATH", python_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (it is on every machine of ours)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "PyJWT verifier failed: {}\nIs PyJWT installed? `scripts/test` installs it with \
         `python3 -m pip install --target target/interop-python 'PyJWT[crypto]'`.",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

async fn pyjwt_verifies_every_algorithm_against_the_http_jwks_and_refuses_every_forgery(db: Db) {
    for alg in KeyAlgorithm::ALL {
        // PyJWT checks times against the real clock, so this server runs on it too.
        let app = TestApp::builder(db.clone())
            .algorithm(alg)
            .adjust(|parts| parts.clock = Arc::new(SystemClock))
            .spawn()
            .await;
        let pem = app.key_pem();
        let pair = app.issue("alice").await;
        let forger = Forger::new(alg, &pem, &pair.access_token);
        let mut tokens = vec![("genuine", pair.access_token.clone())];
        tokens.extend(forger.forgeries(&app.jwks().await, SystemClock.now().unix_timestamp()));
        let jwks_uri = format!("http://{}/.well-known/jwks.json", app.http_addr.unwrap());
        // On a thread of its own: the server answering PyJWT's JWKS fetch runs on this runtime.
        let names = tokens.clone();
        let verdicts = tokio::task::spawn_blocking(move || pyjwt_verify(&jwks_uri, &names))
            .await
            .unwrap();
        assert_eq!(verdicts["genuine"], "ok:alice", "{alg}: {verdicts}");
        for (case, _) in &tokens[1..] {
            // PyJWT 2.10 ignores `crit` (RFC 7515 §4.1.11 says refuse what you do not
            // understand); ratchet never sets it, and Introspect and ratchet-verify refuse it.
            if case.starts_with("a critical extension") {
                continue;
            }
            let verdict = verdicts[case].as_str().unwrap();
            assert!(
                verdict.starts_with("rejected"),
                "{alg}: PyJWT accepted {case}: {verdict}"
            );
        }
        app.stop().await;
    }
}

async fn ratchet_verify_accepts_every_algorithm_from_the_http_jwks_and_refuses_every_forgery(db: Db) {
    for alg in KeyAlgorithm::ALL {
        let app = TestApp::builder(db.clone())
            .algorithm(alg)
            .adjust(|parts| parts.clock = Arc::new(SystemClock))
            .spawn()
            .await;
        let pem = app.key_pem();
        let pair = app.issue("alice").await;
        let jwks_uri = format!("http://{}/.well-known/jwks.json", app.http_addr.unwrap());
        let verifier = ratchet_verify::Verifier::builder(jwks_uri, ISSUER)
            .audience(AUDIENCE)
            .build()
            .unwrap();
        let claims = verifier.verify(&pair.access_token).await.unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.sid.as_str()),
            ("alice", pair.family_id.as_str())
        );

        let forger = Forger::new(alg, &pem, &pair.access_token);
        assert!(
            verifier.verify(&forger.resigned()).await.is_ok(),
            "{alg}: the forger's signing"
        );
        for (case, token) in forger.forgeries(&app.jwks().await, SystemClock.now().unix_timestamp()) {
            let verdict = verifier.verify(&token).await;
            assert!(verdict.is_err(), "{alg}: ratchet-verify accepted {case}");
        }

        // A key retired on the server stops verifying in the library once it fetched the set.
        let (other, _) = ratchet::keys::SigningKey::generate(alg).unwrap();
        app.keys.replace(ratchet::keys::KeySet::single(other));
        verifier.refresh().await.unwrap();
        assert!(
            verifier.verify(&pair.access_token).await.is_err(),
            "{alg}: a retired key's token"
        );
        app.stop().await;
    }
}

on_every_backend!(
    pyjwt_verifies_every_algorithm_against_the_http_jwks_and_refuses_every_forgery,
    ratchet_verify_accepts_every_algorithm_from_the_http_jwks_and_refuses_every_forgery,
);
