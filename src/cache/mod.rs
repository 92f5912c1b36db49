//! Negative caching: remember what is missing, answer it without touching the network.
//!
//! [`NegativeCacheLayer`] wraps any `Service<http::Request<B>, Response = http::Response<_>>`.
//! A GET or HEAD whose answer is Missing (404 or 410 by default, decided by the same
//! [`classify`](crate::classify) as the retry layer) is remembered under its key; until the
//! entry's TTL ends or it is invalidated, requests for that key are answered at once with the
//! remembered answer (plus an `Age` header and a [`NegativeCacheHit`] extension) and no
//! upstream call.
//!
//! - **A hit is the origin's answer (RFC 9111 §4):** the entry keeps the answer's status and
//!   header fields as received, except what belonged to one connection or one exchange —
//!   `Connection` and the fields it names, `Keep-Alive`, `Proxy-Connection`, `TE`,
//!   `Transfer-Encoding`, `Upgrade`, `Trailer` (RFC 9110 §7.6.1), `Set-Cookie` (replayed, an
//!   old cookie would overwrite a newer session) — and states `Content-Length` for the bytes it
//!   sends and `Age` for its age. It keeps the body up to
//!   [`max_body_bytes`](Builder::max_body_bytes) (4 KiB by default: JSON and problem+json
//!   errors), copied chunk by chunk as the caller reads it — never read ahead of the caller,
//!   nothing held back — and stored when the body ends. A body over the limit, or dropped or
//!   failed before its end, is never replayed in part: the entry is **head-only** (no body, no
//!   `Content-Type`, `Content-Encoding`, `Content-Language` …), its repeats still free;
//!   [`NegativeCacheHit::body_kept`] and [`NegativeCacheHandle::peek`] say which, and
//!   [`CacheStats::head_only`] counts them. A kept body in a content coding (gzip) is replayed
//!   with its `Content-Encoding` to a request whose `Accept-Encoding` accepts it (so
//!   tower-http's `DecompressionLayer` outside the cache decodes a hit like the original), and
//!   head-only to one that does not. Fields and body are copied once into the entry and
//!   shared (refcounted `Bytes`) by every hit. Coalesced waiters wake once the leader's body
//!   has ended, and get the same answer.
//! - **HEAD and GET share an entry** (one key per target): a GET's answer answers a later
//!   HEAD with the same fields, its `Content-Length` too, and no body (RFC 9110 §9.3.2); a
//!   HEAD's answer answers a later HEAD as the origin sent it (its `Content-Type` and
//!   `Content-Length` are the GET's), but no GET: it has no body to stand for the GET's (RFC
//!   9111 §4), so a GET goes upstream and its answer replaces the entry. A HEAD's answer is not
//!   shared with fleet peers (the wire carries no method).
//!
//! - **Observing:** [`CacheStats`] from the handle; every counted event also goes to the
//!   [`Observer`](crate::observe::Observer) given to [`Builder::observer`] (with the feature
//!   `metrics`, `CacheMetrics` records it). A hit is a debug `tracing` event naming its host
//!   (`server.address`), never its key.
//! - **Store:** bounded (`capacity`, a hard bound), sharded and scan-resistant (quick_cache's
//!   CLOCK-Pro): a flood of one-off misses does not push out keys that are asked for again.
//!   Each entry carries its expiry and is dropped when read after it; no timers, no task.
//!   A lookup scans the key once into a keyed 64-bit hash that the store and the reads in
//!   flight share. Each service also keeps a memo of its last hit (the request target as
//!   spelled, copied; its `Host` and credentials' fingerprint; the entry, its answer held
//!   weakly), valid while the store's generation — moved after every insert, eviction and
//!   removal — is the one read before the entry was, and no change of the store is under way
//!   (a scan has removed entries before its generation moves): the same request again, even
//!   after requests for other targets in between, is answered without a lookup (and without the
//!   shard lock every core would take for a popular missing key); every 64th still goes to
//!   the store, so its eviction policy sees the entry in use.
//! - **Key:** the normalised target the origin will see — the URI's scheme and authority, or
//!   for an origin-form `/r/3` its `Host` header (RFC 9110 §7.2), then path and query —
//!   looked up without allocating; or the application's id through a key function. A request
//!   whose `Host` is not a valid authority, or names another host than its URI (hyper-util
//!   sends it as it is: the origin would read one, the connection go to the other), is not
//!   cached. Percent-encoding is normalised (RFC 3986 §6.2.2.1, §6.2.2.2): `%7E` is `~`,
//!   `%c3%a9` is `%C3%A9`, but `%2F` is not `/`, and dot segments are removed (§6.2.2.3:
//!   `/a/./b` and `/a/x/../b` are `/a/b`) — in lookups, writes, `Location`, the handle
//!   and fleet messages alike, and for what a key function is given; a target already normal
//!   is still looked up without allocating. An origin-form target is keyed scheme-relative
//!   (`//host/path`, its scheme being the connection's) unless
//!   [`Builder::origin_form_scheme`] declares it: then it shares the absolute form's key,
//!   and a key function is given its absolute URI (RFC 9110 §7.1).
//! - **Freshness (RFC 9111 §4.2):** the origin's lifetime on the 404/410 (`s-maxage` in shared
//!   mode, `max-age`, `Expires` − `Date`, the arrival time standing in for a missing `Date`),
//!   else 60 s for 404 and 1 h for 410; less the age it arrived with (§4.2.3: `Age` plus the
//!   time from sending the request to the answer's arrival, or `now − Date` if larger); cut
//!   to `max_ttl`. An answer that took longer than its lifetime is stale on arrival. An explicit lifetime is an upper bound nothing raises; a
//!   lifetime of zero is stale on arrival and not stored.
//! - **Adaptive TTL** (opt-in, [`Builder::adaptive_ttl`]): a key whose entry expired and
//!   whose origin confirmed the same Missing answer again gets double the default lifetime,
//!   up to a ceiling (never an explicit lifetime, never past `max_ttl`); a 2xx, a write, an
//!   invalidation or another status resets it, a key that flaps stays at the default. The
//!   history outlives the entry in a fixed table counted in `max_bytes`, and travels with the
//!   fleet's messages. [`NegativeCacheHit::ttl_source`] says which lifetime was chosen and
//!   why. `examples/ttl_simulation.rs` measures it over a simulated day.
//! - **Not stored:** an answer with `no-store`, `no-cache`, `private` (shared mode) or a
//!   `Vary` on anything but `Accept-Encoding` (its varied request fields are not kept to match
//!   later requests against; an encoded body is sent only to requests that accept its coding,
//!   see above), and the answer to a
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
//!   target (RFC 3986 §5.2); so does an unsafe request that ends in an error or is dropped
//!   before its answer (the origin may have processed it: forgetting costs one request at
//!   most); the [`NegativeCacheHandle`] forgets keys on demand.
//! - **Credentials:** requests with `Authorization`, `Proxy-Authorization`, `Cookie`, a URI
//!   userinfo or a header named with [`Builder::credential_header`] bypass the cache unless
//!   [`Credentials::Fingerprint`] keys them by credential; an entry never crosses credentials.
//!   **An API key in a header the cache was not told about is not a credential to it.**
//!   **Nor is what a layer or client below it adds** (a `reqwest::Client`'s
//!   `default_headers` or cookie store, an auth layer inside the cache): the cache sees only
//!   the request it is given. Give each such stack a partition of the store
//!   ([`NegativeCacheLayer::partition`]).
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

