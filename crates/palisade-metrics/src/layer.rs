//! The layer: configuration and the cached handles, shared by every service it makes.

use std::fmt;

use palisade_core::{ObserveLayer, Side, observe::Policy};
use tower_layer::Layer;

use crate::{
    Metrics,
    body::{ObservedRequest, TonicBody},
    config::MetricsBuilder,
    policy::MetricsPolicy,
};

/// Records go-grpc-prometheus's metrics (or OpenTelemetry's, see [`Naming`](crate::Naming))
/// for every RPC through the `metrics` facade, on a server or a client; see the
/// [crate docs](crate) for an example.
///
/// The layer holds the per-method handles, registered once by [`MetricsBuilder::build`];
/// cloning it or making services from it shares them. It is palisade-core's observing
/// middleware ([`ObserveLayer`]) with this crate's [`MetricsPolicy`].
///
/// `M` decides the request body the inner service gets: the observed body itself by default,
/// or a `tonic::body::Body` after [`with_tonic_body`](MetricsLayer::with_tonic_body), which a
/// `tonic::transport::Channel` needs.
pub struct MetricsLayer<M = ObservedRequest> {
    pub(crate) inner: ObserveLayer<MetricsPolicy, M>,
}

impl MetricsLayer {
    /// Configures a server layer: `grpc_server_*`.
    pub fn server() -> MetricsBuilder {
        MetricsBuilder::new(Side::Server)
    }

    /// Configures a client layer: `grpc_client_*`.
    pub fn client() -> MetricsBuilder {
        MetricsBuilder::new(Side::Client)
    }

    /// Configures a layer for either side.
    pub fn builder(side: Side) -> MetricsBuilder {
        MetricsBuilder::new(side)
    }
}

impl<M> MetricsLayer<M> {
    /// Hands the inner service `tonic::body::Body` requests (the observed body boxed), as
    /// `tonic::transport::Channel` requires; use it on a client whose stack ends in a channel.
    pub fn with_tonic_body(self) -> MetricsLayer<TonicBody> {
        MetricsLayer {
            inner: self.inner.map_request_body(),
        }
    }

    /// The side this layer records.
    pub fn side(&self) -> Side {
        self.inner.policy().side()
    }
}

impl<M> Clone for MetricsLayer<M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<M> fmt::Debug for MetricsLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = self.inner.policy();
        f.debug_struct("MetricsLayer")
            .field("side", &policy.side)
            .field("naming", &policy.naming)
            .field("known_methods", &policy.table.known_len())
            .field("max_dynamic_methods", &policy.table.max_dynamic())
            .field("skip", &self.inner.skip())
            .finish()
    }
}

impl<S, M> Layer<S> for MetricsLayer<M> {
    type Service = Metrics<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        self.inner.layer(inner)
    }
}
