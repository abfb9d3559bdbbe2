//! Over the wire: a real tonic server (palisade-demo) and client on 127.0.0.1:0, with a
//! capturing subscriber. Tests run on a current-thread runtime so the server's tasks log to
//! the test's subscriber.

mod support;

use std::{
    future::{Ready, ready},
    net::SocketAddr,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{StreamExt, future::Either};
use http::{Request, Response};
use palisade_core::{Code, Matcher, MethodRegistry, Rejection, side::Server};
use palisade_demo::{FILE_DESCRIPTOR_SET, Greeter, pb::HelloRequest, spawn, spawn_with};
use palisade_logging::{LoggingBuilder, LoggingLayer};
use serde_json::json;
use support::{Buffer, Capture, Captured, finished};
use tower::{Service, ServiceBuilder, layer::layer_fn};
use tracing::Level;
use tracing_subscriber::prelude::*;

fn registry() -> MethodRegistry {
    MethodRegistry::from_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET).unwrap()
}

fn server_builder() -> LoggingBuilder<Server> {
    LoggingLayer::server()
        .registry(registry())
        .skip(Matcher::health_and_reflection())
}

fn server_layer() -> LoggingLayer<Server> {
    server_builder().build()
}

fn hello(name: &str) -> HelloRequest {
    HelloRequest {
        name: name.into(),
        ..Default::default()
    }
}

/// The handler logs while it builds each reply (through the Greeter's trace-id hook): in the
/// handler's future for a unary call, in the response body's polls for a stream.
fn handler_logs() -> String {
    tracing::info!(target: "handler", "building reply");
    String::new()
}

fn assert_loopback_peer(event: &Captured) {
    let peer: SocketAddr = event.str("peer.address").parse().unwrap();
    assert!(peer.ip().is_loopback(), "{peer}");
}

#[tokio::test]
async fn ok_unary_call() {
    let (capture, _guard) = Capture::install();
    let server = spawn_with(Greeter::new().with_trace_id(handler_logs), server_layer()).await;
    let reply = server.client().await.say_hello(hello("Ada")).await.unwrap();
    assert_eq!(reply.get_ref().message, "Hello, Ada!");

    let events = capture.side("server");
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event.level, Level::INFO);
    assert_eq!(
        event.keys(),
        [
            "grpc.code",
            "grpc.component",
            "grpc.method",
            "grpc.method_type",
            "grpc.request.messages",
            "grpc.response.messages",
            "grpc.service",
            "grpc.time_ms",
            "message",
            "peer.address",
        ]
    );
    assert_eq!(event.str("message"), "finished call");
    assert_eq!(event.str("grpc.component"), "server");
    assert_eq!(event.str("grpc.service"), "palisade.demo.v1.Greeter");
    assert_eq!(event.str("grpc.method"), "SayHello");
    assert_eq!(event.str("grpc.method_type"), "unary");
    assert_eq!(event.str("grpc.code"), "OK");
    assert!(event.field("grpc.time_ms").unwrap().as_f64().unwrap() >= 0.0);
    assert_eq!(event.field("grpc.request.messages"), Some(&json!(1)));
    assert_eq!(event.field("grpc.response.messages"), Some(&json!(1)));
    assert_loopback_peer(event);
    // Written beside the RPC's span (whose fields it repeats), under whatever was current.
    assert!(event.spans.is_empty(), "{event:#?}");

    // What the handler logged nests under the RPC's span.
    let handler: Vec<_> = capture
        .events()
        .into_iter()
        .filter(|e| e.target == "handler")
        .collect();
    assert_eq!(handler.len(), 1);
    let (name, fields) = &handler[0].spans[0];
    assert_eq!(name, "grpc");
    assert_eq!(fields["grpc.service"], "palisade.demo.v1.Greeter");
    assert_eq!(fields["grpc.method"], "SayHello");
}

#[tokio::test]
async fn handler_errors_are_logged_at_their_code_s_level() {
    let (capture, _guard) = Capture::install();
    let server = spawn(server_layer()).await;
    let mut client = server.client().await;
    let cases = [
        (Code::InvalidArgument, "InvalidArgument", Level::INFO),
        (Code::NotFound, "NotFound", Level::INFO),
        (Code::Unauthenticated, "Unauthenticated", Level::INFO),
        (Code::DeadlineExceeded, "DeadlineExceeded", Level::WARN),
        (Code::Unavailable, "Unavailable", Level::WARN),
        (Code::Unknown, "Unknown", Level::ERROR),
        (Code::DataLoss, "DataLoss", Level::ERROR),
    ];
    for (code, name, level) in cases {
        capture.clear();
        let request = HelloRequest {
            fail_code: code as i32,
            ..hello("x")
        };
        let status = client.say_hello(request).await.unwrap_err();
        assert_eq!(status.code(), code);
        let events = capture.side("server");
        assert_eq!(events.len(), 1, "{events:#?}");
        let event = &events[0];
        assert_eq!((event.level, event.str("grpc.code")), (level, name));
        assert_eq!(
            event.str("grpc.message"),
            format!("demo failure: {}", code.description())
        );
        assert_eq!(event.field("grpc.response.messages"), Some(&json!(0)));
    }
}

