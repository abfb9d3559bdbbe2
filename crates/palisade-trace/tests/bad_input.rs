//! Incoming context that cannot be trusted or read starts a fresh root trace: no error, no
//! panic, nothing of it kept.

mod support;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use palisade_demo::{Greeter, pb::HelloRequest};
use palisade_trace::{W3cPropagator, current_trace_id};
use support::*;
use tonic::{Request, metadata::MetadataMap};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

fn valid() -> String {
    format!("00-{TRACE}-{SPAN}-01")
}

/// Calls SayHello with exactly these headers (no trace layer on the client), once through a
/// server layer given the SDK's propagators and once through one given palisade's
/// [`W3cPropagator`] (read by hand); returns each server span and the trace id its handler
/// saw.
async fn call_with(headers: &[(&str, &[u8])]) -> [(opentelemetry_sdk::trace::SpanData, String); 2] {
    let sdk = call_through(headers, false).await;
    let by_hand = call_through(headers, true).await;
    [sdk, by_hand]
}

async fn call_through(
    headers: &[(&str, &[u8])],
    by_hand: bool,
) -> (opentelemetry_sdk::trace::SpanData, String) {
    let telemetry = Telemetry::new();
    let greeter = Greeter::new().with_trace_id(current_trace_id);
    let mut layer = telemetry.server_builder();
    if by_hand {
        layer = layer.propagator(W3cPropagator::new());
    }
    let server = palisade_demo::spawn_with(greeter, layer.build()).await;
    let mut client = server.client().await;

    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    let mut request = Request::new(HelloRequest::default());
    *request.metadata_mut() = MetadataMap::from_headers(map);
    let reply = client
        .say_hello(request)
        .await
        .expect("no error")
        .into_inner();

    let spans = telemetry.spans();
    (only(&spans, SpanKind::Server).clone(), reply.trace_id)
}

async fn assert_fresh_root(case: &str, headers: &[(&str, &[u8])]) {
    for (span, in_handler) in call_with(headers).await {
        assert_eq!(span.parent_span_id, SpanId::INVALID, "{case}: not a root");
        assert!(span.span_context.is_valid(), "{case}");
        assert!(
            span.span_context.is_sampled(),
            "{case}: a new root is sampled"
        );
        assert_ne!(
            trace_id(&span),
            TraceId::from_hex(TRACE).unwrap(),
            "{case}: kept the trace"
        );
        assert_eq!(
            in_handler,
            trace_id(&span).to_string(),
            "{case}: the handler's trace"
        );
        assert!(
            span.span_context.trace_state().header().is_empty(),
            "{case}"
        );
    }
}

#[tokio::test]
async fn the_valid_header_is_followed() {
    for (span, in_handler) in call_with(&[("traceparent", valid().as_bytes())]).await {
        assert_eq!(trace_id(&span), TraceId::from_hex(TRACE).unwrap());
        assert_eq!(span.parent_span_id, SpanId::from_hex(SPAN).unwrap());
        assert!(span.parent_span_is_remote);
        assert_eq!(in_handler, TRACE);
    }
}

#[tokio::test]
async fn malformed_traceparents_start_a_new_trace() {
    let cases = [
        "garbage".to_owned(),
        String::new(),
        "-".repeat(60),
        format!("00_{TRACE}_{SPAN}_01"),
        format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
        format!("00-{TRACE}-{}-01", SPAN.to_uppercase()),
        format!("00-{}-{SPAN}-01", TRACE.replace('4', "g")),
        format!("00-{TRACE}-{SPAN}-0x"),
        format!("00-{TRACE}-{SPAN}-01-extra"),
        format!("00-{TRACE}-{SPAN}-1"),
        format!("0-{TRACE}-{SPAN}-01"),
        format!("00-{TRACE}{SPAN}-01"),
        "x".repeat(8000),
    ];
    for case in &cases {
        assert_fresh_root(case, &[("traceparent", case.as_bytes())]).await;
    }
}

#[tokio::test]
async fn truncated_traceparents_start_a_new_trace() {
    let full = valid();
    for len in [1, 2, 3, 10, 35, 36, 52, 53, 54] {
        let case = &full[..len];
        assert_fresh_root(case, &[("traceparent", case.as_bytes())]).await;
    }
}

#[tokio::test]
async fn all_zero_ids_start_a_new_trace() {
    let zero_trace = format!("00-{}-{SPAN}-01", "0".repeat(32));
    let zero_span = format!("00-{TRACE}-{}-01", "0".repeat(16));
    for case in [&zero_trace, &zero_span] {
        assert_fresh_root(case, &[("traceparent", case.as_bytes())]).await;
    }
}

