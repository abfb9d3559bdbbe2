//! [`LimitBuilder`]: configuring a [`LimitLayer`], and what it refuses.

use std::{borrow::Cow, fmt, marker::PhantomData, sync::Arc, time::Duration};

use http::HeaderValue;
use metrics::Recorder;
use palisade_core::{
    Code, Matcher, MethodRegistry, PerMethod, Rejection,
    build::{BoxError, BuildLayer},
    headers::GRPC_RETRY_PUSHBACK_MS,
    side::OnSide,
    slots::{AdmissionRule, Slots},
};

use crate::{
    adaptive::GradientConfig,
    admission::{GateMaker, LimitAdmission, Methods, OVERFLOW, Scope},
    key::{DEFAULT_MAX_KEYS, Key, Keys},
    layer::LimitLayer,
    series::{self, Registrar},
};

/// The `grpc-message` of a refused call unless configured: short, and leaking nothing.
pub const DEFAULT_MESSAGE: &str = "too many requests in flight";

/// The `grpc-retry-pushback-ms` of a refused call unless configured: 50 ms.
pub const DEFAULT_PUSHBACK: Duration = Duration::from_millis(50);

/// The longest queue a gate may have: 65 536 waiting calls.
pub const MAX_QUEUE_LEN: usize = 65_536;

/// How many methods not known in advance may earn a gate of their own, per layer, when no
/// registry is given (as palisade-core's [`slots`](palisade_core::slots) admit them); the
/// others share the overflow gate.
pub const DEFAULT_MAX_METHODS: usize = 100;

