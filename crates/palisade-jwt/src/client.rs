//! The client layer: attaches `authorization: Bearer …` from a static token or a token source,
//! caching the token and refreshing it before it expires, one refresh at a time, backing off
//! after failures.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, SystemTime},
};

use futures_util::future::{FutureExt, Shared};
use http::{HeaderName, HeaderValue, header::AUTHORIZATION};
use palisade_core::{
    Call, Code, Rejection, Side,
    admit::{self, Admission, Admit, AdmitLayer, Decision},
    build::{BoxError as BuildError, BuildLayer},
    side::Client,
};
use tokio::{sync::oneshot, time::Instant};

use crate::config::ConfigError;
use tower_layer::Layer;

/// A boxed error, as token sources return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A token and when it expires.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_jwt::client::Token;
///
/// let token = Token::new("opaque").expires_in(Duration::from_secs(300));
/// assert_eq!(token.value(), "opaque");
/// ```
#[derive(Clone)]
pub struct Token {
    value: String,
    expiry: Option<Expiry>,
}

#[derive(Clone, Copy, Debug)]
enum Expiry {
    At(SystemTime),
    In(Duration),
}

impl Token {
    /// A token that does not expire (until the source is asked again, never).
    pub fn new(value: impl Into<String>) -> Token {
        Token {
            value: value.into(),
            expiry: None,
        }
    }

    /// A JWT, its expiry read from its `exp` claim (not verified: it is the client's own token).
    /// Without a readable `exp` (none, negative, not a number) the token does not expire; an
    /// `exp` too far ahead for the system clock to hold is taken as 30 years from now.
    pub fn jwt(value: impl Into<String>) -> Token {
        let value = value.into();
        #[derive(serde::Deserialize)]
        struct Exp {
            #[serde(default, deserialize_with = "crate::claims::numeric_date")]
            exp: Option<u64>,
        }
        let exp = value
            .split('.')
            .nth(1)
            .and_then(|payload| {
                use base64::Engine;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(payload)
                    .ok()
            })
            .and_then(|json| serde_json::from_slice::<Exp>(&json).ok())
            .and_then(|claims| claims.exp);
        // An `exp` past what `SystemTime` holds (beyond `i64::MAX` seconds) never comes.
        let expiry = exp.map(|exp| {
            SystemTime::UNIX_EPOCH
                .checked_add(Duration::from_secs(exp))
                .map_or(Expiry::In(Duration::MAX), Expiry::At)
        });
        Token { value, expiry }
    }

    /// Sets the expiry. One beyond about 30 years from now is taken as 30 years.
    #[must_use]
    pub fn expires_at(mut self, at: SystemTime) -> Token {
        self.expiry = Some(Expiry::At(at));
        self
    }

    /// Sets the expiry, from when the source returns it. A lifetime beyond about 30 years (up
    /// to `Duration::MAX`) is taken as 30 years.
    #[must_use]
    pub fn expires_in(mut self, lifetime: Duration) -> Token {
        self.expiry = Some(Expiry::In(lifetime));
        self
    }

    /// The token.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// How long from now it stays valid (`None`: no expiry).
    fn lifetime(&self) -> Option<Duration> {
        self.expiry.map(|expiry| match expiry {
            Expiry::In(d) => d,
            Expiry::At(at) => at.duration_since(SystemTime::now()).unwrap_or_default(),
        })
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"[redacted]")
            .field("expiry", &self.expiry)
            .finish()
    }
}

/// Where the client layer gets tokens: an OAuth client, a file, a minter, … It is asked only
/// when the cached token is due for refresh, one fetch at a time, in a task of its own (a call
/// that goes away does not cancel the fetch); after a failure, not again before a backoff. A
/// token that arrives already expired counts as a failure.
pub trait TokenSource: Send + Sync + 'static {
    /// A fresh token.
    fn token(&self) -> impl Future<Output = Result<Token, BoxError>> + Send;
}

/// A [`TokenSource`] from an async closure; see [`token_fn`].
#[derive(Clone)]
pub struct FnSource<F>(F);

impl<F> fmt::Debug for FnSource<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnSource(..)")
    }
}

