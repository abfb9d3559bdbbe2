//! When a circuit opens, and for how long: failure policies and backoffs on `failsafe`.
//!
//! A [`Policy`] decides, from the stream of successes and failures, when a circuit opens; a
//! [`Backoff`] gives how long it stays open each time (the first opening, then every probe
//! that fails, until a probe succeeds and the backoff starts over). Both are failsafe's:
//! [`Policy::consecutive_failures`] is `failsafe::failure_policy::consecutive_failures`,
//! [`Policy::or`] is failsafe's `or_else`, every [`Backoff`] is from `failsafe::backoff`, and
//! [`Policy::custom`] takes any [`failsafe::FailurePolicy`].
//!
//! [`Policy::failure_rate`] — Hystrix's error percentage over a rolling window with a
//! request-volume threshold — is this crate's own [`failsafe::FailurePolicy`]: failsafe's
//! `success_rate_over_time_window` is an exponentially weighted average that cannot trip
//! before one whole window has passed since the circuit was created or last closed, and it
//! reads `std::time::Instant` through failsafe's private clock, which tokio's paused time
//! cannot drive. This one counts calls in ten buckets on tokio's clock.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_breaker::{Backoff, BreakerLayer, Policy};
//!
//! // Open after 5 failures in a row, or when half of at least 20 calls in 10 s failed;
//! // stay open 5 s, then 10 s, 20 s, … up to 60 s while probes keep failing.
//! let layer = BreakerLayer::client()
//!     .policy(
//!         Policy::consecutive_failures(5)
//!             .or(Policy::failure_rate(0.5, 20, Duration::from_secs(10))),
//!     )
//!     .backoff(Backoff::exponential(Duration::from_secs(5), Duration::from_secs(60)))
//!     .build();
//! # let _ = layer;
//! ```

use std::{fmt, sync::Arc, time::Duration};

use failsafe::{
    FailurePolicy,
    backoff::{self as fs_backoff, Constant, EqualJittered, Exponential, FullJittered},
    failure_policy::consecutive_failures,
};
use tokio::time::Instant;

/// When a circuit opens: failsafe's consecutive-failure policy, a failure rate over a rolling
/// window, either of two policies, or any [`failsafe::FailurePolicy`].
///
/// See the [module docs](crate::policy) for an example.
#[derive(Clone)]
pub struct Policy(Kind);

#[derive(Clone)]
enum Kind {
    Consecutive(u32),
    Rate {
        failure_rate: f64,
        min_calls: u32,
        window: Duration,
    },
    Either(Arc<Policy>, Arc<Policy>),
    Custom(Arc<dyn Fn() -> DynPolicy + Send + Sync>),
}

impl Policy {
    /// Opens after `failures` failures in a row (failsafe's `consecutive_failures`); a success
    /// resets the count.
    ///
    /// # Panics
    ///
    /// When `failures` is 0.
    pub fn consecutive_failures(failures: u32) -> Self {
        assert!(
            failures > 0,
            "consecutive_failures needs at least 1 failure"
        );
        Policy(Kind::Consecutive(failures))
    }

    /// Opens when, over the last `window`, at least `min_calls` calls ended and at least
    /// `failure_rate` of them (0.5 = 50 %) failed — Hystrix's error percentage with a
    /// request-volume threshold, Resilience4j's time-based sliding window with minimum calls.
    ///
    /// The window slides in ten buckets of `window / 10`, on tokio's clock (so paused time in
    /// tests drives it).
    ///
    /// # Panics
    ///
    /// When `failure_rate` is not in `(0, 1]`, `min_calls` is 0, or `window` is shorter than
    /// 10 ns.
    pub fn failure_rate(failure_rate: f64, min_calls: u32, window: Duration) -> Self {
        assert!(
            failure_rate > 0.0 && failure_rate <= 1.0,
            "failure_rate must be in (0, 1]: {failure_rate}"
        );
        assert!(min_calls > 0, "failure_rate needs min_calls of at least 1");
        assert!(
            window.as_nanos() >= BUCKETS as u128,
            "failure_rate needs a window of at least {BUCKETS} ns"
        );
        Policy(Kind::Rate {
            failure_rate,
            min_calls,
            window,
        })
    }

