//! The client layer: a call waits for its tokens — never past its deadline or the maximum
//! wait — and otherwise fails at once, unsent. Its service is palisade-core's [`Admit`] with
//! the [`ClientRateLimitAdmission`]; the wait for tokens, a server's pushback or a backend's
//! decision is its [`ClientWait`].

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    hash::{BuildHasher, Hasher},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError, atomic::Ordering},
    task::{Context, Poll, ready},
    time::Duration,
};

use http::HeaderMap;
use palisade_core::{
    Call, MethodRegistry, Rejection, Side,
    admit::{self, Admission, Admit, AdmitLayer, Admitted, Decision, OnHead},
    build::{BoxError, BuildLayer},
    side::Client,
};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};
use tower_layer::Layer;

use crate::{
    backend::{self, DecisionFuture},
    config::ClientRateLimitBuilder,
    key::{KeyValue, RequestInfo},
    series::{EntryRef, Lookup, MethodEntry},
    shared::{PUSHBACK, Shared, Step, Tally},
};

/// Rate limits the calls a client makes: a call over its quota waits until its tokens are
/// there, then goes; if they would come after the call's deadline (`grpc-timeout`) or the
/// layer's maximum wait, it fails at once with the rejection's code (`RESOURCE_EXHAUSTED`
/// by default, a trailers-only response tonic reads as a `Status`) without reaching the inner
/// service. A call that waited goes out with its `grpc-timeout` shortened by the wait, so its
/// deadline stays where the caller put it.
///
/// Limits, keys and matchers are the server layer's ([`Key::metadata`](crate::Key::metadata)
/// reads the outgoing metadata; there is no peer); per-message limits do not apply.
///
/// **Server pushback** is honoured (unless turned off with
/// [`pushback(false)`](ClientRateLimitBuilder::pushback)): a trailers-only error response
/// carrying `grpc-retry-pushback-ms` — a server's rate limit (this crate's server layer,
/// Envoy's) asking the caller to slow down — holds later calls of the same scope until that
/// many milliseconds have passed (capped at a minute; a value that is not a non-negative
/// integer is ignored). Each waits until then, within the maximum wait and its deadline as for
/// its tokens, or fails at once with the layer's rejection, unsent. The response that carried
/// the pushback goes back to its caller as it is.
///
/// The **scope of a hold** is the method, and the layer's keys when its limits are keyed: a
/// pushback to a call of `/pkg.Svc/Get` holds the later calls of `/pkg.Svc/Get` that this
/// layer would put in the same buckets — with a limit keyed by
/// [`Key::metadata("x-api-key")`](crate::Key::metadata), only those with the same API key,
/// so one end user's exhausted quota on a gateway does not hold anyone else's calls; with
/// only unkeyed limits, every call of the method through this layer. Other methods are never
/// held. Calls to different servers are told apart only by the layer: give each channel its
/// own layer (a layer shared by two channels holds a method on both when one server pushes
/// back). Methods without an entry of their own in the layer's method table (past its
/// dynamic cap, not in the registry) are not held. While nothing is held, honouring
/// pushback costs a call one atomic load.
///
/// # Example
///
/// ```
/// use std::{num::NonZeroU32, time::Duration};
/// use palisade_ratelimit::{Limit, Quota, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let channel = tonic::transport::Channel::from_static("http://127.0.0.1:50051").connect_lazy();
/// let channel = tower::ServiceBuilder::new()
///     .layer(
///         RateLimitLayer::client()
///             .limit(Limit::global(Quota::per_second(NonZeroU32::new(50).unwrap())))
///             .max_wait(Duration::from_millis(250))
///             .build()
///             .unwrap(),
///     )
///     .service(channel);
/// let client = palisade_demo::pb::greeter_client::GreeterClient::new(channel);
/// # let _ = client; }
/// ```
#[derive(Clone)]
pub struct ClientRateLimitLayer {
    admit: AdmitLayer<ClientRateLimitAdmission>,
}

