//! [`ResponseFuture`]: one call's attempts, from the first to the answer.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use palisade_core::{
    Rpc, Side,
    build::BoxError,
    deadline::{grpc_timeout, timeout_value},
    headers::GRPC_TIMEOUT,
};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tonic::body::Body;
use tower_service::Service;

use crate::{
    body::Replay,
    head::Head,
    layer::Shared,
    policy::Policy,
    verdict::{Pushback, Verdict, verdict},
};

/// The header each attempt after the first carries: how many attempts were made before it.
pub const GRPC_PREVIOUS_RPC_ATTEMPTS: HeaderName =
    HeaderName::from_static("grpc-previous-rpc-attempts");

pin_project! {
    /// The response future of [`Retry`](crate::Retry): the inner service's answer to the
    /// call's last attempt — its response as it came, body and all.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<tonic::body::Body>>,
    {
        #[pin]
        first: Slot<S::Future>,
        // The first attempt's body reader (see `Replay::commit`).
        first_reader: u32,
        attempts: Option<Box<Attempts<S, B>>>,
    }
}

pin_project! {
    #[project = SlotProj]
    enum Slot<F> {
        Running { #[pin] future: F },
        Empty,
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<tonic::body::Body>>,
{
    /// A call sent once, as it is.
    pub(crate) fn passed(future: S::Future) -> Self {
        ResponseFuture {
            first: Slot::Running { future },
            first_reader: 0,
            attempts: None,
        }
    }

    /// A call whose first attempt is `first`, retried or hedged by `attempts`.
    pub(crate) fn managed(first: (u32, S::Future), attempts: Box<Attempts<S, B>>) -> Self {
        let (first_reader, first) = first;
        ResponseFuture {
            first: Slot::Running { future: first },
            first_reader,
            attempts: Some(attempts),
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<tonic::body::Body>, Response = http::Response<ResBody>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(attempts) = this.attempts.as_deref_mut() else {
            return match this.first.project() {
                SlotProj::Running { future } => future.poll(cx),
                SlotProj::Empty => panic!("ResponseFuture polled after it completed"),
            };
        };
        loop {
            if let SlotProj::Running { future } = this.first.as_mut().project()
                && let Poll::Ready(result) = future.poll(cx)
            {
                this.first.set(Slot::Empty);
                if let Some(answer) = attempts.ended(result, *this.first_reader) {
                    attempts.finish();
                    return Poll::Ready(answer);
                }
                attempts.last_record = None;
            }
            let mut i = 0;
            while i < attempts.others.len() {
                match attempts.others[i].future.as_mut().poll(cx) {
                    Poll::Ready(result) => {
                        let other = attempts.others.swap_remove(i);
                        if let Some(answer) = attempts.ended(result, other.reader) {
                            attempts.adopt(other.record.as_ref());
                            this.first.set(Slot::Empty);
                            attempts.finish();
                            return Poll::Ready(answer);
                        }
                        attempts.last_record = other.record;
                    }
                    Poll::Pending => i += 1,
                }
            }
            if let Some(timer) = attempts.timer.as_mut()
                && timer.as_mut().poll(cx).is_ready()
            {
                attempts.timer = None;
                attempts.due = true;
            }
            if attempts.due {
                match attempts.poll_start(cx) {
                    Start::Started => continue,
                    Start::Failed(error) => {
                        // The service is broken: no more attempts start, but those in flight
                        // (hedges) may still answer; the error is the answer only without them.
                        attempts.stop();
                        let first_running =
                            matches!(this.first.as_ref().get_ref(), Slot::Running { .. });
                        if !first_running && attempts.others.is_empty() {
                            attempts.finish();
                            return Poll::Ready(Err(error));
                        }
                        attempts.last = Some(Err(error));
                        attempts.last_record = None;
                    }
                    Start::Waiting | Start::Refused => {}
                }
            }
            let first_running = matches!(this.first.as_ref().get_ref(), Slot::Running { .. });
            if !first_running
                && attempts.others.is_empty()
                && attempts.timer.is_none()
                && !attempts.due
            {
                let answer = attempts
                    .last
                    .take()
                    .expect("every attempt that ended without answering left its result");
                attempts.adopt(attempts.last_record.as_ref());
                attempts.finish();
                return Poll::Ready(answer);
            }
            return Poll::Pending;
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<tonic::body::Body>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("ResponseFuture");
        match &self.attempts {
            Some(attempts) => debug
                .field("policy", &attempts.policy)
                .field("started", &attempts.started)
                .field("in_flight", &attempts.others.len()),
            None => debug.field("policy", &"none"),
        };
        debug.finish()
    }
}

/// What an attempt's start came to.
enum Start<E> {
    Started,
    /// The service is not ready yet: woken when it is.
    Waiting,
    /// No more attempts may start.
    Refused,
    /// The service failed.
    Failed(E),
}

/// One call's state beyond its first attempt: what later attempts need, and the attempts in
/// flight after the first.
pub(crate) struct Attempts<S, B>
where
    S: Service<Request<tonic::body::Body>>,
{
    service: S,
    head: Head,
    replay: Arc<Replay<B>>,
    shared: Arc<Shared>,
    policy: Policy,
    /// Attempts started, the first included.
    started: u32,
    /// Retries since the last pushback: the backoff's exponent.
    backoff_retries: u32,
    deadline: Option<Instant>,
    rpc: Option<Rpc>,
    /// The attempts in flight after the first.
    others: Vec<Other<S::Future>>,
    /// When the next attempt is due (a backoff, a hedging delay or a pushback).
    timer: Option<Pin<Box<Sleep>>>,
    /// The next attempt starts as soon as the service is ready.
    due: bool,
    /// No more attempts start.
    stopped: bool,
    /// The budget refused this call an attempt (counted once).
    refused: bool,
    /// The result of the last attempt that ended without being the answer.
    last: Option<Result<S::Response, S::Error>>,
    /// The record of the hedge `last` came from (see `adopt`).
    last_record: Option<Rpc>,
}

impl<S, B> Attempts<S, B>
where
    S: Service<Request<tonic::body::Body>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// Sends the first attempt with `service` (ready) and keeps what the later ones need.
    pub(crate) fn start(
        mut service: S,
        request: Request<B>,
        policy: Policy,
        shared: &Arc<Shared>,
    ) -> (Box<Self>, (u32, S::Future)) {
        let (parts, body) = request.into_parts();
        let deadline = grpc_timeout(&parts.headers).map(deadline_after);
        let rpc = Rpc::from_extensions(&parts.extensions)
            .filter(|rpc| rpc.side() == Side::Client)
            .cloned();
        let replay = Replay::new(body, Arc::clone(&shared.accounting));
        let head = Head::of(&parts);
        let reader = replay.reader();
        let first_reader = reader.id();
        let first = service.call(Request::from_parts(parts, Body::new(reader)));
        let mut attempts = Box::new(Attempts {
            service,
            head,
            replay,
            shared: Arc::clone(shared),
            policy,
            started: 1,
            backoff_retries: 0,
            deadline,
            rpc,
            others: Vec::new(),
            timer: None,
            due: false,
            stopped: false,
            refused: false,
            last: None,
            last_record: None,
        });
        attempts.arm_hedge();
        (attempts, (first_reader, first))
    }

    /// What the result of the attempt whose body is read by `reader` means: `Some` when it
    /// is the call's answer (committed: its body is kept no more).
    fn ended<ResBody>(
        &mut self,
        result: Result<http::Response<ResBody>, S::Error>,
        reader: u32,
    ) -> Option<Result<http::Response<ResBody>, S::Error>>
    where
        S: Service<Request<tonic::body::Body>, Response = http::Response<ResBody>>,
    {
        match verdict(&result, self.policy.retry_on()) {
            Verdict::Success => {
                if let Some(budget) = &self.shared.budget {
                    budget.on_success();
                }
                self.replay.commit(reader);
                Some(result)
            }
            Verdict::Final => {
                self.replay.commit(reader);
                Some(result)
            }
            Verdict::Local => {
                // Never retried; with hedges in flight, they may still answer.
                self.stop();
                self.last = Some(result);
                None
            }
            Verdict::Retryable(pushback) => {
                if let Some(budget) = &self.shared.budget {
                    budget.on_failure();
                }
                self.last = Some(result);
                self.schedule(pushback);
                None
            }
        }
    }

    /// Plans the next attempt after a retryable failure, or stops.
    fn schedule(&mut self, pushback: Pushback) {
        if self.stopped {
            return;
        }
        let delay = match (self.policy, pushback) {
            (_, Pushback::Stop) => return self.stop(),
            (_, Pushback::After(delay)) if delay > self.shared.max_pushback => return self.stop(),
            (Policy::Retry(_), Pushback::After(delay)) => {
                self.backoff_retries = 0;
                delay
            }
            (Policy::Retry(policy), Pushback::None) => {
                self.backoff_retries += 1;
                policy
                    .backoff_bound(self.backoff_retries)
                    .mul_f64(fastrand::f64())
            }
            (Policy::Hedge(_), Pushback::After(delay)) => delay,
            (Policy::Hedge(_), Pushback::None) => Duration::ZERO,
        };
        if !self.may_start_more() {
            return self.stop();
        }
        if let Some(deadline) = self.deadline
            && Instant::now()
                .checked_add(delay)
                .is_none_or(|at| at >= deadline)
        {
            return self.stop();
        }
        if delay.is_zero() {
            self.timer = None;
            self.due = true;
        } else {
            self.timer = Some(Box::pin(tokio::time::sleep(delay)));
        }
    }

    /// Whether another attempt may start, as far as the policy, the buffer and the budget
    /// go (the deadline is checked where the delay is known).
    fn may_start_more(&mut self) -> bool {
        if self.stopped || self.started >= self.policy.max_attempts() || !self.replay.replayable() {
            return false;
        }
        if let Some(budget) = &self.shared.budget
            && !budget.allows()
        {
            if !self.refused {
                self.refused = true;
                self.shared.counters.budget_exhausted();
            }
            return false;
        }
        true
    }

    /// Starts the next attempt once the service is ready.
    fn poll_start(&mut self, cx: &mut Context<'_>) -> Start<S::Error> {
        let deadline_passed = self
            .deadline
            .is_some_and(|deadline| deadline <= Instant::now());
        if deadline_passed || !self.may_start_more() {
            self.stop();
            return Start::Refused;
        }
        match self.service.poll_ready(cx) {
            Poll::Pending => Start::Waiting,
            Poll::Ready(Err(error)) => Start::Failed(error),
            Poll::Ready(Ok(())) => {
                let Some((reader, record, request)) = self.request() else {
                    self.stop();
                    return Start::Refused;
                };
                self.started += 1;
                self.others.push(Other {
                    reader,
                    record,
                    future: Box::pin(self.service.call(request)),
                });
                self.due = false;
                if let Some(rpc) = &self.rpc {
                    rpc.set_attempts(self.started);
                }
                self.shared.counters.attempt(self.head.path());
                self.arm_hedge();
                Start::Started
            }
        }
    }

    /// The next attempt's request: the caller's, with `grpc-previous-rpc-attempts` and what
    /// is left of the deadline; `None` if the caller's head cannot be made again.
    fn request(&self) -> Option<(u32, Option<Rpc>, Request<Body>)> {
        let (method, uri, version, mut headers, mut extensions) = self.head.parts()?;
        // Hedges run beside the first attempt: each writes into a record of its own (a
        // limit inside that rejects a hedge must not mark a call another attempt answers);
        // the answering one's facts are the call's (`adopt`).
        let record = match (self.policy, &self.rpc) {
            (Policy::Hedge(_), Some(rpc)) => {
                let own = Rpc::starting_at(Side::Client, rpc.start());
                extensions.insert(own.clone());
                Some(own)
            }
            _ => None,
        };
        headers.insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from(self.started));
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            headers.insert(GRPC_TIMEOUT, timeout_value(left));
        }
        let reader = self.replay.reader();
        let id = reader.id();
        let mut request = Request::new(Body::new(reader));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = headers;
        *request.extensions_mut() = extensions;
        Some((id, record, request))
    }

    /// Hedging: the next hedge is due after the delay, while attempts are left.
    fn arm_hedge(&mut self) {
        if let Policy::Hedge(hedge) = self.policy
            && self.started < hedge.max_attempts
            && !self.stopped
        {
            if hedge.hedging_delay.is_zero() {
                self.due = true;
            } else {
                self.timer = Some(Box::pin(tokio::time::sleep(hedge.hedging_delay)));
            }
        }
    }

    /// The answering hedge's record: what the layers inside wrote into it becomes the call's.
    fn adopt(&self, record: Option<&Rpc>) {
        let (Some(own), Some(call)) = (record, &self.rpc) else {
            return;
        };
        if let Some(layer) = own.rejected_by() {
            call.set_rejected_by(layer);
        }
        if let Some(subject) = own.shared_subject() {
            call.set_subject(Arc::clone(subject));
        }
    }

    fn stop(&mut self) {
        self.stopped = true;
        self.due = false;
        self.timer = None;
    }

    /// The call has its answer: the other attempts are cancelled now.
    fn finish(&mut self) {
        self.stop();
        self.others.clear();
    }
}

/// An attempt in flight after the first.
struct Other<F> {
    /// Its body reader's id (see `Replay::commit`).
    reader: u32,
    /// Its own record, for a hedge.
    record: Option<Rpc>,
    future: Pin<Box<F>>,
}

/// The instant `timeout` from now, or as far as tokio's clock reaches.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}
