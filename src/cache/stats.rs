//! Counters of a negative cache, shared by every clone of its layer.

use std::sync::atomic::Ordering::Relaxed;

use crate::counter::Counter;

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
    /// Missing answers that could not be remembered: the answer said `no-store`, `no-cache`
    /// (or `private` in shared mode), had a `Vary` field, or was stale on arrival; or the
    /// request said `no-store`. Logged at debug level with the reason.
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
    /// Bytes the store holds: its tables and its keys' text.
    pub memory_bytes: u64,
    /// The byte budget: a hard bound on what the entries take, keys included.
    pub max_bytes: u64,
    /// `hits / lookups`, 0 when nothing was looked up.
    pub hit_rate: f64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) inserts: Counter,
    pub(crate) uncacheable: Counter,
    pub(crate) only_if_cached_misses: Counter,
    pub(crate) expirations: Counter,
    pub(crate) invalidations: Counter,
    pub(crate) bypasses: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) wait_timeouts: Counter,
}

impl Counters {
    pub(crate) fn snapshot(&self, len: u64, capacity: u64, evictions: u64) -> CacheStats {
        // `lookups` is derived, so that a snapshot taken while requests run never shows more
        // hits than lookups.
        let hits = self.hits.load(Relaxed);
        let misses = self.misses.load(Relaxed);
        let lookups = hits + misses;
        CacheStats {
            lookups,
            hits,
            misses,
            inserts: self.inserts.load(Relaxed),
            uncacheable: self.uncacheable.load(Relaxed),
            only_if_cached_misses: self.only_if_cached_misses.load(Relaxed),
            evictions,
            expirations: self.expirations.load(Relaxed),
            invalidations: self.invalidations.load(Relaxed),
            bypasses: self.bypasses.load(Relaxed),
            coalesced: self.coalesced.load(Relaxed),
            wait_timeouts: self.wait_timeouts.load(Relaxed),
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
