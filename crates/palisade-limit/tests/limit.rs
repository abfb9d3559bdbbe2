//! The in-flight limit: refusals, permits given back on every path (thousands of dropped,
//! cancelled and panicking calls), the queue, per-method counts, the series, bad
//! configuration, and issue #17's check over a real tonic connection.

use std::{
    convert::Infallible,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::FutureExt;
use http::HeaderName;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use palisade_core::{
    LocalRejection, Matcher, MethodRegistry, MethodType, Peer, PerMethod, Rpc, side::Server,
};
use palisade_limit::{
    CONCURRENCY_LIMIT, ConcurrencyLimit, ConfigError, IN_FLIGHT, Key, LimitLayer, MAX_QUEUE_LEN,
    REJECTED_TOTAL,
};
use tower::{Layer, Service, ServiceExt, service_fn};

const HELLO: &str = "/demo.Greeter/SayHello";
const STREAM: &str = "/demo.Greeter/SayHelloStream";

fn request(path: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap()
}

/// A response body: one data frame, then what `end` says.
#[derive(Default)]
struct TestBody {
    sent: bool,
    end: End,
}

#[derive(Default, Clone, Copy)]
enum End {
    /// Never ends after its first frame (a stream the caller drops mid-way).
    #[default]
    Hang,
    /// Trailers with `grpc-status: 0`.
    Trailers,
    /// A body error.
    Error,
    /// Over (after its trailers).
    Over,
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if !self.sent {
            self.sent = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0])))));
        }
        match self.end {
            End::Hang => Poll::Pending,
            End::Trailers => {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                self.end = End::Over;
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            End::Error => Poll::Ready(Some(Err(std::io::Error::other("broken")))),
            End::Over => Poll::Ready(None),
        }
    }
}

type Handler =
    tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<TestBody>, Infallible>;

/// A handler whose response waits `delay` (forever when `None`), then answers with a body
/// ending as `end`; it counts its calls.
fn handler(delay: Option<Duration>, end: End, calls: Arc<AtomicUsize>) -> Handler {
    tower::util::BoxCloneSyncService::new(service_fn(move |_: Request<Full<Bytes>>| {
        calls.fetch_add(1, Ordering::Relaxed);
        async move {
            match delay {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending().await,
            }
            Ok::<_, Infallible>(Response::new(TestBody { sent: false, end }))
        }
    }))
}

fn limited(
    limit: u32,
    delay: Option<Duration>,
    end: End,
) -> (
    LimitLayer<Server>,
    ConcurrencyLimit<Handler, Server>,
    Arc<AtomicUsize>,
) {
    let layer = LimitLayer::server().max_in_flight(limit).build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = layer.layer(handler(delay, end, calls.clone()));
    (layer, service, calls)
}

/// Calls once, without polling the response future.
fn start<S>(service: &mut S, path: &str) -> S::Future
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    ServiceExt::<Request<Full<Bytes>>>::ready(service)
        .now_or_never()
        .expect("always ready")
        .unwrap();
    service.call(request(path))
}

fn assert_refused<B>(response: &Response<B>) {
    assert_eq!(response.headers()["grpc-status"], "8");
    assert_eq!(
        response.headers()["grpc-message"],
        "too many requests in flight"
    );
    assert_eq!(response.headers()["grpc-retry-pushback-ms"], "50");
    assert_eq!(LocalRejection::of(response).unwrap().layer(), "limit");
}

#[tokio::test(start_paused = true)]
async fn a_call_over_the_limit_is_refused_at_once_and_never_reaches_the_handler() {
    let (layer, mut service, calls) = limited(2, None, End::Hang);
    let first = start(&mut service, HELLO);
    let second = start(&mut service, HELLO);
    assert_eq!(layer.in_flight(), 2);

    let refused = start(&mut service, HELLO).now_or_never().unwrap().unwrap();
    assert_refused(&refused);
    assert_eq!(calls.load(Ordering::Relaxed), 2);

    drop((first, second));
    assert_eq!(layer.in_flight(), 0);
    let _third = start(&mut service, HELLO);
    assert_eq!(layer.in_flight(), 1);
}

