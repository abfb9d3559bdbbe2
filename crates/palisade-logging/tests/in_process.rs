//! In process: non-gRPC requests, drops, service errors, bounded messages, sampling, levels.

mod support;

use std::{
    convert::Infallible,
    future::{Future, pending},
    task::{Context, Waker},
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use palisade_core::{Code, Rejection};
use palisade_demo::frames::{GrpcBody, unary_service};
use palisade_logging::{LoggingBuilder, LoggingLayer};
use serde_json::json;
use support::{Buffer, Capture};
use tower::{Layer, Service, ServiceExt, service_fn};
use tracing::Level;
use tracing_subscriber::{filter::LevelFilter, prelude::*};

const SAY_HELLO: &str = palisade_demo::SAY_HELLO;

/// What a server layer's inner service receives.
type ServerBody = palisade_logging::RequestBody<GrpcBody>;

fn grpc_request(path: &str) -> Request<GrpcBody> {
    Request::post(path)
        .header("content-type", "application/grpc")
        .body(GrpcBody::new(
            [palisade_demo::frames::message(b"\x0a\x01x")],
            None,
        ))
        .unwrap()
}

/// Calls a service and collects the whole response.
async fn call<S, B, ResBody>(
    service: &mut S,
    request: Request<B>,
) -> (http::response::Parts, Bytes, Option<HeaderMap>)
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: std::fmt::Debug,
    ResBody: http_body::Body,
    ResBody::Error: std::fmt::Debug,
{
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (parts, collected.to_bytes(), trailers)
}

#[tokio::test]
async fn non_grpc_requests_pass_through_unchanged() {
    let (capture, _guard) = Capture::install();
    let layer = LoggingLayer::server()
        .log_start(true)
        .levels(|_| Level::TRACE)
        .span_level(Level::TRACE)
        .build();
    let requests = || {
        let http1_get = Request::builder()
            .method(Method::GET)
            .version(Version::HTTP_11)
            .uri("/")
            .body(GrpcBody::default())
            .unwrap();
        [
            http1_get,
            grpc_request("/"),
            grpc_request("/palisade.demo.v1.Greeter"),
            grpc_request("/a/b/c"),
            grpc_request("//SayHello"),
            // A gRPC path without a gRPC content type.
            Request::post(SAY_HELLO).body(GrpcBody::default()).unwrap(),
        ]
    };
    let mut bare = unary_service(Code::Ok);
    let mut logged = layer.layer(unary_service(Code::Ok));
    for (bare_request, request) in requests().into_iter().zip(requests()) {
        let expected = call(&mut bare, bare_request).await;
        let (parts, body, trailers) = call(&mut logged, request).await;
        assert_eq!(parts.status, expected.0.status);
        assert_eq!(parts.version, expected.0.version);
        assert_eq!(parts.headers, expected.0.headers);
        assert_eq!((body, trailers), (expected.1, expected.2));
    }
    // Nothing logged, no span opened.
    assert!(capture.events().is_empty(), "{:#?}", capture.events());

    // The client side lets them through as well.
    let mut logged = LoggingLayer::client()
        .levels(|_| Level::TRACE)
        .build()
        .layer(unary_service(Code::Ok));
    for request in requests() {
        let (parts, _, trailers) = call(&mut logged, request).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert!(trailers.is_some());
    }
    assert!(capture.events().is_empty(), "{:#?}", capture.events());
}

#[tokio::test]
async fn a_grpc_call_in_process_is_logged_at_its_trailers() {
    let (capture, _guard) = Capture::install();
    let mut service = LoggingLayer::server()
        .build()
        .layer(unary_service(Code::Ok));
    let response = service.call(grpc_request(SAY_HELLO)).await.unwrap();
    assert!(capture.logged().is_empty(), "not over at the headers");
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    let events = capture.logged();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].str("grpc.code"), "OK");
    // The request body was never read by the bare service.
    assert_eq!(events[0].field("grpc.request.messages"), Some(&json!(0)));
    assert_eq!(events[0].field("grpc.response.messages"), Some(&json!(1)));
    assert!(events[0].field("peer.address").is_none());
}

#[tokio::test]
async fn a_dropped_call_is_canceled() {
    let (capture, _guard) = Capture::install();
    let never =
        service_fn(|_: Request<ServerBody>| pending::<Result<Response<GrpcBody>, Infallible>>());
    let mut service = LoggingLayer::server().build().layer(never);
    let mut future = Box::pin(service.call(grpc_request(SAY_HELLO)));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(future.as_mut().poll(&mut cx).is_pending());
    assert!(capture.logged().is_empty());
    drop(future);

    let events = capture.logged();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].level, Level::INFO);
    assert_eq!(events[0].str("grpc.code"), "Canceled");
    assert_eq!(events[0].field("grpc.response.messages"), Some(&json!(0)));
}

