//! The store: the one file that knows the entries live in `quick_cache`.
//!
//! A bounded, sharded, scan-resistant (CLOCK-Pro) map from [`Key`] to a small [`Entry`]. Each
//! entry carries its expiry; an expired entry is dropped when it is next read. No timers, no
//! background task.

use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicU8, AtomicU64};
use std::time::Duration;

use http::StatusCode;
use quick_cache::sync::Cache;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Mutex;

use quick_cache::{DefaultHashBuilder, Equivalent, Lifecycle, OptionsBuilder, Weighter};
use tokio::time::Instant;

use super::answer::Answer;
use super::key::{Key, Targeted};
use super::ttl::TtlSource;
use crate::counter::bump;

/// What is remembered of a Missing answer, in 32 bytes: when it expires (microseconds since
/// the store's epoch, rounded up, so it never expires before its TTL and outlives it by less
/// than a microsecond), its TTL (milliseconds, for its age), its age on arrival, and what a
/// hit replays of it (none: the status alone, which costs no allocation).
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    expires_us: u64,
    ttl_ms: u32,
    origin_age_s: u32,
    pub(crate) status: StatusCode,
    answer: Option<Arc<Answer>>,
    /// Why it is kept for `ttl`.
    source: TtlSource,
}

impl Entry {
    /// This entry as read at `now` (since the store's epoch), if it has not expired.
    fn fresh_at(&self, now: Duration) -> Option<Fresh> {
        let expires = Duration::from_micros(self.expires_us);
        let remaining = expires.checked_sub(now).filter(|r| !r.is_zero())?;
        let ttl = Duration::from_millis(u64::from(self.ttl_ms));
        // RFC 9111 §4.2.3: the age it arrived with, plus how long it has been resident (the
        // expiry was rounded up to the microsecond, so this rounds up too).
        // In u64 (a 128-bit division was a hit's costliest arithmetic): whole seconds are whole
        // microseconds, so only the sub-second nanoseconds are rounded up. A TTL is at most
        // u32::MAX ms, so the microseconds fit.
        let r = ttl.saturating_sub(remaining);
        let resident = r.as_secs() * 1_000_000 + u64::from(r.subsec_nanos().div_ceil(1_000));
        let resident = Duration::from_micros(resident);
        Some(Fresh {
            status: self.status,
            answer: self.answer.clone(),
            age: Duration::from_secs(u64::from(self.origin_age_s)) + resident,
            remaining,
            ttl,
            source: self.source,
        })
    }

    #[cfg(test)]
    pub(crate) fn for_test() -> Entry {
        Entry {
            expires_us: u64::MAX,
            ttl_ms: 1_000,
            origin_age_s: 0,
            status: StatusCode::NOT_FOUND,
            answer: None,
            source: TtlSource::Base,
        }
    }

    /// This entry as a service's memo keeps it: its answer held weakly, so that what the store
    /// forgets is freed whatever the memos hold.
    pub(crate) fn into_weak(mut self) -> WeakEntry {
        let answer = self.answer.take().map(|a| Arc::downgrade(&a));
        WeakEntry {
            entry: self,
            answer,
        }
    }

    fn expired_at(&self, now: Duration) -> bool {
        Duration::from_micros(self.expires_us) <= now
    }

    /// What the entry's answer holds besides the entry itself.
    fn answer_bytes(&self) -> u64 {
        self.answer.as_ref().map_or(0, |a| a.weight())
    }
}

/// An [`Entry`] whose answer is held weakly ([`Entry::into_weak`]).
#[derive(Debug)]
pub(crate) struct WeakEntry {
    /// The entry without its answer.
    entry: Entry,
    answer: Option<std::sync::Weak<Answer>>,
}

/// What to remember of a Missing answer.
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub(crate) status: StatusCode,
    /// What a hit replays besides the status (see [`Answer::new`]).
    pub(crate) answer: Option<Arc<Answer>>,
    /// How long from now it stays fresh (at most 30 days, as the builder allows).
    pub(crate) ttl: Duration,
    /// How old it already was when it arrived.
    pub(crate) age: Duration,
    /// Where `ttl` came from.
    pub(crate) source: TtlSource,
}

/// A fresh entry, read at `now`.
#[derive(Clone, Debug)]
pub(crate) struct Fresh {
    pub(crate) status: StatusCode,
    pub(crate) answer: Option<Arc<Answer>>,
    pub(crate) age: Duration,
    pub(crate) remaining: Duration,
    /// How long it was kept for when stored, and why.
    pub(crate) ttl: Duration,
    pub(crate) source: TtlSource,
}

impl Fresh {
    /// Whether this entry may answer a request of this method (`head`: a HEAD): an answer to a
    /// HEAD answers a HEAD only (RFC 9111 §4; it has no body to stand for a GET's).
    pub(crate) fn serves(&self, head: bool) -> bool {
        head || self.answer.as_ref().is_none_or(|a| a.serves_get())
    }
}

/// Shards of a store of 4,096 entries or more.
const SHARDS_AT_SCALE: usize = 16;

/// An entry weighs its key's text and its answer's header and body bytes, and at least `floor`
/// (`max_bytes / capacity`): so a store whose weights stay within `floor × capacity` holds at
/// most `capacity` entries and at most `max_bytes` bytes of key text and answers, whatever
/// their lengths. The rest of what
/// an entry costs (the key and entry structs, quick_cache's index) is in tables sized by
/// `capacity`, about 100 bytes per entry of it.
#[derive(Clone, Copy, Debug)]
struct EntryBytes {
    floor: u64,
}

impl Weighter<Key, Entry> for EntryBytes {
    fn weight(&self, key: &Key, entry: &Entry) -> u64 {
        (key.as_str().len() as u64 + entry.answer_bytes()).max(self.floor)
    }
}

