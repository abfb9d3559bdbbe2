//! The `[server]` table: the server program's flags by name, and `[[server.method]]` policy.

use std::{net::SocketAddr, num::NonZeroU32, path::PathBuf, time::Duration};

use palisade_core::{Matcher, MethodRegistry, PerMethod, side::Server};
use palisade_deadline::{DeadlineBuilder, DeadlineLayer};
use palisade_jwt::{JwtAuthBuilder, JwtAuthLayer, Policy, StandardClaims};
use palisade_limit::{LimitBuilder, LimitLayer};
use palisade_logging::{LoggingBuilder, LoggingLayer};
use palisade_metrics::MetricsLayer;
use palisade_ratelimit::{Key, KeyValue, Limit, Quota, RateLimitBuilder, RateLimitLayer};
use palisade_recovery::RecoveryLayer;
use palisade_trace::{TraceLayer, W3cPropagator};
use serde::Deserialize;
use tower_layer::Identity;

use super::{
    LogFormat, MatchKeys,
    error::{Problem, Segment, join},
    secret::Secret,
};
use crate::preset::{ServerLayers, ServerStack};

/// The `[server]` table: every key of the `server` program's flags (`--max-concurrent` is
/// `max_concurrent`), durations in milliseconds, and the per-method policy
/// (`[[server.method]]`). A key left out takes the flag's default.
///
/// The layers are made by [`layers`](Self::layers), or slot by slot by the builder functions
/// ([`logging`](Self::logging), [`deadline`](Self::deadline), [`auth`](Self::auth),
/// [`rate_limit`](Self::rate_limit), [`in_flight_limit`](Self::in_flight_limit)) for a program
/// that adds what a document does not say (a log writer, a Redis backend). Every call makes new
/// layers from the same settings, so a new `ServerConfig` can be built again at any time.
///
/// ```
/// use palisade::config::Config;
///
/// let config = Config::from_toml(
///     r#"
///     [server]
///     rate = 100
///     burst = 20
///
///     [[server.method]]
///     method = "palisade.demo.v1.Greeter/SayHelloStream"
///     max_concurrent = 4
///     "#,
///     "inline.toml",
/// )
/// .unwrap();
/// let server = config.server.unwrap();
/// assert_eq!(server.rate, Some(100));
/// assert_eq!(server.method[0].max_concurrent, Some(4));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// gRPC listen address (read by the program, not the layers).
    pub addr: Option<SocketAddr>,
    /// Where `GET /metrics` is served (read by the program).
    pub metrics_addr: Option<SocketAddr>,
    /// The HS256 secret tokens are verified with: `{ env = "NAME" }` or `{ file = "/path" }`.
    pub jwt_secret: Option<Secret>,
    /// A JWKS file to verify with instead of the secret.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`.
    pub jwt_issuer: Option<String>,
    /// Required `aud`.
    pub jwt_audience: Option<String>,
    /// Requests per second, at least 1; left out, no server-wide rate limit.
    pub rate: Option<u32>,
    /// Bucket size, at least 1 (default 1); needs `rate`.
    pub burst: Option<u32>,
    /// What a bucket is kept per: `global` (default), `peer`, `subject` or `metadata:NAME`;
    /// the per-method rates are kept per the same key.
    pub rate_key: Option<String>,
    /// The rate limit's buckets in this Redis (read by the program, which makes the backend).
    pub rate_redis: Option<String>,
    /// Calls in flight at most, at least 1; left out, none.
    pub max_concurrent: Option<u32>,
    /// The in-flight limit found from latency (Envoy's gradient), at most `max_concurrent`.
    pub adaptive_concurrency: Option<bool>,
    /// `json` (default) or `text` (read by the program).
    pub log_format: Option<LogFormat>,
    /// Also log a `started call` line.
    pub log_start: Option<bool>,
    /// Log one in this many `OK` calls (every other code is always logged), at least 1.
    pub log_sample_ok: Option<u64>,
    /// OTLP endpoint for spans (read by the program).
    pub otlp_endpoint: Option<String>,
    /// Milliseconds calls in flight may take to finish after SIGTERM (read by the program).
    pub grace_period: Option<u64>,
    /// No Palisade layer at all (read by the program); no layer key may be set with it.
    pub bare: Option<bool>,
    /// The longest deadline a call gets, in ms.
    pub max_deadline: Option<u64>,
    /// The deadline of a call that brings none, in ms.
    pub default_deadline: Option<u64>,
    /// The upstream Greeter `forward = true` calls (read by the program).
    pub upstream: Option<String>,
    /// Per-method policy, `[[server.method]]`; for each layer, the first entry that matches a
    /// call and sets that layer's keys applies.
    #[serde(default)]
    pub method: Vec<ServerMethod>,
}

