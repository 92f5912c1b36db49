//! The state a layer, its clones, their services and the handle share, and what it does for
//! all of them: compute keys, remember, forget, report.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Response, StatusCode, Uri};
use tokio::time::Instant;

use super::answer::Answer;
use super::coalesce::Flights;
use super::history::Histories;
use super::key::{
    Credentials, Key, KeyFn, Lookup, key_fn_uri, normal_uri, partition_tag, target_key, target_uri,
    text_key, uri_key,
};
use super::peers::{PeerEvent, Peers};
use super::reference::Target;
use super::stats::{CacheStats, Counters};
use super::store::{Store, Stored};
use super::ttl::{Freshness, TtlConfig, TtlSource, adapt};
use crate::RetryInfo;
use crate::classify::{Classify, Outcome, response_outcome};
use crate::counter::{Count, bump};
use crate::observe::CacheEvent;

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
    /// The most body bytes an entry keeps (see `Builder::max_body_bytes`).
    pub(crate) body_limit: u64,
    pub(crate) flights: Arc<Flights>,
    pub(crate) peers: Peers,
    /// The scheme of origin-form targets, when the application declared it
    /// (`Builder::origin_form_scheme`); empty: unknown, keyed scheme-relative.
    pub(crate) origin_scheme: Box<str>,
    /// The tags of the partitions made so far (`NegativeCacheLayer::partition`): a change to
    /// a target forgets it in each. At most `PARTITIONS_BY_TAG + 1` long (past that, scanned).
    pub(crate) partitions: RwLock<Vec<u64>>,
    /// Each key's streak of confirmed Missing answers: only with the adaptive TTL.
    pub(crate) history: Option<Histories>,
}

/// Past this many partitions, forgetting a target scans the store instead of removing it
/// under each partition's tag.
const PARTITIONS_BY_TAG: usize = 32;

