//! The observing middleware (`Observe` with a test policy): byte-for-byte forwarding, exact
//! message counts, and exactly one end on every path an RPC can end by — the end-path tests of
//! `ObservedFuture` / `ObservedBody` (tests/observed.rs), ported onto the middleware, plus what
//! only the middleware does (skipping, passing through, the scope, the record, request bodies).

#[path = "observe/admit.rs"]
mod admit;

use std::{
    cell::Cell,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, stream};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, StreamBody};
use palisade_core::{
    Call, Code, Counts, Matcher, Observer, Outcome, Rejection, Rpc, Side,
    observe::{Observe, ObserveLayer, Policy, RequestBody, ResponseFuture, Scope, Watch},
    outcome::Source,
};
use palisade_demo::frames::{self, GrpcBody};
use proptest::prelude::*;
use tower_layer::Layer;
use tower_service::Service;

/// Records every end it hears; the tests assert there is exactly one.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(Outcome, Counts)>>>);

impl Recorder {
    fn ends(&self) -> Vec<(Outcome, Counts)> {
        self.0.lock().unwrap().clone()
    }

    fn single(&self) -> (Outcome, Counts) {
        let ends = self.ends();
        assert_eq!(ends.len(), 1, "exactly one completion, got {ends:?}");
        ends.into_iter().next().unwrap()
    }
}

impl Observer for Recorder {
    fn on_message(&mut self) {
        assert!(
            !IN_SCOPE.get(),
            "the response observer is never called inside the scope"
        );
    }

    fn on_end(self, outcome: Outcome, counts: Counts) {
        assert!(
            !IN_SCOPE.get(),
            "the observer is never called inside the scope"
        );
        self.0.lock().unwrap().push((outcome, counts));
    }
}

/// A request body's observer: a [`Recorder`] that may hear its messages and end inside the
/// scope (a server's handler polls and drops its request inside its own future, which runs in
/// the scope): the scope's guarantee covers the response observer only.
struct Requests(Recorder);

impl Observer for Requests {
    fn on_end(self, outcome: Outcome, counts: Counts) {
        self.0.0.lock().unwrap().push((outcome, counts));
    }
}

thread_local! {
    static IN_SCOPE: Cell<bool> = const { Cell::new(false) };
}

/// A scope that marks the thread while it is entered.
struct Marked;

struct MarkedGuard;

impl Scope for Marked {
    type Guard<'a> = MarkedGuard;

    fn enter(&self) -> MarkedGuard {
        assert!(!IN_SCOPE.replace(true), "entered once at a time");
        MarkedGuard
    }
}

impl Drop for MarkedGuard {
    fn drop(&mut self) {
        IN_SCOPE.set(false);
    }
}

/// The test policy: watches every RPC on its side with a clone of its recorder (and the
/// request body with another), in the `Marked` scope.
struct Test {
    side: Side,
    response: Recorder,
    request: Recorder,
}

impl Policy for Test {
    type Observer = Recorder;
    type RequestObserver = Requests;
    type Scope = Marked;

    fn side(&self) -> Side {
        self.side
    }

    fn start(&self, _: &mut Call<'_>) -> Option<Watch<Recorder, Requests, Marked>> {
        Some(
            Watch::new(self.response.clone())
                .with_request(Requests(self.request.clone()))
                .with_scope(Marked),
        )
    }
}

pin_project_lite::pin_project! {
    /// The inner future, checked to be polled in the scope.
    struct InScope<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for InScope<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        assert!(IN_SCOPE.get(), "the inner future is polled in the scope");
        self.project().inner.poll(cx)
    }
}

/// A service whose one call returns the future it was given.
struct Returns<F>(Option<F>);

impl<F, R, E, B> Service<Request<B>> for Returns<F>
where
    F: Future<Output = Result<R, E>>,
{
    type Response = R;
    type Error = E;
    type Future = InScope<F>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<B>) -> Self::Future {
        assert!(IN_SCOPE.get(), "the inner call runs in the scope");
        InScope {
            inner: self.0.take().expect("called once"),
        }
    }
}

fn layer(side: Side, response: Recorder, request: Recorder) -> ObserveLayer<Test> {
    ObserveLayer::new(Test {
        side,
        response,
        request,
    })
}

