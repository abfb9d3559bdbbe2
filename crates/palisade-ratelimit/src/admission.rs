//! The layers' admissions: what [`RateLimit`](crate::RateLimit) and
//! [`ClientRateLimit`](crate::ClientRateLimit) decide at the start of each call, run by
//! palisade-core's [`Admit`](palisade_core::admit::Admit) — one token per limit, a rejection,
//! or a wait for a backend that answers later (on the client, for the tokens themselves).
//!
//! The types here name the admissions' waits and head hooks; a program names them only to
//! spell out a service's type in full.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::HeaderMap;
use palisade_core::{
    Call, Side,
    admit::{Admission, Admitted, Decision, OnHead},
};

use crate::{
    backend::{self, DecisionFuture},
    body::{Cut, Metering},
    key::RequestInfo,
    series::{EntryRef, MethodEntry},
    shared::{Shared, Step, Tally, write_headers},
};

pub use crate::client::{ClientRateLimitAdmission, ClientWait, ClientWaited, Hold};

/// The server layer's admission: draws one token from each limit that applies to a call —
/// a trailers-only rejection when one has none, a wait when a backend answers later — and,
/// with [`RateLimitHeaders::Always`](crate::RateLimitHeaders::Always), writes the
/// `x-ratelimit-*` headers into the response of a call it let through. Made by
/// [`RateLimitLayer`](crate::RateLimitLayer), in both [modes](crate::Mode).
#[derive(Clone)]
pub struct RateLimitAdmission {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for RateLimitAdmission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitAdmission")
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

/// Where the checks of a waiting call stand: its method's entry, the limit that answers
/// later, and what the limits before it gave.
#[derive(Debug)]
pub(crate) struct Progress {
    entry: EntryRef,
    pos: usize,
    tally: Tally,
}

/// The wait of a server call whose backend answers later ([`backend::Acquire::Pending`]): the
/// backend's decision on one limit, and where the call's checks stand.
pub struct Deciding {
    future: DecisionFuture,
    // `None` once the decision came.
    progress: Option<Progress>,
}

/// A backend's decision on a waiting server call, for
/// [`resume`](Admission::resume).
#[derive(Debug)]
pub struct Decided {
    decision: backend::Decision,
    progress: Progress,
}

impl Future for Deciding {
    type Output = Decided;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Decided> {
        let decision = ready!(self.future.as_mut().poll(cx));
        let progress = self.progress.take().expect("polled after completion");
        Poll::Ready(Decided { decision, progress })
    }
}

impl fmt::Debug for Deciding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deciding")
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

/// Writes the `x-ratelimit-*` headers of the tightest bucket a call drew from into its
/// response ([`RateLimitHeaders::Always`](crate::RateLimitHeaders::Always)) — unless its
/// request stream was cut before the response started, which then carries the cut's
/// rejection as it is.
#[derive(Debug)]
pub struct AllowedHeaders {
    decision: backend::Decision,
    cut: Option<Arc<Cut>>,
}

impl OnHead for AllowedHeaders {
    fn on_head(self, headers: &mut HeaderMap, _streaming: bool) {
        if self.cut.as_deref().and_then(Cut::get).is_none() {
            write_headers(headers, &self.decision);
        }
    }
}

impl Admission for RateLimitAdmission {
    const NAME: &'static str = "ratelimit";
    type Observer = ();
    type Head = AllowedHeaders;
    type Wait = Deciding;

    fn side(&self) -> Side {
        Side::Server
    }

    #[inline]
    fn admit(&self, call: &mut Call<'_>) -> Decision<Self> {
        let shared = &*self.shared;
        if shared.limits.is_empty() {
            // Disabled (`RateLimitLayer::disabled`).
            return Decision::Pass;
        }
        let lookup = shared.table.lookup(shared, call.parts().uri.path());
        let entry = lookup.entry();
        if entry.plan.is_empty() {
            return Decision::Pass;
        }
        let mut tally = Tally::default();
        let step = shared.run(entry, &RequestInfo::from_parts(call.parts()), 0, &mut tally);
        self.decide(step, entry, || lookup.to_ref(), tally, call)
    }

    fn resume(&self, waited: Decided, call: &mut Call<'_>) -> Decision<Self> {
        let Decided { decision, progress } = waited;
        let Progress {
            entry: entry_ref,
            pos,
            mut tally,
        } = progress;
        let shared = &*self.shared;
        let entry = shared.table.resolve(&entry_ref);
        let step = match shared.apply(pos, decision, &mut tally) {
            Some(step) => step,
            None => shared.run(
                entry,
                &RequestInfo::from_parts(call.parts()),
                pos + 1,
                &mut tally,
            ),
        };
        self.decide(step, entry, || entry_ref.clone(), tally, call)
    }

    /// A call dropped while a backend decides (its caller gone, its deadline passed) gives
    /// back the tokens the limits before gave it; the decision in flight is abandoned.
    fn abandon(&self, wait: Pin<&mut Deciding>, call: &mut Call<'_>) {
        let Some(mut progress) = wait.get_mut().progress.take() else {
            return;
        };
        if progress.tally.has_taken() {
            let entry = self.shared.table.resolve(&progress.entry);
            self.shared.refund(
                entry,
                &RequestInfo::from_parts(call.parts()),
                &mut progress.tally,
            );
        }
    }
}

impl RateLimitAdmission {
    /// The decision once the checks stopped at `step`.
    #[inline]
    fn decide(
        &self,
        step: Step,
        entry: &MethodEntry,
        entry_ref: impl FnOnce() -> EntryRef,
        tally: Tally,
        call: &mut Call<'_>,
    ) -> Decision<Self> {
        let shared = &self.shared;
        match step {
            Step::Done => {
                shared.count_passed(entry, &tally);
                let cut = if entry.per_message {
                    self.meter(entry, call)
                } else {
                    None
                };
                match shared.allowed_headers(&tally) {
                    Some(decision) => {
                        Decision::Admit(Admitted::new().on_head(AllowedHeaders { decision, cut }))
                    }
                    None => Decision::Pass,
                }
            }
            Step::Denied { decision, .. } => self.reject(entry, tally, Some(&decision), call),
            Step::NoKey => self.reject(entry, tally, None, call),
            Step::Pending { pos, future } => Decision::Wait(Deciding {
                future,
                progress: Some(Progress {
                    entry: entry_ref(),
                    pos,
                    tally,
                }),
            }),
        }
    }

    /// A refused call: the tokens the limits before gave back, counted, rejected.
    #[cold]
    fn reject(
        &self,
        entry: &MethodEntry,
        mut tally: Tally,
        decision: Option<&backend::Decision>,
        call: &Call<'_>,
    ) -> Decision<Self> {
        let shared = &self.shared;
        shared.refund(entry, &RequestInfo::from_parts(call.parts()), &mut tally);
        entry.counters.rejected.increment(1);
        Decision::Reject(shared.rejection(decision))
    }

    /// Leaves a metered call's per-message charges for the
    /// [`MeteredService`](crate::body::MeteredService) inside; the cut they may make.
    fn meter(&self, entry: &MethodEntry, call: &mut Call<'_>) -> Option<Arc<Cut>> {
        let charges = self
            .shared
            .message_charges(entry, &RequestInfo::from_parts(call.parts()));
        if charges.is_empty() {
            return None;
        }
        let cut = Arc::new(Cut::default());
        call.parts_mut().extensions.insert(Metering {
            shared: self.shared.clone(),
            counters: entry.counters.clone(),
            charges,
            cut: cut.clone(),
        });
        Some(cut)
    }
}
