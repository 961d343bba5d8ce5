//! `envoy.service.auth.v3.Authorization`: Envoy's external authorization (ext_authz), so that a
//! mesh sidecar checks every request's bearer token against ratchet, revocations included.
//!
//! Decode (find the bearer token, the route's requirements and any spoofed identity headers in
//! the `CheckRequest`), call [`Issuer::authorize`], encode the answer: an `OkHttpResponse` that
//! sets the `x-ratchet-*` identity headers on the upstream request, or a `DeniedHttpResponse`
//! with an RFC 6750 challenge. The decision itself lives in [`crate::issuer::authorize`].
//!
//! A problem with the HTTP request (credentials, headers, a route's requirements) is a *denial*.
//! A Check that breaks a bound on what ratchet decodes (its size, [`MAX_CHECK_BYTES`], or more
//! than [`request::MAX_CONTEXT_EXTENSIONS`] route extensions) is a gRPC error, RESOURCE_EXHAUSTED,
//! as for every RPC, and so is a failure of ratchet's own (storage down for a family it has to
//! look up: UNAVAILABLE). Envoy denies on any error unless `failure_mode_allow` is set, which
//! must stay off (docs/mesh.md): with it, an attacker who can make Check fail is let through.
//!
//! Credentials, decided here (RFC 6750 §2.1, §3.1):
//! - no `authorization` header, another scheme, or a token without the scheme: no bearer
//!   credentials at all, a bare `Bearer` challenge (no error code);
//! - a `Bearer` scheme with no token, several tokens, a value that is not a token68, more than
//!   one `authorization` header (Envoy joins repeats with commas in `headers`, and lists them
//!   separately in `header_map`), or one over the token size limit: `invalid_token`, like any
//!   token that does not verify: which token would we pick?
//!
//! What it leaves out: the request body, the path, the method. Routes choose their requirements
//! through `context_extensions`, which Envoy and Istio let a route (not a client) set.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus,
    HttpStatusCode,
};
use envoy_types::pb::google::rpc;
use tonic::{Code, Request, Response, Status};

use crate::clock::Clock;
use crate::issuer::Issuer;
use crate::issuer::authorize::{Decision, Denial, Requirements};
use crate::issuer::types::{MAX_TOKEN_BYTES, PresentedToken};
use crate::store::FamilyStore;
use crate::telemetry::metrics;
use crate::telemetry::throttle;
use request::{CheckRequest, HttpRequest};
pub use wire::{AuthorizationService, CheckAnswer};

pub mod request;
mod wire;

/// The service's full name, for the health service.
pub const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";
/// The one method's path, as our hand-written service ([`AuthorizationService`]) matches it. Both
/// are written out rather than taken from envoy-types' generated server, which keeps them inside
/// its `call`; a test holds them to what envoy-types' generated client sends.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
/// Largest `CheckRequest` decoded; a larger one is RESOURCE_EXHAUSTED, which Envoy answers with a
/// denial (403 unless `status_on_error` says otherwise) as long as `failure_mode_allow` is off.
/// Envoy's default cap on a request's headers is 60 KiB (`max_request_headers_kb`), and a Check
/// adds little to them (the peers' addresses and certificates, the route's metadata): 256 KiB
/// leaves room for a limit raised fourfold. It was 16 MiB, so that no header-only Check could ever
/// be refused (Envoy allows up to 8 MiB of headers); but 16 MiB of empty headers decoded to 600 MB,
/// and an error is a denial as long as `failure_mode_allow` is off, which the docs now require.
pub const MAX_CHECK_BYTES: usize = 256 * 1024;
/// Most request headers looked at; a request with more is refused (`invalid_request`). Envoy's
/// own default is 100 (`max_headers_count`).
pub const MAX_HEADERS: usize = 1024;

/// `context_extensions` a route sets: space-separated scopes, all required.
pub const REQUIRED_SCOPES: &str = "ratchet.required_scopes";
/// `context_extensions` a route sets: an audience the token must carry.
pub const AUDIENCE: &str = "ratchet.audience";
/// Every `context_extensions` key of ours, spelt exactly so.
const EXTENSIONS: [&str; 2] = [REQUIRED_SCOPES, AUDIENCE];
/// Any key that folds to this (see `folds_to`) and is not in [`EXTENSIONS`] is a typo.
const EXTENSION_PREFIX: &str = "ratchet-";
/// Namespace (top-level key) of the verified claims in the dynamic metadata.
pub const METADATA_NAMESPACE: &str = "ratchet";

