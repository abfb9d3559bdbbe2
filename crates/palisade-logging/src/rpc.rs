//! One logged RPC: what is read at its start, and the events it writes.

use std::{
    borrow::Cow,
    cell::OnceCell,
    fmt,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::{
    HeaderMap, HeaderName, HeaderValue, header::CONTENT_TYPE, uri::Authority, uri::PathAndQuery,
};
use palisade_core::{Call, Counts, MethodType, Observer, Outcome, Peer, Rpc, Side, code::go_name};
use tracing::{Span, field::debug};

use crate::{
    config::Config,
    level::{event_at, level_enabled, span_at},
    line::{Json, key, with_line},
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
    name: Name,
    peer: Option<PeerAddress>,
    /// The caller's `grpc-timeout`: its deadline is counted from the record's start.
    timeout: Option<Duration>,
    trace: Option<TraceIds>,
    metadata: Option<Box<[(HeaderName, HeaderValue)]>>,
    /// Server side: request messages, counted by the request body's observer
    /// ([`RequestMessages`]), which may run on another task.
    request_messages: Option<AtomicU64>,
}

/// Which method the RPC calls.
enum Name {
    /// One of the layer's registry, by its index: names, type and line fields are the
    /// layer's, nothing is copied.
    Known(u32),
    /// Any other `/package.Service/Method` (the path's bytes are shared, not copied).
    Other {
        path: PathAndQuery,
        service_len: usize,
    },
}

impl Finish {
    /// Starts logging a call: its observer and its span. `None` when it is not logged:
    /// nothing can be enabled, or it is not gRPC (the skip matcher is the middleware's).
    pub(crate) fn begin(config: &Arc<Config>, call: &mut Call<'_>) -> Option<(Self, Span)> {
        if !config.active() || !is_grpc(&call.parts().headers) {
            return None;
        }
        let name = match config.known_method(call.path()) {
            Some(index) => Name::Known(index),
            None => Name::Other {
                service_len: call.method()?.service().len(),
                path: call.parts().uri.path_and_query()?.clone(),
            },
        };
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
            name,
            peer,
            timeout: call.timeout(),
            trace,
            metadata: config.collect_metadata(&call.parts().headers),
            record,
            parent,
            config: Arc::clone(config),
            request_messages: (side == Side::Server).then(|| AtomicU64::new(0)),
        };
        // The ids only when a trace is active: everything the handler logs inside the span
        // carries them, under any subscriber that shows its spans' fields. Read once, and only
        // for a span that is opened.
        let ids = OnceCell::new();
        let ids = || *ids.get_or_init(|| logged.trace.as_ref().map(TraceIds::ids));
        let span = span_at!(
            config.span_level,
            parent: &logged.parent,
            "grpc",
            grpc.service = logged.service(),
            grpc.method = logged.method(),
            trace_id = ids().map(|(trace_id, _)| trace_id),
            span_id = ids().map(|(_, span_id)| span_id),
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
        match &self.name {
            Name::Known(index) => &self.config.known(*index).service,
            Name::Other { path, service_len } => &path.path()[1..=*service_len],
        }
    }

    fn method(&self) -> &str {
        match &self.name {
            Name::Known(index) => &self.config.known(*index).method,
            Name::Other { path, service_len } => &path.path()[service_len + 2..],
        }
    }

    fn method_type(&self) -> Option<MethodType> {
        match &self.name {
            Name::Known(index) => Some(self.config.known(*index).method_type),
            Name::Other { .. } => None,
        }
    }

    /// When the caller's deadline ends (since the epoch), from the time now (since the epoch)
    /// and the time since the start.
    fn deadline(&self, now: Duration, elapsed: Duration) -> Option<Duration> {
        now.checked_sub(elapsed)?.checked_add(self.timeout?)
    }

    /// The deadline as the events write it.
    fn deadline_field(&self, elapsed: Duration) -> Option<impl fmt::Display> {
        self.timeout?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
        let deadline = UNIX_EPOCH.checked_add(self.deadline(now, elapsed)?)?;
        Some(humantime::format_rfc3339_millis(deadline))
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
        let deadline = self.deadline_field(self.record.start().elapsed());
        let ids = self.trace.as_ref().map(TraceIds::ids);
        event_at!(
            level,
            parent: &self.parent,
            grpc.component = self.config.side.as_str(),
            grpc.service = self.service(),
            grpc.method = self.method(),
            grpc.method_type = self.method_type().map(MethodType::as_str),
            peer.address = self.peer.as_ref().map(tracing::field::display),
            grpc.request.deadline = deadline.map(tracing::field::display),
            grpc.request.metadata = self.metadata_field(),
            enduser.id = self.subject().as_deref(),
            palisade.rejected_by = self.record.rejected_by(),
            trace_id = ids.map(|(trace_id, _)| trace_id),
            span_id = ids.map(|(_, span_id)| span_id),
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
        let deadline = self.deadline_field(elapsed);
        let ids = self.trace.as_ref().map(TraceIds::ids);
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
            grpc.method_type = self.method_type().map(MethodType::as_str),
            grpc.code = go_name(code),
            grpc.message = message.as_deref(),
            grpc.time_ms = elapsed.as_micros() as f64 / 1000.0,
            peer.address = self.peer.as_ref().map(tracing::field::display),
            grpc.request.deadline = deadline.map(tracing::field::display),
            grpc.request.messages = self.request_messages(),
            grpc.response.messages = counts.messages,
            grpc.request.metadata = self.metadata_field(),
            enduser.id = self.subject().as_deref(),
            palisade.rejected_by = self.rejected_by(Some(outcome)),
            grpc.attempts = self.attempts(),
            trace_id = ids.map(|(trace_id, _)| trace_id),
            span_id = ids.map(|(_, span_id)| span_id),
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
        let elapsed = self.record.start().elapsed();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        with_line(|buf, seconds| {
            let mut json = Json::open(buf, seconds, now, level, end.is_some());
            match &self.name {
                Name::Known(index) => json.raw(&self.config.known(*index).fields),
                Name::Other { .. } => json.method(
                    self.config.side.as_str(),
                    self.service(),
                    self.method(),
                    None,
                ),
            }
            if let Some((outcome, _)) = end {
                let code = outcome.code();
                json.code(code);
                if code != palisade_core::Code::Ok
                    && let Some(message) = outcome.message()
                {
                    json.str(
                        key!("grpc.message"),
                        &truncate(message, self.config.max_message_len),
                    );
                }
                json.millis(key!("grpc.time_ms"), elapsed.as_micros() as u64);
            }
            match &self.peer {
                Some(PeerAddress::Socket(addr)) => json.socket(key!("peer.address"), addr),
                Some(PeerAddress::Authority(authority)) => {
                    json.str(key!("peer.address"), authority.as_str())
                }
                None => {}
            }
            if let Some(deadline) = self.deadline(now, elapsed) {
                json.time_millis(key!("grpc.request.deadline"), deadline);
            }
            if let Some((_, counts)) = end {
                if let Some(count) = self.request_messages() {
                    json.u64(key!("grpc.request.messages"), count);
                }
                json.u64(key!("grpc.response.messages"), counts.messages);
            }
            if let Some(metadata) = self.metadata_field() {
                json.str(key!("grpc.request.metadata"), &format!("{metadata:?}"));
            }
            if let Some(subject) = self.subject() {
                json.str(key!("enduser.id"), &subject);
            }
            if let Some(layer) = self.rejected_by(end.map(|(outcome, _)| outcome)) {
                json.str(key!("palisade.rejected_by"), layer);
            }
            if end.is_some()
                && let Some(attempts) = self.attempts()
            {
                json.u64(key!("grpc.attempts"), attempts.into());
            }
            if let Some(trace) = &self.trace {
                json.plain(key!("trace_id"), trace.trace_hex());
                json.plain(key!("span_id"), trace.span_hex());
            }
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

    /// `grpc.attempts`: how many attempts a retry layer inside made of the call, when it made
    /// more than one.
    fn attempts(&self) -> Option<u32> {
        Some(self.record.attempts()).filter(|attempts| *attempts > 1)
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
///
/// Word-aligned: `str::from_utf8` checks an aligned buffer a word at a time, an unaligned one
/// a byte at a time (four times the instructions for these 48 bytes).
#[cfg(feature = "opentelemetry")]
#[repr(align(8))]
struct TraceIds {
    /// The trace id's 32 digits, then the span id's 16.
    hex: [u8; 48],
}

#[cfg(feature = "opentelemetry")]
impl TraceIds {
    fn current() -> Option<Self> {
        use opentelemetry::trace::TraceContextExt as _;
        opentelemetry::Context::map_current(|cx| {
            let span = cx.span();
            let context = span.span_context();
            context.is_valid().then(|| {
                let trace_id = u128::from_be_bytes(context.trace_id().to_bytes());
                let span_id = u64::from_be_bytes(context.span_id().to_bytes());
                let mut digits = [0; 48];
                digits[..16].copy_from_slice(&hex((trace_id >> 64) as u64));
                digits[16..32].copy_from_slice(&hex(trace_id as u64));
                digits[32..].copy_from_slice(&hex(span_id));
                TraceIds { hex: digits }
            })
        })
    }

    /// The trace id and the span id (one UTF-8 check for both).
    fn ids(&self) -> (&str, &str) {
        std::str::from_utf8(&self.hex)
            .unwrap_or_default()
            .split_at_checked(32)
            .unwrap_or_default()
    }

    fn trace_hex(&self) -> &[u8] {
        &self.hex[..32]
    }

    fn span_hex(&self) -> &[u8] {
        &self.hex[32..]
    }
}

/// A `u64` in 16 lowercase hex digits, most significant first: every nibble at once, in the
/// bytes of a `u128` (no table, no branch).
#[cfg(feature = "opentelemetry")]
fn hex(value: u64) -> [u8; 16] {
    const LOW_NIBBLES: u128 = 0x000f_000f_000f_000f_000f_000f_000f_000f;
    const EACH_BYTE: u128 = 0x0101_0101_0101_0101_0101_0101_0101_0101;
    // Byte i of `value` (from the least significant) to bits 16i..16i+8.
    let mut spread = u128::from(value);
    spread = (spread | (spread << 32)) & 0x0000_0000_ffff_ffff_0000_0000_ffff_ffff;
    spread = (spread | (spread << 16)) & 0x0000_ffff_0000_ffff_0000_ffff_0000_ffff;
    spread = (spread | (spread << 8)) & 0x00ff_00ff_00ff_00ff_00ff_00ff_00ff_00ff;
    // Each byte's high nibble above its low one: one nibble per byte, in reading order.
    let nibbles = (((spread >> 4) & LOW_NIBBLES) << 8) | (spread & LOW_NIBBLES);
    // '0' + n, and 39 more (to 'a') where n > 9; no byte carries into the next.
    let letters = ((nibbles + 6 * EACH_BYTE) >> 4) & EACH_BYTE;
    (nibbles + u128::from(b'0') * EACH_BYTE + letters * 39).to_be_bytes()
}

/// Without the `opentelemetry` feature there are never trace ids.
#[cfg(not(feature = "opentelemetry"))]
enum TraceIds {}

#[cfg(not(feature = "opentelemetry"))]
impl TraceIds {
    fn current() -> Option<Self> {
        None
    }

    fn ids(&self) -> (&'static str, &'static str) {
        match *self {}
    }

    fn trace_hex(&self) -> &'static [u8] {
        match *self {}
    }

    fn span_hex(&self) -> &'static [u8] {
        match *self {}
    }
}

#[cfg(all(test, feature = "opentelemetry"))]
mod tests {
    #[test]
    fn hex_is_lowercase_and_most_significant_first() {
        for value in [
            0,
            u64::MAX,
            0x0123_4567_89ab_cdef,
            0xfedc_ba98_7654_3210,
            0x00f0_67aa_0ba9_02b7,
            0x9a9a_0a0a_a9a9_a0a0,
        ] {
            assert_eq!(
                std::str::from_utf8(&super::hex(value)).unwrap(),
                format!("{value:016x}")
            );
        }
        let mut value = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            value = value.rotate_left(5) ^ value.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            assert_eq!(super::hex(value), *format!("{value:016x}").as_bytes());
        }
    }
}
