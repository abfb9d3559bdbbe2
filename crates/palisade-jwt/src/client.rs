//! The client layer: attaches `authorization: Bearer …` from a static token or a token source,
//! caching the token and refreshing it before it expires, one refresh at a time.

use std::{
    fmt,
    future::Future,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use http::{HeaderName, HeaderValue, Request, Response, header::AUTHORIZATION};
use palisade_core::{Code, Rejection};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::future::ResponseFuture;

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
        Token {
            value,
            expiry: exp.map(|exp| Expiry::At(SystemTime::UNIX_EPOCH + Duration::from_secs(exp))),
        }
    }

    /// Sets the expiry.
    #[must_use]
    pub fn expires_at(mut self, at: SystemTime) -> Token {
        self.expiry = Some(Expiry::At(at));
        self
    }

    /// Sets the expiry, from now.
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
/// when the cached token is about to expire, one call at a time.
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
/// use palisade_jwt::client::{token_fn, AttachTokenLayer, Token};
///
/// let layer = AttachTokenLayer::builder(token_fn(|| async { Ok(Token::new("t")) })).build();
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

/// A token given once, which never expires: [`AttachTokenLayer::bearer`].
#[derive(Clone, Debug)]
pub struct StaticToken(());

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

#[derive(Clone)]
struct Current {
    value: HeaderValue,
    /// When to get a new token (`None`: never).
    refresh_at: Option<Instant>,
    /// When the token stops being usable (`None`: never).
    expires_at: Option<Instant>,
}

impl Current {
    fn fresh(&self, now: Instant) -> bool {
        self.refresh_at.is_none_or(|at| now < at)
    }

    fn valid(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

struct Cache<T> {
    source: T,
    scheme: Option<Box<str>>,
    refresh_before: Duration,
    current: RwLock<Option<Current>>,
    /// One refresh in flight.
    refresh: tokio::sync::Mutex<()>,
    /// Refreshes attempted, and the last one's error.
    attempts: Mutex<(u64, Option<Arc<str>>)>,
    refreshes: AtomicU64,
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

    fn valid(&self, now: Instant) -> Option<HeaderValue> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current
            .as_ref()
            .filter(|c| c.valid(now))
            .map(|c| c.value.clone())
    }

    /// A usable token: the cached one, or a fresh one from the source.
    async fn get(&self) -> Result<HeaderValue, Arc<str>> {
        let now = Instant::now();
        if let Some(value) = self.fresh(now) {
            return Ok(value);
        }
        if let Some(value) = self.valid(now) {
            // Due for refresh but still valid: one caller refreshes, the others carry on with it.
            return match self.refresh.try_lock() {
                Ok(_guard) => Ok(self.refresh_now().await.unwrap_or(value)),
                Err(_) => Ok(value),
            };
        }
        let attempts_before = self.lock_attempts().0;
        let _guard = self.refresh.lock().await;
        if let Some(value) = self.valid(Instant::now()) {
            return Ok(value);
        }
        {
            // A refresh failed while this call waited for it: share its error, don't retry.
            let attempts = self.lock_attempts();
            if attempts.0 > attempts_before
                && let Some(error) = &attempts.1
            {
                return Err(error.clone());
            }
        }
        self.refresh_now().await
    }

    /// Asks the source; the refresh lock is held.
    async fn refresh_now(&self) -> Result<HeaderValue, Arc<str>> {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        let result = self
            .source
            .token()
            .await
            .map_err(|e| Arc::<str>::from(e.to_string()))
            .and_then(|token| {
                let value = header_value(self.scheme.as_deref(), token.value())
                    .map_err(|e| Arc::<str>::from(e.to_string()))?;
                Ok((value, token.lifetime()))
            });
        let mut attempts = self.lock_attempts();
        attempts.0 += 1;
        match result {
            Ok((value, lifetime)) => {
                attempts.1 = None;
                let now = Instant::now();
                let current = Current {
                    value: value.clone(),
                    refresh_at: lifetime.map(|l| now + l.saturating_sub(self.refresh_before)),
                    expires_at: lifetime.map(|l| now + l),
                };
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(current);
                Ok(value)
            }
            Err(error) => {
                tracing::debug!(%error, "jwt: token source failed");
                attempts.1 = Some(error.clone());
                Err(error)
            }
        }
    }

    fn lock_attempts(&self) -> std::sync::MutexGuard<'_, (u64, Option<Arc<str>>)> {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner())
    }
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

/// Builds an [`AttachTokenLayer`] over a [`TokenSource`].
pub struct AttachTokenBuilder<T> {
    source: T,
    header: HeaderName,
    scheme: Option<Box<str>>,
    refresh_before: Duration,
}

impl<T> fmt::Debug for AttachTokenBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachTokenBuilder")
            .field("header", &self.header)
            .field("scheme", &self.scheme)
            .field("refresh_before", &self.refresh_before)
            .finish_non_exhaustive()
    }
}