/// A [`TokenSource`] calling `f`.
///
/// ```
/// use palisade_jwt::JwtAuthLayer;
/// use palisade_jwt::client::{Token, token_fn};
///
/// let layer = JwtAuthLayer::client()
///     .source(token_fn(|| async { Ok(Token::new("t")) }))
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
pub fn token_fn<F, Fut>(f: F) -> FnSource<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Token, BoxError>> + Send,
{
    FnSource(f)
}

impl<F, Fut> TokenSource for FnSource<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Token, BoxError>> + Send,
{
    fn token(&self) -> impl Future<Output = Result<Token, BoxError>> + Send {
        (self.0)()
    }
}

/// A token given once, which never expires: [`AttachTokenBuilder::bearer`].
#[derive(Clone, Debug)]
pub struct StaticToken(());

/// No token yet: a builder from [`JwtAuthLayer::client`](crate::JwtAuthLayer::client) takes
/// one with [`bearer`](AttachTokenBuilder::bearer) or [`source`](AttachTokenBuilder::source)
/// before it builds.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoToken;

impl TokenSource for StaticToken {
    async fn token(&self) -> Result<Token, BoxError> {
        Err("a static token is never refreshed".into())
    }
}

/// A token value that is not a valid header value (control characters, non-ASCII).
#[derive(Debug)]
pub struct InvalidToken;

impl fmt::Display for InvalidToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the token is not a valid header value")
    }
}

impl std::error::Error for InvalidToken {}

/// The first wait before asking a failing source again; it doubles at every failure in a row.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest wait before asking a failing source again.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Lifetimes are taken as this at most (about 30 years): longer ones, up to `Duration::MAX` or an
/// `exp` no clock can hold, are as good as never expiring, and still fit an `Instant`.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

#[derive(Clone)]
struct Current {
    value: HeaderValue,
    /// When to get a new token (`None`: never).
    refresh_at: Option<Instant>,
    /// When the token stops being usable (`None`: never).
    expires_at: Option<Instant>,
}

impl Current {
    /// A token fetched at `now`, living `lifetime` (`None`: forever), refreshed `margin` before
    /// it expires or halfway through its lifetime, whichever comes later.
    fn new(value: HeaderValue, now: Instant, lifetime: Option<Duration>, margin: Duration) -> Self {
        let Some(lifetime) = lifetime else {
            return Current {
                value,
                refresh_at: None,
                expires_at: None,
            };
        };
        let lifetime = lifetime.min(MAX_LIFETIME);
        let refresh_in = lifetime.saturating_sub(margin).max(lifetime / 2);
        Current {
            value,
            refresh_at: now.checked_add(refresh_in),
            expires_at: now.checked_add(lifetime),
        }
    }

    fn fresh(&self, now: Instant) -> bool {
        self.refresh_at.is_none_or(|at| now < at)
    }

