//! The demo server's flags and its full Palisade stack, shared by the `server` and `stack`
//! programs.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{ArgMatches, Args, FromArgMatches, parser::ValueSource};
use palisade::config::{Config, Secret, SecretSource, ServerConfig, ServerMethod};
use palisade::prelude::*;
use palisade::reload::ReloadLayer;
use palisade_core::side::Server as ServerSide;
use palisade_deadline::DeadlineLayer;
use palisade_demo::{FILE_DESCRIPTOR_SET, Greeter};
use palisade_ratelimit::backend::Redis;
use palisade_recovery::RecoveryLayer;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Server, server::TcpIncoming};

use crate::{
    BoxError,
    shutdown::{self, Signals, Tracker},
    telemetry::LogFormat,
};

/// The default HS256 secret: fine for a demo on loopback, never for anything else.
pub const DEMO_SECRET: &str = "palisade-demo-secret";

/// The scope `SayHelloStream` requires.
pub const STREAM_SCOPE: &str = "greeter.stream";

/// The demo server's flags, each with a default.
///
/// With `--config FILE`, the file's `[server]` table takes every flag by name (`--max-concurrent`
/// is `max_concurrent`, durations in ms) plus per-method policy (`[[server.method]]`); a flag
/// given on the command line fills a key the file leaves out, and a key set in both places is
/// refused. Flags and files make one [`ServerConfig`], which builds every stack.
#[derive(Args, Clone, Debug)]
pub struct ServerArgs {
    /// Read the configuration from this TOML file's `[server]` table (see
    /// examples/palisade.toml): every flag by name, and per-method policy. A flag given beside
    /// it fills a key the file leaves out; one the file sets too is refused.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,
    /// Serves `GET /metrics` here.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// HS256 secret for verifying tokens (the demo default warns).
    /// A `jwt_secret` in the `--config` file wins over `PALISADE_JWT_SECRET`; given as a flag
    /// too, it is refused.
    #[arg(long, env = "PALISADE_JWT_SECRET", default_value = DEMO_SECRET, hide_env_values = true)]
    pub jwt_secret: String,
    /// A JWKS file (RS/PS/ES/EdDSA keys) to verify with, instead of the secret.
    #[arg(long, conflicts_with = "jwt_secret")]
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`.
    #[arg(long)]
    pub jwt_issuer: Option<String>,
    /// Required `aud`.
    #[arg(long)]
    pub jwt_audience: Option<String>,
    /// Requests per second; 0 turns rate limiting off.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Bucket size (at least 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub burst: u32,
    /// What a bucket is kept per: `global`, `peer`, `subject` or `metadata:NAME`.
    #[arg(long, default_value = "global")]
    pub rate_key: String,
    /// Keep the rate limit's buckets in this Redis (`redis://127.0.0.1:6379`): one quota shared
    /// by every server using it. By default they live in this process.
    #[arg(long)]
    pub rate_redis: Option<String>,
    /// Calls in flight at most; the others get RESOURCE_EXHAUSTED at once. 0 turns the limit
    /// off.
    #[arg(long, visible_alias = "max-in-flight", default_value_t = 0)]
    pub max_concurrent: u32,
    /// Find the in-flight limit from latency instead (Envoy's adaptive-concurrency gradient),
    /// at most `--max-concurrent` when that is given.
    #[arg(long)]
    pub adaptive_concurrency: bool,
    /// Log format, to stdout.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Also log a `started call` line when each call starts (by default, a call is logged
    /// when it ends).
    #[arg(long)]
    pub log_start: bool,
    /// Export spans with OTLP (gRPC) to this endpoint. Without it no span is sampled (trace
    /// ids still propagate), unless `OTEL_TRACES_SAMPLER` says otherwise.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// How long calls in flight may take to finish after SIGTERM or SIGINT, before the
    /// server stops anyway: milliseconds, or with a unit (`500ms`, `10s`).
    #[arg(long, default_value = "10s", value_parser = shutdown::parse_grace_period)]
    pub grace_period: Duration,
    /// Serve the same Greeter with no Palisade layer, for overhead comparisons (the layers'
    /// flags are refused with it).
    #[arg(long, conflicts_with_all = BARE_IGNORES)]
    pub bare: bool,
    /// The longest deadline a call gets, in ms: a caller's longer `grpc-timeout` is cut to
    /// this (the caller's own deadline is enforced either way).
    #[arg(long, value_name = "MS")]
    pub max_deadline: Option<u64>,
    /// The deadline of a call that brings none, in ms.
    #[arg(long, value_name = "MS")]
    pub default_deadline: Option<u64>,
    /// The Greeter that a `SayHello` with `forward = true` calls, through the client stack,
    /// with the caller's token and what is left of its deadline.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// The flags given on the command line (ids, `max_concurrent`), filled by
    /// [`ServerArgs::from_matches`]; a flag whose value differs from its default counts as
    /// given too.
    #[arg(skip)]
    pub given: Vec<String>,
}

