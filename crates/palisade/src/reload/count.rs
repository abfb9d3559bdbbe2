//! [`Reloads`]: what came of each reload, in the series and the log.

use std::fmt;

use metrics::{Counter, Gauge, Key, Label, Level, Metadata};
use palisade_core::recorder::Registrar;

/// Reloads tried, labelled `result="ok"` or `result="error"`.
pub const RELOAD_TOTAL: &str = "palisade_config_reload_total";

/// The generation of the configuration in force: 0 as started, one more per reload applied.
pub const GENERATION: &str = "palisade_config_generation";

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Counts reloads and logs refused ones; register it after the metrics recorder is installed.
///
/// ```
/// use palisade::reload::Reloads;
///
/// let reloads = Reloads::new();
/// reloads.applied(1);
/// reloads.refused(&"palisade.toml:3:8: key `server.rate`: expected a number");
/// ```
pub struct Reloads {
    ok: Counter,
    error: Counter,
    generation: Gauge,
}

impl Reloads {
    /// The series, registered with the `metrics` facade's recorder (both results made at
    /// zero, the generation at 0).
    pub fn new() -> Self {
        Self::with(&Registrar::Facade)
    }

    fn with(registrar: &Registrar) -> Self {
        registrar.with(|recorder| {
            recorder.describe_counter(
                RELOAD_TOTAL.into(),
                None,
                "Configuration reloads tried, by result.".into(),
            );
            recorder.describe_gauge(
                GENERATION.into(),
                None,
                "The generation of the configuration in force (0 as started).".into(),
            );
            let result = |value: &'static str| {
                Key::from_parts(RELOAD_TOTAL, vec![Label::new("result", value)])
            };
            let reloads = Reloads {
                ok: recorder.register_counter(&result("ok"), &METADATA),
                error: recorder.register_counter(&result("error"), &METADATA),
                generation: recorder.register_gauge(&Key::from_name(GENERATION), &METADATA),
            };
            reloads.ok.increment(0);
            reloads.error.increment(0);
            reloads.generation.set(0.0);
            reloads
        })
    }

    /// A reload applied: `generation` is in force.
    pub fn applied(&self, generation: u64) {
        self.ok.increment(1);
        self.generation.set(generation as f64);
        tracing::info!(generation, "palisade: configuration reloaded");
    }

    /// A reload refused (the file does not load, or a layer refuses it): the configuration
    /// in force stays; `error` is logged once, at ERROR.
    pub fn refused(&self, error: &dyn fmt::Display) {
        self.error.increment(1);
        tracing::error!(
            %error,
            "palisade: configuration not reloaded, the last good one stays in force"
        );
    }
}

impl Default for Reloads {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Reloads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloads").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    #[test]
    fn results_and_the_generation_are_counted() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let reloads = Reloads::with(&Registrar::Recorder(Arc::new(recorder)));
        reloads.applied(1);
        reloads.refused(&"bad");
        reloads.refused(&"bad again");
        let values: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let labels: Vec<_> = key
                    .key()
                    .labels()
                    .map(|label| label.value().to_owned())
                    .collect();
                (key.key().name().to_owned(), labels, value)
            })
            .collect();
        assert!(values.contains(&(
            RELOAD_TOTAL.into(),
            vec!["ok".into()],
            DebugValue::Counter(1)
        )));
        assert!(values.contains(&(
            RELOAD_TOTAL.into(),
            vec!["error".into()],
            DebugValue::Counter(2)
        )));
        assert!(values.contains(&(GENERATION.into(), vec![], DebugValue::Gauge(1.0.into()))));
    }
}
