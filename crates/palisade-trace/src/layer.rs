//! The trace layer: configuration only.

use std::{fmt, sync::Arc};

use opentelemetry::{
    global::BoxedTracer,
    propagation::TextMapPropagator,
    trace::{Tracer, TracerProvider},
};
use palisade_core::{Matcher, MethodRegistry, ObserveLayer, Side, observe::Policy};
use tower_layer::Layer;

use crate::{
    config::{Capture, Config, Propagation, Registry, ServerAddress, TracerSlot, scope},
    policy::TracePolicy,
    service::TraceService,
};

/// Starts an OpenTelemetry span for every gRPC call and propagates its context — the server
/// or the client side, as [`TraceLayer::server`] and [`TraceLayer::client`] make it.
///
/// - **Server**: extracts the caller's context from the request metadata with the propagator,
///   starts a SERVER span named `package.Service/Method` as its child, and makes it current
///   while the handler runs (its future and every poll of its response stream).
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
/// propagates nothing: install one, or give one with [`TraceLayer::propagator`] — a layer
/// that finds the no-op default at its first call says so, once, in a `tracing` warning.
///
/// Spans are named after the request path; give the [method registry](TraceLayer::registry)
/// to bound the names to the methods served.
///
/// The layer holds configuration only; it is cheap to clone.
///
/// See the [crate docs](crate) for an example.
pub struct TraceLayer<T = BoxedTracer> {
    pub(crate) config: Arc<Config>,
    pub(crate) tracer: Arc<TracerSlot<T>>,
}

impl TraceLayer<BoxedTracer> {
    /// A layer for a server: extracts the incoming context, starts SERVER spans.
    pub fn server() -> Self {
        Self::with_side(Side::Server)
    }

    /// A layer for a client: starts CLIENT spans, injects their context.
    pub fn client() -> Self {
        Self::with_side(Side::Client)
    }

    /// A layer for the given side.
    pub fn with_side(side: Side) -> Self {
        Self {
            config: Arc::new(Config::new(side)),
            tracer: Arc::new(TracerSlot::global()),
        }
    }
}

impl<T> TraceLayer<T> {
    /// Starts spans with a tracer of this provider (with the instrumentation scope
    /// `palisade-trace`) instead of the global provider.
    ///
    /// With an SDK provider the spans are not boxed, the cheapest way to trace.
    pub fn tracer_provider<P>(self, provider: &P) -> TraceLayer<P::Tracer>
    where
        P: TracerProvider,
    {
        self.tracer(provider.tracer_with_scope(scope()))
    }

    /// Starts spans with this tracer.
    pub fn tracer<U: Tracer>(self, tracer: U) -> TraceLayer<U> {
        TraceLayer {
            config: self.config,
            tracer: Arc::new(TracerSlot::Given(tracer)),
        }
    }

    /// Reads and writes the context with this propagator instead of the global one — for
    /// example [`W3cPropagator`](crate::W3cPropagator), W3C trace context and baggage.
    ///
    /// A [`W3cPropagator`](crate::W3cPropagator), or the SDK's `TraceContextPropagator`, is
    /// read from and written to the metadata directly, by hand; any other propagator (a
    /// `TextMapCompositePropagator` among them, whatever it holds) through its own calls.
    #[must_use]
    pub fn propagator<P>(mut self, propagator: P) -> Self
    where
        P: TextMapPropagator + Send + Sync + 'static,
    {
        Arc::make_mut(&mut self.config).propagation = Propagation::given(propagator);
        self
    }

    /// Neither traces nor propagates the calls `matcher` selects — typically
    /// [`Matcher::health_and_reflection`].
    #[must_use]
    pub fn skip(mut self, matcher: Matcher) -> Self {
        Arc::make_mut(&mut self.config).skip = Some(matcher);
        self
    }

