//! Presets: Palisade's layers composed in the recommended order, each slot optional.
//!
//! [`ServerLayers`] stacks, outermost first,
//! `trace → logging → metrics → deadline → auth → ratelimit → limit → breaker → recovery`;
//! [`ClientLayers`] stacks
//! `trace → logging → metrics → deadline → retry → breaker → limit → ratelimit → auth`.
//! A preset is a builder: give it the method registry once ([`registry`](ServerLayers::registry)),
//! fill the slots with Palisade builders (`MetricsLayer::server()`) or built layers, and
//! [`build`](ServerLayers::build) it: every builder that has no registry of its own gets the
//! preset's, every slot is built, and the first that cannot be is named in the [`Error`]. The
//! result, a [`ServerStack`] or a [`ClientStack`], is the tower layer. A slot left empty is
//! `tower_layer::Identity` and costs nothing.
//!
//! Each slot takes its own side only: a server slot refuses `LoggingLayer::client()` (and a
//! value that is no Palisade layer), at the slot, with a note saying what fits. Any other tower
//! layer goes into a slot of either side wrapped in [`Custom`].
//!
//! Why this order:
//!
//! - trace is outermost, so every later layer and every rejection happens inside the RPC's span;
//! - logging and metrics sit outside auth and limits, so rejected calls are logged and counted
//!   with their real code (`Unauthenticated`, `ResourceExhausted`, `Unavailable`) — and, from
//!   the per-RPC record the inner layers write, with who called and which layer said no;
//! - on a server, a per-subject rate limit must come after auth (it reads the claims); a global
//!   limit can also go before auth to keep floods off signature checks — put both in the `auth`
//!   slot as `Custom(ServiceBuilder::new().layer(limit).layer(auth).into_inner())` for that. (A
//!   limit keyed on the claims that finds none at its first call says so in a `tracing`
//!   warning: every caller would share one bucket.);
//! - the deadline sits right inside metrics: a call past its deadline is answered before any
//!   signature check or token, and metrics still counts it as `DeadlineExceeded`; on a client,
//!   before the breaker, so the outgoing `grpc-timeout` is set before anything waits;
//! - the in-flight limit comes after the cheaper refusals (a bad token, an exhausted rate
//!   limit) so their calls never hold a permit; the breaker after it;
//! - recovery is innermost, next to the handler, so every layer outside sees a panic as an
//!   ordinary `INTERNAL`;
//! - on a client, retry sits inside the deadline (each attempt carries what is left of it) and
//!   outside the breaker and limits: every attempt asks them, and their rejections are never
//!   retried nor counted as the backend's failure; logging and metrics outside it see one call,
//!   with its attempts counted;
//! - on a client, the breaker fails fast before a call waits for a rate-limit token, and the token
//!   is attached last, right before the channel.
//!
//! # Example
//!
//! ```
//! use palisade::preset::{Custom, ServerLayers};
//! use tower::{Layer, ServiceBuilder};
//!
//! // Any tower layer fits a slot wrapped in `Custom`; these are tower's own, for a
//! // self-contained example (the README shows Palisade's layers in every slot).
//! let stack = ServerLayers::new()
//!     .logging(Custom(tower::layer::layer_fn(|s| s)))
//!     .ratelimit(Custom(ServiceBuilder::new().concurrency_limit(100).into_inner()))
//!     .build()
//!     .unwrap();
//! let service = stack.layer(tower::service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>(()) }));
//! # let _ = service;
//! ```
//!
//! A client layer in a server slot does not compile, and the error is at the slot
//! (`LoggingBuilder<Client>` does not fit a preset slot of side `Server`):
//!
//! ```compile_fail
//! use palisade::prelude::*;
//!
//! let layers = ServerLayers::new().logging(LoggingLayer::client());
//! ```
//!
//! Neither does a tower layer that is not wrapped in [`Custom`]:
//!
//! ```compile_fail
//! use palisade::preset::ServerLayers;
//!
//! let layers = ServerLayers::new().logging(tower::layer::layer_fn(|s: ()| s));
//! ```
use std::fmt;

pub use palisade_core::build::{BoxError, BuildLayer, Custom};
use palisade_core::{
    MethodRegistry,
    side::{Client, OnSide, Server},
};
use tower_layer::{Identity, Layer};

/// A slot that could not be built: which one, and why (the layer crate's own error).
#[derive(Debug)]
pub struct Error {
    slot: &'static str,
    source: BoxError,
}

