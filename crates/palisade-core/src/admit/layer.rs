//! The layer and the service of the admission middleware.

use std::{
    any::Any,
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::{Admission, Admitted, Decision, ResponseBody, ResponseFuture};
use crate::{call::Call, matcher::Matcher, method::Method};

/// Makes [`Admit`] services asking the admission `A` about every RPC; see the
/// [module docs](super) for an example.
///
/// The layer holds the admission and the skip matcher in one `Arc`: cloning the layer or
/// making services from it shares them.
pub struct AdmitLayer<A> {
    pub(crate) shared: Arc<Shared<A>>,
}

pub(crate) struct Shared<A> {
    pub(crate) admission: A,
    skip: Option<Matcher>,
    /// Every RPC passes, the admission never asked ([`AdmitLayer::disabled`]).
    disabled: bool,
}

impl<A: Admission> AdmitLayer<A> {
    /// A layer asking `admission` about every RPC.
    pub fn new(admission: A) -> Self {
        Self::with_skip(admission, None)
    }

    /// A layer asking `admission` about every RPC except those `skip` selects: they pass
    /// through untouched, and the admission never sees them.
    pub fn with_skip(admission: A, skip: Option<Matcher>) -> Self {
        Self {
            shared: Arc::new(Shared {
                admission,
                skip,
                disabled: false,
            }),
        }
    }

    /// A layer that asks nothing: every RPC passes on to the inner service as it is, and
    /// `admission` is never asked. For a layer that configuration turns off, so that a stack
    /// has the same type with it on or off (no `Either`, no mapped bodies), at the cost of one
    /// branch a call.
    ///
    /// ```
    /// # use std::future::Ready;
    /// # use palisade_core::{Call, Side, admit::{Admission, AdmitLayer, Decision}};
    /// # struct Refuse;
    /// # impl Admission for Refuse {
    /// #     const NAME: &'static str = "refuse";
    /// #     type Observer = ();
    /// #     type Head = ();
    /// #     type Wait = Ready<()>;
    /// #     fn side(&self) -> Side { Side::Server }
    /// #     fn admit(&self, _: &mut Call<'_>) -> Decision<Self> { unreachable!("never asked") }
    /// #     fn resume(&self, _: (), _: &mut Call<'_>) -> Decision<Self> { unreachable!() }
    /// # }
    /// let off = AdmitLayer::disabled(Refuse);
    /// assert!(off.is_disabled());
    /// ```
    pub fn disabled(admission: A) -> Self {
        Self {
            shared: Arc::new(Shared {
                admission,
                skip: None,
                disabled: true,
            }),
        }
    }
}

impl<A> AdmitLayer<A> {
    /// The admission.
    pub fn admission(&self) -> &A {
        &self.shared.admission
    }

    /// The RPCs the admission never sees.
    pub fn skip(&self) -> Option<&Matcher> {
        self.shared.skip.as_ref()
    }

    /// Whether every RPC passes unasked ([`AdmitLayer::disabled`]).
    pub fn is_disabled(&self) -> bool {
        self.shared.disabled
    }
}

impl<A> Clone for AdmitLayer<A> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<A: fmt::Debug> fmt::Debug for AdmitLayer<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmitLayer")
            .field("admission", &self.shared.admission)
            .field("skip", &self.shared.skip)
            .field("disabled", &self.shared.disabled)
            .finish()
    }
}

impl<S, A> Layer<S> for AdmitLayer<A> {
    type Service = Admit<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        Admit::new(inner, self.clone())
    }
}

/// Asks its admission `A` whether the inner service gets each RPC; made by [`AdmitLayer`].
///
/// The inner service must be `Clone` (tonic's routes and `Channel` are): an RPC whose
/// admission waits takes the ready service with it and leaves a clone, as tower-http's
/// `AsyncRequireAuthorization` does. The inner service's error type is kept; a rejection is
/// an `Ok` response (trailers-only), so `ResBody: Default`.
pub struct Admit<S, A> {
    inner: S,
    layer: AdmitLayer<A>,
}

impl<S, A> Admit<S, A> {
    /// Wraps `inner`, asking the layer's admission.
    pub fn new(inner: S, layer: AdmitLayer<A>) -> Self {
        Self { inner, layer }
    }

    /// The admission.
    pub fn admission(&self) -> &A {
        self.layer.admission()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, A> Clone for Admit<S, A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, A: fmt::Debug> fmt::Debug for Admit<S, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admit")
            .field("inner", &self.inner)
            .field("admission", self.admission())
            .finish_non_exhaustive()
    }
}

impl<S, A, ReqBody, ResBody> Service<Request<ReqBody>> for Admit<S, A>
where
    A: Admission,
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: http_body::Body + Default,
    S::Error: Any,
{
    type Response = Response<ResponseBody<ResBody, A>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, A, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if self.layer.shared.disabled {
            return ResponseFuture::passed(self.inner.call(request), None);
        }
        let shared = &self.layer.shared;
        let skipped = shared
            .skip
            .as_ref()
            .is_some_and(|skip| skip.matches(Method::from_uri(request.uri()).as_ref()));
        let side = shared.admission.side();
        if skipped {
            return ResponseFuture::passed(self.inner.call(request), None);
        }
        let (mut parts, body) = request.into_parts();
        match shared.admission.admit(&mut Call::new(side, &mut parts)) {
            // The light path: the inner future as it is, nothing watched.
            Decision::Pass => {
                ResponseFuture::passed(self.inner.call(Request::from_parts(parts, body)), None)
            }
            Decision::Admit(Admitted {
                observer: None,
                head,
            }) => ResponseFuture::passed(self.inner.call(Request::from_parts(parts, body)), head),
            Decision::Wait(wait) => {
                // The ready service goes with the call; this one gets a clone.
                let clone = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(shared.clone(), wait, (parts, body), service)
            }
            Decision::Admit(Admitted {
                observer: Some(observer),
                head,
            }) => {
                let request = Request::from_parts(parts, body);
                ResponseFuture::watched(side, &mut self.inner, request, observer, head)
            }
            decision @ Decision::Reject(_) => {
                let request = Request::from_parts(parts, body);
                ResponseFuture::called(side, &mut self.inner, request, decision)
            }
        }
    }
}
