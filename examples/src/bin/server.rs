//! The demo server: Greeter, `grpc.health.v1.Health` and server reflection on `--addr`.
//!
//! ```text
//! cargo run -p palisade-examples --bin server -- --addr 127.0.0.1:50051
//! ```

use std::net::SocketAddr;

use clap::Parser;
use tonic::transport::Server;

/// Serve the Palisade demo Greeter.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: SocketAddr,
    /// Serve the same Greeter with no Palisade layer, for overhead comparisons.
    #[arg(long)]
    bare: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let routes = palisade_demo::routes(palisade_examples::Greeter::new()).await;
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    println!(
        "palisade demo server listening on {}{}",
        listener.local_addr()?,
        if args.bare { " (bare)" } else { "" }
    );
    Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await?;
    Ok(())
}
