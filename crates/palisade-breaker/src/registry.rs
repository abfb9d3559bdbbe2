//! A layer's circuits: one, or one per key (method, authority, your key), bounded in number:
//! by the method registry when keys are its methods, else by `max_breakers`, which keys earn
//! by frequency admission (palisade-core's [`Slots`]).

use std::{
    borrow::Cow,
    fmt,
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
};

use http::{Extensions, HeaderMap, Request, Uri, header::HOST, request::Parts};
use palisade_core::{
    Call, Code, Method, MethodRegistry, Rejection,
    admit::{Admitted, Decision},
    side::OnSide,
    slots::Slots,
};
use tokio::time::Instant;

use crate::{
    admission::{BreakerAdmission, CIRCUIT_OPEN},
    circuit::{Circuit, Permit, Shared},
    classify::Timing,
    hook::{OnStateChange, State},
};

/// The name of the circuit shared by calls whose key is missing, or new once the layer holds
/// its maximum number of circuits.
pub const OVERFLOW_BREAKER: &str = "other";

/// The parts of a request a custom key is read from; see
/// [`BreakerBuilder::per_key`](crate::BreakerBuilder::per_key).
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    uri: &'a Uri,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
    method: Option<Method<'a>>,
}

impl<'a> RequestHead<'a> {
    /// The head of a request.
    pub fn new<B>(request: &'a Request<B>) -> Self {
        Self::of(request.uri(), request.headers(), request.extensions())
    }

    pub(crate) fn from_parts(parts: &'a Parts) -> Self {
        Self::of(&parts.uri, &parts.headers, &parts.extensions)
    }

    fn of(uri: &'a Uri, headers: &'a HeaderMap, extensions: &'a Extensions) -> Self {
        RequestHead {
            uri,
            headers,
            extensions,
            method: Method::from_uri(uri),
        }
    }

    /// The request URI.
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The request headers (gRPC metadata).
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The request extensions (peer, claims, … put there by other layers).
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }

    /// The gRPC method, when the path is one.
    pub fn method(&self) -> Option<Method<'a>> {
        self.method
    }

    /// The `:authority` of the request: the URI's authority, else the `host` header.
    pub fn authority(&self) -> Option<&'a str> {
        authority(self.uri, self.headers)
    }
}

fn authority<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(HOST).and_then(|v| v.to_str().ok()))
}

pub(crate) type KeyFn = dyn for<'a> Fn(&RequestHead<'a>) -> Option<Cow<'a, str>> + Send + Sync;

/// How a layer picks the circuit of a call.
#[derive(Clone)]
pub(crate) enum KeyBy {
    Single,
    Method,
    Authority,
    Custom(Arc<KeyFn>),
}

impl fmt::Debug for KeyBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyBy::Single => "Single",
            KeyBy::Method => "Method",
            KeyBy::Authority => "Authority",
            KeyBy::Custom(_) => "Custom(..)",
        })
    }
}

/// The circuits of a layer, shared by every service the layer makes.
pub(crate) struct Registry<H> {
    shared: Arc<Shared<H>>,
    key: KeyBy,
    methods: Option<MethodRegistry>,
    max: usize,
    single: Option<Arc<Circuit<H>>>,
    /// Keyed circuits: the registry's methods, placed at build, and up to `max` keys that
    /// earned one by frequency admission. Never emptied: a series once exported stays.
    keyed: Option<Slots<Arc<Circuit<H>>, foldhash::fast::RandomState>>,
    /// Every keyed circuit made, in order: for [`Registry::states`].
    made: Mutex<Vec<Arc<Circuit<H>>>>,
    overflow: OnceLock<Arc<Circuit<H>>>,
}

impl<H> Registry<H> {
    pub(crate) fn new(
        shared: Shared<H>,
        name: Arc<str>,
        key: KeyBy,
        methods: Option<MethodRegistry>,
        max: usize,
    ) -> Self {
        let shared = Arc::new(shared);
        let single =
            matches!(key, KeyBy::Single).then(|| Arc::new(Circuit::new(name, shared.clone())));
        let mut made = Vec::new();
        let keyed = (!matches!(key, KeyBy::Single)).then(|| {
            // Keyed by the registry's methods: each has its circuit from the start, and no
            // other path ever gets one.
            let (known, max_dynamic) = match (&key, &methods) {
                (KeyBy::Method, Some(methods)) => {
                    let known: Vec<_> = methods
                        .iter()
                        .map(|info| {
                            let name: Arc<str> = format!("{}/{}", info.service, info.method).into();
                            let circuit = Arc::new(Circuit::new(name.clone(), shared.clone()));
                            made.push(circuit.clone());
                            (format!("/{name}"), circuit)
                        })
                        .collect();
                    (known, 0)
                }
                _ => (Vec::new(), max),
            };
            Slots::with_hasher(known, max_dynamic, foldhash::fast::RandomState::default())
        });
        Registry {
            shared,
            key,
            methods,
            max,
            single,
            keyed,
            made: Mutex::new(made),
            overflow: OnceLock::new(),
        }
    }

