//! One circuit: its state machine, and the permit each admitted call carries to its end.
//!
//! The decisions come from failsafe (a [`failsafe::FailurePolicy`] and its backoff); the
//! state machine around them is here rather than failsafe's `StateMachine`, because that one
//! reads `std::time::Instant` (tokio's paused time cannot drive it), lets every call through
//! while half-open, takes a lock on every permission check, cannot tell a probe's outcome from
//! a late outcome of a call admitted before the circuit opened, and has no way to read its
//! state. This one:
//!
//! - keeps the state and a generation in one atomic word, so a closed circuit admits a call
//!   with one atomic load and an open one rejects it with a clock read, both without a lock;
//! - bounds half-open probes with an atomic counter tagged with the half-open period it
//!   counts, released by the permit's `Drop`, so every path — success, failure, ignored
//!   outcome, cancellation, a dropped future or stream, a panic — gives the slot back, and a
//!   probe of an older period never frees a slot of the current one;
//! - bounds the half-open period itself: a probe that has not ended within the maximum wait
//!   (a hung call, a long-lived stream) counts as a failed probe, so the circuit opens again
//!   and the next half-open period admits a new probe;
//! - counts an outcome only when the circuit is still in the generation that admitted the
//!   call: probes decide half-open, late outcomes of older calls are dropped;
//! - changes state under a mutex that also guards the policy, so the gauge, the log line and
//!   the hook see the changes in order.

use std::{
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use failsafe::FailurePolicy;
use http::HeaderMap;
use metrics::{Counter, Gauge};
use palisade_core::{Counts, Observer, Outcome, Side, admit::OnHead};
use tokio::time::Instant;

use crate::{
    classify::{Rules, Timing, Verdict},
    hook::{OnStateChange, State, Transition},
    policy::{Backoff, DynPolicy, Policy},
};

/// Settings shared by every circuit of a layer.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) policy: Policy,
    pub(crate) backoff: Backoff,
    pub(crate) rules: Rules,
    pub(crate) probes: u32,
    pub(crate) successes: u32,
    pub(crate) half_open_max_wait: Duration,
    pub(crate) side: Side,
}

/// Settings and the hook, shared by every circuit of a layer.
pub(crate) struct Shared<H> {
    pub(crate) settings: Settings,
    pub(crate) hook: H,
}

/// The metric handles of one circuit, registered once.
struct Handles {
    state: Gauge,
    permitted: Counter,
    rejected: Counter,
}

impl Handles {
    fn new(name: &Arc<str>) -> Self {
        let label = || metrics::SharedString::from_shared(name.clone());
        Handles {
            state: metrics::gauge!("palisade_breaker_state", "breaker" => label()),
            permitted: metrics::counter!("palisade_breaker_permitted_total", "breaker" => label()),
            rejected: metrics::counter!("palisade_breaker_rejected_total", "breaker" => label()),
        }
    }
}

struct Core {
    policy: DynPolicy,
    /// How long the circuit was last opened for (reused when a failed probe gets no new
    /// duration from the policy, as failsafe does).
    delay: Duration,
    /// Probes that succeeded in the current half-open period.
    probe_successes: u32,
    /// Probes of the current half-open period whose response has started (headers, not
    /// trailers-only) and that have not ended: the backend is answering them.
    answered: u32,
}

/// Why a call was admitted: in the closed state, or as a half-open probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    generation: u64,
    probe: bool,
}

/// One circuit breaker.
pub(crate) struct Circuit<H> {
    name: Arc<str>,
    /// `generation << 2 | state`; the generation grows with every transition.
    word: AtomicU64,
    /// While open: until when it stays open; while half-open: until when its probes may take
    /// to end. In nanoseconds since `epoch`.
    until: AtomicU64,
    /// Probes in flight: `period << 32 | count`, `period` the low 32 bits of the generation
    /// of the half-open period they were admitted in (a new period starts from zero).
    probes: AtomicU64,
    epoch: Instant,
    core: Mutex<Core>,
    shared: Arc<Shared<H>>,
    handles: Handles,
}

