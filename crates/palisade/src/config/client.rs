//! The `[client]` table: the client program's flags by name, and `[[client.method]]` policy.

use std::{num::NonZeroU32, time::Duration};

use palisade_breaker::{Backoff, BreakerBuilder, BreakerLayer};
use palisade_core::{Code, CodeSet, Matcher, MethodRegistry, PerMethod, side::Client};
use palisade_deadline::{DeadlineBuilder, DeadlineLayer};
use palisade_logging::LoggingLayer;
use palisade_metrics::MetricsLayer;
use palisade_ratelimit::{
    ClientRateLimitBuilder, ClientRateLimitLayer, Limit, Quota, RateLimitLayer,
};
use palisade_retry::{HedgePolicy, RetryBudget, RetryBuilder, RetryLayer, RetryPolicy};
use palisade_trace::{TraceLayer, W3cPropagator};
use serde::Deserialize;
use tower_layer::Identity;

use super::{
    LogFormat, MatchKeys,
    error::{Problem, Segment, join},
    secret::Secret,
    server::positive,
};
use crate::preset::{ClientLayers, ClientStack};

/// The `[client]` table: every key of the `client` program's flags (`--hedge-delay` is
/// `hedge_delay`), durations in milliseconds, and per-method policy (`[[client.method]]`). A
/// key left out takes the flag's default.
///
/// ```
/// use palisade::config::Config;
///
/// let config = Config::from_toml(
///     r#"
///     [client]
///     retries = 3
///     retry_on = ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]
///
///     [[client.method]]
///     service = "palisade.demo.v1.Greeter"
///     deadline = 500
///     "#,
///     "inline.toml",
/// )
/// .unwrap();
/// let client = config.client.unwrap();
/// assert_eq!(client.retries, Some(3));
/// let _retry = client.retry(); // the retry layer's builder
/// ```
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The server (read by the program).
    pub target: Option<String>,
    /// How many calls to make (read by the program).
    pub calls: Option<u32>,
    /// The HS256 secret the program mints tokens with: `{ env = "NAME" }` or `{ file = "/path" }`.
    pub jwt_secret: Option<Secret>,
    /// The minted token's `scope` claim (read by the program).
    pub scope: Option<String>,
    /// `json` or `text` (default; read by the program).
    pub log_format: Option<LogFormat>,
    /// OTLP endpoint for spans (read by the program).
    pub otlp_endpoint: Option<String>,
    /// Milliseconds the call in flight may take to finish after SIGTERM (read by the program).
    pub grace_period: Option<u64>,
    /// Each call's deadline when it has none of its own, in ms.
    pub deadline: Option<u64>,
    /// Attempts of each call at most, the first included: 1 (default, no retry) to 5.
    pub retries: Option<u32>,
    /// Hedge instead of retry, the next attempt this many ms after the last; needs
    /// `retries` 2 or more.
    pub hedge_delay: Option<u64>,
    /// The codes retried (default `UNAVAILABLE`), or a hedge's non-fatal codes: names
    /// (`"UNAVAILABLE"`, Go's `"Unavailable"`) or numbers (`14`).
    pub retry_on: Option<Vec<GrpcCode>>,
    /// Calls per second the client allows itself, at least 1 (default 100).
    pub rate: Option<u32>,
    /// Its bucket size (default: the rate).
    pub burst: Option<u32>,
    /// How long a call waits for a rate-limit token, in ms (default 250; never past its
    /// deadline).
    pub rate_wait_ms: Option<u64>,
    /// Consecutive failures that open the breaker (default 3).
    pub failures: Option<u32>,
    /// Per-method policy, `[[client.method]]`; for each layer, the first entry that matches a
    /// call and sets that layer's keys applies.
    #[serde(default)]
    pub method: Vec<ClientMethod>,
}

