//! The layer around in-process services: what is current while the inner future and body are
//! polled, how early drops and errors end the span, what the client injects.

mod support;

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context as TaskContext, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use opentelemetry::{
    Context, Value,
    trace::{
        Span as _, SpanId, SpanKind, Status as SpanStatus, TraceContextExt, TraceId, Tracer as _,
    },
};
use palisade_demo::frames::{message, trailers};
use palisade_trace::{attribute, current_span_id, current_trace_id};
use support::*;
use tonic::Code;
use tower::{Layer, Service, ServiceExt};

type Seen = Arc<Mutex<Vec<String>>>;

/// Yields `Pending` once (waking itself) before each step.
#[derive(Default)]
struct Stutter(bool);

impl Stutter {
    fn poll(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        self.0 = !self.0;
        if self.0 {
            cx.waker().wake_by_ref();
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

/// A response body of two messages and trailers, pausing before every frame, noting the
/// current trace id at every poll.
struct ProbeBody {
    frames: Vec<Frame<Bytes>>,
    stutter: Stutter,
    seen: Seen,
}

impl Body for ProbeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.frames.is_empty() {
            // Polled again after the trailers (the span is over).
            return Poll::Ready(None);
        }
        self.seen.lock().unwrap().push(current_trace_id());
        if self.stutter.poll(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(self.frames.pop().map(Ok))
    }
}

/// A service answering after a pause, noting the current trace id at every poll of its future
/// and the request headers it got.
#[derive(Clone)]
struct Probe {
    seen: Seen,
    headers: Arc<Mutex<Option<HeaderMap>>>,
    code: Code,
}

impl Probe {
    fn new(code: Code) -> Self {
        Self {
            seen: Seen::default(),
            headers: Arc::default(),
            code,
        }
    }
}

struct ProbeFuture {
    stutter: Stutter,
    seen: Seen,
    code: Code,
}

impl Future for ProbeFuture {
    type Output = Result<Response<ProbeBody>, tonic::Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        self.seen.lock().unwrap().push(current_trace_id());
        if self.stutter.poll(cx).is_pending() {
            return Poll::Pending;
        }
        if self.code == Code::Unavailable {
            return Poll::Ready(Err(tonic::Status::unavailable("inner error")));
        }
        let frames = vec![
            Frame::trailers(trailers(self.code, Some("probe"))),
            Frame::data(message(b"two")),
            Frame::data(message(b"one")),
        ];
        Poll::Ready(Ok(Response::new(ProbeBody {
            frames,
            stutter: Stutter::default(),
            seen: self.seen.clone(),
        })))
    }
}

impl<B> Service<Request<B>> for Probe {
    type Response = Response<ProbeBody>;
    type Error = tonic::Status;
    type Future = ProbeFuture;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> ProbeFuture {
        self.seen.lock().unwrap().push(current_trace_id());
        *self.headers.lock().unwrap() = Some(request.headers().clone());
        ProbeFuture {
            stutter: Stutter::default(),
            seen: self.seen.clone(),
            code: self.code,
        }
    }
}

fn request(path: &str) -> Request<()> {
    Request::builder().uri(path).body(()).unwrap()
}

#[tokio::test]
async fn the_span_is_current_in_call_in_every_future_poll_and_every_body_poll() {
    let telemetry = Telemetry::new();
    let probe = Probe::new(Code::Ok);
    // A server names spans after the registry's methods (without one, a method's first few
    // spans are `grpc` until it has earned its name).
    let registry = palisade_core::MethodRegistry::from_encoded_file_descriptor_set(
        palisade_demo::FILE_DESCRIPTOR_SET,
    )
    .unwrap();
    let service = telemetry
        .server_builder()
        .registry(registry)
        .build()
        .layer(probe.clone());

    let response = service
        .oneshot(request(&format!("/{SAY_HELLO}")))
        .await
        .unwrap();
    assert_eq!(current_trace_id(), "", "not current outside the polls");
    assert!(telemetry.spans().is_empty(), "not over at the headers");
    let body = response.into_body().collect().await.unwrap();
    assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(current_trace_id(), "");

    let spans = telemetry.spans();
    let span = only(&spans, SpanKind::Server);
    let seen = probe.seen.lock().unwrap().clone();
    // call, two future polls, two polls for each of three frames.
    assert_eq!(seen.len(), 1 + 2 + 6, "{seen:?}");
    assert!(
        seen.iter().all(|id| *id == trace_id(span).to_string()),
        "{seen:?}"
    );
    assert_eq!(span.name, SAY_HELLO);
    assert_eq!(
        attr(span, attribute::RPC_GRPC_STATUS_CODE),
        Some(&Value::I64(0))
    );
}

#[tokio::test]
async fn a_body_dropped_early_ends_the_span_cancelled() {
    // The server's and the client's services are of different types: one body for both.
    macro_rules! drop_body_early {
        ($telemetry:expr, $layer:expr, $kind:expr) => {{
            let (telemetry, kind): (&Telemetry, SpanKind) = (&$telemetry, $kind);
            let service = $layer.layer(Probe::new(Code::Ok));
            let response = service
                .oneshot(request(&format!("/{SAY_HELLO}")))
                .await
                .unwrap();
            let mut body = response.into_body();
            let first = body.frame().await.unwrap().unwrap();
            assert_eq!(first.into_data().unwrap(), message(b"one"));
            assert!(telemetry.spans().is_empty());
            drop(body);

            let spans = telemetry.spans();
            let span = only(&spans, kind.clone());
            assert_eq!(
                attr(span, attribute::RPC_GRPC_STATUS_CODE),
                Some(&Value::I64(Code::Cancelled as i64))
            );
            // Cancelled is not a server error, but any non-OK code fails a client span.
            assert_eq!(
                matches!(span.status, SpanStatus::Error { .. }),
                kind == SpanKind::Client
            );
        }};
    }
    let telemetry = Telemetry::new();
    drop_body_early!(telemetry, telemetry.server_layer(), SpanKind::Server);
    let telemetry = Telemetry::new();
    drop_body_early!(
        telemetry,
        telemetry.client_layer("127.0.0.1:1".parse().unwrap()),
        SpanKind::Client
    );
}

#[tokio::test]
async fn an_inner_error_ends_the_span_with_its_status() {
    let telemetry = Telemetry::new();
    let service = telemetry
        .server_layer()
        .layer(Probe::new(Code::Unavailable));
    let Err(error) = service.oneshot(request(&format!("/{SAY_HELLO}"))).await else {
        panic!("the inner error goes through");
    };
    assert_eq!(
        error.code(),
        Code::Unavailable,
        "the inner error type, unchanged"
    );

    let spans = telemetry.spans();
    let span = only(&spans, SpanKind::Server);
    assert_eq!(
        attr(span, attribute::RPC_GRPC_STATUS_CODE),
        Some(&Value::I64(Code::Unavailable as i64))
    );
    assert_eq!(
        span.status,
        SpanStatus::Error {
            description: "inner error".into()
        }
    );
}

#[tokio::test]
async fn the_client_injects_a_child_of_the_current_context() {
    let telemetry = Telemetry::new();
    let probe = Probe::new(Code::Ok);
    let service = telemetry
        .client_layer("127.0.0.1:1".parse().unwrap())
        .layer(probe.clone());

    let tracer = opentelemetry::trace::TracerProvider::tracer(&telemetry.provider, "test");
    let parent = Context::current_with_span(tracer.start("parent"));
    let parent_id = parent.span().span_context().span_id();
    let response = {
        let future = service.oneshot(request(&format!("/{SAY_HELLO}")));
        opentelemetry::context::FutureExt::with_context(future, parent.clone()).await
    };
    response.unwrap().into_body().collect().await.unwrap();
    parent.span().end();

    let spans = telemetry.spans();
    let client_span = only(&spans, SpanKind::Client);
    assert_eq!(client_span.parent_span_id, parent_id);
    let headers = probe.headers.lock().unwrap().take().unwrap();
    let traceparent = headers["traceparent"].to_str().unwrap();
    assert_eq!(
        traceparent,
        format!("00-{}-{}-01", trace_id(client_span), span_id(client_span))
    );
    // What the inner service (the channel) runs under is the client span.
    let seen = probe.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 9, "{seen:?}");
    assert!(
        seen.iter()
            .all(|id| *id == trace_id(client_span).to_string()),
        "{seen:?}"
    );
}