/// What the upstream request carries after an allow; each overwrites whatever the client sent.
pub mod header {
    pub const SUBJECT: &str = "x-ratchet-subject";
    pub const CLIENT_ID: &str = "x-ratchet-client-id";
    pub const SCOPES: &str = "x-ratchet-scopes";
    pub const FAMILY_ID: &str = "x-ratchet-family-id";
    /// Every header of ours starts so: any other the client sent is removed, and so is every
    /// header whose name an upstream may fold into one starting so (`x_ratchet_subject`).
    pub const PREFIX: &str = "x-ratchet-";
    pub(super) const SET: [&str; 4] = [SUBJECT, CLIENT_ID, SCOPES, FAMILY_ID];
}

pub struct AuthorizationImpl<S> {
    issuer: Arc<Issuer<S>>,
    clock: Arc<dyn Clock>,
}

impl<S> AuthorizationImpl<S> {
    pub fn new(issuer: Arc<Issuer<S>>, clock: Arc<dyn Clock>) -> Self {
        Self { issuer, clock }
    }
}

impl<S: FamilyStore> AuthorizationImpl<S> {
    /// `Check`, served by [`AuthorizationService`].
    ///
    /// # Errors
    /// UNAVAILABLE (or INTERNAL) when the token's family had to be looked up and storage did not
    /// answer; every problem with the request is a denial.
    pub async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckAnswer>, Status> {
        let check = Check::from(request.into_inner());
        let verdict = match check.credentials {
            Credentials::Bearer(token) => match check.requirements {
                Ok(requirements) => {
                    Verdict::Decided(self.issuer.authorize(&token, &requirements, self.clock.now()).await?)
                }
                Err(route_misconfigured) => Verdict::Decided(Decision::Deny(route_misconfigured)),
            },
            other => Verdict::Refused(other),
        };
        Ok(Response::new(encode(verdict, check.spoofed)))
    }
}

/// What a bearer presented.
#[derive(Debug)]
enum Credentials {
    /// No bearer credentials at all.
    Missing,
    /// Bearer credentials that cannot be one valid token.
    Malformed,
    /// More headers than [`MAX_HEADERS`]: not looked at.
    TooManyHeaders,
    Bearer(PresentedToken),
}

/// A `CheckRequest`, parsed and bounded.
struct Check {
    credentials: Credentials,
    /// The route's requirements; a route whose requirements do not parse denies everything (and
    /// says so in the log).
    requirements: Result<Requirements, Denial>,
    /// Headers the client sent that are, or fold into, `x-ratchet-*` and that an allow does not
    /// overwrite, lower-case.
    spoofed: Vec<String>,
}

impl From<CheckRequest> for Check {
    fn from(request: CheckRequest) -> Self {
        let Some(attributes) = request.attributes else {
            return Self::refused(Credentials::Missing);
        };
        let requirements = route_requirements(&attributes.context_extensions);
        let Some(http) = attributes.request.and_then(|request| request.http) else {
            return Self::refused(Credentials::Missing);
        };
        let headers = headers(&http);
        if headers.len() > MAX_HEADERS {
            return Self::refused(Credentials::TooManyHeaders);
        }
        let mut authorization = headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("authorization"));
        let credentials = match (authorization.next(), authorization.next()) {
            (None, _) => Credentials::Missing,
            (Some(_), Some(_)) => Credentials::Malformed,
            (Some((_, value)), None) => value.map_or(Credentials::Malformed, bearer),
        };
        let mut spoofed: Vec<String> = Vec::new();
        for (name, _) in &headers {
            if folds_to(name, header::PREFIX) {
                // Lower-case: Envoy's header names are, and it removes by the lower-case name.
                let name = name.to_ascii_lowercase();
                if !header::SET.contains(&name.as_str()) && !spoofed.contains(&name) {
                    spoofed.push(name);
                }
            }
        }
        Self {
            credentials,
            requirements,
            spoofed,
        }
    }
}

