//! One logged RPC: what is read at its start, and the events it writes.

use std::{
    borrow::Cow,
    fmt,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime},
};

use http::{
    HeaderMap, HeaderName, HeaderValue, Request, header::CONTENT_TYPE, uri::Authority,
    uri::PathAndQuery,
};
use palisade_core::{
    Counts, Method, MethodType, Observer, Outcome, Peer, Side, code::go_name, deadline,
};
use tracing::{Span, field::debug};

use crate::{
    config::Config,
    level::{event_at, span_at},
};

/// Everything the events need, read once when the RPC starts; shared by the response's
/// observer ([`Finish`]) and the request body's ([`RequestMessages`]) in one allocation.
pub(crate) struct Rpc {
    config: Arc<Config>,
    /// The span that was current when the call started: the events are written under it, as
    /// siblings of the RPC's own span (whose fields they repeat).
    parent: Span,
    start: Instant,
    path: PathAndQuery,
    service_len: usize,
    method_type: Option<MethodType>,
    peer: Option<PeerAddress>,
    deadline: Option<SystemTime>,
    trace: Option<TraceIds>,
    metadata: Option<Box<[(HeaderName, HeaderValue)]>>,
    /// Server side: request messages, counted by the request body's observer.
    request_messages: Option<AtomicU64>,
}

impl Rpc {
    /// Starts logging a request: its record and its span. `None` when it is not logged:
    /// nothing can be enabled, it is not gRPC, or the skip matcher selects it.
    pub(crate) fn begin<B>(
        config: &Arc<Config>,
        request: &Request<B>,
    ) -> Option<(Arc<Self>, Span)> {
        if !config.active() || !is_grpc(request.headers()) {
            return None;
        }
        let method = Method::from_request(request)?;
        if config
            .skip
            .as_ref()
            .is_some_and(|skip| skip.matches(Some(&method)))
        {
            return None;
        }
        let start = Instant::now();
        let path = request.uri().path_and_query()?.clone();
        let side = config.side;
        let parent = Span::current();
        let span = span_at!(
            config.span_level,
            parent: &parent,
            "grpc",
            grpc.service = method.service(),
            grpc.method = method.method(),
        );
        let peer = match side {
            Side::Server => Peer::remote_addr_of(request.extensions()).map(PeerAddress::Socket),
            Side::Client => request
                .uri()
                .authority()
                .cloned()
                .map(PeerAddress::Authority),
        };
        let rpc = Self {
            method_type: config
                .registry
                .as_ref()
                .and_then(|registry| registry.get(&method))
                .map(|info| info.method_type),
            peer,
            deadline: deadline::grpc_timeout(request.headers())
                .and_then(|timeout| SystemTime::now().checked_add(timeout)),
            trace: TraceIds::current(),
            metadata: config.collect_metadata(request.headers()),
            service_len: method.service().len(),
            path,
            start,
            parent,
            config: Arc::clone(config),
            request_messages: (side == Side::Server).then(|| AtomicU64::new(0)),
        };
        if rpc.config.log_start {
            rpc.start_event();
        }
        Some((Arc::new(rpc), span))
    }

    fn service(&self) -> &str {
        &self.path.path()[1..=self.service_len]
    }

    fn method(&self) -> &str {
        &self.path.path()[self.service_len + 2..]
    }

    fn start_event(&self) {
        let level = self.config.level(palisade_core::Code::Ok);
        event_at!(
            level,
            parent: &self.parent,
            grpc.component = self.config.side.as_str(),
            grpc.service = self.service(),
            grpc.method = self.method(),
            grpc.method_type = self.method_type.map(MethodType::as_str),
            peer.address = self.peer.as_ref().map(tracing::field::display),
            grpc.request.deadline = self
                .deadline
                .map(|d| tracing::field::display(humantime::format_rfc3339_millis(d))),
            grpc.request.metadata = self.metadata_field(),
            trace_id = self.trace.as_ref().map(TraceIds::trace_id),
            span_id = self.trace.as_ref().map(TraceIds::span_id),
            "started call"
        );
    }