const fn pack(generation: u64, state: State) -> u64 {
    generation << 2 | state.bits()
}

const fn generation(word: u64) -> u64 {
    word >> 2
}

/// The tag of a half-open period in the probe counter.
const fn period(generation: u64) -> u64 {
    generation & 0xffff_ffff
}

impl<H> Circuit<H> {
    pub(crate) fn new(name: Arc<str>, shared: Arc<Shared<H>>) -> Self {
        let settings = &shared.settings;
        let policy = settings.policy.build(&settings.backoff);
        let handles = Handles::new(&name);
        handles.state.set(State::Closed.gauge_value());
        Circuit {
            name,
            word: AtomicU64::new(pack(0, State::Closed)),
            until: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            epoch: Instant::now(),
            core: Mutex::new(Core {
                policy,
                delay: Duration::ZERO,
                probe_successes: 0,
                answered: 0,
            }),
            shared,
            handles,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn state(&self) -> State {
        State::from_bits(self.word.load(Ordering::Acquire))
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    fn now_nanos(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.epoch);
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panicking user policy must not wedge the circuit: its state stays usable.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives back a probe slot of the half-open period of `generation`; a slot of an older
    /// period is gone already.
    fn release_probe(&self, generation: u64) {
        let tag = period(generation);
        let _ = self
            .probes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n >> 32 == tag && n & 0xffff_ffff > 0).then(|| n - 1)
            });
    }

    /// Takes a probe slot of the half-open period of `generation`, if one is free.
    ///
    /// The counter still tagged with an older period starts over for this one only while
    /// `generation` is the circuit's current generation: a caller holding a stale word must
    /// not overwrite a newer period's counter (its release would then zero it, and admit one
    /// probe too many). Any change to the counter in between fails the exchange, and the
    /// check runs again.
    fn take_probe(&self, generation: u64) -> bool {
        let tag = period(generation);
        let max = u64::from(self.shared.settings.probes);
        self.probes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                if n >> 32 == tag {
                    (n & 0xffff_ffff < max).then(|| n + 1)
                } else if self::generation(self.word.load(Ordering::Acquire)) == generation {
                    Some(tag << 32 | 1)
                } else {
                    None
                }
            })
            .is_ok()
    }
}

