//! Recent local changes, by key: short-lived tombstones a fleet tier checks a peer's entry
//! against, so that a peer's 404 never undoes a 2xx, a write or an invalidation that landed
//! here after the peer's request started (the latest answer wins, across replicas too).
//!
//! Bounded in time ([`WINDOW`]) and in keys ([`CAPACITY`]): a change older than the window
//! is forgotten, and when more keys change in a window than fit, the oldest are dropped and
//! the time of the newest dropped one becomes a floor — any question about a time before the
//! floor is answered "changed", so losing a tombstone can only make a peer's entry refused,
//! never wrongly applied. A key changed again only moves its own tombstone: one hot key (a
//! 2xx at every request) takes one key's room, never its neighbours'. Records nothing (one
//! atomic load) until a fleet tier turns it on.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// How long a change is remembered. A fleet tier refuses peers' messages older than this
/// allows (see `fleet`), so every message it applies is checked against complete knowledge.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);
/// The most keys remembered at once (under 60 bytes each with their place in the order, which
/// holds at most twice as many: under 4 MB).
pub(crate) const CAPACITY: usize = 65_536;
const SHARDS: usize = 16;

pub(crate) struct Recent {
    on: AtomicBool,
    epoch: Instant,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    /// Milliseconds (since `epoch`) of the last change of every key, plus one; 0 for none.
    /// Written only with every shard locked, so a reader holding one shard sees it stable.
    all: AtomicU64,
    /// The last change of any key before recording was turned on (ms since `epoch`, plus
    /// one; 0: none): one atomic per change while no tier is attached, so a tier attached
    /// later refuses every peer entry whose request left before it (the cache's own knowledge
    /// predates the tier).
    before: AtomicU64,
}

struct Shard {
    /// Changes in the order they were recorded (times never decrease). An entry whose time is
    /// not its key's time in `last` is dead (the key changed again since): skipped when it
    /// comes first, and swept out when dead ones make up half the order.
    order: VecDeque<(u64, u64)>,
    /// The latest change of each key in `order`.
    last: HashMap<u64, u64>,
    /// Changes at or before this time may have been dropped for room (plus one; 0: none).
    floor: u64,
    /// The most keys this shard keeps.
    room: usize,
}

impl Default for Recent {
    fn default() -> Self {
        Recent::with_room(CAPACITY / SHARDS)
    }
}

impl Recent {
    fn with_room(room: usize) -> Self {
        Recent {
            on: AtomicBool::new(false),
            epoch: Instant::now(),
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        order: VecDeque::new(),
                        last: HashMap::new(),
                        floor: 0,
                        room,
                    })
                })
                .collect(),
            all: AtomicU64::new(0),
            before: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recent")
            .field("on", &self.on.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A shard held while a peer's entry is checked and stored: a change of its key waits, so it
/// comes either before the check (and is seen) or after the store (and forgets the entry).
pub(crate) struct Guard<'a> {
    recent: &'a Recent,
    shard: MutexGuard<'a, Shard>,
    hash: u64,
}

impl Recent {
    /// Starts recording (when a fleet tier attaches). Changes before are known only by the
    /// time of the last one: a peer's entry whose request left before it is refused.
    pub(crate) fn turn_on(&self) {
        self.on.store(true, Ordering::Release);
    }

