//! The trace layer and its builder: configuration only.

use std::{fmt, marker::PhantomData, sync::Arc};

use opentelemetry::{
    global::BoxedTracer,
    propagation::TextMapPropagator,
    trace::{Tracer, TracerProvider},
};
use palisade_core::{
    Matcher, MethodRegistry, ObserveLayer, Side,
    build::{BoxError, BuildLayer},
    observe::Policy,
    side::{Client, OnSide, Server},
};
use tower_layer::Layer;

use crate::{
    config::{Capture, Config, Propagation, Registry, ServerAddress, TracerSlot, scope},
    policy::TracePolicy,
    service::Trace,
};

/// Starts an OpenTelemetry span for every gRPC call and propagates its context — the server
/// or the client side (`K`, palisade-core's [`Server`] or [`Client`]), as the builders of
/// [`TraceLayer::server`] and [`TraceLayer::client`] make it.
///
/// - **Server**: extracts the caller's context from the request metadata with the propagator,
///   starts a SERVER span named `package.Service/Method` as its child (or, for the calls
///   [`new_root_for`](TraceBuilder::new_root_for) selects, as a new root linked to it), and
///   makes it current while the handler runs (its future and every poll of its response
///   stream).
/// - **Client**: starts a CLIENT span, a child of the current context (the handler's span
///   when called from inside a traced server), and injects its context into the outgoing
///   metadata.
///
/// Either way the span ends at the end of the stream — after the last message and the
/// trailers — with `rpc.grpc.status_code` and, for errors, an `Error` status: on a server only
/// for Unknown, DeadlineExceeded, Unimplemented, Internal, Unavailable and DataLoss
/// ([`CodeSet::SERVER_ERRORS`](palisade_core::CodeSet::SERVER_ERRORS)), on a client for any
/// code but OK.
///
/// By default the layer uses the global tracer provider (taken when the first call is traced)
/// and the global propagator (read on every call). OpenTelemetry's default global propagator
/// propagates nothing: install one, or give one with [`TraceBuilder::propagator`] — a layer
/// that finds the no-op default at its first call says so, once, in a `tracing` warning.
///
/// Spans are named after the request path; give the [method registry](TraceBuilder::registry)
/// to bound the names to the methods served.
///
/// The layer holds configuration only; it is cheap to clone. `T` is the tracer's type.
///
/// ```
/// use palisade_core::side::{Client, Server};
/// use palisade_trace::TraceLayer;
///
/// let server: TraceLayer<Server> = TraceLayer::server().build();
/// let client: TraceLayer<Client> = TraceLayer::client().build();
/// # let _ = (server, client);
/// ```
///
/// See the [crate docs](crate) for an example.
pub struct TraceLayer<K: OnSide, T = BoxedTracer> {
    pub(crate) config: Arc<Config>,
    pub(crate) tracer: Arc<TracerSlot<T>>,
    _side: PhantomData<fn() -> K>,
}

impl TraceLayer<Server> {
    /// A builder of a layer for a server: extracts the incoming context, starts SERVER spans.
    ///
    /// ```
    /// use palisade_core::Matcher;
    /// use palisade_trace::{TraceLayer, W3cPropagator};
    ///
    /// let layer = TraceLayer::server()
    ///     .propagator(W3cPropagator::new())
    ///     .skip(Matcher::health_and_reflection())
    ///     .build();
    /// # let _ = layer;
    /// ```
    pub fn server() -> TraceBuilder<Server> {
        TraceBuilder::new()
    }
}

impl TraceLayer<Client> {
    /// A builder of a layer for a client: starts CLIENT spans, injects their context.
    ///
    /// ```
    /// use palisade_trace::TraceLayer;
    ///
    /// let layer = TraceLayer::client()
    ///     .server_address("greeter.default.svc", 50051)
    ///     .build();
    /// # let _ = layer;
    /// ```
    pub fn client() -> TraceBuilder<Client> {
        TraceBuilder::new()
    }
}

