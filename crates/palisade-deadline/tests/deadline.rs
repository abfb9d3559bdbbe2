//! The deadline layer in-process (paused time, `service_fn` handlers) and over the wire (a real
//! tonic server on 127.0.0.1:0, the demo Greeter).

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use palisade_core::{Code, LocalRejection};
use palisade_deadline::{ConfigError, Deadline, DeadlineLayer, current};
use palisade_demo::{
    frames::GrpcBody,
    pb::{HelloRequest, greeter_client::GreeterClient},
    spawn,
};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

const HELLO: &str = "/palisade.demo.v1.Greeter/SayHello";

fn grpc_request(timeout: Option<&'static str>) -> Request<Full<Bytes>> {
    let mut request = Request::post(HELLO)
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap();
    if let Some(timeout) = timeout {
        request
            .headers_mut()
            .insert("grpc-timeout", HeaderValue::from_static(timeout));
    }
    request
}

fn ok_response() -> Response<GrpcBody> {
    Response::new(GrpcBody::unary(b"hi", Code::Ok))
}

fn status<B>(response: &Response<B>) -> Option<&str> {
    response
        .headers()
        .get("grpc-status")
        .map(|value| value.to_str().unwrap())
}

// ---------------------------------------------------------------------------------------------
// Configuration.

#[test]
fn build_refuses_zero_and_a_default_over_the_max() {
    let ms = Duration::from_millis;
    assert_eq!(
        DeadlineLayer::server()
            .max(Duration::ZERO)
            .build()
            .unwrap_err(),
        ConfigError::ZeroMax
    );
    assert_eq!(
        DeadlineLayer::server()
            .default(Duration::ZERO)
            .build()
            .unwrap_err(),
        ConfigError::ZeroDefault
    );
    assert_eq!(
        DeadlineLayer::client()
            .per_method(palisade_core::PerMethod::new().default_value(Duration::ZERO))
            .build()
            .unwrap_err(),
        ConfigError::ZeroDefault
    );
    let error = DeadlineLayer::server()
        .max(ms(100))
        .default(ms(200))
        .build();
    assert_eq!(
        error.unwrap_err(),
        ConfigError::DefaultOverMax {
            default: ms(200),
            max: ms(100)
        }
    );
    let layer = DeadlineLayer::server()
        .max(ms(200))
        .default(ms(200))
        .build()
        .unwrap();
    assert_eq!(
        (layer.max(), layer.default_timeout()),
        (Some(ms(200)), Some(ms(200)))
    );
    assert_eq!(DeadlineLayer::client().build().unwrap().margin(), ms(5));
}

// ---------------------------------------------------------------------------------------------
// The server, in-process.

#[tokio::test(start_paused = true)]
async fn the_handler_sees_its_deadline_in_the_extensions_and_as_current() {
    let layer = DeadlineLayer::server().build().unwrap();
    let service = layer.layer(service_fn(|request: Request<Full<Bytes>>| async move {
        let from_extensions = Deadline::from_extensions(request.extensions()).unwrap();
        assert_eq!(current(), Some(from_extensions));
        assert_eq!(from_extensions.remaining(), Duration::from_millis(250));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Current again after a wait: entered around every poll.
        assert_eq!(current().unwrap().remaining(), Duration::from_millis(200));
        Ok::<_, Infallible>(ok_response())
    }));
    let response = service.oneshot(grpc_request(Some("250m"))).await.unwrap();
    assert!(status(&response).is_none());
    assert!(current().is_none(), "left after the poll");
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
}

#[tokio::test(start_paused = true)]
async fn no_deadline_and_no_default_passes_through_and_nothing_is_current() {
    let layer = DeadlineLayer::server()
        .max(Duration::from_secs(1))
        .build()
        .unwrap();
    let service = layer.layer(service_fn(|request: Request<Full<Bytes>>| async move {
        assert!(current().is_none());
        assert!(Deadline::from_extensions(request.extensions()).is_none());
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, Infallible>(ok_response())
    }));
    let response = service.oneshot(grpc_request(None)).await.unwrap();
    assert!(status(&response).is_none());
}