    fn valid(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

/// What a fetch ends with, as told to the calls that waited for it.
type Outcome = Result<HeaderValue, Arc<str>>;

/// A fetch in flight, as the calls waiting for it hold it: every clone resolves to its
/// outcome, or to an error if the fetch was dropped before it ended (its sender with it).
/// Named (a oneshot receiver, shared), so a waiting call's future holds it unboxed.
type Fetch = Shared<oneshot::Receiver<Outcome>>;

/// A fetch run by the call that started it, where there is no runtime to spawn it on: the
/// source's future is not nameable (`TokenSource::token` returns `impl Future`), so it is
/// boxed, on this path only.
type InlineFetch = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a call gets at once: a token, an error, or a fetch to wait for.
enum Begin<T> {
    Token(HeaderValue),
    /// Backing off, no valid token: the last error is the source's.
    Failed,
    Wait(TokenWait<T>),
}

/// The state of refreshing, behind one lock. [`Cache::idle`] mirrors what a call holding a
/// valid token needs of it ([`Cache::valid_while_idle`]), so that such calls never take it.
#[derive(Default)]
struct Refresh {
    /// The fetch in flight, if any: its outcome arrives here.
    in_flight: Option<Fetch>,
    /// Failed fetches in a row.
    failures: u32,
    /// After a failure: no fetch before this.
    retry_at: Option<Instant>,
    /// The last failure's error, answered while the source is not asked.
    last_error: Option<Arc<str>>,
}

struct Cache<T> {
    source: T,
    scheme: Option<Box<str>>,
    refresh_before: Duration,
    current: RwLock<Option<Current>>,
    refresh: Mutex<Refresh>,
    /// `Refresh::in_flight.is_some()`, readable without the lock (written under it).
    fetching: AtomicBool,
    /// `Refresh::retry_at`, in nanoseconds after `epoch` (0: none), readable without the lock
    /// (written under it).
    retry_at: AtomicU64,
    /// The instant `retry_at` counts from.
    epoch: Instant,
    refreshes: AtomicU64,
    /// How many times the refresh lock was taken (for the tests).
    #[cfg(test)]
    locks: AtomicU64,
}

impl<T: TokenSource> Cache<T> {
    /// The token if it is not due for refresh.
    #[inline]
    fn fresh(&self, now: Instant) -> Option<HeaderValue> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current
            .as_ref()
            .filter(|c| c.fresh(now))
            .map(|c| c.value.clone())
    }

    /// The current token while it is valid and the source must not be asked now (a fetch is in
    /// flight, or the source is backing off): what the call would get under the lock, without
    /// it — during an outage every call of the token's remaining life takes this path. A stale
    /// read only hands out the valid token once more, or sends one call to the lock.
    #[inline]
    fn valid_while_idle(&self, now: Instant) -> Option<HeaderValue> {
        if self.fetching.load(Ordering::Acquire) || self.backing_off(now) {
            self.valid(now)
        } else {
            None
        }
    }

    fn backing_off(&self, now: Instant) -> bool {
        let retry_at = self.retry_at.load(Ordering::Acquire);
        retry_at != 0 && self.nanos(now) < retry_at
    }

    /// `at` in nanoseconds after `epoch`, at least 1 (0 means none).
    fn nanos(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX).max(1)
    }