#[tokio::test]
async fn error_in_trailers_after_messages() {
    let (capture, _guard) = Capture::install();
    let server = spawn(server_layer()).await;
    let request = HelloRequest {
        count: 2,
        fail_code: Code::Internal as i32,
        ..hello("x")
    };
    let mut stream = server
        .client()
        .await
        .say_hello_stream(request)
        .await
        .unwrap()
        .into_inner();
    assert!(stream.next().await.unwrap().is_ok());
    assert!(stream.next().await.unwrap().is_ok());
    assert_eq!(
        stream.next().await.unwrap().unwrap_err().code(),
        Code::Internal
    );

    let events = capture.side("server");
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event.level, Level::ERROR);
    assert_eq!(event.str("grpc.code"), "Internal");
    assert_eq!(event.str("grpc.message"), "demo failure: Internal error");
    assert_eq!(event.str("grpc.method"), "SayHelloStream");
    assert_eq!(event.str("grpc.method_type"), "server_stream");
    assert_eq!(event.field("grpc.request.messages"), Some(&json!(1)));
    assert_eq!(event.field("grpc.response.messages"), Some(&json!(2)));
}

/// An inner layer that rejects calls carrying `x-reject` with a trailers-only response.
#[derive(Clone)]
struct Reject<S>(S);

impl<S, B> Service<Request<B>> for Reject<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.headers().contains_key("x-reject") {
            let rejection = Rejection::new(Code::PermissionDenied, "nope");
            return Either::Left(ready(Ok(rejection.into_response())));
        }
        Either::Right(self.0.call(request))
    }
}

#[tokio::test]
async fn trailers_only_rejection_from_an_inner_layer() {
    let (capture, _guard) = Capture::install();
    let stack = ServiceBuilder::new()
        .layer(server_layer())
        .layer(layer_fn(Reject));
    let server = spawn(stack).await;
    let mut request = tonic::Request::new(hello("x"));
    request
        .metadata_mut()
        .insert("x-reject", "yes".parse().unwrap());
    let status = server.client().await.say_hello(request).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::PermissionDenied, "nope")
    );

    let events = capture.side("server");
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event.level, Level::WARN);
    assert_eq!(
        event.keys(),
        [
            "grpc.code",
            "grpc.component",
            "grpc.message",
            "grpc.method",
            "grpc.method_type",
            "grpc.request.messages",
            "grpc.response.messages",
            "grpc.service",
            "grpc.time_ms",
            "message",
            "palisade.rejected_by",
            "peer.address",
        ]
    );
    assert_eq!(event.str("grpc.code"), "PermissionDenied");
    // An unnamed `Rejection` is marked as Palisade's.
    assert_eq!(event.str("palisade.rejected_by"), "palisade");
    assert_eq!(event.str("grpc.message"), "nope");
    assert_eq!(event.str("grpc.method"), "SayHello");
    // The rejecting layer never read the request.
    assert_eq!(event.field("grpc.request.messages"), Some(&json!(0)));
    assert_eq!(event.field("grpc.response.messages"), Some(&json!(0)));
}

#[tokio::test]
async fn server_streaming_with_n_messages() {
    let (capture, _guard) = Capture::install();
    let server = spawn_with(Greeter::new().with_trace_id(handler_logs), server_layer()).await;
    let request = HelloRequest {
        count: 5,
        ..hello("x")
    };
    let replies: Vec<_> = server
        .client()
        .await
        .say_hello_stream(request)
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(replies.len(), 5);
    assert!(replies.iter().all(Result::is_ok));

    let events = capture.side("server");
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event.level, Level::INFO);
    assert_eq!(event.str("grpc.code"), "OK");
    assert_eq!(event.str("grpc.method"), "SayHelloStream");
    assert_eq!(event.str("grpc.method_type"), "server_stream");
    assert_eq!(event.field("grpc.request.messages"), Some(&json!(1)));
    assert_eq!(event.field("grpc.response.messages"), Some(&json!(5)));
    assert!(event.field("grpc.message").is_none());

    // The stream's replies are built while the response body is polled: inside the span too.
    let handler: Vec<_> = capture
        .events()
        .into_iter()
        .filter(|e| e.target == "handler")
        .collect();
    assert_eq!(handler.len(), 5);
    for event in handler {
        assert_eq!(event.span_names(), ["grpc"], "{event:#?}");
        assert_eq!(event.spans[0].1["grpc.method"], "SayHelloStream");
    }
}

