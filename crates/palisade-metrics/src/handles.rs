//! Cached metric handles: one [`MethodMetrics`] per method, found by one lookup of the path.

use std::{
    collections::HashSet,
    fmt,
    sync::{Arc, OnceLock},
    time::Duration,
};

use metrics::{Counter, Histogram, Key, Label, Level, Metadata, Unit};
pub(crate) use palisade_core::recorder::Registrar;
use palisade_core::{
    Code, MethodType,
    slots::{AdmissionRule, Slots},
};

use crate::naming::{Metric, Names, Naming, code_label, method_labels};

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// What every method's handles share: names, constant labels, the recorder.
#[derive(Debug)]
pub(crate) struct Family {
    pub(crate) naming: Naming,
    pub(crate) names: Names,
    pub(crate) constant_labels: Vec<Label>,
    /// Whether the duration histogram carries the code label.
    pub(crate) duration_by_code: bool,
    pub(crate) registrar: Registrar,
}

impl Family {
    /// Gives the recorder the help text and unit of every metric.
    pub(crate) fn describe(&self) {
        let names = &self.names;
        self.registrar.with(|recorder| {
            let counters = [
                &names.started,
                &names.handled,
                &names.request_messages,
                &names.response_messages,
            ];
            for Metric { name, help } in counters.into_iter().flatten() {
                recorder.describe_counter(name.clone().into(), None, (*help).into());
            }
            if let Some(Metric { name, help }) = &names.duration {
                recorder.describe_histogram(
                    name.clone().into(),
                    Some(Unit::Seconds),
                    (*help).into(),
                );
            }
        });
    }

    fn key(&self, metric: &Metric, labels: &[Label], code: Option<Code>) -> Key {
        let mut all = Vec::with_capacity(labels.len() + 1 + self.constant_labels.len());
        all.extend_from_slice(labels);
        if let Some(code) = code {
            let (key, value) = code_label(self.naming, code);
            all.push(Label::from_static_parts(key, value));
        }
        all.extend_from_slice(&self.constant_labels);
        Key::from_parts(metric.name.clone(), all)
    }

    fn counter(&self, metric: Option<&Metric>, labels: &[Label], code: Option<Code>) -> Counter {
        match metric {
            Some(metric) => {
                let key = self.key(metric, labels, code);
                self.registrar
                    .with(|recorder| recorder.register_counter(&key, &METADATA))
            }
            None => Counter::noop(),
        }
    }

    fn histogram(
        &self,
        metric: Option<&Metric>,
        labels: &[Label],
        code: Option<Code>,
    ) -> Histogram {
        match metric {
            Some(metric) => {
                let key = self.key(metric, labels, code);
                self.registrar
                    .with(|recorder| recorder.register_histogram(&key, &METADATA))
            }
            None => Histogram::noop(),
        }
    }
}

/// The handles of one method (or of the `unknown` one): registered once, then only used.
pub(crate) struct MethodMetrics {
    family: Arc<Family>,
    labels: Vec<Label>,
    pub(crate) started: Counter,
    pub(crate) request_messages: Counter,
    pub(crate) response_messages: Counter,
    /// Whether the method is known to be unary or server-streaming: its call sends one
    /// request message.
    pub(crate) sends_one_request: bool,
    /// `handled` per code, registered on first use (all at once for known methods).
    handled: [OnceLock<Counter>; 17],
    /// The duration histogram: per code, or at index 0 when it has no code label.
    durations: [OnceLock<Histogram>; 17],
}

impl MethodMetrics {
    /// Registers the handles of a method; `preinitialize` registers every code at once, so
    /// that zero-valued series exist before the first call (as go-grpc-prometheus does).
    pub(crate) fn new(
        family: Arc<Family>,
        method: Option<(&str, &str)>,
        method_type: Option<MethodType>,
        preinitialize: bool,
    ) -> Self {
        let labels: Vec<Label> = method_labels(family.naming, method, method_type)
            .into_iter()
            .map(|(key, value)| Label::new(key, value))
            .collect();
        let names = &family.names;
        let this = Self {
            started: family.counter(names.started.as_ref(), &labels, None),
            request_messages: family.counter(names.request_messages.as_ref(), &labels, None),
            response_messages: family.counter(names.response_messages.as_ref(), &labels, None),
            sends_one_request: matches!(
                method_type,
                Some(MethodType::Unary | MethodType::ServerStream)
            ),
            handled: Default::default(),
            durations: Default::default(),
            labels,
            family,
        };
        if preinitialize {
            if this.family.names.handled.is_some() {
                for code in palisade_core::code::ALL_CODES {
                    this.handled(code);
                }
            }
            if !this.family.duration_by_code {
                this.duration(Code::Ok);
            }
        }
        this
    }

