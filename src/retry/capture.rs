//! Streamed request bodies kept, up to a bound, as they are sent, so a retry can replay them.
//!
//! The first attempt sends the original stream through [`Capturing`], which forwards every frame
//! unchanged and copies its bytes into a buffer shared with the request's [`Capture`]. If the
//! stream ends within the bound the copy is complete and each retry sends a [`ReplayCaptured`]
//! of it; if it outgrows the bound (or fails) the buffer is freed at once and the request is
//! never sent again — a body is never truncated, never sent twice partially.
//!
//! A capture is complete when the stream ends (its final `None`, or `is_end_stream`), or when
//! it sends its trailers: they are the last frame a body can send (and [`Capturing`] forwards
//! nothing after them). hyper's HTTP/1 client never asks for the end after trailers, nor when
//! the request has a `Content-Length`: it stops after the declared bytes and drops the body.
//! So a stream dropped after exactly an HTTP/1 request's `Content-Length` is complete too (no
//! trailers can follow those bytes, RFC 9112 §7.1.2). A stream dropped at its length otherwise
//! is complete only if it says it has ended (`is_end_stream`): a service that stopped reading
//! once it had the bytes it was told of may have left trailers unread, which a copy would lack. The bound counts the trailers kept (their names and values, plus 32
//! bytes a field) with the data. Nothing is complete while the original
//! stream may still send: a service reading the body on after its answer (HTTP/2, full
//! duplex) may yet send trailers or more data, which a copy made before would lack — such a
//! request is sent once. Data past the declared length spoils the capture: a body that lies
//! about its length (HTTP/2 and in-process services send all of it, HTTP/1 truncates it) is
//! never sent again, since what the first attempt sent is not known.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// The shared record of one request body's capture.
pub(crate) struct CaptureState {
    limit: usize,
    inner: Mutex<Kept>,
}

enum Kept {
    /// The stream is being sent; this much of it so far.
    Capturing {
        data: BytesMut,
        trailers: Option<HeaderMap>,
        // The whole body's length, when the request or the body says it.
        declared: Option<u64>,
        // The length is an HTTP/1 request's `Content-Length`: nothing can follow its bytes
        // (only a chunked HTTP/1 message has trailers, RFC 9112 §6.1, §7.1.2).
        framed: bool,
    },
    /// The whole stream, within the bound: replayable. Reached only once the original stream
    /// can send nothing more (ended or dropped), so never left.
    Complete {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// Larger than the bound, or failed: nothing kept, not replayable.
    Spoiled,
}

impl CaptureState {
    fn lock(&self) -> MutexGuard<'_, Kept> {
        // The state is plain data, valid whatever a panicking holder left.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, frame: &Frame<Bytes>) {
        let mut kept = self.lock();
        match (&mut *kept, frame.data_ref()) {
            (Kept::Capturing { data, declared, .. }, Some(chunk)) => {
                let len = data.len().saturating_add(chunk.len());
                if len > self.limit || declared.is_some_and(|d| len as u64 > d) {
                    // Outgrown, or longer than declared (what the first attempt sent then
                    // depends on who reads it): free the copy now rather than at the end of
                    // the request.
                    *kept = Kept::Spoiled;
                    return;
                }
                // A copy, not a reference: a chunk may share (and pin) a larger read buffer,
                // and the bound is on memory held.
                data.extend_from_slice(chunk);
            }
            (Kept::Capturing { data, trailers, .. }, None) => {
                let Some(t) = frame.trailers_ref() else {
                    // A frame of another kind carries nothing to replay.
                    return;
                };
                // The trailers are kept too, so they count against the bound.
                if data.len().saturating_add(trailer_bytes(t)) > self.limit {
                    *kept = Kept::Spoiled;
                    return;
                }
                *trailers = Some(t.clone());
                // Trailers are the last frame a body can send (`http_body::Frame`): the
                // stream is whole. hyper's HTTP/1 client writes them and drops the body
                // without polling its end, so waiting for that end would never complete it.
                complete(&mut kept);
            }
            // Complete only after the stream's end, Spoiled for good: nothing more to keep.
            _ => {}
        }
    }

