//! The demo client: calls `SayHello` on a server, one call after another, through Palisade's
//! full client stack (trace, logging, metrics, deadline, retry, breaker, rate limit, token
//! attachment), and prints one line per call with the code it got — from the server, or from a
//! client layer such as an open breaker. Exits 0 when every call got a gRPC status. On SIGTERM or SIGINT
//! it makes no new call, lets the one in flight finish (up to `--grace-period`), flushes its
//! spans and logs, and exits 0.
//!
//! ```text
//! cargo run -p palisade-examples --bin client -- --calls 5
//! ```

use std::{num::NonZeroU32, time::Duration};

use clap::Parser;
use palisade::prelude::*;
use palisade_core::code::go_name;
use palisade_examples::{
    BoxError,
    client::{self, ClientOptions},
    pb::HelloRequest,
    server::DEMO_SECRET,
    shutdown::{self, Signals},
    telemetry::{self, LogFormat},
};

/// Call the Palisade demo Greeter.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The server.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// How many calls to make.
    #[arg(long, default_value_t = 10)]
    calls: u32,
    /// HS256 secret to mint the client's short-lived token with (`sub` = demo-client).
    #[arg(long, env = "PALISADE_JWT_SECRET", default_value = DEMO_SECRET, hide_env_values = true)]
    jwt_secret: String,
    /// The token's space-separated `scope` claim.
    #[arg(long)]
    scope: Option<String>,
    /// Log format of the client's own logs, to stdout.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Export spans with OTLP (gRPC) to this endpoint. Without it no span is sampled (trace
    /// ids still propagate), unless `OTEL_TRACES_SAMPLER` says otherwise.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// How long the call in flight may take to finish after SIGTERM or SIGINT, before the
    /// client stops anyway: milliseconds, or with a unit (`500ms`, `10s`).
    #[arg(long, default_value = "10s", value_parser = shutdown::parse_grace_period)]
    grace_period: Duration,
    /// Each call's deadline, in ms (sent as `grpc-timeout`, less a 5 ms margin, and enforced
    /// by the client too); none by default.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    deadline: Option<u64>,
    /// Attempts of each call at most, the first included (1: no retry; at most 5): retried on
    /// UNAVAILABLE, with backoff, the server's pushback and the deadline obeyed.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5))]
    retries: u32,
    /// With `--retries 2` or more: hedge instead of retry, starting the next attempt this many
    /// ms after the last while none has answered.
    #[arg(long, value_name = "MS")]
    hedge_delay: Option<u64>,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let log_guard = telemetry::init_logs(args.log_format, "warn");
    // From here on, SIGTERM and SIGINT stop the calls instead of ending the process at once.
    let mut signals = Signals::new()?;
    let provider =
        telemetry::install_tracer("palisade-demo-client", args.otlp_endpoint.as_deref())?;
    // Client metrics are recorded into a recorder of their own; the client prints no scrape.
    let _metrics = PrometheusExporter::new().install()?;
    let retry = client::retry(args.retries, args.hedge_delay.map(Duration::from_millis))?;
    let options = ClientOptions {
        retry,
        jwt_secret: args.jwt_secret,
        scope: args.scope,
        token_ttl: Duration::from_secs(300),
        breaker: BreakerLayer::client()
            .name("greeter")
            .consecutive_failures(3)
            .backoff(Backoff::exponential(
                Duration::from_secs(1),
                Duration::from_secs(30),
            ))
            .build(),
        rate: NonZeroU32::new(100).expect("non-zero"),
        deadline: args.deadline.map(Duration::from_millis),
    };
    let mut greeter = client::connect(&args.target, &options)?;
    for call in 1..=args.calls {
        if let Some(signal) = signals.try_recv() {
            println!("{signal}: stopping before call {call}");
            break;
        }
        let request = HelloRequest {
            name: format!("call {call}"),
            ..Default::default()
        };
        let reply = greeter.say_hello(request);
        tokio::pin!(reply);
        let (result, stopping) = tokio::select! {
            biased;
            result = &mut reply => (Some(result), false),
            signal = signals.recv() => {
                println!("{signal}: stopping after call {call}, in flight");
                let result = tokio::select! {
                    result = &mut reply => Some(result),
                    () = tokio::time::sleep(args.grace_period) => None,
                    _ = signals.recv() => None,
                };
                (result, true)
            }
        };
        match result {
            None => println!("call {call}: cut (stopping)"),
            Some(Ok(reply)) => {
                let reply = reply.into_inner();
                println!(
                    "call {call}: OK {:?} (subject {:?}, trace {}, attempt {})",
                    reply.message,
                    reply.subject,
                    reply.trace_id,
                    reply.previous_attempts + 1
                );
            }
            Some(Err(status)) => println!(
                "call {call}: {} {:?}",
                go_name(status.code()),
                status.message()
            ),
        }
        if stopping {
            break;
        }
    }
    // Every span ended so far reaches the exporter before exit (off the runtime's threads:
    // the export itself runs on them).
    let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await?;
    if let Err(error) = flushed {
        tracing::warn!(%error, "flushing spans failed: some may be lost");
    }
    drop(log_guard);
    Ok(())
}
