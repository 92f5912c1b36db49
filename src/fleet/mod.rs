//! Fleet: replicas share what is missing through Redis (the `redis` feature).
//!
//! Each replica keeps its own [`NegativeCacheLayer`](crate::NegativeCacheLayer). With a fleet
//! tier attached, a Missing answer one replica remembers is published to Redis — key, status
//! and *remaining* TTL, relative so clock skew doesn't matter — and every subscribed replica
//! inserts it into its own cache. Forgetting (a successful write, a handle call) propagates
//! the same way. R replicas then cost about one upstream 404 per key per TTL instead of R.
//!
//! - **The request path stays local.** A lookup never waits on Redis; events are handed to a
//!   bounded queue (default 1,024) that a background task publishes from. When the queue is
//!   full the event is dropped and counted, never blocking and never growing.
//! - **Redis down, slow, restarted or unreachable at start:** requests work exactly as without
//!   the tier. The tasks reconnect with exponential backoff; [`FleetStats`] counts publish
//!   failures, received messages, entries learned from peers and malformed messages.
//! - **Late starters warm up** (optional, bounded): remembered keys are also stored in Redis
//!   with their TTL (`SET … PX`); a replica scans up to `warm` of them when it connects.
//! - **Namespaced:** every Redis key and the channel start with a prefix, so services can
//!   share a Redis.
//! - **Not shared:** entries of credentialed requests (their fingerprint is secret to each
//!   replica), hits, and stats. Delivery is best effort (Redis pub/sub): a replica that is
//!   disconnected when a message is sent misses it, and just asks upstream itself.
//!
//! # Example
//!
//! ```no_run
//! use tower_negative_cache::NegativeCacheLayer;
//! use tower_negative_cache::fleet::Fleet;
//!
//! # async fn run() -> Result<(), tower_negative_cache::BuildError> {
//! let cache = NegativeCacheLayer::new();
//! let fleet = Fleet::builder("redis://127.0.0.1:6379")
//!     .prefix("records-service")
//!     .warm(10_000)
//!     .start(&cache)?;
//! // ... build the client with `cache`; keep `fleet` alive as long as sharing should go on.
//! println!("{:?}", fleet.stats());
//! # Ok(()) }
//! ```
//!
//! Why Redis pub/sub and the `redis` crate: an engine replicas already run, no protocol of our
//! own; `redis` (redis-rs) is the maintained async client for tokio, and its connection manager
//! reconnects by itself.

mod sign;
mod tasks;
mod wire;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use http::{HeaderMap, StatusCode};

use crate::BuildError;
use crate::NegativeCacheLayer;
use crate::cache::NegativeCacheHandle;
use crate::classify::{Classify, response_outcome};
use crate::error::FirstError;

/// Starts a fleet tier: see [`Fleet::builder`].
#[derive(Debug)]
pub struct Fleet;

impl Fleet {
    /// A builder for a tier talking to the Redis at `url` (`redis://host:port/db`).
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
            error: FirstError::default(),
        }
    }
}

/// Configures a fleet tier. Every setter states its default and valid range.
#[must_use]
#[derive(Debug)]
pub struct FleetBuilder {
    url: String,
    prefix: String,
    queue: usize,
    warm: usize,
    reconnect_min: Duration,
    reconnect_max: Duration,
    timeout: Duration,
    secret: Option<Secret>,
    error: FirstError,
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

