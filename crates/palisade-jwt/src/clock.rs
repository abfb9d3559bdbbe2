//! The wall clock `exp` and `nbf` are checked against.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// The clock the server layer checks `exp` and `nbf` against — at first sight and again at
/// every verified-token cache hit, so a cached token is never accepted after its `exp` whatever
/// the cache's own clock says.
///
/// [`Clock::system`] (the default) reads the system time. [`Clock::tokio`] follows tokio's
/// clock, so tests with paused time (`#[tokio::test(start_paused = true)]`,
/// `tokio::time::advance`) move it.
///
/// # Example
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use palisade_jwt::Clock;
///
/// let fixed = Clock::from_fn(|| UNIX_EPOCH + Duration::from_secs(1_700_000_000));
/// assert_eq!(fixed.unix_seconds(), 1_700_000_000);
/// assert!(Clock::system().unix_seconds() > 1_700_000_000);
/// ```
#[derive(Clone, Default)]
pub struct Clock(Kind);

#[derive(Clone, Default)]
enum Kind {
    #[default]
    System,
    Tokio {
        unix_at_start: Duration,
        start: tokio::time::Instant,
    },
    Fn(Arc<dyn Fn() -> SystemTime + Send + Sync>),
}

impl Clock {
    /// The system time.
    pub fn system() -> Self {
        Clock(Kind::System)
    }

    /// The system time now, then moving as tokio's clock moves (paused, advanced, auto-advanced).
    pub fn tokio() -> Self {
        Clock(Kind::Tokio {
            unix_at_start: since_epoch(SystemTime::now()),
            start: tokio::time::Instant::now(),
        })
    }

    /// A clock of your own.
    pub fn from_fn(f: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Clock(Kind::Fn(Arc::new(f)))
    }

    /// Now, in whole seconds since the Unix epoch (the unit of `exp`, `nbf` and `iat`).
    #[inline]
    pub fn unix_seconds(&self) -> u64 {
        match &self.0 {
            Kind::System => since_epoch(SystemTime::now()).as_secs(),
            Kind::Tokio {
                unix_at_start,
                start,
            } => (*unix_at_start + start.elapsed()).as_secs(),
            Kind::Fn(f) => since_epoch(f()).as_secs(),
        }
    }
}

fn since_epoch(time: SystemTime) -> Duration {
    time.duration_since(UNIX_EPOCH).unwrap_or_default()
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Kind::System => "Clock::system()",
            Kind::Tokio { .. } => "Clock::tokio()",
            Kind::Fn(_) => "Clock::from_fn(..)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = Clock::tokio();
        let before = clock.unix_seconds();
        tokio::time::advance(Duration::from_secs(3600)).await;
        let after = clock.unix_seconds();
        assert!(
            (3600..=3601).contains(&(after - before)),
            "{before} {after}"
        );
    }
}
