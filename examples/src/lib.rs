//! Palisade's demo programs: `server`, and (as the layers land) `client` and `stack`.
//!
//! The demo contract — `proto/demo.proto`, the Greeter that honours every request field, health
//! and reflection — lives in the `palisade-demo` crate, which the layers' tests share.
#![forbid(unsafe_code)]

pub use palisade_demo::{FILE_DESCRIPTOR_SET, Greeter, pb};
