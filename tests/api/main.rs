//! The API test suite: one binary, every test through the public gRPC API of a real server on a
//! real socket, each on a fresh PostgreSQL database of its own (or, in `sqlite`, a fresh SQLite
//! file).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic: that is how they fail

mod attacks;
mod audit;
mod authz;
mod autofailover;
mod availability;
mod binary;
mod cleanup;
mod connections;
mod db_wait;
mod failover;
mod faults;
mod interop;
mod introspect;
mod issue;
mod key_rotation;
mod keys;
mod limits;
mod memory;
mod metrics;
mod panics;
mod policy;
mod privileges;
mod propagation;
mod request_ids;
mod revoke;
mod rotate;
mod schema;
mod sessions;
mod shutdown;
mod sqlite;
mod tls;

/// What the test modules share (servers, processes, faults, inspection); they import nothing
/// from each other.
mod support;
