//! The response and request bodies of the observing middleware.

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{Counts, Observer, Policy, Scope, Side};
use crate::{
    body::{ObservedBody, Role, classify},
    counter::MessageCounter,
    future::OnUnwind,
    outcome::{Outcome, Source},
};

pin_project! {
    /// The response body of [`Observe`](super::Observe): every frame of `B` forwarded unchanged
    /// (same bytes, same trailers, same `size_hint` and `is_end_stream`), each gRPC message
    /// told to the observer, and the end of the RPC told exactly once — from the trailers'
    /// `grpc-status` (`Unknown` when the stream ends without one), the body's error, a panic
    /// through its poll (`Internal`), or its drop before the end (`Cancelled`; on a server
    /// while the thread unwinds, `Internal`).
    ///
    /// The type does not depend on whether the RPC is watched: a passed-through or already
    /// ended RPC's body only forwards. The policy's scope is entered around each poll of `B`
    /// until the end, and around the drop of `B` when this body is dropped before the end
    /// (after the observer heard it), never around the observer's callbacks (the request
    /// observer has no such guarantee: see [`Scope`]).
    pub struct ResponseBody<B, P: Policy> {
        // `None` only while this body is dropped.
        #[pin]
        inner: Option<B>,
        observer: Option<P::Observer>,
        scope: Option<P::Scope>,
        counter: MessageCounter,
        bytes: u64,
        side: Side,
    }

    impl<B, P: Policy> PinnedDrop for ResponseBody<B, P> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if let Some(observer) = this.observer.take() {
                let counts = Counts { messages: this.counter.messages(), bytes: *this.bytes };
                observer.on_end(Outcome::dropped(*this.side, std::thread::panicking()), counts);
            }
            if let Some(scope) = this.scope.as_ref() {
                let _entered = scope.enter();
                this.inner.set(None);
            }
        }
    }
}

impl<B, P: Policy> ResponseBody<B, P> {
    /// A body that only forwards: the RPC was not watched, or already ended at the head.
    pub fn passed(inner: B) -> Self {
        Self {
            inner: Some(inner),
            observer: None,
            scope: None,
            counter: MessageCounter::default(),
            bytes: 0,
            side: Side::Server,
        }
    }

    /// A body whose end `observer` hears (when there is one), `scope` entered around it.
    pub(crate) fn watching(
        inner: B,
        side: Side,
        observer: Option<P::Observer>,
        scope: Option<P::Scope>,
    ) -> Self {
        Self {
            inner: Some(inner),
            observer,
            scope,
            counter: MessageCounter::default(),
            bytes: 0,
            side,
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        self.inner
            .as_ref()
            .expect("the inner body is only taken in the drop")
    }

    /// Whether the end has been reported (or the RPC was never watched).
    pub fn has_ended(&self) -> bool {
        self.observer.is_none()
    }
}

impl<B, P> Body for ResponseBody<B, P>
where
    B: Body,
    B::Error: 'static,
    P: Policy,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let Some(mut inner) = this.inner.as_pin_mut() else {
            unreachable!("the inner body is only taken in the drop")
        };
        if this.observer.is_none() {
            return inner.poll_frame(cx);
        }
        let frame = {
            // Declared first, dropped last: a panic in the inner body leaves the scope, then
            // ends the RPC here while it unwinds.
            let _unwind = OnUnwind {
                counts: Counts {
                    messages: this.counter.messages(),
                    bytes: *this.bytes,
                },
                observer: this.observer,
            };
            let _entered = this.scope.as_ref().map(Scope::enter);
            ready!(inner.as_mut().poll_frame(cx))
        };
        let Some(observer) = this.observer.as_mut() else {
            return Poll::Ready(frame);
        };
        let role = Role::Response(*this.side);
        let ended = inner.is_end_stream();
        let outcome = if observer.reads_outcome() {
            classify(&frame, ended, role, this.counter, this.bytes, observer)
        } else {
            // Only the end matters: nothing counted, no status read.
            match &frame {
                Some(Ok(frame)) if !ended && !frame.is_trailers() => None,
                Some(Err(error)) => Some(Outcome::from_error(
                    error,
                    Source::BodyError,
                    this.side.error_fallback(),
                )),
                _ => Some(Outcome::unread()),
            }
        };
        if let Some(outcome) = outcome {
            let counts = Counts {
                messages: this.counter.messages(),
                bytes: *this.bytes,
            };
            if let Some(observer) = this.observer.take() {
                observer.on_end(outcome, counts);
            }
            this.scope.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), B::size_hint)
    }
}

