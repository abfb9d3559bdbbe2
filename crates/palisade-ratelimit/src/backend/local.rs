//! The local backend: governor's GCRA in this process.

use std::{
    fmt,
    hash::{BuildHasher, Hasher, RandomState},
    num::NonZeroU32,
    sync::{Arc, Mutex, PoisonError, Weak},
};

use governor::{
    NotUntil, RateLimiter,
    clock::Clock,
    middleware::{StateInformationMiddleware, StateSnapshot},
    nanos::Nanos,
    state::NotKeyed,
};
use siphasher::sip128::{Hasher128, SipHasher13};

use super::{
    Acquire, Backend, BucketKey, Decision, Limiter, LimiterSpec, Origin,
    store::{Cell, Digest, SharedStore, Store, give_back},
};
use crate::{clock::TokioClock, quota::Quota};

/// How many keys one keyed rule of the [`Local`] backend tracks by default.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// The default backend: buckets in this process, on governor's GCRA, following tokio's time
/// ([`TokioClock`]).
///
/// A rule with one bucket is a governor direct limiter (one atomic compare-and-swap per call).
/// A keyed rule keeps one 24-byte state per key in a sharded table whose memory is bounded:
///
/// - keys are never stored — each is reduced to a 128-bit SipHash-1-3 of the method and key
///   bytes under a random per-backend key, so an 8 KiB header value costs what a 4-byte address
///   costs, and colliding keys on purpose needs the secret;
/// - at most [`max_keys`](Local::max_keys) keys per rule (default [`DEFAULT_MAX_KEYS`]); past
///   the cap, the buckets closest to full are evicted (an evicted key comes back with a full
///   bucket, so keep a global limit beside per-key ones). The table is sharded and each shard
///   holds its share of the cap, so eviction starts when the fullest shard is full — with keys
///   spread by a hash, a few percent under the cap (at 94 % of a million keys in 16 shards);
/// - a key idle for its quota's refill time (`burst / rate`) is dropped by the rule's own
///   traffic — no cleanup task to run — within one sweep period (the refill time, at least
///   one second), and tables that empty are shrunk;
/// - memory: at most **64 bytes per tracked key** (24-byte entries, one control byte, and a
///   load factor between 7/16 and 7/8), so `64 × max_keys` bytes per keyed rule — 6.4 MB at the
///   default cap — plus one cache line per shard.
///
/// Clones share the same registry of tables, so [`tracked_keys`](Local::tracked_keys) on a
/// clone kept aside sees the keys of every layer built with it.
///
/// # Example
///
/// ```
/// use std::num::NonZeroU32;
/// use palisade_ratelimit::{backend::Local, Key, Limit, Quota, RateLimitLayer};
///
/// let backend = Local::new().max_keys(10_000);
/// let layer = RateLimitLayer::server()
///     .backend(backend.clone())
///     .limit(Limit::per_key(Key::peer_ip(), Quota::per_second(NonZeroU32::new(10).unwrap())))
///     .build().unwrap();
/// assert_eq!(backend.tracked_keys(), 0);
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct Local {
    max_keys: usize,
    sip_keys: (u64, u64),
    stores: Arc<Mutex<Vec<Weak<Store>>>>,
}

impl Local {
    /// A backend with the default cap.
    pub fn new() -> Self {
        let random = RandomState::new();
        Self {
            max_keys: DEFAULT_MAX_KEYS,
            sip_keys: (random.hash_one(0x5157_u64), random.hash_one(0xa11ce_u64)),
            stores: Arc::default(),
        }
    }

    /// Tracks at most `max` keys per keyed rule (at least one). Memory per rule is at most
    /// 64 bytes per key.
    #[must_use]
    pub fn max_keys(mut self, max: usize) -> Self {
        self.max_keys = max.max(1);
        self
    }

    /// Keys tracked now by the keyed rules of layers built with this backend (or its clones).
    pub fn tracked_keys(&self) -> usize {
        self.each_store(Store::len)
    }

    /// Bytes held by those rules' tables.
    pub fn table_bytes(&self) -> usize {
        self.each_store(Store::allocated_bytes)
    }