#[tokio::test(start_paused = true)]
async fn skipped_calls_are_not_enforced() {
    let layer = DeadlineLayer::server()
        .skip(palisade_core::Matcher::service("other.Svc"))
        .skip(palisade_core::Matcher::method(HELLO))
        .build()
        .unwrap();
    let service = layer.layer(service_fn(|_: Request<Full<Bytes>>| async move {
        assert!(current().is_none());
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, Infallible>(ok_response())
    }));
    let response = service.oneshot(grpc_request(Some("10m"))).await.unwrap();
    assert!(status(&response).is_none());
}

/// A body that sends its data frames and then waits forever (its trailers never come).
struct Stalling(std::collections::VecDeque<Bytes>);

impl Body for Stalling {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.0.pop_front() {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None => Poll::Pending,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_by_the_deadline_ends_with_status_4_after_what_was_sent() {
    let layer = DeadlineLayer::server().build().unwrap();
    let service = layer.layer(service_fn(|_: Request<Full<Bytes>>| async move {
        let frames = [
            palisade_demo::frames::message(b"one"),
            palisade_demo::frames::message(b"two"),
        ];
        Ok::<_, Infallible>(Response::new(Stalling(frames.into_iter().collect())))
    }));
    let start = Instant::now();
    let response = service.oneshot(grpc_request(Some("300m"))).await.unwrap();
    assert!(
        status(&response).is_none(),
        "the head went out before the deadline"
    );
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    let trailers = collected.trailers().unwrap().clone();
    assert_eq!(trailers["grpc-status"], "4");
    assert_eq!(trailers["grpc-message"], "deadline exceeded");
    let mut counter = palisade_core::MessageCounter::default();
    assert_eq!(counter.feed(&collected.to_bytes()), 2);
}

// ---------------------------------------------------------------------------------------------
// The client, in-process.

#[tokio::test(start_paused = true)]
async fn the_client_sends_the_smallest_deadline_less_the_margin() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let channel = {
        let seen = seen.clone();
        service_fn(move |request: Request<Full<Bytes>>| {
            seen.lock()
                .unwrap()
                .push(request.headers().get("grpc-timeout").cloned());
            async { Ok::<_, Infallible>(ok_response()) }
        })
    };
    let layer = DeadlineLayer::client()
        .default(Duration::from_secs(2))
        .per_method(palisade_core::PerMethod::new().rule(
            palisade_core::Matcher::method("pkg.Slow/Call"),
            Duration::from_secs(30),
        ))
        .margin(Duration::from_millis(10))
        .build()
        .unwrap();
    let mut client = layer.layer(channel);

    // The default, less the margin.
    client
        .ready()
        .await
        .unwrap()
        .call(grpc_request(None))
        .await
        .unwrap();
    // The request's own, smaller.
    client
        .ready()
        .await
        .unwrap()
        .call(grpc_request(Some("100m")))
        .await
        .unwrap();
    // The current deadline, smaller still.
    let deadline = Deadline::after(Duration::from_millis(60));
    let future = {
        let _entered = deadline.enter();
        client
            .ready()
            .await
            .unwrap()
            .call(grpc_request(Some("100m")))
    };
    future.await.unwrap();
    // A per-method rule.
    let slow = Request::post("/pkg.Slow/Call")
        .body(Full::default())
        .unwrap();
    client.ready().await.unwrap().call(slow).await.unwrap();