impl<H: OnStateChange> Circuit<H> {
    /// Admits a call, or `None` when the circuit is open or its probes are all taken.
    pub(crate) fn try_acquire(&self) -> Option<Ticket> {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            match State::from_bits(word) {
                State::Closed => {
                    self.handles.permitted.increment(1);
                    return Some(Ticket {
                        generation: generation(word),
                        probe: false,
                    });
                }
                State::Open => {
                    if self.now_nanos() < self.until.load(Ordering::Acquire) {
                        self.handles.rejected.increment(1);
                        return None;
                    }
                    word = self.to_half_open(word);
                }
                State::HalfOpen => {
                    if !self.take_probe(generation(word)) {
                        let now = self.word.load(Ordering::Acquire);
                        if now != word {
                            // A stale look: the circuit moved on meanwhile.
                            word = now;
                            continue;
                        }
                        if self.now_nanos() >= self.until.load(Ordering::Acquire) {
                            // The probes took too long: decide without them.
                            word = self.expire_half_open(word);
                            continue;
                        }
                        self.handles.rejected.increment(1);
                        return None;
                    }
                    let now = self.word.load(Ordering::Acquire);
                    if now != word {
                        // The probes changed the state meanwhile: this slot is not a probe.
                        self.release_probe(generation(word));
                        word = now;
                        continue;
                    }
                    self.handles.permitted.increment(1);
                    return Some(Ticket {
                        generation: generation(word),
                        probe: true,
                    });
                }
            }
        }
    }

    /// The open duration passed: half-open, unless another call got there first. Returns the
    /// current word.
    fn to_half_open(&self, seen: u64) -> u64 {
        let mut core = self.lock();
        if self.word.load(Ordering::Acquire) == seen {
            core.probe_successes = 0;
            core.answered = 0;
            self.start_half_open_wait();
            self.transit(seen, State::HalfOpen, None);
        }
        self.word.load(Ordering::Acquire)
    }

    /// The probes of the half-open period `seen` did not end within the maximum wait. Those
    /// whose response has started (a long-lived stream: headers came, not trailers-only) show
    /// the backend answering: each counts as a successful probe. Enough of them close the
    /// circuit; some, but not enough, start a new half-open period (the successes so far
    /// kept) so that new probes can be admitted; none — hung calls — count as a failed probe,
    /// and the circuit opens again. Either way the stuck probes' late outcomes belong to an
    /// older generation and are dropped. Returns the current word.
    fn expire_half_open(&self, seen: u64) -> u64 {
        let mut core = self.lock();
        if self.word.load(Ordering::Acquire) == seen {
            let answered = std::mem::take(&mut core.answered);
            if answered == 0 {
                let delay = core.policy.mark_dead_on_failure().unwrap_or(core.delay);
                self.open(&mut core, seen, delay);
            } else {
                core.probe_successes = core.probe_successes.saturating_add(answered);
                if core.probe_successes >= self.shared.settings.successes {
                    self.close(&mut core, seen);
                } else {
                    // Same state, new generation: fresh probe slots and a fresh wait.
                    self.start_half_open_wait();
                    self.word.store(
                        pack(generation(seen) + 1, State::HalfOpen),
                        Ordering::Release,
                    );
                }
            }
        }
        self.word.load(Ordering::Acquire)
    }

    fn start_half_open_wait(&self) {
        let wait = saturating_nanos(self.shared.settings.half_open_max_wait);
        self.until
            .store(self.now_nanos().saturating_add(wait), Ordering::Release);
    }

    fn close(&self, core: &mut Core, word: u64) {
        core.policy.revived();
        core.policy.record_success();
        self.transit(word, State::Closed, None);
    }

    /// The response of the probe of `ticket` has started, and is not trailers-only: counted
    /// as answering while its half-open period lasts. Whether it was counted.
    pub(crate) fn probe_answered(&self, ticket: Ticket) -> bool {
        let mut core = self.lock();
        let word = self.word.load(Ordering::Acquire);
        let current =
            generation(word) == ticket.generation && State::from_bits(word) == State::HalfOpen;
        if current {
            core.answered += 1;
        }
        current
    }

    /// Records how an admitted call ended; `answered` when it was a probe counted by
    /// [`probe_answered`](Self::probe_answered).
    pub(crate) fn complete(&self, ticket: Ticket, verdict: Verdict, answered: bool) {
        if verdict == Verdict::Ignore && !answered {
            return;
        }
        let mut core = self.lock();
        let word = self.word.load(Ordering::Acquire);
        if generation(word) != ticket.generation {
            // Admitted before the last transition: its outcome no longer says anything.
            return;
        }
        if answered {
            // It ended: from now on its own outcome speaks for it.
            core.answered = core.answered.saturating_sub(1);
        }
        match (State::from_bits(word), verdict) {
            (State::Closed, Verdict::Success) => core.policy.record_success(),
            (State::Closed, Verdict::Failure) => {
                if let Some(delay) = core.policy.mark_dead_on_failure() {
                    self.open(&mut core, word, delay);
                }
            }
            (State::HalfOpen, Verdict::Success) => {
                core.probe_successes += 1;
                if core.probe_successes >= self.shared.settings.successes {
                    self.close(&mut core, word);
                }
            }
            (State::HalfOpen, Verdict::Failure) => {
                // The policy's next (longer) duration, or the last one again.
                let delay = core.policy.mark_dead_on_failure().unwrap_or(core.delay);
                self.open(&mut core, word, delay);
            }
            _ => {}
        }
    }

    fn open(&self, core: &mut Core, word: u64, delay: Duration) {
        core.delay = delay;
        let until = self.now_nanos().saturating_add(saturating_nanos(delay));
        self.until.store(until, Ordering::Release);
        self.transit(word, State::Open, Some(delay));
    }

    /// Moves to `to` (the caller holds the lock), then tells the gauge, the log and the hook.
    fn transit(&self, word: u64, to: State, open_for: Option<Duration>) {
        let from = State::from_bits(word);
        self.word
            .store(pack(generation(word) + 1, to), Ordering::Release);
        self.handles.state.set(to.gauge_value());
        let component = self.shared.settings.side.as_str();
        let name = &*self.name;
        match to {
            State::Open => tracing::warn!(
                target: "palisade_breaker",
                breaker = name,
                "grpc.component" = component,
                from = from.as_str(),
                to = to.as_str(),
                open_ms = open_for.map_or(0, |d| d.as_millis() as u64),
                "circuit opened"
            ),
            State::HalfOpen => tracing::info!(
                target: "palisade_breaker",
                breaker = name,
                "grpc.component" = component,
                from = from.as_str(),
                to = to.as_str(),
                "circuit half-open: probing"
            ),
            State::Closed => tracing::info!(
                target: "palisade_breaker",
                breaker = name,
                "grpc.component" = component,
                from = from.as_str(),
                to = to.as_str(),
                "circuit closed"
            ),
        }
        self.shared.hook.on_state_change(&Transition {
            breaker: name,
            from,
            to,
            open_for,
        });
    }
}

