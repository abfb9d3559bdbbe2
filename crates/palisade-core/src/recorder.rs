//! Where a layer registers its [`metrics`] handles ([`Registrar`]), and whether a recorder is
//! installed ([`installed`]), for layers that register their handles when they are built
//! (feature `metrics`).
//!
//! A handle registered while the facade has no recorder is a no-op for good: a layer built
//! before the exporter is installed records nothing, ever, and `/metrics` never shows its
//! series. Every Palisade builder that registers handles at build asks [`installed`] and warns
//! once, at build, when it says no.
//!
//! # Example
//!
//! ```
//! // No recorder is installed in this doctest.
//! assert!(!palisade_core::recorder::installed());
//! ```

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use std::fmt;

use metrics::{Counter, Key, KeyName, Label, Metadata, Recorder, SharedString};

use crate::Method;

/// Where a layer registers its handles: the `metrics` facade's recorder of the moment (the
/// default), or one given to its builder (`.recorder(..)`).
///
/// ```
/// use std::sync::Arc;
/// use palisade_core::recorder::Registrar;
///
/// let given = Registrar::new(Some(Arc::new(metrics::NoopRecorder)));
/// assert!(!given.is_unrecorded(), "a recorder given is used as it is");
/// assert!(Registrar::new(None).is_unrecorded(), "no recorder installed in this doctest");
/// ```
#[derive(Clone, Default)]
pub enum Registrar {
    /// The facade's recorder at the time of each registration.
    #[default]
    Facade,
    /// This recorder.
    Recorder(Arc<dyn Recorder + Send + Sync>),
}

impl Registrar {
    /// The recorder given, or the facade's.
    pub fn new(recorder: Option<Arc<dyn Recorder + Send + Sync>>) -> Self {
        recorder.map_or(Registrar::Facade, Registrar::Recorder)
    }

    /// Runs `f` with the recorder.
    pub fn with<T>(&self, f: impl FnOnce(&dyn Recorder) -> T) -> T {
        match self {
            Registrar::Facade => metrics::with_recorder(f),
            Registrar::Recorder(recorder) => f(recorder.as_ref()),
        }
    }

    /// Whether handles registered now would be no-ops for good: the facade's, while no recorder
    /// is [`installed`]. A builder that registers at build warns when this says yes.
    pub fn is_unrecorded(&self) -> bool {
        matches!(self, Registrar::Facade) && !installed()
    }
}

impl fmt::Debug for Registrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Registrar::Facade => f.write_str("Facade"),
            Registrar::Recorder(_) => f.write_str("Recorder(..)"),
        }
    }
}

/// A method's label values, `grpc_service` and `grpc_method`, as a per-method table
/// ([`Slots`](crate::slots::Slots)) keeps them for the layers that count per method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodLabels {
    /// `package.Service`.
    pub service: Box<str>,
    /// `Method`.
    pub method: Box<str>,
}

impl MethodLabels {
    /// The labels of `method`.
    pub fn of(method: &Method<'_>) -> Self {
        MethodLabels {
            service: method.service().into(),
            method: method.method().into(),
        }
    }

    /// The counter `name{grpc_service, grpc_method}` of these labels in `recorder`.
    pub fn counter(
        &self,
        recorder: &dyn Recorder,
        name: &'static str,
        metadata: &'static Metadata<'static>,
    ) -> Counter {
        method_counter(recorder, name, &self.service, &self.method, metadata)
    }
}

/// The counter `name{grpc_service = service, grpc_method = method}` in `recorder`.
pub fn method_counter(
    recorder: &dyn Recorder,
    name: &'static str,
    service: &str,
    method: &str,
    metadata: &'static Metadata<'static>,
) -> Counter {
    let key = Key::from_parts(
        name,
        vec![
            Label::new("grpc_service", service.to_owned()),
            Label::new("grpc_method", method.to_owned()),
        ],
    );
    recorder.register_counter(&key, metadata)
}

/// Whether the recorder the `metrics` facade hands out now (the thread's local one, else the
/// global one) is a real recorder rather than the facade's no-op stand-in.
///
/// A recorder with state (every exporter holds its registry) is real. A zero-sized recorder
/// may be the no-op or may forward to a recorder held elsewhere (in a `static`); it is asked
/// to describe a probe metric with a shared description, and is real when it kept a reference
/// to that description, as every recorder that stores descriptions (the Prometheus exporter,
/// `metrics-util`'s) does and the no-op does not. The probe's name is unique to each call and
/// no series is registered, so nothing shows in an exporter's output.
pub fn installed() -> bool {
    metrics::with_recorder(is_real)
}

fn is_real(recorder: &dyn Recorder) -> bool {
    if std::mem::size_of_val(recorder) != 0 {
        return true;
    }
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let n = PROBES.fetch_add(1, Ordering::Relaxed);
    let description: Arc<str> = Arc::from("palisade recorder probe: no series");
    recorder.describe_counter(
        KeyName::from(format!("palisade_recorder_probe_{n}")),
        None,
        SharedString::from(Arc::clone(&description)),
    );
    Arc::strong_count(&description) > 1
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, OnceLock};

    use metrics::{Counter, Gauge, Histogram, Key, Metadata, NoopRecorder, Unit};

    use super::*;

    /// A recorder that keeps descriptions, as exporters do.
    #[derive(Default)]
    struct Keeping(Mutex<Vec<SharedString>>);

    impl Recorder for Keeping {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, description: SharedString) {
            self.0.lock().unwrap().push(description);
        }
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    /// A zero-sized recorder forwarding everything to one held in a static.
    struct Forwarding;

    fn target() -> &'static Keeping {
        static TARGET: OnceLock<Keeping> = OnceLock::new();
        TARGET.get_or_init(Keeping::default)
    }

    impl Recorder for Forwarding {
        fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
            target().describe_counter(key, unit, description);
        }
        fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
            target().describe_gauge(key, unit, description);
        }
        fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
            target().describe_histogram(key, unit, description);
        }
        fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
            target().register_counter(key, metadata)
        }
        fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
            target().register_gauge(key, metadata)
        }
        fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
            target().register_histogram(key, metadata)
        }
    }

    #[test]
    fn the_noop_is_not_installed_and_real_recorders_are() {
        assert!(!installed(), "nothing installed in this test binary");
        assert!(!metrics::with_local_recorder(&NoopRecorder, installed));
        let keeping = Keeping::default();
        assert!(metrics::with_local_recorder(&keeping, installed));
        // A zero-sized recorder forwarding to a static is real (the size test said no).
        assert_eq!(std::mem::size_of::<Forwarding>(), 0);
        assert!(metrics::with_local_recorder(&Forwarding, installed));
        assert!(
            metrics::with_local_recorder(&Forwarding, installed),
            "twice"
        );
        assert!(!installed());
    }
}
