//! The traced response body: the RPC's context is current while each frame is polled, and the
//! span ends with the stream.

use std::{
    pin::Pin,
    task::{Context as TaskContext, Poll},
};

use http_body::{Body, Frame, SizeHint};
use opentelemetry::Context;
use palisade_core::{ObservedBody, Side};
use pin_project_lite::pin_project;

use crate::span::SpanEnd;

pin_project! {
    /// The response body of a traced RPC.
    ///
    /// It forwards every frame of `B` unchanged. While a frame is polled, the RPC's
    /// OpenTelemetry context is current (so a streaming handler producing its messages, and
    /// everything it calls, runs inside the span), and the span ends when the stream does —
    /// after the last message and the trailers, or when the body is dropped early.
    ///
    /// See the [crate docs](crate) for an example.
    pub struct ResponseBody<B> {
        #[pin]
        inner: ObservedBody<B, SpanEnd>,
        cx: Option<Context>,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn traced(inner: ObservedBody<B, SpanEnd>, cx: Option<Context>) -> Self {
        Self { inner, cx }
    }

    pub(crate) fn untraced(inner: B, side: Side) -> Self {
        Self {
            inner: ObservedBody::ended(inner, side),
            cx: None,
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        self.inner.get_ref()
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
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let _guard = this.cx.as_ref().map(|otel| otel.clone().attach());
        let frame = this.inner.as_mut().poll_frame(cx);
        if this.inner.has_ended() {
            // The span has ended: nothing later needs its context.
            *this.cx = None;
        }
        frame
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
        Self::untraced(B::default(), Side::Server)
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .field("traced", &self.cx.is_some())
            .finish()
    }
}
