//! [`RecoveryLayer`]: answers a handler's panic with `INTERNAL` for that RPC alone.

use std::{fmt, sync::Arc};

use palisade_core::{
    build::{BoxError, BuildLayer},
    side::Server,
};
use tower_layer::Layer;

use crate::{config::RecoveryBuilder, report::Shared, service::Recovery};

/// Answers a panic of the services it wraps with `INTERNAL` for that RPC alone; built with a
/// [`RecoveryBuilder`] from [`RecoveryLayer::server`]. See the [crate docs](crate) for an
/// example.
///
/// Every service it makes, and every clone of it, shares one table of methods and one hook.
#[derive(Clone)]
pub struct RecoveryLayer {
    shared: Arc<Shared>,
}

impl RecoveryLayer {
    /// A [`RecoveryBuilder`] for a server's routes. Put the layer innermost, next to the
    /// routes, so that every layer outside it sees a panic as an ordinary `INTERNAL` answer.
    ///
    /// ```
    /// use palisade_recovery::RecoveryLayer;
    ///
    /// let recovery = RecoveryLayer::server().build();
    /// // tonic::transport::Server::builder().layer(layers).layer(recovery).add_service(...)
    /// # let _ = recovery;
    /// ```
    pub fn server() -> RecoveryBuilder {
        RecoveryBuilder::new()
    }

    pub(crate) fn from_shared(shared: Shared) -> Self {
        RecoveryLayer {
            shared: Arc::new(shared),
        }
    }
}

impl fmt::Debug for RecoveryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S> Layer<S> for RecoveryLayer {
    type Service = Recovery<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Recovery::new(inner, Arc::clone(&self.shared))
    }
}

/// A built layer fits a preset's server slot as it is (it keeps its registry).
impl BuildLayer<Server> for RecoveryLayer {
    type Layer = Self;
    const NAME: &'static str = "recovery";

    fn build_layer(self) -> Result<Self, BoxError> {
        Ok(self)
    }
}
