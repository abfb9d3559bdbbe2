//! The server service.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use palisade_core::Method;
use tower_service::Service;

use crate::{
    claims::Claims,
    config::{Decision, Shared},
    future::ResponseFuture,
};

/// The service [`JwtAuthLayer`](crate::JwtAuthLayer) wraps around an inner service.
pub struct JwtAuth<S, C> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S, C> JwtAuth<S, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<C>>) -> Self {
        JwtAuth { inner, shared }
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

impl<S: Clone, C> Clone for JwtAuth<S, C> {
    fn clone(&self) -> Self {
        JwtAuth {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for JwtAuth<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuth")
            .field("inner", &self.inner)
            .field("config", &self.shared)
            .finish()
    }
}

impl<S, C, ReqBody, ResBody> Service<Request<ReqBody>> for JwtAuth<S, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
    C: Claims,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        let policy = if shared.has_rules {
            shared.policy(Method::from_request(&request).as_ref())
        } else {
            shared.policy(None)
        };
        match shared.decide(request.headers(), policy) {
            Decision::Pass => ResponseFuture::inner(self.inner.call(request)),
            Decision::Allow(claims) => {
                if !shared.forward_token {
                    request.headers_mut().remove(&shared.header);
                }
                request.extensions_mut().insert(claims);
                ResponseFuture::inner(self.inner.call(request))
            }
            Decision::Reject(reason) => {
                shared.record(reason, Method::from_request(&request).as_ref());
                ResponseFuture::ready(Ok(shared.rejections.get(reason).to_response()))
            }
            #[cfg(feature = "remote")]
            Decision::Wait {
                mut done,
                token,
                policy,
            } => {
                // The ready service goes with the request; this one is a fresh clone.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let shared = self.shared.clone();
                ResponseFuture::boxed(Box::pin(async move {
                    let _ = done.changed().await;
                    match shared.decide_after_fetch(&token, &policy) {
                        Decision::Allow(claims) => {
                            if !shared.forward_token {
                                request.headers_mut().remove(&shared.header);
                            }
                            request.extensions_mut().insert(claims);
                            inner.call(request).await
                        }
                        Decision::Reject(reason) => {
                            let method = Method::from_request(&request);
                            shared.record(reason, method.as_ref());
                            Ok(shared.rejections.get(reason).to_response())
                        }
                        Decision::Pass | Decision::Wait { .. } => inner.call(request).await,
                    }
                }))
            }
        }
    }
}
