//! ratchet: a gRPC token issuer for internal services.
//!
//! # Layout
//! One layer a line, from the top. A module imports only modules on lines below its own: never
//! one above it, nor another on its own line. `tests/layers.rs` reads this list and every
//! `crate::` path in `src/` and fails when they disagree, so a move that contradicts the map
//! fails the tests: change the map with the move.
//!
//! - [`startup`]: building and running the server: the listeners, the layers around every call in
//!   their order, the background tasks, and shutdown.
//! - [`config`]: every setting validated at once (exit 64 listing every problem), in the shape
//!   the parts below take.
//! - [`cli`]: the flags and their environment variables, as clap reads them.
//! - [`grpc`] and [`http`]: the services on the two listeners. [`grpc`] is the tonic service and
//!   Envoy's ext_authz: decodes requests into domain types, calls the issuer, encodes the answer;
//!   the only place that knows `tonic::Status` (`grpc/status.rs`); the layers around every call
//!   (its request id and span, every call counted and timed, panics, the message size limit,
//!   load shedding, the caller policy, answering the calls still in flight when the shutdown
//!   grace ends). [`http`] serves the JWKS and discovery metadata, and `/metrics`.
//! - [`policy`]: who may call what (the caller policy file, API keys, patterns) and the abuse
//!   limits (per-caller rates, the per-family Rotate limit). Plain Rust: [`grpc`] enforces it.
//! - [`transport`]: TLS and mutual TLS on both listeners (reloaded as certificates rotate), the
//!   caller's identity (client certificate, or a trusted sidecar's XFCC header) put into each
//!   request as a [`transport::PeerIdentity`] for the caller policy, and serving each connection
//!   within its limits (idle timeouts; the HTTP listener's header read timeout and connection
//!   cap). Knows nothing of gRPC services or the policy that reads the identity.
//! - [`issuer`]: the use cases (issue, rotate, revoke, introspect, list sessions, authorize,
//!   cleanup) and the rotation rules. Knows neither tonic nor sqlx; takes `now` as a parameter.
//! - [`store`]: the [`store::FamilyStore`] trait, [`store::Backend`] (the backend chosen at run
//!   time, and what only a whole backend does: open, migrate, close), its PostgreSQL
//!   implementation (statements, rows, running a statement to a definite outcome, and which of
//!   a multi-host URL's servers accepts writes), the
//!   audit trail every write records with its change ([`store::audit`]), the connection pool, the family cache and the listener that keeps it current with revocations
//!   made by other replicas; and its SQLite implementation, for one process with no database
//!   server (the default when no `DATABASE_URL` is set).
//! - [`domain`]: the identifiers both [`issuer`] and [`store`] speak of (family id, token hash,
//!   seal) and the error a field that breaks a rule is refused with. Import them from here: the
//!   issuer does not re-export them, so the store never needs the issuer.
//! - [`keys`]: signing and verifying access tokens (EdDSA, ES256, RS256), the key directory and
//!   its reloading, the JWK Set, and the server secret that keys grace-window seals and page
//!   tokens.
//! - [`reload`], [`telemetry`], [`clock`], [`shutdown`], [`files`] and [`database_url`]: what
//!   any layer may use: when to re-read a file (keys, certificates, the policy), logging, its
//!   throttle and the request id, the Prometheus metrics (every name written once, recorded where
//!   its event happens: `telemetry::metrics`), the time, the shutdown signal (and how far a stop
//!   has got), files only their owner may read (created 0600, refused when shared: key files, the
//!   server secret, TLS keys, the SQLite database), and a database URL that keeps its password
//!   out of every printout.

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
