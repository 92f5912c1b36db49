//! Status-aware retry and negative caching for Tower HTTP clients: two layers for any
//! `Service<http::Request<B>, Response = http::Response<_>>`, usable alone or together.
//!
//! - [`StatusAwareRetryLayer`] retries transient failures (connect errors, 408, 429, 500, 502,
//!   503, 504) with backoff, jitter, `Retry-After`, a retry budget per upstream host and an
//!   idempotency rule. It reads each answer's status *before* the answer can be released, and never
//!   retries 404 or 410.
//! - [`NegativeCacheLayer`] remembers keys that answered 404 or 410 in a store bounded in
//!   entries and bytes, for as long as the origin says they stay fresh (RFC 9111), answers
//!   them without touching the network, forgets them when a 2xx or a write lands, and reports
//!   stats. With the `redis` feature, replicas share what is missing (`fleet`).
//! - Both report what they count as snapshots (`stats()`), to an [`observe::Observer`] set on
//!   their builders, and (feature `metrics`) through the `metrics` facade to the recorder the
//!   application installed; their `tracing` events follow OpenTelemetry's HTTP client shape.
//!
//! # Example
//!
//! Both layers over a hyper-util client:
//!
//! ```no_run
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let cache = NegativeCacheLayer::builder().ttl(Duration::from_secs(3600)).build()?;
//! let retry = StatusAwareRetryLayer::new();
//! let client = ServiceBuilder::new()
//!     .layer(cache.clone()) // outside: a remembered 404 costs nothing, not even a retry decision
//!     .layer(retry.clone())
//!     .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
//!
//! let req = http::Request::get("http://127.0.0.1:8080/records/42").body(Empty::new())?;
//! let res = client.oneshot(req).await?;
//! println!("{} {:?} {:?}", res.status(), retry.stats(), cache.handle().stats());
//! # Ok(()) }
//! ```
//!
//! # Why
//!
//! Clients that fan out — resolving references, crawling graphs, fetching records by id — melt
//! down when they retry answers that are final. In the incident this crate was written after,
//! a retry loop released the error response and only then asked whether it was a 404: the
//! check was always false, every 404 was retried twice, 61 fetches became 183 requests and the
//! discarded buffers crashed the node daily. These layers make that class of bug impossible to
//! write and cheap to avoid.
//!
//! # Architecture
//!
//! ```text
//! caller ──> NegativeCache ──> StatusAwareRetry ──> [Timeout] ──> hyper-util Client / any Service
//!               │  hit: the remembered 404/410 (head, body), 0 upstream calls
//!               │  miss: call through; a Missing answer is remembered
//!               └─ handle(): stats, invalidate, clear, peek
//!                    └─ fleet (feature `redis`): publish what is learned and forgotten,
//!                       apply what other replicas publish — off the request path
//! ```
//!
//! - [`classify`] is the one place that decides what an answer means: Success, Missing,
//!   Retryable or Fatal. It sees the status and headers only — never the body — and no
//!   classifier can make 404 or 410 retryable. The retry layer leaves its verdict on the
//!   response ([`RetryInfo::of`] reads it); a negative cache without a classifier of its own
//!   follows it, so a classifier given to the retry layer is applied by both.
//! - Policy is apart from mechanism: the retry decision, backoff, budget, TTL arithmetic and
//!   header parsing are pure functions of their inputs (time is an argument) and are
//!   property-tested; services and futures only sequence calls.
//! - The retry layer releases a discarded answer (its body drained up to a bound, then
//!   dropped) *during* its backoff wait, timed from the retry decision, and at the latest when
//!   the wait ends: the connection returns to the pool, no buffer is held into the next
//!   attempt, and draining never pushes an attempt past the deadline.
//! - The fleet tier (`fleet`, feature `redis`) attaches to a cache layer: the cache offers
//!   each Missing answer it remembers and each key it forgets to a bounded queue (never
//!   blocking), a background task publishes them to Redis, another applies other replicas' —
//!   only what this layer's classifier calls Missing, within its limits, never over a newer
//!   local answer (the cache keeps short-lived tombstones of its recent changes for that), and
//!   signed when a secret is set.
//! - A request's layers read tokio's clock once between them, and only where the time is
//!   needed: the cache for an entry's freshness and a read's request time (RFC 9111 §4.2.3),
//!   the retry layer for its budget's slot and its deadline (with neither, only to time a
//!   nonzero wait). A layer lends its reading to the layers it calls synchronously (a
//!   thread-local set for the inner `call`), so the two stacked read the clock once.
//! - Statistics count on per-thread stripes, each on a cache line of its own: the first 8
//!   threads alive that count each hold a stripe, as its only writer, and add without an
//!   atomic read-modify-write; other threads share a ninth stripe with an atomic add.
//! - One file owns the negative cache's store ([`quick_cache`](https://docs.rs/quick_cache):
//!   bounded, sharded, scan-resistant). Entries carry their expiry; nothing runs in the
//!   background. Beside it, a count of held keys per bucket of a hash of their target and
//!   credentials (a counting Bloom filter with one hash, one-byte buckets, 4 per entry of
//!   capacity rounded up to a power of two), exact because every key is counted before it is
//!   held and uncounted after it leaves: a lookup whose bucket counts none is a miss without
//!   quick_cache's shard lock — most lookups.
//!
//! # Layer ordering
//!
//! Put [`NegativeCacheLayer`] **outside** [`StatusAwareRetryLayer`]:
//!
//! - a remembered key is answered before any retry machinery runs (no request clone, no
//!   budget deposit);
//! - the cache sees the *final* answer of the retry loop: a 503 that became a 404 on the
//!   second attempt is remembered, and a 503 that never recovered is not;
//! - the cache follows the retry layer's [`RetryInfo`] verdict (unless it was given a
//!   classifier of its own).
//!
//! The other order works, but every hit then goes through the retry layer (and counts in its
//! budget as a request), and the cache sees each attempt, not the final answer.
//!
//! # Composing with tower-http
//!
//! tower-http's (0.7) client middleware goes around and between the two layers like this,
//! outermost first (`examples/tower_http_stack.rs` runs this stack against a local server and
//! checks each point below; `tests/reqwest.rs` runs the redirect point over reqwest):
//!
//! ```text
//! TraceLayer -> FollowRedirectLayer -> NegativeCacheLayer -> DecompressionLayer
//!            -> StatusAwareRetryLayer -> tower::timeout::TimeoutLayer -> WitnessLayer -> Client
//! ```
//!
//! - **`TraceLayer` outermost**: one span per caller request, with the answer the caller gets
//!   — cache hits (which never reach anything inside) included. The retry layer logs each
//!   attempt itself (method, URI, attempt, wait, error text).
//! - **`FollowRedirectLayer` outside the cache**: each hop is a request of its own, so each
//!   goes through the cache under its own key and through the retry loop on its own. A
//!   redirect to a missing resource is remembered under the *target* that answered 404, as
//!   RFC 9111 keys a response by the request that got it; a redirect itself is not Missing and
//!   is not remembered, so when the origin moves the redirect elsewhere the next request
//!   follows it. Inside the cache, the cache would store the target's 404 under the old URI,
//!   where no write or invalidation of the target ever reaches it — which is why
//!   [`ReqwestService`](crate::reqwest::ReqwestService) turns reqwest's own redirects off.
//!   Since tower-http 0.7 the follower forwards the request's extensions to same-origin hops
//!   (dropped cross-origin): a [`BypassNegativeCache`](crate::cache::BypassNegativeCache)
//!   marker then bypasses the cache on every same-origin hop, not on the first only.
//! - **`DecompressionLayer` outside the retry layer**: the retry layer then drains a discarded
//!   answer's body as it came on the wire — compressed, counted against `drain_limit` in wire
//!   bytes, never inflated (a small compressed error page can inflate to far more than the
//!   drain bound). Between the cache and the retry layer, it adds `Accept-Encoding` to every
//!   attempt; the cache never needs a body (its own answers are empty).
//! - **A per-attempt `tower::timeout::TimeoutLayer` inside the retry layer**: it bounds each
//!   attempt, and its `Elapsed` error is a transient error the retry layer retries. Outside
//!   the retry layer it would bound the whole loop and cancel it with no answer; the retry
//!   layer's own [`deadline`](retry::Builder::deadline) does that job and still returns the
//!   last answer. The timeout's error type is `Box<dyn Error + Send + Sync>`, which the
//!   default error classification reads through its `source()` chain.
//! - **[`retry::WitnessLayer`] on the client**: it ties an answer proving a request was never
//!   processed (a refused connection) to the request the retry layer sent, so that a POST is
//!   sent again only on such proof of its own. Only layers that send the request they were
//!   given once may sit between it and the retry layer (the timeout does): a
//!   `FollowRedirectLayer` there would make a POST answered `303` whose `Location` refuses
//!   connections look unprocessed — without the witness the retry layer never resends a POST
//!   on such an answer, and counts it (`RetryStats::unwitnessed`).
//!
//! - **Anything that adds credentials goes outside the cache, or gets a partition**: the cache
//!   sees only the request it is given, so an `Authorization` a layer inside it adds (or a
//!   client's default headers, or its cookie store) can't keep two identities' 404s apart.
//!   One store shared by such stacks needs one
//!   [`partition`](cache::NegativeCacheLayer::partition) per identity.
//!
//! tower-http's own `TimeoutLayer` is server-side: it answers a *server's* slow request with
//! a 408 response instead of an error. Don't use it on a client: use `tower::timeout`.
//!
//! To keep the stack in a struct, box it: `tower::util::BoxCloneSyncService` is `Clone`,
//! `Send` and `Sync`, and a `map_response` gives it one body type.
//!
//! ```no_run
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full, combinators::BoxBody};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::ServiceBuilder;
//! use tower::timeout::TimeoutLayer;
//! use tower::util::BoxCloneSyncService;
//! use tower_http::{decompression::DecompressionLayer, follow_redirect::FollowRedirectLayer};
//! use tower_http::trace::TraceLayer;
//! use tower_negative_cache::retry::WitnessLayer;
//! use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};
//!
//! type BoxError = Box<dyn std::error::Error + Send + Sync>;
//! /// The whole stack as one type: clone it into each task that sends requests.
//! type HttpClient = BoxCloneSyncService<
//!     http::Request<Full<Bytes>>,
//!     http::Response<BoxBody<Bytes, BoxError>>,
//!     BoxError,
//! >;
//!
//! struct Records {
//!     http: HttpClient,
//! }
//!
//! fn records(cache: &NegativeCacheLayer, retry: &StatusAwareRetryLayer) -> Records {
//!     let stack = ServiceBuilder::new()
//!         .map_response(|res: http::Response<_>| {
//!             res.map(|body: _| BodyExt::map_err(body, Into::into).boxed())
//!         })
//!         .layer(TraceLayer::new_for_http())
//!         .layer(FollowRedirectLayer::new())
//!         .layer(cache.clone())
//!         .layer(DecompressionLayer::new())
//!         .layer(retry.clone())
//!         .layer(TimeoutLayer::new(Duration::from_secs(2))) // per attempt
//!         .layer(WitnessLayer::new()) // on the client: a refused connection is the POST's own
//!         .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
//!     Records { http: BoxCloneSyncService::new(stack) }
//! }
//! ```
//!
//! # Guarantees
//!
//! Each holds by a test (`GUARANTEES.md` lists which):
//!
//! 1. A 404 or 410 reaches upstream exactly once per request, whatever the configuration.
//! 2. Upstream calls per request ≤ 1 + `max_retries`; each host's retries ≤ its budget, and
//!    one host's failures never spend another host's retries.
//! 3. A discarded answer's body is released before the next attempt begins (drained during
//!    the wait, dropped at its end at the latest); no reservation of the inner service is
//!    held through a wait; no attempt starts past the deadline, but a retry whose service
//!    is busy past it after the answer it replaces was released (counted).
//! 4. A remembered key is answered without an upstream call until its TTL ends or it is
//!    invalidated; 404 stays 404, 410 stays 410.
//! 5. Entries never exceed capacity; memory stays bounded under a flood of missing keys.
//! 6. No input — status, header bytes, URI, timing, cancellation — makes the stack panic,
//!    hang, or leave a waiter stranded; every wait and TTL stays within its configured clamps.
//! 7. The latest answer wins: a remembered 404 is served only if no 2xx, successful write or
//!    invalidation of its key landed after the 404's request started.
//! 8. Nothing stale is served: an entry never outlives the freshness its origin gave it, and
//!    an answer stale on arrival is not stored (RFC 9111 §4.2).
//! 9. The tower readiness contract holds: only a service driven to ready is called, and a
//!    hit or a coalesced wait keeps no inner reservation (safe over `Buffer` and
//!    `ConcurrencyLimit`).
//!
//! # Memory
//!
//! Everything that grows with traffic has a bound:
//!
//! | what | bound |
//! |---|---|
//! | the negative cache's store | `max_bytes` of key text (default 400 B × `capacity`) plus tables that `capacity` sizes, about 100 B per entry of it (of which the presence counts take 4 to 8 B: 4 per entry, rounded up to a power of two; 64 KiB at the default): about 5 MB at the defaults, whatever the keys |
//! | reads in flight (the store's key versions) | one small slot per key with reads in flight, freed when its last read settles: grows with concurrent requests, not with traffic |
//! | a cache service's memo of its last hit | one per service (clone), in the service: the target as spelled (copied, at most 192 bytes: no request buffer is held) and the entry, its answer held weakly (what the store forgets is freed): 264 bytes on 64-bit targets |
//! | coalescing flights | one per key with a leader in flight (its key and a notifier), freed when the leader settles or is dropped |
//! | recent local changes (with a fleet tier) | tombstones of 65,536 keys, each kept 10 s (a key changed again moves its own): under 4 MB |
//! | the retry layer's copy of a streamed request body | `capture_limit` per request in flight (default 64 KiB; its buffer under twice that), freed as soon as the body outgrows it; in total, that times the requests in flight (bound those with a concurrency limit) |
//! | the fleet's publish queue | `queue` events (default 1,024), each a key of at most 8 KiB; forgets and clears waiting for a slow Redis: 1,024, beyond which they collapse into one clear (as does a forget or clear that finds the queue full) |
//! | the fleet's receiver | messages over 8 KiB + 256 B refused unread; replay protection for the last 4,096 replicas heard from |
//!
//! # Feature flags
//!
//! | feature | default | what it adds | cost |
//! |---|---|---|---|
//! | `hyper` | yes | recognises hyper's, hyper-util's and h2's error types as transient transport errors, and an HTTP/2 stream the server refused before processing it (`REFUSED_STREAM`, GOAWAY) or a connection never made as retryable whatever the method, when a [`retry::WitnessLayer`] on the client ties it to the request sent | hyper, hyper-util and h2 (which a hyper HTTP/2 client has anyway; h2 because hyper keeps the HTTP/2 reason private) |
//! | `serde` | no | `serde::Serialize` for [`cache::CacheStats`] and [`retry::RetryStats`] | serde |
//! | `redis` | no | the `fleet` module: replicas share what is missing through Redis | the `redis` client (and `url`), `hmac` and `sha2` |
//! | `redis-tls` | no | `redis` plus `rediss://` URLs: TLS through rustls, the server verified against the system's roots or a private CA ([`fleet::FleetBuilder::tls_root_certificates`]); `#insecure` URLs for local tests | rustls with its `ring` provider (and redis-rs's TLS support) |
//! | `reqwest` | no | [`reqwest::ReqwestService`]: both layers over reqwest 0.13 (a client built with redirects off, see its docs); reqwest's connect errors and timeouts classified as transient; `ReplayBody` for `reqwest::Body` | reqwest (without TLS features; yours picks them) |
//! | `axum` | no | [`retry::ReplayBody`] for `axum::body::Body` (bodiless replay, capture of streams) | axum-core (which an axum server has anyway) |
//! | `metrics` | no | `metrics::{CacheMetrics, RetryMetrics, FleetMetrics}`: observers that record every stats counter (and backoff and retries-per-call histograms) through the `metrics` 0.24 facade, to whatever recorder the application installs; names and labels in METRICS.md. Off, the [`observe`] seam costs one branch per event | `metrics` (the facade only: no recorder, no exporter) |
//!
//! # Runtime
//!
//! Backoff waits, drain bounds and coalescing bounds use tokio's timer: run the layers inside a
//! tokio runtime with time enabled.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod cache;
pub mod classify;
mod clock;
mod counter;
mod error;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod fleet;
mod headers;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
pub mod observe;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest;
pub mod retry;

pub use cache::NegativeCacheLayer;
pub use classify::{Outcome, RetryInfo};
pub use error::BuildError;
pub use retry::StatusAwareRetryLayer;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(doctest)]
#[doc = include_str!("../GUARANTEES.md")]
struct GuaranteesDoctests;
