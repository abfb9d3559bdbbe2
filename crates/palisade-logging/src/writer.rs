//! A non-blocking line writer: log lines go to a bounded in-memory buffer, and a thread of
//! their own writes them out in few large writes, off the request path.
//!
//! [`NonBlocking::builder`] (or [`non_blocking`]) starts the writer thread and returns a
//! [`LogWriter`] — cheap to clone, usable as the [`access_log`](crate::LoggingBuilder::access_log)
//! of a [`LoggingLayer`](crate::LoggingLayer), as an [`io::Write`], and as a
//! `tracing-subscriber` [`MakeWriter`](tracing_subscriber::fmt::MakeWriter) for the application's own logs — and a [`WriterGuard`].
//! Dropping the guard is a clean stop: every line handed over before it is written and the sink
//! flushed. Keep it alive until the program's last log line (in `main`, after the tracer
//! provider's shutdown).
//!
//! # Example
//!
//! ```no_run
//! use palisade_logging::{LoggingLayer, writer::NonBlocking};
//!
//! let (writer, _guard) = NonBlocking::builder().finish(std::io::stdout());
//! // The application's own logs, as JSON lines, through the same buffer…
//! tracing_subscriber::fmt().json().with_writer(writer.clone()).init();
//! // …and the access log: one JSON line per RPC, formatted by Palisade and handed over.
//! let logging = LoggingLayer::server().access_log(writer).build();
//! # drop(logging);
//! // `_guard` flushes every line when `main` returns.
//! ```
//!
//! # When the buffer is full
//!
//! The writer thread writes a batch at most [`flush_interval`](NonBlockingBuilder::flush_interval)
//! (20 ms) after its first line, or as soon as half the buffer (or 256 KiB) is full. The buffer holds
//! [`buffered_lines`](NonBlockingBuilder::buffered_lines) lines (128 000 by default). When the sink cannot keep up and the buffer is full, a line is either
//!
//! - **dropped and counted** ([`Overflow::Drop`], the default — what a server wants: a slow
//!   disk never slows its RPCs): the `palisade_log_dropped_total{reason="buffer_full"}` counter
//!   (through the `metrics` facade) and [`LogWriter::dropped`] count it; or
//! - **waited for** ([`Overflow::Block`]): the caller blocks until the writer thread makes room,
//!   so no line is lost but a slow sink slows the program down.
//!
//! # When the sink fails
//!
//! A write that fails (a closed pipe, a full disk) loses the lines of that batch: they are
//! counted in `palisade_log_dropped_total{reason="write_error"}` and [`LogWriter::dropped`], and
//! the first failure is reported once on stderr (never once per line). The writer goes on
//! trying with the next lines, so logging resumes when the sink recovers; nothing panics and no
//! caller ever sees the error.

use std::{
    fmt, io,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// The counter of lines lost, through the `metrics` facade, labelled `reason`
/// (`buffer_full`, `write_error` or `closed`).
pub const DROPPED_TOTAL: &str = "palisade_log_dropped_total";

/// The size of a batch at which the writer writes at once.
const HIGH_WATER_BYTES: usize = 256 * 1024;

/// How long the writer thread gathers a batch by default.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// The default bound of the buffer, in lines (as `tracing-appender`'s).
pub const DEFAULT_BUFFERED_LINES: usize = 128_000;

/// What a [`LogWriter`] does with a line when its buffer is full; see the
/// [module docs](self#when-the-buffer-is-full).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Drop the line and count it in `palisade_log_dropped_total` (the default).
    #[default]
    Drop,
    /// Wait until the writer thread has made room.
    Block,
}

/// Starts non-blocking writers; see the [module docs](self).
#[derive(Debug)]
pub struct NonBlocking(());

impl NonBlocking {
    /// A builder with the defaults: 128 000 lines, [`Overflow::Drop`].
    pub fn builder() -> NonBlockingBuilder {
        NonBlockingBuilder::default()
    }
}

/// A non-blocking writer to `sink` with the defaults (see [`NonBlocking::builder`]).
pub fn non_blocking<W: io::Write + Send + 'static>(sink: W) -> (LogWriter, WriterGuard) {
    NonBlocking::builder().finish(sink)
}

type OnError = Arc<dyn Fn(&io::Error) + Send + Sync>;

/// Configures and starts a non-blocking writer; made by [`NonBlocking::builder`].
#[derive(Clone)]
pub struct NonBlockingBuilder {
    buffered_lines: usize,
    overflow: Overflow,
    thread_name: String,
    flush_interval: Duration,
    on_error: OnError,
}

