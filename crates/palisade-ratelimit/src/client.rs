//! The client layer: a call waits for its tokens — never past its deadline or the maximum
//! wait — and otherwise fails at once, unsent.

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

use http::{HeaderMap, HeaderValue, Request, Response};
use palisade_core::{Rejection, deadline::grpc_timeout};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    backend::{Decision, DecisionFuture},
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
/// use palisade_ratelimit::{ClientRateLimitLayer, Limit, Quota};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let channel = tonic::transport::Channel::from_static("http://127.0.0.1:50051").connect_lazy();
/// let channel = tower::ServiceBuilder::new()
///     .layer(
///         ClientRateLimitLayer::builder()
///             .limit(Limit::global(Quota::per_second(NonZeroU32::new(50).unwrap())))
///             .max_wait(Duration::from_millis(250))
///             .build(),
///     )
///     .service(channel);
/// let client = palisade_demo::pb::greeter_client::GreeterClient::new(channel);
/// # let _ = client; }
/// ```
#[derive(Clone)]
pub struct ClientRateLimitLayer {
    pub(crate) shared: Arc<Shared>,
}

impl ClientRateLimitLayer {
    /// Configures a client layer.
    pub fn builder() -> ClientRateLimitBuilder {
        ClientRateLimitBuilder::new()
    }

    /// A client layer with one limit and the defaults.
    pub fn new(limit: crate::Limit) -> Self {
        Self::builder().limit(limit).build()
    }
}

impl fmt::Debug for ClientRateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRateLimitLayer")
            .field("limits", &self.shared.limits)
            .field("max_wait", &self.shared.max_wait)
            .field("shadow", &self.shared.shadow)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ClientRateLimitLayer {
    type Service = ClientRateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientRateLimit::new(inner, self.clone())
    }
}

