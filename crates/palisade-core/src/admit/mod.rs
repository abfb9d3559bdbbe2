//! The admission middleware, once for every layer that may answer first: [`Admit`] asks its
//! [`Admission`] at the start of each RPC whether the inner service gets it — pass it on, pass
//! it on and watch its end, answer it here with a [`Rejection`], or decide later — and does
//! the rest: skipping, the service clone a waiting call takes, the rejection's response and
//! its mark, the per-RPC record's `rejected_by`, the watched RPC's every end path (through
//! [`observe`]'s future and body), panics and cancellation.
//!
//! jwt (a verified token, or a wait for the keys), ratelimit (a token, or a wait for a shared
//! store), breaker (a permit watched to the end) and the in-flight limits are admissions; see
//! `docs/ARCHITECTURE.md`, "The admission middleware".
//!
//! # Example
//!
//! An admission that lets through calls carrying an `x-tenant` header and refuses the others:
//!
//! ```
//! use std::{convert::Infallible, future::Ready};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use palisade_core::admit::{Admission, AdmitLayer, Decision};
//! use palisade_core::{Call, Code, LocalRejection, Rejection, Side};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! struct NeedsTenant;
//!
//! impl Admission for NeedsTenant {
//!     const NAME: &'static str = "tenant";
//!     type Observer = ();
//!     type Head = ();
//!     type Wait = Ready<()>;
//!
//!     fn side(&self) -> Side {
//!         Side::Server
//!     }
//!
//!     fn admit(&self, call: &mut Call<'_>) -> Decision<Self> {
//!         if call.parts().headers.contains_key("x-tenant") {
//!             Decision::Pass
//!         } else {
//!             Decision::Reject(Rejection::new(Code::PermissionDenied, "no tenant"))
//!         }
//!     }
//!
//!     fn resume(&self, _: (), _: &mut Call<'_>) -> Decision<Self> {
//!         Decision::Pass
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let handler = service_fn(|_: Request<Full<Bytes>>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
//! });
//! let service = AdmitLayer::new(NeedsTenant).layer(handler);
//!
//! let request = Request::post("/pkg.Svc/Get").body(Full::default()).unwrap();
//! let response = service.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.headers()["grpc-status"], "7");
//! assert_eq!(LocalRejection::of(&response).unwrap().layer(), "tenant");
//!
//! let request = Request::post("/pkg.Svc/Get").header("x-tenant", "a").body(Full::default());
//! let response = service.oneshot(request.unwrap()).await.unwrap();
//! assert!(response.headers().get("grpc-status").is_none());
//! # }
//! ```

mod future;
mod layer;

use std::{future::Future, marker::PhantomData, pin::Pin};

use http::HeaderMap;

pub use future::ResponseFuture;
pub use layer::{Admit, AdmitLayer};

use crate::{
    call::Call,
    observe::{self, Observer, Policy, Watch},
    rejection::Rejection,
    side::Side,
};

/// Decides, at the start of each RPC, whether an [`Admit`] service's inner service gets it.
///
/// See the [module docs](self) for an example.
pub trait Admission: Sized {
    /// The layer's name: marked on its rejections ([`Rejection::by`], unless the rejection
    /// names a layer itself) and written into the per-RPC record's
    /// [`rejected_by`](crate::Rpc::rejected_by).
    const NAME: &'static str;

    /// Watches an admitted RPC to its end at this position (the breaker's permit, an
    /// in-flight limit's slot); `()` when nothing is watched.
    type Observer: Observer;

    /// Told of an admitted RPC's response head (the rate limiter's `x-ratelimit-*` headers,
    /// the breaker's answered probe); `()` when nothing.
    type Head: OnHead;

    /// A decision that comes later (jwt's key fetch, a shared store's answer, a client's
    /// wait for its quota): polled in the RPC's future, never boxed by the middleware. An
    /// admission that never waits names any future, `std::future::Ready<()>` say.
    type Wait: Future;

    /// The side this admission runs on.
    fn side(&self) -> Side;

    /// At the start of the RPC, before the inner `call`, with the request's head (jwt strips
    /// the token and inserts the claims through [`Call::parts_mut`]).
    fn admit(&self, call: &mut Call<'_>) -> Decision<Self>;

    /// After a [`Decision::Wait`] resolved, with what it resolved to and the request's head
    /// again. May wait again.
    fn resume(&self, waited: <Self::Wait as Future>::Output, call: &mut Call<'_>)
    -> Decision<Self>;

    /// The RPC was dropped while waiting (its caller went away, its deadline passed), with the
    /// wait and the request's head: give back what the wait holds (a rate limiter's tokens).
    /// The default does nothing; the wait is dropped after.
    fn abandon(&self, wait: Pin<&mut Self::Wait>, call: &mut Call<'_>) {
        let _ = (wait, call);
    }
}

/// What an [`Admission`] decided about one RPC.
pub enum Decision<A: Admission> {
    /// The inner service gets the RPC; nothing of it is watched here.
    Pass,
    /// The inner service gets the RPC, watched as [`Admitted`] says.
    Admit(Admitted<A>),
    /// Answered here, with this rejection (trailers-only, marked with the layer's name); the
    /// inner service never sees the RPC.
    Reject(Rejection),
    /// Decided later: the RPC's future polls this and then asks [`Admission::resume`].
    Wait(A::Wait),
}

impl<A: Admission> Decision<A> {
    /// Admits the RPC and watches it to its end with `observer`.
    #[inline]
    pub fn observe(observer: A::Observer) -> Self {
        Decision::Admit(Admitted::new().observe(observer))
    }
}

impl<A: Admission> std::fmt::Debug for Decision<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Pass => f.write_str("Pass"),
            Decision::Admit(admitted) => f.debug_tuple("Admit").field(admitted).finish(),
            Decision::Reject(rejection) => f.debug_tuple("Reject").field(rejection).finish(),
            Decision::Wait(_) => f.write_str("Wait(..)"),
        }
    }
}

