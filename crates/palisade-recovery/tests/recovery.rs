//! The recovery layer over a real tonic server on `127.0.0.1:0` and in-process: a panic in
//! `call`, in the response future or in the body is answered as `INTERNAL` for that RPC
//! alone; counted, handed to the hook once; skipped RPCs unwind as before. (What is logged is
//! in `logged.rs`, a process of its own: `tracing`'s per-callsite interest is process-wide.)

use std::{
    convert::Infallible,
    future::{Ready, ready},
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt as _, future::join_all};
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use metrics_util::{
    CompositeKey,
    debugging::{DebugValue, DebuggingRecorder, Snapshotter},
};
use palisade_core::{Code, LocalRejection, Matcher, MethodRegistry};
use palisade_demo::{
    FILE_DESCRIPTOR_SET, SAY_HELLO, SAY_HELLO_STREAM,
    frames::{GrpcBody, message},
    pb::HelloRequest,
};
use palisade_recovery::{
    NON_STRING_PAYLOAD, PANICS_TOTAL, PanicReport, PanicStage, RecoveryBuilder, RecoveryLayer,
};
use tower::{Layer, Service, ServiceExt, service_fn};

// ---------------------------------------------------------------------------------------
// Helpers.

fn registry() -> MethodRegistry {
    MethodRegistry::from_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET).unwrap()
}

fn recorder() -> (Arc<DebuggingRecorder>, Snapshotter) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    (Arc::new(recorder), snapshotter)
}

/// Every `palisade_panics_total` series: `(grpc_service, grpc_method) -> value`.
fn panics(snapshotter: &Snapshotter) -> Vec<((String, String), u64)> {
    let mut series: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let DebugValue::Counter(n) = value else {
                return None;
            };
            (key.key().name() == PANICS_TOTAL).then(|| (labels(&key), n))
        })
        .collect();
    series.sort();
    series
}

fn labels(key: &CompositeKey) -> (String, String) {
    let label = |name: &str| {
        key.key()
            .labels()
            .find(|label| label.key() == name)
            .map(|label| label.value().to_owned())
            .unwrap_or_else(|| panic!("no {name} label on {key:?}"))
    };
    assert_eq!(key.key().labels().count(), 2, "{key:?}");
    (label("grpc_service"), label("grpc_method"))
}

/// One report, owned: service, method, message, stage.
type Report = (String, String, String, PanicStage);

/// The reports the hook saw.
#[derive(Clone, Default)]
struct Reports(Arc<Mutex<Vec<Report>>>);

impl Reports {
    fn hook(&self) -> impl Fn(&PanicReport<'_>) + Send + Sync + 'static {
        let reports = self.clone();
        move |report| {
            reports.0.lock().unwrap().push((
                report.service().to_owned(),
                report.method().to_owned(),
                report.message().to_owned(),
                report.stage(),
            ));
        }
    }

    fn taken(&self) -> Vec<Report> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

fn request(path: &str) -> Request<GrpcBody> {
    Request::post(path)
        .header("content-type", "application/grpc")
        .body(GrpcBody::new([message(b"\x0a\x01x")], None))
        .unwrap()
}

fn ok() -> Response<GrpcBody> {
    Response::new(GrpcBody::unary(b"hi", Code::Ok))
}

/// A handler that panics in its response future on `SayHello` (with `String` payload), with a
/// number on `SayHelloStream` and answers every other path.
fn handler()
-> impl Service<Request<GrpcBody>, Response = Response<GrpcBody>, Error = Infallible, Future: Send>
+ Clone {
    service_fn(|request: Request<GrpcBody>| async move {
        match request.uri().path() {
            SAY_HELLO => {
                // A `String` payload (a literal message would be a `&'static str`).
                let name = String::from("Ada");
                panic!("SayHello failed for {name}")
            }
            SAY_HELLO_STREAM => std::panic::panic_any(42_u32),
            "/other.Service/Slow" => {
                tokio::task::yield_now().await;
                panic!("unknown method panicked")
            }
            _ => Ok(ok()),
        }
    })
}

/// A service whose `call` itself panics.
#[derive(Clone)]
struct PanicsInCall;

impl Service<Request<GrpcBody>> for PanicsInCall {
    type Response = Response<GrpcBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<GrpcBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<GrpcBody>) -> Self::Future {
        if request.uri().path() == SAY_HELLO {
            panic!("panicked in call");
        }
        ready(Ok(ok()))
    }
}

/// A body that sends one message, then panics when polled again.
struct PanicsMidStream {
    sent: bool,
}

impl Body for PanicsMidStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent {
            panic!("panicked mid-stream");
        }
        self.sent = true;
        Poll::Ready(Some(Ok(Frame::data(message(b"first")))))
    }
}

