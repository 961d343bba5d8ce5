//! Verify ratchet's access tokens locally, in the service that receives them.
//!
//! ratchet's access tokens are RFC 9068 JWTs (`typ: at+jwt`, `kid` = the key's RFC 7638
//! thumbprint, EdDSA, ES256 or RS256) and ratchet publishes its verification keys as a JWK Set at
//! `http://<RATCHET_HTTP_LISTEN>/.well-known/jwks.json`. A [`Verifier`] keeps that key set fresh
//! and checks tokens the way ratchet's Introspect does, without a round trip to ratchet:
//!
//! - `typ` is `at+jwt` (or `application/at+jwt`, RFC 9068 §4; case-insensitive);
//! - `alg` is one this verifier allows (default EdDSA, ES256, RS256; never `none`, never HMAC);
//! - the key is chosen by `kid` only, and must have been published for the token's `alg`;
//! - the signature verifies;
//! - `iss` is exactly the configured issuer; `aud` holds one of the configured audiences, if any;
//! - `exp`, `nbf` and `iat` hold with the leeway (default 30 s: our clock is not the issuer's);
//! - `exp`, `iss`, `sub`, `aud`, `iat`, `jti` and `sid` are present.
//!
//! It does not know about revocation: a revoked session's access tokens stay valid here until they
//! expire (15 minutes by default). Call ratchet's Introspect where that matters.
//!
//! [`VerifyLayer`] puts it in front of a tonic server: requests need `authorization: Bearer …`
//! metadata, handlers read the [`Claims`] from the request extensions, and everything else is
//! answered `UNAUTHENTICATED` (reason `TOKEN_INVALID` or `TOKEN_EXPIRED`, like ratchet) or
//! `UNAVAILABLE` (the key set cannot be had).
//!
//! ```no_run
//! use ratchet_verify::{Claims, Verifier, VerifyLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let verifier = Verifier::builder("http://ratchet:8080/.well-known/jwks.json", "ratchet")
//!     .audience("billing")
//!     .build()?;
//! # let (_, my_service) = tonic_health::server::health_reporter();
//! tonic::transport::Server::builder()
//!     .layer(VerifyLayer::new(verifier).exempt("/grpc.health.v1.Health/"))
//!     .add_service(my_service)
//!     .serve("0.0.0.0:50051".parse()?)
//!     .await?;
//! # Ok(()) }
//!
//! // in a handler:
//! fn subject<T>(request: &tonic::Request<T>) -> Result<&str, tonic::Status> {
//!     let claims = request
//!         .extensions()
//!         .get::<Claims>()
//!         .ok_or_else(|| tonic::Status::unauthenticated("no verified token"))?;
//!     Ok(&claims.sub)
//! }
//! ```
//!
//! `examples/whoami.rs` is a complete service.
//!
//! # Layout
//! - [`config`]: [`Builder`], the settings and their defaults, discovery.
//! - `verifier`: [`Verifier`], the checks and their order.
//! - `cache`: the key set, its background refresh, on-demand refresh on an unknown `kid`
//!   (rate-limited, shared), and the failure policy (last good set kept for [`config::DEFAULT_MAX_STALE`]).
//! - `jwks`: reading a JWK Set; `fetch`: one bounded HTTP GET (hyper + rustls on aws-lc-rs).
//! - `claims`: [`Claims`]; `error`: [`VerifyError`], [`FetchError`], [`ConfigError`].
//! - `layer`: [`VerifyLayer`] and the mapping to `tonic::Status`.

mod cache;
mod claims;
pub mod config;
mod error;
mod fetch;
mod jwks;
mod layer;
mod verifier;

pub use claims::Claims;
pub use config::Builder;
pub use error::{ConfigError, FetchError, VerifyError};
pub use jsonwebtoken::Algorithm;
pub use layer::{VerifyLayer, VerifyService, to_status};
pub use verifier::Verifier;

/// `google.rpc.ErrorInfo.domain` of refusals: ratchet's, so clients handle both alike.
pub const ERROR_DOMAIN: &str = "ratchet";

/// `google.rpc.ErrorInfo.reason` values, as ratchet uses them.
pub mod reason {
    pub const TOKEN_INVALID: &str = "TOKEN_INVALID";
    pub const TOKEN_EXPIRED: &str = "TOKEN_EXPIRED";
}
