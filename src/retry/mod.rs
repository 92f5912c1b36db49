//! Status-aware retry: transient failures are retried with backoff, final answers never are.
//!
//! [`StatusAwareRetryLayer`] wraps any `Service<http::Request<B>, Response = http::Response<_>>`.
//! Each answer is classified from its head (see [`classify`](crate::classify)) before anything
//! else happens to it:
//!
//! - **Missing** (404, 410) and **Success** and **Fatal** answers are returned at once, with
//!   their verdict ([`RetryInfo::of`](crate::RetryInfo::of) reads it; a 1xx–3xx Success at the
//!   first attempt carries no extension, so the commonest answer allocates nothing). No setting
//!   and no classifier can make 404 or 410 retryable.
//! - **Retryable** answers (408, 429, 500, 502, 503, 504, transport errors) are retried while
//!   `max_retries`, the deadline, the `Retry-After` cap and the [`RetryBudget`] of the request's
//!   host allow (one per upstream host by default, [`BudgetScope`]), for
//!   idempotent methods (and POST/PATCH with `Idempotency-Key`) whose body can be replayed
//!   ([`ReplayBody`]). A request of any method is retried when the answer proves the server
//!   never processed it ([`Outcome::is_unprocessed`](crate::Outcome::is_unprocessed): a
//!   connection never made, an HTTP/2 stream refused with `REFUSED_STREAM` or above a GOAWAY's
//!   last stream id, RFC 9113 §8.7), as Envoy's `refused-stream` policy does — but only when a
//!   [`WitnessLayer`] on the transport ties that answer to the request the layer sent, since
//!   a layer in between (a redirect follower) may have sent others; [`Builder::retry_unprocessed`]
//!   turns that off.
//! - The backoff wait is timed from the moment a retry is decided. During it, the retried
//!   answer's body is read up to `drain_limit` (checked before each read) within
//!   `drain_timeout` (so its HTTP/1 connection goes back to the pool), then dropped — at the
//!   latest when the wait ends, so draining never delays the next attempt. No reservation of the
//!   inner service is held through the wait: it is driven to ready for the retry after it,
//!   as `tower::retry` does. With a deadline, an answer that holds nothing (an error, a
//!   response whose body has ended) is kept through the wait and returned if the service is
//!   not ready by the deadline; an answer with a body is released during the wait, so its
//!   retry awaits readiness past the deadline if need be, counted (see [`Builder::deadline`]).
//! - Backoff: the first retry waits up to `backoff_base`, the n-th up to
//!   `backoff_base × factor^(n-1)`, capped, spread by the jitter.
//! - Budget: each host (the request's authority) has its own budget, as Envoy scopes one per
//!   upstream cluster and gRPC per channel, so a host's outage spends its own retries and
//!   never a healthy host's ([`Builder::budget_scope`] chooses another scope). Every request
//!   deposits when it is sent, whatever its answer — a 404 or a 200 is a healthy exchange,
//!   as in the SRE book and gRPC — so a host sees at most `(1 + ratio)` times its requests
//!   plus the allowance; depositing only on some answers would make that bound depend on what
//!   the host answers. At most [`budget_max_scopes`](Builder::budget_max_scopes) hosts are
//!   tracked, the rest share one overflow budget;
//!   [`budget_exhausted_scopes`](StatusAwareRetryLayer::budget_exhausted_scopes) names the
//!   hosts burning their retries.
//!
//! The decision is made by pure policy code (time and randomness come in as arguments), the
//! service and its future only sequence calls, like `tower::retry`.
//!
//! What the layer counts is a [`RetryStats`] snapshot, and is told as it happens to the
//! [`Observer`](crate::observe::Observer) given to [`Builder::observer`] (with the feature
//! `metrics`, `RetryMetrics` records it). Each resend's answer is a debug `tracing` event in
//! OpenTelemetry's HTTP client shape: `http.request.resend_count`, `http.request.method`,
//! `server.address`, `http.response.status_code`, `error.type` — no URI.
//!
//! # Example
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Empty;
//! use bytes::Bytes;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_negative_cache::{RetryInfo, StatusAwareRetryLayer};
//! use tower_negative_cache::classify::Outcome;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let upstream = {
//!     let calls = calls.clone();
//!     tower::service_fn(move |_req: Request<Empty<Bytes>>| {
//!         let n = calls.fetch_add(1, Ordering::SeqCst);
//!         let status = if n < 2 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::NOT_FOUND };
//!         async move {
//!             Ok::<_, std::convert::Infallible>(
//!                 Response::builder().status(status).body(Empty::<Bytes>::new()).unwrap(),
//!             )
//!         }
//!     })
//! };
//! let layer = StatusAwareRetryLayer::builder()
//!     .backoff_base(Duration::from_millis(1))
//!     .build()
//!     .unwrap();
//! let client = ServiceBuilder::new().layer(layer.clone()).service(upstream);
//!
//! let res = client.oneshot(Request::new(Empty::new())).await.unwrap();
//! // 503, 503, then 404: the 404 ends the loop; it is never retried.
//! assert_eq!(res.status(), StatusCode::NOT_FOUND);
//! let info = RetryInfo::of(&res).unwrap();
//! assert_eq!((info.outcome, info.attempts), (Outcome::Missing, 3));
//! assert_eq!(layer.stats().retries, 2);
//! # }
//! ```
//!
//! # Request bodies
//!
//! A retry sends a copy of the request ([`ReplayBody`]): buffered bodies are cloned; `BoxBody`,
//! `UnsyncBoxBody` and axum bodies already at their end are replayed as empty; a streamed body of those
//! types (what a proxy forwards) is captured as the first attempt sends it, up to
//! [`capture_limit`](Builder::capture_limit) bytes (64 KiB by default) per request in flight,
//! and replayed from the copy if it fit; a larger one is sent once, whole, and counted as
//! `not_replayable`. A stream is complete at its end, or once it has sent its trailers (the
//! last frame a body can send; they count against `capture_limit`), or, of declared length (a
//! `Content-Length`, else an exact size hint), once that many bytes are kept — hyper's HTTP/1
//! client polls neither to its end — and is never replayed if it ends short of it. hyper's
//! `Incoming` (what a server receives) is refused at compile time rather than silently sent
//! once: box it first (`req.map(BodyExt::boxed)`) to have it retried, or wrap it in
//! [`SendOnce`] to send it once.
//!
//! # Troubleshooting compile errors
//!
//! The layer's service implements `Service` only when every part fits, so a mismatch often
//! shows up at a method call as *"the method `oneshot` exists for struct
//! `StatusAwareRetry<…>`, but its trait bounds were not satisfied"*, naming no culprit. Call
//! the service through `tower::Service::call(&mut svc, req)` once (or put it where a
//! `Service<Request<B>>` is required) and rustc names the unmet bound and its fix:
//!
//! - *"the retry layer can't tell whether a request body of type `X` may be sent again"*: the
//!   body type has no [`ReplayBody`]. Wrap it: [`Replayable`] for a `Clone` body, [`SendOnce`]
//!   for a stream you never want retried — or box it. hyper's `Incoming` (a proxy forwarding
//!   what its server received) is one: `req.map(BodyExt::boxed)` and a client for
//!   `BoxBody<Bytes, hyper::Error>`.
//! - *"`X` is not a classifier"*: the value given to [`Builder::classifier`] is not a
//!   [`Classify`](crate::classify::Classify). A closure must name both argument types:
//!   `|status: StatusCode, headers: &HeaderMap| -> Outcome`.
//! - *"`X` can't classify errors of type `E`"*: the [`Builder::error_classifier`] closure takes
//!   another error type than the inner service's `S::Error` (`E` in the message).
//! - *"the trait bound `S: Clone` is not satisfied"*: retries go through a clone of the inner
//!   service, as with `tower::retry`; wrap a non-`Clone` service in `tower::buffer::Buffer`.
//!
//! ```compile_fail
//! // error[E0277]: the retry layer can't tell whether a request body of type `MyBody` may be
//! // sent again
//! # use bytes::Bytes;
//! # use std::{pin::Pin, task::{Context, Poll}};
//! struct MyBody;
//! # impl http_body::Body for MyBody {
//! #     type Data = Bytes;
//! #     type Error = std::convert::Infallible;
//! #     fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>)
//! #         -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> { Poll::Ready(None) }
//! # }
//! let upstream = tower::service_fn(|_: http::Request<MyBody>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<Bytes>::new()))
//! });
//! let mut svc = tower::Layer::layer(&tower_negative_cache::StatusAwareRetryLayer::new(), upstream);
//! let _ = tower::Service::call(&mut svc, http::Request::new(MyBody));
//! ```

mod budget;
mod capture;
mod future;
mod layer;
mod log;
mod policy;
mod replay;
mod scope;
mod service;
mod stats;
mod witness;

pub use budget::RetryBudget;
pub use capture::Capture;
pub use future::ResponseFuture;
pub use layer::{Builder, StatusAwareRetryLayer};
pub use policy::Jitter;
pub use replay::{ReplayBody, Replayable, SendOnce};
pub use scope::BudgetScope;
pub use service::StatusAwareRetry;
pub use stats::RetryStats;
pub use witness::{Witness, WitnessFuture, WitnessLayer};

#[cfg(test)]
mod proptests;
