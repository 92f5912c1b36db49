//! Observers that record the layers' events through the [`metrics`] facade (feature `metrics`).
//!
//! The library records; the application chooses the exporter (`metrics-exporter-prometheus`,
//! an OpenTelemetry bridge, StatsD) by installing a recorder. **This minor of the crate pairs
//! with `metrics` 0.24:** a recorder built against another major of `metrics` is a different
//! facade, and sees none of these metrics (silently) — check `cargo tree -i metrics`.
//!
//! Each observer registers its handles once, when it is made, with the recorder installed
//! *then* (install the recorder first): an event is one atomic operation on a handle it
//! holds — no name, key or label is built, hashed or looked up per request. Labels are
//! bounded: the `name` given to the observer (so two caches in one process are told apart),
//! an outcome, a reason — never a URI, a key or a status code. [`METRICS.md`] has the table
//! of names, types, units and labels; the names are the `pub const`s below, dot-separated as
//! OpenTelemetry's naming guidelines ask (metrics-exporter-prometheus 0.18 shows `.` as `_`:
//! `negative_cache_requests{name="records",outcome="hit"}`; an OpenTelemetry exporter keeps
//! the dots and adds `_total` when it converts to Prometheus).
//!
//! Every counter equals the matching field of the layer's stats snapshot over the same
//! traffic (`tests/metrics.rs` holds it).
//!
//! [`METRICS.md`]: https://docs.rs/crate/tower-negative-cache/latest/source/METRICS.md
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use tower_negative_cache::metrics::{CacheMetrics, RetryMetrics};
//! use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};
//!
//! // The application has installed its recorder (`metrics::set_global_recorder`, or an
//! // exporter's `install`) before this point.
//! let cache = NegativeCacheLayer::builder()
//!     .observer(Arc::new(CacheMetrics::new("records")))
//!     .build()
//!     .unwrap();
//! let retry = StatusAwareRetryLayer::builder()
//!     .observer(Arc::new(RetryMetrics::new("records")))
//!     .build()
//!     .unwrap();
//! # let _ = (cache, retry);
//! ```

use std::fmt;

use ::metrics::{
    Counter, Gauge, Histogram, SharedString, Unit, counter, describe_counter, describe_gauge,
    describe_histogram, gauge, histogram,
};

use crate::observe::{
    CacheEvent, FleetEvent, FleetRejection, Observer, RetryEvent, RetryOutcome, RetryReason,
};

/// The label that tells two layers in one process apart: the name given to the observer.
pub const LABEL_NAME: &str = "name";
/// The label of a cache lookup's or a retried request's outcome.
pub const LABEL_OUTCOME: &str = "outcome";
/// The label of why a retry was sent or a fleet message refused.
pub const LABEL_REASON: &str = "reason";

/// Counter: requests through the cache, by `outcome`: `hit`, `miss`, `bypass` (every request
/// is exactly one). Stats: `hits`, `misses`, `bypasses`.
pub const CACHE_REQUESTS: &str = "negative_cache.requests";
/// Counter: misses that waited for a request in flight for their key (also counted as
/// `miss`). Stats: `coalesced`.
pub const CACHE_COALESCED: &str = "negative_cache.coalesced";
/// Counter: coalesced waits that reached their bound. Stats: `wait_timeouts`.
pub const CACHE_WAIT_TIMEOUTS: &str = "negative_cache.wait_timeouts";
/// Counter: `only-if-cached` requests answered 504. Stats: `only_if_cached_misses`.
pub const CACHE_ONLY_IF_CACHED_MISSES: &str = "negative_cache.only_if_cached_misses";
/// Counter: Missing answers remembered. Stats: `inserts`.
pub const CACHE_INSERTS: &str = "negative_cache.inserts";
/// Counter: Missing answers remembered without their body (also counted in `inserts`): hits
/// answer with the origin's head alone. Stats: `head_only`.
pub const CACHE_HEAD_ONLY: &str = "negative_cache.head_only";
/// Counter: Missing answers that could not be remembered. Stats: `uncacheable`.
pub const CACHE_UNCACHEABLE: &str = "negative_cache.uncacheable";
/// Counter: entries evicted to stay within capacity. Stats: `evictions`.
pub const CACHE_EVICTIONS: &str = "negative_cache.evictions";
/// Counter: entries found expired and dropped. Stats: `expirations`.
pub const CACHE_EXPIRATIONS: &str = "negative_cache.expirations";
/// Counter: entries forgotten before their TTL. Stats: `invalidations`.
pub const CACHE_INVALIDATIONS: &str = "negative_cache.invalidations";
/// Gauge: entries held, after the last change to the store. Stats: `len`.
pub const CACHE_ENTRIES: &str = "negative_cache.entries";
/// Gauge: bytes the store holds, after the last change to it. Stats: `memory_bytes`.
pub const CACHE_MEMORY_USAGE: &str = "negative_cache.memory.usage";

