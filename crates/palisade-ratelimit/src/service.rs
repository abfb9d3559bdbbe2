//! The server service: one lookup of the path, one token per limit, a rejection or the call.

use std::{
    fmt,
    marker::PhantomData,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::{
    future::{Deciding, ResponseFuture},
    key::RequestInfo,
    layer::RateLimitLayer,
    mode::{Dispatch, Mode, Plain},
    shared::{Shared, Step, Tally},
};

/// Rate limits the calls to the inner service, answering calls over their quota with a
/// trailers-only rejection; made by [`RateLimitLayer`] (see the [crate docs](crate)).
///
/// In the default [`Plain`] mode the inner service gets the request as it came and its
/// response goes back as it is; in [`Metered`](crate::Metered) mode bodies are wrapped for
/// per-message limits. The inner service must be `Clone` (tonic's routes are): a backend that
/// decides later keeps a ready clone until it does.
pub struct RateLimit<S, M = Plain> {
    inner: S,
    shared: Arc<Shared>,
    _mode: PhantomData<fn() -> M>,
}

impl<S, M> RateLimit<S, M> {
    /// Wraps `inner` with the layer's limits.
    pub fn new(inner: S, layer: RateLimitLayer<M>) -> Self {
        Self {
            inner,
            shared: layer.shared,
            _mode: PhantomData,
        }
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

impl<S: Clone, M> Clone for RateLimit<S, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            _mode: PhantomData,
        }
    }
}

impl<S: fmt::Debug, M> fmt::Debug for RateLimit<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

impl<S, M, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S, M>
where
    M: Mode,
    S: Service<Request<M::RequestBody<ReqB>>, Response = Response<ResB>> + Clone,
    ReqB: Body,
    ResB: Default,
{
    type Response = Response<M::ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let Self { inner, shared, .. } = self;
        let lookup = shared.table.lookup(&**shared, request.uri().path());
        let entry = lookup.entry();
        if entry.plan.is_empty() {
            return ResponseFuture::called(M::pass(request, inner), None);
        }
        let mut tally = Tally::default();
        match shared.run(entry, &RequestInfo::new(&request), 0, &mut tally) {
            Step::Done => {
                let call = Dispatch {
                    shared,
                    lookup: &lookup,
                    tally: &tally,
                    request,
                };
                let (future, extra) = M::dispatch(call, inner);
                ResponseFuture::called(future, extra)
            }
            Step::Denied { decision, .. } => {
                shared.refund(entry, &RequestInfo::new(&request), &mut tally);
                entry.counters.rejected.increment(1);
                ResponseFuture::rejected(shared.rejection(Some(&decision)))
            }
            Step::NoKey => {
                shared.refund(entry, &RequestInfo::new(&request), &mut tally);
                entry.counters.rejected.increment(1);
                ResponseFuture::rejected(shared.rejection(None))
            }
            Step::Pending { pos, future } => {
                // The ready service goes with the call; this one gets a clone.
                let clone = inner.clone();
                let service = std::mem::replace(inner, clone);
                ResponseFuture::deciding(Box::new(Deciding {
                    shared: shared.clone(),
                    entry: lookup.to_ref(),
                    pos,
                    future,
                    tally,
                    request: Some(request),
                    service,
                }))
            }
        }
    }
}