    fn valid(&self, now: Instant) -> Option<HeaderValue> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current
            .as_ref()
            .filter(|c| c.valid(now))
            .map(|c| c.value.clone())
    }

    /// A usable token: the current one while it is valid (starting a refresh in the background
    /// when one is due), else the outcome of the fetch in flight, or of a new one — unless the
    /// source failed less than the backoff ago.
    #[cfg(test)]
    async fn get(self: &Arc<Self>) -> Result<HeaderValue, Arc<str>> {
        match self.begin(Instant::now()) {
            Begin::Token(value) => Ok(value),
            Begin::Failed => Err(self
                .lock_refresh()
                .last_error
                .clone()
                .unwrap_or_else(|| "backing off".into())),
            Begin::Wait(wait) => wait.await,
        }
    }

    /// What a call gets at once: the current token while it is valid (starting a refresh in
    /// the background when one is due), else the fetch in flight, or a new one, to wait for —
    /// unless the source failed less than the backoff ago (then the current token while it
    /// lasts, else a failure).
    #[inline]
    fn begin(self: &Arc<Self>, now: Instant) -> Begin<T> {
        if let Some(value) = self.fresh(now) {
            return Begin::Token(value);
        }
        if let Some(value) = self.valid_while_idle(now) {
            return Begin::Token(value);
        }
        self.begin_locked(now)
    }

    #[cold]
    fn begin_locked(self: &Arc<Self>, now: Instant) -> Begin<T> {
        let mut refresh = self.lock_refresh();
        let valid = self.valid(now);
        let (fetch, inline) = match &refresh.in_flight {
            Some(fetch) => (fetch.clone(), None),
            None if refresh.retry_at.is_some_and(|at| now < at) => {
                // Backing off: the current token while it lasts, else the last error.
                return valid.map_or(Begin::Failed, Begin::Token);
            }
            None => self.start(&mut refresh),
        };
        if inline.is_none()
            && let Some(value) = valid
        {
            return Begin::Token(value);
        }
        Begin::Wait(TokenWait {
            inline: inline.map(|fetch| {
                // No runtime to spawn on: this call fetches, and keeps the current token if
                // the fetch fails.
                let fetch: InlineFetch = Box::pin(fetch);
                (fetch, self.clone())
            }),
            fetch,
        })
    }

    /// Starts a fetch, spawned on the runtime, or returned to be awaited where there is none.
    fn start(
        self: &Arc<Self>,
        refresh: &mut Refresh,
    ) -> (Fetch, Option<impl Future<Output = ()> + Send + 'static>) {
        let (tx, rx) = oneshot::channel();
        let rx = rx.shared();
        refresh.in_flight = Some(rx.clone());
        self.fetching.store(true, Ordering::Release);
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        let fetch = self.clone().fetch(tx);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(fetch);
                (rx, None)
            }
            Err(_) => (rx, Some(fetch)),
        }
    }

    /// Asks the source, and records the outcome.
    async fn fetch(self: Arc<Self>, tx: oneshot::Sender<Outcome>) {
        /// Ends the fetch however it ends: a source that panics counts as failed, a fetch
        /// dropped unfinished lets the next call start another.
        struct InFlight<'a, T: TokenSource>(&'a Cache<T>, Option<oneshot::Sender<Outcome>>);
        impl<T: TokenSource> Drop for InFlight<'_, T> {
            fn drop(&mut self) {
                if let Some(tx) = self.1.take() {
                    if std::thread::panicking() {
                        self.0.finish(Err("the token source panicked".into()), tx);
                    } else {
                        let mut refresh = self.0.lock_refresh();
                        refresh.in_flight = None;
                        self.0.fetching.store(false, Ordering::Release);
                    }
                }
            }
        }
        let mut in_flight = InFlight(&self, Some(tx));
        let result = self
            .source
            .token()
            .await
            .map_err(|e| Arc::<str>::from(e.to_string()))
            .and_then(|token| {
                let value = header_value(self.scheme.as_deref(), token.value())
                    .map_err(|e| Arc::<str>::from(e.to_string()))?;
                match token.lifetime() {
                    Some(lifetime) if lifetime.is_zero() => {
                        Err("the token source gave an expired token".into())
                    }
                    lifetime => Ok((value, lifetime)),
                }
            });
        if let Some(tx) = in_flight.1.take() {
            self.finish(result, tx);
        }
    }

    /// Records a fetch's result and tells the calls waiting for it.
    fn finish(
        &self,
        result: Result<(HeaderValue, Option<Duration>), Arc<str>>,
        tx: oneshot::Sender<Outcome>,
    ) {
        let now = Instant::now();
        let mut refresh = self.lock_refresh();
        let outcome = match result {
            Ok((value, lifetime)) => {
                let current = Current::new(value.clone(), now, lifetime, self.refresh_before);
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(current);
                refresh.failures = 0;
                refresh.retry_at = None;
                self.retry_at.store(0, Ordering::Release);
                refresh.last_error = None;
                Ok(value)
            }
            Err(error) => {
                refresh.failures = refresh.failures.saturating_add(1);
                let delay = backoff(refresh.failures);
                tracing::debug!(%error, retry_in = ?delay, "jwt: token source failed");
                refresh.retry_at = now.checked_add(delay);
                let retry_at = refresh.retry_at.map_or(0, |at| self.nanos(at));
                self.retry_at.store(retry_at, Ordering::Release);
                refresh.last_error = Some(error.clone());
                Err(error)
            }
        };
        refresh.in_flight = None;
        self.fetching.store(false, Ordering::Release);
        // No receiver left (every waiting call went away) is fine.
        let _ = tx.send(outcome);
    }

    fn lock_refresh(&self) -> std::sync::MutexGuard<'_, Refresh> {
        #[cfg(test)]
        self.locks.fetch_add(1, Ordering::Relaxed);
        self.refresh.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The error of a fetch that was dropped before it ended.
fn unfinished() -> Arc<str> {
    "the token fetch did not finish".into()
}

/// How long to wait after `failures` failed fetches in a row: 100 ms doubling to 30 s, each a
/// random time between half of that and all of it (so that many clients that failed together
/// do not come back together).
fn backoff(failures: u32) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let doublings = failures.saturating_sub(1).min(16);
    let ceiling = BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX);
    let half = ceiling / 2;
    // A random fraction of `half`: `RandomState` is seeded randomly, and differently each time.
    let random = RandomState::new().hash_one(failures);
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    let extra = (u128::from(nanos) * u128::from(random)) >> 64;
    half + Duration::from_nanos(u64::try_from(extra).unwrap_or(nanos))
}

