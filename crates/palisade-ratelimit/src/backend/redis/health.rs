//! Whether calls go to Redis: up, or down until the next probe.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use metrics::{Counter, Gauge};
use tokio::time::Instant;

/// Gauge, labelled `backend="redis"`: 1 while calls go to Redis, 0 while they go to the
/// fallback.
pub const BACKEND_UP: &str = "palisade_ratelimit_backend_up";
/// Counter, labelled `backend="redis"` and `reason` (`timeout` or `error`): round trips to
/// Redis that failed.
pub const BACKEND_ERRORS_TOTAL: &str = "palisade_ratelimit_backend_errors_total";
/// Counter, labelled `backend="redis"`: calls decided by the fallback instead of Redis.
pub const BACKEND_FALLBACK_TOTAL: &str = "palisade_ratelimit_backend_fallback_total";

/// Where one call goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// To Redis: it is up.
    Redis,
    /// To Redis as the one probe after a cool-down: its answer says whether Redis is back.
    Probe,
    /// To the fallback: Redis is down and the cool-down is not over (or a probe is out).
    Fallback,
}

/// Why a round trip failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    Timeout,
    Error,
}

/// Counters and the gauge, registered once.
pub(crate) struct Series {
    up: Gauge,
    timeouts: Counter,
    errors: Counter,
    pub(crate) fallback: Counter,
}

impl Series {
    pub(crate) fn register() -> Self {
        if !palisade_core::recorder::installed() {
            tracing::warn!(
                "palisade-ratelimit: the Redis backend was built while no `metrics` recorder is \
                 installed, so palisade_ratelimit_backend_* are no-ops and /metrics will never \
                 show them; install the recorder first and build the backend after it"
            );
        }
        metrics::describe_gauge!(
            BACKEND_UP,
            "1 while the rate-limit backend answers, 0 while calls are decided by its fallback"
        );
        metrics::describe_counter!(
            BACKEND_ERRORS_TOTAL,
            "Round trips to the rate-limit backend that failed (reason: timeout or error)"
        );
        metrics::describe_counter!(
            BACKEND_FALLBACK_TOTAL,
            "Rate-limit decisions made by the backend's fallback policy instead of the backend"
        );
        Self {
            up: metrics::gauge!(BACKEND_UP, "backend" => "redis"),
            timeouts: metrics::counter!(BACKEND_ERRORS_TOTAL, "backend" => "redis", "reason" => "timeout"),
            errors: metrics::counter!(BACKEND_ERRORS_TOTAL, "backend" => "redis", "reason" => "error"),
            fallback: metrics::counter!(BACKEND_FALLBACK_TOTAL, "backend" => "redis"),
        }
    }
}

/// The state shared by every limiter of one backend (one connection).
pub(crate) struct Health {
    base: Instant,
    up: AtomicBool,
    /// Failures since the last success, while up.
    failures: AtomicU32,
    /// While down: when the next probe may go, nanoseconds since `base`.
    retry_at: AtomicU64,
    probing: AtomicBool,
    trip_after: u32,
    retry_interval: Duration,
    pub(crate) series: Series,
    pub(crate) counts: Counts,
}

/// What the backend has done, for [`RedisStats`](super::RedisStats).
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) redis: AtomicU64,
    pub(crate) fallback: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) trips: AtomicU64,
    pub(crate) leased: AtomicU64,
}

