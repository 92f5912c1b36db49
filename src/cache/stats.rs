//! Counters of a negative cache, shared by every clone of its layer.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::counter::Counter;
use crate::observe::{CacheEvent, SharedObserver};

/// A snapshot of a negative cache's counters and size.
///
/// `lookups == hits + misses`; requests that can't use the cache (other methods, credentials,
/// bypass) are counted as `bypasses`, not lookups.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct CacheStats {
    /// GET and HEAD requests looked up in the cache.
    pub lookups: u64,
    /// Lookups answered from the cache, without an upstream call.
    pub hits: u64,
    /// Lookups that went upstream, or waited on a request already in flight for their key
    /// (coalescing; counted here even when the store answers them once it lands), or were
    /// answered 504 for `only-if-cached`.
    pub misses: u64,
    /// Missing answers remembered.
    pub inserts: u64,
    /// Missing answers remembered head-only (also counted in `inserts`): their body was over
    /// the body limit, or dropped or failed before its end, or the answer was to a HEAD, or the
    /// entry with its body would not fit the store's byte budget. Their repeats are answered
    /// without a body (see [`NegativeCacheHit::body_kept`](super::NegativeCacheHit)).
    pub head_only: u64,
    /// Missing answers that could not be remembered: the answer said `no-store`, `no-cache`
    /// (or `private` in shared mode), had a `Vary` field, or was stale on arrival or by the
    /// end of its body; or the request said `no-store`; or an answer for the same key that
    /// arrived after it was stored while its body was read (RFC 9111 §4: the most recent
    /// answer is used). Logged at debug level with the reason.
    pub uncacheable: u64,
    /// Requests with `only-if-cached` that the cache could not answer (nothing fresh stored,
    /// or a request it can't serve: credentials, a refresh) and answered 504 without an
    /// upstream call (RFC 9111 §5.2.1.7).
    pub only_if_cached_misses: u64,
    /// Entries evicted to stay within capacity.
    pub evictions: u64,
    /// Entries found expired and dropped.
    pub expirations: u64,
    /// Entries forgotten before their TTL: a successful write, a read answered 2xx (or with a
    /// Missing answer that may not be stored), a handle call, another replica.
    pub invalidations: u64,
    /// Requests that could not use the cache: other methods, credentials, bypass requests.
    pub bypasses: u64,
    /// Misses that waited for a request in flight for the same key (coalescing).
    pub coalesced: u64,
    /// Waits that reached their bound and went upstream themselves.
    pub wait_timeouts: u64,
    /// Entries now in the cache (expired ones included until they are read).
    pub len: u64,
    /// The capacity: a hard bound on `len`.
    pub capacity: u64,
    /// Bytes the store holds: its tables, its keys' text and its answers' fields and bodies.
    pub memory_bytes: u64,
    /// The byte budget: a hard bound on what the entries take, keys included.
    pub max_bytes: u64,
    /// `hits / lookups`, 0 when nothing was looked up.
    pub hit_rate: f64,
}

#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) inserts: Counter,
    pub(crate) head_only: Counter,
    pub(crate) uncacheable: Counter,
    pub(crate) only_if_cached_misses: Counter,
    pub(crate) expirations: Counter,
    pub(crate) invalidations: Counter,
    pub(crate) bypasses: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) wait_timeouts: Counter,
    /// The builder's observer, for the events no counter here bumps (evictions, size).
    pub(crate) observer: Option<SharedObserver>,
    /// Evictions already told to the observer (see [`Counters::sync_evictions`]).
    evictions_told: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new(None)
    }
}

impl Counters {
    /// Counters at 0, each telling `observer` (if any) its event.
    pub(crate) fn new(observer: Option<SharedObserver>) -> Self {
        let o = &observer;
        Counters {
            hits: Counter::new(o, |o, _| o.cache(CacheEvent::Hit)),
            misses: Counter::new(o, |o, _| o.cache(CacheEvent::Miss)),
            inserts: Counter::new(o, |o, _| o.cache(CacheEvent::Inserted)),
            head_only: Counter::new(o, |o, _| o.cache(CacheEvent::HeadOnly)),
            uncacheable: Counter::new(o, |o, _| o.cache(CacheEvent::Uncacheable)),
            only_if_cached_misses: Counter::new(o, |o, _| o.cache(CacheEvent::OnlyIfCachedMiss)),
            expirations: Counter::new(o, |o, _| o.cache(CacheEvent::Expired)),
            invalidations: Counter::new(o, |o, count| o.cache(CacheEvent::Invalidated { count })),
            bypasses: Counter::new(o, |o, _| o.cache(CacheEvent::Bypass)),
            coalesced: Counter::new(o, |o, _| o.cache(CacheEvent::Coalesced)),
            wait_timeouts: Counter::new(o, |o, _| o.cache(CacheEvent::WaitTimeout)),
            observer,
            evictions_told: AtomicU64::new(0),
        }
    }

    /// Tells the observer of the evictions counted since it was last told (the store counts
    /// them inside `quick_cache`'s insert, where the observer is out of reach). Each eviction
    /// is told once, whatever the interleaving: the told mark only rises.
    pub(crate) fn sync_evictions(&self, evictions: &AtomicU64) {
        let Some(observer) = &self.observer else {
            return;
        };
        let now = evictions.load(Relaxed);
        let told = self.evictions_told.fetch_max(now, Relaxed);
        if now > told {
            observer.cache(CacheEvent::Evicted { count: now - told });
        }
    }

    pub(crate) fn snapshot(&self, len: u64, capacity: u64, evictions: u64) -> CacheStats {
        // `lookups` is derived, so that a snapshot taken while requests run never shows more
        // hits than lookups.
        let hits = self.hits.get();
        let misses = self.misses.get();
        let lookups = hits + misses;
        CacheStats {
            lookups,
            hits,
            misses,
            inserts: self.inserts.get(),
            head_only: self.head_only.get(),
            uncacheable: self.uncacheable.get(),
            only_if_cached_misses: self.only_if_cached_misses.get(),
            evictions,
            expirations: self.expirations.get(),
            invalidations: self.invalidations.get(),
            bypasses: self.bypasses.get(),
            coalesced: self.coalesced.get(),
            wait_timeouts: self.wait_timeouts.get(),
            len,
            capacity,
            memory_bytes: 0,
            max_bytes: 0,
            hit_rate: if lookups == 0 {
                0.0
            } else {
                hits as f64 / lookups as f64
            },
        }
    }
}