    /// Stops recording keys (when a fleet tier is dropped): changes until the next tier
    /// attaches are known by the time of the last one, as before a cache's first tier. A
    /// per-key tombstone lasts [`WINDOW`] only, and the next tier may start later than that:
    /// its warm-up must still refuse a peer's copy older than a 2xx seen meanwhile.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn turn_off(&self) {
        self.on.store(false, Ordering::Release);
    }

    /// A change while off: only its time. Read first, so a cache alone writes the shared
    /// line at most once a millisecond, not once a request.
    fn note_before(&self, now: Instant) {
        let at = self.ms(now) + 1;
        if self.before.load(Ordering::Relaxed) < at {
            self.before.fetch_max(at, Ordering::AcqRel);
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // The shards hold integers only: whatever a panicking holder left is valid.
        self.shards[(hash >> 60) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// While off, a change at `now()` of a key not named: only its time is noted (as
    /// [`record`](Self::record) notes it then), and `true`. On: `false`, nothing noted — the
    /// caller records the key itself.
    ///
    /// Only a fleet tier ever reads the time noted: built without the `redis` feature, where
    /// no tier can attach, the clock is not read (a read per 2xx, which every request that
    /// succeeds would pay for nothing).
    pub(crate) fn note_if_off(&self, now: impl FnOnce() -> Instant) -> bool {
        if self.on.load(Ordering::Acquire) {
            return false;
        }
        if cfg!(feature = "redis") {
            self.note_before(now());
        }
        true
    }

    /// The key whose target hashes to `target` changed at `now`; whether recording is on.
    pub(crate) fn record(&self, target: impl Hash, now: Instant) -> bool {
        if !self.on.load(Ordering::Acquire) {
            self.note_before(now);
            return false;
        }
        let hash = self.hasher.hash_one(target);
        let mut shard = self.shard(hash);
        // `now` was read before the lock: another thread may have recorded a later time since.
        // Recording a change as later than it was only refuses more, so the order stays sorted.
        let at = (self.ms(now) + 1).max(shard.order.back().map_or(0, |&(_, at)| at));
        if shard.last.insert(hash, at) != Some(at) {
            shard.order.push_back((hash, at));
        }
        shard.prune(at);
        true
    }

    /// Every key changed at `now` (a clear).
    pub(crate) fn record_all(&self, now: Instant) {
        if !self.on.load(Ordering::Acquire) {
            self.note_before(now);
            return;
        }
        let _all: Vec<_> = (0..SHARDS).map(|i| self.shard((i as u64) << 60)).collect();
        self.all.store(self.ms(now) + 1, Ordering::Release);
    }

    /// Locks the shard of `target`, to check and store a peer's entry in one step.
    pub(crate) fn lock(&self, target: impl Hash) -> Guard<'_> {
        let hash = self.hasher.hash_one(target);
        Guard {
            recent: self,
            shard: self.shard(hash),
            hash,
        }
    }
}

impl Guard<'_> {
    /// Whether the key may have changed at or after `since` (as far as this replica knows).
    pub(crate) fn changed_since(&mut self, since: Instant, now: Instant) -> bool {
        let r = self.recent;
        let since = r.ms(since) + 1;
        self.shard.prune(r.ms(now) + 1);
        // At `since` itself counts: millisecond resolution must not order a tie the wrong way.
        since <= self.shard.floor
            || since <= r.before.load(Ordering::Acquire)
            || r.all.load(Ordering::Acquire) >= since
            || self
                .shard
                .last
                .get(&self.hash)
                .is_some_and(|&at| at >= since)
    }
}

