//! The trace service, as palisade-core's observing middleware makes it.

use opentelemetry::global::BoxedTracer;
use palisade_core::{Observe, observe::UnchangedRequest};

use crate::policy::TracePolicy;

/// Traces the gRPC calls going through an inner service; made by
/// [`TraceLayer`](crate::TraceLayer): palisade-core's [`Observe`] with this crate's
/// [`TracePolicy`]. The inner service gets the request body unchanged.
///
/// See the [crate docs](crate) for an example.
pub type TraceService<S, T = BoxedTracer> = Observe<S, TracePolicy<T>, UnchangedRequest>;
