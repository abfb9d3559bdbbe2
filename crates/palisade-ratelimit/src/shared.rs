//! What every service of one layer shares: the limits with their limiters, the method table,
//! and the decision of one call.

use std::{borrow::Cow, fmt, num::NonZeroU32, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue};
use palisade_core::{Matcher, Method, PerMethod, Rejection, Side};

use crate::{
    backend::{Acquire, BucketKey, Decision, DecisionFuture, Limiter, Origin},
    key::{Key, KeyValue, NoKey, RequestInfo},
    quota::Quota,
    series::{MethodEntry, MethodTable, Planner},
};

/// `grpc-retry-pushback-ms`: how long the client should wait before retrying (gRFC A6).
pub(crate) static PUSHBACK: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");
/// `x-ratelimit-limit`.
pub(crate) static LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `x-ratelimit-remaining`.
pub(crate) static REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `x-ratelimit-reset`.
pub(crate) static RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Whether responses carry `x-ratelimit-limit`, `x-ratelimit-remaining` and
/// `x-ratelimit-reset` (IETF draft 03, as Envoy writes them): the bucket's size, the tokens
/// left, and the seconds until it is full again — of the tightest bucket the call drew from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimitHeaders {
    /// Never (the default). Rejections still carry `grpc-retry-pushback-ms`.
    #[default]
    Off,
    /// On rejections only.
    OnRejection,
    /// On every response the layer limited, allowed or rejected (allowed responses get them
    /// in their headers; this formats three numbers per call).
    Always,
}

/// One limit, built.
pub(crate) struct LimitState {
    pub(crate) quotas: PerMethod<Quota>,
    pub(crate) only: Option<Matcher>,
    pub(crate) by_method: bool,
    pub(crate) key: Option<Key>,
    pub(crate) no_key: NoKey,
    pub(crate) per_message: bool,
    /// One per rule of `quotas`, in `PerMethod::iter` order.
    pub(crate) limiters: Box<[Arc<dyn Limiter>]>,
}

impl LimitState {
    fn rule_for(&self, method: Option<&Method<'_>>) -> Option<usize> {
        if let Some(only) = &self.only
            && !only.matches(method)
        {
            return None;
        }
        let quota = self.quotas.get(method)?;
        self.quotas.iter().position(|q| std::ptr::eq(q, quota))
    }
}

impl fmt::Debug for LimitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("quotas", &self.quotas)
            .field("only", &self.only)
            .field("by_method", &self.by_method)
            .field("key", &self.key)
            .field("no_key", &self.no_key)
            .field("per_message", &self.per_message)
            .finish_non_exhaustive()
    }
}

/// The layer's state.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) side: Side,
    pub(crate) limits: Box<[LimitState]>,
    pub(crate) skip: Matcher,
    pub(crate) table: MethodTable,
    /// The rejection without its per-call metadata.
    pub(crate) template: Rejection,
    /// Its message, as configured.
    pub(crate) message: Cow<'static, str>,
    pub(crate) headers: RateLimitHeaders,
    pub(crate) shadow: bool,
    /// Client only: the longest a call waits for its tokens.
    pub(crate) max_wait: Duration,
    /// Client only, unless turned off: the servers' pushbacks holding methods' calls.
    pub(crate) pushback: Option<crate::client::Pushbacks>,
}

/// The plan-making half, usable before the table exists.
pub(crate) struct Plans<'a> {
    pub(crate) limits: &'a [LimitState],
    pub(crate) skip: &'a Matcher,
    pub(crate) side: Side,
}

impl Planner for Plans<'_> {
    fn plan(&self, method: Option<&Method<'_>>) -> (bool, Box<[(u16, u16)]>, bool) {
        if self.skip.matches(method) {
            return (true, Box::new([]), false);
        }
        let plan: Box<[(u16, u16)]> = self
            .limits
            .iter()
            .enumerate()
            .filter_map(|(index, limit)| Some((index as u16, limit.rule_for(method)? as u16)))
            .collect();
        let per_message = self.side == Side::Server
            && plan
                .iter()
                .any(|&(limit, _)| self.limits[usize::from(limit)].per_message);
        (false, plan, per_message)
    }
}

