//! The response future: the inner future raced against the deadline.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::Response;
use palisade_core::Rejection;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

use crate::{Deadline, ResponseBody, service::exceeded};

pin_project! {
    /// The response future of [`Timeout`](crate::Timeout).
    ///
    /// With a deadline, the inner future is polled first (with the deadline
    /// [current](crate::current) on a server); while it is pending, a tokio sleep until the
    /// deadline is polled too — made at the first pending poll, so an inner future that is
    /// ready at once never touches the timer. When the deadline passes first, the inner
    /// future is dropped there and then and the call is answered with a trailers-only
    /// `DEADLINE_EXCEEDED`, marked `by("deadline")`. On a client, an error of the inner
    /// service at or after the deadline (tonic's `Channel` ends a call at its own
    /// `grpc-timeout` with an error) is answered the same way.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    // One of three: the rejection (a header value and a map) is not carried by every call's
    // future, only by the one answered here.
    #[project = KindProj]
    enum Kind<F> {
        // No deadline: the inner future as it is.
        Passed {
            #[pin]
            inner: F,
        },
        // Answered here.
        Rejected {
            rejection: Option<Rejection>,
        },
        // Raced against the deadline.
        Enforced {
            // `None` once it answered, or was dropped at the deadline.
            #[pin]
            inner: Option<F>,
            #[pin]
            sleep: Option<Sleep>,
            deadline: Deadline,
            server: bool,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn passed(inner: F) -> Self {
        Self {
            kind: Kind::Passed { inner },
        }
    }

    pub(crate) fn rejected(rejection: Rejection) -> Self {
        Self {
            kind: Kind::Rejected {
                rejection: Some(rejection),
            },
        }
    }

    pub(crate) fn enforced(inner: F, deadline: Deadline, server: bool) -> Self {
        Self {
            kind: Kind::Enforced {
                inner: Some(inner),
                sleep: None,
                deadline,
                server,
            },
        }
    }

    fn deadline(&self) -> Option<Deadline> {
        match &self.kind {
            Kind::Enforced { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (mut inner, mut sleep, deadline, server) = match self.project().kind.project() {
            KindProj::Passed { inner } => {
                return inner
                    .poll(cx)
                    .map_ok(|response| response.map(ResponseBody::passed));
            }
            KindProj::Rejected { rejection } => {
                let rejection = rejection.take().expect("polled after completion");
                return Poll::Ready(Ok(rejection.into_response()));
            }
            KindProj::Enforced {
                inner,
                sleep,
                deadline,
                server,
            } => (inner, sleep, *deadline, *server),
        };
        let polled = {
            let _entered = server.then(|| deadline.enter());
            let Some(inner) = inner.as_mut().as_pin_mut() else {
                panic!("ResponseFuture polled after it completed")
            };
            inner.poll(cx)
        };
        match polled {
            Poll::Ready(Ok(response)) => {
                inner.set(None);
                Poll::Ready(Ok(
                    response.map(|body| ResponseBody::enforced(body, deadline, server))
                ))
            }
            Poll::Ready(Err(error)) => {
                inner.set(None);
                if !server && deadline.instant() <= Instant::now() {
                    return Poll::Ready(Ok(exceeded().into_response()));
                }
                Poll::Ready(Err(error))
            }
            Poll::Pending => {
                if sleep.is_none() {
                    sleep.set(Some(sleep_until(deadline.instant())));
                }
                let Some(sleeping) = sleep.as_mut().as_pin_mut() else {
                    unreachable!("made above")
                };
                ready!(sleeping.poll(cx));
                {
                    // What the handler does as it is dropped still sees its deadline.
                    let _entered = server.then(|| deadline.enter());
                    inner.set(None);
                }
                sleep.set(None);
                Poll::Ready(Ok(exceeded().into_response()))
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("deadline", &self.deadline())
            .finish_non_exhaustive()
    }
}
