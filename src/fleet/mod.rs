//! Fleet: replicas share what is missing through Redis (the `redis` feature).
//!
//! Each replica keeps its own [`NegativeCacheLayer`]. With a fleet
//! tier attached, a Missing answer one replica remembers is published to Redis — key, status,
//! *remaining* TTL and how long ago its request left, all relative so clocks need not agree,
//! and the answer a hit replays (its end-to-end header fields and kept body, at most 8 KiB;
//! a larger one travels head-only) — and every subscribed replica that accepts it inserts it
//! into its own cache, so a peer's hit is the origin's answer too. The receiver filters the
//! fields again (a peer's `Set-Cookie` or hop-by-hop field is never replayed) and keeps the
//! body only within its own `max_body_bytes`. A stored copy a late replica warms up from
//! carries no answer: it warms a head-only entry, and never replaces one held. Forgetting (a
//! successful write, a handle call, a clear) propagates the same way. R replicas then cost
//! about one upstream 404 per key per TTL instead of R.
//!
//! - **The request path stays local.** A lookup never waits on Redis; events are handed to a
//!   bounded queue (default 1,024) that a background task publishes from. When the queue is
//!   full the event is dropped and counted (`queue_full`), never blocking and never growing —
//!   but a forget or clear dropped that way leaves one clear owed, which the task sends
//!   before anything else: a lost forget would let peers serve a stale 404. The debt
//!   outlives the tier: a forget or clear owed or still unsent when the [`Fleet`] is dropped,
//!   or made while no tier is attached after one has been, is paid by the next tier started
//!   on the same cache, as one clear, its first message.
//! - **Redis down, slow, restarted, unreachable at start or refusing the credentials:**
//!   requests work exactly as without the tier. The tasks reconnect with exponential backoff;
//!   during a backoff 404s are dropped (counted: a lost 404 costs a peer one upstream
//!   request), but forgets and clears wait and are sent first when Redis answers again (at
//!   most 1,024; more collapse into one clear) — a lost forget would let peers serve a stale
//!   404. [`FleetStats`] counts all of it.
//! - **Late starters warm up** (optional, bounded): remembered keys are also stored in Redis
//!   with their TTL and age; a replica reads up to `warm` of them when it first connects,
//!   beside its message loop (a warm-up of seconds never delays a message). A value (or key
//!   name) that is not text is skipped and counted. After a lost subscription it catches up the same way:
//!   a generation other than the last one read clears it (a clear it did not hear), and
//!   tombstones written since the loss (counted from the subscription's last sign of life: a
//!   message or an answered PING) forget their keys (up to `max(warm, 100,000)` keys). A
//!   warm-up or catch-up that fails is retried with backoff while subscribed.
//! - **Namespaced:** every Redis key and the channel start with a prefix, so services can
//!   share a Redis. The channel also names the database (`<prefix>:db<N>:events`): pub/sub
//!   ignores the database number, and fleets in two databases must not hear each other. A password or ACL user goes in the URL
//!   (`redis://user:password@host:port/db`).
//! - **TLS** (feature `redis-tls`): `rediss://host:port/db`, as managed Redis services with
//!   in-transit encryption require. The server's certificate is always verified — against the
//!   system's roots, or a private CA given to [`FleetBuilder::tls_root_certificates`]; only
//!   a URL ending in `#insecure` skips it (a local test server's throwaway certificate).
//!   rustls does the TLS; if the application installed no rustls `CryptoProvider`, the tier
//!   installs rustls's `ring` provider as the process default when it starts. Client
//!   certificates (mutual TLS) are not configurable yet; Redis's `tls-auth-clients no` (or
//!   `optional`) is needed.
//!
//! # What a replica trusts, and why
//!
//! A message is a claim that a key is missing (or was forgotten). Applying a false one takes a
//! record offline on every replica for a TTL, so a replica believes only what a peer could
//! honestly have learned, and counts every refusal by reason in [`FleetRejections`]:
//!
//! - **Only its own idea of Missing.** A peer's status is applied only if *this* layer's
//!   classifier calls it Missing (404, 410 by default): nobody can make a replica answer 503
//!   or 200 from its cache. The tier is started from the layer for that reason. A layer
//!   without a classifier of its own follows the retry layer's verdict, which the tier cannot
//!   ask in advance: there what this replica's stack called the status decides (a retry
//!   classifier that calls 404 Success closes 404 sharing at this replica's first 404), and
//!   the layer's default classifier before the stack has answered that status once. A
//!   status the stack has called Missing for one answer and something else for another (a
//!   classifier that reads headers: a 404 is Missing only when the origin marks it) is
//!   *mixed* for good, and peers' answers with it are refused (`rejected.status`): a
//!   classifier is not asked about a peer's headers, so the stack's verdict on another key's answer cannot stand in for
//!   it. Until the stack has given both verdicts, the one it gave decides.
//! - **Only within its own limits.** A peer's TTL is capped at this cache's `max_ttl` (never
//!   raised to `min_ttl`: what is left of a peer's entry is not extended). Payloads over
//!   16 KiB + 257 bytes (a key and an answer of 8 KiB each) are refused unread, and keys over 8 KiB are neither sent nor accepted (nor, in a Missing message, keys holding a NUL byte: its answer section starts at the first NUL; their forgets are sent).
//! - **Only news newer than its own.** The latest answer wins across replicas as it does
//!   locally: a peer's 404 is refused if this replica saw that key answered 2xx, written,
//!   invalidated or cleared after the peer's request left, or holds an answer that arrived
//!   after it. The message says how long before its send time (which it carries) the request
//!   left; the receiver subtracts that and the transit the two wall clocks tell (within 1 s)
//!   to date the entry, and 1 s more for its changes (the clocks may disagree), from the time
//!   it handles it (never held back by warm-up), and checks its recent changes (short-lived tombstones: 10 s, at most
//!   65,536, and when full it errs towards refusing). A 404 whose request left more than 5 s
//!   before it was published is refused as stale, so the tombstones always cover it. Stored
//!   copies in Redis follow the same rule with Redis's own clock: a forget writes a tombstone
//!   (not a `DEL`) and a copy is stored only by a Lua script that refuses it if the tombstone,
//!   or the last clear, is newer than its request. A change this cache saw before its tier
//!   attached is known by the time of the last one: any peer entry whose request left before
//!   it is refused.
//! - **A clear is one write.** Stored copies live under a generation (the Redis time of the
//!   last clear); a clear starts a new one, whatever Redis holds, and warm-up reads the current
//!   generation only. Older generations expire by their own TTL. No generation key (never
//!   written, or lost: evicted under an `allkeys-*` policy, deleted) is no generation:
//!   nothing is warmed until the next write starts one. A full Redis (`maxmemory`,
//!   `noeviction`) refuses writes but never a `DEL`: a forget deletes the copy before writing
//!   its tombstone, and a clear that cannot write its generation deletes it (both retried). A generation key holding
//!   anything but a number (something else wrote it) is replaced by a new generation at the
//!   next write, as a clear would; warm-up skips it (`rejected.malformed`, logged).
//! - **Each message once.** Messages carry a per-replica sequence number; a copy played again
//!   is refused while its replica is remembered (the last 4,096 replicas heard from).
//! - **Only the fleet, with a secret** ([`FleetBuilder::secret`]). Without one, whoever can
//!   publish on the channel is trusted within the rules above — Redis's access control (a
//!   password, an ACL user limited to the prefix) is then the boundary. With one, every
//!   message and stored copy carries an HMAC-SHA256 under it (a stored copy's covers where it
//!   is stored, generation included, so it cannot be moved past a clear), checked in constant
//!   time before anything else in the message is believed; a signed message whose wall-clock time
//!   is more than 60 s from the receiver's is refused, which bounds replays to that window,
//!   and a signed 404 sent before the receiving tier started is refused (its replay memory is
//!   empty). A stored copy's MAC covers every field a receiver acts on but `start`, which
//!   Redis stamps: it is bounded by the signed send time, age and TTL, so rewriting it
//!   cannot extend or rejuvenate a copy.
//!
//! Not trusted, not shared: entries of credentialed requests (their fingerprint comes from a
//! secret of each process, so it means nothing to another replica — even with a shared
//! secret), hits, and stats. Not guaranteed: delivery (Redis pub/sub is best effort: a
//! replica that is disconnected when a message is sent misses it, and asks upstream itself);
//! ordering when a message spends more than 1 s in transit (Redis or the network that slow);
//! what Redis lost before a replica started (restored from an older snapshot, a failover
//! losing writes): such a replica can warm up a forgotten or cleared 404 for its remaining
//! TTL — GUARANTEES.md says exactly what holds; a bound on redis-rs's buffer of incoming
//! messages (Redis's pub/sub output-buffer limit disconnects a subscriber that lags);
//! a 2xx seen by a replica more than 10 s before it warms up (warm-up checks stored copies
//! against Redis's tombstones, which record forgets, not other replicas' 2xx answers);
//! [`invalidate_if`](crate::cache::NegativeCacheHandle::invalidate_if) on peers' entries for
//! matching keys this replica did not hold (a closure cannot be sent: peers are told the keys
//! it held).
//!
//! # Example
//!
//! ```no_run
//! use tower_negative_cache::NegativeCacheLayer;
//! use tower_negative_cache::fleet::Fleet;
//!
//! # async fn run() -> Result<(), tower_negative_cache::fleet::StartError> {
//! let cache = NegativeCacheLayer::new();
//! let fleet = Fleet::builder("redis://records:password@127.0.0.1:6379")
//!     .prefix("records-service")
//!     .warm(10_000)
//!     .secret("a secret every replica of records-service is given")
//!     .start(&cache)?;
//! // ... build the client with `cache`; keep `fleet` alive as long as sharing should go on.
//! println!("{:?}", fleet.stats());
//! # Ok(()) }
//! ```
//!
//! Why Redis pub/sub and the `redis` crate: an engine replicas already run, no protocol of our
//! own; `redis` (redis-rs) is the maintained async client for tokio, and its connection manager
//! reconnects by itself. Lua scripts (`EVAL`) make each check-and-write atomic; they use
//! `TIME`, so Redis 5 or later (script effects replication) is needed. Not for Redis Cluster:
//! the scripts compute key names.