impl<K: OnSide, T> TraceLayer<K, T> {
    /// Which side this layer traces (`K::SIDE`).
    pub fn side(&self) -> Side {
        K::SIDE
    }
}

/// Configures a [`TraceLayer`] for side `K` (with a tracer of type `T`); made by
/// [`TraceLayer::server`] or [`TraceLayer::client`], finished by [`build`](Self::build).
///
/// ```
/// use palisade_core::{Matcher, MethodRegistry};
/// use palisade_trace::{TraceLayer, W3cPropagator};
///
/// let registry =
///     MethodRegistry::from_encoded_file_descriptor_set(palisade_demo::FILE_DESCRIPTOR_SET)
///         .unwrap();
/// let layer = TraceLayer::server()
///     .propagator(W3cPropagator::new())
///     .registry(registry)
///     .skip(Matcher::health_and_reflection())
///     .build();
/// # let _ = layer;
/// ```
#[must_use = "a builder does nothing until `.build()` makes the layer"]
pub struct TraceBuilder<K: OnSide, T = BoxedTracer> {
    config: Config,
    tracer: Arc<TracerSlot<T>>,
    registry: Option<MethodRegistry>,
    _side: PhantomData<fn() -> K>,
}

impl<K: OnSide> TraceBuilder<K> {
    fn new() -> Self {
        Self {
            config: Config::new(K::SIDE),
            tracer: Arc::new(TracerSlot::global()),
            registry: None,
            _side: PhantomData,
        }
    }
}

impl<K: OnSide, T> TraceBuilder<K, T> {
    /// The layer, with this configuration (and the registry's span names, when given one).
    /// Each built layer has span-name slots of its own.
    pub fn build(self) -> TraceLayer<K, T> {
        let mut config = self.config;
        config.reset_caches();
        config.registry = self.registry.map(Registry::new);
        TraceLayer {
            config: Arc::new(config),
            tracer: self.tracer,
            _side: PhantomData,
        }
    }

    /// Starts spans with a tracer of this provider (with the instrumentation scope
    /// `palisade-trace`) instead of the global provider.
    ///
    /// With an SDK provider the spans are not boxed, the cheapest way to trace.
    pub fn tracer_provider<P>(self, provider: &P) -> TraceBuilder<K, P::Tracer>
    where
        P: TracerProvider,
    {
        self.tracer(provider.tracer_with_scope(scope()))
    }

    /// Starts spans with this tracer.
    pub fn tracer<U: Tracer>(self, tracer: U) -> TraceBuilder<K, U> {
        TraceBuilder {
            config: self.config,
            tracer: Arc::new(TracerSlot::Given(tracer)),
            registry: self.registry,
            _side: PhantomData,
        }
    }

    /// Reads and writes the context with this propagator instead of the global one — for
    /// example [`W3cPropagator`](crate::W3cPropagator), W3C trace context and baggage.
    ///
    /// A [`W3cPropagator`](crate::W3cPropagator), or the SDK's `TraceContextPropagator`, is
    /// read from and written to the metadata directly, by hand; any other propagator (a
    /// `TextMapCompositePropagator` among them, whatever it holds) through its own calls.
    pub fn propagator<P>(mut self, propagator: P) -> Self
    where
        P: TextMapPropagator + Send + Sync + 'static,
    {
        self.config.propagation = Propagation::given(propagator);
        self
    }

    /// Neither traces nor propagates the calls `matcher` selects — typically
    /// [`Matcher::health_and_reflection`]. Nothing is skipped by default; called again, the
    /// matchers add up (a call either one selects is skipped).
    pub fn skip(mut self, matcher: Matcher) -> Self {
        self.config.skip = Some(match self.config.skip.take() {
            Some(skipped) => skipped.or(matcher),
            None => matcher,
        });
        self
    }

