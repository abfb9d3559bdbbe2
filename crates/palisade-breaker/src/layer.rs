//! [`BreakerLayer`]: applies circuit breaking to a service.

use std::fmt;

use palisade_core::{
    Matcher,
    admit::AdmitLayer,
    build::{BoxError, BuildLayer},
    side::{Client, OnSide, Server},
};
use tower_layer::Layer;

use crate::{
    admission::BreakerAdmission,
    config::BreakerBuilder,
    hook::{OnStateChange, State},
    registry::Registry,
    service::Breaker,
};

/// Applies circuit breaking to a gRPC service or client; built with a [`BreakerBuilder`], from
/// [`BreakerLayer::server`] around a server's services (a `BreakerLayer<Server>`) or
/// [`BreakerLayer::client`] around a channel (a `BreakerLayer<Client>`).
///
/// The layer holds its circuits in an `Arc`: every service it makes, and every clone of it,
/// shares them (a server's connections, a client's clones of its channel). Build another
/// layer for independent circuits. See the [crate docs](crate) for an example.
///
/// It is palisade-core's [`AdmitLayer`] with the breaker's [`BreakerAdmission`], which also
/// does the skipping ([`BreakerBuilder::skip`]). `H` is the hook
/// ([`BreakerBuilder::on_state_change`]).
///
/// ```
/// use palisade_breaker::BreakerLayer;
/// use palisade_core::side::{Client, Server};
///
/// let server: BreakerLayer<Server> = BreakerLayer::server().build();
/// let client: BreakerLayer<Client> = BreakerLayer::client().name("greeter").build();
/// # let _ = (server, client);
/// ```
pub struct BreakerLayer<K, H = ()> {
    inner: AdmitLayer<BreakerAdmission<K, H>>,
}

impl BreakerLayer<Server> {
    /// A [`BreakerBuilder`] for a server's routes: what the caller caused — its own short
    /// deadline, a request body that does not decode — never trips the circuit, so no caller
    /// can open it for everyone. Use this one around a server's services.
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
    pub fn server() -> BreakerBuilder<Server> {
        BreakerBuilder::new()
    }
}

impl BreakerLayer<Client> {
    /// A [`BreakerBuilder`] for a client's channel: a call dropped after its `grpc-timeout`
    /// passed is a timeout. Use this one around a tonic `Channel`.
    ///
    /// ```
    /// use palisade_breaker::BreakerLayer;
    ///
    /// let breaker = BreakerLayer::client().name("greeter").build();
    /// // tower::ServiceBuilder::new().layer(breaker).service(channel)
    /// # let _ = breaker;
    /// ```
    pub fn client() -> BreakerBuilder<Client> {
        BreakerBuilder::new()
    }
}

impl<K: OnSide, H: OnStateChange> BreakerLayer<K, H> {
    pub(crate) fn new_with(registry: Registry<H>, skip: Option<Matcher>) -> Self {
        BreakerLayer {
            inner: AdmitLayer::with_skip(BreakerAdmission::new(registry), skip),
        }
    }
}

impl<K, H> BreakerLayer<K, H> {
    /// The state of the circuit named `breaker` (the layer's name, or a key), if it exists.
    pub fn state(&self, breaker: &str) -> Option<State> {
        self.inner.admission().state(breaker)
    }

    /// Every circuit made so far and its state, sorted by name.
    pub fn states(&self) -> Vec<(String, State)> {
        self.inner.admission().states()
    }
}

impl<K, H> Clone for BreakerLayer<K, H> {
    fn clone(&self) -> Self {
        BreakerLayer {
            inner: self.inner.clone(),
        }
    }
}

impl<K: OnSide, H> fmt::Debug for BreakerLayer<K, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerLayer")
            .field("side", &K::SIDE)
            .field("registry", self.inner.admission())
            .field("skip", &self.inner.skip())
            .finish()
    }
}

impl<S, K: OnSide, H: OnStateChange> Layer<S> for BreakerLayer<K, H> {
    type Service = Breaker<S, K, H>;

    fn layer(&self, inner: S) -> Self::Service {
        self.inner.layer(inner)
    }
}

/// A built layer fits a preset's slot of its own side, as it is (it keeps its registry).
impl<K: OnSide, H: OnStateChange> BuildLayer<K> for BreakerLayer<K, H> {
    type Layer = Self;
    const NAME: &'static str = "breaker";

    fn build_layer(self) -> Result<Self, BoxError> {
        Ok(self)
    }
}