fn header_value(scheme: Option<&str>, token: &str) -> Result<HeaderValue, InvalidToken> {
    let mut value = match scheme {
        Some(scheme) => HeaderValue::try_from(format!("{scheme} {token}")),
        None => HeaderValue::try_from(token),
    }
    .map_err(|_| InvalidToken)?;
    value.set_sensitive(true);
    Ok(value)
}

/// Configures an [`AttachTokenLayer`]; made by [`JwtAuthLayer::client`](crate::JwtAuthLayer::client),
/// then given its token with [`bearer`](Self::bearer) or [`source`](Self::source).
pub struct AttachTokenBuilder<T> {
    source: T,
    fixed: Option<Box<str>>,
    header: HeaderName,
    scheme: Option<Box<str>>,
    refresh_before: Duration,
}

impl<T> fmt::Debug for AttachTokenBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachTokenBuilder")
            .field("source", &std::any::type_name::<T>())
            .field("header", &self.header)
            .field("scheme", &self.scheme)
            .field("refresh_before", &self.refresh_before)
            .finish_non_exhaustive()
    }
}

impl AttachTokenBuilder<NoToken> {
    pub(crate) fn new() -> Self {
        AttachTokenBuilder {
            source: NoToken,
            fixed: None,
            header: AUTHORIZATION,
            scheme: Some("Bearer".into()),
            refresh_before: Duration::from_secs(30),
        }
    }

    /// Attaches this token to every call, as it is (it never expires; checked by
    /// [`build`](AttachTokenBuilder::build)).
    pub fn bearer(self, token: impl Into<String>) -> AttachTokenBuilder<StaticToken> {
        self.with_source(StaticToken(()), Some(token.into().into_boxed_str()))
    }

    /// Attaches a token from `source`: cached, and refreshed before it expires (see
    /// [`refresh_before`](AttachTokenBuilder::refresh_before)).
    pub fn source<T: TokenSource>(self, source: T) -> AttachTokenBuilder<T> {
        self.with_source(source, None)
    }

    fn with_source<T>(self, source: T, fixed: Option<Box<str>>) -> AttachTokenBuilder<T> {
        AttachTokenBuilder {
            source,
            fixed,
            header: self.header,
            scheme: self.scheme,
            refresh_before: self.refresh_before,
        }
    }
}

impl<T> AttachTokenBuilder<T> {
    /// The header to write (default `authorization`).
    #[must_use]
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = name;
        self
    }

    /// The scheme before the token (default `Bearer`); `None`: the token alone.
    #[must_use]
    pub fn scheme(mut self, scheme: Option<&str>) -> Self {
        self.scheme = scheme.map(Into::into);
        self
    }

    /// How long before expiry the token is refreshed (default 30 s), but never before half of
    /// its lifetime has passed: a token shorter than twice the margin (20 s tokens with the
    /// default margin) is refreshed halfway through its life, so a short lifetime never means a
    /// fetch per call.
    ///
    /// The refresh runs in the background, one at a time: calls keep using the current token
    /// while it is valid, and wait only when there is none. When a fetch fails, calls keep the
    /// current token while it is valid, and the source is not asked again before a backoff:
    /// 100 ms after the first failure, doubling at each failure in a row up to 30 s, each wait
    /// a random time between half of that and all of it. While the source is backed off and no
    /// token is valid, calls are answered at once.
    #[must_use]
    pub fn refresh_before(mut self, margin: Duration) -> Self {
        self.refresh_before = margin;
        self
    }
}