#[tokio::test]
async fn the_server_continues_the_incoming_trace() {
    let telemetry = Telemetry::new();
    let service = telemetry.server_layer().layer(Probe::new(Code::Ok));
    let mut request = request(&format!("/{SAY_HELLO}"));
    request.headers_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let response = service.oneshot(request).await.unwrap();
    response.into_body().collect().await.unwrap();

    let spans = telemetry.spans();
    let span = only(&spans, SpanKind::Server);
    assert_eq!(
        trace_id(span),
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
    );
    assert_eq!(
        span.parent_span_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap()
    );
    assert!(span.parent_span_is_remote);
}

/// `new_root_for`: the calls it selects start a new root linked to the incoming span, the
/// others continue the incoming trace; two calls of it add up, and `Matcher::any()` selects
/// every call.
#[tokio::test]
async fn new_root_for_selects_the_calls_that_start_a_new_root() {
    const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let incoming = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let cases = [
        // (matchers, path, a new root)
        (
            vec![palisade_core::Matcher::method(SAY_HELLO)],
            SAY_HELLO,
            true,
        ),
        (
            vec![palisade_core::Matcher::method(SAY_HELLO)],
            SAY_HELLO_STREAM,
            false,
        ),
        (
            vec![
                palisade_core::Matcher::method(SAY_HELLO),
                palisade_core::Matcher::method(SAY_HELLO_STREAM),
            ],
            SAY_HELLO_STREAM,
            true,
        ),
        (vec![palisade_core::Matcher::any()], SAY_HELLO_STREAM, true),
        (vec![], SAY_HELLO, false),
    ];
    for (matchers, path, new_root) in cases {
        let telemetry = Telemetry::new();
        let builder = matchers
            .into_iter()
            .fold(telemetry.server_builder(), |builder, matcher| {
                builder.new_root_for(matcher)
            });
        let service = builder.build().layer(Probe::new(Code::Ok));
        let mut request = request(&format!("/{path}"));
        request
            .headers_mut()
            .insert("traceparent", INCOMING.parse().unwrap());
        let response = service.oneshot(request).await.unwrap();
        response.into_body().collect().await.unwrap();

        let spans = telemetry.spans();
        let span = only(&spans, SpanKind::Server);
        let linked: Vec<_> = span
            .links
            .iter()
            .map(|l| l.span_context.trace_id())
            .collect();
        if new_root {
            assert_ne!(trace_id(span), incoming, "{path}: a new trace");
            assert_eq!(span.parent_span_id, SpanId::INVALID, "{path}: a root");
            assert_eq!(linked, [incoming], "{path}: linked to the incoming span");
        } else {
            assert_eq!(trace_id(span), incoming, "{path}: the incoming trace");
            assert!(linked.is_empty(), "{path}: no link");
        }
    }
}