/// Thousands of calls, each ended a different way mid-flight — the response future dropped
/// before the handler answered, the body dropped mid-stream, the caller's task cancelled,
/// the stream run to its trailers, a body error — and all N permits are free again.
#[tokio::test(start_paused = true)]
async fn every_permit_comes_back_after_thousands_of_calls_ended_every_way() {
    const N: u32 = 8;
    for end in [End::Hang, End::Trailers, End::Error] {
        let (layer, service, _) = limited(N, Some(Duration::from_millis(1)), end);
        for round in 0..1_000u32 {
            let mut service = service.clone();
            match round % 4 {
                // Dropped before the handler answered.
                0 => drop(start(&mut service, HELLO)),
                // Cancelled: the caller's task aborted while waiting.
                1 => {
                    let future = start(&mut service, HELLO);
                    let task = tokio::spawn(future);
                    tokio::task::yield_now().await;
                    task.abort();
                    let _ = task.await;
                }
                // The body read to its end (trailers, or an error), or dropped mid-stream.
                _ => {
                    let response = start(&mut service, HELLO).await.unwrap();
                    let mut body = response.into_body();
                    let _ = body.frame().await;
                    if round % 4 == 3 {
                        while let Some(Ok(_)) =
                            tokio::time::timeout(Duration::from_millis(1), body.frame())
                                .await
                                .ok()
                                .flatten()
                        {}
                    }
                }
            }
        }
        assert_eq!(layer.in_flight(), 0);
        // All N can be taken again, and the next is refused.
        let mut service = service.clone();
        let held: Vec<_> = (0..N).map(|_| start(&mut service, HELLO)).collect();
        assert_eq!(layer.in_flight(), N);
        assert_refused(&start(&mut service, HELLO).await.unwrap());
        drop(held);
        assert_eq!(layer.in_flight(), 0);
    }
}

