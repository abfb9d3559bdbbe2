//! The trace layer's overhead over a bare service doing the same work: one unary call, the
//! response body polled to its trailers. Budgets (docs/ARCHITECTURE.md): sampled (no-op exporter)
//! ≤ 1 µs, not sampled ≤ 150 ns.
//!
//! The layers propagate with palisade's `W3cPropagator` (trace context and baggage, by hand).
//!
//! Cases, server side (every request carries a W3C `traceparent`, the bare one too):
//! - `sampled`: the caller sampled the trace; spans go to a no-op exporter through the SDK's
//!   simple processor;
//! - `sampled_sdk_propagators`: the same, with the SDK's `TraceContextPropagator` and
//!   `BaggagePropagator` composed;
//! - `not_sampled_by_parent`: the caller did not sample it (flags `00`), parent-based sampler;
//! - `not_sampled_always_off`: the provider samples nothing;
//! - `observed_only`: palisade-core's `ObservedFuture` with a no-op observer, the floor every
//!   layer built on it pays.
//!
//! Client side (no incoming header; the layer injects one): `sampled`, `not_sampled`.
//!
//! After criterion's runs, an interleaved measurement prints the overhead and the ratio of each
//! case to its bare service, in one run.
#![allow(missing_docs)]

use std::{
    future::Future,
    hint::black_box,
    pin::pin,
    task::{Context, Poll, Waker},
    time::Instant,
};

use criterion::{Criterion, criterion_group};
use http::{HeaderValue, Request, Response};
use http_body::Body;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry_sdk::{
    error::OTelSdkResult,
    propagation::{BaggagePropagator, TraceContextPropagator},
    trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter},
};
use palisade_core::{
    ObservedBody, ObservedFuture, Side,
    side::{Client, Server},
};
use palisade_demo::frames::{GrpcBody, UnaryService, unary_service};
use palisade_trace::{Trace, TraceLayer, W3cPropagator};
use tonic::Code;
use tower::{Layer, Service};

/// Exports nothing, at once.
#[derive(Debug)]
struct NoopExporter;

impl SpanExporter for NoopExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

fn provider(sampler: Sampler) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_simple_exporter(NoopExporter)
        .build()
}

fn sdk_propagators() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const NOT_SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

fn request(traceparent: Option<&'static str>) -> Request<()> {
    let mut request = Request::builder()
        .method("POST")
        .uri("/palisade.demo.v1.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    if let Some(traceparent) = traceparent {
        request
            .headers_mut()
            .insert("traceparent", HeaderValue::from_static(traceparent));
    }
    request
}

/// One call: the response future, then its body polled to the trailers.
fn call<S, B>(service: &mut S, request: Request<()>)
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
{
    let mut cx = Context::from_waker(Waker::noop());
    let response = match pin!(service.call(request)).poll(&mut cx) {
        Poll::Ready(response) => response.unwrap(),
        Poll::Pending => unreachable!("the bench service is ready at once"),
    };
    let mut body = pin!(response.into_body());
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let trailers = frame.is_trailers();
                black_box(frame);
                if trailers {
                    break;
                }
            }
            Poll::Ready(None) => break,
            Poll::Ready(Some(Err(_))) | Poll::Pending => unreachable!(),
        }
    }
}

/// palisade-core's observed future with a no-op observer: what every layer built on it pays.
#[derive(Clone)]
struct ObservedOnly(UnaryService);

impl Service<Request<()>> for ObservedOnly {
    type Response = Response<ObservedBody<GrpcBody, ()>>;
    type Error = std::convert::Infallible;
    type Future = ObservedFuture<<UnaryService as Service<Request<()>>>::Future, ()>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request<()>>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        ObservedFuture::new(self.0.call(request), Side::Server, ())
    }
}

type Traced = Trace<UnaryService, Server, SdkTracer>;
type TracedClient = Trace<UnaryService, Client, SdkTracer>;

struct Cases {
    bare: UnaryService,
    observed: ObservedOnly,
    sampled: Traced,
    sampled_sdk: Traced,
    parent_off: Traced,
    always_off: Traced,
    client_sampled: TracedClient,
    client_off: TracedClient,
    // Kept alive for the spans' processors.
    _providers: [SdkTracerProvider; 2],
}

