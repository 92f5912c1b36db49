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
//!   `max_retries`, the deadline, the `Retry-After` cap and the shared [`RetryBudget`] allow, for
//!   idempotent methods (and POST/PATCH with `Idempotency-Key`) whose body can be replayed
//!   ([`ReplayBody`]). A request of any method is retried when the answer proves the server
//!   never processed it ([`Outcome::is_unprocessed`](crate::Outcome::is_unprocessed): an HTTP/2
//!   stream refused with `REFUSED_STREAM` or above a GOAWAY's last stream id, RFC 9113 §8.7),
//!   as Envoy's `refused-stream` policy does; [`Builder::retry_unprocessed`] turns that off.
//! - The backoff wait is timed from the moment a retry is decided. During it, the retried
//!   answer's body is read up to `drain_limit` within `drain_timeout` (so its HTTP/1 connection
//!   goes back to the pool), then dropped — at the latest when the wait ends, so draining never
//!   delays the next attempt and no attempt starts past the deadline. With a deadline, the
//!   inner service is driven to ready for the retry before the answer is released, within the
//!   deadline: a service not ready by then gets no attempt, and that answer is returned —
//!   unless its body is still to be read: the service may be waiting for it (one HTTP/1
//!   connection), so it is drained and released, and readiness awaited past the deadline if
//!   need be (see [`Builder::deadline`]).
//! - Backoff: the first retry waits up to `backoff_base`, the n-th up to
//!   `backoff_base × factor^(n-1)`, capped, spread by the jitter.
//!
//! The decision is made by pure policy code (time and randomness come in as arguments), the
//! service and its future only sequence calls, like `tower::retry`.
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
//! `not_replayable`. A stream of declared length (a `Content-Length`, else an exact size hint)
//! is complete once that many bytes are kept — hyper's HTTP/1 client never polls it to its end
//! — and is never replayed if it ends short of it. hyper's `Incoming` must be boxed first (`req.map(BodyExt::boxed)`).
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
//!   for a stream you never want retried — or box it.
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
mod service;
mod stats;

pub use budget::RetryBudget;
pub use capture::Capture;
pub use future::ResponseFuture;
pub use layer::{Builder, StatusAwareRetryLayer};
pub use policy::Jitter;
pub use replay::{ReplayBody, Replayable, SendOnce};
pub use service::StatusAwareRetry;
pub use stats::RetryStats;

#[cfg(test)]
mod proptests;
