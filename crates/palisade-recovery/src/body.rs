//! [`ResponseBody`]: the response body, with a panic while it is polled answered by
//! `INTERNAL` trailers.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    task::{Context, Poll},
};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::report::{PanicStage, Watch, quietly, rejection};

pin_project! {
    #[project = StateProj]
    enum State<B> {
        // The inner body, being streamed.
        Streaming { #[pin] body: B },
        // Nothing more: a trailers-only answer's empty body, or after the trailers.
        Done,
    }
}

pin_project! {
    /// The response body of [`Recovery`](crate::Recovery): the inner body's frames unchanged;
    /// if polling it panics, the inner body is dropped and the stream ends with the trailers
    /// `grpc-status: 13`, `grpc-message: internal error` after whatever was sent already.
    ///
    /// Its [`Default`] is the empty body of a trailers-only answer.
    pub struct ResponseBody<B> {
        #[pin]
        state: State<B>,
        watch: Option<Watch>,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(body: B, watch: Option<Watch>) -> Self {
        ResponseBody {
            state: State::Streaming { body },
            watch,
        }
    }
}

impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        ResponseBody {
            state: State::Done,
            watch: None,
        }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        match this.state.as_mut().project() {
            StateProj::Streaming { body } => {
                let Some(watch) = this.watch.as_ref() else {
                    // Skipped: a panic goes on unwinding, as without this layer.
                    return body.poll_frame(cx);
                };
                // Unwind safety: if `poll_frame` panics, the body it panicked in is dropped
                // just below and never polled again, so no broken invariant of it can be
                // observed; nothing else is borrowed across the call (`cx` is only read).
                match catch_unwind(AssertUnwindSafe(|| body.poll_frame(cx))) {
                    Ok(polled) => polled,
                    Err(payload) => {
                        watch.report(PanicStage::ResponseBody, payload);
                        // Dropping a body that panicked may panic again: not let out.
                        let mut state = this.state;
                        quietly(|| state.set(State::Done));
                        *this.watch = None;
                        Poll::Ready(Some(Ok(Frame::trailers(internal_trailers()))))
                    }
                }
            }
            StateProj::Done => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Streaming { body } => body.is_end_stream(),
            State::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Streaming { body } => body.size_hint(),
            State::Done => SizeHint::with_exact(0),
        }
    }
}

fn internal_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(2);
    rejection().write_trailers(&mut trailers);
    trailers
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Streaming { .. } => "streaming",
            State::Done => "done",
        };
        f.debug_struct("ResponseBody")
            .field("state", &state)
            .field("watched", &self.watch.is_some())
            .finish()
    }
}
