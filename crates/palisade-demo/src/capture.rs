//! What `tracing` says while a closure runs: for tests of "warns once" and "says nothing".

use std::sync::{Arc, Mutex, PoisonError};

/// Runs `f` with a `tracing` subscriber for this thread that keeps every event at WARN or
/// above, and returns `f`'s value with the text of those events.
///
/// With one dispatcher registered, `tracing` computes a new callsite's interest from the
/// default of whichever thread reaches it first — another test's, which may have none — and
/// caches "never" for good, so a warning would go unseen and "no warning" would pass vacuously.
/// A second dispatcher is kept alive while `f` runs, so `tracing` asks each of them.
///
/// ```
/// let ((), text) = palisade_demo::capture::warnings_during(|| tracing::warn!("careful"));
/// assert!(text.contains("careful"));
/// ```
pub fn warnings_during<T>(f: impl FnOnce() -> T) -> (T, String) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let value = tracing::subscriber::with_default(subscriber, f);
    let bytes = captured.0.lock().unwrap_or_else(PoisonError::into_inner);
    (value, String::from_utf8_lossy(&bytes).into_owned())
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