impl<T: TokenSource> AttachTokenBuilder<T> {
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

    /// How long before expiry the token is refreshed (default 30 s). Calls keep using the
    /// current token while one of them refreshes it.
    #[must_use]
    pub fn refresh_before(mut self, margin: Duration) -> Self {
        self.refresh_before = margin;
        self
    }

    /// The layer.
    pub fn build(self) -> AttachTokenLayer<T> {
        AttachTokenLayer {
            cache: Arc::new(Cache {
                source: self.source,
                scheme: self.scheme,
                refresh_before: self.refresh_before,
                current: RwLock::new(None),
                refresh: tokio::sync::Mutex::new(()),
                attempts: Mutex::new((0, None)),
                refreshes: AtomicU64::new(0),
            }),
            header: self.header,
        }
    }
}

/// Attaches `authorization: Bearer <token>` to every request of a client (the header marked
/// sensitive). The token is static ([`AttachTokenLayer::bearer`]) or comes from a
/// [`TokenSource`] ([`AttachTokenLayer::builder`]): cached, and refreshed before it expires by
/// one call while the others carry on — however many calls wait, one refresh is in flight.
/// When no token can be had, the call is answered `UNAUTHENTICATED` ("token unavailable")
/// without reaching the channel.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use palisade_jwt::{client::AttachTokenLayer, mint::HmacMinter};
///
/// // A static token…
/// let fixed = AttachTokenLayer::bearer("eyJhbGciOi...").unwrap();
/// // …or one minted (or fetched) on demand and refreshed 30 s before it expires.
/// let minted = AttachTokenLayer::builder(
///     HmacMinter::hs256("palisade-demo-secret").subject("demo-client").ttl(Duration::from_secs(300)),
/// )
/// .build();
/// # let _ = (fixed, minted);
/// ```
pub struct AttachTokenLayer<T = StaticToken> {
    cache: Arc<Cache<T>>,
    header: HeaderName,
}

impl AttachTokenLayer<StaticToken> {
    /// Attaches `authorization: Bearer <token>` to every request.
    pub fn bearer(token: impl AsRef<str>) -> Result<Self, InvalidToken> {
        let value = header_value(Some("Bearer"), token.as_ref())?;
        let layer = AttachTokenLayer::builder(StaticToken(())).build();
        *layer
            .cache
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(Current {
            value,
            refresh_at: None,
            expires_at: None,
        });
        Ok(layer)
    }
}

impl<T: TokenSource> AttachTokenLayer<T> {
    /// A builder over a token source.
    pub fn builder(source: T) -> AttachTokenBuilder<T> {
        AttachTokenBuilder {
            source,
            header: AUTHORIZATION,
            scheme: Some("Bearer".into()),
            refresh_before: Duration::from_secs(30),
        }
    }

    /// How many times the token source was asked.
    pub fn refreshes(&self) -> u64 {
        self.cache.refreshes.load(Ordering::Relaxed)
    }
}

impl<T> Clone for AttachTokenLayer<T> {
    fn clone(&self) -> Self {
        AttachTokenLayer {
            cache: self.cache.clone(),
            header: self.header.clone(),
        }
    }
}

impl<T> fmt::Debug for AttachTokenLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachTokenLayer")
            .field("header", &self.header)
            .field("scheme", &self.cache.scheme)
            .field("refresh_before", &self.cache.refresh_before)
            .finish_non_exhaustive()
    }
}

impl<S, T> Layer<S> for AttachTokenLayer<T> {
    type Service = AttachToken<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        AttachToken {
            inner,
            cache: self.cache.clone(),
            header: self.header.clone(),
        }
    }
}

/// The service [`AttachTokenLayer`] wraps around a client channel.
pub struct AttachToken<S, T> {
    inner: S,
    cache: Arc<Cache<T>>,
    header: HeaderName,
}

impl<S: Clone, T> Clone for AttachToken<S, T> {
    fn clone(&self) -> Self {
        AttachToken {
            inner: self.inner.clone(),
            cache: self.cache.clone(),
            header: self.header.clone(),
        }
    }
}

impl<S: fmt::Debug, T> fmt::Debug for AttachToken<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachToken")
            .field("inner", &self.inner)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl<S, T, ReqBody, ResBody> Service<Request<ReqBody>> for AttachToken<S, T>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
    T: TokenSource,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        if let Some(value) = self.cache.fresh(Instant::now()) {
            request.headers_mut().insert(self.header.clone(), value);
            return ResponseFuture::inner(self.inner.call(request));
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let cache = self.cache.clone();
        let header = self.header.clone();
        ResponseFuture::boxed(Box::pin(async move {
            match cache.get().await {
                Ok(value) => {
                    request.headers_mut().insert(header, value);
                    inner.call(request).await
                }
                Err(_) => {
                    Ok(Rejection::new(Code::Unauthenticated, "token unavailable").into_response())
                }
            }
        }))
    }
}
