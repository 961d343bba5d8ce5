//! The HTTP listener (`RATCHET_HTTP_LISTEN`): what verifiers that do not speak our gRPC API
//! fetch — the JWK Set at `/.well-known/jwks.json` (Envoy's `jwt_authn` `remote_jwks`, Istio's
//! `RequestAuthentication` `jwksUri`, JWT libraries) and discovery metadata at
//! `/.well-known/openid-configuration` (`issuer` and `jwks_uri`, enough for a library to find
//! the keys from the issuer). And, unless `--metrics-listen` puts them elsewhere, Prometheus
//! metrics at `/metrics` ([`metrics_router`]).
//!
//! Nothing in a request (`Host`, `:authority`, `X-Forwarded-*`) goes into an answer: both answers
//! are public and cacheable, so a URL built from the request would let one client poison a shared
//! cache and send every verifier behind it to an attacker's keys. Discovery's `jwks_uri` is
//! `--jwks-uri`, or else `<issuer>/.well-known/jwks.json` (OIDC Discovery §4: the document lives
//! under the issuer's URL, so the keys do too); an issuer that is not an http(s) URL and no
//! `--jwks-uri` means no discovery document (404), since `jwks_uri` is required (§3) and there is
//! nothing honest to put in it.
//!
//! The JWKS carries `Cache-Control: max-age` (how long a verifier may keep it; key rotations wait
//! that long before activating a new key) and a strong `ETag`, and answers a matching
//! `If-None-Match` with 304, so that frequent polling costs a few bytes.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::keys::Keyring;
use crate::telemetry::metrics::Exporter;

pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// Prometheus metrics, on this listener or one of their own (`--metrics-listen`).
pub const METRICS_PATH: &str = "/metrics";
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

#[derive(Clone)]
struct Published {
    keys: Arc<Keyring>,
    /// `public, max-age=N`.
    cache_control: HeaderValue,
    /// The discovery document, built once: the same bytes for every request, whoever asks and
    /// however.
    discovery: Bytes,
}

/// The router serving the JWKS and, when there is a `jwks_uri` to announce (see
/// `discovery_jwks_uri`), discovery.
pub fn router(keys: Arc<Keyring>, issuer: &str, max_age: Duration, jwks_uri: Option<&str>) -> Router {
    let cache_control = HeaderValue::from_str(&format!("public, max-age={}", max_age.as_secs()))
        .unwrap_or(HeaderValue::from_static("no-cache"));
    let jwks_uri = discovery_jwks_uri(issuer, jwks_uri);
    let discovery = jwks_uri.as_ref().map_or_else(Bytes::new, |jwks_uri| {
        Bytes::from(serde_json::json!({ "issuer": issuer, "jwks_uri": jwks_uri }).to_string())
    });
    let router = Router::new().route(JWKS_PATH, get(jwks));
    let router = if jwks_uri.is_some() {
        router.route(DISCOVERY_PATH, get(discovery_document))
    } else {
        tracing::warn!(
            issuer,
            "no discovery document: the issuer is not an http(s) URL and RATCHET_JWKS_URI is not set"
        );
        router
    };
    router.with_state(Published {
        keys,
        cache_control,
        discovery,
    })
}

/// A router serving `GET /metrics` (the Prometheus text format): merged into [`router`]'s, or
/// alone on the metrics listener.
pub fn metrics_router(exporter: Arc<Exporter>) -> Router {
    Router::new().route(METRICS_PATH, get(scrape)).with_state(exporter)
}

async fn scrape(State(exporter): State<Arc<Exporter>>) -> Response {
    // Reading /proc and rendering a few hundred series: about a millisecond, off the runtime's
    // worker threads all the same.
    match tokio::task::spawn_blocking(move || exporter.render()).await {
        Ok(text) => {
            let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
            (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], text).into_response()
        }
        Err(error) => {
            tracing::error!(%error, "rendering the metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The `jwks_uri` discovery announces: `configured` (`--jwks-uri`), else
/// `<issuer>/.well-known/jwks.json` when the issuer is an http(s) URL with a host and without
/// query or fragment (OIDC Discovery §3's issuer), else `None` (no discovery).
fn discovery_jwks_uri(issuer: &str, configured: Option<&str>) -> Option<String> {
    if let Some(configured) = configured {
        return Some(configured.to_owned());
    }
    let url = url::Url::parse(issuer).ok()?;
    let is_issuer_url = matches!(url.scheme(), "https" | "http")
        && url.host().is_some()
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none();
    // The issuer as written (not `url`'s normalised form): it is what verifiers compare `iss` to.
    is_issuer_url.then(|| format!("{}{JWKS_PATH}", issuer.trim_end_matches('/')))
}

async fn jwks(State(published): State<Published>, request: HeaderMap) -> Response {
    let jwks = published.keys.jwks();
    let etag = HeaderValue::from_str(&jwks.etag).unwrap_or(HeaderValue::from_static("\"\""));
    let headers = [
        (header::CACHE_CONTROL, published.cache_control.clone()),
        (header::ETAG, etag),
    ];
    if if_none_match(&request, &jwks.etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    let content_type = (header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    (StatusCode::OK, headers, [content_type], jwks.json.clone()).into_response()
}

/// RFC 9110 §13.1.2: `*`, or a list of entity tags one of which matches (weak comparison).
fn if_none_match(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag == etag)
}

async fn discovery_document(State(published): State<Published>) -> Response {
    let headers = [
        (header::CACHE_CONTROL, published.cache_control),
        (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
    ];
    (StatusCode::OK, headers, published.discovery).into_response()
}
