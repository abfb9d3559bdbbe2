//! The demo server: Greeter, `grpc.health.v1.Health` and server reflection on `--addr`, behind
//! Palisade's full server stack (trace → logging → metrics → deadline → jwt → ratelimit), with
//! `GET /metrics` on `--metrics-addr`. On SIGTERM or SIGINT it drains: no new calls, calls in
//! flight finish (up to `--grace-period`), every span and log line is flushed, exit 0.
//!
//! ```text
//! cargo run -p palisade-examples --bin server -- --rate 10 --burst 20 --rate-key subject
//! ```

use clap::Parser;
use palisade_examples::{
    BoxError,
    server::{self, ServerArgs},
    shutdown::Signals,
    telemetry,
};

/// Serve the Palisade demo Greeter.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Cli::parse().server;
    let log_guard = telemetry::init_logs(args.log_format, "info");
    // From here on, SIGTERM and SIGINT drain instead of ending the process at once.
    let mut signals = Signals::new()?;
    let provider =
        telemetry::install_tracer("palisade-demo-server", args.otlp_endpoint.as_deref())?;
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let running = server::start(&args, listener).await?;
    tracing::info!(
        addr = %running.addr,
        metrics = running.metrics_addr.map(tracing::field::display),
        bare = args.bare,
        "palisade demo server listening"
    );
    let served = running
        .serve_until_signal(&mut signals, args.grace_period)
        .await;
    // Every span ended so far reaches the exporter before exit (off the runtime's threads:
    // the export itself runs on them).
    let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await?;
    if let Err(error) = flushed {
        tracing::warn!(%error, "flushing spans failed: some may be lost");
    }
    tracing::info!("palisade demo server stopped");
    drop(log_guard);
    served
}
