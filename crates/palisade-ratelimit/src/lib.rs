//! Token-bucket rate limiting for tonic and tower gRPC servers and clients, on governor's GCRA.
//!
//! - [`RateLimitLayer`] ([`RateLimitLayer::server`]): every call draws one token from each [`Limit`] that
//!   applies — global, per method, per key (peer address, a metadata value, a value in the
//!   extensions such as the JWT subject, or your own function), or any combination — and a call
//!   that finds a bucket empty gets a trailers-only rejection: `RESOURCE_EXHAUSTED` (or the code
//!   you choose), a short message, `grpc-retry-pushback-ms` with the milliseconds until a token
//!   is free, and optionally `x-ratelimit-limit`, `-remaining` and `-reset`. Calls a
//!   [`skip`](RateLimitBuilder::skip) matcher selects (health checks and reflection, say) are
//!   neither limited nor counted; none is skipped by default. [Shadow mode](RateLimitBuilder::shadow) decides and
//!   counts without rejecting. The layer passes bodies' frames untouched; built with
//!   [`build_metered`](RateLimitBuilder::build_metered), its [per-message
//!   limits](Limit::per_message) charge client streams one token per received message and end
//!   a stream that runs out with the rejection.
//! - [`ClientRateLimitLayer`] ([`RateLimitLayer::client`]): a call over quota waits for its tokens, but never past its
//!   `grpc-timeout` or a maximum wait; otherwise it fails at once with the rejection, unsent.
//! - Series, through the `metrics` facade: `palisade_ratelimit_allowed_total` and
//!   `palisade_ratelimit_rejected_total`, labelled `grpc_type`, `grpc_service`, `grpc_method`
//!   (as palisade-metrics labels them) and `grpc_component` (`server` or `client`).
//! - [Backends](backend): buckets live in this process by default ([`backend::Local`]:
//!   bounded keyed state, idle keys dropped without a cleanup task, keys hashed, never stored);
//!   with the `redis` feature, `backend::Redis` keeps them in Redis — one quota shared by every
//!   instance, decided by an atomic script on the server's clock, never stalling a call (a
//!   timeout of a few milliseconds, then a local share of the quota, or rejection, until Redis
//!   answers again). Any shared store plugs in behind the same layers.
//!
//! Both layers' services are palisade-core's [`Admit`](palisade_core::admit::Admit) with this
//! crate's [admissions](admission): a backend's later decision, or a client's wait for its
//! tokens, is a wait inline in the call's future, and a rejection is marked `ratelimit` in the
//! per-RPC record's `rejected_by`, when there is one. Their response bodies are
//! [`admit::ResponseBody`](palisade_core::admit::ResponseBody), which forwards the inner body's
//! frames.
//!
//! Combined limits are all-or-nothing: a call takes a token from every limit that applies, in
//! the order they were added, or from none (a limit that refuses it gets the earlier ones'
//! tokens given back).
//!
//! The local backend's clock follows tokio's ([`TokioClock`]): under paused time, exactly
//! `burst + rate × t` calls pass over any window, which is how this crate is tested.
//!
//! # Example
//!
//! A server layer allowing two calls and then one every 100 ms, in front of a service answering
//! one unary RPC:
//!
//! ```
//! use std::{num::NonZeroU32, time::Duration};
//! use palisade_demo::frames::{unary_service, GrpcBody};
//! use palisade_ratelimit::{Limit, Quota, RateLimitLayer};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let quota = Quota::per_second(NonZeroU32::new(10).unwrap()).with_burst(NonZeroU32::new(2).unwrap());
//! let service = RateLimitLayer::server().limit(Limit::global(quota)).build().unwrap().layer(unary_service(tonic::Code::Ok));
//! let call = || http::Request::post(palisade_demo::SAY_HELLO).body(GrpcBody::default()).unwrap();
//!
//! for _ in 0..2 {
//!     let response = service.clone().oneshot(call()).await.unwrap();
//!     assert!(response.headers().get("grpc-status").is_none()); // answered by the service
//! }
//! let response = service.clone().oneshot(call()).await.unwrap();
//! assert_eq!(response.headers()["grpc-status"], "8"); // RESOURCE_EXHAUSTED, trailers-only
//! assert_eq!(response.headers()["grpc-retry-pushback-ms"], "100");
//!
//! tokio::time::advance(Duration::from_millis(100)).await;
//! let response = service.clone().oneshot(call()).await.unwrap();
//! assert!(response.headers().get("grpc-status").is_none());
//! # }
//! ```
//!
//! # On a tonic server and client
//!
//! ```no_run
//! use std::{num::NonZeroU32, time::Duration};
//! use palisade_ratelimit::{ClientRateLimitLayer, Key, Limit, Quota, RateLimitLayer};
//! use tonic::transport::{Channel, Server};
//!
//! # async fn run(routes: tonic::service::Routes) -> Result<(), Box<dyn std::error::Error>> {
//! let per_second = |n| Quota::per_second(NonZeroU32::new(n).unwrap());
//! Server::builder()
//!     .layer(
//!         RateLimitLayer::server()
//!             .limit(Limit::per_key(Key::peer_ip(), per_second(20)))
//!             .limit(Limit::global(per_second(1000)))
//!             .build().unwrap(),
//!     )
//!     .add_routes(routes)
//!     .serve("127.0.0.1:50051".parse()?)
//!     .await?;
//!
//! let channel = Channel::from_static("http://127.0.0.1:50051").connect().await?;
//! let channel = tower::ServiceBuilder::new()
//!     .layer(RateLimitLayer::client().limit(Limit::global(per_second(50))).build().unwrap())
//!     .service(channel);
//! let client = palisade_demo::pb::greeter_client::GreeterClient::new(channel);
//! # let _ = client; Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admission;
pub mod backend;
pub mod body;
mod client;
mod clock;
mod config;
mod future;
mod key;
mod layer;
mod limit;
mod mode;
mod quota;
mod series;
mod service;
mod shared;

pub use admission::{ClientRateLimitAdmission, RateLimitAdmission};
pub use body::{RequestBody, ResponseBody};
pub use client::{ClientRateLimit, ClientRateLimitLayer, ClientResponseFuture};
pub use clock::TokioClock;
pub use config::{
    ClientRateLimitBuilder, ConfigError, DEFAULT_MAX_WAIT, DEFAULT_MESSAGE, RateLimitBuilder,
};
pub use future::ResponseFuture;
pub use key::{Key, KeyExtractor, KeyValue, NoKey, RequestInfo};
pub use layer::RateLimitLayer;
pub use limit::Limit;
pub use mode::{Metered, Mode, Plain};
pub use palisade_core::{Code, Matcher, MethodRegistry, PerMethod};
pub use quota::Quota;
pub use series::{ALLOWED_TOTAL, DEFAULT_MAX_DYNAMIC_METHODS, MAX_DYNAMIC_METHODS, REJECTED_TOTAL};
pub use service::RateLimit;
pub use shared::RateLimitHeaders;

/// The `redis` crate the [`Redis`](backend::Redis) backend is built on (for its `Client` and
/// connection settings).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use ::redis;
