//! The layer, its builder, and the state its clones share.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http::{HeaderName, Uri};
use tower::Layer;

use super::NegativeCache;
use super::handle::NegativeCacheHandle;
use super::key::{Credentials, DEFAULT_CREDENTIAL_HEADERS, KeyFn};
use super::peers::Peers;
use super::state::State;
use super::stats::Counters;
use super::store::Store;
use super::ttl::TtlConfig;
use crate::BuildError;
use crate::classify::DefaultClassifier;
use crate::error::FirstError;

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
}

impl<C: Clone> Clone for NegativeCacheLayer<C> {
    fn clone(&self) -> Self {
        NegativeCacheLayer {
            state: self.state.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for NegativeCacheLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NegativeCacheLayer")
            .field("state", &self.state)
            .field("classifier", &self.classifier)
            .finish()
    }
}

impl<S, C: Clone> Layer<S> for NegativeCacheLayer<C> {
    type Service = NegativeCache<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        NegativeCache::from_parts(inner, self.state.clone(), self.classifier.clone())
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
    credential_headers: Vec<HeaderName>,
    follow_retry: bool,
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
            credential_headers: DEFAULT_CREDENTIAL_HEADERS.to_vec(),
            follow_retry: true,
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
            .field("credential_headers", &self.credential_headers)
            .field("follow_retry", &self.follow_retry)
            .finish()
    }
}

/// The default key-text budget per entry of `capacity`: room for ordinary URLs.
const DEFAULT_BYTES_PER_ENTRY: u64 = 400;

/// The longest TTL: 30 days. Entries keep their TTL in 32 bits of milliseconds (49.7 days),
/// which keeps them at 24 bytes; negative answers are rarely worth remembering for longer.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);

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
    /// A hit answers with the remembered status only (`content-length: 0`, `Age`); the headers
    /// that made the answer Missing are not kept. Tell a hit from a real answer by its
    /// [`NegativeCacheHit`](super::NegativeCacheHit) extension.
    pub fn classifier<C2>(self, classifier: C2) -> Builder<C2> {
        Builder {
            classifier,
            capacity: self.capacity,
            max_bytes: self.max_bytes,
            ttl: self.ttl,
            key_fn: self.key_fn,
            credentials: self.credentials,
            coalesce: self.coalesce,
            credential_headers: self.credential_headers,
            follow_retry: false,
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

    /// The most bytes of key text the store holds: a hard bound, whatever the lengths of the
    /// keys. Default: 400 bytes × `capacity` (4,000,000 for the default 10,000 entries).
    /// Valid: `4096..=2^40` (1 TiB).
    ///
    /// **The store's memory is bounded in bytes:** at most `max_bytes` of key text, plus its
    /// tables, which `capacity` sizes: about 100 bytes per entry of capacity (the key and
    /// entry structs and quick_cache's index; `examples/alloc_counts.rs` measures it). At the
    /// defaults, at most about 5 MB, whatever the keys.
    ///
    /// Each entry weighs its key's text, and at least `max_bytes / capacity`: at the defaults,
    /// keys up to 400 bytes (ordinary URLs) fill all 10,000 entries, while 60 KB keys fill
    /// about 66. A key longer than 96% of its shard's share of the budget (1/16 of `max_bytes`
    /// from 4,096 entries up, all of it below) is not stored (counted as `uncacheable`); keys
    /// over 64 KiB are never keyed. [`NegativeCacheHandle::memory_bytes`] reports what the
    /// store holds.
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
    /// long at most; a minute is past any upstream timeout worth waiting on). The wait uses
    /// tokio's timer: the runtime must have
    /// time enabled.
    pub fn coalesce(mut self, bound: Duration) -> Self {
        let range = Duration::from_millis(1)..=Duration::from_secs(60);
        if self.error.check("coalesce", bound, range, "1ms..=60s") {
            self.coalesce = Some(bound);
        }
        self
    }

    /// The layer, or the first setting given an invalid value.
    pub fn build(self) -> Result<NegativeCacheLayer<C>, BuildError> {
        self.error.result()?;
        check_ttls(&self.ttl, self.set_by)?;
        let t = self.ttl;
        let evictions = Arc::new(AtomicU64::new(0));
        Ok(NegativeCacheLayer {
            state: Arc::new(State {
                store: Store::new(
                    self.capacity,
                    self.max_bytes
                        .unwrap_or(self.capacity.saturating_mul(DEFAULT_BYTES_PER_ENTRY)),
                    evictions.clone(),
                ),
                stats: Counters::default(),
                evictions,
                ttl: t,
                key_fn: self.key_fn,
                credentials: self.credentials,
                credential_headers: self.credential_headers.into_boxed_slice(),
                secret: RandomState::new(),
                follow_retry: self.follow_retry,
                coalesce: self.coalesce,
                flights: Arc::default(),
                peers: Peers::default(),
            }),
            classifier: self.classifier,
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