/// Whether `name` starts with `prefix` once folded as upstreams fold header names: CGI and WSGI
/// (`HTTP_X_RATCHET_SUBJECT`), Rack and PHP upper-case a name and turn `-` into `_` (PHP also `.`
/// and ` `; Apache before 2.4 any byte that is not a letter or digit), so `x_ratchet_subject`
/// and `X.Ratchet-Subject` reach them as our `x-ratchet-subject`. Folded here: ASCII case, and
/// every other byte that is not a letter or digit to `-`. `prefix` is lower-case and spelt with
/// `-`. Allocation-free: it runs on every header of every Check.
fn folds_to(name: &str, prefix: &str) -> bool {
    let fold = |b: u8| {
        if b.is_ascii_alphanumeric() {
            b.to_ascii_lowercase()
        } else {
            b'-'
        }
    };
    name.len() >= prefix.len() && name.bytes().zip(prefix.bytes()).all(|(b, p)| fold(b) == p)
}

/// The route's requirements from its `context_extensions`. A key that looks like ours (any case,
/// any separator: `Ratchet.Required_Scopes`, `ratchet.required_scope`) but is not one we define
/// is a typo that would otherwise mean "no requirement": it denies every request, like a value
/// that does not parse (and says so in the log), so a misconfigured route fails closed.
fn route_requirements(extensions: &HashMap<String, String>) -> Result<Requirements, Denial> {
    let misconfigured = || Denial::InsufficientScope { missing_scopes: vec![] };
    let mut keys = extensions.keys();
    // Logged through the throttle: every Check on such a route comes here, and whoever may call
    // Check chooses the extensions it sends.
    if let Some(key) = keys.find(|key| folds_to(key, EXTENSION_PREFIX) && !EXTENSIONS.contains(&key.as_str())) {
        let key = truncated(key);
        if let Some(suppressed) = throttle::security_event("ext_authz route misconfigured", key) {
            tracing::warn!(
                key = ?key, suppressed,
                "this route's ext_authz context_extensions name a ratchet key that does not exist (known: {REQUIRED_SCOPES}, {AUDIENCE}): denying every request"
            );
        }
        return Err(misconfigured());
    }
    let extension = |name: &str| extensions.get(name).map_or("", String::as_str);
    Requirements::parse(extension(REQUIRED_SCOPES), extension(AUDIENCE)).map_err(|error| {
        if let Some(suppressed) = throttle::security_event("ext_authz route misconfigured", &error.field) {
            tracing::warn!(%error, suppressed, "this route's ext_authz context_extensions are invalid: denying every request");
        }
        misconfigured()
    })
}

/// At most the first 64 characters of `text`, for a log line.
fn truncated(text: &str) -> &str {
    text.char_indices().nth(64).map_or(text, |(end, _)| &text[..end])
}

impl Check {
    fn refused(credentials: Credentials) -> Self {
        Self {
            credentials,
            requirements: Ok(Requirements::default()),
            spoofed: Vec::new(),
        }
    }
}

/// The request's headers as (name, value); a value that is not UTF-8 is `None`. Envoy sends
/// either the `headers` map or, with `encode_raw_headers`, the `header_map` list.
fn headers(http: &HttpRequest) -> Vec<(&str, Option<&str>)> {
    if !http.headers.is_empty() {
        return http
            .headers
            .iter()
            .take(MAX_HEADERS + 1)
            .map(|(name, value)| (name.as_str(), Some(value.as_str())))
            .collect();
    }
    let Some(map) = &http.header_map else {
        return Vec::new();
    };
    map.headers
        .iter()
        .take(MAX_HEADERS + 1)
        .map(|h| {
            let value = if h.raw_value.is_empty() {
                Some(h.value.as_str())
            } else {
                std::str::from_utf8(&h.raw_value).ok()
            };
            (h.key.as_str(), value)
        })
        .collect()
}

fn is_bearer(credential: &str) -> bool {
    let scheme = credential.split([' ', '\t']).next().unwrap_or_default();
    scheme.eq_ignore_ascii_case("bearer")
}

/// RFC 7235 token68, the syntax of a bearer token (RFC 6750 §2.1). Every byte of every Check's
/// token passes here (~550 of them): one table lookup each rather than a chain of comparisons.
fn is_token68(text: &str) -> bool {
    let body = text.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|b| TOKEN68[usize::from(b)])
}

/// The bytes of token68 but its trailing `=`: letters, digits, `-._~+/`.
const TOKEN68: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

/// One `authorization` header value, as RFC 6750 §2.1 reads it.
fn bearer(value: &str) -> Credentials {
    let value = value.trim_matches([' ', '\t']);
    if value.contains(',') {
        // Several credentials joined by Envoy: refused if any claims to be a bearer token.
        return if value.split(',').any(|part| is_bearer(part.trim_matches([' ', '\t']))) {
            Credentials::Malformed
        } else {
            Credentials::Missing
        };
    }
    if !is_bearer(value) {
        return Credentials::Missing;
    }
    let token = value["bearer".len()..].trim_start_matches([' ', '\t']);
    if token.len() > MAX_TOKEN_BYTES || !is_token68(token) {
        return Credentials::Malformed;
    }
    PresentedToken::parse("authorization", token.to_owned()).map_or(Credentials::Malformed, Credentials::Bearer)
}

