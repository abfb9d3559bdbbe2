//! The layer and its builder: configuration only.

use std::{fmt, marker::PhantomData, sync::Arc};

use http::HeaderName;
use palisade_core::{
    Code, Matcher, MethodRegistry, ObserveLayer,
    build::{BoxError, BuildLayer},
    observe::Policy,
    side::{Client, OnSide, Server},
};
use tower_layer::Layer;
use tracing::Level;

use crate::{
    config::Config,
    policy::{LoggedRequest, LoggingPolicy},
    service::Logging,
};

/// Renamed: the server side is palisade-core's [`Server`] marker.
#[deprecated(since = "0.2.0", note = "use `palisade_core::side::Server`")]
pub type ServerSide = Server;

/// Renamed: the client side is palisade-core's [`Client`] marker.
#[deprecated(since = "0.2.0", note = "use `palisade_core::side::Client`")]
pub type ClientSide = Client;

/// A [`Layer`] that writes one `tracing` event per RPC when it finishes, and opens a span per
/// RPC; see the [crate docs](crate) for the fields and an example.
///
/// Made by a [`LoggingBuilder`] — [`LoggingLayer::server`] or [`LoggingLayer::client`], then
/// [`build`](LoggingBuilder::build); every option lives on the builder and has a default that
/// follows go-grpc-middleware's logging interceptors. `K` is the side, palisade-core's
/// [`Server`] or [`Client`]. The layer is cheap to clone.
///
/// ```
/// use palisade_core::side::Server;
/// use palisade_logging::LoggingLayer;
///
/// let layer: LoggingLayer<Server> = LoggingLayer::server().build();
/// # let _ = layer;
/// ```
pub struct LoggingLayer<K: OnSide> {
    config: Arc<Config>,
    _side: PhantomData<fn() -> K>,
}

impl LoggingLayer<Server> {
    /// A builder of logging around a server's service, with go-grpc-middleware's server levels
    /// ([`default_server_level`](crate::default_server_level)).
    ///
    /// Its inner service receives request bodies wrapped in a
    /// [`RequestBody`](crate::RequestBody), which counts request messages
    /// (tonic's router and `Server::builder().layer(..)` accept any body).
    ///
    /// ```
    /// use palisade_core::Matcher;
    /// use palisade_logging::LoggingLayer;
    ///
    /// let layer = LoggingLayer::server()
    ///     .skip(Matcher::health_and_reflection())
    ///     .build();
    /// # let _ = layer;
    /// ```
    pub fn server() -> LoggingBuilder<Server> {
        LoggingBuilder::new()
    }
}

impl LoggingLayer<Client> {
    /// A builder of logging around a client's channel, with go-grpc-middleware's client levels
    /// ([`default_client_level`](crate::default_client_level)).
    ///
    /// Request bodies pass unchanged (a tonic `Channel` takes only its own body type), so a
    /// client's finish event counts response messages only.
    ///
    /// ```
    /// use palisade_logging::LoggingLayer;
    ///
    /// let layer = LoggingLayer::client().allow_metadata(["x-request-id"]).build();
    /// # let _ = layer;
    /// ```
    pub fn client() -> LoggingBuilder<Client> {
        LoggingBuilder::new()
    }
}

/// Configures a [`LoggingLayer`] for side `K`; made by [`LoggingLayer::server`] or
/// [`LoggingLayer::client`], finished by [`build`](Self::build).
///
/// ```
/// use palisade_core::{Matcher, MethodRegistry};
/// use palisade_logging::LoggingLayer;
///
/// let registry =
///     MethodRegistry::from_encoded_file_descriptor_set(palisade_demo::FILE_DESCRIPTOR_SET)
///         .unwrap();
/// let layer = LoggingLayer::server()
///     .registry(registry)
///     .skip(Matcher::health_and_reflection())
///     .sample_ok(10)
///     .build();
/// # let _ = layer;
/// ```
#[must_use = "a builder does nothing until `.build()` makes the layer"]
pub struct LoggingBuilder<K: OnSide> {
    config: Config,
    registry: Option<MethodRegistry>,
    _side: PhantomData<fn() -> K>,
}

impl<K: OnSide> LoggingBuilder<K> {
    fn new() -> Self {
        Self {
            config: Config::new(K::SIDE),
            registry: None,
            _side: PhantomData,
        }
    }

