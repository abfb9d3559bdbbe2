//! Presets: Palisade's layers composed in the recommended order, each piece optional.
//!
//! [`ServerLayers`] stacks, outermost first, `trace → logging → metrics → auth → ratelimit →
//! breaker`; [`ClientLayers`] stacks `trace → logging → metrics → breaker → ratelimit → auth`.
//! A slot left empty is `tower_layer::Identity`: it costs nothing. Every setter takes any tower
//! layer, so a slot can hold a Palisade layer, one of your own, or a `ServiceBuilder` stack.
//!
//! Why this order:
//!
//! - trace is outermost, so every later layer and every rejection happens inside the RPC's span;
//! - logging and metrics sit outside auth and limits, so rejected calls are logged and counted
//!   with their real code (`Unauthenticated`, `ResourceExhausted`, `Unavailable`);
//! - on a server, a per-subject rate limit must come after auth (it reads the claims); a global
//!   limit can also go before auth to keep floods off signature checks — put it in the `auth`
//!   slot as `ServiceBuilder::new().layer(limit).layer(auth)` for that. (A limit keyed on the
//!   claims that finds none at its first call says so in a `tracing` warning: every caller
//!   would share one bucket.);
//! - on a client, the breaker fails fast before a call waits for a rate-limit token, and the token
//!   is attached last, right before the channel.
//!
//! # Example
//!
//! ```
//! use palisade::preset::ServerLayers;
//! use tower::{Layer, ServiceBuilder};
//! use tower::layer::util::Identity;
//!
//! // Any layers fit the slots; these two are tower's own, for a self-contained example.
//! let layers = ServerLayers::new()
//!     .logging(tower::layer::layer_fn(|s| s))
//!     .ratelimit(ServiceBuilder::new().concurrency_limit(100).into_inner());
//! let service = layers.layer(tower::service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>(()) }));
//! # let _ = service;
//! ```
use tower_layer::{Identity, Layer};

/// A server's layers in the recommended order, outermost first: `trace → logging → metrics →
/// auth → ratelimit → breaker → service`. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct ServerLayers<
    Trace = Identity,
    Logging = Identity,
    Metrics = Identity,
    Auth = Identity,
    RateLimit = Identity,
    Breaker = Identity,
> {
    trace: Trace,
    logging: Logging,
    metrics: Metrics,
    auth: Auth,
    ratelimit: RateLimit,
    breaker: Breaker,
}

impl ServerLayers {
    /// No layer yet: every slot is `Identity`.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<T, L, M, A, R, B> ServerLayers<T, L, M, A, R, B> {
    /// The outermost slot: OpenTelemetry spans and context propagation.
    pub fn trace<X>(self, trace: X) -> ServerLayers<X, L, M, A, R, B> {
        ServerLayers {
            trace,
            logging: self.logging,
            metrics: self.metrics,
            auth: self.auth,
            ratelimit: self.ratelimit,
            breaker: self.breaker,
        }
    }

    /// One log event per RPC, inside the span.
    pub fn logging<X>(self, logging: X) -> ServerLayers<T, X, M, A, R, B> {
        ServerLayers {
            trace: self.trace,
            logging,
            metrics: self.metrics,
            auth: self.auth,
            ratelimit: self.ratelimit,
            breaker: self.breaker,
        }
    }

    /// Metrics, outside auth and limits so rejections are counted with their code.
    pub fn metrics<X>(self, metrics: X) -> ServerLayers<T, L, X, A, R, B> {
        ServerLayers {
            trace: self.trace,
            logging: self.logging,
            metrics,
            auth: self.auth,
            ratelimit: self.ratelimit,
            breaker: self.breaker,
        }
    }

    /// Authentication (JWT verification).
    pub fn auth<X>(self, auth: X) -> ServerLayers<T, L, M, X, R, B> {
        ServerLayers {
            trace: self.trace,
            logging: self.logging,
            metrics: self.metrics,
            auth,
            ratelimit: self.ratelimit,
            breaker: self.breaker,
        }
    }

    /// Rate limiting, after auth so it can key on the subject.
    pub fn ratelimit<X>(self, ratelimit: X) -> ServerLayers<T, L, M, A, X, B> {
        ServerLayers {
            trace: self.trace,
            logging: self.logging,
            metrics: self.metrics,
            auth: self.auth,
            ratelimit,
            breaker: self.breaker,
        }
    }

