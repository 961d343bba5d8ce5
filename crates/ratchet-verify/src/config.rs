//! Configuring a [`Verifier`]: what a valid token looks like and how the key set is kept fresh.
//!
//! Every setting has a default that suits a service next to ratchet in the same mesh; only the
//! key set's URL and the expected issuer must be given. Settings are checked when the verifier is
//! built, all of them, so a bad one fails at startup, not at the first request.

use std::time::Duration;

use http::Uri;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;

use crate::error::{ConfigError, FetchError};
use crate::fetch::{Fetched, Fetcher};
use crate::verifier::Verifier;

/// Default clock skew tolerated on `exp`, `nbf` and `iat`: our host's clock is not the issuer's,
/// and RFC 7519 §4.1.4 allows "a few minutes"; 30 s covers NTP-disciplined hosts with room.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// The largest leeway accepted: beyond it an expired token lives on noticeably.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// Default refresh interval when the issuer sends no `Cache-Control: max-age`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Default bounds on the issuer's `max-age`: no more often than a minute, no less than hourly.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(3600);
/// Default: a token with an unknown `kid` triggers at most one fetch per 10 s. A new key is
/// published before it signs, so only a verifier whose last refresh predates the publication ever
/// needs this, and a flood of made-up `kid`s costs the issuer one request per interval.
pub const DEFAULT_UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(10);
/// Default: how long the last good key set keeps being served after it should have been
/// refreshed, while the issuer cannot be reached. An hour rides out an issuer restart or a long
/// deploy; it is also how long a retired key may keep verifying on a verifier cut off from the
/// issuer (tokens live 15 minutes by default, at most a day).
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(3600);
/// Default deadline of one fetch (connect, headers and body).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Default limit on a key set's size: a few keys take about 1 KiB, RSA ones a bit more.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// The algorithms ratchet signs with.
pub const DEFAULT_ALGORITHMS: [Algorithm; 3] = [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256];

/// How the key set is kept fresh; see [`crate::cache`]'s failure policy.
#[derive(Debug, Clone)]
pub(crate) struct RefreshPolicy {
    pub(crate) default_interval: Duration,
    pub(crate) min_interval: Duration,
    pub(crate) max_interval: Duration,
    pub(crate) unknown_kid_interval: Duration,
    pub(crate) max_stale: Duration,
}

/// What a valid token must say, beyond its signature.
#[derive(Debug, Clone)]
pub(crate) struct Expectations {
    pub(crate) issuer: String,
    pub(crate) audiences: Vec<String>,
    pub(crate) leeway: i64,
    pub(crate) algorithms: Vec<Algorithm>,
}

/// Builds a [`Verifier`]; from [`Verifier::builder`] or [`Builder::discover`].
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder {
    jwks_url: String,
    issuer: String,
    audiences: Vec<String>,
    leeway: Duration,
    algorithms: Vec<Algorithm>,
    default_refresh: Duration,
    min_refresh: Duration,
    max_refresh: Duration,
    unknown_kid_interval: Duration,
    max_stale: Duration,
    fetch_timeout: Duration,
    max_response_bytes: usize,
    tls: Option<rustls::ClientConfig>,
}

impl Builder {
    pub(crate) fn new(jwks_url: impl Into<String>, issuer: impl Into<String>) -> Self {
        Self {
            jwks_url: jwks_url.into(),
            issuer: issuer.into(),
            audiences: Vec::new(),
            leeway: DEFAULT_LEEWAY,
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            default_refresh: DEFAULT_REFRESH,
            min_refresh: DEFAULT_MIN_REFRESH,
            max_refresh: DEFAULT_MAX_REFRESH,
            unknown_kid_interval: DEFAULT_UNKNOWN_KID_INTERVAL,
            max_stale: DEFAULT_MAX_STALE,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            tls: None,
        }
    }

