//! [`Retry`], the layer's service.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use palisade_core::build::BoxError;
use tower_service::Service;

use crate::{
    future::{Attempts, ResponseFuture},
    layer::Shared,
};

/// Retries and hedges the calls to the service it wraps; made by
/// [`RetryLayer`](crate::RetryLayer).
///
/// The inner service takes tonic's [`Body`](tonic::body::Body), as a tonic `Channel` does:
/// each attempt's body is the call's replay buffer (the caller's body as it is, for a call
/// without a policy). It is cloned once per call that has a policy: each later attempt waits
/// for the clone's readiness and calls it.
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Retry<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Retry { inner, shared }
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

impl<S: Clone> Clone for Retry<S> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Retry<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<ResBody>> + Clone,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let Some(policy) = self.shared.policy_for(request.uri().path()) else {
            return ResponseFuture::passed(self.inner.call(request.map(tonic::body::Body::new)));
        };
        // The ready service makes the first attempt and is kept for the later ones; the
        // clone takes its place here (tower's clone-and-swap).
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let (attempts, first) = Attempts::start(service, request, policy, &self.shared);
        ResponseFuture::managed(first, attempts)
    }
}
