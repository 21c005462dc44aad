//! Shared code for the example binaries `flowctl` and `flowcore-server`.
#![forbid(unsafe_code)]

pub mod server;
pub mod transcript;