/// The middleware's response future for an RPC whose inner future is `inner`.
fn observe<F, B, E>(inner: F, side: Side, recorder: Recorder) -> ResponseFuture<InScope<F>, Test>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
    E: 'static,
{
    layer(side, recorder, Recorder::default())
        .layer(Returns(Some(inner)))
        .call(Request::new(()))
}

/// Keeps the request body its call got.
struct Capture<B>(Arc<Mutex<Option<B>>>);

impl<B> Service<Request<B>> for Capture<B> {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: Request<B>) -> Self::Future {
        *self.0.lock().unwrap() = Some(request.into_body());
        std::future::ready(Ok(Response::new(String::new())))
    }
}

/// The request body the middleware hands its inner service for a request with `body`.
fn request_body<B>(body: B, side: Side, recorder: Recorder) -> RequestBody<B, Test> {
    let slot = Arc::new(Mutex::new(None));
    let mut service: Observe<_, Test> =
        layer(side, Recorder::default(), recorder).layer(Capture(slot.clone()));
    drop(service.call(Request::new(body)));
    slot.lock().unwrap().take().unwrap()
}

async fn respond<B>(body: B) -> Result<Response<B>, Infallible> {
    Ok(Response::new(body))
}

async fn observe_to_end<B>(body: B) -> (Recorder, Result<Collected, B::Error>)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: 'static,
{
    let recorder = Recorder::default();
    // A body at its end already (no frames, no trailers) ends at the head: `MissingStatus`.
    let empty = body.is_end_stream();
    let response = observe(respond(body), Side::Server, recorder.clone())
        .await
        .unwrap();
    assert_eq!(
        recorder.ends().is_empty(),
        !empty,
        "over at the headers only when empty"
    );
    let collected = collect(response.into_body()).await;
    (recorder, collected)
}

#[derive(Debug, Default)]
struct Collected {
    data: BytesMut,
    trailers: Option<HeaderMap>,
}

async fn collect<B: Body<Data = Bytes> + Unpin>(mut body: B) -> Result<Collected, B::Error> {
    let mut out = Collected::default();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => out.data.extend_from_slice(&data),
            Err(frame) => out.trailers = frame.into_trailers().ok(),
        }
    }
    Ok(out)
}

#[tokio::test]
async fn ok_in_trailers() {
    let body = GrpcBody::new(
        [frames::message(b"one"), frames::message(b"two")],
        Some(frames::trailers(Code::Ok, None)),
    );
    let (recorder, collected) = observe_to_end(body).await;
    let (outcome, counts) = recorder.single();
    assert_eq!(
        (outcome.code(), outcome.source()),
        (Code::Ok, Source::Trailers)
    );
    assert_eq!(counts.messages, 2);
    assert_eq!(counts.bytes, 16);
    assert_eq!(collected.unwrap().trailers.unwrap()["grpc-status"], "0");
}

#[tokio::test]
async fn error_in_trailers() {
    let body = GrpcBody::new(
        [frames::message(b"partial")],
        Some(frames::trailers(Code::Aborted, Some("try again"))),
    );
    let (recorder, _) = observe_to_end(body).await;
    let (outcome, counts) = recorder.single();
    assert_eq!(outcome.code(), Code::Aborted);
    assert_eq!(outcome.message().unwrap(), "try again");
    assert_eq!(counts.messages, 1);
}

#[tokio::test]
async fn trailers_only_error_ends_at_the_headers() {
    let recorder = Recorder::default();
    let inner = async {
        Ok::<_, Infallible>(
            Rejection::new(Code::PermissionDenied, "no")
                .by("jwt")
                .into_response::<GrpcBody>(),
        )
    };
    let response = observe(inner, Side::Server, recorder.clone())
        .await
        .unwrap();
    let (outcome, _) = recorder.single();
    assert_eq!(
        (outcome.code(), outcome.source()),
        (Code::PermissionDenied, Source::TrailersOnly)
    );
    // Made by a Palisade layer in this process: the outcome names it.
    assert_eq!(outcome.rejected_by(), Some("jwt"));
    // Polling the (empty) body and dropping it reports nothing more.
    collect(response.into_body()).await.unwrap();
    recorder.single();
}

