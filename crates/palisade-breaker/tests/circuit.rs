//! The state machine on paused tokio time: tripping, rejecting, probing, closing, reopening.

mod support;

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use http::HeaderValue;
use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};
use metrics_util::registry::{AtomicStorage, Registry};
use palisade_breaker::{Backoff, BreakerLayer, OnStateChange, State, Transition};
use palisade_core::Code;
use support::{Backend, HELLO, Reply, call, hello, open, request};
use tower::Layer;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ok() -> (Code, String) {
    (Code::Ok, String::new())
}

/// Records every transition the hook is told of.
#[derive(Clone, Default)]
struct Transitions(Arc<Mutex<Vec<Seen>>>);

/// (from, to, open for)
type Seen = (State, State, Option<Duration>);

impl Transitions {
    fn hook(&self) -> impl OnStateChange + Send + Sync + 'static {
        let seen = self.0.clone();
        move |t: &Transition<'_>| seen.lock().unwrap().push((t.from, t.to, t.open_for))
    }

    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[tokio::test(start_paused = true)]
async fn trips_after_the_configured_failures_and_then_never_calls_the_inner_service() {
    let backend = Backend::new(Reply::Unary(Code::Unavailable));
    let layer = BreakerLayer::client()
        .name("backend")
        .consecutive_failures(3)
        .backoff(Backoff::constant(secs(10)))
        .build();
    let service = layer.layer(backend.clone());

    for _ in 0..2 {
        assert_eq!(hello(&service).await.0, Code::Unavailable);
        assert_eq!(layer.state("backend"), Some(State::Closed));
    }
    // The third failure opens the circuit; it reached the backend.
    assert_eq!(hello(&service).await.0, Code::Unavailable);
    assert_eq!(layer.state("backend"), Some(State::Open));
    assert_eq!(backend.calls(), 3);

    // While open, nothing reaches the backend, whatever it would answer.
    backend.set(Reply::Unary(Code::Ok));
    for _ in 0..100 {
        assert_eq!(hello(&service).await, open());
    }
    tokio::time::advance(secs(10) - Duration::from_millis(1)).await;
    assert_eq!(hello(&service).await, open());
    assert_eq!(backend.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn successes_reset_consecutive_failures_and_other_codes_are_successes() {
    let backend = Backend::new(Reply::Unary(Code::Internal));
    let layer = BreakerLayer::client()
        .name("backend")
        .consecutive_failures(2)
        .build();
    let service = layer.layer(backend.clone());
    for _ in 0..5 {
        backend.set(Reply::TrailersOnly(Code::DataLoss));
        assert_eq!(hello(&service).await.0, Code::DataLoss);
        // NotFound is the caller's problem, not the backend's: a success.
        backend.set(Reply::Unary(Code::NotFound));
        assert_eq!(hello(&service).await.0, Code::NotFound);
    }
    assert_eq!(layer.state("backend"), Some(State::Closed));
    // A quota answer is the server asking to slow down, not a failure.
    backend.set(Reply::TrailersOnly(Code::ResourceExhausted));
    hello(&service).await;
    hello(&service).await;
    assert_eq!(layer.state("backend"), Some(State::Closed));
    backend.set(Reply::TrailersOnly(Code::Internal));
    hello(&service).await;
    backend.set(Reply::Error);
    hello(&service).await;
    assert_eq!(layer.state("backend"), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn after_the_backoff_one_probe_goes_through_and_its_success_closes() {
    let recorder = Transitions::default();
    let backend = Backend::new(Reply::Unary(Code::Unavailable));
    let layer = BreakerLayer::client()
        .name("backend")
        .consecutive_failures(1)
        .backoff(Backoff::constant(secs(5)))
        .on_state_change(recorder.hook())
        .build();
    let service = layer.layer(backend.clone());

    hello(&service).await;
    assert_eq!(layer.state("backend"), Some(State::Open));
    backend.set(Reply::Hang);
    tokio::time::advance(secs(5)).await;

    // One probe is in flight; the other calls are rejected without reaching the backend.
    let probe = tokio::spawn({
        let service = service.clone();
        async move { hello(&service).await }
    });
    while backend.calls() < 2 {
        tokio::task::yield_now().await;
    }
    assert_eq!(layer.state("backend"), Some(State::HalfOpen));
    for _ in 0..10 {
        assert_eq!(hello(&service).await, open());
    }
    assert_eq!(backend.calls(), 2);
    probe.abort();
    assert!(probe.await.unwrap_err().is_cancelled());

    // The cancelled probe counted as nothing; the next one succeeds and closes the circuit.
    backend.set(Reply::Unary(Code::Ok));
    assert_eq!(hello(&service).await, ok());
    assert_eq!(layer.state("backend"), Some(State::Closed));
    for _ in 0..10 {
        assert_eq!(hello(&service).await, ok());
    }
    assert_eq!(backend.calls(), 13);
    assert_eq!(
        recorder.take(),
        [
            (State::Closed, State::Open, Some(secs(5))),
            (State::Open, State::HalfOpen, None),
            (State::HalfOpen, State::Closed, None),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_never_ends_does_not_hold_the_circuit_half_open() {
    let recorder = Transitions::default();
    let backend = Backend::new(Reply::Unary(Code::Unavailable));
    let layer = BreakerLayer::client()
        .name("backend")
        .consecutive_failures(1)
        .backoff(Backoff::constant(secs(5)))
        .half_open_max_wait(secs(10))
        .on_state_change(recorder.hook())
        .build();
    let service = layer.layer(backend.clone());
    hello(&service).await;
    assert_eq!(layer.state("backend"), Some(State::Open));

    // The probe hangs for a minute, then fails.
    tokio::time::advance(secs(5)).await;
    backend.set(Reply::Late(60_000, Code::Unavailable));
    let stuck = tokio::spawn({
        let service = service.clone();
        async move { hello(&service).await }
    });
    while backend.calls() < 2 {
        tokio::task::yield_now().await;
    }
    assert_eq!(layer.state("backend"), Some(State::HalfOpen));
    tokio::time::advance(secs(10) - Duration::from_millis(1)).await;
    assert_eq!(hello(&service).await, open());
    assert_eq!(layer.state("backend"), Some(State::HalfOpen));

    // Past the maximum wait the circuit decides without it: open again, then a new probe.
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(hello(&service).await, open());
    assert_eq!(layer.state("backend"), Some(State::Open));
    tokio::time::advance(secs(5)).await;
    backend.set(Reply::Unary(Code::Ok));
    assert_eq!(hello(&service).await, ok());
    assert_eq!(layer.state("backend"), Some(State::Closed));
    assert_eq!(backend.calls(), 3);

    // The stuck probe's late failure belongs to an older generation: it changes nothing.
    assert_eq!(stuck.await.unwrap().0, Code::Unavailable);
    assert_eq!(layer.state("backend"), Some(State::Closed));
    assert_eq!(hello(&service).await, ok());
    assert_eq!(
        recorder.take(),
        [
            (State::Closed, State::Open, Some(secs(5))),
            (State::Open, State::HalfOpen, None),
            (State::HalfOpen, State::Open, Some(secs(5))),
            (State::Open, State::HalfOpen, None),
            (State::HalfOpen, State::Closed, None),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_stream_probe_on_a_healthy_backend_closes_the_circuit_at_the_max_wait() {
    let recorder = Transitions::default();
    let backend = Backend::new(Reply::Unary(Code::Unavailable));
    let layer = BreakerLayer::client()
        .name("backend")
        .consecutive_failures(1)
        .backoff(Backoff::constant(secs(5)))
        .half_open_max_wait(secs(10))
        .on_state_change(recorder.hook())
        .build();
    let service = layer.layer(backend.clone());
    hello(&service).await;
    assert_eq!(layer.state("backend"), Some(State::Open));

    // The probe is a long-lived stream on a healthy backend: headers, a message, no end.
    tokio::time::advance(secs(5)).await;
    backend.set(Reply::Stream);
    let stream = tower::ServiceExt::oneshot(service.clone(), request(HELLO))
        .await
        .unwrap();
    assert_eq!(layer.state("backend"), Some(State::HalfOpen));
    assert_eq!(hello(&service).await, open());

    // At the maximum wait the circuit decides from it: the backend answered, so it closes,
    // and the call that found the slot taken goes through.
    tokio::time::advance(secs(10)).await;
    backend.set(Reply::Unary(Code::Ok));
    assert_eq!(hello(&service).await, ok());
    assert_eq!(layer.state("backend"), Some(State::Closed));
    // The stream's own end, much later, belongs to an older generation: it changes nothing.
    drop(stream);
    assert_eq!(layer.state("backend"), Some(State::Closed));
    assert_eq!(
        recorder.take(),
        [
            (State::Closed, State::Open, Some(secs(5))),
            (State::Open, State::HalfOpen, None),
            (State::HalfOpen, State::Closed, None),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn long_stream_probes_short_of_the_successes_to_close_admit_new_probes() {
    let backend = Backend::new(Reply::Unary(Code::Unavailable));
    let layer = BreakerLayer::client()
        .name("backend")
        .consecutive_failures(1)
        .backoff(Backoff::constant(secs(5)))
        .half_open_max_wait(secs(10))
        .successes_to_close(2)
        .build();
    let service = layer.layer(backend.clone());
    hello(&service).await;
    tokio::time::advance(secs(5)).await;
    backend.set(Reply::Stream);
    let first = tower::ServiceExt::oneshot(service.clone(), request(HELLO))
        .await
        .unwrap();
    tokio::time::advance(secs(10)).await;
    // One answering probe of two needed: a new half-open period, with a new probe slot.
    let second = tower::ServiceExt::oneshot(service.clone(), request(HELLO))
        .await
        .unwrap();
    assert_eq!(layer.state("backend"), Some(State::HalfOpen));
    assert_eq!(hello(&service).await, open());
    tokio::time::advance(secs(10)).await;
    backend.set(Reply::Unary(Code::Ok));
    assert_eq!(hello(&service).await, ok());
    assert_eq!(layer.state("backend"), Some(State::Closed));
    drop((first, second));
}

/// A probe answered by an empty `200` without a status ended at its head: its outcome is in,
/// and it must not also count as a probe still answering when the maximum wait is up.
#[tokio::test(start_paused = true)]
async fn a_probe_that_ended_at_its_head_is_not_also_answering() {
    let backend = Backend::new(Reply::Unary(Code::Unavailable));
    let layer = BreakerLayer::client()
        .name("backend")
        .consecutive_failures(1)
        .backoff(Backoff::constant(secs(5)))
        .half_open_max_wait(secs(10))
        .successes_to_close(2)
        // The empty answer's `Unknown` (a missing status) counts as a success here.
        .classify(|outcome: &palisade_core::Outcome| match outcome.code() {
            Code::Unavailable => palisade_breaker::Verdict::Failure,
            _ => palisade_breaker::Verdict::Success,
        })
        .build();
    let service = layer.layer(backend.clone());
    hello(&service).await;
    tokio::time::advance(secs(5)).await;
    backend.set(Reply::Empty);
    let empty = tower::ServiceExt::oneshot(service.clone(), request(HELLO))
        .await
        .unwrap();
    assert!(empty.headers().get("grpc-status").is_none());
    assert!(http_body::Body::is_end_stream(empty.body()));
    // One success of two: still half-open, and the next probe hangs.
    assert_eq!(layer.state("backend"), Some(State::HalfOpen));
    backend.set(Reply::Hang);
    let mut hung = std::pin::pin!(tower::ServiceExt::oneshot(service.clone(), request(HELLO)));
    assert!(futures_util::FutureExt::now_or_never(hung.as_mut()).is_none());
    assert_eq!(backend.calls(), 3);
    // At the maximum wait no probe is answering (the empty one ended): open again, and the
    // call that found the slot taken does not reach the (now healthy) backend.
    tokio::time::advance(secs(10)).await;
    backend.set(Reply::Unary(Code::Ok));
    assert_eq!(hello(&service).await, open());
    assert_eq!(layer.state("backend"), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn an_inner_palisade_rejection_is_not_the_backends_failure() {
    // Two breakers stacked: the inner one's "circuit open" is UNAVAILABLE, a failure code,
    // but it was made here, by a Palisade layer: the outer breaker ignores it.
    let backend = Backend::new(Reply::Unary(Code::Unavailable));
    let inner = BreakerLayer::client()
        .name("inner")
        .consecutive_failures(1)
        .backoff(Backoff::constant(secs(60)))
        .build();
    let outer = BreakerLayer::client()
        .name("outer")
        .consecutive_failures(3)
        .build();
    let service = outer.layer(inner.layer(backend.clone()));
    assert_eq!(hello(&service).await.0, Code::Unavailable);
    for _ in 0..5 {
        assert_eq!(hello(&service).await, open());
    }
    assert_eq!(inner.state("inner"), Some(State::Open));
    assert_eq!(outer.state("outer"), Some(State::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_with_a_longer_backoff() {
    let recorder = Transitions::default();
    let backend = Backend::new(Reply::Unary(Code::Unavailable));
    let layer = BreakerLayer::client()
        .name("backend")
        .consecutive_failures(2)
        .backoff(Backoff::exponential(secs(1), secs(8)))
        .on_state_change(recorder.hook())
        .build();
    let service = layer.layer(backend.clone());
    hello(&service).await;
    hello(&service).await;
    assert_eq!(backend.calls(), 2);

    // Open 1 s, then 2 s, 4 s, 8 s, 8 s: each probe fails and the wait grows.
    for open_for in [1, 2, 4, 8, 8] {
        assert_eq!(layer.state("backend"), Some(State::Open));
        let calls = backend.calls();
        tokio::time::advance(secs(open_for) - Duration::from_millis(1)).await;
        assert_eq!(
            hello(&service).await,
            open(),
            "still open before {open_for} s"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(hello(&service).await.0, Code::Unavailable);
        assert_eq!(backend.calls(), calls + 1, "one probe after {open_for} s");
    }
    let seen = recorder.take();
    let opened: Vec<_> = seen
        .iter()
        .filter(|(_, to, _)| *to == State::Open)
        .map(|(_, _, open_for)| open_for.unwrap().as_secs())
        .collect();
    assert_eq!(opened, [1, 2, 4, 8, 8, 8]);

    // A successful probe closes, and the backoff starts over.
    backend.set(Reply::Unary(Code::Ok));
    tokio::time::advance(secs(8)).await;
    assert_eq!(hello(&service).await, ok());
    assert_eq!(layer.state("backend"), Some(State::Closed));
    backend.set(Reply::Unary(Code::Unavailable));
    hello(&service).await;
    hello(&service).await;
    let last = recorder.take().pop().unwrap();
    assert_eq!(last, (State::Closed, State::Open, Some(secs(1))));
}

#[tokio::test(start_paused = true)]
async fn failure_rate_trips_only_past_the_minimum_number_of_calls() {
    let backend = Backend::new(Reply::Unary(Code::Unavailable));
    let layer = BreakerLayer::client()
        .name("backend")
        .failure_rate(0.5, 10, secs(10))
        .backoff(Backoff::constant(secs(3)))
        .build();
    let service = layer.layer(backend.clone());

    // Nine failures: 100 % failed, but under the minimum of ten calls.
    for _ in 0..9 {
        hello(&service).await;
    }
    assert_eq!(layer.state("backend"), Some(State::Closed));
    // They leave the window; nine more are still under the minimum.
    tokio::time::advance(secs(11)).await;
    for _ in 0..9 {
        hello(&service).await;
    }
    assert_eq!(layer.state("backend"), Some(State::Closed));
    // The tenth call in the window, failed: 10 of 10.
    hello(&service).await;
    assert_eq!(layer.state("backend"), Some(State::Open));
    assert_eq!(backend.calls(), 19);

    // A successful probe closes and starts a fresh window: the probe, then 4 failures in 10
    // calls, is a rate under the threshold.
    backend.set(Reply::Unary(Code::Ok));
    tokio::time::advance(secs(3)).await;
    assert_eq!(hello(&service).await, ok());
    assert_eq!(layer.state("backend"), Some(State::Closed));
    for i in 0..10 {
        let code = if i % 5 < 2 { Code::Internal } else { Code::Ok };
        backend.set(Reply::Unary(code));
        hello(&service).await;
    }
    assert_eq!(layer.state("backend"), Some(State::Closed));
    // 5 of 12 failed, then 6 of 13: still under 50 %; 7 of 14 reaches it.
    backend.set(Reply::Unary(Code::Internal));
    for _ in 0..2 {
        hello(&service).await;
        assert_eq!(layer.state("backend"), Some(State::Closed));
    }
    hello(&service).await;
    assert_eq!(layer.state("backend"), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn slow_successes_count_as_failures() {
    let backend = Backend::new(Reply::Delayed(300));
    let layer = BreakerLayer::client()
        .name("backend")
        .consecutive_failures(2)
        .slow_call(Duration::from_millis(200))
        .build();
    let service = layer.layer(backend.clone());
    assert_eq!(hello(&service).await, ok());
    backend.set(Reply::Delayed(100));
    assert_eq!(hello(&service).await, ok());
    backend.set(Reply::Delayed(300));
    assert_eq!(hello(&service).await, ok());
    assert_eq!(layer.state("backend"), Some(State::Closed));
    assert_eq!(hello(&service).await, ok());
    assert_eq!(layer.state("backend"), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_after_its_deadline_is_a_timeout_not_a_cancellation() {
    let backend = Backend::new(Reply::Hang);
    let layer = BreakerLayer::client()
        .name("backend")
        .consecutive_failures(1)
        .build();
    let service = layer.layer(backend.clone());

    let with_deadline = || {
        let mut request = request(HELLO);
        request
            .headers_mut()
            .insert("grpc-timeout", HeaderValue::from_static("100m"));
        request
    };
    // Dropped before the deadline, or without one: a cancellation, ignored.
    for request in [with_deadline(), request(HELLO)] {
        let service = service.clone();
        let call = tokio::spawn(async move { call(&service, request).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        assert_eq!(layer.state("backend"), Some(State::Closed));
    }
    // Dropped after it: the local timeout is a failure.
    let call = tokio::spawn({
        let service = service.clone();
        async move { call(&service, with_deadline()).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    assert_eq!(layer.state("backend"), Some(State::Open));
}

/// A recorder whose values can be read without resetting them.
#[derive(Clone)]
struct TestRecorder(Arc<Registry<Key, AtomicStorage>>);

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

impl TestRecorder {
    /// (state gauge, permitted, rejected) of the `greeter` breaker.
    fn read(&self) -> (f64, u64, u64) {
        let find = |name: &str| {
            let key = Key::from_parts(name.to_owned(), vec![Label::new("breaker", "greeter")]);
            (self
                .0
                .get_counter_handles()
                .get(&key)
                .map(|c| c.load(Ordering::SeqCst)))
            .or_else(|| {
                self.0
                    .get_gauge_handles()
                    .get(&key)
                    .map(|g| g.load(Ordering::SeqCst))
            })
            .unwrap_or_else(|| panic!("no {name}"))
        };
        (
            f64::from_bits(find("palisade_breaker_state")),
            find("palisade_breaker_permitted_total"),
            find("palisade_breaker_rejected_total"),
        )
    }
}

#[tokio::test(start_paused = true)]
async fn the_gauge_and_counters_follow_the_circuit() {
    let recorder = TestRecorder(Arc::new(Registry::atomic()));
    let backend = Backend::new(Reply::Unary(Code::Unavailable));
    let layer = metrics::with_local_recorder(&recorder, || {
        BreakerLayer::client()
            .name("greeter")
            .consecutive_failures(2)
            .backoff(Backoff::constant(secs(1)))
            .build()
    });
    let service = layer.layer(backend.clone());
    assert_eq!(recorder.read(), (0.0, 0, 0));
    hello(&service).await;
    hello(&service).await;
    assert_eq!(recorder.read(), (2.0, 2, 0));
    hello(&service).await;
    hello(&service).await;
    assert_eq!(recorder.read(), (2.0, 2, 2));
    backend.set(Reply::Hang);
    tokio::time::advance(secs(1)).await;
    let probe = tokio::spawn({
        let service = service.clone();
        async move { hello(&service).await }
    });
    while backend.calls() < 3 {
        tokio::task::yield_now().await;
    }
    assert_eq!(recorder.read(), (1.0, 3, 2));
    assert_eq!(hello(&service).await, open());
    assert_eq!(recorder.read(), (1.0, 3, 3));
    probe.abort();
    let _ = probe.await;
    backend.set(Reply::Unary(Code::Ok));
    hello(&service).await;
    assert_eq!(recorder.read(), (0.0, 4, 3));
}

/// Collects what a `tracing` subscriber writes.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn one_log_line_per_transition() {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .with_ansi(false)
        .without_time()
        .finish();
    // With one dispatcher registered, tracing computes a new callsite's interest from the
    // default of whichever thread hits it first — another test's, which has none — and
    // caches "never". With two, it asks each of them.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _guard = tracing::subscriber::set_default(subscriber);

    let backend = Backend::new(Reply::Unary(Code::Unavailable));
    let layer = BreakerLayer::client()
        .name("backend")
        .consecutive_failures(1)
        .backoff(Backoff::constant(secs(2)))
        .build();
    let service = layer.layer(backend.clone());
    hello(&service).await;
    hello(&service).await;
    tokio::time::advance(secs(2)).await;
    backend.set(Reply::Unary(Code::Ok));
    hello(&service).await;
    hello(&service).await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    // The build said once that no `metrics` recorder is installed (none in this binary).
    assert_eq!(text.matches("no `metrics` recorder").count(), 1, "{text}");
    let lines: Vec<_> = text
        .lines()
        .filter(|line| !line.contains("no `metrics` recorder"))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with(" WARN palisade_breaker: circuit opened"),
        "{text}"
    );
    assert!(lines[0].contains("breaker=\"backend\""), "{text}");
    assert!(lines[0].contains("open_ms=2000"), "{text}");
    assert!(lines[1].contains("circuit half-open"), "{text}");
    assert!(lines[2].contains("circuit closed") && lines[2].contains("from=\"half_open\""));
}
