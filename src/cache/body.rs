//! The response body of the negative cache: the upstream's, or none for a synthesized answer.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a [`NegativeCache`](super::NegativeCache) response: the inner service's body
    /// as it came, or an empty body for an answer synthesized from the cache.
    ///
    /// Works over any body, hyper's `Incoming` included, so the layer stacks over a hyper-util
    /// client without mapping bodies.
    pub struct ResponseBody<B> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        Upstream { #[pin] body: B },
        Synthesized,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn upstream(body: B) -> Self {
        ResponseBody {
            inner: Inner::Upstream { body },
        }
    }

    pub(crate) fn synthesized() -> Self {
        ResponseBody {
            inner: Inner::Synthesized,
        }
    }

    /// Whether this body was synthesized by the cache (and so is empty).
    pub fn is_synthesized(&self) -> bool {
        matches!(self.inner, Inner::Synthesized)
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().inner.project() {
            InnerProj::Upstream { body } => body.poll_frame(cx),
            InnerProj::Synthesized => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream { body } => body.is_end_stream(),
            Inner::Synthesized => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream { body } => body.size_hint(),
            Inner::Synthesized => SizeHint::with_exact(0),
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
