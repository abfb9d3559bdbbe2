//! The demo client's full stack, shared by the `client` and `stack` programs: trace (inject) →
//! logging → metrics → deadline → retry → breaker → ratelimit (wait) → jwt (attach) → channel.

use std::{num::NonZeroU32, time::Duration};

use palisade::prelude::*;
use palisade_core::side::Client;
use palisade_deadline::DeadlineLayer;
use palisade_jwt::mint::HmacMinter;
use palisade_retry::{HedgePolicy, RetryBudget, RetryLayer, RetryPolicy};
use tonic::transport::{Channel, Endpoint};
use tower::layer::util::Identity;

use crate::{BoxError, pb::greeter_client::GreeterClient};

/// The subject of the tokens the demo client mints.
pub const CLIENT_SUBJECT: &str = "demo-client";

/// The demo client's layers, outermost first.
pub type DemoClientStack = palisade::preset::ClientStack<
    TraceLayer<Client>,
    LoggingLayer<Client>,
    MetricsLayer<Client>,
    DeadlineLayer<Client>,
    RetryLayer,
    BreakerLayer<Client>,
    Identity,
    ClientRateLimitLayer,
    AttachTokenLayer<HmacMinter>,
>;

/// What the client stack is made of.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The HS256 secret tokens are minted with.
    pub jwt_secret: String,
    /// The space-separated `scope` claim, if any.
    pub scope: Option<String>,
    /// How long a minted token lives (it is refreshed before it expires).
    pub token_ttl: Duration,
    /// Retries (or hedges) outside the breaker: [`retry`].
    pub retry: RetryLayer,
    /// The breaker around the channel.
    pub breaker: BreakerLayer<palisade_core::side::Client>,
    /// Calls per second the client allows itself (it waits for a token, never past the
    /// deadline or 250 ms).
    pub rate: NonZeroU32,
    /// Each call's deadline when it has none of its own (and none inherited from a handler).
    pub deadline: Option<Duration>,
}

/// The minter of the client's short-lived HS256 tokens (`sub` = [`CLIENT_SUBJECT`]).
pub fn minter(secret: &str, scope: Option<&str>, ttl: Duration) -> HmacMinter {
    let minter = HmacMinter::hs256(secret).subject(CLIENT_SUBJECT).ttl(ttl);
    match scope {
        Some(scope) => minter.scope(scope),
        None => minter,
    }
}

/// The full client stack for `target`. Build it after the metrics recorder is installed.
pub fn layers(
    target: &Endpoint,
    options: &ClientOptions,
) -> Result<DemoClientStack, palisade::preset::Error> {
    let registry = MethodRegistry::from_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .expect("the demo's descriptor set decodes");
    let uri = target.uri();
    let trace = match (uri.host(), uri.port_u16()) {
        (Some(host), Some(port)) => TraceLayer::client()
            .propagator(palisade_trace::W3cPropagator::new())
            .server_address(host, port),
        _ => TraceLayer::client().propagator(palisade_trace::W3cPropagator::new()),
    };
    ClientLayers::new()
        .registry(registry.clone())
        .trace(trace)
        .logging(crate::telemetry::access_log(LoggingLayer::client()))
        .metrics(MetricsLayer::client())
        .deadline(deadline(options.deadline))
        .retry(options.retry.clone())
        .breaker(options.breaker.clone())
        .ratelimit(
            RateLimitLayer::client()
                .limit(Limit::global(Quota::per_second(options.rate)))
                .max_wait(Duration::from_millis(250)),
        )
        .auth(JwtAuthLayer::client().source(minter(
            &options.jwt_secret,
            options.scope.as_deref(),
            options.token_ttl,
        )))
        .build()
}