    /// Server side: treats every call as coming from an untrusted edge. The incoming context
    /// does not become the parent: each call starts a new root span *linked* to the incoming
    /// span (baggage is kept). Use it on servers facing callers whose trace ids and sampling
    /// decisions should not be trusted.
    #[must_use]
    pub fn public_endpoint(self) -> Self {
        self.public_endpoint_for(Matcher::any())
    }

    /// Server side: [`public_endpoint`](Self::public_endpoint) for the calls `matcher` selects
    /// only.
    #[must_use]
    pub fn public_endpoint_for(mut self, matcher: Matcher) -> Self {
        Arc::make_mut(&mut self.config).public = Some(matcher);
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
    ///
    /// ```
    /// use palisade_core::MethodRegistry;
    /// use palisade_trace::TraceLayer;
    ///
    /// let registry =
    ///     MethodRegistry::from_encoded_file_descriptor_set(palisade_demo::FILE_DESCRIPTOR_SET)
    ///         .unwrap();
    /// let layer = TraceLayer::server().registry(registry);
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn registry(mut self, registry: MethodRegistry) -> Self {
        Arc::make_mut(&mut self.config).registry = Some(Registry::new(registry));
        self
    }

    /// Records these request metadata keys on the span, each as a string array attribute
    /// `rpc.grpc.request.metadata.<key>` (lowercase), when the request carries them.
    ///
    /// Nothing else is ever recorded. `authorization`, `proxy-authorization`, `cookie` and
    /// `set-cookie` are never recorded even when listed, and names that are not valid metadata
    /// keys are ignored. Replaces any list given before.
    #[must_use]
    pub fn capture_metadata<I, N>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: AsRef<str>,
    {
        let captures: Vec<Capture> = names
            .into_iter()
            .filter_map(|name| Capture::new(name.as_ref()))
            .collect();
        Arc::make_mut(&mut self.config).metadata = captures.into();
        self
    }

    /// Client side: the `server.address` and `server.port` of the calls. Without it they are
    /// read from the request URI when it has an authority — which requests on a tonic
    /// `Channel` do not (the channel adds it inside), so set it for tonic clients.
    #[must_use]
    pub fn server_address(mut self, host: impl Into<String>, port: u16) -> Self {
        let host: Arc<str> = host.into().into();
        Arc::make_mut(&mut self.config).server = Some(ServerAddress {
            host: host.into(),
            port,
        });
        self
    }

    /// Which side this layer traces.
    pub fn side(&self) -> Side {
        self.config.side
    }
}

impl<T> Clone for TraceLayer<T> {
    fn clone(&self) -> Self {
        Self {
            config: Arc::clone(&self.config),
            tracer: Arc::clone(&self.tracer),
        }
    }
}

impl<T> fmt::Debug for TraceLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceLayer")
            .field("side", &self.config.side)
            .field("tracer", &self.tracer)
            .field("propagator", &self.config.propagation)
            .field("skip", &self.config.skip)
            .field("public_endpoint", &self.config.public)
            .field("metadata", &self.config.metadata)
            .field("server_address", &self.config.server)
            .field(
                "registry",
                &self.config.registry.as_ref().map(|r| r.methods.len()),
            )
            .finish()
    }
}

impl<T> TraceLayer<T> {
    /// palisade-core's observing layer with this configuration's [`TracePolicy`].
    fn observe_layer(
        &self,
    ) -> ObserveLayer<TracePolicy<T>, palisade_core::observe::UnchangedRequest>
    where
        TracePolicy<T>: Policy,
    {
        let policy = TracePolicy {
            config: Arc::clone(&self.config),
            tracer: Arc::clone(&self.tracer),
        };
        ObserveLayer::with_skip(policy, self.config.skip.clone()).map_request_body()
    }
}

impl<S, T> Layer<S> for TraceLayer<T>
where
    TracePolicy<T>: Policy,
{
    type Service = TraceService<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        self.observe_layer().layer(inner)
    }
}
