//! The demo client's full stack, shared by the `client` and `stack` programs: trace (inject) →
//! logging → metrics → deadline → retry → breaker → ratelimit (wait) → jwt (attach) → channel.

use std::{path::PathBuf, time::Duration};

use clap::{ArgMatches, Args, FromArgMatches, parser::ValueSource};
use palisade::config::{ClientConfig, Config, Secret};
use palisade::prelude::*;
use palisade_core::side::Client;
use palisade_deadline::DeadlineLayer;
use palisade_jwt::mint::HmacMinter;
use palisade_retry::RetryLayer;
use tonic::transport::{Channel, Endpoint};
use tower::layer::util::Identity;

use crate::{
    BoxError,
    pb::greeter_client::GreeterClient,
    server::{DEMO_SECRET, Merge},
    shutdown,
    telemetry::LogFormat,
};

/// The demo client's flags.
///
/// With `--config FILE`, the file's `[client]` table takes every flag by name (`hedge_delay`,
/// durations in ms) plus per-method policy (`[[client.method]]`); a flag given on the command
/// line fills a key the file leaves out, and a key set in both places is refused.
#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// Read the configuration from this TOML file's `[client]` table (see
    /// examples/palisade.toml): every flag by name, and per-method policy. A flag given beside
    /// it fills a key the file leaves out; one the file sets too is refused.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The server.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// How many calls to make.
    #[arg(long, default_value_t = 10)]
    pub calls: u32,
    /// HS256 secret to mint the client's short-lived token with (`sub` = demo-client).
    /// A `jwt_secret` in the `--config` file wins over `PALISADE_JWT_SECRET`; given as a flag
    /// too, it is refused.
    #[arg(long, env = "PALISADE_JWT_SECRET", default_value = DEMO_SECRET, hide_env_values = true)]
    pub jwt_secret: String,
    /// The token's space-separated `scope` claim.
    #[arg(long)]
    pub scope: Option<String>,
    /// Log format of the client's own logs, to stdout.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Export spans with OTLP (gRPC) to this endpoint. Without it no span is sampled (trace
    /// ids still propagate), unless `OTEL_TRACES_SAMPLER` says otherwise.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// How long the call in flight may take to finish after SIGTERM or SIGINT, before the
    /// client stops anyway: milliseconds, or with a unit (`500ms`, `10s`).
    #[arg(long, default_value = "10s", value_parser = shutdown::parse_grace_period)]
    pub grace_period: Duration,
    /// Each call's deadline, in ms (sent as `grpc-timeout`, less a 5 ms margin, and enforced
    /// by the client too); none by default.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub deadline: Option<u64>,
    /// Attempts of each call at most, the first included (1: no retry; at most 5): retried on
    /// UNAVAILABLE, with backoff, the server's pushback and the deadline obeyed.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5))]
    pub retries: u32,
    /// With `--retries 2` or more: hedge instead of retry, starting the next attempt this many
    /// ms after the last while none has answered.
    #[arg(long, value_name = "MS")]
    pub hedge_delay: Option<u64>,
    /// Calls per second the client allows itself.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Calls at once the client's rate limit allows (default: the rate).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub burst: Option<u32>,
    /// How long a call waits for a rate-limit token, in ms (never past its deadline).
    #[arg(long, value_name = "MS", default_value_t = 250)]
    pub rate_wait_ms: u64,
    /// Consecutive failures that open the breaker.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub failures: u32,
    /// The flags given on the command line (ids), filled by [`ClientArgs::from_matches`]; a
    /// flag whose value differs from its default counts as given too.
    #[arg(skip)]
    pub given: Vec<String>,
}

