//! [`ResponseFuture`]: the response future, with a panic while it is polled answered as a
//! trailers-only `INTERNAL`.

use std::{
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    task::{Context, Poll},
};

use http::Response;
use pin_project_lite::pin_project;

use crate::{
    body::ResponseBody,
    report::{PanicStage, Watch, quietly, rejection},
};

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        // The inner service's future.
        Running { #[pin] future: F },
        // The inner service's `call` panicked (reported already): answer at the first poll.
        Panicked,
        // Answered after a panic.
        Done,
    }
}

pin_project! {
    /// The response future of [`Recovery`](crate::Recovery): the inner future's response with
    /// its body in a [`ResponseBody`]; if the inner `call` or a poll of its future panics, a
    /// trailers-only `INTERNAL` (`internal error`, marked as rejected by `recovery`).
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
        watch: Option<Watch>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn running(future: F, watch: Option<Watch>) -> Self {
        ResponseFuture {
            kind: Kind::Running { future },
            watch,
        }
    }

    pub(crate) fn panicked() -> Self {
        ResponseFuture {
            kind: Kind::Panicked,
            watch: None,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        match this.kind.as_mut().project() {
            KindProj::Running { mut future } => {
                if this.watch.is_none() {
                    // Skipped: a panic goes on unwinding, as without this layer.
                    return future.poll(cx).map(|result| {
                        result.map(|response| response.map(|body| ResponseBody::new(body, None)))
                    });
                }
                let watch = &mut *this.watch;
                // Unwind safety: if `poll` panics, the future it panicked in is dropped just
                // below and never polled again, so no broken invariant of it can be observed;
                // the watch is only taken once the inner future has answered, and `cx` is
                // only read.
                let polled = catch_unwind(AssertUnwindSafe(|| {
                    future.as_mut().poll(cx).map(|result| {
                        result.map(|response| {
                            response.map(|body| ResponseBody::new(body, watch.take()))
                        })
                    })
                }));
                match polled {
                    // After `Ready` the watch is gone: the future is not polled again (and if
                    // it were, the inner future would answer for itself, uncaught).
                    Ok(polled) => polled,
                    Err(payload) => {
                        if let Some(watch) = this.watch.take() {
                            watch.report(PanicStage::ResponseFuture, payload);
                        }
                        // Dropping a future that panicked may panic again: not let out.
                        let mut kind = this.kind;
                        quietly(|| kind.set(Kind::Done));
                        Poll::Ready(Ok(rejection().into_response()))
                    }
                }
            }
            KindProj::Panicked => {
                this.kind.set(Kind::Done);
                Poll::Ready(Ok(rejection().into_response()))
            }
            KindProj::Done => panic!("`ResponseFuture` polled after it completed"),
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Running { .. } => "running",
            Kind::Panicked => "panicked",
            Kind::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .field("watched", &self.watch.is_some())
            .finish()
    }
}