impl Default for NonBlockingBuilder {
    fn default() -> Self {
        Self {
            buffered_lines: DEFAULT_BUFFERED_LINES,
            overflow: Overflow::Drop,
            thread_name: "palisade-log-writer".into(),
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            on_error: Arc::new(report_on_stderr),
        }
    }
}

impl fmt::Debug for NonBlockingBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonBlockingBuilder")
            .field("buffered_lines", &self.buffered_lines)
            .field("overflow", &self.overflow)
            .field("thread_name", &self.thread_name)
            .field("flush_interval", &self.flush_interval)
            .finish_non_exhaustive()
    }
}

/// The default report of the first failed write: one line on stderr.
fn report_on_stderr(error: &io::Error) {
    use io::Write as _;
    // Never `eprintln!`: it panics when stderr is gone too.
    let _ = writeln!(
        io::stderr(),
        "palisade-logging: writing the log failed: {error}; lines that cannot be written are \
         dropped and counted in {DROPPED_TOTAL}{{reason=\"write_error\"}} (reported once)"
    );
}

impl NonBlockingBuilder {
    /// How many lines the buffer holds before [`overflow`](Self::overflow) applies (at least
    /// one).
    #[must_use]
    pub fn buffered_lines(mut self, lines: usize) -> Self {
        self.buffered_lines = lines.max(1);
        self
    }

    /// What to do with a line when the buffer is full (default [`Overflow::Drop`]).
    #[must_use]
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// The name of the writer thread (default `palisade-log-writer`).
    #[must_use]
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread_name = name.into();
        self
    }

    /// How long the writer thread gathers lines after the first one of a batch before it writes
    /// them (default 20 ms), unless half the buffer fills first: a line reaches the sink at
    /// most this late, and a busy program wakes the writer once per interval, not once per line.
    #[must_use]
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// Called once, with the first failed write's error (default: one line on stderr); later
    /// failures are only counted.
    #[must_use]
    pub fn on_error(mut self, report: impl Fn(&io::Error) + Send + Sync + 'static) -> Self {
        self.on_error = Arc::new(report);
        self
    }

    /// Starts the writer thread over `sink` and returns the writer and the guard whose drop
    /// flushes every line and stops the thread.
    ///
    /// # Panics
    ///
    /// If the operating system cannot start a thread.
    pub fn finish<W: io::Write + Send + 'static>(self, sink: W) -> (LogWriter, WriterGuard) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::with_capacity(2 * HIGH_WATER_BYTES),
                lines: 0,
                writer_idle: false,
                writer_napping: false,
                producers_waiting: 0,
                closed: false,
            }),
            data: Condvar::new(),
            space: Condvar::new(),
            max_lines: self.buffered_lines,
            high_water: (self.buffered_lines / 2).max(1),
            flush_interval: self.flush_interval,
            overflow: self.overflow,
            dropped: AtomicU64::new(0),
            reported: AtomicBool::new(false),
            on_error: self.on_error,
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(self.thread_name)
            .spawn(move || worker.run(sink))
            .expect("the log writer thread starts");
        (
            LogWriter {
                shared: Arc::clone(&shared),
            },
            WriterGuard {
                shared,
                thread: Some(thread),
            },
        )
    }
}

struct State {
    /// Whole lines, waiting for the writer thread.
    buf: Vec<u8>,
    /// How many lines `buf` holds.
    lines: usize,
    /// The writer waits for the first line of a batch.
    writer_idle: bool,
    /// The writer gathers a batch until the flush interval ends or the buffer is half full.
    writer_napping: bool,
    producers_waiting: usize,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The writer thread waits here for lines (or the close).
    data: Condvar,
    /// Blocked producers ([`Overflow::Block`]) wait here for room.
    space: Condvar,
    max_lines: usize,
    /// Lines (half the buffer) at which the writer stops gathering and writes at once.
    high_water: usize,
    flush_interval: Duration,
    overflow: Overflow,
    dropped: AtomicU64,
    /// Whether a write failure has been reported.
    reported: AtomicBool,
    on_error: OnError,
}

#[derive(Clone, Copy)]
enum Loss {
    BufferFull,
    WriteError,
    Closed,
}

