//! The bodies of the server layer in [`Metered`](crate::Metered) mode: the request body, which
//! takes a token per received message for per-message limits, and the response body, which
//! ends a stream cut for want of tokens with the rejection's status. (The default
//! [`Plain`](crate::Plain) mode wraps nothing.)
//!
//! How a stream is cut: the request body counts gRPC messages (palisade-core's
//! [`MessageCounter`], across any frame split) and takes one token per message after the first
//! (the first was paid when the call arrived). When a message finds no token, the frame
//! completing it is not delivered; the body yields an error instead — a `tonic::Status` with
//! the rejection's code, message and `grpc-retry-pushback-ms` — so the handler's
//! `stream.message().await` returns that status, and the body ends. The rejection is also
//! left for the response side: if the response has not started yet, the layer answers with
//! the trailers-only rejection instead of what the handler returns; if it has (a bidi
//! stream), its trailers' `grpc-status` and `grpc-message` are replaced. Either way the client
//! sees the rejection's code, whatever the handler did with the error. A cut also names the
//! layer in the per-RPC record's [`rejected_by`](palisade_core::Rpc::rejected_by), when the
//! server has one.
//!
//! In [`Metered`](crate::Metered) mode the layer's service is palisade-core's
//! [`Admit`](palisade_core::admit::Admit) around a [`MeteredService`]: the admission decides
//! the call (its first token), the metered service wraps the bodies of the calls it let
//! through.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll, ready},
};

use bytes::Buf;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use palisade_core::{MessageCounter, Rejection, Rpc, Side, Status, admit::Admission};
use pin_project_lite::pin_project;
use tonic::metadata::MetadataMap;
use tower_service::Service;

use crate::{
    admission::RateLimitAdmission,
    backend::{Acquire, Decision, DecisionFuture, Origin},
    series::Counters,
    shared::{Charge, Positions, Shared},
};

/// A boxed error, as tower stacks and tonic's transport use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a cut request stream leaves its rejection for the response.
#[derive(Debug, Default)]
pub(crate) struct Cut(OnceLock<Rejection>);

impl Cut {
    pub(crate) fn get(&self) -> Option<&Rejection> {
        self.0.get()
    }
}

/// What the admission leaves in a metered call's extensions for the [`MeteredService`]: the
/// call's per-message charges and where a cut leaves its rejection. Taken out before the
/// inner service sees the request.
#[derive(Clone)]
pub(crate) struct Metering {
    pub(crate) shared: Arc<Shared>,
    pub(crate) counters: Counters,
    pub(crate) charges: Box<[Charge]>,
    pub(crate) cut: Arc<Cut>,
}

/// The inner half of the server layer in [`Metered`](crate::Metered) mode, between
/// palisade-core's [`Admit`](palisade_core::admit::Admit) and your service: hands it a
/// [`RequestBody`] — metered when the admission let through a call with per-message limits —
/// and returns a [`ResponseBody`], which ends a cut stream with the rejection (see the
/// [module docs](self)). Made by [`RateLimitLayer`](crate::RateLimitLayer) built with
/// [`build_metered`](crate::RateLimitBuilder::build_metered).
#[derive(Clone, Debug)]
pub struct MeteredService<S> {
    inner: S,
}

impl<S> MeteredService<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for MeteredService<S>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>>,
    B: Body,
    ResB: Default,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let Some(metering) = request.extensions_mut().remove::<Metering>() else {
            return MeteredFuture {
                inner: self.inner.call(request.map(RequestBody::new)),
                cut: None,
            };
        };
        let Metering {
            shared,
            counters,
            charges,
            cut,
        } = metering;
        let record = Rpc::from_extensions(request.extensions())
            .filter(|record| record.side() == Side::Server)
            .cloned();
        let meter = Meter::new(shared, counters, charges, cut.clone(), record);
        MeteredFuture {
            inner: self
                .inner
                .call(request.map(|body| RequestBody::metered(body, meter))),
            cut: Some(cut),
        }
    }
}

pin_project! {
    /// The response future of a [`MeteredService`]: the inner response with a
    /// [`ResponseBody`], or the trailers-only rejection when the request stream was cut
    /// before the response started.
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        cut: Option<Arc<Cut>>,
    }
}