impl State {
    /// The key of a request target, as the layer computes it: by the `Host` the request
    /// carries, if it has one.
    pub(crate) fn key_for<'a>(
        &'a self,
        uri: &'a Uri,
        host: Option<&'a HeaderValue>,
        cred: u64,
    ) -> Option<Lookup<'a>> {
        match &self.key_fn {
            // Every spelling of one target gives the key function the same URI (RFC 3986
            // §6.2.2); already normal (most), it is the request's own.
            Some(f) => {
                Key::id(f(&*key_fn_uri(uri, host, &self.origin_scheme)?)?, cred).map(Lookup::Owned)
            }
            None => uri_key(uri, host, &self.origin_scheme, cred),
        }
    }

    /// The key of a target given as parts (a resolved `Location`).
    pub(crate) fn key_for_target(&self, t: &Target) -> Option<Key> {
        match &self.key_fn {
            Some(f) => {
                let uri = target_uri(&t.scheme, &t.authority, &t.pq)?;
                Key::id(f(&*normal_uri(&uri)?)?, 0)
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
        // A write or an invalidation: the key starts again from the base TTL.
        if let Some(history) = &self.history {
            history.reset(key);
        }
        // Before the removal: a peer's entry checked in between is refused, one stored
        // before is removed.
        self.peers.recent.record(key.target(), Instant::now());
        self.store.versions.bump(key);
        // Every partition's entry goes too: a write changes the resource for everyone.
        let partitions = self.partitions.read().unwrap_or_else(|p| p.into_inner());
        let n = match self.credentials {
            Credentials::Bypass if partitions.len() <= PARTITIONS_BY_TAG => {
                let mut n = u64::from(self.store.remove(&key.under(0)));
                for &tag in partitions.iter() {
                    n += u64::from(self.store.remove(&key.under(tag)));
                }
                n
            }
            _ => self.store.remove_where(|k| k.same_target(key)),
        };
        drop(partitions);
        if n > 0 {
            self.stats.invalidations.add(n);
            self.tell_size();
            tracing::debug!(key = key.as_str(), "negative cache: invalidated");
        }
        n > 0
    }

    /// The tag of a partition named `name` inside `parent` (0: the whole store), noted so
    /// that forgetting a target reaches it.
    pub(crate) fn partition(&self, parent: u64, name: &[u8]) -> u64 {
        let tag = partition_tag(&self.secret, parent, name);
        let mut list = self.partitions.write().unwrap_or_else(|p| p.into_inner());
        // Past the bound the store is scanned anyway: the list stays bounded however many
        // partitions are made.
        if list.len() <= PARTITIONS_BY_TAG && !list.contains(&tag) {
            list.push(tag);
        }
        tag
    }

    /// Forgets exactly `key` (under its own credential only): its target answered present.
    ///
    /// Peers are told only when this cache had the key: a 2xx for every GET would otherwise
    /// be published at the request rate.
    pub(crate) fn forget_exact(&self, key: &Key) {
        self.store.versions.bump(key);
        if self.store.remove(key) {
            bump(&self.stats.invalidations);
            self.tell_size();
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
    /// exact key is removed (no scan) and, as for any read's 2xx that finds a 404 held, the
    /// peers are told to forget it (GUARANTEES.md: they may hold the same 404). Without a tier
    /// this records only the time of the last change (for a tier attached later) and looks
    /// nothing up: a cache alone pays one atomic load, and one write a millisecond at most.
    pub(crate) fn note_changed(&self, key: &Key) {
        // Present: the streak ends, and a Missing answer after this one is a flap.
        if let Some(history) = &self.history {
            history.present(key);
        }
        if self.peers.recent.record(key.target(), Instant::now()) && self.store.remove(key) {
            bump(&self.stats.invalidations);
            self.tell_size();
            if key.cred() == 0 {
                self.peers.send(|| PeerEvent::Forget {
                    key: key.as_str().into(),
                });
            }
        }
    }

    /// Remembers a Missing answer to a request that left at `started` and whose head arrived at
    /// `arrived`, and tells the peers (only for entries without credentials: a credential's
    /// fingerprint means nothing to another replica).
    ///
    /// The entry is dated from `arrived`, RFC 9111 §4.2.3's `response_time`, however late its
    /// body ends (the caller may read it seconds later): it expires `ttl` after the answer
    /// arrived and its hits count their age from then. An answer whose freshness ran out
    /// before its body ended is not stored, nor one older than the key's stored entry.
    pub(crate) fn remember(
        &self,
        key: Key,
        mut stored: Stored,
        started: Instant,
        arrived: Instant,
    ) {
        // RFC 9111 §4: of the answers a cache holds, the most recent is the one used. An
        // answer whose body ended late does not replace (or, stale, remove) one that arrived
        // after it and was stored first.
        if self.store.holds_newer(&key, arrived) {
            bump(&self.stats.uncacheable);
            tracing::debug!(
                key = key.as_str(),
                status = %stored.status,
                "negative cache: Missing answer not stored (a newer one is)"
            );
            return;
        }
        // The adaptive TTL (opt-in): a default lifetime grows with the key's streak of
        // confirmations; an explicit one is the origin's and is left alone.
        if let Some(history) = self
            .history
            .as_ref()
            .filter(|_| stored.source == TtlSource::Base)
        {
            let streak = history.missing(&key, stored.status);
            let fresh = Freshness {
                ttl: stored.ttl,
                age: stored.age,
                source: stored.source,
            };
            let learned = adapt(&self.ttl, fresh, stored.status, streak.confirmed);
            (stored.ttl, stored.source) = (learned.ttl, learned.source);
        }
        let confirmed = match stored.source {
            TtlSource::Learned { confirmed } => confirmed,
            _ => 0,
        };
        let (status, ttl) = (stored.status, stored.ttl);
        // What a peer adds to its message's age (the time since this request left, which
        // counts the response delay already): the rest of the age on arrival (RFC 9111
        // §4.2.3: the origin's `Age`, or what its `Date` says).
        let origin_age = stored
            .age
            .saturating_sub(arrived.saturating_duration_since(started));
        // An answer too heavy for the store keeps its head: the repeat stays free.
        if !self.store.fits(&key, stored.answer.as_ref()) {
            if let Some(a) = stored.answer.as_ref().filter(|a| a.kept()) {
                stored.answer = a.head_only();
            }
        }
        let body_kept = stored.answer.as_ref().is_none_or(|a| a.kept());
        let answer = stored.answer.clone();
        if arrived + stored.ttl <= Instant::now() {
            bump(&self.stats.uncacheable);
            tracing::debug!(
                key = key.as_str(),
                %status,
                "negative cache: Missing answer not stored (stale once its body ended)"
            );
            // It would have replaced what is stored, and expired at once.
            if self.store.remove(&key) {
                self.tell_size();
            }
            return;
        }
        tracing::debug!(
            key = key.as_str(),
            %status,
            ?ttl,
            body_kept,
            "negative cache: remembered"
        );
        let now = arrived;
        // A HEAD's answer is not shared: the wire carries no method, and a peer would take it
        // for a GET's (RFC 9111 §4: it answers a HEAD only).
        let shared = answer.as_ref().is_none_or(|a| a.serves_get());
        let text = (key.cred() == 0 && shared && self.peers.attached())
            .then(|| Box::<str>::from(key.as_str()));
        if !self.store.insert(key, stored, now) {
            bump(&self.stats.uncacheable);
            return;
        }
        bump(&self.stats.inserts);
        if !body_kept {
            bump(&self.stats.head_only);
        }
        self.tell_size();
        if let Some(key) = text {
            self.peers.send(|| PeerEvent::Missing {
                key,
                answer,
                status,
                ttl,
                started,
                at: now,
                confirmed,
                origin_age,
            });
        }
    }

    /// Remembers what a peer learned from a request that left at `started` (at the latest),
    /// for `ttl` capped at this cache's `max_ttl` — unless the key changed here since. The
    /// caller has checked the status.
    ///
    /// `request_age` is how long ago the peer's request left (`started` is earlier still, by
    /// the transit allowance, for ordering only), `origin_age` the age its answer had on
    /// arrival beyond that (the origin's `Age`, less the response delay the request's age
    /// already counts). The entry is dated from the peer's request, not from now: its
    /// `Age` is `origin_age` plus the time since the peer's request left, and a local answer
    /// that arrived after that request left is newer than it (RFC 9111 §4, see
    /// [`remember`](Self::remember)): the peer's entry is refused.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn learn(
        &self,
        text: &str,
        status: StatusCode,
        ttl: Duration,
        started: Instant,
        answer: Option<Arc<Answer>>,
        confirmed: u8,
        request_age: Duration,
        origin_age: Duration,
    ) -> Learned {
        let Some(key) = self.key_from_text(text) else {
            return Learned::Unreadable;
        };
        let now = Instant::now();
        // Checked and stored under the key's tombstone lock: a local change comes before (and
        // is seen) or after (and forgets what is stored here).
        let mut guard = self.peers.recent.lock(key.target());
        // Dated from the peer's request: what is left of its TTL is left from now, and its
        // age grows from the peer's (RFC 9111 §5.1).
        let dated = now.checked_sub(request_age).unwrap_or(now);
        // RFC 9111 §4: the most recent answer is used. A local answer that arrived after the
        // peer's request left is newer, as in `remember`.
        if guard.changed_since(started, now) || self.store.holds_newer(&key, dated) {
            return Learned::Superseded;
        }
        // Never raised: what is left of a peer's entry must not be extended.
        let clamped = ttl > self.ttl.max;
        // Within this replica's budget, as its own answers: head-only if need be.
        let answer = match answer {
            Some(a) if a.kept() && !self.store.fits(&key, Some(&a)) => a.head_only(),
            a => a,
        };
        let stored = Stored {
            status,
            answer,
            ttl: ttl.min(self.ttl.max) + now.saturating_duration_since(dated),
            age: origin_age,
            source: TtlSource::Peer,
        };
        // The peer's streak carries on here: once this entry expires, this replica's own
        // confirmation grows from it (never past a flap or a reset seen here).
        if let (Some(history), 1..) = (&self.history, confirmed) {
            history.learned(&key, status, confirmed);
        }
        let kept = self.store.insert(key, stored, dated);
        drop(guard);
        self.tell_size();
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
        if let Some(history) = &self.history {
            history.clear();
        }
        let n = self.store.clear();
        self.stats.invalidations.add(n);
        self.tell_size();
        n
    }

    /// Tells the observer, if any, of the evictions so far and the store's size: after each
    /// change to the store (evictions happen only inside an insert).
    pub(crate) fn tell_size(&self) {
        if let Some(observer) = &self.stats.observer {
            self.stats.sync_evictions(&self.evictions);
            observer.cache(CacheEvent::Size {
                entries: self.store.len(),
                memory_bytes: self.store.memory_used(),
            });
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let evictions = self.evictions.load(Relaxed);
        let mut s = self
            .stats
            .snapshot(self.store.len(), self.store.capacity(), evictions);
        let history = self.history.as_ref().map_or(0, Histories::bytes);
        s.memory_bytes = self.store.memory_used() + history;
        s.max_bytes = self.store.max_bytes() + history;
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
            a.learn(
                text,
                StatusCode::NOT_FOUND,
                ttl,
                started,
                None,
                0,
                Duration::ZERO,
                Duration::ZERO,
            );
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

    /// A peer's message names a key as text: it is normalised like a local request's
    /// (RFC 3986 §6.2.2), so a peer's `%7E` entry answers a local `~` and a local write of
    /// either spelling forgets it.
    #[test]
    fn a_peers_key_is_normalised_like_a_local_one() {
        let layer = NegativeCacheLayer::new();
        let state = &layer.state;
        let ttl = Duration::from_secs(60);
        let learned = state.learn(
            "http://h.test/users/%7eann/caf%c3%a9",
            StatusCode::NOT_FOUND,
            ttl,
            Instant::now(),
            None,
            0,
            Duration::ZERO,
            Duration::ZERO,
        );
        assert_eq!(learned, Learned::Stored { clamped: false });
        let uri: Uri = "http://h.test/users/~ann/caf%C3%A9".parse().unwrap();
        let lookup = state.key_for(&uri, None, 0).unwrap();
        assert!(state.store.peek(&lookup, Instant::now()).is_some());
        assert!(state.forget_here(&lookup.to_key().unwrap()));
    }

    #[test]
    fn nothing_is_recorded_or_removed_without_a_tier() {
        let layer = NegativeCacheLayer::new();
        let state = &layer.state;
        let key = state.key_from_text("http://h.test/r/2").unwrap();
        let stored = Stored {
            status: StatusCode::NOT_FOUND,
            answer: None,
            ttl: Duration::from_secs(60),
            age: Duration::ZERO,
            source: TtlSource::Base,
        };
        state.remember(key.clone(), stored, Instant::now(), Instant::now());
        state.note_changed(&key);
        // Alone, the cache keeps its own rules (tickets decide what a 2xx overrides).
        assert!(state.store.peek(&key, Instant::now()).is_some());
    }
}
