//! The observed bodies and their observers: messages counted as they pass, the end recorded
//! once.

use std::{fmt, sync::Arc};

use quanta::Instant;

use bytes::Bytes;
use metrics::Counter;
use palisade_core::{Counts, ObservedBody, Observer, Outcome};

use crate::handles::MethodMetrics;

/// A request body as [`Metrics`](crate::Metrics) hands it on: frames unchanged, each gRPC
/// message counted (`msg_received` on a server, `msg_sent` on a client).
pub type RequestBody<B> = ObservedBody<B, RequestObserver>;

/// A response body as [`Metrics`](crate::Metrics) returns it: frames unchanged, each gRPC
/// message counted (`msg_sent` on a server, `msg_received` on a client), `handled` and the
/// handling time recorded at the end of the stream.
pub type ResponseBody<B> = ObservedBody<B, ResponseObserver>;

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

/// What the inner service gets as its request body: see [`MetricsLayer`](crate::MetricsLayer)'s `M`.
pub trait MapRequestBody<B> {
    /// The body handed to the inner service.
    type Body;

    /// Turns the observed request body into the inner service's body.
    fn map_body(body: RequestBody<B>) -> Self::Body;
}

/// The inner service gets the observed body, [`RequestBody<B>`], unboxed (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct ObservedRequest;

impl<B> MapRequestBody<B> for ObservedRequest {
    type Body = RequestBody<B>;

    fn map_body(body: RequestBody<B>) -> Self::Body {
        body
    }
}

/// The inner service gets a `tonic::body::Body` (the observed body boxed), as
/// `tonic::transport::Channel` requires.
#[derive(Clone, Copy, Debug, Default)]
pub struct TonicBody;

impl<B> MapRequestBody<B> for TonicBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    type Body = tonic::body::Body;

    fn map_body(body: RequestBody<B>) -> Self::Body {
        tonic::body::Body::new(body)
    }
}
