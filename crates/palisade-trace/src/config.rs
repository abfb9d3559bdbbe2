//! What a [`TraceLayer`](crate::TraceLayer) is configured with: where spans come from, how
//! context crosses the wire, what is skipped, what metadata is recorded.

use std::{
    fmt,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    Array, Context, InstrumentationScope, Key, KeyValue, StringValue, Value,
    global::{self, BoxedTracer},
    propagation::{Extractor, Injector, TextMapPropagator},
};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use palisade_core::{
    Matcher, MethodRegistry, Side,
    slots::{AdmissionRule, Slots},
};

/// Metadata that is never recorded, whatever the allowlist says.
pub(crate) const NEVER_CAPTURED: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// The instrumentation scope of the spans this crate starts.
pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(env!("CARGO_PKG_NAME"))
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

fn global_tracer() -> BoxedTracer {
    global::tracer_with_scope(scope())
}

/// The tracer a layer starts spans with: given at construction, or the global provider's,
/// taken when the first RPC needs it (so the global provider may be installed after the layer
/// was built, but before it serves).
pub(crate) enum TracerSlot<T> {
    Given(T),
    Global(OnceLock<T>, fn() -> T),
}

impl TracerSlot<BoxedTracer> {
    pub(crate) fn global() -> Self {
        TracerSlot::Global(OnceLock::new(), global_tracer)
    }
}

impl<T> TracerSlot<T> {
    pub(crate) fn get(&self) -> &T {
        match self {
            TracerSlot::Given(tracer) => tracer,
            TracerSlot::Global(cell, init) => cell.get_or_init(*init),
        }
    }
}

impl<T> fmt::Debug for TracerSlot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TracerSlot::Given(_) => "Tracer",
            TracerSlot::Global(..) => "GlobalTracer",
        })
    }
}

/// Where the propagator comes from.
#[derive(Clone)]
pub(crate) enum Propagation {
    /// `opentelemetry::global`'s text map propagator, read on every RPC; `checked` once the
    /// first RPC has looked whether it is the no-op default (shared by the layer's clones).
    Global { checked: Arc<AtomicBool> },
    /// One given to the layer.
    Custom(Arc<dyn TextMapPropagator + Send + Sync>),
}

impl Propagation {
    pub(crate) fn global() -> Self {
        Propagation::Global {
            checked: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The incoming context: the current one, with what the propagator reads from `headers`.
    pub(crate) fn extract(&self, headers: &HeaderMap) -> Context {
        let base = Context::current();
        let extractor = MetadataExtractor(HeaderExtractor(headers));
        match self {
            Propagation::Global { checked } => global::get_text_map_propagator(|p| {
                check_global(checked, p);
                p.extract_with_context(&base, &extractor)
            }),
            Propagation::Custom(p) => p.extract_with_context(&base, &extractor),
        }
    }

    /// Writes `cx` into outgoing `headers`.
    pub(crate) fn inject(&self, cx: &Context, headers: &mut HeaderMap) {
        let mut injector = MetadataInjector(headers);
        match self {
            Propagation::Global { checked } => {
                global::get_text_map_propagator(|p| {
                    check_global(checked, p);
                    p.inject_context(cx, &mut injector);
                });
            }
            Propagation::Custom(p) => p.inject_context(cx, &mut injector),
        }
    }
}

/// At a layer's first RPC: warns when the global propagator is OpenTelemetry's no-op default
/// (it has no fields), which silently propagates nothing.
#[inline]
fn check_global(checked: &AtomicBool, propagator: &dyn TextMapPropagator) {
    if !checked.load(Ordering::Relaxed) && !checked.swap(true, Ordering::Relaxed) {
        warn_if_noop(propagator);
    }
}

#[cold]
fn warn_if_noop(propagator: &dyn TextMapPropagator) {
    if propagator.fields().next().is_none() {
        tracing::warn!(
            "palisade-trace: no global text-map propagator is set (OpenTelemetry's default \
             propagates nothing), so trace context is neither read from nor written to gRPC \
             metadata; call `opentelemetry::global::set_text_map_propagator` (W3C \
             `TraceContextPropagator`, say) before serving, or give the layer one with \
             `TraceLayer::propagator`"
        );
    }
}

impl fmt::Debug for Propagation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Propagation::Global { .. } => f.write_str("Global"),
            Propagation::Custom(p) => f
                .debug_tuple("Custom")
                .field(&p.fields().collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// `opentelemetry-http`'s [`HeaderExtractor`], stricter about what it hands a propagator:
///
/// - a field sent more than once (two `traceparent` headers) reads as absent, so the
///   propagator starts a new trace rather than picking one of them (the W3C trace-context test
///   suite's rule);
/// - a `traceparent` that is not exactly W3C's syntax reads as absent. The SDK's parser is
///   lenient about field lengths (it reads `00-…-…-0`, a truncated header, as an unsampled
///   parent, which would silently stop the trace), so the syntax is checked here first.
struct MetadataExtractor<'a>(HeaderExtractor<'a>);

const TRACEPARENT: &str = "traceparent";

/// The W3C fields, parsed once: a lookup by `&str` parses the name on every call.
static TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT);
static TRACESTATE_NAME: HeaderName = HeaderName::from_static("tracestate");
static BAGGAGE_NAME: HeaderName = HeaderName::from_static("baggage");

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let headers = self.0.0;
        let all = match key {
            TRACEPARENT => headers.get_all(&TRACEPARENT_NAME),
            "tracestate" => headers.get_all(&TRACESTATE_NAME),
            "baggage" => headers.get_all(&BAGGAGE_NAME),
            other => headers.get_all(other),
        };
        let mut values = all.into_iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        if key.eq_ignore_ascii_case(TRACEPARENT) {
            let bytes = value.as_bytes();
            return match (is_traceparent(bytes), bytes.len()) {
                (false, _) => None,
                // Every byte checked already: the cheap UTF-8 check is enough for a `&str`.
                (true, 55) => std::str::from_utf8(bytes).ok(),
                // A later version's extra fields: visible ASCII, as for any other key.
                (true, _) => value.to_str().ok(),
            };
        }
        value.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        self.0.get_all(key)
    }
}