    /// Attaches the tier to `cache` and starts its tasks on the current tokio runtime. It
    /// returns at once, whether or not Redis is up. Fails on an invalid setting or URL, outside
    /// a tokio runtime, or when the cache already has a tier.
    ///
    /// The tier takes the layer, not only its handle, because a peer's entry is applied only
    /// if *this* layer's classifier calls its status Missing.
    pub fn start<C>(self, layer: &NegativeCacheLayer<C>) -> Result<FleetHandle, BuildError>
    where
        C: Classify + Clone + Send + Sync + 'static,
    {
        self.error.result()?;
        let cache = &layer.handle();
        let classifier = layer.classifier.clone();
        // A peer's message carries a status only: it is classified as an answer without
        // headers would be.
        let missing: tasks::IsMissing = Box::new(move |status: StatusCode| {
            response_outcome(&classifier, status, &HeaderMap::new()).is_missing()
        });
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| BuildError::new("url", format!("not a Redis URL: {e}")))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| BuildError::new("start", "must be called within a tokio runtime"))?;
        let (tx, rx) = mpsc::channel(self.queue);
        let state = cache.state().clone();
        if !state.peers.attach(tx) {
            return Err(BuildError::new(
                "start",
                "this cache already has a fleet tier",
            ));
        }
        let config = Arc::new(tasks::Config {
            client,
            replica: {
                use std::hash::BuildHasher;
                std::collections::hash_map::RandomState::new().hash_one(std::process::id())
            },
            channel: format!("{}:events", self.prefix),
            key_prefix: format!("{}:k:", self.prefix),
            gen_key: format!("{}:gen", self.prefix),
            warm: self.warm,
            reconnect_min: self.reconnect_min,
            reconnect_max: self.reconnect_max,
            timeout: self.timeout,
            missing,
            signer: self.secret.as_ref().map(|s| sign::Signer::new(&s.0)),
        });
        let counters = Arc::new(Counters::default());
        let tasks = [
            runtime.spawn(tasks::publish(config.clone(), rx, counters.clone())),
            runtime.spawn(tasks::subscribe(config, state.clone(), counters.clone())),
        ];
        Ok(FleetHandle {
            counters,
            cache: cache.clone(),
            tasks,
        })
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    published: AtomicU64,
    publish_failures: AtomicU64,
    received: AtomicU64,
    learned: AtomicU64,
    forgotten: AtomicU64,
    clamped: AtomicU64,
    unshared: AtomicU64,
    rejected: Rejected,
    warmed: AtomicU64,
    reconnects: AtomicU64,
    retried: AtomicU64,
    auth_failures: AtomicU64,
    connected: AtomicBool,
}

/// Counts an error that says Redis refused this tier's credentials (a wrong password, no
/// password where one is required, an ACL user without the permission): connecting again
/// will not help until the URL changes, so it is worth telling apart from an outage.
pub(crate) fn note_error(counters: &Counters, e: &redis::RedisError) {
    // A pipeline's error holds its commands' errors: their codes show only in the text.
    let text = e.to_string();
    let denied = e.kind() == redis::ErrorKind::AuthenticationFailed
        || ["NOAUTH", "NOPERM", "WRONGPASS"]
            .iter()
            .any(|code| e.code() == Some(code) || text.contains(code));
    if denied {
        counters.auth_failures.fetch_add(1, Relaxed);
        tracing::warn!(error = %e, "fleet: Redis refused the tier's credentials");
    }
}

#[derive(Debug, Default)]
pub(crate) struct Rejected {
    oversized: AtomicU64,
    version: AtomicU64,
    malformed: AtomicU64,
    status: AtomicU64,
    stale: AtomicU64,
    replayed: AtomicU64,
    superseded: AtomicU64,
    unsigned: AtomicU64,
    signature: AtomicU64,
}

/// Messages (and stored copies read when warming up) a replica refused, by reason. A refused
/// message changes nothing in the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct FleetRejections {
    /// Longer than a message may be (8 KiB of key and 256 bytes of the rest), or a key
    /// longer than 8 KiB.
    pub oversized: u64,
    /// A message (or stored copy) of another version of the tier: version 1 carried no age,
    /// so its 404s cannot be ordered against this replica's changes.
    pub version: u64,
    /// Not a message: garbage, a missing field, an unreadable key.
    pub malformed: u64,
    /// A status this replica's classifier does not call Missing (a peer may not make a
    /// replica answer 503 or 200 from its cache).
    pub status: u64,
    /// A 404 whose request left more than 5 s before it was published: too old to check
    /// against this replica's recent changes (tombstones last 10 s).
    pub stale: u64,
    /// A sequence number not above the last one seen from its replica: a copy played again.
    pub replayed: u64,
    /// A 404 whose key changed here (a 2xx, a successful write, an invalidation, a clear)
    /// after the peer's request left, less 1 s for transit: the answer here is newer.
    pub superseded: u64,
    /// With a [`secret`](FleetBuilder::secret): a message or stored copy without a MAC.
    pub unsigned: u64,
    /// With a secret: a MAC that does not match (another secret, or altered bytes).
    pub signature: u64,
}