    /// Opens when either policy says so (failsafe's `or_else`); the circuit stays open for
    /// the longer of the two durations.
    #[must_use]
    pub fn or(self, other: Policy) -> Self {
        Policy(Kind::Either(Arc::new(self), Arc::new(other)))
    }

    /// Any [`failsafe::FailurePolicy`], made fresh for each circuit by `make` (one per key).
    ///
    /// The policy brings its own backoff, so [`BreakerBuilder::backoff`](crate::BreakerBuilder::backoff)
    /// does not apply to it. failsafe's own time-based policy
    /// (`success_rate_over_time_window`) reads `std::time::Instant`, not tokio's clock.
    ///
    /// ```
    /// use std::time::Duration;
    /// use failsafe::{backoff, failure_policy};
    /// use palisade_breaker::Policy;
    ///
    /// let policy = Policy::custom(|| {
    ///     failure_policy::consecutive_failures(3, backoff::constant(Duration::from_secs(2)))
    /// });
    /// # let _ = policy;
    /// ```
    pub fn custom<P, F>(make: F) -> Self
    where
        P: FailurePolicy + Send + 'static,
        F: Fn() -> P + Send + Sync + 'static,
    {
        Policy(Kind::Custom(Arc::new(move || DynPolicy(Box::new(make())))))
    }

    /// A fresh policy for one circuit.
    pub(crate) fn build(&self, backoff: &Backoff) -> DynPolicy {
        match &self.0 {
            Kind::Consecutive(failures) => {
                DynPolicy(Box::new(consecutive_failures(*failures, backoff.0.clone())))
            }
            Kind::Rate {
                failure_rate,
                min_calls,
                window,
            } => DynPolicy(Box::new(FailureRate::new(
                *failure_rate,
                *min_calls,
                *window,
                backoff.0.clone(),
            ))),
            Kind::Either(left, right) => {
                DynPolicy(Box::new(left.build(backoff).or_else(right.build(backoff))))
            }
            Kind::Custom(make) => make(),
        }
    }
}

