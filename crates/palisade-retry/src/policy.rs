//! [`RetryPolicy`] and [`HedgePolicy`]: what a method's calls may do again, with the numbers of
//! the gRPC retry design (A6), so that a service config's `retryPolicy` and `hedgingPolicy`
//! mean the same thing here.

use std::time::Duration;

use palisade_core::{Code, CodeSet};

use crate::ConfigError;

/// The most attempts a policy may allow, the first included: A6's bound. A6 clamps a larger
/// `maxAttempts` to it; Palisade refuses one ([`ConfigError::TooManyAttempts`]), since a number
/// that is accepted should act.
pub const MAX_ATTEMPTS: u32 = 5;

/// Retries a failed call with exponential backoff and full jitter (A6's `retryPolicy`).
///
/// An attempt that failed with a retryable code before any response message started (a
/// trailers-only answer, or no answer at all) is made again after a delay drawn at random from
/// zero to `min(initial_backoff × multiplier^(n-1), max_backoff)` for the n-th retry — or
/// exactly the server's `grpc-retry-pushback-ms`, when it sent one.
///
/// ```
/// use std::time::Duration;
/// use palisade_core::{Code, CodeSet};
/// use palisade_retry::RetryPolicy;
///
/// let policy = RetryPolicy::new(3)
///     .initial_backoff(Duration::from_millis(50))
///     .max_backoff(Duration::from_millis(500))
///     .retry_on(CodeSet::of(&[Code::Unavailable, Code::ResourceExhausted]));
/// assert_eq!(policy.max_attempts(), 3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[must_use]
pub struct RetryPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) multiplier: f64,
    pub(crate) retryable: CodeSet,
}

impl RetryPolicy {
    /// At most `max_attempts` attempts, the first included (1: no retry; at most
    /// [`MAX_ATTEMPTS`]); backoff 100 ms, ×2 per retry, at most 1 s (A6's example); retried on
    /// `UNAVAILABLE` only.
    pub fn new(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
            retryable: CodeSet::of(&[Code::Unavailable]),
        }
    }

    /// The upper bound of the first retry's delay (more than zero).
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// The most any retry's delay bound grows to (at least the initial backoff).
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// What the delay bound is multiplied by after each retry (more than zero, finite).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// The codes that are retried (not `OK`, not empty); `UNAVAILABLE` only unless set.
    pub fn retry_on(mut self, codes: CodeSet) -> Self {
        self.retryable = codes;
        self
    }

    /// At most this many attempts, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The codes that are retried.
    pub fn retryable(&self) -> CodeSet {
        self.retryable
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check_attempts(self.max_attempts)?;
        if self.initial_backoff.is_zero() {
            return Err(ConfigError::Backoff(
                "initial_backoff must be more than zero",
            ));
        }
        if self.max_backoff < self.initial_backoff {
            return Err(ConfigError::Backoff(
                "max_backoff must be at least initial_backoff",
            ));
        }
        if !(self.multiplier.is_finite() && self.multiplier > 0.0) {
            return Err(ConfigError::Backoff(
                "multiplier must be a finite number more than zero",
            ));
        }
        check_codes(self.retryable)
    }

    /// The upper bound of the delay before retry number `retry` (1 for the first retry).
    pub(crate) fn backoff_bound(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(64) as i32;
        let bound = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        // Not `from_secs_f64(max)`: a max near `Duration::MAX` rounds past it as an f64.
        if bound.is_nan() || bound >= self.max_backoff.as_secs_f64() {
            return self.max_backoff;
        }
        Duration::try_from_secs_f64(bound).unwrap_or(self.max_backoff)
    }
}

/// Sends up to `max_attempts` copies of a call, `hedging_delay` apart, and keeps the first
/// answer that is not a non-fatal failure (A6's `hedgingPolicy`); the others are cancelled.
///
/// A hedge that fails with a non-fatal code starts the next one at once; any other answer —
/// success, a fatal code, or response headers (a message has started) — is the call's answer.
///
/// ```
/// use std::time::Duration;
/// use palisade_retry::HedgePolicy;
///
/// let policy = HedgePolicy::new(3, Duration::from_millis(50));
/// assert_eq!(policy.hedging_delay(), Duration::from_millis(50));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[must_use]
pub struct HedgePolicy {
    pub(crate) max_attempts: u32,
    pub(crate) hedging_delay: Duration,
    pub(crate) non_fatal: CodeSet,
}