/// Counter: answers returned, by `outcome`: `succeeded`, `missing`, `failed`, `gave_up`,
/// `budget_exhausted`, `not_retried`. Stats: the six answer counters.
pub const RETRY_REQUESTS: &str = "negative_cache.retry.requests";
/// Counter: retries sent, by `reason`: `status`, `transport_error`, `unprocessed`. Stats:
/// `retries` (their sum).
pub const RETRY_RETRIES: &str = "negative_cache.retry.retries";
/// Counter: requests sent once because their body can't be replayed. Stats:
/// `not_replayable`.
pub const RETRY_NOT_REPLAYABLE: &str = "negative_cache.retry.not_replayable";
/// Counter (bytes): bytes of discarded answers read before a retry. Stats: `drained_bytes`.
pub const RETRY_DRAINED: &str = "negative_cache.retry.drained";
/// Counter: errors no rule recognised. Stats: `unrecognised_errors`.
pub const RETRY_UNRECOGNISED_ERRORS: &str = "negative_cache.retry.unrecognised_errors";
/// Counter: retries sent past the deadline. Stats: `sent_past_deadline`.
pub const RETRY_SENT_PAST_DEADLINE: &str = "negative_cache.retry.sent_past_deadline";
/// Counter: unprocessed verdicts set aside because no witness tied them to the request sent
/// (the request was returned, not resent). Stats: `unwitnessed`.
pub const RETRY_UNWITNESSED: &str = "negative_cache.retry.unwitnessed";
/// Histogram (seconds): each wait before a retry (backoff with jitter, or `Retry-After`).
pub const RETRY_BACKOFF: &str = "negative_cache.retry.backoff";
/// Histogram: retries per request, for requests retried at least once — gRPC A96's
/// `grpc.client.call.retries` (buckets [`RETRIES_PER_CALL_BUCKETS`]).
pub const RETRY_CALL_RETRIES: &str = "negative_cache.retry.call.retries";
/// The buckets gRPC A96 gives its retries-per-call histogram; give them to the exporter
/// (e.g. `PrometheusBuilder::set_buckets_for_metric`).
pub const RETRIES_PER_CALL_BUCKETS: [f64; 5] = [1.0, 2.0, 3.0, 4.0, 5.0];

/// Counter: events published. Stats: `published`.
pub const FLEET_PUBLISHED: &str = "negative_cache.fleet.published";
/// Counter: failed publish attempts. Stats: `publish_failures`.
pub const FLEET_PUBLISH_FAILURES: &str = "negative_cache.fleet.publish_failures";
/// Counter: messages received from other replicas. Stats: `received`.
pub const FLEET_RECEIVED: &str = "negative_cache.fleet.received";
/// Counter: what peers' messages changed here, by `outcome`: `learned` (a missing key),
/// `forgotten` (a key or the whole cache), `warmed` (read from Redis at start). Stats:
/// `learned`, `forgotten`, `warmed`.
pub const FLEET_APPLIED: &str = "negative_cache.fleet.applied";
/// Counter: messages refused, by `reason` (the fields of `FleetRejections`). Stats:
/// `rejected`.
pub const FLEET_REJECTED: &str = "negative_cache.fleet.rejected";
/// Gauge: 1 while the subscription is up, else 0. Stats: `connected`.
pub const FLEET_CONNECTED: &str = "negative_cache.fleet.connected";
/// Counter: subscriptions lost and re-established. Stats: `reconnects`.
pub const FLEET_RECONNECTS: &str = "negative_cache.fleet.reconnects";
/// Counter: credentials refused by Redis. Stats: `auth_failures`.
pub const FLEET_AUTH_FAILURES: &str = "negative_cache.fleet.auth_failures";

/// The cache's lookup outcomes, in the order of [`CacheMetrics`]' handles.
const LOOKUPS: [&str; 3] = ["hit", "miss", "bypass"];

