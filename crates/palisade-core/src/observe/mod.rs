//! The observing middleware, once for every layer: [`Observe`] wraps any `http` service and,
//! for each RPC its [`Policy`] decides to watch, tells the policy's [`Observer`] of each
//! response message and, exactly once, how the RPC ended — on every path an RPC can end by.
//!
//! A layer crate writes only its policy: what to watch and how ([`Policy::start`], given the
//! request's [`Call`] view), the per-RPC observer, an optional request-body
//! observer, and what must be current while the RPC is polled ([`Scope`]: logging's span,
//! trace's context). [`ObserveLayer`], [`Observe`], [`ResponseFuture`], [`ResponseBody`] and
//! [`RequestBody`] are the layer, service, future and bodies of every observing layer, with
//! skipping ([`ObserveLayer::with_skip`]), readiness forwarding, accessors and every end path
//! done here.
//!
//! # Example
//!
//! A policy that reports each RPC's method and code at the end of its response stream:
//!
//! ```
//! use std::{convert::Infallible, sync::mpsc};
//! use bytes::Bytes;
//! use http::{HeaderMap, HeaderValue, Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use palisade_core::observe::{ObserveLayer, Policy, Watch};
//! use palisade_core::{Call, Code, Counts, Observer, Outcome, Side};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! struct Ends(mpsc::Sender<(String, Code, u64)>);
//!
//! struct End(mpsc::Sender<(String, Code, u64)>, String);
//!
//! impl Observer for End {
//!     fn on_end(self, outcome: Outcome, counts: Counts) {
//!         self.0.send((self.1, outcome.code(), counts.messages)).unwrap();
//!     }
//! }
//!
//! impl Policy for Ends {
//!     type Observer = End;
//!     type RequestObserver = ();
//!     type Scope = ();
//!
//!     fn side(&self) -> Side {
//!         Side::Server
//!     }
//!
//!     fn start(&self, call: &mut Call<'_>) -> Option<Watch<End, (), ()>> {
//!         // Not a gRPC path: not watched, passed through.
//!         let method = call.method()?.full_name().to_owned();
//!         Some(Watch::new(End(self.0.clone(), method)))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let handler = service_fn(|_: Request<_>| async {
//!     let mut trailers = HeaderMap::new();
//!     trailers.insert("grpc-status", HeaderValue::from_static("0"));
//!     let body = Full::new(Bytes::from_static(&[0, 0, 0, 0, 2, b'h', b'i']))
//!         .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) });
//!     Ok::<_, Infallible>(Response::new(body))
//! });
//! let (tx, rx) = mpsc::channel();
//! let service = ObserveLayer::new(Ends(tx)).layer(handler);
//!
//! let request = Request::post("/pkg.Greeter/SayHello").body(Full::new(Bytes::new())).unwrap();
//! let response = service.oneshot(request).await.unwrap();
//! assert!(rx.try_recv().is_err(), "not over at the headers");
//! response.into_body().collect().await.unwrap();
//! assert_eq!(rx.recv().unwrap(), ("pkg.Greeter/SayHello".into(), Code::Ok, 1));
//! # }
//! ```
//!
//! Below the middleware, the same module holds what it is made of and what older layers hang
//! off [`ObservedFuture`](crate::ObservedFuture) and [`ObservedBody`](crate::ObservedBody)
//! directly: [`Observer`], [`Counts`], [`Side`], [`on_end`].

mod body;
mod future;
mod layer;

pub use body::{MapRequestBody, ObservedRequest, RequestBody, ResponseBody, UnchangedRequest};
pub use future::ResponseFuture;
pub use layer::{Observe, ObserveLayer};

use crate::call::Call;
use crate::outcome::Outcome;
pub use crate::side::Side;

/// Counts of what passed through one observed body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Complete gRPC messages.
    pub messages: u64,
    /// Bytes of DATA frames, prefixes included.
    pub bytes: u64,
}

/// Watches one RPC (or one request body): told of each complete gRPC message, and of the
/// end exactly once.
///
/// `on_end` takes `self`, so it can only run once; every path an RPC can end by reaches it:
/// trailers, trailers-only headers, an end without trailers, a body error, an early drop, the
/// inner future failing or being dropped.
///
/// # Example
///
/// ```
/// use palisade_core::{Counts, Observer, Outcome};
///
/// struct PrintOnEnd;
///
/// impl Observer for PrintOnEnd {
///     fn on_end(self, outcome: Outcome, counts: Counts) {
///         println!("{:?} after {} messages", outcome.code(), counts.messages);
///     }
/// }
/// ```
pub trait Observer {
    /// A complete gRPC message went through.
    fn on_message(&mut self) {}

    /// The RPC (or request body) ended, with this outcome and these counts.
    fn on_end(self, outcome: Outcome, counts: Counts);

