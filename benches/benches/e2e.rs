//! End to end: a real tonic server (palisade-demo's routes, `TCP_NODELAY` on as tonic's
//! `serve` sets it) and client in this process, over loopback HTTP/2 (one connection), on a
//! multi-threaded Tokio runtime with as many workers as cores — the server and the client's
//! connection share them, as they share the machine; the calls themselves are driven from the
//! bench's thread (`Runtime::block_on`), as an application's task would make them.
//!
//! Groups `e2e/{unary,stream}_{1,64}`: `SayHello` (unary) or `SayHelloStream` (10 replies),
//! with 1 or 64 calls in flight. Cases:
//! - `bare`: no layer on either side (tonic alone);
//! - `server_stack`: the full server stack (`ServerLayers`: trace sampled → logging JSON →
//!   metrics → jwt → ratelimit → breaker), a bare client that sends the token;
//! - `server_stack_log_off`: the same server stack with its logging layer's levels below the
//!   subscriber's (`RUST_LOG=info,palisade_logging=off` for the layer): nothing logged;
//! - `full`: the full server stack and the full client stack (`ClientLayers`: trace →
//!   logging → metrics → breaker → ratelimit → jwt attach).
//!
//! As the `server` program is deployed with `--log-format json > file`: the logs go through
//! palisade-logging's non-blocking writer to a real (temporary) file — the application's own
//! `tracing` events through a JSON `fmt` subscriber at `info`, and every RPC's access-log
//! line written by the logging layers themselves (`LoggingBuilder::access_log`) into the same
//! writer.
//!
//! Criterion's time per iteration is the time per call (at 64 in flight, the inverse of the
//! throughput: calls/s = 1 / time). Each call's latency is recorded too; when measuring, the
//! percentiles go to `target/palisade-bench/e2e.json` for the report. The subscriber is
//! installed globally (the server runs on the runtime's threads), for every case alike.
#![allow(missing_docs)]

use std::{
    collections::BTreeMap,
    hint::black_box,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use criterion::{BenchmarkGroup, Throughput, measurement::WallTime};
use futures_util::StreamExt;
use palisade_benches::{env, measuring, quick, record_load, results_dir, suites};
use palisade_demo::pb::{HelloRequest, greeter_client::GreeterClient};
use tokio::{runtime::Runtime, sync::oneshot};
use tonic::{
    client::GrpcService,
    metadata::MetadataValue,
    service::Routes,
    transport::{Channel, Server, server::TcpIncoming},
};
use tower_layer::Layer;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A tonic server on `127.0.0.1:0` serving palisade-demo's routes (Greeter, health,
/// reflection) behind `layer` — as `palisade_demo::spawn` does, but with `TCP_NODELAY` on the
/// accepted connections, as `Server::serve` sets by default (`serve_with_incoming` leaves the
/// sockets as they come, and Nagle's algorithm against delayed ACKs then stalls streams
/// for 40 ms).
struct TestServer {
    addr: std::net::SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestServer {
    async fn spawn<L, ResBody>(layer: L) -> Self
    where
        L: Layer<Routes> + Clone + Send + 'static,
        L::Service: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>
            + Clone
            + Send
            + 'static,
        <L::Service as Service<http::Request<tonic::body::Body>>>::Future: Send,
        <L::Service as Service<http::Request<tonic::body::Body>>>::Error: Into<BoxError> + Send,
        ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("a bound address");
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let routes = palisade_demo::routes(palisade_demo::Greeter::new()).await;
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            Server::builder()
                .layer(layer)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await
                .expect("the bench server runs");
        });
        TestServer {
            addr,
            shutdown: Some(tx),
        }
    }

    /// A connected channel (tonic's endpoint sets `TCP_NODELAY` by default).
    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("a valid loopback URL")
            .connect()
            .await
            .expect("the bench server accepts connections")
    }

    async fn client(&self) -> GreeterClient<Channel> {
        GreeterClient::new(self.channel().await)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A fresh log file's path under the results directory (a real file on the same disk as the
/// target directory).
fn tempfile_in_target() -> std::path::PathBuf {
    let dir = results_dir();
    std::fs::create_dir_all(&dir).expect("the results directory");
    dir.join(format!("e2e-access-{}.log", std::process::id()))
}

/// Replies per `SayHelloStream`.
const STREAM_REPLIES: u32 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Unary,
    Stream,
}