/// Records a negative cache's events (give it to
/// [`Builder::observer`](crate::cache::Builder::observer)).
pub struct CacheMetrics {
    requests: [Counter; 3],
    coalesced: Counter,
    wait_timeouts: Counter,
    only_if_cached_misses: Counter,
    inserts: Counter,
    head_only: Counter,
    uncacheable: Counter,
    evictions: Counter,
    expirations: Counter,
    invalidations: Counter,
    entries: Gauge,
    memory: Gauge,
}

impl CacheMetrics {
    /// Registers the cache's metrics, labelled `name = name`, with the recorder installed now,
    /// and describes them (units, help text).
    pub fn new(name: impl Into<SharedString>) -> Self {
        let name: SharedString = name.into();
        describe_cache();
        let c = |metric: &'static str| counter!(metric, LABEL_NAME => name.clone());
        CacheMetrics {
            requests: LOOKUPS.map(|outcome| {
                counter!(CACHE_REQUESTS, LABEL_NAME => name.clone(), LABEL_OUTCOME => outcome)
            }),
            coalesced: c(CACHE_COALESCED),
            wait_timeouts: c(CACHE_WAIT_TIMEOUTS),
            only_if_cached_misses: c(CACHE_ONLY_IF_CACHED_MISSES),
            inserts: c(CACHE_INSERTS),
            head_only: c(CACHE_HEAD_ONLY),
            uncacheable: c(CACHE_UNCACHEABLE),
            evictions: c(CACHE_EVICTIONS),
            expirations: c(CACHE_EXPIRATIONS),
            invalidations: c(CACHE_INVALIDATIONS),
            entries: gauge!(CACHE_ENTRIES, LABEL_NAME => name.clone()),
            memory: gauge!(CACHE_MEMORY_USAGE, LABEL_NAME => name.clone()),
        }
    }
}

fn describe_cache() {
    let requests = "Requests through the negative cache, by outcome (hit, miss, bypass)";
    describe_counter!(CACHE_REQUESTS, Unit::Count, requests);
    let coalesced = "Misses that waited for a request in flight for their key";
    describe_counter!(CACHE_COALESCED, Unit::Count, coalesced);
    let timeouts = "Coalesced waits that reached their bound";
    describe_counter!(CACHE_WAIT_TIMEOUTS, Unit::Count, timeouts);
    let oic = "only-if-cached requests answered 504";
    describe_counter!(CACHE_ONLY_IF_CACHED_MISSES, Unit::Count, oic);
    describe_counter!(CACHE_INSERTS, Unit::Count, "Missing answers remembered");
    let head_only = "Missing answers remembered without their body";
    describe_counter!(CACHE_HEAD_ONLY, Unit::Count, head_only);
    let uncacheable = "Missing answers that could not be remembered";
    describe_counter!(CACHE_UNCACHEABLE, Unit::Count, uncacheable);
    let evictions = "Entries evicted to stay within capacity";
    describe_counter!(CACHE_EVICTIONS, Unit::Count, evictions);
    let expirations = "Entries found expired and dropped";
    describe_counter!(CACHE_EXPIRATIONS, Unit::Count, expirations);
    let invalidations = "Entries forgotten before their TTL";
    describe_counter!(CACHE_INVALIDATIONS, Unit::Count, invalidations);
    describe_gauge!(
        CACHE_ENTRIES,
        Unit::Count,
        "Entries held by the negative cache"
    );
    let memory = "Bytes held by the negative cache's store";
    describe_gauge!(CACHE_MEMORY_USAGE, Unit::Bytes, memory);
}

impl Observer for CacheMetrics {
    fn cache(&self, event: CacheEvent) {
        match event {
            CacheEvent::Hit => self.requests[0].increment(1),
            CacheEvent::Miss => self.requests[1].increment(1),
            CacheEvent::Bypass => self.requests[2].increment(1),
            CacheEvent::Coalesced => self.coalesced.increment(1),
            CacheEvent::WaitTimeout => self.wait_timeouts.increment(1),
            CacheEvent::OnlyIfCachedMiss => self.only_if_cached_misses.increment(1),
            CacheEvent::Inserted => self.inserts.increment(1),
            CacheEvent::HeadOnly => self.head_only.increment(1),
            CacheEvent::Uncacheable => self.uncacheable.increment(1),
            CacheEvent::Evicted { count } => self.evictions.increment(count),
            CacheEvent::Expired => self.expirations.increment(1),
            CacheEvent::Invalidated { count } => self.invalidations.increment(count),
            CacheEvent::Size {
                entries,
                memory_bytes,
            } => {
                self.entries.set(entries as f64);
                self.memory.set(memory_bytes as f64);
            }
        }
    }
}

