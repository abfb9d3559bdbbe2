//! The observed body: forwards every frame unchanged while counting messages and bytes, and
//! tells its [`Observer`] exactly once how the stream ended.

use std::{
    io::IoSlice,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::{
    code::Code,
    counter::MessageCounter,
    future::OnUnwind,
    observe::{Counts, Observer, Side},
    outcome::{Outcome, Source},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// A response body: its trailers carry the RPC's status.
    Response(Side),
    /// A request body: it ends `Ok` at its end, `Cancelled` when dropped before.
    Request(Side),
}

pin_project! {
    /// A body that forwards every frame of `B` unchanged (same bytes, same trailers, same
    /// `size_hint` and `is_end_stream`), counts gRPC messages and bytes, and reports exactly one
    /// end to its [`Observer`].
    ///
    /// Response bodies end with the code in their trailers (`Unknown` when the stream ends
    /// without one), the body's error, or `Cancelled` when dropped before the end. Request
    /// bodies end `Ok` at their end of stream. A panic of the inner body while this body polls it
    /// ends either kind `Internal` ([`Source::Panicked`]). A drop while the thread unwinds from
    /// a panic elsewhere is `Cancelled` on [`Side::Client`] (the calling program panicked, not
    /// the backend) and `Internal` on [`Side::Server`] (the server's own code panicked).
    /// [`ObservedFuture`](crate::ObservedFuture) makes response bodies;
    /// [`ObservedBody::request`] wraps request bodies.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use palisade_core::{observe::on_end, ObservedBody, Side};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let frames = Bytes::from_static(&[0, 0, 0, 0, 2, b'h', b'i']);
    /// let body = ObservedBody::request(Full::new(frames.clone()), Side::Server, on_end(move |o, c| {
    ///     tx.send((o.code(), c.messages)).unwrap();
    /// }));
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), frames);
    /// assert_eq!(rx.recv().unwrap(), (tonic::Code::Ok, 1));
    /// # }
    /// ```
    pub struct ObservedBody<B, O: Observer> {
        #[pin]
        inner: B,
        observer: Option<O>,
        counter: MessageCounter,
        bytes: u64,
        role: Role,
    }

    impl<B, O: Observer> PinnedDrop for ObservedBody<B, O> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(observer) = this.observer.take() {
                let counts = Counts { messages: this.counter.messages(), bytes: *this.bytes };
                let side = match this.role {
                    Role::Response(side) | Role::Request(side) => *side,
                };
                observer.on_end(Outcome::dropped(side, std::thread::panicking()), counts);
            }
        }
    }
}

impl<B, O: Observer> ObservedBody<B, O> {
    /// Observes a request body.
    pub fn request(inner: B, side: Side, observer: O) -> Self {
        Self::with_role(inner, Some(observer), Role::Request(side))
    }

    /// Observes a response body; its end is the end of the RPC.
    pub fn response(inner: B, side: Side, observer: O) -> Self {
        Self::with_role(inner, Some(observer), Role::Response(side))
    }

    /// A response body whose RPC already ended (trailers-only): frames pass, nothing is counted.
    pub fn ended(inner: B, side: Side) -> Self {
        Self::with_role(inner, None, Role::Response(side))
    }

    fn with_role(inner: B, observer: Option<O>, role: Role) -> Self {
        Self {
            inner,
            observer,
            counter: MessageCounter::default(),
            bytes: 0,
            role,
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Whether the end has been reported.
    pub fn has_ended(&self) -> bool {
        self.observer.is_none()
    }
}

impl<B, O> Body for ObservedBody<B, O>
where
    B: Body,
    B::Error: 'static,
    O: Observer,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if this.observer.is_none() {
            return this.inner.poll_frame(cx);
        }
        let frame = {
            // A panic in the inner body ends the RPC here, while it unwinds.
            let _guard = OnUnwind {
                counts: Counts {
                    messages: this.counter.messages(),
                    bytes: *this.bytes,
                },
                observer: this.observer,
            };
            ready!(this.inner.as_mut().poll_frame(cx))
        };
        let Some(observer) = this.observer.as_mut() else {
            return Poll::Ready(frame);
        };
        let outcome = classify(
            &frame,
            this.inner.is_end_stream(),
            *this.role,
            this.counter,
            this.bytes,
            observer,
        );
        if let Some(outcome) = outcome {
            let counts = Counts {
                messages: this.counter.messages(),
                bytes: *this.bytes,
            };
            if let Some(observer) = this.observer.take() {
                observer.on_end(outcome, counts);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Default, O: Observer> Default for ObservedBody<B, O> {
    fn default() -> Self {
        Self::ended(B::default(), Side::Server)
    }
}

impl<B: std::fmt::Debug, O: Observer> std::fmt::Debug for ObservedBody<B, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedBody")
            .field("inner", &self.inner)
            .field("ended", &self.observer.is_none())
            .field("counter", &self.counter)
            .finish()
    }
}

/// Counts a frame's messages and bytes (calling `on_message` for each message) and says how
/// the stream ended if this frame ends it.
pub(crate) fn classify<D: Buf, E: 'static, O: Observer>(
    frame: &Option<Result<Frame<D>, E>>,
    inner_ended: bool,
    role: Role,
    counter: &mut MessageCounter,
    bytes: &mut u64,
    observer: &mut O,
) -> Option<Outcome> {
    match frame {
        Some(Ok(frame)) => {
            if let Some(data) = frame.data_ref() {
                *bytes += data.remaining() as u64;
                for _ in 0..feed(counter, data) {
                    observer.on_message();
                }
            }
            match frame.trailers_ref() {
                Some(trailers) => Some(match role {
                    Role::Response(_) => Outcome::from_trailers(trailers),
                    Role::Request(_) => Outcome::new(Code::Ok, Source::EndOfStream),
                }),
                None if inner_ended => Some(end_of_stream(role)),
                None => None,
            }
        }
        Some(Err(error)) => {
            let fallback = match role {
                Role::Response(side) => side.error_fallback(),
                Role::Request(_) => Code::Cancelled,
            };
            Some(Outcome::from_error(error, Source::BodyError, fallback))
        }
        None => Some(end_of_stream(role)),
    }
}

fn end_of_stream(role: Role) -> Outcome {
    match role {
        Role::Response(_) => Outcome::new(Code::Unknown, Source::MissingStatus),
        Role::Request(_) => Outcome::new(Code::Ok, Source::EndOfStream),
    }
}

/// Feeds a buffer to the counter without consuming it.
fn feed(counter: &mut MessageCounter, data: &impl Buf) -> u64 {
    let chunk = data.chunk();
    if chunk.len() == data.remaining() {
        return counter.feed(chunk);
    }
    let mut slices = [IoSlice::new(&[]); 64];
    let filled = data.chunks_vectored(&mut slices);
    slices[..filled]
        .iter()
        .map(|slice| counter.feed(slice))
        .sum()
}
