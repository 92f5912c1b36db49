//! The state a layer, its clones, their services and the handle share, and what it does for
//! all of them: compute keys, remember, forget, report.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Response, StatusCode, Uri};
use tokio::time::Instant;

use super::coalesce::Flights;
use super::key::{Key, Lookup, target_key, text_key, uri_key};
use super::layer::{Credentials, KeyFn};
use super::peers::{PeerEvent, Peers};
use super::reference::Target;
use super::stats::{CacheStats, Counters};
use super::store::{Store, Stored};
use super::ttl::TtlConfig;
use crate::RetryInfo;
use crate::classify::{Classify, Outcome, response_outcome};

/// State shared by a layer, its clones, their services and the handle.
pub(crate) struct State {
    pub(crate) store: Store,
    pub(crate) stats: Counters,
    pub(crate) evictions: Arc<AtomicU64>,
    pub(crate) ttl: TtlConfig,
    pub(crate) key_fn: Option<KeyFn>,
    pub(crate) credentials: Credentials,
    /// The request headers that carry credentials.
    pub(crate) credential_headers: Box<[HeaderName]>,
    pub(crate) secret: RandomState,
    /// No classifier was given to the cache's builder: follow the retry layer's verdict.
    pub(crate) follow_retry: bool,
    pub(crate) coalesce: Option<Duration>,
    pub(crate) flights: Arc<Flights>,
    pub(crate) peers: Peers,
}

impl State {
    /// The key of a request target, as the layer computes it: by the `Host` the request
    /// carries, if it has one.
    pub(crate) fn key_for<'a>(
        &self,
        uri: &'a Uri,
        host: Option<&'a HeaderValue>,
        cred: u64,
    ) -> Option<Lookup<'a>> {
        match &self.key_fn {
            Some(f) => Key::id(f(uri)?, cred).map(Lookup::Owned),
            None => uri_key(uri, host, cred),
        }
    }

    /// The key of a target given as parts (a resolved `Location`).
    pub(crate) fn key_for_target(&self, t: &Target) -> Option<Key> {
        match &self.key_fn {
            Some(f) => {
                let uri: Uri = if t.scheme.is_empty() {
                    t.pq.parse().ok()?
                } else {
                    format!("{}://{}{}", t.scheme, t.authority, t.pq)
                        .parse()
                        .ok()?
                };
                Key::id(f(&uri)?, 0)
            }
            None => target_key(&t.scheme, &t.authority, &t.pq, 0)?.to_key(),
        }
    }

    /// The stored key for `text`, as [`NegativeCacheHandle::invalidate`] takes it (and
    /// `invalidate_if` shows it).
    pub(crate) fn key_from_text(&self, text: &str) -> Option<Key> {
        match &self.key_fn {
            Some(_) => Key::id(text.to_owned(), 0),
            None => text_key(text),
        }
    }

    /// What an answer means to the cache: its own classifier's verdict when one was given
    /// to the builder, else the retry layer's (its [`RetryInfo`]) when there is one, else the
    /// default classifier's. One place, so a classifier given once is never half-applied.
    pub(crate) fn outcome<C: Classify, B>(&self, classifier: &C, res: &Response<B>) -> Outcome {
        if self.follow_retry {
            if let Some(info) = res.extensions().get::<RetryInfo>() {
                return info.outcome;
            }
        }
        response_outcome(classifier, res.status(), res.headers())
    }

    /// Forgets `key` under every credential it was stored with, and tells the peers; whether
    /// anything was there.
    pub(crate) fn forget(&self, key: &Key) -> bool {
        self.peers.send(|| PeerEvent::Forget {
            key: key.as_str().into(),
        });
        self.forget_here(key)
    }

    /// Forgets `key` in this cache only.
    pub(crate) fn forget_here(&self, key: &Key) -> bool {
        self.store.versions.bump(key);
        let n = match self.credentials {
            Credentials::Bypass => u64::from(self.store.remove(key)),
            Credentials::Fingerprint => self.store.remove_where(|k| k.same_target(key)),
        };
        if n > 0 {
            self.stats.invalidations.fetch_add(n, Relaxed);
            tracing::debug!(key = key.as_str(), "negative cache: invalidated");
        }
        n > 0
    }

    /// Forgets exactly `key` (under its own credential only): its target answered present.
    ///
    /// Peers are told only when this cache had the key: a 2xx for every GET would otherwise
    /// be published at the request rate.
    pub(crate) fn forget_exact(&self, key: &Key) {
        self.store.versions.bump(key);
        if self.store.remove(key) {
            self.stats.invalidations.fetch_add(1, Relaxed);
            tracing::debug!(
                key = key.as_str(),
                "negative cache: forgotten (answered present)"
            );
            if key.cred() == 0 {
                self.peers.send(|| PeerEvent::Forget {
                    key: key.as_str().into(),
                });
            }
        }
    }

    /// Remembers a Missing answer, and tells the peers (only for entries without
    /// credentials: a credential's fingerprint means nothing to another replica).
    pub(crate) fn remember(&self, key: Key, stored: Stored) {
        let (status, ttl) = (stored.status, stored.ttl);
        tracing::debug!(key = key.as_str(), %status, ?ttl, "negative cache: remembered");
        if key.cred() == 0 {
            self.peers.send(|| PeerEvent::Missing {
                key: key.as_str().into(),
                status,
                ttl,
            });
        }
        if self.store.insert(key, stored, Instant::now()) {
            self.stats.inserts.fetch_add(1, Relaxed);
        } else {
            self.stats.uncacheable.fetch_add(1, Relaxed);
        }
    }

    /// Remembers what a peer learned, clamped to this cache's `max_ttl`; whether the key
    /// could be read.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn learn(&self, text: &str, status: StatusCode, ttl: Duration) -> bool {
        let Some(key) = self.key_from_text(text) else {
            return false;
        };
        let stored = Stored {
            status,
            ttl: ttl.min(self.ttl.max),
            age: Duration::ZERO,
        };
        self.store.insert(key, stored, Instant::now())
    }

    /// Forgets everything, and tells the peers; how many entries there were.
    pub(crate) fn clear(&self, tell_peers: bool) -> u64 {
        if tell_peers {
            self.peers.send(|| PeerEvent::Clear);
        }
        self.store.versions.bump_all();
        let n = self.store.clear();
        self.stats.invalidations.fetch_add(n, Relaxed);
        n
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let evictions = self.evictions.load(Relaxed);
        let mut s = self
            .stats
            .snapshot(self.store.len(), self.store.capacity(), evictions);
        s.memory_bytes = self.store.memory_used();
        s.max_bytes = self.store.max_bytes();
        s
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NegativeCache")
            .field("len", &self.store.len())
            .field("capacity", &self.store.capacity())
            .field("ttl", &self.ttl)
            .field("key_fn", &self.key_fn.is_some())
            .field("credentials", &self.credentials)
            .field("coalesce", &self.coalesce)
            .finish_non_exhaustive()
    }
}
