//! What a preset's slot takes: [`BuildLayer`], a Palisade layer's builder (or the built
//! layer) for one side.
//!
//! Every Palisade builder (`LoggingLayer::server()`, `MetricsLayer::client()`, …) and every
//! built Palisade layer implements `BuildLayer<Server>` or `BuildLayer<Client>`, never both,
//! so a preset's server slot refuses a client layer — and a value that is neither, such as a
//! layer of your own, at the slot, with a note saying what fits. [`Custom`] lets any tower
//! layer into a slot of either side; `tower_layer::Identity` (an empty slot) fits both.
//!
//! A preset hands its [`MethodRegistry`] to every slot with
//! [`use_registry`](BuildLayer::use_registry) before it builds them: a builder that was given
//! no registry of its own takes it; a built layer, and a builder that has one, keep theirs.
//!
//! # Example
//!
//! ```
//! use palisade_core::build::{BuildLayer, Custom};
//! use palisade_core::side::{Client, OnSide, Server};
//! use tower_layer::Identity;
//!
//! // What a preset's server slot does with what it is given.
//! fn server_slot<P: BuildLayer<Server>>(part: P) -> Result<P::Layer, palisade_core::build::BoxError> {
//!     part.build_layer()
//! }
//! let _: Identity = server_slot(Identity::new()).unwrap();
//! let layer = server_slot(Custom(tower_layer::layer_fn(|service: ()| service))).unwrap();
//! # let _ = layer;
//! # fn _client<P: BuildLayer<Client>>(_: P) {}
//! # let _ = Client::SIDE;
//! ```

use std::error::Error;

use tower_layer::Identity;

use crate::{registry::MethodRegistry, side::OnSide};

/// The error a builder's [`build_layer`](BuildLayer::build_layer) may return: the crate's own
/// error, boxed (a preset wraps it with the slot's name).
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// A Palisade layer or its builder, for side `K`: what a preset's slot takes.
///
/// See the [module docs](self).
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not fit a preset slot of side `{K}`",
    label = "this slot takes a Palisade layer (or its builder) for `{K}`",
    note = "a server slot takes `XLayer::server()` (or its `.build()`), a client slot `XLayer::client()`; wrap any other tower layer in `palisade_core::build::Custom(..)`"
)]
pub trait BuildLayer<K: OnSide>: Sized {
    /// The layer this builds.
    type Layer;

    /// The slot's name in errors: `"trace"`, `"logging"`, `"jwt"`, …
    const NAME: &'static str;

    /// Takes the preset's registry if this has none of its own (default: keeps what it has).
    fn use_registry(self, registry: &MethodRegistry) -> Self {
        let _ = registry;
        self
    }

    /// Builds the layer; a built layer returns itself.
    fn build_layer(self) -> Result<Self::Layer, BoxError>;
}

/// Any tower layer, let into a preset slot of either side as it is: Palisade does not check
/// its side and hands it no registry.
#[derive(Clone, Copy, Debug, Default)]
pub struct Custom<L>(pub L);

impl<L, K: OnSide> BuildLayer<K> for Custom<L> {
    type Layer = L;
    const NAME: &'static str = "custom";

    fn build_layer(self) -> Result<L, BoxError> {
        Ok(self.0)
    }
}

impl<K: OnSide> BuildLayer<K> for Identity {
    type Layer = Identity;
    const NAME: &'static str = "empty";

    fn build_layer(self) -> Result<Identity, BoxError> {
        Ok(self)
    }
}