impl Loss {
    fn as_str(self) -> &'static str {
        match self {
            Loss::BufferFull => "buffer_full",
            Loss::WriteError => "write_error",
            Loss::Closed => "closed",
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock is held cannot leave `State` inconsistent: go on with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the writer should write now rather than gather more: half the buffer's lines,
    /// or 256 KiB (a batch that stays in the caches and needs no fresh memory).
    fn is_high(&self, state: &State) -> bool {
        state.lines >= self.high_water || state.buf.len() >= HIGH_WATER_BYTES
    }

    fn lose(&self, lines: u64, why: Loss) {
        if lines == 0 {
            return;
        }
        self.dropped.fetch_add(lines, Ordering::Relaxed);
        metrics::counter!(DROPPED_TOTAL, "reason" => why.as_str()).increment(lines);
    }

    /// Hands one line over: appended to the buffer, or dropped, or waited for.
    fn push(&self, line: &[u8]) {
        let mut state = self.lock();
        loop {
            if state.closed {
                drop(state);
                return self.lose(1, Loss::Closed);
            }
            if state.lines < self.max_lines {
                break;
            }
            match self.overflow {
                Overflow::Drop => {
                    drop(state);
                    return self.lose(1, Loss::BufferFull);
                }
                Overflow::Block => {
                    state.producers_waiting += 1;
                    state = self
                        .space
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    state.producers_waiting -= 1;
                }
            }
        }
        state.buf.extend_from_slice(line);
        state.lines += 1;
        // Wake the writer for the first line of a batch, or when half the buffer is full: a
        // busy server makes one wake-up call per batch, never one per line.
        let wake = std::mem::take(&mut state.writer_idle)
            || (self.is_high(&state) && std::mem::take(&mut state.writer_napping));
        drop(state);
        if wake {
            self.data.notify_one();
        }
    }

    /// The writer thread: takes the whole buffer at once and writes it in one call.
    fn run<W: io::Write>(&self, mut sink: W) {
        let mut batch: Vec<u8> = Vec::with_capacity(2 * HIGH_WATER_BYTES);
        loop {
            let (lines, closed) = {
                let mut state = self.lock();
                while state.lines == 0 && !state.closed {
                    state.writer_idle = true;
                    state = self
                        .data
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                state.writer_idle = false;
                // Gather the batch for one flush interval, unless half the buffer fills first.
                let deadline = Instant::now() + self.flush_interval;
                while !state.closed && !self.is_high(&state) {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    state.writer_napping = true;
                    state = self
                        .data
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0;
                }
                state.writer_napping = false;
                std::mem::swap(&mut state.buf, &mut batch);
                let lines = std::mem::take(&mut state.lines);
                if state.producers_waiting > 0 {
                    self.space.notify_all();
                }
                (lines, state.closed)
            };
            if lines > 0 {
                // A sink that panics loses its batch like one that fails, and the thread goes on.
                let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    sink.write_all(&batch).and_then(|()| sink.flush())
                }))
                .unwrap_or_else(|_| Err(io::Error::other("the log sink panicked")));
                if let Err(error) = written {
                    self.lose(lines as u64, Loss::WriteError);
                    self.report(&error);
                }
                batch.clear();
                // A burst must not keep its memory for ever.
                if batch.capacity() > 4 * HIGH_WATER_BYTES {
                    batch.shrink_to(2 * HIGH_WATER_BYTES);
                }
            }
            if closed && lines == 0 {
                return;
            }
        }
    }

    fn report(&self, error: &io::Error) {
        if !self.reported.swap(true, Ordering::Relaxed) {
            (self.on_error)(error);
        }
    }

    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        drop(state);
        self.data.notify_one();
        self.space.notify_all();
    }
}

/// The writing end of a non-blocking writer: hands whole lines to the writer thread. Cheap to
/// clone; see the [module docs](self).
///
/// As an [`io::Write`], each `write` call is taken as one line (as `tracing-subscriber`'s `fmt`
/// writes one whole event per call) and always succeeds: a line that is dropped is counted, not
/// returned as an error.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

impl LogWriter {
    /// Hands one line (with its `\n`) to the writer thread.
    pub fn write_line(&self, line: &[u8]) {
        self.shared.push(line);
    }

    /// How many lines were lost so far: dropped because the buffer was full, written after the
    /// guard was dropped, or lost to a failed write.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogWriter")
            .field("buffered_lines", &self.shared.max_lines)
            .field("overflow", &self.shared.overflow)
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.shared.push(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.shared.push(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Stops the writer thread when dropped, after it has written every line handed over before
/// and flushed the sink. Lines handed over after the drop are counted as lost (`closed`).
#[must_use = "dropping the guard stops the writer: keep it until the program's last log line"]
pub struct WriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl WriterGuard {
    /// A writer to the same buffer.
    pub fn writer(&self) -> LogWriter {
        LogWriter {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl fmt::Debug for WriterGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriterGuard").finish_non_exhaustive()
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.shared.close();
        if let Some(thread) = self.thread.take() {
            // The thread only ends by returning; a panicking sink has already lost its lines.
            let _ = thread.join();
        }
    }
}
