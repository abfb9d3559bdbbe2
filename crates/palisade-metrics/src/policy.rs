//! The metrics policy: what [`Observe`](palisade_core::Observe) does for this crate at the
//! start of each RPC, and the observers that record its messages and its end.

use std::{fmt, sync::Arc};

use metrics::Counter;
use palisade_core::{
    Call, Counts, Observer, Outcome, Side,
    observe::{Policy, Watch},
};
use quanta::Instant;

use crate::{
    handles::{MethodMetrics, Table},
    naming::Naming,
};

/// The policy of [`MetricsLayer`](crate::MetricsLayer) in palisade-core's observing
/// middleware: looks the method's cached handles up once, counts `started`, reads the clock,
/// and watches the RPC (and, with go-grpc-prometheus's names, the request body where the
/// layer's type hands the inner service a [`RequestBody`](crate::RequestBody)) to its end.
///
/// Made by [`MetricsBuilder::build`](crate::MetricsBuilder::build); it appears in the
/// crate's type aliases ([`Metrics`](crate::Metrics), [`ResponseBody`](crate::ResponseBody), …).
pub struct MetricsPolicy {
    pub(crate) table: Table,
    pub(crate) side: Side,
    pub(crate) naming: Naming,
    /// Whether request bodies are observed to count their messages: the naming has message
    /// counters, and the layer hands the inner service a [`RequestBody`](crate::RequestBody).
    pub(crate) observe_requests: bool,
    /// Whether a unary or server-streaming call counts its one request message when it starts
    /// (a client whose request bodies pass unchanged, as go-grpc-prometheus's client does).
    pub(crate) count_one_request_at_start: bool,
}

impl Policy for MetricsPolicy {
    type Observer = ResponseObserver;
    type RequestObserver = RequestObserver;
    type Scope = ();

    fn side(&self) -> Side {
        self.side
    }

    fn start(&self, call: &mut Call<'_>) -> Option<Watch<ResponseObserver, RequestObserver, ()>> {
        let method = self.table.lookup(call.path());
        method.started.increment(1);
        let start = Instant::now();
        if self.count_one_request_at_start && method.sends_one_request {
            method.request_messages.increment(1);
        }
        let request = self
            .observe_requests
            .then(|| RequestObserver::new(method.request_messages.clone()));
        let watch = Watch::new(ResponseObserver::new(method, start));
        Some(match request {
            Some(request) => watch.with_request(request),
            None => watch,
        })
    }
}

impl fmt::Debug for MetricsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsPolicy")
            .field("side", &self.side)
            .field("naming", &self.naming)
            .field("known_methods", &self.table.known_len())
            .field("max_dynamic_methods", &self.table.max_dynamic())
            .finish()
    }
}

/// Counts the messages of a request body.
#[derive(Debug)]
pub struct RequestObserver {
    messages: Counter,
}

impl RequestObserver {
    pub(crate) fn new(messages: Counter) -> Self {
        Self { messages }
    }
}

impl Observer for RequestObserver {
    fn on_message(&mut self) {
        self.messages.increment(1);
    }

    fn on_end(self, _: Outcome, _: Counts) {}
}

/// Counts the messages of a response body and records the end of the RPC.
pub struct ResponseObserver {
    method: Arc<MethodMetrics>,
    start: Instant,
}

impl ResponseObserver {
    pub(crate) fn new(method: Arc<MethodMetrics>, start: Instant) -> Self {
        Self { method, start }
    }
}

impl Observer for ResponseObserver {
    fn on_message(&mut self) {
        self.method.response_messages.increment(1);
    }

    fn on_end(self, outcome: Outcome, _: Counts) {
        self.method.record_end(outcome.code(), self.start.elapsed());
    }
}

impl fmt::Debug for ResponseObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseObserver")
            .field("method", &self.method)
            .field("start", &self.start)
            .finish()
    }
}
