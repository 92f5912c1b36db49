//! Retry budgets per scope: by default one per upstream host, so one host's outage never spends
//! another host's retries (Envoy scopes its budget per upstream cluster, gRPC per channel).
//!
//! The scopes live in a sharded map keyed by a seeded hash of the scope's name (the request's
//! authority, ASCII case-insensitive as RFC 3986 §3.2.2 makes the host, its userinfo left
//! out). A request deposits into its scope as it is sent: a service remembers the scope it
//! deposited into last ([`LastScope`]: an `Arc` that does not keep the scope in the map, and
//! when that budget's current slot ends), so a request to the same host as the one before
//! compares the name and adds — no lock, no hashing, no allocation, no reference count;
//! another host takes one shard's read lock. The scope a retry withdraws from is looked up
//! when a retry is decided, and held ([`Hold`], a count the sweep reads) from then on. The
//! map is bounded (`max_scopes`); scopes past the bound share one overflow budget, and a
//! scope idle for a whole window, held by no request in flight, is forgotten: all its
//! deposits and withdrawals have expired by then, so a fresh budget behaves exactly as the
//! forgotten one would have. A forgotten scope a service still remembers lives on until that
//! service sends elsewhere or is dropped (one per service at most).

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::{HeaderMap, Uri, header::HOST};
use tokio::time::Instant;

use super::budget::RetryBudget;

/// Shards of the scope map: requests for different hosts rarely meet on one lock.
const SHARDS: usize = 16;
/// How many scopes [`exhausted_scopes`](Scopes::exhausted_scopes) reports.
pub(crate) const TOP: usize = 8;
/// The name of the budget shared by scopes past `max_scopes`.
const OVERFLOW: &str = "(overflow)";
/// The name of the one budget of a layer scoped as a whole.
const LAYER: &str = "(layer)";
/// The longest scope name kept (bytes): a DNS name (253) with a port. A longer name — an
/// authority as long as a URI allows (64 KB) — shares the overflow budget, so `max_scopes`
/// bounds the memory held, not only the count.
pub(crate) const MAX_NAME: usize = 260;

/// Which requests share a retry budget. Default: [`BudgetScope::per_host`].
///
/// ```
/// use tower_negative_cache::StatusAwareRetryLayer;
/// use tower_negative_cache::retry::BudgetScope;
///
/// // One budget per host and first path segment (an API gateway's services).
/// let layer = StatusAwareRetryLayer::builder()
///     .budget_scope(BudgetScope::by(|uri, _headers| {
///         let host = uri.authority().map_or("", |a| a.as_str());
///         let service = uri.path().split('/').nth(1).unwrap_or("");
///         format!("{host}/{service}")
///     }))
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct BudgetScope(Kind);

type ScopeFn = Arc<dyn Fn(&Uri, &HeaderMap) -> String + Send + Sync>;

#[derive(Clone)]
enum Kind {
    PerHost,
    Layer,
    By(ScopeFn),
}

impl BudgetScope {
    /// One budget per upstream host: the request's authority (`host[:port]` of its URI, else
    /// its `Host` header, RFC 9110 §7.2) without any userinfo, compared ASCII
    /// case-insensitively; `a.test` and
    /// `a.test:80` are two scopes, as they are two authorities. Requests naming no host share
    /// one budget. The default.
    pub fn per_host() -> Self {
        BudgetScope(Kind::PerHost)
    }

    /// One budget for the whole layer (and its clones), whatever the request: the behaviour
    /// before per-host budgets.
    pub fn layer() -> Self {
        BudgetScope(Kind::Layer)
    }

    /// One budget per value of `f` (compared ASCII case-insensitively). Costs one call of `f`
    /// and the `String` it returns per request. A value longer than 260 bytes shares the
    /// overflow budget, as every scope name does.
    pub fn by(f: impl Fn(&Uri, &HeaderMap) -> String + Send + Sync + 'static) -> Self {
        BudgetScope(Kind::By(Arc::new(f)))
    }
}

impl Default for BudgetScope {
    fn default() -> Self {
        Self::per_host()
    }
}

impl fmt::Debug for BudgetScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Kind::PerHost => "BudgetScope::per_host",
            Kind::Layer => "BudgetScope::layer",
            Kind::By(_) => "BudgetScope::by(..)",
        })
    }
}

