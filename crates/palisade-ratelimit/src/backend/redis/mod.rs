//! The Redis backend: one quota shared by every instance, on the Redis server's clock.

use std::{fmt, num::NonZeroU32, sync::Arc, sync::atomic::Ordering, time::Duration};

use ::redis::{
    Client, IntoConnectionInfo, RedisError,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use super::{Backend, Limiter, LimiterSpec, Local};
use crate::quota::Quota;

mod health;
mod keys;
mod limiter;

pub use health::{BACKEND_ERRORS_TOTAL, BACKEND_FALLBACK_TOTAL, BACKEND_UP};

use health::Health;
use limiter::{Leases, RedisLimiter, Rule, RuleFallback};

pub use limiter::MAX_LEASED_BUCKETS;

/// How long a call waits for Redis, unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5);

/// How long calls go to the fallback after Redis failed, before one call probes it again,
/// unless configured.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// How many failed round trips in a row send the calls to the fallback, unless configured.
pub const DEFAULT_TRIP_AFTER: u32 = 3;

/// How long connecting to Redis may take (in the background: calls never wait that long),
/// unless configured.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The start of every key name, unless configured.
pub const DEFAULT_PREFIX: &str = "palisade:rl:";

/// A backend keeping the buckets in Redis, so that every instance using the same Redis (and
/// the same limit names) draws from one quota: three replicas with a limit of 100/s let
/// 100/s through together, not 300/s. Behind the `redis` feature.
///
/// - **One atomic script per call.** Each bucket is a GCRA state — one number, the bucket's
///   theoretical arrival time — updated by a Lua script (`EVALSHA`, loaded again by itself when
///   Redis lost it), so instances never race on a read-modify-write. The script reads the
///   **Redis server's clock** (`TIME`): instances whose clocks disagree still share one
///   timeline. The arithmetic is governor's, so a bucket lets through exactly `burst + rate ×
///   t` calls over a window `t`, whichever instances they come through.
/// - **Keys** are `{prefix}{limit name}/{rule}` followed by `|{method}` when the limit splits
///   by method and `#{key}` when it splits by key — `palisade:rl:per-ip/0#203.0.113.7` — or,
///   when the method or key is long (a method over 128 bytes, a key over 64) or not printable
///   ASCII, `~` and 128 bits of their SHA-256 in hex. [`hash_keys`](RedisBuilder::hash_keys) hashes every key (for key
///   values that are secrets, such as API keys). Name your limits with
///   [`Limit::named`](crate::Limit::named): instances share buckets by name, and the default
///   names (`limit0`, `limit1`, …) follow the order limits are added in. A key expires when its
///   bucket would be full again, so idle keys vanish from Redis by themselves.
/// - **It never stalls a call on Redis.** Each round trip has a deadline (default
///   [`DEFAULT_TIMEOUT`], 5 ms). A call whose round trip fails is decided by the
///   [`Fallback`]; after [`trip_after`](RedisBuilder::trip_after) failures in a row (default 3),
///   every call goes to the fallback at once, without trying Redis, for the
///   [`retry_interval`](RedisBuilder::retry_interval) (default 500 ms); then one call at a time
///   probes Redis, and the first that gets an answer sends the calls back to it (a probe whose
///   call goes away first — its deadline, a reset stream — gives its turn back: the next
///   probe goes one retry interval later). No thundering retries: while Redis is down, one
///   round trip per retry interval goes to it.
/// - **Fallback**: [`Fallback::Local`] (the default) decides on local buckets (governor, as
///   the [`Local`] backend) holding this instance's `share` of each quota — set it to
///   `1 / instances` ([`Fallback::local_for_instances`]) so that the instances together stay
///   near the quota while Redis is away; [`Fallback::Deny`] fails closed (calls are rejected
///   with the layer's code, and a pushback of the retry interval); [`Fallback::Allow`] fails
///   open without limit, as Envoy's global rate limit does by default.
/// - Series, through the `metrics` facade, labelled `backend="redis"`:
///   `palisade_ratelimit_backend_up` (1, or 0 while calls go to the fallback),
///   `palisade_ratelimit_backend_errors_total{reason="timeout"|"error"}` and
///   `palisade_ratelimit_backend_fallback_total`; the same numbers from
///   [`stats`](Redis::stats).
///
/// Redis 5 or later (the script reads `TIME` and then writes, which needs effects
/// replication), or Valkey; tested against Debian's `redis-server` 7.0. One server (or a
/// primary behind a proxy): Redis Cluster is not supported.
///
/// Accuracy: within the quota while Redis answers (a refund, when a later limit of a call
/// refuses it, goes to Redis in the background). Around failures: a round trip that timed out
/// may still reach Redis and take a token; the local fallback starts with full buckets (up to
/// `share × burst` more calls as Redis goes away); Redis restarted without persistence
/// forgets its buckets (they are full again).
///
/// Every decision costs a round trip to Redis — about 25 µs per call on loopback on this
/// project's machines (the `redis` bench), where the local backend's cost tens of
/// nanoseconds; calls in flight at once share the connection, pipelined. Fewer round trips:
/// [`lease`](RedisBuilder::lease) tokens in batches, at the accuracy cost it states.
///
/// # Example
///
/// Nothing listens on port 1 here: the three round trips fail (refused, or out of time), and
/// the layer, failing closed, rejects each call with its code.
///
/// ```
/// use std::{num::NonZeroU32, time::Duration};
/// use palisade_demo::frames::{unary_service, GrpcBody};
/// use palisade_ratelimit::{backend::{Fallback, Redis}, Limit, Quota, RateLimitLayer};
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = Redis::open("redis://127.0.0.1:1/")?
///     .timeout(Duration::from_millis(5))
///     .fallback(Fallback::Deny)
///     .build();
/// let quota = Quota::per_second(NonZeroU32::new(100).unwrap());
/// let service = RateLimitLayer::server()
///     .backend(redis.clone())
///     .limit(Limit::global(quota).named("api"))
///     .build()
///     .unwrap()
///     .layer(unary_service(tonic::Code::Ok));
/// let call = || http::Request::post(palisade_demo::SAY_HELLO).body(GrpcBody::default()).unwrap();
/// for _ in 0..3 {
///     let response = service.clone().oneshot(call()).await?;
///     assert_eq!(response.headers()["grpc-status"], "8"); // RESOURCE_EXHAUSTED: failed closed
/// }
/// assert_eq!(redis.stats().fallback, 3);
/// assert!(!redis.stats().up, "three failures in a row: calls skip Redis for a while");
/// # Ok(()) }
/// ```
///
/// Three instances of a server sharing a per-caller quota and a global one, falling back to a
/// third of each while Redis is away:
///
/// ```no_run
/// use std::num::NonZeroU32;
/// use palisade_ratelimit::{backend::{Fallback, Redis}, Key, Limit, Quota, RateLimitLayer};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = Redis::open("redis://127.0.0.1:6379")?
///     .prefix("greeter:rl:")
///     .fallback(Fallback::local_for_instances(NonZeroU32::new(3).unwrap()))
///     .hash_keys(true) // API keys are secrets: only their hashes go to Redis
///     .build();
/// redis.ping().await?; // optional: the layer works (on its fallback) while Redis is away
/// let per_second = |n| Quota::per_second(NonZeroU32::new(n).unwrap());
/// let layer = RateLimitLayer::server()
///     .backend(redis)
///     .limit(Limit::per_key(Key::metadata("x-api-key"), per_second(20)).named("per-key"))
///     .limit(Limit::global(per_second(1000)).named("global"))
///     .build().unwrap();
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) manager: ConnectionManager,
    pub(crate) health: Arc<Health>,
    pub(crate) timeout: Duration,
    pub(crate) runtime: tokio::runtime::Handle,
    prefix: String,
    hash_keys: bool,
    fallback: Fallback,
    lease: Option<(u32, Duration)>,
    local: Local,
}