/// The client's retry layer: at most `attempts` attempts of every call, the first included
/// (1: none), retried on `UNAVAILABLE` with the gRPC retry design's backoff (100 ms, ×2, at
/// most 1 s) — or, with `hedge_delay`, hedged that far apart (an `UNAVAILABLE` hedge starts
/// the next one at once).
///
/// Its budget (10 tokens) earns `attempts - 1` tokens per call that succeeds, so it refuses
/// retries only to a backend whose calls fail outright: a flaky one that answers on a later
/// attempt keeps its retries, a dead one sees about 5 retries in all, then one attempt a call.
///
/// # Errors
///
/// `attempts` of 0 or above 5, or a hedging delay with fewer than 2 attempts.
pub fn retry(attempts: u32, hedge_delay: Option<Duration>) -> Result<RetryLayer, BoxError> {
    let registry = MethodRegistry::from_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)?;
    let builder = RetryLayer::client().registry(registry);
    let builder = match hedge_delay {
        Some(_) if attempts < 2 => {
            return Err(
                "--hedge-delay hedges with --retries 2 or more: one attempt has nothing to hedge"
                    .into(),
            );
        }
        Some(delay) => builder.hedge(
            palisade_core::Matcher::any(),
            HedgePolicy::new(attempts, delay).non_fatal(palisade_core::CodeSet::of(&[
                palisade_core::Code::Unavailable,
            ])),
        ),
        None => builder.retry(palisade_core::Matcher::any(), RetryPolicy::new(attempts)),
    };
    let budget = RetryBudget::new(10, f64::from(attempts.saturating_sub(1).max(1)))?;
    Ok(builder.budget(budget).build()?)
}

/// The client's deadline layer: `default` (a zero one is none) for calls without a deadline
/// of their own; the deadline of a handler making the call is carried either way.
pub fn deadline(default: Option<Duration>) -> DeadlineLayer<Client> {
    let builder = DeadlineLayer::client();
    match default.filter(|default| !default.is_zero()) {
        Some(default) => builder.default(default),
        None => builder,
    }
    .build()
    .expect("a client's deadline layer with a non-zero default builds")
}

/// A Greeter client through the full stack on a lazily connected channel, so that a server
/// that is down shows up as a gRPC status on each call.
pub fn connect(
    target: &str,
    options: &ClientOptions,
) -> Result<GreeterClient<<DemoClientStack as tower::Layer<Channel>>::Service>, BoxError> {
    let endpoint =
        Endpoint::from_shared(target.to_owned())?.connect_timeout(Duration::from_secs(2));
    let channel = endpoint.connect_lazy();
    Ok(GreeterClient::new(
        layers(&endpoint, options)?.service(channel),
    ))
}

/// The stack `server --upstream` forwards through: the client stack above, with the caller's
/// token relayed instead of one minted here, and no client rate limit.
pub type UpstreamStack = palisade::preset::ClientStack<
    TraceLayer<Client>,
    LoggingLayer<Client>,
    MetricsLayer<Client>,
    DeadlineLayer<Client>,
    Identity,
    BreakerLayer<Client>,
>;

/// What `forward = true` calls on a `server --upstream target`: the upstream Greeter's
/// `SayHello` through trace (inject) → logging → metrics → deadline (what is left of the
/// handler's) → breaker → channel; the Greeter relays its caller's `authorization`. Build it
/// after the metrics recorder is installed.
pub fn upstream(target: &str) -> Result<palisade_demo::Upstream, BoxError> {
    let endpoint =
        Endpoint::from_shared(target.to_owned())?.connect_timeout(Duration::from_secs(2));
    let registry = MethodRegistry::from_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)?;
    let uri = endpoint.uri();
    let trace = match (uri.host(), uri.port_u16()) {
        (Some(host), Some(port)) => TraceLayer::client()
            .propagator(palisade_trace::W3cPropagator::new())
            .server_address(host, port),
        _ => TraceLayer::client().propagator(palisade_trace::W3cPropagator::new()),
    };
    let stack: UpstreamStack = ClientLayers::new()
        .registry(registry)
        .trace(trace)
        .logging(crate::telemetry::access_log(LoggingLayer::client()))
        .metrics(MetricsLayer::client())
        .deadline(deadline(None))
        .breaker(BreakerLayer::client().name("upstream"))
        .build()?;
    let client = GreeterClient::new(stack.service(endpoint.connect_lazy()));
    Ok(std::sync::Arc::new(move |request| {
        let mut client = client.clone();
        Box::pin(async move { client.say_hello(request).await })
    }))
}
