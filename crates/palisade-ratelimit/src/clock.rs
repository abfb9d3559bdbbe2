//! A governor clock that follows tokio's time.

use governor::{clock::Clock, nanos::Nanos};
use tokio::time::Instant;

/// A [`governor::clock::Clock`] reading [`tokio::time::Instant`]: nanoseconds since the clock
/// was made.
///
/// Outside tests it is the monotonic clock (`tokio::time::Instant::now()` is
/// `std::time::Instant::now()` unless time is paused). Under `#[tokio::test(start_paused =
/// true)]` it follows the paused clock, so `tokio::time::advance` moves every bucket of the
/// local backend exactly — which is how this crate's tests count `burst + rate × t` calls. Make
/// the layer inside the runtime whose time it should follow.
///
/// # Example
///
/// ```
/// use std::{num::NonZeroU32, time::Duration};
/// use governor::{Quota, RateLimiter};
/// use palisade_ratelimit::TokioClock;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let limiter = RateLimiter::direct_with_clock(Quota::per_second(NonZeroU32::MIN), TokioClock::new());
/// assert!(limiter.check().is_ok());
/// assert!(limiter.check().is_err());
/// tokio::time::advance(Duration::from_secs(1)).await;
/// assert!(limiter.check().is_ok());
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    base: Instant,
}

impl TokioClock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
        }
    }

    /// The instant this clock counts from.
    pub fn base(&self) -> Instant {
        self.base
    }

    /// The `Instant` of a reading of this clock.
    pub fn instant(&self, reading: Nanos) -> Instant {
        self.base + std::time::Duration::from(reading)
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;

    #[inline]
    fn now(&self) -> Nanos {
        // `elapsed` saturates at zero, and u64 nanoseconds last 584 years.
        Nanos::from(self.base.elapsed().as_nanos() as u64)
    }
}
