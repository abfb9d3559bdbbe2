//! The trace policy: what [`Observe`](palisade_core::Observe) does for this crate at the start
//! of each RPC, the context it keeps current and the observer that ends the span.

use std::{fmt, marker::PhantomData, sync::Arc};

use opentelemetry::{Context, ContextGuard, trace::Tracer};
use palisade_core::{
    Call, Side,
    observe::{Policy, Scope, Watch},
    side::OnSide,
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
/// ([`Trace`](crate::Trace), [`ResponseBody`](crate::ResponseBody), …). `K` is the side,
/// `T` the tracer's type.
pub struct TracePolicy<K, T> {
    config: Arc<Config>,
    tracer: Arc<TracerSlot<T>>,
    _side: PhantomData<fn() -> K>,
}

impl<K, T> TracePolicy<K, T> {
    pub(crate) fn new(config: Arc<Config>, tracer: Arc<TracerSlot<T>>) -> Self {
        Self {
            config,
            tracer,
            _side: PhantomData,
        }
    }
}

impl<K, T> Policy for TracePolicy<K, T>
where
    K: OnSide,
    T: Tracer,
    T::Span: Send + Sync + 'static,
{
    type Observer = SpanEnd;
    type RequestObserver = ();
    type Scope = Attached;

    fn side(&self) -> Side {
        K::SIDE
    }

    fn start(&self, call: &mut Call<'_>) -> Option<Watch<SpanEnd, (), Attached>> {
        let config = &*self.config;
        let started = span::start(config, self.tracer.get(), call.parts());
        if K::SIDE == Side::Client {
            config
                .propagation
                .inject(&started.cx, &mut call.parts_mut().headers);
        }
        // The record is read at the end for its facts (`enduser.id`, `palisade.rejected_by`),
        // by a recording span only: an unsampled RPC makes none (so not `READS_FACTS`, which
        // would make one for every watched RPC).
        let record = started.recording.then(|| call.record_or_insert().clone());
        let observer = SpanEnd::new(&started, K::SIDE, record);
        Some(Watch::new(observer).with_scope(Attached(started.cx)))
    }
}

impl<K, T> fmt::Debug for TracePolicy<K, T> {
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