/// One `[[server.method]]` entry: exactly one of `method`, `service`, `prefix`, and at least
/// one policy key.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerMethod {
    /// One method, `pkg.Service/Method` ([`Matcher::method`]).
    pub method: Option<String>,
    /// Every method of `pkg.Service` ([`Matcher::service`]).
    pub service: Option<String>,
    /// Every method whose full name starts with this ([`Matcher::prefix`]).
    pub prefix: Option<String>,
    /// Requests per second for these methods, instead of the server-wide `rate` (their own
    /// bucket, kept per `rate_key`).
    pub rate: Option<u32>,
    /// Their bucket size (default 1); needs `rate`.
    pub burst: Option<u32>,
    /// Calls in flight at most for each of these methods, counted apart from the others';
    /// the server-wide `max_concurrent` then limits each other method apart.
    pub max_concurrent: Option<u32>,
    /// Refused: the server's deadline layer has one max for every method.
    pub max_deadline: Option<u64>,
    /// Refused: the server's deadline layer has one default for every method.
    pub default_deadline: Option<u64>,
    /// `public` (no token read), `optional` (verified when present) or `required` (the
    /// default when `scopes` are given).
    pub auth: Option<Auth>,
    /// Scopes a valid token must all carry (`PERMISSION_DENIED` otherwise).
    pub scopes: Option<Vec<String>>,
    /// `"off"`: these calls are not logged. (A number, a per-method OK sampling, is refused:
    /// the logging layer samples one rate for every method, `log_sample_ok`.)
    pub log: Option<MethodLog>,
}

/// What a method asks of its caller's token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// No token needed, none read.
    Public,
    /// A token is verified when present.
    Optional,
    /// A valid token is required.
    Required,
}

/// A method's `log` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodLog {
    /// `"off"`: not logged.
    Off,
    /// A number: log one in `n` OK calls (refused per method, see [`ServerMethod::log`]).
    SampleOk(u64),
}