impl<T: TokenSource> AttachTokenBuilder<T> {
    /// The layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidToken`]: a [`bearer`](AttachTokenBuilder::bearer) token that is
    /// not a valid header value (control characters, non-ASCII), with its scheme.
    pub fn build(self) -> Result<AttachTokenLayer<T>, ConfigError> {
        let current = match &self.fixed {
            None => None,
            Some(token) => Some(Current {
                value: header_value(self.scheme.as_deref(), token)
                    .map_err(|InvalidToken| ConfigError::InvalidToken)?,
                refresh_at: None,
                expires_at: None,
            }),
        };
        let cache = Arc::new(Cache {
            source: self.source,
            scheme: self.scheme,
            refresh_before: self.refresh_before,
            current: RwLock::new(current),
            refresh: Mutex::new(Refresh::default()),
            fetching: AtomicBool::new(false),
            retry_at: AtomicU64::new(0),
            epoch: Instant::now(),
            refreshes: AtomicU64::new(0),
            #[cfg(test)]
            locks: AtomicU64::new(0),
        });
        Ok(AttachTokenLayer {
            inner: AdmitLayer::new(Attach {
                cache,
                header: self.header,
                unavailable: Rejection::new(Code::Unauthenticated, "token unavailable").by("jwt"),
            }),
        })
    }
}

impl<T: TokenSource> BuildLayer<Client> for AttachTokenBuilder<T> {
    type Layer = AttachTokenLayer<T>;
    const NAME: &'static str = "auth";

    fn build_layer(self) -> Result<AttachTokenLayer<T>, BuildError> {
        Ok(self.build()?)
    }
}

impl<T> BuildLayer<Client> for AttachTokenLayer<T> {
    type Layer = Self;
    const NAME: &'static str = "auth";

    fn build_layer(self) -> Result<Self, BuildError> {
        Ok(self)
    }
}

/// Attaches `authorization: Bearer <token>` to every request of a client (the header marked
/// sensitive). Made by [`JwtAuthLayer::client`](crate::JwtAuthLayer::client): the token is
/// static ([`bearer`](AttachTokenBuilder::bearer)) or comes from a [`TokenSource`]
/// ([`source`](AttachTokenBuilder::source)): cached, and refreshed in the background
/// before it expires while calls carry on with the current token — however many calls wait, one
/// fetch is in flight — with a backoff after failures (see
/// [`refresh_before`](AttachTokenBuilder::refresh_before)). When no token can be had, the call
/// is answered `UNAUTHENTICATED` ("token unavailable") without reaching the channel.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_jwt::{JwtAuthLayer, mint::HmacMinter};
///
/// // A static token…
/// let fixed = JwtAuthLayer::client().bearer("eyJhbGciOi...").build().unwrap();
/// // …or one minted (or fetched) on demand and refreshed 30 s before it expires.
/// let minted = JwtAuthLayer::client()
///     .source(HmacMinter::hs256("palisade-demo-secret").subject("demo-client").ttl(Duration::from_secs(300)))
///     .build()
///     .unwrap();
/// // A token that cannot be a header value is refused at build.
/// assert!(JwtAuthLayer::client().bearer("line\nbreak").build().is_err());
/// # let _ = (fixed, minted);
/// ```
pub struct AttachTokenLayer<T = StaticToken> {
    inner: AdmitLayer<Attach<T>>,
}

impl<T: TokenSource> AttachTokenLayer<T> {
    /// How many times the token source was asked.
    pub fn refreshes(&self) -> u64 {
        self.attach().cache.refreshes.load(Ordering::Relaxed)
    }
}

impl<T> AttachTokenLayer<T> {
    fn attach(&self) -> &Attach<T> {
        self.inner.admission()
    }
}

impl<T> Clone for AttachTokenLayer<T> {
    fn clone(&self) -> Self {
        AttachTokenLayer {
            inner: self.inner.clone(),
        }
    }
}

impl<T> fmt::Debug for AttachTokenLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let attach = self.attach();
        f.debug_struct("AttachTokenLayer")
            .field("header", &attach.header)
            .field("scheme", &attach.cache.scheme)
            .field("refresh_before", &attach.cache.refresh_before)
            .finish_non_exhaustive()
    }
}

impl<S, T> Layer<S> for AttachTokenLayer<T> {
    type Service = AttachToken<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        Admit::new(inner, self.inner.clone())
    }
}