    /// The stream has ended: complete, unless it is shorter than it said it would be.
    fn finish(&self) {
        complete(&mut self.lock());
    }

    /// The whole body is `len` bytes long if the request says so (a `Content-Length`; `http1`:
    /// the request is HTTP/1.x), else what the body's exact size hint said.
    fn declare(&self, len: Option<u64>, http1: bool) {
        let mut kept = self.lock();
        if let Kept::Capturing {
            data,
            declared,
            framed,
            ..
        } = &mut *kept
        {
            *framed = len.is_some() && http1;
            let Some(len) = len.or(*declared) else {
                return;
            };
            if len > self.limit as u64 || (data.len() as u64) > len {
                *kept = Kept::Spoiled;
                return;
            }
            *declared = Some(len);
        }
    }

    /// The original stream was dropped (`ended`: it had said it could send nothing more).
    /// Complete if it had ended, or if it had sent exactly the `Content-Length` of an HTTP/1
    /// request (hyper's HTTP/1 client drops it there, without polling its end; nothing may
    /// follow). Dropped at its length otherwise — a service that stopped reading once it had
    /// the bytes it was told of — it may still have had trailers to send, which a copy would
    /// lack: never replayable then.
    fn dropped(&self, ended: bool) {
        let mut kept = self.lock();
        if ended {
            complete(&mut kept);
            return;
        }
        if let Kept::Capturing {
            data,
            trailers,
            declared,
            framed,
        } = &mut *kept
        {
            *kept = if *framed && *declared == Some(data.len() as u64) {
                Kept::Complete {
                    data: std::mem::take(data).freeze(),
                    trailers: trailers.take(),
                }
            } else {
                Kept::Spoiled
            };
        }
    }

    /// The stream failed. A capture already complete (its declared bytes all kept) stays
    /// so: a copy may be on its way, and what was declared was sent whole.
    fn spoil(&self) {
        let mut kept = self.lock();
        if let Kept::Capturing { .. } = *kept {
            *kept = Kept::Spoiled;
        }
    }
}

/// A capture still in progress whose stream can send nothing more: complete, unless it is
/// shorter than it said it would be.
fn complete(kept: &mut Kept) {
    if let Kept::Capturing {
        data,
        trailers,
        declared,
        ..
    } = kept
    {
        *kept = if declared.is_some_and(|d| d != data.len() as u64) {
            Kept::Spoiled
        } else {
            Kept::Complete {
                data: std::mem::take(data).freeze(),
                trailers: trailers.take(),
            }
        };
    }
}

/// What trailers count against `capture_limit`: each field's name and value, plus 32 bytes
/// for the entry (the size HTTP/2 gives a field, RFC 9113 §6.5.2).
fn trailer_bytes(trailers: &HeaderMap) -> usize {
    trailers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .fold(0, usize::saturating_add)
}

/// A request body's capture, held by the retry layer: whether it is complete, and a body that
/// replays it.
///
/// Made by [`ReplayBody::capture`](super::ReplayBody::capture); opaque.
pub struct Capture<B> {
    state: Arc<CaptureState>,
    make: Replayer<B>,
}

/// Makes a body replaying a capture.
type Replayer<B> = Arc<dyn Fn(&Arc<CaptureState>) -> B + Send + Sync>;

impl<B> Capture<B> {
    /// Settles the body's whole length before it is sent: the request's `Content-Length` if
    /// it has one (what goes on the wire), else the body's exact size hint. A stream that
    /// ends short of it or goes past it is spoiled; one dropped with that many bytes sent is
    /// complete if it said it had ended, or if the length is an HTTP/1 request's
    /// `Content-Length` (`http1`), after which nothing can follow.
    pub(crate) fn declare(&self, len: Option<u64>, http1: bool) {
        self.state.declare(len, http1);
    }

    /// Whether the whole body was sent and kept, within the bound.
    pub(crate) fn is_complete(&self) -> bool {
        matches!(*self.state.lock(), Kept::Complete { .. })
    }

