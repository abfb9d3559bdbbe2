//! [`RecoveryBuilder`]: the recovery layer's configuration.

use std::{fmt, sync::Arc};

use metrics::Recorder;
use palisade_core::{
    Matcher, MethodRegistry,
    build::{BoxError, BuildLayer},
    side::Server,
};

use crate::{
    layer::RecoveryLayer,
    report::{DEFAULT_MAX_MESSAGE_LEN, OnPanic, PanicReport, Registrar, Shared},
};

/// How many methods without a registry may get `palisade_panics_total` series of their own
/// (as palisade-metrics and palisade-ratelimit bound theirs); 0 by default with a registry.
pub const DEFAULT_MAX_DYNAMIC_METHODS: usize = 100;

/// Configures a [`RecoveryLayer`]; from [`RecoveryLayer::server`], finished with
/// [`build`](Self::build).
#[must_use]
#[derive(Clone)]
pub struct RecoveryBuilder {
    registry: Option<MethodRegistry>,
    skip: Option<Matcher>,
    max_message_len: usize,
    max_dynamic_methods: Option<usize>,
    recorder: Option<Arc<dyn Recorder + Send + Sync>>,
    on_panic: Option<OnPanic>,
}

impl RecoveryBuilder {
    pub(crate) fn new() -> Self {
        RecoveryBuilder {
            registry: None,
            skip: None,
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            max_dynamic_methods: None,
            recorder: None,
            on_panic: None,
        }
    }

    /// The method registry: its methods get `palisade_panics_total` series of their own (made
    /// at zero when the layer is built); every other path is counted under
    /// `grpc_service="unknown"`, `grpc_method="unknown"` (the log line and the hook still name
    /// it). Without one, up to [`max_dynamic_methods`](Self::max_dynamic_methods) methods earn
    /// series by being called, as palisade-metrics' do (palisade-core's
    /// [`Slots`](palisade_core::slots::Slots)): a panic in a method's first few calls is
    /// counted under `unknown`.
    pub fn registry(mut self, registry: MethodRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// RPCs whose panics are not caught: they unwind as without this layer (skips nothing by
    /// default). Called again, the matchers add up: an RPC either one selects is skipped.
    pub fn skip(mut self, matcher: Matcher) -> Self {
        self.skip = Some(match self.skip.take() {
            Some(skipped) => skipped.or(matcher),
            None => matcher,
        });
        self
    }

    /// The most bytes of a panic's message logged and handed to the hook (cut on a character
    /// boundary, `…` appended); [`DEFAULT_MAX_MESSAGE_LEN`](crate::DEFAULT_MAX_MESSAGE_LEN)
    /// (256) unless set.
    pub fn max_message_len(mut self, max: usize) -> Self {
        self.max_message_len = max;
        self
    }

    /// How many methods not known in advance may earn series of their own:
    /// 0 with a registry, [`DEFAULT_MAX_DYNAMIC_METHODS`] otherwise.
    pub fn max_dynamic_methods(mut self, max: usize) -> Self {
        self.max_dynamic_methods = Some(max);
        self
    }

    /// Counts panics with this recorder instead of the `metrics` facade's global one — for
    /// tests, or to keep the series in a registry of their own.
    pub fn recorder<T: Recorder + Send + Sync + 'static>(mut self, recorder: Arc<T>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Calls `hook` once per panic answered, after it is logged and counted (a panic in a
    /// skipped RPC is not). The hook runs on the thread that polled the RPC: keep it short.
    pub fn on_panic(mut self, hook: impl Fn(&PanicReport<'_>) + Send + Sync + 'static) -> Self {
        self.on_panic = Some(Arc::new(hook));
        self
    }

    /// The layer.
    pub fn build(self) -> RecoveryLayer {
        let registry = self.registry.unwrap_or_default();
        let max_dynamic = self.max_dynamic_methods.unwrap_or(if registry.is_empty() {
            DEFAULT_MAX_DYNAMIC_METHODS
        } else {
            0
        });
        let known = registry
            .iter()
            .map(|info| (info.service.clone(), info.method.clone()));
        let registrar = Registrar::new(self.recorder);
        if registrar.is_unrecorded() {
            // The counter registered now is a no-op for good: say it once, here.
            tracing::warn!(
                "palisade-recovery: a RecoveryLayer was built while no `metrics` recorder is \
                 installed, so palisade_panics_total is a no-op and /metrics will never show it; \
                 install the recorder first and build the layer after it, or give it one with \
                 `.recorder(..)`"
            );
        }
        RecoveryLayer::from_shared(Shared::new(
            self.skip,
            self.max_message_len,
            known,
            max_dynamic,
            registrar,
            self.on_panic,
        ))
    }
}

impl fmt::Debug for RecoveryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryBuilder")
            .field("registry", &self.registry)
            .field("skip", &self.skip)
            .field("max_message_len", &self.max_message_len)
            .field("max_dynamic_methods", &self.max_dynamic_methods)
            .field("recorder", &self.recorder.is_some())
            .field("on_panic", &self.on_panic.is_some())
            .finish()
    }
}

/// A builder fits a preset's server slot: it takes the preset's registry if it has none.
impl BuildLayer<Server> for RecoveryBuilder {
    type Layer = RecoveryLayer;
    const NAME: &'static str = "recovery";

    fn use_registry(mut self, registry: &MethodRegistry) -> Self {
        if self.registry.is_none() {
            self.registry = Some(registry.clone());
        }
        self
    }

    fn build_layer(self) -> Result<RecoveryLayer, BoxError> {
        Ok(self.build())
    }
}