    fn overflow(&self) -> &Arc<Circuit<H>> {
        self.overflow
            .get_or_init(|| Arc::new(Circuit::new(OVERFLOW_BREAKER.into(), self.shared.clone())))
    }

    /// The circuit of `key` (a request path when `name` is given: the circuit is named by the
    /// method's full name), or the overflow circuit while the key has not earned one of its
    /// own — by being seen often enough (palisade-core's frequency admission), while fewer
    /// than `max` keys have one. A one-off key never gets a circuit, so a flood of keys
    /// chosen by callers neither makes circuits (nor metric series) nor crowds real ones out.
    fn keyed(&self, key: &str, name: Option<&str>) -> &Arc<Circuit<H>> {
        let Some(slots) = &self.keyed else {
            return self.overflow();
        };
        if let Some((_, circuit)) = slots.get(key) {
            return circuit;
        }
        let admitted = slots.admit_key(key, || {
            let circuit = Arc::new(Circuit::new(
                name.unwrap_or(key).into(),
                self.shared.clone(),
            ));
            self.made
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(circuit.clone());
            circuit
        });
        match admitted {
            Some((_, circuit)) => circuit,
            None => self.overflow(),
        }
    }

    fn made(&self) -> MutexGuard<'_, Vec<Arc<Circuit<H>>>> {
        self.made.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state of the circuit named `name`, if the layer has made it.
    pub(crate) fn state(&self, name: &str) -> Option<State> {
        if let Some(single) = &self.single {
            return (single.name() == name).then(|| single.state());
        }
        if name == OVERFLOW_BREAKER {
            return self.overflow.get().map(|c| c.state());
        }
        self.made()
            .iter()
            .find(|c| c.name() == name)
            .map(|c| c.state())
    }

    /// Every circuit made so far, with its state, sorted by name.
    pub(crate) fn states(&self) -> Vec<(String, State)> {
        let made = self.made();
        let mut states: Vec<_> = self
            .single
            .iter()
            .chain(made.iter())
            .chain(self.overflow.get())
            .map(|c| (c.name().to_owned(), c.state()))
            .collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        states
    }
}

impl<H: OnStateChange> Registry<H> {
    /// Decides what happens to a call: passed uncounted (a method the service does not
    /// have), admitted with the permit of its circuit, or rejected while that circuit is open
    /// or its probes are all taken.
    pub(crate) fn admit<K: OnSide>(&self, call: &mut Call<'_>) -> Decision<BreakerAdmission<K, H>> {
        // Parse the path once, and only when something reads it.
        let parts = call.parts();
        let method = if self.methods.is_some() || matches!(self.key, KeyBy::Method) {
            Method::from_uri(&parts.uri)
        } else {
            None
        };
        // A method the service does not have: the inner service answers it, uncounted.
        if let Some(methods) = &self.methods
            && method.and_then(|m| methods.get(&m)).is_none()
        {
            return Decision::Pass;
        }
        let circuit = match &self.key {
            KeyBy::Single => match &self.single {
                Some(circuit) => circuit,
                None => self.overflow(),
            },
            KeyBy::Method => match method {
                Some(method) => self.keyed(method.path(), Some(method.full_name())),
                None => self.overflow(),
            },
            KeyBy::Authority => match authority(&parts.uri, &parts.headers) {
                Some(authority) => self.keyed(authority, None),
                None => self.overflow(),
            },
            KeyBy::Custom(key) => match key(&RequestHead::from_parts(parts)) {
                Some(key) => self.keyed(&key, None),
                None => self.overflow(),
            },
        };
        let Some(ticket) = circuit.try_acquire() else {
            return Decision::Reject(Rejection::new(Code::Unavailable, CIRCUIT_OPEN));
        };
        let permit = Permit::new(circuit.clone(), ticket, self.timing(call));
        match permit.watch() {
            // A probe: its circuit hears when its response starts.
            Some(probe) => Decision::Admit(Admitted::new().observe(permit).on_head(probe)),
            None => Decision::observe(permit),
        }
    }

    /// Reads the clock only when a rule needs the call's start: a slow-call threshold, or the
    /// caller's `grpc-timeout` (on a client, a call dropped after it passed is a local
    /// timeout, not a cancellation; on a server, whether the call ran long enough for its
    /// deadline passing to be the server's failure rather than the caller's short deadline).
    fn timing(&self, call: &mut Call<'_>) -> Timing {
        let timeout = call.timeout();
        if timeout.is_none() && self.shared.settings.rules.slow_call.is_none() {
            return Timing::default();
        }
        let started = Instant::now();
        Timing {
            started: Some(started),
            deadline: timeout.and_then(|timeout| started.checked_add(timeout)),
        }
    }
}

impl<H> fmt::Debug for Registry<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("settings", &self.shared.settings)
            .field("key", &self.key)
            .field("methods", &self.methods.as_ref().map(MethodRegistry::len))
            .field("max", &self.max)
            .field("states", &self.states())
            .finish()
    }
}
