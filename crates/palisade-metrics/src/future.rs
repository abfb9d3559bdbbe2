//! The response future.

use std::{
    any::Any,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::Response;
use palisade_core::{ObservedBody, ObservedFuture, Side};
use pin_project_lite::pin_project;

use crate::body::{ResponseBody, ResponseObserver};

pin_project! {
    /// The response future of [`Metrics`](crate::Metrics): the inner future, observed until
    /// the end of the response stream (or passed through for a skipped RPC).
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Observed { #[pin] inner: ObservedFuture<F, ResponseObserver> },
        Skipped { #[pin] inner: F, side: Side },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn observed(inner: ObservedFuture<F, ResponseObserver>) -> Self {
        Self {
            kind: Kind::Observed { inner },
        }
    }

    pub(crate) fn skipped(inner: F, side: Side) -> Self {
        Self {
            kind: Kind::Skipped { inner, side },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Any,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Observed { inner } => inner.poll(cx),
            KindProj::Skipped { inner, side } => {
                let side = *side;
                let result = ready!(inner.poll(cx));
                Poll::Ready(
                    result.map(|response| response.map(|body| ObservedBody::ended(body, side))),
                )
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Observed { .. } => "Observed",
            Kind::Skipped { .. } => "Skipped",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}