    /// The layer, with this configuration (and the registry's methods, when given one).
    pub fn build(self) -> LoggingLayer<K> {
        let mut config = self.config;
        if let Some(registry) = &self.registry {
            config.set_registry(registry);
        }
        LoggingLayer {
            config: Arc::new(config),
            _side: PhantomData,
        }
    }

    /// Replaces the level of the finish event for each code (evaluated once here, for the 17
    /// codes). The start event uses the level of `OK`.
    ///
    /// ```
    /// use palisade_core::Code;
    /// use palisade_logging::{LoggingLayer, default_server_level};
    /// use tracing::Level;
    ///
    /// // NotFound is expected here: log it at DEBUG, everything else as usual.
    /// let layer = LoggingLayer::server()
    ///     .levels(|code| match code {
    ///         Code::NotFound => Level::DEBUG,
    ///         code => default_server_level(code),
    ///     })
    ///     .build();
    /// # let _ = layer;
    /// ```
    pub fn levels(mut self, level: impl Fn(Code) -> Level) -> Self {
        self.config.set_levels(level);
        self
    }

    /// The level of the span opened for each RPC: by default `INFO` on a server (so the
    /// handler's events nest under it) and `DEBUG` on a client, the level of its `OK` event (a
    /// client's span holds only what its channel logs, and at `info` a successful client call
    /// writes nothing: its span would cost a call's formatting for nobody).
    ///
    /// ```
    /// use palisade_logging::LoggingLayer;
    /// use tracing::Level;
    ///
    /// // The client's span at INFO: what its channel logs at `info` nests under it.
    /// let layer = LoggingLayer::client().span_level(Level::INFO).build();
    /// # drop(layer);
    /// ```
    pub fn span_level(mut self, level: Level) -> Self {
        self.config.span_level = level;
        self
    }

    /// Also writes a `started call` event when each RPC starts (default: finish only).
    pub fn log_start(mut self, enabled: bool) -> Self {
        self.config.log_start = enabled;
        self
    }

    /// RPCs this matcher selects are neither logged nor given a span, such as
    /// [`Matcher::health_and_reflection`]. Nothing is skipped by default; called again, the
    /// matchers add up (an RPC either one selects is skipped).
    ///
    /// ```
    /// use palisade_core::Matcher;
    /// use palisade_logging::LoggingLayer;
    ///
    /// let layer = LoggingLayer::server()
    ///     .skip(Matcher::health_and_reflection())
    ///     .skip(Matcher::service("internal.Admin"))
    ///     .build();
    /// # let _ = layer;
    /// ```
    pub fn skip(mut self, matcher: Matcher) -> Self {
        let config = &mut self.config;
        config.skip = Some(match config.skip.take() {
            Some(skipped) => skipped.or(matcher),
            None => matcher,
        });
        self
    }

    /// Logs one in `n` successful (`OK`) calls; every other code is always logged. `0` and
    /// `1` log every call (the default). Counted across every service made by this layer.
    pub fn sample_ok(mut self, n: u64) -> Self {
        self.config.set_sample_ok(n);
        self
    }

    /// Logs these request metadata keys in `grpc.request.metadata` (case-insensitive; names
    /// that are not valid header names are ignored). `authorization`, `proxy-authorization`,
    /// `cookie`, `set-cookie` and the keys given to
    /// [`secret_metadata`](Self::secret_metadata) are never logged, even when allow-listed.
    pub fn allow_metadata<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.config.allow_metadata(header_names(names));
        self
    }

    /// Metadata keys that are never logged, whatever the allowlist says.
    pub fn secret_metadata<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.config.secret_metadata(header_names(names));
        self
    }

    /// Bounds `grpc.message`, `enduser.id` and each logged metadata value to this many bytes
    /// (cut on a character boundary, `…` appended); default 512.
    pub fn max_message_len(mut self, bytes: usize) -> Self {
        self.config.max_message_len = bytes;
        self
    }

    /// Writes each RPC's event as one JSON line straight into `writer` (a non-blocking
    /// [`LogWriter`](crate::writer::LogWriter)), formatted by this crate, instead of as a
    /// `tracing` event: the same fields with the same names, plus `timestamp`, `level` and
    /// `target`, as `tracing-subscriber`'s `fmt().json().flatten_event(true)` writes them —
    /// at a fraction of the cost (no field visitor, no allocation per field).
    ///
    /// The subscriber's filter still decides which lines are written (its level for this
    /// crate's target, such as `RUST_LOG=palisade_logging=warn`), and the RPC's span is still
    /// opened as usual, so the handler's own events nest under it.
    ///
    /// ```no_run
    /// use palisade_logging::{LoggingLayer, writer::non_blocking};
    ///
    /// let (writer, _guard) = non_blocking(std::io::stdout());
    /// tracing_subscriber::fmt().json().with_writer(writer.clone()).init();
    /// let layer = LoggingLayer::server().access_log(writer).build();
    /// # drop(layer);
    /// ```
    pub fn access_log(mut self, writer: crate::writer::LogWriter) -> Self {
        self.config.access_log = Some(writer);
        self
    }

    /// Logs `grpc.method_type` (`unary`, `client_stream`, `server_stream`, `bidi_stream`) for
    /// the methods the registry knows (applied at [`build`](Self::build); given again, the
    /// last one is kept).
    pub fn registry(mut self, registry: MethodRegistry) -> Self {
        self.registry = Some(registry);
        self
    }
}