#[tokio::test]
async fn paths_that_are_not_methods_get_a_low_cardinality_name() {
    let telemetry = Telemetry::new();
    let service = telemetry.server_layer().layer(Probe::new(Code::Ok));
    let response = service
        .oneshot(request("/no/such/method/123"))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();

    let spans = telemetry.spans();
    let span = only(&spans, SpanKind::Server);
    assert_eq!(span.name, "grpc");
    assert_eq!(
        attr(span, attribute::RPC_SYSTEM),
        Some(&Value::from("grpc"))
    );
    assert_eq!(attr(span, attribute::RPC_SERVICE), None);
}

#[tokio::test]
async fn current_ids_read_the_current_context() {
    let telemetry = Telemetry::new();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&telemetry.provider, "test");
    let span = tracer.start("s");
    let (trace, id) = (
        span.span_context().trace_id(),
        span.span_context().span_id(),
    );
    let _guard = Context::current_with_span(span).attach();
    assert_eq!(current_trace_id(), trace.to_string());
    assert_eq!(current_span_id(), id.to_string());
}

#[tokio::test]
async fn the_server_span_carries_the_facts_inner_layers_wrote_into_the_record() {
    use palisade_core::{Rejection, Rpc};

    // An inner layer (jwt, as a handler here) writes the verified subject.
    let telemetry = Telemetry::new();
    let handler = tower::service_fn(|request: Request<()>| async move {
        let rpc = Rpc::of(&request).expect("a recording span made the record");
        assert!(rpc.set_subject("alice".into()));
        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
            Bytes::from_static(b""),
        )))
    });
    let service = telemetry.server_layer().layer(handler);
    let response = service
        .oneshot(request(&format!("/{SAY_HELLO}")))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
    let spans = telemetry.spans();
    let span = only(&spans, SpanKind::Server);
    assert_eq!(
        attr(span, attribute::ENDUSER_ID),
        Some(&Value::from("alice"))
    );
    assert_eq!(attr(span, attribute::PALISADE_REJECTED_BY), None);

    // An inner layer answers itself: its mark names it.
    let telemetry = Telemetry::new();
    let handler = tower::service_fn(|_: Request<()>| async {
        Ok::<_, std::convert::Infallible>(
            Rejection::new(Code::ResourceExhausted, "over quota")
                .by("ratelimit")
                .into_response::<http_body_util::Full<Bytes>>(),
        )
    });
    let service = telemetry.server_layer().layer(handler);
    service
        .oneshot(request(&format!("/{SAY_HELLO}")))
        .await
        .unwrap();
    let spans = telemetry.spans();
    let span = only(&spans, SpanKind::Server);
    assert_eq!(attr(span, attribute::ENDUSER_ID), None);
    assert_eq!(
        attr(span, attribute::PALISADE_REJECTED_BY),
        Some(&Value::from("ratelimit"))
    );
}

