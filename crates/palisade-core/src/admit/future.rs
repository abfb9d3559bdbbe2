//! The response future of the admission middleware.

use std::{
    any::Any,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Request, Response, StatusCode, request::Parts};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{Admission, Admitted, Decision, OnHead, ResponseBody, Watched, layer::Shared};
use crate::{
    call::Call,
    future::OnUnwind,
    headers::GRPC_STATUS,
    observe::{self, Counts},
    rejection::{LocalRejection, Rejection},
    rpc::Rpc,
    side::Side,
};

pin_project! {
    /// The response future of [`Admit`](super::Admit): the inner service's future — polled
    /// as it is when nothing is watched, through [`observe`]'s future when the admission
    /// asked for an observer, so every end path reaches it — a rejection, or the wait for a
    /// later decision.
    pub struct ResponseFuture<S, A, B>
    where
        S: Service<Request<B>>,
        A: Admission,
    {
        #[pin]
        state: State<S, A, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, A, B>
    where
        S: Service<Request<B>>,
        A: Admission,
    {
        // Admitted with nothing watched: the inner future as it is, polled directly.
        Passed {
            #[pin]
            future: S::Future,
            head: Option<A::Head>,
        },
        // Admitted and watched to its end.
        Called {
            #[pin]
            future: observe::ResponseFuture<S::Future, Watched<A>>,
            head: Option<A::Head>,
        },
        Rejected {
            rejection: Option<Rejection>,
        },
        // Boxed: a wait is the rare path for most admissions (jwt's key fetch), and inline
        // it would make every call's future carry a request head, a service and the wait.
        Waiting {
            waiting: Pin<Box<Waiting<S, A, B>>>,
        },
    }
}

pin_project! {
    /// An RPC whose admission decides later: the wait, the request and the ready service.
    struct Waiting<S, A, B>
    where
        A: Admission,
    {
        shared: Arc<Shared<A>>,
        #[pin]
        wait: A::Wait,
        // `None` once the admission resumed.
        request: Option<(Parts, B)>,
        service: S,
    }

    impl<S, A, B> PinnedDrop for Waiting<S, A, B>
    where
        A: Admission,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some((parts, _)) = this.request.as_mut() {
                let admission = &this.shared.admission;
                admission.abandon(this.wait, &mut Call::new(admission.side(), parts));
            }
        }
    }
}

impl<S, A, B> ResponseFuture<S, A, B>
where
    S: Service<Request<B>>,
    A: Admission,
{
    /// The future of an RPC decided at once (anything but [`Decision::Wait`]).
    pub(crate) fn called(
        side: Side,
        service: &mut S,
        request: Request<B>,
        decision: Decision<A>,
    ) -> Self {
        Self {
            state: State::decided(side, service, request, decision),
        }
    }

    /// The future of an admitted RPC watched by `observer`.
    #[inline]
    pub(crate) fn watched(
        side: Side,
        service: &mut S,
        request: Request<B>,
        observer: A::Observer,
        head: Option<A::Head>,
    ) -> Self {
        Self {
            state: State::watched(side, service, request, observer, head),
        }
    }

    /// The future of an admitted RPC with nothing watched: the inner future as it is.
    #[inline]
    pub(crate) fn passed(future: S::Future, head: Option<A::Head>) -> Self {
        Self {
            state: State::Passed { future, head },
        }
    }

    /// The future of an RPC whose admission waits, with the ready service it will call.
    pub(crate) fn waiting(
        shared: Arc<Shared<A>>,
        wait: A::Wait,
        request: (Parts, B),
        service: S,
    ) -> Self {
        Self {
            state: State::Waiting {
                waiting: Box::pin(Waiting {
                    shared,
                    wait,
                    request: Some(request),
                    service,
                }),
            },
        }
    }

    /// Whether the RPC was answered here, without reaching the inner service.
    pub fn is_rejected(&self) -> bool {
        matches!(self.state, State::Rejected { .. })
    }

    /// Whether the admission's decision is still to come.
    pub fn is_waiting(&self) -> bool {
        matches!(self.state, State::Waiting { .. })
    }
}

