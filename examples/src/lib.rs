//! Palisade's demo programs — `server`, `client` and `stack` — and the pieces they share.
//!
//! The demo contract (`proto/demo.proto`, the Greeter that honours every request field, health
//! and reflection) lives in the `palisade-demo` crate, which the layers' tests share too.
#![forbid(unsafe_code)]

pub mod client;
pub mod server;
pub mod shutdown;
pub mod telemetry;

pub use palisade_demo::{FILE_DESCRIPTOR_SET, Greeter, pb};

/// The error type of the demo programs.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
