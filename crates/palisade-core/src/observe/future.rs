//! The response future of the observing middleware.

use std::{
    any::Any,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::Response;
use pin_project_lite::pin_project;

use super::{Counts, Observer, Policy, ResponseBody, Scope, Side};
use crate::{
    code::Code,
    future::OnUnwind,
    outcome::{Outcome, Source},
};

pin_project! {
    /// The response future of [`Observe`](super::Observe): the inner future, watched (or
    /// passed through when the policy did not watch the RPC).
    ///
    /// A watched RPC's observer hears exactly one end:
    ///
    /// - a trailers-only response or an HTTP error status: when the future resolves, from the
    ///   head (a [`Rejection`](crate::Rejection)'s mark names the layer:
    ///   [`Outcome::rejected_by`]);
    /// - a response with no `grpc-status` whose body is already at its end
    ///   ([`is_end_stream`](http_body::Body::is_end_stream)): `Unknown`, from
    ///   [`Source::MissingStatus`], at once (hyper ends such a stream without polling the body);
    /// - any other response: when its [`ResponseBody`] ends;
    /// - an `Err` from the inner service: from the error ([`Source::ServiceError`]);
    /// - the future dropped before it resolved: `Cancelled` (or, on a server while the thread
    ///   unwinds, `Internal`), see [`Outcome::dropped`];
    /// - a panic unwinding through this future's poll: [`Outcome::panicked`].
    ///
    /// The policy's scope is entered around every poll of the inner future, and around its
    /// drop when this future is dropped before it resolved (after the observer heard the end,
    /// outside the scope), as `tracing::Instrumented` does.
    pub struct ResponseFuture<F, P: Policy> {
        // `None` only while this future is dropped.
        #[pin]
        inner: Option<F>,
        observer: Option<P::Observer>,
        scope: Option<P::Scope>,
        side: Side,
    }

    impl<F, P: Policy> PinnedDrop for ResponseFuture<F, P> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if let Some(observer) = this.observer.take() {
                let panicking = std::thread::panicking();
                observer.on_end(Outcome::dropped(*this.side, panicking), Counts::default());
            }
            if let Some(scope) = this.scope.as_ref() {
                let _entered = scope.enter();
                this.inner.set(None);
            }
        }
    }
}

impl<F, P: Policy> ResponseFuture<F, P> {
    pub(crate) fn passed(inner: F, side: Side) -> Self {
        Self {
            inner: Some(inner),
            observer: None,
            scope: None,
            side,
        }
    }

    pub(crate) fn watched(
        inner: F,
        side: Side,
        observer: Option<P::Observer>,
        scope: P::Scope,
    ) -> Self {
        Self {
            inner: Some(inner),
            observer,
            scope: Some(scope),
            side,
        }
    }

    /// Whether this RPC is watched and its end not reported yet.
    pub fn is_watching(&self) -> bool {
        self.observer.is_some()
    }
}

impl<F, P, B, E> Future for ResponseFuture<F, P>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
    P: Policy,
    E: Any,
{
    type Output = Result<Response<ResponseBody<B, P>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.observer.is_none() && this.scope.is_none() {
            // Passed through (or polled after completion): nothing to watch or enter.
            let Some(inner) = this.inner.as_pin_mut() else {
                unreachable!("the inner future is only taken in the drop")
            };
            return inner
                .poll(cx)
                .map_ok(|response| response.map(ResponseBody::passed));
        }
        let result = {
            // A panic in the inner future ends the RPC here, while it unwinds; the scope guard,
            // declared after, is left first, so the observer hears it outside the scope.
            let _unwind = OnUnwind {
                observer: this.observer,
                counts: Counts::default(),
            };
            let _entered = this.scope.as_ref().map(Scope::enter);
            let Some(inner) = this.inner.as_pin_mut() else {
                unreachable!("the inner future is only taken in the drop")
            };
            ready!(inner.poll(cx))
        };
        let side = *this.side;
        let scope = this.scope.take();
        let mut observer = this.observer.take();
        // One construction of the response below, so that it is moved once.
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                if let Some(observer) = observer {
                    let outcome =
                        Outcome::from_error(&error, Source::ServiceError, side.error_fallback());
                    observer.on_end(outcome, Counts::default());
                }
                return Poll::Ready(Err(error));
            }
        };
        if let Some(watching) = observer.take() {
            if !watching.reads_outcome() {
                // Only the end matters: the head is not read.
                if response.body().is_end_stream() {
                    watching.on_end(Outcome::unread(), Counts::default());
                } else {
                    observer = Some(watching);
                }
            } else {
                match Outcome::from_response(&response) {
                    // No status at the head and nothing after it: hyper ends such a stream
                    // without polling the body, so its end is told here, not at a drop.
                    None if response.body().is_end_stream() => {
                        let outcome = Outcome::new(Code::Unknown, Source::MissingStatus);
                        watching.on_end(outcome, Counts::default());
                    }
                    Some(outcome) => watching.on_end(outcome, Counts::default()),
                    // The end is the body's to tell.
                    None => observer = Some(watching),
                }
            }
        }
        let scope = if observer.is_some() { scope } else { None };
        Poll::Ready(Ok(
            response.map(|body| ResponseBody::watching(body, side, observer, scope))
        ))
    }
}

impl<F, P: Policy> fmt::Debug for ResponseFuture<F, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("side", &self.side)
            .field("watching", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}