fn saturating_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl<H> fmt::Debug for Circuit<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Circuit")
            .field("name", &self.name)
            .field("state", &self.state())
            .field(
                "probes",
                &(self.probes.load(Ordering::Relaxed) & 0xffff_ffff),
            )
            .finish_non_exhaustive()
    }
}

/// The permit of one admitted call: the [`Observer`] that reports its outcome to its circuit
/// at the end of the RPC, and gives back its probe slot when dropped — whichever way the call
/// ends.
pub struct Permit<H> {
    circuit: Arc<Circuit<H>>,
    ticket: Ticket,
    timing: Timing,
    /// For a probe: where it is, shared with its [`ProbeWatch`].
    probe: Option<Arc<AtomicU8>>,
}

/// A probe in flight, its response not started.
const PROBE_PENDING: u8 = 0;
/// A probe whose response started, counted by its circuit as answering.
const PROBE_ANSWERED: u8 = 1;
/// A probe whose outcome is in.
const PROBE_ENDED: u8 = 2;

impl<H> Permit<H> {
    pub(crate) fn new(circuit: Arc<Circuit<H>>, ticket: Ticket, timing: Timing) -> Self {
        let probe = ticket.probe.then(|| Arc::new(AtomicU8::new(PROBE_PENDING)));
        Permit {
            circuit,
            ticket,
            timing,
            probe,
        }
    }

    /// The name of the circuit that admitted the call.
    pub fn breaker(&self) -> &str {
        self.circuit.name()
    }

    /// Whether the call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.ticket.probe
    }

    /// For a probe: what tells its circuit that the probe's response started.
    pub(crate) fn watch(&self) -> Option<ProbeWatch<H>> {
        Some(ProbeWatch {
            circuit: self.circuit.clone(),
            ticket: self.ticket,
            probe: self.probe.clone()?,
        })
    }
}

impl<H: OnStateChange> Observer for Permit<H> {
    fn on_end(self, outcome: Outcome, counts: Counts) {
        let verdict = self
            .circuit
            .settings()
            .rules
            .verdict(&outcome, counts, self.timing);
        let answered = self
            .probe
            .as_ref()
            .is_some_and(|probe| probe.swap(PROBE_ENDED, Ordering::AcqRel) == PROBE_ANSWERED);
        self.circuit.complete(self.ticket, verdict, answered);
        // Dropping `self` gives the probe slot back, after the outcome is in.
    }
}

