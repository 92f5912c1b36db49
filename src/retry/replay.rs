//! Replaying a request: each attempt after the first is sent from a copy.

use bytes::Bytes;
use http::Request;
use http_body_util::{Empty, Full};

/// A request body that can be sent again.
///
/// The retry layer copies the request before each attempt. A body that returns `None` here (a
/// stream such as hyper's `Incoming`) is sent exactly once — never dropped or half-sent — and
/// counted as `not_replayable` in [`RetryStats`](super::RetryStats).
///
/// Implemented for the buffered bodies of `http-body-util` (`Full`, `Empty`) and for `String`,
/// `Vec<u8>`, `Bytes`, `&'static str` and `()`; never replayable: `hyper::body::Incoming`,
/// `BoxBody`, `UnsyncBoxBody`. For a body type of another crate, wrap it: [`Replayable`] (any
/// `Clone` body) or [`SendOnce`] (streams). Implement it for a body of your own in three lines:
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
pub trait ReplayBody: Sized {
    /// A copy of the body to send again, or `None` if it can be sent only once.
    fn try_clone_body(&self) -> Option<Self>;
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

macro_rules! never_replay {
    ($([$($g:tt)*] $t:ty),*) => {$(
        impl<$($g)*> ReplayBody for $t {
            fn try_clone_body(&self) -> Option<Self> {
                None
            }
        }
    )*};
}
never_replay!(
    [D, E] http_body_util::combinators::BoxBody<D, E>,
    [D, E] http_body_util::combinators::UnsyncBoxBody<D, E>
);
#[cfg(feature = "hyper")]
never_replay!([] hyper::body::Incoming);

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
pub(crate) fn clone_request<B: ReplayBody>(req: &Request<B>) -> Option<Request<B>> {
    let body = req.body().try_clone_body()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    Some(copy)
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
