//! Stopping as a pod stops: the signals that ask the demo programs to drain (SIGTERM, as
//! Kubernetes sends, and SIGINT, Ctrl-C) and the `--grace-period` they drain within.

use std::time::Duration;

/// How long calls in flight may take to finish once a program is asked to stop, unless
/// `--grace-period` says otherwise.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);

/// Parses a `--grace-period`: milliseconds (`500`), or a whole number with a unit (`500ms`,
/// `10s`).
pub fn parse_grace_period(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (number, millis_per_unit) = match value.strip_suffix("ms") {
        Some(number) => (number, 1),
        None => match value.strip_suffix('s') {
            Some(number) => (number, 1_000),
            None => (value, 1),
        },
    };
    let number = number.trim();
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected milliseconds, or a whole number with `ms` or `s` (`10s`)".into());
    }
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(millis_per_unit))
        .map(Duration::from_millis)
        .ok_or_else(|| "too long a grace period".into())
}

/// The signals that ask a program to stop: SIGTERM and SIGINT (Ctrl-C elsewhere than Unix).
///
/// Listening starts when it is made, so make it before serving: from then on, a signal is
/// kept until [`recv`](Signals::recv) or [`try_recv`](Signals::try_recv) takes it, instead of
/// ending the process at once.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening. Call it inside a Tokio runtime.
    pub fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Waits for the next signal; its name.
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => "SIGTERM",
                _ = self.interrupt.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }

    /// A signal received and not yet taken, without waiting.
    pub fn try_recv(&mut self) -> Option<&'static str> {
        #[cfg(unix)]
        {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if self.terminate.poll_recv(&mut cx).is_ready() {
                return Some("SIGTERM");
            }
            if self.interrupt.poll_recv(&mut cx).is_ready() {
                return Some("SIGINT");
            }
            None
        }
        #[cfg(not(unix))]
        None
    }
}
