//! 10 000 random method paths over a real server create no more series than the cap allows,
//! and take no label value a real method needs later.

mod support;

use std::collections::BTreeSet;

use http::Request;
use http_body_util::BodyExt;
use palisade_core::MethodRegistry;
use palisade_demo::{
    FILE_DESCRIPTOR_SET,
    frames::{GrpcBody, message},
};
use palisade_metrics::MetricsLayer;
use support::{Recorded, Samples};
use tonic::body::Body;
use tower::{Layer, Service, ServiceExt};

const CALLS: usize = 10_000;
const CAP: usize = 25;
const TASKS: usize = 8;
/// Calls of a real method after the flood.
const REAL_CALLS: usize = 2 * palisade_core::slots::ADMISSION_THRESHOLD as usize;

/// A small xorshift generator: random enough for paths, reproducible.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Mostly well-formed methods, some malformed paths, a few very long ones.
    fn path(&mut self) -> String {
        let n = self.next();
        match n % 20 {
            0 => format!("/{}", n >> 8),
            1 => format!("/svc{}/{}/extra", n >> 8, n >> 16),
            2 => format!(
                "/long.Service/{}",
                "x".repeat(300 + (n >> 8) as usize % 100)
            ),
            _ => format!(
                "/pkg{}.Svc{}/Method{}",
                (n >> 8) % 1000,
                (n >> 20) % 50,
                n >> 40
            ),
        }
    }
}

fn methods(samples: &Samples, name: &str) -> BTreeSet<(String, String)> {
    samples
        .matching(name, &[])
        .map(|s| {
            (
                s.labels["grpc_service"].clone(),
                s.labels["grpc_method"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_paths_stay_within_the_cap() {
    let server = Recorded::new();
    let client = Recorded::new();
    let registry = MethodRegistry::from_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET).unwrap();
    let demo = palisade_demo::spawn(
        MetricsLayer::server()
            .registry(registry)
            .recorder(server.recorder.clone())
            .build(),
    )
    .await;
    // The client knows no method: its paths are its own, so each gets a name of its own at
    // first sight, up to the cap; every path past it is `unknown`.
    let channel = MetricsLayer::client()
        .max_dynamic_methods(CAP)
        .recorder(client.recorder.clone())
        .build()
        .layer(demo.channel().await);

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let mut channel = channel.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (task as u64 + 1));
            let mut distinct = BTreeSet::new();
            for _ in 0..CALLS / TASKS {
                let path = rng.path();
                distinct.insert(path.clone());
                let request = Request::post(path)
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(Body::new(GrpcBody::new([message(b"")], None)))
                    .unwrap();
                let response = ServiceExt::<Request<Body>>::ready(&mut channel)
                    .await
                    .unwrap()
                    .call(request)
                    .await
                    .unwrap();
                let _ = response.into_body().collect().await;
            }
            distinct
        }));
    }
    let mut distinct = BTreeSet::new();
    for task in tasks {
        distinct.extend(task.await.unwrap());
    }
    assert!(
        distinct.len() > 5_000,
        "the paths are mostly distinct: {}",
        distinct.len()
    );

    // After the flood the cap is reached: a method first called now is `unknown`.
    let mut greeter = palisade_demo::pb::greeter_client::GreeterClient::new(channel.clone());
    for _ in 0..REAL_CALLS {
        greeter
            .say_hello(palisade_demo::pb::HelloRequest::default())
            .await
            .unwrap();
    }

    let samples = client.scrape();
    let names = methods(&samples, "grpc_client_started_total");
    assert_eq!(names.len(), CAP + 1, "{names:?}");
    assert!(names.contains(&("unknown".into(), "unknown".into())));
    assert!(!names.contains(&("palisade.demo.v1.Greeter".into(), "SayHello".into())));
    assert!(
        samples.get("grpc_client_started_total", &[("grpc_method", "unknown")])
            >= REAL_CALLS as f64
    );
    let total = (CALLS + REAL_CALLS) as f64;
    assert_eq!(samples.sum("grpc_client_started_total", &[]), total);
    assert_eq!(samples.sum("grpc_client_handled_total", &[]), total);
    for name in [
        "grpc_client_handled_total",
        "grpc_client_msg_sent_total",
        "grpc_client_handling_seconds_count",
    ] {
        assert!(methods(&samples, name).is_subset(&names), "{name}");
    }
    // Every call got Unimplemented or another status the server chose: one code per method
    // at most here, so the whole client exposition stays small.
    let series = samples.0.len();
    assert!(series <= (CAP + 1) * 20, "{series} client series");
    // No label value is longer than the longest admitted path.
    assert!(
        samples
            .0
            .iter()
            .all(|s| s.labels.values().all(|v| v.len() <= 256))
    );

    // The server knows its methods from the registry: every random path is `unknown`.
    let samples = server.scrape();
    let names = methods(&samples, "grpc_server_started_total");
    assert_eq!(
        names,
        BTreeSet::from([
            ("palisade.demo.v1.Greeter".into(), "SayHello".into()),
            ("palisade.demo.v1.Greeter".into(), "SayHelloStream".into()),
            ("unknown".into(), "unknown".into()),
        ])
    );
    assert_eq!(
        samples.get("grpc_server_started_total", &[("grpc_method", "unknown")]),
        CALLS as f64
    );
}

#[tokio::test]
async fn a_client_method_has_its_own_series_from_its_first_call() {
    // No registry on the client: its paths are its own, so the first call already counts
    // under the method's name, and there is no `unknown` series at all.
    let demo = palisade_demo::spawn(tower::layer::util::Identity::new()).await;
    let client = Recorded::new();
    let channel = MetricsLayer::client()
        .recorder(client.recorder.clone())
        .build()
        .layer(demo.channel().await);
    let mut greeter = palisade_demo::pb::greeter_client::GreeterClient::new(channel);
    greeter
        .say_hello(palisade_demo::pb::HelloRequest::default())
        .await
        .unwrap();
    let samples = client.scrape();
    assert_eq!(
        methods(&samples, "grpc_client_started_total"),
        BTreeSet::from([("palisade.demo.v1.Greeter".into(), "SayHello".into())])
    );
    assert_eq!(
        samples.get("grpc_client_handled_total", &[("grpc_method", "SayHello")]),
        1.0
    );
}