#[tokio::test]
async fn trailers_only_body_dropped_unpolled_is_not_cancelled() {
    // hyper does not poll a body whose `is_end_stream` is true: dropping it must not count.
    let recorder = Recorder::default();
    let inner = async {
        Ok::<_, Infallible>(Rejection::new(Code::NotFound, "x").into_response::<GrpcBody>())
    };
    let response = observe(inner, Side::Server, recorder.clone())
        .await
        .unwrap();
    assert!(response.body().is_end_stream());
    drop(response);
    assert_eq!(recorder.single().0.code(), Code::NotFound);
}

#[tokio::test]
async fn http_503_without_grpc_status() {
    let recorder = Recorder::default();
    let inner = async {
        let mut response = Response::new(GrpcBody::new(
            [Bytes::from_static(b"<html>busy</html>")],
            None,
        ));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        Ok::<_, Infallible>(response)
    };
    let response = observe(inner, Side::Client, recorder.clone())
        .await
        .unwrap();
    let (outcome, _) = recorder.single();
    assert_eq!(
        (outcome.code(), outcome.source()),
        (Code::Unavailable, Source::HttpStatus)
    );
    assert!(!outcome.is_local());
    collect(response.into_body()).await.unwrap();
    recorder.single();
}

#[tokio::test]
async fn body_error_mid_stream() {
    let frames = vec![
        Ok(Frame::data(frames::message(b"first"))),
        Err(tonic::Status::data_loss("stream broke")),
        Ok(Frame::data(frames::message(b"never"))),
    ];
    let body = StreamBody::new(stream::iter(frames));
    let (recorder, collected) = observe_to_end(body).await;
    assert_eq!(collected.unwrap_err().code(), Code::DataLoss);
    let (outcome, counts) = recorder.single();
    assert_eq!(
        (outcome.code(), outcome.source()),
        (Code::DataLoss, Source::BodyError)
    );
    assert_eq!(outcome.message().unwrap(), "stream broke");
    assert_eq!(counts.messages, 1);
}

#[tokio::test]
async fn body_dropped_before_the_end_is_cancelled() {
    let recorder = Recorder::default();
    let body = GrpcBody::new(
        [frames::message(b"a"), frames::message(b"b")],
        Some(frames::trailers(Code::Ok, None)),
    );
    let response = observe(respond(body), Side::Server, recorder.clone())
        .await
        .unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    assert!(recorder.ends().is_empty());
    drop(body);
    let (outcome, counts) = recorder.single();
    assert_eq!(
        (outcome.code(), outcome.source()),
        (Code::Cancelled, Source::Dropped)
    );
    assert_eq!(counts.messages, 1);
}

/// A response future that is never ready.
struct Pending;

impl Future for Pending {
    type Output = Result<Response<GrpcBody>, Infallible>;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Pending
    }
}

#[tokio::test]
async fn response_future_dropped_before_it_resolves() {
    let recorder = Recorder::default();
    let mut future = observe(Pending, Side::Client, recorder.clone());
    assert!((&mut future).now_or_never().is_none());
    assert!(recorder.ends().is_empty());
    drop(future);
    assert_eq!(recorder.single().0.code(), Code::Cancelled);
}

#[tokio::test]
async fn inner_service_error() {
    let recorder = Recorder::default();
    let inner = async { Err::<Response<GrpcBody>, _>(tonic::Status::resource_exhausted("full")) };
    let error = observe(inner, Side::Server, recorder.clone())
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Code::ResourceExhausted,
        "the error is handed on unchanged"
    );
    let (outcome, _) = recorder.single();
    assert_eq!(
        (outcome.code(), outcome.source()),
        (Code::ResourceExhausted, Source::ServiceError)
    );

    // A transport error with no status inside: Unavailable on a client.
    let recorder = Recorder::default();
    let boxed: Box<dyn std::error::Error + Send + Sync> = "connection refused".into();
    let inner = async move { Err::<Response<GrpcBody>, _>(boxed) };
    observe(inner, Side::Client, recorder.clone())
        .await
        .unwrap_err();
    assert_eq!(recorder.single().0.code(), Code::Unavailable);
}

