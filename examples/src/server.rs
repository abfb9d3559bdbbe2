//! The demo server's flags and its full Palisade stack, shared by the `server` and `stack`
//! programs.

use std::{net::SocketAddr, num::NonZeroU32, path::PathBuf, time::Duration};

use clap::Args;
use palisade::prelude::*;
use palisade_core::admit;
use palisade_core::side::Server as ServerSide;
use palisade_deadline::DeadlineLayer;
use palisade_demo::{FILE_DESCRIPTOR_SET, Greeter};
use palisade_limit::LimitAdmission;
use palisade_ratelimit::{KeyValue, RateLimitAdmission, backend::Redis};
use palisade_recovery::RecoveryLayer;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Server, server::TcpIncoming};
use tower::util::{Either, MapResponseLayer};

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
#[derive(Args, Clone, Debug)]
pub struct ServerArgs {
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,
    /// Serves `GET /metrics` here.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// HS256 secret for verifying tokens (the demo default warns).
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

/// The deadline layer `--max-deadline` and `--default-deadline` configure; the caller's own
/// deadline is enforced without them. Health and reflection are skipped (a reflection stream
/// may stay open as long as its client wants).
pub fn deadline(args: &ServerArgs) -> Result<DeadlineLayer<ServerSide>, BoxError> {
    let mut builder = DeadlineLayer::server().skip(Matcher::health_and_reflection());
    if let Some(ms) = args.max_deadline {
        builder = builder.max(Duration::from_millis(ms));
    }
    if let Some(ms) = args.default_deadline {
        builder = builder.default(Duration::from_millis(ms));
    }
    Ok(builder
        .build()
        .map_err(|error| format!("--max-deadline / --default-deadline: {error}"))?)
}

/// The Redis backend `--rate-redis` asks for, if any (it connects in the background). Call it
/// inside a Tokio runtime.
pub fn redis_backend(args: &ServerArgs) -> Result<Option<Redis>, BoxError> {
    let Some(url) = &args.rate_redis else {
        return Ok(None);
    };
    // Not the URL itself in the message: it may hold a password.
    let builder = Redis::open(url.as_str())
        .map_err(|_| "--rate-redis: expected redis://[user:password@]host:port[/db]")?;
    Ok(Some(builder.build()))
}

/// The rate limit the flags ask for; `None` when `--rate 0`. With `--rate-redis`, its buckets
/// are in that Redis (call it inside a Tokio runtime then).
pub fn rate_limit(
    args: &ServerArgs,
    registry: &MethodRegistry,
) -> Result<Option<RateLimitLayer>, BoxError> {
    rate_limit_on(args, registry, redis_backend(args)?)
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

/// The body of the routes' responses as the layers inside the preset get them: through
/// recovery.
type RoutesBody = palisade_recovery::ResponseBody<tonic::body::Body>;

/// The routes' responses as the in-flight limit returns them: the body in the layer's type.
type LimitedBody = admit::ResponseBody<RoutesBody, LimitAdmission<palisade_core::side::Server>>;

/// The routes' responses, `--max-concurrent 0`, in the in-flight limit's body type.
type NotLimited = fn(http::Response<RoutesBody>) -> http::Response<LimitedBody>;

/// The in-flight limit's responses as the rate limit returns them: the body in its type.
type Unlimited = fn(
    http::Response<LimitedBody>,
) -> http::Response<admit::ResponseBody<LimitedBody, RateLimitAdmission>>;

/// The rate limit in the stack, or (`--rate 0`) the responses as they are, their
/// bodies in the layer's type, so that the stack has one type either way.
fn rate_limit_in_stack(
    layer: Option<RateLimitLayer>,
) -> Either<RateLimitLayer, MapResponseLayer<Unlimited>> {
    match layer {
        Some(layer) => Either::Left(layer),
        None => Either::Right(MapResponseLayer::new(|response: http::Response<_>| {
            response.map(admit::ResponseBody::passed)
        })),
    }
}

/// The in-flight limit `--max-concurrent` asks for; `None` when 0. Health checks and
/// reflection are never limited.
pub fn in_flight_limit(
    args: &ServerArgs,
) -> Result<Option<LimitLayer<palisade_core::side::Server>>, BoxError> {
    let builder = LimitLayer::server()
        .name("server")
        .skip(Matcher::health_and_reflection());
    let builder = match (args.adaptive_concurrency, args.max_concurrent) {
        (false, 0) => return Ok(None),
        (false, limit) => builder.max_in_flight(limit),
        (true, max) => {
            let defaults = palisade_limit::adaptive::GradientConfig::default();
            let max_limit = if max == 0 { defaults.max_limit } else { max };
            builder.adaptive(palisade_limit::adaptive::GradientConfig {
                max_limit,
                initial_limit: defaults.initial_limit.min(max_limit),
                min_concurrency: defaults.min_concurrency.min(max_limit),
                ..defaults
            })
        }
    };
    Ok(Some(builder.build()?))
}

/// The in-flight limit in the stack, or (`--max-concurrent 0`) the routes as they are, their
/// responses' bodies in the layer's type.
fn in_flight_limit_in_stack(
    layer: Option<LimitLayer<palisade_core::side::Server>>,
) -> Either<LimitLayer<palisade_core::side::Server>, MapResponseLayer<NotLimited>> {
    match layer {
        Some(layer) => Either::Left(layer),
        None => Either::Right(MapResponseLayer::new(|response: http::Response<_>| {
            response.map(admit::ResponseBody::passed)
        })),
    }
}

/// [`rate_limit`], with the backend `--rate-redis` made already.
fn rate_limit_on(
    args: &ServerArgs,
    registry: &MethodRegistry,
    redis: Option<Redis>,
) -> Result<Option<RateLimitLayer>, BoxError> {
    check_rate_flags(args)?;
    let Some(rate) = NonZeroU32::new(args.rate) else {
        return Ok(None);
    };
    let burst = NonZeroU32::new(args.burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::per_second(rate).with_burst(burst);
    let limit = match args.rate_key.as_str() {
        "global" => Limit::global(quota),
        "peer" => Limit::per_key(palisade::ratelimit::Key::peer_ip(), quota),
        "subject" => Limit::per_key(
            palisade::ratelimit::Key::extension(|claims: &StandardClaims| {
                claims.subject().map(KeyValue::from)
            }),
            quota,
        ),
        other => match other
            .strip_prefix("metadata:")
            .map(palisade::ratelimit::Key::try_metadata)
        {
            Some(Ok(key)) => Limit::per_key(key, quota),
            _ => {
                return Err(format!(
                    "--rate-key {other:?}: expected global, peer, subject or metadata:NAME"
                )
                .into());
            }
        },
    };
    // Health checks and reflection are never limited. Servers sharing a Redis share buckets
    // by limit name: name it after the flag, the same on every server.
    let mut builder = RateLimitLayer::server()
        .limit(limit.named(format!("server-{}", args.rate_key)))
        .skip(Matcher::health_and_reflection())
        .registry(registry.clone());
    if let Some(redis) = redis {
        builder = builder.backend(redis);
    }
    Ok(Some(builder.build()?))
}

/// JWT verification as the flags ask: the secret or a JWKS file, issuer and audience when
/// given; health and reflection public; `SayHelloStream` needs the `greeter.stream` scope.
pub fn auth(args: &ServerArgs) -> Result<JwtAuthLayer, BoxError> {
    let mut builder = JwtAuthLayer::server();
    builder = match &args.jwks_file {
        Some(path) => builder.jwks_file(path),
        None => {
            if args.jwt_secret == DEMO_SECRET {
                tracing::warn!(
                    "verifying tokens with the built-in demo secret; pass --jwt-secret or PALISADE_JWT_SECRET"
                );
            }
            builder.secret(&args.jwt_secret)
        }
    };
    if let Some(issuer) = &args.jwt_issuer {
        builder = builder.issuer(issuer);
    }
    if let Some(audience) = &args.jwt_audience {
        builder = builder.audience(audience);
    }
    Ok(builder
        .skip(Matcher::health_and_reflection())
        .policy(
            Matcher::method("palisade.demo.v1.Greeter/SayHelloStream"),
            palisade::jwt::Policy::authenticated().scopes([STREAM_SCOPE]),
        )
        .build()?)
}

/// Starts the demo server on `listener` with the full server stack (or none with `--bare`).
/// Install the tracer provider and the log subscriber first.
pub async fn start(args: &ServerArgs, listener: TcpListener) -> Result<RunningServer, BoxError> {
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    // Nagle off, as `Server::serve` sets it: streamed replies would wait for ACKs.
    let tracker = Tracker::new();
    let incoming = tracker.incoming(TcpIncoming::from(listener).with_nodelay(Some(true)));
    let signal = async {
        let _ = rx.await;
    };
    if args.bare {
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
        });
    }

    check_rate_flags(args)?;
    // The recorder comes first: layers register their metric handles when they are built.
    let metrics_server = PrometheusExporter::new().serve(args.metrics_addr).await?;
    // After the recorder too: the backend registers its series when it is built.
    let redis = redis_backend(args)?;
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
    let greeter = match &args.upstream {
        Some(upstream) => greeter().with_upstream(crate::client::upstream(upstream)?),
        None => greeter(),
    };
    let routes = palisade_demo::routes(greeter).await;
    let layers = ServerLayers::new()
        .registry(registry.clone())
        .trace(TraceLayer::server().propagator(palisade_trace::W3cPropagator::new()))
        .logging(crate::telemetry::access_log(
            LoggingLayer::server()
                .skip(Matcher::health_and_reflection())
                .log_start(args.log_start),
        ))
        .metrics(MetricsLayer::server())
        .deadline(deadline(args)?)
        .auth(auth(args)?)
        .ratelimit(Custom(rate_limit_in_stack(rate_limit_on(
            args,
            &registry,
            redis.clone(),
        )?)))
        .limit(Custom(in_flight_limit_in_stack(in_flight_limit(args)?)))
        // Innermost, next to the routes: every layer outside sees a handler's panic as an
        // ordinary INTERNAL answer.
        .recovery(RecoveryLayer::server())
        .build()?;
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
    })
}