/// The service [`AttachTokenLayer`] wraps around a client channel: palisade-core's [`Admit`]
/// asking [`Attach`] about every call. The channel must be `Clone` (tonic's `Channel` is): a
/// call waiting for a token takes the ready channel with it.
pub type AttachToken<S, T = StaticToken> = Admit<S, Attach<T>>;

/// The response future of [`AttachToken`] over a channel `S` taking `Request<B>`.
pub type ResponseFuture<S, B, T = StaticToken> = admit::ResponseFuture<S, Attach<T>, B>;

/// The response body of [`AttachToken`]: the channel's body `B`, forwarded unchanged;
/// `B::default()` when no token could be had.
pub type ResponseBody<B, T = StaticToken> = admit::ResponseBody<B, Attach<T>>;

/// The client layer's [`Admission`]: attaches the current token (through [`Call::parts_mut`])
/// and passes the call on; with no valid token, waits for the fetch in flight or a new one
/// ([`TokenWait`]); answers `UNAUTHENTICATED` ("token unavailable") when none can be had.
pub struct Attach<T = StaticToken> {
    cache: Arc<Cache<T>>,
    header: HeaderName,
    unavailable: Rejection,
}

impl<T> fmt::Debug for Attach<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attach")
            .field("header", &self.header)
            .field("scheme", &self.cache.scheme)
            .finish_non_exhaustive()
    }
}

impl<T: TokenSource> Admission for Attach<T> {
    const NAME: &'static str = "jwt";
    type Observer = ();
    type Head = ();
    type Wait = TokenWait<T>;

    fn side(&self) -> Side {
        Side::Client
    }

    #[inline]
    fn admit(&self, call: &mut Call<'_>) -> Decision<Self> {
        match self.cache.begin(Instant::now()) {
            Begin::Token(value) => self.attached(value, call),
            Begin::Failed => Decision::Reject(self.unavailable.clone()),
            Begin::Wait(wait) => Decision::Wait(wait),
        }
    }

    fn resume(&self, outcome: Outcome, call: &mut Call<'_>) -> Decision<Self> {
        match outcome {
            Ok(value) => self.attached(value, call),
            Err(_) => Decision::Reject(self.unavailable.clone()),
        }
    }
}

impl<T> Attach<T> {
    #[inline]
    fn attached(&self, value: HeaderValue, call: &mut Call<'_>) -> Decision<Self>
    where
        T: TokenSource,
    {
        call.parts_mut().headers.insert(self.header.clone(), value);
        Decision::Pass
    }
}

/// What a call with no valid token waits for: the fetch in flight, or the one it started —
/// fetched in the call itself, boxed, where there is no tokio runtime to spawn it on. Resolves
/// to the token, or to why there is none.
pub struct TokenWait<T> {
    /// The fetch this call runs itself, and the cache to read the token from after it.
    inline: Option<(InlineFetch, Arc<Cache<T>>)>,
    fetch: Fetch,
}

impl<T> fmt::Debug for TokenWait<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenWait")
            .field("inline", &self.inline.is_some())
            .finish_non_exhaustive()
    }
}

impl<T: TokenSource> Future for TokenWait<T> {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = &mut *self;
        if let Some((fetch, cache)) = &mut this.inline {
            ready!(fetch.as_mut().poll(cx));
            // The current token, if the fetch failed but it is still valid.
            let valid = cache.valid(Instant::now());
            this.inline = None;
            if let Some(value) = valid {
                return Poll::Ready(Ok(value));
            }
        }
        Pin::new(&mut this.fetch).poll(cx).map(|outcome| {
            // An error: the fetch was dropped before it ended (its runtime shutting down, or
            // the call fetching inline went away); the next call starts another.
            outcome.unwrap_or_else(|_| Err(unfinished()))
        })
    }
}

#[cfg(test)]
mod tests {
    use http::{Request, Response};

    use super::*;
    use crate::JwtAuthLayer;

