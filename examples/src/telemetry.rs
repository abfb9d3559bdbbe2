//! Logs to stdout and an OpenTelemetry SDK tracer provider, as the demo programs install them.

use clap::ValueEnum;
use opentelemetry::{global, propagation::TextMapCompositePropagator};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::{BaggagePropagator, TraceContextPropagator},
    trace::{Sampler, SdkTracerProvider},
};
use palisade_core::side::OnSide;
use palisade_logging::{
    LoggingBuilder,
    writer::{LogWriter, NonBlocking, WriterGuard},
};
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

/// How logs are written to stdout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

/// Keeps the log writer thread running; dropping it writes out every line still buffered and
/// flushes stdout. Keep it until the program's last log line (after the tracer provider's
/// shutdown).
#[must_use = "dropping the guard stops the log writer"]
#[derive(Debug)]
pub struct LogGuard {
    _writer: WriterGuard,
}

/// The access log installed by [`init_logs`] in JSON format, for [`access_log`].
static ACCESS_LOG: OnceLock<LogWriter> = OnceLock::new();

/// Installs a `tracing` subscriber writing to stdout through a non-blocking writer (a bounded
/// buffer, written out by a thread of its own; lines that do not fit are dropped and counted
/// in `palisade_log_dropped_total`); `RUST_LOG` overrides `default_filter`. In JSON format,
/// the same writer becomes the [`access_log`] of the programs' logging layers: Palisade
/// writes each RPC's line itself, handed to the buffer without a `tracing` event.
pub fn init_logs(format: LogFormat, default_filter: &str) -> LogGuard {
    let (writer, guard) = NonBlocking::builder().finish(std::io::stdout());
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone());
    // A second install (the stack story runs server and client in one process) is a no-op.
    let installed = match format {
        // Span fields written straight as JSON: the RPC's span opens without a map of values.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .fmt_fields(palisade_logging::JsonFields::new())
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if installed.is_ok() && format == LogFormat::Json {
        let _ = ACCESS_LOG.set(writer);
    }
    LogGuard { _writer: guard }
}

/// `layer` writing its lines to the access log of [`init_logs`] (JSON format), or `layer`
/// as it is (its events go to the `tracing` subscriber) when there is none.
pub fn access_log<K: OnSide>(layer: LoggingBuilder<K>) -> LoggingBuilder<K> {
    match ACCESS_LOG.get() {
        Some(writer) => layer.access_log(writer.clone()),
        None => layer,
    }
}

/// Installs an SDK tracer provider (exporting with OTLP over gRPC only when an endpoint is
/// given; without one, spans are not sampled unless `OTEL_TRACES_SAMPLER` says otherwise:
/// their ids still propagate) and the W3C trace-context and baggage propagators, as the globals. Call it inside
/// the tokio runtime, and `shutdown()` the provider before exiting so spans are flushed.
pub fn install_tracer(
    service: &'static str,
    otlp_endpoint: Option<&str>,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build());
    if let Some(endpoint) = otlp_endpoint {
        let exporter = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    } else if std::env::var_os("OTEL_TRACES_SAMPLER").is_none() {
        // Nothing would ever export a span: keep the trace ids (they propagate, and the
        // handler and the log lines show them) but record nothing. An explicit
        // `OTEL_TRACES_SAMPLER` still decides.
        builder = builder.with_sampler(Sampler::AlwaysOff);
    }
    let provider = builder.build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    Ok(provider)
}
