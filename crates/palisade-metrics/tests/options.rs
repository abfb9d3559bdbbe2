//! The layer's options, in process: naming, namespace, constant labels, the code on the
//! histogram, skipping, allow-lists, defaults of the cardinality cap, service errors.

mod support;

use std::{convert::Infallible, sync::Arc};

use http::{Request, Response};
use http_body_util::BodyExt;
use palisade_core::{Code, Matcher, MethodRegistry, side::OnSide};
use palisade_demo::{
    FILE_DESCRIPTOR_SET, SAY_HELLO, SAY_HELLO_STREAM,
    frames::{GrpcBody, UnaryService, message, unary_service},
};
use palisade_metrics::{
    MetricsBuilder, MetricsLayer, Naming,
    body::{RequestBodies, SideDefault},
};
use support::{Recorded, Samples};
use tower::{Layer, Service, ServiceExt};

fn registry() -> MethodRegistry {
    MethodRegistry::from_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET).unwrap()
}

/// Calls `path` on a unary service answering `code` through the configured layer, reading
/// the response to its end; returns the scrape.
async fn call<K, S, B>(
    recorded: &Recorded,
    builder: MetricsBuilder<K>,
    calls: &[(&str, Code)],
) -> Samples
where
    K: OnSide,
    SideDefault: RequestBodies<K>,
    MetricsLayer<K>: Layer<UnaryService, Service = S>,
    S: Service<Request<GrpcBody>, Response = Response<B>, Error = Infallible>,
    B: BodyExt<Error: std::fmt::Debug>,
{
    let layer = builder.recorder(recorded.recorder.clone()).build();
    for (path, code) in calls {
        let service = layer.layer(unary_service(*code));
        let request = Request::post(*path)
            .body(GrpcBody::new([message(b"")], None))
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    recorded.scrape()
}

const HELLO: [(&str, &str); 3] = [
    ("grpc_type", "unary"),
    ("grpc_service", "palisade.demo.v1.Greeter"),
    ("grpc_method", "SayHello"),
];

#[tokio::test]
async fn opentelemetry_naming() {
    let recorded = Recorded::new();
    let samples = call(
        &recorded,
        MetricsLayer::server()
            .naming(Naming::OpenTelemetry)
            .registry(registry()),
        &[
            (SAY_HELLO, Code::Ok),
            (SAY_HELLO, Code::DeadlineExceeded),
            (SAY_HELLO, Code::Ok),
        ],
    )
    .await;
    let hello = [
        ("rpc_system_name", "grpc"),
        ("rpc_method", "palisade.demo.v1.Greeter/SayHello"),
    ];
    let with = |code| {
        let mut labels = hello.to_vec();
        labels.push(("rpc_response_status_code", code));
        samples.get("rpc_server_call_duration_count", &labels)
    };
    assert_eq!(with("OK"), 2.0);
    assert_eq!(with("DEADLINE_EXCEEDED"), 1.0);
    // Buckets from the exporter helper: a histogram, not a summary.
    assert!(samples.has("rpc_server_call_duration_bucket", &[("le", "0.005")]));
    assert!(!samples.0.iter().any(|s| s.name.starts_with("grpc_")));
    let text = recorded.handle.render();
    assert!(
        text.contains("# TYPE rpc_server_call_duration histogram"),
        "{text}"
    );
}

#[tokio::test]
async fn namespace_constant_labels_and_the_code_on_the_histogram() {
    let recorded = Recorded::new();
    let samples = call(
        &recorded,
        MetricsLayer::server()
            .registry(registry())
            .namespace("shop")
            .constant_label("region", "eu")
            .histogram_with_code(true),
        &[(SAY_HELLO, Code::Ok), (SAY_HELLO, Code::Aborted)],
    )
    .await;
    let mut labels = HELLO.to_vec();
    labels.push(("region", "eu"));
    assert_eq!(samples.get("shop_grpc_server_started_total", &labels), 2.0);
    labels.push(("grpc_code", "Aborted"));
    assert_eq!(samples.get("shop_grpc_server_handled_total", &labels), 1.0);
    assert_eq!(
        samples.get("shop_grpc_server_handling_seconds_count", &labels),
        1.0
    );
    labels.pop();
    labels.push(("grpc_code", "OK"));
    assert_eq!(
        samples.get("shop_grpc_server_handling_seconds_count", &labels),
        1.0
    );
    // Every series carries the constant label; none is unprefixed.
    assert!(
        samples
            .0
            .iter()
            .all(|s| s.labels.get("region").map(String::as_str) == Some("eu"))
    );
    assert!(
        samples
            .0
            .iter()
            .all(|s| s.name.starts_with("shop_grpc_server_"))
    );
    let text = recorded.handle.render();
    assert!(
        text.contains("# TYPE shop_grpc_server_handling_seconds histogram"),
        "{text}"
    );
    assert!(text.contains(
        "# HELP shop_grpc_server_started_total Total number of RPCs started on the server."
    ));
}

#[tokio::test]
async fn histogram_buckets_are_prometheus_defaults() {
    let recorded = Recorded::new();
    let samples = call(
        &recorded,
        MetricsLayer::server().registry(registry()),
        &[(SAY_HELLO, Code::Ok)],
    )
    .await;
    let les: Vec<_> = samples
        .matching("grpc_server_handling_seconds_bucket", &HELLO)
        .map(|s| s.labels["le"].clone())
        .collect();
    assert_eq!(
        les,
        [
            "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"
        ]
    );
    let mut le = HELLO.to_vec();
    le.push(("le", "+Inf"));
    assert_eq!(samples.get("grpc_server_handling_seconds_bucket", &le), 1.0);
}

#[tokio::test]
async fn skipped_methods_are_not_recorded() {
    let recorded = Recorded::new();
    let samples = call(
        &recorded,
        MetricsLayer::server()
            .registry(registry())
            .skip(Matcher::health_and_reflection()),
        &[
            ("/grpc.health.v1.Health/Check", Code::Ok),
            (SAY_HELLO, Code::Ok),
        ],
    )
    .await;
    assert_eq!(samples.get("grpc_server_started_total", &HELLO), 1.0);
    assert!(!samples.has("grpc_server_started_total", &[("grpc_service", "unknown")]));
    assert!(!samples.has(
        "grpc_server_started_total",
        &[("grpc_service", "grpc.health.v1.Health")]
    ));
}

#[tokio::test]
async fn without_a_registry_methods_get_their_names_and_an_unknown_type() {
    let recorded = Recorded::new();
    // A client's paths are its own: a method has its own names from its first call.
    let mut calls = vec![(SAY_HELLO, Code::Ok); THRESHOLD];
    calls.extend(vec![(SAY_HELLO_STREAM, Code::Unavailable); THRESHOLD]);
    calls.push(("/not-grpc", Code::Ok));
    let samples = call(&recorded, MetricsLayer::client(), &calls).await;
    let labels = [
        ("grpc_type", "unknown"),
        ("grpc_service", "palisade.demo.v1.Greeter"),
        ("grpc_method", "SayHelloStream"),
        ("grpc_code", "Unavailable"),
    ];
    assert_eq!(
        samples.get("grpc_client_handled_total", &labels),
        THRESHOLD as f64
    );
    // Series of methods first seen at run time are created per code on first use.
    assert!(!samples.has(
        "grpc_client_handled_total",
        &[("grpc_method", "SayHello"), ("grpc_code", "Internal")]
    ));
    // Only the path that is not a gRPC method is `unknown`.
    assert_eq!(
        samples.get("grpc_client_started_total", &[("grpc_method", "unknown")]),
        1.0
    );
}

/// How many calls earn a method first seen at run time on a server its own names.
const THRESHOLD: usize = palisade_core::slots::ADMISSION_THRESHOLD as usize;

#[tokio::test]
async fn an_allow_list_bounds_names_like_a_registry() {
    let recorded = Recorded::new();
    let samples = call(
        &recorded,
        MetricsLayer::client().allow_methods(["palisade.demo.v1.Greeter/SayHello"]),
        &[(SAY_HELLO, Code::Ok), (SAY_HELLO_STREAM, Code::Ok)],
    )
    .await;
    let hello = [("grpc_type", "unknown"), ("grpc_method", "SayHello")];
    assert_eq!(samples.get("grpc_client_started_total", &hello), 1.0);
    assert_eq!(
        samples.get("grpc_client_started_total", &[("grpc_method", "unknown")]),
        1.0
    );
    assert!(!samples.has(
        "grpc_client_started_total",
        &[("grpc_method", "SayHelloStream")]
    ));
    // Allowed methods are pre-initialized too.
    assert_eq!(
        samples.get(
            "grpc_client_handled_total",
            &[("grpc_method", "SayHello"), ("grpc_code", "DataLoss")]
        ),
        0.0
    );
}

#[tokio::test]
async fn a_registry_with_a_dynamic_cap_admits_that_many_more() {
    let recorded = Recorded::new();
    let samples = call(
        &recorded,
        MetricsLayer::server()
            .registry(registry())
            .max_dynamic_methods(1),
        &[
            vec![("/a.B/C", Code::Ok); THRESHOLD + 1],
            vec![("/a.B/D", Code::Ok); THRESHOLD],
        ]
        .concat(),
    )
    .await;
    // C earned the one slot at its THRESHOLD-th call; D found none left.
    assert_eq!(
        samples.get("grpc_server_started_total", &[("grpc_method", "C")]),
        2.0
    );
    assert_eq!(
        samples.get("grpc_server_started_total", &[("grpc_method", "unknown")]),
        (THRESHOLD - 1 + THRESHOLD) as f64
    );
    assert!(!samples.has("grpc_server_started_total", &[("grpc_method", "D")]));
}

#[tokio::test]
async fn a_service_error_is_recorded_with_its_status_or_the_side_fallback() {
    #[derive(Clone)]
    struct Failing(Option<tonic::Status>);
    // A client layer hands its inner service the request body unchanged.
    impl Service<Request<GrpcBody>> for Failing {
        type Response = Response<GrpcBody>;
        type Error = Box<dyn std::error::Error + Send + Sync>;
        type Future = std::future::Ready<Result<Response<GrpcBody>, Self::Error>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<GrpcBody>) -> Self::Future {
            std::future::ready(Err(match self.0.clone() {
                Some(status) => Box::new(status),
                None => Box::new(std::io::Error::other("connection refused")),
            }))
        }
    }
    let recorded = Recorded::new();
    let layer = MetricsLayer::client()
        .registry(registry())
        .recorder(recorded.recorder.clone())
        .build();
    for inner in [
        Failing(None),
        Failing(Some(tonic::Status::resource_exhausted("slow down"))),
    ] {
        let request = Request::post(SAY_HELLO).body(GrpcBody::default()).unwrap();
        assert!(layer.layer(inner).oneshot(request).await.is_err());
    }
    let samples = recorded.scrape();
    let code = |code| {
        let mut labels = HELLO.to_vec();
        labels.push(("grpc_code", code));
        samples.get("grpc_client_handled_total", &labels)
    };
    assert_eq!(code("Unavailable"), 1.0);
    assert_eq!(code("ResourceExhausted"), 1.0);
    assert_eq!(samples.sum("grpc_client_handled_total", &HELLO), 2.0);
}

