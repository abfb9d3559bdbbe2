//! Traced tonic clients and servers over loopback, spans checked in the SDK's in-memory
//! exporter.

mod support;

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use futures_util::Stream;
use opentelemetry::{
    Value,
    trace::{SpanId, SpanKind, Status as SpanStatus, TraceContextExt},
};
use opentelemetry_sdk::trace::Sampler;
use palisade_core::{CodeSet, Matcher, code::ALL_CODES};
use palisade_demo::{
    Greeter,
    pb::{HelloReply, HelloRequest, greeter_server::Greeter as GreeterTrait},
};
use palisade_trace::{attribute, current_trace_id};
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

fn hello(name: &str) -> HelloRequest {
    HelloRequest {
        name: name.into(),
        ..Default::default()
    }
}

fn traced_greeter() -> Greeter {
    Greeter::new().with_trace_id(current_trace_id)
}

#[tokio::test]
async fn client_span_is_the_parent_of_the_server_span() {
    let telemetry = Telemetry::new();
    let server = palisade_demo::spawn_with(traced_greeter(), telemetry.server_layer()).await;
    let mut client = traced_client(telemetry.client_layer(server.addr), server.channel().await);

    let reply = client.say_hello(hello("Ada")).await.unwrap().into_inner();

    let spans = telemetry.spans();
    assert_eq!(spans.len(), 2);
    let client_span = only(&spans, SpanKind::Client);
    let server_span = only(&spans, SpanKind::Server);
    assert_eq!(trace_id(server_span), trace_id(client_span));
    assert_eq!(server_span.parent_span_id, span_id(client_span));
    assert!(server_span.parent_span_is_remote);
    assert_eq!(
        client_span.parent_span_id,
        SpanId::INVALID,
        "the client call is a root"
    );
    assert!(client_span.span_context.is_sampled());
    // The handler ran under the server span's trace.
    assert_eq!(reply.trace_id, trace_id(server_span).to_string());

    for span in [client_span, server_span] {
        assert_eq!(span.name, SAY_HELLO);
        assert_eq!(
            attr(span, attribute::RPC_SYSTEM),
            Some(&Value::from("grpc"))
        );
        assert_eq!(
            attr(span, attribute::RPC_SERVICE),
            Some(&Value::from("palisade.demo.v1.Greeter"))
        );
        assert_eq!(
            attr(span, attribute::RPC_METHOD),
            Some(&Value::from("SayHello"))
        );
        assert_eq!(
            attr(span, attribute::RPC_GRPC_STATUS_CODE),
            Some(&Value::I64(0))
        );
        assert_eq!(
            attr(span, attribute::SERVER_ADDRESS),
            Some(&Value::from("127.0.0.1"))
        );
        assert_eq!(
            attr(span, attribute::SERVER_PORT),
            Some(&Value::I64(server.addr.port().into()))
        );
        assert_eq!(span.status, SpanStatus::Unset);
        assert_eq!(span.instrumentation_scope.name(), "palisade-trace");
    }
    assert_eq!(
        attr(server_span, attribute::NETWORK_PEER_ADDRESS),
        Some(&Value::from("127.0.0.1"))
    );
    let Some(Value::I64(peer_port)) = attr(server_span, attribute::NETWORK_PEER_PORT) else {
        panic!("no peer port on {server_span:#?}");
    };
    assert!(*peer_port > 0 && *peer_port != i64::from(server.addr.port()));
    assert_eq!(attr(client_span, attribute::NETWORK_PEER_ADDRESS), None);
}

/// Server A: answers SayHello by calling server B through a traced client, from inside its
/// handler.
struct Relay {
    to_b: TracedClient,
}

#[tonic::async_trait]
impl GreeterTrait for Relay {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let in_a = current_trace_id();
        let from_b = self
            .to_b
            .clone()
            .say_hello(request.into_inner())
            .await?
            .into_inner();
        Ok(Response::new(HelloReply {
            message: from_b.trace_id,
            trace_id: in_a,
            ..Default::default()
        }))
    }

    type SayHelloStreamStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

    async fn say_hello_stream(
        &self,
        _: Request<HelloRequest>,
    ) -> Result<Response<Self::SayHelloStreamStream>, Status> {
        Err(Status::unimplemented("relay streams nothing"))
    }
}

