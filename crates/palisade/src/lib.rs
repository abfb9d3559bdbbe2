//! Palisade: gRPC middleware for tonic and tower — access logs, Prometheus metrics,
//! OpenTelemetry traces, JWT authentication, rate limiting and circuit breaking — as small
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
//! | `breaker` | `palisade-breaker` | [`breaker`] |
//!
//! # Example
//!
//! ```
//! use palisade::prelude::*;
//! use palisade::preset::ClientLayers;
//!
//! // A client stack: a span, metrics and a breaker around the channel, in that order.
//! let layers = ClientLayers::new()
//!     .trace(TraceLayer::client().build())
//!     .logging(LoggingLayer::client().build())
//!     .metrics(MetricsLayer::client().build())
//!     .breaker(BreakerLayer::client().name("greeter").build());
//! # let _ = layers;
//! let method = Method::parse("/palisade.demo.v1.Greeter/SayHello").unwrap();
//! assert_eq!(method.service(), "palisade.demo.v1.Greeter");
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use palisade_core as core;

#[cfg(feature = "breaker")]
pub use palisade_breaker as breaker;
#[cfg(feature = "jwt")]
pub use palisade_jwt as jwt;
#[cfg(feature = "logging")]
pub use palisade_logging as logging;
#[cfg(feature = "metrics")]
pub use palisade_metrics as metrics;
#[cfg(feature = "ratelimit")]
pub use palisade_ratelimit as ratelimit;
#[cfg(feature = "trace")]
pub use palisade_trace as trace;

pub mod preset;

/// The README's snippets, compiled (and run where they can) as doctests, so they cannot drift
/// from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The types most programs name: core's primitives and each enabled layer.
pub mod prelude {
    pub use crate::preset::{ClientLayers, ServerLayers};
    pub use palisade_core::{
        Code, CodeSet, Matcher, Method, MethodRegistry, PerMethod, Rejection, Side,
    };

    #[cfg(feature = "breaker")]
    pub use palisade_breaker::{Backoff, BreakerLayer, Policy as BreakerPolicy};
    #[cfg(feature = "jwt")]
    pub use palisade_jwt::{
        JwtAuthLayer, Policy as AuthPolicy, StandardClaims, client::AttachTokenLayer,
    };
    #[cfg(feature = "logging")]
    pub use palisade_logging::LoggingLayer;
    #[cfg(feature = "metrics")]
    pub use palisade_metrics::{MetricsLayer, prometheus::PrometheusExporter};
    #[cfg(feature = "ratelimit")]
    pub use palisade_ratelimit::{
        ClientRateLimitLayer, Key as RateLimitKey, Limit, Quota, RateLimitLayer,
    };
    #[cfg(feature = "trace")]
    pub use palisade_trace::TraceLayer;
}
