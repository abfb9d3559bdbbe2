//! [`RetryBudget`]: gRPC's `retryThrottling`, the token bucket that keeps a dead backend from
//! seeing `max_attempts ×` the calls.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::ConfigError;

/// Tokens are kept in thousandths, as A6 specifies three decimal places.
const MILLI: u32 = 1000;

/// The most tokens a budget may hold (A6's bound on `maxTokens`).
pub const MAX_TOKENS: u32 = 1000;

/// A per-channel retry budget, as gRPC's `retryThrottling` (A6): the bucket starts full at
/// `max_tokens`; every attempt that fails with a retryable (or, hedging, a non-fatal) code
/// takes one token, every call answered `OK` (or whose response messages started) puts
/// `token_ratio` back; retries and hedges are made only while more than half the tokens are
/// left. A first attempt is never refused.
///
/// So while a backend fails every call, it sees about `max_tokens / 2` retries in all, then
/// one attempt per call; a healthy backend, for every failure, earns `1 / token_ratio` calls
/// of retrying.
///
/// ```
/// use palisade_retry::RetryBudget;
///
/// let budget = RetryBudget::new(10, 0.1).unwrap(); // the layer's default
/// assert!(RetryBudget::new(0, 0.1).is_err());
/// assert!(RetryBudget::new(10, 0.0).is_err());
/// # let _ = budget;
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    /// Thousandths of a token.
    tokens: AtomicU32,
    max: u32,
    ratio: u32,
}

impl RetryBudget {
    /// A budget of `max_tokens` (1 to [`MAX_TOKENS`]) earning `token_ratio` (more than 0, in
    /// thousandths: 0.0005 is 0) per successful call.
    pub fn new(max_tokens: u32, token_ratio: f64) -> Result<Self, ConfigError> {
        if max_tokens == 0 || max_tokens > MAX_TOKENS {
            return Err(ConfigError::Budget("max_tokens must be 1 to 1000"));
        }
        let ratio = token_ratio * f64::from(MILLI);
        if !(ratio.is_finite() && ratio >= 1.0 && ratio <= f64::from(max_tokens * MILLI)) {
            return Err(ConfigError::Budget(
                "token_ratio must be at least 0.001 and at most max_tokens",
            ));
        }
        let max = max_tokens * MILLI;
        Ok(RetryBudget {
            tokens: AtomicU32::new(max),
            max,
            ratio: ratio as u32,
        })
    }

    /// The layer's default: 10 tokens, 0.1 per success.
    pub(crate) fn default_budget() -> Self {
        Self::new(10, 0.1).expect("valid numbers")
    }

    /// Whether a retry or hedge may be made now.
    pub fn allows(&self) -> bool {
        self.tokens.load(Ordering::Relaxed) > self.max / 2
    }

    /// The tokens left, in whole tokens.
    pub fn tokens(&self) -> f64 {
        f64::from(self.tokens.load(Ordering::Relaxed)) / f64::from(MILLI)
    }

    /// An attempt failed with a retryable (or non-fatal) code.
    pub(crate) fn on_failure(&self) {
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tokens| {
                Some(tokens.saturating_sub(MILLI))
            });
    }

    /// A call succeeded.
    pub(crate) fn on_success(&self) {
        let (max, ratio) = (self.max, self.ratio);
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tokens| {
                (tokens < max).then(|| tokens.saturating_add(ratio).min(max))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_spend_half_the_bucket_then_retries_stop() {
        let budget = RetryBudget::new(10, 0.1).unwrap();
        let mut allowed = 0;
        for _ in 0..100 {
            if budget.allows() {
                allowed += 1;
            }
            budget.on_failure();
        }
        assert_eq!(allowed, 5, "10 tokens, retries while more than 5 are left");
        assert_eq!(budget.tokens(), 0.0, "never below zero");
        // Ten successes earn one token back: 51 bring it above the threshold again.
        for _ in 0..50 {
            budget.on_success();
        }
        assert!(!budget.allows(), "5.0 is not more than half");
        budget.on_success();
        assert!(budget.allows());
        for _ in 0..1000 {
            budget.on_success();
        }
        assert_eq!(budget.tokens(), 10.0, "capped at max_tokens");
    }

    #[test]
    fn bad_budgets_are_refused() {
        for (max, ratio) in [
            (0, 0.1),
            (1001, 0.1),
            (10, 0.0),
            (10, -1.0),
            (10, f64::NAN),
            (10, 0.0004),
            (10, 11.0),
        ] {
            assert!(RetryBudget::new(max, ratio).is_err(), "{max} {ratio}");
        }
        assert!(RetryBudget::new(1000, 0.001).is_ok());
    }
}
