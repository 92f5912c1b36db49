//! Counters shared by every clone of a retry layer.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of a retry layer's counters, shared by all its clones.
///
/// ```
/// let layer = tower_negative_cache::StatusAwareRetryLayer::new();
/// assert_eq!(layer.stats().requests, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RetryStats {
    /// Requests received.
    pub requests: u64,
    /// Calls made to the inner service (first attempts and retries).
    pub attempts: u64,
    /// Retries made.
    pub retries: u64,
    /// Missing answers (404/410) returned at once, without a retry.
    pub missing: u64,
    /// Retryable answers returned because the retry budget was spent.
    pub budget_exhausted: u64,
    /// Retryable answers returned because `max_retries`, the deadline or the `Retry-After` cap
    /// allowed no further attempt.
    pub gave_up: u64,
    /// Retry-eligible requests sent once because their body can't be replayed.
    pub not_replayable: u64,
    /// Bytes of discarded response bodies read (drained) before a retry.
    pub drained_bytes: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) attempts: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) missing: AtomicU64,
    pub(crate) budget_exhausted: AtomicU64,
    pub(crate) gave_up: AtomicU64,
    pub(crate) not_replayable: AtomicU64,
    pub(crate) drained_bytes: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> RetryStats {
        RetryStats {
            requests: self.requests.load(Relaxed),
            attempts: self.attempts.load(Relaxed),
            retries: self.retries.load(Relaxed),
            missing: self.missing.load(Relaxed),
            budget_exhausted: self.budget_exhausted.load(Relaxed),
            gave_up: self.gave_up.load(Relaxed),
            not_replayable: self.not_replayable.load(Relaxed),
            drained_bytes: self.drained_bytes.load(Relaxed),
        }
    }
}
