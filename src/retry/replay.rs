//! Replaying a request: each attempt after the first is sent from a copy.

use bytes::Bytes;
use http::Request;
use http_body::Body;
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{Either, Empty, Full};

use super::capture::{Capture, capture};

/// A request body that can be sent again.
///
/// The retry layer copies the request before each attempt. A body that returns `None` here (a
/// stream) is, if it can be [captured](ReplayBody::capture), kept up to the layer's
/// `capture_limit` as it is sent and replayed from that copy; otherwise it is sent exactly once —
/// never dropped, truncated or half-sent twice — and counted as `not_replayable` in
/// [`RetryStats`](super::RetryStats).
///
/// | body | replayed |
/// |---|---|
/// | `Full`, `Empty`, `String`, `Vec<u8>`, `Bytes`, `&'static str`, `&'static [u8]`, `()` | by cloning |
/// | `BoxBody<Bytes, E>`, `UnsyncBoxBody<Bytes, E>`, `axum::body::Body` (feature `axum`) | as an empty body when already at its end; otherwise captured up to `capture_limit` (an exact size of 0 too, so its trailers are kept) |
/// | `reqwest::Body` (feature `reqwest`) | a buffered body by copying its bytes; a stream captured up to `capture_limit` |
/// | `Either<L, R>` | when the side it holds is |
/// | [`Replayable<B>`] | by cloning (any `B: Clone`) |
/// | [`SendOnce<B>`] | never: sent once (the explicit opt-out) |
///
/// No body the crate knows switches retries off silently: a type is replayed, or refused at
/// compile time, or wrapped in [`SendOnce`] on purpose. hyper's `Incoming` (what a server
/// receives) is refused: hyper gives no constructor for it, so a `Client<_, Incoming>` could
/// never send a copy, and a proxy forwarding it under the retry layer would compile and never
/// retry. The compiler's message names the one-line fix: box the body —
/// `req.map(http_body_util::BodyExt::boxed)`, a client for `BoxBody<Bytes, hyper::Error>` — to
/// have it captured and replayed, or `req.map(SendOnce::new)` to send it once on purpose.
///
/// ```compile_fail,E0277
/// use hyper::body::Incoming;
/// use tower_negative_cache::retry::ReplayBody;
///
/// fn replayable<B: ReplayBody>() {}
/// replayable::<Incoming>(); // error: box it, or `SendOnce` it
/// ```
///
/// For a body type of another crate, wrap it: [`Replayable`] (any `Clone` body) or [`SendOnce`]
/// (streams). Implement it for a body of your own in three lines:
///
/// ```
/// use tower_negative_cache::retry::ReplayBody;
///
/// #[derive(Clone)]
/// struct MyBody(bytes::Bytes);
///
/// impl ReplayBody for MyBody {
///     fn try_clone_body(&self) -> Option<Self> {
///         Some(self.clone())
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "the retry layer can't tell whether a request body of type `{Self}` may be sent again",
    label = "`{Self}` does not implement `ReplayBody`",
    note = "a request a server received (hyper's `Incoming`): box its body to have it retried from a copy, `req.map(http_body_util::BodyExt::boxed)`, with a client for `BoxBody<Bytes, hyper::Error>`; or `req.map(tower_negative_cache::retry::SendOnce::new)` to send it once, never retried",
    note = "another crate's body: `tower_negative_cache::retry::Replayable` replays a `Clone` body by cloning; `tower_negative_cache::retry::SendOnce` sends a stream once, never retried",
    note = "`Full`, `Empty`, `BoxBody<Bytes, _>`, `UnsyncBoxBody<Bytes, _>` and `Either` of such bodies are replayable as they are"
)]
pub trait ReplayBody: Sized {
    /// A copy of the body to send again, or `None` if it can't be copied before it is sent.
    fn try_clone_body(&self) -> Option<Self>;

    /// For a stream that [`try_clone_body`](ReplayBody::try_clone_body) can't copy: replaces
    /// `self` with a body that sends the same frames while keeping up to `limit` bytes of them,
    /// and returns the capture that replays them once the whole stream has been sent within the
    /// bound. `None` (the default): can't be captured, the request is sent once.
    ///
    /// Implemented by the crate for `BoxBody<Bytes, E>`, `UnsyncBoxBody<Bytes, E>`,
    /// `axum::body::Body` and `Either`; a body of your own can delegate to one of those.
    fn capture(&mut self, limit: usize) -> Option<Capture<Self>> {
        let _ = limit;
        None
    }
}