#[tokio::test]
async fn stream_ending_without_trailers_is_unknown() {
    let body = GrpcBody::new([frames::message(b"x")], None);
    let (recorder, _) = observe_to_end(body).await;
    let (outcome, counts) = recorder.single();
    assert_eq!(
        (outcome.code(), outcome.source()),
        (Code::Unknown, Source::MissingStatus)
    );
    assert_eq!(counts.messages, 1);
}

#[tokio::test]
async fn bad_grpc_status_and_message_values() {
    for (status, message, code, text) in [
        ("abc", "ok", Code::Unknown, "ok"),
        ("17", "%", Code::Unknown, "%"),
        ("-1", "%G0%zz", Code::Unknown, "%G0%zz"),
        (
            "4",
            "%C3%A9t%C3%A9%FF",
            Code::DeadlineExceeded,
            "été\u{fffd}",
        ),
    ] {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static(status));
        trailers.insert("grpc-message", HeaderValue::from_static(message));
        let (recorder, _) = observe_to_end(GrpcBody::new([], Some(trailers))).await;
        let (outcome, _) = recorder.single();
        assert_eq!(outcome.code(), code, "{status}");
        assert_eq!(outcome.message().unwrap(), text, "{message}");
    }
}

#[tokio::test]
async fn four_gib_prefix_and_split_prefix() {
    // A prefix announcing 4 GiB, then the stream ends: no message, nothing reserved, no panic.
    let body = GrpcBody::new(
        [Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3])],
        Some(frames::trailers(Code::Ok, None)),
    );
    let (recorder, _) = observe_to_end(body).await;
    assert_eq!(recorder.single().1.messages, 0);

    // A 5-byte prefix split over five frames.
    let message = frames::message(b"split");
    let mut pieces: Vec<Bytes> = (0..5).map(|i| message.slice(i..i + 1)).collect();
    pieces.push(message.slice(5..));
    let (recorder, collected) = observe_to_end(GrpcBody::new(
        pieces,
        Some(frames::trailers(Code::Ok, None)),
    ))
    .await;
    assert_eq!(recorder.single().1.messages, 1);
    assert_eq!(&collected.unwrap().data[..], &message[..]);
}

#[tokio::test]
async fn request_bodies_end_ok_or_cancelled() {
    let recorder = Recorder::default();
    let body = request_body(
        GrpcBody::new([frames::message(b"a"), frames::message(b"")], None),
        Side::Server,
        recorder.clone(),
    );
    collect(body).await.unwrap();
    let (outcome, counts) = recorder.single();
    assert_eq!((outcome.code(), counts.messages), (Code::Ok, 2));

    let recorder = Recorder::default();
    let mut body = request_body(
        GrpcBody::new([frames::message(b"a"), frames::message(b"b")], None),
        Side::Server,
        recorder.clone(),
    );
    body.frame().await.unwrap().unwrap();
    drop(body);
    assert_eq!(recorder.single().0.code(), Code::Cancelled);
}

/// A gRPC stream with its bytes cut into frames at the given points.
fn split(stream: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.push(0);
    points.push(stream.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| Bytes::copy_from_slice(&stream[w[0]..w[1]]))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn forwards_every_byte_and_counts_every_message(
        sizes in prop::collection::vec(0usize..65_536, 0..50),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
        with_trailers in any::<bool>(),
        code in 0i32..17,
    ) {
        let mut stream = BytesMut::new();
        for (i, size) in sizes.iter().enumerate() {
            stream.extend_from_slice(&frames::message(&vec![i as u8; *size]));
        }
        let pieces = split(&stream, &cuts);
        let trailers = with_trailers.then(|| frames::trailers(Code::from_i32(code), None));
        let body = GrpcBody::new(pieces, trailers.clone());
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (recorder, collected) = runtime.block_on(observe_to_end(body));
        let collected = collected.unwrap();
        prop_assert_eq!(&collected.data[..], &stream[..]);
        prop_assert_eq!(&collected.trailers, &trailers);
        let (outcome, counts) = recorder.single();
        prop_assert_eq!(counts.messages, sizes.len() as u64);
        prop_assert_eq!(counts.bytes, stream.len() as u64);
        let expected = if with_trailers { Code::from_i32(code) } else { Code::Unknown };
        prop_assert_eq!(outcome.code(), expected);
    }
}