impl Default for Policy {
    /// Five failures in a row, or half of at least 20 calls over 10 s.
    fn default() -> Self {
        Policy::consecutive_failures(5).or(Policy::failure_rate(0.5, 20, Duration::from_secs(10)))
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Consecutive(n) => f.debug_tuple("ConsecutiveFailures").field(n).finish(),
            Kind::Rate {
                failure_rate,
                min_calls,
                window,
            } => f
                .debug_struct("FailureRate")
                .field("failure_rate", failure_rate)
                .field("min_calls", min_calls)
                .field("window", window)
                .finish(),
            Kind::Either(left, right) => f.debug_tuple("Or").field(left).field(right).finish(),
            Kind::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// How long a circuit stays open: failsafe's constant, exponential and jittered backoffs.
///
/// The first opening takes the first duration; each failed probe the next one; a successful
/// probe closes the circuit and starts the sequence over. failsafe's exponential and jittered
/// backoffs count in whole seconds.
///
/// ```
/// use std::time::Duration;
/// use palisade_breaker::Backoff;
///
/// let fixed = Backoff::constant(Duration::from_millis(500));
/// let growing = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(30));
/// let spread = Backoff::equal_jittered(Duration::from_secs(5), Duration::from_secs(60));
/// # let _ = (fixed, growing, spread);
/// ```
#[derive(Clone, Debug)]
pub struct Backoff(BackoffIter);

impl Backoff {
    /// Always the same duration.
    pub fn constant(duration: Duration) -> Self {
        Backoff(BackoffIter::Constant(fs_backoff::constant(duration)))
    }

    /// `start`, `2 × start`, `4 × start`, … up to `max`.
    ///
    /// # Panics
    ///
    /// As failsafe: when `start` or `max` is under one second, or `max < start`.
    pub fn exponential(start: Duration, max: Duration) -> Self {
        Backoff(BackoffIter::Exponential(fs_backoff::exponential(
            start, max,
        )))
    }

    /// Half the exponential duration plus a random part up to the other half (AWS's "equal
    /// jitter"): many clients do not probe in step.
    ///
    /// # Panics
    ///
    /// As [`Backoff::exponential`].
    pub fn equal_jittered(start: Duration, max: Duration) -> Self {
        Backoff(BackoffIter::EqualJittered(fs_backoff::equal_jittered(
            start, max,
        )))
    }

    /// A random duration between zero and the exponential duration (AWS's "full jitter").
    ///
    /// # Panics
    ///
    /// As [`Backoff::exponential`].
    pub fn full_jittered(start: Duration, max: Duration) -> Self {
        Backoff(BackoffIter::FullJittered(fs_backoff::full_jittered(
            start, max,
        )))
    }
}

impl Default for Backoff {
    /// Exponential from 5 s to 60 s.
    fn default() -> Self {
        Backoff::exponential(Duration::from_secs(5), Duration::from_secs(60))
    }
}

/// One of failsafe's backoff iterators, as one type.
#[derive(Clone, Debug)]
enum BackoffIter {
    Constant(Constant),
    Exponential(Exponential),
    EqualJittered(EqualJittered),
    FullJittered(FullJittered),
}

impl Iterator for BackoffIter {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        match self {
            BackoffIter::Constant(it) => it.next(),
            BackoffIter::Exponential(it) => it.next(),
            BackoffIter::EqualJittered(it) => it.next(),
            BackoffIter::FullJittered(it) => it.next(),
        }
    }
}

/// A boxed failsafe policy, itself a policy (so two can be joined with `or_else`).
pub(crate) struct DynPolicy(Box<dyn FailurePolicy + Send>);

impl FailurePolicy for DynPolicy {
    fn record_success(&mut self) {
        self.0.record_success();
    }

    fn mark_dead_on_failure(&mut self) -> Option<Duration> {
        self.0.mark_dead_on_failure()
    }

    fn revived(&mut self) {
        self.0.revived();
    }
}

const BUCKETS: usize = 10;

#[derive(Clone, Copy, Default)]
struct Bucket {
    /// Which slice of time (`elapsed / bucket`) the counts belong to.
    index: u64,
    calls: u32,
    failures: u32,
}

/// Failure rate over a rolling window with a minimum number of calls, as a failsafe policy.
struct FailureRate<B> {
    failure_rate: f64,
    min_calls: u32,
    bucket_nanos: u64,
    epoch: Instant,
    buckets: [Bucket; BUCKETS],
    backoff: B,
    fresh_backoff: B,
}

impl<B: Clone> FailureRate<B> {
    fn new(failure_rate: f64, min_calls: u32, window: Duration, backoff: B) -> Self {
        let bucket_nanos = u64::try_from(window.as_nanos() / BUCKETS as u128).unwrap_or(u64::MAX);
        Self {
            failure_rate,
            min_calls,
            bucket_nanos: bucket_nanos.max(1),
            epoch: Instant::now(),
            buckets: [Bucket::default(); BUCKETS],
            fresh_backoff: backoff.clone(),
            backoff,
        }
    }

    /// Counts one call; returns the index of the current bucket.
    fn record(&mut self, failed: bool) -> u64 {
        let elapsed = Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos();
        let now = u64::try_from(elapsed / u128::from(self.bucket_nanos)).unwrap_or(u64::MAX);
        let bucket = &mut self.buckets[(now % BUCKETS as u64) as usize];
        if bucket.index != now {
            *bucket = Bucket {
                index: now,
                calls: 0,
                failures: 0,
            };
        }
        bucket.calls = bucket.calls.saturating_add(1);
        bucket.failures = bucket.failures.saturating_add(u32::from(failed));
        now
    }