/// Whether a body holds nothing to send: at its end already. An exact size of 0 is not
/// enough — trailers may follow (`Empty::with_trailers`) — such a body is captured instead
/// (complete once the stream ends or is dropped, with the trailers it sent).
fn bodiless<B: Body>(body: &B) -> bool {
    body.is_end_stream()
}

/// Whether a stream can't fit in `limit` bytes, as far as its size hint tells.
fn too_large<B: Body>(body: &B, limit: usize) -> bool {
    body.size_hint().lower() > limit as u64
}

impl<E: 'static> ReplayBody for BoxBody<Bytes, E> {
    fn try_clone_body(&self) -> Option<Self> {
        bodiless(self).then(BoxBody::default)
    }

    fn capture(&mut self, limit: usize) -> Option<Capture<Self>> {
        if too_large(self, limit) {
            return None;
        }
        let (sent, capture) = capture(std::mem::take(self), limit, BoxBody::new, |r| {
            BoxBody::new(r.typed::<E>())
        });
        *self = sent;
        Some(capture)
    }
}

impl<E: 'static> ReplayBody for UnsyncBoxBody<Bytes, E> {
    fn try_clone_body(&self) -> Option<Self> {
        bodiless(self).then(UnsyncBoxBody::default)
    }

    fn capture(&mut self, limit: usize) -> Option<Capture<Self>> {
        if too_large(self, limit) {
            return None;
        }
        let (sent, capture) = capture(std::mem::take(self), limit, UnsyncBoxBody::new, |r| {
            UnsyncBoxBody::new(r.typed::<E>())
        });
        *self = sent;
        Some(capture)
    }
}

#[cfg(feature = "axum")]
impl ReplayBody for axum_core::body::Body {
    fn try_clone_body(&self) -> Option<Self> {
        bodiless(self).then(axum_core::body::Body::empty)
    }

    fn capture(&mut self, limit: usize) -> Option<Capture<Self>> {
        use axum_core::body::Body as AxumBody;
        if too_large(self, limit) {
            return None;
        }
        let (sent, capture) = capture(std::mem::take(self), limit, AxumBody::new, |r| {
            AxumBody::new(r.typed::<std::convert::Infallible>())
        });
        *self = sent;
        Some(capture)
    }
}

#[cfg(feature = "reqwest")]
impl ReplayBody for reqwest::Body {
    fn try_clone_body(&self) -> Option<Self> {
        // reqwest keeps a buffered body as `Bytes` but lends only a slice: a copy.
        self.as_bytes()
            .map(|b| reqwest::Body::from(Bytes::copy_from_slice(b)))
    }

    fn capture(&mut self, limit: usize) -> Option<Capture<Self>> {
        if too_large(self, limit) {
            return None;
        }
        let original = std::mem::replace(self, reqwest::Body::from(Bytes::new()));
        let (sent, capture) = capture(original, limit, reqwest::Body::wrap, |r| {
            reqwest::Body::wrap(r.typed::<std::convert::Infallible>())
        });
        *self = sent;
        Some(capture)
    }
}

impl<L, R> ReplayBody for Either<L, R>
where
    L: ReplayBody + 'static,
    R: ReplayBody + 'static,
{
    fn try_clone_body(&self) -> Option<Self> {
        match self {
            Either::Left(l) => l.try_clone_body().map(Either::Left),
            Either::Right(r) => r.try_clone_body().map(Either::Right),
        }
    }

    fn capture(&mut self, limit: usize) -> Option<Capture<Self>> {
        match self {
            Either::Left(l) => Some(l.capture(limit)?.map(Either::Left)),
            Either::Right(r) => Some(r.capture(limit)?.map(Either::Right)),
        }
    }
}

macro_rules! replay_by_clone {
    ($($t:ty),*) => {$(
        impl ReplayBody for $t {
            fn try_clone_body(&self) -> Option<Self> {
                Some(self.clone())
            }
        }
    )*};
}
replay_by_clone!(String, Vec<u8>, Bytes, &'static str, &'static [u8], ());

