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

use std::time::Duration;

use clap::CommandFactory;
use palisade::prelude::*;
use palisade_core::code::go_name;
use palisade_examples::{
    BoxError,
    client::{self, ClientArgs, ClientOptions},
    pb::HelloRequest,
    shutdown::Signals,
    telemetry,
};

/// Call the Palisade demo Greeter.
///
/// With `--config FILE`, its `[client]` table configures the client: every flag by name
/// (`retries = 3`), durations in ms, and per-method policy (`[[client.method]]`; see
/// examples/palisade.toml). A flag given beside it fills a key the file leaves out; a key set in
/// both places is refused.
#[derive(Debug, clap::Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    client: ClientArgs,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let matches = Cli::command().get_matches();
    let args = match ClientArgs::from_matches(&matches) {
        Ok(args) => args,
        Err(error) => error.exit(),
    };
    // The file and the flags, merged and checked before anything starts.
    let config = match args.client_config() {
        Ok(config) => config,
        Err(error) => {
            // The error as a person reads it (`FILE:LINE:COL: key …`), not its Debug form.
            eprintln!("client: {error}");
            std::process::exit(2);
        }
    };
    let log_format = config.log_format.map_or(args.log_format, Into::into);
    let log_guard = telemetry::init_logs(log_format, "warn");
    // From here on, SIGTERM and SIGINT stop the calls instead of ending the process at once.
    let mut signals = Signals::new()?;
    let provider =
        telemetry::install_tracer("palisade-demo-client", config.otlp_endpoint.as_deref())?;
    // Client metrics are recorded into a recorder of their own; the client prints no scrape.
    let _metrics = PrometheusExporter::new().install()?;
    let options = ClientOptions::from_config(&config)?;
    let target = config.target.clone().unwrap_or_else(|| args.target.clone());
    let calls = config.calls.unwrap_or(args.calls);
    let grace_period = config
        .grace_period
        .map_or(args.grace_period, Duration::from_millis);
    let mut greeter = client::connect(&target, &options)?;
    for call in 1..=calls {
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
                    () = tokio::time::sleep(grace_period) => None,
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
