//! [`BreakerLayer`]: applies circuit breaking to a service.

use std::{fmt, sync::Arc};

use tower_layer::Layer;

use crate::{
    config::Builder,
    hook::{OnStateChange, State},
    registry::Registry,
    service::Breaker,
};

/// Applies circuit breaking to a gRPC service or client; built with [`Builder`].
///
/// The layer holds its circuits in an `Arc`: every service it makes, and every clone of it,
/// shares them (a server's connections, a client's clones of its channel). Build another
/// layer for independent circuits. See the [crate docs](crate) for an example.
pub struct BreakerLayer<H = ()> {
    registry: Arc<Registry<H>>,
}

impl BreakerLayer<()> {
    /// A layer with every default of [`Builder`].
    pub fn new() -> Self {
        Builder::new().build()
    }

    /// A [`Builder`] with every default.
    pub fn builder() -> Builder<()> {
        Builder::new()
    }
}

impl Default for BreakerLayer<()> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H> BreakerLayer<H> {
    pub(crate) fn from_registry(registry: Registry<H>) -> Self {
        BreakerLayer {
            registry: Arc::new(registry),
        }
    }

    /// The state of the circuit named `breaker` (the layer's name, or a key), if it exists.
    pub fn state(&self, breaker: &str) -> Option<State> {
        self.registry.state(breaker)
    }

    /// Every circuit made so far and its state, sorted by name.
    pub fn states(&self) -> Vec<(String, State)> {
        self.registry.states()
    }
}

impl<H> Clone for BreakerLayer<H> {
    fn clone(&self) -> Self {
        BreakerLayer {
            registry: self.registry.clone(),
        }
    }
}

impl<H> fmt::Debug for BreakerLayer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerLayer")
            .field("registry", &self.registry)
            .finish()
    }
}

impl<S, H: OnStateChange> Layer<S> for BreakerLayer<H> {
    type Service = Breaker<S, H>;

    fn layer(&self, inner: S) -> Self::Service {
        Breaker::new(inner, self.registry.clone())
    }
}
