//! The trace service.

use std::{
    any::Any,
    fmt,
    task::{Context as TaskContext, Poll},
};

use http::{Request, Response};
use opentelemetry::{global::BoxedTracer, trace::Tracer};
use palisade_core::Side;
use tower_service::Service;

use crate::{body::ResponseBody, future::ResponseFuture, layer::TraceLayer, span};

/// Traces the gRPC calls going through an inner service; made by [`TraceLayer`].
///
/// See the [crate docs](crate) for an example.
pub struct TraceService<S, T = BoxedTracer> {
    inner: S,
    layer: TraceLayer<T>,
}

impl<S, T> TraceService<S, T> {
    /// Traces the calls of `inner` as `layer` is configured.
    pub fn new(inner: S, layer: TraceLayer<T>) -> Self {
        Self { inner, layer }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the service, returning the inner one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, T, ReqBody, ResBody> Service<Request<ReqBody>> for TraceService<S, T>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body,
    S::Error: Any,
    T: Tracer,
    T::Span: Send + Sync + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let config = &*self.layer.config;
        let side = config.side;
        let Some(started) = span::start(config, self.layer.tracer.get(), &request) else {
            return ResponseFuture::untraced(self.inner.call(request), side);
        };
        if side == Side::Client {
            config
                .propagation
                .inject(&started.cx, request.headers_mut());
        }
        let future = {
            let _guard = started.cx.clone().attach();
            self.inner.call(request)
        };
        ResponseFuture::traced(future, side, started)
    }
}

impl<S: Clone, T> Clone for TraceService<S, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, T> fmt::Debug for TraceService<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceService")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}