    /// Drops now every key whose bucket is full again, in every table, without waiting for
    /// traffic to do it. Never needed for correctness or bounds; useful before measuring.
    pub fn sweep(&self) {
        self.each_store(|store| {
            store.sweep_all();
            0
        });
    }

    fn each_store(&self, f: impl Fn(&Store) -> usize) -> usize {
        let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        stores.retain(|store| store.strong_count() > 0);
        stores
            .iter()
            .filter_map(Weak::upgrade)
            .map(|store| f(&store))
            .sum()
    }

    fn digest(&self, key: &BucketKey<'_>) -> Digest {
        let mut hasher = SipHasher13::new_with_keys(self.sip_keys.0, self.sip_keys.1);
        for part in [key.method().map(str::as_bytes), key.value()] {
            match part {
                Some(bytes) => {
                    hasher.write_u8(1);
                    hasher.write_usize(bytes.len());
                    hasher.write(bytes);
                }
                None => hasher.write_u8(0),
            }
        }
        let (a, b) = hasher.finish128().as_u64();
        [a, b]
    }
}

impl Default for Local {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Local")
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl Backend for Local {
    fn limiter(&self, spec: &LimiterSpec) -> Arc<dyn Limiter> {
        let quota = spec.quota().clamped();
        let clock = TokioClock::new();
        if !spec.keyed() {
            let cell = Cell::default();
            return Arc::new(DirectLimiter {
                limiter: RateLimiter::new(quota.to_governor(), cell.clone(), clock),
                cell,
                consts: Consts::new(&quota),
                quota,
                clock,
            });
        }
        let store = Arc::new(Store::new(
            self.max_keys,
            u64::try_from(quota.refill_time().as_nanos()).unwrap_or(u64::MAX),
            clock,
        ));
        let limiter = RateLimiter::new(quota.to_governor(), SharedStore(store.clone()), clock);
        store.set_start();
        self.stores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&store));
        Arc::new(KeyedLimiter {
            limiter,
            backend: self.clone(),
            store,
            consts: Consts::new(&quota),
            quota,
            clock,
        })
    }
}

type Direct = RateLimiter<NotKeyed, Cell, TokioClock, StateInformationMiddleware>;
type Keyed = RateLimiter<Digest, SharedStore, TokioClock, StateInformationMiddleware>;

/// One bucket for every call.
struct DirectLimiter {
    limiter: Direct,
    cell: Cell,
    consts: Consts,
    quota: Quota,
    clock: TokioClock,
}

impl Limiter for DirectLimiter {
    #[inline]
    fn acquire(&self, _: &BucketKey<'_>, tokens: NonZeroU32) -> Acquire {
        let result = if tokens == NonZeroU32::MIN {
            self.limiter.check()
        } else if tokens.get() > self.consts.burst {
            return Acquire::Ready(self.consts.never());
        } else {
            match self.limiter.check_n(tokens) {
                Ok(result) => result,
                Err(_) => return Acquire::Ready(self.consts.never()),
            }
        };
        Acquire::Ready(decide(result, &self.consts, &self.clock))
    }

    fn refund(&self, _: &BucketKey<'_>, tokens: NonZeroU32, _: Origin) {
        give_back(&self.cell.0, self.consts.weight(tokens));
    }
}

impl fmt::Debug for DirectLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectLimiter")
            .field("quota", &self.quota)
            .finish()
    }
}

/// One bucket per key, in a bounded store.
struct KeyedLimiter {
    limiter: Keyed,
    backend: Local,
    store: Arc<Store>,
    consts: Consts,
    quota: Quota,
    clock: TokioClock,
}

impl Limiter for KeyedLimiter {
    #[inline]
    fn acquire(&self, key: &BucketKey<'_>, tokens: NonZeroU32) -> Acquire {
        let digest = self.backend.digest(key);
        let result = if tokens == NonZeroU32::MIN {
            self.limiter.check_key(&digest)
        } else if tokens.get() > self.consts.burst {
            return Acquire::Ready(self.consts.never());
        } else {
            match self.limiter.check_key_n(&digest, tokens) {
                Ok(result) => result,
                Err(_) => return Acquire::Ready(self.consts.never()),
            }
        };
        Acquire::Ready(decide(result, &self.consts, &self.clock))
    }