/// Counts evictions, and keeps the sum of the held keys' text lengths and answers' bytes, and
/// the [`Presence`] counts, as entries leave.
#[derive(Clone, Debug)]
struct Accounts {
    evictions: Arc<AtomicU64>,
    key_bytes: Arc<AtomicU64>,
    presence: Arc<Presence>,
}

impl Accounts {
    fn left(&self, key: &Key, entry: &Entry) {
        let n = key.as_str().len() as u64 + entry.answer_bytes();
        self.key_bytes.fetch_sub(n, AcqRel);
        self.presence.left(key.presence_hash());
    }
}

/// Which keys the store may hold: a count of held keys per bucket of their presence hashes
/// (their target's hash and credentials, [`Targeted`]; a counting Bloom filter with one hash). A lookup whose bucket counts none is a miss without
/// quick_cache's shard lock or probe — most lookups are misses (most keys are not missing), and
/// most of their buckets are empty: 4 buckets per entry of capacity, so a full store leaves
/// about 78% of them empty.
///
/// Exact, not approximate: every key that enters is counted before quick_cache holds it, and
/// every key that leaves (removed, replaced, evicted, expired, cleared) is uncounted after,
/// through the one place that sees them all ([`Accounts::left`], which quick_cache's
/// `on_evict` calls too). So a count is never below the keys its bucket holds, and a count of
/// 0 means none. A bucket that reaches [`STUCK`] stays there: it says "maybe" for good, the
/// safe side, rather than wrap.
#[derive(Debug)]
struct Presence {
    counts: Box<[AtomicU8]>,
    mask: usize,
}

/// A count that stopped counting (see [`Presence`]).
const STUCK: u8 = u8::MAX;

impl Presence {
    /// Buckets for a store of `capacity`: 4 per entry, a power of two, 64 to 16 Mi (1 byte
    /// each).
    fn buckets(capacity: u64) -> usize {
        let n = capacity.saturating_mul(4).clamp(64, 1 << 24);
        usize::try_from(n.next_power_of_two()).unwrap_or(1 << 24)
    }

    fn new(buckets: usize) -> Presence {
        let buckets = buckets.max(1).next_power_of_two();
        Presence {
            counts: (0..buckets).map(|_| AtomicU8::new(0)).collect(),
            mask: buckets - 1,
        }
    }

    fn index(&self, hash: u64) -> usize {
        // The low bits: `Versions` shards by the high ones.
        (hash as usize) & self.mask
    }

    /// False only if the store holds no key of this presence hash.
    fn may_hold(&self, hash: u64) -> bool {
        // Acquire: pairs with the count a completed insert made (see `Store::inserted`).
        self.counts[self.index(hash)].load(Acquire) != 0
    }

    /// A key of this presence hash is about to be held.
    fn entered(&self, hash: u64) {
        let _ = self.counts[self.index(hash)]
            .fetch_update(Release, Relaxed, |n| (n != STUCK).then(|| n + 1));
    }

    /// A key of this presence hash is no longer held.
    fn left(&self, hash: u64) {
        let _ = self.counts[self.index(hash)].fetch_update(Release, Relaxed, |n| {
            debug_assert!(n > 0, "a key left that was not counted in");
            (n != STUCK).then(|| n.saturating_sub(1))
        });
    }

    fn bytes(&self) -> u64 {
        self.counts.len() as u64
    }
}

impl Lifecycle<Key, Entry> for Accounts {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), key: Key, entry: Entry) {
        self.left(&key, &entry);
        bump(&self.evictions);
    }
}

pub(crate) struct Store {
    cache: Cache<Key, Entry, EntryBytes, DefaultHashBuilder, Accounts>,
    accounts: Accounts,
    epoch: Instant,
    capacity: u64,
    max_bytes: u64,
    /// The heaviest entry a shard admits (quick_cache refuses heavier ones outright).
    heaviest: u64,
    floor: u64,
    /// Entries stored so far, counted after each is in: a read that saw the same count before
    /// its lookup and after its answer knows nothing was stored meanwhile (see
    /// [`inserted`](Self::inserted)).
    inserted: AtomicU64,
    /// Moves after every change of what the store holds (an insert, with the evictions it
    /// makes; a removal), once the change is made: an [`Entry`] read after the generation was
    /// read is what the store holds while the generation stays the same and no change is in
    /// progress (see `Memo`, [`settled_generation`](Self::settled_generation)).
    generation: AtomicU64,
    /// Changes in progress ([`Change`]). A change removes entries before it moves the
    /// generation — a scan (`remove_where`) one by one, running its caller's predicate between
    /// them — and a lookup misses a removed entry at once: a memo must not answer meanwhile.
    changing: AtomicU64,
    pub(crate) versions: Versions,
}

/// Versions of the keys that have reads in flight: a key's version moves whenever it is
/// forgotten or answered present, and a Missing answer is remembered only if its key's version
/// is the one read when its request left — so a 404 overtaken by a write, a 2xx or an
/// invalidation is not kept. Exact per key (a 64-bit hash of its target), and sized by the
/// reads in flight, not by the store: a key leaves when its last read settles.
pub(crate) struct Versions {
    shards: Box<[Mutex<Slots>]>,
    all: AtomicU64,
}

/// The keys in flight in one shard, by the hash of their target: the first few inline (a
/// shard holds none or one most of the time, and a short scan under the lock is cheaper than a
/// map's probe), the rest in a map. A key is in one place or the other, never both. Aligned, so
/// two cores locking neighbouring shards don't share a cache line.
#[derive(Default)]
#[repr(align(64))]
struct Slots {
    /// Free where `in_flight` is 0.
    few: [(u64, Slot); FEW],
    more: HashMap<u64, Slot, BuildHasherDefault<Prehashed>>,
}

const FEW: usize = 2;

#[derive(Clone, Copy, Default)]
struct Slot {
    in_flight: u32,
    version: u64,
}

