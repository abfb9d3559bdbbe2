//! A real Prometheus (Debian's `prometheus` package) scrapes the demo server through the
//! exporter helper; PromQL sees exactly the codes the client saw, and `histogram_quantile`
//! answers over the handling-time buckets.
//!
//! The same Prometheus loads `dashboards/recording-rules.yml` and answers every query of the
//! Grafana dashboard `dashboards/grpc.json`.
//!
//! This binary installs the global recorder (`PrometheusExporter::serve`), so it holds one
//! test of the global path only.

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use palisade_core::{Code, MethodRegistry, code::ALL_CODES, code::go_name};
use palisade_demo::{
    FILE_DESCRIPTOR_SET,
    pb::{HelloRequest, greeter_client::GreeterClient},
};
use palisade_metrics::{
    MetricsLayer,
    prometheus::{CONTENT_TYPE, PrometheusExporter},
};
use serde_json::Value;
use tower::Layer;

/// How long Prometheus may take to start and scrape, before the test gives up.
const PATIENCE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_exactly_the_codes_the_client_saw() {
    let binary = prometheus_binary();

    // The exporter helper: the global recorder, histogram buckets, upkeep, GET /metrics.
    let metrics = PrometheusExporter::new()
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .expect("the exporter installs and serves");
    let registry = MethodRegistry::from_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET).unwrap();
    let demo =
        palisade_demo::spawn(MetricsLayer::server().registry(registry.clone()).build()).await;
    let channel = MetricsLayer::client()
        .registry(registry)
        .build()
        .layer(demo.channel().await);
    let mut client = GreeterClient::new(channel);

    // Our own /metrics answers as Prometheus expects.
    let (status, content_type, body) = get(metrics.local_addr(), "/metrics").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.as_deref(), Some(CONTENT_TYPE));
    assert!(
        body.contains("# TYPE grpc_server_handling_seconds histogram"),
        "{body}"
    );

    let prometheus = Prometheus::start(&binary, metrics.local_addr());
    let mut seen: BTreeMap<&'static str, u64> = BTreeMap::new();

    // Phase one, then wait for a scrape that shows it.
    let unary = |code: Code, delay_ms: u32| HelloRequest {
        name: "prom".into(),
        count: 0,
        fail_code: code as i32,
        delay_ms,
        ..Default::default()
    };
    for (code, n) in [
        (Code::Ok, 5),
        (Code::NotFound, 2),
        (Code::PermissionDenied, 1),
    ] {
        for _ in 0..n {
            let got = client
                .say_hello(unary(code, 0))
                .await
                .err()
                .map_or(Code::Ok, |s| s.code());
            *seen.entry(go_name(got)).or_default() += 1;
        }
    }
    for (count, code) in [(3, Code::Ok), (2, Code::DataLoss)] {
        let request = HelloRequest {
            count,
            ..unary(code, 0)
        };
        let mut stream = client.say_hello_stream(request).await.unwrap().into_inner();
        let got = loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => break Code::Ok,
                Err(status) => break status.code(),
            }
        };
        *seen.entry(go_name(got)).or_default() += 1;
    }
    prometheus.wait_for_codes(&seen).await;

    // Phase two: the counters move between scrapes, so rate() has something to work on.
    for (code, delay_ms, n) in [
        (Code::Ok, 0, 4),
        (Code::Ok, 30, 2),
        (Code::Unavailable, 0, 1),
    ] {
        for _ in 0..n {
            let got = client
                .say_hello(unary(code, delay_ms))
                .await
                .err()
                .map_or(Code::Ok, |s| s.code());
            *seen.entry(go_name(got)).or_default() += 1;
        }
    }
    assert_eq!(seen.values().sum::<u64>(), 17);
    prometheus.wait_for_codes(&seen).await;
    // The client layer saw the same codes.
    prometheus.wait_for_codes_of("client", &seen).await;

    let median = prometheus
        .wait_for_scalar(
            "histogram_quantile(0.5, sum by (le) (rate(grpc_server_handling_seconds_bucket[1m])))",
        )
        .await;
    assert!(median > 0.0 && median <= 10.0, "median {median}");

    // The recording rules evaluate: requests per second per method, the HPA's figure.
    for rule in [
        r#"namespace_pod_grpc_service_grpc_method:grpc_server_started:rate1m{grpc_method="SayHello"}"#,
        r#"job_grpc_service_grpc_method:grpc_server_started:rate1m{grpc_method="SayHello"}"#,
        r#"job_grpc_service_grpc_method:grpc_server_handling_seconds:p99_5m{grpc_method="SayHello"}"#,
    ] {
        let rps = prometheus.wait_for_scalar(rule).await;
        assert!(rps > 0.0, "{rule} = {rps}");
    }

    // Every query of the Grafana dashboard is valid PromQL with data behind it.
    let dashboard: Value =
        serde_json::from_str(&fs::read_to_string(dashboards().join("grpc.json")).unwrap())
            .expect("the dashboard is JSON");
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let promql = expr
                .replace("$__rate_interval", "1m")
                .replace("$grpc_service", ".*")
                .replace("$grpc_method", ".*")
                .replace("$job", ".*");
            let title = panel["title"].as_str().unwrap();
            prometheus
                .wait_for_data(&format!("{title}: {promql}"), &promql)
                .await;
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} dashboard queries");
    drop(prometheus);
    drop(metrics);
}

