//! The events the layers count, pushed to an [`Observer`] the application sets on a builder.
//!
//! Every counter of [`CacheStats`](crate::cache::CacheStats),
//! [`RetryStats`](crate::retry::RetryStats) and (feature `redis`) `FleetStats` is bumped in
//! one place, and that place also tells the observer: what an observer adds up equals the
//! snapshot over the same traffic. Set one with `observer` on
//! [`NegativeCacheLayer::builder`](crate::NegativeCacheLayer::builder),
//! [`StatusAwareRetryLayer::builder`](crate::StatusAwareRetryLayer::builder) or `FleetBuilder`.
//!
//! Off by default, and free when off: without an observer an event costs one branch on a
//! `None`; nothing is allocated, formatted or hashed. With one, each event is one virtual
//! call with a small `Copy` value — no key, URI or header is ever handed out, so whatever
//! an observer derives from the events stays bounded in cardinality.
//!
//! An observer is called on the request path, inside the layer's `call` or `poll`: it must be
//! quick and must not block (increment an atomic, a `metrics` handle, an OpenTelemetry
//! instrument). The feature `metrics` has one ready-made per layer (the `metrics` module).
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
//! use tower_negative_cache::NegativeCacheLayer;
//! use tower_negative_cache::observe::{CacheEvent, Observer};
//!
//! #[derive(Debug, Default)]
//! struct Hits(AtomicU64);
//!
//! impl Observer for Hits {
//!     fn cache(&self, event: CacheEvent) {
//!         if event == CacheEvent::Hit {
//!             self.0.fetch_add(1, Relaxed);
//!         }
//!     }
//! }
//!
//! let hits = Arc::new(Hits::default());
//! let layer = NegativeCacheLayer::builder().observer(hits.clone()).build().unwrap();
//! # drop(layer);
//! assert_eq!(hits.0.load(Relaxed), 0);
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Receives the layers' events as they happen. Every method has an empty default, so an
/// implementation overrides only what it wants.
///
/// Called on the request path: keep it quick and non-blocking. A panic in an observer is a
/// panic in the request that triggered the event.
pub trait Observer: Send + Sync + 'static {
    /// An event of a negative cache.
    fn cache(&self, event: CacheEvent) {
        let _ = event;
    }

    /// An event of a retry layer.
    fn retry(&self, event: RetryEvent) {
        let _ = event;
    }

    /// An event of a fleet tier (feature `redis`).
    fn fleet(&self, event: FleetEvent) {
        let _ = event;
    }
}

impl fmt::Debug for dyn Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Observer")
    }
}

/// A shared observer, as the builders keep it.
pub(crate) type SharedObserver = Arc<dyn Observer>;

/// What a negative cache did. Each variant matches one counter of
/// [`CacheStats`](crate::cache::CacheStats), except [`Size`](CacheEvent::Size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheEvent {
    /// A lookup answered from the cache (`hits`).
    Hit,
    /// A lookup that went upstream, waited for a flight, or got a 504 for `only-if-cached`
    /// (`misses`).
    Miss,
    /// A request that could not use the cache (`bypasses`). Every request is exactly one of
    /// `Hit`, `Miss` and `Bypass`.
    Bypass,
    /// A miss that waited for a request in flight for its key (`coalesced`; also a `Miss`).
    Coalesced,
    /// A coalesced wait that reached its bound (`wait_timeouts`).
    WaitTimeout,
    /// An `only-if-cached` request answered 504 (`only_if_cached_misses`).
    OnlyIfCachedMiss,
    /// A Missing answer remembered (`inserts`).
    Inserted,
    /// A Missing answer remembered without its body (`head_only`; also `Inserted`): the
    /// body was over `max_body_bytes`, dropped or failed before its end, or learned from a
    /// HEAD, so its hits answer with the origin's head alone.
    HeadOnly,
    /// A Missing answer that could not be remembered (`uncacheable`).
    Uncacheable,
    /// Entries evicted to stay within capacity (`evictions`). Reported after the insert that
    /// caused them.
    Evicted {
        /// How many.
        count: u64,
    },
    /// An entry found expired and dropped (`expirations`).
    Expired,
    /// Entries forgotten before their TTL (`invalidations`).
    Invalidated {
        /// How many.
        count: u64,
    },
    /// The store's size after a change (an insert, an eviction, an invalidation): a gauge.
    Size {
        /// Entries held (`len`).
        entries: u64,
        /// Bytes held (`memory_bytes`).
        memory_bytes: u64,
    },
}

