//! One in-flight limit: a count of the calls holding a [`Permit`], the limit it may reach, and
//! the optional FIFO queue of calls waiting for a permit ([`QueueWait`]).

use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use palisade_core::observe::{Counts, Observer};
use palisade_core::{Code, Outcome};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::{
    adaptive::{Gradient, GradientConfig, Sample},
    series::Series,
};

/// What decides how many calls a gate lets in at once.
#[derive(Debug)]
pub(crate) enum Kind {
    /// A limit set at build.
    Fixed(u32),
    /// A limit found from latency: the controller moves it at its permits' ends.
    Adaptive(Adaptive),
}

/// An adaptive gate's controller and the limit it last set.
#[derive(Debug)]
pub(crate) struct Adaptive {
    controller: Mutex<Gradient>,
    limit: AtomicU32,
    /// The controller's time 0 (tokio's clock, so paused time drives it in tests).
    epoch: Instant,
}

impl Adaptive {
    pub(crate) fn new(config: GradientConfig) -> Self {
        let controller = Gradient::new(config);
        Self {
            limit: AtomicU32::new(controller.limit()),
            controller: Mutex::new(controller),
            epoch: Instant::now(),
        }
    }

    /// One call's end: a sample for the controller, the limit it gives back stored.
    fn sample(&self, sample: Sample) -> u32 {
        let now = self.epoch.elapsed();
        let limit = self
            .controller
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .on_sample(now, sample);
        self.limit.store(limit, Ordering::Release);
        limit
    }
}

/// One in-flight count with its limit: the whole service's, one method's, or the overflow
/// bucket's.
pub(crate) struct Gate {
    kind: Kind,
    in_flight: AtomicU32,
    queue: Option<Queue>,
    series: Series,
}

/// The calls waiting for a permit of a gate, first come first served.
struct Queue {
    max_len: usize,
    max_wait: Duration,
    waiters: Mutex<VecDeque<Arc<Waiter>>>,
}

/// One waiting call: granted a permit by a call that ended, under the queue's lock.
#[derive(Default)]
struct Waiter {
    granted: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Waiter {
    fn grant(&self) {
        self.granted.store(true, Ordering::Release);
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn is_granted(&self) -> bool {
        self.granted.load(Ordering::Acquire)
    }
}

/// What a gate answered a call that asked it for a permit.
pub(crate) enum Entry {
    /// A permit, at once.
    Admitted(Permit),
    /// A place in the queue, for at most this long.
    Queued(QueueWait),
    /// Full, and so is the queue (or there is none).
    Full,
}

impl Gate {
    pub(crate) fn new(kind: Kind, queue: Option<(usize, Duration)>, series: Series) -> Self {
        let limit = match &kind {
            Kind::Fixed(limit) => *limit,
            Kind::Adaptive(adaptive) => adaptive.limit.load(Ordering::Relaxed),
        };
        series.limit.set(f64::from(limit));
        Self {
            kind,
            in_flight: AtomicU32::new(0),
            queue: queue.map(|(max_len, max_wait)| Queue {
                max_len,
                max_wait,
                waiters: Mutex::new(VecDeque::new()),
            }),
            series,
        }
    }

    /// The most calls this gate lets in at once, now.
    pub(crate) fn limit(&self) -> u32 {
        match &self.kind {
            Kind::Fixed(limit) => *limit,
            Kind::Adaptive(adaptive) => adaptive.limit.load(Ordering::Acquire),
        }
    }

    /// The gate's series.
    pub(crate) fn series(&self) -> &Series {
        &self.series
    }

    /// The calls holding a permit now.
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The calls waiting in the queue now.
    pub(crate) fn queued(&self) -> usize {
        self.queue.as_ref().map_or(0, |queue| {
            queue
                .waiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
        })
    }

    /// One more call in flight, if `limit` allows it.
    #[inline]
    fn try_acquire(&self, limit: u32) -> bool {
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.series.in_flight.increment(1.0);
                    return true;
                }
                Err(now) => current = now,
            }
        }
    }

    /// A permit for a call, under `limit` (the gate's own, or — in the overflow bucket — the
    /// method's); else a place in the queue for at most `deadline` (the call's own, if it has
    /// one) or the queue's max wait, whichever is shorter; else [`Entry::Full`].
    #[inline]
    pub(crate) fn enter(
        self: &Arc<Self>,
        limit: u32,
        deadline: impl FnOnce() -> Option<Duration>,
    ) -> Entry {
        if self.try_acquire(limit) {
            return Entry::Admitted(Permit::new(self.clone()));
        }
        let Some(queue) = &self.queue else {
            return Entry::Full;
        };
        let wait = deadline().map_or(queue.max_wait, |deadline| deadline.min(queue.max_wait));
        let mut waiters = queue.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        // A call may have ended since: its permit went back to the count, not to a waiter,
        // only if nobody waited, so this is first come first served still.
        if waiters.is_empty() && self.try_acquire(limit) {
            return Entry::Admitted(Permit::new(self.clone()));
        }
        if waiters.len() >= queue.max_len || wait.is_zero() {
            return Entry::Full;
        }
        let waiter = Arc::new(Waiter::default());
        waiters.push_back(waiter.clone());
        drop(waiters);
        Entry::Queued(QueueWait {
            ticket: Some(Ticket {
                gate: self.clone(),
                waiter,
                settled: false,
            }),
            sleep: tokio::time::sleep(wait),
        })
    }

    /// A permit goes back: to the first waiter, or to the count.
    fn release(&self) {
        if let Some(queue) = &self.queue {
            let mut waiters = queue.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(waiter) = waiters.pop_front() {
                // Handed over: as many calls in flight as before.
                waiter.grant();
                return;
            }
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            drop(waiters);
        } else {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        self.series.in_flight.decrement(1.0);
    }

    /// Counts a refused call.
    pub(crate) fn rejected(&self) {
        self.series.rejected.increment(1);
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("limiter", &self.series.name)
            .field("kind", &self.kind)
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .finish()
    }
}

