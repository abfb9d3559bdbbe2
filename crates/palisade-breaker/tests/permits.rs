//! Every way a call can end gives its permit back: a circuit never sticks half-open.

mod support;

use std::{
    convert::Infallible,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Barrier,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::FutureExt;
use http::{Request, Response};
use http_body::Body;
use palisade_breaker::{Breaker, BreakerLayer, State, Verdict};
use palisade_core::{Code, Outcome, side::Client};
use support::{Backend, HELLO, Reply, TestBody, hello, open, request};
use tower::{Layer, Service, ServiceExt};

const BACKOFF: Duration = Duration::from_secs(1);

/// A layer whose circuit opens on one failure for one second, with `probes` probes.
fn layer(probes: u32) -> BreakerLayer<Client> {
    BreakerLayer::client()
        .name("backend")
        .consecutive_failures(1)
        .backoff(palisade_breaker::Backoff::constant(BACKOFF))
        .half_open_probes(probes)
        // NotFound counts as neither success nor failure.
        .classify(|outcome: &Outcome| match outcome.code() {
            Code::NotFound => Verdict::Ignore,
            Code::Unavailable | Code::Internal => Verdict::Failure,
            _ => Verdict::Success,
        })
        .build()
}

/// Opens the circuit, then waits out the backoff: the next call is a probe.
async fn half_open(
    layer: &BreakerLayer<Client>,
    backend: &Backend,
    service: &Breaker<Backend, Client>,
) {
    backend.set(Reply::Unary(Code::Unavailable));
    hello(service).await;
    assert_eq!(layer.state("backend"), Some(State::Open));
    tokio::time::advance(BACKOFF).await;
}

/// The circuit still serves: a call reaches the backend and its success closes the circuit.
async fn still_serves(
    layer: &BreakerLayer<Client>,
    backend: &Backend,
    service: &Breaker<Backend, Client>,
) {
    if layer.state("backend") == Some(State::Open) {
        tokio::time::advance(BACKOFF).await;
    }
    backend.set(Reply::Unary(Code::Ok));
    let calls = backend.calls();
    assert_eq!(hello(service).await.0, Code::Ok);
    assert_eq!(backend.calls(), calls + 1);
    assert_eq!(layer.state("backend"), Some(State::Closed));
}

/// Calls once (ready, then `call`), without polling the response future.
fn start(
    service: &Breaker<Backend, Client>,
) -> <Breaker<Backend, Client> as Service<Request<()>>>::Future {
    let mut service = service.clone();
    ServiceExt::<Request<()>>::ready(&mut service)
        .now_or_never()
        .unwrap()
        .unwrap();
    service.call(request(HELLO))
}

/// Each path, run on a probe and on a call of a closed circuit, leaves a circuit that serves.
async fn check_path<F, Fut>(name: &str, path: F, half_open_after: State)
where
    F: Fn(Breaker<Backend, Client>, Backend) -> Fut,
    Fut: Future<Output = ()>,
{
    for probing in [true, false] {
        let layer = layer(1);
        let backend = Backend::default();
        let service = layer.layer(backend.clone());
        if probing {
            half_open(&layer, &backend, &service).await;
        }
        let calls = backend.calls();
        path(service.clone(), backend.clone()).await;
        assert_eq!(
            backend.calls(),
            calls + 1,
            "{name}: the call reached the backend"
        );
        let expected = if probing {
            half_open_after
        } else if half_open_after == State::Open {
            State::Open
        } else {
            State::Closed
        };
        assert_eq!(
            layer.state("backend"),
            Some(expected),
            "{name} (probe: {probing})"
        );
        still_serves(&layer, &backend, &service).await;
    }
}

#[tokio::test(start_paused = true)]
async fn success() {
    check_path(
        "success",
        |service, backend| async move {
            backend.set(Reply::Unary(Code::Ok));
            assert_eq!(hello(&service).await.0, Code::Ok);
        },
        State::Closed,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn failure_in_trailers_and_in_a_trailers_only_response() {
    for reply in [
        Reply::Unary(Code::Internal),
        Reply::TrailersOnly(Code::Unavailable),
    ] {
        check_path(
            "failure",
            |service, backend| async move {
                backend.set(reply);
                assert_ne!(hello(&service).await.0, Code::Ok);
            },
            State::Open,
        )
        .await;
    }
}

#[tokio::test(start_paused = true)]
async fn transport_error() {
    check_path(
        "transport error",
        |service, backend| async move {
            backend.set(Reply::Error);
            let (code, message) = hello(&service).await;
            assert_eq!(
                (code, message.as_str()),
                (Code::Unavailable, "error: connection refused")
            );
        },
        State::Open,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn ignored_code() {
    check_path(
        "ignored code",
        |service, backend| async move {
            backend.set(Reply::Unary(Code::NotFound));
            assert_eq!(hello(&service).await.0, Code::NotFound);
        },
        State::HalfOpen,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn cancellation_while_the_call_is_in_flight() {
    check_path(
        "cancellation",
        |service, backend| async move {
            backend.set(Reply::Hang);
            let calls = backend.calls();
            let call = tokio::spawn(async move { hello(&service).await });
            while backend.calls() == calls {
                tokio::task::yield_now().await;
            }
            call.abort();
            assert!(call.await.unwrap_err().is_cancelled());
        },
        State::HalfOpen,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn response_future_dropped_unpolled() {
    check_path(
        "dropped response future",
        |service, backend| async move {
            backend.set(Reply::Unary(Code::Unavailable));
            drop(start(&service));
        },
        State::HalfOpen,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn stream_dropped_after_its_first_message() {
    check_path(
        "dropped stream",
        |service, backend| async move {
            backend.set(Reply::Stream);
            let response = start(&service).await.unwrap();
            let mut body = std::pin::pin!(response.into_body());
            let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
            assert!(frame.unwrap().unwrap().is_data());
            assert!(!body.is_end_stream());
        },
        State::HalfOpen,
    )
    .await;
}

/// A service whose `call` panics.
#[derive(Clone)]
struct Panics(Backend);

impl Service<Request<()>> for Panics {
    type Response = Response<TestBody>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<TestBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        drop(self.0.call(request));
        panic!("the inner service panicked");
    }
}

#[tokio::test(start_paused = true)]
async fn inner_service_panicking_in_call() {
    let layer = layer(1);
    let backend = Backend::default();
    let service = layer.layer(backend.clone());
    half_open(&layer, &backend, &service).await;
    let mut panicking = layer.layer(Panics(backend.clone()));
    let panicked = catch_unwind(AssertUnwindSafe(|| panicking.call(request(HELLO))));
    assert!(panicked.is_err());
    assert_eq!(backend.calls(), 2);
    // The panic is the service failing the probe (palisade-core's admission middleware
    // reports a panic in the inner `call` as it does one in a poll): the circuit reopens.
    assert_eq!(layer.state("backend"), Some(State::Open));
    still_serves(&layer, &backend, &service).await;

    // Where the panic's `INTERNAL` is ignored, the probe still gives its slot back: the
    // circuit stays half-open, and the next call is a probe that closes it.
    let layer = BreakerLayer::client()
        .name("backend")
        .consecutive_failures(1)
        .backoff(palisade_breaker::Backoff::constant(BACKOFF))
        .classify(|outcome: &Outcome| match outcome.code() {
            Code::Internal => Verdict::Ignore,
            Code::Unavailable => Verdict::Failure,
            _ => Verdict::Success,
        })
        .build();
    let backend = Backend::default();
    let service = layer.layer(backend.clone());
    half_open(&layer, &backend, &service).await;
    let mut panicking = layer.layer(Panics(backend.clone()));
    let panicked = catch_unwind(AssertUnwindSafe(|| panicking.call(request(HELLO))));
    assert!(panicked.is_err());
    assert_eq!(layer.state("backend"), Some(State::HalfOpen));
    still_serves(&layer, &backend, &service).await;
}

/// 1000 calls race from 8 threads while half-open: exactly `probes` reach the backend, the
/// others are rejected; when the probes end, the circuit still serves.
async fn concurrent_calls_while_half_open(probes: u32) {
    const THREADS: usize = 8;
    const CALLS: usize = 125;
    let layer = layer(probes);
    let backend = Backend::default();
    let service = layer.layer(backend.clone());
    half_open(&layer, &backend, &service).await;
    assert_eq!(
        layer.state("backend"),
        Some(State::Open),
        "half-open comes with a call"
    );
    backend.set(Reply::Hang);
    let calls = backend.calls();

    let runtime = tokio::runtime::Handle::current();
    let barrier = Barrier::new(THREADS);
    let (in_flight, rejected) = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| {
                    // The breaker reads the runtime's (paused) clock.
                    let _runtime = runtime.enter();
                    barrier.wait();
                    let mut in_flight = Vec::new();
                    let mut rejected = 0;
                    for _ in 0..CALLS {
                        let mut future = start(&service);
                        match (&mut future).now_or_never() {
                            Some(Ok(response)) => {
                                assert_eq!(response.headers()["grpc-status"], "14");
                                assert_eq!(response.headers()["grpc-message"], "circuit open");
                                rejected += 1;
                            }
                            Some(Err(error)) => panic!("{error}"),
                            None => in_flight.push(future),
                        }
                    }
                    (in_flight, rejected)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).fold(
            (Vec::new(), 0),
            |(mut all, rejected), (mut some, more)| {
                all.append(&mut some);
                (all, rejected + more)
            },
        )
    });
    assert_eq!(in_flight.len(), probes as usize);
    assert_eq!(rejected, THREADS * CALLS - probes as usize);
    assert_eq!(backend.calls(), calls + probes as usize);
    assert_eq!(layer.state("backend"), Some(State::HalfOpen));

    // With the probes still in flight, nothing more gets through.
    assert_eq!(hello(&service).await, open());
    // The callers give up: every slot comes back.
    drop(in_flight);
    assert_eq!(layer.state("backend"), Some(State::HalfOpen));
    still_serves(&layer, &backend, &service).await;
}

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_calls_while_half_open_one_probe() {
    concurrent_calls_while_half_open(1).await;
}

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_calls_while_half_open_three_probes() {
    concurrent_calls_while_half_open(3).await;
}

#[tokio::test(start_paused = true)]
async fn several_probes_must_all_succeed_and_one_failure_reopens() {
    let layer = BreakerLayer::client()
        .name("backend")
        .consecutive_failures(1)
        .backoff(palisade_breaker::Backoff::constant(BACKOFF))
        .half_open_probes(2)
        .successes_to_close(3)
        .build();
    let backend = Backend::default();
    let service = layer.layer(backend.clone());
    backend.set(Reply::Unary(Code::Unavailable));
    hello(&service).await;
    tokio::time::advance(BACKOFF).await;
    backend.set(Reply::Unary(Code::Ok));
    for _ in 0..2 {
        assert_eq!(hello(&service).await.0, Code::Ok);
        assert_eq!(layer.state("backend"), Some(State::HalfOpen));
    }
    backend.set(Reply::Unary(Code::Unavailable));
    hello(&service).await;
    assert_eq!(layer.state("backend"), Some(State::Open));
    tokio::time::advance(BACKOFF).await;
    backend.set(Reply::Unary(Code::Ok));
    for _ in 0..3 {
        assert_eq!(hello(&service).await.0, Code::Ok);
    }
    assert_eq!(layer.state("backend"), Some(State::Closed));
}

#[tokio::test(start_paused = true)]
async fn late_outcomes_of_calls_admitted_before_a_transition_are_dropped() {
    let layer = layer(1);
    let backend = Backend::default();
    let service = layer.layer(backend.clone());
    // A call admitted while closed, answering OK in 3 s.
    backend.set(Reply::Delayed(3000));
    let old = tokio::spawn({
        let service = service.clone();
        async move { hello(&service).await }
    });
    while backend.calls() == 0 {
        tokio::task::yield_now().await;
    }
    // Meanwhile the circuit opens, then goes half-open with a probe in flight.
    half_open(&layer, &backend, &service).await;
    backend.set(Reply::Hang);
    let probe = start(&service);
    assert!(!probe.is_rejected());
    assert_eq!(layer.state("backend"), Some(State::HalfOpen));
    // The old call succeeds: that says nothing about the backend now, only probes decide.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(old.await.unwrap().0, Code::Ok);
    assert_eq!(layer.state("backend"), Some(State::HalfOpen));
    assert!(
        start(&service).is_rejected(),
        "the probe is still in flight"
    );
    drop(probe);
    still_serves(&layer, &backend, &service).await;
}
