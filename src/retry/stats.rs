//! Counters shared by every clone of a retry layer.

use crate::counter::{Counter, bump};
use crate::observe::{RetryEvent, RetryOutcome, RetryReason, SharedObserver};

/// A snapshot of a retry layer's counters, shared by all its clones.
///
/// Every answer the layer returns — a response or an error — lands in exactly one of the six
/// *answer counters*: `succeeded`, `missing`, `failed`, `gave_up`, `budget_exhausted` and
/// `not_retried`. So `requests` = their sum ([`answered`](RetryStats::answered)) + requests
/// still in flight + requests whose future the caller dropped before it finished.
///
/// The other counters count events, not answers: `attempts`, `retries`, `not_replayable`,
/// `drained_bytes`, `unrecognised_errors`, `sent_past_deadline`, `unwitnessed`.
///
/// ```
/// let layer = tower_negative_cache::StatusAwareRetryLayer::new();
/// assert_eq!(layer.stats().requests, 0);
/// assert_eq!(layer.stats().answered(), 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RetryStats {
    /// Requests received (calls of the service).
    pub requests: u64,
    /// Calls made to the inner service: first attempts and retries.
    pub attempts: u64,
    /// Retries sent to the inner service (so `attempts = requests + retries`). A retry that
    /// was decided but never sent — its future dropped during the wait, or the inner service
    /// failing to become ready — is not counted.
    pub retries: u64,
    /// Answer counter: Success answers (1xx-3xx by default) returned.
    pub succeeded: u64,
    /// Answer counter: Missing answers (404/410) returned — at once, never retried.
    pub missing: u64,
    /// Answer counter: Fatal answers returned (other 4xx/5xx, errors no rule calls transient),
    /// and errors of the inner service's readiness before a retry.
    pub failed: u64,
    /// Answer counter: Retryable answers returned because no further attempt was allowed:
    /// `max_retries` used up (with `max_retries(0)`, at the first answer), the next wait would
    /// end past the deadline, the inner service was not ready for the retry by the deadline
    /// (an answer kept through the wait), or `Retry-After` asked for more than
    /// `max_retry_after`.
    pub gave_up: u64,
    /// Answer counter: Retryable answers returned because the retry budget was spent.
    pub budget_exhausted: u64,
    /// Answer counter: Retryable answers returned at once because the request may not be sent
    /// twice: its method (POST/PATCH without `Idempotency-Key`, CONNECT, ...) or a body that
    /// can't be replayed.
    pub not_retried: u64,
    /// Requests that the method and `max_retries` allowed to be retried but that were sent
    /// once because their body can't be replayed: a body that can be neither copied nor
    /// captured (counted when the request is sent, whatever its answer), or a streamed body
    /// whose capture was not complete — larger than `capture_limit`, failed, or not sent to its
    /// end — when a retry was wanted (counted then).
    pub not_replayable: u64,
    /// Bytes of discarded response bodies read (drained) before a retry.
    pub drained_bytes: u64,
    /// Errors of the inner service that no rule recognised — neither the layer's
    /// `error_classifier` nor the `source()` walk — and that were therefore treated as Fatal
    /// (and returned, in `failed`). Each error type is also logged once with `warn!`.
    pub unrecognised_errors: u64,
    /// Retries sent past the deadline: the inner service became ready only after the
    /// deadline, and the answer the retry replaces had a body, which was drained and released
    /// during the backoff wait (so its connection could be reused), leaving none to return at
    /// the deadline; readiness was awaited unbounded, as without a deadline. Also logged
    /// (`debug!`).
    pub sent_past_deadline: u64,
    /// Answers that proved *a* request unprocessed, for a request that only such an answer
    /// may send again (POST, PATCH without `Idempotency-Key`), set aside because no
    /// [`WitnessLayer`](super::WitnessLayer) tied them to the request the layer sent — none
    /// was installed on the transport, or a layer below sent more than that request (a
    /// redirect's hop). Such a request is returned, not retried (in `not_retried`). The first
    /// with no witness at all is also logged with `warn!`.
    pub unwitnessed: u64,
}