/// The per-host scope's name: the request's authority, else its `Host` header's value.
fn host_name<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> &'a [u8] {
    // The userinfo is not the host (RFC 3986 §3.2: it ends at the authority's last `@`):
    // `alice:pw@h` and `bob:pw@h` are one upstream, and a password must not become a scope's
    // name (`budget_exhausted_scopes` shows it).
    without_userinfo(authority(uri, headers))
}

/// The request's authority as sent: the URI's, or its `Host`.
fn authority<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> &'a [u8] {
    match uri.authority() {
        Some(a) => a.as_str().as_bytes(),
        None => headers.get(HOST).map_or(&b""[..], |h| h.as_bytes()),
    }
}

/// ASCII uppercase to lowercase in the 8 bytes of `x` at once (other bytes unchanged).
fn lowercase(x: u64) -> u64 {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let low7 = x & !HIGH;
    // Bit 7 of each byte: set if the byte is at least 'A' (0x41 + 0x3f = 0x80)...
    let at_least_a = low7.wrapping_add(0x3f3f_3f3f_3f3f_3f3f);
    // ...and if it is above 'Z' (0x5b + 0x25 = 0x80); bytes >= 0x80 are not ASCII.
    let above_z = low7.wrapping_add(0x2525_2525_2525_2525);
    let upper = at_least_a & !above_z & !x & HIGH;
    x | (upper >> 2)
}

/// `authority` after its last `@` (its host and port), or all of it: 8 bytes at a time, as
/// `hash` reads names (a byte-by-byte search cost a tenth of a first-attempt success's path).
fn without_userinfo(authority: &[u8]) -> &[u8] {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const AT: u64 = 0x4040_4040_4040_4040;
    // Whether a word holds an `@` byte: a zero byte of `word ^ AT` (exact, no false negative;
    // a false positive only costs the byte-wise search below).
    let has_at = |word: &[u8]| {
        let x = u64::from_le_bytes(word.try_into().unwrap_or_default()) ^ AT;
        x.wrapping_sub(ONES) & !x & HIGH != 0
    };
    let len = authority.len();
    let found = if len < 8 {
        authority.contains(&b'@')
    } else {
        // Whole words, then the last 8 bytes (overlapping the last word): no copy of a tail.
        authority.chunks_exact(8).any(has_at) || has_at(&authority[len - 8..])
    };
    if !found {
        return authority;
    }
    match authority.iter().rposition(|&b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    }
}

/// `s`, its hold count raised if `hold`.
fn held(s: Arc<Scoped>, hold: bool) -> Arc<Scoped> {
    if hold {
        s.holds.fetch_add(1, Relaxed);
    }
    s
}

/// One scope's budget and name.
pub(crate) struct Scoped {
    pub(crate) name: Arc<str>,
    pub(crate) budget: RetryBudget,
    /// Forgotten by the map (idle for a window): a service that kept it (see
    /// [`Scopes::deposit`]) looks its scope up again.
    retired: AtomicBool,
    /// Requests in flight holding it for a withdrawal ([`Hold`]): the map keeps it while any
    /// does. Counted apart from the `Arc`'s references, which services keep too.
    holds: AtomicUsize,
}

/// A service's memory of the scope it deposited into last (see [`Scopes::deposit`]), and of
/// when the slot of that budget it deposited into ends.
#[derive(Clone)]
pub(crate) struct LastScope {
    scope: Arc<Scoped>,
    until: Option<Instant>,
}

/// A request's hold on its scope, from its first retry decision to its end: a request waiting
/// through a `Retry-After` longer than the window looks idle, but forgotten under it the scope
/// would be made again for the host's new requests, and the host would have two budgets.
pub(crate) struct Hold(Arc<Scoped>);

impl std::ops::Deref for Hold {
    type Target = Scoped;
    fn deref(&self) -> &Scoped {
        &self.0
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.holds.fetch_sub(1, Relaxed);
    }
}

/// The map's keys are already seeded hashes: hashing them again would cost for nothing.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = RwLock<HashMap<u64, Arc<Scoped>, BuildHasherDefault<Identity>>>;

