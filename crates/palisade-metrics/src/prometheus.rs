//! The Prometheus exporter helper: installs `metrics-exporter-prometheus` with histogram
//! buckets for the handling time, runs its upkeep, and serves `GET /metrics`.
//!
//! Without buckets, `metrics-exporter-prometheus` renders histograms as summaries, and
//! `histogram_quantile` over `grpc_server_handling_seconds_bucket` finds nothing; this helper
//! gives `*_handling_seconds` (and OpenTelemetry's `*_call_duration`) Prometheus's default
//! buckets, or yours.
//!
//! # Example
//!
//! One call installs the global recorder and serves `/metrics`:
//!
//! ```no_run
//! use palisade_metrics::{MetricsLayer, prometheus::PrometheusExporter};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = PrometheusExporter::new().serve("127.0.0.1:9464".parse()?).await?;
//! // Build layers after the recorder is installed: they register their handles with it.
//! let layer = MetricsLayer::server().build();
//! println!("metrics on http://{}/metrics", server.local_addr());
//! # let _ = layer; Ok(()) }
//! ```
//!
//! Or install it and mount `/metrics` on your own HTTP server with the handle:
//!
//! ```
//! use palisade_metrics::prometheus::{PrometheusExporter, CONTENT_TYPE};
//!
//! // `build` makes a recorder without installing it (for tests); `install` installs it.
//! let (recorder, handle) = PrometheusExporter::new().build().unwrap();
//! metrics::with_local_recorder(&recorder, || metrics::counter!("demo_total").increment(2));
//! let body = handle.render();
//! assert!(body.contains("demo_total 2"));
//! assert_eq!(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
//! ```

use std::{
    convert::Infallible,
    fmt, io,
    net::SocketAddr,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio::{net::TcpListener, task::JoinHandle};

/// Prometheus's default histogram buckets, in seconds — what go-grpc-prometheus uses for
/// `grpc_server_handling_seconds`.
pub const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The content type of the text exposition format `/metrics` answers with.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often the exporter's upkeep runs by default (as `metrics-exporter-prometheus` does).
pub const DEFAULT_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Metric names (suffixes, after `.` became `_`) that get the handling-time buckets.
const DURATION_SUFFIXES: [&str; 2] = ["_handling_seconds", "_call_duration"];

/// Configures and installs the Prometheus recorder; see the [module docs](self).
pub struct PrometheusExporter {
    builder: PrometheusBuilder,
    buckets: Vec<f64>,
    upkeep_interval: Duration,
}

impl Default for PrometheusExporter {
    fn default() -> Self {
        Self::new()
    }
}

impl PrometheusExporter {
    /// Prometheus's default buckets for the handling time, upkeep every 5 seconds.
    pub fn new() -> Self {
        Self {
            builder: PrometheusBuilder::new(),
            buckets: DEFAULT_BUCKETS.to_vec(),
            upkeep_interval: DEFAULT_UPKEEP_INTERVAL,
        }
    }

    /// The buckets (upper bounds, in seconds) of `*_handling_seconds` and `*_call_duration`.
    #[must_use]
    pub fn handling_time_buckets(mut self, buckets: &[f64]) -> Self {
        self.buckets = buckets.to_vec();
        self
    }

    /// Adds a label to every series the recorder renders.
    #[must_use]
    pub fn global_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.builder = self.builder.add_global_label(key, value);
        self
    }

    /// How often the upkeep (draining histogram samples) runs.
    #[must_use]
    pub fn upkeep_interval(mut self, interval: Duration) -> Self {
        self.upkeep_interval = interval;
        self
    }

    /// Anything else `metrics-exporter-prometheus` offers (buckets for other metrics, idle
    /// timeouts, …), applied to its builder.
    #[must_use]
    pub fn configure(mut self, f: impl FnOnce(PrometheusBuilder) -> PrometheusBuilder) -> Self {
        self.builder = f(self.builder);
        self
    }

    fn recorder(self) -> Result<(PrometheusRecorder, Duration), ExporterError> {
        let mut builder = self.builder;
        for suffix in DURATION_SUFFIXES {
            builder = builder
                .set_buckets_for_metric(Matcher::Suffix(suffix.to_owned()), &self.buckets)
                .map_err(ExporterError::Build)?;
        }
        Ok((builder.build_recorder(), self.upkeep_interval))
    }

    /// Builds a recorder without installing it, with a handle that renders it. Upkeep runs on
    /// a background thread while a clone of the handle lives. For tests, or to combine
    /// recorders; pass the recorder to [`MetricsBuilder::recorder`](crate::MetricsBuilder::recorder)
    /// or `metrics::with_local_recorder`.
    pub fn build(self) -> Result<(PrometheusRecorder, MetricsHandle), ExporterError> {
        let (recorder, interval) = self.recorder()?;
        let handle = Arc::new(recorder.handle());
        spawn_upkeep(Upkeep::Weak(Arc::downgrade(&handle)), interval);
        Ok((recorder, MetricsHandle { inner: handle }))
    }

    /// Installs the recorder as the `metrics` facade's global recorder and runs its upkeep on
    /// a background thread. Needs no async runtime.
    pub fn install(self) -> Result<MetricsHandle, ExporterError> {
        let (recorder, interval) = self.recorder()?;
        let handle = Arc::new(recorder.handle());
        metrics::set_global_recorder(recorder).map_err(|_| ExporterError::AlreadyInstalled)?;
        spawn_upkeep(Upkeep::Strong(handle.clone()), interval);
        Ok(MetricsHandle { inner: handle })
    }

    /// Installs the recorder (see [`install`](Self::install)) and serves `GET /metrics` on
    /// `addr` (port 0 picks a free one: see [`MetricsServer::local_addr`]). Call it inside a
    /// Tokio runtime.
    #[must_use = "dropping the MetricsServer stops serving /metrics at once: bind it to a named variable (`let _metrics = ...`) that lives as long as the program serves"]
    pub async fn serve(self, addr: SocketAddr) -> Result<MetricsServer, ExporterError> {
        let listener = TcpListener::bind(addr).await.map_err(ExporterError::Bind)?;
        let handle = self.install()?;
        handle.serve_listener(listener).map_err(ExporterError::Bind)
    }
}