mod answer;
mod body;
mod coalesce;
mod future;
mod handle;
mod history;
mod key;
mod layer;
mod memo;
mod peers;
mod percent;
mod recent;
mod record;
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
pub use ttl::TtlSource;

#[cfg(feature = "redis")]
pub(crate) use answer::{Answer, Head};
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
    /// `Date` made it) plus how long it has been remembered since it arrived; the `Age` header
    /// says the same in whole seconds. An arrival age past 2^32 − 1 seconds counts as that
    /// (RFC 9111 §1.2.2).
    pub age: Duration,
    /// How long the entry stays fresh (never more than is left: it expires to the microsecond).
    pub remaining: Duration,
    /// Whether this answer carries the origin's body: `false` for a head-only answer (the body
    /// was over the limit, or dropped or failed before its end, or learned from a HEAD; or the
    /// request does not accept its content coding), which has no body and no field describing
    /// one (`Content-Type`, `Content-Encoding`, …). An answer whose origin sent an empty body
    /// carries it: `true`.
    pub body_kept: bool,
    /// How long the entry was kept for when it was stored: the lifetime chosen, less the age
    /// the answer arrived with (RFC 9111 §4.2.3), at most `max_ttl`.
    pub ttl: Duration,
    /// Why that lifetime: the origin's freshness, the per-status default, the adaptive TTL's
    /// learned one, or a peer's.
    pub ttl_source: TtlSource,
}

#[cfg(test)]
mod proptests;
