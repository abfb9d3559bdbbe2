//! The server layer.

use std::{fmt, marker::PhantomData, sync::Arc};

use palisade_core::{
    MethodRegistry,
    admit::{Admit, AdmitLayer},
    build::{BoxError, BuildLayer},
    side::{OnSide, Server},
};
use tower_layer::Layer;

use crate::{
    admission::RateLimitAdmission,
    config::{ClientRateLimitBuilder, RateLimitBuilder},
    mode::{Mode, Plain},
    service::RateLimit,
    shared::Shared,
};

/// Rate limits a gRPC server's calls: token buckets per limit (global, per method, per key,
/// combined), trailers-only rejections with `grpc-retry-pushback-ms`; see the
/// [crate docs](crate) for an example.
///
/// The layer owns the buckets: every service it makes, and every clone of it, draws from the
/// same ones — so one layer on a tonic server limits all its connections together.
///
/// `M` is the [`Mode`]: [`Plain`] (bodies untouched) unless built with
/// [`build_metered`](RateLimitBuilder::build_metered) for per-message limits.
pub struct RateLimitLayer<M = Plain> {
    admit: AdmitLayer<RateLimitAdmission>,
    _mode: PhantomData<fn() -> M>,
}

impl<M> Clone for RateLimitLayer<M> {
    fn clone(&self) -> Self {
        Self {
            admit: self.admit.clone(),
            _mode: PhantomData,
        }
    }
}

impl<M> RateLimitLayer<M> {
    /// The layer of an admission over `shared`. The exemption is the admission's own (its
    /// method table caches it), so the admit layer skips nothing.
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Self {
            admit: AdmitLayer::new(RateLimitAdmission { shared }),
            _mode: PhantomData,
        }
    }

    /// Whether the layer limits nothing ([`RateLimitLayer::disabled`]).
    pub fn is_disabled(&self) -> bool {
        self.shared().limits.is_empty()
    }

    fn shared(&self) -> &Shared {
        &self.admit.admission().shared
    }
}

impl RateLimitLayer {
    /// Configures a server layer: it answers over-quota calls at once.
    pub fn server() -> RateLimitBuilder {
        RateLimitBuilder::new()
    }

    /// A server layer that limits nothing: every call passes on, untouched, and no series is
    /// registered. For a stack whose rate limit configuration turns it off (the `server`
    /// example's `--rate 0`): the stack has the same type either way, and the layer costs
    /// one branch a call.
    ///
    /// ```
    /// use palisade_ratelimit::RateLimitLayer;
    ///
    /// let off = RateLimitLayer::disabled();
    /// assert!(off.is_disabled());
    /// ```
    pub fn disabled() -> RateLimitLayer {
        let shared = crate::config::Common::disabled(Server::SIDE);
        RateLimitLayer {
            admit: AdmitLayer::disabled(RateLimitAdmission { shared }),
            _mode: PhantomData,
        }
    }

    /// Configures a client layer ([`ClientRateLimitLayer`](crate::ClientRateLimitLayer)): over-quota calls wait for their
    /// tokens, within a maximum wait and their deadline, and honour the server's pushback.
    pub fn client() -> ClientRateLimitBuilder {
        ClientRateLimitBuilder::new()
    }
}

impl<M> BuildLayer<Server> for RateLimitLayer<M> {
    type Layer = Self;
    const NAME: &'static str = "ratelimit";

    fn build_layer(self) -> Result<Self, BoxError> {
        Ok(self)
    }
}

impl BuildLayer<Server> for RateLimitBuilder {
    type Layer = RateLimitLayer;
    const NAME: &'static str = "ratelimit";

    fn use_registry(self, registry: &MethodRegistry) -> Self {
        self.registry_if_none(registry)
    }

    fn build_layer(self) -> Result<RateLimitLayer, BoxError> {
        Ok(self.build()?)
    }
}

impl<M> fmt::Debug for RateLimitLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = self.shared();
        f.debug_struct("RateLimitLayer")
            .field("limits", &shared.limits)
            .field("skip", &shared.skip)
            .field("code", &shared.template.code())
            .field("headers", &shared.headers)
            .field("shadow", &shared.shadow)
            .field("known_methods", &shared.table.known_len())
            .field("mode", &std::any::type_name::<M>())
            .finish()
    }
}

impl<S, M: Mode> Layer<S> for RateLimitLayer<M> {
    type Service = RateLimit<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Admit::new(M::inner(inner), self.admit.clone())
    }
}
