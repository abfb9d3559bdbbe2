//! Where buckets live: the backend seam.
//!
//! The layers decide *which* buckets a call draws from (its limits, method and key); a
//! [`Backend`] keeps the buckets and answers whether a token is there. [`Local`] — governor's
//! GCRA in this process, keyed state bounded — is the default; `Redis` (feature `redis`)
//! keeps them in Redis, one quota shared by every instance. Any backend implements the same two
//! traits and plugs into the same layers with
//! [`RateLimitBuilder::backend`](crate::RateLimitBuilder::backend).
//!
//! A backend may answer later: [`Acquire::Pending`] carries a future, and the layers then hold
//! the call (server) or keep waiting (client) until it resolves, without blocking a thread. The
//! local backend always answers at once, so the common path allocates nothing.
//!
//! # Example
//!
//! A backend that lets everything through, counting the calls it saw:
//!
//! ```
//! use std::{num::NonZeroU32, sync::{Arc, atomic::{AtomicU64, Ordering}}};
//! use palisade_ratelimit::backend::{Acquire, Backend, BucketKey, Decision, Limiter, LimiterSpec};
//!
//! #[derive(Debug, Default)]
//! struct Counting(Arc<AtomicU64>);
//!
//! #[derive(Debug)]
//! struct CountingLimiter { seen: Arc<AtomicU64>, burst: u32 }
//!
//! impl Backend for Counting {
//!     fn limiter(&self, spec: &LimiterSpec) -> Arc<dyn Limiter> {
//!         Arc::new(CountingLimiter { seen: self.0.clone(), burst: spec.quota().burst().get() })
//!     }
//! }
//!
//! impl Limiter for CountingLimiter {
//!     fn acquire(&self, _key: &BucketKey<'_>, tokens: NonZeroU32) -> Acquire {
//!         self.seen.fetch_add(u64::from(tokens.get()), Ordering::Relaxed);
//!         Acquire::Ready(Decision::allowed(self.burst, self.burst, std::time::Duration::ZERO))
//!     }
//! }
//! ```

use std::{fmt, future::Future, num::NonZeroU32, pin::Pin, sync::Arc, time::Duration};

use governor::middleware::StateSnapshot;

use crate::quota::Quota;

mod local;
#[cfg(feature = "redis")]
mod redis;
mod store;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{
    BACKEND_ERRORS_TOTAL, BACKEND_FALLBACK_TOTAL, BACKEND_UP, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_PREFIX, DEFAULT_RETRY_INTERVAL, DEFAULT_TIMEOUT, DEFAULT_TRIP_AFTER, Fallback,
    MAX_LEASED_BUCKETS, Redis, RedisBuilder, RedisStats,
};
pub use local::{DEFAULT_MAX_KEYS, Local};

/// A keeper of buckets: makes one [`Limiter`] per limit rule when a layer is built.
pub trait Backend: fmt::Debug + Send + Sync + 'static {
    /// The buckets of one rule: one quota, one bucket per [`BucketKey`] (or a single bucket
    /// when [`LimiterSpec::keyed`] is false).
    fn limiter(&self, spec: &LimiterSpec) -> Arc<dyn Limiter>;
}

/// The buckets of one rule.
pub trait Limiter: fmt::Debug + Send + Sync + 'static {
    /// Takes `tokens` from the bucket of `key` if it has them (allowed), or tells when they
    /// will be there (denied). A denied call takes nothing.
    fn acquire(&self, key: &BucketKey<'_>, tokens: NonZeroU32) -> Acquire;

    /// Gives back `tokens` that an allowed decision took, for a call that another limit then
    /// refused or that went away before it was sent, so that a call takes a token from every
    /// limit or from none. `origin` is that decision's [`Decision::origin`]: the tokens go back
    /// into the buckets they came from, whatever the backend's state is now — a backend with a
    /// fallback gives its fallback's tokens back to the fallback, even when its store is back
    /// by then. Best effort: the default does nothing (the tokens come back with time, as for
    /// any call).
    fn refund(&self, key: &BucketKey<'_>, tokens: NonZeroU32, origin: Origin) {
        let _ = (key, tokens, origin);
    }
}

/// Which buckets an allowed [`Decision`]'s tokens came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Origin {
    /// The backend's own buckets (the default).
    #[default]
    Primary,
    /// The buckets of the backend's fallback, which decided while its store did not answer.
    Fallback,
}

/// A future resolving to a [`Decision`], for backends that answer later.
pub type DecisionFuture = Pin<Box<dyn Future<Output = Decision> + Send + 'static>>;

/// A [`Limiter`]'s answer: now, or later.
pub enum Acquire {
    /// The decision, made at once.
    Ready(Decision),
    /// The decision will come (a round trip to a shared store). It must resolve in bounded
    /// time: a backend that cannot reach its store answers with its own fallback decision.
    Pending(DecisionFuture),
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Acquire::Ready(decision) => f.debug_tuple("Ready").field(decision).finish(),
            Acquire::Pending(_) => f.write_str("Pending(..)"),
        }
    }
}

