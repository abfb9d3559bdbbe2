//! The per-RPC record: one small shared value in the request's extensions, where the layers
//! of one stack write what they learned about a call and read what the others wrote.
//!
//! A [`Rpc`] is created once per RPC per stack — by [`RecordLayer`], or by a layer that reads
//! the record's facts when it watches an RPC and finds none — and every other layer only uses
//! one it finds, so a layer used alone allocates nothing for it. Each fact is written once: the
//! first writer wins, a later write is ignored (and reported by its `false` return); a write
//! waits only while a concurrent write of the same fact completes (a [`OnceLock`]), never on a
//! lock held across other work.
//!
//! The handler reads it too: `Rpc::of(&request)` (in a tonic handler,
//! `request.extensions().get::<Rpc>()`).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use palisade_core::rpc::{RecordLayer, Rpc};
//! use palisade_core::side::Server;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let handler = service_fn(|request: Request<Full<Bytes>>| async move {
//!     let rpc = Rpc::of(&request).expect("RecordLayer put it there");
//!     // An inner layer (jwt) would write what it verified...
//!     assert!(rpc.set_subject("alice".into()));
//!     assert!(!rpc.set_subject("mallory".into()), "the first writer wins");
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
//! });
//! let service = RecordLayer::<Server>::new().layer(handler);
//! service.oneshot(Request::new(Full::new(Bytes::new()))).await.unwrap();
//! # }
//! ```

use std::{
    fmt,
    marker::PhantomData,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use http::{Extensions, Request};
use tower_layer::Layer;
use tower_service::Service;

use crate::side::{OnSide, Server, Side};

/// The per-RPC record: cheap to clone (one reference count), shared by every layer of a
/// stack through the request's extensions; see the [module docs](self).
#[derive(Clone)]
pub struct Rpc(Arc<RpcRecord>);

/// What a [`Rpc`] holds. Fields written after creation are each written once, but for the
/// count of attempts, which a retry layer raises as it makes them.
pub struct RpcRecord {
    side: Side,
    start: Instant,
    subject: OnceLock<Arc<str>>,
    rejected_by: OnceLock<&'static str>,
    attempts: AtomicU32,
}

impl Rpc {
    /// A new record for an RPC on `side` starting now (for logging and trace: a layer that
    /// measures durations keeps its own clock).
    pub fn new(side: Side) -> Self {
        Self::starting_at(side, Instant::now())
    }

    /// A new record for an RPC on `side` that started at `start`.
    pub fn starting_at(side: Side, start: Instant) -> Self {
        Self(Arc::new(RpcRecord {
            side,
            start,
            subject: OnceLock::new(),
            rejected_by: OnceLock::new(),
            attempts: AtomicU32::new(1),
        }))
    }

    /// The record of this request, if a layer outside made one.
    pub fn of<B>(request: &Request<B>) -> Option<&Rpc> {
        request.extensions().get::<Rpc>()
    }

    /// The record in these extensions, if any.
    pub fn from_extensions(extensions: &Extensions) -> Option<&Rpc> {
        extensions.get::<Rpc>()
    }

    /// The record in these extensions, made (and inserted) for `side` when there is none or
    /// the one there is of the other side — a proxy that forwards its incoming extensions into
    /// its outgoing call carries the server's record into the client stack, whose layers must
    /// not take the server's facts as theirs nor write into it. One lookup.
    pub fn get_or_insert(extensions: &mut Extensions, side: Side) -> &Rpc {
        let rpc = extensions.get_or_insert_with(|| Rpc::new(side));
        if rpc.side() != side {
            *rpc = Rpc::new(side);
        }
        rpc
    }

    /// The side the record was made on.
    pub fn side(&self) -> Side {
        self.0.side
    }

    /// When the RPC started, as the record's creator read the clock.
    pub fn start(&self) -> Instant {
        self.0.start
    }

    /// The verified subject of the caller (written by jwt on a server), if any.
    pub fn subject(&self) -> Option<&str> {
        self.0.subject.get().map(|subject| &**subject)
    }

    /// The verified subject as it was written, shared: for a consumer that keeps it (a span
    /// attribute) without copying it.
    pub fn shared_subject(&self) -> Option<&Arc<str>> {
        self.0.subject.get()
    }

    /// Writes the verified subject; `false` if one was written before (it is kept).
    ///
    /// Pass an `Arc` cached with the verified token, so the write allocates nothing.
    pub fn set_subject(&self, subject: Arc<str>) -> bool {
        self.0.subject.set(subject).is_ok()
    }

    /// The Palisade layer that answered the call itself, if one did.
    pub fn rejected_by(&self) -> Option<&'static str> {
        self.0.rejected_by.get().copied()
    }

    /// Writes the layer that answered the call; `false` if one was written before.
    pub fn set_rejected_by(&self, layer: &'static str) -> bool {
        self.0.rejected_by.set(layer).is_ok()
    }

    /// How many attempts the call took: 1 unless a retry layer (palisade-retry) retried or
    /// hedged it — then every attempt it started, the first included (the access log's
    /// `grpc.attempts`).
    pub fn attempts(&self) -> u32 {
        self.0.attempts.load(Ordering::Relaxed)
    }

    /// Writes how many attempts the call has started so far (a retry layer, as it starts
    /// them); the count only grows: a smaller one is ignored.
    pub fn set_attempts(&self, attempts: u32) {
        self.0.attempts.fetch_max(attempts, Ordering::Relaxed);
    }

    /// The record itself.
    pub fn record(&self) -> &RpcRecord {
        &self.0
    }
}

