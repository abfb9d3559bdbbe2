//! The server layer's response future.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use http_body::Body;
use palisade_core::Rejection;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{
    backend::{Decision, DecisionFuture},
    key::RequestInfo,
    mode::{Dispatch, Extra, Mode, Plain},
    series::EntryRef,
    shared::{Shared, Step, Tally},
};

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit): the inner service's future
    /// (its response headers gaining `x-ratelimit-*` when configured), a trailers-only
    /// rejection, or — with a backend that answers later — the wait for its decision.
    pub struct ResponseFuture<S, B, M = Plain>
    where
        S: Service<Request<M::RequestBody<B>>>,
        B: Body,
        M: Mode,
    {
        #[pin]
        state: State<S, B, M>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, M>
    where
        S: Service<Request<M::RequestBody<B>>>,
        B: Body,
        M: Mode,
    {
        Called {
            #[pin]
            future: S::Future,
            extra: Option<Box<Extra>>,
        },
        Rejected {
            rejection: Option<Rejection>,
        },
        Deciding {
            deciding: Box<Deciding<S, B>>,
        },
    }
}

/// A call waiting for a backend's decision.
pub(crate) struct Deciding<S, B> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) entry: EntryRef,
    pub(crate) pos: usize,
    pub(crate) future: DecisionFuture,
    pub(crate) tally: Tally,
    pub(crate) request: Option<Request<B>>,
    pub(crate) service: S,
}

impl<S, B, M> ResponseFuture<S, B, M>
where
    S: Service<Request<M::RequestBody<B>>>,
    B: Body,
    M: Mode,
{
    pub(crate) fn called(future: S::Future, extra: Option<Box<Extra>>) -> Self {
        Self {
            state: State::Called { future, extra },
        }
    }

    pub(crate) fn rejected(rejection: Rejection) -> Self {
        Self {
            state: State::Rejected {
                rejection: Some(rejection),
            },
        }
    }

    pub(crate) fn deciding(deciding: Box<Deciding<S, B>>) -> Self {
        Self {
            state: State::Deciding { deciding },
        }
    }
}

impl<S, B, M, ResB> Future for ResponseFuture<S, B, M>
where
    S: Service<Request<M::RequestBody<B>>, Response = Response<ResB>>,
    B: Body,
    M: Mode,
    ResB: Default,
{
    type Output = Result<Response<M::ResponseBody<ResB>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Called { future, extra } => {
                    if extra.is_none() {
                        // The common call: the inner response, its body as the mode has it.
                        return future.poll(cx).map_ok(M::wrap);
                    }
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(M::finish(response, extra.take())));
                }
                StateProj::Rejected { rejection } => {
                    let rejection = rejection.take().expect("polled after completion");
                    return Poll::Ready(Ok(M::reject(rejection)));
                }
                StateProj::Deciding { deciding } => ready!(deciding.poll_decide(cx)),
            };
            self.as_mut().project().state.set(next);
        }
    }
}

impl<S, B> Deciding<S, B> {
    /// Waits for the pending decisions; then the next state: the inner call or a rejection.
    fn poll_decide<M>(&mut self, cx: &mut Context<'_>) -> Poll<State<S, B, M>>
    where
        S: Service<Request<M::RequestBody<B>>>,
        B: Body,
        M: Mode,
    {
        loop {
            let decision = ready!(self.future.as_mut().poll(cx));
            let request = self.request.as_ref().expect("polled after completion");
            let entry = self.shared.table.resolve(&self.entry);
            let step = match self.shared.apply(self.pos, decision, &mut self.tally) {
                Some(step) => step,
                None => self.shared.run(
                    entry,
                    &RequestInfo::new(request),
                    self.pos + 1,
                    &mut self.tally,
                ),
            };
            return Poll::Ready(match step {
                Step::Pending { pos, future } => {
                    self.pos = pos;
                    self.future = future;
                    continue;
                }
                Step::Done => {
                    let request = self.request.take().expect("polled after completion");
                    let shared = self.shared.clone();
                    let lookup = shared.table.lookup_ref(&self.entry);
                    let call = Dispatch {
                        shared: &shared,
                        lookup: &lookup,
                        tally: &self.tally,
                        request,
                    };
                    let (future, extra) = M::dispatch(call, &mut self.service);
                    State::Called { future, extra }
                }
                Step::Denied { decision, .. } => self.reject(Some(&decision)),
                Step::NoKey => self.reject(None),
            });
        }
    }
}

impl<S, B> Deciding<S, B> {
    fn reject<M>(&mut self, decision: Option<&Decision>) -> State<S, B, M>
    where
        S: Service<Request<M::RequestBody<B>>>,
        B: Body,
        M: Mode,
    {
        let entry = self.shared.table.resolve(&self.entry);
        if let Some(request) = self.request.take() {
            self.shared
                .refund(entry, &RequestInfo::new(&request), &mut self.tally);
        }
        entry.counters.rejected.increment(1);
        State::Rejected {
            rejection: Some(self.shared.rejection(decision)),
        }
    }
}

impl<S, B> Drop for Deciding<S, B> {
    /// A call dropped while a backend decides (its caller gone, its deadline passed) gives
    /// back the tokens the limits before gave it; the decision in flight is abandoned.
    fn drop(&mut self) {
        if !self.tally.has_taken() {
            return;
        }
        if let Some(request) = self.request.take() {
            let entry = self.shared.table.resolve(&self.entry);
            self.shared
                .refund(entry, &RequestInfo::new(&request), &mut self.tally);
        }
    }
}

impl<S, B, M> fmt::Debug for ResponseFuture<S, B, M>
where
    S: Service<Request<M::RequestBody<B>>>,
    B: Body,
    M: Mode,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "Called",
            State::Rejected { .. } => "Rejected",
            State::Deciding { .. } => "Deciding",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
