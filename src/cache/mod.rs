//! Negative caching: remember what is missing, answer it without touching the network.
//!
//! [`NegativeCacheLayer`] wraps any `Service<http::Request<B>, Response = http::Response<_>>`.
//! A GET or HEAD whose answer is Missing (404 or 410 by default, decided by the same
//! [`classify`](crate::classify) as the retry layer) is remembered under its key; until the
//! entry's TTL ends or it is invalidated, requests for that key are answered at once with a
//! synthesized answer of the same status (`content-length: 0`, an `Age` header and a
//! [`NegativeCacheHit`] extension) and no upstream call.
//!
//! - **Store:** bounded (`capacity`, a hard bound), sharded and scan-resistant (quick_cache's
//!   CLOCK-Pro): a flood of one-off misses does not push out keys that are asked for again.
//!   Each entry carries its expiry and is dropped when read after it; no timers, no task.
//! - **Key:** the normalised request target, looked up without allocating; or the
//!   application's id through a key function.
//! - **TTL:** the origin's freshness on the 404/410 (`max-age`, `s-maxage` in shared mode,
//!   `Expires` − `Date`, less `Age`), clamped to `min_ttl..=max_ttl`; otherwise 60 s for 404 and
//!   1 h for 410. `no-store` or `no-cache` on the answer: not remembered.
//! - **Invalidation:** a successful write (PUT, POST, PATCH, DELETE answered 2xx/3xx) forgets
//!   its target and its answer's same-origin `Location`/`Content-Location`; a GET answered
//!   2xx forgets its key; the [`NegativeCacheHandle`] forgets keys on demand.
//! - **Credentials:** requests with `Authorization` or `Cookie` bypass the cache unless
//!   [`Credentials::Fingerprint`] keys them by credential; an entry never crosses credentials.
//! - **Coalescing** (opt-in): concurrent misses for one key wait, up to a bound, for the first.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Empty;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_negative_cache::cache::NegativeCacheHit;
//! use tower_negative_cache::NegativeCacheLayer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let upstream = {
//!     let calls = calls.clone();
//!     tower::service_fn(move |_req: Request<Empty<Bytes>>| {
//!         calls.fetch_add(1, Ordering::SeqCst);
//!         async {
//!             let res = Response::builder().status(404).body(Empty::<Bytes>::new()).unwrap();
//!             Ok::<_, std::convert::Infallible>(res)
//!         }
//!     })
//! };
//! let cache = NegativeCacheLayer::new();
//! let mut client = ServiceBuilder::new().layer(cache.clone()).service(upstream);
//!
//! for _ in 0..3 {
//!     let req = Request::get("http://records.internal/records/404").body(Empty::new()).unwrap();
//!     let res = client.ready().await.unwrap().call(req).await.unwrap();
//!     assert_eq!(res.status(), StatusCode::NOT_FOUND);
//! }
//! // One upstream call; the two repeats were answered from the cache.
//! assert_eq!(calls.load(Ordering::SeqCst), 1);
//! assert_eq!(cache.handle().stats().hits, 2);
//! # }
//! ```

mod body;
mod coalesce;
mod future;
mod handle;
mod key;
mod layer;
mod peers;
mod recent;
mod service;
mod state;
mod stats;
mod store;
mod ttl;

use std::time::Duration;

pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use handle::NegativeCacheHandle;
pub use layer::{Builder, Credentials, NegativeCacheLayer};
pub use service::{BypassNegativeCache, NegativeCache};
pub use stats::CacheStats;

#[cfg(feature = "redis")]
pub(crate) use peers::PeerEvent;
#[cfg(feature = "redis")]
pub(crate) use recent::WINDOW as RECENT_WINDOW;
#[cfg(feature = "redis")]
pub(crate) use state::{Learned, State};

/// Marks an answer synthesized by the negative cache (in the response's extensions).
///
/// A synthesized answer never went through an inner retry layer, so it carries no
/// [`RetryInfo`](crate::RetryInfo): this extension is how to tell it from a real answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NegativeCacheHit {
    /// The remembered status (404, 410, or what a custom classifier called Missing).
    pub status: http::StatusCode,
    /// How long ago the Missing answer was received (millisecond resolution).
    pub age: Duration,
    /// How long the entry stays fresh.
    pub remaining: Duration,
}

#[cfg(test)]
mod proptests;
