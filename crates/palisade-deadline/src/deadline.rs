//! [`Deadline`], the instant an RPC must be over by, and the current deadline of the task
//! being polled ([`current`]).

use std::{cell::Cell, fmt, marker::PhantomData, time::Duration};

use tokio::time::Instant;

thread_local! {
    static CURRENT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The instant an RPC must be over by, on tokio's clock (so `tokio::time::pause` drives it
/// in tests).
///
/// A server's [`DeadlineLayer`](crate::DeadlineLayer) puts the call's deadline in the request
/// extensions ([`Deadline::from_extensions`]) and makes it [current](crate::current) while
/// the handler's future and the response body are polled; a client layer reads the current
/// deadline and sends what is left of it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// The deadline at `instant`.
    pub fn at(instant: Instant) -> Self {
        Self { at: instant }
    }

    /// The deadline `timeout` from now (or as far as tokio's clock reaches).
    pub fn after(timeout: Duration) -> Self {
        Self::after_from(Instant::now(), timeout)
    }

    pub(crate) fn after_from(now: Instant, timeout: Duration) -> Self {
        // About 30 years: what tokio itself uses as "far future".
        const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
        Self {
            at: now
                .checked_add(timeout)
                .unwrap_or_else(|| now + FAR.min(timeout)),
        }
    }

    /// The instant.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// The time left: zero once the deadline has passed.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn is_passed(&self) -> bool {
        self.at <= Instant::now()
    }

    /// The deadline a server's layer put in these request extensions.
    pub fn from_extensions(extensions: &http::Extensions) -> Option<Self> {
        extensions.get::<Self>().copied()
    }

    /// Makes this deadline current on this thread until the guard is dropped — or keeps the
    /// current one when it is earlier: the current deadline is the earliest one entered.
    /// The layers enter it around each poll; enter it yourself around work that runs
    /// elsewhere (a task spawned by the handler does not inherit it).
    pub fn enter(&self) -> Entered {
        let previous = CURRENT.with(|current| {
            let previous = current.get();
            let earliest = match previous {
                Some(previous) if previous <= self.at => previous,
                _ => self.at,
            };
            current.set(Some(earliest));
            previous
        });
        Entered {
            previous,
            _not_send: PhantomData,
        }
    }
}

impl fmt::Debug for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deadline")
            .field("remaining", &self.remaining())
            .finish()
    }
}

impl palisade_core::observe::Scope for Deadline {
    type Guard<'a> = Entered;

    fn enter(&self) -> Entered {
        Deadline::enter(self)
    }
}

/// The deadline of the RPC whose future (or response body) this thread is polling, if a
/// layer (or [`Deadline::enter`]) made one current.
///
/// ```
/// use std::time::Duration;
/// use palisade_deadline::{current, Deadline};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// assert!(current().is_none());
/// let deadline = Deadline::after(Duration::from_millis(300));
/// {
///     let _entered = deadline.enter();
///     assert_eq!(current(), Some(deadline));
///     // An inner, later deadline does not extend the current one.
///     let _inner = Deadline::after(Duration::from_secs(5)).enter();
///     assert_eq!(current().unwrap().remaining(), Duration::from_millis(300));
/// }
/// assert!(current().is_none());
/// # }
/// ```
pub fn current() -> Option<Deadline> {
    CURRENT.with(Cell::get).map(Deadline::at)
}

/// Keeps a [`Deadline`] current until dropped; see [`Deadline::enter`]. Not `Send`: it
/// belongs to the poll that entered it.
#[must_use = "the deadline is current only while the guard lives"]
pub struct Entered {
    previous: Option<Instant>,
    _not_send: PhantomData<*const ()>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let previous = self.previous;
        CURRENT.with(|current| current.set(previous));
    }
}

impl fmt::Debug for Entered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entered").finish_non_exhaustive()
    }
}
