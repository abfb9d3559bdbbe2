//! [`LimitAdmission`]: the in-flight limit as palisade-core's admission — a permit per admitted
//! call, watched to the call's end.

use std::{
    fmt,
    marker::PhantomData,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use palisade_core::{
    Call, Method, PerMethod, Rejection, Side,
    admit::{Admission, Decision},
    side::OnSide,
    slots::Slots,
};

use crate::{
    adaptive::GradientConfig,
    gate::{Adaptive, Entry, Gate, Kind, Permit, QueueWait},
    key::Keys,
    series::{self, Registrar},
};

/// The limiter label of the bucket per-method limits share for methods without a gate of
/// their own, after the layer's name: `"{name}/other"`.
pub const OVERFLOW: &str = "other";

/// The in-flight limit of one layer as palisade-core's [`Admission`], reached from the service
/// with [`admission()`](palisade_core::admit::Admit::admission) or from the layer
/// ([`LimitLayer::in_flight`](crate::LimitLayer::in_flight)).
///
/// A call under the limit is admitted with a [`Permit`], given back when the call ends, on
/// every path. A call over it waits in the queue, if there is one with room
/// ([`LimitBuilder::queue`](crate::LimitBuilder::queue)), else is answered at once with a
/// trailers-only `RESOURCE_EXHAUSTED` [`DEFAULT_MESSAGE`](crate::DEFAULT_MESSAGE) carrying
/// `grpc-retry-pushback-ms`, marked as made by `"limit"`. `K` is the side.
pub struct LimitAdmission<K> {
    scope: Scope,
    rejection: Rejection,
    _side: PhantomData<fn() -> K>,
}

/// Which gate a call goes through.
pub(crate) enum Scope {
    /// One gate for every call.
    Whole(Arc<Gate>),
    /// A gate per method, with its limit.
    PerMethod(Box<Methods>),
    /// A gate per key, bounded.
    PerKey(Box<Keys>),
    /// No gate: every call passes ([`LimitLayer::disabled`](crate::LimitLayer::disabled)).
    Disabled,
}

/// What makes gates: the label's prefix, the queue every gate gets, where handles go.
pub(crate) struct GateMaker {
    pub(crate) name: Arc<str>,
    pub(crate) queue: Option<(usize, Duration)>,
    pub(crate) registrar: Registrar,
    pub(crate) made: Mutex<Vec<Arc<Gate>>>,
}

impl GateMaker {
    pub(crate) fn gate(&self, limit: u32, label: &str) -> Arc<Gate> {
        let series = series::series(&self.registrar, label.into());
        let gate = Arc::new(Gate::new(Kind::Fixed(limit), self.queue, series));
        self.made
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(gate.clone());
        gate
    }

    pub(crate) fn adaptive_gate(&self, config: GradientConfig, label: &str) -> Arc<Gate> {
        let series = series::series(&self.registrar, label.into());
        let gate = Arc::new(Gate::new(
            Kind::Adaptive(Adaptive::new(config)),
            self.queue,
            series,
        ));
        self.made
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(gate.clone());
        gate
    }

    pub(crate) fn method_gate(
        &self,
        limits: &PerMethod<u32>,
        method: &Method<'_>,
    ) -> Option<Arc<Gate>> {
        let limit = *limits.get(Some(method))?;
        let label = format!("{}/{}/{}", self.name, method.service(), method.method());
        Some(self.gate(limit, &label))
    }
}

/// Per-method limits: a gate per method with a limit, in bounded slots; the other methods
/// with a limit share the overflow gate, each under its own limit.
pub(crate) struct Methods {
    pub(crate) limits: PerMethod<u32>,
    pub(crate) gates: Slots<Option<Arc<Gate>>>,
    pub(crate) overflow: Arc<Gate>,
    pub(crate) maker: GateMaker,
}

impl Methods {
    /// The gate of `path` and the limit to apply in it; `None` for a method without a limit.
    #[inline]
    fn gate(&self, path: &str) -> Option<(&Arc<Gate>, u32)> {
        if let Some((_, gate)) = self.gates.get(path) {
            return gate.as_ref().map(|gate| (gate, gate.limit()));
        }
        self.admit(path)
    }

    #[cold]
    fn admit(&self, path: &str) -> Option<(&Arc<Gate>, u32)> {
        let method = Method::parse(path);
        let limit = *self.limits.get(method.as_ref())?;
        match self
            .gates
            .admit(path, |method| self.maker.method_gate(&self.limits, method))
        {
            Some((_, gate)) => gate.as_ref().map(|gate| (gate, gate.limit())),
            None => Some((&self.overflow, limit)),
        }
    }
}

impl Scope {
    fn gates(&self) -> Vec<Arc<Gate>> {
        match self {
            Scope::Whole(gate) => vec![gate.clone()],
            Scope::PerMethod(methods) => methods
                .maker
                .made
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            Scope::PerKey(keys) => keys.gates(),
            Scope::Disabled => Vec::new(),
        }
    }
}

impl<K> LimitAdmission<K> {
    pub(crate) fn new(scope: Scope, rejection: Rejection) -> Self {
        Self {
            scope,
            rejection,
            _side: PhantomData,
        }
    }

    /// Whether this limit lets every call through ([`LimitLayer::disabled`](crate::LimitLayer::disabled)).
    pub fn is_disabled(&self) -> bool {
        matches!(self.scope, Scope::Disabled)
    }

    /// The calls holding a permit now, over every gate of the layer.
    pub fn in_flight(&self) -> u32 {
        self.scope.gates().iter().map(|gate| gate.in_flight()).sum()
    }

    /// The whole-service limit now — the one set, or the one an adaptive limit found — or
    /// `None` for per-method and per-key limits.
    pub fn limit(&self) -> Option<u32> {
        match &self.scope {
            Scope::Whole(gate) => Some(gate.limit()),
            _ => None,
        }
    }

    /// The calls waiting in a queue now, over every gate of the layer.
    pub fn queued(&self) -> usize {
        self.scope.gates().iter().map(|gate| gate.queued()).sum()
    }

    /// How many keys a per-key limit keeps a count of now (0 for other limits).
    pub fn keys(&self) -> usize {
        match &self.scope {
            Scope::PerKey(keys) => keys.len(),
            _ => 0,
        }
    }

    /// The rejection answered to a call over the limit.
    pub fn rejection(&self) -> &Rejection {
        &self.rejection
    }
}

impl<K: OnSide> Admission for LimitAdmission<K> {
    const NAME: &'static str = "limit";
    type Observer = Permit;
    type Head = ();
    type Wait = QueueWait;

    fn side(&self) -> Side {
        K::SIDE
    }

    #[inline]
    fn admit(&self, call: &mut Call<'_>) -> Decision<Self> {
        let keyed;
        let (gate, limit) = match &self.scope {
            Scope::PerKey(keys) => {
                keyed = keys.gate(call);
                (&keyed, keys.limit)
            }
            Scope::Whole(gate) => (gate, gate.limit()),
            Scope::PerMethod(methods) => match methods.gate(call.path()) {
                Some(found) => found,
                None => return Decision::Pass,
            },
            Scope::Disabled => return Decision::Pass,
        };
        match gate.enter(limit, || call.timeout()) {
            Entry::Admitted(permit) => Decision::observe(permit),
            Entry::Queued(wait) => Decision::Wait(wait),
            Entry::Full => {
                gate.rejected();
                Decision::Reject(self.rejection.clone())
            }
        }
    }

    fn resume(&self, waited: Option<Permit>, _: &mut Call<'_>) -> Decision<Self> {
        match waited {
            Some(permit) => Decision::observe(permit),
            None => Decision::Reject(self.rejection.clone()),
        }
    }

    fn abandon(&self, wait: Pin<&mut QueueWait>, _: &mut Call<'_>) {
        wait.abandon();
    }
}

impl<K: OnSide> fmt::Debug for LimitAdmission<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitAdmission")
            .field("side", &K::SIDE)
            .field("gates", &self.scope.gates())
            .field("rejection", &self.rejection)
            .finish()
    }
}
