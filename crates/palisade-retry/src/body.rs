//! The request body each attempt sends: the caller's, read once into a buffer that later
//! attempts replay.

use std::{
    fmt,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use palisade_core::build::BoxError;
use smallvec::SmallVec;

/// Why an attempt's body could not be sent; the attempt fails, the call does not retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayError {
    /// The request body outgrew the replay buffer while another attempt was reading it: only
    /// that attempt can go on.
    TooLarge,
    /// Reading the caller's body failed (the attempt that read it got the error itself).
    SourceFailed,
    /// Another attempt's answer is the call's: this attempt was cancelled.
    Committed,
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplayError::TooLarge => "request body too large to replay",
            ReplayError::SourceFailed => "reading the request body failed",
            ReplayError::Committed => "another attempt answered the call",
        })
    }
}

impl std::error::Error for ReplayError {}

/// What each kept frame counts against the limits besides its bytes: its handle in the buffer,
/// so that a body of many tiny (or empty) frames is bounded too.
pub(crate) const FRAME_COST: usize = 32;

/// The bytes buffered by every call of one layer, against its limit.
#[derive(Debug)]
pub(crate) struct Accounting {
    buffered: AtomicUsize,
    per_call: usize,
    total: usize,
}

impl Accounting {
    pub(crate) fn new(per_call: usize, total: usize) -> Self {
        Accounting {
            buffered: AtomicUsize::new(0),
            per_call,
            total,
        }
    }

