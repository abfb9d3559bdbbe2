//! OpenTelemetry context propagation and RPC spans for tonic and tower gRPC servers and
//! clients.
//!
//! The layer [`TraceLayer::server`] builds extracts the caller's context from the request
//! metadata, starts a SERVER span named `package.Service/Method` and keeps it current while the
//! handler runs — in its future and in every poll of a streaming response — so handler code,
//! the client calls it makes and `tracing` events all see it. The one [`TraceLayer::client`]
//! builds starts a CLIENT span, a child of the current context, and injects it into the
//! outgoing metadata. Both end the span at the end of the stream, after the last message and
//! the trailers, with the gRPC code.
//!
//! Spans follow OpenTelemetry's RPC conventions ([`attribute`]): `rpc.system` = `grpc`,
//! `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, `server.address` / `server.port`, and
//! on servers `network.peer.address` / `network.peer.port`. A server span is an error only for
//! Unknown, DeadlineExceeded, Unimplemented, Internal, Unavailable and DataLoss; a client span
//! for any code but OK.
//!
//! Span names are bounded by the [method registry](TraceBuilder::registry) when the layer has
//! one: methods it does not have share the name `grpc` and `rpc.service` / `rpc.method` =
//! `_OTHER`. Without one, at most [`MAX_SPAN_NAMES`] methods name spans, earned by frequency on
//! a server (random paths name none; a method's first few spans are `grpc`) and at first sight
//! on a client — give servers the registry.
//!
//! Incoming context that cannot be read — a malformed, truncated, all-zero or unknown-version
//! `traceparent`, a duplicated header, metadata that is not ASCII — is ignored: the call starts
//! a new root trace, with no error.
//!
//! # Example
//!
//! A traced server and a traced client, exporting to an in-memory exporter, with W3C trace
//! context and baggage ([`W3cPropagator`]: what a `TextMapCompositePropagator` of the SDK's
//! `TraceContextPropagator` and `BaggagePropagator` propagates, read and written by hand —
//! any other propagator works too, through the SDK):
//!
//! ```
//! use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
//! use palisade_core::{Matcher, MethodRegistry};
//! use palisade_demo::{pb::{greeter_client::GreeterClient, HelloRequest}, Greeter};
//! use palisade_trace::{TraceLayer, W3cPropagator};
//!
//! # #[tokio::main] async fn main() {
//! let exporter = InMemorySpanExporter::default();
//! let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
//!
//! // Server: `tonic::transport::Server::builder().layer(server_layer)`. The method registry
//! // names spans after the service's own methods, and no caller-chosen path ever names one.
//! let registry = MethodRegistry::from_encoded_file_descriptor_set(palisade_demo::FILE_DESCRIPTOR_SET)
//!     .unwrap();
//! let server_layer = TraceLayer::server()
//!     .tracer_provider(&provider)
//!     .propagator(W3cPropagator::new())
//!     .registry(registry)
//!     .skip(Matcher::health_and_reflection())
//!     .build();
//! let greeter = Greeter::new().with_trace_id(palisade_trace::current_trace_id);
//! let server = palisade_demo::spawn_with(greeter, server_layer).await;
//!
//! // Client: any tonic client over the layered channel.
//! let client_layer = TraceLayer::client()
//!     .tracer_provider(&provider)
//!     .propagator(W3cPropagator::new())
//!     .server_address("127.0.0.1", server.addr.port())
//!     .build();
//! let channel = tower::ServiceBuilder::new().layer(client_layer).service(server.channel().await);
//! let reply = GreeterClient::new(channel)
//!     .say_hello(HelloRequest { name: "Ada".into(), ..Default::default() })
//!     .await
//!     .unwrap()
//!     .into_inner();
//!
//! let spans = exporter.get_finished_spans().unwrap();
//! assert_eq!(spans.len(), 2, "one SERVER and one CLIENT span");
//! assert!(spans.iter().all(|s| s.name == "palisade.demo.v1.Greeter/SayHello"));
//! assert!(spans.iter().all(|s| s.span_context.trace_id().to_string() == reply.trace_id));
//! # }
//! ```
//!
//! # Exporting with OTLP
//!
//! A real service installs an SDK provider once, as the global one, with W3C trace context
//! and baggage; the layers built with [`TraceLayer::server`] and [`TraceLayer::client`] then
//! use it. (A layer reads the global propagator through the generic `TextMapPropagator`
//! calls; given [`W3cPropagator`] itself, with [`TraceBuilder::propagator`], it reads and writes
//! the metadata directly, the cheapest way.) With `opentelemetry-otlp` (features `grpc-tonic`
//! and `trace`), exporting over gRPC only when an endpoint is given:
//!
//! ```no_run
//! use opentelemetry::global;
//! use opentelemetry_otlp::{SpanExporter, WithExportConfig};
//! use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
//! use palisade_trace::W3cPropagator;
//!
//! /// Call inside the Tokio runtime (the OTLP exporter's tonic channel lives there); call
//! /// `shutdown()` on the provider before exiting, to flush the last batch.
//! fn install_tracing(
//!     service: &'static str,
//!     otlp_endpoint: Option<&str>, // e.g. "http://localhost:4317"
//! ) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
//!     let mut builder = SdkTracerProvider::builder()
//!         .with_resource(Resource::builder().with_service_name(service).build());
//!     if let Some(endpoint) = otlp_endpoint {
//!         let exporter = SpanExporter::builder()
//!             .with_tonic()
//!             .with_endpoint(endpoint)
//!             .build()?;
//!         builder = builder.with_batch_exporter(exporter);
//!     }
//!     let provider = builder.build();
//!     global::set_tracer_provider(provider.clone());
//!     // W3C trace context and baggage, as the SDK's two propagators composed.
//!     global::set_text_map_propagator(W3cPropagator::new());
//!     Ok(provider)
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let provider = install_tracing("palisade-demo-server", Some("http://localhost:4317"))?;
//!     // ... serve with `TraceLayer::server()` ...
//!     provider.shutdown()?;
//!     Ok(())
//! }
//! ```
//!
//! # With `tracing`
//!
//! To see `tracing` spans and events inside handlers in the same traces, install
//! `tracing-opentelemetry`'s layer with a tracer of the same provider:
//!
//! ```
//! use opentelemetry::trace::TracerProvider as _;
//! use opentelemetry_sdk::trace::SdkTracerProvider;
//! use tracing_subscriber::prelude::*;
//!
//! let provider = SdkTracerProvider::builder().build();
//! let subscriber = tracing_subscriber::registry()
//!     .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("my-service")));
//! # let _ = subscriber;
//! // tracing::subscriber::set_global_default(subscriber).unwrap();
//! ```
//!
//! A `tracing` span opened in a handler (`#[tracing::instrument]`, `info_span!`) then becomes a
//! child of the RPC's span — `tracing-opentelemetry` parents spans that have no `tracing`
//! parent on OpenTelemetry's current context, which this layer sets — and the events inside it
//! are recorded on it, under the same trace id. To read the ids from code (a log line, a
//! reply), use [`current_trace_id`] or `opentelemetry::Context::current()`.
#![forbid(unsafe_code)]

