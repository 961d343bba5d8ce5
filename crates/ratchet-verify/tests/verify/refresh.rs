//! Keeping the key set: on-demand refresh and its rate limit, new keys, failures, staleness,
//! conditional requests, limits on a fetch, discovery. Every count here is of real HTTP requests
//! the test server received.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ratchet_verify::{Builder, ConfigError, FetchError, VerifyError};

use crate::support::{ISSUER, JwksServer, NOW, TestKey, claims};

#[tokio::test]
async fn concurrent_and_quick_unknown_kid_misses_cost_one_fetch() {
    let key = TestKey::ed25519("ed-1");
    let server = JwksServer::start(&[&key]).await;
    let verifier = server.verifier().build().unwrap();
    verifier.refresh().await.unwrap();
    assert_eq!(server.state.requests(), 1);

    // Slow answers, so that all 32 misses are in flight together.
    *server.state.delay.lock().unwrap() = Duration::from_millis(300);
    let strangers: Vec<String> = (0..32)
        .map(|i| TestKey::ed25519(&format!("made-up-{i}")).token(&claims()))
        .collect();
    let misses = strangers.iter().map(|token| verifier.verify_at(token, NOW));
    let results = futures_util::future::join_all(misses).await;
    assert!(
        results.iter().all(|r| *r == Err(VerifyError::UnknownKey)),
        "{results:?}"
    );
    assert_eq!(server.state.requests(), 2, "32 concurrent misses, one fetch");

    // More misses within the interval (10 s by default): no fetch at all.
    for token in &strangers {
        assert_eq!(verifier.verify_at(token, NOW).await, Err(VerifyError::UnknownKey));
    }
    assert_eq!(server.state.requests(), 2);
    // Known keys are unaffected.
    verifier.verify_at(&key.token(&claims()), NOW).await.unwrap();
}

#[tokio::test]
async fn the_unknown_kid_rate_limit_lifts_after_its_interval() {
    let key = TestKey::ed25519("ed-1");
    let server = JwksServer::start(&[&key]).await;
    let verifier = server
        .verifier()
        .unknown_kid_interval(Duration::from_millis(300))
        .build()
        .unwrap();
    verifier.refresh().await.unwrap();
    let stranger = TestKey::ed25519("later").token(&claims());
    assert_eq!(verifier.verify_at(&stranger, NOW).await, Err(VerifyError::UnknownKey));
    assert_eq!(verifier.verify_at(&stranger, NOW).await, Err(VerifyError::UnknownKey));
    assert_eq!(server.state.requests(), 2);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(verifier.verify_at(&stranger, NOW).await, Err(VerifyError::UnknownKey));
    assert_eq!(server.state.requests(), 3);
}