mod connect;
mod publish;
mod receive;
mod sign;
mod stats;
mod tasks;
mod wire;

pub(crate) use stats::{Counters, note_error};
pub use stats::{FleetRejections, FleetStats};

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use http::{HeaderMap, StatusCode};

use crate::BuildError;
use crate::NegativeCacheLayer;
use crate::cache::NegativeCacheHandle;
use crate::classify::{Classify, response_outcome};
use crate::error::FirstError;
use crate::observe::{Observer, SharedObserver, ShowObserver};

impl Fleet {
    /// A builder for a tier talking to the Redis at `url` (`redis://host:port/db`, with a
    /// password or an ACL user as `redis://user:password@host:port/db`; over TLS, feature
    /// `redis-tls`, `rediss://host:port/db`).
    pub fn builder(url: impl Into<String>) -> FleetBuilder {
        FleetBuilder {
            url: url.into(),
            prefix: "tower-negative-cache".to_owned(),
            queue: 1024,
            warm: 1000,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            timeout: Duration::from_millis(500),
            secret: None,
            tls_roots: connect::Roots::default(),
            observer: None,
            error: FirstError::default(),
        }
    }
}

/// Configures a fleet tier. Every setter states its default and valid range.
#[must_use]
pub struct FleetBuilder {
    url: String,
    prefix: String,
    queue: usize,
    warm: usize,
    reconnect_min: Duration,
    reconnect_max: Duration,
    timeout: Duration,
    secret: Option<Secret>,
    tls_roots: connect::Roots,
    observer: Option<SharedObserver>,
    error: FirstError,
}

