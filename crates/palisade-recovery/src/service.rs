//! [`Recovery`]: the service the layer makes.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower_service::Service;

use crate::{
    body::ResponseBody,
    future::ResponseFuture,
    report::{PanicStage, Shared, Watch},
};

/// Answers a panic of the inner service — in its `call`, its response future or its response
/// body — with `INTERNAL` for that RPC alone; made by [`RecoveryLayer`](crate::RecoveryLayer).
/// See the [crate docs](crate).
///
/// A panic in the inner service's `poll_ready` is not caught: there is no RPC to answer yet.
#[derive(Clone, Debug)]
pub struct Recovery<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Recovery<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Recovery { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, this wrapper gone.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Recovery<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if self.shared.skips(&request) {
            return ResponseFuture::running(self.inner.call(request), None);
        }
        let watch = Watch {
            site: self.shared.site(&request),
            shared: Arc::clone(&self.shared),
        };
        // Unwind safety: a panic in `call` leaves no future behind (nothing of the call is
        // polled again); the inner service itself is called again for later RPCs, as it
        // would be without this layer by a server that survives the panic (tonic's routes
        // keep no per-call state in the service: each call gets its own future). A service
        // whose own state a panic in `call` can leave broken should not be behind this layer
        // for that method: `skip` it.
        let mut watch = Some(watch);
        let called = catch_unwind(AssertUnwindSafe(|| {
            // The watch is taken once `call` has returned: after a panic it is still here.
            ResponseFuture::running(self.inner.call(request), watch.take())
        }));
        match (called, watch) {
            (Ok(future), _) => future,
            (Err(payload), watch) => {
                if let Some(watch) = watch {
                    watch.report(PanicStage::Call, payload);
                }
                ResponseFuture::panicked()
            }
        }
    }
}
