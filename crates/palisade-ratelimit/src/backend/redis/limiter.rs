//! One rule's buckets in Redis: the script's round trip, its deadline, and the fallback.

use std::{
    collections::HashMap,
    fmt,
    num::NonZeroU32,
    sync::{Arc, LazyLock, Mutex, PoisonError},
    time::Duration,
};

use ::redis::Script;
use tokio::time::{Instant, timeout_at};

use super::{
    Inner,
    health::{Attempt, Failure, Route},
    keys,
};
use crate::{
    backend::{Acquire, BucketKey, Decision, Limiter, Origin},
    quota::Quota,
};

/// The GCRA script; `EVALSHA`, with `SCRIPT LOAD` when Redis does not have it (a restart).
static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("gcra.lua")));

/// The script's reply: tokens taken (0: denied), tokens remaining, retry after (µs), full
/// after (µs).
type Reply = (i64, i64, i64, i64);

/// What a round trip asks of the script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Take the tokens if all are there.
    Take,
    /// Give them back.
    Refund,
    /// Take as many as are there, up to the count, at least one.
    Lease,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Take => "1",
            Mode::Refund => "0",
            Mode::Lease => "2",
        }
    }
}

/// How many buckets of one limit rule may hold leased tokens at once, per instance (each entry
/// holds the bucket's key name: a few hundred bytes at most); past it, the tokens of a new
/// lease beyond its own call are dropped until old leases expire.
pub const MAX_LEASED_BUCKETS: usize = 10_000;

/// Tokens this instance took from Redis ahead of its calls, per bucket (by key name).
pub(crate) struct Leases {
    batch: u32,
    max_age: Duration,
    table: Mutex<HashMap<Box<[u8]>, Lease>>,
}

struct Lease {
    /// Tokens left to hand out.
    left: u32,
    /// Unused tokens are dropped then.
    until: Instant,
    /// The bucket's remaining tokens in Redis, and its reset, when the lease was taken.
    remaining: u32,
    reset: Duration,
}

impl Leases {
    pub(crate) fn new(batch: u32, max_age: Duration) -> Self {
        Self {
            batch,
            max_age,
            table: Mutex::new(HashMap::new()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, Lease>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A token of a live lease on this bucket, if there is one.
    fn take(&self, name: &[u8], burst: u32) -> Option<Decision> {
        let mut table = self.table();
        let lease = table.get_mut(name)?;
        if lease.left == 0 || Instant::now() >= lease.until {
            table.remove(name);
            return None;
        }
        lease.left -= 1;
        let decision = Decision::allowed(
            burst,
            lease.remaining.saturating_add(lease.left).min(burst),
            lease.reset,
        );
        if lease.left == 0 {
            table.remove(name);
        }
        Some(decision)
    }

    /// Keeps `left` tokens of a new lease.
    fn put(&self, name: Vec<u8>, left: u32, remaining: u32, reset: Duration) {
        if left == 0 {
            return;
        }
        let now = Instant::now();
        let mut table = self.table();
        if table.len() >= MAX_LEASED_BUCKETS && !table.contains_key(&*name) {
            table.retain(|_, lease| lease.until > now && lease.left > 0);
            if table.len() >= MAX_LEASED_BUCKETS {
                return;
            }
        }
        let until = now + self.max_age;
        table
            .entry(name.into_boxed_slice())
            .and_modify(|lease| {
                lease.left = lease.left.saturating_add(left);
                lease.until = until;
                lease.remaining = remaining;
                lease.reset = reset;
            })
            .or_insert(Lease {
                left,
                until,
                remaining,
                reset,
            });
    }

    /// Puts a refunded token back into a live lease; false when there is none.
    fn give_back(&self, name: &[u8], tokens: NonZeroU32) -> bool {
        let mut table = self.table();
        match table.get_mut(name) {
            Some(lease) if Instant::now() < lease.until => {
                lease.left = lease.left.saturating_add(tokens.get());
                true
            }
            _ => false,
        }
    }
}

/// What decides a rule's calls while Redis does not answer.
pub(crate) enum RuleFallback {
    Local(Arc<dyn Limiter>),
    Allow,
    Deny,
}

/// One rule: its key prefix, its quota as the script's arguments, its fallback.
pub(crate) struct Rule {
    inner: Arc<Inner>,
    base: Box<[u8]>,
    /// The token interval in microseconds, formatted once.
    interval: Box<str>,
    burst: u32,
    quota: Quota,
    hash_keys: bool,
    fallback: RuleFallback,
    leases: Option<Leases>,
}

impl Rule {
    pub(crate) fn new(
        inner: Arc<Inner>,
        base: Box<[u8]>,
        quota: Quota,
        hash_keys: bool,
        fallback: RuleFallback,
        leases: Option<Leases>,
    ) -> Self {
        let micros = quota.replenish_interval().as_nanos() as f64 / 1000.0;
        Self {
            inner,
            base,
            interval: format!("{micros:.3}").into_boxed_str(),
            burst: quota.burst().get(),
            quota,
            hash_keys,
            fallback,
            leases,
        }
    }

    /// One round trip of the script, within the call's timeout. A probe tries twice: the first
    /// attempt on a dead connection fails at once and starts a new one, which the second uses.
    async fn eval(
        &self,
        name: &[u8],
        tokens: u32,
        mode: Mode,
        route: Route,
    ) -> Result<Reply, Failure> {
        let deadline = Instant::now() + self.inner.timeout;
        let mut invocation = SCRIPT.prepare_invoke();
        invocation
            .key(name)
            .arg(&*self.interval)
            .arg(self.burst)
            .arg(tokens)
            .arg(mode.arg());
        let mut connection = self.inner.manager.clone();
        let attempts = if route == Route::Probe { 2 } else { 1 };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match timeout_at(deadline, invocation.invoke_async::<Reply>(&mut connection)).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(_)) if attempt < attempts => continue,
                Ok(Err(_)) => return Err(Failure::Error),
                Err(_) => return Err(Failure::Timeout),
            }
        }
    }

