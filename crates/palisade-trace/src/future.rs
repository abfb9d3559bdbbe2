//! The traced response future, as palisade-core's observing middleware makes it.

use opentelemetry::global::BoxedTracer;
use palisade_core::observe;

use crate::policy::TracePolicy;

/// The response future of a [`Trace`](crate::Trace) service.
///
/// While it is polled, the RPC's OpenTelemetry context is current (so the handler, the
/// layers inside and any client call they make run inside the span); its response's body
/// is a [`ResponseBody`](crate::ResponseBody) that ends the span at the end of the stream. A
/// call the layer skips passes through untouched.
pub type ResponseFuture<F, K, T = BoxedTracer> = observe::ResponseFuture<F, TracePolicy<K, T>>;