#[tokio::test]
async fn an_unsampled_rpc_makes_no_record() {
    let telemetry = Telemetry::with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOff);
    let handler = tower::service_fn(|request: Request<()>| async move {
        assert!(
            palisade_core::Rpc::of(&request).is_none(),
            "nothing reads it"
        );
        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
            Bytes::from_static(b""),
        )))
    });
    let service = telemetry.server_layer().layer(handler);
    let response = service
        .oneshot(request(&format!("/{SAY_HELLO}")))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
    assert!(telemetry.spans().is_empty());
}

#[tokio::test]
async fn a_client_span_says_how_many_attempts_a_retry_layer_made() {
    use palisade_core::Rpc;

    for (attempts, expected) in [(3, Some(Value::I64(3))), (1, None)] {
        let telemetry = Telemetry::new();
        // What palisade-retry writes into the record as it starts each attempt.
        let channel = tower::service_fn(move |request: Request<()>| async move {
            let rpc = Rpc::of(&request).expect("a recording span made the record");
            rpc.set_attempts(attempts);
            Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                Bytes::from_static(b""),
            )))
        });
        let service = telemetry
            .client_layer("127.0.0.1:50051".parse().unwrap())
            .layer(channel);
        let response = service
            .oneshot(request(&format!("/{SAY_HELLO}")))
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
        let spans = telemetry.spans();
        let span = only(&spans, SpanKind::Client);
        assert_eq!(attr(span, attribute::PALISADE_ATTEMPTS), expected.as_ref());
    }
}
