//! The response body: the inner body, cut at the deadline with `grpc-status: 4` trailers.

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Sleep, sleep_until};

use crate::{Deadline, service::exceeded};

pin_project! {
    /// The response body of [`Timeout`](crate::Timeout): the inner body's frames unchanged
    /// (with the deadline [current](crate::current) while it is polled on a server) until
    /// the deadline passes while the body waits; then the inner body is dropped and the
    /// stream ends with trailers `grpc-status: 4` (`DEADLINE_EXCEEDED`) after the messages
    /// already sent. The default body is empty (a rejection's).
    pub struct ResponseBody<B> {
        #[pin]
        inner: Option<B>,
        #[pin]
        sleep: Option<Sleep>,
        deadline: Option<Deadline>,
        server: bool,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn passed(inner: B) -> Self {
        Self {
            inner: Some(inner),
            sleep: None,
            deadline: None,
            server: false,
        }
    }

    pub(crate) fn enforced(inner: B, deadline: Deadline, server: bool) -> Self {
        Self {
            inner: Some(inner),
            sleep: None,
            deadline: Some(deadline),
            server,
        }
    }

    /// The inner body (`None` for a rejection, or once the deadline cut it).
    pub fn get_ref(&self) -> Option<&B> {
        self.inner.as_ref()
    }
}

impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        Self {
            inner: None,
            sleep: None,
            deadline: None,
            server: false,
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
        let Some(deadline) = *this.deadline else {
            return match this.inner.as_pin_mut() {
                Some(inner) => inner.poll_frame(cx),
                None => Poll::Ready(None),
            };
        };
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        // A stream that never waits is checked against the timer it made when it last waited.
        let passed = this
            .sleep
            .as_mut()
            .as_pin_mut()
            .is_some_and(|sleep| sleep.poll(cx).is_ready());
        let polled = if passed {
            Poll::Pending
        } else {
            let _entered = this.server.then(|| deadline.enter());
            inner.poll_frame(cx)
        };
        match polled {
            Poll::Ready(frame) => {
                if frame.is_none() {
                    this.inner.set(None);
                    this.sleep.set(None);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if this.sleep.is_none() {
                    this.sleep.set(Some(sleep_until(deadline.instant())));
                }
                let Some(sleep) = this.sleep.as_mut().as_pin_mut() else {
                    unreachable!("made above")
                };
                if !passed {
                    ready!(sleep.poll(cx));
                }
                {
                    let _entered = this.server.then(|| deadline.enter());
                    this.inner.set(None);
                }
                this.sleep.set(None);
                let mut trailers = HeaderMap::new();
                exceeded().write_trailers(&mut trailers);
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(inner) => inner.is_end_stream(),
            None => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}
