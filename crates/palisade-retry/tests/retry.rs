//! Retries and hedging over a real tonic connection: a backend scripted per attempt (it reads
//! `grpc-previous-rpc-attempts`), the demo Greeter behind it, a tonic `Channel` under the
//! retry layer — issue #18's checks.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::HeaderValue;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use palisade_core::{Code, CodeSet, LocalRejection, Matcher, MethodRegistry, Rejection};
use palisade_demo::{
    FILE_DESCRIPTOR_SET, Greeter, TestServer,
    pb::{HelloRequest, greeter_client::GreeterClient},
    spawn_with,
};
use palisade_retry::{
    ATTEMPTS_TOTAL, BUDGET_EXHAUSTED_TOTAL, ConfigError, HedgePolicy, RetryBudget, RetryLayer,
    RetryPolicy,
};
use tokio::sync::Notify;
use tonic::{body::Body, service::Routes, transport::Channel};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// What the backend does with one attempt.
#[derive(Clone, Copy, Debug)]
enum Action {
    /// The Greeter answers.
    Pass,
    /// A trailers-only failure, with this pushback if any.
    Fail(Code, Option<&'static str>),
    /// Never answers (until the client cancels).
    Hang,
}

/// One attempt as the backend saw it.
#[derive(Clone, Debug)]
struct Seen {
    previous: u32,
    timeout: Option<String>,
    at: Instant,
}

#[derive(Default)]
struct Backend {
    seen: Mutex<Vec<Seen>>,
    cancelled: Notify,
    cancellations: std::sync::atomic::AtomicUsize,
}

impl Backend {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn previous(&self) -> Vec<u32> {
        self.seen().iter().map(|seen| seen.previous).collect()
    }
}

/// Cancels (notifies) when a hung attempt's handler is dropped.
struct OnDrop(Arc<Backend>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0
            .cancellations
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.cancelled.notify_one();
    }
}

impl Backend {
    /// Waits until `n` hung attempts have been cancelled.
    async fn cancelled(&self, n: usize) {
        let wait = async {
            while self.cancellations.load(std::sync::atomic::Ordering::SeqCst) < n {
                self.cancelled.notified().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("{n} attempts cancelled"));
    }
}

/// The demo Greeter behind a layer that does what `script` says with each attempt.
async fn backend(
    script: impl Fn(u32) -> Action + Send + Sync + 'static,
) -> (TestServer, Arc<Backend>) {
    let backend = Arc::new(Backend::default());
    let script = Arc::new(script);
    let layer = tower::layer::layer_fn({
        let backend = Arc::clone(&backend);
        move |routes: Routes| {
            let backend = Arc::clone(&backend);
            let script = Arc::clone(&script);
            tower::service_fn(move |request: http::Request<Body>| {
                let mut routes = routes.clone();
                let backend = Arc::clone(&backend);
                let script = Arc::clone(&script);
                async move {
                    let headers = request.headers();
                    let previous = headers
                        .get("grpc-previous-rpc-attempts")
                        .map_or(0, |value| value.to_str().unwrap().parse().unwrap());
                    let timeout = headers
                        .get("grpc-timeout")
                        .map(|value| value.to_str().unwrap().to_owned());
                    backend.seen.lock().unwrap().push(Seen {
                        previous,
                        timeout,
                        at: Instant::now(),
                    });
                    match script(previous) {
                        Action::Pass => routes.call(request).await,
                        Action::Fail(code, pushback) => {
                            let mut rejection = Rejection::new(code, "scripted");
                            if let Some(pushback) = pushback {
                                rejection = rejection.with_metadata(
                                    "grpc-retry-pushback-ms",
                                    HeaderValue::from_static(pushback),
                                );
                            }
                            Ok::<_, Infallible>(rejection.into_response())
                        }
                        Action::Hang => {
                            let _guard = OnDrop(backend);
                            std::future::pending().await
                        }
                    }
                }
            })
        }
    });
    (spawn_with(Greeter::new(), layer).await, backend)
}

fn fast(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::new(max_attempts)
        .initial_backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(5))
}

fn hello(name: &str) -> HelloRequest {
    HelloRequest {
        name: name.into(),
        ..Default::default()
    }
}

fn counter(snapshotter: &Snapshotter, name: &str, labels: &[(&str, &str)]) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, _, _, _)| {
            let key = key.key();
            key.name() == name
                && labels.iter().all(|(label, value)| {
                    key.labels()
                        .any(|found| found.key() == *label && found.value() == *value)
                })
        })
        .map_or(0, |(_, _, _, value)| match value {
            DebugValue::Counter(count) => count,
            other => panic!("{name} is not a counter: {other:?}"),
        })
}

