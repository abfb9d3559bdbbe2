//! What a [`TraceLayer`](crate::TraceLayer) is configured with: where spans come from, how
//! context crosses the wire, what is skipped, what metadata is recorded.

use std::{
    any::Any,
    collections::HashMap,
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
use opentelemetry_sdk::propagation::TraceContextPropagator;
use palisade_core::{
    Matcher, Method, MethodRegistry, Side,
    slots::{AdmissionRule, Slots},
};

use crate::names::MethodNames;
use crate::w3c::{
    BAGGAGE, BAGGAGE_NAME, TRACEPARENT, TRACEPARENT_NAME, TRACESTATE, TRACESTATE_NAME,
    W3cPropagator, is_traceparent,
};

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
    /// W3C trace context (and baggage), read from and written to the metadata by hand: a
    /// [`W3cPropagator`] given to the layer, or the SDK's `TraceContextPropagator`, which reads
    /// and writes exactly the same through [`MetadataExtractor`] and [`MetadataInjector`].
    W3c(W3cPropagator),
    /// Any other one given to the layer.
    Custom(Arc<dyn TextMapPropagator + Send + Sync>),
}

impl Propagation {
    pub(crate) fn global() -> Self {
        Propagation::Global {
            checked: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The propagation of a propagator given to the layer: by hand when it is one whose
    /// behaviour is known exactly (its type says so), else the propagator itself.
    pub(crate) fn given<P>(propagator: P) -> Self
    where
        P: TextMapPropagator + Send + Sync + 'static,
    {
        let any: &dyn Any = &propagator;
        if let Some(w3c) = any.downcast_ref::<W3cPropagator>() {
            Propagation::W3c(*w3c)
        } else if any.is::<TraceContextPropagator>() {
            Propagation::W3c(W3cPropagator::new().without_baggage())
        } else {
            Propagation::Custom(Arc::new(propagator))
        }
    }

    /// The incoming context: the current one, with what the propagator reads from `headers`.
    pub(crate) fn extract(&self, headers: &HeaderMap) -> Context {
        let base = Context::current();
        match self {
            Propagation::W3c(w3c) => w3c.extract_headers(&base, headers),
            Propagation::Global { checked } => global::get_text_map_propagator(|p| {
                check_global(checked, p);
                p.extract_with_context(&base, &MetadataExtractor::new(headers))
            }),
            Propagation::Custom(p) => {
                p.extract_with_context(&base, &MetadataExtractor::new(headers))
            }
        }
    }

    /// Writes `cx` into outgoing `headers`.
    pub(crate) fn inject(&self, cx: &Context, headers: &mut HeaderMap) {
        match self {
            Propagation::W3c(w3c) => w3c.inject_headers(cx, headers),
            Propagation::Global { checked } => {
                global::get_text_map_propagator(|p| {
                    check_global(checked, p);
                    p.inject_context(cx, &mut MetadataInjector::new(headers));
                });
            }
            Propagation::Custom(p) => p.inject_context(cx, &mut MetadataInjector::new(headers)),
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
             `TraceBuilder::propagator`"
        );
    }
}

impl fmt::Debug for Propagation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Propagation::Global { .. } => f.write_str("Global"),
            Propagation::W3c(w3c) => w3c.fmt(f),
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
pub(crate) struct MetadataExtractor<'a>(HeaderExtractor<'a>);

impl<'a> MetadataExtractor<'a> {
    pub(crate) fn new(headers: &'a HeaderMap) -> Self {
        Self(HeaderExtractor(headers))
    }
}

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let headers = self.0.0;
        let all = match key {
            TRACEPARENT => headers.get_all(&TRACEPARENT_NAME),
            TRACESTATE => headers.get_all(&TRACESTATE_NAME),
            BAGGAGE => headers.get_all(&BAGGAGE_NAME),
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
pub(crate) struct MetadataInjector<'a>(&'a mut HeaderMap);

impl<'a> MetadataInjector<'a> {
    pub(crate) fn new(headers: &'a mut HeaderMap) -> Self {
        Self(headers)
    }
}

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let name = match key {
            TRACEPARENT => &TRACEPARENT_NAME,
            TRACESTATE => &TRACESTATE_NAME,
            BAGGAGE => &BAGGAGE_NAME,
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
        if palisade_core::headers::is_secret(&name) {
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
    /// Reference-counted: each span's copy is a count, not a string.
    pub(crate) host: StringValue,
    pub(crate) port: u16,
}

/// The method registry, with each method's [names](MethodNames), found by a hash of the
/// method's name cheaper than the registry's own (its keys are fixed: a lookup of a path a
/// caller made up costs the same as any other).
#[derive(Clone, Debug)]
pub(crate) struct Registry {
    pub(crate) methods: MethodRegistry,
    names: Arc<HashMap<Box<str>, Option<MethodNames>, foldhash::fast::RandomState>>,
}

impl Registry {
    pub(crate) fn new(methods: MethodRegistry) -> Self {
        let names = methods
            .iter()
            .filter_map(|info| {
                let path = format!("/{}/{}", info.service, info.method);
                let method = Method::parse(&path)?;
                Some((method.full_name().into(), MethodNames::of(&method)))
            })
            .collect();
        Self {
            methods,
            names: Arc::new(names),
        }
    }

    /// `None` for a method the registry does not have; else its names, when kept.
    pub(crate) fn get(&self, method: &Method<'_>) -> Option<Option<MethodNames>> {
        self.names.get(method.full_name()).copied()
    }
}

/// A layer's configuration, shared by every service it makes.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) side: Side,
    pub(crate) propagation: Propagation,
    pub(crate) skip: Option<Matcher>,
    /// Server side: the calls that start a new root linked to the incoming context.
    pub(crate) new_root: Option<Matcher>,
    pub(crate) metadata: Arc<[Capture]>,
    pub(crate) server: Option<ServerAddress>,
    /// The methods that name spans; `None`: the paths that earn a name in `names`.
    pub(crate) registry: Option<Registry>,
    /// Without a registry, the paths that name spans (with their names, when kept):
    /// palisade-core's slots, earned by frequency on a server (a flood of random paths names
    /// no span), at first sight on a client, at most [`MAX_SPAN_NAMES`](crate::MAX_SPAN_NAMES)
    /// of them.
    pub(crate) names: Arc<Slots<Option<MethodNames>, foldhash::fast::RandomState>>,
    /// Whether the layer's last span without an unsampled parent recorded: then the next
    /// one is given room for its attributes at the start (shared by the layer's clones; a
    /// guess for an allocation's size, never a decision).
    pub(crate) recorded: Arc<AtomicBool>,
}

impl Config {
    pub(crate) fn new(side: Side) -> Self {
        Self {
            side,
            propagation: Propagation::global(),
            skip: None,
            new_root: None,
            metadata: Arc::new([]),
            server: None,
            registry: None,
            names: span_names(side),
            recorded: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Gives this configuration span-name slots, a recording guess and a global-propagator
    /// check of its own (not shared with the configuration it was cloned from): each built
    /// layer has its own.
    pub(crate) fn reset_caches(&mut self) {
        self.names = span_names(self.side);
        self.recorded = Arc::new(AtomicBool::new(true));
        if let Propagation::Global { .. } = self.propagation {
            self.propagation = Propagation::global();
        }
    }
}

/// Empty span-name slots for a layer of `side`.
fn span_names(side: Side) -> Arc<Slots<Option<MethodNames>, foldhash::fast::RandomState>> {
    Arc::new(
        Slots::with_hasher(
            [],
            crate::MAX_SPAN_NAMES,
            foldhash::fast::RandomState::default(),
        )
        .admission(AdmissionRule::for_side(side)),
    )
}
