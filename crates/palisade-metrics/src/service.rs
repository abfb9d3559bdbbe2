//! The service: looks the method up once, counts the start, observes both bodies.

use std::{
    fmt,
    marker::PhantomData,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use palisade_core::{Method, ObservedBody, ObservedFuture};
use tower_service::Service;

use crate::{
    body::{MapRequestBody, ObservedRequest, RequestObserver, ResponseBody, ResponseObserver},
    future::ResponseFuture,
    layer::{MetricsLayer, Shared},
};

/// Records metrics for every RPC through the inner service; made by [`MetricsLayer`].
pub struct Metrics<S, M = ObservedRequest> {
    inner: S,
    shared: Arc<Shared>,
    _body: PhantomData<fn() -> M>,
}

impl<S, M> Metrics<S, M> {
    /// Wraps `inner`, recording with the layer's handles.
    pub fn new(inner: S, layer: MetricsLayer<M>) -> Self {
        Self {
            inner,
            shared: layer.shared,
            _body: PhantomData,
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

impl<S: Clone, M> Clone for Metrics<S, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            _body: PhantomData,
        }
    }
}

impl<S: fmt::Debug, M> fmt::Debug for Metrics<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("inner", &self.inner)
            .field("side", &self.shared.side)
            .finish_non_exhaustive()
    }
}

impl<S, M, ReqBody, ResBody> Service<Request<ReqBody>> for Metrics<S, M>
where
    M: MapRequestBody<ReqBody>,
    S: Service<Request<M::Body>, Response = Response<ResBody>>,
    S::Error: 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        let side = shared.side;
        if let Some(skip) = &shared.skip
            && skip.matches(Method::from_request(&request).as_ref())
        {
            let request = request.map(|body| M::map_body(ObservedBody::ended(body, side)));
            return ResponseFuture::skipped(self.inner.call(request), side);
        }

        let method = shared.table.lookup(request.uri().path());
        method.started.increment(1);
        let start = quanta::Instant::now();
        let request = if shared.count_messages {
            let observer = RequestObserver::new(method.request_messages.clone());
            request.map(|body| M::map_body(ObservedBody::request(body, side, observer)))
        } else {
            request.map(|body| M::map_body(ObservedBody::ended(body, side)))
        };
        let future = self.inner.call(request);
        ResponseFuture::observed(ObservedFuture::new(
            future,
            side,
            ResponseObserver::new(method, start),
        ))
    }
}