#[tokio::test]
async fn two_unavailable_answers_per_call_are_hidden_by_three_attempts() {
    let (server, backend) = backend(|previous| {
        if previous < 2 {
            Action::Fail(Code::Unavailable, None)
        } else {
            Action::Pass
        }
    })
    .await;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let retry = RetryLayer::client()
        .retry(Matcher::any(), fast(3))
        .budget(RetryBudget::new(10, 2.0).unwrap())
        .registry(MethodRegistry::from_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET).unwrap())
        .recorder(Arc::new(recorder))
        .build()
        .unwrap();
    let mut client = GreeterClient::new(retry.layer(server.channel().await));
    for call in 0..10 {
        let reply = client.say_hello(hello(&format!("{call}"))).await.unwrap();
        assert_eq!(
            reply.get_ref().previous_attempts,
            2,
            "the third attempt answered"
        );
    }
    assert_eq!(backend.previous(), [0, 1, 2].repeat(10));
    assert_eq!(
        counter(
            &snapshotter,
            ATTEMPTS_TOTAL,
            &[
                ("grpc_service", "palisade.demo.v1.Greeter"),
                ("grpc_method", "SayHello")
            ]
        ),
        20
    );
    assert_eq!(
        retry.buffered_bytes(),
        0,
        "every call's buffer went with it"
    );
}

#[tokio::test]
async fn a_pushback_of_300_ms_delays_the_next_attempt_by_at_least_that() {
    let (server, backend) = backend(|previous| match previous {
        0 => Action::Fail(Code::ResourceExhausted, Some("300")),
        _ => Action::Pass,
    })
    .await;
    let retry = RetryLayer::client()
        .retry(
            Matcher::any(),
            fast(2).retry_on(CodeSet::of(&[Code::ResourceExhausted])),
        )
        .build()
        .unwrap();
    let mut client = GreeterClient::new(retry.layer(server.channel().await));
    client.say_hello(hello("pushed back")).await.unwrap();
    let seen = backend.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_millis(300), "{gap:?}");
}

#[tokio::test]
async fn bad_pushbacks_and_non_retryable_codes_end_the_call_after_one_attempt() {
    for pushback in [
        "-1",
        "soon",
        "",
        "1.5",
        "99999999999",
        "123456789012345678901234567",
    ] {
        let (server, backend) =
            backend(move |_| Action::Fail(Code::Unavailable, Some(pushback))).await;
        let retry = RetryLayer::client()
            .retry(Matcher::any(), fast(5))
            .build()
            .unwrap();
        let mut client = GreeterClient::new(retry.layer(server.channel().await));
        let status = client.say_hello(hello("x")).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{pushback:?}");
        assert_eq!(backend.seen().len(), 1, "pushback {pushback:?}: no retry");
    }
    // INVALID_ARGUMENT is not retryable: the Greeter's own answer (fail_code 3), once.
    let (server, backend) = backend(|_| Action::Pass).await;
    let retry = RetryLayer::client()
        .retry(Matcher::any(), fast(5))
        .build()
        .unwrap();
    let mut client = GreeterClient::new(retry.layer(server.channel().await));
    let request = HelloRequest {
        fail_code: 3,
        ..hello("bad")
    };
    let status = client.say_hello(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(backend.seen().len(), 1);
}

#[tokio::test]
async fn a_stream_that_delivered_a_message_and_then_failed_is_not_replayed() {
    let (server, backend) = backend(|_| Action::Pass).await;
    let retry = RetryLayer::client()
        .retry(Matcher::any(), fast(5))
        .no_budget()
        .build()
        .unwrap();
    let mut client = GreeterClient::new(retry.layer(server.channel().await));
    // Two replies, then UNAVAILABLE in the trailers.
    let request = HelloRequest {
        count: 2,
        fail_code: 14,
        ..hello("stream")
    };
    let mut stream = client.say_hello_stream(request).await.unwrap().into_inner();
    let mut replies = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => replies += 1,
            Ok(None) => panic!("the stream ends with UNAVAILABLE"),
            Err(status) => break status,
        }
    };
    assert_eq!(replies, 2);
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(backend.seen().len(), 1, "committed at the response headers");
}

