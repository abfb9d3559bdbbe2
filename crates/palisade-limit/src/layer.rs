//! [`LimitLayer`]: applies an in-flight limit to a service.

use std::fmt;

use palisade_core::{
    Matcher,
    admit::AdmitLayer,
    build::{BoxError, BuildLayer},
    side::{Client, OnSide, Server},
};
use tower_layer::Layer;

use crate::{admission::LimitAdmission, config::LimitBuilder, service::ConcurrencyLimit};

/// Applies an in-flight limit to a gRPC service or client; built with a [`LimitBuilder`],
/// from [`LimitLayer::server`] around a server's services (a `LimitLayer<Server>`) or
/// [`LimitLayer::client`] around a channel (a `LimitLayer<Client>`).
///
/// The layer holds its counts in an `Arc`: every service it makes, and every clone of it,
/// shares them (a server's connections, a client's clones of its channel) — one limit for
/// all. Build another layer for an independent limit. See the [crate docs](crate) for an
/// example.
///
/// It is palisade-core's [`AdmitLayer`] with the limit's [`LimitAdmission`], which also does
/// the skipping ([`LimitBuilder::skip`]).
///
/// ```
/// use palisade_core::side::{Client, Server};
/// use palisade_limit::LimitLayer;
///
/// let server: LimitLayer<Server> = LimitLayer::server().max_in_flight(64).build().unwrap();
/// let client: LimitLayer<Client> = LimitLayer::client().max_in_flight(8).build().unwrap();
/// assert_eq!(server.in_flight(), 0);
/// # let _ = client;
/// ```
pub struct LimitLayer<K> {
    inner: AdmitLayer<LimitAdmission<K>>,
}

impl LimitLayer<Server> {
    /// A [`LimitBuilder`] for a server's routes: sheds the calls over the limit before they
    /// reach the handlers.
    pub fn server() -> LimitBuilder<Server> {
        LimitBuilder::new()
    }
}

impl LimitLayer<Client> {
    /// A [`LimitBuilder`] for a client's channel: keeps this client from having more calls
    /// outstanding to its backend than the limit; the others fail at once (or wait in the
    /// queue), unsent.
    pub fn client() -> LimitBuilder<Client> {
        LimitBuilder::new()
    }
}

impl<K: OnSide> LimitLayer<K> {
    /// A layer that limits nothing: every call passes on, untouched; no gate, no series. For a
    /// stack whose configuration turns the limit off (the `server` example's
    /// `--max-concurrent 0`): the stack has the same type either way, and the layer costs one
    /// branch a call.
    ///
    /// ```
    /// use palisade_core::side::Server;
    /// use palisade_limit::LimitLayer;
    ///
    /// let off = LimitLayer::<Server>::disabled();
    /// assert!(off.admission().is_disabled());
    /// assert_eq!(off.in_flight(), 0);
    /// ```
    pub fn disabled() -> Self {
        let rejection = palisade_core::Rejection::new(
            palisade_core::Code::ResourceExhausted,
            crate::DEFAULT_MESSAGE,
        );
        Self {
            inner: AdmitLayer::disabled(LimitAdmission::new(
                crate::admission::Scope::Disabled,
                rejection,
            )),
        }
    }

    pub(crate) fn new(admission: LimitAdmission<K>, skip: Option<Matcher>) -> Self {
        Self {
            inner: AdmitLayer::with_skip(admission, skip),
        }
    }
}

impl<K> LimitLayer<K> {
    /// The layer's admission (its counts).
    pub fn admission(&self) -> &LimitAdmission<K> {
        self.inner.admission()
    }

    /// The calls holding a permit now, over all the layer's counts.
    pub fn in_flight(&self) -> u32 {
        self.inner.admission().in_flight()
    }

    /// The calls waiting in a queue now, over all the layer's counts.
    pub fn queued(&self) -> usize {
        self.inner.admission().queued()
    }
}

impl<K> Clone for LimitLayer<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K: OnSide> fmt::Debug for LimitLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitLayer")
            .field("admission", self.inner.admission())
            .field("skip", &self.inner.skip())
            .finish()
    }
}

impl<S, K: OnSide> Layer<S> for LimitLayer<K> {
    type Service = ConcurrencyLimit<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        self.inner.layer(inner)
    }
}

/// A built layer fits a preset's slot of its own side, as it is.
impl<K: OnSide> BuildLayer<K> for LimitLayer<K> {
    type Layer = Self;
    const NAME: &'static str = "limit";

    fn build_layer(self) -> Result<Self, BoxError> {
        Ok(self)
    }
}