impl<F, ResB, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: Default,
{
    type Output = Result<Response<ResponseBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let cut = this.cut.take();
        if let Some(rejection) = cut.as_deref().and_then(Cut::get) {
            // The request stream was cut before the response started.
            return Poll::Ready(Ok(rejection.to_response()));
        }
        Poll::Ready(Ok(response.map(|body| ResponseBody::new(body, cut))))
    }
}

impl<F> fmt::Debug for MeteredFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeteredFuture")
            .field("metered", &self.cut.is_some())
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// The request body the server layer hands on: the request's frames unchanged, unless the
    /// call has a per-message limit ([`Limit::per_message`](crate::Limit::per_message)), whose
    /// tokens it takes as messages arrive; see the [module docs](self) for how a stream is cut.
    pub struct RequestBody<B>
    where
        B: Body,
    {
        #[pin]
        inner: B,
        meter: Option<Box<Meter<B::Data>>>,
    }
}

impl<B: Body> RequestBody<B> {
    /// The body as it is.
    pub(crate) fn new(inner: B) -> Self {
        Self { inner, meter: None }
    }

    pub(crate) fn metered(inner: B, meter: Meter<B::Data>) -> Self {
        Self {
            inner,
            meter: Some(Box::new(meter)),
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

/// The per-message state of one stream.
pub(crate) struct Meter<D> {
    shared: Arc<Shared>,
    counters: Counters,
    charges: Box<[Charge]>,
    counter: MessageCounter,
    /// Messages paid for (the first with the call).
    paid: u64,
    /// The next charge to take for message `paid + 1`.
    next_charge: usize,
    /// The charges that gave a token for message `paid + 1`, and those of them whose token
    /// came from a fallback: given back if that message is not delivered.
    taken: Positions,
    fallback: Positions,
    pending: Option<DecisionFuture>,
    /// The frame that completed unpaid messages, held until they are paid.
    held: Option<Frame<D>>,
    cut: Arc<Cut>,
    /// The server's per-RPC record, which a cut names the layer in.
    record: Option<Rpc>,
    ended: bool,
    shadow_counted: bool,
}

impl<D> Meter<D> {
    pub(crate) fn new(
        shared: Arc<Shared>,
        counters: Counters,
        charges: Box<[Charge]>,
        cut: Arc<Cut>,
        record: Option<Rpc>,
    ) -> Self {
        Self {
            shared,
            counters,
            charges,
            counter: MessageCounter::default(),
            paid: 1,
            next_charge: 0,
            taken: Positions::default(),
            fallback: Positions::default(),
            pending: None,
            held: None,
            cut,
            record,
            ended: false,
            shadow_counted: false,
        }
    }

    /// Pays for every completed message; `Ready(Err)` when one found no token.
    fn poll_pay(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        while self.paid < self.counter.messages() {
            while self.next_charge < self.charges.len() {
                let decision = match self.pending.as_mut() {
                    Some(future) => {
                        let decision = ready!(future.as_mut().poll(cx));
                        self.pending = None;
                        decision
                    }
                    None => match self.charges[self.next_charge].acquire() {
                        Acquire::Ready(decision) => decision,
                        Acquire::Pending(future) => {
                            self.pending = Some(future);
                            continue;
                        }
                    },
                };
                if decision.is_allowed() {
                    self.taken.insert(self.next_charge);
                    if decision.origin() == Origin::Fallback {
                        self.fallback.insert(self.next_charge);
                    }
                }
                self.next_charge += 1;
                if !decision.is_allowed() {
                    if self.shared.shadow {
                        if !self.shadow_counted {
                            self.shadow_counted = true;
                            self.counters.rejected.increment(1);
                        }
                    } else {
                        // The charges before this one took tokens for a message that will not
                        // be delivered: give them back.
                        self.refund_message();
                        return Poll::Ready(Err(self.cut(&decision)));
                    }
                }
            }
            self.next_charge = 0;
            self.taken = Positions::default();
            self.fallback = Positions::default();
            self.paid += 1;
        }
        Poll::Ready(Ok(()))
    }

    /// Gives back the tokens taken for the message being paid for, each where it came from.
    #[cold]
    fn refund_message(&mut self) {
        let taken = std::mem::take(&mut self.taken);
        let fallback = std::mem::take(&mut self.fallback);
        for index in taken.iter() {
            let origin = if fallback.contains(index) {
                Origin::Fallback
            } else {
                Origin::Primary
            };
            if let Some(charge) = self.charges.get(index) {
                charge.refund(origin);
            }
        }
    }

    #[cold]
    fn cut(&mut self, decision: &Decision) -> BoxError {
        self.ended = true;
        self.held = None;
        self.counters.rejected.increment(1);
        let rejection = self.shared.rejection(Some(decision));
        let status = Status::with_metadata(
            rejection.code(),
            self.shared.message.to_string(),
            MetadataMap::from_headers(rejection.metadata().clone()),
        );
        let _ = self.cut.0.set(rejection);
        if let Some(record) = &self.record {
            record.set_rejected_by(RateLimitAdmission::NAME);
        }
        Box::new(status)
    }
}

impl<D> Drop for Meter<D> {
    /// A stream dropped while paying for a message (waiting on a backend's decision) never
    /// delivers it: the tokens taken for it go back.
    fn drop(&mut self) {
        if !self.ended && !self.taken.is_empty() {
            self.refund_message();
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let Some(meter) = this.meter.as_deref_mut() else {
            return this.inner.poll_frame(cx).map_err(Into::into);
        };
        loop {
            if meter.ended {
                return Poll::Ready(None);
            }
            if meter.held.is_some() {
                if let Err(error) = ready!(meter.poll_pay(cx)) {
                    return Poll::Ready(Some(Err(error)));
                }
                return Poll::Ready(meter.held.take().map(Ok));
            }
            let frame = match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                other => return Poll::Ready(other.map(|result| result.map_err(Into::into))),
            };
            if let Some(data) = frame.data_ref() {
                feed(&mut meter.counter, data);
            }
            if meter.paid >= meter.counter.messages() {
                return Poll::Ready(Some(Ok(frame)));
            }
            meter.held = Some(frame);
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.meter {
            Some(meter) if meter.ended => true,
            Some(meter) if meter.held.is_some() => false,
            _ => self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.meter {
            Some(meter) if meter.ended => SizeHint::with_exact(0),
            _ => self.inner.size_hint(),
        }
    }
}

/// Feeds a buffer to the counter without consuming it.
fn feed(counter: &mut MessageCounter, data: &impl Buf) {
    let chunk = data.chunk();
    if chunk.len() == data.remaining() {
        counter.feed(chunk);
        return;
    }
    let mut slices = [std::io::IoSlice::new(&[]); 64];
    let filled = data.chunks_vectored(&mut slices);
    for slice in &slices[..filled] {
        counter.feed(slice);
    }
}

impl<B> fmt::Debug for RequestBody<B>
where
    B: Body + fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody")
            .field("inner", &self.inner)
            .field("metered", &self.meter.is_some())
            .finish()
    }
}

pin_project! {
    /// The response body the server layer returns: the inner body's frames unchanged, unless
    /// the call's request stream was cut for want of tokens — then its final status is the
    /// rejection's (see the [module docs](self)).
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        cut: Option<Arc<Cut>>,
        trailers_sent: bool,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, cut: Option<Arc<Cut>>) -> Self {
        Self {
            inner,
            cut,
            trailers_sent: false,
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    fn pending_status(&self) -> Option<&Rejection> {
        if self.trailers_sent {
            return None;
        }
        self.cut.as_deref()?.get()
    }
}

impl<B: Default> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::new(B::default(), None)
    }
}

/// The rejection's status as trailers.
fn status_trailers(rejection: &Rejection) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    rejection.write_trailers(&mut trailers);
    trailers
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let Some(cut) = this.cut.as_deref() else {
            return this.inner.poll_frame(cx);
        };
        match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) if frame.is_trailers() => {
                *this.trailers_sent = true;
                let Some(rejection) = cut.get() else {
                    return Poll::Ready(Some(Ok(frame)));
                };
                let mut trailers = frame.into_trailers().unwrap_or_default();
                rejection.write_trailers(&mut trailers);
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            None if !*this.trailers_sent => {
                *this.trailers_sent = true;
                Poll::Ready(
                    cut.get()
                        .map(|rejection| Ok(Frame::trailers(status_trailers(rejection)))),
                )
            }
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending_status().is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: fmt::Debug> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .field("watching", &self.cut.is_some())
            .finish()
    }
}

impl<D> fmt::Debug for Meter<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meter")
            .field("charges", &self.charges)
            .field("paid", &self.paid)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}
