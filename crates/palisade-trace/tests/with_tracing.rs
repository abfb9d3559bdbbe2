//! With `tracing-opentelemetry` installed, `tracing` spans and events in a handler belong to
//! the RPC's trace. (Its own test binary: it installs a global `tracing` subscriber.)

mod support;

use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry::trace::{SpanKind, TraceContextExt, TracerProvider as _};
use palisade_demo::{Greeter, pb::HelloRequest};
use palisade_trace::current_trace_id;
use support::*;
use tracing::{Level, Subscriber, field::Field};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{Layer, filter::Targets, layer::Context as LayerContext, prelude::*};

/// Each event's message with the OpenTelemetry trace id current when it was emitted — what a
/// log line reporting `trace_id` (palisade-logging) sees.
#[derive(Clone, Default)]
struct EventTraceIds(Arc<Mutex<Vec<(String, String)>>>);

impl<S: Subscriber> Layer<S> for EventTraceIds {
    fn on_event(&self, event: &tracing::Event<'_>, _: LayerContext<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0.lock().unwrap().push((message.0, current_trace_id()));
    }
}

/// The handler's hook: an event straight in the handler, and one inside a `tracing` span.
fn handler_work() -> String {
    tracing::info!("in the handler");
    let span = tracing::info_span!("build_reply");
    let _entered = span.enter();
    tracing::info!(answer = 42, "in a tracing span");
    span.context().span().span_context().trace_id().to_string()
}

#[tokio::test]
async fn tracing_spans_and_events_in_handlers_share_the_rpc_trace() {
    let telemetry = Telemetry::new();
    let events = EventTraceIds::default();
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let otel =
            tracing_opentelemetry::layer().with_tracer(telemetry.provider.tracer("handlers"));
        let subscriber = tracing_subscriber::registry()
            .with(otel.and_then(events.clone()))
            .with(Targets::new().with_target("with_tracing", Level::INFO));
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });

    let greeter = Greeter::new().with_trace_id(handler_work);
    let server = palisade_demo::spawn_with(greeter, telemetry.server_layer()).await;
    let mut client = traced_client(telemetry.client_layer(server.addr), server.channel().await);
    let reply = client
        .say_hello(HelloRequest::default())
        .await
        .unwrap()
        .into_inner();

    let spans = telemetry.spans();
    let server_span = only(&spans, SpanKind::Server);
    let trace = trace_id(server_span).to_string();
    assert_eq!(
        reply.trace_id, trace,
        "the tracing span's OpenTelemetry context"
    );

    // The tracing span is an OpenTelemetry child of the RPC's span, with the event on it.
    let build = spans
        .iter()
        .find(|s| s.name == "build_reply")
        .expect("exported");
    assert_eq!(build.parent_span_id, span_id(server_span));
    assert_eq!(trace_id(build), trace_id(server_span));
    assert!(
        build.events.iter().any(|e| e.name == "in a tracing span"),
        "{build:#?}"
    );

    // Both events, in a tracing span or not, saw the RPC's trace id as current.
    let events = events.0.lock().unwrap().clone();
    assert_eq!(
        events,
        vec![
            ("in the handler".to_owned(), trace.clone()),
            ("in a tracing span".to_owned(), trace),
        ]
    );
}