#[tokio::test]
async fn a_hedge_answers_when_the_first_attempt_hangs_and_the_hung_one_is_cancelled() {
    let (server, backend) = backend(|previous| match previous {
        0 => Action::Hang,
        _ => Action::Pass,
    })
    .await;
    let retry = RetryLayer::client()
        .hedge(
            Matcher::any(),
            HedgePolicy::new(3, Duration::from_millis(50)),
        )
        .build()
        .unwrap();
    let mut client = GreeterClient::new(retry.layer(server.channel().await));
    let start = Instant::now();
    let reply = client.say_hello(hello("hedged")).await.unwrap();
    let took = start.elapsed();
    assert_eq!(
        reply.get_ref().previous_attempts,
        1,
        "the second attempt answered"
    );
    // Not before the hedging delay; the first attempt never answers, so the answer is the
    // hedge's whenever it comes.
    assert!(took >= Duration::from_millis(50), "{took:?}");
    // The backend sees the hung attempt cancelled (its handler dropped).
    backend.cancelled(1).await;
    assert_eq!(
        backend.previous(),
        [0, 1],
        "no third hedge once one answered"
    );
}

#[tokio::test]
async fn hedges_after_a_non_fatal_failure_start_at_once() {
    let (server, backend) = backend(|previous| match previous {
        0 => Action::Fail(Code::Unavailable, None),
        _ => Action::Pass,
    })
    .await;
    let retry = RetryLayer::client()
        .hedge(
            Matcher::any(),
            HedgePolicy::new(2, Duration::from_secs(30))
                .non_fatal(CodeSet::of(&[Code::Unavailable])),
        )
        .build()
        .unwrap();
    let mut client = GreeterClient::new(retry.layer(server.channel().await));
    let reply = client.say_hello(hello("non-fatal")).await.unwrap();
    assert_eq!(reply.get_ref().previous_attempts, 1);
    assert_eq!(backend.previous(), [0, 1], "not 30 s later: at once");
}

/// Counts the attempts that reach the channel.
#[derive(Clone, Default)]
struct Attempts(Arc<std::sync::atomic::AtomicUsize>);

impl Attempts {
    fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<S> Layer<S> for Attempts {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            count: self.clone(),
        }
    }
}

#[derive(Clone)]
struct Counted<S> {
    inner: S,
    count: Attempts,
}

impl<S: Service<http::Request<Body>>> Service<http::Request<Body>> for Counted<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> S::Future {
        self.count
            .0
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.call(request)
    }
}

/// A channel to a port nothing listens on: every attempt fails to connect.
async fn dead_channel() -> Channel {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

#[tokio::test]
async fn a_dead_backend_sees_far_fewer_attempts_than_calls_times_max_attempts() {
    // The budget alone (the default: 10 tokens, 0.1 per success).
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let attempts = Attempts::default();
    let retry = RetryLayer::client()
        .retry(Matcher::any(), fast(5))
        .recorder(Arc::new(recorder))
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(retry)
        .layer(attempts.clone())
        .service(dead_channel().await);
    let mut client = GreeterClient::new(service);
    for _ in 0..40 {
        let status = client.say_hello(hello("dead")).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }
    // 40 first attempts and the 4 retries the bucket's upper half pays for (10 tokens: each
    // failure takes one, retries go on while more than 5 are left), all in the first call.
    assert_eq!(attempts.count(), 44);
    assert_eq!(counter(&snapshotter, BUDGET_EXHAUSTED_TOTAL, &[]), 39);

    // With a breaker inside (as the demo client stacks them), its rejections are never
    // retried: even fewer reach the backend, without a budget at all.
    let attempts = Attempts::default();
    let breaker = palisade_breaker::BreakerLayer::client()
        .consecutive_failures(3)
        .build();
    let service = ServiceBuilder::new()
        .layer(
            RetryLayer::client()
                .retry(Matcher::any(), fast(5))
                .no_budget()
                .build()
                .unwrap(),
        )
        .layer(breaker)
        .layer(attempts.clone())
        .service(dead_channel().await);
    let mut client = GreeterClient::new(service);
    for _ in 0..40 {
        let status = client.say_hello(hello("dead")).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }
    assert!(attempts.count() <= 6, "{} attempts", attempts.count());
}

#[tokio::test]
async fn no_attempt_starts_after_the_deadline_and_each_carries_what_is_left() {
    let (server, backend) = backend(|_| Action::Fail(Code::Unavailable, Some("100"))).await;
    let retry = RetryLayer::client()
        .retry(Matcher::any(), fast(5))
        .no_budget()
        .build()
        .unwrap();
    let mut client = GreeterClient::new(retry.layer(server.channel().await));
    let mut request = tonic::Request::new(hello("deadline"));
    request.set_timeout(Duration::from_millis(250));
    let status = client.say_hello(request).await.unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::Unavailable,
        "the last attempt's answer, before the deadline"
    );
    let seen = backend.seen();
    // Attempts 100 ms apart (the pushback): at most three fit in 250 ms (fewer on a slow
    // machine), never one more.
    assert!((1..=3).contains(&seen.len()), "{seen:?}");
    let timeouts: Vec<u64> = seen
        .iter()
        .map(|seen| {
            let value = seen
                .timeout
                .as_deref()
                .expect("every attempt carries a deadline");
            let (digits, unit) = value.split_at(value.len() - 1);
            let n: u64 = digits.parse().unwrap();
            match unit {
                "m" => n * 1000,
                "u" => n,
                "n" => n / 1000,
                other => panic!("unit {other}"),
            }
        })
        .collect();
    // Each carries what is left, sent before the deadline: positive, and at least the
    // pushback less than the one before.
    assert!(timeouts.iter().all(|left| *left > 0), "{timeouts:?}");
    assert!(
        timeouts.windows(2).all(|pair| pair[1] + 100_000 <= pair[0]),
        "{timeouts:?}"
    );
}

