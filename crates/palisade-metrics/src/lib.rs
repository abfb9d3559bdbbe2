//! go-grpc-prometheus-compatible metrics for tonic and tower gRPC servers and clients,
//! recorded through the [`metrics`] facade so you pick the exporter.
//!
//! [`MetricsLayer`] records, per RPC, exactly the series go-grpc-prometheus records — so the
//! Grafana dashboards and alerts written for it keep working:
//!
//! | series | when |
//! |---|---|
//! | `grpc_server_started_total` | the request arrives |
//! | `grpc_server_handled_total` (+ `grpc_code`) | the response stream ends, with the RPC's real code |
//! | `grpc_server_msg_received_total` | each request message (streams included) |
//! | `grpc_server_msg_sent_total` | each response message (streams included) |
//! | `grpc_server_handling_seconds` | histogram, from the request to the end of the response stream |
//!
//! and the same with `grpc_client_` on a client. Labels: `grpc_type` (`unary`,
//! `client_stream`, `server_stream`, `bidi_stream`, from a [`MethodRegistry`]; `unknown`
//! without one), `grpc_service`, `grpc_method`, and `grpc_code` in Go's names (`OK`,
//! `Canceled`, `InvalidArgument`, …). The code is read where it really is — trailers,
//! trailers-only headers, an HTTP status, an error, a dropped call (`Canceled`) — by
//! palisade-core's observed body.
//!
//! Label values are bounded: methods of the registry (or of an allow-list) get their own
//! series, created with zero values at build time; others earn theirs, up to a cap, by being
//! called repeatedly (one-off paths never do), and every other path is recorded under
//! `grpc_service="unknown"`, `grpc_method="unknown"`. On a server exposed to untrusted callers,
//! give the layer the registry: then no path a caller makes up becomes a label value.
//! Per-method handles are cached, so recording an RPC costs one hash lookup of its path and a
//! few atomic additions.
//!
//! A client layer (`MetricsLayer<Client>`) leaves the request body as it is, so it fits a
//! tonic `Channel`; it counts the one request message of a unary or server-streaming call
//! (`grpc_client_msg_sent_total`) when the call starts, as go-grpc-prometheus's client does,
//! for methods whose type the registry gives. To count every request message of client- and
//! bidi-streaming calls too, opt in with
//! [`count_request_messages`](MetricsBuilder::count_request_messages): its layer wraps the
//! request body, so it does not fit a `Channel` as it comes.
//!
//! Options: `grpc_code` on the histogram, a name prefix, constant labels, skipping methods, and
//! OpenTelemetry's RPC names ([`Naming::OpenTelemetry`]). Histogram buckets belong to the
//! exporter: the [`prometheus`] module (feature `prometheus`, on by default) installs
//! `metrics-exporter-prometheus` with Prometheus's default buckets for the handling time and
//! serves `GET /metrics`.
//!
//! # Example
//!
//! A server layer over a service answering one unary RPC, rendered by a Prometheus recorder:
//!
//! ```
//! use std::sync::Arc;
//! use http_body_util::BodyExt;
//! use palisade_core::MethodRegistry;
//! use palisade_demo::frames::{message, unary_service, GrpcBody};
//! use palisade_metrics::{prometheus::PrometheusExporter, MetricsLayer};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // A recorder of our own (`PrometheusExporter::new().serve(addr)` installs a global one).
//! let (recorder, handle) = PrometheusExporter::new().build().unwrap();
//! let registry =
//!     MethodRegistry::from_encoded_file_descriptor_set(palisade_demo::FILE_DESCRIPTOR_SET).unwrap();
//! let layer = MetricsLayer::server()
//!     .registry(registry)
//!     .recorder(Arc::new(recorder))
//!     .build();
//!
//! let service = layer.layer(unary_service(tonic::Code::Ok));
//! let request = http::Request::post(palisade_demo::SAY_HELLO)
//!     .body(GrpcBody::new([message(b"")], None))
//!     .unwrap();
//! let response = service.oneshot(request).await.unwrap();
//! // The RPC ends with its response stream: the trailers carry the code.
//! response.into_body().collect().await.unwrap();
//!
//! let text = handle.render();
//! let labels = r#"grpc_type="unary",grpc_service="palisade.demo.v1.Greeter",grpc_method="SayHello""#;
//! assert!(text.contains(&format!("grpc_server_started_total{{{labels}}} 1")));
//! assert!(text.contains(&format!("grpc_server_handled_total{{{labels},grpc_code=\"OK\"}} 1")));
//! assert!(text.contains(&format!("grpc_server_msg_sent_total{{{labels}}} 1")));
//! assert!(text.contains(&format!("grpc_server_handling_seconds_count{{{labels}}} 1")));
//! // Zero-valued series exist for every known method and code.
//! assert!(text.contains(r#"grpc_method="SayHelloStream",grpc_code="Unavailable"} 0"#));
//! # }
//! ```
//!
//! # On a tonic server and client
//!
//! ```no_run
//! use palisade_core::MethodRegistry;
//! use palisade_metrics::{prometheus::PrometheusExporter, MetricsLayer};
//! use tonic::transport::{Channel, Server};
//!
//! # async fn run(routes: tonic::service::Routes) -> Result<(), Box<dyn std::error::Error>> {
//! // First the recorder (the layers register their handles with it), serving /metrics.
//! let _metrics = PrometheusExporter::new().serve("127.0.0.1:9464".parse()?).await?;
//!
//! let registry = MethodRegistry::from_encoded_file_descriptor_set(palisade_demo::FILE_DESCRIPTOR_SET)?;
//! Server::builder()
//!     .layer(MetricsLayer::server().registry(registry.clone()).build())
//!     .add_routes(routes)
//!     .serve("127.0.0.1:50051".parse()?)
//!     .await?;
//!
//! // A client: the layer leaves the request body as it is, so it fits a `Channel`.
//! let channel = Channel::from_static("http://127.0.0.1:50051").connect().await?;
//! let channel = tower::ServiceBuilder::new()
//!     .layer(MetricsLayer::client().registry(registry).build())
//!     .service(channel);
//! let mut client = palisade_demo::pb::greeter_client::GreeterClient::new(channel);
//! # let _ = &mut client; Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
mod config;
mod handles;
mod layer;
mod naming;
mod policy;
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub mod prometheus;

pub use body::{RequestBody, ResponseBody};
pub use config::{DEFAULT_MAX_DYNAMIC_METHODS, MetricsBuilder};
pub use layer::MetricsLayer;
pub use naming::Naming;
pub use palisade_core::{Matcher, MethodRegistry, MethodType, Side};
pub use policy::MetricsPolicy;

/// Records metrics for every RPC through the inner service; made by a [`MetricsLayer<K, R>`]
/// of side `K` (whose `R` says what the inner service gets as its request body, see
/// [`body`]).
///
/// palisade-core's observing service ([`Observe`](palisade_core::Observe)) with this crate's
/// [`MetricsPolicy`]: `get_ref`, `get_mut` and `into_inner` reach the inner service.
pub type Metrics<S, K, R = body::SideDefault> =
    palisade_core::Observe<S, MetricsPolicy, body::ForSide<K, R>>;

pub mod future {
    //! The response future.

    /// The response future of [`Metrics`](crate::Metrics): the inner future, observed until
    /// the end of the response stream (or passed through for a skipped RPC).
    pub type ResponseFuture<F> = palisade_core::observe::ResponseFuture<F, crate::MetricsPolicy>;
}
