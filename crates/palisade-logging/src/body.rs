//! The response body: polled inside the RPC's span, observed to its end.

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use http_body::{Body, Frame, SizeHint};
use palisade_core::{ObservedBody, Side};
use pin_project_lite::pin_project;
use tracing::Span;

use crate::rpc::Finish;

pin_project! {
    /// The response body of [`Logging`](crate::Logging): forwards every frame unchanged, polls
    /// the inner body inside the RPC's span (so a streaming handler's events nest under it), and
    /// writes the finish event when the stream ends or the body is dropped.
    pub struct ResponseBody<B> {
        #[pin]
        inner: ObservedBody<InSpan<B>, Finish>,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn observed(inner: ObservedBody<InSpan<B>, Finish>) -> Self {
        Self { inner }
    }

    pub(crate) fn passthrough(body: B, side: Side) -> Self {
        let body = InSpan {
            inner: body,
            span: Span::none(),
        };
        Self {
            inner: ObservedBody::ended(body, side),
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner.get_ref().inner
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Error: 'static,
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

impl<B: Default> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::passthrough(B::default(), Side::Server)
    }
}

impl<B: fmt::Debug> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .finish()
    }
}

pin_project! {
    /// A body polled inside a span. It sits inside the [`ObservedBody`], so the finish event is
    /// written after the span is exited (beside it, not in it).
    #[derive(Debug)]
    pub(crate) struct InSpan<B> {
        #[pin]
        pub(crate) inner: B,
        pub(crate) span: Span,
    }
}

impl<B: Body> Body for InSpan<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if this.inner.is_end_stream() {
            // Nothing of the handler's runs any more: spare the subscriber an enter and exit.
            return this.inner.poll_frame(cx);
        }
        let _entered = this.span.enter();
        this.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