    /// A body replaying the capture; to be sent only once it [is complete](Self::is_complete).
    pub(crate) fn copy(&self) -> B {
        (self.make)(&self.state)
    }

    /// The same capture replayed as another body type (a side of an `Either`, say).
    pub fn map<B2>(self, f: impl Fn(B) -> B2 + Send + Sync + 'static) -> Capture<B2>
    where
        B: 'static,
    {
        let make = self.make;
        Capture {
            state: self.state,
            make: Arc::new(move |s| f(make(s))),
        }
    }
}

impl<B> fmt::Debug for Capture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (state, bytes) = match &*self.state.lock() {
            Kept::Capturing { data, .. } => ("capturing", data.len()),
            Kept::Complete { data, .. } => ("complete", data.len()),
            Kept::Spoiled => ("spoiled", 0),
        };
        f.debug_struct("Capture")
            .field("limit", &self.state.limit)
            .field("state", &state)
            .field("bytes", &bytes)
            .finish()
    }
}

/// Wraps `body` so that sending it keeps a copy of up to `limit` bytes: the body to send in its
/// place (made by `wrap`), and the capture that replays it (each copy made by `replay`).
pub(crate) fn capture<B, W, R>(
    body: B,
    limit: usize,
    wrap: impl FnOnce(Capturing<B>) -> W,
    replay: R,
) -> (W, Capture<W>)
where
    R: Fn(ReplayCaptured) -> W + Send + Sync + 'static,
    B: Body,
{
    // Reserve what the body says it holds (an exact hint), never more than the bound.
    let hint = body.size_hint();
    let reserve = hint.exact().map_or(0, |n| n.min(limit as u64) as usize);
    let state = Arc::new(CaptureState {
        limit,
        inner: Mutex::new(Kept::Capturing {
            data: BytesMut::with_capacity(reserve),
            trailers: None,
            // Settled by `Capture::declare`, which the request's `Content-Length` overrides.
            declared: hint.exact(),
            framed: false,
        }),
    });
    let sent = wrap(Capturing {
        inner: body,
        state: state.clone(),
        ended: false,
    });
    let make = Arc::new(move |s: &Arc<CaptureState>| {
        replay(ReplayCaptured {
            state: s.clone(),
            step: Step::Data,
        })
    });
    (sent, Capture { state, make })
}

pin_project! {
    /// The original stream, forwarded unchanged while its bytes are kept (see the module docs).
    pub(crate) struct Capturing<B>
    where
        B: Body,
    {
        #[pin]
        inner: B,
        state: Arc<CaptureState>,
        // The trailers were forwarded: the stream is over, whatever the inner body would
        // still send (nothing may follow trailers; a copy replays nothing after them).
        ended: bool,
    }

    impl<B> PinnedDrop for Capturing<B>
    where
        B: Body,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let ended = *this.ended || this.inner.is_end_stream();
            this.state.dropped(ended);
        }
    }
}

impl<B: Body> Body for Capturing<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => {
                let frame = frame.map_data(|mut d| d.copy_to_bytes(d.remaining()));
                *this.ended = frame.is_trailers();
                this.state.record(&frame);
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.state.spoil();
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.state.finish();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // A client may stop polling once the body says it has ended, without the final `None`.
        let end = self.ended || self.inner.is_end_stream();
        if end {
            self.state.finish();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            return SizeHint::with_exact(0);
        }
        self.inner.size_hint()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Data,
    Trailers,
    Done,
}

/// A retry's body: the complete capture, as one data frame and its trailers.
pub(crate) struct ReplayCaptured {
    state: Arc<CaptureState>,
    step: Step,
}

impl ReplayCaptured {
    /// The same body with any error type (it never fails).
    pub(crate) fn typed<E>(self) -> Typed<E> {
        Typed {
            inner: self,
            _error: PhantomData,
        }
    }
}

/// [`ReplayCaptured`] with the error type the body it stands in for has.
pub(crate) struct Typed<E> {
    inner: ReplayCaptured,
    _error: PhantomData<fn() -> E>,
}