impl fmt::Debug for FleetBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetBuilder")
            .field("url", &redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("queue", &self.queue)
            .field("warm", &self.warm)
            .field("reconnect", &(self.reconnect_min, self.reconnect_max))
            .field("timeout", &self.timeout)
            .field("secret", &self.secret)
            .field("tls_roots", &self.tls_roots)
            .field("observer", &ShowObserver(&self.observer))
            .finish_non_exhaustive()
    }
}

/// `url` with its passwords hidden, builders get logged: the userinfo's, and the value of
/// every query parameter but `db`, `user` and `protocol` (a Unix-socket URL takes its
/// password as `?pass=`; what is not known to be harmless is hidden).
fn redacted(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => {
                    let user = rest[..at].split(':').next().unwrap_or("");
                    format!("{scheme}://{user}:***{}", &rest[at..])
                }
                None => head.to_owned(),
            }
        }
        None => head.to_owned(),
    };
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((name, _)) if !["db", "user", "protocol"].contains(&name) => {
                    format!("{name}=***")
                }
                _ => param.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

/// A shared secret's bytes; never printed.
#[derive(Clone)]
struct Secret(Arc<[u8]>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl FleetBuilder {
    /// The namespace of every Redis key and of the channel. Default: `tower-negative-cache`.
    /// Valid: 1 to 128 bytes of printable ASCII without spaces.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let ok = (1..=128).contains(&prefix.len()) && prefix.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            self.prefix = prefix;
        } else {
            self.error.fail(BuildError::new(
                "prefix",
                "1 to 128 bytes of printable ASCII without spaces",
            ));
        }
        self
    }

    /// Events waiting to be published; more are dropped and counted. Default: 1,024. Valid:
    /// `1..=1_000_000`.
    pub fn queue(mut self, events: usize) -> Self {
        if (1..=1_000_000).contains(&events) {
            self.queue = events;
        } else {
            self.error
                .fail(BuildError::range("queue", events, "1..=1000000"));
        }
        self
    }

    /// How many remembered keys a replica reads from Redis when it first connects (0: no
    /// warm-up). Default: 1,000. Valid: `0..=1_000_000`.
    pub fn warm(mut self, keys: usize) -> Self {
        if keys <= 1_000_000 {
            self.warm = keys;
        } else {
            self.error
                .fail(BuildError::range("warm", keys, "0..=1000000"));
        }
        self
    }

    /// The first and the longest wait between reconnection attempts (doubling in between).
    /// Default: 100 ms and 5 s. Valid: `1 ms..=60 s`, min at most max.
    pub fn reconnect(mut self, min: Duration, max: Duration) -> Self {
        let range = Duration::from_millis(1)..=Duration::from_secs(60);
        if range.contains(&min) && range.contains(&max) && min <= max {
            (self.reconnect_min, self.reconnect_max) = (min, max);
        } else {
            self.error
                .fail(BuildError::new("reconnect", "1ms..=60s each, min <= max"));
        }
        self
    }

    /// How long connecting or one Redis command may take. Default: 500 ms. Valid:
    /// `1 ms..=60 s`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        if (Duration::from_millis(1)..=Duration::from_secs(60)).contains(&timeout) {
            self.timeout = timeout;
        } else {
            self.error
                .fail(BuildError::range("timeout", timeout, "1ms..=60s"));
        }
        self
    }

    /// A secret shared by every replica of the fleet: each message and stored copy is then
    /// signed with HMAC-SHA256 under it, and whatever is unsigned, signed with another secret
    /// or altered is refused and counted (`rejected.unsigned`, `rejected.signature`) — so only
    /// a holder of the secret can make replicas remember or forget anything. Default: none
    /// (anyone who can publish on the channel is trusted, as Redis's own access control
    /// allows). Valid: 16 to 1,024 bytes. Give it to every replica at once: replicas with
    /// different secrets (or one with none) ignore each other.
    ///
    /// With a secret, a signed message is also refused when the publisher's wall clock and
    /// this replica's disagree by more than 60 s (`rejected.stale`), which bounds how long a
    /// copied message can be played again.
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        let secret = secret.as_ref();
        if (16..=1024).contains(&secret.len()) {
            self.secret = Some(Secret(secret.into()));
        } else {
            self.error
                .fail(BuildError::range("secret", secret.len(), "16..=1024 bytes"));
        }
        self
    }

    /// The certificates (PEM, one or more) a `rediss://` server's certificate must chain to,
    /// instead of the system's roots: a private CA, as managed Redis services and
    /// self-hosted TLS use. Feature `redis-tls`. Default: the system's roots (verification is
    /// always on; only a URL ending in `#insecure` turns it off, for local tests). Valid: at
    /// least one PEM certificate, every one parsing; a `redis://` URL with roots set is
    /// refused at [`start`](FleetBuilder::start).
    #[cfg(feature = "redis-tls")]
    pub fn tls_root_certificates(mut self, pem: impl AsRef<[u8]>) -> Self {
        match connect::Roots::from_pem(pem.as_ref()) {
            Ok(roots) => self.tls_roots = roots,
            Err(reason) => self
                .error
                .fail(BuildError::new("tls_root_certificates", reason)),
        }
        self
    }

    /// Tells `observer` every event the tier counts, as it happens (see
    /// [`observe`](crate::observe)): published, received, learned, rejected by reason, the
    /// subscription going up or down. Default: none. With the feature `metrics`,
    /// [`FleetMetrics`](crate::metrics::FleetMetrics) records them through the `metrics`
    /// facade.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Attaches the tier to `cache` and starts its tasks on the current tokio runtime. It
    /// returns at once, whether or not Redis is up. Fails on an invalid setting or URL, outside
    /// a tokio runtime, or when the cache already has a tier.
    ///
    /// The tier takes the layer, not only its handle, because a peer's entry is applied only
    /// if *this* layer's classifier calls its status Missing.
    pub fn start<C>(self, layer: &NegativeCacheLayer<C>) -> Result<Fleet, StartError>
    where
        C: Classify + Clone + Send + Sync + 'static,
    {
        self.error.result().map_err(StartError::from_build)?;
        let cache = &layer.handle();
        let classifier = layer.classifier.clone();
        let verdicts = cache.state().clone();
        // A peer's message carries a status only: it is classified as an answer without
        // headers would be. A cache that follows the retry layer's verdict has no classifier
        // here to ask: what its stack called the status decides once it answered one, and a
        // status it called both Missing and not (mixed, for good) is refused.
        let missing: tasks::IsMissing = Box::new(move |status: StatusCode| {
            verdicts.peers.verdicts.missing(status).unwrap_or_else(|| {
                response_outcome(&classifier, status, &HeaderMap::new()).is_missing()
            })
        });
        let client = connect::client(&self.url, &self.tls_roots).map_err(|detail| StartError {
            kind: StartErrorKind::Url,
            detail: detail.into(),
            setting: None,
        })?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StartError {
            kind: StartErrorKind::NoRuntime,
            detail: "must be called within a tokio runtime".into(),
            setting: None,
        })?;
        let (tx, rx) = mpsc::channel(self.queue);
        let state = cache.state().clone();
        if !state.peers.attach(tx) {
            return Err(StartError {
                kind: StartErrorKind::AlreadyStarted,
                detail: "this cache already has a fleet tier".into(),
                setting: None,
            });
        }
        let db = client.get_connection_info().redis_settings().db();
        let config = Arc::new(tasks::Config {
            client,
            replica: {
                use std::hash::BuildHasher;
                std::collections::hash_map::RandomState::new().hash_one(std::process::id())
            },
            // Pub/sub ignores the database number: two fleets on one Redis with the same
            // prefix in two databases (staging and production) must not hear each other.
            channel: format!("{}:db{db}:events", self.prefix),
            key_prefix: format!("{}:k:", self.prefix),
            gen_key: format!("{}:gen", self.prefix),
            warm: self.warm,
            reconnect_min: self.reconnect_min,
            reconnect_max: self.reconnect_max,
            timeout: self.timeout,
            missing,
            started_ms: tasks::unix_ms(),
            signer: self.secret.as_ref().map(|s| sign::Signer::new(&s.0)),
        });
        let counters = Arc::new(Counters::new(self.observer));
        let tasks = [
            runtime.spawn(publish::run(
                config.clone(),
                rx,
                state.clone(),
                counters.clone(),
            )),
            runtime.spawn(receive::run(config, state.clone(), counters.clone())),
        ];
        Ok(Fleet {
            counters,
            cache: cache.clone(),
            tasks,
        })
    }
}