impl ClientArgs {
    /// The flags `matches` holds, remembering which were given on the command line.
    pub fn from_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = Self::from_arg_matches(matches)?;
        args.given = matches
            .ids()
            .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine))
            .map(|id| id.as_str().to_owned())
            .collect();
        Ok(args)
    }

    /// The configuration the client runs with: the `--config` file's `[client]` table (if
    /// any), the flags given for the keys it leaves out, their defaults for the rest.
    ///
    /// # Errors
    ///
    /// The file's [`ConfigError`](palisade::config::ConfigError), a flag given for a key the
    /// file sets too, or a merged configuration that cannot work.
    pub fn client_config(&self) -> Result<ClientConfig, BoxError> {
        let (mut c, file) = match &self.config {
            Some(path) => {
                let client = Config::load(path)?
                    .client
                    .ok_or_else(|| format!("{}: no [client] table (--config)", path.display()))?;
                (client, Some(path.display().to_string()))
            }
            None => (ClientConfig::default(), None),
        };
        let a = self;
        let given = |id: &str| a.given.iter().any(|given| given == id);
        let mut merge = Merge::new(file.as_deref());
        merge.set(
            &mut c.target,
            "target",
            given("target"),
            Some(a.target.clone()),
        );
        merge.set(&mut c.calls, "calls", given("calls"), Some(a.calls));
        merge.set(
            &mut c.jwt_secret,
            "jwt_secret",
            given("jwt_secret"),
            Some(Secret::given(a.jwt_secret.clone())),
        );
        merge.set(&mut c.scope, "scope", a.scope.is_some(), a.scope.clone());
        merge.set(
            &mut c.log_format,
            "log_format",
            given("log_format"),
            Some(a.log_format.into()),
        );
        merge.set(
            &mut c.otlp_endpoint,
            "otlp_endpoint",
            a.otlp_endpoint.is_some(),
            a.otlp_endpoint.clone(),
        );
        merge.set(
            &mut c.grace_period,
            "grace_period",
            given("grace_period"),
            Some(u64::try_from(a.grace_period.as_millis()).unwrap_or(u64::MAX)),
        );
        merge.set(
            &mut c.deadline,
            "deadline",
            a.deadline.is_some(),
            a.deadline,
        );
        merge.set(
            &mut c.retries,
            "retries",
            given("retries") || a.retries != 1,
            Some(a.retries),
        );
        merge.set(
            &mut c.hedge_delay,
            "hedge_delay",
            a.hedge_delay.is_some(),
            a.hedge_delay,
        );
        merge.set(
            &mut c.rate,
            "rate",
            given("rate") || a.rate != 100,
            Some(a.rate),
        );
        merge.set(&mut c.burst, "burst", a.burst.is_some(), a.burst);
        merge.set(
            &mut c.rate_wait_ms,
            "rate_wait_ms",
            given("rate_wait_ms") || a.rate_wait_ms != 250,
            Some(a.rate_wait_ms),
        );
        merge.set(
            &mut c.failures,
            "failures",
            given("failures") || a.failures != 3,
            Some(a.failures),
        );
        merge.finish()?;
        c.target.get_or_insert_with(|| a.target.clone());
        c.calls.get_or_insert(a.calls);
        c.jwt_secret
            .get_or_insert_with(|| Secret::given(a.jwt_secret.clone()));
        c.log_format.get_or_insert(a.log_format.into());
        c.grace_period
            .get_or_insert(u64::try_from(a.grace_period.as_millis()).unwrap_or(u64::MAX));
        c.validate()?;
        Ok(c)
    }
}

/// The subject of the tokens the demo client mints.
pub const CLIENT_SUBJECT: &str = "demo-client";

/// The demo client's layers, outermost first.
pub type DemoClientStack = palisade::preset::ClientStack<
    TraceLayer<Client>,
    LoggingLayer<Client>,
    MetricsLayer<Client>,
    DeadlineLayer<Client>,
    RetryLayer,
    BreakerLayer<Client>,
    Identity,
    ClientRateLimitLayer,
    AttachTokenLayer<HmacMinter>,
>;

/// What the client stack is made of.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The HS256 secret tokens are minted with.
    pub jwt_secret: String,
    /// The space-separated `scope` claim, if any.
    pub scope: Option<String>,
    /// How long a minted token lives (it is refreshed before it expires).
    pub token_ttl: Duration,
    /// Retries (or hedges) outside the breaker: [`retry`], or [`ClientConfig::retry`].
    pub retry: RetryLayer,
    /// The breaker around the channel ([`ClientConfig::breaker`]).
    pub breaker: BreakerLayer<palisade_core::side::Client>,
    /// The rest: each call's deadline when it has none of its own (and none inherited from a
    /// handler), per method too, and the client's own rate limit (it waits for a token, never
    /// past the deadline), built by [`ClientConfig::deadline`] and
    /// [`ClientConfig::rate_limit`].
    pub config: ClientConfig,
}

impl ClientOptions {
    /// The options `config` describes, tokens minted with its secret (its `scope` claim) and
    /// living 5 minutes; the breaker is named `greeter`. Build it after the metrics recorder
    /// is installed.
    ///
    /// # Errors
    ///
    /// A layer's builder refused.
    pub fn from_config(config: &ClientConfig) -> Result<Self, BoxError> {
        let registry =
            MethodRegistry::from_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)?;
        Ok(ClientOptions {
            jwt_secret: config
                .jwt_secret
                .as_ref()
                .map_or(DEMO_SECRET, |secret| secret.expose())
                .to_owned(),
            scope: config.scope.clone(),
            token_ttl: Duration::from_secs(300),
            retry: config.retry().registry(registry).build()?,
            breaker: config.breaker().name("greeter").build(),
            config: config.clone(),
        })
    }
}

/// The minter of the client's short-lived HS256 tokens (`sub` = [`CLIENT_SUBJECT`]).
pub fn minter(secret: &str, scope: Option<&str>, ttl: Duration) -> HmacMinter {
    let minter = HmacMinter::hs256(secret).subject(CLIENT_SUBJECT).ttl(ttl);
    match scope {
        Some(scope) => minter.scope(scope),
        None => minter,
    }
}

