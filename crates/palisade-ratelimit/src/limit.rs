//! Limits: which calls share which buckets, at which quota.

use palisade_core::{Matcher, PerMethod};

use crate::{
    key::{Key, NoKey},
    quota::Quota,
};

/// One limit: a quota per method (rules of a [`PerMethod`], first match wins), and how its
/// buckets are split — one for all calls a rule matches, one per method, one per key, or one
/// per method and key.
///
/// A layer takes any number of limits; a call draws one token from each limit that applies
/// to it, in the order the limits were added, and is rejected by the first without one — the
/// limits after it are not charged. Put narrow limits (per key) before wide ones (global), so
/// that a caller over its own quota does not spend the global one.
///
/// # Example
///
/// ```
/// use std::num::NonZeroU32;
/// use palisade_core::{Matcher, PerMethod};
/// use palisade_ratelimit::{Key, Limit, NoKey, Quota, RateLimitLayer};
///
/// let per_second = |n| Quota::per_second(NonZeroU32::new(n).unwrap());
/// let layer = RateLimitLayer::server()
///     // Each caller (by API key) 20 calls a second, bursts of 40; calls without a key are refused.
///     .limit(
///         Limit::per_key(Key::metadata("x-api-key"), per_second(20).with_burst(NonZeroU32::new(40).unwrap()))
///             .when_keyless(NoKey::Reject),
///     )
///     // Each method its own bucket: Checkout 10/s, every other method 500/s.
///     .limit(Limit::per_method(
///         PerMethod::new()
///             .rule(Matcher::method("shop.v1.Cart/Checkout"), per_second(10))
///             .default_value(per_second(500)),
///     ))
///     // And 2 000/s for the whole server.
///     .limit(Limit::global(per_second(2000)))
///     .build();
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct Limit {
    pub(crate) quotas: PerMethod<Quota>,
    pub(crate) only: Option<Matcher>,
    pub(crate) by_method: bool,
    pub(crate) key: Option<Key>,
    pub(crate) no_key: NoKey,
    pub(crate) per_message: bool,
    pub(crate) name: Option<String>,
}

impl Limit {
    /// A limit with a quota per method: calls a rule matches share that rule's bucket (unless
    /// split with [`by_method`](Limit::by_method) or [`by_key`](Limit::by_key)); calls no rule
    /// matches, when there is no default, are not limited by it.
    pub fn new(quotas: impl Into<PerMethod<Quota>>) -> Self {
        Self {
            quotas: quotas.into(),
            only: None,
            by_method: false,
            key: None,
            no_key: NoKey::default(),
            per_message: false,
            name: None,
        }
    }

    /// One bucket for every call.
    pub fn global(quota: Quota) -> Self {
        Self::new(quota)
    }

    /// One bucket per method, each at its rule's quota.
    pub fn per_method(quotas: impl Into<PerMethod<Quota>>) -> Self {
        Self::new(quotas).by_method()
    }

    /// One bucket per key.
    pub fn per_key(key: Key, quota: Quota) -> Self {
        Self::new(quota).by_key(key)
    }

    /// Splits the buckets by method too.
    #[must_use]
    pub fn by_method(mut self) -> Self {
        self.by_method = true;
        self
    }

    /// Splits the buckets by key too.
    #[must_use]
    pub fn by_key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }

    /// Applies the limit only to the calls `matcher` selects.
    #[must_use]
    pub fn only(mut self, matcher: Matcher) -> Self {
        self.only = Some(match self.only.take() {
            Some(previous) => previous.and(matcher),
            None => matcher,
        });
        self
    }

    /// What to do with calls that have no key (default: [`NoKey::Shared`]).
    #[must_use]
    pub fn when_keyless(mut self, no_key: NoKey) -> Self {
        self.no_key = no_key;
        self
    }

    /// Charges one token per received request message instead of one per call: a limit on the
    /// message rate of client streams. The call's first token is taken when it arrives (so a
    /// unary call costs one token, as before, and a stream that sends nothing costs one); each
    /// further message takes one as it is received, and a message without a token ends the
    /// request stream with the rejection's code. Server layer only, built with
    /// [`build_metered`](crate::RateLimitBuilder::build_metered) (ignored by the client
    /// layer).
    #[must_use]
    pub fn per_message(mut self) -> Self {
        self.per_message = true;
        self
    }

    /// Names the limit (default `limit{index}`): the prefix of [`LimiterSpec::id`](crate::backend::LimiterSpec::id),
    /// which shared backends use to name their keys.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Whether the limit's buckets are split by method or key.
    pub(crate) fn keyed(&self) -> bool {
        self.by_method || self.key.is_some()
    }
}

impl From<Quota> for PerMethod<Quota> {
    fn from(quota: Quota) -> Self {
        PerMethod::new().default_value(quota)
    }
}