    /// Finds the key set from ratchet's discovery document,
    /// `{base_url}/.well-known/openid-configuration` (its `jwks_uri`), and checks that the document
    /// names `issuer` (RFC 8414 §3.3: a document for another issuer must not be used).
    ///
    /// # Errors
    /// [`ConfigError::Discovery`] when the document cannot be fetched or read,
    /// [`ConfigError::DiscoveryIssuer`] when it names another issuer, [`ConfigError::Url`] when
    /// `base_url` is not an http(s) URL.
    pub async fn discover(base_url: &str, issuer: impl Into<String>) -> Result<Self, ConfigError> {
        #[derive(Deserialize)]
        struct Metadata {
            issuer: String,
            jwks_uri: String,
        }
        let issuer = issuer.into();
        let url = format!("{}/.well-known/openid-configuration", base_url.trim_end_matches('/'));
        let uri = parse_url("discovery URL", &url)?;
        let fetcher = Fetcher::new(DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_RESPONSE_BYTES, None)?;
        let Fetched::Modified { body, .. } = fetcher.get(&uri, None).await.map_err(ConfigError::Discovery)? else {
            return Err(ConfigError::Discovery(FetchError::Invalid(
                "304 to a plain request".into(),
            )));
        };
        let metadata: Metadata = serde_json::from_slice(&body)
            .map_err(|e| ConfigError::Discovery(FetchError::Invalid(format!("not a discovery document: {e}"))))?;
        if metadata.issuer != issuer {
            return Err(ConfigError::DiscoveryIssuer {
                expected: issuer,
                found: metadata.issuer,
            });
        }
        Ok(Self::new(metadata.jwks_uri, issuer))
    }

    /// Accept tokens whose `aud` holds `audience`; call again to accept several (one match is
    /// enough). Without any, `aud` is not checked: fine when the issuer serves only this service,
    /// a hole when it serves several (a token for one would be good at all).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Clock skew tolerated on `exp`, `nbf` and `iat` (default [`DEFAULT_LEEWAY`], at most
    /// [`MAX_LEEWAY`], whole seconds).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The signature algorithms accepted (default [`DEFAULT_ALGORITHMS`]). Asymmetric ones only:
    /// HMAC is refused at build time. A key is still used only for the algorithm it was published
    /// for.
    pub fn algorithms(mut self, algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = algorithms.into_iter().collect();
        self
    }