impl BuildLayer<Client> for ClientRateLimitLayer {
    type Layer = Self;
    const NAME: &'static str = "ratelimit";

    fn build_layer(self) -> Result<Self, BoxError> {
        Ok(self)
    }
}

impl BuildLayer<Client> for ClientRateLimitBuilder {
    type Layer = ClientRateLimitLayer;
    const NAME: &'static str = "ratelimit";

    fn use_registry(self, registry: &MethodRegistry) -> Self {
        self.registry_if_none(registry)
    }

    fn build_layer(self) -> Result<ClientRateLimitLayer, BoxError> {
        Ok(self.build()?)
    }
}

impl ClientRateLimitLayer {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Self {
            admit: AdmitLayer::new(ClientRateLimitAdmission { shared }),
        }
    }
}

impl fmt::Debug for ClientRateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.admit.admission().shared;
        f.debug_struct("ClientRateLimitLayer")
            .field("limits", &shared.limits)
            .field("max_wait", &shared.max_wait)
            .field("shadow", &shared.shadow)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ClientRateLimitLayer {
    type Service = ClientRateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admit::new(inner, self.admit.clone())
    }
}

/// The client service; made by [`ClientRateLimitLayer`]: palisade-core's [`Admit`] with the
/// [`ClientRateLimitAdmission`].
///
/// The inner service must be `Clone` (a `tonic::transport::Channel` is): a waiting call takes
/// the ready service with it and leaves a clone.
pub type ClientRateLimit<S> = Admit<S, ClientRateLimitAdmission>;

/// The response future of [`ClientRateLimit`]: palisade-core's [`admit::ResponseFuture`] —
/// the inner call, a trailers-only rejection, or the wait for tokens before the call (never
/// boxed).
pub type ClientResponseFuture<S, B> = admit::ResponseFuture<S, ClientRateLimitAdmission, B>;

/// The client layer's admission: a call over its quota, or held by a server's pushback,
/// waits ([`ClientWait`]) within its deadline and the layer's maximum wait, or is rejected
/// at once, unsent; a call sent is watched for its response's pushback ([`Hold`]). Made by
/// [`ClientRateLimitLayer`].
#[derive(Clone)]
pub struct ClientRateLimitAdmission {
    shared: Arc<Shared>,
}

impl fmt::Debug for ClientRateLimitAdmission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRateLimitAdmission")
            .field("limits", &self.shared.limits)
            .field("max_wait", &self.shared.max_wait)
            .finish_non_exhaustive()
    }
}

/// How long a call may wait: until a deadline, strictly before it when it is the call's own
/// (`None`: a deadline too far to be an `Instant`).
#[derive(Clone, Copy, Debug)]
struct Budget {
    until: Option<Instant>,
    /// The call's `grpc-timeout`, which the wait is taken from.
    timeout: Option<Duration>,
    strict: bool,
}

impl Budget {
    fn new(now: Instant, timeout: Option<Duration>, max_wait: Duration) -> Self {
        match timeout {
            Some(timeout) if timeout <= max_wait => Self {
                until: now.checked_add(timeout),
                timeout: Some(timeout),
                strict: true,
            },
            _ => Self {
                until: now.checked_add(max_wait),
                timeout,
                strict: false,
            },
        }
    }

    fn allows(&self, ready_at: Instant) -> bool {
        match self.until {
            None => true,
            Some(until) if self.strict => ready_at < until,
            Some(until) => ready_at <= until,
        }
    }
}

impl Admission for ClientRateLimitAdmission {
    const NAME: &'static str = "ratelimit";
    type Observer = ();
    type Head = Hold;
    type Wait = ClientWait;

    fn side(&self) -> Side {
        Side::Client
    }