/// The budgets of a layer, one per scope.
pub(crate) struct Scopes {
    scope: BudgetScope,
    settings: (f64, u32, Duration),
    max: usize,
    /// The one budget of `BudgetScope::layer`, and the overflow budget of the others.
    shared: Arc<Scoped>,
    shards: Box<[Shard]>,
    len: AtomicUsize,
    seed: u64,
    epoch: Instant,
    /// When idle scopes were last swept, in ns since `epoch`: at most once per tenth of a
    /// window, so a flood of new hosts past the bound doesn't sweep on every request.
    swept: AtomicU64,
    /// The scopes whose budget ran out most often (Space-Saving, Metwally et al. 2005): a
    /// scope in the table counts exactly from when it entered; one entering evicts the
    /// smallest count and inherits it, so the busiest scopes stay and counts never undercount.
    /// Locked only when a budget is spent.
    top: Mutex<Vec<(Arc<str>, u64)>>,
}

impl Scopes {
    pub(crate) fn new(
        scope: BudgetScope,
        settings: (f64, u32, Duration),
        max: usize,
    ) -> Result<Self, crate::BuildError> {
        let (ratio, min, window) = settings;
        let epoch = Instant::now();
        let name = if matches!(scope.0, Kind::Layer) {
            LAYER
        } else {
            OVERFLOW
        };
        let shared = Arc::new(Scoped {
            name: name.into(),
            budget: RetryBudget::new(ratio, min, window)?,
            retired: AtomicBool::new(false),
            holds: AtomicUsize::new(0),
        });
        Ok(Scopes {
            scope,
            settings,
            max,
            shared,
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            len: AtomicUsize::new(0),
            seed: std::collections::hash_map::RandomState::new().hash_one(0u64) | 1,
            epoch,
            swept: AtomicU64::new(0),
            top: Mutex::new(Vec::with_capacity(TOP)),
        })
    }

    /// The budget of the request with this URI and headers, created at `now` if new, held
    /// (kept in the map) until the returned [`Hold`] is dropped.
    pub(crate) fn scope_of(&self, uri: &Uri, headers: &HeaderMap, now: Instant) -> Hold {
        let scope = match &self.scope.0 {
            Kind::Layer => held(self.shared.clone(), true),
            Kind::PerHost => self.lookup(host_name(uri, headers), now, true),
            Kind::By(f) => self.lookup(f(uri, headers).as_bytes(), now, true),
        };
        Hold(scope)
    }

    /// A request with this URI and headers is sent at `now`: its scope's budget gets its
    /// deposit. `last` is the calling service's own memory of the scope it deposited into
    /// last: a service sends to one host, mostly, and finding it there (same name, not
    /// retired) takes no lock and writes nothing shared but the deposit — the map is asked
    /// only when the host changes. The memory is a strong reference, but it does not keep the
    /// scope in the map (only a [`Hold`] does): a retired scope lives on only until the
    /// service sends elsewhere or is dropped. The scope a retry withdraws from is looked up
    /// when one is decided (see [`scope_of`](Self::scope_of)): the same one, by the same name.
    pub(crate) fn deposit(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        now: Instant,
        last: &mut Option<LastScope>,
    ) {
        let name = match &self.scope.0 {
            Kind::Layer => return self.shared.budget.deposit_at(now),
            Kind::By(f) => {
                return self
                    .named(f(uri, headers).as_bytes(), now)
                    .budget
                    .deposit_at(now);
            }
            Kind::PerHost => authority(uri, headers),
        };
        let same = |l: &&mut LastScope, name: &[u8]| {
            l.scope.name.as_bytes() == name && !l.scope.retired.load(Relaxed)
        };
        // The authority as sent is the remembered name when it has no userinfo (a name never
        // holds an `@`): then it is not scanned for one.
        if let Some(l) = last.as_mut().filter(|l| same(l, name)) {
            return l.scope.budget.deposit_before(now, &mut l.until);
        }
        let name = without_userinfo(name);
        if let Some(l) = last.as_mut().filter(|l| same(l, name)) {
            return l.scope.budget.deposit_before(now, &mut l.until);
        }
        let scope = self.named(name, now);
        let mut until = None;
        scope.budget.deposit_before(now, &mut until);
        // The overflow budget is not remembered: the host may get a place of its own later. Nor
        // is a scope whose name is not the host's bytes (up to case): a name that is not UTF-8
        // is kept lossily, and another host whose bytes spell that name has a scope of its own.
        let remember =
            !Arc::ptr_eq(&scope, &self.shared) && scope.name.as_bytes().eq_ignore_ascii_case(name);
        *last = remember.then_some(LastScope { scope, until });
    }

    /// The budget of the scope `name`, created at `now` if new (or the overflow budget).
    pub(crate) fn named(&self, name: &[u8], now: Instant) -> Arc<Scoped> {
        self.lookup(name, now, false)
    }