/// One client of one server.
struct Setup<T> {
    client: GreeterClient<T>,
    /// `authorization` for a bare client calling a stacked server.
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    _server: Arc<TestServer>,
}

impl<T> Setup<T>
where
    T: GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// `calls` calls, `in_flight` at a time; returns the elapsed time and adds each call's
    /// latency to `latencies`.
    async fn run(
        &self,
        kind: Kind,
        calls: u64,
        in_flight: usize,
        latencies: &Mutex<Vec<u32>>,
    ) -> Duration {
        let start = Instant::now();
        let mut done: Vec<u32> = futures_util::stream::iter(0..calls)
            .map(|_| {
                let mut client = self.client.clone();
                let token = self.token.clone();
                async move {
                    let start = Instant::now();
                    let message = HelloRequest {
                        name: "Ada".into(),
                        count: if kind == Kind::Stream {
                            STREAM_REPLIES
                        } else {
                            0
                        },
                        ..Default::default()
                    };
                    let mut request = tonic::Request::new(message);
                    if let Some(token) = token {
                        request.metadata_mut().insert("authorization", token);
                    }
                    match kind {
                        Kind::Unary => {
                            let reply = client.say_hello(request).await.expect("SayHello answers");
                            black_box(reply);
                        }
                        Kind::Stream => {
                            let mut stream = client
                                .say_hello_stream(request)
                                .await
                                .expect("SayHelloStream answers")
                                .into_inner();
                            let mut replies = 0;
                            while let Some(reply) =
                                stream.message().await.expect("the stream ends with OK")
                            {
                                black_box(reply);
                                replies += 1;
                            }
                            assert_eq!(replies, STREAM_REPLIES);
                        }
                    }
                    u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX)
                }
            })
            .buffer_unordered(in_flight)
            .collect()
            .await;
        let elapsed = start.elapsed();
        latencies.lock().unwrap().append(&mut done);
        elapsed
    }
}

/// Latency percentiles of one case, in microseconds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Latency {
    calls: usize,
    p50_us: u32,
    p90_us: u32,
    p99_us: u32,
}

fn percentiles(mut latencies: Vec<u32>) -> Option<Latency> {
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Some(Latency {
        calls: latencies.len(),
        p50_us: at(0.50),
        p90_us: at(0.90),
        p99_us: at(0.99),
    })
}

