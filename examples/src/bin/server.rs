//! The demo server: Greeter, `grpc.health.v1.Health` and server reflection on `--addr`, behind
//! Palisade's full server stack (trace → logging → metrics → deadline → jwt → ratelimit), with
//! `GET /metrics` on `--metrics-addr`. On SIGTERM or SIGINT it drains: no new calls, calls in
//! flight finish (up to `--grace-period`), every span and log line is flushed, exit 0.
//!
//! ```text
//! cargo run -p palisade-examples --bin server -- --rate 10 --burst 20 --rate-key subject
//! ```

use clap::CommandFactory;
use palisade_examples::{
    BoxError,
    server::{self, ServerArgs},
    shutdown::Signals,
    telemetry,
};

/// Serve the Palisade demo Greeter.
///
/// With `--config FILE`, its `[server]` table configures the server: every flag by name
/// (`max_concurrent = 4`), durations in ms, and per-method policy (`[[server.method]]`; see
/// examples/palisade.toml). A flag given beside it fills a key the file leaves out; a key set in
/// both places is refused.
#[derive(Debug, clap::Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let matches = Cli::command().get_matches();
    let args = match ServerArgs::from_matches(&matches) {
        Ok(args) => args,
        Err(error) => error.exit(),
    };
    // The file and the flags, merged and checked before anything starts.
    let config = match args.server_config() {
        Ok(config) => config,
        Err(error) => {
            // The error as a person reads it (`FILE:LINE:COL: key …`), not its Debug form.
            eprintln!("server: {error}");
            std::process::exit(2);
        }
    };
    let log_format = config.log_format.map_or(args.log_format, Into::into);
    let log_guard = telemetry::init_logs(log_format, "info");
    // From here on, SIGTERM and SIGINT drain instead of ending the process at once.
    let mut signals = Signals::new()?;
    let provider =
        telemetry::install_tracer("palisade-demo-server", config.otlp_endpoint.as_deref())?;
    let listener = tokio::net::TcpListener::bind(config.addr.unwrap_or(args.addr)).await?;
    let running = server::start_live(&args, &config, listener).await?;
    tracing::info!(
        addr = %running.addr,
        metrics = running.metrics_addr.map(tracing::field::display),
        bare = config.bare == Some(true),
        config = args.config.as_ref().map(|path| tracing::field::display(path.display())),
        "palisade demo server listening"
    );
    let grace = config
        .grace_period
        .map_or(args.grace_period, std::time::Duration::from_millis);
    let served = running.serve_until_signal(&mut signals, grace).await;
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