#[tokio::test]
async fn client_cancels_mid_stream() {
    let (capture, _guard) = Capture::install();
    let server = spawn(server_layer()).await;
    let channel = ServiceBuilder::new()
        .layer(LoggingLayer::client().build())
        .service(server.channel().await);
    let mut client = palisade_demo::pb::greeter_client::GreeterClient::new(channel);
    // Far more replies than the flow-control windows hold: the server is mid-stream when the
    // client walks away.
    let request = HelloRequest {
        count: 1_000_000,
        ..hello("x")
    };
    let mut stream = client.say_hello_stream(request).await.unwrap().into_inner();
    for _ in 0..3 {
        assert!(stream.next().await.unwrap().is_ok());
    }
    drop(stream);

    let event = capture
        .wait_for(|e| e.is_logging() && e.component() == Some("server"))
        .await;
    assert_eq!(event.level, Level::INFO);
    assert_eq!(event.str("grpc.code"), "Canceled");
    assert_eq!(event.str("grpc.method"), "SayHelloStream");
    assert!(event.field("grpc.message").is_none());
    let sent = event
        .field("grpc.response.messages")
        .unwrap()
        .as_u64()
        .unwrap();
    assert!((3..1_000_000).contains(&sent), "{sent}");

    let client_events = capture.side("client");
    assert_eq!(client_events.len(), 1, "{client_events:#?}");
    assert_eq!(client_events[0].level, Level::DEBUG);
    assert_eq!(client_events[0].str("grpc.code"), "Canceled");
    let received = client_events[0].field("grpc.response.messages").unwrap();
    assert!(received.as_u64().unwrap() >= 3);
}

#[tokio::test]
async fn client_side_calls() {
    let (capture, _guard) = Capture::install();
    let server = spawn(tower::layer::util::Identity::new()).await;
    let channel = ServiceBuilder::new()
        .layer(LoggingLayer::client().registry(registry()).build())
        .service(server.channel().await);
    let mut client = palisade_demo::pb::greeter_client::GreeterClient::new(channel);

    let mut request = tonic::Request::new(hello("Ada"));
    request.set_timeout(Duration::from_secs(30));
    let reply = client.say_hello(request).await.unwrap();
    assert_eq!(reply.get_ref().message, "Hello, Ada!");

    let events = capture.side("client");
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event.level, Level::DEBUG);
    assert_eq!(
        event.keys(),
        [
            "grpc.code",
            "grpc.component",
            "grpc.method",
            "grpc.method_type",
            "grpc.request.deadline",
            "grpc.response.messages",
            "grpc.service",
            "grpc.time_ms",
            "message",
        ]
    );
    assert_eq!(event.str("message"), "finished call");
    assert_eq!(event.str("grpc.component"), "client");
    assert_eq!(event.str("grpc.service"), "palisade.demo.v1.Greeter");
    assert_eq!(event.str("grpc.method"), "SayHello");
    assert_eq!(event.str("grpc.method_type"), "unary");
    assert_eq!(event.str("grpc.code"), "OK");
    assert_eq!(event.field("grpc.response.messages"), Some(&json!(1)));
    let deadline = humantime::parse_rfc3339(event.str("grpc.request.deadline")).unwrap();
    let left = deadline
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(left <= Duration::from_secs(30), "{left:?}");

    // The client's levels: Unavailable is a warning, PermissionDenied informative.
    for (code, level) in [
        (Code::Unavailable, Level::WARN),
        (Code::PermissionDenied, Level::INFO),
    ] {
        capture.clear();
        let request = HelloRequest {
            fail_code: code as i32,
            ..hello("x")
        };
        assert_eq!(client.say_hello(request).await.unwrap_err().code(), code);
        let events = capture.side("client");
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_eq!(events[0].level, level);
        assert_eq!(
            events[0].str("grpc.code"),
            palisade_core::code::go_name(code)
        );
        assert_eq!(
            events[0].str("grpc.message"),
            format!("demo failure: {}", code.description())
        );
    }
}