/// Reads a body to its end: its data frames and its trailers.
async fn frames<B>(body: B) -> (Vec<Bytes>, Option<HeaderMap>)
where
    B: Body<Data = Bytes, Error = Infallible>,
{
    let mut body = std::pin::pin!(body);
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        match frame.into_data() {
            Ok(bytes) => data.push(bytes),
            Err(frame) => {
                assert!(trailers.is_none(), "two trailers frames");
                trailers = Some(frame.into_trailers().unwrap());
            }
        }
    }
    assert!(body.is_end_stream());
    (data, trailers)
}

fn assert_trailers_only_internal<B>(response: &Response<B>) {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/grpc");
    assert_eq!(response.headers()["grpc-status"], "13");
    assert_eq!(response.headers()["grpc-message"], "internal error");
    assert_eq!(LocalRejection::of(response).unwrap().layer(), "recovery");
}

fn layer(reports: &Reports, recorder: Arc<DebuggingRecorder>) -> RecoveryBuilder {
    RecoveryLayer::server()
        .registry(registry())
        .recorder(recorder)
        .on_panic(reports.hook())
}

// ---------------------------------------------------------------------------------------
// In-process.

#[tokio::test]
async fn a_panic_in_the_future_is_a_trailers_only_internal_reported_once() {
    let reports = Reports::default();
    let (recorder, snapshotter) = recorder();
    let service = layer(&reports, recorder).build().layer(handler());

    let response = service.clone().oneshot(request(SAY_HELLO)).await.unwrap();
    assert_trailers_only_internal(&response);
    let (data, trailers) = frames(response.into_body()).await;
    assert!(data.is_empty() && trailers.is_none());
    assert_eq!(
        reports.taken(),
        [(
            "palisade.demo.v1.Greeter".into(),
            "SayHello".into(),
            "SayHello failed for Ada".into(),
            PanicStage::ResponseFuture
        )]
    );

    // Other RPCs through the same service answer as before, and report nothing.
    let response = service.clone().oneshot(request("/a.B/C")).await.unwrap();
    assert!(response.headers().get("grpc-status").is_none());
    let (data, trailers) = frames(response.into_body()).await;
    assert_eq!(data, [message(b"hi")]);
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    assert!(reports.taken().is_empty());

    // Counted once, under the method's labels; the registry's other methods and `unknown`
    // exist at zero.
    assert_eq!(
        panics(&snapshotter),
        [
            (("palisade.demo.v1.Greeter".into(), "SayHello".into()), 1),
            (
                ("palisade.demo.v1.Greeter".into(), "SayHelloStream".into()),
                0
            ),
            (("unknown".into(), "unknown".into()), 0),
        ]
    );
}

#[tokio::test]
async fn a_panic_in_call_is_a_trailers_only_internal() {
    let reports = Reports::default();
    let (recorder, snapshotter) = recorder();
    let mut service = layer(&reports, recorder).build().layer(PanicsInCall);

    let response = service
        .ready()
        .await
        .unwrap()
        .call(request(SAY_HELLO))
        .await;
    assert_trailers_only_internal(&response.unwrap());
    // The same service goes on serving.
    let response = service.ready().await.unwrap().call(request("/a.B/C")).await;
    assert!(response.unwrap().headers().get("grpc-status").is_none());
    assert_eq!(
        reports.taken(),
        [(
            "palisade.demo.v1.Greeter".into(),
            "SayHello".into(),
            "panicked in call".into(),
            PanicStage::Call
        )]
    );
    assert_eq!(
        panics(&snapshotter)[0],
        (("palisade.demo.v1.Greeter".into(), "SayHello".into()), 1)
    );
}