impl ServerArgs {
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

    fn given(&self, id: &str) -> bool {
        self.given.iter().any(|given| given == id)
    }

    /// The configuration the server runs with: the `--config` file's `[server]` table (if
    /// any), the flags given for the keys it leaves out, their defaults for the rest, and the
    /// demo's own rule after the file's (`SayHelloStream` needs the `greeter.stream` scope).
    ///
    /// # Errors
    ///
    /// The file's [`ConfigError`](palisade::config::ConfigError) (file, line, key), a flag
    /// given for a key the file sets too, or a merged configuration that cannot work.
    pub fn server_config(&self) -> Result<ServerConfig, BoxError> {
        if self.config.is_none() {
            check_rate_flags(self)?;
        }
        let (mut config, file) = match &self.config {
            Some(path) => {
                let server = Config::load(path)?
                    .server
                    .ok_or_else(|| format!("{}: no [server] table (--config)", path.display()))?;
                (server, Some(path.display().to_string()))
            }
            None => (ServerConfig::default(), None),
        };
        let mut merge = Merge::new(file.as_deref());
        let c = &mut config;
        let a = self;
        merge.set(&mut c.addr, "addr", a.given("addr"), Some(a.addr));
        merge.set(
            &mut c.metrics_addr,
            "metrics_addr",
            a.given("metrics_addr"),
            Some(a.metrics_addr),
        );
        merge.set(
            &mut c.jwks_file,
            "jwks_file",
            a.jwks_file.is_some(),
            a.jwks_file.clone(),
        );
        merge.set(
            &mut c.jwt_issuer,
            "jwt_issuer",
            a.jwt_issuer.is_some(),
            a.jwt_issuer.clone(),
        );
        merge.set(
            &mut c.jwt_audience,
            "jwt_audience",
            a.jwt_audience.is_some(),
            a.jwt_audience.clone(),
        );
        merge.set(
            &mut c.rate,
            "rate",
            a.given("rate") || a.rate != 0,
            (a.rate != 0).then_some(a.rate),
        );
        merge.set(
            &mut c.burst,
            "burst",
            a.given("burst") || a.burst != 1,
            Some(a.burst),
        );
        merge.set(
            &mut c.rate_key,
            "rate_key",
            a.given("rate_key") || a.rate_key != "global",
            Some(a.rate_key.clone()),
        );
        merge.set(
            &mut c.rate_redis,
            "rate_redis",
            a.rate_redis.is_some(),
            a.rate_redis.clone(),
        );
        merge.set(
            &mut c.max_concurrent,
            "max_concurrent",
            a.given("max_concurrent") || a.max_concurrent != 0,
            (a.max_concurrent != 0).then_some(a.max_concurrent),
        );
        merge.set(
            &mut c.adaptive_concurrency,
            "adaptive_concurrency",
            a.adaptive_concurrency,
            Some(true),
        );
        merge.set(
            &mut c.log_format,
            "log_format",
            a.given("log_format"),
            Some(a.log_format.into()),
        );
        merge.set(&mut c.log_start, "log_start", a.log_start, Some(true));
        merge.set(
            &mut c.otlp_endpoint,
            "otlp_endpoint",
            a.otlp_endpoint.is_some(),
            a.otlp_endpoint.clone(),
        );
        merge.set(
            &mut c.grace_period,
            "grace_period",
            a.given("grace_period"),
            Some(u64::try_from(a.grace_period.as_millis()).unwrap_or(u64::MAX)),
        );
        merge.set(&mut c.bare, "bare", a.bare, Some(true));
        merge.set(
            &mut c.max_deadline,
            "max_deadline",
            a.max_deadline.is_some(),
            a.max_deadline,
        );
        merge.set(
            &mut c.default_deadline,
            "default_deadline",
            a.default_deadline.is_some(),
            a.default_deadline,
        );
        merge.set(
            &mut c.upstream,
            "upstream",
            a.upstream.is_some(),
            a.upstream.clone(),
        );
        // The secret: the file's, else the flag's (or $PALISADE_JWT_SECRET, or the demo's).
        let secret_given = a.given("jwt_secret");
        merge.set(
            &mut c.jwt_secret,
            "jwt_secret",
            secret_given,
            Some(Secret::given(a.jwt_secret.clone())),
        );
        merge.finish()?;
        c.addr.get_or_insert(a.addr);
        c.metrics_addr.get_or_insert(a.metrics_addr);
        c.log_format.get_or_insert(a.log_format.into());
        c.grace_period
            .get_or_insert(u64::try_from(a.grace_period.as_millis()).unwrap_or(u64::MAX));
        if c.jwt_secret.is_none() && c.jwks_file.is_none() && c.bare != Some(true) {
            c.jwt_secret = Some(Secret::given(a.jwt_secret.clone()));
        }
        if c.bare != Some(true) {
            let mut stream = ServerMethod::default();
            stream.method = Some("palisade.demo.v1.Greeter/SayHelloStream".into());
            stream.scopes = Some(vec![STREAM_SCOPE.into()]);
            c.method.push(stream);
        }
        config.validate()?;
        Ok(config)
    }
}

