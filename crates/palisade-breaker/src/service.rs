//! [`Breaker`]: the service that admits, rejects and watches calls.

use std::{
    any::Any,
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use palisade_core::{ObservedBody, ObservedFuture};
use tower_service::Service;

use crate::{
    circuit::Permit,
    future::ResponseFuture,
    hook::{OnStateChange, State},
    registry::{Admission, Registry},
};

/// The response body of a [`Breaker`]: the inner body, watched to its end so the call's real
/// outcome reaches its circuit.
pub type ResponseBody<B, H = ()> = ObservedBody<B, Permit<H>>;

/// Circuit breaking around a gRPC service or client; made by
/// [`BreakerLayer`](crate::BreakerLayer).
///
/// A call on a closed circuit goes through and its outcome — read at the end of the response
/// stream — feeds the circuit. On an open circuit, or a half-open one whose probes are all in
/// flight, the call is answered at once with a trailers-only `UNAVAILABLE` ("circuit open")
/// without reaching the inner service. The inner service's error type is kept.
pub struct Breaker<S, H = ()> {
    inner: S,
    registry: Arc<Registry<H>>,
}

impl<S, H> Breaker<S, H> {
    pub(crate) fn new(inner: S, registry: Arc<Registry<H>>) -> Self {
        Breaker { inner, registry }
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

    /// The state of the circuit named `breaker`, if it exists.
    pub fn state(&self, breaker: &str) -> Option<State> {
        self.registry.state(breaker)
    }
}

impl<S, H, ReqBody, ResBody> Service<Request<ReqBody>> for Breaker<S, H>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Any,
    ResBody: Default + http_body::Body,
    H: OnStateChange,
{
    type Response = Response<ResponseBody<ResBody, H>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, H>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let side = self.registry.side();
        match self.registry.admit(&request) {
            Admission::Permitted(permit) => {
                // If `call` panics, the permit is dropped with it and gives back its slot.
                let probe = permit.watch();
                ResponseFuture::observed(
                    ObservedFuture::new(self.inner.call(request), side, permit),
                    probe,
                )
            }
            Admission::Rejected => ResponseFuture::rejected(),
            Admission::Skip => ResponseFuture::bypass(self.inner.call(request), side),
        }
    }
}

impl<S: Clone, H> Clone for Breaker<S, H> {
    fn clone(&self) -> Self {
        Breaker {
            inner: self.inner.clone(),
            registry: self.registry.clone(),
        }
    }
}

impl<S: fmt::Debug, H> fmt::Debug for Breaker<S, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("inner", &self.inner)
            .field("registry", &self.registry)
            .finish()
    }
}