    #[test]
    fn backoff_doubles_with_jitter_up_to_30_s() {
        for failures in [1, 2, 3, 9, 10, 100, u32::MAX] {
            let ceiling = match failures {
                1 => Duration::from_millis(100),
                2 => Duration::from_millis(200),
                3 => Duration::from_millis(400),
                9 => Duration::from_millis(25_600),
                _ => Duration::from_secs(30),
            };
            for _ in 0..100 {
                let delay = backoff(failures);
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "{failures}: {delay:?}"
                );
            }
        }
        // Jittered: not the same wait every time.
        let delays: std::collections::HashSet<_> = (0..20).map(|_| backoff(5)).collect();
        assert!(delays.len() > 1);
    }

    #[test]
    fn refresh_is_due_at_the_margin_or_halfway_whichever_is_later() {
        let now = Instant::now();
        let value = HeaderValue::from_static("t");
        let at = |lifetime: u64, margin: u64| {
            let current = Current::new(
                value.clone(),
                now,
                Some(Duration::from_secs(lifetime)),
                Duration::from_secs(margin),
            );
            (current.refresh_at.unwrap() - now).as_secs()
        };
        assert_eq!(at(300, 30), 270);
        assert_eq!(at(60, 30), 30);
        assert_eq!(at(40, 30), 20);
        assert_eq!(at(20, 30), 10);
        assert_eq!(at(10, 0), 10);
        let endless = Current::new(value, now, Some(Duration::MAX), Duration::MAX);
        assert_eq!(endless.expires_at.unwrap() - now, MAX_LIFETIME);
        assert_eq!(endless.refresh_at.unwrap() - now, MAX_LIFETIME / 2);
    }

    /// While the source fails and the token is due for refresh but valid, calls carry the
    /// token without taking the refresh lock: counted here, as nothing outside can see it.
    #[tokio::test(start_paused = true)]
    async fn calls_during_a_backoff_with_a_valid_token_take_no_lock() {
        use tower::{ServiceExt, service_fn};
        let asked = Arc::new(AtomicU64::new(0));
        let counter = asked.clone();
        let layer = JwtAuthLayer::client()
            .source(crate::client::token_fn(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n {
                        0 => Ok(Token::new("t").expires_in(Duration::from_secs(60))),
                        _ => Err("identity provider down".into()),
                    }
                }
            }))
            .build()
            .unwrap();
        let cache = layer.attach().cache.clone();
        assert_eq!(cache.get().await.unwrap(), "Bearer t");
        tokio::time::advance(Duration::from_secs(31)).await;
        // Due for refresh: this call starts it and goes on with the valid token.
        assert_eq!(cache.get().await.unwrap(), "Bearer t");
        let fetch = cache.lock_refresh().in_flight.clone();
        // While the fetch is in flight, and after it failed, during the backoff.
        for mut fetch in [None, fetch] {
            if let Some(fetch) = &mut fetch {
                let outcome = fetch.await.unwrap();
                assert!(outcome.is_err(), "the refresh fails");
            }
            let locks = cache.locks.load(Ordering::SeqCst);
            let service = layer.layer(service_fn(|request: Request<()>| async move {
                let sent = request.headers()[AUTHORIZATION]
                    .to_str()
                    .unwrap()
                    .to_owned();
                Ok::<_, std::convert::Infallible>(Response::new(sent))
            }));
            for _ in 0..500 {
                assert_eq!(cache.get().await.unwrap(), "Bearer t");
                let sent = service.clone().oneshot(Request::new(())).await.unwrap();
                assert_eq!(sent.into_body().get_ref(), "Bearer t");
            }
            assert_eq!(
                cache.locks.load(Ordering::SeqCst),
                locks,
                "no call took the refresh lock"
            );
        }
        assert_eq!(
            asked.load(Ordering::SeqCst),
            2,
            "asked once during the backoff"
        );
        // After the backoff, the next call goes to the lock and asks again.
        tokio::time::advance(BACKOFF_FIRST).await;
        let locks = cache.locks.load(Ordering::SeqCst);
        assert_eq!(cache.get().await.unwrap(), "Bearer t");
        assert!(cache.locks.load(Ordering::SeqCst) > locks);
        assert_eq!(asked.load(Ordering::SeqCst), 2, "the refresh is spawned");
        let fetch = cache.lock_refresh().in_flight.clone();
        let outcome = fetch.expect("a new refresh").await.unwrap();
        assert!(outcome.is_err(), "the source is still down");
        assert_eq!(asked.load(Ordering::SeqCst), 3);
    }
}