#[tokio::test]
async fn unknown_versions_start_a_new_trace() {
    // `ff` is forbidden; other versions must at least look like version 00 (W3C lets a
    // parser read a higher version's first four fields, which the next case does not have).
    for case in [
        format!("ff-{TRACE}-{SPAN}-01"),
        format!("zz-{TRACE}-{SPAN}-01"),
        format!("100-{TRACE}-{SPAN}-01"),
        format!("cc-{TRACE}-{SPAN}"),
    ] {
        assert_fresh_root(&case, &[("traceparent", case.as_bytes())]).await;
    }
}

#[tokio::test]
async fn duplicated_traceparents_start_a_new_trace() {
    let other = format!("00-{}-{SPAN}-01", "1".repeat(32));
    assert_fresh_root(
        "two valid traceparents",
        &[
            ("traceparent", valid().as_bytes()),
            ("traceparent", other.as_bytes()),
        ],
    )
    .await;
    assert_fresh_root(
        "the same traceparent twice",
        &[
            ("traceparent", valid().as_bytes()),
            ("traceparent", valid().as_bytes()),
        ],
    )
    .await;
}

#[tokio::test]
async fn non_ascii_metadata_starts_a_new_trace() {
    let mut latin1 = valid().into_bytes();
    latin1[10] = 0xe9;
    assert_fresh_root("latin-1 byte", &[("traceparent", &latin1)]).await;
    let with_utf8 = format!("00-{TRACE}-{SPAN}-01").replace("4bf9", "ébf");
    assert_fresh_root("utf-8 bytes", &[("traceparent", with_utf8.as_bytes())]).await;
    assert_fresh_root(
        "non-ASCII baggage and tracestate only",
        &[
            ("baggage", "k=\u{e9}".as_bytes()),
            ("tracestate", b"a=\xff"),
        ],
    )
    .await;
}