#[tokio::test]
async fn a_response_body_dropped_mid_stream_is_canceled() {
    let (capture, _guard) = Capture::install();
    let stream = service_fn(|_: Request<ServerBody>| async {
        let frames = (0..3).map(|_| palisade_demo::frames::message(b"hi"));
        let body = GrpcBody::new(
            frames,
            Some(palisade_demo::frames::trailers(Code::Ok, None)),
        );
        Ok::<_, Infallible>(Response::new(body))
    });
    let mut service = LoggingLayer::server().build().layer(stream);
    let response = service.call(grpc_request(SAY_HELLO)).await.unwrap();
    let mut body = Box::pin(response.into_body());
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap().len(), 7);
    drop(body);

    let events = capture.logged();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].str("grpc.code"), "Canceled");
    assert_eq!(events[0].field("grpc.response.messages"), Some(&json!(1)));
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::test]
async fn a_client_transport_error_is_unavailable_and_keeps_the_error() {
    let (capture, _guard) = Capture::install();
    let failing = service_fn(|_: Request<GrpcBody>| async {
        Err::<Response<GrpcBody>, BoxError>(std::io::Error::other("connection refused").into())
    });
    let mut service = LoggingLayer::client().build().layer(failing);
    let error = service.call(grpc_request(SAY_HELLO)).await.unwrap_err();
    assert_eq!(error.to_string(), "connection refused");

    let events = capture.logged();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].level, Level::WARN);
    assert_eq!(events[0].str("grpc.component"), "client");
    assert_eq!(events[0].str("grpc.code"), "Unavailable");
    assert_eq!(events[0].str("grpc.message"), "connection refused");
}

#[tokio::test]
async fn grpc_message_is_bounded() {
    let (capture, _guard) = Capture::install();
    let long = format!("{}é{}", "x".repeat(63), "y".repeat(10_000));
    let rejecting = service_fn(move |_: Request<ServerBody>| {
        let rejection = Rejection::new(Code::Internal, long.clone());
        async move { Ok::<_, Infallible>(rejection.into_response::<GrpcBody>()) }
    });
    let mut service = LoggingLayer::server()
        .max_message_len(64)
        .build()
        .layer(rejecting);
    let (parts, _, _) = call(&mut service, grpc_request(SAY_HELLO)).await;
    assert_eq!(parts.headers["grpc-status"], "13");

    let events = capture.logged();
    assert_eq!(events[0].level, Level::ERROR);
    // 64 bytes would split the 2-byte `é`: cut before it.
    assert_eq!(
        events[0].str("grpc.message"),
        format!("{}…", "x".repeat(63))
    );
}

#[tokio::test]
async fn one_in_n_ok_calls_is_logged_and_every_error() {
    let (capture, _guard) = Capture::install();
    let layer = LoggingLayer::server().sample_ok(3).build();
    let (mut ok, mut failing) = (
        layer.layer(unary_service(Code::Ok)),
        layer.layer(unary_service(Code::Aborted)),
    );
    for _ in 0..6 {
        call(&mut ok, grpc_request(SAY_HELLO)).await;
        call(&mut failing, grpc_request(SAY_HELLO)).await;
    }
    let events = capture.logged();
    let codes: Vec<_> = events.iter().map(|e| e.str("grpc.code")).collect();
    assert_eq!(codes.iter().filter(|c| **c == "OK").count(), 2, "{codes:?}");
    assert_eq!(
        codes.iter().filter(|c| **c == "Aborted").count(),
        6,
        "{codes:?}"
    );
}

#[tokio::test]
async fn levels_are_replaceable() {
    let (capture, _guard) = Capture::install();
    let layer = LoggingLayer::server()
        .levels(|code| match code {
            Code::Ok => Level::TRACE,
            _ => Level::ERROR,
        })
        .log_start(true)
        .build();
    call(
        &mut layer.layer(unary_service(Code::Ok)),
        grpc_request(SAY_HELLO),
    )
    .await;
    call(
        &mut layer.layer(unary_service(Code::NotFound)),
        grpc_request(SAY_HELLO),
    )
    .await;
    let levels: Vec<_> = capture
        .logged()
        .iter()
        .map(|e| (e.str("message").to_owned(), e.level))
        .collect();
    assert_eq!(
        levels,
        [
            ("started call".to_owned(), Level::TRACE),
            ("finished call".to_owned(), Level::TRACE),
            ("started call".to_owned(), Level::TRACE),
            ("finished call".to_owned(), Level::ERROR),
        ]
    );
}