#[tokio::test]
async fn a_body_larger_than_the_buffer_is_sent_once_unretried() {
    let (server, backend) = backend(|previous| match previous {
        0 => Action::Fail(Code::Unavailable, None),
        _ => Action::Pass,
    })
    .await;
    let retry = RetryLayer::client()
        .retry(Matcher::any(), fast(3))
        .max_buffer(64)
        .build()
        .unwrap();
    let mut client = GreeterClient::new(retry.layer(server.channel().await));
    let status = client.say_hello(hello(&"x".repeat(100))).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(backend.seen().len(), 1);
    // A small one is retried by the same layer.
    client.say_hello(hello("small")).await.unwrap();
    assert_eq!(backend.previous(), [0, 0, 1]);
    assert_eq!(retry.buffered_bytes(), 0);
}

#[tokio::test]
async fn cancelled_calls_leave_no_buffer_behind() {
    let (server, _backend) = backend(|_| Action::Hang).await;
    let retry = RetryLayer::client()
        .hedge(
            Matcher::any(),
            HedgePolicy::new(3, Duration::from_millis(5)),
        )
        .build()
        .unwrap();
    let client = GreeterClient::new(retry.layer(server.channel().await));
    let calls = (0..200).map(|call| {
        let mut client = client.clone();
        async move {
            let reply = client.say_hello(hello(&format!("cancelled {call}")));
            assert!(
                tokio::time::timeout(Duration::from_millis(30), reply)
                    .await
                    .is_err()
            );
        }
    });
    futures_util::future::join_all(calls).await;
    // Each cancelled call's buffer goes when hyper drops its attempts' bodies.
    tokio::time::timeout(Duration::from_secs(10), async {
        while retry.buffered_bytes() != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("every buffer released");
}

#[tokio::test]
async fn a_local_rejection_inside_is_never_retried() {
    let (server, backend) = backend(|_| Action::Pass).await;
    let attempts = Attempts::default();
    let reject = tower::layer::layer_fn(|_inner: Channel| {
        tower::service_fn(|_request: http::Request<Body>| async {
            Ok::<_, tonic::transport::Error>(
                Rejection::new(Code::Unavailable, "circuit open")
                    .by("breaker")
                    .into_response::<Body>(),
            )
        })
    });
    let service = ServiceBuilder::new()
        .layer(
            RetryLayer::client()
                .retry(Matcher::any(), fast(5))
                .build()
                .unwrap(),
        )
        .layer(attempts.clone())
        .layer(reject)
        .service(server.channel().await);
    let response = service
        .oneshot(
            http::Request::post("/palisade.demo.v1.Greeter/SayHello")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        LocalRejection::of(&response).map(LocalRejection::layer),
        Some("breaker")
    );
    assert_eq!(attempts.count(), 1);
    assert!(backend.seen().is_empty());
}

#[test]
fn bad_configurations_are_refused_at_build() {
    let build = |policy| RetryLayer::client().retry(Matcher::any(), policy).build();
    assert_eq!(
        build(RetryPolicy::new(0)).unwrap_err(),
        ConfigError::NoAttempts
    );
    assert_eq!(
        build(RetryPolicy::new(6)).unwrap_err(),
        ConfigError::TooManyAttempts(6)
    );
    assert_eq!(
        RetryLayer::client().build().unwrap_err(),
        ConfigError::NoPolicy
    );
    assert!(matches!(
        RetryLayer::client()
            .retry(Matcher::any(), RetryPolicy::new(2))
            .max_buffer(0)
            .build(),
        Err(ConfigError::Buffer(_))
    ));
    assert!(matches!(
        RetryLayer::client()
            .retry(Matcher::any(), RetryPolicy::new(2))
            .max_buffer(2 << 20)
            .max_buffer_total(1 << 20)
            .build(),
        Err(ConfigError::Buffer(_))
    ));
    let message = build(RetryPolicy::new(9)).unwrap_err().to_string();
    assert!(message.contains("at most 5"), "{message}");
}

#[tokio::test]
async fn no_attempt_outlives_the_deadline_the_layer_outside_enforces() {
    let (server, backend) = backend(|_| Action::Hang).await;
    let stack = ServiceBuilder::new()
        .layer(
            palisade_deadline::DeadlineLayer::client()
                .default(Duration::from_millis(1000))
                .build()
                .unwrap(),
        )
        .layer(
            RetryLayer::client()
                .hedge(
                    Matcher::any(),
                    HedgePolicy::new(3, Duration::from_millis(50)),
                )
                .build()
                .unwrap(),
        )
        .service(server.channel().await);
    let status = GreeterClient::new(stack)
        .say_hello(hello("late"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    // Three hedges (at 0, 50 and 100 ms), each carrying less of the deadline, all cancelled.
    backend.cancelled(3).await;
    let seen = backend.seen();
    assert_eq!(
        seen.iter().map(|seen| seen.previous).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(seen.iter().all(|seen| seen.timeout.is_some()));
}

/// A mock channel: the first attempt answers `OK` after `answer_after`; every readiness check
/// after the first fails (a broken connection seen when the hedge asks for it).
#[derive(Clone)]
struct BreaksAfterFirst {
    ready_calls: Arc<std::sync::atomic::AtomicUsize>,
    answer_after: Duration,
}

impl Service<http::Request<Body>> for BreaksAfterFirst {
    type Response = http::Response<Body>;
    type Error = &'static str;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<http::Response<Body>, &'static str>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), &'static str>> {
        let n = self
            .ready_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::task::Poll::Ready(if n == 0 { Ok(()) } else { Err("broken") })
    }

    fn call(&mut self, _: http::Request<Body>) -> Self::Future {
        let after = self.answer_after;
        Box::pin(async move {
            tokio::time::sleep(after).await;
            let mut response = http::Response::new(Body::empty());
            response
                .headers_mut()
                .insert("grpc-status", HeaderValue::from_static("0"));
            Ok(response)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_hedge_that_cannot_start_does_not_fail_the_attempt_in_flight() {
    let retry = RetryLayer::client()
        .hedge(
            Matcher::any(),
            HedgePolicy::new(3, Duration::from_millis(10)),
        )
        .build()
        .unwrap();
    let service = retry.layer(BreaksAfterFirst {
        ready_calls: Arc::default(),
        answer_after: Duration::from_millis(100),
    });
    let request = http::Request::post("/helloworld.Greeter/SayHello")
        .body(Body::empty())
        .unwrap();
    let response = service
        .oneshot(request)
        .await
        .expect("the first attempt's OK, not the hedge's readiness error");
    assert_eq!(response.headers()["grpc-status"], "0");
}

/// A mock channel that answers with response headers at once (the call is committed) and
/// reads the request body on its own, telling `read` the size of each frame.
#[derive(Clone)]
struct ReadsOn {
    read: tokio::sync::mpsc::UnboundedSender<usize>,
}

impl Service<http::Request<Body>> for ReadsOn {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let read = self.read.clone();
        tokio::spawn(async move {
            use http_body_util::BodyExt;
            let mut body = request.into_body();
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    let _ = read.send(data.len());
                }
            }
        });
        std::future::ready(Ok(http::Response::new(Body::empty())))
    }
}

#[tokio::test]
async fn a_committed_stream_buffers_nothing_more() {
    use http_body_util::StreamBody;
    let retry = RetryLayer::client()
        .retry(Matcher::any(), fast(3))
        .build()
        .unwrap();
    let (read_tx, mut read) = tokio::sync::mpsc::unbounded_channel();
    let service = retry.layer(ReadsOn { read: read_tx });
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, Infallible>>(1);
    let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let request = http::Request::post("/helloworld.Greeter/SayHello")
        .body(body)
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert!(response.headers().get("grpc-status").is_none(), "committed");
    for _ in 0..10 {
        tx.send(Ok(http_body::Frame::data(bytes::Bytes::from(vec![
            0;
            1000
        ]))))
        .await
        .unwrap();
        assert_eq!(read.recv().await, Some(1000));
    }
    assert_eq!(
        retry.buffered_bytes(),
        0,
        "a committed call is never replayed: nothing of its stream is kept (A6)"
    );
    drop(tx);
}

/// A mock channel whose every attempt is a trailers-only `UNAVAILABLE`, with this pushback if
/// any.
#[derive(Clone)]
struct PushesBack(Option<&'static str>);

impl Service<http::Request<Body>> for PushesBack {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<Body>) -> Self::Future {
        let mut response = http::Response::new(Body::empty());
        let headers = response.headers_mut();
        headers.insert("grpc-status", HeaderValue::from_static("14"));
        if let Some(pushback) = self.0 {
            headers.insert("grpc-retry-pushback-ms", HeaderValue::from_static(pushback));
        }
        std::future::ready(Ok(response))
    }
}

#[tokio::test(start_paused = true)]
async fn the_longest_pushback_with_no_bound_and_a_deadline_does_not_panic() {
    let retry = RetryLayer::client()
        .retry(Matcher::any(), fast(3))
        .max_pushback(Duration::MAX)
        .build()
        .unwrap();
    let request = http::Request::post("/helloworld.Greeter/SayHello")
        .header("grpc-timeout", "1S")
        .body(Body::empty())
        .unwrap();
    let response = retry
        .layer(PushesBack(Some("18446744073709551615")))
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(
        response.headers()["grpc-status"],
        "14",
        "a pushback past the deadline ends the call with its answer"
    );
}

#[tokio::test(start_paused = true)]
async fn a_backoff_without_bound_does_not_panic() {
    let retry = RetryLayer::client()
        .retry(
            Matcher::any(),
            RetryPolicy::new(2)
                .initial_backoff(Duration::from_millis(1))
                .max_backoff(Duration::MAX)
                .multiplier(1e300),
        )
        .build()
        .expect("accepted at build, so it must act");
    let attempts = Attempts::default();
    let request = http::Request::post("/helloworld.Greeter/SayHello")
        .header("grpc-timeout", "1S")
        .body(Body::empty())
        .unwrap();
    let response = retry
        .layer(attempts.layer(PushesBack(None)))
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "14");
    // The delay after the second attempt (computed before the policy says no more) is
    // the one as long as a Duration goes.
    assert_eq!(attempts.count(), 2);
}

/// A mock channel behind a mock local limit: the first attempt passes and answers `OK` after
/// 50 ms; every later one is rejected by the "limit", which writes its name into the call's
/// record as core's admit does.
#[derive(Clone, Default)]
struct LimitsHedges(Arc<std::sync::atomic::AtomicUsize>);

impl Service<http::Request<Body>> for LimitsHedges {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<http::Response<Body>, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n > 0 {
            if let Some(record) = palisade_core::Rpc::of(&request) {
                record.set_rejected_by("limit");
            }
            let rejection = Rejection::new(Code::ResourceExhausted, "too many in flight")
                .by("limit")
                .into_response::<Body>();
            return Box::pin(std::future::ready(Ok(rejection)));
        }
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut response = http::Response::new(Body::empty());
            response
                .headers_mut()
                .insert("grpc-status", HeaderValue::from_static("0"));
            Ok(response)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_hedge_rejected_inside_does_not_mark_a_call_another_attempt_answered() {
    let retry = RetryLayer::client()
        .hedge(
            Matcher::any(),
            HedgePolicy::new(2, Duration::from_millis(10)),
        )
        .build()
        .unwrap();
    let mut request = http::Request::post("/helloworld.Greeter/SayHello")
        .body(Body::empty())
        .unwrap();
    let record =
        palisade_core::Rpc::get_or_insert(request.extensions_mut(), palisade_core::Side::Client)
            .clone();
    let limited = LimitsHedges::default();
    let response = retry.layer(limited.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "0", "the first attempt");
    assert_eq!(limited.0.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(record.attempts(), 2);
    assert_eq!(
        record.rejected_by(),
        None,
        "the log and the span would say `palisade.rejected_by=limit` for an OK call"
    );
}