/// A call's place under an in-flight limit, held from its admission until the RPC ends —
/// trailers, an error, a drop of its response future or body, a cancellation, a panic — and
/// given back exactly once, when it is dropped (the admission's observer: the end itself is
/// not looked at).
pub struct Permit {
    gate: Arc<Gate>,
    /// Under an adaptive limit: when the call was admitted, and how many were in flight then.
    timed: Option<(Instant, u32)>,
}

impl Permit {
    fn new(gate: Arc<Gate>) -> Self {
        let timed = match gate.kind {
            Kind::Fixed(_) => None,
            Kind::Adaptive(_) => Some((Instant::now(), gate.in_flight())),
        };
        Self { gate, timed }
    }
}

impl Observer for Permit {
    fn on_end(self, outcome: Outcome, _: Counts) {
        if let (Kind::Adaptive(adaptive), Some((admitted, inflight))) =
            (&self.gate.kind, self.timed)
        {
            // A call its caller gave up on says nothing of the backend's latency.
            if outcome.code() != Code::Cancelled {
                let limit = adaptive.sample(Sample {
                    rtt: admitted.elapsed(),
                    inflight,
                });
                self.gate.series.limit.set(f64::from(limit));
            }
        }
        // Dropped here: the permit goes back.
    }

    /// A fixed limit's permit only needs the end (the middleware then reads no status and
    /// counts nothing); an adaptive one reads the code, to leave out cancelled calls.
    fn reads_outcome(&self) -> bool {
        self.timed.is_some()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("limiter", &self.gate.series.name)
            .finish()
    }
}

/// A waiting call's place in the queue: leaves it when dropped, and gives back a permit it was
/// granted but never took.
struct Ticket {
    gate: Arc<Gate>,
    waiter: Arc<Waiter>,
    settled: bool,
}

impl Ticket {
    /// The permit, if it was granted; else the ticket leaves the queue (`None`).
    fn settle(mut self) -> Option<Permit> {
        self.settled = true;
        self.leave().then(|| Permit::new(self.gate.clone()))
    }

    /// Takes the waiter out of the queue, unless it was granted a permit already (`true`).
    fn leave(&self) -> bool {
        let Some(queue) = &self.gate.queue else {
            return false;
        };
        let mut waiters = queue.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if self.waiter.is_granted() {
            return true;
        }
        if let Some(index) = waiters.iter().position(|w| Arc::ptr_eq(w, &self.waiter)) {
            waiters.remove(index);
        }
        false
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.settled && self.leave() {
            // Granted while going away: the permit goes on to the next waiter.
            self.gate.release();
        }
    }
}

pin_project! {
    /// The wait of a call queued for a permit ([`LimitBuilder::queue`](crate::LimitBuilder::queue)):
    /// resolves to the permit when a call ends and hands it over (first come first served), or
    /// to `None` when the call's deadline (`grpc-timeout`) or the queue's max wait passes first.
    /// Dropped before (the caller went away), it leaves the queue, and a permit granted in the
    /// meantime goes on to the next waiter.
    pub struct QueueWait {
        ticket: Option<Ticket>,
        #[pin]
        sleep: Sleep,
    }
}

impl QueueWait {
    /// Leaves the queue now (the call was abandoned); a permit granted meanwhile goes on.
    pub(crate) fn abandon(self: Pin<&mut Self>) {
        self.project().ticket.take();
    }
}

impl Future for QueueWait {
    type Output = Option<Permit>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Permit>> {
        let this = self.project();
        let Some(ticket) = this.ticket.as_ref() else {
            return Poll::Ready(None);
        };
        if ticket.waiter.is_granted() {
            return Poll::Ready(this.ticket.take().and_then(Ticket::settle));
        }
        {
            let mut waker = ticket
                .waiter
                .waker
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match &mut *waker {
                Some(known) => known.clone_from(cx.waker()),
                None => *waker = Some(cx.waker().clone()),
            }
        }
        if ticket.waiter.is_granted() {
            return Poll::Ready(this.ticket.take().and_then(Ticket::settle));
        }
        match this.sleep.poll(cx) {
            // Too long: out of the queue, unless granted in the meantime.
            Poll::Ready(()) => {
                let Some(ticket) = this.ticket.take() else {
                    return Poll::Ready(None);
                };
                let gate = ticket.gate.clone();
                let permit = ticket.settle();
                if permit.is_none() {
                    gate.rejected();
                }
                Poll::Ready(permit)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl fmt::Debug for QueueWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueWait")
            .field("waiting", &self.ticket.is_some())
            .field("deadline", &self.sleep.deadline())
            .finish()
    }
}
