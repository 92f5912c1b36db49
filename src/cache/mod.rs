//! Negative caching: remember what is missing, answer it without touching the network.
//!
//! [`NegativeCacheLayer`] wraps any `Service<http::Request<B>, Response = http::Response<_>>`.
//! A GET or HEAD whose answer is Missing (404 or 410 by default, decided by the same
//! [`classify`](crate::classify) as the retry layer) is remembered under its key; until the
//! entry's TTL ends or it is invalidated, requests for that key are answered at once with a
//! synthesized answer of the same status (`content-length: 0`, an `Age` header and a
//! [`NegativeCacheHit`] extension) and no upstream call.
//!
//! - **Observing:** [`CacheStats`] from the handle; every counted event also goes to the
//!   [`Observer`](crate::observe::Observer) given to [`Builder::observer`] (with the feature
//!   `metrics`, `CacheMetrics` records it). A hit is a debug `tracing` event naming its host
//!   (`server.address`), never its key.
//! - **Store:** bounded (`capacity`, a hard bound), sharded and scan-resistant (quick_cache's
//!   CLOCK-Pro): a flood of one-off misses does not push out keys that are asked for again.
//!   Each entry carries its expiry and is dropped when read after it; no timers, no task.
//! - **Key:** the normalised target the origin will see — the URI's scheme and authority, or
//!   for an origin-form `/r/3` its `Host` header (RFC 9110 §7.2), then path and query —
//!   looked up without allocating; or the application's id through a key function. A request
//!   whose `Host` is not a valid authority, or names another host than its URI (hyper-util
//!   sends it as it is: the origin would read one, the connection go to the other), is not
//!   cached.
//! - **Freshness (RFC 9111 §4.2):** the origin's lifetime on the 404/410 (`s-maxage` in shared
//!   mode, `max-age`, `Expires` − `Date`, the arrival time standing in for a missing `Date`),
//!   else 60 s for 404 and 1 h for 410; less the age it arrived with (`Age`, or `now − Date`
//!   if larger); cut to `max_ttl`. An explicit lifetime is an upper bound nothing raises; a
//!   lifetime of zero is stale on arrival and not stored.
//! - **Not stored:** an answer with `no-store`, `no-cache`, `private` (shared mode) or a
//!   `Vary` on anything but `Accept-Encoding` (its varied request fields are not kept to match
//!   later requests against; a bodiless answer can't differ by encoding), and the answer to a
//!   request with `no-store` (§5.2.1.5) — each counted as `uncacheable`.
//! - **The request's own directives (§5.2.1):** `no-cache` or `max-age=0` go upstream and
//!   refresh the entry; `max-age=N` and `min-fresh=N` accept only an entry that young or that
//!   fresh; `only-if-cached` is answered from the store or with a 504, never upstream (so
//!   put a retry layer *inside* the cache, as recommended, or its 504 is retried).
//!   `must-revalidate` needs nothing: a stale entry is never served.
//! - **The latest answer wins:** a remembered Missing answer is served only if no 2xx,
//!   successful write or invalidation of its key landed after its request started. A Missing
//!   answer that lands after such a change is not remembered; such a change forgets what was
//!   remembered. Writes (PUT, POST, PATCH, DELETE answered 2xx/3xx) forget their target and
//!   the same-origin `Location`/`Content-Location` of their answer, resolved against the
//!   target (RFC 3986 §5.2); the [`NegativeCacheHandle`] forgets keys on demand.
//! - **Credentials:** requests with `Authorization`, `Proxy-Authorization`, `Cookie`, a URI
//!   userinfo or a header named with [`Builder::credential_header`] bypass the cache unless
//!   [`Credentials::Fingerprint`] keys them by credential; an entry never crosses credentials.
//!   **An API key in a header the cache was not told about is not a credential to it.**
//! - **Coalescing** (opt-in): concurrent misses for one key wait, up to a bound, for the
//!   first; when it has settled they look the key up like any other request.
//! - **Readiness:** only a service driven to ready is called, and a path that calls nothing
//!   (a hit, a wait) releases the reservation — safe over `Buffer` and `ConcurrencyLimit`.
//! - **One classifier rule:** the cache's own classifier if one was given to its builder, else
//!   the verdict of a retry layer under it ([`RetryInfo`](crate::RetryInfo)), else 404 and
//!   410.
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
mod reference;
mod service;
mod state;
mod stats;
mod store;
mod ttl;

use std::time::Duration;

pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use handle::NegativeCacheHandle;
pub use key::Credentials;
pub use layer::{Builder, NegativeCacheLayer};
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
    /// The answer's age (RFC 9111 §4.2.3): the age it arrived with (its `Age`, or how old its
    /// `Date` made it) plus how long it has been remembered; the `Age` header says the same in
    /// whole seconds.
    pub age: Duration,
    /// How long the entry stays fresh (never more than is left: it expires to the microsecond).
    pub remaining: Duration,
}

#[cfg(test)]
mod proptests;