/// One `[[client.method]]` entry: exactly one of `method`, `service`, `prefix`, and at least
/// one policy key.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientMethod {
    /// One method, `pkg.Service/Method`.
    pub method: Option<String>,
    /// Every method of `pkg.Service`.
    pub service: Option<String>,
    /// Every method whose full name starts with this.
    pub prefix: Option<String>,
    /// Attempts at most for these methods, 1 to 5.
    pub retries: Option<u32>,
    /// Hedge these methods this many ms apart; needs `retries` 2 or more in the entry.
    pub hedge_delay: Option<u64>,
    /// Their retried (or non-fatal) codes; needs `retries` in the entry.
    pub retry_on: Option<Vec<GrpcCode>>,
    /// Their deadline when a call has none, in ms.
    pub deadline: Option<u64>,
    /// Refused: the breaker has one threshold for every method.
    pub failures: Option<u32>,
}

/// A gRPC code in a document: a name (`"UNAVAILABLE"`, `"Unavailable"`, `"unavailable"`) or
/// its number (`14`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcCode(pub Code);

/// Every code's names, for messages.
const CODE_NAMES: &str = "OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, \
ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, \
OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED (or Go's names, or 0-16)";

fn code_from_name(name: &str) -> Option<Code> {
    let wanted: String = name
        .chars()
        .filter(|c| *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let wanted = if wanted == "cancelled" {
        "canceled".to_owned()
    } else {
        wanted
    };
    (0..=16)
        .map(Code::from_i32)
        .find(|code| palisade_core::code::go_name(*code).to_ascii_lowercase() == wanted)
}

impl<'de> Deserialize<'de> for GrpcCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = GrpcCode;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a gRPC code's name or number")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<GrpcCode, E> {
                code_from_name(value).map(GrpcCode).ok_or_else(|| {
                    let meant = CODE_NAMES
                        .split([',', ' '])
                        .filter(|name| {
                            name.len() > 1
                                && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                        })
                        .map(|name| {
                            (
                                strsim::damerau_levenshtein(&value.to_ascii_uppercase(), name),
                                name,
                            )
                        })
                        .filter(|(distance, _)| *distance <= 3)
                        .min_by_key(|(distance, _)| *distance)
                        .map(|(_, name)| format!("; did you mean `{name}`?"))
                        .unwrap_or_default();
                    E::custom(format!(
                        "unknown code {value:?}; accepted: {CODE_NAMES}{meant}"
                    ))
                })
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<GrpcCode, E> {
                match i32::try_from(value) {
                    Ok(number @ 0..=16) => Ok(GrpcCode(Code::from_i32(number))),
                    _ => Err(E::custom(format!(
                        "unknown code {value}; accepted: {CODE_NAMES}"
                    ))),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<GrpcCode, E> {
                self.visit_i64(i64::try_from(value).unwrap_or(i64::MAX))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The layers [`ClientConfig::layers`] builds (no token slot: attach one yourself).
pub type ConfigClientStack = ClientStack<
    TraceLayer<Client>,
    LoggingLayer<Client>,
    MetricsLayer<Client>,
    DeadlineLayer<Client>,
    RetryLayer,
    BreakerLayer<Client>,
    Identity,
    ClientRateLimitLayer,
    Identity,
>;

impl ClientMethod {
    fn keys(&self) -> MatchKeys<'_> {
        MatchKeys {
            method: self.method.as_deref(),
            service: self.service.as_deref(),
            prefix: self.prefix.as_deref(),
        }
    }

    /// The entry's matcher (`None` before the document is checked, if it has none or two).
    pub fn matcher(&self) -> Option<Matcher> {
        self.keys().matcher()
    }
}

/// A retry or a hedge of `attempts`, on `codes` (default `UNAVAILABLE`).
fn retry_rule(
    builder: RetryBuilder,
    matcher: Matcher,
    attempts: u32,
    hedge_delay: Option<u64>,
    codes: Option<&[GrpcCode]>,
) -> RetryBuilder {
    let codes = codes.map(|codes| CodeSet::of(&codes.iter().map(|c| c.0).collect::<Vec<_>>()));
    match hedge_delay {
        Some(ms) => builder.hedge(
            matcher,
            HedgePolicy::new(attempts, Duration::from_millis(ms))
                .non_fatal(codes.unwrap_or(CodeSet::of(&[Code::Unavailable]))),
        ),
        None => {
            let policy = RetryPolicy::new(attempts);
            builder.retry(
                matcher,
                match codes {
                    Some(codes) => policy.retry_on(codes),
                    None => policy,
                },
            )
        }
    }
}

impl ClientConfig {
    /// Every layer but the token's, in the preset's order (trace → logging → metrics →
    /// deadline → retry → breaker → ratelimit), built. Build it after the `metrics` recorder
    /// is installed.
    ///
    /// # Errors
    ///
    /// A slot's builder refused.
    pub fn layers(
        &self,
        registry: MethodRegistry,
    ) -> Result<ConfigClientStack, crate::preset::Error> {
        ClientLayers::new()
            .registry(registry)
            .trace(TraceLayer::client().propagator(W3cPropagator::new()))
            .logging(LoggingLayer::client())
            .metrics(MetricsLayer::client())
            .deadline(self.deadline())
            .retry(self.retry())
            .breaker(self.breaker().build())
            .ratelimit(self.rate_limit())
            .build()
    }

    /// Retries or hedges: each method entry with `retries` first (in order), then every call
    /// at the table's `retries` (1: none). The budget (10 tokens, earning `attempts - 1` per
    /// call that succeeds, the largest `attempts` of any rule) refuses retries only to a
    /// backend whose calls fail outright.
    pub fn retry(&self) -> RetryBuilder {
        let mut builder = RetryLayer::client();
        let mut most = self.retries.unwrap_or(1);
        for entry in &self.method {
            if let (Some(attempts), Some(matcher)) = (entry.retries, entry.matcher()) {
                most = most.max(attempts);
                builder = retry_rule(
                    builder,
                    matcher,
                    attempts,
                    entry.hedge_delay,
                    entry.retry_on.as_deref(),
                );
            }
        }
        builder = retry_rule(
            builder,
            Matcher::any(),
            self.retries.unwrap_or(1),
            self.hedge_delay,
            self.retry_on.as_deref(),
        );
        match RetryBudget::new(10, f64::from(most.saturating_sub(1).max(1))) {
            Ok(budget) => builder.budget(budget),
            // 10 tokens and a ratio from 1 to 4 are always a budget.
            Err(_) => builder,
        }
    }

    /// The deadline layer: `deadline` for calls without one, each entry's `deadline` first.
    pub fn deadline(&self) -> DeadlineBuilder<Client> {
        let mut builder = DeadlineLayer::client();
        let mut rules = PerMethod::new();
        let mut any = false;
        for entry in &self.method {
            if let (Some(ms), Some(matcher)) = (entry.deadline, entry.matcher()) {
                rules = rules.rule(matcher, Duration::from_millis(ms));
                any = true;
            }
        }
        if any {
            builder = builder.per_method(rules);
        }
        if let Some(ms) = self.deadline {
            builder = builder.default(Duration::from_millis(ms));
        }
        builder
    }

    /// The breaker: open after `failures` consecutive failures (default 3), closed again
    /// after a backoff from 1 s to 30 s.
    pub fn breaker(&self) -> BreakerBuilder<Client> {
        BreakerLayer::client()
            .consecutive_failures(self.failures.unwrap_or(3))
            .backoff(Backoff::exponential(
                Duration::from_secs(1),
                Duration::from_secs(30),
            ))
    }

    /// The client's own rate limit: `rate` calls a second (default 100), `burst` at once
    /// (default: the rate), each waiting at most `rate_wait_ms` (default 250) for a token.
    pub fn rate_limit(&self) -> ClientRateLimitBuilder {
        let rate = NonZeroU32::new(self.rate.unwrap_or(100)).unwrap_or(NonZeroU32::MIN);
        let burst = self.burst.and_then(NonZeroU32::new).unwrap_or(rate);
        RateLimitLayer::client()
            .limit(Limit::global(Quota::per_second(rate).with_burst(burst)))
            .max_wait(Duration::from_millis(self.rate_wait_ms.unwrap_or(250)))
    }

    /// Checks a configuration made or changed in code as
    /// [`Config::from_toml`](super::Config::from_toml) checks a document's; the error names the
    /// key, without a line.
    ///
    /// # Errors
    ///
    /// The first thing that cannot work.
    pub fn validate(&self) -> Result<(), super::ConfigError> {
        self.check()
            .map_err(|problem| super::load::placed(problem, "", "configuration"))
    }

    /// Everything a document cannot mean, refused with the key.
    pub(crate) fn check(&self) -> Result<(), Problem> {
        let base = [Segment::Key("client".into())];
        let at = |key: &str| join(&base, key);
        check_retry(
            &base,
            self.retries,
            self.hedge_delay,
            self.retry_on.as_deref(),
            false,
        )?;
        positive(&at("deadline"), self.deadline, "milliseconds, 1 or more")?;
        positive(&at("rate"), self.rate, "a whole number, 1 or more")?;
        positive(&at("burst"), self.burst, "a whole number, 1 or more")?;
        positive(&at("failures"), self.failures, "a whole number, 1 or more")?;
        positive(
            &at("grace_period"),
            self.grace_period,
            "milliseconds, 1 or more",
        )?;
        for (index, entry) in self.method.iter().enumerate() {
            let mut base = at("method");
            base.push(Segment::Index(index));
            let at = |key: &str| join(&base, key);
            entry.keys().check(&base)?;
            if entry.retries.is_none()
                && entry.hedge_delay.is_none()
                && entry.retry_on.is_none()
                && entry.deadline.is_none()
                && entry.failures.is_none()
            {
                return Err(Problem::at(&base, "the entry sets no policy")
                    .accepting("retries, hedge_delay, retry_on, deadline"));
            }
            check_retry(
                &base,
                entry.retries,
                entry.hedge_delay,
                entry.retry_on.as_deref(),
                true,
            )?;
            positive(&at("deadline"), entry.deadline, "milliseconds, 1 or more")?;
            if entry.failures.is_some() {
                return Err(Problem::at(
                    &at("failures"),
                    "the breaker has one threshold for every method",
                )
                .accepting("`failures` in [client]"));
            }
        }
        Ok(())
    }
}

/// `retries` 1 to 5; `hedge_delay` and `retry_on` only with 2 or more; no `OK` retried.
fn check_retry(
    base: &[Segment],
    retries: Option<u32>,
    hedge_delay: Option<u64>,
    retry_on: Option<&[GrpcCode]>,
    in_entry: bool,
) -> Result<(), Problem> {
    let at = |key: &str| join(base, key);
    if let Some(attempts) = retries
        && !(1..=palisade_retry::MAX_ATTEMPTS).contains(&attempts)
    {
        return Err(Problem::at(
            &at("retries"),
            format!("{attempts} attempts: a call makes 1 at least, 5 at most"),
        )
        .accepting("1 (no retry) to 5, the first attempt included"));
    }
    let attempts = retries.unwrap_or(1);
    let needs = if in_entry {
        "`retries = 2` or more in the same entry"
    } else {
        "`retries = 2` or more"
    };
    if hedge_delay.is_some() && attempts < 2 {
        return Err(Problem::at(
            &at("hedge_delay"),
            "hedging with one attempt has nothing to hedge",
        )
        .accepting(needs));
    }
    if let Some(codes) = retry_on {
        if attempts < 2 {
            return Err(
                Problem::at(&at("retry_on"), "codes to retry on, and no retry").accepting(needs),
            );
        }
        if codes.is_empty() {
            return Err(Problem::at(&at("retry_on"), "an empty list").accepting(CODE_NAMES));
        }
        if codes.contains(&GrpcCode(Code::Ok)) {
            return Err(
                Problem::at(&at("retry_on"), "OK is a success, never retried")
                    .accepting("failure codes such as UNAVAILABLE"),
            );
        }
    }
    Ok(())
}