/// Polls `future` once, catching a panic as a runtime's task harness does: the future is
/// dropped after the panic was caught, not while the thread unwinds.
fn poll_catching<F: Future>(future: F) -> std::thread::Result<Poll<F::Output>> {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        future.as_mut().poll(&mut cx)
    }))
}

/// A response future that panics when polled.
struct Panics;

impl Future for Panics {
    type Output = Result<Response<GrpcBody>, Infallible>;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        panic!("handler bug")
    }
}

/// A body that panics when polled.
struct PanickingBody;

impl Body for PanickingBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        panic!("stream bug")
    }
}

#[tokio::test]
async fn a_panicking_future_is_internal_not_cancelled() {
    let recorder = Recorder::default();
    let future = observe(Panics, Side::Server, recorder.clone());
    let caught = poll_catching(future);
    assert!(caught.is_err(), "the panic goes on to the caller");
    let (outcome, _) = recorder.single();
    assert_eq!(
        (outcome.code(), outcome.source()),
        (Code::Internal, Source::Panicked)
    );
}

#[tokio::test]
async fn a_panicking_body_is_internal_not_cancelled() {
    let recorder = Recorder::default();
    let response = observe(respond(PanickingBody), Side::Server, recorder.clone())
        .await
        .unwrap();
    let mut body = response.into_body();
    let caught = poll_catching(body.frame());
    assert!(caught.is_err());
    drop(body);
    let (outcome, _) = recorder.single();
    assert_eq!(
        (outcome.code(), outcome.source()),
        (Code::Internal, Source::Panicked)
    );

    // A request body too, and one dropped while the thread unwinds.
    let recorder = Recorder::default();
    let body = request_body(
        GrpcBody::new([frames::message(b"a")], None),
        Side::Server,
        recorder.clone(),
    );
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _body = body;
        panic!("handler bug while holding the request");
    }));
    assert!(unwound.is_err());
    assert_eq!(recorder.single().0.code(), Code::Internal);
}

/// Drops `value` while the thread unwinds from a panic that never goes through it, as an
/// `async fn`'s locals are dropped when code beside them panics.
fn drop_while_unwinding<T>(value: T) {
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _held = value;
        panic!("the caller's own bug, beside the call");
    }));
    assert!(unwound.is_err());
}

#[tokio::test]
async fn a_client_call_dropped_by_a_panic_beside_it_is_cancelled_not_internal() {
    // The future, never polled (a call made but not awaited yet, beside a panicking branch).
    let recorder = Recorder::default();
    drop_while_unwinding(observe(
        respond(GrpcBody::unary(b"hi", Code::Ok)),
        Side::Client,
        recorder.clone(),
    ));
    let (outcome, _) = recorder.single();
    assert_eq!(
        (outcome.code(), outcome.source()),
        (Code::Cancelled, Source::Dropped)
    );

    // The response body, part read.
    let recorder = Recorder::default();
    let response = observe(
        respond(GrpcBody::unary(b"hi", Code::Ok)),
        Side::Client,
        recorder.clone(),
    )
    .await
    .unwrap();
    drop_while_unwinding(response.into_body());
    assert_eq!(recorder.single().0.code(), Code::Cancelled);

    // The request body the client was sending.
    let recorder = Recorder::default();
    drop_while_unwinding(request_body(
        GrpcBody::new([frames::message(b"a")], None),
        Side::Client,
        recorder.clone(),
    ));
    assert_eq!(recorder.single().0.code(), Code::Cancelled);

    // A panic through the observed poll itself is still the panic it is, on either side.
    let recorder = Recorder::default();
    assert!(poll_catching(observe(Panics, Side::Client, recorder.clone())).is_err());
    assert_eq!(
        recorder.single().0.source(),
        Source::Panicked,
        "the panic went through this call"
    );
}