/// What a [`Redis`] backend does with a call when Redis does not answer in time.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Fallback {
    /// Fail open onto local buckets (governor, in this process) holding `share` (0 < share ≤ 1)
    /// of each quota: `share` of the rate, and of the burst (at least one token). With `n`
    /// instances, `1 / n` keeps their sum near the quota.
    Local {
        /// This instance's share of each quota.
        share: f64,
    },
    /// Fail open: every call passes (Envoy's global rate limit default).
    Allow,
    /// Fail closed: every call is rejected, with the layer's code and a pushback of the
    /// [retry interval](RedisBuilder::retry_interval).
    Deny,
}

impl Fallback {
    /// Local buckets with `share` of each quota (clamped into (0, 1]; NaN is 1).
    pub fn local(share: f64) -> Self {
        let share = if share.is_nan() { 1.0 } else { share };
        Fallback::Local {
            share: share.clamp(f64::MIN_POSITIVE, 1.0),
        }
    }

    /// Local buckets with `1 / instances` of each quota.
    pub fn local_for_instances(instances: NonZeroU32) -> Self {
        Self::local(1.0 / f64::from(instances.get()))
    }
}

impl Default for Fallback {
    /// Local buckets with the whole quota: each instance alone enforces it while Redis is
    /// away (set [`local_for_instances`](Fallback::local_for_instances) to share it).
    fn default() -> Self {
        Fallback::Local { share: 1.0 }
    }
}

