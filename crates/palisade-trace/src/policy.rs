//! The trace policy: what [`Observe`](palisade_core::Observe) does for this crate at the start
//! of each RPC, the context it keeps current and the observer that ends the span.

use std::{fmt, sync::Arc};

use opentelemetry::{Context, ContextGuard, trace::Tracer};
use palisade_core::{
    Call, Side,
    observe::{Policy, Scope, Watch},
};

use crate::{
    config::{Config, TracerSlot},
    span::{self, SpanEnd},
};

/// The policy of [`TraceLayer`](crate::TraceLayer) in palisade-core's observing middleware:
/// starts the RPC's span (extracting the caller's context on a server, injecting the span's
/// on a client), keeps its context current while the RPC is polled ([`Attached`]) and ends
/// the span with the RPC's code ([`SpanEnd`]).
///
/// Made by the layer; it appears in the crate's type aliases
/// ([`TraceService`](crate::TraceService), [`ResponseBody`](crate::ResponseBody), …).
pub struct TracePolicy<T> {
    pub(crate) config: Arc<Config>,
    pub(crate) tracer: Arc<TracerSlot<T>>,
}

impl<T> Policy for TracePolicy<T>
where
    T: Tracer,
    T::Span: Send + Sync + 'static,
{
    type Observer = SpanEnd;
    type RequestObserver = ();
    type Scope = Attached;

    fn side(&self) -> Side {
        self.config.side
    }

    fn start(&self, call: &mut Call<'_>) -> Option<Watch<SpanEnd, (), Attached>> {
        let config = &*self.config;
        let started = span::start(config, self.tracer.get(), call.parts());
        if config.side == Side::Client {
            config
                .propagation
                .inject(&started.cx, &mut call.parts_mut().headers);
        }
        // The record is read at the end for its facts (`enduser.id`, `palisade.rejected_by`),
        // by a recording span only: an unsampled RPC makes none (so not `READS_FACTS`, which
        // would make one for every watched RPC).
        let record = started.recording.then(|| call.record_or_insert().clone());
        let observer = SpanEnd::new(&started, config.side, record);
        Some(Watch::new(observer).with_scope(Attached(started.cx)))
    }
}

impl<T> fmt::Debug for TracePolicy<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracePolicy")
            .field("side", &self.config.side)
            .field("tracer", &self.tracer)
            .finish_non_exhaustive()
    }
}

/// The RPC's OpenTelemetry context, attached (made current) around the inner call, every
/// poll of the response future and of the response body until its end, so the handler, the
/// layers inside and every client call they make run inside the span.
pub struct Attached(pub(crate) Context);

impl Scope for Attached {
    type Guard<'a> = ContextGuard;

    fn enter(&self) -> ContextGuard {
        self.0.clone().attach()
    }
}

impl fmt::Debug for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Attached").field(&self.0).finish()
    }
}