    #[inline]
    fn admit(&self, call: &mut Call<'_>) -> Decision<Self> {
        let shared = &*self.shared;
        let lookup = shared.table.lookup(shared, call.parts().uri.path());
        let entry = lookup.entry();
        if entry.plan.is_empty() {
            return Decision::Pass;
        }
        let mut tally = Tally::default();
        let scope = Scope::of(shared, &lookup, &RequestInfo::from_parts(call.parts()));
        // Nothing held: one load.
        let held = entry.held.load(Ordering::Relaxed);
        if held != 0
            && let Some(until) = shared.held_until(entry, scope.as_ref(), held)
        {
            if shared.shadow {
                tally.shadow_denied = true;
            } else {
                let now = Instant::now();
                let budget = Budget::new(now, call.timeout(), shared.max_wait);
                if !budget.allows(until) {
                    entry.counters.rejected.increment(1);
                    return Decision::Reject(pushed_back(shared, now, until));
                }
                let progress = Progress {
                    entry: lookup.to_ref(),
                    pos: 0,
                    tally,
                    budget,
                    started: now,
                    scope,
                };
                return Decision::Wait(ClientWait::new(Kind::pushback(until), progress));
            }
        }
        let step = shared.run(entry, &RequestInfo::from_parts(call.parts()), 0, &mut tally);
        if let Step::Done = step {
            shared.count_passed(entry, &tally);
            return self.send(scope);
        }
        let now = Instant::now();
        let progress = Progress {
            entry: lookup.to_ref(),
            pos: 0,
            tally,
            budget: Budget::new(now, call.timeout(), shared.max_wait),
            started: now,
            scope,
        };
        self.next(step, progress, call)
    }

    fn resume(&self, waited: ClientWaited, call: &mut Call<'_>) -> Decision<Self> {
        let ClientWaited {
            waited,
            mut progress,
        } = waited;
        let shared = &*self.shared;
        let entry = shared.table.resolve(&progress.entry);
        let info = RequestInfo::from_parts(call.parts());
        let step = match waited {
            Waited::Pushback => {
                // A later pushback may hold the scope longer.
                let held = entry.held.load(Ordering::Relaxed);
                if held != 0
                    && let Some(until) = shared.held_until(entry, progress.scope.as_ref(), held)
                {
                    if !progress.budget.allows(until) {
                        entry.counters.rejected.increment(1);
                        return Decision::Reject(pushed_back(shared, Instant::now(), until));
                    }
                    return Decision::Wait(ClientWait::new(Kind::pushback(until), progress));
                }
                shared.run(entry, &info, 0, &mut progress.tally)
            }
            Waited::Until => shared.run(entry, &info, progress.pos, &mut progress.tally),
            Waited::Decision(decision) => {
                match shared.apply(progress.pos, decision, &mut progress.tally) {
                    Some(step) => step,
                    None => shared.run(entry, &info, progress.pos + 1, &mut progress.tally),
                }
            }
        };
        self.next(step, progress, call)
    }

    /// A call dropped while it waits (its caller gone) gives back the tokens the limits before
    /// the one it waits on gave it.
    fn abandon(&self, wait: Pin<&mut ClientWait>, call: &mut Call<'_>) {
        let Some(progress) = wait.project().progress.take() else {
            return;
        };
        if progress.tally.has_taken() {
            self.refund(progress, call);
        }
    }
}

