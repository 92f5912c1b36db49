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
/// `BoxBody`, `UnsyncBoxBody`. Implement it for a body of your own in three lines:
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
