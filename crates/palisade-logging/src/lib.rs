//! One structured `tracing` event per gRPC call, for tonic (or any tower) servers and clients.
//!
//! The layers [`LoggingLayer::server`] and [`LoggingLayer::client`] build open a `tracing`
//! span per RPC — so everything the handler logs nests under it — and write one `finished
//! call` event when the RPC ends: at the end of the response stream, with the real code from
//! the trailers (or the headers of a trailers-only response, or `Canceled` when the call is
//! dropped). Field names and levels follow go-grpc-middleware's logging interceptors; any
//! subscriber works.
//!
//! # Example
//!
//! ```
//! use http_body_util::BodyExt;
//! use palisade_core::{Code, Matcher};
//! use palisade_demo::frames::{unary_service, GrpcBody};
//! use palisade_logging::LoggingLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // One JSON line per call, e.g. {"level":"INFO","fields":{"message":"finished call",
//! // "grpc.component":"server","grpc.service":"palisade.demo.v1.Greeter","grpc.method":"SayHello",
//! // "grpc.code":"OK","grpc.time_ms":0.012,"grpc.request.messages":0,"grpc.response.messages":1},..}
//! let _guard = tracing::subscriber::set_default(tracing_subscriber::fmt().json().finish());
//!
//! let service = ServiceBuilder::new()
//!     .layer(LoggingLayer::server().skip(Matcher::health_and_reflection()).build())
//!     .service(unary_service(Code::Ok));
//! let request = http::Request::post("/palisade.demo.v1.Greeter/SayHello")
//!     .header("content-type", "application/grpc")
//!     .body(GrpcBody::default())
//!     .unwrap();
//! let response = service.oneshot(request).await.unwrap();
//! // The call is over, and logged, when its body reaches the trailers.
//! let body = response.into_body().collect().await.unwrap();
//! assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
//! # }
//! ```
//!
//! On a tonic server and client:
//!
//! ```no_run
//! use palisade_core::{Matcher, MethodRegistry};
//! use palisade_demo::{pb::greeter_client::GreeterClient, Greeter, FILE_DESCRIPTOR_SET};
//! use palisade_logging::LoggingLayer;
//! use tonic::transport::{Channel, Server};
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let logging = LoggingLayer::server()
//!     .skip(Matcher::health_and_reflection())
//!     .registry(MethodRegistry::from_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)?)
//!     .allow_metadata(["x-request-id"])
//!     .build();
//! let server = Server::builder()
//!     .layer(logging)
//!     .add_service(Greeter::new().into_service())
//!     .serve("127.0.0.1:50051".parse()?);
//! # drop(server);
//!
//! let channel = Channel::from_static("http://127.0.0.1:50051").connect_lazy();
//! let channel = ServiceBuilder::new().layer(LoggingLayer::client().build()).service(channel);
//! let client = GreeterClient::new(channel);
//! # drop(client); Ok(()) }
//! ```
//!
//! # Fields
//!
//! The `finished call` event (and, with [`LoggingBuilder::log_start`], a `started call` event
//! with the fields known at the start), target `palisade_logging`:
//!
//! | field | value |
//! |---|---|
//! | `grpc.component` | `server` or `client` |
//! | `grpc.service`, `grpc.method` | `package.Service`, `Method` |
//! | `grpc.method_type` | `unary`, `client_stream`, `server_stream`, `bidi_stream` — with [`LoggingBuilder::registry`] |
//! | `grpc.code` | Go's name of the code: `OK`, `Canceled`, `InvalidArgument`, … |
//! | `grpc.message` | the status message of a non-OK call, at most [`max_message_len`](LoggingBuilder::max_message_len) bytes |
//! | `grpc.time_ms` | milliseconds from the call to the end of the response stream (µs precision) |
//! | `peer.address` | server: the remote socket address; client: the request URI's authority, when it has one |
//! | `grpc.request.deadline` | RFC 3339 time the caller's `grpc-timeout` ends, when it sent one |
//! | `grpc.request.messages` | request messages received (server only) |
//! | `grpc.response.messages` | response messages sent (server) or received (client) |
//! | `grpc.request.metadata` | allow-listed request metadata, with [`LoggingBuilder::allow_metadata`] |
//! | `trace_id`, `span_id` | the active OpenTelemetry span when the call started (feature `opentelemetry`) |
//! | `enduser.id` | the caller's subject as a layer inside verified it (jwt writes it into the per-RPC [`Rpc`](palisade_core::Rpc) record), at most [`max_message_len`](LoggingBuilder::max_message_len) bytes |
//! | `palisade.rejected_by` | the Palisade layer that answered the call itself (`jwt`, `ratelimit`, `breaker`, …): the record's, else the response's [`LocalRejection`](palisade_core::rejection::LocalRejection) mark |
//! | `grpc.attempts` | client, end line: how many attempts a retry layer inside (palisade-retry) made of the call, when it made more than one |
//!
//! The span is named `grpc` and carries `grpc.service` and `grpc.method`; it is opened at
//! `INFO` on a server (the handler's events nest under it) and at `DEBUG` on a client, the level
//! of its `OK` event ([`LoggingBuilder::span_level`] changes it).
//! The level of each event follows the code ([`default_server_level`],
//! [`default_client_level`], or [`LoggingBuilder::levels`]).
//!
//! Requests that are not gRPC (no `application/grpc` content type, or a path that is not
//! `/package.Service/Method`) pass through untouched and unlogged. When the subscriber
//! enables nothing this layer could write, calls pass through without reading the clock.
//!
//! # Secrets
//!
//! Metadata is logged only when allow-listed, and `authorization`, `proxy-authorization`,
//! `cookie`, `set-cookie` and keys given to [`LoggingBuilder::secret_metadata`] never are.
//!
//! # Features
//!
//! - `opentelemetry` (default): log `trace_id` and `span_id` from
//!   `opentelemetry::Context::current()` (which `palisade-trace` and `tracing-opentelemetry`
//!   both set while an RPC's span is active).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod config;
mod fields;
mod future;
mod layer;
mod level;
mod line;
mod methods;
mod policy;
mod rpc;
mod service;
pub mod writer;

pub use body::{RequestBody, ResponseBody};
pub use fields::JsonFields;
pub use future::ResponseFuture;
#[allow(deprecated)]
pub use layer::{ClientSide, ServerSide};
pub use layer::{LoggingBuilder, LoggingLayer};
pub use level::{default_client_level, default_server_level};
pub use policy::{InSpan, LoggedRequest, LoggingPolicy};
pub use rpc::{Finish, RequestMessages};
pub use service::Logging;

/// The `tracing` target of this crate's spans and events, for filters such as
/// `RUST_LOG=palisade_logging=warn`.
pub const TARGET: &str = "palisade_logging";