#[tokio::test]
async fn the_facade_recorder_is_used_without_one_given() {
    // Without `.recorder`, handles come from the facade's recorder at build time (here a
    // thread-local one): what the exporter helper's global install relies on.
    let recorded = Recorded::new();
    let recorder: Arc<dyn metrics::Recorder + Send + Sync> = recorded.recorder.clone();
    let layer = metrics::with_local_recorder(recorder.as_ref(), || {
        MetricsLayer::server().registry(registry()).build()
    });
    let request = Request::post(SAY_HELLO).body(GrpcBody::default()).unwrap();
    let response = layer
        .layer(unary_service(Code::Ok))
        .oneshot(request)
        .await
        .unwrap_or_else(|e: Infallible| match e {});
    response.into_body().collect().await.unwrap();
    let mut labels = HELLO.to_vec();
    labels.push(("grpc_code", "OK"));
    assert_eq!(
        recorded.scrape().get("grpc_server_handled_total", &labels),
        1.0
    );
}

#[tokio::test]
async fn custom_buckets_for_the_handling_time() {
    use palisade_metrics::prometheus::{ExporterError, PrometheusExporter};
    let (recorder, handle) = PrometheusExporter::new()
        .handling_time_buckets(&[0.1, 1.0])
        .build()
        .unwrap();
    let layer = MetricsLayer::server()
        .registry(registry())
        .recorder(Arc::new(recorder))
        .build();
    let request = Request::post(SAY_HELLO).body(GrpcBody::default()).unwrap();
    let response = layer
        .layer(unary_service(Code::Ok))
        .oneshot(request)
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
    let samples = Samples::parse(&handle.render());
    let les: Vec<_> = samples
        .matching("grpc_server_handling_seconds_bucket", &HELLO)
        .map(|s| s.labels["le"].clone())
        .collect();
    assert_eq!(les, ["0.1", "1", "+Inf"]);
    assert!(matches!(
        PrometheusExporter::new().handling_time_buckets(&[]).build(),
        Err(ExporterError::Build(_))
    ));
}