#[tokio::test]
async fn a_server_call_dropped_while_unwinding_is_internal() {
    let recorder = Recorder::default();
    drop_while_unwinding(observe(
        respond(GrpcBody::unary(b"hi", Code::Ok)),
        Side::Server,
        recorder.clone(),
    ));
    let (outcome, _) = recorder.single();
    assert_eq!(
        (outcome.code(), outcome.source()),
        (Code::Internal, Source::Panicked)
    );
    let recorder = Recorder::default();
    let response = observe(
        respond(GrpcBody::unary(b"hi", Code::Ok)),
        Side::Server,
        recorder.clone(),
    )
    .await
    .unwrap();
    drop_while_unwinding(response.into_body());
    assert_eq!(recorder.single().0.code(), Code::Internal);
}

/// A tonic server whose every call goes through the middleware, on the server side.
#[tokio::test]
async fn a_tonic_handler_that_panics_is_internal_on_the_server() {
    // tonic polls the handler inside the service's future on hyper's per-stream task, so the
    // panic unwinds through the observed poll.
    let recorder = Recorder::default();
    let greeter = palisade_demo::Greeter::new().with_subject(|_| panic!("handler bug"));
    let layer = ObserveLayer::new(Tonic(recorder.clone()));
    let server = palisade_demo::spawn_with(greeter, layer).await;
    let result = server
        .client()
        .await
        .say_hello(palisade_demo::pb::HelloRequest::default())
        .await;
    assert!(result.is_err(), "the call fails: {result:?}");
    let (outcome, _) = recorder.single();
    assert_eq!(
        (outcome.code(), outcome.source()),
        (Code::Internal, Source::Panicked)
    );
    server.shutdown().await;
}

/// Watches server RPCs, no scope (tonic's tasks are not the test's thread).
struct Tonic(Recorder);

impl Policy for Tonic {
    type Observer = Recorder;
    type RequestObserver = ();
    type Scope = ();

    fn side(&self) -> Side {
        Side::Server
    }

    fn start(&self, call: &mut Call<'_>) -> Option<Watch<Recorder, (), ()>> {
        call.is_grpc().then(|| Watch::new(self.0.clone()))
    }
}

#[tokio::test]
async fn a_local_rejection_from_inside_names_its_layer_and_fills_no_record() {
    let recorder = Recorder::default();
    let inner = async {
        Ok::<_, Infallible>(
            Rejection::new(Code::ResourceExhausted, "slow down")
                .by("ratelimit")
                .into_response::<GrpcBody>(),
        )
    };
    let response = observe(inner, Side::Client, recorder.clone())
        .await
        .unwrap();
    let (outcome, _) = recorder.single();
    assert_eq!(outcome.rejected_by(), Some("ratelimit"));
    assert!(outcome.is_local());
    assert!(response.body().has_ended());
}

/// Watches only what its matcher does not skip, and reads the record's facts.
struct Facts(Recorder);

impl Policy for Facts {
    type Observer = Recorder;
    type RequestObserver = ();
    type Scope = ();
    const READS_FACTS: bool = true;

    fn side(&self) -> Side {
        Side::Server
    }

    fn start(&self, call: &mut Call<'_>) -> Option<Watch<Recorder, (), ()>> {
        assert!(call.record().is_none(), "made only once start watches");
        (call.path() != "/not.Watched/Call").then(|| Watch::new(self.0.clone()))
    }
}

#[tokio::test]
async fn skipped_and_unwatched_rpcs_pass_through_and_a_fact_reader_makes_the_record_when_it_watches()
 {
    let recorder = Recorder::default();
    let layer = ObserveLayer::with_skip(
        Facts(recorder.clone()),
        Some(Matcher::service("grpc.health.v1.Health")),
    );
    let records = Arc::new(Mutex::new(Vec::new()));
    let seen = records.clone();
    let mut service = layer.layer(tower::service_fn(
        move |request: Request<RequestBody<GrpcBody, Facts>>| {
            seen.lock().unwrap().push(Rpc::of(&request).map(Rpc::side));
            respond(GrpcBody::unary(b"hi", Code::Ok))
        },
    ));
    for path in [
        "/grpc.health.v1.Health/Check",
        "/not.Watched/Call",
        "/pkg.S/M",
    ] {
        let request = Request::post(path).body(GrpcBody::new([], None)).unwrap();
        let response = service.call(request).await.unwrap();
        collect(response.into_body()).await.unwrap();
    }
    // The skipped call never reached the policy, and the unwatched one was not watched: no
    // record was made for either.
    assert_eq!(*records.lock().unwrap(), [None, None, Some(Side::Server)]);
    let (outcome, counts) = recorder.single();
    assert_eq!((outcome.code(), counts.messages), (Code::Ok, 1));
}

