//! A capturing `tracing` layer: every event with its level, fields and enclosing spans.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
    span,
    subscriber::DefaultGuard,
};
use tracing_subscriber::{Layer, layer::Context, prelude::*, registry::LookupSpan};

/// One captured event.
#[derive(Clone, Debug)]
pub struct Captured {
    pub level: Level,
    pub target: String,
    /// Every field, `message` included.
    pub fields: BTreeMap<String, Value>,
    /// The enclosing spans, root first: name and fields.
    pub spans: Vec<(String, BTreeMap<String, Value>)>,
}

impl Captured {
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    pub fn str(&self, name: &str) -> &str {
        self.fields
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no string field {name} in {self:#?}"))
    }

    pub fn keys(&self) -> Vec<&str> {
        self.fields.keys().map(String::as_str).collect()
    }

    pub fn is_logging(&self) -> bool {
        self.target == palisade_logging::TARGET
    }

    pub fn component(&self) -> Option<&str> {
        self.fields.get("grpc.component").and_then(Value::as_str)
    }

    pub fn span_names(&self) -> Vec<&str> {
        self.spans.iter().map(|(name, _)| name.as_str()).collect()
    }
}

/// Events are kept here; `changed` ticks on every new one.
#[derive(Clone)]
pub struct Capture {
    events: Arc<Mutex<Vec<Captured>>>,
    changed: Arc<watch::Sender<usize>>,
}

impl Capture {
    /// A capture to put in a subscriber of your own.
    pub fn new() -> Capture {
        Capture {
            events: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    /// A capture installed as the thread's default subscriber (tests run a current-thread
    /// runtime, so the server's tasks log here too).
    pub fn install() -> (Capture, DefaultGuard) {
        let capture = Capture::new();
        let guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
        (capture, guard)
    }

    pub fn events(&self) -> Vec<Captured> {
        self.events.lock().unwrap().clone()
    }

    /// This crate's events.
    pub fn logged(&self) -> Vec<Captured> {
        self.events()
            .into_iter()
            .filter(Captured::is_logging)
            .collect()
    }

    /// This crate's events from one side.
    pub fn side(&self, component: &str) -> Vec<Captured> {
        self.logged()
            .into_iter()
            .filter(|e| e.component() == Some(component))
            .collect()
    }

    /// Waits until an event matches (a guard of 10 s against hanging, not a timing assertion).
    pub async fn wait_for(&self, what: impl Fn(&Captured) -> bool) -> Captured {
        let mut rx = self.changed.subscribe();
        let wait = async {
            loop {
                if let Some(found) = self.events().into_iter().find(|e| what(e)) {
                    return found;
                }
                rx.changed().await.expect("the capture lives");
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("no matching event; captured: {:#?}", self.logged()))
    }

    pub fn clear(&self) {
        self.events.lock().unwrap().clear();
    }
}

/// Finish events of one side with this code.
pub fn finished<'a>(events: &'a [Captured], code: &str) -> Vec<&'a Captured> {
    events
        .iter()
        .filter(|e| {
            e.field("message") == Some(&json!("finished call"))
                && e.field("grpc.code") == Some(&json!(code))
        })
        .collect()
}

struct SpanFields(BTreeMap<String, Value>);

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields.0));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let spans = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .from_root()
                    .map(|span| {
                        let fields = span
                            .extensions()
                            .get::<SpanFields>()
                            .map(|f| f.0.clone())
                            .unwrap_or_default();
                        (span.name().to_owned(), fields)
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.events.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            fields: fields.0,
            spans,
        });
        self.changed.send_modify(|n| *n += 1);
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, Value>);

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), json!(format!("{value:?}")));
    }
}

/// A `Write` into a shared buffer, for fmt subscribers whose whole output a test inspects.
#[derive(Clone, Default)]
pub struct Buffer(pub Arc<Mutex<Vec<u8>>>);

impl Buffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Buffer {
        self.clone()
    }
}