impl<'de> Deserialize<'de> for MethodLog {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = MethodLog;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#""off" or a number"#)
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<MethodLog, E> {
                match value {
                    "off" => Ok(MethodLog::Off),
                    other => Err(E::custom(format!(
                        r#"unknown value {other:?}; accepted: "off" or a number"#
                    ))),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<MethodLog, E> {
                u64::try_from(value).map(MethodLog::SampleOk).map_err(|_| {
                    E::custom("a negative sampling rate; accepted: \"off\" or a number")
                })
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<MethodLog, E> {
                Ok(MethodLog::SampleOk(value))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The key an `auth = "public"` layer is built with when no key is configured: with every
/// method public, no token is ever read, so it verifies nothing.
const AUTH_OFF_KEY: &[u8] = b"palisade-config: authentication off, this key verifies nothing";

/// The layers [`ServerConfig::layers`] builds: every slot filled, one type whatever the
/// document says (a layer the document leaves off is built to pass every call).
pub type ConfigServerStack = ServerStack<
    TraceLayer<Server>,
    LoggingLayer<Server>,
    MetricsLayer<Server>,
    DeadlineLayer<Server>,
    JwtAuthLayer,
    RateLimitLayer,
    LimitLayer<Server>,
    Identity,
    RecoveryLayer,
>;

impl ServerMethod {
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

    fn jwt_policy(&self) -> Option<Policy<StandardClaims>> {
        let policy = match (self.auth, &self.scopes) {
            (None, None) => return None,
            (Some(Auth::Public), _) => Policy::public(),
            (Some(Auth::Optional), _) => Policy::optional(),
            (Some(Auth::Required) | None, _) => Policy::authenticated(),
        };
        Some(match &self.scopes {
            Some(scopes) => policy.scopes(scopes.iter().cloned()),
            None => policy,
        })
    }
}

impl ServerConfig {
    /// Whether tokens are verified: a secret or a JWKS file is configured.
    pub fn auth_enabled(&self) -> bool {
        self.jwt_secret.is_some() || self.jwks_file.is_some()
    }

    /// Whether any rate limit is configured, server-wide or per method.
    pub fn rate_limited(&self) -> bool {
        self.rate.is_some() || self.method.iter().any(|entry| entry.rate.is_some())
    }

    /// Whether any in-flight limit is configured.
    pub fn in_flight_limited(&self) -> bool {
        self.max_concurrent.is_some()
            || self.adaptive_concurrency == Some(true)
            || self
                .method
                .iter()
                .any(|entry| entry.max_concurrent.is_some())
    }

    /// Every layer, in the preset's order (trace → logging → metrics → deadline → auth →
    /// ratelimit → limit → recovery), built; health checks and reflection are never logged,
    /// limited, authenticated or given a deadline. Build it after the `metrics` recorder is
    /// installed.
    ///
    /// # Errors
    ///
    /// A slot's builder refused (a JWKS file that does not parse).
    pub fn layers(
        &self,
        registry: MethodRegistry,
    ) -> Result<ConfigServerStack, crate::preset::Error> {
        ServerLayers::new()
            .registry(registry)
            .trace(TraceLayer::server().propagator(W3cPropagator::new()))
            .logging(self.logging())
            .metrics(MetricsLayer::server())
            .deadline(self.deadline())
            .auth(self.auth())
            .ratelimit(self.rate_limit())
            .limit(self.in_flight_limit())
            .recovery(RecoveryLayer::server())
            .build()
    }

    /// The logging layer: `log_start`, `log_sample_ok`, and the methods with `log = "off"`
    /// skipped (health and reflection too).
    pub fn logging(&self) -> LoggingBuilder<Server> {
        let mut builder = LoggingLayer::server()
            .skip(Matcher::health_and_reflection())
            .log_start(self.log_start.unwrap_or(false));
        if let Some(n) = self.log_sample_ok {
            builder = builder.sample_ok(n);
        }
        for entry in &self.method {
            if let (Some(MethodLog::Off), Some(matcher)) = (entry.log, entry.matcher()) {
                builder = builder.skip(matcher);
            }
        }
        builder
    }

    /// The deadline layer: `max_deadline`, `default_deadline` (health and reflection
    /// skipped: a reflection stream may stay open as long as its client wants).
    pub fn deadline(&self) -> DeadlineBuilder<Server> {
        let mut builder = DeadlineLayer::server().skip(Matcher::health_and_reflection());
        if let Some(ms) = self.max_deadline {
            builder = builder.max(Duration::from_millis(ms));
        }
        if let Some(ms) = self.default_deadline {
            builder = builder.default(Duration::from_millis(ms));
        }
        builder
    }

    /// JWT verification: the secret or the JWKS file, issuer, audience, each method's `auth`
    /// and `scopes`; health and reflection public. Without a key, every method is public (no
    /// token is read) — the document refuses `scopes` or `auth` then.
    pub fn auth(&self) -> JwtAuthBuilder {
        let builder = JwtAuthLayer::server();
        let mut builder = match (&self.jwks_file, &self.jwt_secret) {
            (Some(path), _) => builder.jwks_file(path),
            (None, Some(secret)) => builder.secret(secret.expose()),
            (None, None) => {
                return builder
                    .secret(AUTH_OFF_KEY)
                    .default_policy(Policy::public());
            }
        };
        if let Some(issuer) = &self.jwt_issuer {
            builder = builder.issuer(issuer);
        }
        if let Some(audience) = &self.jwt_audience {
            builder = builder.audience(audience);
        }
        builder = builder.skip(Matcher::health_and_reflection());
        for entry in &self.method {
            if let (Some(policy), Some(matcher)) = (entry.jwt_policy(), entry.matcher()) {
                builder = builder.policy(matcher, policy);
            }
        }
        builder
    }

    /// The rate limit: one limit whose quota is the first matching method entry's `rate` and
    /// `burst`, else the server-wide one (each rule its own buckets), kept per `rate_key`,
    /// named `server-{rate_key}` (servers sharing a Redis share buckets by name). Without any
    /// rate, a layer that passes every call and registers no series.
    pub fn rate_limit(&self) -> RateLimitBuilder {
        let builder = RateLimitLayer::server().skip(Matcher::health_and_reflection());
        let mut quotas = PerMethod::new();
        for entry in &self.method {
            if let (Some(quota), Some(matcher)) = (quota(entry.rate, entry.burst), entry.matcher())
            {
                quotas = quotas.rule(matcher, quota);
            }
        }
        if let Some(quota) = quota(self.rate, self.burst) {
            quotas = quotas.default_value(quota);
        }
        if !self.rate_limited() {
            return builder
                .limit(Limit::global(Quota::per_second(NonZeroU32::MIN)))
                .skip(Matcher::any())
                .recorder(std::sync::Arc::new(metrics::NoopRecorder));
        }
        let key_name = self.rate_key.as_deref().unwrap_or("global");
        let limit = match rate_key(key_name) {
            Some(Some(key)) => Limit::new(quotas).by_key(key),
            _ => Limit::new(quotas),
        };
        builder.limit(limit.named(format!("server-{key_name}")))
    }

    /// The in-flight limit, named `server`: `max_concurrent` (or adaptive), or per method
    /// when an entry sets `max_concurrent`. Without any, a layer that passes every call and
    /// registers no series.
    pub fn in_flight_limit(&self) -> LimitBuilder<Server> {
        let builder = LimitLayer::server()
            .name("server")
            .skip(Matcher::health_and_reflection());
        let rules: Vec<_> = self
            .method
            .iter()
            .filter_map(|entry| Some((entry.matcher()?, entry.max_concurrent?)))
            .collect();
        if !rules.is_empty() {
            let mut limits = PerMethod::new();
            for (matcher, limit) in rules {
                limits = limits.rule(matcher, limit);
            }
            if let Some(limit) = self.max_concurrent {
                limits = limits.default_value(limit);
            }
            return builder.per_method(limits);
        }
        match (
            self.adaptive_concurrency.unwrap_or(false),
            self.max_concurrent,
        ) {
            // Off: a layer that passes every call and registers no series (no `limit 1` gauge).
            (false, None) => builder
                .max_in_flight(1)
                .skip(Matcher::any())
                .recorder(metrics::NoopRecorder),
            (false, Some(limit)) => builder.max_in_flight(limit),
            (true, max) => {
                let defaults = palisade_limit::adaptive::GradientConfig::default();
                let max_limit = max.unwrap_or(defaults.max_limit);
                builder.adaptive(palisade_limit::adaptive::GradientConfig {
                    max_limit,
                    initial_limit: defaults.initial_limit.min(max_limit),
                    min_concurrency: defaults.min_concurrency.min(max_limit),
                    ..defaults
                })
            }
        }
    }

    /// Checks a configuration made or changed in code (a program merging its flags into a
    /// document's) as [`Config::from_toml`](super::Config::from_toml) checks a document's; the
    /// error names the key, without a line.
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
        let base = [Segment::Key("server".into())];
        let at = |key: &str| join(&base, key);
        if self.bare == Some(true) {
            let layered = [
                ("jwt_secret", self.jwt_secret.is_some()),
                ("jwks_file", self.jwks_file.is_some()),
                ("jwt_issuer", self.jwt_issuer.is_some()),
                ("jwt_audience", self.jwt_audience.is_some()),
                ("rate", self.rate.is_some()),
                ("burst", self.burst.is_some()),
                ("rate_key", self.rate_key.is_some()),
                ("rate_redis", self.rate_redis.is_some()),
                ("max_concurrent", self.max_concurrent.is_some()),
                ("adaptive_concurrency", self.adaptive_concurrency.is_some()),
                ("log_start", self.log_start.is_some()),
                ("log_sample_ok", self.log_sample_ok.is_some()),
                ("max_deadline", self.max_deadline.is_some()),
                ("default_deadline", self.default_deadline.is_some()),
                ("upstream", self.upstream.is_some()),
                ("method", !self.method.is_empty()),
            ];
            if let Some((key, _)) = layered.iter().find(|(_, set)| *set) {
                return Err(Problem::at(
                    &at(key),
                    "configures a layer, and `bare = true` serves with none",
                ));
            }
        }
        if self.jwt_secret.is_some() && self.jwks_file.is_some() {
            return Err(Problem::at(
                &at("jwks_file"),
                "two keys to verify with: `jwt_secret` and `jwks_file`",
            )
            .accepting("one of them"));
        }
        if let Some(path) = &self.jwks_file
            && let Err(error) = std::fs::metadata(path)
        {
            return Err(Problem::at(
                &at("jwks_file"),
                format!("`{}` cannot be read: {error}", path.display()),
            ));
        }
        positive(&at("rate"), self.rate, "omit `rate` for no rate limit")?;
        positive(&at("burst"), self.burst, "a whole number, 1 or more")?;
        if self.burst.is_some() && self.rate.is_none() {
            return Err(
                Problem::at(&at("burst"), "`burst` without `rate` limits nothing")
                    .accepting("`rate = N` beside it"),
            );
        }
        if let Some(key) = &self.rate_key {
            if rate_key(key).is_none() {
                return Err(Problem::at(&at("rate_key"), format!("unknown key {key:?}"))
                    .accepting("global, peer, subject or metadata:NAME (a valid header name)"));
            }
            if !self.rate_limited() {
                return Err(Problem::at(
                    &at("rate_key"),
                    "`rate_key` without any `rate`",
                ));
            }
        }
        if self.rate_redis.is_some() && !self.rate_limited() {
            return Err(Problem::at(
                &at("rate_redis"),
                "`rate_redis` without any `rate`",
            ));
        }
        positive(
            &at("max_concurrent"),
            self.max_concurrent,
            "omit `max_concurrent` for no in-flight limit",
        )?;
        positive(
            &at("log_sample_ok"),
            self.log_sample_ok,
            "1 (every call) or more",
        )?;
        positive(
            &at("max_deadline"),
            self.max_deadline,
            "milliseconds, 1 or more",
        )?;
        positive(
            &at("default_deadline"),
            self.default_deadline,
            "milliseconds, 1 or more",
        )?;
        positive(
            &at("grace_period"),
            self.grace_period,
            "milliseconds, 1 or more",
        )?;
        if let (Some(default), Some(max)) = (self.default_deadline, self.max_deadline)
            && default > max
        {
            return Err(Problem::at(
                &at("default_deadline"),
                format!("{default} ms is over `max_deadline` ({max} ms)"),
            ));
        }
        let per_method_limit = self.method.iter().any(|e| e.max_concurrent.is_some());
        if self.adaptive_concurrency == Some(true) && per_method_limit {
            return Err(Problem::at(
                &at("adaptive_concurrency"),
                "the adaptive limit is one for the whole server; per-method `max_concurrent` is fixed",
            )
            .accepting("adaptive_concurrency, or per-method max_concurrent, not both"));
        }
        for (index, entry) in self.method.iter().enumerate() {
            let mut base = at("method");
            base.push(Segment::Index(index));
            self.check_method(&base, entry)?;
        }
        Ok(())
    }

    fn check_method(&self, base: &[Segment], entry: &ServerMethod) -> Result<(), Problem> {
        let at = |key: &str| join(base, key);
        entry.keys().check(base)?;
        let sets = entry.rate.is_some()
            || entry.burst.is_some()
            || entry.max_concurrent.is_some()
            || entry.max_deadline.is_some()
            || entry.default_deadline.is_some()
            || entry.auth.is_some()
            || entry.scopes.is_some()
            || entry.log.is_some();
        if !sets {
            return Err(Problem::at(base, "the entry sets no policy")
                .accepting("rate, burst, max_concurrent, auth, scopes, log"));
        }
        positive(&at("rate"), entry.rate, "a whole number, 1 or more")?;
        positive(&at("burst"), entry.burst, "a whole number, 1 or more")?;
        if entry.burst.is_some() && entry.rate.is_none() {
            return Err(
                Problem::at(&at("burst"), "`burst` without `rate` limits nothing")
                    .accepting("`rate = N` beside it"),
            );
        }
        positive(
            &at("max_concurrent"),
            entry.max_concurrent,
            "a whole number, 1 or more",
        )?;
        for key in ["max_deadline", "default_deadline"] {
            let set = match key {
                "max_deadline" => entry.max_deadline.is_some(),
                _ => entry.default_deadline.is_some(),
            };
            if set {
                return Err(Problem::at(
                    &at(key),
                    "the server's deadline layer has one max and one default for every method",
                )
                .accepting(format!(
                    "`{key}` in [server]; per-method deadlines are a client's ([[client.method]] deadline)"
                )));
            }
        }
        if let Some(scopes) = &entry.scopes {
            if scopes.is_empty() || scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
                return Err(Problem::at(&at("scopes"), "an empty list or scope")
                    .accepting(r#"scope names without spaces: ["greeter.stream"]"#));
            }
            if entry.auth == Some(Auth::Public) {
                return Err(Problem::at(
                    &at("scopes"),
                    "scopes on a public method: no token is read",
                )
                .accepting(r#"auth = "required" or "optional" with scopes"#));
            }
        }
        if (entry.scopes.is_some() || entry.auth.is_some()) && !self.auth_enabled() {
            let key = if entry.scopes.is_some() {
                "scopes"
            } else {
                "auth"
            };
            return Err(Problem::at(&at(key), "no key to verify tokens with")
                .accepting("`jwt_secret` or `jwks_file` in [server]"));
        }
        if let Some(MethodLog::SampleOk(_)) = entry.log {
            return Err(Problem::at(
                &at("log"),
                "the logging layer samples OK calls at one rate for every method",
            )
            .accepting(r#""off", or `log_sample_ok = N` in [server]"#));
        }
        Ok(())
    }
}

/// A quota from a rate and a burst (1 by default), if there is a rate.
fn quota(rate: Option<u32>, burst: Option<u32>) -> Option<Quota> {
    let rate = NonZeroU32::new(rate?)?;
    let burst = NonZeroU32::new(burst.unwrap_or(1)).unwrap_or(NonZeroU32::MIN);
    Some(Quota::per_second(rate).with_burst(burst))
}

/// `rate_key`'s key: `Some(None)` for global, `None` for a key that is not one.
fn rate_key(name: &str) -> Option<Option<Key>> {
    match name {
        "global" => Some(None),
        "peer" => Some(Some(Key::peer_ip())),
        "subject" => Some(Some(Key::extension(|claims: &StandardClaims| {
            claims.subject().map(KeyValue::from)
        }))),
        other => other
            .strip_prefix("metadata:")
            .and_then(|name| Key::try_metadata(name).ok())
            .map(Some),
    }
}

/// Refuses a zero.
pub(crate) fn positive<T: Into<u64> + Copy>(
    path: &[Segment],
    value: Option<T>,
    accepted: &str,
) -> Result<(), Problem> {
    match value {
        Some(value) if value.into() == 0 => {
            Err(Problem::at(path, "0 is meaningless here").accepting(accepted))
        }
        _ => Ok(()),
    }
}
