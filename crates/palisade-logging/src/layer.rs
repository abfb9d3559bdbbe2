//! The layer: configuration only.

use std::{fmt, marker::PhantomData, sync::Arc};

use http::HeaderName;
use palisade_core::{Code, Matcher, MethodRegistry, ObserveLayer, Side, observe::Policy};
use tower_layer::Layer;
use tracing::Level;

use crate::{
    config::Config,
    policy::{LoggedRequest, LoggingPolicy},
    service::Logging,
};

/// Marks a [`LoggingLayer`] and [`Logging`] around a server's service (see
/// [`LoggingLayer::server`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerSide;

/// Marks a [`LoggingLayer`] and [`Logging`] around a client's channel (see
/// [`LoggingLayer::client`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientSide;

/// A [`Layer`] that writes one `tracing` event per RPC when it finishes, and opens a span per
/// RPC; see the [crate docs](crate) for the fields and an example.
///
/// Made with [`LoggingLayer::server`] or [`LoggingLayer::client`]; every option has a default
/// that follows go-grpc-middleware's logging interceptors.
pub struct LoggingLayer<K = ServerSide> {
    config: Arc<Config>,
    _kind: PhantomData<fn() -> K>,
}

impl LoggingLayer<ServerSide> {
    /// Logging around a server's service, with go-grpc-middleware's server levels
    /// ([`default_server_level`](crate::default_server_level)).
    ///
    /// Its inner service receives request bodies wrapped in a
    /// [`RequestBody`](crate::RequestBody), which counts request messages
    /// (tonic's router and `Server::builder().layer(..)` accept any body).
    pub fn server() -> Self {
        Self::with_config(Config::new(Side::Server))
    }
}

impl LoggingLayer<ClientSide> {
    /// Logging around a client's channel, with go-grpc-middleware's client levels
    /// ([`default_client_level`](crate::default_client_level)).
    ///
    /// Request bodies pass unchanged (a tonic `Channel` takes only its own body type), so a
    /// client's finish event counts response messages only.
    pub fn client() -> Self {
        Self::with_config(Config::new(Side::Client))
    }
}

impl<K> LoggingLayer<K> {
    fn with_config(config: Config) -> Self {
        Self {
            config: Arc::new(config),
            _kind: PhantomData,
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
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
    /// let layer = LoggingLayer::server().levels(|code| match code {
    ///     Code::NotFound => Level::DEBUG,
    ///     code => default_server_level(code),
    /// });
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn levels(mut self, level: impl Fn(Code) -> Level) -> Self {
        self.config_mut().set_levels(level);
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
    /// let layer = LoggingLayer::client().span_level(Level::INFO);
    /// # drop(layer);
    /// ```
    #[must_use]
    pub fn span_level(mut self, level: Level) -> Self {
        self.config_mut().span_level = level;
        self
    }

    /// Also writes a `started call` event when each RPC starts (default: finish only).
    #[must_use]
    pub fn log_start(mut self, enabled: bool) -> Self {
        self.config_mut().log_start = enabled;
        self
    }

    /// RPCs this matcher selects are neither logged nor given a span, such as
    /// [`Matcher::health_and_reflection`].
    #[must_use]
    pub fn skip(mut self, matcher: Matcher) -> Self {
        self.config_mut().skip = Some(matcher);
        self
    }

    /// Logs one in `n` successful (`OK`) calls; every other code is always logged. `0` and
    /// `1` log every call (the default). Counted across every service made by this layer.
    #[must_use]
    pub fn sample_ok(mut self, n: u64) -> Self {
        self.config_mut().set_sample_ok(n);
        self
    }

    /// Logs these request metadata keys in `grpc.request.metadata` (case-insensitive; names
    /// that are not valid header names are ignored). `authorization`, `proxy-authorization`,
    /// `cookie`, `set-cookie` and the keys given to
    /// [`secret_metadata`](Self::secret_metadata) are never logged, even when allow-listed.
    #[must_use]
    pub fn allow_metadata<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.config_mut().allow_metadata(header_names(names));
        self
    }

    /// Metadata keys that are never logged, whatever the allowlist says.
    #[must_use]
    pub fn secret_metadata<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.config_mut().secret_metadata(header_names(names));
        self
    }

    /// Bounds `grpc.message`, `enduser.id` and each logged metadata value to this many bytes
    /// (cut on a character boundary, `…` appended); default 512.
    #[must_use]
    pub fn max_message_len(mut self, bytes: usize) -> Self {
        self.config_mut().max_message_len = bytes;
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
    /// let layer = LoggingLayer::server().access_log(writer);
    /// # drop(layer);
    /// ```
    #[must_use]
    pub fn access_log(mut self, writer: crate::writer::LogWriter) -> Self {
        self.config_mut().access_log = Some(writer);
        self
    }

    /// Logs `grpc.method_type` (`unary`, `client_stream`, `server_stream`, `bidi_stream`) for
    /// the methods the registry knows.
    #[must_use]
    pub fn method_registry(mut self, registry: MethodRegistry) -> Self {
        self.config_mut().set_registry(&registry);
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

impl<K> Clone for LoggingLayer<K> {
    fn clone(&self) -> Self {
        Self {
            config: Arc::clone(&self.config),
            _kind: PhantomData,
        }
    }
}

impl<K> fmt::Debug for LoggingLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoggingLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl<K> LoggingLayer<K>
where
    LoggingPolicy<K>: Policy,
{
    /// palisade-core's observing layer with this configuration's [`LoggingPolicy`].
    fn observe_layer(&self) -> ObserveLayer<LoggingPolicy<K>, LoggedRequest> {
        let policy = LoggingPolicy::new(Arc::clone(&self.config));
        ObserveLayer::with_skip(policy, self.config.skip.clone()).map_request_body()
    }
}

impl<S, K> Layer<S> for LoggingLayer<K>
where
    LoggingPolicy<K>: Policy,
{
    type Service = Logging<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        self.observe_layer().layer(inner)
    }
}
