//! Quotas: a rate and a burst.

use std::{fmt, num::NonZeroU32, time::Duration};

/// How many calls a bucket lets through: a rate (one token every
/// [`replenish_interval`](Quota::replenish_interval)) and a burst (the bucket's size, how many
/// calls may pass at once after a quiet spell).
///
/// A fresh bucket is full, so over any window of length `t` starting with a full bucket
/// exactly `burst + ⌊t / interval⌋` calls pass (governor's GCRA, a token bucket without a
/// refill timer). The interval is `1 s / rate` rounded down to a nanosecond: rates that divide
/// 10⁹ (1, 2, 4, 5, 10, 100, 1000, …) are exact.
///
/// # Example
///
/// ```
/// use std::{num::NonZeroU32, time::Duration};
/// use palisade_ratelimit::Quota;
///
/// const RATE: NonZeroU32 = NonZeroU32::new(100).unwrap();
/// const BURST: NonZeroU32 = NonZeroU32::new(20).unwrap();
/// let quota = Quota::per_second(RATE).with_burst(BURST);
/// assert_eq!(quota.replenish_interval(), Duration::from_millis(10));
/// assert_eq!(quota.burst().get(), 20);
/// assert_eq!(quota.refill_time(), Duration::from_millis(200));
///
/// // From run-time values: zero is no quota.
/// assert!(Quota::new(0, Duration::from_secs(1)).is_none());
/// assert_eq!(Quota::new(5, Duration::from_secs(60)).unwrap(), Quota::per_minute(NonZeroU32::new(5).unwrap()));
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Quota(governor::Quota);

impl Quota {
    /// `rate` calls per second; the burst is `rate` too until [`with_burst`](Quota::with_burst).
    pub const fn per_second(rate: NonZeroU32) -> Self {
        Quota(governor::Quota::per_second(rate))
    }

    /// `rate` calls per minute; the burst is `rate` too until [`with_burst`](Quota::with_burst).
    pub const fn per_minute(rate: NonZeroU32) -> Self {
        Quota(governor::Quota::per_minute(rate))
    }

    /// `rate` calls per hour; the burst is `rate` too until [`with_burst`](Quota::with_burst).
    pub const fn per_hour(rate: NonZeroU32) -> Self {
        Quota(governor::Quota::per_hour(rate))
    }

    /// `count` calls per `period`, with a burst of `count`; `None` when either is zero (or the
    /// period is under `count` nanoseconds).
    pub fn new(count: u32, period: Duration) -> Option<Self> {
        let count = NonZeroU32::new(count)?;
        let interval = period / count.get();
        Some(Quota(
            governor::Quota::with_period(interval)?.allow_burst(count),
        ))
    }

    /// One call every `interval`, with a burst of one; `None` for a zero interval.
    pub fn with_period(interval: Duration) -> Option<Self> {
        governor::Quota::with_period(interval).map(Quota)
    }

    /// The same rate with another burst.
    #[must_use]
    pub const fn with_burst(self, burst: NonZeroU32) -> Self {
        Quota(self.0.allow_burst(burst))
    }

    /// The bucket's size: how many calls may pass at once.
    pub const fn burst(&self) -> NonZeroU32 {
        self.0.burst_size()
    }

    /// The time one token takes to come back.
    pub const fn replenish_interval(&self) -> Duration {
        self.0.replenish_interval()
    }

    /// The time an empty bucket takes to fill up: `burst × interval`. A key idle that long is
    /// indistinguishable from a new one, which is when the local backend forgets it.
    pub const fn refill_time(&self) -> Duration {
        self.0.burst_size_replenished_in()
    }

    /// The governor quota.
    pub const fn to_governor(self) -> governor::Quota {
        self.0
    }

    /// The quota with its refill time capped at about 73 years (2⁶¹ ns), so that governor's
    /// nanosecond arithmetic cannot overflow; quotas anyone uses are unchanged.
    pub(crate) fn clamped(self) -> Self {
        let interval = self.replenish_interval().as_nanos().max(1);
        let max_burst = ((1u128 << 61) / interval).clamp(1, u128::from(u32::MAX)) as u32;
        match NonZeroU32::new(max_burst) {
            Some(max) if self.burst() > max => self.with_burst(max),
            _ => self,
        }
    }
}

impl From<governor::Quota> for Quota {
    fn from(quota: governor::Quota) -> Self {
        Quota(quota)
    }
}

impl From<Quota> for governor::Quota {
    fn from(quota: Quota) -> Self {
        quota.0
    }
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quota")
            .field("burst", &self.burst())
            .field("replenish_interval", &self.replenish_interval())
            .finish()
    }
}