impl Planner for Shared {
    fn plan(&self, method: Option<&Method<'_>>) -> (bool, Box<[(u16, u16)]>, bool) {
        Plans {
            limits: &self.limits,
            skip: &self.skip,
            side: self.side,
        }
        .plan(method)
    }
}

/// The tightest bucket a call drew from, the plan positions it took tokens from (and which of
/// those came from a backend's fallback), and whether shadow mode let a denial through.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tally {
    pub(crate) tightest: Option<Decision>,
    /// The plan positions that gave a token.
    taken: Positions,
    /// Those whose token came from a fallback ([`Origin::Fallback`]).
    fallback: Positions,
    pub(crate) shadow_denied: bool,
}

impl Tally {
    fn record(&mut self, pos: usize, decision: &Decision, headers: bool) {
        if decision.is_allowed() {
            self.taken.insert(pos);
            if decision.origin() == Origin::Fallback {
                self.fallback.insert(pos);
            }
        }
        if headers
            && self
                .tightest
                .as_ref()
                .is_none_or(|tightest| decision.remaining() < tightest.remaining())
        {
            self.tightest = Some(decision.clone());
        }
    }

    /// Whether some limit gave a token that a refund would give back.
    pub(crate) fn has_taken(&self) -> bool {
        !self.taken.is_empty()
    }
}

/// A set of plan positions: the first 64 in a word, the others (a plan that long is rare) in
/// words allocated when first needed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Positions {
    first: u64,
    rest: Vec<u64>,
}

impl Positions {
    pub(crate) fn insert(&mut self, pos: usize) {
        if pos < 64 {
            self.first |= 1 << pos;
            return;
        }
        let word = pos / 64 - 1;
        if self.rest.len() <= word {
            self.rest.resize(word + 1, 0);
        }
        self.rest[word] |= 1 << (pos % 64);
    }

    pub(crate) fn contains(&self, pos: usize) -> bool {
        if pos < 64 {
            return self.first & (1 << pos) != 0;
        }
        self.rest
            .get(pos / 64 - 1)
            .is_some_and(|word| word & (1 << (pos % 64)) != 0)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first == 0 && self.rest.iter().all(|&word| word == 0)
    }

    /// The positions, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.first)
            .chain(self.rest.iter().copied())
            .enumerate()
            .flat_map(|(index, mut word)| {
                std::iter::from_fn(move || {
                    if word == 0 {
                        return None;
                    }
                    let bit = word.trailing_zeros() as usize;
                    word &= word - 1;
                    Some(index * 64 + bit)
                })
            })
    }
}

/// Where the checks of one call stopped.
pub(crate) enum Step {
    /// Every limit let it through.
    Done,
    /// The limit at `pos` had no token.
    Denied { pos: usize, decision: Decision },
    /// A keyed limit that rejects keyless calls found no key.
    NoKey,
    /// The limit at `pos` answers later.
    Pending { pos: usize, future: DecisionFuture },
}

const ONE: NonZeroU32 = NonZeroU32::MIN;

