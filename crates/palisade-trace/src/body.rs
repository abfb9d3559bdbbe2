//! The traced response body, as palisade-core's observing middleware makes it.

use opentelemetry::global::BoxedTracer;
use palisade_core::observe;

use crate::policy::TracePolicy;

/// The response body of a traced RPC.
///
/// It forwards every frame of `B` unchanged. While a frame is polled, the RPC's
/// OpenTelemetry context is current (so a streaming handler producing its messages, and
/// everything it calls, runs inside the span), and the span ends when the stream does —
/// after the last message and the trailers, or when the body is dropped early.
///
/// See the [crate docs](crate) for an example.
pub type ResponseBody<B, K, T = BoxedTracer> = observe::ResponseBody<B, TracePolicy<K, T>>;
