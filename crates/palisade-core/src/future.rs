//! The observed response future: hands the response body to an [`ObservedBody`], or reports
//! the end itself when the RPC ends at the response headers, fails, or is dropped.

use std::{
    any::Any,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::Response;
use pin_project_lite::pin_project;

use crate::{
    body::ObservedBody,
    code::Code,
    observe::{Counts, Observer, Side},
    outcome::{Outcome, Source},
};

pin_project! {
    /// Wraps a service's response future so that its [`Observer`] hears exactly one end:
    ///
    /// - a trailers-only response or an HTTP error status: at once, from the headers;
    /// - a response with no `grpc-status` whose body is already at its end
    ///   ([`is_end_stream`](http_body::Body::is_end_stream)): `Unknown`, from
    ///   [`Source::MissingStatus`], at once (hyper ends such a stream without polling the body);
    /// - any other response: when its [`ObservedBody`] ends;
    /// - an `Err` from the inner service: at once, from the error (a [`tonic::Status`] inside it
    ///   gives the code, anything else [`Side::error_fallback`]);
    /// - the future dropped before it resolved: `Cancelled`;
    /// - the inner future panicked (the panic unwound through this future's own `poll`):
    ///   `Internal`, from [`Source::Panicked`] — a panic is the service's failure, not the
    ///   caller's cancellation;
    /// - the future dropped while the thread unwinds from a panic elsewhere: on
    ///   [`Side::Client`], `Cancelled` — the panic is the calling program's, which dropped the
    ///   call as it unwound, not the backend's; on [`Side::Server`], `Internal` — nothing in the
    ///   server's process is the remote caller, so whatever unwound (the handler, a layer
    ///   around it) is the service failing this call.
    ///
    /// A trailers-only response a Palisade layer made ([`Rejection`](crate::Rejection)) ends
    /// with an outcome that names that layer: [`Outcome::rejected_by`].
    ///
    /// # Example
    ///
    /// ```
    /// use http::Response;
    /// use palisade_core::{observe::on_end, ObservedFuture, Rejection, Side, Code};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let inner = async { Ok::<_, std::convert::Infallible>(
    ///     Rejection::new(Code::NotFound, "gone").into_response::<String>()) };
    /// let observed = ObservedFuture::new(inner, Side::Server, on_end(move |o, _| tx.send(o.code()).unwrap()));
    /// let response = observed.await.unwrap();
    /// assert_eq!(rx.recv().unwrap(), Code::NotFound);
    /// # }
    /// ```
    pub struct ObservedFuture<F, O: Observer> {
        #[pin]
        inner: F,
        observer: Option<O>,
        side: Side,
    }

    impl<F, O: Observer> PinnedDrop for ObservedFuture<F, O> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(observer) = this.observer.take() {
                let panicking = std::thread::panicking();
                observer.on_end(Outcome::dropped(*this.side, panicking), Counts::default());
            }
        }
    }
}

impl<F, O: Observer> ObservedFuture<F, O> {
    /// Observes the response of `inner`.
    pub fn new(inner: F, side: Side, observer: O) -> Self {
        Self {
            inner,
            observer: Some(observer),
            side,
        }
    }
}

impl<F, O, B, E> Future for ObservedFuture<F, O>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
    O: Observer,
    E: Any,
{
    type Output = Result<Response<ObservedBody<B, O>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // A panic in the inner future ends the call here, while it unwinds: a runtime drops a
        // panicked task's future only after catching the panic, when it no longer shows.
        let guard = OnUnwind {
            observer: this.observer,
            counts: Counts::default(),
        };
        let result = ready!(this.inner.poll(cx));
        let side = *this.side;
        let Some(observer) = guard.observer.take() else {
            // Polled after completion: there is nothing left to observe.
            return Poll::Ready(
                result.map(|response| response.map(|b| ObservedBody::ended(b, side))),
            );
        };
        Poll::Ready(match result {
            Ok(response) => match Outcome::from_response(&response) {
                // No status at the head and nothing after it: hyper ends such a stream
                // without polling the body, so its end is told here, not at a drop.
                None if response.body().is_end_stream() => {
                    let outcome = Outcome::new(Code::Unknown, Source::MissingStatus);
                    observer.on_end(outcome, Counts::default());
                    Ok(response.map(|body| ObservedBody::ended(body, side)))
                }
                Some(outcome) => {
                    observer.on_end(outcome, Counts::default());
                    Ok(response.map(|body| ObservedBody::ended(body, side)))
                }
                None => Ok(response.map(|body| ObservedBody::response(body, side, observer))),
            },
            Err(error) => {
                let outcome =
                    Outcome::from_error(&error, Source::ServiceError, side.error_fallback());
                observer.on_end(outcome, Counts::default());
                Err(error)
            }
        })
    }
}

/// Reports [`Outcome::panicked`] to the observer when dropped while the thread unwinds: put on
/// the stack around a poll of the inner future or body.
pub(crate) struct OnUnwind<'a, O: Observer> {
    pub(crate) observer: &'a mut Option<O>,
    pub(crate) counts: Counts,
}

impl<O: Observer> Drop for OnUnwind<'_, O> {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(observer) = self.observer.take()
        {
            observer.on_end(Outcome::panicked(), self.counts);
        }
    }
}

impl<F, O: Observer> std::fmt::Debug for ObservedFuture<F, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedFuture")
            .field("side", &self.side)
            .field("ended", &self.observer.is_none())
            .finish_non_exhaustive()
    }
}