    let seen: Vec<_> = seen.lock().unwrap().drain(..).map(Option::unwrap).collect();
    assert_eq!(seen, ["1990000u", "90000000n", "50000000n", "29990000u"]);
}

#[tokio::test(start_paused = true)]
async fn a_call_whose_deadline_passed_is_not_sent() {
    let calls = Arc::new(AtomicUsize::new(0));
    let channel = {
        let calls = calls.clone();
        service_fn(move |_: Request<Full<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(ok_response()) }
        })
    };
    let mut client = DeadlineLayer::client().build().unwrap().layer(channel);

    // Passed already.
    let deadline = Deadline::after(Duration::from_millis(20));
    tokio::time::advance(Duration::from_millis(30)).await;
    assert!(deadline.is_passed());
    // And one within the margin (3 ms left, 5 ms margin), and a caller's own zero.
    let within_margin = Deadline::after(Duration::from_millis(3));
    for (deadline, request) in [
        (Some(deadline), grpc_request(None)),
        (Some(within_margin), grpc_request(None)),
        (None, grpc_request(Some("0n"))),
    ] {
        let future = {
            let _entered = deadline.as_ref().map(Deadline::enter);
            client.ready().await.unwrap().call(request)
        };
        let response = future.await.unwrap();
        assert_eq!(status(&response), Some("4"));
        assert_eq!(LocalRejection::of(&response).unwrap().layer(), "deadline");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "never sent");
}

#[tokio::test(start_paused = true)]
async fn a_hung_channel_ends_at_the_deadline_sent() {
    let channel = service_fn(|_: Request<Full<Bytes>>| {
        std::future::pending::<Result<Response<GrpcBody>, Infallible>>()
    });
    let client = DeadlineLayer::client()
        .default(Duration::from_millis(200))
        .build()
        .unwrap()
        .layer(channel);
    let start = Instant::now();
    let response = client.oneshot(grpc_request(None)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(195));
    assert_eq!(status(&response), Some("4"));
    assert_eq!(LocalRejection::of(&response).unwrap().layer(), "deadline");
}

#[tokio::test(start_paused = true)]
async fn a_channel_error_at_the_deadline_is_deadline_exceeded_and_before_it_stays_an_error() {
    // What tonic's `Channel` does at its own `grpc-timeout`: an error.
    let channel = service_fn(|request: Request<Full<Bytes>>| async move {
        let timeout = palisade_core::deadline::grpc_timeout(request.headers()).unwrap();
        let wait = if request.headers().contains_key("x-fail-early") {
            Duration::ZERO
        } else {
            timeout
        };
        tokio::time::sleep(wait).await;
        Err::<Response<GrpcBody>, _>("channel error")
    });
    let mut client = DeadlineLayer::client()
        .margin(Duration::ZERO)
        .build()
        .unwrap()
        .layer(channel);
    let response = client
        .ready()
        .await
        .unwrap()
        .call(grpc_request(Some("50m")))
        .await;
    assert_eq!(status(&response.unwrap()), Some("4"));
    let mut early = grpc_request(Some("50m"));
    early
        .headers_mut()
        .insert("x-fail-early", HeaderValue::from_static("1"));
    let error = client.ready().await.unwrap().call(early).await.unwrap_err();
    assert_eq!(error, "channel error");
}

// ---------------------------------------------------------------------------------------------
// Over the wire.

/// Tonic's own `grpc-timeout` handling (its `Channel` and its server each end a call at the
/// header's deadline with `CANCELLED`) would race the layer's, so server tests send their
/// deadline as `x-test-timeout`, renamed to `grpc-timeout` just before the layer.
fn rename_test_timeout<B>(mut request: Request<B>) -> Request<B> {
    if let Some(value) = request.headers_mut().remove("x-test-timeout") {
        request.headers_mut().insert("grpc-timeout", value);
    }
    request
}

fn hello(delay_ms: u32) -> tonic::Request<HelloRequest> {
    tonic::Request::new(HelloRequest {
        name: "Ada".into(),
        delay_ms,
        ..Default::default()
    })
}

fn with_test_timeout<T>(mut request: tonic::Request<T>, value: &'static str) -> tonic::Request<T> {
    request
        .metadata_mut()
        .insert("x-test-timeout", value.parse().unwrap());
    request
}