#[tokio::test]
async fn watched_request_bodies_count_messages_through_the_middleware() {
    let recorder = Recorder::default();
    let mut body = request_body(
        GrpcBody::new([frames::message(b"a"), frames::message(b"bc")], None),
        Side::Server,
        recorder.clone(),
    );
    assert!(!body.has_ended());
    while body.frame().await.is_some() {}
    let (outcome, counts) = recorder.single();
    assert_eq!(
        (outcome.source(), counts.messages),
        (Source::EndOfStream, 2)
    );
}

/// A service that panics in its synchronous `call`, as a tonic interceptor or a `service_fn`
/// closure may.
struct PanicsInCall;

impl<B> Service<Request<B>> for PanicsInCall {
    type Response = Response<GrpcBody>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<GrpcBody>, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<B>) -> Self::Future {
        panic!("interceptor bug")
    }
}

#[test]
fn a_service_panicking_in_call_is_internal_once() {
    let recorder = Recorder::default();
    let mut service =
        layer(Side::Server, recorder.clone(), Recorder::default()).layer(PanicsInCall);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(service.call(Request::new(String::new())))
    }));
    assert!(caught.is_err(), "the panic goes on to the caller");
    let (outcome, _) = recorder.single();
    assert_eq!(
        (outcome.code(), outcome.source()),
        (Code::Internal, Source::Panicked)
    );
}

#[tokio::test]
async fn an_empty_200_without_grpc_status_is_missing_status_not_cancelled() {
    let recorder = Recorder::default();
    let body = http_body_util::Empty::<Bytes>::new();
    assert!(body.is_end_stream(), "hyper will not poll it");
    let response = observe(respond(body), Side::Server, recorder.clone())
        .await
        .unwrap();
    drop(response);
    let (outcome, _) = recorder.single();
    assert_eq!(
        (outcome.code(), outcome.source()),
        (Code::Unknown, Source::MissingStatus)
    );
}

/// A pending response future and body that records, when dropped, whether the scope was
/// entered.
struct NotesDrop(Arc<Mutex<Option<bool>>>);

impl Drop for NotesDrop {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(IN_SCOPE.get());
    }
}

impl Future for NotesDrop {
    type Output = Result<Response<GrpcBody>, Infallible>;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Pending
    }
}

impl Body for NotesDrop {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
}

#[tokio::test]
async fn the_inner_future_and_body_drop_in_the_scope() {
    let recorder = Recorder::default();
    let dropped = Arc::new(Mutex::new(None));
    let mut future = Box::pin(observe(
        NotesDrop(dropped.clone()),
        Side::Server,
        recorder.clone(),
    ));
    assert!(future.as_mut().now_or_never().is_none(), "pending");
    drop(future);
    assert_eq!(
        *dropped.lock().unwrap(),
        Some(true),
        "the future drops in the scope"
    );
    assert_eq!(recorder.single().0.code(), Code::Cancelled);

    let recorder = Recorder::default();
    let dropped = Arc::new(Mutex::new(None));
    let response = observe(
        respond(NotesDrop(dropped.clone())),
        Side::Server,
        recorder.clone(),
    )
    .await
    .unwrap();
    assert!(recorder.ends().is_empty());
    drop(response);
    assert_eq!(
        *dropped.lock().unwrap(),
        Some(true),
        "the body drops in the scope"
    );
    assert_eq!(recorder.single().0.code(), Code::Cancelled);
    assert!(!IN_SCOPE.get(), "left after the drop");
}

/// An observer that only hears *that* the RPC ended ([`Observer::reads_outcome`] is `false`),
/// and counts how many messages it was told of (none: nothing is counted for it).
struct EndOnly(Recorder, Arc<Mutex<u64>>);