#[tokio::test]
async fn the_metrics_server_answers_only_get_metrics() {
    let (_recorder, handle) = PrometheusExporter::new().build().unwrap();
    let server = handle.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = server.local_addr();
    let (status, content_type, _) = get(addr, "/metrics").await.unwrap();
    assert_eq!(
        (status, content_type.as_deref()),
        (StatusCode::OK, Some(CONTENT_TYPE))
    );
    let (status, _, _) = get(addr, "/").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let request = Request::post("/metrics")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (status, _, _) = send(addr, request).await.unwrap();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    drop(server);
    // Stopped: the port no longer answers.
    assert!(get(addr, "/metrics").await.is_none());
}

fn prometheus_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("prometheus"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the `prometheus` binary is not on the PATH: this test runs a real Prometheus. \
                 Install Debian's `prometheus` package (`apt-get install prometheus`), or run \
                 scripts/test, which does it through scripts/setup.d/prometheus.sh"
            )
        })
}

/// A Prometheus server of the test's own, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn dashboards() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dashboards")
}

impl Prometheus {
    fn start(binary: &Path, target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let rules = dashboards().join("recording-rules.yml");
        assert!(rules.is_file(), "{} is missing", rules.display());
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - '{}'\n\
                 scrape_configs:\n  - job_name: palisade\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .unwrap();
        let addr = free_port();
        let log = dir.path().join("prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Self {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    /// Runs an instant query; `None` while Prometheus is not answering.
    async fn query(&self, promql: &str) -> Option<Value> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let (status, _, body) = get(self.addr, &path).await?;
        if status != StatusCode::OK {
            return None;
        }
        let json: Value = serde_json::from_str(&body).ok()?;
        (json["status"] == "success").then(|| json["data"]["result"].clone())
    }

    /// Polls until `done` accepts a query's result (Prometheus is an outside process: there
    /// is no event to wait on but its answers); panics after [`PATIENCE`].
    async fn poll<T>(&self, what: &str, promql: &str, done: impl Fn(&Value) -> Option<T>) -> T {
        let start = Instant::now();
        let mut last = None;
        loop {
            if let Some(result) = self.query(promql).await {
                if let Some(answer) = done(&result) {
                    return answer;
                }
                last = Some(result);
            }
            if start.elapsed() > PATIENCE {
                let log = fs::read_to_string(&self.log).unwrap_or_default();
                let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                panic!(
                    "Prometheus never showed {what}; last answer {last:?}; its log (reversed):\n{tail}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `grpc_server_handled_total` per code is exactly `expected` (every other
    /// code exactly 0: the series are pre-initialized).
    async fn wait_for_codes(&self, expected: &BTreeMap<&'static str, u64>) {
        self.wait_for_codes_of("server", expected).await;
    }

    /// The same for `grpc_{side}_handled_total`.
    async fn wait_for_codes_of(&self, side: &str, expected: &BTreeMap<&'static str, u64>) {
        let promql = format!(
            r#"sum by (grpc_code) (grpc_{side}_handled_total{{job="palisade",grpc_service="palisade.demo.v1.Greeter"}})"#
        );
        let want: BTreeMap<String, u64> = ALL_CODES
            .iter()
            .map(|code| {
                (
                    go_name(*code).to_owned(),
                    expected.get(go_name(*code)).copied().unwrap_or(0),
                )
            })
            .collect();
        self.poll(
            &format!("the {side} counts {expected:?}"),
            &promql,
            |result| {
                let got: BTreeMap<String, u64> = result
                    .as_array()?
                    .iter()
                    .map(|series| {
                        let code = series["metric"]["grpc_code"].as_str()?.to_owned();
                        let value = series["value"][1].as_str()?.parse::<f64>().ok()?;
                        Some((code, value as u64))
                    })
                    .collect::<Option<_>>()?;
                (got == want).then_some(())
            },
        )
        .await;
    }

    /// Waits until a query answers at least one series with a finite value.
    async fn wait_for_data(&self, what: &str, promql: &str) {
        self.poll(what, promql, |result| {
            let finite = result.as_array()?.iter().any(|series| {
                series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(f64::is_finite)
            });
            finite.then_some(())
        })
        .await;
    }

    /// Waits until a query answers one finite number.
    async fn wait_for_scalar(&self, promql: &str) -> f64 {
        self.poll(&format!("a number for {promql}"), promql, |result| {
            let series = result.as_array()?;
            let [series] = series.as_slice() else {
                return None;
            };
            let value: f64 = series["value"][1].as_str()?.parse().ok()?;
            value.is_finite().then_some(value)
        })
        .await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn get(addr: SocketAddr, path: &str) -> Option<(StatusCode, Option<String>, String)> {
    send(
        addr,
        Request::get(path).body(Empty::<Bytes>::new()).unwrap(),
    )
    .await
}

/// One HTTP/1.1 request on a fresh connection; `None` when nothing answers.
async fn send(
    addr: SocketAddr,
    mut request: Request<Empty<Bytes>>,
) -> Option<(StatusCode, Option<String>, String)> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    request
        .headers_mut()
        .insert(http::header::HOST, addr.to_string().parse().unwrap());
    let response = sender.send_request(request).await.ok()?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}
