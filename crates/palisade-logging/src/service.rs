//! The service: starts an RPC's log record and hands the response to the observed future.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use palisade_core::{ObservedBody, Side};
use tower_service::Service;

use crate::{
    body::ResponseBody,
    future::ResponseFuture,
    layer::{ClientSide, LoggingLayer, ServerSide},
    rpc::{Finish, RequestMessages, Rpc},
};

/// Logs each RPC through its inner service; made by [`LoggingLayer`], see the
/// [crate docs](crate).
///
/// On a server (`K` = [`ServerSide`]) the inner service receives request bodies wrapped in an
/// [`ObservedBody`] that counts request messages; on a client (`K` = [`ClientSide`]) requests
/// pass unchanged.
pub struct Logging<S, K = ServerSide> {
    inner: S,
    layer: LoggingLayer<K>,
}

impl<S, K> Logging<S, K> {
    /// Wraps `inner` with the configuration of `layer`.
    pub fn new(inner: S, layer: LoggingLayer<K>) -> Self {
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

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for Logging<S, ServerSide>
where
    S: Service<Request<ObservedBody<B, RequestMessages>>, Response = Response<ResBody>>,
    S::Error: 'static,
    ResBody: http_body::Body,
    ResBody::Error: 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match Rpc::begin(self.layer.config(), &request) {
            None => {
                let request = request.map(|body| ObservedBody::ended(body, Side::Server));
                ResponseFuture::passthrough(self.inner.call(request), Side::Server)
            }
            Some((rpc, span)) => {
                let counter = RequestMessages(Arc::clone(&rpc));
                let request =
                    request.map(|body| ObservedBody::request(body, Side::Server, counter));
                let future = span.in_scope(|| self.inner.call(request));
                ResponseFuture::observed(future, span, Side::Server, Finish(rpc))
            }
        }
    }
}

impl<S, B, ResBody> Service<Request<B>> for Logging<S, ClientSide>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: 'static,
    ResBody: http_body::Body,
    ResBody::Error: 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match Rpc::begin(self.layer.config(), &request) {
            None => ResponseFuture::passthrough(self.inner.call(request), Side::Client),
            Some((rpc, span)) => {
                let future = span.in_scope(|| self.inner.call(request));
                ResponseFuture::observed(future, span, Side::Client, Finish(rpc))
            }
        }
    }
}

impl<S: Clone, K> Clone for Logging<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for Logging<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Logging")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}