    /// Whether [`on_end`](Self::on_end) reads the outcome of a response that ended normally,
    /// and the counts (the default: yes). An observer that only needs to hear *that* the RPC
    /// ended, on every path — an in-flight limit's permit — says `false`, and the observing
    /// and admission middlewares then neither count its response messages nor read the
    /// status at the head or in the trailers: a response that ends (its body at its end, its
    /// trailers, an end without them) is told as
    /// [`Source::Unread`](crate::outcome::Source::Unread) (code `Unknown`, counts zero).
    /// Drops, panics and errors are told as to any observer. Asked once per frame: a field
    /// read at most.
    fn reads_outcome(&self) -> bool {
        true
    }
}

impl Observer for () {
    fn on_end(self, _: Outcome, _: Counts) {}
}

/// An [`Observer`] made of a closure that runs at the end; see [`on_end`].
#[derive(Clone, Copy, Debug)]
pub struct OnEnd<F>(F);

/// An observer from a closure, called once at the end of the RPC.
///
/// ```
/// use palisade_core::observe::on_end;
/// let observer = on_end(|outcome, counts| println!("{outcome:?} {counts:?}"));
/// # let _ = observer;
/// ```
pub fn on_end<F: FnOnce(Outcome, Counts)>(f: F) -> OnEnd<F> {
    OnEnd(f)
}

impl<F: FnOnce(Outcome, Counts)> Observer for OnEnd<F> {
    fn on_end(self, outcome: Outcome, counts: Counts) {
        (self.0)(outcome, counts)
    }
}

/// Decides, at the start of each RPC, whether and how an [`Observe`] service watches it.
///
/// See the [module docs](self) for an example.
pub trait Policy {
    /// Watches one RPC: per-RPC state, inline in the layer's future and body (no allocation).
    /// It hears each response message and the RPC's end.
    type Observer: Observer;
    /// Watches the request body (each request message, its end); `()` when not needed.
    type RequestObserver: Observer;
    /// What must be current while the RPC is polled; `()` when nothing.
    type Scope: Scope;

    /// Whether this policy reads the per-RPC record's facts at the end: then the middleware
    /// puts a [`Rpc`](crate::Rpc) of its side into the request when it has none, after
    /// [`start`](Self::start) and only when `start` watched the RPC (a `start` that needs the
    /// record itself calls [`Call::record_or_insert`], and the middleware does not look it up
    /// again). Other layers only use a record they find.
    const READS_FACTS: bool = false;

    /// The side this policy watches.
    fn side(&self) -> Side;

    /// At the start of the RPC, before the inner `call`. `None`: not watched (the request and
    /// response pass through, at the cost of one branch per poll).
    fn start(
        &self,
        call: &mut Call<'_>,
    ) -> Option<Watch<Self::Observer, Self::RequestObserver, Self::Scope>>;
}

/// How one RPC is watched: what [`Policy::start`] returns, built with [`Watch::new`],
/// [`with_request`](Watch::with_request) and [`with_scope`](Watch::with_scope) (the fields are
/// private, so later steps can add what they need without breaking policies).
#[derive(Debug)]
#[non_exhaustive]
pub struct Watch<O, R, S> {
    /// Watches the response (messages, the end of the RPC).
    pub(crate) observer: O,
    /// `Some`: the request body is watched by this observer too.
    pub(crate) request: Option<R>,
    /// Entered around the inner `call`, every poll of the inner future and of the inner
    /// response body until its end.
    pub(crate) scope: S,
}

impl<O, R> Watch<O, R, ()> {
    /// Watches the response with `observer`; the request body is not watched, no scope.
    pub fn new(observer: O) -> Self {
        Self {
            observer,
            request: None,
            scope: (),
        }
    }
}

impl<O, R, S> Watch<O, R, S> {
    /// Watches the request body too, with `observer`.
    #[must_use]
    pub fn with_request(mut self, observer: R) -> Self {
        self.request = Some(observer);
        self
    }

    /// Runs the RPC's polls in `scope`.
    #[must_use]
    pub fn with_scope<T>(self, scope: T) -> Watch<O, R, T> {
        Watch {
            observer: self.observer,
            request: self.request,
            scope,
        }
    }
}

/// What must be current while an RPC's future and response body are polled (a `tracing`
/// span, an OpenTelemetry context).
///
/// Entered around the inner service's `call`, each poll of the inner future and each poll of
/// the inner response body until its end of stream, and around the drop of the inner future
/// or body when the RPC is dropped before its end (so what a cancelled handler logs as it
/// drops is in the scope) — never around the response observer's own callbacks, so what it
/// writes at the end is written beside the scope, not in it. The request observer is called
/// wherever the request body is polled: on a server, tonic polls it inside the handler's
/// future, so inside the scope.
pub trait Scope {
    /// Held while the scope is current; dropping it leaves the scope.
    type Guard<'a>
    where
        Self: 'a;

    /// Makes the scope current until the guard is dropped.
    fn enter(&self) -> Self::Guard<'_>;
}

impl Scope for () {
    type Guard<'a> = ();

    fn enter(&self) -> Self::Guard<'_> {}
}