impl<D: Clone> ReplayBody for Full<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> ReplayBody for Empty<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(Empty::new())
    }
}

pin_project_lite::pin_project! {
    /// Makes any `Clone` body replayable — for a body type from another crate, for which the
    /// orphan rule forbids implementing [`ReplayBody`] yourself.
    ///
    /// ```
    /// use tower_negative_cache::retry::{ReplayBody, Replayable};
    ///
    /// let body = Replayable::new(http_body_util::Full::new(bytes::Bytes::from("x")));
    /// assert!(body.try_clone_body().is_some());
    /// ```
    #[derive(Clone, Debug, Default)]
    pub struct Replayable<B> {
        #[pin]
        inner: B,
    }
}

pin_project_lite::pin_project! {
    /// Marks a body as sent once: the retry layer never retries a request carrying it (and
    /// counts it as `not_replayable`). For streaming bodies from other crates, such as
    /// `axum::body::Body`, for which the orphan rule forbids implementing [`ReplayBody`].
    ///
    /// ```
    /// use tower_negative_cache::retry::{ReplayBody, SendOnce};
    ///
    /// let req = http::Request::new(http_body_util::Empty::<bytes::Bytes>::new()).map(SendOnce::new);
    /// assert!(req.body().try_clone_body().is_none());
    /// ```
    #[derive(Debug, Default)]
    pub struct SendOnce<B> {
        #[pin]
        inner: B,
    }
}

macro_rules! wrapper {
    ($name:ident, $what:literal) => {
        impl<B> $name<B> {
            #[doc = concat!("Wraps `inner` ", $what, ".")]
            pub fn new(inner: B) -> Self {
                $name { inner }
            }

            /// The wrapped body.
            pub fn into_inner(self) -> B {
                self.inner
            }
        }

        impl<B: http_body::Body> http_body::Body for $name<B> {
            type Data = B::Data;
            type Error = B::Error;

            fn poll_frame(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
                self.project().inner.poll_frame(cx)
            }

            fn is_end_stream(&self) -> bool {
                self.inner.is_end_stream()
            }

            fn size_hint(&self) -> http_body::SizeHint {
                self.inner.size_hint()
            }
        }
    };
}
wrapper!(Replayable, "to be replayed by cloning");
wrapper!(SendOnce, "to be sent once");

impl<B: Clone> ReplayBody for Replayable<B> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<B> ReplayBody for SendOnce<B> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

/// A copy of `req` for another attempt, if its body can be replayed.
#[inline(always)]
pub(crate) fn clone_request<B: ReplayBody>(req: &Request<B>) -> Option<Request<B>> {
    Some(with_body(req, req.body().try_clone_body()?))
}

/// A copy of `req`'s head with `body`. Inlined, as `clone_request`: the copy is then made
/// in its place in the caller's, not made apart and moved (a `memcpy` of the request's
/// 224 bytes on every request through the retry layer).
#[inline(always)]
pub(crate) fn with_body<B, B2>(req: &Request<B>, body: B2) -> Request<B2> {
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::time::Duration;
    use tower::{Layer, ServiceExt};

    async fn calls_for<B: ReplayBody + Send + 'static>(body: B) -> (usize, u64) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let upstream = tower::service_fn(move |_req: Request<B>| {
            c.fetch_add(1, SeqCst);
            async {
                let mut res = http::Response::new(Empty::<Bytes>::new());
                *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                Ok::<_, Infallible>(res)
            }
        });
        let layer = crate::StatusAwareRetryLayer::builder()
            .backoff_base(Duration::ZERO)
            .build()
            .unwrap();
        let svc = layer.layer(upstream);
        let res = svc.oneshot(Request::new(body)).await.unwrap();
        assert_eq!(res.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        (calls.load(SeqCst), layer.stats().not_replayable)
    }

    #[tokio::test]
    async fn wrappers_decide_replay() {
        let full = Full::new(Bytes::from_static(b"x"));
        assert_eq!(calls_for(Replayable::new(full.clone())).await, (3, 0));
        assert_eq!(calls_for(SendOnce::new(full)).await, (1, 1));
    }
}
