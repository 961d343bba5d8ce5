//! What is accepted and what is refused, token by token: one valid token per algorithm, then every
//! attack of the security list, each against a verifier that holds the right keys (so a refusal
//! is the check's doing, not a missing key's).

use std::time::Duration;

use ratchet_verify::{Algorithm, Claims, Verifier, VerifyError};
use serde_json::{Value, json};

use crate::support::{ISSUER, JwksServer, NOW, TestKey, b64, claims, hs256, unb64};

/// A server publishing `keys` and a verifier that has fetched them.
async fn setup(keys: &[&TestKey]) -> (JwksServer, Verifier) {
    let server = JwksServer::start(keys).await;
    let verifier = server.verifier().audience("api").build().unwrap();
    verifier.refresh().await.unwrap();
    (server, verifier)
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn flip_signature_bit(token: &str, byte: usize) -> String {
    let (input, signature) = token.rsplit_once('.').unwrap();
    let mut signature = unb64(signature);
    let index = byte.min(signature.len() - 1);
    signature[index] ^= 0x01;
    format!("{input}.{}", b64(&signature))
}

#[tokio::test]
async fn a_valid_token_of_each_algorithm_verifies_with_all_its_claims() {
    let keys = TestKey::each_algorithm();
    let (server, verifier) = setup(&keys.iter().collect::<Vec<_>>()).await;
    for key in &keys {
        let claims = verifier.verify_at(&key.token(&claims()), NOW).await.unwrap();
        assert_eq!(
            claims,
            Claims {
                iss: ISSUER.into(),
                sub: "alice".into(),
                aud: vec!["api".into()],
                exp: NOW + 900,
                iat: NOW,
                nbf: Some(NOW),
                jti: "0f3c2a".into(),
                client_id: Some("web".into()),
                scope: Some("read write".into()),
                sid: "family-1".into(),
                extra: serde_json::Map::from_iter([("tenant".to_owned(), json!("acme"))]),
            },
            "{}",
            key.alg
        );
        assert_eq!(claims.scopes().collect::<Vec<_>>(), ["read", "write"]);
    }
    assert_eq!(server.state.requests(), 1, "all three keys came in one fetch");
}

#[tokio::test]
async fn the_long_media_type_is_accepted_and_any_other_type_is_refused() {
    let key = TestKey::ed25519("ed-1");
    let (_server, verifier) = setup(&[&key]).await;
    for typ in ["application/at+jwt", "AT+JWT"] {
        let token = key.sign(&json!({"alg": "EdDSA", "typ": typ, "kid": "ed-1"}), &claims());
        assert!(verifier.verify_at(&token, NOW).await.is_ok(), "{typ}");
    }
    for typ in [json!("JWT"), json!("application/jwt"), json!("at+jwt; x"), json!(null)] {
        let token = key.sign(&json!({"alg": "EdDSA", "typ": typ, "kid": "ed-1"}), &claims());
        assert_eq!(
            verifier.verify_at(&token, NOW).await,
            Err(VerifyError::WrongType),
            "{typ}"
        );
    }
    let untyped = key.sign(&json!({"alg": "EdDSA", "kid": "ed-1"}), &claims());
    assert_eq!(verifier.verify_at(&untyped, NOW).await, Err(VerifyError::WrongType));
}

#[tokio::test]
async fn alg_none_is_refused_with_or_without_a_signature() {
    let key = TestKey::ed25519("ed-1");
    let (_server, verifier) = setup(&[&key]).await;
    let valid = key.token(&claims());
    let signature = valid.rsplit_once('.').unwrap().1;
    for alg in ["none", "None", "NONE"] {
        let header = json!({"alg": alg, "typ": "at+jwt", "kid": "ed-1"});
        let input = crate::support::signing_input(&header, &claims());
        for token in [format!("{input}."), format!("{input}.{signature}")] {
            assert_eq!(
                verifier.verify_at(&token, NOW).await,
                Err(VerifyError::Malformed),
                "{alg}"
            );
        }
    }
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused_for_every_key_type() {
    let keys = TestKey::each_algorithm();
    let (server, verifier) = setup(&keys.iter().collect::<Vec<_>>()).await;
    for key in &keys {
        let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": key.kid});
        let jwk = key.jwk().to_string();
        // the key as bytes, as its JWK text, and as the base64 of its main member
        let secrets = [
            key.public_bytes.clone(),
            jwk.into_bytes(),
            b64(&key.public_bytes).into_bytes(),
        ];
        for secret in secrets {
            let forged = hs256(&header, &claims(), &secret);
            assert_eq!(
                verifier.verify_at(&forged, NOW).await,
                Err(VerifyError::DisallowedAlgorithm),
                "{}",
                key.alg
            );
        }
        for alg in ["HS384", "HS512"] {
            let forged = hs256(
                &json!({"alg": alg, "typ": "at+jwt", "kid": key.kid}),
                &claims(),
                &key.public_bytes,
            );
            assert_eq!(
                verifier.verify_at(&forged, NOW).await,
                Err(VerifyError::DisallowedAlgorithm)
            );
        }
    }
    assert_eq!(server.state.requests(), 1, "refused before any key lookup");
}

#[tokio::test]
async fn a_token_whose_alg_is_not_the_keys_alg_is_refused() {
    let ed = TestKey::ed25519("ed-1");
    let ec = TestKey::p256("ec-1");
    let rsa = TestKey::rsa2048("rsa-1");
    let (server, verifier) = setup(&[&ed, &ec, &rsa]).await;
    // A valid ES256 signature, under the kid of the Ed25519 key; and so on round the three.
    let cases = [(&ec, &ed), (&rsa, &ec), (&ed, &rsa)];
    for (signer, named) in cases {
        let header = json!({"alg": signer.alg, "typ": "at+jwt", "kid": named.kid});
        let token = signer.sign(&header, &claims());
        assert_eq!(
            verifier.verify_at(&token, NOW).await,
            Err(VerifyError::DisallowedAlgorithm),
            "{} under {}'s kid",
            signer.alg,
            named.alg
        );
    }
    // An algorithm of the right family, allowed by the verifier, but not the one the key was
    // published for (RS256).
    let wider = server
        .verifier()
        .algorithms([Algorithm::EdDSA, Algorithm::RS256, Algorithm::RS384, Algorithm::PS256])
        .build()
        .unwrap();
    for alg in ["RS384", "PS256"] {
        let token = rsa.sign(&json!({"alg": alg, "typ": "at+jwt", "kid": "rsa-1"}), &claims());
        assert_eq!(
            wider.verify_at(&token, NOW).await,
            Err(VerifyError::DisallowedAlgorithm),
            "{alg}"
        );
    }
    wider.verify_at(&rsa.token(&claims()), NOW).await.unwrap();
}

#[tokio::test]
async fn an_unknown_or_missing_kid_is_refused() {
    let key = TestKey::ed25519("ed-1");
    let stranger = TestKey::ed25519("stranger");
    let (_server, verifier) = setup(&[&key]).await;
    assert_eq!(
        verifier.verify_at(&stranger.token(&claims()), NOW).await,
        Err(VerifyError::UnknownKey)
    );
    // Signed by our key, but not naming it: keys are chosen by kid only, never tried in turn.
    let no_kid = key.sign(&json!({"alg": "EdDSA", "typ": "at+jwt"}), &claims());
    assert_eq!(verifier.verify_at(&no_kid, NOW).await, Err(VerifyError::UnknownKey));
    // Signed by a stranger under our kid: the signature does not verify.
    let impostor = stranger.sign(&key.header(), &claims());
    assert_eq!(verifier.verify_at(&impostor, NOW).await, Err(VerifyError::BadSignature));
}

#[tokio::test]
async fn a_token_of_a_retired_key_stops_verifying_at_the_next_scheduled_refresh() {
    let old = TestKey::ed25519("old");
    let new = TestKey::p256("new");
    let server = JwksServer::start(&[&old, &new]).await;
    server.state.set_cache_control("max-age=1");
    let verifier = server
        .verifier()
        .refresh_bounds(Duration::from_secs(1), Duration::from_secs(60))
        .build()
        .unwrap();
    verifier.refresh().await.unwrap();
    let token = old.token(&claims());
    verifier.verify_at(&token, NOW).await.unwrap();

    server.state.retire("old");
    let before = server.state.requests();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match verifier.verify_at(&token, NOW).await {
            Err(VerifyError::UnknownKey) => break,
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "the retired key still verifies"),
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.state.requests() > before, "the background task fetched again");
    verifier.verify_at(&new.token(&claims()), NOW).await.unwrap();
}

#[tokio::test]
async fn wrong_issuer_and_wrong_audience_are_refused() {
    let key = TestKey::ed25519("ed-1");
    let (server, verifier) = setup(&[&key]).await;
    for iss in [
        json!("https://ratchet.test/"),
        json!("https://other.test"),
        json!([ISSUER]),
        json!(""),
    ] {
        let token = key.token(&with(claims(), "iss", iss.clone()));
        let expected = if iss.is_array() {
            VerifyError::Malformed
        } else {
            VerifyError::WrongIssuer
        };
        assert_eq!(verifier.verify_at(&token, NOW).await, Err(expected), "{iss}");
    }
    let elsewhere = key.token(&with(claims(), "aud", json!(["billing", "mail"])));
    assert_eq!(
        verifier.verify_at(&elsewhere, NOW).await,
        Err(VerifyError::WrongAudience)
    );
    let nowhere = key.token(&with(claims(), "aud", json!([])));
    assert_eq!(verifier.verify_at(&nowhere, NOW).await, Err(VerifyError::WrongAudience));
    let among_others = key.token(&with(claims(), "aud", json!(["billing", "api"])));
    verifier.verify_at(&among_others, NOW).await.unwrap();

    // With several audiences configured, one match is enough.
    let several = server.verifier().audience("mail").audience("billing").build().unwrap();
    several.verify_at(&elsewhere, NOW).await.unwrap();
    assert_eq!(
        several.verify_at(&key.token(&claims()), NOW).await,
        Err(VerifyError::WrongAudience)
    );
}

#[tokio::test]
async fn expiry_holds_with_the_leeway_and_not_beyond() {
    let key = TestKey::ed25519("ed-1");
    let (server, verifier) = setup(&[&key]).await;
    let expiring_at = |exp: i64| key.token(&with(with(claims(), "exp", json!(exp)), "iat", json!(exp - 900)));
    // default leeway, 30 s: valid while now < exp + 30
    verifier.verify_at(&expiring_at(NOW - 29), NOW).await.unwrap();
    assert_eq!(
        verifier.verify_at(&expiring_at(NOW - 30), NOW).await,
        Err(VerifyError::Expired)
    );
    assert_eq!(
        verifier.verify_at(&expiring_at(NOW - 3600), NOW).await,
        Err(VerifyError::Expired)
    );

    // no leeway: exp itself is already too late (RFC 7519 §4.1.4: "on or after")
    let strict = server.verifier().leeway(Duration::ZERO).build().unwrap();
    strict.verify_at(&expiring_at(NOW + 1), NOW).await.unwrap();
    assert_eq!(
        strict.verify_at(&expiring_at(NOW), NOW).await,
        Err(VerifyError::Expired)
    );
    // a wider leeway
    let lenient = server.verifier().leeway(Duration::from_secs(120)).build().unwrap();
    lenient.verify_at(&expiring_at(NOW - 100), NOW).await.unwrap();

    // and the system clock is what `verify` uses
    let now = crate::support::unix_now();
    let live = key.token(&crate::support::claims_at(now));
    verifier.verify(&live).await.unwrap();
    let dead = key.token(&crate::support::claims_at(now - 1000));
    assert_eq!(verifier.verify(&dead).await, Err(VerifyError::Expired));
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused_beyond_the_leeway() {
    let key = TestKey::ed25519("ed-1");
    let (_server, verifier) = setup(&[&key]).await;
    let starting_at = |nbf: i64| key.token(&with(claims(), "nbf", json!(nbf)));
    verifier.verify_at(&starting_at(NOW + 30), NOW).await.unwrap();
    assert_eq!(
        verifier.verify_at(&starting_at(NOW + 31), NOW).await,
        Err(VerifyError::NotYetValid)
    );
    assert_eq!(
        verifier.verify_at(&starting_at(NOW + 3600), NOW).await,
        Err(VerifyError::NotYetValid)
    );
    // issued in the future, like Introspect refuses
    let issued_later = key.token(&with(claims(), "iat", json!(NOW + 120)));
    assert_eq!(
        verifier.verify_at(&issued_later, NOW).await,
        Err(VerifyError::NotYetValid)
    );
    // nbf is optional (RFC 9068), iat is not
    let mut no_nbf = claims();
    no_nbf.as_object_mut().unwrap().remove("nbf");
    verifier.verify_at(&key.token(&no_nbf), NOW).await.unwrap();
}

#[tokio::test]
async fn a_flipped_signature_bit_or_a_changed_claim_is_a_bad_signature() {
    let keys = TestKey::each_algorithm();
    let (_server, verifier) = setup(&keys.iter().collect::<Vec<_>>()).await;
    for key in &keys {
        let token = key.token(&claims());
        for byte in [0, 17, usize::MAX] {
            assert_eq!(
                verifier.verify_at(&flip_signature_bit(&token, byte), NOW).await,
                Err(VerifyError::BadSignature),
                "{} byte {byte}",
                key.alg
            );
        }
        let (header, rest) = token.split_once('.').unwrap();
        let signature = rest.rsplit_once('.').unwrap().1;
        let forged_claims = b64(with(claims(), "sub", json!("mallory")).to_string().as_bytes());
        let forged = format!("{header}.{forged_claims}.{signature}");
        assert_eq!(
            verifier.verify_at(&forged, NOW).await,
            Err(VerifyError::BadSignature),
            "{}",
            key.alg
        );
        let truncated = &token[..token.len() - 4];
        assert!(verifier.verify_at(truncated, NOW).await.is_err());
        verifier.verify_at(&token, NOW).await.unwrap();
    }
}

#[tokio::test]
async fn a_signed_token_missing_a_required_claim_or_not_a_jwt_is_malformed() {
    let key = TestKey::ed25519("ed-1");
    let (_server, verifier) = setup(&[&key]).await;
    for claim in ["exp", "iss", "sub", "aud", "iat", "jti", "sid"] {
        let mut partial = claims();
        partial.as_object_mut().unwrap().remove(claim);
        assert_eq!(
            verifier.verify_at(&key.token(&partial), NOW).await,
            Err(VerifyError::Malformed),
            "{claim}"
        );
    }
    let string_exp = key.token(&with(claims(), "exp", json!("2099-01-01")));
    assert_eq!(verifier.verify_at(&string_exp, NOW).await, Err(VerifyError::Malformed));
    for garbage in ["", "abc", "a.b", "a.b.c", "..", "eyJ.eyJ.sig"] {
        assert_eq!(
            verifier.verify_at(garbage, NOW).await,
            Err(VerifyError::Malformed),
            "{garbage}"
        );
    }
    let huge = format!("{}.e30.", "e".repeat(70_000));
    assert_eq!(verifier.verify_at(&huge, NOW).await, Err(VerifyError::Malformed));
}
