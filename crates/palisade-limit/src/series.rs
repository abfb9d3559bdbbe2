//! The layer's series: per gate, its in-flight gauge, its limit gauge and its refusals.

use std::sync::Arc;

use metrics::{Counter, Gauge, Key, Label, Level, Metadata};
pub(crate) use palisade_core::recorder::Registrar;

/// `palisade_inflight{limiter}`: calls holding a permit now.
pub const IN_FLIGHT: &str = "palisade_inflight";
/// `palisade_concurrency_limit{limiter}`: the most calls let in at once.
pub const CONCURRENCY_LIMIT: &str = "palisade_concurrency_limit";
/// `palisade_concurrency_rejected_total{limiter}`: calls refused (the queue full, or a wait
/// that lasted too long, included).
pub const REJECTED_TOTAL: &str = "palisade_concurrency_rejected_total";

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Describes the layer's series to the recorder.
pub(crate) fn describe(registrar: &Registrar) {
    registrar.with(|recorder| {
        recorder.describe_gauge(
            IN_FLIGHT.into(),
            None,
            "Calls in flight under the in-flight limit.".into(),
        );
        recorder.describe_gauge(
            CONCURRENCY_LIMIT.into(),
            None,
            "The most calls the in-flight limit lets in at once.".into(),
        );
        recorder.describe_counter(
            REJECTED_TOTAL.into(),
            None,
            "Calls the in-flight limit refused.".into(),
        );
    });
}

/// The handles of the gate labelled `limiter`.
pub(crate) fn series(registrar: &Registrar, limiter: Arc<str>) -> Series {
    let labels = vec![Label::new("limiter", limiter.to_string())];
    registrar.with(|recorder| Series {
        in_flight: recorder.register_gauge(&Key::from_parts(IN_FLIGHT, labels.clone()), &METADATA),
        limit: recorder.register_gauge(
            &Key::from_parts(CONCURRENCY_LIMIT, labels.clone()),
            &METADATA,
        ),
        rejected: recorder.register_counter(&Key::from_parts(REJECTED_TOTAL, labels), &METADATA),
        name: limiter,
    })
}

/// One gate's handles (shared by every key of a per-key limit).
#[derive(Clone)]
pub(crate) struct Series {
    pub(crate) name: Arc<str>,
    pub(crate) in_flight: Gauge,
    pub(crate) limit: Gauge,
    pub(crate) rejected: Counter,
}