#[tokio::test]
async fn server_logs_the_callers_deadline() {
    let (capture, _guard) = Capture::install();
    let server = spawn(server_layer()).await;
    let mut request = tonic::Request::new(hello("x"));
    request.set_timeout(Duration::from_secs(5));
    server.client().await.say_hello(request).await.unwrap();
    let events = capture.side("server");
    let deadline = humantime::parse_rfc3339(events[0].str("grpc.request.deadline")).unwrap();
    let left = deadline
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(left <= Duration::from_secs(5), "{left:?}");
}

#[tokio::test]
async fn skipped_methods_are_not_logged() {
    let (capture, _guard) = Capture::install();
    let server = spawn(server_layer()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let response = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(response.get_ref().status, 1, "SERVING");
    assert!(capture.logged().is_empty(), "{:#?}", capture.logged());

    // The same server logs the Greeter.
    server.client().await.say_hello(hello("x")).await.unwrap();
    assert_eq!(capture.side("server").len(), 1);
    assert_eq!(capture.side("server")[0].str("grpc.method"), "SayHello");
}

/// `trace_id` / `span_id` from the active OpenTelemetry context (feature `opentelemetry`).
#[cfg(feature = "opentelemetry")]
mod opentelemetry_context {
    use super::*;
    use opentelemetry::{
        SpanId, TraceFlags, TraceId,
        context::FutureExt as _,
        trace::{SpanContext, TraceContextExt, TraceState},
    };
    use tower::Layer;

    /// What palisade-trace does outside the logging layer: the RPC's OpenTelemetry context is
    /// current while the inner layers are called.
    #[derive(Clone)]
    struct WithOtelContext<S> {
        inner: S,
        cx: opentelemetry::Context,
    }

    impl<S: Service<R>, R> Service<R> for WithOtelContext<S> {
        type Response = S::Response;
        type Error = S::Error;
        type Future = S::Future;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, request: R) -> S::Future {
            let _attached = self.cx.clone().attach();
            let _entered = tracing::info_span!("outer").entered();
            self.inner.call(request)
        }
    }

    fn otel_context(trace_id: &str, span_id: &str) -> opentelemetry::Context {
        opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex(trace_id).unwrap(),
            SpanId::from_hex(span_id).unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    }

    #[tokio::test]
    async fn trace_and_span_ids_of_the_active_context() {
        let (capture, _guard) = Capture::install();
        let server_cx = otel_context("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
        let stack = ServiceBuilder::new()
            .layer(layer_fn(move |inner| WithOtelContext {
                inner,
                cx: server_cx.clone(),
            }))
            .layer(server_layer());
        let server = spawn_with(Greeter::new().with_trace_id(handler_logs), stack).await;
        let channel = LoggingLayer::client().build().layer(server.channel().await);
        let mut client = palisade_demo::pb::greeter_client::GreeterClient::new(channel);

        let client_cx = otel_context("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
        client
            .say_hello(hello("x"))
            .with_context(client_cx)
            .await
            .unwrap();

        let server_event = &capture.side("server")[0];
        assert_eq!(
            server_event.span_names(),
            ["outer"],
            "under the span current at the call"
        );
        let handler = capture
            .events()
            .into_iter()
            .find(|e| e.target == "handler")
            .unwrap();
        assert_eq!(handler.span_names(), ["outer", "grpc"]);
        assert_eq!(
            server_event.str("trace_id"),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(server_event.str("span_id"), "00f067aa0ba902b7");
        let client_event = &capture.side("client")[0];
        assert_eq!(
            client_event.str("trace_id"),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(client_event.str("span_id"), "b7ad6b7169203331");
    }

    /// What the README promises: the handler's own logs carry its trace id. Under
    /// `fmt().json()`, a handler's event shows its spans' fields, and the RPC's span has the ids.
    #[tokio::test]
    async fn a_handler_s_own_json_logs_carry_the_call_s_trace_id() {
        let json = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(json.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let server_cx = otel_context("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
        let stack = ServiceBuilder::new()
            .layer(layer_fn(move |inner| WithOtelContext {
                inner,
                cx: server_cx.clone(),
            }))
            .layer(server_layer());
        let server = spawn_with(Greeter::new().with_trace_id(handler_logs), stack).await;
        server.client().await.say_hello(hello("x")).await.unwrap();

        let text = json.text();
        let handler: serde_json::Value = text
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .find(|line| line["target"] == "handler")
            .unwrap_or_else(|| panic!("no handler line in {text}"));
        assert_eq!(
            handler["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
            "{handler}"
        );
        assert_eq!(handler["span"]["span_id"], "00f067aa0ba902b7", "{handler}");
        assert_eq!(handler["span"]["name"], "grpc");
    }

    /// Without an active trace, the RPC's span has no ids at all (not empty ones).
    #[tokio::test]
    async fn no_trace_no_ids_on_the_span() {
        let (capture, _guard) = Capture::install();
        let server = spawn_with(Greeter::new().with_trace_id(handler_logs), server_layer()).await;
        server.client().await.say_hello(hello("x")).await.unwrap();
        let handler = capture
            .events()
            .into_iter()
            .find(|e| e.target == "handler")
            .unwrap();
        let (_, fields) = handler.spans.last().unwrap();
        assert_eq!(
            fields.keys().map(String::as_str).collect::<Vec<_>>(),
            ["grpc.method", "grpc.service"]
        );
    }
}

#[tokio::test]
async fn start_event_when_asked() {
    let (capture, _guard) = Capture::install();
    let server = spawn(server_builder().log_start(true).build()).await;
    server.client().await.say_hello(hello("x")).await.unwrap();
    let events = capture.side("server");
    let messages: Vec<_> = events.iter().map(|e| e.str("message")).collect();
    assert_eq!(messages, ["started call", "finished call"]);
    let start = &events[0];
    assert_eq!(start.level, Level::INFO);
    assert_eq!(
        start.keys(),
        [
            "grpc.component",
            "grpc.method",
            "grpc.method_type",
            "grpc.service",
            "message",
            "peer.address",
        ]
    );
    assert!(start.spans.is_empty(), "{start:#?}");
    assert_loopback_peer(start);
}

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2Vu.SIGNATURE-never-logged";

#[tokio::test]
async fn authorization_is_never_logged() {
    let capture = Capture::new();
    let (json, text) = (Buffer::default(), Buffer::default());
    let subscriber = tracing_subscriber::registry()
        .with(capture.clone())
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(json.clone()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(text.clone())
                .with_ansi(false),
        );
    let _guard = tracing::subscriber::set_default(subscriber);

    // Every option that could write metadata, all of it allow-listed, at every level.
    let all = [
        "authorization",
        "Authorization",
        "cookie",
        "x-api-key",
        "x-request-id",
    ];
    let options = |layer: LoggingBuilder<Server>| {
        layer
            .allow_metadata(all)
            .secret_metadata(["X-Api-Key"])
            .log_start(true)
            .levels(|_| Level::TRACE)
            .span_level(Level::TRACE)
            .max_message_len(usize::MAX)
            .build()
    };
    let stack = ServiceBuilder::new()
        .layer(options(LoggingLayer::server()))
        .layer(layer_fn(Reject));
    let server = spawn(stack).await;
    let channel = ServiceBuilder::new()
        .layer(
            LoggingLayer::client()
                .allow_metadata(all)
                .secret_metadata(["x-api-key"])
                .log_start(true)
                .build(),
        )
        .service(server.channel().await);
    let mut client = palisade_demo::pb::greeter_client::GreeterClient::new(channel);

    for reject in [false, true] {
        let mut request = tonic::Request::new(hello("x"));
        let metadata = request.metadata_mut();
        metadata.insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        metadata.insert("cookie", format!("session={TOKEN}").parse().unwrap());
        metadata.insert("x-api-key", TOKEN.parse().unwrap());
        metadata.insert("x-request-id", "req-42".parse().unwrap());
        if reject {
            metadata.insert("x-reject", "yes".parse().unwrap());
        }
        let _ = client.say_hello(request).await;
    }

    let events = capture.logged();
    assert_eq!(finished(&capture.side("server"), "OK").len(), 1);
    assert_eq!(
        finished(&capture.side("server"), "PermissionDenied").len(),
        1
    );
    // The allow-listed, non-secret key is logged, so the test would see a leak.
    for event in events.iter().filter(|e| e.component() == Some("server")) {
        assert_eq!(
            event.str("grpc.request.metadata"),
            r#"{"x-request-id": "req-42"}"#
        );
    }
    let captured = format!("{events:?}");
    let (json, text) = (json.text(), text.text());
    assert!(json.contains("req-42") && text.contains("req-42"));
    for output in [&captured, &json, &text] {
        assert!(!output.contains("SIGNATURE"), "token leaked: {output}");
        assert!(
            !output.contains("c2VjcmV0LXRva2Vu"),
            "token leaked: {output}"
        );
    }
}
