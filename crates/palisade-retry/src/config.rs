//! [`RetryBuilder`]: the retry layer's configuration, and [`ConfigError`], what it refuses.

use std::{fmt, sync::Arc, time::Duration};

use metrics::Recorder;
use palisade_core::{
    Matcher, MethodRegistry, PerMethod,
    build::{BoxError, BuildLayer},
    recorder::Registrar,
    side::Client,
};

use crate::{
    HedgePolicy, RetryBudget, RetryPolicy,
    body::Accounting,
    counters::Counters,
    layer::{RetryLayer, Shared},
    policy::Policy,
};

/// The most bytes of one call's request body kept for replay unless set: 256 KiB, as
/// grpc-go's per-call retry buffer.
pub const DEFAULT_MAX_BUFFER: usize = 256 * 1024;

/// The most bytes kept for replay by every call of one layer together unless set: 16 MiB,
/// as grpc-go's per-channel retry buffer.
pub const DEFAULT_MAX_BUFFER_TOTAL: usize = 16 * 1024 * 1024;

/// The longest server pushback obeyed unless set: a longer one ends the call with the
/// answer it came with rather than holding the call (as Envoy discards a rate-limit reset
/// header longer than its `max_interval`).
pub const DEFAULT_MAX_PUSHBACK: Duration = Duration::from_secs(30);

/// How many methods without a registry may get `palisade_retry_attempts_total` series of
/// their own (as the other layers bound theirs); 0 by default with a registry.
pub const DEFAULT_MAX_DYNAMIC_METHODS: usize = 100;

