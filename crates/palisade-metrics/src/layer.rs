//! The layer: configuration and the cached handles, shared by every service it makes.

use std::{fmt, marker::PhantomData, sync::Arc};

use palisade_core::{Matcher, Side};
use tower_layer::Layer;

use crate::{
    body::{ObservedRequest, TonicBody},
    config::MetricsBuilder,
    handles::Table,
    naming::Naming,
    service::Metrics,
};

/// Records go-grpc-prometheus's metrics (or OpenTelemetry's, see [`Naming`]) for every RPC
/// through the `metrics` facade, on a server or a client; see the [crate docs](crate) for an
/// example.
///
/// The layer holds the per-method handles, registered once by [`MetricsBuilder::build`];
/// cloning it or making services from it shares them.
///
/// `M` decides the request body the inner service gets: the observed body itself by default,
/// or a `tonic::body::Body` after [`with_tonic_body`](MetricsLayer::with_tonic_body), which a
/// `tonic::transport::Channel` needs.
pub struct MetricsLayer<M = ObservedRequest> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) _body: PhantomData<fn() -> M>,
}

/// What the services of one layer share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) table: Table,
    pub(crate) side: Side,
    pub(crate) naming: Naming,
    pub(crate) skip: Option<Matcher>,
    /// Whether the naming has message counters (otherwise request bodies are not observed).
    pub(crate) count_messages: bool,
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
            shared: self.shared,
            _body: PhantomData,
        }
    }

    /// The side this layer records.
    pub fn side(&self) -> Side {
        self.shared.side
    }
}

impl<M> Clone for MetricsLayer<M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            _body: PhantomData,
        }
    }
}

impl<M> fmt::Debug for MetricsLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsLayer")
            .field("side", &self.shared.side)
            .field("naming", &self.shared.naming)
            .field("known_methods", &self.shared.table.known_len())
            .field("max_dynamic_methods", &self.shared.table.max_dynamic())
            .field("skip", &self.shared.skip)
            .finish()
    }
}

impl<S, M> Layer<S> for MetricsLayer<M> {
    type Service = Metrics<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics::new(inner, self.clone())
    }
}
