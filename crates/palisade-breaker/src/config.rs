//! Configuring a [`BreakerLayer`]: policy, backoff, what fails, probes, keys, hook.

use std::{borrow::Cow, fmt, marker::PhantomData, sync::Arc, time::Duration};

use palisade_core::{
    CodeSet, Matcher, MethodRegistry, Outcome,
    build::{BoxError, BuildLayer},
    side::OnSide,
};

use crate::{
    circuit::{Settings, Shared},
    classify::{Classifier, DEFAULT_FAILURE_CODES, Rules, Verdict},
    hook::OnStateChange,
    layer::BreakerLayer,
    policy::{Backoff, Policy},
    registry::{KeyBy, Registry, RequestHead},
};

/// Builds a [`BreakerLayer`] of side `K`: a `BreakerBuilder<Server>` from
/// [`BreakerLayer::server`], a `BreakerBuilder<Client>` from [`BreakerLayer::client`]; `H` is the
/// hook ([`on_state_change`](BreakerBuilder::on_state_change)). Every setting has a default:
///
/// | setting | default |
/// |---|---|
/// | [`policy`](BreakerBuilder::policy) | 5 failures in a row, or ≥ 50 % of ≥ 20 calls in 10 s |
/// | [`backoff`](BreakerBuilder::backoff) | exponential, 5 s to 60 s |
/// | [`failure_codes`](BreakerBuilder::failure_codes) | [`DEFAULT_FAILURE_CODES`], and transport errors |
/// | [`slow_call`](BreakerBuilder::slow_call) | off |
/// | [`half_open_probes`](BreakerBuilder::half_open_probes) | 1 |
/// | [`successes_to_close`](BreakerBuilder::successes_to_close) | 1 |
/// | [`half_open_max_wait`](BreakerBuilder::half_open_max_wait) | [`DEFAULT_HALF_OPEN_MAX_WAIT`] (30 s) |
/// | key | one circuit, named by [`name`](BreakerBuilder::name) (`"default"`) |
/// | [`registry`](BreakerBuilder::registry) | none: every method is counted |
/// | [`max_breakers`](BreakerBuilder::max_breakers) | 1024 |
/// | [`min_deadline_failure`](BreakerBuilder::min_deadline_failure) | the slow-call threshold, else [`DEFAULT_MIN_DEADLINE_FAILURE`](crate::DEFAULT_MIN_DEADLINE_FAILURE) (1 s) |
/// | [`ignore_request_decode_errors`](BreakerBuilder::ignore_request_decode_errors) | `true` |
/// | [`skip`](BreakerBuilder::skip) | nothing skipped |
/// | [`on_state_change`](BreakerBuilder::on_state_change) | `()` |
///
/// The side, in the type, decides the code an error without a gRPC status reads as
/// (`Unavailable` on a client, `Unknown` on a server), the `grpc.component` of log lines, and —
/// on a server — that outcomes the caller caused are ignored: its own short deadline passing
/// (see [`min_deadline_failure`](BreakerBuilder::min_deadline_failure)), and tonic's
/// `INTERNAL` answer to a request body that does not decode (see
/// [`ignore_request_decode_errors`](BreakerBuilder::ignore_request_decode_errors)).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_breaker::{Backoff, BreakerLayer};
/// use palisade_core::{Code, CodeSet, Matcher};
///
/// let layer = BreakerLayer::client()
///     .per_method()
///     .consecutive_failures(3)
///     .backoff(Backoff::exponential(Duration::from_secs(1), Duration::from_secs(30)))
///     .failure_codes(CodeSet::of(&[Code::Unavailable, Code::Internal]))
///     .slow_call(Duration::from_secs(2))
///     .half_open_probes(2)
///     .skip(Matcher::health_and_reflection())
///     .build();
/// # let _ = layer;
/// ```
#[must_use = "a builder does nothing until `.build()` makes the layer"]
#[derive(Clone)]
pub struct BreakerBuilder<K, H = ()> {
    name: Arc<str>,
    policy: Policy,
    backoff: Backoff,
    rules: Rules,
    probes: u32,
    successes: u32,
    half_open_max_wait: Duration,
    key: KeyBy,
    skip: Option<Matcher>,
    registry: Option<MethodRegistry>,
    max_breakers: usize,
    hook: H,
    _side: PhantomData<fn() -> K>,
}