impl Rejected {
    fn snapshot(&self) -> FleetRejections {
        FleetRejections {
            oversized: self.oversized.load(Relaxed),
            version: self.version.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            status: self.status.load(Relaxed),
            stale: self.stale.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            superseded: self.superseded.load(Relaxed),
            unsigned: self.unsigned.load(Relaxed),
            signature: self.signature.load(Relaxed),
        }
    }
}

/// A snapshot of a fleet tier's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct FleetStats {
    /// Events published to Redis.
    pub published: u64,
    /// Publish attempts that failed (Redis down, slow, failing or refusing the credentials).
    /// A failed 404 is dropped, and so are the 404s that come during the backoff after it;
    /// a failed forget or clear waits and is tried again (see `retried`).
    pub publish_failures: u64,
    /// Forgets and clears sent again after a failed attempt (none is dropped for a failure:
    /// up to 1,024 wait, in order; more collapse into one clear, which covers them).
    pub retried: u64,
    /// Connections or commands Redis refused for authentication or permission (a wrong
    /// password or ACL user in the URL, or none where one is required). Requests go on as
    /// without the tier; the tier keeps trying with backoff.
    pub auth_failures: u64,
    /// Events dropped because the publish queue was full.
    pub queue_full: u64,
    /// Messages received from other replicas.
    pub received: u64,
    /// Missing keys learned from other replicas.
    pub learned: u64,
    /// Keys (or whole caches) forgotten because another replica said so.
    pub forgotten: u64,
    /// Entries learned from peers whose TTL was longer than this cache's `max_ttl`: they are
    /// kept for `max_ttl` only.
    pub clamped: u64,
    /// Events of this replica not shared: a key longer than 8 KiB, an entry that expired while
    /// queued, or a 404 whose request left more than 5 s before it could be published.
    pub unshared: u64,
    /// Messages refused, by reason.
    pub rejected: FleetRejections,
    /// Entries read from Redis when warming up.
    pub warmed: u64,
    /// Subscriptions lost and re-established.
    pub reconnects: u64,
    /// Whether the subscription is up now.
    pub connected: bool,
}

/// The running tier. Dropping it stops sharing (the cache goes on alone, and a new tier can
/// be started on it).
pub struct FleetHandle {
    counters: Arc<Counters>,
    cache: NegativeCacheHandle,
    tasks: [JoinHandle<()>; 2],
}

impl FleetHandle {
    /// A snapshot of the tier's counters.
    pub fn stats(&self) -> FleetStats {
        let c = &self.counters;
        FleetStats {
            published: c.published.load(Relaxed),
            publish_failures: c.publish_failures.load(Relaxed),
            queue_full: self.cache.state().peers.dropped.load(Relaxed),
            received: c.received.load(Relaxed),
            learned: c.learned.load(Relaxed),
            forgotten: c.forgotten.load(Relaxed),
            clamped: c.clamped.load(Relaxed),
            unshared: c.unshared.load(Relaxed),
            rejected: c.rejected.snapshot(),
            warmed: c.warmed.load(Relaxed),
            reconnects: c.reconnects.load(Relaxed),
            retried: c.retried.load(Relaxed),
            auth_failures: c.auth_failures.load(Relaxed),
            connected: c.connected.load(Relaxed),
        }
    }
}

impl Drop for FleetHandle {
    fn drop(&mut self) {
        self.cache.state().peers.detach();
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl fmt::Debug for FleetHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetHandle")
            .field("stats", &self.stats())
            .finish()
    }
}