    fn finish_event(&self, outcome: &Outcome, counts: Counts) {
        let code = outcome.code();
        let level = self.config.level(code);
        let elapsed = self.start.elapsed();
        let message = match code {
            palisade_core::Code::Ok => None,
            _ => outcome
                .message()
                .map(|message| truncate(message, self.config.max_message_len)),
        };
        event_at!(
            level,
            parent: &self.parent,
            grpc.component = self.config.side.as_str(),
            grpc.service = self.service(),
            grpc.method = self.method(),
            grpc.method_type = self.method_type.map(MethodType::as_str),
            grpc.code = go_name(code),
            grpc.message = message.as_deref(),
            grpc.time_ms = elapsed.as_micros() as f64 / 1000.0,
            peer.address = self.peer.as_ref().map(tracing::field::display),
            grpc.request.deadline = self
                .deadline
                .map(|d| tracing::field::display(humantime::format_rfc3339_millis(d))),
            grpc.request.messages = self
                .request_messages
                .as_ref()
                .map(|count| count.load(Ordering::Relaxed)),
            grpc.response.messages = counts.messages,
            grpc.request.metadata = self.metadata_field(),
            trace_id = self.trace.as_ref().map(TraceIds::trace_id),
            span_id = self.trace.as_ref().map(TraceIds::span_id),
            "finished call"
        );
    }

    fn metadata_field(&self) -> Option<tracing::field::DebugValue<LoggedMetadata<'_>>> {
        self.metadata.as_deref().map(|entries| {
            debug(LoggedMetadata {
                entries,
                max: self.config.max_message_len,
            })
        })
    }
}

/// Writes the finish event when the RPC ends.
pub(crate) struct Finish(pub(crate) Arc<Rpc>);

impl Observer for Finish {
    fn on_end(self, outcome: Outcome, counts: Counts) {
        if outcome.is_ok() && !self.0.config.sample_ok() {
            return;
        }
        self.0.finish_event(&outcome, counts);
    }
}

impl fmt::Debug for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rpc")
            .field("side", &self.config.side)
            .field("service", &self.service())
            .field("method", &self.method())
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

/// Counts the messages of a request body for its RPC's finish event (the observer of the
/// [`ObservedBody`](palisade_core::ObservedBody) a server-side [`Logging`](crate::Logging)
/// hands its inner service).
#[derive(Debug)]
pub struct RequestMessages(pub(crate) Arc<Rpc>);

impl Observer for RequestMessages {
    fn on_message(&mut self) {
        if let Some(count) = &self.0.request_messages {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_end(self, _: Outcome, _: Counts) {}
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// The text cut to at most `max` bytes, on a character boundary, with `…` when cut.
pub(crate) fn truncate(text: Cow<'_, str>, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

/// `peer.address`: the remote socket on a server, the target authority (when the request
/// carries one) on a client.
#[derive(Debug)]
enum PeerAddress {
    Socket(SocketAddr),
    Authority(Authority),
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddress::Socket(addr) => addr.fmt(f),
            PeerAddress::Authority(authority) => authority.fmt(f),
        }
    }
}

/// `grpc.request.metadata`: allow-listed entries as a map, each value bounded.
struct LoggedMetadata<'a> {
    entries: &'a [(HeaderName, HeaderValue)],
    max: usize,
}

impl fmt::Debug for LoggedMetadata<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in self.entries {
            let text = String::from_utf8_lossy(value.as_bytes());
            map.entry(&name.as_str(), &truncate(text, self.max));
        }
        map.finish()
    }
}

/// The active OpenTelemetry span's ids when the RPC started.
#[cfg(feature = "opentelemetry")]
struct TraceIds(opentelemetry::trace::TraceId, opentelemetry::trace::SpanId);

#[cfg(feature = "opentelemetry")]
impl TraceIds {
    fn current() -> Option<Self> {
        use opentelemetry::trace::TraceContextExt as _;
        opentelemetry::Context::map_current(|cx| {
            let span = cx.span();
            let context = span.span_context();
            context
                .is_valid()
                .then(|| TraceIds(context.trace_id(), context.span_id()))
        })
    }

    fn trace_id(&self) -> tracing::field::DisplayValue<opentelemetry::trace::TraceId> {
        tracing::field::display(self.0)
    }

    fn span_id(&self) -> tracing::field::DisplayValue<opentelemetry::trace::SpanId> {
        tracing::field::display(self.1)
    }
}

/// Without the `opentelemetry` feature there are never trace ids.
#[cfg(not(feature = "opentelemetry"))]
enum TraceIds {}

#[cfg(not(feature = "opentelemetry"))]
impl TraceIds {
    fn current() -> Option<Self> {
        None
    }

    fn trace_id(&self) -> &'static str {
        match *self {}
    }

    fn span_id(&self) -> &'static str {
        match *self {}
    }
}