/// Merges flags into a file's keys, refusing a key set in both places.
pub(crate) struct Merge<'a> {
    file: Option<&'a str>,
    result: Result<(), BoxError>,
}

impl<'a> Merge<'a> {
    /// Merging into the keys of `file` (none: the flags alone).
    pub(crate) fn new(file: Option<&'a str>) -> Self {
        Merge {
            file,
            result: Ok(()),
        }
    }

    /// The first key set in both places, if any.
    pub(crate) fn finish(self) -> Result<(), BoxError> {
        self.result
    }

    /// `key` from the file, else the flag if `given` (on the command line, or not at its
    /// default); left out, the key's default applies.
    pub(crate) fn set<T>(
        &mut self,
        slot: &mut Option<T>,
        key: &str,
        given: bool,
        value: Option<T>,
    ) {
        if self.result.is_err() {
            return;
        }
        match (slot.is_some(), given, self.file) {
            (true, true, Some(file)) => {
                let flag = key.replace('_', "-");
                self.result = Err(format!(
                    "--{flag} is given and `{key}` is set in {file}: set it in one place"
                )
                .into());
            }
            (true, _, _) | (false, false, _) => {}
            (false, true, _) => *slot = value,
        }
    }
}

impl From<LogFormat> for palisade::config::LogFormat {
    fn from(format: LogFormat) -> Self {
        match format {
            LogFormat::Json => palisade::config::LogFormat::Json,
            LogFormat::Text => palisade::config::LogFormat::Text,
        }
    }
}

impl From<palisade::config::LogFormat> for LogFormat {
    fn from(format: palisade::config::LogFormat) -> Self {
        match format {
            palisade::config::LogFormat::Json => LogFormat::Json,
            palisade::config::LogFormat::Text => LogFormat::Text,
        }
    }
}

/// The flags that configure a layer, which `--bare` has none of.
const BARE_IGNORES: [&str; 16] = [
    "metrics_addr",
    "jwt_secret",
    "jwks_file",
    "jwt_issuer",
    "jwt_audience",
    "rate",
    "burst",
    "rate_key",
    "rate_redis",
    "max_concurrent",
    "adaptive_concurrency",
    "otlp_endpoint",
    "log_start",
    "max_deadline",
    "default_deadline",
    "upstream",
];

/// How long calls cut after the grace period may take to end (hyper drops them as soon as their
/// connection closes).
const CUT_WAIT: Duration = Duration::from_secs(5);

/// A running demo server; dropping it stops the server.
#[derive(Debug)]
pub struct RunningServer {
    /// The gRPC address it listens on.
    pub addr: SocketAddr,
    /// The address of `GET /metrics`, unless bare.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    tracker: Tracker,
    _metrics: Option<palisade_metrics::prometheus::MetricsServer>,
    /// The task that reloads the `--config` file, if the server watches one.
    watcher: Option<JoinHandle<()>>,
}

