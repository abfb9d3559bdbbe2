//! The builders of the server and client layers.

use std::{borrow::Cow, fmt, sync::Arc, time::Duration};

use metrics::Recorder;
use palisade_core::{Code, Matcher, MethodRegistry, Rejection, Side};

use crate::{
    backend::{Backend, Limiter, LimiterSpec, Local},
    client::{ClientRateLimitLayer, Pushbacks},
    layer::RateLimitLayer,
    limit::Limit,
    mode::Metered,
    series::{MethodTable, Registrar},
    shared::{LimitState, Plans, RateLimitHeaders, Shared},
};

/// The rejection message unless configured: short, and leaking nothing.
pub const DEFAULT_MESSAGE: &str = "rate limit exceeded";

/// How long a client call waits for its tokens at most, unless configured (its own deadline
/// may be shorter).
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(1);

/// Why a builder refused to build: the configuration cannot work as written.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// No [`limit`](RateLimitBuilder::limit) was given: the layer would limit nothing.
    NoLimit,
    /// More limits than the layer counts (65 535).
    TooManyLimits(usize),
    /// A limit with more per-method quotas than the layer counts (65 535).
    TooManyRules(usize),
    /// A [per-message](Limit::per_message) limit in a layer that does not meter bodies: build
    /// it with [`build_metered`](RateLimitBuilder::build_metered) (a server); a client limits
    /// calls only.
    PerMessageNeedsMetered,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoLimit => f.write_str(
                "no limit given: add one with `.limit(Limit::global(..))` (or `per_key`, `per_method`)",
            ),
            ConfigError::TooManyLimits(n) => write!(f, "{n} limits given, at most 65535"),
            ConfigError::TooManyRules(n) => {
                write!(f, "a limit has {n} per-method quotas, at most 65535")
            }
            ConfigError::PerMessageNeedsMetered => f.write_str(
                "a per-message limit needs metered bodies: build a server layer with \
                 `build_metered()`; a client layer limits calls only",
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// What both builders configure.
#[derive(Clone)]
pub(crate) struct Common {
    limits: Vec<Limit>,
    skip: Matcher,
    code: Code,
    message: Cow<'static, str>,
    shadow: bool,
    backend: Arc<dyn Backend>,
    registry: Option<MethodRegistry>,
    max_dynamic: Option<usize>,
    recorder: Option<Arc<dyn Recorder + Send + Sync>>,
}

impl Common {
    /// What a disabled layer runs on: no limit, so every call passes; its counters (of no
    /// method: there is no registry) go to a no-op recorder, and nothing is described.
    pub(crate) fn disabled(side: Side) -> Arc<Shared> {
        let mut common = Self::new();
        common.recorder = Some(Arc::new(metrics::NoopRecorder));
        common.build(side, RateLimitHeaders::default(), Duration::ZERO, false)
    }

    fn new() -> Self {
        Self {
            limits: Vec::new(),
            skip: Matcher::none(),
            code: Code::ResourceExhausted,
            message: Cow::Borrowed(DEFAULT_MESSAGE),
            shadow: false,
            backend: Arc::new(Local::new()),
            registry: None,
            max_dynamic: None,
            recorder: None,
        }
    }

    /// Refuses what cannot work, before anything is made.
    fn check(&self, metered: bool) -> Result<(), ConfigError> {
        if self.limits.is_empty() {
            return Err(ConfigError::NoLimit);
        }
        if self.limits.len() > usize::from(u16::MAX) {
            return Err(ConfigError::TooManyLimits(self.limits.len()));
        }
        if let Some(limit) = self
            .limits
            .iter()
            .find(|limit| limit.quotas.iter().count() > usize::from(u16::MAX))
        {
            return Err(ConfigError::TooManyRules(limit.quotas.iter().count()));
        }
        if !metered && self.limits.iter().any(|limit| limit.per_message) {
            return Err(ConfigError::PerMessageNeedsMetered);
        }
        Ok(())
    }

    fn build(
        self,
        side: Side,
        headers: RateLimitHeaders,
        max_wait: Duration,
        pushback: bool,
    ) -> Arc<Shared> {
        let registrar = Registrar::new(self.recorder);
        if self.limits.is_empty() {
            // Disabled: nothing to count or to describe.
        } else if registrar.is_unrecorded() {
            // The handles registered now are no-ops for good: say it once, here.
            tracing::warn!(
                "palisade-ratelimit: a rate-limit layer was built while no `metrics` recorder \
                 is installed, so its series are no-ops and /metrics will never show them; \
                 install the recorder first and build the layer after it, or give it one with \
                 `.recorder(..)`"
            );
        }
        if !self.limits.is_empty() {
            crate::series::describe(&registrar);
        }
        let limits: Box<[LimitState]> = self
            .limits
            .into_iter()
            .enumerate()
            .map(|(index, limit)| {
                let keyed = limit.keyed();
                let name = limit
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("limit{index}"));
                let limiters: Box<[Arc<dyn Limiter>]> = limit
                    .quotas
                    .iter()
                    .enumerate()
                    .map(|(rule, quota)| {
                        self.backend.limiter(&LimiterSpec::new(
                            *quota,
                            keyed,
                            format!("{name}/{rule}"),
                        ))
                    })
                    .collect();
                LimitState {
                    quotas: limit.quotas,
                    only: limit.only,
                    by_method: limit.by_method,
                    key: limit.key,
                    no_key: limit.no_key,
                    per_message: limit.per_message,
                    limiters,
                }
            })
            .collect();
        let table = MethodTable::new(
            &Plans {
                limits: &limits,
                skip: &self.skip,
                side,
            },
            registrar,
            side,
            self.registry.as_ref(),
            self.max_dynamic,
        );
        Arc::new(Shared {
            side,
            limits,
            skip: self.skip,
            table,
            template: Rejection::new(self.code, self.message.clone()).by("ratelimit"),
            message: self.message,
            headers,
            shadow: self.shadow,
            max_wait,
            pushback: pushback.then(Pushbacks::new),
        })
    }
}

