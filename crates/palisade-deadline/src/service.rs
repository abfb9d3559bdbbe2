//! The service: reads, caps, sends and enforces the deadline of each call.

use std::{
    fmt,
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use palisade_core::{
    Code, Method, Rejection,
    deadline::{grpc_timeout, timeout_value},
    headers::GRPC_TIMEOUT,
    side::{OnSide, Side},
};
use tokio::time::Instant;
use tower_service::Service;

use crate::{Deadline, DeadlineLayer, NAME, ResponseBody, ResponseFuture};

/// The message of a `DEADLINE_EXCEEDED` answer.
pub(crate) const EXCEEDED: &str = "deadline exceeded";

pub(crate) fn exceeded() -> Rejection {
    Rejection::new(Code::DeadlineExceeded, EXCEEDED).by(NAME)
}

/// Enforces (server) or sends and enforces (client) the deadline of every call through the
/// inner service; made by [`DeadlineLayer`].
///
/// Named after tower's `Timeout`, which does the same job for any request, since
/// [`Deadline`] is the value a handler reads.
pub struct Timeout<S, K> {
    inner: S,
    layer: DeadlineLayer<K>,
}

impl<S, K> Timeout<S, K> {
    /// Wraps `inner` with the layer's configuration.
    pub fn new(inner: S, layer: DeadlineLayer<K>) -> Self {
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

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K> Clone for Timeout<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, K: OnSide> fmt::Debug for Timeout<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

/// What one call's deadline is, decided before the inner `call`.
enum Plan {
    /// No deadline, or skipped: passed through.
    Pass,
    /// Answered here: a malformed or passed deadline.
    Reject(Rejection),
    /// Enforced at this deadline.
    Enforce(Deadline),
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for Timeout<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    K: OnSide,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let config = &*self.layer.config;
        let skipped = config
            .skip
            .as_ref()
            .is_some_and(|skip| skip.matches(Method::from_uri(request.uri()).as_ref()));
        let plan = if skipped {
            Plan::Pass
        } else {
            match K::SIDE {
                Side::Server => self.server_plan(&mut request),
                Side::Client => self.client_plan(&mut request),
            }
        };
        match plan {
            Plan::Pass => ResponseFuture::passed(self.inner.call(request)),
            Plan::Reject(rejection) => ResponseFuture::rejected(rejection),
            Plan::Enforce(deadline) => {
                let server = K::SIDE == Side::Server;
                let future = {
                    let _entered = server.then(|| deadline.enter());
                    self.inner.call(request)
                };
                ResponseFuture::enforced(future, deadline, server)
            }
        }
    }
}

impl<S, K> Timeout<S, K> {
    /// The caller's `grpc-timeout` capped by the max, or the default; a malformed one is
    /// answered `INVALID_ARGUMENT`, a zero one `DEADLINE_EXCEEDED`.
    fn server_plan<B>(&self, request: &mut Request<B>) -> Plan {
        let config = &*self.layer.config;
        let headers = request.headers_mut();
        let timeout = match grpc_timeout(headers) {
            Some(timeout) => match config.max {
                Some(max) if timeout > max => {
                    headers.insert(GRPC_TIMEOUT, timeout_value(max));
                    max
                }
                _ => timeout,
            },
            None if headers.contains_key(GRPC_TIMEOUT) => {
                return Plan::Reject(
                    Rejection::new(Code::InvalidArgument, "malformed grpc-timeout").by(NAME),
                );
            }
            None => match config.default {
                Some(default) => {
                    headers.insert(GRPC_TIMEOUT, timeout_value(default));
                    default
                }
                None => return Plan::Pass,
            },
        };
        if timeout.is_zero() {
            return Plan::Reject(exceeded());
        }
        let deadline = Deadline::after(timeout);
        request.extensions_mut().insert(deadline);
        Plan::Enforce(deadline)
    }

    /// The earliest of the request's own `grpc-timeout`, the method's default and the
    /// current deadline, less the margin: sent, and enforced here; a call with nothing left
    /// is not sent.
    fn client_plan<B>(&self, request: &mut Request<B>) -> Plan {
        let config = &*self.layer.config;
        let own = grpc_timeout(request.headers());
        let default = config.default_for(request.uri().path());
        let inherited = crate::current();
        if own.is_none() && default.is_none() && inherited.is_none() {
            return Plan::Pass;
        }
        let now = Instant::now();
        let left = [own, default]
            .into_iter()
            .flatten()
            .chain(inherited.map(|deadline| deadline.instant().saturating_duration_since(now)))
            .min()
            .unwrap_or(Duration::ZERO);
        let sent = left.saturating_sub(config.margin);
        if sent.is_zero() {
            return Plan::Reject(exceeded());
        }
        request
            .headers_mut()
            .insert(GRPC_TIMEOUT, timeout_value(sent));
        Plan::Enforce(Deadline::after_from(now, sent))
    }
}