impl fmt::Debug for CacheMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheMetrics").finish_non_exhaustive()
    }
}

/// The retry reasons, in the order of [`RetryMetrics`]' handles.
const REASONS: [RetryReason; 3] = [
    RetryReason::Status,
    RetryReason::TransportError,
    RetryReason::Unprocessed,
];

/// Records a retry layer's events (give it to
/// [`Builder::observer`](crate::retry::Builder::observer)).
pub struct RetryMetrics {
    requests: [Counter; 6],
    retries: [Counter; 3],
    not_replayable: Counter,
    drained: Counter,
    unrecognised: Counter,
    past_deadline: Counter,
    unwitnessed: Counter,
    backoff: Histogram,
    call_retries: Histogram,
}

impl RetryMetrics {
    /// Registers the retry layer's metrics, labelled `name = name`, with the recorder
    /// installed now, and describes them (units, help text).
    pub fn new(name: impl Into<SharedString>) -> Self {
        let name: SharedString = name.into();
        describe_retry();
        let c = |metric: &'static str| counter!(metric, LABEL_NAME => name.clone());
        RetryMetrics {
            requests: RetryOutcome::ALL.map(|o| {
                counter!(RETRY_REQUESTS, LABEL_NAME => name.clone(), LABEL_OUTCOME => o.as_str())
            }),
            retries: REASONS.map(|r| {
                counter!(RETRY_RETRIES, LABEL_NAME => name.clone(), LABEL_REASON => r.as_str())
            }),
            not_replayable: c(RETRY_NOT_REPLAYABLE),
            drained: c(RETRY_DRAINED),
            unrecognised: c(RETRY_UNRECOGNISED_ERRORS),
            past_deadline: c(RETRY_SENT_PAST_DEADLINE),
            unwitnessed: c(RETRY_UNWITNESSED),
            backoff: histogram!(RETRY_BACKOFF, LABEL_NAME => name.clone()),
            call_retries: histogram!(RETRY_CALL_RETRIES, LABEL_NAME => name.clone()),
        }
    }
}

fn describe_retry() {
    let requests = "Answers the retry layer returned, by final outcome";
    describe_counter!(RETRY_REQUESTS, Unit::Count, requests);
    let retries = "Retries sent, by reason (status, transport_error, unprocessed)";
    describe_counter!(RETRY_RETRIES, Unit::Count, retries);
    let once = "Requests sent once because their body can't be replayed";
    describe_counter!(RETRY_NOT_REPLAYABLE, Unit::Count, once);
    let drained = "Bytes of discarded answers read before a retry";
    describe_counter!(RETRY_DRAINED, Unit::Bytes, drained);
    let unrecognised = "Errors no rule recognised, returned as fatal";
    describe_counter!(RETRY_UNRECOGNISED_ERRORS, Unit::Count, unrecognised);
    let past = "Retries sent past the deadline";
    describe_counter!(RETRY_SENT_PAST_DEADLINE, Unit::Count, past);
    let unwitnessed = "Unprocessed verdicts not acted on for want of a witness's proof";
    describe_counter!(RETRY_UNWITNESSED, Unit::Count, unwitnessed);
    let backoff = "Each wait before a retry (backoff with jitter, or Retry-After)";
    describe_histogram!(RETRY_BACKOFF, Unit::Seconds, backoff);
    let per_call = "Retries per request retried at least once (gRPC A96 shape)";
    describe_histogram!(RETRY_CALL_RETRIES, Unit::Count, per_call);
}

impl Observer for RetryMetrics {
    fn retry(&self, event: RetryEvent) {
        match event {
            RetryEvent::Answered(outcome) => {
                let i = RetryOutcome::ALL.iter().position(|o| *o == outcome);
                if let Some(i) = i {
                    self.requests[i].increment(1);
                }
            }
            RetryEvent::Resent { reason, .. } => {
                if let Some(i) = REASONS.iter().position(|r| *r == reason) {
                    self.retries[i].increment(1);
                }
            }
            RetryEvent::Backoff { wait } => self.backoff.record(wait.as_secs_f64()),
            RetryEvent::CallEnded { retries } => self.call_retries.record(f64::from(retries)),
            RetryEvent::NotReplayable => self.not_replayable.increment(1),
            RetryEvent::Drained { bytes } => self.drained.increment(bytes),
            RetryEvent::UnrecognisedError => self.unrecognised.increment(1),
            RetryEvent::SentPastDeadline => self.past_deadline.increment(1),
            RetryEvent::Unwitnessed => self.unwitnessed.increment(1),
            RetryEvent::Request => {}
        }
    }
}