impl Slots {
    /// A read of `hash` leaves: its slot, made if it has none.
    fn enter(&mut self, hash: u64) -> &mut Slot {
        let at = self
            .few
            .iter()
            .position(|(h, s)| *h == hash && s.in_flight > 0);
        let slot = match at {
            Some(i) => &mut self.few[i].1,
            None if !self.more.is_empty() && self.more.contains_key(&hash) => {
                self.more.entry(hash).or_default()
            }
            None => match self.few.iter().position(|(_, s)| s.in_flight == 0) {
                Some(i) => {
                    self.few[i] = (hash, Slot::default());
                    &mut self.few[i].1
                }
                None => self.more.entry(hash).or_default(),
            },
        };
        slot.in_flight += 1;
        slot
    }

    /// The slot of `hash`, if a read of it is in flight.
    fn get_mut(&mut self, hash: u64) -> Option<&mut Slot> {
        match self
            .few
            .iter()
            .position(|(h, s)| *h == hash && s.in_flight > 0)
        {
            Some(i) => Some(&mut self.few[i].1),
            None if self.more.is_empty() => None,
            None => self.more.get_mut(&hash),
        }
    }

    /// Frees the slot of `hash` once no read of it is in flight.
    fn free_if_idle(&mut self, hash: u64) {
        if !self.more.is_empty() && self.more.get(&hash).is_some_and(|s| s.in_flight == 0) {
            self.more.remove(&hash);
        }
    }
}

const SHARDS: usize = 64;

/// A read in flight: holds its key's place in [`Versions`] until it is settled or abandoned,
/// which its holder (the response future, the recorder) does with the store's `Versions` it
/// holds anyway: a ticket of its own would clone an `Arc` per read, an atomic on a line
/// every core shares.
pub(crate) struct Ticket {
    hash: u64,
    version: u64,
    all: u64,
    settled: bool,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("hash", &self.hash)
            .field("version", &self.version)
            .finish()
    }
}

impl Versions {
    fn new() -> Self {
        Versions {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            all: AtomicU64::new(0),
        }
    }

    fn hash(key: &Key) -> u64 {
        key.target().target_hash()
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, Slots> {
        // The maps hold integers only: whatever a panicking holder left is valid.
        self.shards[(hash >> 58) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A read of `key` leaves: note the key's version.
    pub(crate) fn start(&self, key: &Key) -> Ticket {
        self.start_hashed(Self::hash(key))
    }

    /// A read leaves of the key whose target hashes to `hash` ([`KeyRef::target_hash`]): as
    /// [`start`](Self::start), from a key not made yet.
    pub(crate) fn start_hashed(&self, hash: u64) -> Ticket {
        let all = self.all.load(Acquire);
        let mut shard = self.shard(hash);
        let slot = shard.enter(hash);
        Ticket {
            hash,
            version: slot.version,
            all,
            settled: false,
        }
    }

    /// `key` changed: reads in flight for it must not remember what they bring back.
    pub(crate) fn bump(&self, key: &Key) {
        let hash = Self::hash(key);
        if let Some(slot) = self.shard(hash).get_mut(hash) {
            slot.version += 1;
        }
    }

    /// Everything changed (a clear, a predicate invalidation). Takes every shard in turn, so
    /// that no read settles in between: each sees the change, or comes before the forgetting
    /// that follows it. Rare, so the cost (64 uncontended locks) does not matter.
    pub(crate) fn bump_all(&self) {
        let _shards: Vec<_> = (0..SHARDS).map(|i| self.shard((i as u64) << 58)).collect();
        self.all.fetch_add(1, AcqRel);
    }
}

impl Ticket {
    /// The read is back with a Missing answer: runs `remember` if its key is unchanged since
    /// the read left, inside the key's critical section — so a change either comes first and is
    /// seen here, or comes after and forgets what `remember` stored.
    pub(crate) fn settle_with(mut self, versions: &Versions, remember: impl FnOnce()) {
        self.release(versions, false, Some(remember));
    }

    /// The read is back and found its key present: reads still in flight for it must not
    /// remember a Missing answer (the version moves in the same critical section).
    pub(crate) fn settle_present(mut self, versions: &Versions) {
        self.release(versions, true, None::<fn()>);
    }

    /// The read ended without an answer to act on (an error, another outcome, dropped).
    pub(crate) fn abandon(mut self, versions: &Versions) {
        self.release(versions, false, None::<fn()>);
    }

    /// Leaves the key's slot, in one critical section: runs `if_current` when the key was
    /// unchanged while this read was out, then moves the version if `changed`.
    fn release(&mut self, versions: &Versions, changed: bool, if_current: Option<impl FnOnce()>) {
        if self.settled {
            return;
        }
        self.settled = true;
        let mut shard = versions.shard(self.hash);
        let Some(slot) = shard.get_mut(self.hash) else {
            return;
        };
        // `all` moves only with every shard locked, so it is stable here.
        let current = slot.version == self.version && versions.all.load(Acquire) == self.all;
        if let Some(f) = if_current.filter(|_| current) {
            f();
        }
        slot.version += u64::from(changed);
        slot.in_flight -= 1;
        if slot.in_flight == 0 {
            shard.free_if_idle(self.hash);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Every holder settles or abandons its ticket: one dropped unsettled would keep its
        // key's slot (a little memory, never a wrong answer).
        debug_assert!(
            self.settled || std::thread::panicking(),
            "a read's ticket was dropped unsettled"
        );
    }
}

/// A hasher for keys that are hashes already.
#[derive(Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A change of what the store holds, in progress while this lives ([`Store::change`]): counted
/// in `changing` from its start; when it ends, the generation moves if it [`made`](Self::made)
/// any change, and then it is counted out — on unwinding too.
struct Change<'a> {
    store: &'a Store,
    made: bool,
}

impl Change<'_> {
    /// Something was removed or stored.
    fn made(&mut self) {
        self.made = true;
    }
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        if self.made {
            self.store.generation.fetch_add(1, Release);
        }
        self.store.changing.fetch_sub(1, Release);
    }
}

/// How long before the store began an entry may be dated: a peer's is dated from its request
/// (a stored copy warmed up, up to its TTL before), at most the longest TTL.
pub(crate) const OLDEST: Duration = Duration::from_secs(30 * 86_400);

/// The store's epoch, from which entries count their times: [`OLDEST`] before now, so that
/// entries dated before the store began keep their order (RFC 9111 §4, [`Store::holds_newer`])
/// — or as far back as the clock goes, on a clock that began later (a machine up for less
/// than that); [`Store::insert`] dates an entry older than that from the epoch.
fn epoch() -> Instant {
    let now = Instant::now();
    [
        OLDEST,
        Duration::from_secs(86_400),
        Duration::from_secs(3_600),
        Duration::from_secs(60),
    ]
    .into_iter()
    .find_map(|d| now.checked_sub(d))
    .unwrap_or(now)
}

impl Store {
    /// A store of at most `capacity` entries (>= 1) and at most `max_bytes` bytes of key text
    /// (see [`EntryBytes`]). `evictions` counts entries pushed out.
    pub(crate) fn new(capacity: u64, max_bytes: u64, evictions: Arc<AtomicU64>) -> Store {
        Store::with_buckets(capacity, max_bytes, evictions, Presence::buckets(capacity))
    }

