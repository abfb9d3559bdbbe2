//! The traced response future.

use std::{
    any::Any,
    future::Future,
    pin::Pin,
    task::{Context as TaskContext, Poll, ready},
};

use http::Response;
use opentelemetry::Context;
use palisade_core::{ObservedFuture, Side};
use pin_project_lite::pin_project;

use crate::{
    body::ResponseBody,
    span::{SpanEnd, Started},
};

pin_project! {
    /// The response future of a [`TraceService`](crate::TraceService).
    ///
    /// While it is polled, the RPC's OpenTelemetry context is current (so the handler, the
    /// layers inside and any client call they make run inside the span); its response's body
    /// is a [`ResponseBody`] that ends the span at the end of the stream. A call the layer
    /// skips passes through untouched.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Untraced {
            #[pin]
            inner: F,
            side: Side,
        },
        Traced {
            #[pin]
            inner: ObservedFuture<F, SpanEnd>,
            cx: Option<Context>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn untraced(inner: F, side: Side) -> Self {
        Self {
            state: State::Untraced { inner, side },
        }
    }

    pub(crate) fn traced(inner: F, side: Side, started: Started) -> Self {
        let observer = SpanEnd::new(&started, side);
        Self {
            state: State::Traced {
                inner: ObservedFuture::new(inner, side, observer),
                cx: Some(started.cx),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
    E: Any,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Untraced { inner, side } => {
                let side = *side;
                let result = ready!(inner.poll(task));
                Poll::Ready(
                    result.map(|response| response.map(|body| ResponseBody::untraced(body, side))),
                )
            }
            StateProj::Traced { inner, cx } => {
                let result = {
                    let _guard = cx.as_ref().map(|otel| otel.clone().attach());
                    ready!(inner.poll(task))
                };
                let cx = cx.take();
                Poll::Ready(result.map(|response| {
                    response.map(|body| {
                        let cx = if body.has_ended() { None } else { cx };
                        ResponseBody::traced(body, cx)
                    })
                }))
            }
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let traced = matches!(self.state, State::Traced { .. });
        f.debug_struct("ResponseFuture")
            .field("traced", &traced)
            .finish_non_exhaustive()
    }
}