impl Shard {
    fn prune(&mut self, now: u64) {
        let window = WINDOW.as_millis() as u64;
        while let Some(&(hash, at)) = self.order.front() {
            let expired = at + window < now;
            if !expired && self.last.len() <= self.room {
                break;
            }
            self.order.pop_front();
            // A dead entry's key has a later change further on: nothing is lost with it.
            if self.last.get(&hash) == Some(&at) {
                self.last.remove(&hash);
                if !expired {
                    self.floor = self.floor.max(at);
                }
            }
        }
        // Each sweep follows at least `room` records since the last: O(1) per record, and
        // the order never holds more than twice the room.
        if self.order.len() > 2 * self.room.max(1) {
            let last = &self.last;
            self.order.retain(|(hash, at)| last.get(hash) == Some(at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> Recent {
        let r = Recent::default();
        r.turn_on();
        r
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_after_the_start_is_seen_and_one_before_is_not() {
        let r = on();
        let t0 = Instant::now();
        tokio::time::advance(Duration::from_millis(100)).await;
        r.record("k", Instant::now());
        let now = Instant::now();
        assert!(r.lock("k").changed_since(t0, now));
        assert!(!r.lock("other").changed_since(t0, now));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(!r.lock("k").changed_since(Instant::now(), Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_clear_changes_every_key() {
        let r = on();
        let t0 = Instant::now();
        tokio::time::advance(Duration::from_millis(5)).await;
        r.record_all(Instant::now());
        assert!(r.lock("any").changed_since(t0, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn tombstones_expire_after_the_window() {
        let r = on();
        let t0 = Instant::now();
        r.record("k", t0);
        tokio::time::advance(WINDOW + Duration::from_millis(2)).await;
        let now = Instant::now();
        assert!(!r.lock("k").changed_since(t0, now));
        assert_eq!(r.shard(r.hasher.hash_one("k")).order.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn overflow_answers_changed_for_the_dropped_times() {
        let r = on();
        let t0 = Instant::now();
        r.record("victim", t0);
        tokio::time::advance(Duration::from_millis(1)).await;
        // Far more changes than fit: the victim's tombstone is dropped for room...
        for i in 0..CAPACITY * 2 {
            r.record(i, Instant::now());
        }
        let now = Instant::now();
        // ...but a question about a time it covered is still answered "changed".
        assert!(r.lock("victim").changed_since(t0, now));
        let total: usize = (0..SHARDS)
            .map(|i| r.shard((i as u64) << 60).order.len())
            .sum();
        assert!(total <= CAPACITY);
    }

    proptest::proptest! {
        // No regression files: a failure prints its minimal case, to be pinned by hand.
        #![proptest_config(proptest::test_runner::Config { failure_persistence: None, ..Default::default() })]

        /// Never a false "unchanged": whatever the order of changes, the room left and the
        /// time passed, a key changed within the window at or after `since` is reported.
        #[test]
        fn a_change_in_the_window_is_never_missed(
            ops in proptest::collection::vec((0u8..12, 0u64..3_000), 1..200),
            room in 1usize..6,
            probe in 0u8..12,
            back in 0u64..12_000,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let r = Recent::with_room(room);
                r.turn_on();
                let mut changes: Vec<(u8, Instant)> = Vec::new();
                for (key, wait) in ops {
                    tokio::time::advance(Duration::from_millis(wait)).await;
                    r.record(key, Instant::now());
                    changes.push((key, Instant::now()));
                }
                let now = Instant::now();
                let since = now.checked_sub(Duration::from_millis(back)).unwrap();
                let changed = changes
                    .iter()
                    .any(|&(k, at)| k == probe && at >= since && at + WINDOW >= now);
                if changed {
                    proptest::prop_assert!(r.lock(probe).changed_since(since, now));
                }
                Ok(())
            })?;
        }
    }

    /// Review (round 2), item 7: `State::note_changed` records every 2xx of a read once a tier
    /// is attached. One hot key answered 2xx 5,000 times a second (a health check, a popular
    /// record) must not fill its shard's room and raise the floor: every peer's 404 for any key
    /// of that shard (a sixteenth of all keys) would be refused as superseded, though none of
    /// them changed.
    #[tokio::test(start_paused = true)]
    async fn one_hot_key_does_not_make_its_shard_refuse_every_peer() {
        let r = on();
        let shard_of = |k: &str| (r.hasher.hash_one(k) >> 60) % SHARDS as u64;
        let other = (0..)
            .map(|i| format!("http://h/records/{i}"))
            .find(|k| shard_of(k) == shard_of("http://h/health"))
            .unwrap();
        // 3 s of 2xx for the hot key, 5 per millisecond.
        for _ in 0..3_000 {
            for _ in 0..5 {
                r.record("http://h/health", Instant::now());
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let now = Instant::now();
        // A peer's 404 for `other`, whose request left 200 ms ago (less the 1 s transit
        // allowance the tier subtracts).
        let since = now - Duration::from_millis(1_200);
        assert!(
            !r.lock(other.as_str()).changed_since(since, now),
            "{other} never changed, yet a peer's 404 for it is refused"
        );
        // The hot key itself still reads as changed, and its shard stays within its bound.
        assert!(r.lock("http://h/health").changed_since(since, now));
        let shard = r.shard(r.hasher.hash_one("http://h/health"));
        assert!(shard.order.len() <= 2 * (CAPACITY / SHARDS) && shard.last.len() == 1);
    }

    #[tokio::test(start_paused = true)]
    async fn off_records_only_the_time_of_the_last_change() {
        let r = Recent::default();
        let t0 = Instant::now();
        tokio::time::advance(Duration::from_millis(5)).await;
        assert!(!r.record("k", Instant::now()), "nothing per key");
        tokio::time::advance(Duration::from_millis(5)).await;
        let t1 = Instant::now();
        assert!(!r.lock("k").changed_since(t1, t1), "after it: unchanged");
        // Review (round 3), item 2: a change made before the tier attached orders out a
        // peer's older entry, for every key (which key it was is not kept).
        r.turn_on();
        assert!(r.lock("other").changed_since(t0, t1));
    }
}