impl<H> Drop for Permit<H> {
    fn drop(&mut self) {
        if self.ticket.probe {
            self.circuit.release_probe(self.ticket.generation);
        }
    }
}

impl<H> fmt::Debug for Permit<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.circuit.name())
            .field("probe", &self.ticket.probe)
            .finish_non_exhaustive()
    }
}

/// The watch on a half-open probe's response head: when the response starts and goes on
/// (headers, not trailers-only), its circuit counts the probe as answering, so that at
/// [`BreakerBuilder::half_open_max_wait`](crate::BreakerBuilder::half_open_max_wait) a healthy long-lived
/// stream counts as a success rather than a hung call. palisade-core's admission middleware
/// holds it for the [`Breaker`](crate::Breaker) ([`OnHead`]); it has no use of its own.
pub struct ProbeWatch<H> {
    circuit: Arc<Circuit<H>>,
    ticket: Ticket,
    probe: Arc<AtomicU8>,
}

impl<H: OnStateChange> OnHead for ProbeWatch<H> {
    fn on_head(self, _: &mut HeaderMap, streaming: bool) {
        // Not when the RPC ended at its head: a trailers-only answer, or (which `streaming`
        // does not tell) an empty body without a status, whose outcome is in already. The
        // head comes before the body can be polled, so nothing ends it meanwhile.
        if streaming
            && self.probe.load(Ordering::Acquire) == PROBE_PENDING
            && self.circuit.probe_answered(self.ticket)
        {
            self.probe.store(PROBE_ANSWERED, Ordering::Release);
        }
    }
}

impl<H> fmt::Debug for ProbeWatch<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeWatch")
            .field("breaker", &self.circuit.name())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit() -> Circuit<()> {
        let shared = Shared {
            settings: Settings {
                policy: Policy::consecutive_failures(1),
                backoff: Backoff::constant(Duration::from_secs(1)),
                rules: Rules::default(),
                probes: 1,
                successes: 1,
                half_open_max_wait: Duration::from_secs(30),
                side: Side::Client,
            },
            hook: (),
        };
        Circuit::new("backend".into(), Arc::new(shared))
    }

    /// Drives, one step at a time, a call that loaded the word during an older half-open
    /// period and takes (then gives back) a probe slot after the circuit moved on to a newer
    /// one: the newer period's probe must stay the only one in flight.
    #[tokio::test(start_paused = true)]
    async fn a_stale_probe_take_never_resets_a_newer_periods_counter() {
        let circuit = circuit();
        let first = circuit.try_acquire().unwrap();
        circuit.complete(first, Verdict::Failure, false);
        assert_eq!(circuit.state(), State::Open);

        tokio::time::advance(Duration::from_secs(1)).await;
        let old = circuit.try_acquire().unwrap();
        assert!(old.probe);
        assert_eq!(circuit.state(), State::HalfOpen);
        // The stale caller's look at the word, during this period.
        let stale = circuit.word.load(Ordering::Acquire);
        circuit.complete(old, Verdict::Failure, false);
        circuit.release_probe(old.generation);
        assert_eq!(circuit.state(), State::Open);

        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = circuit.try_acquire().unwrap();
        assert!(probe.probe);
        assert_eq!(circuit.state(), State::HalfOpen);
        assert_ne!(generation(stale), probe.generation);

        // Now the stale caller tries to take its slot; had it got one, it would see the word
        // changed and give it back.
        if circuit.take_probe(generation(stale)) {
            circuit.release_probe(generation(stale));
        }
        assert_eq!(
            circuit.try_acquire(),
            None,
            "the newer period's probe is still in flight"
        );
        assert_eq!(circuit.probes.load(Ordering::Acquire) & 0xffff_ffff, 1);
        circuit.complete(probe, Verdict::Success, false);
        circuit.release_probe(probe.generation);
        assert_eq!(circuit.state(), State::Closed);
    }
}