    /// The decision in the script's reply; `leased` tokens of it are kept for later calls.
    fn decision(&self, (taken, remaining, retry, reset): Reply, leased: u32) -> Decision {
        let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
        if taken >= 1 {
            let remaining = u32::try_from(remaining.clamp(0, i64::from(self.burst))).unwrap_or(0);
            Decision::allowed(
                self.burst,
                remaining.saturating_add(leased).min(self.burst),
                micros(reset),
            )
        } else {
            Decision::denied(self.burst, micros(retry), micros(reset))
        }
    }

    /// The fallback's decision; its tokens are refunded to the fallback.
    fn fall_back(&self, key: &BucketKey<'_>, tokens: NonZeroU32) -> Decision {
        self.inner.health.fell_back();
        match &self.fallback {
            RuleFallback::Local(local) => match local.acquire(key, tokens) {
                Acquire::Ready(decision) => decision,
                // The local backend always answers at once.
                Acquire::Pending(_) => Decision::allowed(self.burst, 0, Duration::ZERO),
            }
            .with_origin(Origin::Fallback),
            RuleFallback::Allow => Decision::allowed(self.burst, self.burst, Duration::ZERO)
                .with_origin(Origin::Fallback),
            RuleFallback::Deny => {
                let retry = self.inner.health.retry_interval();
                Decision::denied(self.burst, retry, retry)
            }
        }
    }
}

/// A [`BucketKey`]'s parts, owned by a call waiting for Redis (for the fallback's decision).
struct OwnedKey {
    method: Option<Box<str>>,
    value: Option<Box<[u8]>>,
}

impl OwnedKey {
    fn new(key: &BucketKey<'_>) -> Self {
        Self {
            method: key.method().map(Box::from),
            value: key.value().map(Box::from),
        }
    }

    fn key(&self) -> BucketKey<'_> {
        BucketKey::new(self.method.as_deref(), self.value.as_deref())
    }
}

/// The [`Limiter`] of one rule.
pub(crate) struct RedisLimiter(pub(crate) Arc<Rule>);

impl Limiter for RedisLimiter {
    fn acquire(&self, key: &BucketKey<'_>, tokens: NonZeroU32) -> Acquire {
        let rule = &self.0;
        // Leases serve single tokens; a call asking more makes its own round trip.
        let leases = rule.leases.as_ref().filter(|_| tokens == NonZeroU32::MIN);
        let mut name = None;
        if let Some(leases) = leases {
            let leased = name.insert(keys::name(&rule.base, key, rule.hash_keys));
            if let Some(decision) = leases.take(leased, rule.burst) {
                rule.inner.health.leased();
                return Acquire::Ready(decision);
            }
        }
        let route = rule.inner.health.route();
        if route == Route::Fallback {
            return Acquire::Ready(rule.fall_back(key, tokens));
        }
        let name = name.unwrap_or_else(|| keys::name(&rule.base, key, rule.hash_keys));
        let owned = matches!(rule.fallback, RuleFallback::Local(_)).then(|| OwnedKey::new(key));
        let (ask, mode) = match leases {
            Some(leases) => (leases.batch, Mode::Lease),
            None => (tokens.get(), Mode::Take),
        };
        // Made here, not in the future: a future dropped before it is first polled still
        // gives the probe slot back.
        let attempt = Attempt::new(rule.inner.health.clone(), route);
        let rule = rule.clone();
        Acquire::Pending(Box::pin(async move {
            match rule.eval(&name, ask, mode, attempt.route()).await {
                Ok(reply) => {
                    attempt.succeeded();
                    let mut leased = 0;
                    if let (Some(leases), Ok(taken)) = (&rule.leases, u32::try_from(reply.0))
                        && mode == Mode::Lease
                        && taken > 1
                    {
                        leased = taken - 1;
                        let remaining = u32::try_from(reply.1.max(0)).unwrap_or(u32::MAX);
                        let reset = Duration::from_micros(u64::try_from(reply.3).unwrap_or(0));
                        leases.put(name, leased, remaining, reset);
                    }
                    rule.decision(reply, leased)
                }
                Err(failure) => {
                    attempt.failed(failure);
                    let key = owned.as_ref().map(OwnedKey::key).unwrap_or_default();
                    rule.fall_back(&key, tokens)
                }
            }
        }))
    }

    /// Where the tokens came from. Redis's: into a live lease of the bucket if there is one,
    /// else in the background (a fire-and-forget round trip, within the timeout) — dropped
    /// while Redis is down (they come back with time). The fallback's: into its local
    /// buckets, even when Redis is up again.
    fn refund(&self, key: &BucketKey<'_>, tokens: NonZeroU32, origin: Origin) {
        let rule = &self.0;
        match origin {
            Origin::Fallback => {
                if let RuleFallback::Local(local) = &rule.fallback {
                    local.refund(key, tokens, Origin::Primary);
                }
            }
            Origin::Primary => {
                let name = keys::name(&rule.base, key, rule.hash_keys);
                if let Some(leases) = &rule.leases
                    && leases.give_back(&name, tokens)
                {
                    return;
                }
                if rule.inner.health.is_up() {
                    let rule = rule.clone();
                    rule.inner.runtime.clone().spawn(async move {
                        let _ = rule
                            .eval(&name, tokens.get(), Mode::Refund, Route::Redis)
                            .await;
                    });
                }
            }
        }
    }
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("key", &String::from_utf8_lossy(&self.0.base))
            .field("quota", &self.0.quota)
            .finish_non_exhaustive()
    }
}