impl HedgePolicy {
    /// At most `max_attempts` attempts (at most [`MAX_ATTEMPTS`]), one more each
    /// `hedging_delay` (zero: all at once) while none has answered; no code is non-fatal
    /// unless set (A6's default).
    pub fn new(max_attempts: u32, hedging_delay: Duration) -> Self {
        HedgePolicy {
            max_attempts,
            hedging_delay,
            non_fatal: CodeSet::EMPTY,
        }
    }

    /// The codes after which the next hedge starts at once instead of being the answer.
    pub fn non_fatal(mut self, codes: CodeSet) -> Self {
        self.non_fatal = codes;
        self
    }

    /// At most this many attempts.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The time between hedges.
    pub fn hedging_delay(&self) -> Duration {
        self.hedging_delay
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check_attempts(self.max_attempts)?;
        if self.non_fatal.contains(Code::Ok) {
            return Err(ConfigError::Codes("OK cannot be a non-fatal failure"));
        }
        Ok(())
    }
}

/// A method's policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Policy {
    Retry(RetryPolicy),
    Hedge(HedgePolicy),
}

impl Policy {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Policy::Retry(policy) => policy.validate(),
            Policy::Hedge(policy) => policy.validate(),
        }
    }

    pub(crate) fn max_attempts(&self) -> u32 {
        match self {
            Policy::Retry(policy) => policy.max_attempts,
            Policy::Hedge(policy) => policy.max_attempts,
        }
    }

    /// The codes after which another attempt may start: retryable, or non-fatal.
    pub(crate) fn retry_on(&self) -> CodeSet {
        match self {
            Policy::Retry(policy) => policy.retryable,
            Policy::Hedge(policy) => policy.non_fatal,
        }
    }
}

fn check_attempts(max_attempts: u32) -> Result<(), ConfigError> {
    match max_attempts {
        0 => Err(ConfigError::NoAttempts),
        n if n > MAX_ATTEMPTS => Err(ConfigError::TooManyAttempts(n)),
        _ => Ok(()),
    }
}

fn check_codes(codes: CodeSet) -> Result<(), ConfigError> {
    if codes.contains(Code::Ok) {
        return Err(ConfigError::Codes("OK cannot be retried"));
    }
    if codes.is_empty() {
        return Err(ConfigError::Codes(
            "a retry policy needs at least one retryable code",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_bounds_grow_to_the_max() {
        let policy = RetryPolicy::new(5)
            .initial_backoff(Duration::from_millis(100))
            .max_backoff(Duration::from_millis(350))
            .multiplier(2.0);
        let bounds: Vec<_> = (1..=4)
            .map(|n| policy.backoff_bound(n).as_millis())
            .collect();
        assert_eq!(bounds, [100, 200, 350, 350]);
        // A huge multiplier saturates at the max instead of overflowing.
        let wild = policy.multiplier(1e300);
        assert_eq!(wild.backoff_bound(60), Duration::from_millis(350));
        // A max as long as a Duration goes is a bound, not a panic.
        let unbounded = wild.max_backoff(Duration::MAX);
        assert_eq!(unbounded.backoff_bound(60), Duration::MAX);
    }

    #[test]
    fn bad_policies_are_refused() {
        assert_eq!(RetryPolicy::new(0).validate(), Err(ConfigError::NoAttempts));
        assert_eq!(
            RetryPolicy::new(6).validate(),
            Err(ConfigError::TooManyAttempts(6))
        );
        assert!(RetryPolicy::new(1).validate().is_ok(), "1 means no retry");
        assert!(
            RetryPolicy::new(3)
                .initial_backoff(Duration::ZERO)
                .validate()
                .is_err()
        );
        assert!(
            RetryPolicy::new(3)
                .initial_backoff(Duration::from_secs(2))
                .validate()
                .is_err(),
            "max below initial"
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(RetryPolicy::new(3).multiplier(bad).validate().is_err());
        }
        assert!(
            RetryPolicy::new(3)
                .retry_on(CodeSet::EMPTY)
                .validate()
                .is_err()
        );
        assert!(
            RetryPolicy::new(3)
                .retry_on(CodeSet::of(&[Code::Ok]))
                .validate()
                .is_err()
        );
        assert!(HedgePolicy::new(0, Duration::ZERO).validate().is_err());
        assert!(HedgePolicy::new(9, Duration::ZERO).validate().is_err());
        assert!(
            HedgePolicy::new(3, Duration::ZERO)
                .non_fatal(CodeSet::of(&[Code::Ok]))
                .validate()
                .is_err()
        );
    }
}