#[tokio::test]
async fn nothing_is_written_when_the_levels_are_disabled() {
    let capture = Capture::new();
    let subscriber =
        tracing_subscriber::registry().with(capture.clone().with_filter(LevelFilter::WARN));
    let _guard = tracing::subscriber::set_default(subscriber);
    // Every code at INFO: nothing this layer writes is enabled, the call passes through.
    let mut service = LoggingLayer::server()
        .levels(|_| Level::INFO)
        .log_start(true)
        .build()
        .layer(unary_service(Code::Internal));
    let (_, body, trailers) = call(&mut service, grpc_request(SAY_HELLO)).await;
    assert_eq!(trailers.unwrap()["grpc-status"], "13");
    assert_eq!(body.len(), 5 + 17);
    assert!(capture.events().is_empty());

    // With the defaults, the Internal error is an ERROR and gets through the filter.
    let mut service = LoggingLayer::server()
        .build()
        .layer(unary_service(Code::Internal));
    call(&mut service, grpc_request(SAY_HELLO)).await;
    assert_eq!(capture.logged().len(), 1);
    assert_eq!(capture.logged()[0].level, Level::ERROR);
}

#[tokio::test]
async fn json_lines_are_flat_and_written_beside_the_span() {
    let output = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(output.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut service = LoggingLayer::server()
        .build()
        .layer(unary_service(Code::NotFound));
    call(&mut service, grpc_request(SAY_HELLO)).await;

    let text = output.text();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    let line = &lines[0];
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["target"], "palisade_logging");
    // Not inside the RPC's own span, whose fields it repeats.
    assert!(
        line.get("span").is_none() && line.get("spans").is_none(),
        "{line}"
    );
    let fields = line["fields"].as_object().unwrap();
    let keys: Vec<_> = fields.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "grpc.code",
            "grpc.component",
            "grpc.method",
            "grpc.request.messages",
            "grpc.response.messages",
            "grpc.service",
            "grpc.time_ms",
            "message",
        ]
    );
    assert_eq!(fields["grpc.code"], "NotFound");
    assert_eq!(fields["grpc.service"], "palisade.demo.v1.Greeter");
    assert!(fields["grpc.time_ms"].is_f64());
    assert_eq!(fields["grpc.response.messages"], 1);
}

/// A unary handler that reports the per-RPC record it sees.
fn recording_handler(
    seen: std::sync::mpsc::Sender<Option<(palisade_core::Side, std::time::Instant)>>,
) -> impl Service<Request<ServerBody>, Response = Response<GrpcBody>, Error = Infallible> {
    service_fn(move |request: Request<ServerBody>| {
        let record = palisade_core::Rpc::of(&request).map(|rpc| (rpc.side(), rpc.start()));
        seen.send(record).unwrap();
        let body = GrpcBody::new(
            [palisade_demo::frames::message(b"hi")],
            Some(palisade_demo::frames::trailers(Code::Ok, None)),
        );
        async move { Ok::<_, Infallible>(Response::new(body)) }
    })
}

#[tokio::test]
async fn a_logged_call_carries_a_record_and_is_timed_from_its_start() {
    let (capture, _guard) = Capture::install();
    let (tx, seen) = std::sync::mpsc::channel();
    let mut service = LoggingLayer::server().build().layer(recording_handler(tx));

    // Without a record from outside, the layer makes one for the handler and the layers inside.
    call(&mut service, grpc_request(SAY_HELLO)).await;
    let (side, _) = seen.recv().unwrap().expect("logging made the record");
    assert_eq!(side, palisade_core::Side::Server);

    // A record made outside (RecordLayer, another layer) is used, not replaced: the call is
    // timed from its start.
    let start = std::time::Instant::now()
        .checked_sub(std::time::Duration::from_secs(2))
        .unwrap();
    let mut request = grpc_request(SAY_HELLO);
    request
        .extensions_mut()
        .insert(palisade_core::Rpc::starting_at(
            palisade_core::Side::Server,
            start,
        ));
    call(&mut service, request).await;
    assert_eq!(
        seen.recv().unwrap(),
        Some((palisade_core::Side::Server, start))
    );
    let events = capture.logged();
    assert_eq!(events.len(), 2, "{events:#?}");
    let time_ms = events[1].field("grpc.time_ms").and_then(|t| t.as_f64());
    assert!(time_ms.is_some_and(|t| t >= 2000.0), "{events:#?}");
    assert!(
        events[0]
            .field("grpc.time_ms")
            .and_then(|t| t.as_f64())
            .is_some_and(|t| t < 2000.0),
        "{events:#?}"
    );
}

