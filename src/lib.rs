//! ratchet: a gRPC token issuer for internal services.
//!
//! # Layout
//! Imports only go down this list:
//! - [`grpc`] and [`http`]: the transports. [`http`] serves the JWKS and discovery metadata;
//!   [`grpc`] is the tonic service. Decodes requests into domain types, calls the issuer, encodes the
//!   answer; the only place that knows `tonic::Status` (`grpc/status.rs`); the layers around every
//!   call (panics, the message size limit).
//! - [`policy`]: who may call what (the caller policy file, API keys, patterns) and the abuse
//!   limits (per-caller rates, the per-family Rotate limit). Plain Rust: [`grpc`] enforces it.
//! - [`issuer`]: the use cases (issue, rotate, revoke, introspect, list sessions, cleanup) and the
//!   rotation rules. Knows neither tonic nor sqlx; takes `now` as a parameter.
//! - [`store`]: the [`store::FamilyStore`] trait, [`store::Backend`] (the backend chosen at run
//!   time, and what only a whole backend does: open, migrate, close), its PostgreSQL
//!   implementation (statements, rows, and running a statement to a definite outcome), the
//!   connection pool, the family cache and the listener that keeps it current with revocations
//!   made by other replicas; and its SQLite implementation, for one process with no database
//!   server (the default when no `DATABASE_URL` is set).
//! - [`domain`]: the identifiers both [`issuer`] and [`store`] speak of (family id, token hash,
//!   seal) and the error a field that breaks a rule is refused with. Imports nothing of the
//!   crate, so the store never needs the issuer.
//! - [`keys`]: signing and verifying access tokens (EdDSA, ES256, RS256), the key directory and
//!   its reloading, the JWK Set, and the server secret that keys grace-window seals and page
//!   tokens.
//!
//! - [`transport`]: TLS and mutual TLS on both listeners (reloaded as certificates rotate), the
//!   caller's identity (client certificate, or a trusted sidecar's XFCC header) put into each
//!   request for the caller policy, and serving each connection within its limits (idle
//!   timeouts; the HTTP listener's header read timeout and connection cap).
//! - [`files`]: files only their owner may read (created 0600, refused when shared), for
//!   [`keys`], [`transport`] and [`store`]'s SQLite alike. Imports nothing of the crate.
//!
//! Around them: [`cli`] and [`config`] (flags, environment, validation; [`database_url`] keeps the
//! database password out of every printout), [`startup`] (building and running the server),
//! [`shutdown`], [`reload`] (when to re-read keys, certificates and the policy), [`telemetry`] and
//! [`clock`].

pub mod cli;
pub mod clock;
pub mod config;
pub mod database_url;
pub mod domain;
pub mod files;
pub mod grpc;
pub mod http;
pub mod issuer;
pub mod keys;
pub mod policy;
pub mod reload;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod transport;
