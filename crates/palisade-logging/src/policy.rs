//! The logging policy: what [`Observe`](palisade_core::Observe) does for this crate at the
//! start of each RPC, the span it keeps current and the observers that write the RPC's end.

use std::{fmt, marker::PhantomData, sync::Arc};

use palisade_core::{
    Call, Side,
    observe::{MapRequestBody, ObservedRequest, Policy, Scope, UnchangedRequest, Watch},
    side::{Client, Server},
};
use tracing::{Span, span::Entered};

use crate::{
    body::RequestBody,
    config::Config,
    rpc::{Finish, RequestMessages},
};

/// The policy of [`LoggingLayer`](crate::LoggingLayer) in palisade-core's observing
/// middleware: reads what the events need when a gRPC call starts (and writes the start event
/// when asked), opens the RPC's `grpc` span and keeps it current while the RPC is polled
/// ([`InSpan`]), and writes the finish event beside that span when the RPC ends
/// ([`Finish`]); on a server, it counts the request's messages too
/// ([`RequestMessages`]).
///
/// Made by the layer; it appears in the crate's type aliases ([`Logging`](crate::Logging),
/// [`ResponseBody`](crate::ResponseBody), …).
pub struct LoggingPolicy<K> {
    config: Arc<Config>,
    _side: PhantomData<fn() -> K>,
}

impl<K> LoggingPolicy<K> {
    pub(crate) fn new(config: Arc<Config>) -> Self {
        Self {
            config,
            _side: PhantomData,
        }
    }
}

impl Policy for LoggingPolicy<Server> {
    type Observer = Finish;
    type RequestObserver = RequestMessages;
    type Scope = InSpan;

    const READS_FACTS: bool = true;

    fn side(&self) -> Side {
        Side::Server
    }

    fn start(&self, call: &mut Call<'_>) -> Option<Watch<Finish, RequestMessages, InSpan>> {
        let (finish, span) = Finish::begin(&self.config, call)?;
        let requests = finish.request_messages();
        Some(
            Watch::new(finish)
                .with_request(requests)
                .with_scope(InSpan(span)),
        )
    }
}

impl Policy for LoggingPolicy<Client> {
    type Observer = Finish;
    type RequestObserver = ();
    type Scope = InSpan;

    const READS_FACTS: bool = true;

    fn side(&self) -> Side {
        Side::Client
    }

    fn start(&self, call: &mut Call<'_>) -> Option<Watch<Finish, (), InSpan>> {
        let (finish, span) = Finish::begin(&self.config, call)?;
        Some(Watch::new(finish).with_scope(InSpan(span)))
    }
}

impl<K> fmt::Debug for LoggingPolicy<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoggingPolicy")
            .field("config", &self.config)
            .finish()
    }
}

/// The RPC's `grpc` span, entered around the inner call, every poll of the response future
/// and of the response body until its end, and the drop of an RPC dropped before its end — so
/// everything the handler (or a streaming body) logs nests under it — and never around the
/// finish event, which is written beside it.
#[derive(Debug)]
pub struct InSpan(pub(crate) Span);

impl Scope for InSpan {
    type Guard<'a> = Entered<'a>;

    fn enter(&self) -> Entered<'_> {
        self.0.enter()
    }
}

/// What a [`Logging`](crate::Logging) service hands its inner service as the request body:
/// on a server ([`Server`]) the [`RequestBody`] that counts the request's messages
/// (tonic's router takes any body); on a client ([`Client`]) the request's own body,
/// unchanged (as [`UnchangedRequest`] does), so a client layer fits a tonic `Channel`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoggedRequest;

impl<B> MapRequestBody<B, LoggingPolicy<Server>> for LoggedRequest {
    type Body = RequestBody<B>;

    fn map_body(body: B, side: Side, observer: Option<RequestMessages>) -> RequestBody<B> {
        <ObservedRequest as MapRequestBody<B, LoggingPolicy<Server>>>::map_body(
            body, side, observer,
        )
    }
}

impl<B> MapRequestBody<B, LoggingPolicy<Client>> for LoggedRequest {
    type Body = B;

    fn map_body(body: B, side: Side, observer: Option<()>) -> B {
        <UnchangedRequest as MapRequestBody<B, LoggingPolicy<Client>>>::map_body(
            body, side, observer,
        )
    }
}