#[tokio::test]
async fn a_call_that_is_not_logged_gets_no_record() {
    let (capture, _guard) = Capture::install();
    let (tx, seen) = std::sync::mpsc::channel();
    let mut service = LoggingLayer::server()
        .skip(palisade_core::Matcher::method(SAY_HELLO))
        .build()
        .layer(recording_handler(tx));

    // Skipped: passed through, and paying for no record.
    call(&mut service, grpc_request(SAY_HELLO)).await;
    assert_eq!(seen.recv().unwrap(), None);
    // Not gRPC: the same.
    let request = Request::post(palisade_demo::SAY_HELLO_STREAM)
        .body(GrpcBody::default())
        .unwrap();
    call(&mut service, request).await;
    assert_eq!(seen.recv().unwrap(), None);
    assert!(capture.events().is_empty(), "{:#?}", capture.events());

    // A logged one next to them does.
    call(&mut service, grpc_request(palisade_demo::SAY_HELLO_STREAM)).await;
    assert!(seen.recv().unwrap().is_some());
    assert_eq!(capture.logged().len(), 1);
}

#[tokio::test]
async fn request_messages_the_handler_reads_are_counted() {
    let (capture, _guard) = Capture::install();
    let reading = service_fn(|request: Request<ServerBody>| async move {
        let read = request.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(read.len(), 3 * 7);
        let body = GrpcBody::new(
            [palisade_demo::frames::message(b"hi")],
            Some(palisade_demo::frames::trailers(Code::Ok, None)),
        );
        Ok::<_, Infallible>(Response::new(body))
    });
    let mut service = LoggingLayer::server().build().layer(reading);
    let request = Request::post(SAY_HELLO)
        .header("content-type", "application/grpc")
        .body(GrpcBody::new(
            (0..3).map(|_| palisade_demo::frames::message(b"hi")),
            None,
        ))
        .unwrap();
    call(&mut service, request).await;
    let events = capture.logged();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].field("grpc.request.messages"), Some(&json!(3)));
    assert_eq!(events[0].field("grpc.response.messages"), Some(&json!(1)));
}

/// A client's span follows its `OK` level (`DEBUG`): at `info`, nothing the channel logs nests
/// under a span nobody would see otherwise; at `debug`, or with `span_level(INFO)`, it does. A
/// server's span stays at `INFO`, over what its handler logs.
#[tokio::test]
async fn a_client_span_follows_its_ok_level_and_a_server_s_is_info() {
    fn logs_inside<B>(_: Request<B>) -> std::future::Ready<Result<Response<GrpcBody>, Infallible>> {
        tracing::info!(target: "inner", "polled inside the call");
        std::future::ready(Ok(Response::new(GrpcBody::new(
            [palisade_demo::frames::message(b"hi")],
            Some(palisade_demo::frames::trailers(Code::Ok, None)),
        ))))
    }
    let client = || LoggingLayer::client();
    let cases: [(&str, LevelFilter, LoggingBuilder<_>, bool); 3] = [
        ("client at info", LevelFilter::INFO, client(), false),
        ("client at debug", LevelFilter::DEBUG, client(), true),
        (
            "client at info, span at INFO",
            LevelFilter::INFO,
            client().span_level(Level::INFO),
            true,
        ),
    ];
    for (case, filter, layer, nested) in cases {
        let capture = Capture::new();
        let subscriber = tracing_subscriber::registry().with(capture.clone().with_filter(filter));
        let _guard = tracing::subscriber::set_default(subscriber);
        call(
            &mut layer.build().layer(service_fn(logs_inside)),
            grpc_request(SAY_HELLO),
        )
        .await;
        let inner = capture.events().into_iter().find(|e| e.target == "inner");
        let spans = inner
            .unwrap_or_else(|| panic!("{case}: no inner event"))
            .spans;
        assert_eq!(!spans.is_empty(), nested, "{case}: {spans:?}");
    }
    let capture = Capture::new();
    let subscriber =
        tracing_subscriber::registry().with(capture.clone().with_filter(LevelFilter::INFO));
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut server = LoggingLayer::server()
        .build()
        .layer(service_fn(logs_inside));
    call(&mut server, grpc_request(SAY_HELLO)).await;
    let inner = capture.events().into_iter().find(|e| e.target == "inner");
    assert_eq!(inner.unwrap().span_names(), ["grpc"]);
}