/// Which bucket of a rule a call draws from.
///
/// `method` is the request path when the limit splits its buckets by method, `value` the
/// key's bytes when it splits them by key (`None`: the rule's one keyless bucket). Neither is
/// stored by the local backend, which keeps a 128-bit keyed hash of both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketKey<'a> {
    method: Option<&'a str>,
    value: Option<&'a [u8]>,
}

impl<'a> BucketKey<'a> {
    /// A bucket key from its parts.
    pub const fn new(method: Option<&'a str>, value: Option<&'a [u8]>) -> Self {
        Self { method, value }
    }

    /// The request path (`/package.Service/Method`) when buckets are split by method.
    pub const fn method(&self) -> Option<&'a str> {
        self.method
    }

    /// The key's bytes when buckets are split by key; `None` for the shared keyless bucket.
    pub const fn value(&self) -> Option<&'a [u8]> {
        self.value
    }
}

/// What a backend needs to know about one rule's buckets.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LimiterSpec {
    quota: Quota,
    keyed: bool,
    id: Arc<str>,
}

impl LimiterSpec {
    /// A spec; layers make these, backends read them.
    pub fn new(quota: Quota, keyed: bool, id: impl Into<Arc<str>>) -> Self {
        Self {
            quota,
            keyed,
            id: id.into(),
        }
    }

    /// The quota of every bucket.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Whether buckets are split (by method, key or both); when false, every call shares one
    /// bucket and [`BucketKey`]s can be ignored.
    pub fn keyed(&self) -> bool {
        self.keyed
    }

    /// A name for the rule, stable across processes with the same configuration
    /// (`{limit name}/{rule index}`): a prefix for keys in a shared store.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A bucket's answer to one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    allowed: bool,
    limit: u32,
    origin: Origin,
    detail: Detail,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Detail {
    Numbers {
        remaining: u32,
        retry_after: u64,
        reset_after: u64,
    },
    /// governor's state after an allowed call: the remaining tokens are worked out (one
    /// division) only if asked for.
    Snapshot {
        snapshot: StateSnapshot,
        interval: u64,
    },
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Decision {
    /// The tokens were taken; `remaining` are left of `limit` (the burst), and the bucket will
    /// be full again after `reset_after`.
    pub fn allowed(limit: u32, remaining: u32, reset_after: Duration) -> Self {
        Self {
            allowed: true,
            limit,
            origin: Origin::Primary,
            detail: Detail::Numbers {
                remaining,
                retry_after: 0,
                reset_after: nanos(reset_after),
            },
        }
    }

    /// No tokens: they will be there after `retry_after`; the bucket will be full after
    /// `reset_after`.
    pub fn denied(limit: u32, retry_after: Duration, reset_after: Duration) -> Self {
        Self::denied_nanos(limit, nanos(retry_after), nanos(reset_after))
    }

    /// An allowed call, from governor's state; `interval` is the token interval in
    /// nanoseconds.
    #[inline]
    pub(crate) fn from_snapshot(limit: u32, snapshot: StateSnapshot, interval: u64) -> Self {
        Self {
            allowed: true,
            limit,
            origin: Origin::Primary,
            detail: Detail::Snapshot { snapshot, interval },
        }
    }

    pub(crate) const fn denied_nanos(limit: u32, retry_after: u64, reset_after: u64) -> Self {
        Self {
            allowed: false,
            limit,
            origin: Origin::Primary,
            detail: Detail::Numbers {
                remaining: 0,
                retry_after,
                reset_after,
            },
        }
    }

    /// The same decision, its tokens from `origin` (a fallback's decision says so, for
    /// [`Limiter::refund`]).
    #[must_use]
    pub const fn with_origin(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }

    /// Which buckets the tokens came from ([`Origin::Primary`] unless the backend said).
    pub const fn origin(&self) -> Origin {
        self.origin
    }

    /// Whether the call may pass.
    pub const fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// The bucket's size.
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// Tokens left after this call.
    pub fn remaining(&self) -> u32 {
        match &self.detail {
            Detail::Numbers { remaining, .. } => *remaining,
            Detail::Snapshot { snapshot, .. } => {
                snapshot.remaining_burst_capacity().min(self.limit)
            }
        }
    }

    /// Time until the tokens asked for are there (zero when allowed).
    pub fn retry_after(&self) -> Duration {
        match &self.detail {
            Detail::Numbers { retry_after, .. } => Duration::from_nanos(*retry_after),
            Detail::Snapshot { .. } => Duration::ZERO,
        }
    }

    /// Time until the bucket is full again (at most one token interval over, when worked
    /// out from the tokens left).
    pub fn reset_after(&self) -> Duration {
        match &self.detail {
            Detail::Numbers { reset_after, .. } => Duration::from_nanos(*reset_after),
            Detail::Snapshot { interval, .. } => Duration::from_nanos(
                interval.saturating_mul(u64::from(self.limit - self.remaining())),
            ),
        }
    }
}