fn cases() -> Cases {
    let on = provider(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
    let off = provider(Sampler::AlwaysOff);
    let server = |p: &SdkTracerProvider| {
        TraceLayer::server()
            .tracer_provider(p)
            .propagator(W3cPropagator::new())
            .build()
            .layer(unary_service(Code::Ok))
    };
    let client = |p: &SdkTracerProvider| {
        TraceLayer::client()
            .tracer_provider(p)
            .propagator(W3cPropagator::new())
            .server_address("127.0.0.1", 50051)
            .build()
            .layer(unary_service(Code::Ok))
    };
    Cases {
        bare: unary_service(Code::Ok),
        observed: ObservedOnly(unary_service(Code::Ok)),
        sampled: server(&on),
        sampled_sdk: TraceLayer::server()
            .tracer_provider(&on)
            .propagator(sdk_propagators())
            .build()
            .layer(unary_service(Code::Ok)),
        parent_off: server(&on),
        always_off: server(&off),
        client_sampled: client(&on),
        client_off: client(&off),
        _providers: [on, off],
    }
}

fn server(c: &mut Criterion) {
    let mut cases = cases();
    let mut group = c.benchmark_group("trace/server");
    // The request is built inside the loop for the bare service too: the same work.
    group.bench_function("bare", |b| {
        b.iter(|| call(&mut cases.bare, request(Some(SAMPLED))))
    });
    group.bench_function("observed_only", |b| {
        b.iter(|| call(&mut cases.observed, request(Some(SAMPLED))))
    });
    group.bench_function("sampled", |b| {
        b.iter(|| call(&mut cases.sampled, request(Some(SAMPLED))))
    });
    group.bench_function("sampled_sdk_propagators", |b| {
        b.iter(|| call(&mut cases.sampled_sdk, request(Some(SAMPLED))))
    });
    group.bench_function("not_sampled_by_parent", |b| {
        b.iter(|| call(&mut cases.parent_off, request(Some(NOT_SAMPLED))))
    });
    group.bench_function("not_sampled_always_off", |b| {
        b.iter(|| call(&mut cases.always_off, request(Some(SAMPLED))))
    });
    group.finish();
}

fn client(c: &mut Criterion) {
    let mut cases = cases();
    let mut group = c.benchmark_group("trace/client");
    group.bench_function("bare", |b| b.iter(|| call(&mut cases.bare, request(None))));
    group.bench_function("sampled", |b| {
        b.iter(|| call(&mut cases.client_sampled, request(None)))
    });
    group.bench_function("not_sampled", |b| {
        b.iter(|| call(&mut cases.client_off, request(None)))
    });
    group.finish();
}

/// Interleaved batches of each case; the median per-call time of each, in nanoseconds.
fn interleaved() {
    let mut cases = cases();
    const BATCH: u32 = 20_000;
    const ROUNDS: usize = 31;
    let mut times: [Vec<f64>; 9] = Default::default();
    fn batch<S, B>(service: &mut S, traceparent: Option<&'static str>) -> f64
    where
        S: Service<Request<()>, Response = Response<B>>,
        S::Error: std::fmt::Debug,
        B: Body,
    {
        let start = Instant::now();
        (0..BATCH).for_each(|_| call(service, request(traceparent)));
        start.elapsed().as_nanos() as f64 / f64::from(BATCH)
    }
    for _ in 0..ROUNDS {
        times[0].push(batch(&mut cases.bare, Some(SAMPLED)));
        times[1].push(batch(&mut cases.observed, Some(SAMPLED)));
        times[2].push(batch(&mut cases.sampled, Some(SAMPLED)));
        times[3].push(batch(&mut cases.parent_off, Some(NOT_SAMPLED)));
        times[4].push(batch(&mut cases.always_off, Some(SAMPLED)));
        times[5].push(batch(&mut cases.bare, None));
        times[6].push(batch(&mut cases.client_sampled, None));
        times[7].push(batch(&mut cases.client_off, None));
        times[8].push(batch(&mut cases.sampled_sdk, Some(SAMPLED)));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<f64> = times.iter_mut().map(median).collect();
    println!(
        "\ninterleaved medians ({ROUNDS} rounds of {BATCH} calls); budgets: sampled <= 1000 ns, \
         not sampled <= 150 ns overhead"
    );
    let rows = [
        ("server bare", 0, 0),
        ("server observed_only", 1, 0),
        ("server sampled", 2, 0),
        ("server sampled, SDK propagators", 8, 0),
        ("server not_sampled_by_parent", 3, 0),
        ("server not_sampled_always_off", 4, 0),
        ("client bare", 5, 5),
        ("client sampled", 6, 5),
        ("client not_sampled", 7, 5),
    ];
    for (name, i, bare) in rows {
        let (t, b) = (medians[i], medians[bare]);
        if i == bare {
            println!("  {name:<32} {t:>8.1} ns");
        } else {
            println!(
                "  {name:<32} {t:>8.1} ns   overhead {:>7.1} ns   ratio {:.2}",
                t - b,
                t / b
            );
        }
    }
}

criterion_group!(benches, server, client);

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