impl fmt::Debug for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for RpcRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rpc")
            .field("side", &self.side)
            .field("start", &self.start)
            .field("subject", &self.subject.get())
            .field("rejected_by", &self.rejected_by.get())
            .field("attempts", &self.attempts.load(Ordering::Relaxed))
            .finish()
    }
}

/// Puts a [`Rpc`] into every request's extensions that has none of its side (one of the other
/// side is replaced), so the layers inside share one record; see the [module docs](self). The
/// presets put it outermost.
pub struct RecordLayer<K = Server> {
    _side: PhantomData<fn() -> K>,
}

impl<K: OnSide> RecordLayer<K> {
    /// A layer for side `K`.
    pub fn new() -> Self {
        Self { _side: PhantomData }
    }
}

impl<K: OnSide> Default for RecordLayer<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K> Clone for RecordLayer<K> {
    fn clone(&self) -> Self {
        Self { _side: PhantomData }
    }
}

impl<K: OnSide> fmt::Debug for RecordLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordLayer")
            .field("side", &K::SIDE)
            .finish()
    }
}

impl<S, K: OnSide> Layer<S> for RecordLayer<K> {
    type Service = Record<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Record {
            inner,
            _side: PhantomData,
        }
    }
}

/// The service of [`RecordLayer`]: adds the record, then calls the inner service (whose
/// future it returns unchanged).
pub struct Record<S, K = Server> {
    inner: S,
    _side: PhantomData<fn() -> K>,
}

impl<S, K> Record<S, K> {
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

impl<S: Clone, K> Clone for Record<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _side: PhantomData,
        }
    }
}

impl<S: fmt::Debug, K: OnSide> fmt::Debug for Record<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("inner", &self.inner)
            .field("side", &K::SIDE)
            .finish()
    }
}

impl<S, K, B> Service<Request<B>> for Record<S, K>
where
    S: Service<Request<B>>,
    K: OnSide,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        Rpc::get_or_insert(request.extensions_mut(), K::SIDE);
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_writer_wins_and_clones_share() {
        let rpc = Rpc::new(Side::Client);
        let other = rpc.clone();
        assert_eq!(rpc.side(), Side::Client);
        assert_eq!(rpc.subject(), None);
        assert!(rpc.set_subject("a".into()));
        assert!(!other.set_subject("b".into()));
        assert_eq!(other.subject(), Some("a"));
        assert!(other.set_rejected_by("jwt"));
        assert!(!rpc.set_rejected_by("ratelimit"));
        assert_eq!(rpc.rejected_by(), Some("jwt"));
    }

    #[test]
    fn get_or_insert_keeps_a_record_of_its_side_and_replaces_the_other_sides() {
        let mut extensions = Extensions::new();
        let start = Rpc::get_or_insert(&mut extensions, Side::Server).start();
        let again = Rpc::get_or_insert(&mut extensions, Side::Server);
        assert_eq!(again.start(), start);
        assert!(again.set_subject("alice".into()));
        // A proxy forwarding its incoming extensions into its outgoing call: the client
        // stack gets a record of its own, not the server's.
        let client = Rpc::get_or_insert(&mut extensions, Side::Client);
        assert_eq!(client.side(), Side::Client);
        assert_eq!(client.subject(), None);
        assert_eq!(
            Rpc::from_extensions(&extensions).unwrap().side(),
            Side::Client
        );
    }

    #[test]
    fn record_layer_adds_one_record_and_keeps_an_outer_one_of_its_side() {
        use std::convert::Infallible;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let inner = tower::service_fn(move |request: Request<()>| {
            let rpc = Rpc::of(&request).cloned();
            sink.lock()
                .unwrap()
                .push(rpc.map(|rpc| (rpc.side(), rpc.start())));
            std::future::ready(Ok::<_, Infallible>(()))
        });
        let mut service = RecordLayer::<crate::side::Client>::new().layer(inner);
        drop(service.call(Request::new(())));
        let mut request = Request::new(());
        let outer = Rpc::new(Side::Server);
        request.extensions_mut().insert(outer.clone());
        drop(service.call(request));
        let mut request = Request::new(());
        let outer_client = Rpc::new(Side::Client);
        request.extensions_mut().insert(outer_client.clone());
        drop(service.call(request));
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].unwrap().0, Side::Client);
        let replaced = seen[1].unwrap();
        assert_eq!(
            replaced.0,
            Side::Client,
            "the other side's record is replaced"
        );
        assert_eq!(seen[2], Some((Side::Client, outer_client.start())));
    }
}
