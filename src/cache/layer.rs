//! The layer, its builder, and the state its clones share.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http::uri::Scheme;
use http::{HeaderName, Uri};
use tower::Layer;

use super::NegativeCache;
use super::answer::{DEFAULT_BODY_LIMIT, MAX_BODY_LIMIT};
use super::handle::NegativeCacheHandle;
use super::history::Histories;
use super::key::{Credentials, DEFAULT_CREDENTIAL_HEADERS, KeyFn};
use super::peers::Peers;
use super::state::State;
use super::stats::Counters;
use super::store::Store;
use super::ttl::TtlConfig;
use crate::BuildError;
use crate::classify::DefaultClassifier;
use crate::error::FirstError;
use crate::observe::{Observer, SharedObserver, ShowObserver};

/// Applies [`NegativeCache`] to a service: remembers keys that answered Missing (404, 410)
/// and answers them without calling upstream until their TTL ends or they are invalidated.
///
/// Cloning the layer shares its store and stats: every service it makes sees the same
/// entries, and [`handle`](NegativeCacheLayer::handle) reaches them all.
///
/// ```
/// use std::time::Duration;
/// use tower_negative_cache::NegativeCacheLayer;
///
/// // The incident's settings: 10,000 entries, remembered for an hour.
/// let layer = NegativeCacheLayer::builder()
///     .ttl(Duration::from_secs(3600))
///     .build()
///     .unwrap();
/// assert_eq!(layer.handle().stats().capacity, 10_000);
/// ```
pub struct NegativeCacheLayer<C = DefaultClassifier> {
    pub(crate) state: Arc<State>,
    pub(crate) classifier: C,
    /// The partition its services key under (0: none; see [`NegativeCacheLayer::partition`]).
    pub(crate) partition: u64,
}

impl NegativeCacheLayer {
    /// A layer with every default (see [`Builder`]).
    pub fn new() -> Self {
        Self::builder().build().expect("the defaults are valid")
    }

    /// A builder starting from the defaults.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl Default for NegativeCacheLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<C> NegativeCacheLayer<C> {
    /// A handle on the shared store: stats, invalidation, clearing.
    pub fn handle(&self) -> NegativeCacheHandle {
        NegativeCacheHandle::new(self.state.clone())
    }

    /// A layer sharing this one's store, stats and handle, whose services remember and look
    /// up under the partition `name`: what one stack stores, another partition's never serves.
    ///
    /// **The cache sees only the request it is given.** Credentials a layer or client *below*
    /// it adds — a `reqwest::Client`'s `default_headers` or cookie store, an auth layer inside
    /// the cache, a connection's client certificate — are invisible to it, so
    /// [`Builder::credentials`] can't keep them apart: a 404 one identity got ("not yours")
    /// would be served to another. Give each such stack its own partition, named for the
    /// identity it sends as:
    ///
    /// ```
    /// use tower::ServiceBuilder;
    /// use tower_negative_cache::NegativeCacheLayer;
    ///
    /// let cache = NegativeCacheLayer::new();
    /// // Two clients that add their own `Authorization` below the cache.
    /// # let (alice_client, bob_client) = (tower::service_fn(|_: http::Request<()>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(()))
    /// # }), tower::service_fn(|_: http::Request<()>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(()))
    /// # }));
    /// let alice = ServiceBuilder::new().layer(cache.partition("alice")).service(alice_client);
    /// let bob = ServiceBuilder::new().layer(cache.partition("bob")).service(bob_client);
    /// # let _ = (alice, bob);
    /// ```
    ///
    /// - A successful write, an unsafe request that fails, and
    ///   [`NegativeCacheHandle::invalidate`] / `invalidate_uri` forget the target in every
    ///   partition (a write changes the resource for everyone). A read's 2xx forgets it in its
    ///   own partition only (another identity may still not see it).
    /// - The same `name` gives the same partition (in this store); a partition of a partition
    ///   is a partition of its own. Credentials the request itself carries are still bypassed
    ///   or fingerprinted, within the partition.
    /// - Partitioned entries are not shared with a fleet tier (like credentialed ones: a
    ///   partition's name means nothing to another replica); forgets still are.
    /// - [`NegativeCacheHandle::peek`] looks outside every partition.
    /// - Make partitions once per client, not per request: forgetting a target removes it
    ///   under each of the first 32 partitions made; past 32, each forget scans the store
    ///   (O(capacity), as with [`Credentials::Fingerprint`]).
    pub fn partition(&self, name: impl AsRef<[u8]>) -> Self
    where
        C: Clone,
    {
        NegativeCacheLayer {
            state: self.state.clone(),
            classifier: self.classifier.clone(),
            partition: self.state.partition(self.partition, name.as_ref()),
        }
    }
}