/// What a retry layer did. Each variant matches counters of
/// [`RetryStats`](crate::retry::RetryStats), except the two histograms' events
/// ([`Backoff`](RetryEvent::Backoff), [`CallEnded`](RetryEvent::CallEnded)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryEvent {
    /// A request received (`requests`).
    Request,
    /// A retry sent to the inner service (`retries`; `attempts` is `requests + retries`).
    Resent {
        /// Why the answer before it was retried.
        reason: RetryReason,
        /// The ordinal of this resend: 1 for the first retry (OpenTelemetry's
        /// `http.request.resend_count`).
        resend_count: u32,
    },
    /// A retry sent, with the wait before it, told just before its
    /// [`Resent`](RetryEvent::Resent): a retry decided but never sent (its future dropped, its
    /// service failing or not ready by the deadline) is not told, so the backoff histogram adds
    /// up to `retries`.
    Backoff {
        /// The wait: backoff with jitter, or the server's `Retry-After`.
        wait: Duration,
    },
    /// An answer returned: one of the six answer counters.
    Answered(RetryOutcome),
    /// A request sent once because its body can't be replayed (`not_replayable`).
    NotReplayable,
    /// Bytes of a discarded answer's body read before a retry (`drained_bytes`).
    Drained {
        /// How many.
        bytes: u64,
    },
    /// An error no rule recognised, returned as Fatal (`unrecognised_errors`).
    UnrecognisedError,
    /// A retry sent past the deadline (`sent_past_deadline`).
    SentPastDeadline,
    /// An unprocessed verdict set aside for want of a witness's proof that it is the sent
    /// request's own (`unwitnessed`).
    Unwitnessed,
    /// A request's future ended (answered, or dropped by its caller) after at least one retry:
    /// how many it sent. gRPC's A96 `grpc.client.call.retries` shape: calls without a retry
    /// are not reported.
    CallEnded {
        /// Retries sent for the request (at least 1).
        retries: u32,
    },
}

/// Why an answer was retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryReason {
    /// A retryable status (503, 429, ...).
    Status,
    /// A transport error (a reset, a timeout) the server may have processed.
    TransportError,
    /// An error proving the server never processed the request (a refused stream, a
    /// connection never established).
    Unprocessed,
}

impl RetryReason {
    /// The label value: `status`, `transport_error`, `unprocessed`.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Status => "status",
            RetryReason::TransportError => "transport_error",
            RetryReason::Unprocessed => "unprocessed",
        }
    }
}

/// How a retry layer's answer ended: its answer counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryOutcome {
    /// `succeeded`.
    Succeeded,
    /// `missing`.
    Missing,
    /// `failed`.
    Failed,
    /// `gave_up`.
    GaveUp,
    /// `budget_exhausted`.
    BudgetExhausted,
    /// `not_retried`.
    NotRetried,
}

impl RetryOutcome {
    /// Every outcome, in the order of [`RetryStats`](crate::retry::RetryStats)' fields.
    pub const ALL: [RetryOutcome; 6] = [
        RetryOutcome::Succeeded,
        RetryOutcome::Missing,
        RetryOutcome::Failed,
        RetryOutcome::GaveUp,
        RetryOutcome::BudgetExhausted,
        RetryOutcome::NotRetried,
    ];

    /// The label value: the stats field's name.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOutcome::Succeeded => "succeeded",
            RetryOutcome::Missing => "missing",
            RetryOutcome::Failed => "failed",
            RetryOutcome::GaveUp => "gave_up",
            RetryOutcome::BudgetExhausted => "budget_exhausted",
            RetryOutcome::NotRetried => "not_retried",
        }
    }
}

/// What a fleet tier did. Each variant matches one counter of `FleetStats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FleetEvent {
    /// An event published (`published`).
    Published,
    /// A publish attempt failed (`publish_failures`).
    PublishFailed,
    /// A forget or clear sent again (`retried`).
    Retried,
    /// Redis refused the credentials (`auth_failures`).
    AuthFailure,
    /// A message received from another replica (`received`).
    Received,
    /// A missing key learned from another replica (`learned`).
    Learned,
    /// A key or cache forgotten because another replica said so (`forgotten`).
    Forgotten,
    /// A learned entry whose TTL was clamped to `max_ttl` (`clamped`).
    Clamped,
    /// An event of this replica not shared (`unshared`).
    Unshared,
    /// A message refused (`rejected`, by reason).
    Rejected(FleetRejection),
    /// An entry read from Redis when warming up (`warmed`).
    Warmed,
    /// A subscription lost and re-established (`reconnects`).
    Reconnected,
    /// The subscription went up (`true`) or down (`false`) (`connected`).
    Connected(bool),
}

/// Why a fleet message was refused: the fields of `FleetRejections`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FleetRejection {
    /// `oversized`.
    Oversized,
    /// `version`.
    Version,
    /// `malformed`.
    Malformed,
    /// `status`.
    Status,
    /// `stale`.
    Stale,
    /// `replayed`.
    Replayed,
    /// `superseded`.
    Superseded,
    /// `unsigned`.
    Unsigned,
    /// `signature`.
    Signature,
}

impl FleetRejection {
    /// Every reason, in the order of `FleetRejections`' fields.
    pub const ALL: [FleetRejection; 9] = [
        FleetRejection::Oversized,
        FleetRejection::Version,
        FleetRejection::Malformed,
        FleetRejection::Status,
        FleetRejection::Stale,
        FleetRejection::Replayed,
        FleetRejection::Superseded,
        FleetRejection::Unsigned,
        FleetRejection::Signature,
    ];

    /// The label value: the field's name.
    pub fn as_str(self) -> &'static str {
        match self {
            FleetRejection::Oversized => "oversized",
            FleetRejection::Version => "version",
            FleetRejection::Malformed => "malformed",
            FleetRejection::Status => "status",
            FleetRejection::Stale => "stale",
            FleetRejection::Replayed => "replayed",
            FleetRejection::Superseded => "superseded",
            FleetRejection::Unsigned => "unsigned",
            FleetRejection::Signature => "signature",
        }
    }
}

/// Shows an observer in a builder's or layer's `Debug` without requiring `Debug` of it.
pub(crate) struct ShowObserver<'a>(pub(crate) &'a Option<SharedObserver>);

impl fmt::Debug for ShowObserver<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}