#[tokio::test]
async fn a_panic_mid_stream_ends_the_body_with_internal_trailers() {
    let reports = Reports::default();
    let (recorder, snapshotter) = recorder();
    let service =
        layer(&reports, recorder)
            .build()
            .layer(service_fn(|_: Request<GrpcBody>| async {
                Ok::<_, Infallible>(Response::new(PanicsMidStream { sent: false }))
            }));

    let response = service.oneshot(request(SAY_HELLO_STREAM)).await.unwrap();
    // The head went out as the handler made it: no status in it.
    assert!(response.headers().get("grpc-status").is_none());
    assert!(LocalRejection::of(&response).is_none());
    let (data, trailers) = frames(response.into_body()).await;
    assert_eq!(data, [message(b"first")]);
    let trailers = trailers.unwrap();
    assert_eq!(trailers["grpc-status"], "13");
    assert_eq!(trailers["grpc-message"], "internal error");
    assert_eq!(
        reports.taken(),
        [(
            "palisade.demo.v1.Greeter".into(),
            "SayHelloStream".into(),
            "panicked mid-stream".into(),
            PanicStage::ResponseBody
        )]
    );
    assert_eq!(
        panics(&snapshotter)[1],
        (
            ("palisade.demo.v1.Greeter".into(), "SayHelloStream".into()),
            1
        )
    );
}

#[tokio::test]
async fn a_non_string_payload_and_an_unknown_method() {
    let reports = Reports::default();
    let (recorder, snapshotter) = recorder();
    let service = layer(&reports, recorder).build().layer(handler());

    let response = service.clone().oneshot(request(SAY_HELLO_STREAM)).await;
    assert_trailers_only_internal(&response.unwrap());
    let response = service.oneshot(request("/other.Service/Slow")).await;
    assert_trailers_only_internal(&response.unwrap());
    assert_eq!(
        reports.taken(),
        [
            (
                "palisade.demo.v1.Greeter".into(),
                "SayHelloStream".into(),
                NON_STRING_PAYLOAD.into(),
                PanicStage::ResponseFuture
            ),
            // The log and the hook name the method; the counter folds it into `unknown`.
            (
                "other.Service".into(),
                "Slow".into(),
                "unknown method panicked".into(),
                PanicStage::ResponseFuture
            ),
        ]
    );
    assert_eq!(
        panics(&snapshotter),
        [
            (("palisade.demo.v1.Greeter".into(), "SayHello".into()), 0),
            (
                ("palisade.demo.v1.Greeter".into(), "SayHelloStream".into()),
                1
            ),
            (("unknown".into(), "unknown".into()), 1),
        ]
    );
}

#[tokio::test]
async fn the_message_is_bounded_on_a_char_boundary() {
    let long = "é".repeat(1000); // 2 000 bytes
    for (max, expected) in [
        (None, format!("{}…", "é".repeat(128))), // 256 bytes by default
        (Some(11), format!("{}…", "é".repeat(5))), // 11 falls inside the 6th 'é'
        (Some(5_000), long.clone()),
    ] {
        let reports = Reports::default();
        let mut builder = RecoveryLayer::server().on_panic(reports.hook());
        if let Some(max) = max {
            builder = builder.max_message_len(max);
        }
        let long = long.clone();
        let service = builder
            .build()
            .layer(service_fn(move |_: Request<GrpcBody>| {
                let long = long.clone();
                async move {
                    if !long.is_empty() {
                        panic!("{long}");
                    }
                    Ok::<_, Infallible>(ok())
                }
            }));
        let response = service.oneshot(request(SAY_HELLO)).await.unwrap();
        assert_trailers_only_internal(&response);
        let reports = reports.taken();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].2, expected);
    }
}

#[tokio::test]
async fn a_skipped_method_s_panic_unwinds_as_before() {
    let reports = Reports::default();
    let (recorder, snapshotter) = recorder();
    let service = layer(&reports, recorder)
        .skip(Matcher::method("palisade.demo.v1.Greeter/SayHello"))
        .skip(Matcher::method("a.B/Never"))
        .build();

    // In the future.
    let call = service.clone().layer(handler()).oneshot(request(SAY_HELLO));
    let unwound = AssertUnwindSafe(call).catch_unwind().await;
    let payload = unwound.expect_err("the panic unwinds");
    assert_eq!(
        payload.downcast_ref::<String>().unwrap(),
        "SayHello failed for Ada"
    );
    // In `call`.
    let mut in_call = service.layer(PanicsInCall);
    let unwound = std::panic::catch_unwind(AssertUnwindSafe(|| in_call.call(request(SAY_HELLO))));
    assert!(unwound.is_err());
    // Neither reported nor counted.
    assert!(reports.taken().is_empty());
    assert!(panics(&snapshotter).iter().all(|(_, n)| *n == 0));
}