/// How an admitted RPC is accompanied: an observer of its end and a hook on its response
/// head, both optional.
#[non_exhaustive]
pub struct Admitted<A: Admission> {
    pub(crate) observer: Option<A::Observer>,
    pub(crate) head: Option<A::Head>,
}

impl<A: Admission> Admitted<A> {
    /// Admitted, with nothing watched (what [`Decision::Pass`] does).
    #[inline]
    pub fn new() -> Self {
        Self {
            observer: None,
            head: None,
        }
    }

    /// Watches the RPC's end with `observer`.
    #[must_use]
    #[inline]
    pub fn observe(mut self, observer: A::Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Tells `head` of the response head when the inner service answers.
    #[must_use]
    #[inline]
    pub fn on_head(mut self, head: A::Head) -> Self {
        self.head = Some(head);
        self
    }
}

impl<A: Admission> Default for Admitted<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Admission> std::fmt::Debug for Admitted<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("observed", &self.observer.is_some())
            .field("head", &self.head.is_some())
            .finish()
    }
}

/// Told once of an admitted RPC's response head, when the inner service answered `Ok`.
pub trait OnHead {
    /// `headers` are the response's headers (writable: the rate limiter adds its own);
    /// `streaming` is whether the response goes on past its head — `false` for a
    /// trailers-only answer, an HTTP error status or a body already at its end (an RPC that
    /// ended at its head, as its observer heard).
    fn on_head(self, headers: &mut HeaderMap, streaming: bool);
}

impl OnHead for () {
    fn on_head(self, _: &mut HeaderMap, _: bool) {}
}

/// The observing policy an admission's watched RPCs run under: its observer, no request
/// observer, no scope. It names the types of [`observe`]'s future and body that an [`Admit`]
/// service uses; it never starts a watch itself.
pub struct Watched<A>(PhantomData<fn() -> A>);

impl<A> std::fmt::Debug for Watched<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watched")
    }
}

impl<A: Admission> Policy for Watched<A> {
    type Observer = A::Observer;
    type RequestObserver = ();
    type Scope = ();

    fn side(&self) -> Side {
        Side::Server
    }

    fn start(&self, _: &mut Call<'_>) -> Option<Watch<A::Observer, (), ()>> {
        None
    }
}

/// The response body of an [`Admit`] service: the inner body, watched to its end when the
/// admission asked for it ([`Admitted::observe`]), forwarded unchanged otherwise; an ended
/// empty body for a rejection.
pub type ResponseBody<B, A> = observe::ResponseBody<B, Watched<A>>;