impl Health {
    pub(crate) fn new(trip_after: u32, retry_interval: Duration) -> Self {
        let series = Series::register();
        series.up.set(1.0);
        Self {
            base: Instant::now(),
            up: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            retry_at: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            trip_after: trip_after.max(1),
            retry_interval,
            series,
            counts: Counts::default(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub(crate) fn retry_interval(&self) -> Duration {
        self.retry_interval
    }

    /// Where the next call goes.
    #[inline]
    pub(crate) fn route(&self) -> Route {
        if self.up.load(Ordering::Relaxed) {
            return Route::Redis;
        }
        if self.now() < self.retry_at.load(Ordering::Relaxed) {
            return Route::Fallback;
        }
        match self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => Route::Probe,
            Err(_) => Route::Fallback,
        }
    }

    /// Redis answered.
    pub(crate) fn succeeded(&self, route: Route) {
        self.counts.redis.fetch_add(1, Ordering::Relaxed);
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if route == Route::Probe {
            // Up before the probe slot opens again, so that no second probe goes.
            if !self.up.swap(true, Ordering::AcqRel) {
                self.series.up.set(1.0);
            }
            self.probing.store(false, Ordering::Release);
        }
    }

    /// Redis did not answer in time, or answered with an error.
    pub(crate) fn failed(&self, route: Route, failure: Failure) {
        match failure {
            Failure::Timeout => {
                self.counts.timeouts.fetch_add(1, Ordering::Relaxed);
                self.series.timeouts.increment(1);
            }
            Failure::Error => {
                self.counts.errors.fetch_add(1, Ordering::Relaxed);
                self.series.errors.increment(1);
            }
        }
        match route {
            Route::Probe => {
                self.retry_at.store(
                    self.now().saturating_add(nanos(self.retry_interval)),
                    Ordering::Relaxed,
                );
                self.probing.store(false, Ordering::Release);
            }
            // Calls sent before a trip that fail after it change nothing.
            Route::Redis if self.is_up() => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= self.trip_after {
                    self.trip();
                }
            }
            Route::Redis => {}
            Route::Fallback => {}
        }
    }

    /// The probe went away before Redis answered (its call's future dropped: a deadline, a
    /// reset stream): the slot opens again after a new cool-down, as after a failed probe —
    /// still one round trip per retry interval while Redis is down — but no failure is
    /// counted.
    fn abandoned(&self) {
        self.retry_at.store(
            self.now().saturating_add(nanos(self.retry_interval)),
            Ordering::Relaxed,
        );
        self.probing.store(false, Ordering::Release);
    }

    /// Down now, until the cool-down is over.
    fn trip(&self) {
        // The probe time first, so that a call seeing "down" never finds an old one.
        self.retry_at.store(
            self.now().saturating_add(nanos(self.retry_interval)),
            Ordering::Relaxed,
        );
        if self.up.swap(false, Ordering::AcqRel) {
            self.failures.store(0, Ordering::Relaxed);
            self.counts.trips.fetch_add(1, Ordering::Relaxed);
            self.series.up.set(0.0);
        }
    }

    /// A call given a leased token.
    #[inline]
    pub(crate) fn leased(&self) {
        self.counts.leased.fetch_add(1, Ordering::Relaxed);
    }

    /// A call decided by the fallback.
    #[inline]
    pub(crate) fn fell_back(&self) {
        self.counts.fallback.fetch_add(1, Ordering::Relaxed);
        self.series.fallback.increment(1);
    }
}

/// One round trip's place in the health state: routed to Redis, or holding the probe slot.
///
/// Holding the slot is a guard: an attempt dropped before its answer was taken in (the call
/// went away while waiting for Redis) gives the probe slot back, so a dropped probe never
/// leaves every later call on the fallback.
pub(crate) struct Attempt {
    health: Arc<Health>,
    route: Route,
    settled: bool,
}

impl Attempt {
    /// A round trip on `route` (Redis or Probe), as [`Health::route`] gave it.
    pub(crate) fn new(health: Arc<Health>, route: Route) -> Self {
        Self {
            health,
            route,
            settled: false,
        }
    }

    pub(crate) fn route(&self) -> Route {
        self.route
    }

    /// Redis answered.
    pub(crate) fn succeeded(mut self) {
        self.settled = true;
        self.health.succeeded(self.route);
    }

    /// Redis did not answer in time, or answered with an error.
    pub(crate) fn failed(mut self, failure: Failure) {
        self.settled = true;
        self.health.failed(self.route, failure);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled && self.route == Route::Probe {
            self.health.abandoned();
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn trips_after_failures_then_probes_one_at_a_time_after_the_cool_down() {
        let health = Health::new(2, Duration::from_millis(100));
        assert_eq!(health.route(), Route::Redis);
        health.failed(Route::Redis, Failure::Timeout);
        assert_eq!(health.route(), Route::Redis, "one failure is not enough");
        health.succeeded(Route::Redis);
        health.failed(Route::Redis, Failure::Error);
        assert_eq!(
            health.route(),
            Route::Redis,
            "failures count from the last success"
        );
        health.failed(Route::Redis, Failure::Error);
        assert_eq!(health.route(), Route::Fallback);
        assert!(!health.is_up());

        tokio::time::advance(Duration::from_millis(99)).await;
        assert_eq!(health.route(), Route::Fallback, "cooling down");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(health.route(), Route::Probe);
        assert_eq!(health.route(), Route::Fallback, "one probe at a time");
        health.failed(Route::Probe, Failure::Timeout);
        assert_eq!(
            health.route(),
            Route::Fallback,
            "a failed probe restarts the cool-down"
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(health.route(), Route::Probe);
        health.succeeded(Route::Probe);
        assert_eq!(health.route(), Route::Redis);
        assert!(health.is_up());

        let counts = &health.counts;
        assert_eq!(counts.timeouts.load(Ordering::Relaxed), 2);
        assert_eq!(counts.errors.load(Ordering::Relaxed), 2);
        assert_eq!(counts.redis.load(Ordering::Relaxed), 2);
        assert_eq!(counts.trips.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_gives_the_slot_back_after_a_cool_down() {
        let health = Arc::new(Health::new(1, Duration::from_millis(100)));
        health.failed(Route::Redis, Failure::Timeout);
        tokio::time::advance(Duration::from_millis(100)).await;
        let probe = Attempt::new(health.clone(), health.route());
        assert_eq!(probe.route(), Route::Probe);
        assert_eq!(health.route(), Route::Fallback, "one probe at a time");
        // The probe's call goes away before Redis answers.
        drop(probe);
        assert_eq!(health.route(), Route::Fallback, "a new cool-down");
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_eq!(health.route(), Route::Fallback);
        tokio::time::advance(Duration::from_millis(1)).await;
        let probe = Attempt::new(health.clone(), health.route());
        assert_eq!(probe.route(), Route::Probe, "the slot is free again");
        probe.succeeded();
        assert!(health.is_up());
        assert_eq!(health.route(), Route::Redis);
        // Nothing was counted for the dropped probe; a settled or plain attempt dropped
        // changes nothing.
        assert_eq!(health.counts.timeouts.load(Ordering::Relaxed), 1);
        drop(Attempt::new(health.clone(), Route::Redis));
        assert_eq!(health.route(), Route::Redis);
    }
}
