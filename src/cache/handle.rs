//! A handle on a negative cache's shared store.

use std::sync::Arc;

use http::Uri;

use crate::counter::Count;

use super::NegativeCacheHit;
use super::peers::PeerEvent;
use super::state::State;
use super::stats::CacheStats;

/// Reaches the store shared by a [`NegativeCacheLayer`](super::NegativeCacheLayer), its clones
/// and every service they made: stats, invalidation, clearing. Cheap to clone.
///
/// ```
/// use tower_negative_cache::NegativeCacheLayer;
///
/// let layer = NegativeCacheLayer::new();
/// let handle = layer.handle();
/// // A record was created out of band: forget that it was missing.
/// handle.invalidate_uri(&"http://records.internal/records/42".parse().unwrap());
/// assert_eq!(handle.stats().len, 0);
/// ```
#[derive(Clone, Debug)]
pub struct NegativeCacheHandle {
    state: Arc<State>,
}

impl NegativeCacheHandle {
    pub(crate) fn new(state: Arc<State>) -> Self {
        NegativeCacheHandle { state }
    }

    /// A snapshot of the counters and size.
    pub fn stats(&self) -> CacheStats {
        self.state.stats()
    }

    /// Bytes the store holds now: its tables (entries and index, as quick_cache counts them),
    /// the text of its keys and its answers' header fields and bodies. At most `max_bytes` plus the tables' spare room; also in
    /// [`CacheStats::memory_bytes`].
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.state.store.memory_used()).unwrap_or(usize::MAX)
    }

    /// What the cache would answer a GET for `uri` without credentials, outside every
    /// [partition](super::NegativeCacheLayer::partition): the remembered entry's status, age
    /// and remaining freshness, and whether its body was kept (a GET that accepts its content
    /// coding gets it), or `None`. Counts nothing and changes nothing.
    pub fn peek(&self, uri: &Uri) -> Option<NegativeCacheHit> {
        let lookup = self.state.key_for(uri, None, 0)?;
        let fresh = self
            .state
            .store
            .peek(&lookup, tokio::time::Instant::now())
            // A HEAD's answer does not answer a GET (RFC 9111 §4).
            .filter(|fresh| fresh.serves(false))?;
        Some(NegativeCacheHit {
            status: fresh.status,
            age: fresh.age,
            remaining: fresh.remaining,
            body_kept: fresh.answer.as_ref().is_none_or(|a| a.kept()),
            ttl: fresh.ttl,
            ttl_source: fresh.source,
        })
    }

    /// Forgets the entry a request to `uri` would use (through the key function, if any),
    /// under every credential and in every partition; whether there was one.
    pub fn invalidate_uri(&self, uri: &Uri) -> bool {
        match self.state.key_for(uri, None, 0).and_then(|l| l.to_key()) {
            Some(k) => self.state.forget(&k),
            None => false,
        }
    }

    /// Forgets the entry stored under `key`, as [`invalidate_if`](Self::invalidate_if) sees
    /// keys: the normalised target (`http://host/path?query`) or the key function's id.
    pub fn invalidate(&self, key: &str) -> bool {
        let key = self.state.key_from_text(key);
        key.is_some_and(|k| self.state.forget(&k))
    }

    /// Forgets every entry whose key `forget` accepts; how many. Visits every entry.
    ///
    /// With a fleet tier, peers are told to forget the keys this cache held; a peer's entry for
    /// a matching key this cache did not hold stays (a closure cannot be sent): to reach every
    /// replica, call this on each, or [`clear`](Self::clear). A peer's 404 from a request that
    /// left before this call is not applied after it, matching or not (as after a clear).
    ///
    /// `forget` runs under the store's locks: it must not call back into this cache (through
    /// this handle or a request), or it deadlocks.
    pub fn invalidate_if(&self, forget: impl Fn(&str) -> bool) -> u64 {
        let st = &*self.state;
        st.store.versions.bump_all();
        // Before the removal, as in `State::forget_here`; every key, as the versions above:
        // which keys a peer's 404 could match is known only to `forget`.
        st.peers.recent.record_all(tokio::time::Instant::now());
        // Only a tier of peers needs the keys' names.
        let tell = st.peers.attached();
        let forgotten = std::sync::Mutex::new(Vec::new());
        let n = st.store.remove_where(|k| {
            let f = forget(k.as_str());
            if f && tell {
                let mut list = forgotten.lock().unwrap_or_else(|p| p.into_inner());
                list.push(Box::<str>::from(k.as_str()));
            }
            f
        });
        for key in forgotten.into_inner().unwrap_or_else(|p| p.into_inner()) {
            st.peers.send(|| PeerEvent::Forget { key });
        }
        st.stats.invalidations.add(n);
        st.tell_size();
        n
    }

    /// Forgets everything; how many entries there were.
    pub fn clear(&self) -> u64 {
        self.state.clear(true)
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn state(&self) -> &Arc<State> {
        &self.state
    }
}
