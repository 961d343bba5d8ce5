//! The crate's test suite: one binary, every test against a real key set server on a local port
//! (and, for the layer, a real tonic server and client over TCP).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic: that is how they fail

mod layer;
mod refresh;
mod support;
mod tokens;