impl Error {
    /// The slot: `"trace"`, `"logging"`, `"metrics"`, `"deadline"`, `"retry"`, `"auth"`,
    /// `"ratelimit"`, `"limit"`, `"breaker"` or `"recovery"`.
    pub fn slot(&self) -> &'static str {
        self.slot
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the preset's {} slot: {}", self.slot, self.source)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Builds one slot: the preset's registry first (if the part has none), then the part.
fn build_slot<K: OnSide, P: BuildLayer<K>>(
    slot: &'static str,
    part: P,
    registry: Option<&MethodRegistry>,
) -> Result<P::Layer, Error> {
    let part = match registry {
        Some(registry) => part.use_registry(registry),
        None => part,
    };
    part.build_layer().map_err(|source| Error { slot, source })
}

/// A server's layers in the recommended order, outermost first:
/// `trace → logging → metrics → deadline → auth → ratelimit → limit → breaker → recovery → service`,
/// to [`build`](Self::build) into a [`ServerStack`]. See the [module docs](self).
#[derive(Clone, Debug, Default)]
#[must_use = "a preset does nothing until it is built"]
pub struct ServerLayers<
    Trace = Identity,
    Logging = Identity,
    Metrics = Identity,
    Deadline = Identity,
    Auth = Identity,
    RateLimit = Identity,
    Limit = Identity,
    Breaker = Identity,
    Recovery = Identity,
> {
    registry: Option<MethodRegistry>,
    trace: Trace,
    logging: Logging,
    metrics: Metrics,
    deadline: Deadline,
    auth: Auth,
    ratelimit: RateLimit,
    limit: Limit,
    breaker: Breaker,
    recovery: Recovery,
}

impl ServerLayers {
    /// No layer yet: every slot is `Identity`.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<Trace, Logging, Metrics, Deadline, Auth, RateLimit, Limit, Breaker, Recovery>
    ServerLayers<Trace, Logging, Metrics, Deadline, Auth, RateLimit, Limit, Breaker, Recovery>
{
    /// The methods served (or called), handed at [`build`](Self::build) to every slot's
    /// builder that was given none of its own: `grpc_type` and bounded per-method label sets
    /// in every layer, from one registry.
    pub fn registry(mut self, registry: MethodRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The outermost slot: OpenTelemetry spans and context propagation.
    pub fn trace<X: BuildLayer<Server>>(
        self,
        trace: X,
    ) -> ServerLayers<X, Logging, Metrics, Deadline, Auth, RateLimit, Limit, Breaker, Recovery>
    {
        ServerLayers {
            registry: self.registry,
            trace,
            logging: self.logging,
            metrics: self.metrics,
            deadline: self.deadline,
            auth: self.auth,
            ratelimit: self.ratelimit,
            limit: self.limit,
            breaker: self.breaker,
            recovery: self.recovery,
        }
    }

    /// One log event per RPC, inside the span.
    pub fn logging<X: BuildLayer<Server>>(
        self,
        logging: X,
    ) -> ServerLayers<Trace, X, Metrics, Deadline, Auth, RateLimit, Limit, Breaker, Recovery> {
        ServerLayers {
            registry: self.registry,
            trace: self.trace,
            logging,
            metrics: self.metrics,
            deadline: self.deadline,
            auth: self.auth,
            ratelimit: self.ratelimit,
            limit: self.limit,
            breaker: self.breaker,
            recovery: self.recovery,
        }
    }

    /// Metrics, outside auth and limits so rejections are counted with their code.
    pub fn metrics<X: BuildLayer<Server>>(
        self,
        metrics: X,
    ) -> ServerLayers<Trace, Logging, X, Deadline, Auth, RateLimit, Limit, Breaker, Recovery> {
        ServerLayers {
            registry: self.registry,
            trace: self.trace,
            logging: self.logging,
            metrics,
            deadline: self.deadline,
            auth: self.auth,
            ratelimit: self.ratelimit,
            limit: self.limit,
            breaker: self.breaker,
            recovery: self.recovery,
        }
    }

    /// The caller's deadline enforced (capped, defaulted) and made current, outside auth so a call past its deadline costs no signature check.
    pub fn deadline<X: BuildLayer<Server>>(
        self,
        deadline: X,
    ) -> ServerLayers<Trace, Logging, Metrics, X, Auth, RateLimit, Limit, Breaker, Recovery> {
        ServerLayers {
            registry: self.registry,
            trace: self.trace,
            logging: self.logging,
            metrics: self.metrics,
            deadline,
            auth: self.auth,
            ratelimit: self.ratelimit,
            limit: self.limit,
            breaker: self.breaker,
            recovery: self.recovery,
        }
    }

    /// Authentication (JWT verification).
    pub fn auth<X: BuildLayer<Server>>(
        self,
        auth: X,
    ) -> ServerLayers<Trace, Logging, Metrics, Deadline, X, RateLimit, Limit, Breaker, Recovery>
    {
        ServerLayers {
            registry: self.registry,
            trace: self.trace,
            logging: self.logging,
            metrics: self.metrics,
            deadline: self.deadline,
            auth,
            ratelimit: self.ratelimit,
            limit: self.limit,
            breaker: self.breaker,
            recovery: self.recovery,
        }
    }

    /// Rate limiting, after auth so it can key on the subject.
    pub fn ratelimit<X: BuildLayer<Server>>(
        self,
        ratelimit: X,
    ) -> ServerLayers<Trace, Logging, Metrics, Deadline, Auth, X, Limit, Breaker, Recovery> {
        ServerLayers {
            registry: self.registry,
            trace: self.trace,
            logging: self.logging,
            metrics: self.metrics,
            deadline: self.deadline,
            auth: self.auth,
            ratelimit,
            limit: self.limit,
            breaker: self.breaker,
            recovery: self.recovery,
        }
    }

    /// An in-flight limit: calls past it are shed at once, after the cheaper refusals.
    pub fn limit<X: BuildLayer<Server>>(
        self,
        limit: X,
    ) -> ServerLayers<Trace, Logging, Metrics, Deadline, Auth, RateLimit, X, Breaker, Recovery>
    {
        ServerLayers {
            registry: self.registry,
            trace: self.trace,
            logging: self.logging,
            metrics: self.metrics,
            deadline: self.deadline,
            auth: self.auth,
            ratelimit: self.ratelimit,
            limit,
            breaker: self.breaker,
            recovery: self.recovery,
        }
    }

    /// A breaker that sheds calls while the service fails.
    pub fn breaker<X: BuildLayer<Server>>(
        self,
        breaker: X,
    ) -> ServerLayers<Trace, Logging, Metrics, Deadline, Auth, RateLimit, Limit, X, Recovery> {
        ServerLayers {
            registry: self.registry,
            trace: self.trace,
            logging: self.logging,
            metrics: self.metrics,
            deadline: self.deadline,
            auth: self.auth,
            ratelimit: self.ratelimit,
            limit: self.limit,
            breaker,
            recovery: self.recovery,
        }
    }

    /// The innermost slot: a panic in the handler answered as `INTERNAL`, so every layer outside sees that code.
    pub fn recovery<X: BuildLayer<Server>>(
        self,
        recovery: X,
    ) -> ServerLayers<Trace, Logging, Metrics, Deadline, Auth, RateLimit, Limit, Breaker, X> {
        ServerLayers {
            registry: self.registry,
            trace: self.trace,
            logging: self.logging,
            metrics: self.metrics,
            deadline: self.deadline,
            auth: self.auth,
            ratelimit: self.ratelimit,
            limit: self.limit,
            breaker: self.breaker,
            recovery,
        }
    }
}

impl<
    Trace: BuildLayer<Server>,
    Logging: BuildLayer<Server>,
    Metrics: BuildLayer<Server>,
    Deadline: BuildLayer<Server>,
    Auth: BuildLayer<Server>,
    RateLimit: BuildLayer<Server>,
    Limit: BuildLayer<Server>,
    Breaker: BuildLayer<Server>,
    Recovery: BuildLayer<Server>,
> ServerLayers<Trace, Logging, Metrics, Deadline, Auth, RateLimit, Limit, Breaker, Recovery>
{
    /// Builds every slot, outermost first, each after taking the preset's registry if it has
    /// none of its own.
    ///
    /// # Errors
    ///
    /// The first slot whose configuration is refused (a JWT layer without keys, a rate limit
    /// without a limit, …), named in the [`Error`].
    #[allow(clippy::type_complexity)] // each slot's layer, spelled out: what the stack holds
    pub fn build(
        self,
    ) -> Result<
        ServerStack<
            Trace::Layer,
            Logging::Layer,
            Metrics::Layer,
            Deadline::Layer,
            Auth::Layer,
            RateLimit::Layer,
            Limit::Layer,
            Breaker::Layer,
            Recovery::Layer,
        >,
        Error,
    > {
        let registry = self.registry.as_ref();
        Ok(ServerStack {
            trace: build_slot("trace", self.trace, registry)?,
            logging: build_slot("logging", self.logging, registry)?,
            metrics: build_slot("metrics", self.metrics, registry)?,
            deadline: build_slot("deadline", self.deadline, registry)?,
            auth: build_slot("auth", self.auth, registry)?,
            ratelimit: build_slot("ratelimit", self.ratelimit, registry)?,
            limit: build_slot("limit", self.limit, registry)?,
            breaker: build_slot("breaker", self.breaker, registry)?,
            recovery: build_slot("recovery", self.recovery, registry)?,
        })
    }
}

/// A built [`ServerLayers`]: the tower layer, for `Server::builder().layer(stack)`.
#[derive(Clone, Debug)]
pub struct ServerStack<
    Trace = Identity,
    Logging = Identity,
    Metrics = Identity,
    Deadline = Identity,
    Auth = Identity,
    RateLimit = Identity,
    Limit = Identity,
    Breaker = Identity,
    Recovery = Identity,
> {
    trace: Trace,
    logging: Logging,
    metrics: Metrics,
    deadline: Deadline,
    auth: Auth,
    ratelimit: RateLimit,
    limit: Limit,
    breaker: Breaker,
    recovery: Recovery,
}

impl<S, Trace, Logging, Metrics, Deadline, Auth, RateLimit, Limit, Breaker, Recovery> Layer<S>
    for ServerStack<Trace, Logging, Metrics, Deadline, Auth, RateLimit, Limit, Breaker, Recovery>
where
    Recovery: Layer<S>,
    Breaker: Layer<Recovery::Service>,
    Limit: Layer<Breaker::Service>,
    RateLimit: Layer<Limit::Service>,
    Auth: Layer<RateLimit::Service>,
    Deadline: Layer<Auth::Service>,
    Metrics: Layer<Deadline::Service>,
    Logging: Layer<Metrics::Service>,
    Trace: Layer<Logging::Service>,
{
    type Service = Trace::Service;

    fn layer(&self, service: S) -> Self::Service {
        let service = self.recovery.layer(service);
        let service = self.breaker.layer(service);
        let service = self.limit.layer(service);
        let service = self.ratelimit.layer(service);
        let service = self.auth.layer(service);
        let service = self.deadline.layer(service);
        let service = self.metrics.layer(service);
        let service = self.logging.layer(service);
        self.trace.layer(service)
    }
}

/// A client's layers in the recommended order, outermost first:
/// `trace → logging → metrics → deadline → retry → breaker → limit → ratelimit → auth → channel`,
/// to [`build`](Self::build) into a [`ClientStack`]. See the [module docs](self).
#[derive(Clone, Debug, Default)]
#[must_use = "a preset does nothing until it is built"]
pub struct ClientLayers<
    Trace = Identity,
    Logging = Identity,
    Metrics = Identity,
    Deadline = Identity,
    Retry = Identity,
    Breaker = Identity,
    Limit = Identity,
    RateLimit = Identity,
    Auth = Identity,
> {
    registry: Option<MethodRegistry>,
    trace: Trace,
    logging: Logging,
    metrics: Metrics,
    deadline: Deadline,
    retry: Retry,
    breaker: Breaker,
    limit: Limit,
    ratelimit: RateLimit,
    auth: Auth,
}

impl ClientLayers {
    /// No layer yet: every slot is `Identity`.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<Trace, Logging, Metrics, Deadline, Retry, Breaker, Limit, RateLimit, Auth>
    ClientLayers<Trace, Logging, Metrics, Deadline, Retry, Breaker, Limit, RateLimit, Auth>
{
    /// The methods served (or called), handed at [`build`](Self::build) to every slot's
    /// builder that was given none of its own: `grpc_type` and bounded per-method label sets
    /// in every layer, from one registry.
    pub fn registry(mut self, registry: MethodRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The outermost slot: a CLIENT span, injected into the outgoing metadata.
    pub fn trace<X: BuildLayer<Client>>(
        self,
        trace: X,
    ) -> ClientLayers<X, Logging, Metrics, Deadline, Retry, Breaker, Limit, RateLimit, Auth> {
        ClientLayers {
            registry: self.registry,
            trace,
            logging: self.logging,
            metrics: self.metrics,
            deadline: self.deadline,
            retry: self.retry,
            breaker: self.breaker,
            limit: self.limit,
            ratelimit: self.ratelimit,
            auth: self.auth,
        }
    }

    /// One log event per call, with the code the caller got (breaker and limiter included) and how many attempts it took.
    pub fn logging<X: BuildLayer<Client>>(
        self,
        logging: X,
    ) -> ClientLayers<Trace, X, Metrics, Deadline, Retry, Breaker, Limit, RateLimit, Auth> {
        ClientLayers {
            registry: self.registry,
            trace: self.trace,
            logging,
            metrics: self.metrics,
            deadline: self.deadline,
            retry: self.retry,
            breaker: self.breaker,
            limit: self.limit,
            ratelimit: self.ratelimit,
            auth: self.auth,
        }
    }

    /// Client metrics.
    pub fn metrics<X: BuildLayer<Client>>(
        self,
        metrics: X,
    ) -> ClientLayers<Trace, Logging, X, Deadline, Retry, Breaker, Limit, RateLimit, Auth> {
        ClientLayers {
            registry: self.registry,
            trace: self.trace,
            logging: self.logging,
            metrics,
            deadline: self.deadline,
            retry: self.retry,
            breaker: self.breaker,
            limit: self.limit,
            ratelimit: self.ratelimit,
            auth: self.auth,
        }
    }

    /// The call's deadline: the smallest of its own, a default and the handler's, less a margin; a passed one is not sent.
    pub fn deadline<X: BuildLayer<Client>>(
        self,
        deadline: X,
    ) -> ClientLayers<Trace, Logging, Metrics, X, Retry, Breaker, Limit, RateLimit, Auth> {
        ClientLayers {
            registry: self.registry,
            trace: self.trace,
            logging: self.logging,
            metrics: self.metrics,
            deadline,
            retry: self.retry,
            breaker: self.breaker,
            limit: self.limit,
            ratelimit: self.ratelimit,
            auth: self.auth,
        }
    }

    /// Retries and hedges, per method: each attempt asks the breaker and limits inside, carries what is left of the deadline, and is never made for their rejections.
    pub fn retry<X: BuildLayer<Client>>(
        self,
        retry: X,
    ) -> ClientLayers<Trace, Logging, Metrics, Deadline, X, Breaker, Limit, RateLimit, Auth> {
        ClientLayers {
            registry: self.registry,
            trace: self.trace,
            logging: self.logging,
            metrics: self.metrics,
            deadline: self.deadline,
            retry,
            breaker: self.breaker,
            limit: self.limit,
            ratelimit: self.ratelimit,
            auth: self.auth,
        }
    }

    /// A breaker that fails fast while the backend fails.
    pub fn breaker<X: BuildLayer<Client>>(
        self,
        breaker: X,
    ) -> ClientLayers<Trace, Logging, Metrics, Deadline, Retry, X, Limit, RateLimit, Auth> {
        ClientLayers {
            registry: self.registry,
            trace: self.trace,
            logging: self.logging,
            metrics: self.metrics,
            deadline: self.deadline,
            retry: self.retry,
            breaker,
            limit: self.limit,
            ratelimit: self.ratelimit,
            auth: self.auth,
        }
    }

    /// An in-flight limit on the calls this client makes.
    pub fn limit<X: BuildLayer<Client>>(
        self,
        limit: X,
    ) -> ClientLayers<Trace, Logging, Metrics, Deadline, Retry, Breaker, X, RateLimit, Auth> {
        ClientLayers {
            registry: self.registry,
            trace: self.trace,
            logging: self.logging,
            metrics: self.metrics,
            deadline: self.deadline,
            retry: self.retry,
            breaker: self.breaker,
            limit,
            ratelimit: self.ratelimit,
            auth: self.auth,
        }
    }

    /// A rate limit that waits for a token (never past the deadline).
    pub fn ratelimit<X: BuildLayer<Client>>(
        self,
        ratelimit: X,
    ) -> ClientLayers<Trace, Logging, Metrics, Deadline, Retry, Breaker, Limit, X, Auth> {
        ClientLayers {
            registry: self.registry,
            trace: self.trace,
            logging: self.logging,
            metrics: self.metrics,
            deadline: self.deadline,
            retry: self.retry,
            breaker: self.breaker,
            limit: self.limit,
            ratelimit,
            auth: self.auth,
        }
    }

    /// The innermost slot: attaches the bearer token.
    pub fn auth<X: BuildLayer<Client>>(
        self,
        auth: X,
    ) -> ClientLayers<Trace, Logging, Metrics, Deadline, Retry, Breaker, Limit, RateLimit, X> {
        ClientLayers {
            registry: self.registry,
            trace: self.trace,
            logging: self.logging,
            metrics: self.metrics,
            deadline: self.deadline,
            retry: self.retry,
            breaker: self.breaker,
            limit: self.limit,
            ratelimit: self.ratelimit,
            auth,
        }
    }
}

impl<
    Trace: BuildLayer<Client>,
    Logging: BuildLayer<Client>,
    Metrics: BuildLayer<Client>,
    Deadline: BuildLayer<Client>,
    Retry: BuildLayer<Client>,
    Breaker: BuildLayer<Client>,
    Limit: BuildLayer<Client>,
    RateLimit: BuildLayer<Client>,
    Auth: BuildLayer<Client>,
> ClientLayers<Trace, Logging, Metrics, Deadline, Retry, Breaker, Limit, RateLimit, Auth>
{
    /// Builds every slot, outermost first, each after taking the preset's registry if it has
    /// none of its own.
    ///
    /// # Errors
    ///
    /// The first slot whose configuration is refused (a JWT layer without keys, a rate limit
    /// without a limit, …), named in the [`Error`].
    #[allow(clippy::type_complexity)] // each slot's layer, spelled out: what the stack holds
    pub fn build(
        self,
    ) -> Result<
        ClientStack<
            Trace::Layer,
            Logging::Layer,
            Metrics::Layer,
            Deadline::Layer,
            Retry::Layer,
            Breaker::Layer,
            Limit::Layer,
            RateLimit::Layer,
            Auth::Layer,
        >,
        Error,
    > {
        let registry = self.registry.as_ref();
        Ok(ClientStack {
            trace: build_slot("trace", self.trace, registry)?,
            logging: build_slot("logging", self.logging, registry)?,
            metrics: build_slot("metrics", self.metrics, registry)?,
            deadline: build_slot("deadline", self.deadline, registry)?,
            retry: build_slot("retry", self.retry, registry)?,
            breaker: build_slot("breaker", self.breaker, registry)?,
            limit: build_slot("limit", self.limit, registry)?,
            ratelimit: build_slot("ratelimit", self.ratelimit, registry)?,
            auth: build_slot("auth", self.auth, registry)?,
        })
    }
}

/// A built [`ClientLayers`]: the tower layer around a channel; [`service`](Self::service)
/// wraps one.
#[derive(Clone, Debug)]
pub struct ClientStack<
    Trace = Identity,
    Logging = Identity,
    Metrics = Identity,
    Deadline = Identity,
    Retry = Identity,
    Breaker = Identity,
    Limit = Identity,
    RateLimit = Identity,
    Auth = Identity,
> {
    trace: Trace,
    logging: Logging,
    metrics: Metrics,
    deadline: Deadline,
    retry: Retry,
    breaker: Breaker,
    limit: Limit,
    ratelimit: RateLimit,
    auth: Auth,
}

impl<S, Trace, Logging, Metrics, Deadline, Retry, Breaker, Limit, RateLimit, Auth> Layer<S>
    for ClientStack<Trace, Logging, Metrics, Deadline, Retry, Breaker, Limit, RateLimit, Auth>
where
    Auth: Layer<S>,
    RateLimit: Layer<Auth::Service>,
    Limit: Layer<RateLimit::Service>,
    Breaker: Layer<Limit::Service>,
    Retry: Layer<Breaker::Service>,
    Deadline: Layer<Retry::Service>,
    Metrics: Layer<Deadline::Service>,
    Logging: Layer<Metrics::Service>,
    Trace: Layer<Logging::Service>,
{
    type Service = Trace::Service;

    fn layer(&self, service: S) -> Self::Service {
        let service = self.auth.layer(service);
        let service = self.ratelimit.layer(service);
        let service = self.limit.layer(service);
        let service = self.breaker.layer(service);
        let service = self.retry.layer(service);
        let service = self.deadline.layer(service);
        let service = self.metrics.layer(service);
        let service = self.logging.layer(service);
        self.trace.layer(service)
    }
}

impl<Trace, Logging, Metrics, Deadline, Retry, Breaker, Limit, RateLimit, Auth>
    ClientStack<Trace, Logging, Metrics, Deadline, Retry, Breaker, Limit, RateLimit, Auth>
{
    /// The channel wrapped in every layer: `GreeterClient::new(stack.service(channel))`.
    pub fn service<S>(&self, channel: S) -> <Self as Layer<S>>::Service
    where
        Self: Layer<S>,
    {
        self.layer(channel)
    }
}