#[tokio::test]
async fn without_a_registry_a_method_earns_its_series() {
    let (recorder, snapshotter) = recorder();
    let service = RecoveryLayer::server()
        .recorder(recorder)
        .build()
        .layer(handler());
    for _ in 0..palisade_core::slots::ADMISSION_THRESHOLD + 2 {
        let response = service.clone().oneshot(request(SAY_HELLO)).await.unwrap();
        assert_trailers_only_internal(&response);
    }
    let series = panics(&snapshotter);
    let total: u64 = series.iter().map(|(_, n)| n).sum();
    assert_eq!(
        total,
        u64::from(palisade_core::slots::ADMISSION_THRESHOLD) + 2
    );
    let own = series
        .iter()
        .find(|(labels, _)| labels.1 == "SayHello")
        .expect("SayHello earned a series");
    assert!(own.1 >= 2, "{series:?}");
}

// ---------------------------------------------------------------------------------------
// Over the wire: tonic, the demo Greeter.

fn panicking(name: &str) -> HelloRequest {
    HelloRequest {
        name: name.into(),
        panic: true,
        ..Default::default()
    }
}

fn hello(name: &str) -> HelloRequest {
    HelloRequest {
        name: name.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_wire_a_unary_panic_is_internal_and_the_channel_goes_on() {
    let reports = Reports::default();
    let (recorder, snapshotter) = recorder();
    let server = palisade_demo::spawn(layer(&reports, recorder).build()).await;
    let mut client = server.client().await;

    let status = client.say_hello(panicking("Ada")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert_eq!(status.message(), "internal error");
    // The same channel, the same connection: the next call is answered.
    let reply = client.say_hello(hello("Bob")).await.unwrap();
    assert_eq!(reply.get_ref().message, "Hello, Bob!");

    let reports = reports.taken();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].1, "SayHello");
    assert_eq!(reports[0].2, "demo panic: SayHello was asked to panic");
    assert_eq!(
        panics(&snapshotter)[0],
        (("palisade.demo.v1.Greeter".into(), "SayHello".into()), 1)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_wire_a_stream_sends_one_reply_then_internal_while_others_complete() {
    let reports = Reports::default();
    let (recorder, snapshotter) = recorder();
    let server = palisade_demo::spawn(layer(&reports, recorder).build()).await;
    let channel = server.channel().await;
    let mut client = palisade_demo::pb::greeter_client::GreeterClient::new(channel.clone());

    // The stream's first reply is the event: its handler is running, its panic next.
    let mut stream = client
        .say_hello_stream(panicking("Ada"))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.message, "Hello, Ada!");

    // Meanwhile, on the same channel: ordinary calls and other panicking calls, concurrently.
    let calls = (0..8).map(|i| {
        let mut client = palisade_demo::pb::greeter_client::GreeterClient::new(channel.clone());
        async move {
            let request = if i % 4 == 0 {
                panicking("P")
            } else {
                hello(&format!("n{i}"))
            };
            (i, client.say_hello(request).await)
        }
    });
    let streamed = async {
        let next = stream.next().await;
        let end = stream.next().await;
        (next, end)
    };
    let (answers, (next, end)) = tokio::join!(join_all(calls), streamed);
    for (i, answer) in answers {
        if i % 4 == 0 {
            let status = answer.unwrap_err();
            assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
            assert_eq!(status.message(), "internal error");
        } else {
            assert_eq!(answer.unwrap().get_ref().message, format!("Hello, n{i}!"));
        }
    }
    let status = next.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert_eq!(status.message(), "internal error");
    assert!(end.is_none());

    // After it all, the channel still answers.
    assert_eq!(
        client
            .say_hello(hello("after"))
            .await
            .unwrap()
            .get_ref()
            .message,
        "Hello, after!"
    );
    let mut stages: Vec<_> = reports
        .taken()
        .into_iter()
        .map(|(_, method, _, stage)| (method, stage))
        .collect();
    stages.sort_by_key(|(method, _)| method.clone());
    assert_eq!(
        stages,
        [
            ("SayHello".into(), PanicStage::ResponseFuture),
            ("SayHello".into(), PanicStage::ResponseFuture),
            ("SayHelloStream".into(), PanicStage::ResponseBody),
        ]
    );
    assert_eq!(
        panics(&snapshotter),
        [
            (("palisade.demo.v1.Greeter".into(), "SayHello".into()), 2),
            (
                ("palisade.demo.v1.Greeter".into(), "SayHelloStream".into()),
                1
            ),
            (("unknown".into(), "unknown".into()), 0),
        ]
    );
    server.shutdown().await;
}