impl Observer for EndOnly {
    fn on_message(&mut self) {
        *self.1.lock().unwrap() += 1;
    }

    fn on_end(self, outcome: Outcome, counts: Counts) {
        self.0.on_end(outcome, counts);
    }

    fn reads_outcome(&self) -> bool {
        false
    }
}

struct EndOnlyPolicy(Recorder, Arc<Mutex<u64>>);

impl Policy for EndOnlyPolicy {
    type Observer = EndOnly;
    type RequestObserver = ();
    type Scope = ();

    fn side(&self) -> Side {
        Side::Server
    }

    fn start(&self, _: &mut Call<'_>) -> Option<Watch<EndOnly, (), ()>> {
        Some(Watch::new(EndOnly(self.0.clone(), self.1.clone())))
    }
}

/// The response of an `EndOnlyPolicy` service answering with `response`, and its recorder and
/// message count.
async fn end_only<B: Body>(
    response: Response<B>,
) -> (
    Response<palisade_core::observe::ResponseBody<B, EndOnlyPolicy>>,
    Recorder,
    Arc<Mutex<u64>>,
) {
    let recorder = Recorder::default();
    let messages = Arc::new(Mutex::new(0));
    let mut response = Some(response);
    let mut service = ObserveLayer::new(EndOnlyPolicy(recorder.clone(), messages.clone())).layer(
        tower::service_fn(move |_: Request<RequestBody<String, EndOnlyPolicy>>| {
            std::future::ready(Ok::<_, Infallible>(response.take().expect("called once")))
        }),
    );
    let response = service.call(Request::new(String::new())).await.unwrap();
    (response, recorder, messages)
}

#[tokio::test]
async fn an_end_only_observer_hears_the_end_unread_and_nothing_counted() {
    let body = GrpcBody::new(
        [frames::message(b"one"), frames::message(b"two")],
        Some(frames::trailers(Code::Aborted, Some("not read"))),
    );
    let (response, recorder, messages) = end_only(Response::new(body)).await;
    assert!(
        recorder.ends().is_empty(),
        "a streaming response ends at its body's end"
    );
    let collected = collect(response.into_body()).await.unwrap();
    // Every frame forwarded as it came.
    assert_eq!(collected.trailers.unwrap()["grpc-status"], "10");
    let (outcome, counts) = recorder.single();
    assert_eq!(
        (outcome.code(), outcome.source()),
        (Code::Unknown, Source::Unread)
    );
    assert_eq!((counts.messages, counts.bytes), (0, 0));
    assert_eq!(*messages.lock().unwrap(), 0, "no message told");
}

#[tokio::test]
async fn an_end_only_observer_of_a_trailers_only_answer_ends_at_the_head() {
    let rejection = Rejection::new(Code::PermissionDenied, "no").into_response::<GrpcBody>();
    let (response, recorder, _) = end_only(rejection).await;
    let (outcome, _) = recorder.single();
    assert_eq!(outcome.source(), Source::Unread);
    drop(response);
    assert_eq!(
        recorder.ends().len(),
        1,
        "one end, not a second at the drop"
    );
}

#[tokio::test]
async fn an_end_only_observer_still_hears_drops_and_errors() {
    let body = GrpcBody::new(
        [frames::message(b"a"), frames::message(b"b")],
        Some(frames::trailers(Code::Ok, None)),
    );
    let (response, recorder, _) = end_only(Response::new(body)).await;
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    assert!(recorder.ends().is_empty());
    drop(body);
    let (outcome, _) = recorder.single();
    assert_eq!(
        (outcome.code(), outcome.source()),
        (Code::Cancelled, Source::Dropped)
    );

    let frames = vec![
        Ok(Frame::data(frames::message(b"first"))),
        Err(tonic::Status::data_loss("stream broke")),
    ];
    let (response, recorder, _) =
        end_only(Response::new(StreamBody::new(stream::iter(frames)))).await;
    assert!(collect(response.into_body()).await.is_err());
    let (outcome, _) = recorder.single();
    assert_eq!(
        (outcome.code(), outcome.source()),
        (Code::DataLoss, Source::BodyError)
    );
}
