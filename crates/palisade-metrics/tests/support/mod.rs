//! Test support: a Prometheus recorder of each test's own that says when a counter moves, and
//! a parser of what it renders.
#![allow(dead_code, unreachable_pub)]

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::PrometheusRecorder;
use palisade_metrics::prometheus::{MetricsHandle, PrometheusExporter};
use tokio::sync::watch;

/// A Prometheus recorder that bumps a watch channel whenever a counter changes, so tests wait
/// on the event instead of sleeping.
pub struct NotifyingRecorder {
    inner: PrometheusRecorder,
    changes: Arc<watch::Sender<u64>>,
}

struct NotifyingCounter {
    inner: Counter,
    changes: Arc<watch::Sender<u64>>,
}

impl CounterFn for NotifyingCounter {
    fn increment(&self, value: u64) {
        self.inner.increment(value);
        self.changes.send_modify(|n| *n += 1);
    }

    fn absolute(&self, value: u64) {
        self.inner.absolute(value);
        self.changes.send_modify(|n| *n += 1);
    }
}

impl Recorder for NotifyingRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(NotifyingCounter {
            inner: self.inner.register_counter(key, metadata),
            changes: self.changes.clone(),
        }))
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.inner.register_histogram(key, metadata)
    }
}

/// One test's recorder and its rendered output.
pub struct Recorded {
    pub recorder: Arc<NotifyingRecorder>,
    pub handle: MetricsHandle,
    changes: watch::Receiver<u64>,
}

impl Recorded {
    pub fn new() -> Self {
        let (inner, handle) = PrometheusExporter::new().build().expect("a valid exporter");
        let (tx, changes) = watch::channel(0);
        Self {
            recorder: Arc::new(NotifyingRecorder {
                inner,
                changes: Arc::new(tx),
            }),
            handle,
            changes,
        }
    }

    /// What the recorder renders now, parsed.
    pub fn scrape(&self) -> Samples {
        Samples::parse(&self.handle.render())
    }

    /// Waits until `done` holds for a scrape (re-checked whenever a counter moves); panics
    /// with the last scrape after 20 seconds, a bound for a broken test, not a timing.
    pub async fn wait_for(&mut self, what: &str, done: impl Fn(&Samples) -> bool) -> Samples {
        let wait = async {
            loop {
                self.changes.borrow_and_update();
                let samples = self.scrape();
                if done(&samples) {
                    return samples;
                }
                self.changes.changed().await.expect("the recorder lives");
            }
        };
        match tokio::time::timeout(Duration::from_secs(20), wait).await {
            Ok(samples) => samples,
            Err(_) => panic!("never saw {what}; last scrape:\n{}", self.handle.render()),
        }
    }
}

/// One rendered series.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed Prometheus text exposition.
#[derive(Clone, Debug)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                other => other
                    .parse()
                    .unwrap_or_else(|_| panic!("a number in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').expect("}"))),
                None => (series, BTreeMap::new()),
            };
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        Samples(samples)
    }

    /// The series called `name` that carry every label of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of the series called `name` that carry every label of `labels` (0 if none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The one series called `name` with these labels; panics when absent or ambiguous.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = self.matching(name, labels).collect();
        assert_eq!(found.len(), 1, "one {name} {labels:?} in {self:#?}");
        found[0].value
    }

    /// Whether any series is called `name` with these labels.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }
}

fn parse_labels(mut text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !text.is_empty() {
        let (key, rest) = text.split_once("=\"").expect("key=\"");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().expect("a closing quote") {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect("an escape").1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_owned(), value);
        text = rest[end + 1..].trim_start_matches(',');
    }
    labels
}

#[test]
fn parses_escaped_labels() {
    let samples = Samples::parse(
        "# HELP x y\nx_total{a=\"1\",b=\"q\\\"u\\\\o\"} 3\ny 1.5\nz_bucket{le=\"+Inf\"} 2\n",
    );
    assert_eq!(samples.get("x_total", &[("b", "q\"u\\o")]), 3.0);
    assert_eq!(samples.get("y", &[]), 1.5);
    assert_eq!(samples.get("z_bucket", &[("le", "+Inf")]), 2.0);
}