impl<C: Clone> Clone for NegativeCacheLayer<C> {
    fn clone(&self) -> Self {
        NegativeCacheLayer {
            state: self.state.clone(),
            classifier: self.classifier.clone(),
            partition: self.partition,
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for NegativeCacheLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NegativeCacheLayer")
            .field("state", &self.state)
            .field("classifier", &self.classifier)
            .field("partitioned", &(self.partition != 0))
            .finish()
    }
}

impl<S, C: Clone> Layer<S> for NegativeCacheLayer<C> {
    type Service = NegativeCache<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        NegativeCache::from_parts(
            inner,
            self.state.clone(),
            self.classifier.clone(),
            self.partition,
        )
    }
}

/// Configures a [`NegativeCacheLayer`]. Every setter states its default and valid range; a
/// value outside it makes [`build`](Builder::build) return a [`BuildError`] naming the setter.
#[must_use]
pub struct Builder<C = DefaultClassifier> {
    classifier: C,
    capacity: u64,
    max_bytes: Option<u64>,
    ttl: TtlConfig,
    key_fn: Option<KeyFn>,
    credentials: Credentials,
    coalesce: Option<Duration>,
    body_limit: u64,
    credential_headers: Vec<HeaderName>,
    follow_retry: bool,
    origin_scheme: Option<Scheme>,
    observer: Option<SharedObserver>,
    /// The setter that last set each of ttl_404, ttl_410, max_ttl (None: default), so a
    /// conflict found at build names a setting the caller used.
    set_by: [Option<&'static str>; 3],
    error: FirstError,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            classifier: DefaultClassifier::default(),
            capacity: 10_000,
            max_bytes: None,
            ttl: TtlConfig::default(),
            key_fn: None,
            credentials: Credentials::Bypass,
            coalesce: None,
            body_limit: DEFAULT_BODY_LIMIT,
            credential_headers: DEFAULT_CREDENTIAL_HEADERS.to_vec(),
            follow_retry: true,
            origin_scheme: None,
            observer: None,
            set_by: [None; 3],
            error: FirstError::default(),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for Builder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("classifier", &self.classifier)
            .field("capacity", &self.capacity)
            .field("max_bytes", &self.max_bytes)
            .field("ttl", &self.ttl)
            .field("key_fn", &self.key_fn.is_some())
            .field("credentials", &self.credentials)
            .field("coalesce", &self.coalesce)
            .field("max_body_bytes", &self.body_limit)
            .field("credential_headers", &self.credential_headers)
            .field("follow_retry", &self.follow_retry)
            .field("origin_scheme", &self.origin_scheme)
            .field("observer", &ShowObserver(&self.observer))
            .finish()
    }
}

/// The default budget per entry of `capacity`: room for an ordinary URL and an answer's head
/// with a short error body (a few fields and a few hundred bytes of JSON).
const DEFAULT_BYTES_PER_ENTRY: u64 = 1024;

/// The default budget's floor: a small store still holds a body at the default body limit.
const DEFAULT_MIN_BYTES: u64 = 16 * 1024;

/// The longest TTL: 30 days. Entries keep their TTL in 32 bits of milliseconds (49.7 days),
/// which keeps them at 32 bytes; negative answers are rarely worth remembering for longer.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);
// An entry dated from a request as old as the longest TTL keeps its order in the store.
const _: () = assert!(super::store::OLDEST.as_secs() >= MAX_TTL.as_secs());

impl<C> Builder<C> {
    fn check_ttl(&mut self, setting: &'static str, ttl: Duration) -> bool {
        self.error.check(
            setting,
            ttl,
            Duration::from_millis(1)..=MAX_TTL,
            "1ms..=30d",
        )
    }