impl fmt::Debug for PrometheusExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusExporter")
            .field("buckets", &self.buckets)
            .field("upkeep_interval", &self.upkeep_interval)
            .finish_non_exhaustive()
    }
}

enum Upkeep {
    Strong(Arc<PrometheusHandle>),
    Weak(Weak<PrometheusHandle>),
}

fn spawn_upkeep(upkeep: Upkeep, interval: Duration) {
    let spawned = std::thread::Builder::new()
        .name("palisade-metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                match &upkeep {
                    Upkeep::Strong(handle) => handle.run_upkeep(),
                    Upkeep::Weak(weak) => match weak.upgrade() {
                        Some(handle) => handle.run_upkeep(),
                        None => return,
                    },
                }
            }
        });
    // Without the thread, rendering still drains histograms: upkeep only bounds memory
    // between scrapes.
    drop(spawned);
}

/// Renders the recorder's metrics; cheap to clone. Mount it on your own HTTP server, or let
/// [`serve`](MetricsHandle::serve) do it.
#[derive(Clone)]
pub struct MetricsHandle {
    inner: Arc<PrometheusHandle>,
}

impl MetricsHandle {
    /// The metrics in Prometheus's text format (answer with [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        self.inner.render()
    }

    /// Drains histogram samples now (the background upkeep does it periodically).
    pub fn run_upkeep(&self) {
        self.inner.run_upkeep();
    }

    /// The exporter's own handle.
    pub fn prometheus_handle(&self) -> &PrometheusHandle {
        &self.inner
    }

    /// Serves `GET /metrics` on `addr`; other paths get 404, other methods 405.
    #[must_use = "dropping the MetricsServer stops serving /metrics at once: bind it to a named variable (`let _metrics = ...`) that lives as long as the program serves"]
    pub async fn serve(&self, addr: SocketAddr) -> io::Result<MetricsServer> {
        self.serve_listener(TcpListener::bind(addr).await?)
    }

    /// Serves `GET /metrics` on a bound listener. Call it inside a Tokio runtime.
    #[must_use = "dropping the MetricsServer stops serving /metrics at once: bind it to a named variable (`let _metrics = ...`) that lives as long as the program serves"]
    pub fn serve_listener(&self, listener: TcpListener) -> io::Result<MetricsServer> {
        let local_addr = listener.local_addr()?;
        let handle = self.clone();
        let scrapes = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(listener, handle.clone(), scrapes.clone()));
        Ok(MetricsServer {
            local_addr,
            handle,
            task,
            scrapes,
        })
    }

    /// Answers one HTTP request: the metrics for `GET /metrics`, 404 or 405 otherwise.
    pub fn respond<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::default());
        if request.uri().path() != "/metrics" {
            *response.status_mut() = StatusCode::NOT_FOUND;
        } else if request.method() != Method::GET && request.method() != Method::HEAD {
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        } else {
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(CONTENT_TYPE),
            );
            if request.method() == Method::GET {
                *response.body_mut() = Full::new(Bytes::from(self.render()));
            }
        }
        response
    }
}

