//! Palisade's demo contract: the generated `palisade.demo.v1` code, the reference [`Greeter`]
//! that honours every request field, and [`spawn`], a real tonic server on `127.0.0.1:0`
//! (Greeter, `grpc.health.v1.Health` and server reflection) behind any tower layer — what the
//! examples serve and what every layer's tests call over the wire.
//!
//! # Example
//!
//! ```
//! use palisade_demo::{pb::HelloRequest, spawn};
//! use tower::layer::util::Identity;
//!
//! # #[tokio::main] async fn main() {
//! let server = spawn(Identity::new()).await;
//! let mut client = server.client().await;
//! let reply = client
//!     .say_hello(HelloRequest { name: "Ada".into(), ..Default::default() })
//!     .await
//!     .unwrap();
//! assert_eq!(reply.get_ref().message, "Hello, Ada!");
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod capture;
pub mod frames;
mod greeter;
pub mod raw;
mod server;

pub use greeter::{Greeter, Upstream};
pub use server::{TestServer, routes, spawn, spawn_with};

/// The generated `palisade.demo.v1` messages, client and server.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("palisade.demo.v1");
}

/// The encoded `FileDescriptorSet` of `demo.proto`, for reflection and method registries.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/demo_descriptor.bin"));

/// `/palisade.demo.v1.Greeter/SayHello`.
pub const SAY_HELLO: &str = "/palisade.demo.v1.Greeter/SayHello";
/// `/palisade.demo.v1.Greeter/SayHelloStream`.
pub const SAY_HELLO_STREAM: &str = "/palisade.demo.v1.Greeter/SayHelloStream";