#[tokio::test]
async fn one_trace_from_client_through_server_a_to_server_b() {
    let telemetry = Telemetry::new();
    let b = palisade_demo::spawn_with(traced_greeter(), telemetry.server_layer()).await;
    let to_b = traced_client(telemetry.client_layer(b.addr), b.channel().await);
    let a = spawn_own(Relay { to_b }, telemetry.server_layer()).await;
    let mut client = traced_client(telemetry.client_layer(a.addr), a.channel().await);

    let reply = client.say_hello(hello("chain")).await.unwrap().into_inner();

    let spans = telemetry.spans();
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let port =
        |span: &&opentelemetry_sdk::trace::SpanData| attr(span, attribute::SERVER_PORT).cloned();
    let on = |kind: SpanKind, server: std::net::SocketAddr| {
        spans
            .iter()
            .find(|s| s.span_kind == kind && port(s) == Some(Value::I64(server.port().into())))
            .unwrap_or_else(|| panic!("no {kind:?} span for {server}"))
    };
    let (client_to_a, server_a) = (on(SpanKind::Client, a.addr), on(SpanKind::Server, a.addr));
    let (client_to_b, server_b) = (on(SpanKind::Client, b.addr), on(SpanKind::Server, b.addr));

    let trace = trace_id(client_to_a);
    assert!(spans.iter().all(|s| trace_id(s) == trace), "one trace id");
    assert_eq!(reply.trace_id, trace.to_string(), "A's handler");
    assert_eq!(reply.message, trace.to_string(), "B's handler");
    assert_eq!(client_to_a.parent_span_id, SpanId::INVALID);
    assert_eq!(server_a.parent_span_id, span_id(client_to_a));
    assert_eq!(
        client_to_b.parent_span_id,
        span_id(server_a),
        "the nested call is A's child"
    );
    assert!(!client_to_b.parent_span_is_remote);
    assert_eq!(server_b.parent_span_id, span_id(client_to_b));
    // The nested call ended inside A's span.
    assert!(client_to_b.end_time <= server_a.end_time);
}

#[tokio::test]
async fn span_status_follows_the_code_on_each_side() {
    let telemetry = Telemetry::new();
    let server = palisade_demo::spawn(telemetry.server_layer()).await;
    let mut client = traced_client(telemetry.client_layer(server.addr), server.channel().await);

    for code in ALL_CODES {
        telemetry.exporter.reset();
        let request = HelloRequest {
            fail_code: code as i32,
            ..hello("x")
        };
        let result = client.say_hello(request).await;
        assert_eq!(result.err().map_or(Code::Ok, |s| s.code()), code);

        let spans = telemetry.spans();
        let (client_span, server_span) = (
            only(&spans, SpanKind::Client),
            only(&spans, SpanKind::Server),
        );
        for span in [client_span, server_span] {
            assert_eq!(
                attr(span, attribute::RPC_GRPC_STATUS_CODE),
                Some(&Value::I64(code as i64)),
                "{code:?}"
            );
        }
        let server_error = CodeSet::SERVER_ERRORS.contains(code);
        assert_eq!(
            matches!(server_span.status, SpanStatus::Error { .. }),
            server_error,
            "server span for {code:?}: {:?}",
            server_span.status
        );
        assert_eq!(
            matches!(client_span.status, SpanStatus::Error { .. }),
            code != Code::Ok,
            "client span for {code:?}: {:?}",
            client_span.status
        );
        if let SpanStatus::Error { description } = &client_span.status {
            assert!(description.starts_with("demo failure"), "{description}");
        }
    }
}

type Replies = mpsc::Receiver<Result<HelloReply, Status>>;

/// A Greeter whose `SayHelloStream` sends what the test puts into a channel.
struct Controlled {
    replies: Arc<Mutex<Option<Replies>>>,
}

#[tonic::async_trait]
impl GreeterTrait for Controlled {
    async fn say_hello(&self, _: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        Err(Status::unimplemented("streams only"))
    }

    type SayHelloStreamStream = ReceiverStream<Result<HelloReply, Status>>;

