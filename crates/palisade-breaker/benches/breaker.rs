//! The breaker's overhead against a bare service doing the same work (the response body
//! polled to its trailers): closed (one circuit with the default policy, with consecutive
//! failures only, and per method), and open fast-fail.
//!
//! `observed` is the floor under any layer that reads the real end of the RPC:
//! palisade-core's `ObservedFuture` + `ObservedBody` with a no-op observer. The breaker's own
//! cost is its time minus `observed`.

use std::{
    hint::black_box,
    pin::pin,
    task::{Context, Poll, Waker},
    time::Duration,
};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, Uri};
use http_body::Body;
use palisade_breaker::{Backoff, BreakerLayer, State};
use palisade_core::{Code, Counts, ObservedBody, ObservedFuture, Outcome, Side, observe::OnEnd};
use palisade_demo::{SAY_HELLO, frames::unary_service};
use tower::{Layer, Service};

/// One call, polled to the end of its body, on a no-op waker (every future here is ready).
fn drive<S, B>(service: &mut S, uri: &Uri) -> usize
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
    B::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut request = Request::new(());
    *request.uri_mut() = uri.clone();
    assert!(service.poll_ready(&mut cx).is_ready());
    let Poll::Ready(response) = pin!(service.call(request)).poll(&mut cx) else {
        panic!("a ready service");
    };
    let (parts, body) = response.unwrap().into_parts();
    let mut body = pin!(body);
    let mut frames = parts.headers.len();
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        frames += usize::from(frame.unwrap().is_trailers());
    }
    frames
}

type NoOp = OnEnd<fn(Outcome, Counts)>;

/// The inner service behind palisade-core's observed future and body, with a no-op observer.
struct Observed<S>(S);

impl<S, B> Service<Request<()>> for Observed<S>
where
    S: Service<Request<()>, Response = Response<B>>,
    B: http_body::Body,
    S::Error: 'static,
{
    type Response = Response<ObservedBody<B, NoOp>>;
    type Error = S::Error;
    type Future = ObservedFuture<S::Future, NoOp>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        fn ignore(outcome: Outcome, _: Counts) {
            black_box(outcome);
        }
        let observer = palisade_core::observe::on_end(ignore as fn(Outcome, Counts));
        ObservedFuture::new(self.0.call(request), Side::Client, observer)
    }
}

fn closed(c: &mut Criterion) {
    let uri = Uri::from_static(SAY_HELLO);
    let mut group = c.benchmark_group("breaker/closed");
    let mut bare = unary_service(Code::Ok);
    group.bench_function("bare", |b| b.iter(|| black_box(drive(&mut bare, &uri))));
    let mut observed = Observed(unary_service(Code::Ok));
    group.bench_function("observed", |b| {
        b.iter(|| black_box(drive(&mut observed, &uri)))
    });
    let layer = BreakerLayer::client().name("bench").build();
    let mut single = layer.layer(unary_service(Code::Ok));
    group.bench_function("breaker", |b| {
        b.iter(|| black_box(drive(&mut single, &uri)))
    });
    let layer = BreakerLayer::client()
        .name("bench")
        .consecutive_failures(5)
        .build();
    let mut consecutive = layer.layer(unary_service(Code::Ok));
    group.bench_function("breaker_consecutive", |b| {
        b.iter(|| black_box(drive(&mut consecutive, &uri)))
    });
    let layer = BreakerLayer::client().per_method().build();
    let mut keyed = layer.layer(unary_service(Code::Ok));
    group.bench_function("breaker_per_method", |b| {
        b.iter(|| black_box(drive(&mut keyed, &uri)))
    });
    group.finish();
}

fn open(c: &mut Criterion) {
    let uri = Uri::from_static(SAY_HELLO);
    let mut group = c.benchmark_group("breaker/open");
    let mut bare = unary_service(Code::Ok);
    group.bench_function("bare", |b| b.iter(|| black_box(drive(&mut bare, &uri))));
    let layer = BreakerLayer::client()
        .name("bench")
        .consecutive_failures(1)
        .backoff(Backoff::constant(Duration::from_secs(3600)))
        .build();
    drive(&mut layer.layer(unary_service(Code::Unavailable)), &uri);
    assert_eq!(layer.state("bench"), Some(State::Open));
    let mut open = layer.layer(unary_service(Code::Ok));
    group.bench_function("fast_fail", |b| {
        b.iter(|| black_box(drive(&mut open, &uri)))
    });
    group.finish();
}

criterion_group!(benches, closed, open);
criterion_main!(benches);