/// One case of a group: `calls` calls per criterion iteration batch, latencies kept.
fn bench_one<T>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    setup: &Setup<T>,
    name: &str,
    (kind, in_flight): (Kind, usize),
    results: &mut BTreeMap<String, Latency>,
    group_id: &str,
) where
    T: GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let latencies = Mutex::new(Vec::new());
    group.bench_function(name, |b| {
        b.iter_custom(|calls| rt.block_on(setup.run(kind, calls, in_flight, &latencies)))
    });
    if let Some(latency) = percentiles(latencies.into_inner().unwrap()) {
        results.insert(format!("{group_id}/{name}"), latency);
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let env = env::get();
    // The log file, as `server --log-format json > file` writes it.
    let log_file = tempfile_in_target();
    let (log, log_guard) = palisade_logging::writer::non_blocking(
        std::fs::File::create(&log_file).expect("the log file opens"),
    );
    tracing::dispatcher::set_global_default(tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .fmt_fields(palisade_logging::JsonFields::new())
            .with_writer(log.clone())
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .finish(),
    ))
    .expect("the global subscriber installs");

    // Wall-clock time: throughput and latency are what a caller sees.
    let mut c = palisade_benches::configure(criterion::Criterion::default())
        .sample_size(10)
        .warm_up_time(Duration::from_millis(if quick() { 20 } else { 500 }))
        .measurement_time(Duration::from_millis(if quick() { 100 } else { 4000 }))
        .configure_from_args();
    record_load("e2e-start");

    let bearer = MetadataValue::try_from(format!("Bearer {}", env.token)).expect("ASCII");
    let (bare, stacked, log_off) = rt.block_on(async {
        let bare = Arc::new(TestServer::spawn(tower::layer::util::Identity::new()).await);
        let stacked =
            Arc::new(TestServer::spawn(suites::server_stack_to(true, Some(log.clone()))).await);
        let log_off = Arc::new(
            TestServer::spawn(suites::server_stack_logged(
                true,
                palisade_logging::LoggingLayer::server()
                    .levels(|_| tracing::Level::TRACE)
                    .span_level(tracing::Level::TRACE)
                    .access_log(log.clone()),
            ))
            .await,
        );
        (bare, stacked, log_off)
    });
    let mut results = BTreeMap::new();
    let (bare_client, server_stack_client, log_off_client, full_client) = rt.block_on(async {
        let bare_client = Setup {
            client: bare.client().await,
            token: None,
            _server: bare.clone(),
        };
        let server_stack_client = Setup {
            client: stacked.client().await,
            token: Some(bearer.clone()),
            _server: stacked.clone(),
        };
        let log_off_client = Setup {
            client: log_off.client().await,
            token: Some(bearer.clone()),
            _server: log_off.clone(),
        };
        let stack = suites::client_stack_for_channel_to(true, stacked.addr.port(), log.clone());
        let full_client = Setup {
            client: GreeterClient::new(stack.layer(stacked.channel().await)),
            token: None,
            _server: stacked.clone(),
        };
        (
            bare_client,
            server_stack_client,
            log_off_client,
            full_client,
        )
    });

    // Each group measures its three cases one after the other, so they share the machine's
    // state as closely as criterion allows.
    for (kind, kind_name) in [(Kind::Unary, "unary"), (Kind::Stream, "stream")] {
        for in_flight in [1, 64] {
            let group_id = format!("e2e/{kind_name}_{in_flight}");
            let mut group = c.benchmark_group(&group_id);
            group.throughput(Throughput::Elements(1));
            let shape = (kind, in_flight);
            bench_one(
                &mut group,
                &rt,
                &bare_client,
                "bare",
                shape,
                &mut results,
                &group_id,
            );
            bench_one(
                &mut group,
                &rt,
                &server_stack_client,
                "server_stack",
                shape,
                &mut results,
                &group_id,
            );
            bench_one(
                &mut group,
                &rt,
                &log_off_client,
                "server_stack_log_off",
                shape,
                &mut results,
                &group_id,
            );
            bench_one(
                &mut group,
                &rt,
                &full_client,
                "full",
                shape,
                &mut results,
                &group_id,
            );
            group.finish();
        }
    }
    drop((
        bare_client,
        server_stack_client,
        log_off_client,
        full_client,
    ));

    c.final_summary();
    record_load("e2e-end");
    if measuring() {
        let path = results_dir().join("e2e.json");
        let mut all: BTreeMap<String, Latency> = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        all.extend(results);
        std::fs::create_dir_all(results_dir()).expect("the results directory");
        std::fs::write(&path, serde_json::to_vec_pretty(&all).expect("JSON"))
            .expect("e2e.json is written");
    }
    drop((bare, stacked, log_off));
    rt.shutdown_timeout(Duration::from_secs(1));
    // Every line is in the file once the guard is gone; the file is the bench's alone.
    drop(log_guard);
    if log.dropped() > 0 {
        eprintln!("e2e: {} log lines dropped (buffer full)", log.dropped());
    }
    let _ = std::fs::remove_file(&log_file);
}
