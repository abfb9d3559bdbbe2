//! The logging layer's overhead over a bare service doing the same work (a unary gRPC
//! response polled to its trailers). Each group runs `bare` and `logging` under the same
//! subscriber, so the difference is the layer's cost:
//!
//! - `json_to_sink`: a JSON `fmt` subscriber (its defaults: timestamp, level, target, current
//!   span and span list) writing to `io::sink`, every call logged (budget: ≤ 1.5 µs);
//! - `level_disabled`: the same subscriber with `palisade_logging=off`, so nothing this layer
//!   writes is enabled (budget: ≤ 50 ns);
//! - `json_event_only` (information): `json_to_sink` with the RPC span's level filtered out,
//!   the finish event alone;
//! - `ok_filtered_out` (information): the subscriber at `warn` with the server defaults: an OK
//!   call is tracked (an error would be logged) but not written;
//! - `access_log`: the same JSON subscriber, the finish line written by
//!   [`LoggingBuilder::access_log`](palisade_logging::LoggingBuilder::access_log) into a non-blocking writer (its thread writing to `io::sink`);
//!   `access_log_event_only`: the same with the RPC's span filtered out — the line alone,
//!   formatted and handed off (budget: ≤ 1 µs);
//! - `writer/{palisade,tracing_appender}`: handing one 300-byte line to palisade-logging's
//!   non-blocking writer, or to `tracing-appender`'s `non_blocking` (both lossy, writing to
//!   `io::sink`): the cost on the caller's thread.
//!
//! Requests are built outside the timed part.

use std::{
    future::Future,
    hint::black_box,
    io,
    pin::pin,
    task::{Context, Poll, Waker},
};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::Request;
use http_body::Body;
use palisade_core::Code;
use palisade_demo::frames::{GrpcBody, message, unary_service};
use palisade_logging::LoggingLayer;
use tower::{Layer, Service};
use tracing::{Dispatch, Level};
use tracing_subscriber::EnvFilter;

fn request() -> Request<GrpcBody> {
    Request::post(palisade_demo::SAY_HELLO)
        .header("content-type", "application/grpc")
        .body(GrpcBody::new([message(b"\x0a\x03Ada")], None))
        .unwrap()
}

/// Polls a future that is ready at once.
fn now<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the bench services are ready at once"),
    }
}

/// One call: the response, then its body polled to the trailers.
fn run<S, ResBody>(service: &mut S, request: Request<GrpcBody>)
where
    S: Service<Request<GrpcBody>, Response = http::Response<ResBody>>,
    S::Error: std::fmt::Debug,
    ResBody: Body,
    ResBody::Error: std::fmt::Debug,
{
    let response = now(service.call(request)).unwrap();
    let mut body = pin!(response.into_body());
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(frame)) => {
                black_box(frame.unwrap());
            }
            Poll::Ready(None) => break,
            Poll::Pending => panic!("the bench bodies are ready at once"),
        }
    }
}

fn json_to_sink(filter: &str) -> Dispatch {
    Dispatch::new(
        tracing_subscriber::fmt()
            .json()
            .with_writer(io::sink)
            .with_env_filter(EnvFilter::new(filter))
            .finish(),
    )
}

fn compare(
    c: &mut Criterion,
    name: &str,
    subscriber: Dispatch,
    layer: LoggingLayer<palisade_core::side::Server>,
) {
    tracing::dispatcher::with_default(&subscriber, || {
        let mut group = c.benchmark_group(name);
        let mut bare = unary_service(Code::Ok);
        group.bench_function("bare", |b| {
            b.iter_batched(request, |r| run(&mut bare, r), BatchSize::SmallInput)
        });
        let mut logged = layer.layer(unary_service(Code::Ok));
        group.bench_function("logging", |b| {
            b.iter_batched(request, |r| run(&mut logged, r), BatchSize::SmallInput)
        });
        group.finish();
    });
}

fn writers(c: &mut Criterion) {
    let line = format!(
        "{{\"timestamp\":\"2026-11-21T10:00:00.000000Z\",{}}}\n",
        "x".repeat(250)
    );
    let mut group = c.benchmark_group("writer");
    let (palisade, guard) = palisade_logging::writer::non_blocking(io::sink());
    group.bench_function("palisade", |b| {
        b.iter(|| palisade.write_line(black_box(line.as_bytes())))
    });
    drop(guard);
    let (mut appender, guard) = tracing_appender::non_blocking(io::sink());
    group.bench_function("tracing_appender", |b| {
        b.iter(|| io::Write::write_all(&mut appender, black_box(line.as_bytes())).unwrap())
    });
    drop(guard);
    group.finish();
}

fn bench(c: &mut Criterion) {
    writers(c);
    let (writer, _guard) = palisade_logging::writer::non_blocking(io::sink());
    compare(
        c,
        "access_log",
        json_to_sink("info"),
        LoggingLayer::server().access_log(writer.clone()).build(),
    );
    compare(
        c,
        "access_log_event_only",
        json_to_sink("info"),
        LoggingLayer::server()
            .span_level(Level::TRACE)
            .access_log(writer.clone())
            .build(),
    );
    compare(
        c,
        "json_to_sink",
        json_to_sink("info"),
        LoggingLayer::server().build(),
    );
    compare(
        c,
        "level_disabled",
        json_to_sink("info,palisade_logging=off"),
        LoggingLayer::server().build(),
    );
    compare(
        c,
        "json_event_only",
        json_to_sink("info"),
        LoggingLayer::server().span_level(Level::TRACE).build(),
    );
    compare(
        c,
        "ok_filtered_out",
        json_to_sink("warn"),
        LoggingLayer::server().build(),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
