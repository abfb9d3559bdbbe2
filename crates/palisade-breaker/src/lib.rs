//! Circuit breaking for gRPC on tower, with [failsafe]'s policies and backoffs, on the real
//! outcome of every RPC.
//!
//! Put a [`BreakerLayer`] around a tonic `Channel` (its main use: stop calling a backend that
//! is failing) or around a server's routes (shed calls while a dependency fails). Each call's
//! outcome is read where the RPC really ends — `grpc-status` in the trailers or in a
//! trailers-only response, an error of the inner service (a transport error, a local timeout
//! below the layer), a body error — through palisade-core's observed body, so streams count
//! when they end, not at their response headers.
//!
//! - **What fails**: by default Unknown, DeadlineExceeded, Internal, Unavailable, DataLoss
//!   ([`DEFAULT_FAILURE_CODES`]), transport errors and panics; any code set, or a closure
//!   ([`BreakerBuilder::classify`]). `ResourceExhausted` is not a failure by default: a quota answer
//!   asks the caller to slow down. A caller's cancellation counts as neither — unless, on a
//!   client, the call's `grpc-timeout` had passed, which is a timeout. Optionally, a success
//!   slower than a threshold is a failure ([`BreakerBuilder::slow_call`]).
//! - **Never the backend's failure**: a rejection made by a Palisade layer in this process —
//!   a client rate limiter's `RESOURCE_EXHAUSTED`, an inner breaker's "circuit open", auth —
//!   is marked local by palisade-core ([`Outcome::rejected_by`]) and ignored, wherever the
//!   layers sit.
//! - **When it opens**: failsafe's consecutive failures, or a failure rate over a rolling
//!   window with a minimum number of calls, or both ([`Policy`]); for how long: failsafe's
//!   constant, exponential or jittered [`Backoff`], longer after each failed probe.
//! - **Open**: calls are answered at once with a trailers-only `UNAVAILABLE` "circuit open"
//!   (a tonic client sees a `Status`), without reaching the inner service.
//! - **Half-open**: at most [`BreakerBuilder::half_open_probes`] calls (default 1) go through; the
//!   others are rejected. A probe's success closes the circuit, its failure reopens it. At
//!   [`BreakerBuilder::half_open_max_wait`] (default 30 s) the circuit decides without the probes
//!   still running: one whose response started (a healthy long stream) counts as a success,
//!   a hung one as a failure — so neither holds the circuit half-open.
//! - **Permits**: every admitted call carries a [`Permit`] that gives its probe slot back on
//!   every path — success, failure, ignored outcome, cancellation, dropped response future,
//!   dropped stream, panic — so a circuit never sticks half-open.
//! - **Keys**: one circuit per layer, or per method, per endpoint (`:authority`), or per key
//!   of your own, bounded by the service's methods ([`BreakerBuilder::registry`]) or in number
//!   ([`BreakerBuilder::max_breakers`]: a hard cap on circuits and series ever made, which keys
//!   earn by frequency admission, never by coming first; the others share one circuit).
//! - **Observability**: `palisade_breaker_state{breaker}` (0 closed, 1 half-open, 2 open),
//!   `palisade_breaker_permitted_total{breaker}` and `palisade_breaker_rejected_total{breaker}`
//!   through the `metrics` facade, a `tracing` event per transition (target
//!   `palisade_breaker`), and a hook ([`OnStateChange`]).
//!
//! # On a server
//!
//! A server-side breaker protects the server's own dependencies: while the handlers behind it
//! fail (a database down, a downstream service timing out), it sheds calls at once with
//! `UNAVAILABLE` instead of letting them pile up. It must trip on the server's failures only,
//! never on what a caller did, or any caller could open it for everyone. Build it with
//! [`BreakerLayer::server`] (a `BreakerLayer<Server>`):
//!
//! - a call the caller dropped before its deadline is ignored;
//! - a call ended by the caller's deadline (tonic drops it at its `grpc-timeout`, or the
//!   handler answers `DEADLINE_EXCEEDED`) is a failure only when it ran at least
//!   [`BreakerBuilder::min_deadline_failure`] (the slow-call threshold, else 1 s): a hung
//!   dependency opens the circuit, a caller's 1 ms deadline does not;
//! - tonic's `INTERNAL` answer to a request body that does not decode is ignored
//!   ([`BreakerBuilder::ignore_request_decode_errors`]);
//! - with a [`BreakerBuilder::registry`], unknown methods are never counted and get no circuit, and
//!   every known method has its circuit from the start; without one, paths and authorities
//!   callers choose must earn a circuit by frequency, within [`BreakerBuilder::max_breakers`]
//!   (give a registry to a server untrusted callers reach: it also keeps metric labels to
//!   known methods).
//!
//! Time is tokio's clock, so `tokio::time::pause` drives open durations and windows in tests.
//! Metric handles are registered when a circuit is made — for a layer with one circuit, when
//! it is built — so install the `metrics` recorder before building the layer.
//!
//! # Example
//!
//! A client whose circuit opens after three `UNAVAILABLE` answers:
//!
//! ```
//! use std::time::Duration;
//! use palisade_breaker::{Backoff, BreakerLayer, State};
//! use palisade_demo::pb::{greeter_client::GreeterClient, HelloRequest};
//! use tonic::Code;
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main] async fn main() {
//! # let server = palisade_demo::spawn(tower::layer::util::Identity::new()).await;
//! # let channel = server.channel().await;
//! let breaker = BreakerLayer::client()
//!     .name("greeter")
//!     .consecutive_failures(3)
//!     .backoff(Backoff::constant(Duration::from_secs(5)))
//!     .build();
//! let mut client = GreeterClient::new(ServiceBuilder::new().layer(breaker.clone()).service(channel));
//!
//! let failing = HelloRequest { fail_code: Code::Unavailable as i32, ..Default::default() };
//! for _ in 0..3 {
//!     let status = client.say_hello(failing.clone()).await.unwrap_err();
//!     assert_eq!(status.message(), "demo failure: The service is currently unavailable");
//! }
//! assert_eq!(breaker.state("greeter"), Some(State::Open));
//!
//! // The next call does not reach the server.
//! let status = client.say_hello(HelloRequest::default()).await.unwrap_err();
//! assert_eq!((status.code(), status.message()), (Code::Unavailable, "circuit open"));
//! # }
//! ```
//!
//! On a server, shedding one method's calls while the other methods keep working:
//!
//! ```
//! use palisade_breaker::BreakerLayer;
//! use palisade_core::Matcher;
//!
//! let breaker = BreakerLayer::server()
//!     .per_method()
//!     .skip(Matcher::health_and_reflection())
//!     .build();
//! // tonic::transport::Server::builder().layer(breaker).add_service(...)
//! # let _ = breaker;
//! ```
//!
//! [failsafe]: https://docs.rs/failsafe
//! [`Outcome::rejected_by`]: palisade_core::Outcome::rejected_by
#![forbid(unsafe_code)]

mod admission;
mod circuit;
mod classify;
mod config;
mod hook;
mod layer;
pub mod policy;
mod registry;
mod service;

pub use admission::{BreakerAdmission, CIRCUIT_OPEN};
pub use circuit::{Permit, ProbeWatch};
pub use classify::{DEFAULT_FAILURE_CODES, DEFAULT_MIN_DEADLINE_FAILURE, Verdict};
#[allow(deprecated)]
pub use config::Builder;
pub use config::{BreakerBuilder, DEFAULT_HALF_OPEN_MAX_WAIT};
pub use hook::{OnStateChange, State, Transition};
pub use layer::BreakerLayer;
pub use policy::{Backoff, Policy};
pub use registry::{OVERFLOW_BREAKER, RequestHead};
pub use service::{Breaker, ResponseBody, ResponseFuture};
