//! Stopping as a pod stops: the signals that ask the demo programs to drain (SIGTERM, as
//! Kubernetes sends, and SIGINT, Ctrl-C), the `--grace-period` they drain within, and the
//! [`Tracker`] that cuts what is still in flight after it.

use std::{
    collections::HashMap,
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http_body::{Body, Frame, SizeHint};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::Notify,
};
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tower::{Layer, Service};

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

/// The connections a server has open and the calls it has in flight, so that a drain past its
/// grace period can cut them for real and wait until they have ended (their spans and access
/// log lines written) before the program flushes and exits.
///
/// Wrap the listener's connections with [`Tracker::incoming`] and the service with
/// [`Tracker::layer`] (outermost).
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    inner: Arc<Tracked>,
}

#[derive(Debug, Default)]
struct Tracked {
    /// A handle on each open connection's socket, to shut it down from outside.
    connections: Mutex<HashMap<u64, std::net::TcpStream>>,
    next: AtomicU64,
    /// Calls whose future or response body is alive.
    calls: AtomicUsize,
    /// Told when `calls` falls to 0.
    idle: Notify,
}

impl Tracker {
    /// A tracker with nothing open.
    pub fn new() -> Self {
        Self::default()
    }

    /// `incoming`'s connections, each tracked until it is dropped.
    pub fn incoming<I>(&self, incoming: I) -> impl Stream<Item = io::Result<Connection>> + use<I>
    where
        I: Stream<Item = io::Result<TcpStream>>,
    {
        let tracker = self.clone();
        incoming.map(move |stream| tracker.connection(stream?))
    }

    fn connection(&self, stream: TcpStream) -> io::Result<Connection> {
        // A second handle on the same socket: shutting it down ends the connection under hyper.
        let stream = stream.into_std()?;
        let handle = stream.try_clone()?;
        let stream = TcpStream::from_std(stream)?;
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, handle);
        Ok(Connection {
            stream,
            _open: Open {
                tracker: self.inner.clone(),
                id,
            },
        })
    }

    /// Counts the calls through the service it wraps (until their response bodies end).
    pub fn layer(&self) -> TrackLayer {
        TrackLayer {
            tracker: self.inner.clone(),
        }
    }

    /// How many calls are in flight.
    pub fn calls(&self) -> usize {
        self.inner.calls.load(Ordering::Acquire)
    }

    /// Shuts every open connection down: their calls in flight are cut (hyper drops them, and
    /// their callers see the connection close).
    pub fn cut(&self) {
        let connections = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for handle in connections.values() {
            let _ = handle.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Waits until no call is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.calls() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A connection of [`Tracker::incoming`].
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    _open: Open,
}

/// Forgets the connection's handle when the connection is dropped.
#[derive(Debug)]
struct Open {
    tracker: Arc<Tracked>,
    id: u64,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.tracker
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// One call in flight, until dropped.
#[derive(Debug)]
struct InFlight(Arc<Tracked>);

impl InFlight {
    fn new(tracker: &Arc<Tracked>) -> Self {
        tracker.calls.fetch_add(1, Ordering::AcqRel);
        Self(tracker.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.calls.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The layer of [`Tracker::layer`].
#[derive(Clone, Debug)]
pub struct TrackLayer {
    tracker: Arc<Tracked>,
}

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            tracker: self.tracker.clone(),
        }
    }
}

/// The service of [`Tracker::layer`].
#[derive(Clone, Debug)]
pub struct Track<S> {
    inner: S,
    tracker: Arc<Tracked>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Track<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<TrackedBody<ResBody>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = InFlight::new(&self.tracker);
        TrackedFuture {
            inner: self.inner.call(request),
            call: Some(call),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Tracker::layer`]: its call is in flight until the response
    /// body (or, if it never resolves, this future) is dropped.
    #[derive(Debug)]
    pub struct TrackedFuture<F> {
        // Declared first, dropped first: the inner future (its span, its log line) before
        // the call stops counting.
        #[pin]
        inner: F,
        call: Option<InFlight>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let call = this.call.take();
        Poll::Ready(Ok(response.map(|inner| TrackedBody { inner, _call: call })))
    }
}

pin_project_lite::pin_project! {
    /// A response body of [`Tracker::layer`]: its call is in flight until it is dropped.
    #[derive(Debug)]
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        // After `inner`: dropped after it.
        _call: Option<InFlight>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