    /// Refresh interval when the issuer sends no `Cache-Control: max-age` (default
    /// [`DEFAULT_REFRESH`]), held within [`refresh_bounds`](Self::refresh_bounds).
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.default_refresh = interval;
        self
    }

    /// Bounds on the issuer's `max-age` (default [`DEFAULT_MIN_REFRESH`] to
    /// [`DEFAULT_MAX_REFRESH`]). `no-cache` or `no-store` count as zero, so the minimum.
    pub fn refresh_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.min_refresh = min;
        self.max_refresh = max;
        self
    }

    /// At most one fetch per `interval` for tokens naming an unknown `kid` (default
    /// [`DEFAULT_UNKNOWN_KID_INTERVAL`]).
    pub fn unknown_kid_interval(mut self, interval: Duration) -> Self {
        self.unknown_kid_interval = interval;
        self
    }

    /// How long past its due refresh the last good key set is served while refreshes fail
    /// (default [`DEFAULT_MAX_STALE`]); after it, [`VerifyError::KeysUnavailable`](crate::VerifyError).
    pub fn max_stale(mut self, max_stale: Duration) -> Self {
        self.max_stale = max_stale;
        self
    }

    /// Deadline of one fetch, connect to last byte (default [`DEFAULT_FETCH_TIMEOUT`]).
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// Largest key set accepted, in bytes (default [`DEFAULT_MAX_RESPONSE_BYTES`]).
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// The TLS client configuration for an https key set URL (a private CA, client
    /// certificates). Default: the operating system's trust store, aws-lc-rs as crypto provider.
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Checks every setting and starts the verifier: its background task fetches the key set at
    /// once, and then as the refresh policy says. Tokens can be verified immediately; until the
    /// first fetch succeeds they get [`KeysUnavailable`](crate::VerifyError::KeysUnavailable)
    /// (call [`Verifier::refresh`] to wait for it, or to fail fast).
    ///
    /// # Errors
    /// The first unusable setting, or [`ConfigError::NoRuntime`] outside a tokio runtime.
    pub fn build(self) -> Result<Verifier, ConfigError> {
        let url = parse_url("JWKS URL", &self.jwks_url)?;
        if self.issuer.is_empty() {
            return Err(ConfigError::EmptyIssuer);
        }
        if self.audiences.iter().any(String::is_empty) {
            return Err(ConfigError::EmptyAudience);
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::NoAlgorithm);
        }
        if let Some(&alg) = self.algorithms.iter().find(|alg| alg.family() == AlgorithmFamily::Hmac) {
            return Err(ConfigError::SymmetricAlgorithm(alg));
        }
        in_range("leeway", self.leeway, Duration::ZERO, MAX_LEEWAY)?;
        let second = Duration::from_secs(1);
        let day = Duration::from_secs(86_400);
        in_range("the minimum refresh interval", self.min_refresh, second, day)?;
        in_range("the maximum refresh interval", self.max_refresh, second, day)?;
        if self.min_refresh > self.max_refresh {
            return Err(ConfigError::RefreshBounds);
        }
        in_range(
            "the unknown-kid interval",
            self.unknown_kid_interval,
            Duration::ZERO,
            day,
        )?;
        in_range(
            "max_stale",
            self.max_stale,
            Duration::ZERO,
            Duration::from_secs(7 * 86_400),
        )?;
        in_range(
            "the fetch timeout",
            self.fetch_timeout,
            Duration::from_millis(100),
            Duration::from_secs(60),
        )?;
        if self.max_response_bytes < 1024 {
            return Err(ConfigError::ResponseLimit);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let fetcher = Fetcher::new(self.fetch_timeout, self.max_response_bytes, self.tls)?;
        let policy = RefreshPolicy {
            // Like the issuer's max-age, the fallback is held to the bounds.
            default_interval: self.default_refresh.clamp(self.min_refresh, self.max_refresh),
            min_interval: self.min_refresh,
            max_interval: self.max_refresh,
            unknown_kid_interval: self.unknown_kid_interval,
            max_stale: self.max_stale,
        };
        let expectations = Expectations {
            issuer: self.issuer,
            audiences: self.audiences,
            leeway: i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX),
            algorithms: self.algorithms,
        };
        Ok(Verifier::start(&runtime, url, fetcher, policy, expectations))
    }
}

fn parse_url(what: &'static str, url: &str) -> Result<Uri, ConfigError> {
    let bad = || ConfigError::Url {
        what,
        url: url.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad())?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(uri),
        _ => Err(bad()),
    }
}

fn in_range(what: &'static str, value: Duration, min: Duration, max: Duration) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange { what, value, min, max })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_unusable_setting_is_refused_at_build_time() {
        let base = || Builder::new("http://127.0.0.1:1/jwks.json", "ratchet");
        let refused = [
            (Builder::new("ftp://host/jwks", "ratchet"), "scheme"),
            (Builder::new("/jwks.json", "ratchet"), "relative"),
            (Builder::new("http://127.0.0.1:1/jwks.json", ""), "issuer"),
            (base().audience(""), "audience"),
            (base().algorithms([]), "no algorithm"),
            (base().algorithms([Algorithm::EdDSA, Algorithm::HS256]), "hmac"),
            (base().leeway(Duration::from_secs(301)), "leeway"),
            (
                base().refresh_bounds(Duration::from_secs(600), Duration::from_secs(60)),
                "bounds",
            ),
            (base().fetch_timeout(Duration::ZERO), "timeout"),
            (base().max_response_bytes(10), "limit"),
        ];
        for (builder, why) in refused {
            assert!(builder.build().is_err(), "{why}");
        }
        assert!(matches!(
            base().algorithms([Algorithm::HS384]).build(),
            Err(ConfigError::SymmetricAlgorithm(Algorithm::HS384))
        ));
        base().build().unwrap();
    }

    #[test]
    fn building_outside_a_runtime_is_an_error_not_a_panic() {
        assert!(matches!(
            Builder::new("http://127.0.0.1:1/jwks.json", "ratchet").build(),
            Err(ConfigError::NoRuntime)
        ));
    }
}
