//! The layer: configuration and the cached handles, shared by every service it makes.

use std::fmt;

use palisade_core::{
    ObserveLayer, Side,
    build::{BoxError, BuildLayer},
    observe::Policy,
    side::{Client, OnSide, Server},
};
use tower_layer::Layer;

use crate::{
    Metrics,
    body::{ForSide, SideDefault},
    config::MetricsBuilder,
    policy::MetricsPolicy,
};

/// Records go-grpc-prometheus's metrics (or OpenTelemetry's, see [`Naming`](crate::Naming))
/// for every RPC through the `metrics` facade, on a server (`MetricsLayer<Server>`) or a client
/// (`MetricsLayer<Client>`); see the [crate docs](crate) for an example.
///
/// The layer holds the per-method handles, registered once by [`MetricsBuilder::build`];
/// cloning it or making services from it shares them. It is palisade-core's observing
/// middleware ([`ObserveLayer`]) with this crate's [`MetricsPolicy`].
///
/// `R` says what the inner service gets as its request body ([`body`](crate::body)): by
/// default ([`SideDefault`]) a server's inner service gets a
/// [`RequestBody`](crate::RequestBody) counting the request messages, and a client's gets the
/// request's own body, unchanged, so a client layer fits a tonic `Channel`. A client layer from
/// [`count_request_messages`](MetricsBuilder::count_request_messages) is a
/// `MetricsLayer<Client, CountRequestMessages>`, whose inner service gets a
/// [`RequestBody`](crate::RequestBody): it does not fit a `Channel` as it comes.
///
/// ```
/// use palisade_core::side::{Client, Server};
/// use palisade_metrics::MetricsLayer;
///
/// let server: MetricsLayer<Server> = MetricsLayer::server().build();
/// let client: MetricsLayer<Client> = MetricsLayer::client().build();
/// # let _ = (server, client);
/// ```
pub struct MetricsLayer<K, R = SideDefault> {
    pub(crate) inner: ObserveLayer<MetricsPolicy, ForSide<K, R>>,
}

impl MetricsLayer<Server> {
    /// Configures a server layer: `grpc_server_*`.
    pub fn server() -> MetricsBuilder<Server> {
        MetricsBuilder::new()
    }
}

impl MetricsLayer<Client> {
    /// Configures a client layer: `grpc_client_*`.
    pub fn client() -> MetricsBuilder<Client> {
        MetricsBuilder::new()
    }
}

impl<K: OnSide, R> MetricsLayer<K, R> {
    /// The side this layer records.
    pub fn side(&self) -> Side {
        K::SIDE
    }
}

impl<K, R> Clone for MetricsLayer<K, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K, R> fmt::Debug for MetricsLayer<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = self.inner.policy();
        f.debug_struct("MetricsLayer")
            .field("side", &policy.side())
            .field("naming", &policy.naming)
            .field("known_methods", &policy.table.known_len())
            .field("max_dynamic_methods", &policy.table.max_dynamic())
            .field("skip", &self.inner.skip())
            .finish()
    }
}

impl<S, K, R> Layer<S> for MetricsLayer<K, R> {
    type Service = Metrics<S, K, R>;

    fn layer(&self, inner: S) -> Self::Service {
        self.inner.layer(inner)
    }
}

/// A built layer fits a preset's slot of its own side, as it is (it keeps its registry).
impl<K: OnSide, R> BuildLayer<K> for MetricsLayer<K, R> {
    type Layer = Self;
    const NAME: &'static str = "metrics";

    fn build_layer(self) -> Result<Self, BoxError> {
        Ok(self)
    }
}