impl fmt::Debug for MetricsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsHandle").finish_non_exhaustive()
    }
}

async fn accept_loop(listener: TcpListener, handle: MetricsHandle, scrapes: Arc<AtomicU64>) {
    // Connections live in the set, so stopping the server (aborting this task) ends them too.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors and the like: try again later rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let handle = handle.clone();
        let scrapes = scrapes.clone();
        connections.spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = handle.respond(&request);
                if response.status() == StatusCode::OK {
                    scrapes.fetch_add(1, Ordering::Relaxed);
                }
                async move { Ok::<_, Infallible>(response) }
            });
            // A client that goes away mid-request is not an error of ours.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A running `/metrics` server; dropping it stops the server.
///
/// Keep it for as long as the program serves, bound to a named variable: `let _ = ...` (or
/// an unused result) drops it at once, and `/metrics` stops answering.
///
/// ```no_run
/// use palisade_metrics::prometheus::PrometheusExporter;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let _metrics = PrometheusExporter::new().serve("127.0.0.1:9464".parse()?).await?;
/// // ... build the layers and serve ...
/// # Ok(()) }
/// ```
///
/// Dropping the result is refused by `#[must_use]` (this fails to compile under
/// `#![deny(unused_must_use)]`):
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// use palisade_metrics::prometheus::PrometheusExporter;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// PrometheusExporter::new().serve("127.0.0.1:9464".parse()?).await?;
/// # Ok(()) }
/// ```
#[must_use = "dropping the MetricsServer stops serving /metrics at once: bind it to a named variable (`let _metrics = ...`) that lives as long as the program serves"]
pub struct MetricsServer {
    local_addr: SocketAddr,
    handle: MetricsHandle,
    task: JoinHandle<()>,
    scrapes: Arc<AtomicU64>,
}

impl MetricsServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The handle it renders.
    pub fn handle(&self) -> &MetricsHandle {
        &self.handle
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
        let scrapes = self.scrapes.load(Ordering::Relaxed);
        if scrapes == 0 {
            // Most often `let _ = ...serve(..)`: dropped at once, before anyone could scrape.
            tracing::warn!(
                addr = %self.local_addr,
                "palisade-metrics: stopped serving /metrics on {} before any scrape; \
                 was the MetricsServer dropped at once (`let _ = ...serve(..)`)? bind it to a \
                 named variable (`let _metrics = ...`) that lives as long as the program serves",
                self.local_addr
            );
        } else {
            tracing::info!(
                addr = %self.local_addr,
                scrapes,
                "palisade-metrics: stopped serving /metrics on {}",
                self.local_addr
            );
        }
    }
}

impl fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// Why the exporter could not be installed or served.
#[derive(Debug)]
#[non_exhaustive]
pub enum ExporterError {
    /// The exporter's configuration was invalid (such as empty buckets).
    Build(BuildError),
    /// A global `metrics` recorder was already installed.
    AlreadyInstalled,
    /// The `/metrics` address could not be bound.
    Bind(io::Error),
}

impl fmt::Display for ExporterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExporterError::Build(error) => {
                write!(f, "invalid Prometheus exporter configuration: {error}")
            }
            ExporterError::AlreadyInstalled => {
                f.write_str("a global metrics recorder is already installed")
            }
            ExporterError::Bind(error) => write!(f, "cannot serve /metrics: {error}"),
        }
    }
}

impl std::error::Error for ExporterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExporterError::Build(error) => Some(error),
            ExporterError::AlreadyInstalled => None,
            ExporterError::Bind(error) => Some(error),
        }
    }
}