impl fmt::Debug for RetryMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryMetrics").finish_non_exhaustive()
    }
}

/// Records a fleet tier's events (give it to `FleetBuilder::observer`, feature `redis`).
pub struct FleetMetrics {
    published: Counter,
    publish_failures: Counter,
    received: Counter,
    /// learned, forgotten, warmed.
    applied: [Counter; 3],
    rejected: [Counter; 9],
    connected: Gauge,
    reconnects: Counter,
    auth_failures: Counter,
}

impl FleetMetrics {
    /// Registers the tier's metrics, labelled `name = name`, with the recorder installed now,
    /// and describes them (units, help text).
    pub fn new(name: impl Into<SharedString>) -> Self {
        let name: SharedString = name.into();
        describe_fleet();
        let c = |metric: &'static str| counter!(metric, LABEL_NAME => name.clone());
        FleetMetrics {
            published: c(FLEET_PUBLISHED),
            publish_failures: c(FLEET_PUBLISH_FAILURES),
            received: c(FLEET_RECEIVED),
            applied: ["learned", "forgotten", "warmed"].map(|o| {
                counter!(FLEET_APPLIED, LABEL_NAME => name.clone(), LABEL_OUTCOME => o)
            }),
            rejected: FleetRejection::ALL.map(|r| {
                counter!(FLEET_REJECTED, LABEL_NAME => name.clone(), LABEL_REASON => r.as_str())
            }),
            connected: gauge!(FLEET_CONNECTED, LABEL_NAME => name.clone()),
            reconnects: c(FLEET_RECONNECTS),
            auth_failures: c(FLEET_AUTH_FAILURES),
        }
    }
}

fn describe_fleet() {
    describe_counter!(FLEET_PUBLISHED, Unit::Count, "Fleet events published");
    let failures = "Fleet publish attempts that failed";
    describe_counter!(FLEET_PUBLISH_FAILURES, Unit::Count, failures);
    let received = "Fleet messages received from other replicas";
    describe_counter!(FLEET_RECEIVED, Unit::Count, received);
    let applied = "What peers' messages changed here (learned, forgotten, warmed)";
    describe_counter!(FLEET_APPLIED, Unit::Count, applied);
    let rejected = "Fleet messages refused, by reason";
    describe_counter!(FLEET_REJECTED, Unit::Count, rejected);
    let connected = "1 while the fleet subscription is up";
    describe_gauge!(FLEET_CONNECTED, Unit::Count, connected);
    let reconnects = "Fleet subscriptions lost and re-established";
    describe_counter!(FLEET_RECONNECTS, Unit::Count, reconnects);
    let auth = "Fleet connections or commands Redis refused for credentials";
    describe_counter!(FLEET_AUTH_FAILURES, Unit::Count, auth);
}

impl Observer for FleetMetrics {
    fn fleet(&self, event: FleetEvent) {
        match event {
            FleetEvent::Published => self.published.increment(1),
            FleetEvent::PublishFailed => self.publish_failures.increment(1),
            FleetEvent::Received => self.received.increment(1),
            FleetEvent::Learned => self.applied[0].increment(1),
            FleetEvent::Forgotten => self.applied[1].increment(1),
            FleetEvent::Warmed => self.applied[2].increment(1),
            FleetEvent::Rejected(reason) => {
                if let Some(i) = FleetRejection::ALL.iter().position(|r| *r == reason) {
                    self.rejected[i].increment(1);
                }
            }
            FleetEvent::Connected(up) => self.connected.set(if up { 1.0 } else { 0.0 }),
            FleetEvent::Reconnected => self.reconnects.increment(1),
            FleetEvent::AuthFailure => self.auth_failures.increment(1),
            FleetEvent::Retried | FleetEvent::Clamped | FleetEvent::Unshared => {}
        }
    }
}

impl fmt::Debug for FleetMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetMetrics").finish_non_exhaustive()
    }
}