    /// As [`new`](Self::new), with `buckets` for its [`Presence`] (tests use few, to share and
    /// fill them).
    fn with_buckets(
        capacity: u64,
        max_bytes: u64,
        evictions: Arc<AtomicU64>,
        buckets: usize,
    ) -> Store {
        let floor = (max_bytes / capacity).max(1);
        let max_bytes = floor.saturating_mul(capacity);
        // quick_cache admits an entry only within 97% of its shard: a single-entry store gets
        // a little room above its one floor, or it could hold nothing (`heaviest` below keeps
        // the text itself within `max_bytes`).
        let weight_capacity = if capacity == 1 {
            max_bytes + max_bytes / 16
        } else {
            max_bytes
        };
        let mut options = OptionsBuilder::new();
        options
            .estimated_items_capacity(usize::try_from(capacity).unwrap_or(usize::MAX))
            .weight_capacity(weight_capacity);
        // Each shard gets an equal share of the capacity; small caches would get shares too
        // small to hold anything, so they get one shard. A fixed count (not quick_cache's
        // default, which follows the machine's cores) keeps the largest entry a store admits
        // the same on every machine.
        options.shards(if capacity < 4096 { 1 } else { SHARDS_AT_SCALE });
        let options = options.build().expect("capacity and shards are valid");
        let accounts = Accounts {
            evictions,
            key_bytes: Arc::default(),
            presence: Arc::new(Presence::new(buckets)),
        };
        let cache = Cache::with_options(
            options,
            EntryBytes { floor },
            DefaultHashBuilder::default(),
            accounts.clone(),
        );
        let shard = weight_capacity / cache.num_shards() as u64;
        Store {
            cache,
            accounts,
            epoch: epoch(),
            capacity,
            max_bytes,
            heaviest: (shard.saturating_mul(96) / 100).min(max_bytes),
            floor,
            inserted: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            changing: AtomicU64::new(0),
            versions: Versions::new(),
        }
    }

    fn since_epoch(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.epoch)
    }