    /// The bytes buffered now, by every call in flight.
    pub(crate) fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }

    fn try_add(&self, bytes: usize) -> bool {
        let total = self.total;
        self.buffered
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |buffered| {
                buffered.checked_add(bytes).filter(|sum| *sum <= total)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.buffered.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// How far the caller's body has been read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// More to read.
    Open,
    /// Read to its end: every frame is buffered.
    Ended,
    /// Reading it failed.
    Failed,
    /// It outgrew the buffer, which was dropped; only this reader goes on reading it.
    Overflowed { owner: u32 },
}

struct State<B> {
    source: Option<Pin<Box<B>>>,
    /// The frames read so far: one, inline, for a unary call.
    frames: SmallVec<[Bytes; 1]>,
    trailers: Option<HeaderMap>,
    buffered: usize,
    end: End,
    /// Readers waiting at the tip while another one reads the caller's body.
    waiting: Vec<Waker>,
    /// Waiting readers to wake once the read holding the lock lets it go.
    woken: Vec<Waker>,
    next_reader: u32,
    /// The reader of the attempt that answered the call: only it reads on, and nothing more
    /// is kept (a committed call is never replayed).
    committed: Option<u32>,
    /// The frames before this one were given back (after the commit, as its reader passed
    /// them).
    released: usize,
}

/// One call's replay buffer, shared by its attempts' bodies.
pub(crate) struct Replay<B> {
    state: Mutex<State<B>>,
    accounting: Arc<Accounting>,
}

impl<B> Replay<B> {
    pub(crate) fn new(source: B, accounting: Arc<Accounting>) -> Arc<Self> {
        Arc::new(Replay {
            state: Mutex::new(State {
                source: Some(Box::pin(source)),
                frames: SmallVec::new(),
                trailers: None,
                buffered: 0,
                end: End::Open,
                waiting: Vec::new(),
                woken: Vec::new(),
                next_reader: 0,
                committed: None,
                released: 0,
            }),
            accounting,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<B>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A reader from the first frame, for a new attempt.
    pub(crate) fn reader(self: &Arc<Self>) -> Reader<B> {
        let id = {
            let mut state = self.lock();
            state.next_reader = state.next_reader.wrapping_add(1);
            state.next_reader
        };
        Reader {
            replay: Arc::clone(self),
            id,
            position: 0,
            trailers_sent: false,
        }
    }

    /// Whether a new attempt could send the whole body: it did not outgrow the buffer and
    /// reading it did not fail.
    pub(crate) fn replayable(&self) -> bool {
        let state = self.lock();
        state.committed.is_none() && matches!(state.end, End::Open | End::Ended)
    }

    /// The attempt read by reader `winner` answered the call: nothing more is kept, what is
    /// kept goes as that reader passes it, and the other readers fail.
    pub(crate) fn commit(&self, winner: u32) {
        let mut state = self.lock();
        state.committed = Some(winner);
        let waiting = std::mem::take(&mut state.waiting);
        drop(state);
        wake(waiting);
    }
}

impl<B> Drop for Replay<B> {
    fn drop(&mut self) {
        let buffered = self.lock().buffered;
        self.accounting.release(buffered);
    }
}

impl<B> fmt::Debug for Replay<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Replay")
            .field("frames", &state.frames.len())
            .field("buffered", &state.buffered)
            .field("end", &state.end)
            .finish()
    }
}

/// One attempt's body: its place in the call's replay buffer — the caller's body, read once
/// by whichever attempt is furthest ahead, each frame kept (up to the buffer limits) for the
/// attempts after it.
pub(crate) struct Reader<B> {
    replay: Arc<Replay<B>>,
    id: u32,
    /// The next frame to send.
    position: usize,
    trailers_sent: bool,
}

impl<B> Body for Reader<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut().read(cx)
    }

    fn is_end_stream(&self) -> bool {
        let state = self.replay.lock();
        state.end == End::Ended
            && self.position >= state.frames.len()
            && (self.trailers_sent || state.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.hint()
    }
}

impl<B> Reader<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    /// This reader's id, which [`Replay::commit`] names.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    fn read(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let replay = Arc::clone(&self.replay);
        let mut state = replay.lock();
        let polled = self.read_locked(&mut state, cx);
        // Readers to wake are woken once the lock is let go: a waker that runs (or drops) a
        // task inline must not find it held.
        let woken = std::mem::take(&mut state.woken);
        drop(state);
        wake(woken);
        polled
    }

    fn read_locked(
        &mut self,
        state: &mut State<B>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match state.committed {
            Some(winner) if winner != self.id => {
                return Poll::Ready(Some(Err(ReplayError::Committed.into())));
            }
            Some(_) => self.release_passed(state),
            None => {}
        }
        loop {
            if let Some(data) = state.frames.get(self.position) {
                let data = data.clone();
                self.position += 1;
                if state.committed.is_some() {
                    self.release_passed(state);
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            match state.end {
                End::Ended => return Poll::Ready(self.trailers(state)),
                End::Failed => return Poll::Ready(Some(Err(ReplayError::SourceFailed.into()))),
                End::Overflowed { owner } if owner != self.id => {
                    return Poll::Ready(Some(Err(ReplayError::TooLarge.into())));
                }
                End::Open | End::Overflowed { .. } => {}
            }
            // At the tip: read the caller's body. Past the buffer, the state stays
            // `Overflowed` to its end: no later attempt may take an empty buffer for the body.
            let overflowed = matches!(state.end, End::Overflowed { .. });
            let Some(source) = state.source.as_mut() else {
                if overflowed {
                    return Poll::Ready(None);
                }
                state.end = End::Ended;
                continue;
            };
            let polled = source.as_mut().poll_frame(cx);
            match polled {
                Poll::Pending => {
                    if !state
                        .waiting
                        .iter()
                        .any(|waker| waker.will_wake(cx.waker()))
                    {
                        state.waiting.push(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    if !overflowed {
                        state.end = End::Ended;
                    }
                    state.source = None;
                    wake_later(state);
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(error))) => {
                    if !overflowed {
                        state.end = End::Failed;
                    }
                    state.source = None;
                    wake_later(state);
                    return Poll::Ready(Some(Err(error.into())));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(mut data) => {
                            let data = data.copy_to_bytes(data.remaining());
                            self.keep(state, &data);
                            Frame::data(data)
                        }
                        Err(frame) => match frame.into_trailers() {
                            Ok(trailers) => {
                                if !overflowed {
                                    state.trailers = Some(trailers.clone());
                                    state.end = End::Ended;
                                }
                                state.source = None;
                                self.trailers_sent = true;
                                Frame::trailers(trailers)
                            }
                            // A frame kind this crate does not know: not sent, not kept.
                            Err(_) => continue,
                        },
                    };
                    wake_later(state);
                    return Poll::Ready(Some(Ok(frame)));
                }
            }
        }
    }

    /// Keeps a frame this reader read from the caller's body, if the limits allow; past them,
    /// drops the buffer and goes on alone.
    fn keep(&mut self, state: &mut State<B>, data: &Bytes) {
        if matches!(state.end, End::Overflowed { .. }) || state.committed.is_some() {
            return;
        }
        let accounting = &self.replay.accounting;
        let cost = data.len() + FRAME_COST;
        let fits = state.buffered + cost <= accounting.per_call;
        if fits && accounting.try_add(cost) {
            state.frames.push(data.clone());
            state.buffered += cost;
            self.position += 1;
        } else {
            accounting.release(state.buffered);
            state.buffered = 0;
            state.frames = SmallVec::new();
            state.end = End::Overflowed { owner: self.id };
            self.position = 0;
        }
    }

    /// The winner's frames before its position are needed by no one: given back.
    fn release_passed(&self, state: &mut State<B>) {
        let upto = self.position.min(state.frames.len());
        let mut given_back = 0;
        for data in state
            .frames
            .get_mut(state.released..upto)
            .unwrap_or_default()
        {
            given_back += data.len() + FRAME_COST;
            *data = Bytes::new();
        }
        state.released = state.released.max(upto);
        state.buffered -= given_back;
        self.replay.accounting.release(given_back);
    }

    fn trailers(&mut self, state: &State<B>) -> Option<Result<Frame<Bytes>, BoxError>> {
        if self.trailers_sent {
            return None;
        }
        self.trailers_sent = true;
        state
            .trailers
            .clone()
            .map(|trailers| Ok(Frame::trailers(trailers)))
    }

    fn hint(&self) -> SizeHint {
        let state = self.replay.lock();
        let buffered: u64 = state
            .frames
            .get(self.position..)
            .unwrap_or_default()
            .iter()
            .map(|data| data.len() as u64)
            .sum();
        match (&state.end, &state.source) {
            (End::Ended, _) => SizeHint::with_exact(buffered),
            (_, Some(source)) => {
                let rest = source.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(buffered + rest.lower());
                if let Some(upper) = rest.upper() {
                    hint.set_upper(buffered + upper);
                }
                hint
            }
            (_, None) => {
                let mut hint = SizeHint::new();
                hint.set_lower(buffered);
                hint
            }
        }
    }
}

impl<B> Drop for Reader<B> {
    fn drop(&mut self) {
        // The caller's body may hold this reader's waker only: let a waiting reader read it.
        let mut state = self.replay.lock();
        let waiting = std::mem::take(&mut state.waiting);
        drop(state);
        wake(waiting);
    }
}

/// Wakes readers taken from the state, once its lock is let go (a waker that runs or drops
/// a task inline must not find it held).
fn wake(wakers: Vec<Waker>) {
    for waker in wakers {
        waker.wake();
    }
}

/// Moves the waiting readers to be woken when the read that holds the lock lets it go.
fn wake_later<B>(state: &mut State<B>) {
    let waiting = std::mem::take(&mut state.waiting);
    state.woken.extend(waiting);
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    fn accounting(per_call: usize, total: usize) -> Arc<Accounting> {
        Arc::new(Accounting::new(per_call, total))
    }

    async fn collect<B>(body: Reader<B>) -> Result<(Bytes, Option<HeaderMap>), BoxError>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned();
        Ok((collected.to_bytes(), trailers))
    }

    #[tokio::test]
    async fn every_reader_gets_the_whole_body_and_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-end", "1".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello "))),
            Ok(Frame::data(Bytes::from_static(b"world"))),
            Ok(Frame::trailers(trailers)),
        ];
        let accounting = accounting(1024, 4096);
        let replay = Replay::new(
            StreamBody::new(futures_util::stream::iter(frames)),
            Arc::clone(&accounting),
        );
        let first = collect(replay.reader()).await.unwrap();
        assert_eq!(first.0, "hello world");
        assert_eq!(first.1.unwrap()["x-end"], "1");
        assert_eq!(
            accounting.buffered(),
            11 + 2 * FRAME_COST,
            "bytes and frames"
        );
        let again = collect(replay.reader()).await.unwrap();
        assert_eq!(again.0, "hello world");
        assert_eq!(again.1.unwrap()["x-end"], "1");
        assert!(replay.replayable());
        drop(replay);
        assert_eq!(accounting.buffered(), 0, "released with the call");
    }

    #[tokio::test]
    async fn a_body_past_the_limit_goes_on_for_its_reader_only() {
        let accounting = accounting(4, 4096);
        let replay = Replay::new(
            Full::new(Bytes::from_static(b"too long")),
            Arc::clone(&accounting),
        );
        let first = collect(replay.reader()).await.unwrap();
        assert_eq!(
            first.0, "too long",
            "the attempt that read it still sends it"
        );
        assert!(!replay.replayable());
        assert_eq!(accounting.buffered(), 0, "nothing kept");
        let error = collect(replay.reader()).await.unwrap_err();
        assert_eq!(error.downcast_ref(), Some(&ReplayError::TooLarge));
    }

    #[tokio::test]
    async fn empty_frames_count_against_the_limit() {
        // Ten thousand empty data frames: without a cost per frame, a buffer that never fills.
        let frames = (0..10_000)
            .map(|_| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::new())))
            .collect::<Vec<_>>();
        let accounting = accounting(64 * FRAME_COST, 1 << 20);
        let replay = Replay::new(
            StreamBody::new(futures_util::stream::iter(frames)),
            Arc::clone(&accounting),
        );
        collect(replay.reader()).await.unwrap();
        assert!(!replay.replayable(), "past 64 frames' worth: not kept");
        assert_eq!(accounting.buffered(), 0);
    }

    #[tokio::test]
    async fn the_layer_wide_limit_counts_every_call() {
        // Room for one six-byte frame, not two.
        let accounting = accounting(1024, 2 * (6 + FRAME_COST) - 1);
        let one = Replay::new(
            Full::new(Bytes::from_static(b"123456")),
            Arc::clone(&accounting),
        );
        let two = Replay::new(
            Full::new(Bytes::from_static(b"123456")),
            Arc::clone(&accounting),
        );
        collect(one.reader()).await.unwrap();
        collect(two.reader()).await.unwrap();
        assert!(one.replayable());
        assert!(!two.replayable(), "two frames would pass the layer's limit");
        assert_eq!(accounting.buffered(), 6 + FRAME_COST);
        drop(one);
        assert_eq!(accounting.buffered(), 0);
    }

    #[tokio::test]
    async fn a_reader_waiting_at_the_tip_is_woken_when_another_reads_on() {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
        let body = StreamBody::new(tokio_stream_from(rx));
        let replay = Replay::new(body, accounting(1024, 4096));
        let a = tokio::spawn(collect(replay.reader()));
        let b = tokio::spawn(collect(replay.reader()));
        tokio::task::yield_now().await;
        tx.send(Ok(Frame::data(Bytes::from_static(b"ab"))))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(a.await.unwrap().unwrap().0, "ab");
        assert_eq!(b.await.unwrap().unwrap().0, "ab");
    }

    #[tokio::test]
    async fn after_the_commit_only_the_winner_reads_and_what_it_passed_is_given_back() {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"one"))),
            Ok(Frame::data(Bytes::from_static(b"two"))),
            Ok(Frame::data(Bytes::from_static(b"three"))),
        ];
        let accounting = accounting(1024, 4096);
        let replay = Replay::new(
            StreamBody::new(futures_util::stream::iter(frames)),
            Arc::clone(&accounting),
        );
        let mut ahead = replay.reader();
        let mut winner = replay.reader();
        assert_eq!(
            ahead.frame().await.unwrap().unwrap().into_data().unwrap(),
            "one"
        );
        assert_eq!(
            ahead.frame().await.unwrap().unwrap().into_data().unwrap(),
            "two"
        );
        assert_eq!(
            winner.frame().await.unwrap().unwrap().into_data().unwrap(),
            "one"
        );
        assert_eq!(accounting.buffered(), 6 + 2 * FRAME_COST);
        replay.commit(winner.id());
        assert!(!replay.replayable());
        let error = ahead.frame().await.unwrap().unwrap_err();
        assert_eq!(error.downcast_ref(), Some(&ReplayError::Committed));
        assert_eq!(
            winner.frame().await.unwrap().unwrap().into_data().unwrap(),
            "two"
        );
        assert_eq!(
            winner.frame().await.unwrap().unwrap().into_data().unwrap(),
            "three"
        );
        assert_eq!(
            accounting.buffered(),
            0,
            "passed frames given back, new ones not kept"
        );
        assert!(winner.frame().await.is_none());
        drop((ahead, winner, replay));
        assert_eq!(accounting.buffered(), 0, "no underflow at the end");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_dropped_while_it_holds_the_source_waker_lets_the_other_read() {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
        let replay = Replay::new(
            StreamBody::new(tokio_stream_from(rx)),
            accounting(1024, 4096),
        );
        let waiting = tokio::spawn(collect(replay.reader()));
        tokio::task::yield_now().await; // it waits at the tip
        let mut last = replay.reader();
        // The source now holds this reader's waker only.
        assert!(futures_util::FutureExt::now_or_never(last.frame()).is_none());
        drop(last);
        tx.send(Ok(Frame::data(Bytes::from_static(b"ab"))))
            .await
            .unwrap();
        drop(tx);
        let body = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the waiting reader was woken")
            .unwrap()
            .unwrap();
        assert_eq!(body.0, "ab");
    }

    fn tokio_stream_from<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