/// What a [`Redis`] backend has done since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Whether calls go to Redis now (false: to the fallback, until a probe gets an answer).
    pub up: bool,
    /// Calls decided by Redis.
    pub redis: u64,
    /// Calls decided by the fallback.
    pub fallback: u64,
    /// Round trips that ran out of time.
    pub timeouts: u64,
    /// Round trips that failed otherwise (connection refused or lost, an error reply).
    pub errors: u64,
    /// Times the calls were sent to the fallback for a retry interval.
    pub trips: u64,
    /// Calls given a token leased earlier, without a round trip (see
    /// [`lease`](RedisBuilder::lease)).
    pub leased: u64,
}

/// Configures a [`Redis`] backend; made by [`Redis::open`] or [`Redis::with_client`].
#[derive(Clone)]
pub struct RedisBuilder {
    client: Client,
    prefix: String,
    timeout: Duration,
    fallback: Fallback,
    retry_interval: Duration,
    trip_after: u32,
    connect_timeout: Duration,
    hash_keys: bool,
    lease: Option<(u32, Duration)>,
}

impl Redis {
    /// A builder for a backend on the Redis at `url` (`redis://[user:password@]host:port[/db]`,
    /// `rediss://` with the redis crate's TLS features, `unix://`); fails only on a bad URL:
    /// nothing connects until [`build`](RedisBuilder::build).
    pub fn open(url: impl IntoConnectionInfo) -> Result<RedisBuilder, RedisError> {
        Ok(Self::with_client(Client::open(url)?))
    }

    /// A builder for a backend on this client's Redis.
    pub fn with_client(client: Client) -> RedisBuilder {
        RedisBuilder {
            client,
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            fallback: Fallback::default(),
            retry_interval: DEFAULT_RETRY_INTERVAL,
            trip_after: DEFAULT_TRIP_AFTER,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            hash_keys: false,
            lease: None,
        }
    }

    /// What the backend has done so far.
    pub fn stats(&self) -> RedisStats {
        let counts = &self.inner.health.counts;
        RedisStats {
            up: self.inner.health.is_up(),
            redis: counts.redis.load(Ordering::Relaxed),
            fallback: counts.fallback.load(Ordering::Relaxed),
            timeouts: counts.timeouts.load(Ordering::Relaxed),
            errors: counts.errors.load(Ordering::Relaxed),
            trips: counts.trips.load(Ordering::Relaxed),
            leased: counts.leased.load(Ordering::Relaxed),
        }
    }

    /// Sends `PING` and waits for the answer (connecting first if needed; at most about the
    /// connect timeout): to check at start-up that Redis is there. The layers never need it.
    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut connection = self.inner.manager.clone();
        ::redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await
    }
}

impl RedisBuilder {
    /// The start of every key name (default [`DEFAULT_PREFIX`], `palisade:rl:`): separates
    /// services, or environments, sharing one Redis.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a call waits for Redis (default [`DEFAULT_TIMEOUT`], 5 ms) before the
    /// [`Fallback`] decides it.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What decides calls while Redis does not answer (default: [`Fallback::Local`] with the
    /// whole quota).
    #[must_use]
    pub fn fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = fallback;
        self
    }

    /// How long calls go to the fallback without trying Redis, once it failed (default
    /// [`DEFAULT_RETRY_INTERVAL`], 500 ms); then one call probes it.
    #[must_use]
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// How many failed round trips in a row send every call to the fallback for a retry
    /// interval (default [`DEFAULT_TRIP_AFTER`], 3; at least 1). Before that, a call whose
    /// round trip failed is decided by the fallback alone.
    #[must_use]
    pub fn trip_after(mut self, failures: u32) -> Self {
        self.trip_after = failures.max(1);
        self
    }

    /// How long a connection attempt, and any one Redis reply, may take at the connection's
    /// level (default [`DEFAULT_CONNECT_TIMEOUT`], 1 s). Calls never wait for it: they have
    /// their own [`timeout`](Self::timeout); this bounds the background reconnection.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Hash every key value, however short and printable (default: only long or unprintable
    /// ones), so that key values that are secrets (API keys, tokens) never reach Redis.
    #[must_use]
    pub fn hash_keys(mut self, hash: bool) -> Self {
        self.hash_keys = hash;
        self
    }

    /// Fewer round trips: a call that finds no leased token takes up to `batch` tokens from
    /// its bucket in one round trip (as many as are there, at least its own) and this
    /// instance hands the others to its next calls on the same bucket, without a round trip,
    /// for up to `max_age`; a token unused by then is dropped. `batch` ≤ 1 turns leasing off
    /// (the default).
    ///
    /// The accuracy cost: no call passes that the bucket did not have a token for, but tokens
    /// leased to one instance are not available to the others — so over any window up to
    /// `instances × (batch − 1)` fewer calls may pass than the quota (fewer still if leases
    /// expire unused: keep `max_age` short, around the time `batch` calls take), an instance
    /// holding a lease may pass a call while another is refused, and `x-ratelimit-remaining`
    /// counts the tokens leased here as remaining. While Redis is down, leased tokens are
    /// still handed out before the fallback decides. At most
    /// [`MAX_LEASED_BUCKETS`] buckets per limit hold a lease at once.
    #[must_use]
    pub fn lease(mut self, batch: u32, max_age: Duration) -> Self {
        self.lease = (batch > 1 && !max_age.is_zero()).then_some((batch, max_age));
        self
    }

    /// Makes the backend and starts connecting in the background. Calls made before the
    /// connection is up wait for it (within their timeout) like any round trip.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the connection, and refunds, run on it).
    pub fn build(self) -> Redis {
        let runtime = tokio::runtime::Handle::try_current()
            .expect("palisade_ratelimit::backend::Redis must be built inside a Tokio runtime");
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.connect_timeout.max(self.timeout)))
            // Reconnection is driven by the calls (one probe per retry interval): one quick
            // retry, not the crate's six with growing delays.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(self.retry_interval.max(Duration::from_millis(10)));
        let manager = {
            let _entered = runtime.enter();
            ConnectionManager::new_lazy_with_config(self.client, config)
                .expect("no push sender is configured")
        };
        let inner = Arc::new(Inner {
            manager,
            health: Arc::new(Health::new(self.trip_after, self.retry_interval)),
            timeout: self.timeout,
            runtime,
            prefix: self.prefix,
            hash_keys: self.hash_keys,
            fallback: self.fallback,
            lease: self.lease,
            local: Local::new(),
        });
        // Connect now rather than on the first call.
        let mut connection = inner.manager.clone();
        inner.runtime.spawn(async move {
            let _ = ::redis::cmd("PING")
                .query_async::<()>(&mut connection)
                .await;
        });
        Redis { inner }
    }
}