enum Verdict {
    Decided(Decision),
    /// Refused before any token was judged.
    Refused(Credentials),
}

fn encode(verdict: Verdict, spoofed: Vec<String>) -> CheckAnswer {
    let denial = match verdict {
        Verdict::Decided(Decision::Allow(active)) => {
            metrics::decided(metrics::Decision::Allow);
            return CheckAnswer::Encoded(wire::allow(&active, &spoofed));
        }
        Verdict::Decided(Decision::Deny(Denial::InvalidToken)) | Verdict::Refused(Credentials::Malformed) => deny(
            Code::Unauthenticated,
            HttpStatusCode::Unauthorized,
            "Bearer error=\"invalid_token\"".into(),
        ),
        Verdict::Decided(Decision::Deny(Denial::InsufficientScope { missing_scopes })) => {
            // Scope tokens hold no '"' or '\' (checked when parsed): safe inside the quotes.
            let challenge = if missing_scopes.is_empty() {
                "Bearer error=\"insufficient_scope\"".to_owned()
            } else {
                format!(
                    "Bearer error=\"insufficient_scope\", scope=\"{}\"",
                    missing_scopes.join(" ")
                )
            };
            deny(Code::PermissionDenied, HttpStatusCode::Forbidden, challenge)
        }
        Verdict::Refused(Credentials::TooManyHeaders) => deny(
            Code::InvalidArgument,
            HttpStatusCode::BadRequest,
            "Bearer error=\"invalid_request\"".into(),
        ),
        // RFC 6750 §3.1: no error code when the request carries no authentication at all.
        Verdict::Refused(Credentials::Missing | Credentials::Bearer(_)) => {
            deny(Code::Unauthenticated, HttpStatusCode::Unauthorized, "Bearer".into())
        }
    };
    CheckAnswer::Message(Box::new(denial))
}

fn set(name: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value,
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        // An empty value (a token without scopes or client id) must still overwrite the client's.
        keep_empty_value: true,
        ..Default::default()
    }
}

fn rpc_status(code: Code) -> Option<rpc::Status> {
    Some(rpc::Status {
        code: code as i32,
        ..Default::default()
    })
}

fn deny(code: Code, http: HttpStatusCode, challenge: String) -> CheckResponse {
    // The decisions counted are 401 and 403; a 400 (a request Envoy should never send) is not one.
    match http {
        HttpStatusCode::Unauthorized => metrics::decided(metrics::Decision::Unauthenticated),
        HttpStatusCode::Forbidden => metrics::decided(metrics::Decision::Denied),
        _ => {}
    }
    CheckResponse {
        status: rpc_status(code),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http as i32 }),
            headers: vec![set("www-authenticate", challenge)],
            body: String::new(),
        })),
        dynamic_metadata: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(credentials: &Credentials) -> &'static str {
        match credentials {
            Credentials::Missing => "missing",
            Credentials::Malformed => "malformed",
            Credentials::TooManyHeaders => "too many",
            Credentials::Bearer(_) => "bearer",
        }
    }

    #[test]
    fn authorization_values_are_read_as_rfc_6750_says() {
        for (value, want) in [
            ("Bearer abc.def-ghi_jkl", "bearer"),
            ("bearer abc", "bearer"),
            ("BEARER  abc==", "bearer"),
            (" Bearer\tabc ", "bearer"),
            ("Basic dXNlcjpwYXNz", "missing"),
            ("abc.def.ghi", "missing"),
            ("", "missing"),
            ("Bearerabc", "missing"),
            ("Bearer", "malformed"),
            ("Bearer   ", "malformed"),
            ("Bearer a b", "malformed"),
            ("Bearer a,Bearer b", "malformed"),
            ("Basic x, Bearer y", "malformed"),
            ("Basic x, Digest y", "missing"),
            ("Bearer a\"b", "malformed"),
            ("Bearer =", "malformed"),
        ] {
            assert_eq!(kind(&bearer(value)), want, "{value:?}");
        }
        let huge = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(kind(&bearer(&huge)), "malformed");
    }
}
