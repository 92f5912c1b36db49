//! Status-aware retry and negative caching for Tower HTTP clients.
//!
//! Clients that fan out — resolving references, crawling graphs, fetching records by id — melt
//! down when they retry answers that are final. This crate gives any Tower HTTP client two
//! layers that make that class of bug impossible to write:
//!
//! - [`StatusAwareRetryLayer`] retries transient failures (connect errors, 408, 429, 500, 502,
//!   503, 504) with backoff, jitter, `Retry-After`, a shared retry budget and an idempotency
//!   rule. It reads each answer's status *before* the answer can be released, and never retries
//!   404 or 410.
//!
//! # Architecture
//!
//! ```text
//! caller ──> StatusAwareRetry ──> [Timeout] ──> hyper-util Client / any Service
//!               │ classify(head) ─> Outcome: Success | Missing | Retryable | Fatal
//!               │ policy(outcome, attempt, clock, rng) ─> Retry(delay) | Stop
//!               └ release the discarded body, then wait, then replay a copy of the request
//! ```
//!
//! - [`classify`] is the one place that decides what an answer means. It sees the status and
//!   headers only. Both layers use it; the retry layer leaves its verdict on the response as a
//!   [`RetryInfo`] extension so outer layers need not decide again.
//! - Policy is apart from mechanism: the retry decision, backoff, budget and header parsing are
//!   pure functions of their inputs (time is an argument) and are property-tested; the service
//!   and its future only sequence calls.
//!
//! # Example
//!
//! A hyper-util client that retries transient failures:
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_negative_cache::StatusAwareRetryLayer;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let retry = StatusAwareRetryLayer::new();
//! let client = ServiceBuilder::new()
//!     .layer(retry.clone())
//!     .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
//!
//! let req = http::Request::get("http://127.0.0.1:8080/records/42").body(Empty::new())?;
//! let res = client.oneshot(req).await?;
//! println!("{} after {:?}", res.status(), retry.stats());
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//!
//! | feature | default | what it adds | cost |
//! |---|---|---|---|
//! | `hyper` | yes | recognises hyper's and hyper-util's error types as transient transport errors | hyper and hyper-util (which a hyper client has anyway) |
//!
//! # Runtime
//!
//! Backoff waits and drain time bounds use tokio's timer: run the layers inside a tokio runtime
//! with time enabled.

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod classify;
mod error;
mod headers;
pub mod retry;

pub use classify::Outcome;
pub use error::BuildError;
pub use retry::StatusAwareRetryLayer;

/// The verdict on an answer, left on the response by [`StatusAwareRetryLayer`] so that callers
/// and outer layers read it instead of deciding again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryInfo {
    /// What the last answer meant.
    pub outcome: Outcome,
    /// How many times the request was sent (1 when it was not retried).
    pub attempts: u32,
}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