    async fn say_hello_stream(
        &self,
        _: Request<HelloRequest>,
    ) -> Result<Response<Self::SayHelloStreamStream>, Status> {
        let rx = self
            .replies
            .lock()
            .unwrap()
            .take()
            .expect("one stream per test");
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn reply(n: u32) -> Result<HelloReply, Status> {
    Ok(HelloReply {
        message: n.to_string(),
        ..Default::default()
    })
}

#[tokio::test]
async fn server_streaming_span_ends_after_its_last_message() {
    let telemetry = Telemetry::new();
    let (tx, rx) = mpsc::channel(4);
    let controlled = Controlled {
        replies: Arc::new(Mutex::new(Some(rx))),
    };
    let server = spawn_own(controlled, telemetry.server_layer()).await;
    let mut client = traced_client(telemetry.client_layer(server.addr), server.channel().await);

    let mut stream = client
        .say_hello_stream(hello("s"))
        .await
        .unwrap()
        .into_inner();
    tx.send(reply(1)).await.unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().message, "1");
    // The response headers and a message went by: the RPC is not over.
    assert!(telemetry.spans().is_empty(), "{:#?}", telemetry.spans());

    let before_last = SystemTime::now();
    tx.send(reply(2)).await.unwrap();
    drop(tx);
    assert_eq!(stream.message().await.unwrap().unwrap().message, "2");
    assert!(
        stream.message().await.unwrap().is_none(),
        "then the OK trailers"
    );

    let spans = telemetry.spans();
    let server_span = only(&spans, SpanKind::Server);
    let client_span = only(&spans, SpanKind::Client);
    assert_eq!(server_span.name, SAY_HELLO_STREAM);
    assert!(server_span.end_time >= before_last);
    assert!(client_span.end_time >= server_span.end_time);
    for span in [server_span, client_span] {
        assert_eq!(
            attr(span, attribute::RPC_GRPC_STATUS_CODE),
            Some(&Value::I64(0))
        );
    }
}

#[tokio::test]
async fn streamed_messages_are_made_inside_the_server_span() {
    let telemetry = Telemetry::new();
    let server = palisade_demo::spawn_with(traced_greeter(), telemetry.server_layer()).await;
    let mut client = traced_client(telemetry.client_layer(server.addr), server.channel().await);

    let request = HelloRequest {
        count: 3,
        fail_code: Code::DataLoss as i32,
        ..hello("s")
    };
    let mut stream = client.say_hello_stream(request).await.unwrap().into_inner();
    let mut trace_ids = Vec::new();
    let status = loop {
        match stream.message().await {
            Ok(Some(reply)) => trace_ids.push(reply.trace_id),
            Ok(None) => panic!("the stream ends with DataLoss"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::DataLoss);

    let spans = telemetry.spans();
    let server_span = only(&spans, SpanKind::Server);
    assert_eq!(trace_ids, vec![trace_id(server_span).to_string(); 3]);
    assert_eq!(
        attr(server_span, attribute::RPC_GRPC_STATUS_CODE),
        Some(&Value::I64(Code::DataLoss as i64))
    );
    assert!(matches!(server_span.status, SpanStatus::Error { .. }));
}

#[tokio::test]
async fn skipped_calls_are_neither_traced_nor_propagated() {
    let telemetry = Telemetry::new();
    let skip = Matcher::method(SAY_HELLO_STREAM);
    let server = palisade_demo::spawn_with(
        traced_greeter(),
        telemetry.server_builder().skip(skip.clone()).build(),
    )
    .await;
    let channel = server.channel().await;
    let mut client = traced_client(
        telemetry.client_builder(server.addr).skip(skip).build(),
        channel,
    );

    let mut stream = client
        .say_hello_stream(hello("s"))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    assert!(stream.message().await.unwrap().is_none());
    assert!(telemetry.spans().is_empty());
    assert_eq!(reply.trace_id, "", "no context in a skipped handler");

    client.say_hello(hello("x")).await.unwrap();
    assert_eq!(telemetry.spans().len(), 2);
}

#[tokio::test]
async fn unsampled_calls_export_nothing_but_keep_one_trace_id() {
    let client_side = Telemetry::with_sampler(Sampler::AlwaysOff);
    let server_side = Telemetry::new(); // parent-based: follows the caller's decision
    let server = palisade_demo::spawn_with(traced_greeter(), server_side.server_layer()).await;
    let mut client = traced_client(
        client_side.client_layer(server.addr),
        server.channel().await,
    );

    let reply = client.say_hello(hello("x")).await.unwrap().into_inner();
    assert_eq!(
        reply.trace_id.len(),
        32,
        "the handler still runs under a trace id"
    );
    assert!(client_side.spans().is_empty());
    assert!(
        server_side.spans().is_empty(),
        "the server followed the caller's decision"
    );

    // A sampled caller in the same process is traced by the same server.
    let sampled = Telemetry::new();
    let mut client = traced_client(sampled.client_layer(server.addr), server.channel().await);
    let reply = client.say_hello(hello("y")).await.unwrap().into_inner();
    assert_eq!(server_side.spans().len(), 1);
    assert_eq!(reply.trace_id, trace_id(&sampled.spans()[0]).to_string());
}

#[tokio::test]
async fn allow_listed_metadata_is_recorded_and_authorization_never() {
    let telemetry = Telemetry::new();
    let layer = telemetry
        .server_builder()
        .capture_metadata(["X-Tenant", "authorization", "cookie", "bad name"])
        .build();
    let server = palisade_demo::spawn(layer).await;
    let mut client = server.client().await;

    let mut request = Request::new(hello("x"));
    let metadata = request.metadata_mut();
    metadata.append("x-tenant", "blue".parse().unwrap());
    metadata.append("x-tenant", "green".parse().unwrap());
    metadata.insert("authorization", "Bearer top-secret".parse().unwrap());
    metadata.insert("cookie", "session=top-secret".parse().unwrap());
    metadata.insert("x-other", "not listed".parse().unwrap());
    client.say_hello(request).await.unwrap();

    let spans = telemetry.spans();
    let server_span = only(&spans, SpanKind::Server);
    assert_eq!(
        attr(server_span, "rpc.grpc.request.metadata.x-tenant"),
        Some(&Value::Array(opentelemetry::Array::String(vec![
            "blue".into(),
            "green".into()
        ])))
    );
    let metadata_keys: Vec<_> = server_span
        .attributes
        .iter()
        .filter(|kv| {
            kv.key
                .as_str()
                .starts_with(attribute::RPC_GRPC_REQUEST_METADATA)
        })
        .collect();
    assert_eq!(metadata_keys.len(), 1, "{metadata_keys:?}");
    let everything = format!("{server_span:?}");
    assert!(!everything.contains("top-secret"));
    assert!(!everything.contains("not listed"));
}

#[tokio::test]
async fn new_root_for_starts_a_root_linked_to_the_caller() {
    let caller = Telemetry::new();
    let edge = Telemetry::new();
    fn tenant() -> String {
        use opentelemetry::baggage::BaggageExt;
        opentelemetry::Context::map_current(|cx| {
            let in_span = cx.span().span_context().trace_id().to_string();
            let tenant = cx
                .baggage()
                .get("tenant")
                .map(|v| v.to_string())
                .unwrap_or_default();
            format!("{in_span} {tenant}")
        })
    }
    let layer = edge
        .server_builder()
        .new_root_for(Matcher::service("palisade.demo.v1.Greeter"))
        .build();
    let server = palisade_demo::spawn_with(Greeter::new().with_trace_id(tenant), layer).await;
    let mut client = traced_client(caller.client_layer(server.addr), server.channel().await);

    let mut request = Request::new(hello("x"));
    request
        .metadata_mut()
        .insert("baggage", "tenant=blue".parse().unwrap());
    let reply = client.say_hello(request).await.unwrap().into_inner();

    let caller_span = &caller.spans()[0];
    let edge_spans = edge.spans();
    let edge_span = only(&edge_spans, SpanKind::Server);
    assert_eq!(edge_span.parent_span_id, SpanId::INVALID, "a new root");
    assert_ne!(trace_id(edge_span), trace_id(caller_span), "a new trace");
    let links: Vec<_> = edge_span
        .links
        .iter()
        .map(|l| {
            (
                l.span_context.trace_id(),
                l.span_context.span_id(),
                l.span_context.is_remote(),
            )
        })
        .collect();
    assert_eq!(
        links,
        vec![(trace_id(caller_span), span_id(caller_span), true)]
    );
    assert_eq!(
        reply.trace_id,
        format!("{} blue", trace_id(edge_span)),
        "baggage is kept"
    );
}

/// Palisade's `W3cPropagator` on both ends (written and read by hand): the server span is the
/// client span's child and the client's baggage reaches the handler, as with the SDK's
/// propagators.
#[tokio::test]
async fn the_by_hand_w3c_propagator_carries_trace_and_baggage() {
    use opentelemetry::{KeyValue, baggage::BaggageExt};
    use palisade_trace::W3cPropagator;

    fn trace_and_tenant() -> String {
        opentelemetry::Context::map_current(|cx| {
            let tenant = cx
                .baggage()
                .get("tenant")
                .map(|v| v.to_string())
                .unwrap_or_default();
            format!("{} {tenant}", cx.span().span_context().trace_id())
        })
    }
    let telemetry = Telemetry::new();
    let server_layer = telemetry
        .server_builder()
        .propagator(W3cPropagator::new())
        .build();
    let greeter = Greeter::new().with_trace_id(trace_and_tenant);
    let server = palisade_demo::spawn_with(greeter, server_layer).await;
    let client_layer = telemetry
        .client_builder(server.addr)
        .propagator(W3cPropagator::new())
        .build();
    let mut client = traced_client(client_layer, server.channel().await);

    let cx = opentelemetry::Context::new().with_baggage([KeyValue::new("tenant", "blue")]);
    let reply = {
        let _attached = cx.attach();
        client.say_hello(hello("Ada")).await.unwrap().into_inner()
    };

    let spans = telemetry.spans();
    let client_span = only(&spans, SpanKind::Client);
    let server_span = only(&spans, SpanKind::Server);
    assert_eq!(trace_id(server_span), trace_id(client_span));
    assert_eq!(server_span.parent_span_id, span_id(client_span));
    assert!(server_span.parent_span_is_remote);
    assert_eq!(reply.trace_id, format!("{} blue", trace_id(server_span)));
}