    /// Replaces the classifier that decides which answers are Missing (and which are present,
    /// forgetting what was remembered).
    ///
    /// Default: none of its own — the cache follows the verdict of a
    /// [`StatusAwareRetry`](crate::retry::StatusAwareRetry) under it (the
    /// [`RetryInfo::of`](crate::RetryInfo::of) each answer), so a classifier given to the retry
    /// layer's builder is applied by both layers; without a retry layer under it, the
    /// [`DefaultClassifier`] (404 and 410 Missing). A classifier given here is always the
    /// cache's own, whatever is under it: configuring one layer is enough, and a classifier
    /// is never ignored.
    ///
    /// A hit answers with the remembered answer (its end-to-end fields and, within
    /// [`max_body_bytes`](Self::max_body_bytes), its body) plus `Age`. Tell a hit from a real
    /// answer by its [`NegativeCacheHit`](super::NegativeCacheHit) extension.
    pub fn classifier<C2>(self, classifier: C2) -> Builder<C2> {
        Builder {
            classifier,
            capacity: self.capacity,
            max_bytes: self.max_bytes,
            ttl: self.ttl,
            key_fn: self.key_fn,
            credentials: self.credentials,
            coalesce: self.coalesce,
            body_limit: self.body_limit,
            credential_headers: self.credential_headers,
            follow_retry: false,
            origin_scheme: self.origin_scheme,
            observer: self.observer,
            set_by: self.set_by,
            error: self.error,
        }
    }

    /// The most entries held: a hard bound. Default: 10,000. Valid: `1..=100_000_000` (the
    /// store sizes its tables for `capacity` up front, about 100 bytes each: past 10 GB, a
    /// typo is likelier than a need).
    ///
    /// The store is split into shards (for a capacity of 4,096 or more), each with an equal
    /// share, so an entry can be evicted slightly before the total is reached (filling a
    /// capacity of 100,000 with distinct keys held 99,714). Bytes are bounded too: see
    /// [`max_bytes`](Self::max_bytes).
    pub fn capacity(mut self, entries: u64) -> Self {
        if self
            .error
            .check("capacity", entries, 1..=100_000_000, "1..=100000000")
        {
            self.capacity = entries;
        }
        self
    }