/// `opentelemetry-http`'s [`HeaderInjector`], with the W3C fields' names parsed once and the
/// propagator's `String` moved into the header value rather than copied.
struct MetadataInjector<'a>(&'a mut HeaderMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let name = match key {
            TRACEPARENT => &TRACEPARENT_NAME,
            "tracestate" => &TRACESTATE_NAME,
            "baggage" => &BAGGAGE_NAME,
            other => return HeaderInjector(self.0).set(other, value),
        };
        if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
            self.0.insert(name.clone(), value);
        }
    }

    fn reserve(&mut self, additional: usize) {
        HeaderInjector(self.0).reserve(additional);
    }
}

/// Whether `value` has the syntax of a W3C `traceparent`: `version-traceid-parentid-flags` in
/// lowercase hex of 2, 32, 16 and 2 digits, version `ff` forbidden; version `00` exactly that,
/// a higher version possibly followed by `-` and more fields. (All-zero ids are syntactically
/// fine; the propagator rejects them.)
fn is_traceparent(value: &[u8]) -> bool {
    const LOWER_HEX: [bool; 256] = {
        let mut table = [false; 256];
        let mut i = 0;
        while i < 256 {
            table[i] = matches!(i as u8, b'0'..=b'9' | b'a'..=b'f');
            i += 1;
        }
        table
    };
    fn hex(digits: &[u8]) -> bool {
        digits.iter().all(|&d| LOWER_HEX[usize::from(d)])
    }
    if value.len() < 55 {
        return false;
    }
    let version = &value[..2];
    let fields = hex(version)
        && version != b"ff"
        && value[2] == b'-'
        && hex(&value[3..35])
        && value[35] == b'-'
        && hex(&value[36..52])
        && value[52] == b'-'
        && hex(&value[53..55]);
    let end = if version == b"00" {
        value.len() == 55
    } else {
        value.len() == 55 || value[55] == b'-'
    };
    fields && end
}

/// One allow-listed metadata key and the span attribute it is recorded as.
#[derive(Clone)]
pub(crate) struct Capture {
    name: HeaderName,
    key: Key,
}

impl Capture {
    /// `None` for names that are not valid metadata keys and for names never recorded.
    pub(crate) fn new(name: &str) -> Option<Self> {
        let name = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes()).ok()?;
        if NEVER_CAPTURED.contains(&name.as_str()) {
            return None;
        }
        let key: Arc<str> = format!("rpc.grpc.request.metadata.{}", name.as_str()).into();
        Some(Self {
            name,
            key: Key::from(key),
        })
    }

    /// The attribute for this key, when the request carries it: every value, in order
    /// (values that are not UTF-8 are kept lossily).
    pub(crate) fn attribute(&self, headers: &HeaderMap) -> Option<KeyValue> {
        let values: Vec<StringValue> = headers
            .get_all(&self.name)
            .iter()
            .map(|value| {
                String::from_utf8_lossy(value.as_bytes())
                    .into_owned()
                    .into()
            })
            .collect();
        if values.is_empty() {
            return None;
        }
        Some(KeyValue::new(
            self.key.clone(),
            Value::Array(Array::String(values)),
        ))
    }
}

impl fmt::Debug for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name.as_str())
    }
}

/// The host and port a client layer's calls go to, for `server.address` / `server.port`.
#[derive(Clone, Debug)]
pub(crate) struct ServerAddress {
    pub(crate) host: StringValue,
    pub(crate) port: u16,
}

/// A layer's configuration, shared by every service it makes.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) side: Side,
    pub(crate) propagation: Propagation,
    pub(crate) skip: Option<Matcher>,
    pub(crate) public: Option<Matcher>,
    pub(crate) metadata: Arc<[Capture]>,
    pub(crate) server: Option<ServerAddress>,
    /// The methods that name spans; `None`: the paths that earn a name in `names`.
    pub(crate) registry: Option<MethodRegistry>,
    /// Without a registry, the paths that name spans: palisade-core's slots, earned by
    /// frequency on a server (a flood of random paths names no span), at first sight on a
    /// client, at most [`MAX_SPAN_NAMES`](crate::MAX_SPAN_NAMES) of them.
    pub(crate) names: Arc<Slots<()>>,
}

impl Config {
    pub(crate) fn new(side: Side) -> Self {
        Self {
            side,
            propagation: Propagation::global(),
            skip: None,
            public: None,
            metadata: Arc::new([]),
            server: None,
            registry: None,
            names: Arc::new(
                Slots::new([], crate::MAX_SPAN_NAMES).admission(AdmissionRule::for_side(side)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_traceparent;

    #[test]
    fn traceparent_syntax() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_traceparent(valid.as_bytes()));
        assert!(is_traceparent(
            format!("cc{}-what-ever", &valid[2..]).as_bytes()
        ));
        assert!(is_traceparent(format!("cc{}", &valid[2..]).as_bytes()));
        for bad in [
            &valid[..54],
            &format!("{valid}-x"),
            &format!("cc{}x", &valid[2..]),
            &format!("ff{}", &valid[2..]),
            &valid.to_uppercase(),
            &valid.replace('-', "_"),
            "",
        ] {
            assert!(!is_traceparent(bad.as_bytes()), "{bad}");
        }
    }
}