impl RunningServer {
    /// Waits until the server stops (on its own or through [`RunningServer::stop`]).
    pub async fn wait(mut self) -> Result<(), BoxError> {
        match self.task.take() {
            Some(task) => Ok(task.await??),
            None => Ok(()),
        }
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) -> Result<(), BoxError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.wait().await
    }

    /// Serves until a signal, then drains as a pod stops: no new connections (open ones are
    /// told to go away), calls in flight finish within `grace`, and it returns. After `grace`,
    /// or at a second signal, the connections still open are closed: the calls still in flight
    /// are cut (their callers see the connection close), and it returns once they have ended,
    /// their spans and log lines written.
    pub async fn serve_until_signal(
        mut self,
        signals: &mut Signals,
        grace: Duration,
    ) -> Result<(), BoxError> {
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        let signal = tokio::select! {
            result = &mut task => return Ok(result??),
            signal = signals.recv() => signal,
        };
        tracing::info!(
            signal,
            grace_period_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            "draining: no new calls; calls in flight finish"
        );
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::select! {
            result = &mut task => {
                result??;
                tracing::info!("drained: every call finished");
                return Ok(());
            }
            () = tokio::time::sleep(grace) => {
                tracing::warn!(
                    calls = self.tracker.calls(),
                    "grace period over: cutting the calls still in flight"
                );
            }
            signal = signals.recv() => {
                tracing::warn!(
                    signal,
                    calls = self.tracker.calls(),
                    "signalled again: cutting the calls still in flight"
                );
            }
        }
        self.tracker.cut();
        // Their connections closed, hyper drops the calls: wait until they have ended, so that
        // their spans and log lines are flushed with the rest.
        let ended = tokio::time::timeout(CUT_WAIT, async {
            let _ = (&mut task).await;
            self.tracker.idle().await;
        })
        .await;
        match ended {
            Ok(()) => tracing::warn!("cut: no call is in flight any more"),
            Err(_) => {
                task.abort();
                tracing::warn!(
                    calls = self.tracker.calls(),
                    wait = ?CUT_WAIT,
                    "cut: calls still running this long after their connections closed end with the process"
                );
            }
        }
        Ok(())
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
    }
}

/// The Greeter with its hooks: `trace_id` from the current OpenTelemetry context, `subject`
/// from the verified claims.
pub fn greeter() -> Greeter {
    Greeter::new()
        .with_trace_id(palisade_trace::current_trace_id)
        .with_subject(|extensions| {
            extensions
                .get::<StandardClaims>()
                .and_then(|claims| claims.subject().map(str::to_owned))
        })
}

/// The deadline layer `--max-deadline` and `--default-deadline` configure (through
/// [`ServerConfig::deadline`]); the caller's own deadline is enforced without them. Health and
/// reflection are skipped (a reflection stream may stay open as long as its client wants).
pub fn deadline(args: &ServerArgs) -> Result<DeadlineLayer<ServerSide>, BoxError> {
    Ok(flags_only(args)
        .deadline()
        .build()
        .map_err(|error| format!("--max-deadline / --default-deadline: {error}"))?)
}

/// The flags alone as a configuration (no file, nothing checked).
fn flags_only(args: &ServerArgs) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.rate = (args.rate != 0).then_some(args.rate);
    config.burst = Some(args.burst);
    config.rate_key = Some(args.rate_key.clone());
    config.max_concurrent = (args.max_concurrent != 0).then_some(args.max_concurrent);
    config.adaptive_concurrency = Some(args.adaptive_concurrency);
    config.max_deadline = args.max_deadline;
    config.default_deadline = args.default_deadline;
    config
}

/// The Redis backend `rate_redis` asks for, if any (it connects in the background). Call it
/// inside a Tokio runtime.
fn redis_on(url: Option<&str>) -> Result<Option<Redis>, BoxError> {
    let Some(url) = url else {
        return Ok(None);
    };
    // Not the URL itself in the message: it may hold a password.
    let builder = Redis::open(url)
        .map_err(|_| "--rate-redis: expected redis://[user:password@]host:port[/db]")?;
    Ok(Some(builder.build()))
}