mod body;
mod config;
mod future;
mod layer;
mod names;
mod policy;
mod service;
mod span;
mod w3c;

pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use layer::{TraceBuilder, TraceLayer};
pub use policy::{Attached, TracePolicy};
pub use service::Trace;
#[allow(deprecated)]
pub use service::TraceService;
pub use span::{SpanEnd, attribute};
pub use w3c::W3cPropagator;

/// Without a [registry](TraceBuilder::registry), at most this many methods name spans after themselves;
/// every other path's span is named `grpc`, with `rpc.service` and `rpc.method` `_OTHER`.
///
/// On a server a method earns its name by being called repeatedly (palisade-core's
/// [`slots`](palisade_core::slots)), so a flood of random paths names no span, and its first few
/// calls are named `grpc`: give a server's layer the method registry. On a client, whose paths
/// are its own, a method names its spans from its first call.
pub const MAX_SPAN_NAMES: usize = 100;

use opentelemetry::{Context, trace::TraceContextExt};

/// The trace id of the current OpenTelemetry context as 32 lowercase hex digits, or an empty
/// string when no valid span is current.
///
/// Inside a handler behind [`TraceLayer::server`], that is the RPC's trace id.
///
/// ```
/// assert_eq!(palisade_trace::current_trace_id(), "");
/// ```
pub fn current_trace_id() -> String {
    Context::map_current(|cx| {
        let span = cx.span();
        let span_context = span.span_context();
        if span_context.is_valid() {
            span_context.trace_id().to_string()
        } else {
            String::new()
        }
    })
}

/// The span id of the current OpenTelemetry context as 16 lowercase hex digits, or an empty
/// string when no valid span is current.
///
/// ```
/// assert_eq!(palisade_trace::current_span_id(), "");
/// ```
pub fn current_span_id() -> String {
    Context::map_current(|cx| {
        let span = cx.span();
        let span_context = span.span_context();
        if span_context.is_valid() {
            span_context.span_id().to_string()
        } else {
            String::new()
        }
    })
}