/// The full client stack for `target`. Build it after the metrics recorder is installed.
pub fn layers(
    target: &Endpoint,
    options: &ClientOptions,
) -> Result<DemoClientStack, palisade::preset::Error> {
    let registry = MethodRegistry::from_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .expect("the demo's descriptor set decodes");
    let uri = target.uri();
    let trace = match (uri.host(), uri.port_u16()) {
        (Some(host), Some(port)) => TraceLayer::client()
            .propagator(palisade_trace::W3cPropagator::new())
            .server_address(host, port),
        _ => TraceLayer::client().propagator(palisade_trace::W3cPropagator::new()),
    };
    ClientLayers::new()
        .registry(registry.clone())
        .trace(trace)
        .logging(crate::telemetry::access_log(LoggingLayer::client()))
        .metrics(MetricsLayer::client())
        .deadline(options.config.deadline())
        .retry(options.retry.clone())
        .breaker(options.breaker.clone())
        .ratelimit(options.config.rate_limit())
        .auth(JwtAuthLayer::client().source(minter(
            &options.jwt_secret,
            options.scope.as_deref(),
            options.token_ttl,
        )))
        .build()
}

/// The client's retry layer: at most `attempts` attempts of every call, the first included
/// (1: none), retried on `UNAVAILABLE` with the gRPC retry design's backoff (100 ms, ×2, at
/// most 1 s) — or, with `hedge_delay`, hedged that far apart (an `UNAVAILABLE` hedge starts
/// the next one at once).
///
/// Its budget (10 tokens) earns `attempts - 1` tokens per call that succeeds, so it refuses
/// retries only to a backend whose calls fail outright: a flaky one that answers on a later
/// attempt keeps its retries, a dead one sees about 5 retries in all, then one attempt a call.
///
/// # Errors
///
/// `attempts` of 0 or above 5, or a hedging delay with fewer than 2 attempts.
pub fn retry(attempts: u32, hedge_delay: Option<Duration>) -> Result<RetryLayer, BoxError> {
    let registry = MethodRegistry::from_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)?;
    if hedge_delay.is_some() && attempts < 2 {
        return Err(
            "--hedge-delay hedges with --retries 2 or more: one attempt has nothing to hedge"
                .into(),
        );
    }
    let mut config = ClientConfig::default();
    config.retries = Some(attempts);
    config.hedge_delay =
        hedge_delay.map(|delay| u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
    config.validate()?;
    Ok(config.retry().registry(registry).build()?)
}

/// The client's deadline layer: `default` (a zero one is none) for calls without a deadline
/// of their own; the deadline of a handler making the call is carried either way.
pub fn deadline(default: Option<Duration>) -> DeadlineLayer<Client> {
    let builder = DeadlineLayer::client();
    match default.filter(|default| !default.is_zero()) {
        Some(default) => builder.default(default),
        None => builder,
    }
    .build()
    .expect("a client's deadline layer with a non-zero default builds")
}

/// A Greeter client through the full stack on a lazily connected channel, so that a server
/// that is down shows up as a gRPC status on each call.
pub fn connect(
    target: &str,
    options: &ClientOptions,
) -> Result<GreeterClient<<DemoClientStack as tower::Layer<Channel>>::Service>, BoxError> {
    let endpoint =
        Endpoint::from_shared(target.to_owned())?.connect_timeout(Duration::from_secs(2));
    let channel = endpoint.connect_lazy();
    Ok(GreeterClient::new(
        layers(&endpoint, options)?.service(channel),
    ))
}

/// The stack `server --upstream` forwards through: the client stack above, with the caller's
/// token relayed instead of one minted here, and no client rate limit.
pub type UpstreamStack = palisade::preset::ClientStack<
    TraceLayer<Client>,
    LoggingLayer<Client>,
    MetricsLayer<Client>,
    DeadlineLayer<Client>,
    Identity,
    BreakerLayer<Client>,
>;

/// What `forward = true` calls on a `server --upstream target`: the upstream Greeter's
/// `SayHello` through trace (inject) → logging → metrics → deadline (what is left of the
/// handler's) → breaker → channel; the Greeter relays its caller's `authorization`. Build it
/// after the metrics recorder is installed.
pub fn upstream(target: &str) -> Result<palisade_demo::Upstream, BoxError> {
    let endpoint =
        Endpoint::from_shared(target.to_owned())?.connect_timeout(Duration::from_secs(2));
    let registry = MethodRegistry::from_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)?;
    let uri = endpoint.uri();
    let trace = match (uri.host(), uri.port_u16()) {
        (Some(host), Some(port)) => TraceLayer::client()
            .propagator(palisade_trace::W3cPropagator::new())
            .server_address(host, port),
        _ => TraceLayer::client().propagator(palisade_trace::W3cPropagator::new()),
    };
    let stack: UpstreamStack = ClientLayers::new()
        .registry(registry)
        .trace(trace)
        .logging(crate::telemetry::access_log(LoggingLayer::client()))
        .metrics(MetricsLayer::client())
        .deadline(deadline(None))
        .breaker(BreakerLayer::client().name("upstream"))
        .build()?;
    let client = GreeterClient::new(stack.service(endpoint.connect_lazy()));
    Ok(std::sync::Arc::new(move |request| {
        let mut client = client.clone();
        Box::pin(async move { client.say_hello(request).await })
    }))
}
