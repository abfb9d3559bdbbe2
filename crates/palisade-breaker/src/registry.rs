//! A layer's circuits: one, or one per key (method, authority, your key), bounded in number:
//! by the method registry when keys are its methods, else by evicting unused closed circuits.

use std::{
    borrow::Cow,
    collections::HashMap,
    fmt,
    sync::{Arc, OnceLock, PoisonError, RwLock},
};

use http::{Extensions, HeaderMap, Request, Uri, header::HOST};
use palisade_core::{Matcher, Method, MethodRegistry, Side, deadline::grpc_timeout};
use tokio::time::Instant;

use crate::{
    circuit::{Circuit, Permit, Shared},
    classify::Timing,
    hook::{OnStateChange, State},
};

/// The name of the circuit shared by calls whose key is missing, or new once the layer holds
/// its maximum number of circuits.
pub const OVERFLOW_BREAKER: &str = "other";

/// The parts of a request a custom key is read from; see
/// [`Builder::per_key`](crate::Builder::per_key).
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
        RequestHead {
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
            method: Method::from_request(request),
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

/// What the layer does with one call.
pub(crate) enum Admission<H> {
    /// The skip matcher selected it: straight through, not counted.
    Skip,
    /// The circuit is open, or its probes are all taken.
    Rejected,
    /// Admitted; the permit goes with the call to its end.
    Permitted(Permit<H>),
}

/// The circuits of a layer, shared by every service the layer makes.
pub(crate) struct Registry<H> {
    shared: Arc<Shared<H>>,
    key: KeyBy,
    skip: Option<Matcher>,
    methods: Option<MethodRegistry>,
    /// Whether `max` bounds the keyed circuits (not when they are the registry's methods).
    bounded: bool,
    max: usize,
    single: Option<Arc<Circuit<H>>>,
    map: RwLock<HashMap<Arc<str>, Arc<Circuit<H>>, foldhash::fast::RandomState>>,
    overflow: OnceLock<Arc<Circuit<H>>>,
}

impl<H> Registry<H> {
    pub(crate) fn new(
        shared: Shared<H>,
        name: Arc<str>,
        key: KeyBy,
        skip: Option<Matcher>,
        methods: Option<MethodRegistry>,
        max: usize,
    ) -> Self {
        let shared = Arc::new(shared);
        let single =
            matches!(key, KeyBy::Single).then(|| Arc::new(Circuit::new(name, shared.clone())));
        let bounded = !(matches!(key, KeyBy::Method) && methods.is_some());
        Registry {
            shared,
            key,
            skip,
            methods,
            bounded,
            max,
            single,
            map: RwLock::new(HashMap::default()),
            overflow: OnceLock::new(),
        }
    }

    pub(crate) fn side(&self) -> palisade_core::Side {
        self.shared.settings.side
    }

    fn overflow(&self) -> &Arc<Circuit<H>> {
        self.overflow
            .get_or_init(|| Arc::new(Circuit::new(OVERFLOW_BREAKER.into(), self.shared.clone())))
    }

    /// The circuit for `key`, made on first sight while there is room (or room can be made).
    fn keyed(&self, key: &str) -> Arc<Circuit<H>> {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(circuit) = map.get(key) {
            circuit.touch();
            return circuit.clone();
        }
        drop(map);
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(circuit) = map.get(key) {
            circuit.touch();
            return circuit.clone();
        }
        if self.bounded && map.len() >= self.max {
            evict(&mut map);
            if map.len() >= self.max {
                drop(map);
                return self.overflow().clone();
            }
        }
        let name: Arc<str> = key.into();
        let circuit = Arc::new(Circuit::new(name.clone(), self.shared.clone()));
        map.insert(name, circuit.clone());
        circuit
    }

    /// The state of the circuit named `name`, if the layer has made it.
    pub(crate) fn state(&self, name: &str) -> Option<State> {
        if let Some(single) = &self.single {
            return (single.name() == name).then(|| single.state());
        }
        if name == OVERFLOW_BREAKER {
            return self.overflow.get().map(|c| c.state());
        }
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        map.get(name).map(|c| c.state())
    }

    /// Every circuit made so far, with its state, sorted by name.
    pub(crate) fn states(&self) -> Vec<(String, State)> {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        let mut states: Vec<_> = self
            .single
            .iter()
            .chain(map.values())
            .chain(self.overflow.get())
            .map(|c| (c.name().to_owned(), c.state()))
            .collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        states
    }
}

/// Makes room among keyed circuits: removes those that are closed, have no call in flight
/// (the map holds the only reference: no permit has one) and were not looked up since the
/// last eviction; the others of them lose their mark, so they go next time unless used. Open
/// and half-open circuits always stay.
fn evict<H, S>(map: &mut HashMap<Arc<str>, Arc<Circuit<H>>, S>) {
    map.retain(|_, circuit| {
        let idle = circuit.state() == State::Closed && Arc::strong_count(circuit) == 1;
        !idle || circuit.take_used()
    });
}

impl<H: OnStateChange> Registry<H> {
    /// Decides what happens to a call.
    pub(crate) fn admit<B>(&self, request: &Request<B>) -> Admission<H> {
        // Parse the path once, and only when something reads it.
        let method =
            if self.skip.is_some() || self.methods.is_some() || matches!(self.key, KeyBy::Method) {
                Method::from_request(request)
            } else {
                None
            };
        if let Some(skip) = &self.skip
            && skip.matches(method.as_ref())
        {
            return Admission::Skip;
        }
        // A method the service does not have: the inner service answers it, uncounted.
        if let Some(methods) = &self.methods
            && method.and_then(|m| methods.get(&m)).is_none()
        {
            return Admission::Skip;
        }
        match &self.key {
            KeyBy::Single => match &self.single {
                Some(circuit) => self.admit_in(circuit, request),
                None => self.admit_in(self.overflow(), request),
            },
            KeyBy::Method => match method {
                Some(method) => self.admit_in(&self.keyed(method.full_name()), request),
                None => self.admit_in(self.overflow(), request),
            },
            KeyBy::Authority => match authority(request.uri(), request.headers()) {
                Some(authority) => self.admit_in(&self.keyed(authority), request),
                None => self.admit_in(self.overflow(), request),
            },
            KeyBy::Custom(key) => {
                let head = RequestHead::new(request);
                match key(&head) {
                    Some(key) => self.admit_in(&self.keyed(&key), request),
                    None => self.admit_in(self.overflow(), request),
                }
            }
        }
    }

    fn admit_in<B>(&self, circuit: &Arc<Circuit<H>>, request: &Request<B>) -> Admission<H> {
        match circuit.try_acquire() {
            Some(ticket) => {
                Admission::Permitted(Permit::new(circuit.clone(), ticket, self.timing(request)))
            }
            None => Admission::Rejected,
        }
    }

    /// Reads the clock only when a rule needs the call's start: a slow-call threshold, or, on
    /// a client, the caller's `grpc-timeout` (a call dropped after it passed is a local
    /// timeout, not a cancellation; on a server it is the caller's own deadline).
    fn timing<B>(&self, request: &Request<B>) -> Timing {
        let timeout = match self.shared.settings.side {
            Side::Client => grpc_timeout(request.headers()),
            Side::Server => None,
        };
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
            .field("skip", &self.skip)
            .field("methods", &self.methods.as_ref().map(MethodRegistry::len))
            .field("max", &self.max)
            .field("states", &self.states())
            .finish()
    }
}