/// Records when the handler's future (everything inside the deadline layer) was dropped, and
/// whether it had finished.
#[derive(Clone, Default)]
struct DropWatch(Arc<Mutex<Vec<(Instant, bool)>>>);

struct Watched<F> {
    inner: Pin<Box<F>>,
    done: bool,
    log: Arc<Mutex<Vec<(Instant, bool)>>>,
}

impl<F: Future> Future for Watched<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let output = std::task::ready!(self.inner.as_mut().poll(cx));
        self.done = true;
        Poll::Ready(output)
    }
}

impl<F> Drop for Watched<F> {
    fn drop(&mut self) {
        self.log.lock().unwrap().push((Instant::now(), self.done));
    }
}

impl<S> Layer<S> for DropWatch {
    type Service = DropWatched<S>;

    fn layer(&self, inner: S) -> DropWatched<S> {
        DropWatched {
            inner,
            log: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct DropWatched<S> {
    inner: S,
    log: Arc<Mutex<Vec<(Instant, bool)>>>,
}

impl<S: Service<Request<B>>, B> Service<Request<B>> for DropWatched<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = Watched<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        Watched {
            inner: Box::pin(self.inner.call(request)),
            done: false,
            log: self.log.clone(),
        }
    }
}

type Rename = fn(Request<tonic::body::Body>) -> Request<tonic::body::Body>;

/// The renaming, the deadline layer, the drop watch, outermost first.
type ServerStack = ServiceBuilder<
    tower::layer::util::Stack<
        DropWatch,
        tower::layer::util::Stack<
            DeadlineLayer<palisade_core::side::Server>,
            tower::layer::util::Stack<
                tower::util::MapRequestLayer<Rename>,
                tower::layer::util::Identity,
            >,
        >,
    >,
>;

fn server_stack(
    layer: DeadlineLayer<palisade_core::side::Server>,
    drops: &DropWatch,
) -> ServerStack {
    ServiceBuilder::new()
        .map_request(rename_test_timeout as fn(_) -> _)
        .layer(layer)
        .layer(drops.clone())
}

#[tokio::test(start_paused = true)]
async fn over_the_wire_a_slow_handler_is_dropped_and_answered_at_its_deadline() {
    let drops = DropWatch::default();
    let layer = DeadlineLayer::server().build().unwrap();
    let server = spawn(server_stack(layer, &drops)).await;
    let mut client = server.client().await;

    let start = Instant::now();
    let status = client
        .say_hello(with_test_timeout(hello(500), "100m"))
        .await
        .unwrap_err();
    let elapsed = start.elapsed();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "deadline exceeded");
    assert!(
        elapsed >= Duration::from_millis(100) && elapsed < Duration::from_millis(150),
        "{elapsed:?}"
    );
    let drops = drops.0.lock().unwrap().clone();
    assert_eq!(drops.len(), 1);
    let (dropped_at, finished) = drops[0];
    assert!(!finished, "dropped before the handler finished");
    assert_eq!(dropped_at - start, Duration::from_millis(100));