    /// The innermost slot: a breaker that sheds calls while the service fails.
    pub fn breaker<X>(self, breaker: X) -> ServerLayers<T, L, M, A, R, X> {
        ServerLayers {
            trace: self.trace,
            logging: self.logging,
            metrics: self.metrics,
            auth: self.auth,
            ratelimit: self.ratelimit,
            breaker,
        }
    }
}

impl<S, T, L, M, A, R, B> Layer<S> for ServerLayers<T, L, M, A, R, B>
where
    B: Layer<S>,
    R: Layer<B::Service>,
    A: Layer<R::Service>,
    M: Layer<A::Service>,
    L: Layer<M::Service>,
    T: Layer<L::Service>,
{
    type Service = T::Service;

    fn layer(&self, service: S) -> Self::Service {
        let service = self.breaker.layer(service);
        let service = self.ratelimit.layer(service);
        let service = self.auth.layer(service);
        let service = self.metrics.layer(service);
        let service = self.logging.layer(service);
        self.trace.layer(service)
    }
}

/// A client's layers in the recommended order, outermost first: `trace → logging → metrics →
/// breaker → ratelimit → auth → channel`. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct ClientLayers<
    Trace = Identity,
    Logging = Identity,
    Metrics = Identity,
    Breaker = Identity,
    RateLimit = Identity,
    Auth = Identity,
> {
    trace: Trace,
    logging: Logging,
    metrics: Metrics,
    breaker: Breaker,
    ratelimit: RateLimit,
    auth: Auth,
}

impl ClientLayers {
    /// No layer yet: every slot is `Identity`.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<T, L, M, B, R, A> ClientLayers<T, L, M, B, R, A> {
    /// The outermost slot: a CLIENT span, injected into the outgoing metadata.
    pub fn trace<X>(self, trace: X) -> ClientLayers<X, L, M, B, R, A> {
        ClientLayers {
            trace,
            logging: self.logging,
            metrics: self.metrics,
            breaker: self.breaker,
            ratelimit: self.ratelimit,
            auth: self.auth,
        }
    }

    /// One log event per call, with the code the caller got (breaker and limiter included).
    pub fn logging<X>(self, logging: X) -> ClientLayers<T, X, M, B, R, A> {
        ClientLayers {
            trace: self.trace,
            logging,
            metrics: self.metrics,
            breaker: self.breaker,
            ratelimit: self.ratelimit,
            auth: self.auth,
        }
    }

    /// Client metrics.
    pub fn metrics<X>(self, metrics: X) -> ClientLayers<T, L, X, B, R, A> {
        ClientLayers {
            trace: self.trace,
            logging: self.logging,
            metrics,
            breaker: self.breaker,
            ratelimit: self.ratelimit,
            auth: self.auth,
        }
    }

    /// A breaker that fails fast while the backend fails.
    pub fn breaker<X>(self, breaker: X) -> ClientLayers<T, L, M, X, R, A> {
        ClientLayers {
            trace: self.trace,
            logging: self.logging,
            metrics: self.metrics,
            breaker,
            ratelimit: self.ratelimit,
            auth: self.auth,
        }
    }

    /// A rate limit that waits for a token (never past the deadline).
    pub fn ratelimit<X>(self, ratelimit: X) -> ClientLayers<T, L, M, B, X, A> {
        ClientLayers {
            trace: self.trace,
            logging: self.logging,
            metrics: self.metrics,
            breaker: self.breaker,
            ratelimit,
            auth: self.auth,
        }
    }

    /// The innermost slot: attaches the bearer token.
    pub fn auth<X>(self, auth: X) -> ClientLayers<T, L, M, B, R, X> {
        ClientLayers {
            trace: self.trace,
            logging: self.logging,
            metrics: self.metrics,
            breaker: self.breaker,
            ratelimit: self.ratelimit,
            auth,
        }
    }
}

impl<S, T, L, M, B, R, A> Layer<S> for ClientLayers<T, L, M, B, R, A>
where
    A: Layer<S>,
    R: Layer<A::Service>,
    B: Layer<R::Service>,
    M: Layer<B::Service>,
    L: Layer<M::Service>,
    T: Layer<L::Service>,
{
    type Service = T::Service;

    fn layer(&self, service: S) -> Self::Service {
        let service = self.auth.layer(service);
        let service = self.ratelimit.layer(service);
        let service = self.breaker.layer(service);
        let service = self.metrics.layer(service);
        let service = self.logging.layer(service);
        self.trace.layer(service)
    }
}