    /// The calls and failures in the window that ends with bucket `now`.
    fn totals(&self, now: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|b| now.wrapping_sub(b.index) < BUCKETS as u64)
            .fold((0, 0), |(calls, failures), b| {
                (calls + u64::from(b.calls), failures + u64::from(b.failures))
            })
    }
}

impl<B: Iterator<Item = Duration> + Clone> FailurePolicy for FailureRate<B> {
    fn record_success(&mut self) {
        self.record(false);
    }

    fn mark_dead_on_failure(&mut self) -> Option<Duration> {
        let now = self.record(true);
        let (calls, failures) = self.totals(now);
        let tripped = calls >= u64::from(self.min_calls)
            && failures as f64 >= self.failure_rate * calls as f64;
        // failsafe's own policies fall back to 300 s when a backoff runs dry.
        tripped.then(|| self.backoff.next().unwrap_or(Duration::from_secs(300)))
    }

    fn revived(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
        self.backoff = self.fresh_backoff.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn rate_needs_min_calls_and_rate() {
        let mut policy = FailureRate::new(0.5, 4, secs(10), fs_backoff::constant(secs(3)));
        assert_eq!(policy.mark_dead_on_failure(), None);
        assert_eq!(policy.mark_dead_on_failure(), None);
        assert_eq!(policy.mark_dead_on_failure(), None);
        // Four calls, all failed.
        assert_eq!(policy.mark_dead_on_failure(), Some(secs(3)));
        policy.revived();
        for _ in 0..3 {
            policy.record_success();
        }
        // 1 failure in 4 calls: 25 % < 50 %.
        assert_eq!(policy.mark_dead_on_failure(), None);
        // 2 in 5: 40 %.
        assert_eq!(policy.mark_dead_on_failure(), None);
        // 3 in 6: 50 %.
        assert_eq!(policy.mark_dead_on_failure(), Some(secs(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn old_calls_leave_the_window() {
        let mut policy = FailureRate::new(0.5, 3, secs(10), fs_backoff::constant(secs(1)));
        assert_eq!(policy.mark_dead_on_failure(), None);
        assert_eq!(policy.mark_dead_on_failure(), None);
        tokio::time::advance(secs(11)).await;
        // The two earlier failures are out of the window: one call is under the minimum.
        assert_eq!(policy.mark_dead_on_failure(), None);
        tokio::time::advance(secs(5)).await;
        assert_eq!(policy.mark_dead_on_failure(), None);
        assert_eq!(policy.mark_dead_on_failure(), Some(secs(1)));
    }

    #[test]
    fn either_takes_the_longer_backoff() {
        let backoff = Backoff::constant(secs(7));
        let mut policy = Policy::consecutive_failures(2)
            .or(Policy::custom(|| {
                consecutive_failures(1, fs_backoff::constant(secs(9)))
            }))
            .build(&backoff);
        assert_eq!(policy.mark_dead_on_failure(), Some(secs(9)));
        policy.revived();
        policy.record_success();
        assert_eq!(policy.mark_dead_on_failure(), Some(secs(9)));
        assert_eq!(policy.mark_dead_on_failure(), Some(secs(9)));
    }

    #[test]
    fn exponential_backoff_grows_then_restarts_when_revived() {
        let backoff = Backoff::exponential(secs(1), secs(4));
        let mut policy = Policy::consecutive_failures(1).build(&backoff);
        let opened: Vec<_> = (0..4).map(|_| policy.mark_dead_on_failure()).collect();
        assert_eq!(
            opened,
            [Some(secs(1)), Some(secs(2)), Some(secs(4)), Some(secs(4))]
        );
        policy.revived();
        assert_eq!(policy.mark_dead_on_failure(), Some(secs(1)));
    }

    #[test]
    #[should_panic(expected = "failure_rate must be in (0, 1]")]
    fn rate_out_of_range_is_refused() {
        let _ = Policy::failure_rate(1.5, 1, secs(1));
    }
}