#[tokio::test]
async fn an_oversized_tracestate_is_dropped() {
    let long_value = format!("vendor={}", "z".repeat(300));
    let many_members: String = (0..500)
        .map(|i| format!("k{i}=v{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let huge = "a=b,".repeat(2000);
    // Alone, without a traceparent: a new trace, no trace state.
    for case in [&long_value, &many_members, &huge] {
        assert_fresh_root("tracestate alone", &[("tracestate", case.as_bytes())]).await;
    }
    // With a valid traceparent the trace continues, as W3C requires, but an invalid trace
    // state is dropped and a long valid one is cut to its 32 list members.
    let dropped = call_with(&[
        ("traceparent", valid().as_bytes()),
        ("tracestate", long_value.as_bytes()),
    ])
    .await;
    for (span, _) in dropped {
        assert_eq!(trace_id(&span), TraceId::from_hex(TRACE).unwrap());
        assert!(span.span_context.trace_state().header().is_empty());
    }
    let cut = call_with(&[
        ("traceparent", valid().as_bytes()),
        ("tracestate", many_members.as_bytes()),
    ])
    .await;
    for (span, _) in cut {
        assert_eq!(trace_id(&span), TraceId::from_hex(TRACE).unwrap());
        let kept = span.span_context.trace_state().header();
        assert_eq!(kept.split(',').count(), 32, "{kept}");
    }
}

/// Random method paths, as a scan or an attacker sends them, over a real server: with the
/// method registry, span names (and `rpc.service` / `rpc.method`) stay within the registry's
/// methods plus one fixed name, whatever the paths.
#[tokio::test]
async fn random_paths_make_no_span_names_of_their_own_with_a_registry() {
    use std::collections::BTreeSet;

    use http_body_util::BodyExt;
    use opentelemetry::Value;
    use palisade_demo::frames::{GrpcBody, message};
    use tower::{Service, ServiceExt};

    const FLOOD: usize = 2_000;
    let telemetry = Telemetry::new();
    let registry = palisade_core::MethodRegistry::from_encoded_file_descriptor_set(
        palisade_demo::FILE_DESCRIPTOR_SET,
    )
    .unwrap();
    let layer = telemetry.server_builder().registry(registry).build();
    let server = palisade_demo::spawn_with(Greeter::new(), layer).await;
    let mut channel = server.channel().await;

    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for _ in 0..FLOOD {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let path = format!("/scan{}.Svc/Random{}", state % 1000, state >> 24);
        let request = http::Request::post(path)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::new(GrpcBody::new([message(b"")], None)))
            .unwrap();
        let response = ServiceExt::<http::Request<tonic::body::Body>>::ready(&mut channel)
            .await
            .unwrap()
            .call(request)
            .await
            .unwrap();
        let _ = response.into_body().collect().await;
    }
    server
        .client()
        .await
        .say_hello(HelloRequest::default())
        .await
        .unwrap();

    let spans = telemetry.spans();
    assert_eq!(spans.len(), FLOOD + 1);
    let names: BTreeSet<&str> = spans.iter().map(|s| &*s.name).collect();
    assert_eq!(names, BTreeSet::from([SAY_HELLO, "grpc"]), "{names:?}");
    for span in spans.iter().filter(|s| s.name == "grpc") {
        for key in ["rpc.service", "rpc.method"] {
            assert_eq!(attr(span, key), Some(&Value::from("_OTHER")), "{key}");
        }
    }
    let hello = spans.iter().find(|s| s.name == SAY_HELLO).unwrap();
    assert_eq!(attr(hello, "rpc.method"), Some(&Value::from("SayHello")));
}

/// No global propagator installed (this test binary never sets one) and none given: trace
/// context would silently not propagate. The layer says so once, at its first call, however
/// many calls follow — on each side.
#[tokio::test]
async fn the_no_op_global_propagator_is_reported_once_per_layer() {
    let (captured, _guard) = Captured::start();
    let telemetry = Telemetry::new();
    let server_layer = palisade_trace::TraceLayer::server()
        .tracer_provider(&telemetry.provider)
        .build();
    let server = palisade_demo::spawn_with(Greeter::new(), server_layer).await;
    let client_layer = palisade_trace::TraceLayer::client()
        .tracer_provider(&telemetry.provider)
        .server_address("127.0.0.1", server.addr.port())
        .build();
    let mut client = traced_client(client_layer, server.channel().await);
    for _ in 0..3 {
        client.say_hello(HelloRequest::default()).await.unwrap();
    }
    let warnings: Vec<String> = captured
        .lines()
        .into_iter()
        .filter(|line| line.contains("no global text-map propagator"))
        .collect();
    assert_eq!(warnings.len(), 2, "one per layer: {warnings:#?}");
    assert!(warnings.iter().all(|line| line.contains("WARN")));
    assert!(warnings[0].contains("set_text_map_propagator"));

    // A layer given its own propagator says nothing.
    let (captured, _guard) = Captured::start();
    let server = palisade_demo::spawn_with(Greeter::new(), telemetry.server_layer()).await;
    server
        .client()
        .await
        .say_hello(HelloRequest::default())
        .await
        .unwrap();
    assert!(captured.lines().is_empty(), "{:#?}", captured.lines());
}

/// The same flood without a registry: a method names its spans once it has earned a slot
/// (core's frequency admission, as metrics does), random paths never do.
#[tokio::test]
async fn random_paths_make_no_span_names_of_their_own_without_a_registry() {
    use std::collections::BTreeSet;

    use http_body_util::BodyExt;
    use palisade_demo::frames::{GrpcBody, message};
    use tower::{Service, ServiceExt};

    const FLOOD: usize = 2_000;
    let telemetry = Telemetry::new();
    let server =
        palisade_demo::spawn_with(Greeter::new(), telemetry.server_layer_without_registry()).await;
    let mut channel = server.channel().await;
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    for _ in 0..FLOOD {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let path = format!("/scan{}.Svc/Random{}", state % 1000, state >> 24);
        let request = http::Request::post(path)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::new(GrpcBody::new([message(b"")], None)))
            .unwrap();
        let response = ServiceExt::<http::Request<tonic::body::Body>>::ready(&mut channel)
            .await
            .unwrap()
            .call(request)
            .await
            .unwrap();
        let _ = response.into_body().collect().await;
    }
    let threshold = usize::from(palisade_core::slots::ADMISSION_THRESHOLD);
    let mut client = server.client().await;
    for _ in 0..2 * threshold {
        client.say_hello(HelloRequest::default()).await.unwrap();
    }
    let spans = telemetry.spans();
    assert_eq!(spans.len(), FLOOD + 2 * threshold);
    let names: BTreeSet<&str> = spans.iter().map(|s| &*s.name).collect();
    assert_eq!(names, BTreeSet::from([SAY_HELLO, "grpc"]), "{names:?}");
    let named = spans.iter().filter(|s| s.name == SAY_HELLO).count();
    assert!(named > threshold - 1, "the method earned its name: {named}");
}
