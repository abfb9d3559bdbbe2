//! The defaults: the global tracer provider and propagator. (Its own test binary: it installs
//! the globals.)

mod support;

use opentelemetry::{global, trace::SpanKind};
use palisade_demo::{Greeter, pb::HelloRequest};
use palisade_trace::{TraceLayer, current_trace_id};
use support::*;

#[tokio::test]
async fn layers_use_the_globals_installed_before_the_first_call() {
    // Built before the globals are installed, as `main` often does.
    let server_layer = TraceLayer::server().build();
    let client_layer = TraceLayer::client().build();
    assert!(format!("{server_layer:?}").contains("GlobalTracer"));

    let telemetry = Telemetry::new();
    global::set_tracer_provider(telemetry.provider.clone());
    global::set_text_map_propagator(w3c());
    // With a global propagator installed, no warning about it.
    let (captured, _guard) = Captured::start();

    let greeter = Greeter::new().with_trace_id(current_trace_id);
    let server = palisade_demo::spawn_with(greeter, server_layer).await;
    let channel = tower::ServiceBuilder::new()
        .layer(client_layer)
        .service(server.channel().await);
    let reply = palisade_demo::pb::greeter_client::GreeterClient::new(channel)
        .say_hello(HelloRequest::default())
        .await
        .unwrap()
        .into_inner();

    let spans = telemetry.spans();
    let client_span = only(&spans, SpanKind::Client);
    let server_span = only(&spans, SpanKind::Server);
    assert_eq!(server_span.parent_span_id, span_id(client_span));
    assert_eq!(reply.trace_id, trace_id(client_span).to_string());
    assert!(captured.lines().is_empty(), "{:#?}", captured.lines());
    assert_eq!(server_span.instrumentation_scope.name(), "palisade-trace");
    assert_eq!(
        server_span.instrumentation_scope.version(),
        Some(env!("CARGO_PKG_VERSION"))
    );
}