    /// Names spans after the registry's methods only: a call of a method the registry does
    /// not have gets the fixed name `grpc`, and `rpc.service` / `rpc.method` = `_OTHER` (as
    /// OpenTelemetry's conventions bound unknown methods), so span names — and what span
    /// metrics derive from them — stay bounded whatever paths callers send.
    ///
    /// Without a registry at most [`MAX_SPAN_NAMES`](crate::MAX_SPAN_NAMES) methods name their
    /// spans (`package.Service/Method`): on a server a method earns its name by being called
    /// repeatedly, so random paths name none and a method's first few spans are named `grpc`;
    /// on a client a method names its spans from its first call. Give servers the registry.
    /// Applied at [`build`](Self::build); given again, the last one is kept.
    ///
    /// ```
    /// use palisade_core::MethodRegistry;
    /// use palisade_trace::TraceLayer;
    ///
    /// let registry =
    ///     MethodRegistry::from_encoded_file_descriptor_set(palisade_demo::FILE_DESCRIPTOR_SET)
    ///         .unwrap();
    /// let layer = TraceLayer::server().registry(registry).build();
    /// # let _ = layer;
    /// ```
    pub fn registry(mut self, registry: MethodRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Records these request metadata keys on the span, each as a string array attribute
    /// `rpc.grpc.request.metadata.<key>` (lowercase), when the request carries them.
    ///
    /// Nothing else is ever recorded. `authorization`, `proxy-authorization`, `cookie` and
    /// `set-cookie` are never recorded even when listed, and names that are not valid metadata
    /// keys are ignored. Replaces any list given before.
    pub fn capture_metadata<I, N>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: AsRef<str>,
    {
        let captures: Vec<Capture> = names
            .into_iter()
            .filter_map(|name| Capture::new(name.as_ref()))
            .collect();
        self.config.metadata = captures.into();
        self
    }
}

impl<T> TraceBuilder<Server, T> {
    /// The calls `matcher` selects are treated as coming from an untrusted edge: the incoming
    /// context does not become the parent; each such call starts a new root span *linked* to
    /// the incoming span (baggage is kept). Use it on servers facing callers whose trace ids
    /// and sampling decisions should not be trusted — for every call with
    /// [`Matcher::any`]. By default every call continues the incoming trace; called again,
    /// the matchers add up (a call either one selects starts a new root).
    ///
    /// ```
    /// use palisade_core::Matcher;
    /// use palisade_trace::TraceLayer;
    ///
    /// // A public edge: no caller's trace id becomes ours.
    /// let edge = TraceLayer::server().new_root_for(Matcher::any()).build();
    /// // Only one public service.
    /// let mixed = TraceLayer::server()
    ///     .new_root_for(Matcher::service("palisade.demo.v1.Greeter"))
    ///     .build();
    /// # let _ = (edge, mixed);
    /// ```
    pub fn new_root_for(mut self, matcher: Matcher) -> Self {
        self.config.new_root = Some(match self.config.new_root.take() {
            Some(selected) => selected.or(matcher),
            None => matcher,
        });
        self
    }
}

impl<T> TraceBuilder<Client, T> {
    /// The `server.address` and `server.port` of the calls. Without it they are read from the
    /// request URI when it has an authority — which requests on a tonic `Channel` do not (the
    /// channel adds it inside), so set it for tonic clients.
    pub fn server_address(mut self, host: impl Into<String>, port: u16) -> Self {
        let host: Arc<str> = host.into().into();
        self.config.server = Some(ServerAddress {
            host: host.into(),
            port,
        });
        self
    }
}

impl<K: OnSide, T> Clone for TraceBuilder<K, T> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            tracer: Arc::clone(&self.tracer),
            registry: self.registry.clone(),
            _side: PhantomData,
        }
    }
}

impl<K: OnSide, T> fmt::Debug for TraceBuilder<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_config(f, "TraceBuilder", &self.config, &self.tracer)
            .field("registry", &self.registry.as_ref().map(MethodRegistry::len))
            .finish()
    }
}