    /// The store's generation (see the field): read it before a lookup whose entry is kept.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Acquire)
    }

    /// The generation, if no change is in progress; `None` while one is. An entry read after
    /// [`generation`](Self::generation) returned `g` is still what the store holds if this
    /// returns `Some(g)`.
    ///
    /// In this order: a change counts itself in before it removes anything and moves the
    /// generation before it counts itself out. So a reader that has seen (or heard of) a
    /// removal finds the change still counted, or the generation moved.
    pub(crate) fn settled_generation(&self) -> Option<u64> {
        if self.changing.load(Acquire) != 0 {
            return None;
        }
        Some(self.generation.load(Acquire))
    }

    /// A change of what the store holds begins: see [`Change`].
    fn change(&self) -> Change<'_> {
        self.changing.fetch_add(1, AcqRel);
        Change {
            store: self,
            made: false,
        }
    }

    /// The entry for `key`, if it is fresh at `now` (an expired one is removed and reported
    /// through `expired`), with what it says at `now`.
    pub(crate) fn get_entry<Q>(
        &self,
        key: &Q,
        now: Instant,
        expired: impl FnOnce(),
    ) -> Option<(Entry, Fresh)>
    where
        Q: Hash + Equivalent<Key> + Targeted + ?Sized,
    {
        if !self.accounts.presence.may_hold(key.presence_hash()) {
            return None;
        }
        let e = self.cache.get(key)?;
        let fresh = self.fresh(&e, now);
        if fresh.is_none() {
            self.remove_expired(key, now, expired);
        }
        Some(e).zip(fresh)
    }

    /// What `entry` says at `now`, if it is fresh then.
    pub(crate) fn fresh(&self, entry: &Entry, now: Instant) -> Option<Fresh> {
        entry.fresh_at(self.since_epoch(now))
    }

    /// What a weakly held entry says at `now`, if it is fresh then and its answer is still
    /// alive.
    pub(crate) fn fresh_weak(&self, weak: &WeakEntry, now: Instant) -> Option<Fresh> {
        let answer = match &weak.answer {
            Some(a) => Some(a.upgrade()?),
            None => None,
        };
        let mut fresh = self.fresh(&weak.entry, now)?;
        fresh.answer = answer;
        Some(fresh)
    }

    fn remove_expired<Q>(&self, key: &Q, now: Instant, expired: impl FnOnce())
    where
        Q: Hash + Equivalent<Key> + ?Sized,
    {
        let now = self.since_epoch(now);
        let mut change = self.change();
        // Only if it is still the same expired entry: a fresh one may have replaced it.
        if let Some((k, v)) = self.cache.remove_if(key, |v| v.expired_at(now)) {
            self.accounts.left(&k, &v);
            change.made();
            expired();
        }
    }

    /// The fresh entry for `key` at `now`. An expired entry is removed and reported through
    /// `expired`.
    pub(crate) fn get<Q>(&self, key: &Q, now: Instant, expired: impl FnOnce()) -> Option<Fresh>
    where
        Q: Hash + Equivalent<Key> + Targeted + ?Sized,
    {
        self.get_entry(key, now, expired).map(|(_, fresh)| fresh)
    }

    /// The fresh entry for `key` at `now`, without touching its recency or removing it.
    pub(crate) fn peek<Q>(&self, key: &Q, now: Instant) -> Option<Fresh>
    where
        Q: Hash + Equivalent<Key> + Targeted + ?Sized,
    {
        if !self.accounts.presence.may_hold(key.presence_hash()) {
            return None;
        }
        self.cache.peek(key)?.fresh_at(self.since_epoch(now))
    }

    /// Whether an entry of `key` with `answer` fits: no entry may take more than its shard's
    /// share of `max_bytes`.
    pub(crate) fn fits(&self, key: &Key, answer: Option<&Arc<Answer>>) -> bool {
        let len = key.as_str().len() as u64 + answer.map_or(0, |a| a.weight());
        len.max(self.floor) <= self.heaviest
    }

    /// Whether `key`'s entry (fresh or not) arrived more than a millisecond after `arrived`.
    /// An entry keeps its expiry and its TTL to the millisecond, not its arrival: the arrival
    /// read back from them is up to 1 ms late, so an entry that arrived within about a
    /// millisecond of `arrived` does not count as newer (the later stored then wins).
    pub(crate) fn holds_newer(&self, key: &Key, arrived: Instant) -> bool {
        if !self.accounts.presence.may_hold(key.presence_hash()) {
            return false;
        }
        let Some(e) = self.cache.peek(key) else {
            return false;
        };
        let entry_arrived = e.expires_us.saturating_sub(u64::from(e.ttl_ms) * 1_000);
        let at = u64::try_from(self.since_epoch(arrived).as_micros()).unwrap_or(u64::MAX);
        entry_arrived > at.saturating_add(1_001)
    }

    /// Remembers `stored` under `key`; false (nothing stored) when the entry alone would take
    /// more than its shard's share of `max_bytes`.
    pub(crate) fn insert(&self, key: Key, mut stored: Stored, mut now: Instant) -> bool {
        if !self.fits(&key, stored.answer.as_ref()) {
            return false;
        }
        // An entry dated before the epoch (a peer's, dated from the peer's request, on a clock
        // younger than `OLDEST`): it is dated from the epoch, the time before it counted in its
        // age, and it expires when it would have.
        let before = self.epoch.saturating_duration_since(now);
        if !before.is_zero() {
            now = self.epoch;
            stored.ttl = stored.ttl.saturating_sub(before);
            stored.age = stored.age.saturating_add(before);
        }
        let answer_bytes = stored.answer.as_ref().map_or(0, |a| a.weight());
        let len = key.as_str().len() as u64 + answer_bytes;
        let expires = self.since_epoch(now).saturating_add(stored.ttl);
        let entry = Entry {
            // Rounded up: an entry never expires before its TTL.
            expires_us: u64::try_from(expires.as_nanos().div_ceil(1_000)).unwrap_or(u64::MAX),
            ttl_ms: u32::try_from(stored.ttl.as_millis()).unwrap_or(u32::MAX),
            origin_age_s: u32::try_from(stored.age.as_secs()).unwrap_or(u32::MAX),
            status: stored.status,
            answer: stored.answer,
            source: stored.source,
        };
        // Made from the start: the insert below may evict other entries.
        let mut change = self.change();
        change.made();
        // quick_cache reports the value an insert replaces through `on_evict`, as if it had
        // been evicted; removing it first (which reports nothing) keeps `evictions` to
        // entries pushed out for capacity.
        self.remove(&key);
        self.accounts.key_bytes.fetch_add(len, AcqRel);
        // Counted before it is held: a lookup never finds it uncounted (see `Presence`).
        self.accounts.presence.entered(key.presence_hash());
        self.cache.insert(key, entry);
        self.inserted.fetch_add(1, SeqCst);
        drop(change);
        true
    }

    /// How many entries were stored so far. Read before a lookup that misses and again once
    /// the read's 2xx has settled its ticket: the same count means nothing was stored in
    /// between — a local 404 lands inside its key's critical section, which the 2xx's ticket
    /// takes too, so one stored for this key before the 2xx settled is counted by then.
    pub(crate) fn inserted(&self) -> u64 {
        self.inserted.load(SeqCst)
    }

    /// Forgets `key`; whether it was there.
    pub(crate) fn remove<Q>(&self, key: &Q) -> bool
    where
        Q: Hash + Equivalent<Key> + Targeted + ?Sized,
    {
        if !self.accounts.presence.may_hold(key.presence_hash()) {
            return false;
        }
        let mut change = self.change();
        let removed = self.cache.remove(key);
        if let Some((k, v)) = &removed {
            self.accounts.left(k, v);
            change.made();
        }
        removed.is_some()
    }

    /// Forgets every key for which `forget` is true; how many.
    pub(crate) fn remove_where(&self, forget: impl Fn(&Key) -> bool) -> u64 {
        // Made from the start: `forget` may panic halfway, some keys gone.
        let mut change = self.change();
        change.made();
        let removed = AtomicU64::new(0);
        self.cache.retain(|k, v| {
            let f = forget(k);
            if f {
                bump(&removed);
                self.accounts.left(k, v);
            }
            !f
        });
        drop(change);
        removed.into_inner()
    }

    /// Forgets everything; how many entries there were. (One pass that accounts for each key,
    /// rather than quick_cache's `clear`, which reports nothing: a clear is rare.)
    pub(crate) fn clear(&self) -> u64 {
        self.remove_where(|_| true)
    }

    pub(crate) fn len(&self) -> u64 {
        self.cache.len() as u64
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The budget for key text and answers (`max_bytes`, rounded down to a whole number of entry floors).
    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Bytes the store holds: its tables (entries and index, as quick_cache counts them), the
    /// text of the keys in them and their answers' header and body bytes.
    pub(crate) fn memory_used(&self) -> u64 {
        self.cache.memory_used().total() as u64
            + self.accounts.presence.bytes()
            + self.accounts.key_bytes.load(Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_at_every_small_capacity() {
        for cap in [1u64, 2, 3, 10, 100, 5000] {
            let ev = Arc::new(AtomicU64::new(0));
            let s = Store::new(cap, cap * 512, ev.clone());
            let now = Instant::now();
            for i in 0..cap * 3 {
                s.insert(
                    Key::with_text(&format!("k{i}")),
                    stored(StatusCode::NOT_FOUND, Duration::from_secs(60)),
                    now,
                );
                assert!(s.len() <= cap, "cap {cap}: {}", s.len());
            }
            assert!(s.len() >= 1, "cap {cap} holds nothing");
            assert_eq!(ev.load(Relaxed), cap * 3 - s.len(), "cap {cap}");
        }
    }

    /// Whatever the keys' lengths, the key text held stays within `max_bytes` and the entries
    /// within `capacity`, and the accounting returns to zero when everything leaves.
    #[test]
    fn bounded_in_bytes_whatever_the_key_lengths() {
        for (cap, max_bytes) in [
            (1u64, 4096u64),
            (10, 4096),
            (100, 40_000),
            (5000, 2_000_000),
        ] {
            let s = Store::new(cap, max_bytes, Arc::new(AtomicU64::new(0)));
            let now = Instant::now();
            for i in 0..cap * 3 {
                let len = [1usize, 50, 900, 3000, 20_000][i as usize % 5];
                let k = Key::with_text(&format!("{i}-{}", "k".repeat(len)));
                s.insert(
                    k,
                    stored(StatusCode::NOT_FOUND, Duration::from_secs(60)),
                    now,
                );
                let text = s.accounts.key_bytes.load(Acquire);
                assert!(s.len() <= cap, "cap {cap}: {} entries", s.len());
                assert!(
                    text <= max_bytes,
                    "cap {cap}: {text} B of key text > {max_bytes}"
                );
            }
            assert!(s.len() >= 1, "cap {cap} holds nothing");
            s.clear();
            assert_eq!(s.accounts.key_bytes.load(Acquire), 0, "cap {cap}");
        }
    }

    /// The buckets' counts, recounted from what quick_cache holds.
    fn recount(s: &Store) -> Vec<u32> {
        let p = &s.accounts.presence;
        let mut n = vec![0u32; p.counts.len()];
        for (k, _) in s.cache.iter() {
            n[p.index(k.presence_hash())] += 1;
        }
        n
    }

    /// Whether every bucket counts none (a store emptied).
    fn presence_is_empty(s: &Store) -> bool {
        s.accounts
            .presence
            .counts
            .iter()
            .all(|c| c.load(Acquire) == 0)
    }

    /// Each bucket's count is the number of held keys in it (or stuck at its top), and no held
    /// key is ever said absent.
    fn presence_is_exact(s: &Store, keys: &[Key]) -> Result<(), String> {
        let p = &s.accounts.presence;
        for k in keys {
            if s.cache.peek(k).is_some() && !p.may_hold(k.presence_hash()) {
                return Err(format!("{} is held but said absent", k.as_str()));
            }
        }
        for (i, held) in recount(s).into_iter().enumerate() {
            let count = p.counts[i].load(Acquire);
            if count != STUCK && u32::from(count) != held {
                return Err(format!("bucket {i}: count {count}, {held} held"));
            }
        }
        Ok(())
    }

    #[derive(Clone, Debug)]
    enum StoreOp {
        Insert(usize, u64),
        Remove(usize),
        RemoveWhere(usize),
        Get(usize, u64),
        Clear,
    }

    fn store_op(keys: usize) -> impl proptest::strategy::Strategy<Value = StoreOp> {
        use proptest::prelude::*;
        prop_oneof![
            40 => (0..keys, 1u64..5).prop_map(|(k, s)| StoreOp::Insert(k, s)),
            10 => (0..keys).prop_map(StoreOp::Remove),
            2 => (2..5usize).prop_map(StoreOp::RemoveWhere),
            10 => (0..keys, 0u64..6).prop_map(|(k, t)| StoreOp::Get(k, t)),
            1 => Just(StoreOp::Clear),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::with_cases(128)
        })]
        /// Whatever enters and leaves the store (inserts, replacements, evictions for capacity
        /// or bytes, removals, expiry, clears), in buckets few enough to share and to fill to
        /// their top: a held key is never said absent, and the counts are exact.
        #[test]
        fn presence_never_says_absent_of_a_held_key(
            cap in proptest::prop_oneof![1u64..40, 250u64..300],
            buckets in proptest::prop_oneof![
                proptest::strategy::Just(1usize),
                proptest::strategy::Just(2),
                proptest::strategy::Just(8),
                proptest::strategy::Just(64)
            ],
            long in proptest::bool::ANY,
            ops in proptest::collection::vec(store_op(300), 1..700),
        ) {
            let max_bytes = if long { cap * 64 } else { cap * 1024 };
            let s = Store::with_buckets(cap, max_bytes, Arc::new(AtomicU64::new(0)), buckets);
            let keys: Vec<Key> = (0..300)
                .map(|i| Key::with_text(&format!("k{i}{}", "x".repeat(i % 7 * 20))))
                .collect();
            let t0 = s.epoch;
            for op in ops {
                match op {
                    StoreOp::Insert(k, secs) => {
                        let st = stored(StatusCode::NOT_FOUND, Duration::from_secs(secs));
                        s.insert(keys[k].clone(), st, t0);
                    }
                    StoreOp::Remove(k) => {
                        s.remove(&keys[k]);
                    }
                    StoreOp::RemoveWhere(m) => {
                        s.remove_where(|k| k.as_str().len() % m == 0);
                    }
                    StoreOp::Get(k, secs) => {
                        let found = s.get(&keys[k], t0 + Duration::from_secs(secs), || ());
                        let held = s.cache.peek(&keys[k]).is_some_and(|e| {
                            e.fresh_at(s.since_epoch(t0 + Duration::from_secs(secs))).is_some()
                        });
                        proptest::prop_assert_eq!(found.is_some(), held);
                    }
                    StoreOp::Clear => {
                        s.clear();
                    }
                }
                presence_is_exact(&s, &keys).map_err(proptest::test_runner::TestCaseError::fail)?;
            }
            s.clear();
            let p = &s.accounts.presence;
            proptest::prop_assert!(p.counts.iter().all(|c| matches!(c.load(Acquire), 0 | STUCK)));
        }
    }

    /// A bucket holding more keys than it can count stops at its top and says "maybe" for
    /// good: it never wraps to say "none" of a held key.
    #[test]
    fn a_full_bucket_stays_stuck_rather_than_wrap() {
        let s = Store::with_buckets(400, 400 * 1024, Arc::new(AtomicU64::new(0)), 1);
        let keys: Vec<Key> = (0..300).map(|i| Key::with_text(&format!("k{i}"))).collect();
        let st = || stored(StatusCode::NOT_FOUND, Duration::from_secs(60));
        for k in &keys {
            s.insert(k.clone(), st(), s.epoch);
        }
        assert_eq!(s.len(), 300);
        presence_is_exact(&s, &keys).unwrap();
        assert_eq!(s.accounts.presence.counts[0].load(Acquire), STUCK);
        for k in &keys[1..] {
            s.remove(k);
        }
        assert!(
            s.get(&keys[0], s.epoch, || ()).is_some(),
            "the one left is found"
        );
        s.clear();
        assert!(
            s.accounts.presence.may_hold(keys[0].presence_hash()),
            "stuck: maybe"
        );
    }

    /// One target held under many credentials (a URL that is 404 for every user, with
    /// `Credentials::Fingerprint`) spreads over the buckets like as many targets: it does not
    /// fill one bucket to its top for good.
    #[test]
    fn one_target_under_many_credentials_fills_no_bucket() {
        let s = Store::new(1_000, 1_000 * 1024, Arc::new(AtomicU64::new(0)));
        let keys: Vec<Key> = (1..=300u64)
            .map(|c| Key::id("/records/gone".to_owned(), c * 2 + 1).unwrap())
            .collect();
        for k in &keys {
            s.insert(
                k.clone(),
                stored(StatusCode::NOT_FOUND, Duration::from_secs(60)),
                s.epoch,
            );
        }
        assert_eq!(s.len(), 300);
        presence_is_exact(&s, &keys).unwrap();
        let p = &s.accounts.presence;
        let top = p.counts.iter().map(|c| c.load(Acquire)).max().unwrap();
        assert!(top < 16, "one bucket counts {top} of the 300 keys");
        s.clear();
        assert!(p.counts.iter().all(|c| c.load(Acquire) == 0));
    }

    /// Threads inserting, replacing and removing the same few keys at once, through a store
    /// small enough to evict: once they are done, the counts are exact.
    #[test]
    fn presence_stays_exact_under_racing_inserts_and_removals() {
        for round in 0..20u64 {
            let s = Store::with_buckets(4, 4 * 1024, Arc::new(AtomicU64::new(0)), 4);
            let keys: Vec<Key> = (0..8).map(|i| Key::with_text(&format!("k{i}"))).collect();
            let now = s.epoch;
            std::thread::scope(|scope| {
                for t in 0..4u64 {
                    let (s, keys) = (&s, &keys);
                    scope.spawn(move || {
                        let mut x = round * 31 + t * 7 + 1;
                        for _ in 0..2_000 {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            let k = &keys[(x % 8) as usize];
                            match x % 5 {
                                0 => {
                                    s.remove(k);
                                }
                                1 => {
                                    s.get(k, now, || ());
                                }
                                _ => {
                                    s.insert(
                                        k.clone(),
                                        stored(StatusCode::NOT_FOUND, Duration::from_secs(9)),
                                        now,
                                    );
                                }
                            }
                        }
                    });
                }
            });
            presence_is_exact(&s, &keys).unwrap();
            s.clear();
            assert!(presence_is_empty(&s));
        }
    }

    /// Review: `Known::AbsentAt` — a reader that saw `inserted()` count an insert and then looks
    /// its key up must find it (its bucket's count is seen), with real threads.
    #[test]
    fn review_a_counted_insert_is_never_said_absent() {
        const N: usize = 20_000;
        let s = Store::new(
            N as u64 * 2,
            N as u64 * 2 * 400,
            Arc::new(AtomicU64::new(0)),
        );
        let keys: Vec<Key> = (0..N).map(|i| Key::with_text(&format!("k{i}"))).collect();
        let st = || stored(StatusCode::NOT_FOUND, Duration::from_secs(600));
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let (s, keys, done) = (&s, &keys, &done);
            scope.spawn(move || {
                for k in keys {
                    s.insert(k.clone(), st(), s.epoch);
                }
                done.store(true, Release);
            });
            scope.spawn(move || {
                let mut checked = 0u64;
                while !done.load(Acquire) {
                    let n = s.inserted() as usize;
                    if n == 0 {
                        continue;
                    }
                    let k = &keys[n - 1];
                    assert!(
                        s.get(k, s.epoch, || ()).is_some(),
                        "insert {n} counted, its key said absent"
                    );
                    assert!(s.peek(k, s.epoch).is_some());
                    checked += 1;
                }
                assert!(checked > 0);
            });
        });
        assert_eq!(s.len(), N as u64);
    }

    /// Review: every leaving path at once (replacement, capacity and byte eviction, removal,
    /// expiry, `remove_where`, clear) racing inserts in few, shared buckets: once quiet, the
    /// counts are exact and nothing held is said absent.
    #[test]
    fn review_presence_exact_under_every_leaving_path_at_once() {
        for round in 0..10u64 {
            for buckets in [1usize, 2, 16] {
                let s = Store::with_buckets(6, 6 * 128, Arc::new(AtomicU64::new(0)), buckets);
                let keys: Vec<Key> = (0..24)
                    .map(|i| Key::with_text(&format!("k{i}{}", "x".repeat(i % 4 * 60))))
                    .collect();
                let t0 = s.epoch;
                std::thread::scope(|scope| {
                    for t in 0..4u64 {
                        let (s, keys) = (&s, &keys);
                        scope.spawn(move || {
                            let mut x = round * 131 + t * 17 + buckets as u64 + 1;
                            for i in 0..3_000u64 {
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                let k = &keys[(x % 24) as usize];
                                let at = t0 + Duration::from_millis(i % 7);
                                match x % 11 {
                                    0 => {
                                        s.remove(k);
                                    }
                                    1 => {
                                        s.remove_where(|k| k.as_str().len() % 3 == 0);
                                    }
                                    2 if i % 50 == 0 => {
                                        s.clear();
                                    }
                                    3 | 4 => {
                                        s.get(k, at, || ());
                                    }
                                    _ => {
                                        let ttl = Duration::from_millis(x % 5);
                                        s.insert(k.clone(), stored(StatusCode::NOT_FOUND, ttl), t0);
                                    }
                                }
                            }
                        });
                    }
                });
                presence_is_exact(&s, &keys).unwrap();
                s.clear();
                assert!(presence_is_empty(&s));
                assert_eq!(s.accounts.key_bytes.load(Acquire), 0);
            }
        }
    }

    #[test]
    fn entries_are_32_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 32);
    }

    fn stored(status: StatusCode, ttl: Duration) -> Stored {
        Stored {
            status,
            answer: None,
            ttl,
            age: Duration::ZERO,
            source: TtlSource::Base,
        }
    }

    /// An entry never expires before its TTL and outlives it by less than a microsecond, at any
    /// sub-millisecond offset of its arrival; `remaining` never overstates what is left by more.
    #[test]
    fn expiry_is_exact_at_sub_millisecond_offsets() {
        let s = Store::new(10, 5120, Arc::new(AtomicU64::new(0)));
        let k = Key::with_text("k");
        for (offset_us, ttl_us) in [
            (0, 1_000),
            (900, 1_000),
            (1_999, 10_000),
            (123, 1_500),
            (999, 1),
        ] {
            let t0 = s.epoch + Duration::from_micros(offset_us) + Duration::from_nanos(400);
            let ttl = Duration::from_micros(ttl_us);
            s.insert(k.clone(), stored(StatusCode::NOT_FOUND, ttl), t0);
            let just_before = t0 + ttl - Duration::from_nanos(1);
            let f = s.get(&k, just_before, || panic!("expired early"));
            let f = f.unwrap_or_else(|| panic!("gone before its TTL: {offset_us} {ttl_us}"));
            assert!(f.remaining <= Duration::from_micros(1), "{:?}", f.remaining);
            assert!(
                s.get(&k, t0 + ttl + Duration::from_micros(1), || ())
                    .is_none()
            );
        }
    }

    #[test]
    fn age_includes_the_age_on_arrival() {
        let s = Store::new(10, 5120, Arc::new(AtomicU64::new(0)));
        let k = Key::with_text("k");
        let t0 = Instant::now();
        let e = Stored {
            status: StatusCode::NOT_FOUND,
            answer: None,
            ttl: Duration::from_secs(60),
            age: Duration::from_secs(30),
            source: TtlSource::Base,
        };
        s.insert(k.clone(), e, t0);
        let f = s.peek(&k, t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(f.age, Duration::from_secs(35));
        let left = f.remaining - Duration::from_secs(55);
        assert!(left < Duration::from_micros(1), "{:?}", f.remaining);
    }

    #[test]
    fn replacing_an_entry_is_not_an_eviction() {
        let ev = Arc::new(AtomicU64::new(0));
        let s = Store::new(10, 5120, ev.clone());
        let now = Instant::now();
        for status in [
            StatusCode::NOT_FOUND,
            StatusCode::GONE,
            StatusCode::NOT_FOUND,
        ] {
            s.insert(
                Key::with_text("k"),
                stored(status, Duration::from_secs(1)),
                now,
            );
        }
        assert_eq!((s.len(), ev.load(Relaxed)), (1, 0));
    }

    #[test]
    fn expiry_is_lazy_and_counted() {
        let s = Store::new(10, 5120, Arc::new(AtomicU64::new(0)));
        let t0 = s.epoch;
        let k = Key::with_text("a");
        s.insert(
            k.clone(),
            stored(StatusCode::GONE, Duration::from_secs(2)),
            t0,
        );
        let f = s
            .get(&k, t0 + Duration::from_millis(500), || {
                panic!("not expired")
            })
            .unwrap();
        assert_eq!(f.status, StatusCode::GONE);
        assert_eq!(f.age, Duration::from_millis(500));
        assert_eq!(f.remaining, Duration::from_millis(1500));
        let mut expired = 0;
        assert!(
            s.get(&k, t0 + Duration::from_secs(2), || expired += 1)
                .is_none()
        );
        assert_eq!((expired, s.len()), (1, 0));
    }
}