impl<S, A, B> State<S, A, B>
where
    S: Service<Request<B>>,
    A: Admission,
{
    /// The state of an RPC once its admission decided (anything but a wait).
    fn decided(side: Side, service: &mut S, request: Request<B>, decision: Decision<A>) -> Self {
        match decision {
            Decision::Pass => State::Passed {
                future: service.call(request),
                head: None,
            },
            Decision::Admit(Admitted {
                observer: None,
                head,
            }) => State::Passed {
                future: service.call(request),
                head,
            },
            Decision::Admit(Admitted {
                observer: Some(observer),
                head,
            }) => Self::watched(side, service, request, observer, head),
            Decision::Reject(rejection) => Self::rejected(side, rejection, request.extensions()),
            Decision::Wait(_) => unreachable!("a wait is made into State::Waiting"),
        }
    }

    /// The inner call, watched by `observer`.
    #[inline]
    fn watched(
        side: Side,
        service: &mut S,
        request: Request<B>,
        observer: A::Observer,
        head: Option<A::Head>,
    ) -> Self {
        let mut observer = Some(observer);
        let future = {
            // A panic in the inner service's own `call` (an interceptor, a `service_fn`
            // closure) ends the watched RPC here, while it unwinds.
            let _unwind = OnUnwind {
                observer: &mut observer,
                counts: Counts::default(),
            };
            service.call(request)
        };
        State::Called {
            future: observe::ResponseFuture::watched(future, side, observer, ()),
            head,
        }
    }

    /// A rejection, marked with the admission's name (unless it names a layer itself), and
    /// that name written into the per-RPC record of this side, when there is one.
    fn rejected(side: Side, rejection: Rejection, extensions: &http::Extensions) -> Self {
        let rejection = if rejection.layer() == LocalRejection::UNNAMED {
            rejection.by(A::NAME)
        } else {
            rejection
        };
        if let Some(record) = Rpc::from_extensions(extensions).filter(|rpc| rpc.side() == side) {
            record.set_rejected_by(rejection.layer());
        }
        State::Rejected {
            rejection: Some(rejection),
        }
    }
}

impl<S, A, B, ResBody> Future for ResponseFuture<S, A, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Any,
    A: Admission,
    ResBody: http_body::Body + Default,
{
    type Output = Result<Response<ResponseBody<ResBody, A>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Passed { future, head } => {
                    if head.is_none() {
                        // Built in place: nothing to do with the response.
                        return future
                            .poll(cx)
                            .map_ok(|response| response.map(ResponseBody::passed));
                    }
                    let mut polled = future
                        .poll(cx)
                        .map_ok(|response| response.map(ResponseBody::passed));
                    if let Poll::Ready(Ok(response)) = &mut polled
                        && let Some(head) = head.take()
                    {
                        tell_head(head, response);
                    }
                    return polled;
                }
                StateProj::Called { future, head } => {
                    if head.is_none() {
                        return future.poll(cx);
                    }
                    let mut polled = future.poll(cx);
                    if let Poll::Ready(Ok(response)) = &mut polled
                        && let Some(head) = head.take()
                    {
                        tell_head(head, response);
                    }
                    return polled;
                }
                StateProj::Rejected { rejection } => {
                    let rejection = rejection.take().expect("polled after completion");
                    return Poll::Ready(Ok(rejection.into_response()));
                }
                StateProj::Waiting { waiting } => ready!(waiting.as_mut().poll_decide(cx)),
            };
            self.as_mut().project().state.set(next);
        }
    }
}

/// Tells `head` of an admitted RPC's response head.
fn tell_head<H: OnHead, B: http_body::Body, P: observe::Policy>(
    head: H,
    response: &mut Response<observe::ResponseBody<B, P>>,
) {
    // An empty 200 without `grpc-status` ended at its head too (the observer heard
    // `MissingStatus` there).
    let streaming = response.status() == StatusCode::OK
        && !response.headers().contains_key(GRPC_STATUS)
        && !response.body().get_ref().is_end_stream();
    head.on_head(response.headers_mut(), streaming);
}

impl<S, A, B> Waiting<S, A, B>
where
    S: Service<Request<B>>,
    A: Admission,
{
    /// Waits for the admission's decision; then the next state: the inner call or a
    /// rejection.
    fn poll_decide(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<State<S, A, B>> {
        let mut this = self.project();
        loop {
            let waited = ready!(this.wait.as_mut().poll(cx));
            let admission = &this.shared.admission;
            let side = admission.side();
            let (mut parts, body) = this.request.take().expect("polled after completion");
            let decision = admission.resume(waited, &mut Call::new(side, &mut parts));
            match decision {
                Decision::Wait(wait) => {
                    this.wait.set(wait);
                    *this.request = Some((parts, body));
                }
                decision => {
                    let request = Request::from_parts(parts, body);
                    return Poll::Ready(State::decided(side, this.service, request, decision));
                }
            }
        }
    }
}

impl<S, A, B> fmt::Debug for ResponseFuture<S, A, B>
where
    S: Service<Request<B>>,
    A: Admission,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Passed { .. } | State::Called { .. } => "Called",
            State::Rejected { .. } => "Rejected",
            State::Waiting { .. } => "Waiting",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