    // A handler within its deadline answers, and saw what was left of it.
    let reply = client
        .say_hello(with_test_timeout(hello(0), "2S"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.deadline_ms, 2000);
    assert_eq!(reply.hops, 1);
}

#[tokio::test(start_paused = true)]
async fn over_the_wire_the_max_caps_a_longer_deadline_and_the_default_applies_without_one() {
    let drops = DropWatch::default();
    let layer = DeadlineLayer::server()
        .max(Duration::from_millis(200))
        .default(Duration::from_millis(150))
        .build()
        .unwrap();
    let server = spawn(server_stack(layer, &drops)).await;
    let mut client = server.client().await;

    // Capped: the caller asked for 10 s.
    let reply = client
        .say_hello(with_test_timeout(hello(0), "10S"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.deadline_ms, 200);
    let start = Instant::now();
    let status = client
        .say_hello(with_test_timeout(hello(500), "10S"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    assert_eq!(start.elapsed(), Duration::from_millis(200));

    // None sent: the default.
    let reply = client.say_hello(hello(0)).await.unwrap().into_inner();
    assert_eq!(reply.deadline_ms, 150);
    let start = Instant::now();
    let status = client.say_hello(hello(500)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    assert_eq!(start.elapsed(), Duration::from_millis(150));

    // A shorter one of its own is kept.
    let reply = client
        .say_hello(with_test_timeout(hello(0), "50m"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.deadline_ms, 50);
}

/// Holds back a response body's trailers forever: the stream sends its messages, then hangs.
#[derive(Clone, Copy)]
struct HoldTrailers;

impl<S> Layer<S> for HoldTrailers {
    type Service = tower::util::MapResponse<S, fn(Response<tonic::body::Body>) -> Response<Held>>;

    fn layer(&self, inner: S) -> Self::Service {
        tower::util::MapResponse::new(inner, |response: Response<tonic::body::Body>| {
            response.map(|body| Held(Some(body)))
        })
    }
}

struct Held(Option<tonic::body::Body>);

impl Body for Held {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let Some(body) = self.0.as_mut() else {
            return Poll::Pending;
        };
        match std::task::ready!(Pin::new(body).poll_frame(cx)) {
            Some(Ok(frame)) if frame.is_trailers() => {
                self.0 = None;
                Poll::Pending
            }
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            Some(Err(error)) => Poll::Ready(Some(Err(error))),
            None => {
                self.0 = None;
                Poll::Pending
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn over_the_wire_a_stream_cut_midway_ends_with_status_4_after_its_messages() {
    let server = spawn(
        ServiceBuilder::new()
            .map_request(rename_test_timeout as fn(_) -> _)
            .layer(DeadlineLayer::server().build().unwrap())
            .layer(HoldTrailers),
    )
    .await;
    let mut client = server.client().await;
    let request = with_test_timeout(
        tonic::Request::new(HelloRequest {
            name: "Ada".into(),
            count: 3,
            ..Default::default()
        }),
        "300m",
    );
    let start = Instant::now();
    let mut stream = client.say_hello_stream(request).await.unwrap().into_inner();
    let mut replies = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => replies += 1,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(replies, 3, "every message sent before the deadline arrives");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    assert_eq!(start.elapsed(), Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn over_the_wire_bad_grpc_timeouts_get_a_clear_status() {
    let drops = DropWatch::default();
    let server = spawn(server_stack(
        DeadlineLayer::server().build().unwrap(),
        &drops,
    ))
    .await;
    let mut client = server.client().await;
    // The real header this time: tonic's client and server ignore values they cannot read.
    for bad in ["garbage", "123456789S", "10x", "", "-1S", "1.5S", "S"] {
        let mut request = hello(0);
        request
            .metadata_mut()
            .insert("grpc-timeout", bad.parse().unwrap());
        let status = client.say_hello(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{bad:?}: {status:?}"
        );
        assert_eq!(status.message(), "malformed grpc-timeout", "{bad:?}");
    }
    // Zero: at once, the handler never called.
    for zero in ["0n", "0m", "00000000S"] {
        let status = client
            .say_hello(with_test_timeout(hello(0), zero))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{zero}");
    }
    assert!(drops.0.lock().unwrap().is_empty(), "no handler was called");
    // The largest value there is works.
    let reply = client
        .say_hello(with_test_timeout(hello(0), "99999999H"))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.deadline_ms > 0);
}

/// Records the `grpc-timeout` each call brings.
#[derive(Clone, Default)]
struct SeenTimeouts(Arc<Mutex<Vec<Option<HeaderValue>>>>);

impl SeenTimeouts {
    fn take(&self) -> Vec<Option<Duration>> {
        self.0
            .lock()
            .unwrap()
            .drain(..)
            .map(|value| {
                let mut headers = HeaderMap::new();
                headers.insert("grpc-timeout", value?);
                palisade_core::deadline::grpc_timeout(&headers)
            })
            .collect()
    }
}

impl<S> Layer<S> for SeenTimeouts {
    type Service = Seen<S>;

    fn layer(&self, inner: S) -> Seen<S> {
        Seen {
            inner,
            seen: self.clone(),
        }
    }
}

#[derive(Clone)]
struct Seen<S> {
    inner: S,
    seen: SeenTimeouts,
}

impl<S: Service<Request<B>>, B> Service<Request<B>> for Seen<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> S::Future {
        let value = request.headers().get("grpc-timeout").cloned();
        self.seen.0.lock().unwrap().push(value);
        self.inner.call(request)
    }
}

#[tokio::test(start_paused = true)]
async fn a_handler_calling_another_server_sends_what_is_left_of_its_deadline() {
    // The second server: its own deadline layer, and a record of what arrives.
    let seen = SeenTimeouts::default();
    let upstream = spawn(
        ServiceBuilder::new()
            .layer(seen.clone())
            .layer(DeadlineLayer::server().build().unwrap()),
    )
    .await;
    let channel = upstream.channel().await;
    let client_stack = ServiceBuilder::new()
        .layer(DeadlineLayer::client().build().unwrap())
        .service(channel);

    // The first server, in-process: a handler that spends 100 ms, then calls upstream.
    let replies = Arc::new(Mutex::new(Vec::new()));
    let first = DeadlineLayer::server().build().unwrap().layer(service_fn({
        let replies = replies.clone();
        move |_: Request<Full<Bytes>>| {
            let mut upstream = GreeterClient::new(client_stack.clone());
            let replies = replies.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let reply = upstream.say_hello(hello(0)).await.unwrap().into_inner();
                replies.lock().unwrap().push(reply);
                Ok::<_, Infallible>(ok_response())
            }
        }
    }));
    let response = first.oneshot(grpc_request(Some("1S"))).await.unwrap();
    assert!(status(&response).is_none());
    let reply = replies.lock().unwrap().pop().unwrap();
    let sent = seen.take();
    assert_eq!(
        sent,
        [Some(Duration::from_millis(895))],
        "1 s - 100 ms - the 5 ms margin"
    );
    assert_eq!(reply.deadline_ms, 895);
    assert!(reply.deadline_ms < 900);
}

#[tokio::test(start_paused = true)]
async fn over_the_wire_with_the_real_header_a_palisade_client_sees_deadline_exceeded() {
    // No renaming: tonic's own timers (its Channel's and its server's) run beside the layers'.
    let drops = DropWatch::default();
    let server = spawn(
        ServiceBuilder::new()
            .layer(DeadlineLayer::server().build().unwrap())
            .layer(drops.clone()),
    )
    .await;
    let channel = server.channel().await;
    let client = ServiceBuilder::new()
        .layer(
            DeadlineLayer::client()
                .default(Duration::from_millis(100))
                .build()
                .unwrap(),
        )
        .service(channel);
    let mut client = GreeterClient::new(client);
    let start = Instant::now();
    let status = client.say_hello(hello(500)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(95),
        "100 ms less the margin"
    );
    let reply = client.say_hello(hello(0)).await.unwrap().into_inner();
    assert_eq!(reply.deadline_ms, 95);
    // The server dropped the slow handler at its deadline too: wait for the drop to be seen.
    let mut turns = 0;
    let drops = loop {
        let seen = drops.0.lock().unwrap().clone();
        if !seen.is_empty() {
            break seen;
        }
        turns += 1;
        assert!(turns < 10_000, "the slow handler was never dropped");
        tokio::task::yield_now().await;
    };
    assert!(!drops[0].1, "the slow handler was dropped, not finished");
    assert_eq!(drops[0].0 - start, Duration::from_millis(95));
}