/// Many calls in flight at once, then all dropped together: every permit back.
#[tokio::test(start_paused = true)]
async fn thousands_of_calls_dropped_in_flight_leave_all_permits_free() {
    let (layer, mut service, calls) = limited(4, None, End::Hang);
    for _ in 0..1_000 {
        let held: Vec<_> = (0..6).map(|_| start(&mut service, HELLO)).collect();
        assert_eq!(layer.in_flight(), 4);
        drop(held);
    }
    assert_eq!(layer.in_flight(), 0);
    assert_eq!(calls.load(Ordering::Relaxed), 4_000);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_gives_its_permit_back() {
    let layer = LimitLayer::server().max_in_flight(1).build().unwrap();
    // Panics in its response future.
    let service = layer.layer(service_fn(|_: Request<Full<Bytes>>| async {
        panic!("handler bug");
        #[allow(unreachable_code)]
        Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
    }));
    for _ in 0..100 {
        let mut service = service.clone();
        let result = tokio::spawn(start(&mut service, HELLO)).await;
        assert!(result.unwrap_err().is_panic());
        assert_eq!(layer.in_flight(), 0);
    }
    // Panics in `call` itself.
    let service = layer.layer(service_fn(
        |_: Request<Full<Bytes>>| -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
            panic!("handler bug in call")
        },
    ));
    for _ in 0..100 {
        let mut service = service.clone();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| start(&mut service, HELLO)));
        assert!(result.is_err());
        assert_eq!(layer.in_flight(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn skipped_methods_are_never_counted() {
    let layer = LimitLayer::server()
        .max_in_flight(1)
        .skip(Matcher::method(STREAM))
        .skip(Matcher::health_and_reflection())
        .build()
        .unwrap();
    let mut service = layer.layer(handler(None, End::Hang, Default::default()));
    let _held = start(&mut service, HELLO);
    let _streams: Vec<_> = (0..10).map(|_| start(&mut service, STREAM)).collect();
    let _health: Vec<_> = (0..10)
        .map(|_| start(&mut service, "/grpc.health.v1.Health/Check"))
        .collect();
    assert_eq!(layer.in_flight(), 1);
    assert_refused(&start(&mut service, HELLO).await.unwrap());
}

/// A queue of 2: two calls wait, the third is refused at once; a permit given back goes to
/// the first waiter; a waiter whose max wait passes is refused; one whose caller goes away
/// leaves its place.
#[tokio::test(start_paused = true)]
async fn the_queue_is_bounded_fifo_and_waits_no_longer_than_allowed() {
    let layer = LimitLayer::server()
        .max_in_flight(1)
        .queue(2, Duration::from_secs(1))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut service = layer.layer(handler(None, End::Hang, calls.clone()));

    let first = start(&mut service, HELLO);
    let mut second = Box::pin(start(&mut service, HELLO));
    let mut third = Box::pin(start(&mut service, HELLO));
    assert!((&mut second).now_or_never().is_none());
    assert!((&mut third).now_or_never().is_none());
    assert_eq!(layer.queued(), 2);
    // The queue is full: refused at once.
    assert_refused(&start(&mut service, HELLO).await.unwrap());

    // The first call ends: its permit goes to the second, not the third.
    drop(first);
    assert_eq!(layer.in_flight(), 1);
    assert!(
        (&mut second).now_or_never().is_none(),
        "admitted, the handler hangs"
    );
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    assert_eq!(layer.queued(), 1);

    // The third waits its max wait out, then is refused.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_refused(&(&mut third).await.unwrap());
    assert_eq!(layer.queued(), 0);
    assert_eq!(calls.load(Ordering::Relaxed), 2);

    // A waiter that goes away frees its place; a permit is never handed to it.
    let mut fourth = Box::pin(start(&mut service, HELLO));
    assert!((&mut fourth).now_or_never().is_none());
    assert_eq!(layer.queued(), 1);
    drop(fourth);
    assert_eq!(layer.queued(), 0);
    drop(second);
    assert_eq!(layer.in_flight(), 0);
}

/// A waiter never waits past its own deadline (`grpc-timeout`), shorter than the max wait.
#[tokio::test(start_paused = true)]
async fn a_waiter_is_refused_at_its_own_deadline() {
    let layer = LimitLayer::server()
        .max_in_flight(1)
        .queue(8, Duration::from_secs(10))
        .build()
        .unwrap();
    let mut service = layer.layer(handler(None, End::Hang, Default::default()));
    let _first = start(&mut service, HELLO);
    let mut request = request(HELLO);
    request
        .headers_mut()
        .insert("grpc-timeout", "200m".parse().unwrap());
    ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
        .await
        .unwrap();
    let waiting = tokio::spawn(service.call(request));
    tokio::time::sleep(Duration::from_millis(199)).await;
    assert!(!waiting.is_finished());
    assert_eq!(layer.queued(), 1);
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_refused(&waiting.await.unwrap().unwrap());
    assert_eq!(layer.queued(), 0);
}

/// Waiters dropped in every state — queued, granted but not yet polled — and calls timing
/// out, thousands of times: every permit back, the queue empty.
#[tokio::test(start_paused = true)]
async fn queued_calls_dropped_or_timed_out_leave_nothing_behind() {
    let layer = LimitLayer::server()
        .max_in_flight(2)
        .queue(4, Duration::from_millis(5))
        .build()
        .unwrap();
    let mut service = layer.layer(handler(
        Some(Duration::from_millis(3)),
        End::Trailers,
        Default::default(),
    ));
    for round in 0..500 {
        let mut calls: Vec<_> = (0..6)
            .map(|_| Box::pin(start(&mut service, HELLO)))
            .collect();
        for call in &mut calls {
            let _ = call.now_or_never();
        }
        match round % 3 {
            0 => drop(calls),
            1 => {
                // The first two end: their permits go to waiters never polled again.
                calls.drain(..2);
                drop(calls);
            }
            _ => {
                for call in calls {
                    let response = call.await.unwrap();
                    let _ = response.into_body().collect().await;
                }
            }
        }
        assert_eq!(layer.in_flight(), 0, "round {round}");
        assert_eq!(layer.queued(), 0, "round {round}");
    }
}

#[tokio::test(start_paused = true)]
async fn per_method_limits_count_each_method_apart() {
    let layer = LimitLayer::server()
        .per_method(
            PerMethod::new()
                .rule(Matcher::method(STREAM), 1)
                .rule(Matcher::health_and_reflection().not(), 2),
        )
        .registry(
            MethodRegistry::new()
                .with_method("demo.Greeter/SayHello", MethodType::Unary)
                .with_method("demo.Greeter/SayHelloStream", MethodType::ServerStream),
        )
        .build()
        .unwrap();
    let mut service = layer.layer(handler(None, End::Hang, Default::default()));
    let _hello: Vec<_> = (0..2).map(|_| start(&mut service, HELLO)).collect();
    let _stream = start(&mut service, STREAM);
    assert_eq!(layer.in_flight(), 3);
    assert_refused(&start(&mut service, HELLO).await.unwrap());
    assert_refused(&start(&mut service, STREAM).await.unwrap());
    // A method without a limit is not counted.
    let _health: Vec<_> = (0..5)
        .map(|_| start(&mut service, "/grpc.health.v1.Health/Check"))
        .collect();
    assert_eq!(layer.in_flight(), 3);
    // A method outside the registry shares the overflow count, under its own limit.
    let _other: Vec<_> = (0..2)
        .map(|_| start(&mut service, "/demo.Other/Get"))
        .collect();
    assert_refused(&start(&mut service, "/demo.Other/Get").await.unwrap());
}

/// The series of a debugging recorder, by name and `limiter` label. A snapshot resets every
/// value to zero (gauges too), so the values are added up over the snapshots taken.
struct Series {
    snapshotter: Snapshotter,
    totals: std::collections::BTreeMap<(String, String), f64>,
}

impl Series {
    fn new(snapshotter: Snapshotter) -> Self {
        Self {
            snapshotter,
            totals: Default::default(),
        }
    }

    /// Each series of `name`: `(limiter, value)`, sorted.
    fn values(&mut self, name: &str) -> Vec<(String, f64)> {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let limiter = key
                .key()
                .labels()
                .find(|label| label.key() == "limiter")
                .unwrap()
                .value()
                .to_owned();
            let value = match value {
                DebugValue::Gauge(v) => v.into_inner(),
                DebugValue::Counter(n) => n as f64,
                DebugValue::Histogram(_) => unreachable!(),
            };
            *self
                .totals
                .entry((key.key().name().to_owned(), limiter))
                .or_default() += value;
        }
        self.totals
            .iter()
            .filter(|((series, _), _)| series == name)
            .map(|((_, limiter), value)| (limiter.clone(), *value))
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn the_series_show_in_flight_limit_and_refusals() {
    let recorder = Arc::new(DebuggingRecorder::new());
    let mut series = Series::new(recorder.snapshotter());
    let layer = LimitLayer::server()
        .name("greeter")
        .max_in_flight(3)
        .recorder(recorder)
        .build()
        .unwrap();
    let mut service = layer.layer(handler(None, End::Hang, Default::default()));
    assert_eq!(
        series.values(CONCURRENCY_LIMIT),
        [("greeter".to_owned(), 3.0)]
    );
    let held: Vec<_> = (0..3).map(|_| start(&mut service, HELLO)).collect();
    assert_eq!(series.values(IN_FLIGHT), [("greeter".to_owned(), 3.0)]);
    for _ in 0..5 {
        assert_refused(&start(&mut service, HELLO).await.unwrap());
    }
    assert_eq!(series.values(REJECTED_TOTAL), [("greeter".to_owned(), 5.0)]);
    drop(held);
    assert_eq!(series.values(IN_FLIGHT), [("greeter".to_owned(), 0.0)]);

    // Per method: a series per method, labelled after the layer's name, never a raw path
    // a caller chose.
    let recorder = Arc::new(DebuggingRecorder::new());
    let mut series = Series::new(recorder.snapshotter());
    let _layer = LimitLayer::server()
        .name("api")
        .per_method(PerMethod::new().default_value(5))
        .registry(MethodRegistry::new().with_method("demo.Greeter/SayHello", MethodType::Unary))
        .recorder(recorder)
        .build()
        .unwrap();
    assert_eq!(
        series.values(CONCURRENCY_LIMIT),
        [
            ("api/demo.Greeter/SayHello".to_owned(), 5.0),
            ("api/other".to_owned(), 5.0)
        ]
    );
}

#[test]
fn bad_configurations_are_refused_at_build() {
    let server = LimitLayer::server;
    assert_eq!(server().build().unwrap_err(), ConfigError::NoLimit);
    {
        use palisade_limit::adaptive::GradientConfig;
        let adaptive = |config: GradientConfig| server().adaptive(config).build();
        assert!(adaptive(GradientConfig::default()).is_ok());
        for bad in [
            GradientConfig {
                min_concurrency: 0,
                ..GradientConfig::default()
            },
            GradientConfig {
                initial_limit: 2000,
                ..GradientConfig::default()
            },
            GradientConfig {
                probe_samples: 0,
                ..GradientConfig::default()
            },
            GradientConfig {
                window: Duration::ZERO,
                ..GradientConfig::default()
            },
            GradientConfig {
                buffer: f64::NAN,
                ..GradientConfig::default()
            },
            GradientConfig {
                probe_interval: Duration::from_millis(1),
                ..GradientConfig::default()
            },
        ] {
            assert_eq!(adaptive(bad).unwrap_err(), ConfigError::Adaptive);
        }
    }
    assert_eq!(
        server().max_in_flight(0).build().unwrap_err(),
        ConfigError::ZeroLimit
    );
    assert_eq!(
        server()
            .per_method(
                PerMethod::new()
                    .rule(Matcher::method(HELLO), 0)
                    .default_value(4)
            )
            .build()
            .unwrap_err(),
        ConfigError::ZeroLimit
    );
    let limited = || server().max_in_flight(4);
    assert_eq!(
        limited()
            .queue(0, Duration::from_secs(1))
            .build()
            .unwrap_err(),
        ConfigError::EmptyQueue
    );
    assert_eq!(
        limited()
            .queue(MAX_QUEUE_LEN + 1, Duration::from_secs(1))
            .build()
            .unwrap_err(),
        ConfigError::QueueTooLong(MAX_QUEUE_LEN + 1)
    );
    assert_eq!(
        limited().queue(8, Duration::ZERO).build().unwrap_err(),
        ConfigError::ZeroMaxWait
    );
    assert!(
        limited()
            .queue(MAX_QUEUE_LEN, Duration::from_millis(1))
            .build()
            .is_ok()
    );
    let tenant = || Key::metadata(HeaderName::from_static("x-tenant"));
    assert_eq!(
        server().per_key(tenant(), 0).build().unwrap_err(),
        ConfigError::ZeroLimit
    );
    assert_eq!(
        server()
            .per_key(tenant(), 4)
            .max_keys(0)
            .build()
            .unwrap_err(),
        ConfigError::ZeroMaxKeys
    );
    assert!(ConfigError::NoLimit.to_string().contains("max_in_flight"));
}

#[tokio::test(start_paused = true)]
async fn a_client_limit_refuses_locally_with_a_configured_code() {
    let layer = LimitLayer::client()
        .max_in_flight(1)
        .code(tonic::Code::Unavailable)
        .message("busy")
        .pushback(Duration::from_millis(7))
        .build()
        .unwrap();
    let mut service = layer.layer(handler(None, End::Hang, Default::default()));
    let _held = start(&mut service, HELLO);
    let refused = start(&mut service, HELLO).await.unwrap();
    assert_eq!(refused.headers()["grpc-status"], "14");
    assert_eq!(refused.headers()["grpc-message"], "busy");
    assert_eq!(refused.headers()["grpc-retry-pushback-ms"], "7");
    assert_eq!(LocalRejection::of(&refused).unwrap().layer(), "limit");
}

/// Issue #17's check, over a real tonic connection: with a fixed limit of 4 and 500 ms
/// handlers, 12 simultaneous calls — exactly 4 served, 8 refused with RESOURCE_EXHAUSTED and
/// the pushback, every refusal before the first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_calls_under_a_limit_of_four_over_the_wire() {
    use palisade_demo::pb::HelloRequest;

    let layer = LimitLayer::server()
        .name("greeter")
        .max_in_flight(4)
        .skip(Matcher::health_and_reflection())
        .build()
        .unwrap();
    let server = palisade_demo::spawn(layer.clone()).await;
    let client = server.client().await;
    let (events, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..12 {
        let mut client = client.clone();
        let events = events.clone();
        tokio::spawn(async move {
            let hello = HelloRequest {
                name: "Ada".into(),
                delay_ms: 500,
                ..Default::default()
            };
            let _ = events.send(client.say_hello(hello).await);
        });
    }
    drop(events);
    let mut order = Vec::new();
    while let Some(result) = arrived.recv().await {
        order.push(result);
    }
    assert_eq!(order.len(), 12);
    let (refused, served) = order.split_at(8);
    for status in refused {
        let status = status.as_ref().unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.message(), "too many requests in flight");
        assert_eq!(
            status.metadata().get("grpc-retry-pushback-ms").unwrap(),
            "50"
        );
    }
    for reply in served {
        assert!(reply.is_ok(), "{reply:?}");
    }
    server.shutdown().await;
}

/// Calls once with `tenant` in `x-tenant` (none when `None`), without polling.
fn start_as<S>(service: &mut S, tenant: Option<&str>) -> S::Future
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    ServiceExt::<Request<Full<Bytes>>>::ready(service)
        .now_or_never()
        .expect("always ready")
        .unwrap();
    let mut request = request(HELLO);
    if let Some(tenant) = tenant {
        request
            .headers_mut()
            .insert("x-tenant", tenant.parse().unwrap());
    }
    service.call(request)
}

#[tokio::test(start_paused = true)]
async fn per_key_limits_count_each_key_apart_within_a_bounded_table() {
    let recorder = Arc::new(DebuggingRecorder::new());
    let mut series = Series::new(recorder.snapshotter());
    let layer = LimitLayer::server()
        .name("tenants")
        .per_key(Key::metadata(HeaderName::from_static("x-tenant")), 1)
        .max_keys(2)
        .recorder(recorder)
        .build()
        .unwrap();
    let mut service = layer.layer(handler(None, End::Hang, Default::default()));
    let a = start_as(&mut service, Some("a"));
    let b = start_as(&mut service, Some("b"));
    assert_eq!(layer.in_flight(), 2);
    assert_refused(&start_as(&mut service, Some("a")).await.unwrap());
    // The table is full: a new key shares the overflow count (limit 1), as keyless calls do.
    let c = start_as(&mut service, Some("c"));
    assert_refused(&start_as(&mut service, Some("d")).await.unwrap());
    assert_refused(&start_as(&mut service, None).await.unwrap());
    assert_eq!(layer.admission().keys(), 2);
    drop((a, b, c));
    assert_eq!(layer.in_flight(), 0);
    // Idle keys are dropped when room is needed: new keys get counts of their own again.
    let _e = start_as(&mut service, Some("e"));
    let _f = start_as(&mut service, Some("f"));
    let _g = start_as(&mut service, Some("g"));
    assert_eq!(layer.in_flight(), 3);
    assert!(layer.admission().keys() <= 2);
    // One series for the limiter: keys are never label values.
    assert_eq!(series.values(IN_FLIGHT), [("tenants".to_owned(), 3.0)]);
    assert_eq!(
        series.values(CONCURRENCY_LIMIT),
        [("tenants".to_owned(), 1.0)]
    );
    assert_eq!(series.values(REJECTED_TOTAL), [("tenants".to_owned(), 3.0)]);
}

#[tokio::test(start_paused = true)]
async fn per_key_limits_by_subject_and_by_peer_ip() {
    let by_subject = LimitLayer::server()
        .per_key(Key::subject(), 1)
        .build()
        .unwrap();
    let mut service = by_subject.layer(handler(None, End::Hang, Default::default()));
    let as_subject = |subject: &str| {
        let mut request = request(HELLO);
        Rpc::get_or_insert(request.extensions_mut(), palisade_core::Side::Server)
            .set_subject(subject.into());
        request
    };
    ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
        .await
        .unwrap();
    let _alice = service.call(as_subject("alice"));
    let _bob = service.call(as_subject("bob"));
    assert_eq!(by_subject.in_flight(), 2);
    assert_refused(&service.call(as_subject("alice")).await.unwrap());

    let by_peer = LimitLayer::server()
        .per_key(Key::peer_ip(), 1)
        .build()
        .unwrap();
    let mut service = by_peer.layer(handler(None, End::Hang, Default::default()));
    let from = |addr: &str| {
        let mut request = request(HELLO);
        request
            .extensions_mut()
            .insert(Peer::from_addr(addr.parse().unwrap()));
        request
    };
    let _one = service.call(from("10.0.0.1:1000"));
    let _two = service.call(from("10.0.0.2:1000"));
    assert_eq!(by_peer.in_flight(), 2);
    // Another port, the same address: the same key.
    assert_refused(&service.call(from("10.0.0.1:2000")).await.unwrap());
}

/// A refusal writes `rejected_by = "limit"` into the per-RPC record, which palisade-logging
/// writes as `palisade.rejected_by=limit`; an admitted call's record names nobody.
#[tokio::test(start_paused = true)]
async fn a_refusal_is_recorded_as_made_by_limit() {
    let (_, mut service, _) = limited(1, None, End::Hang);
    let recorded = || {
        let mut request = request(HELLO);
        let rpc = Rpc::get_or_insert(request.extensions_mut(), palisade_core::Side::Server).clone();
        (request, rpc)
    };
    ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
        .await
        .unwrap();
    let (request, admitted) = recorded();
    let _held = service.call(request);
    let (request, refused) = recorded();
    assert_refused(&service.call(request).await.unwrap());
    assert_eq!(refused.rejected_by(), Some("limit"));
    assert_eq!(admitted.rejected_by(), None);
}

/// An adaptive limit in front of a handler whose latency climbs past `K` calls in flight
/// (10 ms alone, 10 ms × n / K with n > K in flight), under more callers than it can serve:
/// the limit it finds settles within [K/2, 2K], and refused calls come back at once.
#[tokio::test(start_paused = true)]
async fn an_adaptive_limit_finds_the_handlers_capacity() {
    use palisade_limit::adaptive::GradientConfig;

    const K: usize = 10;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let seen = in_flight.clone();
    let handler = service_fn(move |_: Request<Full<Bytes>>| {
        let in_flight = seen.clone();
        async move {
            let n = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            let latency = Duration::from_millis(10) * u32::try_from(n.max(K)).unwrap() / K as u32;
            tokio::time::sleep(latency).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, std::convert::Infallible>(Response::new(TestBody {
                sent: false,
                end: End::Trailers,
            }))
        }
    });
    let layer = LimitLayer::server()
        .adaptive(GradientConfig {
            initial_limit: 100,
            ..GradientConfig::default()
        })
        .build()
        .unwrap();
    let service = layer.layer(handler);
    let mut callers = tokio::task::JoinSet::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(3);
    let refused = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 * K {
        let service = service.clone();
        let refused = refused.clone();
        callers.spawn(async move {
            while tokio::time::Instant::now() < end {
                let response = service.clone().oneshot(request(HELLO)).await.unwrap();
                if response.headers().contains_key("grpc-status") {
                    refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                } else {
                    response.into_body().collect().await.unwrap();
                }
            }
        });
    }
    while callers.join_next().await.is_some() {}
    let limit = layer.admission().limit().unwrap();
    assert!(
        (K as u32 / 2..=2 * K as u32).contains(&limit),
        "settled at {limit}"
    );
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "30 callers over a limit near 10"
    );
    assert_eq!(layer.in_flight(), 0, "every permit back");
}

/// `LimitLayer::disabled()`: every call goes through, none counted, whatever is in flight.
#[tokio::test(start_paused = true)]
async fn a_disabled_limit_lets_every_call_through() {
    let layer = LimitLayer::<Server>::disabled();
    assert!(layer.admission().is_disabled());
    let calls = Arc::new(AtomicUsize::new(0));
    let mut service = layer.layer(handler(None, End::Hang, calls.clone()));
    let in_flight: Vec<_> = (0..100).map(|_| start(&mut service, HELLO)).collect();
    assert_eq!(calls.load(Ordering::Relaxed), 100);
    assert_eq!(layer.in_flight(), 0);
    assert!(in_flight.iter().all(|future| !future.is_rejected()));
}