/// The client service; made by [`ClientRateLimitLayer`].
///
/// The inner service must be `Clone` (a `tonic::transport::Channel` is): a waiting call keeps
/// the ready service until its tokens are there.
pub struct ClientRateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> ClientRateLimit<S> {
    /// Wraps `inner` with the layer's limits.
    pub fn new(inner: S, layer: ClientRateLimitLayer) -> Self {
        Self {
            inner,
            shared: layer.shared,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for ClientRateLimit<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for ClientRateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRateLimit")
            .field("inner", &self.inner)
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for ClientRateLimit<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ClientResponseFuture<S, ReqB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let Self { inner, shared } = self;
        let lookup = shared.table.lookup(&**shared, request.uri().path());
        let entry = lookup.entry();
        if entry.plan.is_empty() {
            return ClientResponseFuture::called(inner.call(request), None);
        }
        let mut tally = Tally::default();
        let scope = Scope::of(shared, &lookup, &RequestInfo::new(&request));
        // Nothing held: one load.
        let held = entry.held.load(Ordering::Relaxed);
        if held != 0
            && let Some(until) = shared.held_until(entry, scope.as_ref(), held)
        {
            if shared.shadow {
                tally.shadow_denied = true;
            } else {
                let now = Instant::now();
                let budget = Budget::new(now, grpc_timeout(request.headers()), shared.max_wait);
                if !budget.allows(until) {
                    entry.counters.rejected.increment(1);
                    return ClientResponseFuture::rejected(pushed_back(shared, now, until));
                }
                let clone = inner.clone();
                let service = std::mem::replace(inner, clone);
                return ClientResponseFuture::waiting(Box::new(Waiter {
                    shared: shared.clone(),
                    entry: lookup.to_ref(),
                    pos: 0,
                    tally,
                    wait: Wait::Pushback(Box::pin(sleep_until(until))),
                    budget,
                    started: now,
                    request: Some(request),
                    service,
                    scope,
                }));
            }
        }
        let (pos, wait) = match shared.run(entry, &RequestInfo::new(&request), 0, &mut tally) {
            Step::Done => {
                shared.count_passed(entry, &tally);
                let hold = scope.map(|scope| Hold {
                    shared: shared.clone(),
                    scope,
                });
                return ClientResponseFuture::called(inner.call(request), hold);
            }
            Step::NoKey => {
                shared.refund(entry, &RequestInfo::new(&request), &mut tally);
                entry.counters.rejected.increment(1);
                return ClientResponseFuture::rejected(shared.rejection(None));
            }
            Step::Denied { pos, decision } => (pos, Wait::Sleep(decision)),
            Step::Pending { pos, future } => (pos, Wait::Decision(future)),
        };
        let now = Instant::now();
        let budget = Budget::new(now, grpc_timeout(request.headers()), shared.max_wait);
        let wait = match wait {
            Wait::Sleep(decision) => {
                let ready_at = now.checked_add(decision.retry_after());
                let Some(ready_at) = ready_at.filter(|&at| budget.allows(at)) else {
                    shared.refund(entry, &RequestInfo::new(&request), &mut tally);
                    entry.counters.rejected.increment(1);
                    return ClientResponseFuture::rejected(shared.rejection(Some(&decision)));
                };
                Wait::Until(Box::pin(sleep_until(ready_at)))
            }
            other => other,
        };
        let clone = inner.clone();
        let service = std::mem::replace(inner, clone);
        ClientResponseFuture::waiting(Box::new(Waiter {
            shared: shared.clone(),
            entry: lookup.to_ref(),
            pos,
            tally,
            wait,
            budget,
            started: now,
            request: Some(request),
            service,
            scope,
        }))
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

/// What a sent call needs to take in its response's pushback.
struct Hold {
    shared: Arc<Shared>,
    scope: Scope,
}

impl Hold {
    /// Takes in a response: a trailers-only error with a valid pushback holds the scope.
    fn observe(&self, headers: &HeaderMap) {
        if let Some(pushback) = pushback_of(headers)
            && let Some(pushbacks) = &self.shared.pushback
        {
            let slot = EntryRef::Cached(self.scope.slot);
            pushbacks.record(self.shared.table.resolve(&slot), &self.scope, pushback);
        }
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
    shared.rejection(Some(&Decision::denied(0, left, left)))
}

enum Wait {
    /// A denial not yet turned into a sleep.
    Sleep(Decision),
    /// Until a server's pushback is over; then the limits are asked from the first.
    Pushback(Pin<Box<Sleep>>),
    /// Until the tokens are there; then the limit at `pos` is asked again.
    Until(Pin<Box<Sleep>>),
    /// For the backend's decision on the limit at `pos`.
    Decision(DecisionFuture),
}

/// A call waiting for its tokens.
struct Waiter<S, B> {
    shared: Arc<Shared>,
    entry: EntryRef,
    pos: usize,
    tally: Tally,
    wait: Wait,
    budget: Budget,
    started: Instant,
    request: Option<Request<B>>,
    service: S,
    scope: Option<Scope>,
}

impl<S, B> Waiter<S, B>
where
    S: Service<Request<B>>,
{
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<State<S, B>> {
        loop {
            let request = self.request.as_ref().expect("polled after completion");
            let entry = self.shared.table.resolve(&self.entry);
            let step = match &mut self.wait {
                Wait::Pushback(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    // A later pushback may hold the scope longer.
                    let held = entry.held.load(Ordering::Relaxed);
                    if held != 0
                        && let Some(until) =
                            self.shared.held_until(entry, self.scope.as_ref(), held)
                    {
                        if !self.budget.allows(until) {
                            entry.counters.rejected.increment(1);
                            self.request = None;
                            return Poll::Ready(State::Rejected {
                                rejection: Some(pushed_back(&self.shared, Instant::now(), until)),
                            });
                        }
                        self.wait = Wait::Pushback(Box::pin(sleep_until(until)));
                        continue;
                    }
                    self.shared
                        .run(entry, &RequestInfo::new(request), 0, &mut self.tally)
                }
                Wait::Until(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    self.shared
                        .run(entry, &RequestInfo::new(request), self.pos, &mut self.tally)
                }
                Wait::Decision(future) => {
                    let decision = ready!(future.as_mut().poll(cx));
                    match self.shared.apply(self.pos, decision, &mut self.tally) {
                        Some(step) => step,
                        None => self.shared.run(
                            entry,
                            &RequestInfo::new(request),
                            self.pos + 1,
                            &mut self.tally,
                        ),
                    }
                }
                Wait::Sleep(_) => unreachable!("sleeps are set up before waiting"),
            };
            match step {
                Step::Done => {
                    self.shared.count_passed(entry, &self.tally);
                    let mut request = self.request.take().expect("polled after completion");
                    if let Some(timeout) = self.budget.timeout {
                        let left = timeout.saturating_sub(self.started.elapsed());
                        request
                            .headers_mut()
                            .insert("grpc-timeout", timeout_header(left));
                    }
                    return Poll::Ready(State::Called {
                        future: self.service.call(request),
                        hold: self.scope.take().map(|scope| Hold {
                            shared: self.shared.clone(),
                            scope,
                        }),
                    });
                }
                Step::NoKey => return Poll::Ready(self.reject(None)),
                Step::Denied { pos, decision } => {
                    let ready_at = Instant::now().checked_add(decision.retry_after());
                    let Some(ready_at) = ready_at.filter(|&at| self.budget.allows(at)) else {
                        return Poll::Ready(self.reject(Some(&decision)));
                    };
                    self.pos = pos;
                    self.wait = Wait::Until(Box::pin(sleep_until(ready_at)));
                }
                Step::Pending { pos, future } => {
                    self.pos = pos;
                    self.wait = Wait::Decision(future);
                }
            }
        }
    }

    fn reject(&mut self, decision: Option<&Decision>) -> State<S, B> {
        let entry = self.shared.table.resolve(&self.entry);
        if let Some(request) = self.request.take() {
            self.shared
                .refund(entry, &RequestInfo::new(&request), &mut self.tally);
        }
        entry.counters.rejected.increment(1);
        State::Rejected {
            rejection: Some(self.shared.rejection(decision)),
        }
    }
}

impl<S, B> Drop for Waiter<S, B> {
    /// A call dropped while it waits (its caller gone) gives back the tokens the limits before
    /// the one it waits on gave it.
    fn drop(&mut self) {
        if !self.tally.has_taken() {
            return;
        }
        if let Some(request) = self.request.take() {
            let entry = self.shared.table.resolve(&self.entry);
            self.shared
                .refund(entry, &RequestInfo::new(&request), &mut self.tally);
        }
    }
}

/// `grpc-timeout` for a duration, in the finest unit that fits its 8 digits, rounded down (a
/// deadline is never moved later).
fn timeout_header(left: Duration) -> HeaderValue {
    let nanos = left.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let (count, unit) = units
        .iter()
        .map(|&(per, unit)| (nanos / per, unit))
        .find(|&(count, _)| count < 100_000_000)
        .unwrap_or((99_999_999, 'H'));
    HeaderValue::try_from(format!("{count}{unit}")).expect("digits and a unit letter")
}

pin_project! {
    /// The response future of [`ClientRateLimit`]: the inner call, a trailers-only rejection,
    /// or the wait for tokens before the call.
    pub struct ClientResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Called { #[pin] future: S::Future, hold: Option<Hold> },
        Rejected { rejection: Option<Rejection> },
        Waiting { waiter: Box<Waiter<S, B>> },
    }
}

impl<S, B> ClientResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn called(future: S::Future, hold: Option<Hold>) -> Self {
        Self {
            state: State::Called { future, hold },
        }
    }

    fn rejected(rejection: Rejection) -> Self {
        Self {
            state: State::Rejected {
                rejection: Some(rejection),
            },
        }
    }

    fn waiting(waiter: Box<Waiter<S, B>>) -> Self {
        Self {
            state: State::Waiting { waiter },
        }
    }
}

impl<S, B, ResB> Future for ClientResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    ResB: Default,
{
    type Output = Result<Response<ResB>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Called { future, hold } => {
                    let result = ready!(future.poll(cx));
                    if let (Some(hold), Ok(response)) = (hold.take(), &result) {
                        hold.observe(response.headers());
                    }
                    return Poll::Ready(result);
                }
                StateProj::Rejected { rejection } => {
                    let rejection = rejection.take().expect("polled after completion");
                    return Poll::Ready(Ok(rejection.into_response()));
                }
                StateProj::Waiting { waiter } => ready!(waiter.poll_wait(cx)),
            };
            self.as_mut().project().state.set(next);
        }
    }
}

impl<S, B> fmt::Debug for ClientResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "Called",
            State::Rejected { .. } => "Rejected",
            State::Waiting { .. } => "Waiting",
        };
        f.debug_struct("ClientResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn timeouts_keep_eight_digits_and_round_down() {
        let header = |d| timeout_header(d).to_str().unwrap().to_owned();
        assert_eq!(header(Duration::from_nanos(99_999_999)), "99999999n");
        assert_eq!(header(Duration::from_nanos(100_000_001)), "100000u");
        assert_eq!(header(Duration::from_millis(1500)), "1500000u");
        assert_eq!(header(Duration::from_secs(200_000)), "200000S");
        assert_eq!(header(Duration::ZERO), "0n");
        for d in [
            Duration::from_millis(1),
            Duration::from_secs(5),
            Duration::from_secs(86_400 * 30),
        ] {
            let parsed = {
                let mut headers = http::HeaderMap::new();
                headers.insert("grpc-timeout", timeout_header(d));
                grpc_timeout(&headers).unwrap()
            };
            assert!(
                parsed <= d && d - parsed < d / 1000 + Duration::from_nanos(1),
                "{d:?} {parsed:?}"
            );
        }
    }
}
