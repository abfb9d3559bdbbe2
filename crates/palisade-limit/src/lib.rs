//! A fixed in-flight (concurrency) limit for gRPC on tower: load shedding, as Envoy's
//! circuit-breaker `max_requests` and Resilience4j's Bulkhead do it.
//!
//! A [`LimitLayer`] lets at most *N* calls through at once. A call under the limit holds a
//! [`Permit`] from its admission until its response stream ends — trailers, an error, a drop
//! of the response future or body, the caller's cancellation, a panic — and gives it back
//! exactly once, on every path. A call over the limit is answered at once, without reaching
//! the inner service, with a trailers-only `RESOURCE_EXHAUSTED` (configurable)
//! `too many requests in flight` carrying `grpc-retry-pushback-ms` ([`DEFAULT_PUSHBACK`],
//! configurable), marked as a local rejection by `"limit"`
//! ([`Outcome::rejected_by`](palisade_core::Outcome::rejected_by)), so palisade-logging writes
//! `palisade.rejected_by=limit` and a breaker never counts it as a failure.
//!
//! - **Scope**: one limit for the whole service ([`LimitBuilder::max_in_flight`]), one per
//!   method ([`LimitBuilder::per_method`], palisade-core's [`PerMethod`](palisade_core::PerMethod)),
//!   each method's count in bounded slots ([`LimitBuilder::registry`]), or one per key
//!   ([`LimitBuilder::per_key`]: a metadata value, the peer IP, the verified subject), at most
//!   [`LimitBuilder::max_keys`] keys at once with an overflow count, idle keys dropped, keys
//!   never in labels.
//! - **Queue** (optional, [`LimitBuilder::queue`]): calls over the limit wait in a bounded
//!   FIFO queue, never past their own deadline (`grpc-timeout`) nor the max wait; a waiter
//!   whose caller goes away leaves its place.
//! - **Series**: the gauges `palisade_inflight{limiter}` and
//!   `palisade_concurrency_limit{limiter}`, the counter
//!   `palisade_concurrency_rejected_total{limiter}`, through the `metrics` facade or a given
//!   recorder ([`LimitBuilder::recorder`]); `limiter` is [`LimitBuilder::name`].
//! - **Where**: on a server after jwt and ratelimit, before the breaker (`… → jwt → ratelimit
//!   → limit → breaker → …`); on a client after the breaker, before the rate limiter's wait.
//!
//! It is palisade-core's admission middleware ([`palisade_core::admit`]) with
//! [`LimitAdmission`]. Only the fixed limit is built; an adaptive one (found from latency) is
//! planned as a second kind of count behind the same layer.
//!
//! # Example
//!
//! A limit of one call: while one is in flight, the next is refused at once; when it ends,
//! its permit is back.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use palisade_core::LocalRejection;
//! use palisade_limit::LimitLayer;
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let limit = LimitLayer::server().name("greeter").max_in_flight(1).build().unwrap();
//! let mut service = limit.layer(service_fn(|_: Request<Full<Bytes>>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hi"))))
//! }));
//! let request = || Request::post("/demo.Greeter/SayHello").body(Full::default()).unwrap();
//!
//! // Admitted at `call`: the permit is held until the response ends.
//! let first = service.ready().await.unwrap().call(request());
//! assert_eq!(limit.in_flight(), 1);
//!
//! let refused = service.ready().await.unwrap().call(request()).await.unwrap();
//! assert_eq!(refused.headers()["grpc-status"], "8");
//! assert_eq!(refused.headers()["grpc-message"], "too many requests in flight");
//! assert_eq!(refused.headers()["grpc-retry-pushback-ms"], "50");
//! assert_eq!(LocalRejection::of(&refused).unwrap().layer(), "limit");
//!
//! drop(first); // the caller went away: the permit goes back
//! assert_eq!(limit.in_flight(), 0);
//! let served = service.oneshot(request()).await.unwrap();
//! assert!(served.headers().get("grpc-status").is_none());
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod adaptive;
mod admission;
mod config;
mod gate;
mod key;
mod layer;
mod series;
mod service;

pub use admission::{LimitAdmission, OVERFLOW};
pub use config::{
    ConfigError, DEFAULT_MAX_METHODS, DEFAULT_MESSAGE, DEFAULT_PUSHBACK, LimitBuilder,
    MAX_QUEUE_LEN,
};
pub use gate::{Permit, QueueWait};
pub use key::{DEFAULT_MAX_KEYS, Key, MAX_KEY_LEN};
pub use layer::LimitLayer;
pub use series::{CONCURRENCY_LIMIT, IN_FLIGHT, REJECTED_TOTAL};
pub use service::{ConcurrencyLimit, ResponseBody, ResponseFuture};