impl Backend for Redis {
    fn limiter(&self, spec: &LimiterSpec) -> Arc<dyn Limiter> {
        let quota = spec.quota().clamped();
        let fallback = match self.inner.fallback {
            Fallback::Local { share } => RuleFallback::Local(self.inner.local.limiter(
                &LimiterSpec::new(share_of(quota, share), spec.keyed(), spec.id()),
            )),
            Fallback::Allow => RuleFallback::Allow,
            Fallback::Deny => RuleFallback::Deny,
        };
        Arc::new(RedisLimiter(Arc::new(Rule::new(
            self.inner.clone(),
            keys::base(&self.inner.prefix, spec.id()),
            quota,
            self.inner.hash_keys,
            fallback,
            self.inner
                .lease
                .map(|(batch, max_age)| Leases::new(batch, max_age)),
        ))))
    }
}

/// `share` of a quota: the interval divided by it, the burst multiplied (at least one).
fn share_of(quota: Quota, share: f64) -> Quota {
    if share >= 1.0 {
        return quota;
    }
    let interval = quota.replenish_interval().as_nanos() as f64 / share;
    let interval = Duration::from_nanos(interval.min(u64::MAX as f64).max(1.0) as u64);
    let burst = (f64::from(quota.burst().get()) * share).floor().max(1.0) as u32;
    match (Quota::with_period(interval), NonZeroU32::new(burst)) {
        (Some(local), Some(burst)) => local.with_burst(burst).clamped(),
        _ => quota,
    }
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("fallback", &self.inner.fallback)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RedisBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the client: its connection info may hold a password.
        f.debug_struct("RedisBuilder")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("fallback", &self.fallback)
            .field("retry_interval", &self.retry_interval)
            .field("trip_after", &self.trip_after)
            .field("connect_timeout", &self.connect_timeout)
            .field("hash_keys", &self.hash_keys)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_of_a_quota_divides_rate_and_burst() {
        let quota = Quota::per_second(NonZeroU32::new(300).unwrap())
            .with_burst(NonZeroU32::new(30).unwrap());
        let third = share_of(quota, 1.0 / 3.0);
        assert_eq!(third.burst().get(), 10);
        let rate = 1e9 / third.replenish_interval().as_nanos() as f64;
        assert!((rate - 100.0).abs() < 0.01, "{rate}");
        assert_eq!(share_of(quota, 1.0), quota);
        // Never less than one token.
        assert_eq!(share_of(quota, 1e-6).burst().get(), 1);
        assert_eq!(Fallback::local(f64::NAN), Fallback::Local { share: 1.0 });
        assert_eq!(Fallback::local(7.0), Fallback::Local { share: 1.0 });
        assert_eq!(
            Fallback::local_for_instances(NonZeroU32::new(4).unwrap()),
            Fallback::Local { share: 0.25 }
        );
    }
}
