//! The layer and its builder: configuration only.

use std::{fmt, marker::PhantomData, sync::Arc, time::Duration};

use palisade_core::{
    PerMethod,
    build::{BoxError, BuildLayer},
    matcher::Matcher,
    side::{Client, OnSide, Server},
};
use tower_layer::Layer;

use crate::{ConfigError, Timeout};

/// The margin a client takes off the deadline it sends by default: 5 ms.
pub const DEFAULT_MARGIN: Duration = Duration::from_millis(5);

/// What a built layer holds, shared by its services.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) max: Option<Duration>,
    pub(crate) default: Option<Duration>,
    pub(crate) per_method: Option<PerMethod<Duration>>,
    pub(crate) margin: Duration,
    pub(crate) skip: Option<Matcher>,
}

impl Config {
    /// A client's default timeout for a method: its per-method rule, else the default.
    pub(crate) fn default_for(&self, path: &str) -> Option<Duration> {
        match &self.per_method {
            Some(per_method) => {
                let method = palisade_core::Method::parse(path);
                per_method.get(method.as_ref()).copied().or(self.default)
            }
            None => self.default,
        }
    }
}

/// Enforces deadlines (server) or sends and enforces them (client): a tower layer making
/// [`Timeout`] services; see the [crate docs](crate).
///
/// Built with [`DeadlineLayer::server`] or [`DeadlineLayer::client`] and
/// [`DeadlineBuilder::build`]; cloning it shares the configuration.
pub struct DeadlineLayer<K> {
    pub(crate) config: Arc<Config>,
    _side: PhantomData<K>,
}

impl DeadlineLayer<Server> {
    /// A server layer's builder: enforces the caller's `grpc-timeout`, capped by
    /// [`max`](DeadlineBuilder::max), or the [`default`](DeadlineBuilder::default) when the
    /// caller sent none.
    pub fn server() -> DeadlineBuilder<Server> {
        DeadlineBuilder::new()
    }
}

impl DeadlineLayer<Client> {
    /// A client layer's builder: sends the smallest of the request's own `grpc-timeout`, the
    /// method's default and the current deadline, less the
    /// [`margin`](DeadlineBuilder::margin), and enforces it locally.
    pub fn client() -> DeadlineBuilder<Client> {
        DeadlineBuilder::new()
    }
}

impl<K> DeadlineLayer<K> {
    /// The cap on a caller's deadline (server).
    pub fn max(&self) -> Option<Duration> {
        self.config.max
    }

    /// The deadline of a call that has none of its own (the client's default when no
    /// per-method rule matches).
    pub fn default_timeout(&self) -> Option<Duration> {
        self.config.default
    }

    /// The margin a client takes off the deadline it sends.
    pub fn margin(&self) -> Duration {
        self.config.margin
    }
}

impl<K> Clone for DeadlineLayer<K> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            _side: PhantomData,
        }
    }
}

impl<K: OnSide> fmt::Debug for DeadlineLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineLayer")
            .field("side", &K::SIDE)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, K> Layer<S> for DeadlineLayer<K> {
    type Service = Timeout<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner, self.clone())
    }
}

/// Configures a [`DeadlineLayer`] for side `K`; made by [`DeadlineLayer::server`] or
/// [`DeadlineLayer::client`].
#[must_use]
pub struct DeadlineBuilder<K> {
    max: Option<Duration>,
    default: Option<Duration>,
    per_method: Option<PerMethod<Duration>>,
    margin: Duration,
    skip: Option<Matcher>,
    _side: PhantomData<K>,
}

impl<K> DeadlineBuilder<K> {
    fn new() -> Self {
        Self {
            max: None,
            default: None,
            per_method: None,
            margin: DEFAULT_MARGIN,
            skip: None,
            _side: PhantomData,
        }
    }

    /// The deadline of a call that brings none: on a server, a caller that sent no
    /// `grpc-timeout`; on a client, a request with none, no inherited deadline and no
    /// per-method rule that matches. Not zero.
    pub fn default(mut self, timeout: Duration) -> Self {
        self.default = Some(timeout);
        self
    }

    /// Leaves the calls `matcher` selects alone: no deadline enforced, read or sent. Nothing
    /// is skipped by default; calling `skip` again adds to what is skipped (either matcher
    /// skips).
    pub fn skip(mut self, matcher: Matcher) -> Self {
        self.skip = Some(match self.skip.take() {
            Some(skip) => skip.or(matcher),
            None => matcher,
        });
        self
    }

    /// Builds the layer, or says what is wrong: a zero `max`, `default` or per-method
    /// timeout, or a `default` over the `max`.
    pub fn build(self) -> Result<DeadlineLayer<K>, ConfigError> {
        if self.max == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroMax);
        }
        if self.default == Some(Duration::ZERO)
            || self
                .per_method
                .as_ref()
                .is_some_and(|rules| rules.iter().any(Duration::is_zero))
        {
            return Err(ConfigError::ZeroDefault);
        }
        if let (Some(default), Some(max)) = (self.default, self.max)
            && default > max
        {
            return Err(ConfigError::DefaultOverMax { default, max });
        }
        Ok(DeadlineLayer {
            config: Arc::new(Config {
                max: self.max,
                default: self.default,
                per_method: self.per_method,
                margin: self.margin,
                skip: self.skip,
            }),
            _side: PhantomData,
        })
    }
}

impl DeadlineBuilder<Server> {
    /// The longest deadline a call gets: a caller's longer `grpc-timeout` is cut to this.
    /// Not zero, and not under the [`default`](Self::default).
    pub fn max(mut self, max: Duration) -> Self {
        self.max = Some(max);
        self
    }
}

impl DeadlineBuilder<Client> {
    /// Per-method defaults, tried before [`default`](Self::default) (the first matching rule,
    /// then `per_method`'s own default value, then `default`). Replaces earlier rules.
    pub fn per_method(mut self, timeouts: PerMethod<Duration>) -> Self {
        self.per_method = Some(timeouts);
        self
    }

    /// Taken off the deadline the client sends and enforces (never below zero), so the
    /// handler making the call still has this long to answer its own caller. Default
    /// [`DEFAULT_MARGIN`], 5 ms.
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }
}

impl<K> Clone for DeadlineBuilder<K> {
    fn clone(&self) -> Self {
        Self {
            max: self.max,
            default: self.default,
            per_method: self.per_method.clone(),
            margin: self.margin,
            skip: self.skip.clone(),
            _side: PhantomData,
        }
    }
}

impl<K: OnSide> fmt::Debug for DeadlineBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineBuilder")
            .field("side", &K::SIDE)
            .field("max", &self.max)
            .field("default", &self.default)
            .field("per_method", &self.per_method)
            .field("margin", &self.margin)
            .field("skip", &self.skip)
            .finish()
    }
}

impl BuildLayer<Server> for DeadlineBuilder<Server> {
    type Layer = DeadlineLayer<Server>;
    const NAME: &'static str = "deadline";

    fn build_layer(self) -> Result<Self::Layer, BoxError> {
        Ok(self.build()?)
    }
}

impl BuildLayer<Client> for DeadlineBuilder<Client> {
    type Layer = DeadlineLayer<Client>;
    const NAME: &'static str = "deadline";

    fn build_layer(self) -> Result<Self::Layer, BoxError> {
        Ok(self.build()?)
    }
}

impl<K: OnSide> BuildLayer<K> for DeadlineLayer<K> {
    type Layer = Self;
    const NAME: &'static str = "deadline";

    fn build_layer(self) -> Result<Self, BoxError> {
        Ok(self)
    }
}
