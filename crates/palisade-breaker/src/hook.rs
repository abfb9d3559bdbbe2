//! Circuit states, and the hook told of every change.

use std::{fmt, time::Duration};

/// The state of one circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls go through; their outcomes feed the policy.
    Closed,
    /// The open duration passed: a bounded number of probe calls go through, the others are
    /// rejected; the probes' outcome closes or reopens the circuit.
    HalfOpen,
    /// Calls are rejected at once with `UNAVAILABLE`, without reaching the inner service.
    Open,
}

impl State {
    /// `closed`, `half_open` or `open`.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }

    /// The value of the `palisade_breaker_state` gauge: 0 closed, 1 half-open, 2 open.
    pub const fn gauge_value(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen => 1.0,
            State::Open => 2.0,
        }
    }

    pub(crate) const fn from_bits(bits: u64) -> State {
        match bits & 0b11 {
            0 => State::Closed,
            1 => State::HalfOpen,
            _ => State::Open,
        }
    }

    pub(crate) const fn bits(self) -> u64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change of a circuit's state, given to an [`OnStateChange`] hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transition<'a> {
    /// The circuit's name: the layer's name, or its key (`pkg.Service/Method`, an authority,
    /// your key), as in the `breaker` metric label.
    pub breaker: &'a str,
    /// The state before.
    pub from: State,
    /// The state now.
    pub to: State,
    /// How long the circuit stays open, when `to` is [`State::Open`].
    pub open_for: Option<Duration>,
}

/// Told of every state change of every circuit of a layer, in order.
///
/// Implemented by `()` (nothing, the default) and by closures taking a `&Transition`. The
/// hook runs while the circuit holds its transition lock, so changes arrive in the order they
/// happened: keep it short, and do not make calls through the same layer from it.
///
/// # Example
///
/// ```
/// use palisade_breaker::{BreakerLayer, State, Transition};
///
/// let layer = BreakerLayer::client()
///     .on_state_change(|t: &Transition<'_>| {
///         if t.to == State::Open {
///             eprintln!("{} opened for {:?}", t.breaker, t.open_for);
///         }
///     })
///     .build();
/// # let _ = layer;
/// ```
pub trait OnStateChange {
    /// A circuit changed state.
    fn on_state_change(&self, transition: &Transition<'_>);
}

impl OnStateChange for () {
    #[inline]
    fn on_state_change(&self, _: &Transition<'_>) {}
}

impl<F> OnStateChange for F
where
    F: Fn(&Transition<'_>),
{
    fn on_state_change(&self, transition: &Transition<'_>) {
        self(transition)
    }
}
