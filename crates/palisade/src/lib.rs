//! Palisade: gRPC middleware for tonic and tower.
//!
//! This facade re-exports [`palisade_core`] as [`core`]; each layer joins it behind a feature
//! of its own as it lands.
//!
//! # Example
//!
//! ```
//! use palisade::core::Method;
//!
//! let method = Method::parse("/palisade.demo.v1.Greeter/SayHello").unwrap();
//! assert_eq!(method.service(), "palisade.demo.v1.Greeter");
//! ```
#![forbid(unsafe_code)]

pub use palisade_core as core;
