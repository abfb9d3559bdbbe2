//! One logged RPC: what is read at its start, and the events it writes.

use std::{
    borrow::Cow,
    fmt,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use http::{
    HeaderMap, HeaderName, HeaderValue, header::CONTENT_TYPE, uri::Authority, uri::PathAndQuery,
};
use palisade_core::{Call, Counts, MethodType, Observer, Outcome, Peer, Rpc, Side, code::go_name};
use tracing::{Span, field::debug};

use crate::{
    config::Config,
    level::{event_at, level_enabled, span_at},
    line::{Json, with_line},
};

/// The observer of one logged RPC: writes the finish event when the RPC ends. It points to
/// what the events need, read once when the RPC starts, in one allocation shared with the
/// request body's observer on a server ([`RequestMessages`]) — a pointer in the response
/// future and body, not the 250 bytes themselves, which every RPC (logged or not) and every
/// layer outside would move.
pub struct Finish(Arc<Logged>);

/// What the events of one RPC need, read once when it starts.
struct Logged {
    config: Arc<Config>,
    /// The span that was current when the call started: the events are written under it, as
    /// siblings of the RPC's own span (whose fields they repeat).
    parent: Span,
    /// The per-RPC record (made here when the stack has none): its start times the call, and
    /// the facts the layers inside write into it (jwt's verified subject, the layer that
    /// rejected the call) are read when the events are written.
    record: Rpc,
    path: PathAndQuery,
    service_len: usize,
    method_type: Option<MethodType>,
    peer: Option<PeerAddress>,
    deadline: Option<SystemTime>,
    trace: Option<TraceIds>,
    metadata: Option<Box<[(HeaderName, HeaderValue)]>>,
    /// Server side: request messages, counted by the request body's observer
    /// ([`RequestMessages`]), which may run on another task.
    request_messages: Option<AtomicU64>,
}

impl Finish {
    /// Starts logging a call: its observer and its span. `None` when it is not logged:
    /// nothing can be enabled, or it is not gRPC (the skip matcher is the middleware's).
    pub(crate) fn begin(config: &Arc<Config>, call: &mut Call<'_>) -> Option<(Self, Span)> {
        if !config.active() || !is_grpc(&call.parts().headers) {
            return None;
        }
        let (service_len, method_type) = {
            let method = call.method()?;
            let method_type = config
                .registry
                .as_ref()
                .and_then(|registry| registry.get(&method))
                .map(|info| info.method_type);
            (method.service().len(), method_type)
        };
        let path = call.parts().uri.path_and_query()?.clone();
        // The record's clock read is the start (made here when no layer outside made one).
        let record = call.record_or_insert().clone();
        let side = config.side;
        let parent = Span::current();
        let trace = TraceIds::current();
        let peer = match side {
            Side::Server => Peer::remote_addr_of(&call.parts().extensions).map(PeerAddress::Socket),
            Side::Client => call
                .parts()
                .uri
                .authority()
                .cloned()
                .map(PeerAddress::Authority),
        };
        let logged = Logged {
            method_type,
            peer,
            deadline: call
                .timeout()
                .and_then(|timeout| SystemTime::now().checked_add(timeout)),
            trace,
            metadata: config.collect_metadata(&call.parts().headers),
            service_len,
            path,
            record,
            parent,
            config: Arc::clone(config),
            request_messages: (side == Side::Server).then(|| AtomicU64::new(0)),
        };
        // The ids only when a trace is active: everything the handler logs inside the span
        // carries them, under any subscriber that shows its spans' fields.
        let span = span_at!(
            config.span_level,
            parent: &logged.parent,
            "grpc",
            grpc.service = logged.service(),
            grpc.method = logged.method(),
            trace_id = logged.trace.as_ref().map(TraceIds::trace_id),
            span_id = logged.trace.as_ref().map(TraceIds::span_id),
        );
        if config.log_start {
            logged.start_event();
        }
        Some((Finish(Arc::new(logged)), span))
    }

    /// The observer of this RPC's request body (server side), counting its messages.
    pub(crate) fn request_messages(&self) -> RequestMessages {
        RequestMessages(Arc::clone(&self.0))
    }
}

impl Logged {
    fn service(&self) -> &str {
        &self.path.path()[1..=self.service_len]
    }

    fn method(&self) -> &str {
        &self.path.path()[self.service_len + 2..]
    }

    /// Server side: the request messages counted so far.
    fn request_messages(&self) -> Option<u64> {
        self.request_messages
            .as_ref()
            .map(|count| count.load(Ordering::Relaxed))
    }

    fn start_event(&self) {
        let level = self.config.level(palisade_core::Code::Ok);
        if self.config.access_log.is_some() {
            return self.write_line(level, None);
        }
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
            enduser.id = self.subject().as_deref(),
            palisade.rejected_by = self.record.rejected_by(),
            trace_id = self.trace.as_ref().map(TraceIds::trace_id),
            span_id = self.trace.as_ref().map(TraceIds::span_id),
            "started call"
        );
    }

    fn finish_event(&self, outcome: &Outcome, counts: Counts) {
        let code = outcome.code();
        let level = self.config.level(code);
        if self.config.access_log.is_some() {
            return self.write_line(level, Some((outcome, counts)));
        }
        let elapsed = self.record.start().elapsed();
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
            grpc.request.messages = self.request_messages(),
            grpc.response.messages = counts.messages,
            grpc.request.metadata = self.metadata_field(),
            enduser.id = self.subject().as_deref(),
            palisade.rejected_by = self.rejected_by(Some(outcome)),
            trace_id = self.trace.as_ref().map(TraceIds::trace_id),
            span_id = self.trace.as_ref().map(TraceIds::span_id),
            "finished call"
        );
    }

    /// The access log's line: the event's fields, in the same names, written by hand and
    /// handed to the non-blocking writer. `end` is `None` for the start line.
    fn write_line(&self, level: tracing::Level, end: Option<(&Outcome, Counts)>) {
        let Some(writer) = &self.config.access_log else {
            return;
        };
        // The subscriber's filter still decides, before anything is formatted.
        if !level_enabled(level) {
            return;
        }
        let micros = self.record.start().elapsed().as_micros() as u64;
        with_line(|buf| {
            let mut json = Json::open(buf, SystemTime::now());
            json.plain("level", level.as_str());
            json.plain(
                "message",
                if end.is_some() {
                    "finished call"
                } else {
                    "started call"
                },
            );
            json.plain("grpc.component", self.config.side.as_str());
            json.str("grpc.service", self.service());
            json.str("grpc.method", self.method());
            if let Some(method_type) = self.method_type {
                json.plain("grpc.method_type", method_type.as_str());
            }
            if let Some((outcome, _)) = end {
                let code = outcome.code();
                json.plain("grpc.code", go_name(code));
                if code != palisade_core::Code::Ok
                    && let Some(message) = outcome.message()
                {
                    json.str(
                        "grpc.message",
                        &truncate(message, self.config.max_message_len),
                    );
                }
                json.millis("grpc.time_ms", micros);
            }
            match &self.peer {
                Some(PeerAddress::Socket(addr)) => json.socket("peer.address", addr),
                Some(PeerAddress::Authority(authority)) => {
                    json.str("peer.address", authority.as_str())
                }
                None => {}
            }
            if let Some(deadline) = self.deadline {
                json.time_millis("grpc.request.deadline", deadline);
            }
            if let Some((_, counts)) = end {
                if let Some(count) = self.request_messages() {
                    json.u64("grpc.request.messages", count);
                }
                json.u64("grpc.response.messages", counts.messages);
            }
            if let Some(metadata) = self.metadata_field() {
                json.str("grpc.request.metadata", &format!("{metadata:?}"));
            }
            if let Some(subject) = self.subject() {
                json.str("enduser.id", &subject);
            }
            if let Some(layer) = self.rejected_by(end.map(|(outcome, _)| outcome)) {
                json.str("palisade.rejected_by", layer);
            }
            if let Some(trace) = &self.trace {
                json.plain("trace_id", trace.trace_id());
                json.plain("span_id", trace.span_id());
            }
            json.plain("target", crate::TARGET);
            json.close();
            writer.write_line(buf);
        });
    }

    /// `enduser.id`: the verified subject an inner layer wrote into the record (it is the
    /// caller's, so it is bounded as `grpc.message` is, and escaped where it is written).
    fn subject(&self) -> Option<Cow<'_, str>> {
        self.record
            .subject()
            .map(|subject| truncate(Cow::Borrowed(subject), self.config.max_message_len))
    }

    /// `palisade.rejected_by`: the layer the record says answered the call, else the one the
    /// response's mark names (a rejection made by a layer that writes no record, or a
    /// handler's `Rejection::by`).
    fn rejected_by(&self, outcome: Option<&Outcome>) -> Option<&'static str> {
        self.record
            .rejected_by()
            .or_else(|| outcome.and_then(Outcome::rejected_by))
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

