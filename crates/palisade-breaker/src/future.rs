//! [`ResponseFuture`]: the inner call watched to its end, or an immediate rejection.

use std::{
    any::Any,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::Response;
use palisade_core::{Code, ObservedBody, ObservedFuture, Rejection, Side};
use pin_project_lite::pin_project;

use crate::{
    circuit::{Permit, ProbeWatch},
    hook::OnStateChange,
};

/// The `grpc-message` of a rejected call. The response is marked as made by the layer
/// named `"breaker"` ([`Outcome::rejected_by`](palisade_core::Outcome::rejected_by)).
pub const CIRCUIT_OPEN: &str = "circuit open";

pin_project! {
    /// The response future of a [`Breaker`](crate::Breaker).
    pub struct ResponseFuture<F, H: OnStateChange> {
        #[pin]
        kind: Kind<F, H>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, H: OnStateChange> {
        Observed { #[pin] future: ObservedFuture<F, Permit<H>>, probe: Option<ProbeWatch<H>> },
        Bypass { #[pin] future: F, side: Side },
        Rejected,
    }
}

impl<F, H: OnStateChange> ResponseFuture<F, H> {
    pub(crate) fn observed(
        future: ObservedFuture<F, Permit<H>>,
        probe: Option<ProbeWatch<H>>,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Observed { future, probe },
        }
    }

    pub(crate) fn bypass(future: F, side: Side) -> Self {
        ResponseFuture {
            kind: Kind::Bypass { future, side },
        }
    }

    pub(crate) fn rejected() -> Self {
        ResponseFuture {
            kind: Kind::Rejected,
        }
    }

    /// Whether the call was rejected without reaching the inner service.
    pub fn is_rejected(&self) -> bool {
        matches!(self.kind, Kind::Rejected)
    }
}

impl<F, H, B, E> Future for ResponseFuture<F, H>
where
    F: Future<Output = Result<Response<B>, E>>,
    H: OnStateChange,
    B: Default + http_body::Body,
    E: Any,
{
    type Output = Result<Response<ObservedBody<B, Permit<H>>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Observed { future, probe } => {
                let result = ready!(future.poll(cx));
                if let Some(probe) = probe.take()
                    && let Ok(response) = &result
                    && !response.body().has_ended()
                {
                    // A probe whose response started: the backend is answering it.
                    probe.answered();
                }
                Poll::Ready(result)
            }
            KindProj::Bypass { future, side } => {
                let side = *side;
                Poll::Ready(
                    ready!(future.poll(cx))
                        .map(|response| response.map(|body| ObservedBody::ended(body, side))),
                )
            }
            KindProj::Rejected => Poll::Ready(Ok(Rejection::new(Code::Unavailable, CIRCUIT_OPEN)
                .by("breaker")
                .into_response())),
        }
    }
}

impl<F, H: OnStateChange> fmt::Debug for ResponseFuture<F, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Observed { .. } => "Observed",
            Kind::Bypass { .. } => "Bypass",
            Kind::Rejected => "Rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}