impl RetryStats {
    /// The answers returned: the sum of the six answer counters.
    pub fn answered(&self) -> u64 {
        self.succeeded
            + self.missing
            + self.failed
            + self.gave_up
            + self.budget_exhausted
            + self.not_retried
    }
}

#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) requests: Counter,
    pub(crate) retries: Counter,
    pub(crate) succeeded: Counter,
    pub(crate) missing: Counter,
    pub(crate) failed: Counter,
    pub(crate) gave_up: Counter,
    pub(crate) budget_exhausted: Counter,
    pub(crate) not_retried: Counter,
    pub(crate) not_replayable: Counter,
    pub(crate) drained_bytes: Counter,
    pub(crate) unrecognised_errors: Counter,
    pub(crate) sent_past_deadline: Counter,
    pub(crate) unwitnessed: Counter,
    /// The builder's observer, for the events that carry more than a count.
    pub(crate) observer: Option<SharedObserver>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new(None)
    }
}

impl Counters {
    /// Counters at 0, each telling `observer` (if any) its event.
    pub(crate) fn new(observer: Option<SharedObserver>) -> Self {
        use RetryOutcome as O;
        let o = &observer;
        Counters {
            requests: Counter::new(o, |o, _| o.retry(RetryEvent::Request)),
            retries: Counter::default(),
            succeeded: Counter::new(o, |o, _| o.retry(RetryEvent::Answered(O::Succeeded))),
            missing: Counter::new(o, |o, _| o.retry(RetryEvent::Answered(O::Missing))),
            failed: Counter::new(o, |o, _| o.retry(RetryEvent::Answered(O::Failed))),
            gave_up: Counter::new(o, |o, _| o.retry(RetryEvent::Answered(O::GaveUp))),
            budget_exhausted: Counter::new(o, |o, _| {
                o.retry(RetryEvent::Answered(O::BudgetExhausted))
            }),
            not_retried: Counter::new(o, |o, _| o.retry(RetryEvent::Answered(O::NotRetried))),
            not_replayable: Counter::new(o, |o, _| o.retry(RetryEvent::NotReplayable)),
            drained_bytes: Counter::new(o, |o, bytes| o.retry(RetryEvent::Drained { bytes })),
            unrecognised_errors: Counter::new(o, |o, _| o.retry(RetryEvent::UnrecognisedError)),
            sent_past_deadline: Counter::new(o, |o, _| o.retry(RetryEvent::SentPastDeadline)),
            unwitnessed: Counter::new(o, |o, _| o.retry(RetryEvent::Unwitnessed)),
            observer,
        }
    }

    /// A retry sent: counted, and told with its reason and ordinal.
    pub(crate) fn resent(&self, reason: RetryReason, resend_count: u32) {
        bump(&self.retries);
        if let Some(o) = &self.observer {
            o.retry(RetryEvent::Resent {
                reason,
                resend_count,
            });
        }
    }

    /// Tells the observer, if any, of `event` (one that no counter counts).
    pub(crate) fn tell(&self, event: RetryEvent) {
        if let Some(o) = &self.observer {
            o.retry(event);
        }
    }

    pub(crate) fn snapshot(&self) -> RetryStats {
        // `attempts = requests + retries`, always: derived, not counted (one add less per
        // request).
        let (requests, retries) = (self.requests.get(), self.retries.get());
        RetryStats {
            requests,
            attempts: requests + retries,
            retries,
            succeeded: self.succeeded.get(),
            missing: self.missing.get(),
            failed: self.failed.get(),
            gave_up: self.gave_up.get(),
            budget_exhausted: self.budget_exhausted.get(),
            not_retried: self.not_retried.get(),
            not_replayable: self.not_replayable.get(),
            drained_bytes: self.drained_bytes.get(),
            unrecognised_errors: self.unrecognised_errors.get(),
            sent_past_deadline: self.sent_past_deadline.get(),
            unwitnessed: self.unwitnessed.get(),
        }
    }
}
