//! Each piece of Palisade against a bare service doing the same work: a unary gRPC call whose
//! response (one message, then trailers) is polled to its end.

use std::{
    convert::Infallible,
    future::Ready,
    hint::black_box,
    task::{Context, Poll},
};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use palisade_benches::{call_to_trailers, unary_request};
use palisade_core::{Code, Counts, ObservedBody, ObservedFuture, Observer, Outcome, Side};
use palisade_demo::frames::{GrpcBody, UnaryService, unary_service};
use tower_service::Service;

/// An observer that keeps what it is told, so the work cannot be optimised away.
struct Sink;

impl Observer for Sink {
    fn on_message(&mut self) {
        black_box(());
    }
    fn on_end(self, outcome: Outcome, counts: Counts) {
        black_box((outcome.code(), counts));
    }
}

/// The bare service wrapped by core's observed future and body, nothing else.
#[derive(Clone)]
struct Observed(UnaryService);

impl Service<http::Request<GrpcBody>> for Observed {
    type Response = http::Response<ObservedBody<GrpcBody, Sink>>;
    type Error = Infallible;
    type Future = ObservedFuture<Ready<Result<http::Response<GrpcBody>, Infallible>>, Sink>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<http::Request<GrpcBody>>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, request: http::Request<GrpcBody>) -> Self::Future {
        ObservedFuture::new(self.0.call(request), Side::Server, Sink)
    }
}

fn observed_body(c: &mut Criterion) {
    let mut group = c.benchmark_group("core/observed_body");
    let mut bare = unary_service(Code::Ok);
    group.bench_function("bare", |b| {
        b.iter_batched(
            unary_request,
            |request| black_box(call_to_trailers(&mut bare, request)),
            BatchSize::SmallInput,
        )
    });
    let mut observed = Observed(unary_service(Code::Ok));
    group.bench_function("observed", |b| {
        b.iter_batched(
            unary_request,
            |request| black_box(call_to_trailers(&mut observed, request)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, observed_body);
criterion_main!(benches);
