//! [`BreakerAdmission`]: the breaker as palisade-core's admission — a layer's circuits,
//! asked at the start of every call.

use std::{convert::Infallible, fmt, future::Pending, marker::PhantomData};

use palisade_core::{
    Call, Side,
    admit::{Admission, Decision},
    side::OnSide,
};

use crate::{
    circuit::{Permit, ProbeWatch},
    hook::{OnStateChange, State},
    registry::Registry,
};

/// The `grpc-message` of a rejected call. The response is marked as made by the layer
/// named `"breaker"` ([`Outcome::rejected_by`](palisade_core::Outcome::rejected_by)).
pub const CIRCUIT_OPEN: &str = "circuit open";

/// A layer's circuits, as palisade-core's [`Admission`]: the part of a [`Breaker`] that
/// decides, reached with [`Breaker::admission`](palisade_core::admit::Admit::admission)
/// (or from the layer: [`BreakerLayer::state`](crate::BreakerLayer::state)).
///
/// Each call of a closed circuit, or a half-open circuit's probe, is admitted with its
/// [`Permit`], which hears the call's end; a probe's [`ProbeWatch`] hears its response head.
/// A call of an open circuit, or of a half-open one whose probes are all in flight, is
/// rejected with `UNAVAILABLE` [`CIRCUIT_OPEN`]. A call of a method the service does not
/// have ([`BreakerBuilder::registry`](crate::BreakerBuilder::registry)) passes, uncounted. The
/// breaker never waits. `K` is the layer's side ([`Server`](palisade_core::side::Server) or
/// [`Client`](palisade_core::side::Client)), `H` its hook.
///
/// ```
/// use palisade_breaker::{BreakerLayer, State};
/// use tower::Layer;
///
/// let layer = BreakerLayer::client().name("greeter").build();
/// let service = layer.layer(tower::service_fn(|_: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// }));
/// assert_eq!(service.admission().state("greeter"), Some(State::Closed));
/// ```
///
/// [`Breaker`]: crate::Breaker
pub struct BreakerAdmission<K, H = ()> {
    registry: Registry<H>,
    _side: PhantomData<fn() -> K>,
}

impl<K, H> BreakerAdmission<K, H> {
    pub(crate) fn new(registry: Registry<H>) -> Self {
        Self {
            registry,
            _side: PhantomData,
        }
    }

    /// The state of the circuit named `breaker` (the layer's name, or a key), if it exists.
    pub fn state(&self, breaker: &str) -> Option<State> {
        self.registry.state(breaker)
    }

    /// Every circuit made so far and its state, sorted by name.
    pub fn states(&self) -> Vec<(String, State)> {
        self.registry.states()
    }
}

impl<K: OnSide, H: OnStateChange> Admission for BreakerAdmission<K, H> {
    const NAME: &'static str = "breaker";
    type Observer = Permit<H>;
    type Head = ProbeWatch<H>;
    /// The breaker decides at once: this wait never resolves, and is never made.
    type Wait = Pending<Infallible>;

    fn side(&self) -> Side {
        K::SIDE
    }

    fn admit(&self, call: &mut Call<'_>) -> Decision<Self> {
        self.registry.admit(call)
    }

    fn resume(&self, waited: Infallible, _: &mut Call<'_>) -> Decision<Self> {
        match waited {}
    }
}

impl<K, H> fmt::Debug for BreakerAdmission<K, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.registry, f)
    }
}
