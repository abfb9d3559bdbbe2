//! The demo server: Greeter, `grpc.health.v1.Health` and server reflection on `--addr`, behind
//! Palisade's full server stack (trace → logging → metrics → jwt → ratelimit), with
//! `GET /metrics` on `--metrics-addr`.
//!
//! ```text
//! cargo run -p palisade-examples --bin server -- --rate 10 --burst 20 --rate-key subject
//! ```

use clap::Parser;
use palisade_examples::{
    BoxError,
    server::{self, ServerArgs},
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
    telemetry::init_logs(args.log_format, "info");
    let provider =
        telemetry::install_tracer("palisade-demo-server", args.otlp_endpoint.as_deref())?;
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let running = server::start(&args, listener).await?;
    tracing::info!(
        addr = %running.addr,
        metrics = ?running.metrics_addr,
        bare = args.bare,
        "palisade demo server listening"
    );
    tokio::select! {
        result = running.wait() => result?,
        _ = tokio::signal::ctrl_c() => {}
    }
    provider.shutdown()?;
    Ok(())
}