/// A running fleet tier, started with [`Fleet::builder`]`(url)…`[`start`](FleetBuilder::start).
/// Keep it: dropping it stops sharing (the cache goes on alone, and a new tier can be started
/// on it). A forget the peers have not heard when it is dropped, or one made while the cache
/// has no tier, is sent by the next tier as one clear before anything else.
pub struct Fleet {
    counters: Arc<Counters>,
    cache: NegativeCacheHandle,
    tasks: [JoinHandle<()>; 2],
}

/// Why a fleet tier could not start. Its [`kind`](StartError::kind) says what went wrong;
/// `Display` says it in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartError {
    kind: StartErrorKind,
    detail: std::borrow::Cow<'static, str>,
    setting: Option<&'static str>,
}

/// What kept a fleet tier from starting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartErrorKind {
    /// A builder setting was given a value outside its valid range (see
    /// [`StartError::invalid_setting`]).
    Setting,
    /// The URL is not a Redis URL.
    Url,
    /// `start` was called outside a tokio runtime.
    NoRuntime,
    /// The cache already has a running tier (drop it first).
    AlreadyStarted,
}

impl StartError {
    fn from_build(e: BuildError) -> Self {
        StartError {
            kind: StartErrorKind::Setting,
            setting: Some(e.setting()),
            detail: e.to_string().into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> StartErrorKind {
        self.kind
    }

    /// For [`StartErrorKind::Setting`]: the builder setter whose value was refused.
    pub fn invalid_setting(&self) -> Option<&'static str> {
        self.setting
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fleet tier not started: {}", self.detail)
    }
}

impl std::error::Error for StartError {}

impl Fleet {
    /// A snapshot of the tier's counters.
    pub fn stats(&self) -> FleetStats {
        let queue_full = self.cache.state().peers.dropped.load(Relaxed);
        self.counters.snapshot(queue_full)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.cache.state().peers.detach();
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("stats", &self.stats())
            .finish()
    }
}