    /// [`named`](Self::named), and with `hold` its hold count raised under the map's lock,
    /// so that no sweep forgets it in between (see [`Hold`]).
    fn lookup(&self, name: &[u8], now: Instant, hold: bool) -> Arc<Scoped> {
        if name.len() > MAX_NAME {
            return held(self.shared.clone(), hold);
        }
        let hash = self.hash(name);
        let shard = &self.shards[(hash >> 60) as usize % SHARDS];
        {
            let map = shard.read().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = map.get(&hash) {
                return held(self.verified(s, name), hold);
            }
        }
        if self.len.load(Relaxed) >= self.max {
            self.sweep(now);
        }
        let mut map = shard.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(&hash) {
            return held(self.verified(s, name), hold);
        }
        // Reserve a place first, so racing inserts never take the map past `max`.
        if self
            .len
            .fetch_update(Relaxed, Relaxed, |n| (n < self.max).then_some(n + 1))
            .is_err()
        {
            return held(self.shared.clone(), hold);
        }
        let (ratio, min, window) = self.settings;
        let scoped = Arc::new(Scoped {
            name: String::from_utf8_lossy(name).into(),
            budget: RetryBudget::starting_at(ratio, min, window, now),
            retired: AtomicBool::new(false),
            holds: AtomicUsize::new(usize::from(hold)),
        });
        map.insert(hash, scoped.clone());
        scoped
    }

    /// `s`, if it is really `name`'s: two names with one hash share the overflow budget rather
    /// than one another's.
    fn verified(&self, s: &Arc<Scoped>, name: &[u8]) -> Arc<Scoped> {
        let known = s.name.as_bytes();
        // Byte for byte first: the same host is almost always written the same way. A name
        // that is not UTF-8 (obs-text in a `Host` field) is kept lossily: compared so.
        if known == name
            || known.eq_ignore_ascii_case(name)
            || (!name.is_ascii()
                && String::from_utf8_lossy(name)
                    .as_bytes()
                    .eq_ignore_ascii_case(known))
        {
            s.clone()
        } else {
            self.shared.clone()
        }
    }

    /// A multiply-xor hash over the name's ASCII-lowercased bytes, 8 at a time, from a
    /// per-layer random seed: names an attacker chooses can't be aimed at one shard or one
    /// hash without knowing the seed, and a collision only sends a scope to the overflow
    /// budget (names are compared). Per byte it would cost a fifth of a request's path.
    fn hash(&self, name: &[u8]) -> u64 {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut h = self.seed ^ (name.len() as u64).wrapping_mul(K);
        let mut chunks = name.chunks_exact(8);
        for c in &mut chunks {
            let word = u64::from_le_bytes(c.try_into().unwrap_or_default());
            h = (h ^ lowercase(word)).wrapping_mul(K).rotate_left(29);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            h = (h ^ lowercase(u64::from_le_bytes(last)))
                .wrapping_mul(K)
                .rotate_left(29);
        }
        h ^ (h >> 32)
    }

    /// Forgets the scopes idle for a whole window and held by no request in flight, at most
    /// once per tenth of a window.
    fn sweep(&self, now: Instant) {
        let at = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let every = (self.settings.2 / 10).as_nanos() as u64;
        let last = self.swept.load(Relaxed);
        if last != 0 && at < last.saturating_add(every) {
            return;
        }
        if self
            .swept
            .compare_exchange(last, at.max(1), Relaxed, Relaxed)
            .is_err()
        {
            return;
        }
        for shard in self.shards.iter() {
            let mut map = shard.write().unwrap_or_else(|p| p.into_inner());
            let before = map.len();
            // A request in flight holds its scope for its next withdrawal (see `Hold`); a
            // service's memory of its last scope holds nothing.
            map.retain(|_, s| {
                let forget = s.holds.load(Relaxed) == 0 && s.budget.idle_at(now);
                if forget {
                    s.retired.store(true, Relaxed);
                }
                !forget
            });
            self.len.fetch_sub(before - map.len(), Relaxed);
        }
    }

    /// Counts a request refused a retry because `scope`'s budget was spent.
    pub(crate) fn exhausted(&self, scope: &Scoped) {
        let mut top = self.top.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = top.iter_mut().find(|(n, _)| Arc::ptr_eq(n, &scope.name)) {
            e.1 += 1;
        } else if let Some(e) = top.iter_mut().find(|(n, _)| **n == *scope.name) {
            // The same scope, forgotten while idle and made again: one row.
            e.0 = scope.name.clone();
            e.1 += 1;
        } else if top.len() < TOP {
            top.push((scope.name.clone(), 1));
        } else if let Some(min) = top.iter_mut().min_by_key(|(_, c)| *c) {
            *min = (scope.name.clone(), min.1 + 1);
        }
    }

