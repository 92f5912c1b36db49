//! A handle on a negative cache's shared store.

use std::sync::Arc;

use http::Uri;

use super::key::Key;
use super::layer::State;
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

    /// Bytes held by the store's tables (entries and index), excluding the heap of the keys'
    /// text: what a capacity costs, whatever is in it.
    pub fn memory_bytes(&self) -> usize {
        self.state.store.memory_used()
    }

    /// Forgets the entry a request to `uri` would use (through the key function, if any),
    /// under every credential; whether there was one.
    pub fn invalidate_uri(&self, uri: &Uri) -> bool {
        match self.state.key_for(uri, 0).and_then(|l| l.to_key()) {
            Some(k) => self.state.forget(&k),
            None => false,
        }
    }

    /// Forgets the entry stored under `key`, as [`invalidate_if`](Self::invalidate_if) sees
    /// keys: the normalised target (`http://host/path?query`) or the key function's id.
    pub fn invalidate(&self, key: &str) -> bool {
        let parsed = match &self.state.key_fn {
            Some(_) => Key::id(key.to_owned(), 0),
            None => key
                .parse::<Uri>()
                .ok()
                .and_then(|u| self.state.key_for(&u, 0)?.to_key()),
        };
        parsed.is_some_and(|k| self.state.forget(&k))
    }

    /// Forgets every entry whose key `forget` accepts; how many. Visits every entry.
    pub fn invalidate_if(&self, forget: impl Fn(&str) -> bool) -> u64 {
        let n = self.state.store.remove_where(|k| forget(k.as_str()));
        self.state
            .stats
            .invalidations
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        n
    }

    /// Forgets everything; how many entries there were.
    pub fn clear(&self) -> u64 {
        let n = self.state.store.clear();
        self.state
            .stats
            .invalidations
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        n
    }
}