/// Why a [`LimitBuilder`] refused to build: the configuration cannot work as written.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// No limit was given ([`max_in_flight`](LimitBuilder::max_in_flight) or
    /// [`per_method`](LimitBuilder::per_method)): the layer would limit nothing.
    NoLimit,
    /// A limit of 0: no call would ever get through.
    ZeroLimit,
    /// A queue of 0 places: leave [`queue`](LimitBuilder::queue) out instead.
    EmptyQueue,
    /// A queue longer than [`MAX_QUEUE_LEN`].
    QueueTooLong(usize),
    /// A queue whose calls may wait for nothing.
    ZeroMaxWait,
    /// A per-key limit keeping no key.
    ZeroMaxKeys,
    /// Adaptive settings that cannot work: a zero `min_concurrency` or `probe_samples`, an
    /// `initial_limit` outside `[min_concurrency, max_limit]`, a zero `window`, a
    /// `probe_interval` not longer than the window, a negative or non-finite `buffer`.
    Adaptive,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoLimit => {
                f.write_str("no limit given: add one with `.max_in_flight(n)` or `.per_method(..)`")
            }
            ConfigError::ZeroLimit => {
                f.write_str("an in-flight limit of 0 lets no call through: give at least 1")
            }
            ConfigError::EmptyQueue => {
                f.write_str("a queue of 0 places: leave `.queue(..)` out for no queue")
            }
            ConfigError::QueueTooLong(len) => {
                write!(f, "a queue of {len} places, at most {MAX_QUEUE_LEN}")
            }
            ConfigError::ZeroMaxWait => {
                f.write_str("a queue with a max wait of zero: give the wait a duration")
            }
            ConfigError::ZeroMaxKeys => f.write_str("a per-key limit of 0 keys: give at least 1"),
            ConfigError::Adaptive => f.write_str(
                "adaptive limit settings that cannot work: min_concurrency and probe_samples \
                 above 0, initial_limit within [min_concurrency, max_limit], a non-zero window \
                 shorter than probe_interval, a finite buffer of 0 or more",
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// An adaptive limit's settings that cannot work.
fn check_adaptive(config: &GradientConfig) -> Result<(), ConfigError> {
    let valid = config.min_concurrency > 0
        && config.min_concurrency <= config.max_limit
        && config.initial_limit >= config.min_concurrency
        && config.initial_limit <= config.max_limit
        && config.probe_samples > 0
        && !config.window.is_zero()
        && config.probe_interval > config.window
        && config.buffer.is_finite()
        && config.buffer >= 0.0;
    if valid {
        Ok(())
    } else {
        Err(ConfigError::Adaptive)
    }
}

/// The limit of a layer, before it is built.
#[derive(Clone, Debug)]
enum Limits {
    Whole(u32),
    Adaptive(GradientConfig),
    PerMethod(PerMethod<u32>),
    PerKey(Key, u32),
}

/// Builds a [`LimitLayer`] of side `K`: a `LimitBuilder<Server>` from [`LimitLayer::server`],
/// a `LimitBuilder<Client>` from [`LimitLayer::client`].
///
/// | setting | default |
/// |---|---|
/// | the limit: [`max_in_flight`](Self::max_in_flight) or [`per_method`](Self::per_method) | none (required) |
/// | [`queue`](Self::queue) | none: a call over the limit is refused at once |
/// | [`code`](Self::code) | `RESOURCE_EXHAUSTED` |
/// | [`message`](Self::message) | [`DEFAULT_MESSAGE`] |
/// | [`pushback`](Self::pushback) | [`DEFAULT_PUSHBACK`] (50 ms) |
/// | [`name`](Self::name) | `"default"`: the `limiter` label |
/// | [`skip`](Self::skip) | nothing skipped |
/// | [`registry`](Self::registry) | none |
/// | [`recorder`](Self::recorder) | the `metrics` facade's |
///
/// ```
/// use std::time::Duration;
/// use palisade_core::{Matcher, PerMethod};
/// use palisade_limit::{ConfigError, LimitLayer};
///
/// let layer = LimitLayer::server()
///     .name("greeter")
///     .per_method(
///         PerMethod::new()
///             .rule(Matcher::method("/demo.Greeter/SayHelloStream"), 8)
///             .default_value(64),
///     )
///     .queue(16, Duration::from_millis(100))
///     .skip(Matcher::health_and_reflection())
///     .build()?;
/// # let _ = layer;
/// assert_eq!(LimitLayer::server().max_in_flight(0).build().unwrap_err(), ConfigError::ZeroLimit);
/// # Ok::<(), ConfigError>(())
/// ```
#[must_use = "a builder does nothing until `.build()` makes the layer"]
#[derive(Clone)]
pub struct LimitBuilder<K> {
    name: Arc<str>,
    limits: Option<Limits>,
    queue: Option<(usize, Duration)>,
    max_keys: usize,
    code: Code,
    message: Cow<'static, str>,
    pushback: Duration,
    skip: Option<Matcher>,
    registry: Option<MethodRegistry>,
    recorder: Option<Arc<dyn Recorder + Send + Sync>>,
    _side: PhantomData<fn() -> K>,
}

impl<K: OnSide> LimitBuilder<K> {
    pub(crate) fn new() -> Self {
        Self {
            name: "default".into(),
            limits: None,
            queue: None,
            max_keys: DEFAULT_MAX_KEYS,
            code: Code::ResourceExhausted,
            message: Cow::Borrowed(DEFAULT_MESSAGE),
            pushback: DEFAULT_PUSHBACK,
            skip: None,
            registry: None,
            recorder: None,
            _side: PhantomData,
        }
    }

    /// The limiter's name: the `limiter` label of its series (`"default"` unless set). Per-method
    /// limits label each method's series `"{name}/{service}/{method}"`, and the bucket of the
    /// methods without one of their own `"{name}/other"`.
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.name = name.as_ref().into();
        self
    }

    /// One limit for the whole service (or client): at most `limit` calls in flight at once,
    /// whatever their method. Replaces [`per_method`](Self::per_method).
    pub fn max_in_flight(mut self, limit: u32) -> Self {
        self.limits = Some(Limits::Whole(limit));
        self
    }

    /// One limit for the whole service (or client), found from latency instead of set: Envoy's
    /// adaptive-concurrency gradient ([`Gradient`](crate::adaptive::Gradient)) — the limit
    /// follows `limit × no-load latency × (1 + buffer) / latency + √limit` every window, and
    /// the no-load latency is measured again every `probe_interval` by holding the limit at
    /// `min_concurrency` for `probe_samples` calls. Every call's latency from admission to the
    /// end of its response is a sample (cancelled calls are not). Replaces
    /// [`max_in_flight`](Self::max_in_flight); the `palisade_concurrency_limit` gauge shows the
    /// limit it finds.
    ///
    /// ```
    /// use palisade_limit::{LimitLayer, adaptive::GradientConfig};
    ///
    /// let layer = LimitLayer::server()
    ///     .name("greeter")
    ///     .adaptive(GradientConfig { max_limit: 500, ..GradientConfig::default() })
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn adaptive(mut self, config: GradientConfig) -> Self {
        self.limits = Some(Limits::Adaptive(config));
        self
    }

    /// A limit per method: each method the [`PerMethod`] gives a value has that many calls in
    /// flight at most, counted apart from the other methods'; a method it gives none is not
    /// limited. Replaces [`max_in_flight`](Self::max_in_flight).
    ///
    /// A method's count is kept in palisade-core's bounded [`Slots`]: with a
    /// [`registry`](Self::registry), the registry's methods only; without, up to
    /// [`DEFAULT_MAX_METHODS`] methods that earn it by being called repeatedly. The other
    /// methods share one count (the `"{name}/other"` series), each under its own limit.
    pub fn per_method(mut self, limits: PerMethod<u32>) -> Self {
        self.limits = Some(Limits::PerMethod(limits));
        self
    }

    /// A limit per key: each key (a metadata value, the peer IP, the verified subject; see
    /// [`Key`]) has `limit` calls in flight at most, counted apart from the other keys'.
    /// Replaces [`max_in_flight`](Self::max_in_flight) and [`per_method`](Self::per_method).
    ///
    /// At most [`max_keys`](Self::max_keys) keys have a count at once; a key with nothing in
    /// flight is dropped when room is needed. Calls without a key, and new keys while every
    /// count is busy, share one overflow count, under the same limit. Every key shares the
    /// limiter's series (`limiter` is the [`name`](Self::name)): no key is ever a label value.
    pub fn per_key(mut self, key: Key, limit: u32) -> Self {
        self.limits = Some(Limits::PerKey(key, limit));
        self
    }

    /// How many keys a [`per_key`](Self::per_key) limit keeps a count of at once (default
    /// [`DEFAULT_MAX_KEYS`]).
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Lets up to `max_len` calls over the limit wait for a place, first come first served,
    /// each at most `max_wait` or until its own deadline (`grpc-timeout`), whichever is
    /// sooner; then it is refused. A waiting call whose caller goes away leaves the queue.
    /// Each per-method count has a queue of its own.
    pub fn queue(mut self, max_len: usize, max_wait: Duration) -> Self {
        self.queue = Some((max_len, max_wait));
        self
    }

    /// The code of a refused call (default `RESOURCE_EXHAUSTED`).
    pub fn code(mut self, code: Code) -> Self {
        self.code = code;
        self
    }

    /// The `grpc-message` of a refused call (default [`DEFAULT_MESSAGE`]).
    pub fn message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.message = message.into();
        self
    }

    /// The `grpc-retry-pushback-ms` of a refused call: how long its caller should wait before
    /// trying again (default [`DEFAULT_PUSHBACK`]).
    pub fn pushback(mut self, pushback: Duration) -> Self {
        self.pushback = pushback;
        self
    }

    /// Calls of the methods `matcher` selects are never limited, counted or refused. Nothing
    /// is skipped by default; called twice, the matchers add up (either one skips).
    pub fn skip(mut self, matcher: Matcher) -> Self {
        self.skip = Some(match self.skip.take() {
            Some(skip) => skip.or(matcher),
            None => matcher,
        });
        self
    }

    /// The service's methods: with per-method limits, each has its count (and series) from the
    /// start, and no other path ever gets one of its own.
    pub fn registry(mut self, registry: MethodRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Registers the series with `recorder` instead of the `metrics` facade's.
    pub fn recorder(mut self, recorder: impl Recorder + Send + Sync + 'static) -> Self {
        self.recorder = Some(Arc::new(recorder));
        self
    }

    fn check(&self) -> Result<(), ConfigError> {
        match &self.limits {
            None => return Err(ConfigError::NoLimit),
            Some(Limits::Whole(0) | Limits::PerKey(_, 0)) => return Err(ConfigError::ZeroLimit),
            Some(Limits::Adaptive(config)) => check_adaptive(config)?,
            Some(Limits::PerKey(..)) if self.max_keys == 0 => {
                return Err(ConfigError::ZeroMaxKeys);
            }
            Some(Limits::PerMethod(limits)) if limits.iter().any(|&limit| limit == 0) => {
                return Err(ConfigError::ZeroLimit);
            }
            Some(_) => {}
        }
        match self.queue {
            Some((0, _)) => Err(ConfigError::EmptyQueue),
            Some((len, _)) if len > MAX_QUEUE_LEN => Err(ConfigError::QueueTooLong(len)),
            Some((_, wait)) if wait.is_zero() => Err(ConfigError::ZeroMaxWait),
            _ => Ok(()),
        }
    }

    /// The layer, or why this configuration cannot work.
    ///
    /// Its series are registered now: install the `metrics` recorder first, or give one with
    /// [`recorder`](Self::recorder).
    pub fn build(self) -> Result<LimitLayer<K>, ConfigError> {
        self.check()?;
        let registrar = Registrar::new(self.recorder);
        if registrar.is_unrecorded() {
            tracing::warn!(
                "palisade-limit: an in-flight limit was built while no `metrics` recorder is \
                 installed, so its series are no-ops and /metrics will never show them; \
                 install the recorder first and build the layer after it, or give it one with \
                 `.recorder(..)`"
            );
        }
        series::describe(&registrar);
        let maker = GateMaker {
            name: self.name.clone(),
            queue: self.queue,
            registrar,
            made: Default::default(),
        };
        let scope = match self.limits.expect("checked") {
            Limits::Whole(limit) => Scope::Whole(maker.gate(limit, &self.name)),
            Limits::Adaptive(config) => Scope::Whole(maker.adaptive_gate(config, &self.name)),
            Limits::PerKey(key, limit) => {
                let overflow = maker.gate(limit, &self.name);
                Scope::PerKey(Box::new(Keys {
                    key,
                    limit,
                    max_keys: self.max_keys,
                    queue: self.queue,
                    series: overflow.series().clone(),
                    overflow,
                    table: Default::default(),
                }))
            }
            Limits::PerMethod(limits) => {
                let most = limits.iter().copied().max().unwrap_or(1);
                let overflow = maker.gate(most, &format!("{}/{OVERFLOW}", self.name));
                let (known, max_dynamic) = match &self.registry {
                    Some(registry) => {
                        let known: Vec<_> = registry
                            .iter()
                            .map(|info| {
                                let path = format!("/{}/{}", info.service, info.method);
                                let gate = palisade_core::Method::parse(&path)
                                    .and_then(|method| maker.method_gate(&limits, &method));
                                (path, gate)
                            })
                            .collect();
                        (known, 0)
                    }
                    None => (Vec::new(), DEFAULT_MAX_METHODS),
                };
                let gates =
                    Slots::new(known, max_dynamic).admission(AdmissionRule::for_side(K::SIDE));
                Scope::PerMethod(Box::new(Methods {
                    limits,
                    gates,
                    overflow,
                    maker,
                }))
            }
        };
        let pushback =
            HeaderValue::from(u64::try_from(self.pushback.as_millis()).unwrap_or(u64::MAX));
        let rejection = Rejection::new(self.code, self.message)
            .by("limit")
            .with_metadata(GRPC_RETRY_PUSHBACK_MS, pushback);
        Ok(LimitLayer::new(
            LimitAdmission::new(scope, rejection),
            self.skip,
        ))
    }
}

impl<K: OnSide> fmt::Debug for LimitBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitBuilder")
            .field("side", &K::SIDE)
            .field("name", &self.name)
            .field("limits", &self.limits)
            .field("queue", &self.queue)
            .field("max_keys", &self.max_keys)
            .field("code", &self.code)
            .field("message", &self.message)
            .field("pushback", &self.pushback)
            .field("skip", &self.skip)
            .field("registry", &self.registry.as_ref().map(MethodRegistry::len))
            .field("recorder", &self.recorder.is_some())
            .finish()
    }
}

/// A builder fits a preset's slot of its own side: it takes the preset's registry unless it
/// has one, and is built with the preset.
impl<K: OnSide> BuildLayer<K> for LimitBuilder<K> {
    type Layer = LimitLayer<K>;
    const NAME: &'static str = "limit";

    fn use_registry(mut self, registry: &MethodRegistry) -> Self {
        if self.registry.is_none() {
            self.registry = Some(registry.clone());
        }
        self
    }

    fn build_layer(self) -> Result<LimitLayer<K>, BoxError> {
        Ok(self.build()?)
    }
}
