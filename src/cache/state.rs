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
use super::key::{Credentials, Key, KeyFn, Lookup, target_key, text_key, uri_key};
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
    ///
    /// When following, the verdict is noted per status for a fleet tier, which has no
    /// classifier of the retry layer to ask what a peer's status means here.
    pub(crate) fn outcome<C: Classify, B>(&self, classifier: &C, res: &Response<B>) -> Outcome {
        if !self.follow_retry {
            return response_outcome(classifier, res.status(), res.headers());
        }
        let outcome = match RetryInfo::of(res) {
            Some(info) => info.outcome,
            None => response_outcome(classifier, res.status(), res.headers()),
        };
        self.peers.verdicts.note(res.status(), outcome.is_missing());
        outcome
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
        // Before the removal: a peer's entry checked in between is refused, one stored
        // before is removed.
        self.peers.recent.record(key.target(), Instant::now());
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

    /// `key` answered present (a 2xx landed for a read): a peer's 404 from a request that
    /// left before now must not be applied. With a fleet tier, a 404 stored before now (a
    /// peer's, learned while this read was out) is stale too (invariant 7): the entry of this
    /// exact key is removed (no scan, no peer message). Without a tier this records nothing and
    /// looks nothing up, so a cache alone pays one atomic load.
    pub(crate) fn note_changed(&self, key: &Key) {
        if self.peers.recent.record(key.target(), Instant::now()) && self.store.remove(key) {
            self.stats.invalidations.fetch_add(1, Relaxed);
        }
    }

    /// Remembers a Missing answer to a request that left at `started`, and tells the peers
    /// (only for entries without credentials: a credential's fingerprint means nothing to
    /// another replica).
    pub(crate) fn remember(&self, key: Key, stored: Stored, started: Instant) {
        let (status, ttl) = (stored.status, stored.ttl);
        tracing::debug!(key = key.as_str(), %status, ?ttl, "negative cache: remembered");
        let now = Instant::now();
        let text =
            (key.cred() == 0 && self.peers.attached()).then(|| Box::<str>::from(key.as_str()));
        if !self.store.insert(key, stored, now) {
            self.stats.uncacheable.fetch_add(1, Relaxed);
            return;
        }
        self.stats.inserts.fetch_add(1, Relaxed);
        if let Some(key) = text {
            self.peers.send(|| PeerEvent::Missing {
                key,
                status,
                ttl,
                started,
                at: now,
            });
        }
    }

    /// Remembers what a peer learned from a request that left at `started` (at the latest),
    /// for `ttl` capped at this cache's `max_ttl` — unless the key changed here since. The
    /// caller has checked the status.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn learn(
        &self,
        text: &str,
        status: StatusCode,
        ttl: Duration,
        started: Instant,
    ) -> Learned {
        let Some(key) = self.key_from_text(text) else {
            return Learned::Unreadable;
        };
        let now = Instant::now();
        // Checked and stored under the key's tombstone lock: a local change comes before (and
        // is seen) or after (and forgets what is stored here).
        let mut guard = self.peers.recent.lock(key.target());
        if guard.changed_since(started, now) {
            return Learned::Superseded;
        }
        // Never raised: what is left of a peer's entry must not be extended.
        let clamped = ttl > self.ttl.max;
        let stored = Stored {
            status,
            ttl: ttl.min(self.ttl.max),
            age: Duration::ZERO,
        };
        let kept = self.store.insert(key, stored, now);
        drop(guard);
        if kept {
            Learned::Stored { clamped }
        } else {
            Learned::TooLarge
        }
    }

    /// Forgets everything, and tells the peers; how many entries there were.
    pub(crate) fn clear(&self, tell_peers: bool) -> u64 {
        if tell_peers {
            self.peers.send(|| PeerEvent::Clear);
        }
        self.peers.recent.record_all(Instant::now());
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

/// What became of a peer's entry.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Learned {
    /// Stored; `clamped` if its TTL was longer than `max_ttl`.
    Stored { clamped: bool },
    /// The key changed here after the peer's request left: the peer's answer is older.
    Superseded,
    /// Not a key this cache can read.
    Unreadable,
    /// Too large for the store's byte budget (see `Builder::max_bytes`).
    TooLarge,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NegativeCacheLayer;

    /// Over many real interleavings: a peer's 404 from a request that left before a local
    /// forget never survives the forget, whichever of the two runs first.
    #[test]
    fn a_learned_entry_never_survives_a_later_forget() {
        use std::sync::Barrier;
        const ROUNDS: usize = 20_000;
        let layer = NegativeCacheLayer::new();
        let state = layer.state.clone();
        state.peers.recent.turn_on();
        // A key per round, so one round's tombstone does not decide the next.
        let texts: Arc<Vec<String>> = Arc::new(
            (0..ROUNDS)
                .map(|i| format!("http://h.test/r/{i}"))
                .collect(),
        );
        // Each round: both threads start together, then the main thread checks.
        let (go, done) = (Arc::new(Barrier::new(3)), Arc::new(Barrier::new(3)));
        let started = Instant::now();
        let spawn = |f: Box<dyn Fn(&str) + Send>| {
            let (go, done, texts) = (go.clone(), done.clone(), texts.clone());
            std::thread::spawn(move || {
                for text in texts.iter() {
                    go.wait();
                    f(text);
                    done.wait();
                }
            })
        };
        let (a, b) = (state.clone(), state.clone());
        let learner = spawn(Box::new(move |text| {
            let ttl = Duration::from_secs(60);
            a.learn(text, StatusCode::NOT_FOUND, ttl, started);
        }));
        let forgetter = spawn(Box::new(move |text| {
            b.forget_here(&b.key_from_text(text).unwrap());
        }));
        let mut survived = 0;
        for text in texts.iter() {
            go.wait();
            done.wait();
            let key = state.key_from_text(text).unwrap();
            survived += usize::from(state.store.peek(&key, Instant::now()).is_some());
        }
        learner.join().unwrap();
        forgetter.join().unwrap();
        assert_eq!(survived, 0, "of {ROUNDS} rounds");
    }

    #[test]
    fn nothing_is_recorded_or_removed_without_a_tier() {
        let layer = NegativeCacheLayer::new();
        let state = &layer.state;
        let key = state.key_from_text("http://h.test/r/2").unwrap();
        let stored = Stored {
            status: StatusCode::NOT_FOUND,
            ttl: Duration::from_secs(60),
            age: Duration::ZERO,
        };
        state.remember(key.clone(), stored, Instant::now());
        state.note_changed(&key);
        // Alone, the cache keeps its own rules (tickets decide what a 2xx overrides).
        assert!(state.store.peek(&key, Instant::now()).is_some());
    }
}