    fn refund(&self, key: &BucketKey<'_>, tokens: NonZeroU32, _: Origin) {
        self.store
            .refund(&self.backend.digest(key), self.consts.weight(tokens));
    }
}

impl fmt::Debug for KeyedLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("quota", &self.quota)
            .field("tracked_keys", &self.store.len())
            .field("max_keys", &self.store.capacity())
            .finish()
    }
}

/// The decision from governor's answer.
#[inline]
fn decide(
    result: Result<StateSnapshot, NotUntil<Nanos>>,
    consts: &Consts,
    clock: &TokioClock,
) -> Decision {
    match result {
        Ok(snapshot) => Decision::from_snapshot(consts.burst, snapshot, consts.interval),
        Err(not_until) => decide_denied(not_until, consts.burst, consts.interval, clock),
    }
}

/// A quota's numbers, worked out once.
#[derive(Clone, Copy, Debug)]
struct Consts {
    burst: u32,
    /// Nanoseconds per token.
    interval: u64,
}

impl Consts {
    fn new(quota: &Quota) -> Self {
        Self {
            burst: quota.burst().get(),
            interval: interval_nanos(quota),
        }
    }

    fn never(&self) -> Decision {
        let refill = self.interval.saturating_mul(u64::from(self.burst));
        Decision::denied_nanos(self.burst, refill, refill)
    }

    fn weight(&self, tokens: NonZeroU32) -> u64 {
        self.interval.saturating_mul(u64::from(tokens.get()))
    }
}

#[cold]
fn decide_denied(
    not_until: NotUntil<Nanos>,
    burst: u32,
    interval: u64,
    clock: &TokioClock,
) -> Decision {
    let wait = not_until
        .earliest_possible()
        .as_u64()
        .saturating_sub(clock.now().as_u64());
    let refill = interval.saturating_mul(u64::from(burst - 1));
    Decision::denied_nanos(burst, wait, wait.saturating_add(refill))
}