impl<K: OnSide, T> Clone for TraceLayer<K, T> {
    fn clone(&self) -> Self {
        Self {
            config: Arc::clone(&self.config),
            tracer: Arc::clone(&self.tracer),
            _side: PhantomData,
        }
    }
}

impl<K: OnSide, T> fmt::Debug for TraceLayer<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_config(f, "TraceLayer", &self.config, &self.tracer)
            .field(
                "registry",
                &self.config.registry.as_ref().map(|r| r.methods.len()),
            )
            .finish()
    }
}

fn debug_config<'a, 'b, T>(
    f: &'a mut fmt::Formatter<'b>,
    name: &str,
    config: &Config,
    tracer: &TracerSlot<T>,
) -> fmt::DebugStruct<'a, 'b> {
    let mut debug = f.debug_struct(name);
    debug
        .field("side", &config.side)
        .field("tracer", tracer)
        .field("propagator", &config.propagation)
        .field("skip", &config.skip)
        .field("new_root_for", &config.new_root)
        .field("metadata", &config.metadata)
        .field("server_address", &config.server);
    debug
}

impl<K: OnSide, T> TraceLayer<K, T> {
    /// palisade-core's observing layer with this configuration's [`TracePolicy`].
    fn observe_layer(
        &self,
    ) -> ObserveLayer<TracePolicy<K, T>, palisade_core::observe::UnchangedRequest>
    where
        TracePolicy<K, T>: Policy,
    {
        let policy = TracePolicy::new(Arc::clone(&self.config), Arc::clone(&self.tracer));
        ObserveLayer::with_skip(policy, self.config.skip.clone()).map_request_body()
    }
}

impl<S, K: OnSide, T> Layer<S> for TraceLayer<K, T>
where
    TracePolicy<K, T>: Policy,
{
    type Service = Trace<S, K, T>;

    fn layer(&self, inner: S) -> Self::Service {
        self.observe_layer().layer(inner)
    }
}

/// A preset's `trace` slot of side `K` takes the builder: it is given the preset's registry
/// unless it has one, and built.
///
/// ```
/// use palisade_core::{MethodRegistry, build::BuildLayer, side::Client};
/// use palisade_trace::TraceLayer;
///
/// fn client_slot<P: BuildLayer<Client>>(part: P, registry: &MethodRegistry) -> P::Layer {
///     part.use_registry(registry).build_layer().unwrap()
/// }
/// let registry = MethodRegistry::default();
/// let _built_by_the_slot = client_slot(TraceLayer::client(), &registry);
/// let _kept_as_it_is = client_slot(TraceLayer::client().build(), &registry);
/// ```
///
/// A server's builder does not fit a client's slot:
///
/// ```compile_fail
/// use palisade_core::{build::BuildLayer, side::Client};
///
/// fn client_slot<P: BuildLayer<Client>>(_: P) {}
/// client_slot(palisade_trace::TraceLayer::server());
/// ```
impl<K: OnSide, T> BuildLayer<K> for TraceBuilder<K, T> {
    type Layer = TraceLayer<K, T>;
    const NAME: &'static str = "trace";

    fn use_registry(mut self, registry: &MethodRegistry) -> Self {
        if self.registry.is_none() {
            self.registry = Some(registry.clone());
        }
        self
    }

    fn build_layer(self) -> Result<TraceLayer<K, T>, BoxError> {
        Ok(self.build())
    }
}

/// A preset's `trace` slot of side `K` takes the built layer as it is (with its own
/// registry, if any).
impl<K: OnSide, T> BuildLayer<K> for TraceLayer<K, T> {
    type Layer = TraceLayer<K, T>;
    const NAME: &'static str = "trace";

    fn build_layer(self) -> Result<TraceLayer<K, T>, BoxError> {
        Ok(self)
    }
}
