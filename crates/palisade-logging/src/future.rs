//! The response future: runs the inner future inside the RPC's span.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::Response;
use palisade_core::{ObservedFuture, Side};
use pin_project_lite::pin_project;
use tracing::Span;

use crate::{
    body::{InSpan, ResponseBody},
    rpc::Finish,
};

pin_project! {
    /// The response future of [`Logging`](crate::Logging): polls the inner future inside the
    /// RPC's span; the RPC's finish event is written when the response body ends (or at once
    /// for a trailers-only response, an error, or a drop).
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Observed {
            #[pin]
            inner: ObservedFuture<InSpanFuture<F>, Finish>,
        },
        Passthrough {
            #[pin]
            inner: F,
            side: Side,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn observed(inner: F, span: Span, side: Side, finish: Finish) -> Self {
        let inner = InSpanFuture { inner, span };
        Self {
            state: State::Observed {
                inner: ObservedFuture::new(inner, side, finish),
            },
        }
    }

    pub(crate) fn passthrough(inner: F, side: Side) -> Self {
        Self {
            state: State::Passthrough { inner, side },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
    B::Error: 'static,
    E: 'static,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Observed { inner } => {
                let result = ready!(inner.poll(cx));
                Poll::Ready(result.map(|response| response.map(ResponseBody::observed)))
            }
            StateProj::Passthrough { inner, side } => {
                let side = *side;
                let result = ready!(inner.poll(cx));
                Poll::Ready(
                    result
                        .map(|response| response.map(|body| ResponseBody::passthrough(body, side))),
                )
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Observed { inner } => f
                .debug_struct("ResponseFuture")
                .field("inner", inner)
                .finish(),
            State::Passthrough { side, .. } => f
                .debug_struct("ResponseFuture")
                .field("passthrough", side)
                .finish_non_exhaustive(),
        }
    }
}

pin_project! {
    /// The inner future polled inside the RPC's span; hands the span on to the response body.
    /// It sits inside the [`ObservedFuture`], so an end at the headers is written after the
    /// span is exited.
    pub(crate) struct InSpanFuture<F> {
        #[pin]
        inner: F,
        span: Span,
    }
}

impl<F, B, E> Future for InSpanFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<InSpan<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.span.enter();
            ready!(this.inner.poll(cx))
        };
        let span = std::mem::replace(this.span, Span::none());
        Poll::Ready(result.map(|response| response.map(|inner| InSpan { inner, span })))
    }
}