#[tokio::test]
async fn a_newly_published_key_is_picked_up_by_its_first_token() {
    let old = TestKey::ed25519("old");
    let server = JwksServer::start(&[&old]).await;
    let verifier = server.verifier().build().unwrap();
    verifier.refresh().await.unwrap();

    let new = TestKey::rsa2048("new");
    server.state.publish(&new);
    let claims = verifier.verify_at(&new.token(&claims()), NOW).await.unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(server.state.requests(), 2, "one fetch, on the unknown kid");
    verifier
        .verify_at(&old.token(&crate::support::claims()), NOW)
        .await
        .unwrap();
    assert_eq!(server.state.requests(), 2);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_good_keys() {
    let key = TestKey::p256("ec-1");
    let server = JwksServer::start(&[&key]).await;
    let verifier = server.verifier().build().unwrap();
    verifier.refresh().await.unwrap();
    let token = key.token(&claims());

    server.state.fail.store(true, Ordering::SeqCst);
    assert_eq!(verifier.refresh().await, Err(FetchError::Status(500)));
    verifier.verify_at(&token, NOW).await.unwrap();
    // A kid we do not hold, while the issuer cannot be asked: we cannot tell, so not "invalid".
    let stranger = TestKey::ed25519("new").token(&claims());
    assert_eq!(
        verifier.verify_at(&stranger, NOW).await,
        Err(VerifyError::KeysUnavailable)
    );

    server.state.fail.store(false, Ordering::SeqCst);
    server.state.garbage.store(true, Ordering::SeqCst);
    assert!(matches!(verifier.refresh().await, Err(FetchError::Invalid(_))));
    verifier.verify_at(&token, NOW).await.unwrap();

    server.state.garbage.store(false, Ordering::SeqCst);
    verifier.refresh().await.unwrap();
    assert_eq!(verifier.verify_at(&stranger, NOW).await, Err(VerifyError::UnknownKey));
}

#[tokio::test]
async fn the_last_good_keys_are_dropped_once_stale_beyond_the_bound() {
    let key = TestKey::ed25519("ed-1");
    let server = JwksServer::start(&[&key]).await;
    server.state.set_cache_control("max-age=1");
    let verifier = server
        .verifier()
        .refresh_bounds(Duration::from_secs(1), Duration::from_secs(60))
        .max_stale(Duration::from_secs(1))
        .build()
        .unwrap();
    verifier.refresh().await.unwrap();
    let token = key.token(&claims());
    server.state.fail.store(true, Ordering::SeqCst);
    // Refresh due after 1 s, then 1 s of grace: still served for a moment, not after 2 s.
    verifier.verify_at(&token, NOW).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(verifier.verify_at(&token, NOW).await, Err(VerifyError::KeysUnavailable));
    assert!(server.state.requests() >= 2, "the background task kept trying");

    // and they come back with the issuer
    server.state.fail.store(false, Ordering::SeqCst);
    verifier.refresh().await.unwrap();
    verifier.verify_at(&token, NOW).await.unwrap();
}

#[tokio::test]
async fn keys_never_fetched_are_unavailable_not_invalid() {
    let key = TestKey::ed25519("ed-1");
    let server = JwksServer::start(&[&key]).await;
    server.state.fail.store(true, Ordering::SeqCst);
    let verifier = server.verifier().build().unwrap();
    assert_eq!(
        verifier.verify_at(&key.token(&claims()), NOW).await,
        Err(VerifyError::KeysUnavailable)
    );
    // Nothing listening at all.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", closed.local_addr().unwrap());
    drop(closed);
    let orphan = ratchet_verify::Verifier::new(&url, ISSUER).unwrap();
    assert!(matches!(orphan.refresh().await, Err(FetchError::Transport(_))));
    assert_eq!(
        orphan.verify_at(&key.token(&claims()), NOW).await,
        Err(VerifyError::KeysUnavailable)
    );
}

#[tokio::test]
async fn refreshes_are_conditional_and_a_304_keeps_the_keys() {
    let key = TestKey::ed25519("ed-1");
    let server = JwksServer::start(&[&key]).await;
    server.state.etags.store(true, Ordering::SeqCst);
    let verifier = server.verifier().build().unwrap();
    verifier.refresh().await.unwrap();
    assert_eq!(
        server.state.conditional.load(Ordering::SeqCst),
        0,
        "nothing to compare the first time"
    );
    verifier.refresh().await.unwrap();
    verifier.refresh().await.unwrap();
    assert_eq!(server.state.not_modified.load(Ordering::SeqCst), 2);
    verifier.verify_at(&key.token(&claims()), NOW).await.unwrap();

    // A change is a new ETag: the next fetch brings the new set.
    let second = TestKey::p256("ec-1");
    server.state.publish(&second);
    verifier.refresh().await.unwrap();
    assert_eq!(server.state.not_modified.load(Ordering::SeqCst), 2);
    assert_eq!(server.state.requests(), 4);
    verifier.verify_at(&second.token(&claims()), NOW).await.unwrap();
}

#[tokio::test]
async fn a_slow_or_oversized_key_set_fails_the_fetch() {
    let key = TestKey::ed25519("ed-1");
    let server = JwksServer::start(&[&key]).await;
    *server.state.delay.lock().unwrap() = Duration::from_secs(3);
    let verifier = server
        .verifier()
        .fetch_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(
        verifier.refresh().await,
        Err(FetchError::Timeout(Duration::from_millis(300)))
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    *server.state.delay.lock().unwrap() = Duration::ZERO;
    server.state.padding.store(8 * 1024, Ordering::SeqCst);
    let small = server.verifier().max_response_bytes(4096).build().unwrap();
    assert_eq!(small.refresh().await, Err(FetchError::TooLarge(4096)));
    let large_enough = server.verifier().max_response_bytes(64 * 1024).build().unwrap();
    large_enough.refresh().await.unwrap();
    large_enough.verify_at(&key.token(&claims()), NOW).await.unwrap();
}

#[tokio::test]
async fn discovery_finds_the_key_set_and_checks_the_issuer() {
    let key = TestKey::ed25519("ed-1");
    let server = JwksServer::start(&[&key]).await;
    let verifier = Builder::discover(&format!("{}/", server.base_url()), ISSUER)
        .await
        .unwrap()
        .build()
        .unwrap();
    verifier.verify_at(&key.token(&claims()), NOW).await.unwrap();
    assert_eq!(server.state.requests(), 1);

    *server.state.discovery_issuer.lock().unwrap() = "https://impostor.test".into();
    let refused = Builder::discover(&server.base_url(), ISSUER).await;
    assert!(
        matches!(refused, Err(ConfigError::DiscoveryIssuer { .. })),
        "{refused:?}"
    );
}

#[tokio::test]
async fn the_key_set_is_refreshed_in_the_background_as_max_age_says() {
    let key = TestKey::ed25519("ed-1");
    let server = JwksServer::start(&[&key]).await;
    server.state.set_cache_control("public, max-age=1");
    let _verifier = server
        .verifier()
        .refresh_bounds(Duration::from_secs(1), Duration::from_secs(60))
        .build()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let requests = server.state.requests();
    assert!(
        (3..=5).contains(&requests),
        "at start, then about every second: {requests}"
    );

    // The bounds win over the issuer: max-age=1 with a 60 s minimum is one fetch a minute.
    let other = JwksServer::start(&[&key]).await;
    other.state.set_cache_control("max-age=1");
    let _bounded = other.verifier().build().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(other.state.requests(), 1);
}
