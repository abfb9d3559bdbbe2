//! The layer and the service of the observing middleware.

use std::{
    any::Any,
    fmt,
    marker::PhantomData,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::{
    Counts, MapRequestBody, ObservedRequest, Policy, ResponseBody, ResponseFuture, Scope, Watch,
};
use crate::{call::Call, future::OnUnwind, matcher::Matcher, method::Method};

/// Makes [`Observe`] services watching RPCs with the policy `P`; see the
/// [module docs](super) for an example.
///
/// The layer holds the policy and the skip matcher in one `Arc`: cloning the layer or making
/// services from it shares them. `M` says what the inner service gets as its request body:
/// the [`RequestBody`](super::RequestBody) itself by default ([`ObservedRequest`]).
pub struct ObserveLayer<P, M = ObservedRequest> {
    shared: Arc<Shared<P>>,
    _map: PhantomData<fn() -> M>,
}

struct Shared<P> {
    policy: P,
    skip: Option<Matcher>,
}

impl<P: Policy> ObserveLayer<P> {
    /// A layer watching RPCs with `policy`.
    pub fn new(policy: P) -> Self {
        Self::with_skip(policy, None)
    }

    /// A layer watching RPCs with `policy`, except those `skip` selects: they pass through
    /// untouched, and the policy never sees them.
    pub fn with_skip(policy: P, skip: Option<Matcher>) -> Self {
        Self {
            shared: Arc::new(Shared { policy, skip }),
            _map: PhantomData,
        }
    }
}

impl<P, M> ObserveLayer<P, M> {
    /// The policy.
    pub fn policy(&self) -> &P {
        &self.shared.policy
    }

    /// The RPCs that are not watched.
    pub fn skip(&self) -> Option<&Matcher> {
        self.shared.skip.as_ref()
    }

    /// The same layer, handing the inner service its request body mapped by `M2`.
    pub fn map_request_body<M2>(self) -> ObserveLayer<P, M2> {
        ObserveLayer {
            shared: self.shared,
            _map: PhantomData,
        }
    }
}

impl<P, M> Clone for ObserveLayer<P, M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            _map: PhantomData,
        }
    }
}

impl<P: fmt::Debug, M> fmt::Debug for ObserveLayer<P, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserveLayer")
            .field("policy", &self.shared.policy)
            .field("skip", &self.shared.skip)
            .finish()
    }
}

impl<S, P, M> Layer<S> for ObserveLayer<P, M> {
    type Service = Observe<S, P, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe::new(inner, self.clone())
    }
}

/// Watches every RPC through the inner service that its policy `P` chooses; made by
/// [`ObserveLayer`].
pub struct Observe<S, P, M = ObservedRequest> {
    inner: S,
    layer: ObserveLayer<P, M>,
}

impl<S, P, M> Observe<S, P, M> {
    /// Wraps `inner`, watching with the layer's policy.
    pub fn new(inner: S, layer: ObserveLayer<P, M>) -> Self {
        Self { inner, layer }
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        self.layer.policy()
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

impl<S: Clone, P, M> Clone for Observe<S, P, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, P: fmt::Debug, M> fmt::Debug for Observe<S, P, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observe")
            .field("inner", &self.inner)
            .field("policy", self.policy())
            .finish_non_exhaustive()
    }
}

impl<S, P, M, ReqBody, ResBody> Service<Request<ReqBody>> for Observe<S, P, M>
where
    P: Policy,
    M: MapRequestBody<ReqBody, P>,
    S: Service<Request<M::Body>, Response = Response<ResBody>>,
    ResBody: http_body::Body,
    S::Error: Any,
{
    type Response = Response<ResponseBody<ResBody, P>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let shared = &*self.layer.shared;
        let side = shared.policy.side();
        let (mut parts, body) = request.into_parts();
        let skipped = shared
            .skip
            .as_ref()
            .is_some_and(|skip| skip.matches(Method::from_uri(&parts.uri).as_ref()));
        let watch = if skipped {
            None
        } else {
            let mut call = Call::new(side, &mut parts);
            let watch = shared.policy.start(&mut call);
            // Only a watched RPC pays for the record.
            if P::READS_FACTS && watch.is_some() {
                // No second lookup when `start` made or read the record itself.
                call.ensure_record();
            }
            watch
        };
        match watch {
            None => {
                let request = Request::from_parts(parts, M::map_body(body, side, None));
                ResponseFuture::passed(self.inner.call(request), side)
            }
            Some(Watch {
                observer,
                request,
                scope,
            }) => {
                let request = Request::from_parts(parts, M::map_body(body, side, request));
                let mut observer = Some(observer);
                let future = {
                    // Declared first, dropped last: a panic in the inner service's own `call`
                    // (an interceptor, a `service_fn` closure) leaves the scope, then ends the
                    // RPC here while it unwinds.
                    let _unwind = OnUnwind {
                        observer: &mut observer,
                        counts: Counts::default(),
                    };
                    let _entered = scope.enter();
                    self.inner.call(request)
                };
                ResponseFuture::watched(future, side, observer, scope)
            }
        }
    }
}