/// governor's token interval, in nanoseconds (at least one).
fn interval_nanos(quota: &Quota) -> u64 {
    u64::try_from(quota.replenish_interval().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const ONE: NonZeroU32 = NonZeroU32::MIN;

    fn quota(rate: u32, burst: u32) -> Quota {
        Quota::per_second(NonZeroU32::new(rate).unwrap())
            .with_burst(NonZeroU32::new(burst).unwrap())
    }

    fn ready(acquire: Acquire) -> Decision {
        match acquire {
            Acquire::Ready(decision) => decision,
            Acquire::Pending(_) => panic!("the local backend answers at once"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn decisions_carry_remaining_retry_and_reset() {
        let limiter = Local::new().limiter(&LimiterSpec::new(quota(10, 3), false, "t"));
        let key = BucketKey::default();
        let first = ready(limiter.acquire(&key, ONE));
        assert_eq!(
            (first.is_allowed(), first.limit(), first.remaining()),
            (true, 3, 2)
        );
        assert_eq!(first.reset_after(), Duration::from_millis(100));
        ready(limiter.acquire(&key, ONE));
        ready(limiter.acquire(&key, ONE));
        let denied = ready(limiter.acquire(&key, ONE));
        assert!(!denied.is_allowed());
        assert_eq!(denied.retry_after(), Duration::from_millis(100));
        assert_eq!(denied.reset_after(), Duration::from_millis(300));
        tokio::time::advance(Duration::from_millis(40)).await;
        assert_eq!(
            ready(limiter.acquire(&key, ONE)).retry_after(),
            Duration::from_millis(60)
        );
        // More tokens than the bucket holds: never.
        let never = ready(limiter.acquire(&key, NonZeroU32::new(4).unwrap()));
        assert_eq!(never.retry_after(), Duration::from_millis(300));
    }

    #[test]
    fn threads_racing_on_new_and_old_keys_get_exactly_the_burst() {
        // 50 an hour: nothing comes back during the test, so each key passes exactly 50 times
        // however the threads interleave (inserts racing on new keys included).
        let quota = Quota::per_hour(NonZeroU32::new(50).unwrap());
        for keyed in [false, true] {
            let limiter = Local::new().limiter(&LimiterSpec::new(quota, keyed, "t"));
            let allowed: Vec<std::sync::atomic::AtomicU32> =
                (0..100).map(|_| Default::default()).collect();
            std::thread::scope(|scope| {
                for _ in 0..4 {
                    scope.spawn(|| {
                        for round in 0..100u32 {
                            for key in 0..100u32 {
                                let key = (key + round) % 100;
                                let bytes = key.to_be_bytes();
                                let bucket = BucketKey::new(None, Some(&bytes));
                                if ready(limiter.acquire(&bucket, ONE)).is_allowed() {
                                    allowed[key as usize]
                                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                        }
                    });
                }
            });
            let counts: Vec<u32> = allowed
                .iter()
                .map(|n| n.load(std::sync::atomic::Ordering::Relaxed))
                .collect();
            if keyed {
                assert!(counts.iter().all(|&n| n == 50), "{counts:?}");
            } else {
                assert_eq!(counts.iter().sum::<u32>(), 50);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn extreme_quotas_saturate_instead_of_overflowing() {
        let huge = Quota::per_hour(NonZeroU32::MIN).with_burst(NonZeroU32::MAX);
        for keyed in [false, true] {
            let limiter = Local::new().limiter(&LimiterSpec::new(huge, keyed, "t"));
            let decision = ready(limiter.acquire(&BucketKey::default(), ONE));
            assert!(decision.is_allowed());
            // The burst was capped so that the refill time fits governor's nanoseconds.
            assert!(decision.limit() < u32::MAX && decision.limit() > 600_000);
            assert_eq!(decision.reset_after(), Duration::from_secs(3600));
            let denied = ready(limiter.acquire(&BucketKey::default(), NonZeroU32::MAX));
            assert!(!denied.is_allowed());
            assert!(denied.retry_after() > Duration::from_secs(86_400 * 365 * 70));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn refunds_give_tokens_back() {
        for keyed in [false, true] {
            let limiter = Local::new().limiter(&LimiterSpec::new(quota(10, 2), keyed, "t"));
            let key = BucketKey::new(None, Some(b"k"));
            assert!(ready(limiter.acquire(&key, ONE)).is_allowed());
            assert!(ready(limiter.acquire(&key, ONE)).is_allowed());
            assert!(!ready(limiter.acquire(&key, ONE)).is_allowed());
            limiter.refund(&key, ONE, Origin::Primary);
            assert!(
                ready(limiter.acquire(&key, ONE)).is_allowed(),
                "keyed: {keyed}"
            );
            assert!(!ready(limiter.acquire(&key, ONE)).is_allowed());
            // Refunds never fill a bucket past its burst.
            tokio::time::advance(Duration::from_secs(1)).await;
            limiter.refund(&key, NonZeroU32::new(5).unwrap(), Origin::Primary);
            assert!(ready(limiter.acquire(&key, ONE)).is_allowed());
            assert!(ready(limiter.acquire(&key, ONE)).is_allowed());
            assert!(!ready(limiter.acquire(&key, ONE)).is_allowed());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keyed_buckets_are_independent_and_keys_are_hashed() {
        let backend = Local::new();
        let limiter = backend.limiter(&LimiterSpec::new(quota(1, 1), true, "t"));
        let long = vec![b'x'; 8192];
        let keys = [
            BucketKey::new(None, Some(b"a")),
            BucketKey::new(None, Some(b"b")),
            BucketKey::new(Some("/a.B/C"), Some(b"a")),
            BucketKey::new(Some("/a.B/C"), None),
            BucketKey::new(None, Some(&long)),
            BucketKey::new(None, None),
        ];
        for key in &keys {
            assert!(ready(limiter.acquire(key, ONE)).is_allowed(), "{key:?}");
            assert!(!ready(limiter.acquire(key, ONE)).is_allowed(), "{key:?}");
        }
        assert_eq!(backend.tracked_keys(), keys.len());
        // An 8 KiB key costs an entry like the others.
        assert!(backend.table_bytes() < 64 * 1024);
        drop(limiter);
        assert_eq!(backend.tracked_keys(), 0);
    }
}