/// The Redis backend `--rate-redis` asks for, if any (it connects in the background). Call it
/// inside a Tokio runtime.
pub fn redis_backend(args: &ServerArgs) -> Result<Option<Redis>, BoxError> {
    redis_on(args.rate_redis.as_deref())
}

/// The rate limit the flags ask for (through [`ServerConfig::rate_limit`]); `None` when
/// `--rate 0`. With `--rate-redis`, its buckets are in that Redis (call it inside a Tokio
/// runtime then).
pub fn rate_limit(
    args: &ServerArgs,
    registry: &MethodRegistry,
) -> Result<Option<RateLimitLayer>, BoxError> {
    check_rate_flags(args)?;
    let config = flags_only(args);
    if !config.rate_limited() {
        return Ok(None);
    }
    let redis = redis_backend(args)?;
    Ok(Some(
        with_redis(config.rate_limit(), redis)
            .registry(registry.clone())
            .build()?,
    ))
}

/// `builder` with its buckets in `redis`, when there is one.
fn with_redis(
    builder: palisade_ratelimit::RateLimitBuilder,
    redis: Option<Redis>,
) -> palisade_ratelimit::RateLimitBuilder {
    match redis {
        Some(redis) => builder.backend(redis),
        None => builder,
    }
}

/// Without a rate, the other rate-limit flags would do nothing: refused.
fn check_rate_flags(args: &ServerArgs) -> Result<(), BoxError> {
    if args.rate != 0 {
        return Ok(());
    }
    let unread = [
        (args.burst != 1, "--burst"),
        (args.rate_key != "global", "--rate-key"),
        (args.rate_redis.is_some(), "--rate-redis"),
    ];
    match unread.into_iter().find(|(given, _)| *given) {
        Some((_, flag)) => {
            Err(format!("{flag} needs --rate (requests per second; 0 is off)").into())
        }
        None => Ok(()),
    }
}

/// The in-flight limit `--max-concurrent` asks for (through
/// [`ServerConfig::in_flight_limit`]); `None` when 0. Health checks and reflection are never
/// limited.
pub fn in_flight_limit(
    args: &ServerArgs,
) -> Result<Option<LimitLayer<palisade_core::side::Server>>, BoxError> {
    let config = flags_only(args);
    if !config.in_flight_limited() {
        return Ok(None);
    }
    Ok(Some(config.in_flight_limit().build()?))
}

/// JWT verification as the configuration asks (through [`ServerConfig::auth`]): the secret or
/// a JWKS file, issuer and audience when given; health and reflection public; `SayHelloStream`
/// needs the `greeter.stream` scope (the rule [`ServerArgs::server_config`] adds).
pub fn auth(args: &ServerArgs) -> Result<JwtAuthLayer, BoxError> {
    Ok(args.server_config()?.auth().build()?)
}

/// Starts the demo server on `listener` with the full server stack (or none with `--bare`),
/// configured by [`ServerArgs::server_config`]. Install the tracer provider and the log
/// subscriber first.
pub async fn start(args: &ServerArgs, listener: TcpListener) -> Result<RunningServer, BoxError> {
    start_live(args, &args.server_config()?, listener).await
}

/// Starts the demo server on `listener` with the stack `config` builds (or none with `bare`).
/// Install the tracer provider and the log subscriber first.
pub async fn start_with(
    config: &ServerConfig,
    listener: TcpListener,
) -> Result<RunningServer, BoxError> {
    start_inner(config, listener, None).await
}

/// [`start_with`], and with `--config`, the file reloaded live: each change of its content
/// (a write, a rename over it, a ConfigMap update) and each SIGHUP merges it with the flags
/// again ([`ServerArgs::server_config`]) and swaps the stack it builds in — new calls get the
/// new policy, calls in flight finish on theirs; a rate limit or in-flight limit whose
/// settings did not change keeps its state. A file that does not load, or a change that needs
/// a restart (the addresses, `bare`, `upstream`, the log format, the OTLP endpoint), leaves the
/// last good policy in force: one ERROR line, `palisade_config_reload_total{result="error"}`.
pub async fn start_live(
    args: &ServerArgs,
    config: &ServerConfig,
    listener: TcpListener,
) -> Result<RunningServer, BoxError> {
    let watched = args.config.is_some() && config.bare != Some(true);
    start_inner(config, listener, watched.then(|| args.clone())).await
}