impl Shared {
    /// The bucket key of one limit for a call: `Ok(None)` for the shared keyless bucket,
    /// `Err` with the limit's [`NoKey`] policy when a keyless call is rejected or unlimited.
    #[inline]
    pub(crate) fn key_of<'a>(
        limit: &LimitState,
        info: &RequestInfo<'a>,
    ) -> Result<Option<KeyValue<'a>>, NoKey> {
        match &limit.key {
            None => Ok(None),
            Some(key) => match key.extract(info) {
                Some(value) => Ok(Some(value)),
                None => match limit.no_key {
                    NoKey::Shared => Ok(None),
                    other => Err(other),
                },
            },
        }
    }

    /// Checks the limits of `entry`'s plan from `from` on.
    #[inline]
    pub(crate) fn run(
        &self,
        entry: &MethodEntry,
        info: &RequestInfo<'_>,
        from: usize,
        tally: &mut Tally,
    ) -> Step {
        for (pos, &(limit, rule)) in entry.plan.iter().enumerate().skip(from) {
            let limit = &self.limits[usize::from(limit)];
            let value = match Self::key_of(limit, info) {
                Ok(value) => value,
                Err(NoKey::Reject) if !self.shadow => return Step::NoKey,
                Err(NoKey::Reject) => {
                    tally.shadow_denied = true;
                    continue;
                }
                Err(_) => continue,
            };
            let key = BucketKey::new(
                limit.by_method.then(|| info.uri().path()),
                value.as_ref().map(KeyValue::as_bytes),
            );
            match limit.limiters[usize::from(rule)].acquire(&key, ONE) {
                Acquire::Ready(decision) => {
                    if let Some(step) = self.apply(pos, decision, tally) {
                        return step;
                    }
                }
                Acquire::Pending(future) => return Step::Pending { pos, future },
            }
        }
        Step::Done
    }

    /// Takes in the decision of the limit at `pos`; `Some` when it stops the call.
    #[inline]
    pub(crate) fn apply(&self, pos: usize, decision: Decision, tally: &mut Tally) -> Option<Step> {
        tally.record(pos, &decision, self.headers != RateLimitHeaders::Off);
        if decision.is_allowed() {
            None
        } else if self.shadow {
            tally.shadow_denied = true;
            None
        } else {
            Some(Step::Denied { pos, decision })
        }
    }

    /// Gives back the tokens a refused call took from the limits before the one that refused
    /// it: a call takes a token from every limit or from none.
    #[cold]
    pub(crate) fn refund(&self, entry: &MethodEntry, info: &RequestInfo<'_>, tally: &mut Tally) {
        let taken = std::mem::take(&mut tally.taken);
        let fallback = std::mem::take(&mut tally.fallback);
        for pos in taken.iter() {
            let Some(&(limit, rule)) = entry.plan.get(pos) else {
                continue;
            };
            let limit = &self.limits[usize::from(limit)];
            if let Ok(value) = Self::key_of(limit, info) {
                let key = BucketKey::new(
                    limit.by_method.then(|| info.uri().path()),
                    value.as_ref().map(KeyValue::as_bytes),
                );
                let origin = if fallback.contains(pos) {
                    Origin::Fallback
                } else {
                    Origin::Primary
                };
                limit.limiters[usize::from(rule)].refund(&key, ONE, origin);
            }
        }
    }

    /// Counts a call that passed.
    #[inline]
    pub(crate) fn count_passed(&self, entry: &MethodEntry, tally: &Tally) {
        if tally.shadow_denied {
            entry.counters.rejected.increment(1);
        } else {
            entry.counters.allowed.increment(1);
        }
    }

    /// The rejection for a denial (`None`: a call without a key).
    #[cold]
    pub(crate) fn rejection(&self, decision: Option<&Decision>) -> Rejection {
        let mut rejection = self.template.clone();
        match decision {
            Some(decision) => {
                rejection.insert_metadata(
                    PUSHBACK.clone(),
                    HeaderValue::from(ceil_millis(decision.retry_after())),
                );
                if self.headers != RateLimitHeaders::Off {
                    let mut headers = HeaderMap::new();
                    write_headers(&mut headers, decision);
                    for (name, value) in headers {
                        if let Some(name) = name {
                            rejection.insert_metadata(name, value);
                        }
                    }
                }
            }
            None => rejection.insert_metadata(PUSHBACK.clone(), HeaderValue::from_static("-1")),
        }
        rejection
    }

    /// The `x-ratelimit-*` values to put on an allowed response, if configured.
    #[inline]
    pub(crate) fn allowed_headers(&self, tally: &Tally) -> Option<Decision> {
        match self.headers {
            RateLimitHeaders::Always => tally.tightest.clone(),
            _ => None,
        }
    }

    /// The bucket keys of the per-message limits of a call, owned for the life of its stream.
    pub(crate) fn message_charges(
        &self,
        entry: &MethodEntry,
        info: &RequestInfo<'_>,
    ) -> Box<[Charge]> {
        entry
            .plan
            .iter()
            .filter_map(|&(limit, rule)| {
                let state = &self.limits[usize::from(limit)];
                if !state.per_message {
                    return None;
                }
                let value = match Self::key_of(state, info) {
                    Ok(value) => value.map(|v| Box::<[u8]>::from(v.as_bytes())),
                    // Keyless calls the limit does not limit, or already rejected.
                    Err(_) => return None,
                };
                Some(Charge {
                    limiter: state.limiters[usize::from(rule)].clone(),
                    method: state.by_method.then(|| Box::<str>::from(info.uri().path())),
                    value,
                })
            })
            .collect()
    }
}