fn header_names<I>(names: I) -> impl Iterator<Item = HeaderName>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    names
        .into_iter()
        .filter_map(|name| HeaderName::from_bytes(name.as_ref().as_bytes()).ok())
}

impl<K: OnSide> Clone for LoggingBuilder<K> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            registry: self.registry.clone(),
            _side: PhantomData,
        }
    }
}

impl<K: OnSide> fmt::Debug for LoggingBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoggingBuilder")
            .field("config", &self.config)
            .field("registry", &self.registry.as_ref().map(MethodRegistry::len))
            .finish()
    }
}

impl<K: OnSide> Clone for LoggingLayer<K> {
    fn clone(&self) -> Self {
        Self {
            config: Arc::clone(&self.config),
            _side: PhantomData,
        }
    }
}

impl<K: OnSide> fmt::Debug for LoggingLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoggingLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl<K: OnSide> LoggingLayer<K>
where
    LoggingPolicy<K>: Policy,
{
    /// palisade-core's observing layer with this configuration's [`LoggingPolicy`].
    fn observe_layer(&self) -> ObserveLayer<LoggingPolicy<K>, LoggedRequest> {
        let policy = LoggingPolicy::new(Arc::clone(&self.config));
        ObserveLayer::with_skip(policy, self.config.skip.clone()).map_request_body()
    }
}

impl<S, K: OnSide> Layer<S> for LoggingLayer<K>
where
    LoggingPolicy<K>: Policy,
{
    type Service = Logging<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        self.observe_layer().layer(inner)
    }
}

/// A preset's `logging` slot of side `K` takes the builder: it is given the preset's registry
/// unless it has one, and built.
///
/// ```
/// use palisade_core::{MethodRegistry, build::BuildLayer, side::Server};
/// use palisade_logging::LoggingLayer;
///
/// fn server_slot<P: BuildLayer<Server>>(part: P, registry: &MethodRegistry) -> P::Layer {
///     part.use_registry(registry).build_layer().unwrap()
/// }
/// let registry = MethodRegistry::default();
/// let _built_by_the_slot = server_slot(LoggingLayer::server(), &registry);
/// let _kept_as_it_is = server_slot(LoggingLayer::server().build(), &registry);
/// ```
///
/// A client's builder does not fit a server's slot:
///
/// ```compile_fail
/// use palisade_core::{build::BuildLayer, side::Server};
///
/// fn server_slot<P: BuildLayer<Server>>(_: P) {}
/// server_slot(palisade_logging::LoggingLayer::client());
/// ```
impl<K: OnSide> BuildLayer<K> for LoggingBuilder<K> {
    type Layer = LoggingLayer<K>;
    const NAME: &'static str = "logging";

    fn use_registry(mut self, registry: &MethodRegistry) -> Self {
        if self.registry.is_none() {
            self.registry = Some(registry.clone());
        }
        self
    }

    fn build_layer(self) -> Result<LoggingLayer<K>, BoxError> {
        Ok(self.build())
    }
}

/// A preset's `logging` slot of side `K` takes the built layer as it is (with its own
/// registry, if any).
impl<K: OnSide> BuildLayer<K> for LoggingLayer<K> {
    type Layer = LoggingLayer<K>;
    const NAME: &'static str = "logging";

    fn build_layer(self) -> Result<LoggingLayer<K>, BoxError> {
        Ok(self)
    }
}