/// The builder's name before the side went into its type.
#[deprecated(since = "0.2.0", note = "renamed to `BreakerBuilder`")]
pub type Builder<K, H = ()> = BreakerBuilder<K, H>;

/// How long a half-open circuit waits for its probes by default: 30 s.
pub const DEFAULT_HALF_OPEN_MAX_WAIT: Duration = Duration::from_secs(30);

impl<K: OnSide> BreakerBuilder<K> {
    /// The defaults above.
    pub(crate) fn new() -> Self {
        BreakerBuilder {
            name: "default".into(),
            policy: Policy::default(),
            backoff: Backoff::default(),
            rules: Rules::default(),
            probes: 1,
            successes: 1,
            half_open_max_wait: DEFAULT_HALF_OPEN_MAX_WAIT,
            key: KeyBy::Single,
            skip: None,
            registry: None,
            max_breakers: 1024,
            hook: (),
            _side: PhantomData,
        }
    }
}

impl<K: OnSide, H> BreakerBuilder<K, H> {
    /// The name of the layer's single circuit: the `breaker` label of its metrics, its log
    /// lines and hook calls (usually the backend: `"greeter"`, `"billing"`). Keyed layers name
    /// each circuit by its key instead.
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.name = name.as_ref().into();
        self
    }

    /// When a circuit opens; see [`Policy`].
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Shorthand for `policy(Policy::consecutive_failures(failures))`.
    ///
    /// # Panics
    ///
    /// When `failures` is 0.
    pub fn consecutive_failures(self, failures: u32) -> Self {
        self.policy(Policy::consecutive_failures(failures))
    }

    /// Shorthand for `policy(Policy::failure_rate(failure_rate, min_calls, window))`.
    ///
    /// # Panics
    ///
    /// As [`Policy::failure_rate`].
    pub fn failure_rate(self, failure_rate: f64, min_calls: u32, window: Duration) -> Self {
        self.policy(Policy::failure_rate(failure_rate, min_calls, window))
    }

    /// How long a circuit stays open; see [`Backoff`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The codes that count as failures (default [`DEFAULT_FAILURE_CODES`]); every other code
    /// is a success. Replaces a [`classify`](BreakerBuilder::classify) closure.
    pub fn failure_codes(mut self, failures: CodeSet) -> Self {
        let transport = match self.rules.classifier {
            Classifier::Codes { transport, .. } => transport,
            Classifier::Fn(_) => true,
        };
        self.rules.classifier = Classifier::Codes {
            failures,
            transport,
        };
        self
    }

    /// Whether an error of the inner service (a transport error, a local timeout below the
    /// layer) or of the response body counts as a failure whatever its code (default `true`).
    /// Replaces a [`classify`](BreakerBuilder::classify) closure.
    pub fn transport_errors_are_failures(mut self, yes: bool) -> Self {
        let failures = match self.rules.classifier {
            Classifier::Codes { failures, .. } => failures,
            Classifier::Fn(_) => DEFAULT_FAILURE_CODES,
        };
        self.rules.classifier = Classifier::Codes {
            failures,
            transport: yes,
        };
        self
    }

    /// Decides each call's [`Verdict`] from its [`Outcome`] instead of the code set.
    ///
    /// The closure sees every real end of the RPC, inner service errors included
    /// (`outcome.source()` is `ServiceError`). A caller's cancellation never reaches it — it
    /// is always [`Verdict::Ignore`] — unless, on a client, the call's `grpc-timeout` had
    /// passed, which reaches it as `DeadlineExceeded`. Rejections made by Palisade layers in
    /// this process ([`Outcome::is_local`]) and, on a server, outcomes the caller caused
    /// never reach it either: they are always ignored.
    ///
    /// ```
    /// use palisade_breaker::{BreakerLayer, Verdict};
    /// use palisade_core::{Code, Outcome};
    ///
    /// let layer = BreakerLayer::client()
    ///     .classify(|outcome: &Outcome| match outcome.code() {
    ///         Code::Unavailable | Code::Internal => Verdict::Failure,
    ///         Code::ResourceExhausted => Verdict::Ignore, // their quota, not their health
    ///         _ => Verdict::Success,
    ///     })
    ///     .build();
    /// # let _ = layer;
    /// ```
    pub fn classify<F>(mut self, classify: F) -> Self
    where
        F: Fn(&Outcome) -> Verdict + Send + Sync + 'static,
    {
        self.rules.classifier = Classifier::Fn(Arc::new(classify));
        self
    }

    /// A call that succeeds but takes longer than `threshold` (to the end of its stream)
    /// counts as a failure. Reads the clock at the start and end of every call.
    pub fn slow_call(mut self, threshold: Duration) -> Self {
        self.rules.slow_call = Some(threshold);
        self
    }

    /// How many probe calls may be in flight while half-open (default 1); others are
    /// rejected like calls on an open circuit.
    ///
    /// # Panics
    ///
    /// When `probes` is 0.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        assert!(probes > 0, "half_open_probes needs at least 1 probe");
        self.probes = probes;
        self
    }

    /// How many probes must succeed, with none failing, to close the circuit (default 1).
    ///
    /// # Panics
    ///
    /// When `successes` is 0.
    pub fn successes_to_close(mut self, successes: u32) -> Self {
        assert!(successes > 0, "successes_to_close needs at least 1 success");
        self.successes = successes;
        self
    }

    /// The longest a half-open circuit waits for its probes (default
    /// [`DEFAULT_HALF_OPEN_MAX_WAIT`], as Resilience4j's `maxWaitDurationInHalfOpenState`).
    /// Checked when a call finds the probe slots taken; then the circuit decides from the
    /// probes still running:
    ///
    /// - a probe whose response has started (its headers came, not trailers-only: a healthy
    ///   long-lived stream) shows the backend answering, and counts as a successful probe:
    ///   with [`successes_to_close`](Self::successes_to_close) reached the circuit closes,
    ///   else a new half-open period admits new probes, the successes so far kept;
    /// - with none answering (a hung call without a deadline), the wait counts as a failed
    ///   probe: the circuit opens again for its next backoff.
    ///
    /// Either way the stuck probes' own outcomes, when they come, are dropped.
    /// `Duration::MAX` waits for ever.
    pub fn half_open_max_wait(mut self, max_wait: Duration) -> Self {
        self.half_open_max_wait = max_wait;
        self
    }

    /// On a server: how long a call must have run for its caller's deadline passing to count
    /// as the server's failure (default: the [`slow_call`](Self::slow_call) threshold if set,
    /// else [`DEFAULT_MIN_DEADLINE_FAILURE`](crate::DEFAULT_MIN_DEADLINE_FAILURE), 1 s).
    ///
    /// A call whose caller sent a `grpc-timeout` and that ends by it — tonic drops the call
    /// when the deadline passes, or the handler answers `DEADLINE_EXCEEDED` after passing
    /// the deadline on to its own calls — is a failure (`DeadlineExceeded`) when it ran at
    /// least this long: a hung dependency still opens the circuit, though every caller has a
    /// deadline. A shorter call is ignored: any caller can send a 1 ms deadline. So a hung
    /// dependency opens the circuit only through callers whose deadlines are at least this
    /// long. `DEADLINE_EXCEEDED` without a caller's deadline is the server's own, and counts
    /// as the failure codes say. A client ignores this setting: there, a call dropped after
    /// its deadline is always a timeout.
    pub fn min_deadline_failure(mut self, min: Duration) -> Self {
        self.rules.min_deadline_failure = Some(min);
        self
    }

    /// On a server: whether tonic's `INTERNAL` answers to a request body that does not
    /// decode are ignored (default `true`). They are recognised by tonic's messages ("failed
    /// to decode Protobuf message…", framing and decompression errors) on a trailers-only
    /// answer with no response message, which is how tonic answers a unary request it cannot
    /// decode, before the handler runs.
    ///
    /// The false negative: a handler that passes on, with `?` and before sending any
    /// message, an upstream's reply that did not decode (tonic's client reports it with the
    /// same message) is ignored too. Turn this off when that matters more than callers
    /// being able to send bytes that do not decode.
    pub fn ignore_request_decode_errors(mut self, yes: bool) -> Self {
        self.rules.ignore_request_decode_errors = yes;
        self
    }

    /// One circuit per gRPC method, named `package.Service/Method`. Paths that are not gRPC
    /// methods share the [`OVERFLOW_BREAKER`](crate::OVERFLOW_BREAKER) circuit.
    pub fn per_method(mut self) -> Self {
        self.key = KeyBy::Method;
        self
    }

    /// One circuit per endpoint: the request's `:authority` (its URI authority, else its
    /// `host` header). A tonic `Channel` sets the authority inside itself, below any layer, so
    /// on a client put the layer on each endpoint's channel, or use [`per_key`](Self::per_key).
    pub fn per_authority(mut self) -> Self {
        self.key = KeyBy::Authority;
        self
    }

    /// One circuit per key of your own, read from the request; calls without a key share the
    /// [`OVERFLOW_BREAKER`](crate::OVERFLOW_BREAKER) circuit.
    ///
    /// ```
    /// use std::borrow::Cow;
    /// use palisade_breaker::BreakerLayer;
    ///
    /// // One circuit per tenant.
    /// let layer = BreakerLayer::client()
    ///     .per_key(|head| {
    ///         let tenant = head.headers().get("x-tenant")?.to_str().ok()?;
    ///         Some(Cow::Borrowed(tenant))
    ///     })
    ///     .build();
    /// # let _ = layer;
    /// ```
    pub fn per_key<F>(mut self, key: F) -> Self
    where
        F: for<'a> Fn(&RequestHead<'a>) -> Option<Cow<'a, str>> + Send + Sync + 'static,
    {
        self.key = KeyBy::Custom(Arc::new(key));
        self
    }

    /// The methods the service has (a [`MethodRegistry`], from the same descriptors as
    /// reflection). Calls of any other method go through uncounted and never rejected — the
    /// inner service answers them (tonic: `UNIMPLEMENTED`) — and, with
    /// [`per_method`](Self::per_method), every known method has a circuit of its own from the
    /// start, whatever [`max_breakers`](Self::max_breakers) says, and no other path gets one.
    /// Recommended on a server that untrusted callers reach.
    ///
    /// ```
    /// use palisade_breaker::BreakerLayer;
    /// use palisade_core::MethodRegistry;
    ///
    /// let registry =
    ///     MethodRegistry::from_encoded_file_descriptor_set(palisade_demo::FILE_DESCRIPTOR_SET)
    ///         .unwrap();
    /// let layer = BreakerLayer::server()
    ///     .per_method()
    ///     .registry(registry)
    ///     .build();
    /// # let _ = layer;
    /// ```
    pub fn registry(mut self, registry: MethodRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// At most this many keyed circuits are ever made (default 1024), and so at most this
    /// many `breaker` label values (plus the [`OVERFLOW_BREAKER`](crate::OVERFLOW_BREAKER)
    /// one), whatever paths, authorities or keys callers send. A circuit is never taken back
    /// (its series, once exported, cannot be), nor evicted.
    ///
    /// A key does not get a circuit on first sight: it earns one by frequency admission
    /// (palisade-core's [`Slots`](palisade_core::slots::Slots)): once seen
    /// [`ADMISSION_THRESHOLD`](palisade_core::slots::ADMISSION_THRESHOLD) times (8) while the
    /// counts of recent sightings decay, and while there is room. A key in steady use earns
    /// its circuit within its first few calls, even during a flood of random keys; keys
    /// seen once or twice (a scan, an attacker) never do, so they cannot take the room
    /// before the real ones come. Until then, and for every key once the room is taken, calls
    /// share the [`OVERFLOW_BREAKER`](crate::OVERFLOW_BREAKER) circuit: guarded, but
    /// together. Keys longer than 256 bytes always do. Keys made by a
    /// [`registry`](Self::registry)'s methods are not bounded by it.
    pub fn max_breakers(mut self, max: usize) -> Self {
        self.max_breakers = max;
        self
    }

    /// Calls the matcher selects bypass the breaker: never rejected, never counted (for
    /// example `Matcher::health_and_reflection()`); by default no call is skipped. Called
    /// again, the matchers add up: a call either one selects is skipped.
    pub fn skip(mut self, matcher: Matcher) -> Self {
        self.skip = Some(match self.skip.take() {
            Some(skipped) => skipped.or(matcher),
            None => matcher,
        });
        self
    }

    /// Told of every state change; see [`OnStateChange`].
    pub fn on_state_change<H2>(self, hook: H2) -> BreakerBuilder<K, H2> {
        BreakerBuilder {
            name: self.name,
            policy: self.policy,
            backoff: self.backoff,
            rules: self.rules,
            probes: self.probes,
            successes: self.successes,
            half_open_max_wait: self.half_open_max_wait,
            key: self.key,
            skip: self.skip,
            registry: self.registry,
            max_breakers: self.max_breakers,
            hook,
            _side: PhantomData,
        }
    }

    /// The layer. Every service it makes shares its circuits.
    pub fn build(self) -> BreakerLayer<K, H>
    where
        H: OnStateChange,
    {
        let side = K::SIDE;
        if !palisade_core::recorder::installed() {
            // Circuits register their gauges and counters as they are made: with no recorder
            // now, the first ones (the layer's own, the registry's) are no-ops for good.
            tracing::warn!(
                "palisade-breaker: a BreakerLayer was built while no `metrics` recorder is \
                 installed, so its palisade_breaker_* series are no-ops and /metrics will never \
                 show them; install the recorder first and build the layer after it"
            );
        }
        let shared = Shared {
            settings: Settings {
                policy: self.policy,
                backoff: self.backoff,
                rules: Rules { side, ..self.rules },
                probes: self.probes,
                successes: self.successes,
                half_open_max_wait: self.half_open_max_wait,
                side,
            },
            hook: self.hook,
        };
        let registry = Registry::new(
            shared,
            self.name,
            self.key,
            self.registry,
            self.max_breakers,
        );
        BreakerLayer::new_with(registry, self.skip)
    }
}

impl<K: OnSide, H> fmt::Debug for BreakerBuilder<K, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerBuilder")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .field("backoff", &self.backoff)
            .field("rules", &self.rules)
            .field("probes", &self.probes)
            .field("successes", &self.successes)
            .field("half_open_max_wait", &self.half_open_max_wait)
            .field("side", &K::SIDE)
            .field("key", &self.key)
            .field("skip", &self.skip)
            .field("registry", &self.registry)
            .field("max_breakers", &self.max_breakers)
            .finish_non_exhaustive()
    }
}

/// A builder fits a preset's slot of its own side: it takes the preset's registry if it was
/// given none, and is built there.
impl<K: OnSide, H: OnStateChange> BuildLayer<K> for BreakerBuilder<K, H> {
    type Layer = BreakerLayer<K, H>;
    const NAME: &'static str = "breaker";

    fn use_registry(mut self, registry: &MethodRegistry) -> Self {
        if self.registry.is_none() {
            self.registry = Some(registry.clone());
        }
        self
    }

    fn build_layer(self) -> Result<BreakerLayer<K, H>, BoxError> {
        Ok(self.build())
    }
}