impl fmt::Debug for Common {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Common")
            .field("limits", &self.limits)
            .field("skip", &self.skip)
            .field("code", &self.code)
            .field("message", &self.message)
            .field("shadow", &self.shadow)
            .field("backend", &self.backend)
            .field("registry", &self.registry)
            .field("max_dynamic", &self.max_dynamic)
            .finish_non_exhaustive()
    }
}

macro_rules! common_methods {
    () => {
        /// Adds a limit; a call draws a token from every limit that applies to it, in the
        /// order they were added (see [`Limit`]).
        #[must_use]
        pub fn limit(mut self, limit: Limit) -> Self {
            self.common.limits.push(limit);
            self
        }

        /// Calls this matcher selects are neither limited nor counted, such as
        /// [`Matcher::health_and_reflection`] (default: none skipped). Called again, the
        /// matchers add up: a call either one selects is skipped.
        #[must_use]
        pub fn skip(mut self, matcher: Matcher) -> Self {
            self.common.skip =
                std::mem::replace(&mut self.common.skip, Matcher::none()).or(matcher);
            self
        }

        /// The code of rejections (default `RESOURCE_EXHAUSTED`; Envoy answers `UNAVAILABLE`).
        #[must_use]
        pub fn code(mut self, code: Code) -> Self {
            self.common.code = code;
            self
        }

        /// The message of rejections (default [`DEFAULT_MESSAGE`]).
        #[must_use]
        pub fn message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
            self.common.message = message.into();
            self
        }

        /// Shadow mode: every call is decided and counted, none is rejected (nor kept waiting,
        /// nor cut) — to roll a limit out and watch `palisade_ratelimit_rejected_total` first.
        #[must_use]
        pub fn shadow(mut self, shadow: bool) -> Self {
            self.common.shadow = shadow;
            self
        }

        /// Where the buckets live (default: a fresh [`Local`] backend, buckets in this
        /// process).
        #[must_use]
        pub fn backend(mut self, backend: impl Backend) -> Self {
            self.common.backend = Arc::new(backend);
            self
        }

        /// The methods served (or called), with their types: they give `grpc_type`, and their
        /// limits and counters are ready at build; only they get label values of their own
        /// unless [`max_dynamic_methods`](Self::max_dynamic_methods) says otherwise.
        #[must_use]
        pub fn registry(mut self, registry: MethodRegistry) -> Self {
            self.common.registry = Some(registry);
            self
        }

        /// How many methods that are not in the registry may earn label values (and a cached
        /// plan) of their own, by being called repeatedly (see [`palisade_core::slots`]: a flood
        /// of one-off random paths earns none); the others are counted under
        /// `grpc_service="unknown"`, `grpc_method="unknown"` (their limits still apply). On a
        /// server exposed to untrusted callers, give the layer the registry. Default:
        /// 0 with a registry, [`DEFAULT_MAX_DYNAMIC_METHODS`](crate::DEFAULT_MAX_DYNAMIC_METHODS)
        /// without; at most [`MAX_DYNAMIC_METHODS`](crate::MAX_DYNAMIC_METHODS) (their slots are
        /// made at build).
        #[must_use]
        pub fn max_dynamic_methods(mut self, max: usize) -> Self {
            self.common.max_dynamic = Some(max);
            self
        }

        /// The registry, unless one was given (a preset's, handed to every slot).
        pub(crate) fn registry_if_none(mut self, registry: &MethodRegistry) -> Self {
            if self.common.registry.is_none() {
                self.common.registry = Some(registry.clone());
            }
            self
        }

        /// Registers the counters with this recorder instead of the `metrics` facade's.
        #[must_use]
        pub fn recorder<R: Recorder + Send + Sync + 'static>(mut self, recorder: Arc<R>) -> Self {
            self.common.recorder = Some(recorder);
            self
        }
    };
}