    /// The most bytes of key text and remembered answers (header fields and bodies) the store
    /// holds: a hard bound, whatever their lengths. Default: 1,024 bytes × `capacity`, at least
    /// 16 KiB (10,240,000 for the default 10,000 entries). Valid: `4096..=2^40` (1 TiB).
    ///
    /// **The store's memory is bounded in bytes:** at most `max_bytes` of keys and answers,
    /// plus its tables, which `capacity` sizes: about 100 bytes per entry of capacity (the key
    /// and entry structs and quick_cache's index; `examples/alloc_counts.rs` measures it). At
    /// the defaults, at most about 11 MB, whatever the keys and answers.
    ///
    /// Each entry weighs its key's text plus its answer's field names and values (and about
    /// 160 bytes per field for the map that holds them) and body, and at least
    /// `max_bytes / capacity`: at the defaults, entries up to 1 KiB (an ordinary URL, a few
    /// fields and a short JSON error) fill all 10,000 entries, while 60 KB keys fill about 170.
    /// An entry heavier than 96% of its shard's share of the budget (1/16 of `max_bytes` from
    /// 4,096 entries up, all of it below) is kept head-only, or if that is still too heavy not
    /// stored (counted as `uncacheable`); keys over 64 KiB are never keyed.
    /// [`NegativeCacheHandle::memory_bytes`] reports what the store holds.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        if self
            .error
            .check("max_bytes", bytes, 4096..=1 << 40, "4096..=1099511627776")
        {
            self.max_bytes = Some(bytes);
        }
        self
    }

    /// How long a Missing answer is remembered when the origin gives no freshness lifetime
    /// (or [`respect_cache_headers`](Self::respect_cache_headers) is off), for 404 and 410
    /// alike (and any other status a custom classifier calls Missing), less the age it
    /// arrived with. Default: 60 s for 404, 1 h for 410. Valid: `1 ms..=max_ttl`.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        if self.check_ttl("ttl", ttl) {
            self.ttl.ttl_404 = ttl;
            self.ttl.ttl_410 = ttl;
            self.set_by[0] = Some("ttl");
            self.set_by[1] = Some("ttl");
        }
        self
    }

    /// How long a 404 (or another Missing status but 410) is remembered when the origin gives
    /// no freshness lifetime. Default: 60 s. Valid: `1 ms..=max_ttl`.
    pub fn ttl_404(mut self, ttl: Duration) -> Self {
        if self.check_ttl("ttl_404", ttl) {
            self.ttl.ttl_404 = ttl;
            self.set_by[0] = Some("ttl_404");
        }
        self
    }

    /// How long a 410 is remembered when the origin gives no freshness lifetime. Default: 1 h.
    /// Valid: `1 ms..=max_ttl`.
    pub fn ttl_410(mut self, ttl: Duration) -> Self {
        if self.check_ttl("ttl_410", ttl) {
            self.ttl.ttl_410 = ttl;
            self.set_by[1] = Some("ttl_410");
        }
        self
    }

    /// The longest time anything is remembered: an origin's longer lifetime is cut to it.
    /// Default: 1 day. Valid: `1 ms..=30 d` (an entry keeps its TTL in 32 bits of
    /// milliseconds, 49.7 days; negative answers are rarely worth keeping longer).
    ///
    /// There is no minimum: an origin's explicit lifetime (`max-age`, `Expires`) is an upper
    /// bound the cache never exceeds, and a lifetime of zero (`max-age=0`, an `Age` at or past
    /// it, an `Expires` not after `Date`) means stale on arrival: not stored (RFC 9111 §4.2).
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        if self.check_ttl("max_ttl", ttl) {
            self.ttl.max = ttl;
            self.set_by[2] = Some("max_ttl");
        }
        self
    }

    /// Turns the adaptive TTL on, with `ceiling` the longest lifetime it learns. Default: off
    /// (every answer without explicit freshness is kept for its per-status default). Valid:
    /// `ttl_404..=max_ttl` (a ceiling below the base could never be reached).
    ///
    /// Each time a key's entry has expired and the origin confirms the same Missing answer,
    /// its next lifetime doubles from the per-status default (`ttl_404`, `ttl_410`): 60 s,
    /// 2 min, 4 min, … up to `ceiling`. It applies only to answers without explicit freshness
    /// (the origin's `max-age`, `s-maxage` or `Expires` always wins) and never passes
    /// `max_ttl`. A 2xx for the key, a write, an invalidation or another Missing status
    /// starts it again from the default; a key seen Missing, then present, then Missing
    /// again (it flaps) stays at the default. [`NegativeCacheHit`](super::NegativeCacheHit)
    /// and [`peek`](super::NegativeCacheHandle::peek) say which lifetime was chosen and why.
    ///
    /// Each key's history outlives its entry in a table of 8 bytes per entry of `capacity`,
    /// taken from [`max_bytes`](Self::max_bytes) (80 KB at the defaults), in buckets of 8: a
    /// key new to a full bucket takes the place of the shortest streak, so the keys asked for
    /// again and again keep theirs; a key pushed out only goes back to the default.
    ///
    /// **Choosing the ceiling.** The ceiling is the longest a key that has stayed missing can
    /// go on being answered 404 after it appears elsewhere (created by another writer this
    /// cache never sees): staleness is bounded by the ceiling, not by the default. Set it to
    /// the longest such delay the application tolerates for a key that has been missing for a
    /// while (CDNs keep 404s from 10 s to 1 h; RFC 9520 backs off persistent failures up to 5
    /// min). Writes that go through this cache, and invalidations, end a learned lifetime at
    /// once, so only writes it doesn't see pay. `examples/ttl_simulation.rs` measures the
    /// trade: with a 1 h ceiling it asks the origin many times less than a fixed 60 s TTL.
    pub fn adaptive_ttl(mut self, ceiling: Duration) -> Self {
        if self.check_ttl("adaptive_ttl", ceiling) {
            self.ttl.adaptive = Some(ceiling);
        }
        self
    }

    /// Whether the origin's own freshness lifetime on the 404/410 (`s-maxage` in shared mode,
    /// `max-age`, `Expires` − `Date`) sets the TTL (less the answer's age, cut to `max_ttl`);
    /// off, the per-status defaults apply. `no-store`, `no-cache` and `Vary` forbid
    /// remembering either way. Default: `true`.
    pub fn respect_cache_headers(mut self, yes: bool) -> Self {
        self.ttl.respect_headers = yes;
        self
    }

    /// Shared-cache mode (RFC 9111): `s-maxage` takes precedence and `private` answers are
    /// not remembered. Default: `false` (a client's private cache).
    pub fn shared(mut self, yes: bool) -> Self {
        self.ttl.shared = yes;
        self
    }

    /// Maps request targets to the application's own key, so several URLs share one entry;
    /// `None` leaves a request uncached. Default: the normalised target (scheme and host
    /// lower-case, default port elided, path and query). A key function allocates its key.
    /// It is given the request's URI normalised as keys are (RFC 3986 §6.2.2, §6.2.3: the
    /// host in lower case, the scheme's default port elided, percent-encoding and dot
    /// segments); an origin-form target (`/r/3`) as it is, or as its absolute URI when
    /// [`origin_form_scheme`](Self::origin_form_scheme) is declared.
    ///
    /// ```
    /// use tower_negative_cache::NegativeCacheLayer;
    ///
    /// let layer = NegativeCacheLayer::builder()
    ///     .key_fn(|uri: &http::Uri| {
    ///         uri.path().strip_prefix("/records/").map(|id| format!("record:{id}"))
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn key_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&Uri) -> Option<String> + Send + Sync + 'static,
    {
        self.key_fn = Some(Arc::new(f));
        self
    }

    /// What to do with requests carrying credentials (`Authorization`, `Proxy-Authorization`,
    /// `Cookie`, a URI userinfo, and any header named with
    /// [`credential_header`](Self::credential_header)). Default: [`Credentials::Bypass`].
    pub fn credentials(mut self, c: Credentials) -> Self {
        self.credentials = c;
        self
    }

    /// Names one more request header that carries credentials (`X-Api-Key` and the like): a
    /// request with it is bypassed or fingerprinted like one with `Authorization`. Default:
    /// `Authorization`, `Proxy-Authorization` and `Cookie` (plus a URI userinfo), which are
    /// always credentials. Call once per header.
    ///
    /// **An API key in a header the cache does not know is not a credential to it:** a 404
    /// one key got would be served to every other key. Name every such header.
    pub fn credential_header(mut self, name: HeaderName) -> Self {
        if !self.credential_headers.contains(&name) {
            self.credential_headers.push(name);
        }
        self
    }

    /// Turns burst coalescing on: while a GET or HEAD for a key is upstream, other misses for
    /// it wait up to `bound` for its answer instead of calling upstream too. When it has
    /// settled (or fails, or is cancelled), every waiter wakes at once and looks the key up:
    /// a Missing answer it remembered answers them all; otherwise each goes upstream itself.
    /// Default: off. Valid: `1 ms..=60 s` (a waiter holds its request and its caller that
    /// long at most; a minute is past any upstream timeout worth waiting on). A Missing answer
    /// with a body settles once its caller has read the body to its end (or dropped it), so
    /// that waiters get the whole answer: a caller that holds the body unread keeps them
    /// waiting up to `bound`. The wait uses
    /// tokio's timer: the runtime must have
    /// time enabled.
    pub fn coalesce(mut self, bound: Duration) -> Self {
        let range = Duration::from_millis(1)..=Duration::from_secs(60);
        if self.error.check("coalesce", bound, range, "1ms..=60s") {
            self.coalesce = Some(bound);
        }
        self
    }

    /// The scheme of the connections origin-form requests (`/path` with a `Host` header, as
    /// sent over a hyper `SendRequest` or a client of that shape) go out on, so that they
    /// share keys with absolute-form requests (`http://host/path`) for the same target.
    /// Default: none — an origin-form target is then keyed scheme-relative (`//host/path`):
    /// its scheme is the connection's (RFC 9112 §3.3), which the request does not carry, and
    /// `http://h/x` and `https://h/x` are different resources (RFC 9110 §4.2.1, §4.2.2), so
    /// it never shares a key with an absolute-form request. Declare it only if every
    /// origin-form request through this cache goes out on connections of this scheme.
    /// A key function (see [`key_fn`](Self::key_fn)) is then given an origin-form target's
    /// absolute URI (this scheme, the `Host` and the path: RFC 9110 §7.1), as it is given a
    /// resolved `Location`. Valid: any scheme.
    pub fn origin_form_scheme(mut self, scheme: Scheme) -> Self {
        self.origin_scheme = Some(scheme);
        self
    }

    /// The most body bytes an entry keeps, so that its hits replay the origin's body. Default:
    /// 4,096 (JSON and `application/problem+json` errors, usually a few hundred bytes; not
    /// error pages). Valid: `0..=1_048_576` (1 MiB; 0 keeps no body).
    ///
    /// The body is copied as the caller reads it, never ahead of it. A body over the limit,
    /// or dropped or failed before its end, is never replayed in part: the entry is head-only
    /// — its repeats still cost no upstream request, answered with the origin's fields but
    /// no body and none describing one (`Content-Type`, `Content-Encoding`, …), and
    /// [`NegativeCacheHit::body_kept`](super::NegativeCacheHit::body_kept) false. An answer
    /// too heavy for the store's byte budget (see [`max_bytes`](Self::max_bytes)) is kept
    /// head-only too. Each counts in [`CacheStats::head_only`](super::CacheStats::head_only).
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        if self
            .error
            .check("max_body_bytes", bytes, 0..=MAX_BODY_LIMIT, "0..=1048576")
        {
            self.body_limit = bytes;
        }
        self
    }

    /// Tells `observer` every event the cache counts, as it happens (see
    /// [`observe`](crate::observe)): hits, misses, bypasses, inserts, evictions, expirations,
    /// invalidations and the store's size. Default: none (an event then costs one branch).
    /// Every clone of the layer shares it. With the feature `metrics`,
    /// [`CacheMetrics`](crate::metrics::CacheMetrics) records them through the `metrics`
    /// facade.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The layer, or the first setting given an invalid value.
    pub fn build(self) -> Result<NegativeCacheLayer<C>, BuildError> {
        self.error.result()?;
        check_ttls(&self.ttl, self.set_by)?;
        let t = self.ttl;
        let evictions = Arc::new(AtomicU64::new(0));
        let max_bytes = self.max_bytes.unwrap_or(
            self.capacity
                .saturating_mul(DEFAULT_BYTES_PER_ENTRY)
                .max(DEFAULT_MIN_BYTES),
        );
        let history = match t.adaptive {
            Some(ceiling) => {
                if ceiling < t.ttl_404 || ceiling > t.max {
                    return Err(BuildError::new(
                        "adaptive_ttl",
                        format!(
                            "{ceiling:?} is outside ttl_404..=max_ttl ({:?}..={:?})",
                            t.ttl_404, t.max
                        ),
                    ));
                }
                let history = Histories::new(self.capacity);
                // The history counts in max_bytes: the store gets what it leaves.
                if max_bytes < history.bytes().saturating_add(self.capacity) {
                    return Err(BuildError::new(
                        "max_bytes",
                        format!(
                            "{max_bytes} leaves no room for the adaptive TTL's history ({} bytes, 8 per entry of capacity)",
                            history.bytes()
                        ),
                    ));
                }
                Some(history)
            }
            None => None,
        };
        let max_bytes = max_bytes - history.as_ref().map_or(0, Histories::bytes);
        Ok(NegativeCacheLayer {
            state: Arc::new(State {
                store: Store::new(self.capacity, max_bytes, evictions.clone()),
                stats: Counters::new(self.observer),
                evictions,
                ttl: t,
                key_fn: self.key_fn,
                credentials: self.credentials,
                credential_headers: self.credential_headers.into_boxed_slice(),
                secret: RandomState::new(),
                follow_retry: self.follow_retry,
                coalesce: self.coalesce,
                body_limit: self.body_limit,
                flights: Arc::default(),
                peers: Peers::default(),
                origin_scheme: self
                    .origin_scheme
                    .map_or_else(Default::default, |s| s.as_str().to_ascii_lowercase().into()),
                partitions: Default::default(),
                history,
            }),
            classifier: self.classifier,
            partition: 0,
        })
    }
}

/// Checks `ttl_404, ttl_410 <= max_ttl`, blaming a setting the caller used.
fn check_ttls(t: &TtlConfig, set_by: [Option<&'static str>; 3]) -> Result<(), BuildError> {
    for (i, (ttl, label)) in [(t.ttl_404, "the 404 TTL"), (t.ttl_410, "the 410 TTL")]
        .into_iter()
        .enumerate()
    {
        if ttl <= t.max {
            continue;
        }
        let shown = match set_by[i] {
            Some(_) => format!("{ttl:?}"),
            None => format!("{ttl:?}, the default"),
        };
        let setting = set_by[i].or(set_by[2].map(|_| "max_ttl")).unwrap_or("ttl");
        return Err(BuildError::new(
            setting,
            format!("{label} ({shown}) is above max_ttl ({:?})", t.max),
        ));
    }
    Ok(())
}