    /// The `handled` counter of a code.
    pub(crate) fn handled(&self, code: Code) -> &Counter {
        self.handled[code as usize].get_or_init(|| {
            self.family
                .counter(self.family.names.handled.as_ref(), &self.labels, Some(code))
        })
    }

    /// The duration histogram of a code (the same one for every code without a code label).
    pub(crate) fn duration(&self, code: Code) -> &Histogram {
        let by_code = self.family.duration_by_code;
        let index = if by_code { code as usize } else { 0 };
        self.durations[index].get_or_init(|| {
            self.family.histogram(
                self.family.names.duration.as_ref(),
                &self.labels,
                by_code.then_some(code),
            )
        })
    }

    /// Records the end of one RPC.
    pub(crate) fn record_end(&self, code: Code, elapsed: Duration) {
        self.handled(code).increment(1);
        self.duration(code).record(elapsed.as_secs_f64());
    }
}

impl fmt::Debug for MethodMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MethodMetrics")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// Every method's handles, by request path: the known methods (fixed at build), the methods
/// that earned a slot at run time (palisade-core's [`Slots`]: on a server seen repeatedly, on a
/// client at first sight, up to a cap), and `unknown` for everything else.
pub(crate) struct Table {
    family: Arc<Family>,
    slots: Slots<Arc<MethodMetrics>, foldhash::fast::RandomState>,
    unknown: OnceLock<Arc<MethodMetrics>>,
}

impl Table {
    /// A table of the known methods, `(service, method, type)`, whose series are created now.
    pub(crate) fn new<'a>(
        family: Arc<Family>,
        known: impl IntoIterator<Item = (&'a str, &'a str, Option<MethodType>)>,
        max_dynamic: usize,
        admission: AdmissionRule,
    ) -> Self {
        let mut seen = HashSet::new();
        let known: Vec<(String, Arc<MethodMetrics>)> = known
            .into_iter()
            .filter_map(|(service, method, method_type)| {
                let path = format!("/{service}/{method}");
                seen.insert(path.clone()).then(|| {
                    let handles = MethodMetrics::new(
                        family.clone(),
                        Some((service, method)),
                        method_type,
                        true,
                    );
                    (path, Arc::new(handles))
                })
            })
            .collect();
        Self {
            slots: Slots::with_hasher(known, max_dynamic, Default::default()).admission(admission),
            family,
            unknown: OnceLock::new(),
        }
    }

    /// The handles for a request path: one hash and probe for a method with a slot.
    pub(crate) fn lookup(&self, path: &str) -> Arc<MethodMetrics> {
        match self.slots.get(path) {
            Some((_, handles)) => handles.clone(),
            None => self.lookup_dynamic(path),
        }
    }

    #[cold]
    fn lookup_dynamic(&self, path: &str) -> Arc<MethodMetrics> {
        let admitted = self.slots.admit(path, |method| {
            Arc::new(MethodMetrics::new(
                self.family.clone(),
                Some((method.service(), method.method())),
                None,
                false,
            ))
        });
        match admitted {
            Some((_, handles)) => handles.clone(),
            None => self.unknown(),
        }
    }

    #[cold]
    fn unknown(&self) -> Arc<MethodMetrics> {
        self.unknown
            .get_or_init(|| Arc::new(MethodMetrics::new(self.family.clone(), None, None, false)))
            .clone()
    }

    /// How many methods are known.
    pub(crate) fn known_len(&self) -> usize {
        self.slots.known_len()
    }

    /// The cap on methods first seen at run time.
    pub(crate) fn max_dynamic(&self) -> usize {
        self.slots.max_dynamic()
    }
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("known", &self.slots.known_len())
            .field("dynamic", &self.slots.dynamic_len())
            .field("max_dynamic", &self.slots.max_dynamic())
            .finish()
    }
}
