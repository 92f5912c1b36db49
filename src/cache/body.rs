//! The response body of the negative cache: the upstream's (copied, up to a limit, as the
//! caller reads it, when its answer is being remembered), or a remembered one for a hit.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::record::Recorder;

pin_project! {
    /// The body of a [`NegativeCache`](super::NegativeCache) response: the inner service's body
    /// as it came, or the remembered body of an answer from the cache (empty when the entry
    /// kept none).
    ///
    /// Its data is [`Bytes`]: an upstream body's chunks are passed on as they come (for a
    /// `Bytes` body, hyper's `Incoming` included, without a copy), and a hit's body is shared
    /// by every hit of its entry.
    ///
    /// While a Missing answer is being remembered, each chunk the caller reads is copied into
    /// the entry (up to the body limit) as it passes: nothing is read ahead of the caller or
    /// held back from it. The entry is stored when the body ends; a body over the limit, or
    /// dropped or failed before its end, is stored head-only.
    pub struct ResponseBody<B> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        Upstream { #[pin] body: B },
        Recording { #[pin] body: B, recorder: Box<Recorder> },
        Remembered { data: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn upstream(body: B) -> Self {
        ResponseBody {
            inner: Inner::Upstream { body },
        }
    }

    pub(crate) fn recording(body: B, recorder: Box<Recorder>) -> Self {
        ResponseBody {
            inner: Inner::Recording { body, recorder },
        }
    }

    pub(crate) fn synthesized() -> Self {
        Self::remembered(Bytes::new())
    }

    pub(crate) fn remembered(data: Bytes) -> Self {
        ResponseBody {
            inner: Inner::Remembered {
                data: Some(data).filter(|d| !d.is_empty()),
            },
        }
    }

    /// Whether this body was made by the cache (a hit's remembered body, or none).
    pub fn is_synthesized(&self) -> bool {
        matches!(self.inner, Inner::Remembered { .. })
    }
}

fn to_bytes<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    // `Bytes::copy_to_bytes` hands the same buffer on; another `Buf` is copied once.
    frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().inner.project() {
            InnerProj::Upstream { body } => body.poll_frame(cx).map(|f| f.map(|f| f.map(to_bytes))),
            InnerProj::Recording { mut body, recorder } => {
                let frame = ready!(body.as_mut().poll_frame(cx));
                match &frame {
                    None => recorder.end(),
                    Some(Err(_)) => recorder.abandon(),
                    Some(Ok(_)) => {}
                }
                let frame = frame.map(|f| f.map(to_bytes));
                if let Some(Ok(f)) = &frame {
                    if let Some(data) = f.data_ref() {
                        recorder.data(data);
                    }
                    // A body that knows it is done may not be polled again.
                    if body.is_end_stream() {
                        recorder.end();
                    }
                }
                Poll::Ready(frame)
            }
            InnerProj::Remembered { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream { body } | Inner::Recording { body, .. } => body.is_end_stream(),
            Inner::Remembered { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream { body } | Inner::Recording { body, .. } => body.size_hint(),
            Inner::Remembered { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("synthesized", &self.is_synthesized())
            .finish()
    }
}