use palisade_demo::capture::warnings_during;

#[test]
fn a_layer_built_before_any_recorder_is_installed_says_so_once() {
    // This binary never installs a global recorder.
    let (layer, text) = warnings_during(|| MetricsLayer::server().registry(registry()).build());
    assert_eq!(text.matches("no `metrics` recorder").count(), 1, "{text}");
    assert!(
        text.contains("WARN") && text.contains("PrometheusExporter"),
        "{text}"
    );
    // Calls through it say nothing more.
    let ((), text) = warnings_during(|| {
        let _service = layer.layer(unary_service(Code::Ok));
    });
    assert!(text.is_empty(), "{text}");

    // With a recorder (here a thread-local one, or one given), no warning.
    let recorded = Recorded::new();
    let recorder: Arc<dyn metrics::Recorder + Send + Sync> = recorded.recorder.clone();
    let (_, text) = warnings_during(|| {
        metrics::with_local_recorder(recorder.as_ref(), || MetricsLayer::server().build())
    });
    assert!(text.is_empty(), "{text}");
    let (_, text) = warnings_during(|| {
        MetricsLayer::server()
            .recorder(recorded.recorder.clone())
            .build()
    });
    assert!(text.is_empty(), "{text}");
}

#[tokio::test]
async fn a_metrics_server_says_when_it_stops_and_warns_if_it_never_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_recorder, handle) = palisade_metrics::prometheus::PrometheusExporter::new()
        .build()
        .unwrap();
    // `let _ = ...serve(..)`: dropped at once.
    let server = handle.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = server.local_addr();
    let ((), text) = warnings_during(|| drop(server));
    assert!(
        text.contains("WARN")
            && text.contains("before any scrape")
            && text.contains(&addr.to_string()),
        "{text}"
    );

    // Dropped after serving a scrape: said at info, not a warning.
    let server = handle.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    assert!(reply.starts_with(b"HTTP/1.1 200"));
    let ((), text) = warnings_during(|| drop(server));
    assert!(text.is_empty(), "{text}");
}