async fn start_inner(
    config: &ServerConfig,
    listener: TcpListener,
    reload: Option<ServerArgs>,
) -> Result<RunningServer, BoxError> {
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    // Nagle off, as `Server::serve` sets it: streamed replies would wait for ACKs.
    let tracker = Tracker::new();
    let incoming = tracker.incoming(TcpIncoming::from(listener).with_nodelay(Some(true)));
    let signal = async {
        let _ = rx.await;
    };
    if config.bare == Some(true) {
        let routes = palisade_demo::routes(greeter()).await;
        let task = tokio::spawn(
            // Connections tracked (to cut them), not calls: no layer here, even that one, and
            // without layers there are no spans or log lines to wait for.
            Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, signal),
        );
        return Ok(RunningServer {
            addr,
            metrics_addr: None,
            shutdown: Some(tx),
            task: Some(task),
            tracker,
            _metrics: None,
            watcher: None,
        });
    }

    if let Some(secret) = &config.jwt_secret
        && secret.source() == &SecretSource::Given
        && secret.expose() == DEMO_SECRET
    {
        tracing::warn!(
            "verifying tokens with the built-in demo secret; pass --jwt-secret or PALISADE_JWT_SECRET, or set jwt_secret in the --config file"
        );
    }
    let metrics_addr = config
        .metrics_addr
        .ok_or("no metrics_addr: server_config() fills it")?;
    // The recorder comes first: layers register their metric handles when they are built.
    let metrics_server = PrometheusExporter::new().serve(metrics_addr).await?;
    // After the recorder too: the backend registers its series when it is built.
    let redis = redis_on(config.rate_redis.as_deref())?;
    if let Some(redis) = &redis {
        // Calls are decided by each server alone while Redis does not answer: say so now.
        match tokio::time::timeout(Duration::from_secs(2), redis.ping()).await {
            Ok(Ok(())) => tracing::info!("--rate-redis: the rate limit's buckets are in Redis"),
            _ => tracing::warn!(
                "--rate-redis: Redis does not answer; each server limits alone until it does"
            ),
        }
    }
    let registry = MethodRegistry::from_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)?
        .with_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)?;
    // After the recorder: the upstream's client layers register their series when built.
    let greeter = match &config.upstream {
        Some(upstream) => greeter().with_upstream(crate::client::upstream(upstream)?),
        None => greeter(),
    };
    let routes = palisade_demo::routes(greeter).await;
    let (layers, kept) = server_stack(config, &registry, redis, None)?;
    let (layers, reloader) = ReloadLayer::new(layers);
    let watcher = match reload {
        Some(args) => Some(watch_config(
            args,
            config.clone(),
            registry,
            kept,
            reloader,
        )?),
        None => None,
    };
    let task = tokio::spawn(
        Server::builder()
            .layer(tracker.layer())
            .layer(layers)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, signal),
    );
    Ok(RunningServer {
        addr,
        metrics_addr: Some(metrics_server.local_addr()),
        shutdown: Some(tx),
        task: Some(task),
        tracker,
        _metrics: Some(metrics_server),
        watcher,
    })
}

/// The server's layers, as [`ServerConfig::layers`] builds them, with what a document does not
/// say (the access log's writer, the Redis backend).
type Stack = palisade::config::ConfigServerStack;

/// The layers a reload carries over when their settings did not change (their buckets,
/// permits and series stay), and the configuration they were built from.
struct Kept {
    config: ServerConfig,
    ratelimit: RateLimitLayer,
    limit: palisade_limit::LimitLayer<ServerSide>,
}

