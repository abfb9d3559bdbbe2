//! Shared test support: an SDK provider exporting to memory, W3C propagation, traced clients
//! and servers of our own on 127.0.0.1:0.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;

use opentelemetry::{
    Value,
    propagation::TextMapCompositePropagator,
    trace::{SpanId, SpanKind, TraceId},
};
use opentelemetry_sdk::{
    propagation::{BaggagePropagator, TraceContextPropagator},
    trace::{InMemorySpanExporter, Sampler, SdkTracer, SdkTracerProvider, SpanData},
};
use palisade_core::side::{self, Client};
use palisade_demo::pb::{
    greeter_client::GreeterClient,
    greeter_server::{Greeter as GreeterTrait, GreeterServer},
};
use palisade_trace::{Trace, TraceBuilder, TraceLayer};
use tokio::{net::TcpListener, sync::oneshot};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Server};

pub const SAY_HELLO: &str = "palisade.demo.v1.Greeter/SayHello";
pub const SAY_HELLO_STREAM: &str = "palisade.demo.v1.Greeter/SayHelloStream";

/// An SDK tracer provider exporting every span, as it ends, to memory.
pub struct Telemetry {
    pub exporter: InMemorySpanExporter,
    pub provider: SdkTracerProvider,
}

impl Telemetry {
    /// Samples everything (parent-based, root always on: the SDK's default).
    pub fn new() -> Self {
        Self::with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
    }

    pub fn with_sampler(sampler: Sampler) -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_sampler(sampler)
            .with_simple_exporter(exporter.clone())
            .build();
        Self { exporter, provider }
    }

    /// The finished spans so far.
    pub fn spans(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().expect("in-memory spans")
    }

    /// A server layer as servers are meant to be set up: with the method registry.
    pub fn server_layer(&self) -> TraceLayer<side::Server, SdkTracer> {
        self.server_builder().build()
    }

    /// A server layer without a registry: its span names are earned by frequency.
    pub fn server_layer_without_registry(&self) -> TraceLayer<side::Server, SdkTracer> {
        self.server_builder_without_registry().build()
    }

    pub fn client_layer(&self, server: SocketAddr) -> TraceLayer<Client, SdkTracer> {
        self.client_builder(server).build()
    }

    /// The builder of [`server_layer`](Self::server_layer).
    pub fn server_builder(&self) -> TraceBuilder<side::Server, SdkTracer> {
        self.server_builder_without_registry().registry(
            palisade_core::MethodRegistry::from_encoded_file_descriptor_set(
                palisade_demo::FILE_DESCRIPTOR_SET,
            )
            .unwrap(),
        )
    }

    /// The builder of [`server_layer_without_registry`](Self::server_layer_without_registry).
    pub fn server_builder_without_registry(&self) -> TraceBuilder<side::Server, SdkTracer> {
        TraceLayer::server()
            .tracer_provider(&self.provider)
            .propagator(w3c())
    }

    /// The builder of [`client_layer`](Self::client_layer).
    pub fn client_builder(&self, server: SocketAddr) -> TraceBuilder<Client, SdkTracer> {
        TraceLayer::client()
            .tracer_provider(&self.provider)
            .propagator(w3c())
            .server_address(server.ip().to_string(), server.port())
    }
}

/// W3C trace context and baggage.
pub fn w3c() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

pub type TracedClient = GreeterClient<Trace<Channel, Client, SdkTracer>>;

/// A Greeter client whose channel is wrapped in `layer`.
pub fn traced_client(layer: TraceLayer<Client, SdkTracer>, channel: Channel) -> TracedClient {
    GreeterClient::new(tower::ServiceBuilder::new().layer(layer).service(channel))
}

/// A server of our own Greeter implementation behind a trace layer; dropping it stops it.
pub struct OwnServer {
    pub addr: SocketAddr,
    _shutdown: oneshot::Sender<()>,
}

impl OwnServer {
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

pub async fn spawn_own<G: GreeterTrait>(
    greeter: G,
    layer: TraceLayer<side::Server, SdkTracer>,
) -> OwnServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        Server::builder()
            .layer(layer)
            .add_service(GreeterServer::new(greeter))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    OwnServer {
        addr,
        _shutdown: tx,
    }
}

/// The only span of this kind.
pub fn only(spans: &[SpanData], kind: SpanKind) -> &SpanData {
    let mut of_kind = spans.iter().filter(|s| s.span_kind == kind);
    let span = of_kind
        .next()
        .unwrap_or_else(|| panic!("no {kind:?} span in {spans:#?}"));
    assert!(of_kind.next().is_none(), "more than one {kind:?} span");
    span
}

/// An attribute's value.
pub fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

pub fn trace_id(span: &SpanData) -> TraceId {
    span.span_context.trace_id()
}

pub fn span_id(span: &SpanData) -> SpanId {
    span.span_context.span_id()
}

/// What `tracing` events say while the guard is held, on this thread (a current-thread
/// runtime runs the server there too): their text, one line each.
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    pub fn start() -> (Self, tracing::subscriber::DefaultGuard) {
        // With one dispatcher registered, tracing computes a new callsite's interest from the
        // default of whichever thread hits it first — another test's, which has none — and
        // caches "never" for good: a warning would go unseen, and "no warning" would pass
        // without testing anything. With a second one alive for the whole binary, it asks
        // each of them, this one included.
        static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        let captured = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (captured, guard)
    }

    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}
