//! The access log's line, byte for byte: what `LoggingBuilder::access_log` writes for a few
//! calls in process (server and client, start and finish lines, every optional field), with
//! only the clock's values masked. The line is a format people parse: a change to its bytes
//! shows here.

use std::{
    convert::Infallible,
    io::{self, Write},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http::{Request, Response};
use http_body_util::BodyExt;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use palisade_core::{Code, MethodRegistry, MethodType, Peer, Rejection};
use palisade_demo::frames::{GrpcBody, unary_service};
use palisade_logging::{LoggingLayer, writer::non_blocking};
use tower::{Layer, Service, ServiceExt, service_fn};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::prelude::*;

const SAY_HELLO: &str = palisade_demo::SAY_HELLO;

/// A shared in-memory sink.
#[derive(Clone, Default)]
struct Memory(Arc<Mutex<Vec<u8>>>);

impl Write for Memory {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn registry() -> MethodRegistry {
    MethodRegistry::new().with_method("palisade.demo.v1.Greeter/SayHello", MethodType::Unary)
}

fn request(uri: &str) -> Request<GrpcBody> {
    Request::post(uri)
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "5S")
        .header("x-request-id", "req-\"42\"")
        .header("authorization", "Bearer secret-token")
        .body(GrpcBody::new(
            [palisade_demo::frames::message(b"\x0a\x01x")],
            None,
        ))
        .unwrap()
}

fn otel_context() -> opentelemetry::Context {
    opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// Calls the service (with `cx` current while it is called) and reads the response to its end.
async fn call<S, B>(service: S, request: Request<GrpcBody>, cx: Option<opentelemetry::Context>)
where
    S: Service<Request<GrpcBody>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let mut service = service;
    let service = service.ready().await.unwrap();
    let future = {
        let _attached = cx.map(opentelemetry::Context::attach);
        service.call(request)
    };
    let response = future.await.unwrap();
    response.into_body().collect().await.unwrap();
}

/// The lines written while `calls` runs, the clock's values masked.
async fn lines<F: Future<Output = ()>>(
    calls: impl FnOnce(palisade_logging::writer::LogWriter) -> F,
) -> String {
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(LevelFilter::TRACE));
    let sink = Memory::default();
    let (writer, guard) = non_blocking(sink.clone());
    calls(writer).await;
    drop(guard);
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not one JSON line ({e}): {line}"));
    }
    mask(&text)
}

/// The trace ids the lines carry, with the `opentelemetry` feature.
const TRACE_FIELDS: &str =
    r#","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7""#;

/// The lines expected, without trace ids when the feature is off.
fn expected(lines: &str) -> String {
    if cfg!(feature = "opentelemetry") {
        lines.to_owned()
    } else {
        lines.replace(TRACE_FIELDS, "")
    }
}

/// `timestamp`, `grpc.time_ms` and `grpc.request.deadline` with their values replaced by `_`.
fn mask(text: &str) -> String {
    let mut out = text.to_owned();
    for key in [
        "\"timestamp\":",
        "\"grpc.time_ms\":",
        "\"grpc.request.deadline\":",
    ] {
        let mut from = 0;
        while let Some(at) = out[from..].find(key) {
            let start = from + at + key.len();
            let end = start
                + out[start..]
                    .find([',', '}'])
                    .expect("a value ends the field");
            out.replace_range(start..end, "_");
            from = start;
        }
    }
    out
}