impl<B: Default, P: Policy> Default for ResponseBody<B, P> {
    /// An ended body over `B::default()`: what a layer outside answers with when it rejects.
    fn default() -> Self {
        Self::passed(B::default())
    }
}

impl<B: fmt::Debug, P: Policy> fmt::Debug for ResponseBody<B, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .field("ended", &self.observer.is_none())
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// The request body the inner service of [`Observe`](super::Observe) gets (unless the
    /// layer maps it, see [`MapRequestBody`]): every frame forwarded unchanged, each gRPC
    /// message told to the policy's request observer when the policy asked for one
    /// ([`Watch::with_request`](super::Watch::with_request)), its end told once (`Ok` at the
    /// end of stream, `Cancelled` when dropped before, `Internal` for a panic through its poll).
    pub struct RequestBody<B, P: Policy> {
        #[pin]
        inner: ObservedBody<B, P::RequestObserver>,
    }
}

impl<B, P: Policy> RequestBody<B, P> {
    /// A request body that only forwards.
    pub fn passed(inner: B) -> Self {
        Self {
            inner: ObservedBody::ended(inner, Side::Server),
        }
    }

    /// A request body watched by `observer`.
    pub fn observed(inner: B, side: Side, observer: P::RequestObserver) -> Self {
        Self {
            inner: ObservedBody::request(inner, side, observer),
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        self.inner.get_ref()
    }

    /// Whether the end has been reported (or the body was never watched).
    pub fn has_ended(&self) -> bool {
        self.inner.has_ended()
    }
}

impl<B, P> Body for RequestBody<B, P>
where
    B: Body,
    B::Error: 'static,
    P: Policy,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Default, P: Policy> Default for RequestBody<B, P> {
    fn default() -> Self {
        Self::passed(B::default())
    }
}

impl<B: fmt::Debug, P: Policy> fmt::Debug for RequestBody<B, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody")
            .field("inner", &self.inner)
            .finish()
    }
}

/// What the inner service of [`Observe`](super::Observe) gets as its request body: the
/// layer's `M` parameter.
pub trait MapRequestBody<B, P: Policy> {
    /// The body handed to the inner service.
    type Body;

    /// Makes the inner service's body from the request's own, watched by `observer` when the
    /// policy asked for one ([`Watch::with_request`](super::Watch::with_request)).
    fn map_body(body: B, side: Side, observer: Option<P::RequestObserver>) -> Self::Body;
}

/// The inner service gets the [`RequestBody`] itself, unboxed (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct ObservedRequest;

impl<B, P: Policy> MapRequestBody<B, P> for ObservedRequest {
    type Body = RequestBody<B, P>;

    fn map_body(body: B, side: Side, observer: Option<P::RequestObserver>) -> Self::Body {
        match observer {
            Some(observer) => RequestBody::observed(body, side, observer),
            None => RequestBody::passed(body),
        }
    }
}

/// The inner service gets the request's own body, unchanged, so a layer fits any service
/// (a `tonic::transport::Channel` among them); for policies that never watch request bodies
/// (their request observer is `()`).
#[derive(Clone, Copy, Debug, Default)]
pub struct UnchangedRequest;

impl<B, P: Policy<RequestObserver = ()>> MapRequestBody<B, P> for UnchangedRequest {
    type Body = B;

    fn map_body(body: B, _: Side, _: Option<()>) -> B {
        body
    }
}
