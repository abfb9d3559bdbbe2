//! Palisade: gRPC middleware for tonic and tower — access logs, Prometheus metrics,
//! OpenTelemetry traces, JWT authentication, rate limiting, circuit breaking and retries — as small
//! tower layers that run in-process on any tonic server or client.
//!
//! This facade re-exports every layer crate behind a feature of its own (all on by default)
//! and offers [`preset`]s that stack them in the recommended order. To use one layer alone,
//! depend on its crate (`cargo add palisade-metrics`).
//!
//! | feature | crate | module |
//! |---|---|---|
//! | `logging` | `palisade-logging` | [`logging`] |
//! | `metrics` | `palisade-metrics` | [`metrics`] |
//! | `trace` | `palisade-trace` | [`trace`] |
//! | `jwt` | `palisade-jwt` | [`jwt`] |
//! | `ratelimit` | `palisade-ratelimit` | [`ratelimit`] |
//! | `ratelimit-redis` | `palisade-ratelimit` with `redis` | [`ratelimit::backend`] |
//! | `limit` | `palisade-limit` | [`limit`] |
//! | `deadline` | `palisade-deadline` | [`deadline`] |
//! | `breaker` | `palisade-breaker` | [`breaker`] |
//! | `recovery` | `palisade-recovery` | [`recovery`] |
//! | `retry` | `palisade-retry` | [`retry`] |
//! | `reload` | — | [`reload`]: stacks swapped live, configuration files watched |
//! | `config` | — | [`config`]: the server and client stacks from one TOML document |
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use palisade::prelude::*;
//! use tower::{ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A client stack: a span, a log event, metrics and a breaker around the channel, in that
//! // order; the preset builds each builder (a misconfigured one is named in the error).
//! let stack = ClientLayers::new()
//!     .trace(TraceLayer::client())
//!     .logging(LoggingLayer::client())
//!     .metrics(MetricsLayer::client())
//!     .breaker(BreakerLayer::client().name("greeter"))
//!     .build()?;
//! // Any `http` service stands in for a tonic `Channel` here: it answers every call OK.
//! let channel = service_fn(|_: Request<String>| async {
//!     let response = Response::builder()
//!         .header("content-type", "application/grpc")
//!         .header("grpc-status", "0")
//!         .body(String::new());
//!     Ok::<_, Infallible>(response.unwrap())
//! });
//! let request = Request::post("/palisade.demo.v1.Greeter/SayHello")
//!     .header("content-type", "application/grpc")
//!     .body(String::new())?;
//! let response = stack.service(channel).oneshot(request).await?;
//! assert_eq!(response.headers()["grpc-status"], "0");
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use palisade_core as core;

#[cfg(feature = "breaker")]
pub use palisade_breaker as breaker;
#[cfg(feature = "deadline")]
pub use palisade_deadline as deadline;
#[cfg(feature = "jwt")]
pub use palisade_jwt as jwt;
#[cfg(feature = "limit")]
pub use palisade_limit as limit;
#[cfg(feature = "logging")]
pub use palisade_logging as logging;
#[cfg(feature = "metrics")]
pub use palisade_metrics as metrics;
#[cfg(feature = "ratelimit")]
pub use palisade_ratelimit as ratelimit;
#[cfg(feature = "recovery")]
pub use palisade_recovery as recovery;
#[cfg(feature = "retry")]
pub use palisade_retry as retry;
#[cfg(feature = "trace")]
pub use palisade_trace as trace;

#[cfg(feature = "config")]
pub mod config;
pub mod preset;
#[cfg(feature = "reload")]
pub mod reload;

/// The README's snippets, compiled (and run where they can) as doctests, so they cannot drift
/// from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The types most programs name: core's primitives, the presets and each enabled layer, under
/// the names their crates' docs use. A name two crates share is reached by its module:
/// `palisade::jwt::Policy` and `palisade::breaker::Policy`, `palisade::ratelimit::Key` and
/// `palisade::jwt::Key`.
pub mod prelude {
    pub use crate::preset::{ClientLayers, Custom, ServerLayers};
    pub use palisade_core::{
        Code, CodeSet, Matcher, Method, MethodRegistry, PerMethod, Rejection, Side,
    };

    #[cfg(feature = "breaker")]
    pub use palisade_breaker::{Backoff, BreakerLayer};
    #[cfg(feature = "deadline")]
    pub use palisade_deadline::DeadlineLayer;
    #[cfg(feature = "jwt")]
    pub use palisade_jwt::{JwtAuthLayer, StandardClaims, client::AttachTokenLayer};
    #[cfg(feature = "limit")]
    pub use palisade_limit::LimitLayer;
    #[cfg(feature = "logging")]
    pub use palisade_logging::LoggingLayer;
    #[cfg(feature = "metrics")]
    pub use palisade_metrics::{MetricsLayer, prometheus::PrometheusExporter};
    #[cfg(feature = "ratelimit")]
    pub use palisade_ratelimit::{ClientRateLimitLayer, Limit, Quota, RateLimitLayer};
    #[cfg(feature = "recovery")]
    pub use palisade_recovery::RecoveryLayer;
    #[cfg(feature = "retry")]
    pub use palisade_retry::{HedgePolicy, RetryBudget, RetryLayer, RetryPolicy};
    #[cfg(feature = "trace")]
    pub use palisade_trace::TraceLayer;
}
