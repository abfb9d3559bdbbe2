//! The server layer.

use std::fmt;

use palisade_core::{
    admit::{Admit, AdmitLayer},
    build::{BoxError, BuildLayer},
    side::Server,
};
use tower_layer::Layer;

use crate::{
    admission::JwtAdmission,
    claims::{Claims, StandardClaims},
    client::{AttachTokenBuilder, NoToken},
    config::JwtAuthBuilder,
    service::JwtAuth,
};

/// Verifies the bearer token of every request and puts its claims (`C`) into the request
/// extensions; rejects with `UNAUTHENTICATED` or `PERMISSION_DENIED`. See the
/// [crate docs](crate) for an example and [`JwtAuthBuilder`] for the settings.
///
/// The layer holds its configuration, keys and verified-token cache behind an `Arc`: clones
/// share them. It is palisade-core's [`AdmitLayer`] over [`JwtAdmission`].
pub struct JwtAuthLayer<C = StandardClaims> {
    inner: AdmitLayer<JwtAdmission<C>>,
}

impl JwtAuthLayer<StandardClaims> {
    /// Configures a server layer, which verifies tokens and extracts [`StandardClaims`]
    /// ([`claims`](JwtAuthBuilder::claims) for claims of your own).
    pub fn server() -> JwtAuthBuilder<StandardClaims> {
        JwtAuthBuilder::new()
    }

    /// Configures a client layer ([`AttachTokenLayer`](crate::client::AttachTokenLayer)), which attaches a token to every call:
    /// a static one ([`bearer`](AttachTokenBuilder::bearer)) or one from a
    /// [`TokenSource`](crate::client::TokenSource) ([`source`](AttachTokenBuilder::source)).
    pub fn client() -> AttachTokenBuilder<NoToken> {
        AttachTokenBuilder::new()
    }
}

impl<C: Claims> BuildLayer<Server> for JwtAuthBuilder<C> {
    type Layer = JwtAuthLayer<C>;
    const NAME: &'static str = "auth";

    fn build_layer(self) -> Result<JwtAuthLayer<C>, BoxError> {
        Ok(self.build()?)
    }
}

impl<C> BuildLayer<Server> for JwtAuthLayer<C> {
    type Layer = Self;
    const NAME: &'static str = "auth";

    fn build_layer(self) -> Result<Self, BoxError> {
        Ok(self)
    }
}

impl<C: Claims> JwtAuthLayer<C> {
    pub(crate) fn from_admission(admission: JwtAdmission<C>) -> Self {
        JwtAuthLayer {
            inner: AdmitLayer::new(admission),
        }
    }

    /// How many verified tokens are cached now.
    pub fn cached_tokens(&self) -> u64 {
        self.admission().0.verifier.cached_tokens()
    }

    /// How many fetches of remote keys were started (`0` without a remote source).
    pub fn jwks_fetches(&self) -> u64 {
        #[cfg(feature = "remote")]
        if let Some(remote) = &self.admission().0.verifier.remote {
            return remote.fetches();
        }
        0
    }
}

impl<C> JwtAuthLayer<C> {
    /// The admission the layer's services ask about every RPC.
    pub(crate) fn admission(&self) -> &JwtAdmission<C> {
        self.inner.admission()
    }
}

impl<C> Clone for JwtAuthLayer<C> {
    fn clone(&self) -> Self {
        JwtAuthLayer {
            inner: self.inner.clone(),
        }
    }
}

impl<C> fmt::Debug for JwtAuthLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JwtAuthLayer")
            .field(self.inner.admission())
            .finish()
    }
}

impl<S, C> Layer<S> for JwtAuthLayer<C> {
    type Service = JwtAuth<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Admit::new(inner, self.inner.clone())
    }
}