/// Every slot from the configuration's builders (the same as [`ServerConfig::layers`]), with
/// what a document does not say: the access log's writer and the Redis backend; the rate and
/// in-flight limits of `kept` reused when their settings are the same.
fn server_stack(
    config: &ServerConfig,
    registry: &MethodRegistry,
    redis: Option<Redis>,
    kept: Option<&Kept>,
) -> Result<(Stack, Kept), BoxError> {
    let ratelimit = match kept {
        Some(kept) if same_rate_limit(&kept.config, config) => kept.ratelimit.clone(),
        _ => with_redis(config.rate_limit(), redis)
            .registry(registry.clone())
            .build()?,
    };
    let limit = match kept {
        Some(kept) if same_in_flight_limit(&kept.config, config) => kept.limit.clone(),
        _ => config
            .in_flight_limit()
            .registry(registry.clone())
            .build()?,
    };
    let stack = ServerLayers::new()
        .registry(registry.clone())
        .trace(TraceLayer::server().propagator(palisade_trace::W3cPropagator::new()))
        .logging(crate::telemetry::access_log(config.logging()))
        .metrics(MetricsLayer::server())
        .deadline(config.deadline())
        .auth(config.auth())
        .ratelimit(ratelimit.clone())
        .limit(limit.clone())
        // Innermost, next to the routes: every layer outside sees a handler's panic as an
        // ordinary INTERNAL answer.
        .recovery(RecoveryLayer::server())
        .build()?;
    let kept = Kept {
        config: config.clone(),
        ratelimit,
        limit,
    };
    Ok((stack, kept))
}

/// Whether two configurations ask for the same rate limit (so its buckets keep their tokens).
fn same_rate_limit(old: &ServerConfig, new: &ServerConfig) -> bool {
    let rules = |config: &ServerConfig| -> Vec<_> {
        config
            .method
            .iter()
            .map(|entry| {
                (
                    entry.matcher().map(|matcher| format!("{matcher:?}")),
                    entry.rate,
                    entry.burst,
                )
            })
            .collect()
    };
    (old.rate, old.burst, &old.rate_key, &old.rate_redis)
        == (new.rate, new.burst, &new.rate_key, &new.rate_redis)
        && rules(old) == rules(new)
}

/// Whether two configurations ask for the same in-flight limit (so its permits carry over).
fn same_in_flight_limit(old: &ServerConfig, new: &ServerConfig) -> bool {
    let rules = |config: &ServerConfig| -> Vec<_> {
        config
            .method
            .iter()
            .map(|entry| {
                (
                    entry.matcher().map(|matcher| format!("{matcher:?}")),
                    entry.max_concurrent,
                )
            })
            .collect()
    };
    (old.max_concurrent, old.adaptive_concurrency) == (new.max_concurrent, new.adaptive_concurrency)
        && rules(old) == rules(new)
}

/// What a reload cannot change: what the process was started with.
fn needs_restart(old: &ServerConfig, new: &ServerConfig) -> Option<&'static str> {
    [
        (old.addr != new.addr, "addr"),
        (old.metrics_addr != new.metrics_addr, "metrics_addr"),
        (old.bare != new.bare, "bare"),
        (old.upstream != new.upstream, "upstream"),
        (old.log_format != new.log_format, "log_format"),
        (old.otlp_endpoint != new.otlp_endpoint, "otlp_endpoint"),
        (old.grace_period != new.grace_period, "grace_period"),
    ]
    .into_iter()
    .find_map(|(changed, key)| changed.then_some(key))
}

/// Reloads `args.config` at each change and SIGHUP, swapping the stack it builds in.
fn watch_config(
    args: ServerArgs,
    started: ServerConfig,
    registry: MethodRegistry,
    kept: Kept,
    reloader: palisade::reload::Reloader<Stack>,
) -> Result<JoinHandle<()>, BoxError> {
    let path = args.config.clone().ok_or("no --config to watch")?;
    let mut changes = palisade::reload::changes(&path)?;
    let reloads = palisade::reload::Reloads::new();
    Ok(tokio::spawn(async move {
        let mut kept = kept;
        while changes.next().await.is_some() {
            let rebuilt = args.server_config().and_then(|config| {
                if let Some(key) = needs_restart(&started, &config) {
                    return Err(format!(
                        "{}: `{key}` changed, which takes a restart; nothing of this version applied",
                        path.display()
                    )
                    .into());
                }
                let redis = redis_on(config.rate_redis.as_deref())?;
                server_stack(&config, &registry, redis, Some(&kept))
            });
            match rebuilt {
                Ok((stack, rebuilt)) => {
                    kept = rebuilt;
                    reloads.applied(reloader.swap(stack));
                }
                Err(error) => reloads.refused(&error),
            }
        }
    }))
}
