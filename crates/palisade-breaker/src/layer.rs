//! [`BreakerLayer`]: applies circuit breaking to a service.

use std::fmt;

use palisade_core::{Matcher, Side, admit::AdmitLayer};
use tower_layer::Layer;

use crate::{
    admission::BreakerAdmission,
    config::Builder,
    hook::{OnStateChange, State},
    registry::Registry,
    service::Breaker,
};

/// Applies circuit breaking to a gRPC service or client; built with [`Builder`], from
/// [`BreakerLayer::server`] around a server's services or [`BreakerLayer::client`] around a
/// channel.
///
/// The layer holds its circuits in an `Arc`: every service it makes, and every clone of it,
/// shares them (a server's connections, a client's clones of its channel). Build another
/// layer for independent circuits. See the [crate docs](crate) for an example.
///
/// It is palisade-core's [`AdmitLayer`] with the breaker's [`BreakerAdmission`], which also
/// does the skipping ([`Builder::skip`]).
pub struct BreakerLayer<H = ()> {
    inner: AdmitLayer<BreakerAdmission<H>>,
}

impl BreakerLayer<()> {
    /// A layer with every default of [`Builder`].
    pub fn new() -> Self {
        Builder::new().build()
    }

    /// A [`Builder`] with every default (on [`Side::Client`]). Prefer
    /// [`server`](Self::server) or [`client`](Self::client), which say the side.
    pub fn builder() -> Builder<()> {
        Builder::new()
    }

    /// A [`Builder`] for a server's routes ([`Side::Server`]): what the caller caused — its
    /// own short deadline, a request body that does not decode — never trips the circuit, so
    /// no caller can open it for everyone. Use this one around a server's services.
    ///
    /// ```
    /// use palisade_breaker::BreakerLayer;
    /// use palisade_core::Matcher;
    ///
    /// let breaker = BreakerLayer::server()
    ///     .per_method()
    ///     .skip(Matcher::health_and_reflection())
    ///     .build();
    /// // tonic::transport::Server::builder().layer(breaker).add_service(...)
    /// # let _ = breaker;
    /// ```
    pub fn server() -> Builder<()> {
        Builder::new().side(Side::Server)
    }

    /// A [`Builder`] for a client's channel ([`Side::Client`], as [`builder`](Self::builder)):
    /// a call dropped after its `grpc-timeout` passed is a timeout. Use this one around a
    /// tonic `Channel`.
    pub fn client() -> Builder<()> {
        Builder::new().side(Side::Client)
    }
}

impl Default for BreakerLayer<()> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: OnStateChange> BreakerLayer<H> {
    pub(crate) fn new_with(registry: Registry<H>, skip: Option<Matcher>) -> Self {
        BreakerLayer {
            inner: AdmitLayer::with_skip(BreakerAdmission::new(registry), skip),
        }
    }
}

impl<H> BreakerLayer<H> {
    /// The state of the circuit named `breaker` (the layer's name, or a key), if it exists.
    pub fn state(&self, breaker: &str) -> Option<State> {
        self.inner.admission().state(breaker)
    }

    /// Every circuit made so far and its state, sorted by name.
    pub fn states(&self) -> Vec<(String, State)> {
        self.inner.admission().states()
    }
}

impl<H> Clone for BreakerLayer<H> {
    fn clone(&self) -> Self {
        BreakerLayer {
            inner: self.inner.clone(),
        }
    }
}

impl<H> fmt::Debug for BreakerLayer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerLayer")
            .field("registry", self.inner.admission())
            .field("skip", &self.inner.skip())
            .finish()
    }
}

impl<S, H: OnStateChange> Layer<S> for BreakerLayer<H> {
    type Service = Breaker<S, H>;

    fn layer(&self, inner: S) -> Self::Service {
        self.inner.layer(inner)
    }
}
