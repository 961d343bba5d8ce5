//! One bounded HTTP GET: the JWKS (conditional, with `If-None-Match`) or the discovery document.
//!
//! Every fetch has a deadline over the whole exchange (connect, headers and body) and a limit on
//! the body's size, so a slow or hostile endpoint can neither hold a refresh forever nor make us
//! buffer without end. Redirects are not followed: the JWKS URL is configuration, and a key set
//! that moved is an operator's change to make, not one to take from the network.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, ETAG, IF_NONE_MATCH};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::error::{ConfigError, FetchError};

/// What a GET brought back.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// 200: a new document.
    Modified {
        body: Bytes,
        etag: Option<String>,
        max_age: Option<Duration>,
    },
    /// 304: what we hold is still current.
    NotModified { max_age: Option<Duration> },
}

#[derive(Clone)]
pub(crate) struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
    max_bytes: usize,
}

impl Fetcher {
    /// A client for http and https URLs. Without `tls`, server certificates are checked against
    /// the operating system's trust store (where a mesh's own CA is usually installed).
    ///
    /// # Errors
    /// No TLS configuration can be built (not with aws-lc-rs, which supports rustls's defaults).
    pub(crate) fn new(
        timeout: Duration,
        max_bytes: usize,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Self, ConfigError> {
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match tls {
            Some(config) => builder.with_tls_config(config),
            None => {
                let provider = rustls::crypto::aws_lc_rs::default_provider();
                match builder.with_provider_and_native_roots(provider) {
                    Ok(builder) => builder,
                    Err(error) => {
                        // Plain http still works; https fails at the handshake, and says so.
                        tracing::warn!(%error, "no usable root certificates: https key sets cannot be fetched");
                        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(empty_roots()?)
                    }
                }
            }
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1)
            .build(connector);
        Ok(Self {
            client,
            timeout,
            max_bytes,
        })
    }

    /// GET `url`, conditionally when `etag` is given.
    ///
    /// # Errors
    /// Transport failure, deadline, a status other than 200/304, or a body over the limit.
    pub(crate) async fn get(&self, url: &Uri, etag: Option<&str>) -> Result<Fetched, FetchError> {
        tokio::time::timeout(self.timeout, self.exchange(url, etag))
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))?
    }

    async fn exchange(&self, url: &Uri, etag: Option<&str>) -> Result<Fetched, FetchError> {
        let mut request = Request::get(url.clone()).header(http::header::ACCEPT, "application/json");
        if let Some(etag) = etag.and_then(|etag| HeaderValue::from_str(etag).ok()) {
            request = request.header(IF_NONE_MATCH, etag);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| FetchError::Transport(error_chain(&e)))?;
        let max_age = max_age(response.headers());
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_MODIFIED if etag.is_some() => return Ok(Fetched::NotModified { max_age }),
            status => return Err(FetchError::Status(status.as_u16())),
        }
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = Limited::new(response.into_body(), self.max_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge(self.max_bytes)
                } else {
                    FetchError::Transport(e.to_string())
                }
            })?
            .to_bytes();
        Ok(Fetched::Modified { body, etag, max_age })
    }
}

/// The freshness lifetime the server gives (RFC 9111 §5.2.2): `max-age=N`; `no-cache` and
/// `no-store` mean "ask again soon", i.e. zero, which the caller raises to its minimum.
pub(crate) fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut found = None;
    for directive in headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
    {
        let (name, value) = directive.trim().split_once('=').unwrap_or((directive.trim(), ""));
        if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
            return Some(Duration::ZERO);
        }
        if name.eq_ignore_ascii_case("max-age")
            && let Ok(seconds) = value.trim().trim_matches('"').parse::<u64>()
        {
            found = Some(Duration::from_secs(seconds));
        }
    }
    found
}

fn empty_roots() -> Result<rustls::ClientConfig, ConfigError> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    Ok(rustls::ClientConfig::builder_with_provider(provider.into())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Tls(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

/// `error` and its sources, one line: hyper's top-level message alone ("client error (Connect)")
/// does not say what went wrong.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(CACHE_CONTROL, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn max_age_is_read_from_any_cache_control_header_in_any_case() {
        assert_eq!(
            max_age(&headers(&["public, max-age=300"])),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            max_age(&headers(&["public", "MAX-AGE=60"])),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age(&headers(&["max-age=\"7\""])), Some(Duration::from_secs(7)));
        assert_eq!(max_age(&headers(&["max-age=300, no-cache"])), Some(Duration::ZERO));
        assert_eq!(max_age(&headers(&["no-store"])), Some(Duration::ZERO));
        assert_eq!(max_age(&headers(&["max-age=soon"])), None);
        assert_eq!(max_age(&headers(&[])), None);
    }
}