/// Configures a [`RateLimitLayer`] (server); made by [`RateLimitLayer::server`].
///
/// Building makes the buckets (with the backend) and registers the counters of the
/// registry's methods (with the recorder of the moment): build inside the runtime whose time
/// the buckets should follow, after installing the recorder.
///
/// # Example
///
/// ```
/// use std::num::NonZeroU32;
/// use palisade_core::{Code, Matcher};
/// use palisade_ratelimit::{Key, Limit, Quota, RateLimitHeaders, RateLimitLayer};
///
/// let layer = RateLimitLayer::server()
///     .limit(Limit::per_key(Key::peer_ip(), Quota::per_second(NonZeroU32::new(5).unwrap())))
///     .code(Code::Unavailable)
///     .message("slow down")
///     .headers(RateLimitHeaders::OnRejection)
///     .skip(Matcher::health_and_reflection())
///     .skip(Matcher::service("admin.v1.Admin"))
///     .shadow(true)
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct RateLimitBuilder {
    common: Common,
    headers: RateLimitHeaders,
}

impl RateLimitBuilder {
    pub(crate) fn new() -> Self {
        Self {
            common: Common::new(),
            headers: RateLimitHeaders::default(),
        }
    }

    common_methods!();

    /// Whether responses carry `x-ratelimit-limit`, `-remaining` and `-reset` (default: no).
    #[must_use]
    pub fn headers(mut self, headers: RateLimitHeaders) -> Self {
        self.headers = headers;
        self
    }

    /// Makes the layer, which passes bodies untouched.
    ///
    /// # Errors
    ///
    /// [`ConfigError`]: no limit was given, too many, or a limit is
    /// [per message](Limit::per_message) — those need the bodies wrapped, by
    /// [`build_metered`](Self::build_metered).
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
        self.common.check(false)?;
        Ok(RateLimitLayer::from_shared(self.common.build(
            Side::Server,
            self.headers,
            Duration::ZERO,
            false,
        )))
    }

    /// Makes a layer in [`Metered`] mode: request and response bodies wrapped, so that
    /// [per-message limits](Limit::per_message) take a token per received message and end a
    /// stream that runs out with the rejection. Calls without per-message limits cost a little
    /// more than with [`build`](Self::build) (the bodies' wrapping), nothing else.
    ///
    /// # Errors
    ///
    /// [`ConfigError`]: no limit was given, or too many.
    pub fn build_metered(self) -> Result<RateLimitLayer<Metered>, ConfigError> {
        self.common.check(true)?;
        Ok(RateLimitLayer::from_shared(self.common.build(
            Side::Server,
            self.headers,
            Duration::ZERO,
            false,
        )))
    }
}

/// Configures a [`ClientRateLimitLayer`]; made by [`RateLimitLayer::client`].
///
/// # Example
///
/// ```
/// use std::{num::NonZeroU32, time::Duration};
/// use palisade_ratelimit::{Limit, Quota, RateLimitLayer};
///
/// let layer = RateLimitLayer::client()
///     .limit(Limit::global(Quota::per_second(NonZeroU32::new(100).unwrap())))
///     .max_wait(Duration::from_millis(200))
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct ClientRateLimitBuilder {
    common: Common,
    max_wait: Duration,
    pushback: bool,
}

impl ClientRateLimitBuilder {
    pub(crate) fn new() -> Self {
        Self {
            common: Common::new(),
            max_wait: DEFAULT_MAX_WAIT,
            pushback: true,
        }
    }

    common_methods!();

    /// The longest a call waits for its tokens (default [`DEFAULT_MAX_WAIT`]); a call whose
    /// `grpc-timeout` is shorter waits less. `Duration::ZERO` fails over-quota calls at once.
    #[must_use]
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Whether a server's pushback holds later calls (default: yes). A trailers-only error
    /// response carrying `grpc-retry-pushback-ms` (a non-negative integer; capped at a
    /// minute) holds the later calls of the same method, on which this layer has limits, for
    /// that long: each waits until then — within the maximum wait and its deadline — or fails
    /// at once with the layer's rejection, unsent. `false`: calls go as their own tokens allow.
    ///
    /// A hold's scope is the method and, when this layer's limits on it are keyed, the call's
    /// key values: with [`Limit::per_key`](crate::Limit::per_key) on
    /// [`Key::metadata("x-api-key")`](crate::Key::metadata), a pushback to one API key's call
    /// holds only that key's later calls of the method — a gateway relaying many end users'
    /// keys holds only the one whose quota ran out. With unkeyed limits it holds every call of
    /// the method through this layer, whoever it is for; give each upstream channel its own
    /// layer so that one server's pushback does not hold calls to another. See
    /// [`ClientRateLimitLayer`] for the rest.
    #[must_use]
    pub fn pushback(mut self, honour: bool) -> Self {
        self.pushback = honour;
        self
    }

    /// Makes the layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError`]: no limit was given, too many, or a limit is
    /// [per message](Limit::per_message) (a client limits calls, not messages).
    pub fn build(self) -> Result<ClientRateLimitLayer, ConfigError> {
        self.common.check(false)?;
        Ok(ClientRateLimitLayer::from_shared(self.common.build(
            Side::Client,
            RateLimitHeaders::Off,
            self.max_wait,
            self.pushback,
        )))
    }
}