impl<E> Body for Typed<E> {
    type Data = Bytes;
    type Error = E;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, E>>> {
        let this = &mut self.inner;
        let kept = this.state.lock();
        let Kept::Complete { data, trailers } = &*kept else {
            // The layer sends a copy only once the capture is complete, and a complete capture
            // stays complete; sending nothing is safer than sending a truncated body.
            return Poll::Pending;
        };
        loop {
            match this.step {
                Step::Data => {
                    this.step = Step::Trailers;
                    if !data.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
                    }
                }
                Step::Trailers => {
                    this.step = Step::Done;
                    if let Some(t) = trailers {
                        return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
                    }
                }
                Step::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &*self.inner.state.lock() {
            Kept::Complete { data, trailers } => match self.inner.step {
                Step::Data => data.is_empty() && trailers.is_none(),
                Step::Trailers => trailers.is_none(),
                Step::Done => true,
            },
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&*self.inner.state.lock(), self.inner.step) {
            // With trailers, no exact length: an HTTP/1 client would send an exact one as
            // `Content-Length` and drop the trailers, which only a chunked body carries.
            (Kept::Complete { data, trailers }, Step::Data) if trailers.is_some() => {
                let mut hint = SizeHint::new();
                hint.set_lower(data.len() as u64);
                hint
            }
            (Kept::Complete { data, .. }, Step::Data) => SizeHint::with_exact(data.len() as u64),
            (Kept::Complete { .. }, _) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(limit: usize, hint: Option<u64>) -> CaptureState {
        CaptureState {
            limit,
            inner: Mutex::new(Kept::Capturing {
                data: BytesMut::new(),
                trailers: None,
                declared: hint,
                framed: false,
            }),
        }
    }

    fn data(s: &'static str) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(s.as_bytes()))
    }

    fn kept(s: &CaptureState) -> Option<(Bytes, bool)> {
        match &*s.lock() {
            Kept::Complete { data, trailers } => Some((data.clone(), trailers.is_some())),
            Kept::Capturing { .. } => None,
            Kept::Spoiled => Some((Bytes::from_static(b"spoiled"), false)),
        }
    }

    #[test]
    fn a_declared_length_completes_at_the_end_or_the_drop_and_stays_complete() {
        let s = state(64, None);
        s.declare(Some(6), true);
        s.record(&data("abc"));
        s.record(&data("def"));
        // All declared bytes kept, but the stream may still send trailers (or lie).
        assert_eq!(kept(&s), None);
        s.record(&Frame::trailers(HeaderMap::new()));
        s.finish();
        assert_eq!(kept(&s), Some((Bytes::from_static(b"abcdef"), true)));
        // What follows never undoes it: more data, a failure, a drop.
        s.record(&data("ghi"));
        s.spoil();
        s.dropped(false);
        assert_eq!(kept(&s), Some((Bytes::from_static(b"abcdef"), true)));

        // hyper's HTTP/1 client drops the body after its `Content-Length` bytes.
        let h1 = state(64, None);
        h1.declare(Some(3), true);
        h1.record(&data("abc"));
        h1.dropped(false);
        assert_eq!(kept(&h1), Some((Bytes::from_static(b"abc"), false)));

        // Dropped at a length that is not an HTTP/1 `Content-Length` (an exact size hint, or
        // HTTP/2): trailers may have been left unread, unless the body said it had ended.
        for (len, http1) in [(None, true), (Some(3), false)] {
            let unread = state(64, Some(3));
            unread.declare(len, http1);
            unread.record(&data("abc"));
            unread.dropped(false);
            assert_eq!(kept(&unread), Some((Bytes::from_static(b"spoiled"), false)));
            let ended = state(64, Some(3));
            ended.declare(len, http1);
            ended.record(&data("abc"));
            ended.dropped(true);
            assert_eq!(kept(&ended), Some((Bytes::from_static(b"abc"), false)));
        }
    }

    #[test]
    fn trailers_complete_a_capture_and_count_against_its_bound() {
        // Undeclared (chunked): the trailers are the end, though the stream is then dropped.
        let chunked = state(64, None);
        chunked.declare(None, true);
        chunked.record(&data("abc"));
        chunked.record(&Frame::trailers(HeaderMap::new()));
        chunked.dropped(false);
        assert_eq!(kept(&chunked), Some((Bytes::from_static(b"abc"), true)));

        // Short of the declared length: the body lied, never replayed.
        let short = state(64, None);
        short.declare(Some(6), true);
        short.record(&data("abc"));
        short.record(&Frame::trailers(HeaderMap::new()));
        assert_eq!(kept(&short), Some((Bytes::from_static(b"spoiled"), false)));

        // 3 bytes of data + a field of 10 + 20 + 32 bytes = 65 > 64.
        let mut t = HeaderMap::new();
        t.insert("x-checksum", "x".repeat(20).parse().unwrap());
        assert_eq!(trailer_bytes(&t), 62);
        let over = state(64, None);
        over.record(&data("abc"));
        over.record(&Frame::trailers(t.clone()));
        assert_eq!(kept(&over), Some((Bytes::from_static(b"spoiled"), false)));
        let within = state(65, None);
        within.record(&data("abc"));
        within.record(&Frame::trailers(t));
        assert_eq!(kept(&within), Some((Bytes::from_static(b"abc"), true)));
    }

    #[test]
    fn data_past_the_declared_length_spoils_even_a_full_capture() {
        let s = state(64, None);
        s.declare(Some(3), true);
        s.record(&data("abc"));
        s.record(&data("def"));
        s.finish();
        assert_eq!(kept(&s), Some((Bytes::from_static(b"spoiled"), false)));
    }

    #[test]
    fn a_stream_dropped_short_of_its_length_or_undeclared_is_spoiled() {
        let short = state(64, None);
        short.declare(Some(6), true);
        short.record(&data("abc"));
        short.dropped(false);
        assert_eq!(kept(&short), Some((Bytes::from_static(b"spoiled"), false)));

        let undeclared = state(64, None);
        undeclared.declare(None, true);
        undeclared.record(&data("abc"));
        undeclared.dropped(false);
        assert_eq!(
            kept(&undeclared),
            Some((Bytes::from_static(b"spoiled"), false))
        );
    }

    #[test]
    fn a_body_short_of_or_crossing_its_declared_length_is_spoiled() {
        let short = state(64, None);
        short.declare(Some(6), true);
        short.record(&data("abc"));
        short.finish();
        assert_eq!(kept(&short), Some((Bytes::from_static(b"spoiled"), false)));

        let crossing = state(64, None);
        crossing.declare(Some(4), true);
        crossing.record(&data("abc"));
        crossing.record(&data("def"));
        assert_eq!(
            kept(&crossing),
            Some((Bytes::from_static(b"spoiled"), false))
        );

        let too_large = state(4, None);
        too_large.declare(Some(5), true);
        assert_eq!(
            kept(&too_large),
            Some((Bytes::from_static(b"spoiled"), false))
        );
    }

    #[test]
    fn the_header_overrides_the_hint_and_zero_completes_when_dropped_unpolled() {
        // An empty body dropped unpolled is complete if it said it had ended; if not, it may
        // have had trailers to send.
        let zero = state(64, Some(0));
        zero.declare(None, true);
        assert_eq!(kept(&zero), None);
        zero.dropped(true);
        assert_eq!(kept(&zero), Some((Bytes::new(), false)));
        let pending = state(64, Some(0));
        pending.declare(None, true);
        pending.dropped(false);
        assert_eq!(
            kept(&pending),
            Some((Bytes::from_static(b"spoiled"), false))
        );

        let header = state(64, Some(0));
        header.declare(Some(3), true);
        assert_eq!(kept(&header), None);
        header.record(&data("abc"));
        assert_eq!(kept(&header), None);
        header.dropped(false);
        assert_eq!(kept(&header), Some((Bytes::from_static(b"abc"), false)));

        let undeclared = state(64, None);
        undeclared.declare(None, true);
        undeclared.record(&data("abc"));
        assert_eq!(kept(&undeclared), None);
        undeclared.finish();
        assert_eq!(kept(&undeclared), Some((Bytes::from_static(b"abc"), false)));
    }
}