/// One per-message limit of a stream: its limiter and owned bucket key.
#[derive(Clone)]
pub(crate) struct Charge {
    limiter: Arc<dyn Limiter>,
    method: Option<Box<str>>,
    value: Option<Box<[u8]>>,
}

impl Charge {
    pub(crate) fn acquire(&self) -> Acquire {
        self.limiter.acquire(&self.key(), ONE)
    }

    /// Gives back a token that a decision of `origin` took.
    pub(crate) fn refund(&self, origin: Origin) {
        self.limiter.refund(&self.key(), ONE, origin);
    }

    fn key(&self) -> BucketKey<'_> {
        BucketKey::new(self.method.as_deref(), self.value.as_deref())
    }
}

impl fmt::Debug for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Charge")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

/// Writes `x-ratelimit-limit`, `-remaining` and `-reset` (whole seconds, rounded up).
pub(crate) fn write_headers(headers: &mut HeaderMap, decision: &Decision) {
    headers.insert(LIMIT.clone(), HeaderValue::from(decision.limit()));
    headers.insert(REMAINING.clone(), HeaderValue::from(decision.remaining()));
    let reset = decision.reset_after();
    let seconds = reset.as_secs() + u64::from(reset.subsec_nanos() > 0);
    headers.insert(RESET.clone(), HeaderValue::from(seconds));
}

/// Milliseconds, rounded up (a token 0.2 ms away is 1 ms away).
pub(crate) fn ceil_millis(duration: Duration) -> u64 {
    let millis = duration.as_millis();
    let rounded = millis + u128::from(duration > Duration::from_millis(millis as u64));
    u64::try_from(rounded).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_hold_any_plan_length() {
        let mut positions = Positions::default();
        assert!(positions.is_empty());
        for pos in [0, 3, 63, 64, 65, 127, 128, 1000] {
            positions.insert(pos);
        }
        assert!(!positions.is_empty());
        assert_eq!(
            positions.iter().collect::<Vec<_>>(),
            [0, 3, 63, 64, 65, 127, 128, 1000]
        );
        assert!(positions.contains(1000) && positions.contains(64));
        assert!(!positions.contains(62) && !positions.contains(999) && !positions.contains(5000));
    }

    #[test]
    fn millis_round_up() {
        assert_eq!(ceil_millis(Duration::ZERO), 0);
        assert_eq!(ceil_millis(Duration::from_micros(200)), 1);
        assert_eq!(ceil_millis(Duration::from_millis(250)), 250);
        assert_eq!(ceil_millis(Duration::from_nanos(250_000_001)), 251);
    }

    #[test]
    fn reset_is_in_whole_seconds_rounded_up() {
        let mut headers = HeaderMap::new();
        write_headers(
            &mut headers,
            &Decision::allowed(10, 3, Duration::from_millis(700)),
        );
        assert_eq!(headers[&LIMIT], "10");
        assert_eq!(headers[&REMAINING], "3");
        assert_eq!(headers[&RESET], "1");
    }
}
