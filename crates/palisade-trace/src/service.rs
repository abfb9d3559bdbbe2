//! The trace service, as palisade-core's observing middleware makes it.

use opentelemetry::global::BoxedTracer;
use palisade_core::{Observe, observe::UnchangedRequest};

use crate::policy::TracePolicy;

/// Traces the gRPC calls going through an inner service, on side `K` (palisade-core's
/// `Server` or `Client`) with a tracer of type `T`; made by
/// [`TraceLayer`](crate::TraceLayer): palisade-core's [`Observe`] with this crate's
/// [`TracePolicy`]. The inner service gets the request body unchanged.
///
/// See the [crate docs](crate) for an example.
pub type Trace<S, K, T = BoxedTracer> = Observe<S, TracePolicy<K, T>, UnchangedRequest>;

/// The trace service's old name.
#[deprecated(since = "0.2.0", note = "renamed to `Trace`")]
pub type TraceService<S, K, T = BoxedTracer> = Trace<S, K, T>;
