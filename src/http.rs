//! The HTTP listener (`RATCHET_HTTP_LISTEN`): what verifiers that do not speak our gRPC API
//! fetch — the JWK Set at `/.well-known/jwks.json` (Envoy's `jwt_authn` `remote_jwks`, Istio's
//! `RequestAuthentication` `jwksUri`, JWT libraries) and discovery metadata at
//! `/.well-known/openid-configuration` (`issuer` and `jwks_uri`, enough for a library to find
//! the keys from the issuer).
//!
//! The JWKS carries `Cache-Control: max-age` (how long a verifier may keep it; key rotations wait
//! that long before activating a new key) and a strong `ETag`, and answers a matching
//! `If-None-Match` with 304, so that frequent polling costs a few bytes.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::keys::Keyring;

pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

#[derive(Clone)]
struct Published {
    keys: Arc<Keyring>,
    issuer: Arc<str>,
    /// `public, max-age=N`.
    cache_control: HeaderValue,
    /// Announced by discovery; `None`: from the request's Host header.
    jwks_uri: Option<Arc<str>>,
}

/// The router serving the JWKS and discovery.
pub fn router(keys: Arc<Keyring>, issuer: &str, max_age: Duration, jwks_uri: Option<&str>) -> Router {
    let cache_control = HeaderValue::from_str(&format!("public, max-age={}", max_age.as_secs()))
        .unwrap_or(HeaderValue::from_static("no-cache"));
    Router::new()
        .route(JWKS_PATH, get(jwks))
        .route(DISCOVERY_PATH, get(discovery))
        .with_state(Published {
            keys,
            issuer: issuer.into(),
            cache_control,
            jwks_uri: jwks_uri.map(Into::into),
        })
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

async fn discovery(State(published): State<Published>, request: HeaderMap) -> Response {
    let jwks_uri = match &published.jwks_uri {
        Some(uri) => uri.to_string(),
        None => {
            let host = request
                .get(header::HOST)
                .and_then(|host| host.to_str().ok())
                .filter(|host| !host.is_empty() && host.bytes().all(|b| b.is_ascii_graphic()));
            let Some(host) = host else {
                return (StatusCode::BAD_REQUEST, "a Host header is required").into_response();
            };
            format!("http://{host}{JWKS_PATH}")
        }
    };
    let body = serde_json::json!({
        "issuer": &*published.issuer,
        "jwks_uri": jwks_uri,
    });
    let headers = [(header::CACHE_CONTROL, published.cache_control.clone())];
    (StatusCode::OK, headers, axum::Json(body)).into_response()
}
