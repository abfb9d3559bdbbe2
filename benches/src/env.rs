//! What every bench shares, set up once per process: the global `metrics` recorder
//! (Prometheus), tokens, OpenTelemetry tracer providers with a no-op exporter, `tracing`
//! subscribers writing JSON to a sink, and the demo's method registry.

use std::{
    io,
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::HeaderValue;
use jsonwebtoken::{EncodingKey, Header};
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry_sdk::{
    error::OTelSdkResult,
    propagation::{BaggagePropagator, TraceContextPropagator},
    trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter},
};
use palisade_core::MethodRegistry;
use tracing::Dispatch;
use tracing_subscriber::EnvFilter;

/// The HS256 secret the jwt layers verify with.
pub const SECRET: &[u8] = b"palisade-bench-secret-0123456789abcdef";
/// The issuer of the benches' tokens, required by the jwt layers.
pub const ISSUER: &str = "https://issuer.bench.invalid";
/// The audience of the benches' tokens, required by the jwt layers.
pub const AUDIENCE: &str = "greeter";
/// How many fresh tokens a first-sight bench cycles through when measuring (the
/// verified-token cache holds 1 000; 4 096 otherwise); `PALISADE_BENCH_FRESH_TOKENS` changes it.
pub const FRESH_TOKENS: usize = 65_536;

/// The shared setup; see the [module docs](self).
#[derive(Debug)]
pub struct Env {
    /// A valid HS256 token (`sub`, `iss`, `aud`, `iat`, `exp` in a day, `scope`).
    pub token: String,
    /// `Bearer <token>`, the `authorization` value of server requests.
    pub bearer: HeaderValue,
    /// Samples what the caller sampled, and every root (parent-based, always on); spans go to
    /// a no-op exporter through the SDK's simple processor.
    pub sampled: SdkTracerProvider,
    /// Samples nothing.
    pub unsampled: SdkTracerProvider,
    /// `palisade.demo.v1` methods, from the demo's descriptor set.
    pub registry: MethodRegistry,
    fresh: OnceLock<Arc<[HeaderValue]>>,
}

/// The process's [`Env`], set up at the first call (which installs the global recorder, so
/// call it before building layers that register metric handles).
pub fn get() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        palisade_metrics::prometheus::PrometheusExporter::new()
            .upkeep_interval(Duration::from_millis(250))
            .install()
            .expect("the global Prometheus recorder installs (once per process)");
        assert!(palisade_jwt::install_crypto_provider());
        let token = mint("bench");
        Env {
            bearer: HeaderValue::try_from(format!("Bearer {token}")).expect("an ASCII token"),
            token,
            sampled: provider(Sampler::ParentBased(Box::new(Sampler::AlwaysOn))),
            unsampled: provider(Sampler::AlwaysOff),
            registry: MethodRegistry::from_encoded_file_descriptor_set(
                palisade_demo::FILE_DESCRIPTOR_SET,
            )
            .expect("the demo descriptor set is valid"),
            fresh: OnceLock::new(),
        }
    })
}

impl Env {
    /// `Bearer` values of distinct valid tokens (subjects `user-0`, `user-1`, …), minted at the
    /// first call.
    pub fn fresh_tokens(&self) -> Arc<[HeaderValue]> {
        self.fresh
            .get_or_init(|| {
                let n = std::env::var("PALISADE_BENCH_FRESH_TOKENS")
                    .ok()
                    .and_then(|n| n.parse().ok())
                    // A test run (`cargo test --benches`) makes a few calls only.
                    .unwrap_or(if crate::measuring() {
                        FRESH_TOKENS
                    } else {
                        4096
                    });
                (0..n)
                    .map(|i| {
                        HeaderValue::try_from(format!("Bearer {}", mint(&format!("user-{i}"))))
                            .expect("an ASCII token")
                    })
                    .collect()
            })
            .clone()
    }
}

/// An HS256 token for `subject`, valid for a day, as an identity provider would issue it.
pub fn mint(subject: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let claims = serde_json::json!({
        "sub": subject,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 86_400,
        "scope": "greeter.read greeter.stream",
    });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .expect("HS256 signs")
}

/// Exports nothing, at once.
#[derive(Debug)]
pub struct NoopExporter;

impl SpanExporter for NoopExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        std::hint::black_box(batch);
        Ok(())
    }
}

fn provider(sampler: Sampler) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_simple_exporter(NoopExporter)
        .build()
}

/// W3C trace context and baggage, the propagator palisade-trace's docs install.
pub fn w3c() -> palisade_trace::W3cPropagator {
    palisade_trace::W3cPropagator::new()
}

/// The OpenTelemetry SDK's W3C trace-context and baggage propagators, composed: what a peer
/// that reads the global propagator gets.
pub fn w3c_sdk() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// A `tracing` subscriber as a service installs it — `fmt` JSON (its defaults: timestamp,
/// level, target, current span and span list) with an `EnvFilter` — writing to `io::sink`.
pub fn json_to_sink(filter: &str) -> Dispatch {
    Dispatch::new(
        tracing_subscriber::fmt()
            .json()
            .with_writer(io::sink)
            .with_env_filter(EnvFilter::new(filter))
            .finish(),
    )
}

/// A non-blocking access-log writer whose thread writes to `io::sink`, shared by the process.
pub fn access_log_to_sink() -> palisade_logging::writer::LogWriter {
    static WRITER: OnceLock<palisade_logging::writer::LogWriter> = OnceLock::new();
    WRITER
        .get_or_init(|| {
            let (writer, guard) = palisade_logging::writer::non_blocking(io::sink());
            // The writer runs for the whole process.
            std::mem::forget(guard);
            writer
        })
        .clone()
}

/// The subscriber the `server` and `client` programs install with `--log-format json`
/// (flattened JSON events, the RPC span's fields by `palisade_logging::JsonFields`), writing
/// through the shared non-blocking writer to `io::sink`: with
/// `LoggingBuilder::access_log(access_log_to_sink())`, the logging a deployed server pays.
pub fn deployed_logging(filter: &str) -> Dispatch {
    Dispatch::new(
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(filter))
            .with_writer(access_log_to_sink())
            .json()
            .flatten_event(true)
            .fmt_fields(palisade_logging::JsonFields::new())
            .finish(),
    )
}

/// JSON to a sink at `info`: every call's event is written.
pub fn logging_on() -> Dispatch {
    json_to_sink("info")
}

/// JSON to a sink at `info`, with `palisade_logging` and `tower_http` off: the logging
/// layers' level is disabled.
pub fn logging_off() -> Dispatch {
    json_to_sink("info,palisade_logging=off,tower_http=off")
}
