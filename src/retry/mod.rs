//! Status-aware retry: transient failures are retried with backoff, final answers never are.
//!
//! [`StatusAwareRetryLayer`] wraps any `Service<http::Request<B>, Response = http::Response<_>>`.
//! Each answer is classified from its head (see [`classify`](crate::classify)) before anything
//! else happens to it:
//!
//! - **Missing** (404, 410) and **Success** and **Fatal** answers are returned at once, with a
//!   [`RetryInfo`](crate::RetryInfo) extension. No setting and no classifier can make 404 or 410
//!   retryable.
//! - **Retryable** answers (408, 429, 500, 502, 503, 504, transport errors) are retried while
//!   `max_retries`, the deadline, the `Retry-After` cap and the shared [`RetryBudget`] allow, for
//!   idempotent methods (and POST/PATCH with `Idempotency-Key`) whose body can be replayed
//!   ([`ReplayBody`]).
//! - The backoff wait is timed from the moment a retry is decided. During it, the retried
//!   answer's body is read up to `drain_limit` within `drain_timeout` (so its HTTP/1 connection
//!   goes back to the pool), then dropped — at the latest when the wait ends, so draining never
//!   delays the next attempt and no attempt starts past the deadline.
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
//! let info = res.extensions().get::<RetryInfo>().unwrap();
//! assert_eq!((info.outcome, info.attempts), (Outcome::Missing, 3));
//! assert_eq!(layer.stats().retries, 2);
//! # }
//! ```

mod budget;
mod future;
mod layer;
mod policy;
mod replay;
mod service;
mod stats;

pub use budget::RetryBudget;
pub use future::ResponseFuture;
pub use layer::{Builder, StatusAwareRetryLayer};
pub use policy::Jitter;
pub use replay::{ReplayBody, Replayable, SendOnce};
pub use service::StatusAwareRetry;
pub use stats::RetryStats;

#[cfg(test)]
mod proptests;
