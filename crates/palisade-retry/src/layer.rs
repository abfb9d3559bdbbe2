//! [`RetryLayer`]: retries and hedges a client's calls.

use std::{fmt, sync::Arc, time::Duration};

use palisade_core::{
    Matcher, Method, PerMethod,
    build::{BoxError, BuildLayer},
    side::Client,
};
use tower_layer::Layer;

use crate::{
    RetryBudget, body::Accounting, config::RetryBuilder, counters::Counters, policy::Policy,
    service::Retry,
};

/// Retries and hedges the calls of the services it wraps, per method; built with a
/// [`RetryBuilder`] from [`RetryLayer::client`]. See the [crate docs](crate) for an example.
///
/// Every service it makes, and every clone, shares one budget and one buffer limit: build one
/// layer per channel.
#[derive(Clone)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

impl RetryLayer {
    /// A [`RetryBuilder`] for a client's calls. Put the layer inside the deadline layer (each
    /// attempt carries what is left of the call's deadline) and outside the breaker, limit and
    /// rate limit (each attempt asks them; their rejections are never retried).
    ///
    /// ```
    /// use palisade_core::Matcher;
    /// use palisade_retry::{RetryLayer, RetryPolicy};
    ///
    /// let retry = RetryLayer::client()
    ///     .retry(Matcher::any(), RetryPolicy::new(3))
    ///     .build()
    ///     .unwrap();
    /// # let _ = retry;
    /// ```
    pub fn client() -> RetryBuilder {
        RetryBuilder::new()
    }

    pub(crate) fn from_shared(shared: Shared) -> Self {
        RetryLayer {
            shared: Arc::new(shared),
        }
    }

    /// The request bytes buffered for replay now, by every call in flight.
    pub fn buffered_bytes(&self) -> usize {
        self.shared.accounting.buffered()
    }

    /// The budget every call shares, if there is one.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.shared.budget.as_ref()
    }
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, Arc::clone(&self.shared))
    }
}

/// A built layer fits a preset's client slot as it is.
impl BuildLayer<Client> for RetryLayer {
    type Layer = Self;
    const NAME: &'static str = "retry";

    fn build_layer(self) -> Result<Self, BoxError> {
        Ok(self)
    }
}

/// What every service of one layer shares.
pub(crate) struct Shared {
    pub(crate) policies: PerMethod<Policy>,
    /// The policy of every call, when nothing is skipped and the first rule is
    /// `Matcher::any()`: no path to parse.
    pub(crate) for_every_call: Option<Policy>,
    pub(crate) skip: Option<Matcher>,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) accounting: Arc<Accounting>,
    pub(crate) max_pushback: Duration,
    pub(crate) counters: Counters,
}

impl Shared {
    /// The policy of the call to `path`, unless it is skipped or may make one attempt only.
    #[inline]
    pub(crate) fn policy_for(&self, path: &str) -> Option<Policy> {
        if let Some(policy) = self.for_every_call {
            return Some(policy).filter(|policy| policy.max_attempts() > 1);
        }
        let method = Method::parse(path);
        if self
            .skip
            .as_ref()
            .is_some_and(|skip| skip.matches(method.as_ref()))
        {
            return None;
        }
        self.policies
            .get(method.as_ref())
            .filter(|policy| policy.max_attempts() > 1)
            .copied()
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("policies", &self.policies)
            .field("for_every_call", &self.for_every_call)
            .field("skip", &self.skip)
            .field("budget", &self.budget)
            .field("accounting", &self.accounting)
            .field("max_pushback", &self.max_pushback)
            .field("counters", &self.counters)
            .finish()
    }
}
