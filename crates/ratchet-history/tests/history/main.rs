//! The history checker's tests: one binary, hand-made histories (`good`, `bad`), the file format
//! (`format`), and histories generated from a model of ratchet (`model`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic: that is how they fail

mod bad;
mod format;
mod good;
mod model;
mod support;