impl Observer for Finish {
    fn on_end(self, outcome: Outcome, counts: Counts) {
        if outcome.is_ok() && !self.0.config.sample_ok() {
            return;
        }
        self.0.finish_event(&outcome, counts);
    }
}

impl fmt::Debug for Finish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Logged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Finish")
            .field("side", &self.config.side)
            .field("service", &self.service())
            .field("method", &self.method())
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// Counts the messages of a request body for its RPC's finish event: the request observer of
/// a server-side [`Logging`](crate::Logging), in the [`RequestBody`](crate::RequestBody) it
/// hands its inner service.
#[derive(Debug)]
pub struct RequestMessages(Arc<Logged>);

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

/// The active OpenTelemetry span's ids when the RPC started, in lowercase hex (formatted
/// once, recorded as plain strings).
#[cfg(feature = "opentelemetry")]
struct TraceIds {
    trace_id: [u8; 32],
    span_id: [u8; 16],
}

#[cfg(feature = "opentelemetry")]
impl TraceIds {
    fn current() -> Option<Self> {
        use opentelemetry::trace::TraceContextExt as _;
        opentelemetry::Context::map_current(|cx| {
            let span = cx.span();
            let context = span.span_context();
            context.is_valid().then(|| {
                let mut ids = TraceIds {
                    trace_id: [0; 32],
                    span_id: [0; 16],
                };
                hex(&context.trace_id().to_bytes(), &mut ids.trace_id);
                hex(&context.span_id().to_bytes(), &mut ids.span_id);
                ids
            })
        })
    }

    fn trace_id(&self) -> &str {
        std::str::from_utf8(&self.trace_id).unwrap_or_default()
    }

    fn span_id(&self) -> &str {
        std::str::from_utf8(&self.span_id).unwrap_or_default()
    }
}

#[cfg(feature = "opentelemetry")]
fn hex(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
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