/// What [`RetryBuilder::build`] refuses: a configuration that could not act as written.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// No retry or hedging policy: the layer would do nothing.
    NoPolicy,
    /// `max_attempts` is 0 (1 means no retry).
    NoAttempts,
    /// `max_attempts` is above [`MAX_ATTEMPTS`](crate::MAX_ATTEMPTS).
    TooManyAttempts(u32),
    /// A backoff that A6 refuses.
    Backoff(&'static str),
    /// A set of codes that cannot be right.
    Codes(&'static str),
    /// Budget numbers outside A6's bounds.
    Budget(&'static str),
    /// A buffer limit of zero, or a per-call limit above the layer's.
    Buffer(&'static str),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoPolicy => f.write_str(
                "a retry layer needs a retry or hedging policy (`.retry(..)` or `.hedge(..)`)",
            ),
            ConfigError::NoAttempts => {
                f.write_str("max_attempts must be at least 1 (1: the first attempt only)")
            }
            ConfigError::TooManyAttempts(n) => write!(
                f,
                "max_attempts is {n}; at most {} are allowed (the gRPC retry design's bound)",
                crate::MAX_ATTEMPTS
            ),
            ConfigError::Backoff(what)
            | ConfigError::Codes(what)
            | ConfigError::Budget(what)
            | ConfigError::Buffer(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Configures a [`RetryLayer`]; from [`RetryLayer::client`], finished with
/// [`build`](Self::build).
#[must_use]
pub struct RetryBuilder {
    policies: PerMethod<Policy>,
    rules: usize,
    /// The first rule's policy, when its matcher is `Matcher::any()`.
    first_any: Option<Policy>,
    skip: Option<Matcher>,
    budget: Option<RetryBudget>,
    max_buffer: usize,
    max_buffer_total: usize,
    max_pushback: Duration,
    registry: Option<MethodRegistry>,
    max_dynamic_methods: Option<usize>,
    recorder: Option<Arc<dyn Recorder + Send + Sync>>,
}

impl RetryBuilder {
    pub(crate) fn new() -> Self {
        RetryBuilder {
            policies: PerMethod::new(),
            rules: 0,
            first_any: None,
            skip: None,
            budget: Some(RetryBudget::default_budget()),
            max_buffer: DEFAULT_MAX_BUFFER,
            max_buffer_total: DEFAULT_MAX_BUFFER_TOTAL,
            max_pushback: DEFAULT_MAX_PUSHBACK,
            registry: None,
            max_dynamic_methods: None,
            recorder: None,
        }
    }

    /// Retries the calls `matcher` selects with `policy`. Rules are tried in the order they
    /// were added (a method's first matching rule, retry or hedge, is its policy); methods no
    /// rule selects are sent once, as they are.
    pub fn retry(self, matcher: Matcher, policy: RetryPolicy) -> Self {
        self.rule(matcher, Policy::Retry(policy))
    }

    /// Hedges the calls `matcher` selects with `policy`; see [`retry`](Self::retry).
    pub fn hedge(self, matcher: Matcher, policy: HedgePolicy) -> Self {
        self.rule(matcher, Policy::Hedge(policy))
    }

    fn rule(mut self, matcher: Matcher, policy: Policy) -> Self {
        if self.rules == 0 && matcher.is_any() {
            self.first_any = Some(policy);
        }
        self.policies = self.policies.rule(matcher, policy);
        self.rules += 1;
        self
    }

    /// The budget every call of the layer shares; 10 tokens, 0.1 per success unless set.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// No budget: every failed call may make all its attempts — a dead backend then sees
    /// `max_attempts ×` the calls. For tests, or with a breaker inside that sheds them.
    pub fn no_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// The most bytes of one call's request body kept for replay
    /// ([`DEFAULT_MAX_BUFFER`] unless set); a larger body is sent once, unretried. Each frame
    /// counts 32 bytes besides its own, so a body of many tiny or empty frames is bounded too.
    pub fn max_buffer(mut self, bytes: usize) -> Self {
        self.max_buffer = bytes;
        self
    }

    /// The most bytes kept by every call of the layer together
    /// ([`DEFAULT_MAX_BUFFER_TOTAL`] unless set); past it, new calls are sent unretried.
    pub fn max_buffer_total(mut self, bytes: usize) -> Self {
        self.max_buffer_total = bytes;
        self
    }

    /// The longest server pushback obeyed ([`DEFAULT_MAX_PUSHBACK`] unless set).
    pub fn max_pushback(mut self, max: Duration) -> Self {
        self.max_pushback = max;
        self
    }

    /// RPCs sent once, as they are, whatever the policies say (nothing is skipped by
    /// default). Called again, the matchers add up.
    pub fn skip(mut self, matcher: Matcher) -> Self {
        self.skip = Some(match self.skip.take() {
            Some(skipped) => skipped.or(matcher),
            None => matcher,
        });
        self
    }

    /// The method registry: its methods get `palisade_retry_attempts_total` series of their
    /// own (made at zero when the layer is built); other paths are counted under
    /// `unknown`. Without one, up to [`max_dynamic_methods`](Self::max_dynamic_methods)
    /// methods earn series by being retried.
    pub fn registry(mut self, registry: MethodRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// How many methods not known in advance may earn series of their own:
    /// 0 with a registry, [`DEFAULT_MAX_DYNAMIC_METHODS`] otherwise.
    pub fn max_dynamic_methods(mut self, max: usize) -> Self {
        self.max_dynamic_methods = Some(max);
        self
    }

    /// Counts with this recorder instead of the `metrics` facade's.
    pub fn recorder<T: Recorder + Send + Sync + 'static>(mut self, recorder: Arc<T>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// The layer, or what is wrong with the configuration.
    pub fn build(self) -> Result<RetryLayer, ConfigError> {
        if self.rules == 0 {
            return Err(ConfigError::NoPolicy);
        }
        for policy in self.policies.iter() {
            policy.validate()?;
        }
        if self.max_buffer == 0 || self.max_buffer_total == 0 {
            return Err(ConfigError::Buffer(
                "max_buffer and max_buffer_total must be more than zero",
            ));
        }
        if self.max_buffer > self.max_buffer_total {
            return Err(ConfigError::Buffer(
                "max_buffer (one call) must not be above max_buffer_total (every call)",
            ));
        }
        let registry = self.registry.unwrap_or_default();
        let max_dynamic = self.max_dynamic_methods.unwrap_or(if registry.is_empty() {
            DEFAULT_MAX_DYNAMIC_METHODS
        } else {
            0
        });
        let known = registry
            .iter()
            .map(|info| (info.service.clone(), info.method.clone()));
        let counters = Counters::new(known, max_dynamic, Registrar::new(self.recorder));
        if counters.is_unrecorded() {
            tracing::warn!(
                "palisade-retry: a RetryLayer was built while no `metrics` recorder is \
                 installed, so palisade_retry_attempts_total is a no-op and /metrics will never \
                 show it; install the recorder first and build the layer after it, or give it \
                 one with `.recorder(..)`"
            );
        }
        Ok(RetryLayer::from_shared(Shared {
            for_every_call: self.first_any.filter(|_| self.skip.is_none()),
            policies: self.policies,
            skip: self.skip,
            budget: self.budget,
            accounting: Arc::new(Accounting::new(self.max_buffer, self.max_buffer_total)),
            max_pushback: self.max_pushback,
            counters,
        }))
    }
}

impl fmt::Debug for RetryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBuilder")
            .field("policies", &self.policies)
            .field("skip", &self.skip)
            .field("budget", &self.budget)
            .field("max_buffer", &self.max_buffer)
            .field("max_buffer_total", &self.max_buffer_total)
            .field("max_pushback", &self.max_pushback)
            .field("registry", &self.registry)
            .field("recorder", &self.recorder.is_some())
            .finish()
    }
}

/// A builder fits a preset's client slot: it takes the preset's registry if it has none.
impl BuildLayer<Client> for RetryBuilder {
    type Layer = RetryLayer;
    const NAME: &'static str = "retry";

    fn use_registry(mut self, registry: &MethodRegistry) -> Self {
        if self.registry.is_none() {
            self.registry = Some(registry.clone());
        }
        self
    }

    fn build_layer(self) -> Result<RetryLayer, BoxError> {
        Ok(self.build()?)
    }
}
