//! The layer's series: `palisade_retry_attempts_total{grpc_service,grpc_method}` and
//! `palisade_retry_budget_exhausted_total`, their labels bounded as every Palisade series.

use std::fmt;

use metrics::{Key, Level, Metadata, Recorder};
use palisade_core::{
    recorder::{MethodLabels as Labels, Registrar, method_counter},
    slots::Slots,
};

/// Attempts after the first (retries and hedges) sent, by method.
pub const ATTEMPTS_TOTAL: &str = "palisade_retry_attempts_total";

/// Retries and hedges not made because the budget was spent (once per call).
pub const BUDGET_EXHAUSTED_TOTAL: &str = "palisade_retry_budget_exhausted_total";

/// The label value of methods without a series of their own.
const UNKNOWN: &str = "unknown";

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Where the counters are registered, and which methods have series of their own.
pub(crate) struct Counters {
    slots: Slots<Labels>,
    registrar: Registrar,
}

impl Counters {
    /// The counters for the `known` methods (`(service, method)`; their series made at zero)
    /// and up to `max_dynamic` others, which earn series by being retried.
    pub(crate) fn new(
        known: impl IntoIterator<Item = (String, String)>,
        max_dynamic: usize,
        registrar: Registrar,
    ) -> Self {
        let known: Vec<(String, Labels)> = known
            .into_iter()
            .map(|(service, method)| {
                let path = format!("/{service}/{method}");
                let labels = Labels {
                    service: service.into(),
                    method: method.into(),
                };
                (path, labels)
            })
            .collect();
        registrar.with(|recorder| {
            recorder.describe_counter(
                ATTEMPTS_TOTAL.into(),
                None,
                "Attempts after the first (retries and hedges) sent by palisade-retry.".into(),
            );
            recorder.describe_counter(
                BUDGET_EXHAUSTED_TOTAL.into(),
                None,
                "Calls whose retry or hedge palisade-retry did not make: the budget was spent."
                    .into(),
            );
            for (_, labels) in &known {
                attempts(recorder, &labels.service, &labels.method).increment(0);
            }
            attempts(recorder, UNKNOWN, UNKNOWN).increment(0);
            budget_exhausted(recorder).increment(0);
        });
        Counters {
            slots: Slots::new(known, max_dynamic),
            registrar,
        }
    }

    /// One more attempt of the call to `path`.
    pub(crate) fn attempt(&self, path: &str) {
        let labels = self
            .slots
            .get(path)
            .or_else(|| self.slots.admit(path, Labels::of))
            .map(|(_, labels)| labels);
        let (service, method) = labels.map_or((UNKNOWN, UNKNOWN), |labels| {
            (&*labels.service, &*labels.method)
        });
        self.registrar
            .with(|recorder| attempts(recorder, service, method))
            .increment(1);
    }

    /// A call whose retry the budget refused.
    pub(crate) fn budget_exhausted(&self) {
        self.registrar.with(budget_exhausted).increment(1);
    }

    pub(crate) fn is_unrecorded(&self) -> bool {
        self.registrar.is_unrecorded()
    }
}

impl fmt::Debug for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counters")
            .field("slots", &self.slots)
            .field("registrar", &self.registrar)
            .finish()
    }
}

fn attempts(recorder: &dyn Recorder, service: &str, method: &str) -> metrics::Counter {
    method_counter(recorder, ATTEMPTS_TOTAL, service, method, &METADATA)
}

fn budget_exhausted(recorder: &dyn Recorder) -> metrics::Counter {
    recorder.register_counter(&Key::from_name(BUDGET_EXHAUSTED_TOTAL), &METADATA)
}