    /// The scopes whose budget ran out most often, busiest first, at most [`TOP`].
    pub(crate) fn exhausted_scopes(&self) -> Vec<(String, u64)> {
        let top = self.top.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = top.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// Scopes tracked now (the overflow budget not counted).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len.load(Relaxed)
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudgets")
            .field("scope", &self.scope)
            .field("budget", &self.shared.budget)
            .field("max_scopes", &self.max)
            .field("scopes", &self.len.load(Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WINDOW: Duration = Duration::from_secs(10);

    fn scopes(ratio: f64, min: u32, max: usize) -> Scopes {
        Scopes::new(BudgetScope::per_host(), (ratio, min, WINDOW), max).unwrap()
    }

    #[test]
    fn the_userinfo_is_left_out_of_a_hosts_name() {
        for (authority, host) in [
            ("h.test", "h.test"),
            ("h.test:8080", "h.test:8080"),
            ("alice@h.test", "h.test"),
            ("alice:pw@h.test:80", "h.test:80"),
            ("a@b@h", "h"),
            (
                "a-very-long-user-name:and-a-password@records.internal:8443",
                "records.internal:8443",
            ),
            ("@h", "h"),
            ("h@", ""),
            ("", ""),
            ("\u{80}\u{c0}h.test", "\u{80}\u{c0}h.test"),
        ] {
            assert_eq!(
                without_userinfo(authority.as_bytes()),
                host.as_bytes(),
                "{authority}"
            );
        }
        for n in 0..40 {
            let mut name = vec![b'x'; n];
            assert_eq!(without_userinfo(&name), &name[..]);
            for at in 0..n {
                name[at] = b'@';
                assert_eq!(without_userinfo(&name), &name[at + 1..], "{n} {at}");
                name[at] = b'x';
            }
        }
    }

    #[test]
    fn lowercase_folds_ascii_uppercase_only() {
        for b in 0..=255u8 {
            let word = u64::from_le_bytes([b, b'A', b'z', b, 0xff, b'@', b'[', b]);
            let want = u64::from_le_bytes(
                [b, b'A', b'z', b, 0xff, b'@', b'[', b].map(|c| c.to_ascii_lowercase()),
            );
            assert_eq!(lowercase(word), want, "byte {b:#x}");
        }
    }

    #[test]
    fn a_known_host_is_found_again_whatever_its_case() {
        let s = scopes(0.2, 10, 16);
        let now = Instant::now();
        let a = s.named(b"Records.Internal:8080", now);
        let b = s.named(b"records.internal:8080", now);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &s.named(b"other:8080", now)));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn hosts_past_the_bound_share_the_overflow_budget_and_idle_hosts_are_forgotten() {
        let s = scopes(0.0, 1, 2);
        let t0 = Instant::now();
        // No request holds a afterwards (a request in flight keeps its scope).
        let a = {
            let a = s.named(b"a", t0);
            a.budget.deposit_at(t0);
            Arc::downgrade(&a)
        };
        s.named(b"b", t0).budget.deposit_at(t0);
        let c = s.named(b"c", t0);
        let d = s.named(b"d", t0);
        assert_eq!(&*c.name, OVERFLOW);
        assert!(Arc::ptr_eq(&c, &d), "c and d share the overflow budget");
        assert_eq!(s.len(), 2);
        // b is used again at 10 s; a, idle for a whole window after its slot, is forgotten
        // for c at 15 s.
        let later = t0 + WINDOW + Duration::from_secs(5);
        s.named(b"b", t0 + WINDOW).budget.deposit_at(t0 + WINDOW);
        let c = s.named(b"c", later);
        assert_eq!(&*c.name, "c");
        assert_eq!(s.len(), 2);
        assert!(a.upgrade().is_none(), "a was forgotten");
    }

    #[test]
    fn a_scope_held_by_a_request_in_flight_is_not_forgotten() {
        let s = scopes(0.0, 1, 2);
        let t0 = Instant::now();
        // A request waiting through a Retry-After longer than the window holds a.
        let uri: Uri = "http://a/x".parse().unwrap();
        let held = s.scope_of(&uri, &HeaderMap::new(), t0);
        held.budget.deposit_at(t0);
        drop(s.named(b"b", t0));
        let later = t0 + WINDOW + Duration::from_secs(5);
        // c sweeps: b, idle and held by none, is forgotten; a is kept.
        assert_eq!(&*s.named(b"c", later).name, "c");
        assert!(
            Arc::ptr_eq(&s.named(b"a", later), &held.0),
            "a was made again"
        );
        assert_eq!(s.len(), 2);
    }

    /// A service's memory of its last scope is used only while it is that host's scope in
    /// the map: it keeps no scope from being forgotten, a host forgotten while idle gets its
    /// deposits in the new scope (never the retired one, whose withdrawals nobody would see),
    /// and the overflow budget is never remembered.
    #[test]
    fn a_remembered_scope_is_used_only_while_it_is_in_the_map() {
        let s = scopes(0.0, 1, 2);
        let t0 = Instant::now();
        let uri = |host: &str| format!("http://{host}/x").parse::<Uri>().unwrap();
        let none = HeaderMap::new();
        let named = |last: &Option<LastScope>| last.as_ref().map(|l| l.scope.name.to_string());
        let mut last = None;
        s.deposit(&uri("a"), &none, t0, &mut last);
        assert_eq!(named(&last).as_deref(), Some("a"));
        let a = last.clone().unwrap().scope;
        assert!(Arc::ptr_eq(&a, &s.named(b"a", t0)));
        // Another host: looked up, then remembered instead.
        s.deposit(&uri("b"), &none, t0, &mut last);
        assert_eq!(named(&last).as_deref(), Some("b"));
        s.deposit(&uri("a"), &none, t0, &mut last);
        assert!(Arc::ptr_eq(&last.as_ref().unwrap().scope, &a));
        // The map is full: a third host gets the overflow budget, not remembered.
        s.deposit(&uri("c"), &none, t0, &mut last);
        assert!(last.is_none());
        // `a` idle for a whole window (b kept busy) is forgotten when `c` needs a place,
        // though a service remembers it...
        let mut stale = Some(LastScope {
            scope: a.clone(),
            until: None,
        });
        let mut busy = None;
        s.deposit(&uri("b"), &none, t0 + WINDOW, &mut busy);
        let later = t0 + WINDOW + Duration::from_secs(5);
        assert_eq!(&*s.named(b"c", later).name, "c");
        assert!(
            a.retired.load(Relaxed),
            "a memory keeps no scope in the map"
        );
        // ...and that service deposits where the map says now (the overflow budget: b and c
        // hold the places).
        s.deposit(&uri("a"), &none, later, &mut stale);
        assert!(stale.is_none());
        // A place again (b and c idle past their window): a gets a scope of its own.
        let much_later = later + WINDOW + WINDOW;
        s.deposit(&uri("a"), &none, much_later, &mut stale);
        let new_a = stale.expect("a place of its own").scope;
        assert!(!Arc::ptr_eq(&new_a, &a));
        assert!(Arc::ptr_eq(
            &new_a,
            &s.scope_of(&uri("a"), &none, much_later).0
        ));
    }

    /// The remembered scope is compared with the authority as sent first (no userinfo scan),
    /// then with the host it names: userinfo or not, one host deposits into one scope, and an
    /// authority whose userinfo spells the remembered host is another host.
    #[test]
    fn a_remembered_scope_is_found_whatever_the_userinfo() {
        let s = scopes(0.0, 1, 8);
        let t0 = Instant::now();
        let uri = |authority: &str| format!("http://{authority}/x").parse::<Uri>().unwrap();
        let none = HeaderMap::new();
        let mut last = None;
        s.deposit(&uri("h.test"), &none, t0, &mut last);
        let h = last.clone().unwrap().scope;
        for same in ["h.test", "alice:pw@h.test", "h.test@h.test", "@h.test"] {
            s.deposit(&uri(same), &none, t0, &mut last);
            assert!(Arc::ptr_eq(&last.as_ref().unwrap().scope, &h), "{same}");
        }
        s.deposit(&uri("h.test@other.test"), &none, t0, &mut last);
        assert_eq!(&*last.as_ref().unwrap().scope.name, "other.test");
        // Origin-form: the `Host` header names it.
        let mut host = HeaderMap::new();
        host.insert(HOST, http::HeaderValue::from_static("bob@h.test"));
        s.deposit(&"/x".parse().unwrap(), &host, t0, &mut last);
        assert!(Arc::ptr_eq(&last.as_ref().unwrap().scope, &h));
        assert_eq!(s.len(), 2);
    }

    /// A name that is not UTF-8 (obs-text in a `Host` field) is kept lossily: `\xff.test`'s
    /// scope is named `\u{fffd}.test`. Another host whose `Host` is those very bytes has a
    /// scope of its own in the map (its withdrawals go there), so its deposits must not go
    /// into the remembered scope of the first.
    #[test]
    fn a_host_spelling_a_lossy_name_is_not_the_remembered_scope() {
        let s = scopes(0.0, 1, 8);
        let t0 = Instant::now();
        let origin_form = |host: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(HOST, http::HeaderValue::from_bytes(host).unwrap());
            h
        };
        let (a, b) = (
            origin_form(b"\xff.test"),
            origin_form("\u{fffd}.test".as_bytes()),
        );
        let uri: Uri = "/x".parse().unwrap();
        let mut last = None;
        s.deposit(&uri, &a, t0, &mut last);
        s.deposit(&uri, &b, t0, &mut last);
        let withdrawn_from = s.scope_of(&uri, &b, t0);
        let deposited_into = last.as_ref().map(|l| l.scope.clone());
        assert!(
            deposited_into.is_some_and(|d| Arc::ptr_eq(&d, &withdrawn_from.0)),
            "b deposits into a scope it does not withdraw from"
        );
    }

    #[test]
    fn the_busiest_exhausted_scopes_are_kept_and_bounded() {
        let s = scopes(0.0, 0, 64);
        let now = Instant::now();
        for i in 0..40u64 {
            let scope = s.named(format!("host{i}").as_bytes(), now);
            // host0 is refused 100 times, the others once or twice.
            let times = if i == 0 { 100 } else { 1 + i % 2 };
            for _ in 0..times {
                s.exhausted(&scope);
            }
        }
        let top = s.exhausted_scopes();
        assert_eq!(top.len(), TOP);
        assert_eq!(top[0], ("host0".to_string(), 100));
        // Space-Saving: every count at least the scope's true count, the sum the true sum.
        let total: u64 = top.iter().map(|(_, c)| c).sum();
        assert_eq!(total, 100 + 39 + 20);
    }

    proptest! {
        #![proptest_config(proptest::test_runner::Config { failure_persistence: None, ..Default::default() })]

        /// Scopes don't share: with room for every host, each host's budget grants exactly
        /// what a budget of its own, alone, would grant, whatever the other hosts do — and so
        /// keeps the bound of one budget: retries <= ratio x its requests + its allowance.
        /// Requests deposit as services do (each with its memory of its last scope and of
        /// when that budget's slot ends: `Scopes::deposit`), retries withdraw as a response
        /// future does, across slots and windows.
        #[test]
        fn every_scope_answers_as_a_budget_of_its_own(
            ratio in 0.0f64..2.0,
            min_per_sec in 0u32..5,
            steps in proptest::collection::vec(
                (0u64..500, 0usize..4, 0usize..3, 0u8..4, 0u8..4), 1..300,
            ),
        ) {
            let s = scopes(ratio, min_per_sec, 16);
            let t0 = Instant::now();
            let mut now = t0;
            let mut alone: Vec<Option<RetryBudget>> = (0..4).map(|_| None).collect();
            let mut services: [Option<LastScope>; 3] = Default::default();
            let (mut requests, mut retries) = ([0u64; 4], [0u64; 4]);
            let none = HeaderMap::new();
            for (advance_ms, host, service, reqs, tries) in steps {
                now += Duration::from_millis(advance_ms);
                let uri: Uri = format!("http://host{host}.example:80/x").parse().unwrap();
                // The host's budget is made at its first request, as its reference.
                let _ = s.named(host_name(&uri, &none), now);
                let reference = alone[host].get_or_insert_with(|| {
                    RetryBudget::starting_at(ratio, min_per_sec, WINDOW, now)
                });
                for _ in 0..reqs {
                    s.deposit(&uri, &none, now, &mut services[service]);
                    reference.deposit_at(now);
                    requests[host] += 1;
                }
                for _ in 0..tries {
                    let granted = s.scope_of(&uri, &none, now).budget.withdraw_at(now);
                    prop_assert_eq!(granted, reference.withdraw_at(now), "host {} shares", host);
                    retries[host] += u64::from(granted);
                }
            }
            let run = (now - t0).as_secs_f64();
            let refills = 1.0 + run / (0.9 * WINDOW.as_secs_f64());
            for h in 0..4 {
                let bound = ratio * requests[h] as f64
                    + f64::from(min_per_sec) * WINDOW.as_secs_f64() * refills + 1.0;
                prop_assert!(retries[h] as f64 <= bound, "host {}: {} > {}", h, retries[h], bound);
            }
        }

        /// Whatever the spelling (case, userinfo, URI or `Host`, bytes that are not UTF-8) and
        /// whatever the services sent before, a request deposits into the scope its retries
        /// would withdraw from ([`Scopes::scope_of`]), as the map finds it: the memory of the
        /// last scope is a shortcut to it, never another scope.
        #[test]
        fn a_deposit_lands_in_the_scope_its_retries_withdraw_from(
            max in 1usize..6,
            steps in proptest::collection::vec((0u64..3000, 0usize..14, any::<bool>(), 0usize..3), 1..200),
        ) {
            const SPELLINGS: [&[u8]; 14] = [
                b"h.test", b"H.Test", b"alice:pw@h.test", b"h.test@h.test", b"@h.test",
                b"h.test:80", b"h.test@other.test", b"other.test", b"OTHER.test@h.test",
                b"\xff.test", b"\xef\xbf\xbd.test", b"a@\xff.test", b"\xEF\xBF\xBD.TEST",
                b"x@\xef\xbf\xbd.test",
            ];
            let s = scopes(0.5, 1, max);
            let mut now = Instant::now();
            let mut services: [Option<LastScope>; 3] = Default::default();
            for (advance_ms, spelling, in_uri, service) in steps {
                now += Duration::from_millis(advance_ms);
                let authority = SPELLINGS[spelling];
                let uri = std::str::from_utf8(authority)
                    .ok()
                    .filter(|_| in_uri)
                    .and_then(|a| format!("http://{a}/x").parse::<Uri>().ok());
                let (uri, headers) = match uri {
                    Some(uri) => (uri, HeaderMap::new()),
                    None => {
                        let mut h = HeaderMap::new();
                        h.insert(HOST, http::HeaderValue::from_bytes(authority).unwrap());
                        ("/x".parse().unwrap(), h)
                    }
                };
                s.deposit(&uri, &headers, now, &mut services[service]);
                if let Some(last) = &services[service] {
                    let withdrawn_from = s.scope_of(&uri, &headers, now);
                    prop_assert!(
                        Arc::ptr_eq(&last.scope, &withdrawn_from.0),
                        "{:?} deposited into {:?}, withdraws from {:?}",
                        String::from_utf8_lossy(authority), last.scope.name, withdrawn_from.name,
                    );
                }
            }
        }

        /// With fewer places than hosts, memory stays bounded and every budget — a host's or
        /// the overflow's — keeps the bound for the requests it was given.
        #[test]
        fn the_bound_holds_per_budget_when_hosts_overflow(
            max in 1usize..4,
            steps in proptest::collection::vec((0u64..3000, 0usize..12, 0u8..4, 0u8..4), 1..300),
        ) {
            let (ratio, min_per_sec) = (0.5, 1);
            let s = scopes(ratio, min_per_sec, max);
            let t0 = Instant::now();
            let mut now = t0;
            // Per budget (by address): requests deposited and retries granted.
            let mut seen: HashMap<usize, (u64, u64)> = HashMap::new();
            for (advance_ms, host, reqs, tries) in steps {
                now += Duration::from_millis(advance_ms);
                let scope = s.named(format!("h{host}").as_bytes(), now);
                prop_assert!(s.len() <= max);
                let e = seen.entry(Arc::as_ptr(&scope) as usize).or_default();
                for _ in 0..reqs { scope.budget.deposit_at(now); e.0 += 1; }
                for _ in 0..tries { e.1 += u64::from(scope.budget.withdraw_at(now)); }
                // Held like an in-flight request's, so the address is never reused.
                std::mem::forget(scope);
            }
            let run = (now - t0).as_secs_f64();
            let refills = 1.0 + run / (0.9 * WINDOW.as_secs_f64());
            for (requests, retries) in seen.values() {
                let bound = ratio * *requests as f64
                    + f64::from(min_per_sec) * WINDOW.as_secs_f64() * refills + 1.0;
                prop_assert!(*retries as f64 <= bound, "{} > {}", retries, bound);
            }
        }
    }
}