impl ClientRateLimitAdmission {
    /// The decision once the checks of a call that is waiting, or is to wait, stopped at
    /// `step`.
    fn next(&self, step: Step, mut progress: Progress, call: &mut Call<'_>) -> Decision<Self> {
        match step {
            Step::Done => {
                let entry = self.shared.table.resolve(&progress.entry);
                self.shared.count_passed(entry, &progress.tally);
                if let Some(timeout) = progress.budget.timeout {
                    // The call waited: its deadline stays where the caller put it.
                    let left = timeout.saturating_sub(progress.started.elapsed());
                    call.parts_mut()
                        .headers
                        .insert("grpc-timeout", palisade_core::deadline::timeout_value(left));
                }
                self.send(progress.scope)
            }
            Step::NoKey => self.reject(progress, None, call),
            Step::Denied { pos, decision } => {
                let ready_at = Instant::now().checked_add(decision.retry_after());
                match ready_at.filter(|&at| progress.budget.allows(at)) {
                    Some(ready_at) => {
                        progress.pos = pos;
                        Decision::Wait(ClientWait::new(Kind::until(ready_at), progress))
                    }
                    None => self.reject(progress, Some(&decision), call),
                }
            }
            Step::Pending { pos, future } => {
                progress.pos = pos;
                Decision::Wait(ClientWait::new(Kind::Decision { future }, progress))
            }
        }
    }

    /// A call let through: watched for its response's pushback when its scope can be held.
    #[inline]
    fn send(&self, scope: Option<Scope>) -> Decision<Self> {
        match scope {
            Some(scope) => Decision::Admit(Admitted::new().on_head(Hold {
                shared: self.shared.clone(),
                scope,
            })),
            None => Decision::Pass,
        }
    }

    /// A refused call: the tokens the limits before gave back, counted, rejected.
    #[cold]
    fn reject(
        &self,
        progress: Progress,
        decision: Option<&backend::Decision>,
        call: &Call<'_>,
    ) -> Decision<Self> {
        let entry = self.shared.table.resolve(&progress.entry);
        entry.counters.rejected.increment(1);
        self.refund(progress, call);
        Decision::Reject(self.shared.rejection(decision))
    }

    #[cold]
    fn refund(&self, mut progress: Progress, call: &Call<'_>) {
        let entry = self.shared.table.resolve(&progress.entry);
        self.shared.refund(
            entry,
            &RequestInfo::from_parts(call.parts()),
            &mut progress.tally,
        );
    }
}

/// Where the checks of a waiting client call stand.
#[derive(Debug)]
struct Progress {
    entry: EntryRef,
    /// The limit the call waits on.
    pos: usize,
    tally: Tally,
    budget: Budget,
    started: Instant,
    scope: Option<Scope>,
}

pin_project! {
    /// The wait of a client call: until a server's pushback is over, until its tokens are
    /// there, or for a backend's decision — inline in the call's future, not boxed.
    pub struct ClientWait {
        #[pin]
        kind: Kind,
        // `None` once the wait is over.
        progress: Option<Progress>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        /// Until a server's pushback is over; then the limits are asked from the first.
        Pushback { #[pin] sleep: Sleep },
        /// Until the tokens are there; then the limit at `pos` is asked again.
        Until { #[pin] sleep: Sleep },
        /// For the backend's decision on the limit at `pos`.
        Decision { future: DecisionFuture },
    }
}

impl Kind {
    fn pushback(until: Instant) -> Self {
        Kind::Pushback {
            sleep: sleep_until(until),
        }
    }

    fn until(ready_at: Instant) -> Self {
        Kind::Until {
            sleep: sleep_until(ready_at),
        }
    }
}

impl ClientWait {
    fn new(kind: Kind, progress: Progress) -> Self {
        Self {
            kind,
            progress: Some(progress),
        }
    }
}

/// What a [`ClientWait`] waited for, for [`resume`](Admission::resume).
#[derive(Debug)]
pub struct ClientWaited {
    waited: Waited,
    progress: Progress,
}

#[derive(Debug)]
enum Waited {
    Pushback,
    Until,
    Decision(backend::Decision),
}

impl Future for ClientWait {
    type Output = ClientWaited;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ClientWaited> {
        let this = self.project();
        let waited = match this.kind.project() {
            KindProj::Pushback { sleep } => {
                ready!(sleep.poll(cx));
                Waited::Pushback
            }
            KindProj::Until { sleep } => {
                ready!(sleep.poll(cx));
                Waited::Until
            }
            KindProj::Decision { future } => Waited::Decision(ready!(future.as_mut().poll(cx))),
        };
        let progress = this.progress.take().expect("polled after completion");
        Poll::Ready(ClientWaited { waited, progress })
    }
}

impl fmt::Debug for ClientWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Pushback { .. } => "Pushback",
            Kind::Until { .. } => "Until",
            Kind::Decision { .. } => "Decision",
        };
        f.debug_struct("ClientWait")
            .field("kind", &kind)
            .field("progress", &self.progress)
            .finish()
    }
}