#[tokio::test]
async fn server_lines() {
    let text = lines(|writer| async move {
        let layer = LoggingLayer::server()
            .registry(registry())
            .allow_metadata(["x-request-id"])
            .log_start(true)
            .access_log(writer)
            .build();
        // Known method, IPv4 peer, deadline, metadata, trace ids.
        let mut ok = request(SAY_HELLO);
        ok.extensions_mut().insert(Peer::from_addr(
            "10.1.2.3:4567".parse::<SocketAddr>().unwrap(),
        ));
        call(
            layer.layer(unary_service(Code::Ok)),
            ok,
            Some(otel_context()),
        )
        .await;
        // Unknown method, IPv6 peer, an error whose message needs escaping.
        let failing = service_fn(
            |_: Request<palisade_logging::RequestBody<GrpcBody>>| async {
                Ok::<_, Infallible>(
                    Rejection::new(Code::Internal, "bad \"thing\"\n\\ happened")
                        .into_response::<GrpcBody>(),
                )
            },
        );
        let mut unknown = request("/pkg.v2.Other/Do_It");
        unknown.extensions_mut().insert(Peer::from_addr(
            "[::1]:50051".parse::<SocketAddr>().unwrap(),
        ));
        call(layer.layer(failing), unknown, None).await;
    })
    .await;
    assert_eq!(
        text,
        expected(concat!(
            r#"{"timestamp":_,"level":"INFO","message":"started call","grpc.component":"server","grpc.service":"palisade.demo.v1.Greeter","grpc.method":"SayHello","grpc.method_type":"unary","peer.address":"10.1.2.3:4567","grpc.request.deadline":_,"grpc.request.metadata":"{\"x-request-id\": \"req-\\\"42\\\"\"}","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","target":"palisade_logging"}"#,
            "\n",
            r#"{"timestamp":_,"level":"INFO","message":"finished call","grpc.component":"server","grpc.service":"palisade.demo.v1.Greeter","grpc.method":"SayHello","grpc.method_type":"unary","grpc.code":"OK","grpc.time_ms":_,"peer.address":"10.1.2.3:4567","grpc.request.deadline":_,"grpc.request.messages":0,"grpc.response.messages":1,"grpc.request.metadata":"{\"x-request-id\": \"req-\\\"42\\\"\"}","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","target":"palisade_logging"}"#,
            "\n",
            r#"{"timestamp":_,"level":"INFO","message":"started call","grpc.component":"server","grpc.service":"pkg.v2.Other","grpc.method":"Do_It","peer.address":"[::1]:50051","grpc.request.deadline":_,"grpc.request.metadata":"{\"x-request-id\": \"req-\\\"42\\\"\"}","target":"palisade_logging"}"#,
            "\n",
            r#"{"timestamp":_,"level":"ERROR","message":"finished call","grpc.component":"server","grpc.service":"pkg.v2.Other","grpc.method":"Do_It","grpc.code":"Internal","grpc.message":"bad \"thing\"\n\\ happened","grpc.time_ms":_,"peer.address":"[::1]:50051","grpc.request.deadline":_,"grpc.request.messages":0,"grpc.response.messages":0,"grpc.request.metadata":"{\"x-request-id\": \"req-\\\"42\\\"\"}","palisade.rejected_by":"palisade","target":"palisade_logging"}"#,
            "\n",
        ))
    );
    assert!(!text.contains("secret-token"), "{text}");
}

#[tokio::test]
async fn client_lines() {
    let text = lines(|writer| async move {
        let layer = LoggingLayer::client()
            .registry(registry())
            .access_log(writer.clone())
            .build();
        let uri = "http://greeter.example:50051/palisade.demo.v1.Greeter/SayHello";
        call(
            layer.layer(unary_service(Code::Ok)),
            request(uri),
            Some(otel_context()),
        )
        .await;
        // Without an authority, without a registry.
        let layer = LoggingLayer::client().access_log(writer).build();
        call(
            layer.layer(unary_service(Code::NotFound)),
            request(SAY_HELLO),
            None,
        )
        .await;
    })
    .await;
    assert_eq!(
        text,
        expected(concat!(
            r#"{"timestamp":_,"level":"DEBUG","message":"finished call","grpc.component":"client","grpc.service":"palisade.demo.v1.Greeter","grpc.method":"SayHello","grpc.method_type":"unary","grpc.code":"OK","grpc.time_ms":_,"peer.address":"greeter.example:50051","grpc.request.deadline":_,"grpc.response.messages":1,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","target":"palisade_logging"}"#,
            "\n",
            r#"{"timestamp":_,"level":"DEBUG","message":"finished call","grpc.component":"client","grpc.service":"palisade.demo.v1.Greeter","grpc.method":"SayHello","grpc.code":"NotFound","grpc.time_ms":_,"grpc.request.deadline":_,"grpc.response.messages":1,"target":"palisade_logging"}"#,
            "\n",
        ))
    );
}
