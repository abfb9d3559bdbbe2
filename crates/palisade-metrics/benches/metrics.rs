//! The metrics layer against a bare service doing the same work: one unary RPC, its response
//! body polled to the trailers, with a real Prometheus recorder installed (global, upkeep
//! every 100 ms). Budget (docs/ARCHITECTURE.md, "Performance budgets"): ≤ 150 ns median overhead.
//!
//! After criterion's runs, an interleaved measurement prints the overhead and the ratio of
//! each layer to the bare service, in one run.
#![allow(missing_docs)]

use std::{
    future::Future,
    hint::black_box,
    pin::pin,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use bytes::Bytes;
use cpu_time::ThreadTime;
use criterion::{Criterion, criterion_group};
use http::{Method, Request, Response, Uri};
use http_body::Body;
use palisade_core::{
    Code, MethodRegistry,
    side::{Client, Server},
};
use palisade_demo::{
    FILE_DESCRIPTOR_SET, SAY_HELLO,
    frames::{GrpcBody, message, unary_service},
};
use palisade_metrics::{MetricsLayer, Naming, prometheus::PrometheusExporter};
use tower::{Layer, Service};

/// One RPC: call, resolve the (ready) future, poll the body to its end.
fn rpc<S, B>(service: &mut S, uri: &Uri, payload: &Bytes)
where
    S: Service<Request<GrpcBody>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
    B::Error: std::fmt::Debug,
{
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .body(GrpcBody::new([payload.clone()], None))
        .unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    let Poll::Ready(response) = pin!(service.call(request)).poll(&mut cx) else {
        unreachable!("the service is ready at once")
    };
    let mut body = pin!(response.unwrap().into_body());
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(frame)) => {
                black_box(frame.unwrap());
            }
            Poll::Ready(None) => break,
            Poll::Pending => unreachable!("the body is ready at once"),
        }
    }
}

type Unary = palisade_demo::frames::UnaryService;

struct Cases {
    server: palisade_metrics::Metrics<Unary, Server>,
    server_otel: palisade_metrics::Metrics<Unary, Server>,
    client: palisade_metrics::Metrics<Unary, Client>,
}

fn cases() -> Cases {
    let registry = MethodRegistry::from_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET).unwrap();
    let inner = unary_service(Code::Ok);
    Cases {
        server: MetricsLayer::server()
            .registry(registry.clone())
            .build()
            .layer(inner),
        server_otel: MetricsLayer::server()
            .registry(registry)
            .naming(Naming::OpenTelemetry)
            .build()
            .layer(inner),
        // No registry: the method is found in the run-time map.
        client: MetricsLayer::client().build().layer(inner),
    }
}

fn install() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        PrometheusExporter::new()
            .upkeep_interval(Duration::from_millis(100))
            .install()
            .expect("the global recorder installs");
    });
}

fn bench(c: &mut Criterion) {
    install();
    let uri = Uri::from_static(SAY_HELLO);
    let payload = message(b"\x0a\x03Ada");
    let mut bare = unary_service(Code::Ok);
    let mut cases = cases();
    let mut group = c.benchmark_group("metrics/unary");
    group.bench_function("bare", |b| b.iter(|| rpc(&mut bare, &uri, &payload)));
    group.bench_function("server", |b| {
        b.iter(|| rpc(&mut cases.server, &uri, &payload))
    });
    group.bench_function("server_otel", |b| {
        b.iter(|| rpc(&mut cases.server_otel, &uri, &payload))
    });
    group.bench_function("client_no_registry", |b| {
        b.iter(|| rpc(&mut cases.client, &uri, &payload))
    });
    group.finish();
}

/// Interleaved batches of each case; the median per-RPC time of each, in nanoseconds of this
/// thread's CPU time (time the scheduler gave to other processes does not count: the benches
/// share their machine).
fn interleaved() {
    install();
    let uri = Uri::from_static(SAY_HELLO);
    let payload = message(b"\x0a\x03Ada");
    let mut bare = unary_service(Code::Ok);
    let mut cases = cases();
    const BATCH: u32 = 20_000;
    const ROUNDS: usize = 31;
    let mut times: [Vec<f64>; 4] = Default::default();
    let per_rpc = |start: ThreadTime| start.elapsed().as_nanos() as f64 / f64::from(BATCH);
    for _ in 0..ROUNDS {
        let start = ThreadTime::now();
        (0..BATCH).for_each(|_| rpc(&mut bare, &uri, &payload));
        times[0].push(per_rpc(start));
        let start = ThreadTime::now();
        (0..BATCH).for_each(|_| rpc(&mut cases.server, &uri, &payload));
        times[1].push(per_rpc(start));
        let start = ThreadTime::now();
        (0..BATCH).for_each(|_| rpc(&mut cases.server_otel, &uri, &payload));
        times[2].push(per_rpc(start));
        let start = ThreadTime::now();
        (0..BATCH).for_each(|_| rpc(&mut cases.client, &uri, &payload));
        times[3].push(per_rpc(start));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let bare = median(&mut times[0]);
    println!(
        "\ninterleaved medians ({ROUNDS} rounds of {BATCH} RPCs, thread CPU time), budget: overhead <= 150 ns"
    );
    println!("  {:<20} {bare:>8.1} ns", "bare");
    for (name, i) in [("server", 1), ("server_otel", 2), ("client_no_registry", 3)] {
        let t = median(&mut times[i]);
        println!(
            "  {name:<20} {t:>8.1} ns   overhead {:>6.1} ns   ratio {:.2}",
            t - bare,
            t / bare
        );
    }
}

/// What the overhead is made of: the recorder's handles, the clock, and palisade-core's
/// reading of the outcome (which every layer built on `ObservedBody` pays).
fn parts(c: &mut Criterion) {
    install();
    let counter = metrics::counter!("parts_total", "a" => "b");
    let histogram = metrics::histogram!("parts_handling_seconds", "a" => "b");
    let trailers = palisade_demo::frames::trailers(Code::Ok, None);
    static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    let mut g = c.benchmark_group("metrics/parts");
    g.bench_function("prometheus_counter_increment", |b| {
        b.iter(|| counter.increment(1))
    });
    g.bench_function("prometheus_histogram_record", |b| {
        b.iter(|| histogram.record(black_box(0.001)))
    });
    g.bench_function("std_instant_now", |b| b.iter(|| black_box(Instant::now())));
    g.bench_function("quanta_instant_now", |b| {
        b.iter(|| black_box(quanta::Instant::now()))
    });
    g.bench_function("core_outcome_from_trailers", |b| {
        b.iter(|| black_box(palisade_core::Outcome::from_trailers(black_box(&trailers))))
    });
    g.bench_function("header_get_by_str", |b| {
        b.iter(|| black_box(black_box(&trailers).get("grpc-status")))
    });
    g.bench_function("header_get_by_static_name", |b| {
        b.iter(|| black_box(black_box(&trailers).get(&GRPC_STATUS)))
    });
    g.finish();
}

criterion_group!(benches, bench, parts);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only under `cargo bench` (which passes `--bench`), and not when profiling or listing.
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    if benching && !args.iter().any(|a| a == "--profile-time" || a == "--list") {
        interleaved();
    }
}
