//! What the test modules share, and the only place they import from: a test module never imports
//! from another test module.
//!
//! - [`app`]: the in-process server, started one way ([`TestApp::builder`]), and what a test does
//!   with it;
//! - [`store`]: looking behind the API at what it stored, on either store;
//! - [`process`]: the real binary in a child process ([`Server`], [`DataDir`]);
//! - [`calls`]: one-line calls, channels and the assertions on a refused call;
//! - [`http`]: a plain HTTP GET for the JWKS listener;
//! - [`forger`], [`proxy`], [`cluster`]: forged tokens, network faults between the server and
//!   PostgreSQL, a PostgreSQL cluster of a test's own (and its standby);
//! - [`autofailover`]: a pg_auto_failover formation (monitor, primary, synchronous standby);
//! - [`history`]: what a fault test's clients were told, for `ratchet-history`'s checker;
//! - [`load`]: a Rotate load of many chains for fault tests, and the invariants after it;
//! - [`policy`]: access-policy files on disk.
//!
//! Everything is re-exported here, so a test module's imports read `crate::support::{..}`
//! whatever file a helper lives in.

pub mod app;
pub mod autofailover;
pub mod calls;
pub mod cluster;
pub mod forger;
pub mod history;
pub mod http;
pub mod load;
pub mod policy;
pub mod process;
pub mod proxy;
/// Only methods of [`TestApp`] (and the [`store::Stored`] values they return).
pub mod store;

pub use app::*;
pub use autofailover::Formation;
pub use calls::*;
pub use cluster::PrivateCluster;
pub use forger::Forger;
pub use history::History;
pub use http::*;
pub use load::*;
pub use policy::*;
pub use process::*;
pub use proxy::Proxy;