/// The longest a server's pushback holds a method's calls.
const MAX_PUSHBACK: Duration = Duration::from_secs(60);

/// The most keyed scopes (a method and the layer's keys for a call) a layer holds at once for
/// their servers' pushbacks; past it, a new keyed pushback is not kept.
const MAX_HELD_SCOPES: usize = 4096;

/// The pushbacks of one layer. A method's hold is the `held` word of its table entry (found by
/// the lookup every call makes anyway): the end of the latest hold of any of its scopes, in
/// nanoseconds since `base`, 0 when none is known to be running. The holds of keyed scopes are
/// in `keyed`, which only calls of a method with a running hold look at.
#[derive(Debug)]
pub(crate) struct Pushbacks {
    base: Instant,
    hasher: foldhash::fast::RandomState,
    keyed: Mutex<HashMap<u64, Instant>>,
}

impl Pushbacks {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
            hasher: foldhash::fast::RandomState::default(),
            keyed: Mutex::new(HashMap::new()),
        }
    }

    fn keyed(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.keyed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Until when the calls of `scope` are held, `held` being its method's word (not 0).
    #[cold]
    fn until(&self, entry: &MethodEntry, scope: Option<&Scope>, held: u64) -> Option<Instant> {
        let now = Instant::now();
        let end = self.base.checked_add(Duration::from_nanos(held))?;
        if now >= end {
            // Every hold of the method is over.
            let _ = entry
                .held
                .compare_exchange(held, 0, Ordering::Relaxed, Ordering::Relaxed);
            return None;
        }
        match scope.and_then(|scope| scope.key) {
            None => Some(end),
            Some(key) => self.keyed().get(&key).copied().filter(|&until| until > now),
        }
    }

    /// Holds the calls of `scope` (of the method `entry`) for `pushback` from now.
    #[cold]
    fn record(&self, entry: &MethodEntry, scope: &Scope, pushback: Duration) {
        let now = Instant::now();
        let until = now + pushback.min(MAX_PUSHBACK);
        if let Some(key) = scope.key {
            let mut keyed = self.keyed();
            if keyed.len() >= MAX_HELD_SCOPES && !keyed.contains_key(&key) {
                keyed.retain(|_, &mut end| end > now);
                if keyed.len() >= MAX_HELD_SCOPES {
                    return;
                }
            }
            let end = keyed.entry(key).or_insert(until);
            *end = (*end).max(until);
        }
        let nanos = u64::try_from(until.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        entry.held.fetch_max(nanos, Ordering::Relaxed);
    }
}

impl Shared {
    /// Until when a call of `entry` in `scope` is held, its method's word being `held` (not 0).
    #[cold]
    fn held_until(&self, entry: &MethodEntry, scope: Option<&Scope>, held: u64) -> Option<Instant> {
        self.pushback.as_ref()?.until(entry, scope, held)
    }
}

/// Which calls a pushback to this call holds: those of its method (its slot in the table)
/// and, when the method's limits are keyed, with the same keys (a hash of their values).
#[derive(Clone, Copy, Debug)]
struct Scope {
    slot: u32,
    key: Option<u64>,
}

impl Scope {
    /// The scope of a call, when the layer honours pushback and the method has an entry of
    /// its own.
    #[inline]
    fn of(shared: &Shared, lookup: &Lookup<'_>, info: &RequestInfo<'_>) -> Option<Self> {
        let pushbacks = shared.pushback.as_ref()?;
        let &Lookup::Cached(slot, entry) = lookup else {
            return None;
        };
        let keyed = entry
            .plan
            .iter()
            .any(|&(limit, _)| shared.limits[usize::from(limit)].key.is_some());
        let key = keyed.then(|| {
            let mut hasher = pushbacks.hasher.build_hasher();
            hasher.write_u32(slot);
            for &(limit, _) in entry.plan.iter() {
                let state = &shared.limits[usize::from(limit)];
                if state.key.is_none() {
                    continue;
                }
                hasher.write_u16(limit);
                match Shared::key_of(state, info) {
                    Ok(Some(value)) => {
                        let bytes = KeyValue::as_bytes(&value);
                        hasher.write_usize(bytes.len());
                        hasher.write(bytes);
                    }
                    _ => hasher.write_u8(0xff),
                }
            }
            hasher.finish()
        });
        Some(Self { slot, key })
    }
}

/// What a sent call needs to take in its response's pushback: told of the response head, a
/// trailers-only error with a valid `grpc-retry-pushback-ms` holds the call's scope.
pub struct Hold {
    shared: Arc<Shared>,
    scope: Scope,
}

impl OnHead for Hold {
    fn on_head(self, headers: &mut HeaderMap, _streaming: bool) {
        if let Some(pushback) = pushback_of(headers)
            && let Some(pushbacks) = &self.shared.pushback
        {
            let slot = EntryRef::Cached(self.scope.slot);
            pushbacks.record(self.shared.table.resolve(&slot), &self.scope, pushback);
        }
    }
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// The pushback of a trailers-only error response: `grpc-status` other than 0 and
/// `grpc-retry-pushback-ms` a non-negative integer (anything else is ignored).
#[inline]
fn pushback_of(headers: &HeaderMap) -> Option<Duration> {
    // The rare header first, found by a scan rather than a hashed lookup: an ordinary response
    // has a few headers, none of them this one.
    let value = headers
        .iter()
        .find(|&(name, _)| *name == PUSHBACK)?
        .1
        .as_bytes();
    match headers.get("grpc-status") {
        Some(status) if status.as_bytes() != b"0" => {}
        _ => return None,
    }
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Digits only: past u64 it is only longer than the cap.
    let millis = std::str::from_utf8(value)
        .ok()
        .map_or(u64::MAX, |digits| digits.parse().unwrap_or(u64::MAX));
    Some(Duration::from_millis(millis).min(MAX_PUSHBACK))
}

/// The rejection of a call held by a pushback past what it may wait.
fn pushed_back(shared: &Shared, now: Instant, until: Instant) -> Rejection {
    let left = until.saturating_duration_since(now);
    shared.rejection(Some(&backend::Decision::denied(0, left, left)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn pushbacks_are_non_negative_integers_on_errors_capped_at_a_minute() {
        let pushback = |status: &'static str, ms: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-status", HeaderValue::from_static(status));
            headers.insert(PUSHBACK.clone(), HeaderValue::from_static(ms));
            pushback_of(&headers)
        };
        assert_eq!(pushback("8", "250"), Some(Duration::from_millis(250)));
        assert_eq!(pushback("14", "0"), Some(Duration::ZERO));
        assert_eq!(pushback("8", "3600000"), Some(MAX_PUSHBACK));
        assert_eq!(pushback("8", "99999999999999999999999"), Some(MAX_PUSHBACK));
        for malformed in ["-1", "", "1.5", "+5", " 5", "5ms", "0x10"] {
            assert_eq!(pushback("8", malformed), None, "{malformed:?}");
        }
        assert_eq!(pushback("0", "250"), None, "not on an OK status");
        let mut headers = HeaderMap::new();
        headers.insert(PUSHBACK.clone(), HeaderValue::from_static("250"));
        assert_eq!(pushback_of(&headers), None, "not without a status");
    }
}
