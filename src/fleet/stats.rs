//! The tier's counters, and their snapshot.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) publish_failures: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) learned: AtomicU64,
    pub(crate) forgotten: AtomicU64,
    pub(crate) clamped: AtomicU64,
    pub(crate) unshared: AtomicU64,
    pub(crate) rejected: Rejected,
    pub(crate) warmed: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    pub(crate) connected: AtomicBool,
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
    } else {
        // An outage logs once per attempt, with backoff between attempts: debug, not warn.
        tracing::debug!(error = %e, "fleet: a Redis command failed");
    }
}

#[derive(Debug, Default)]
pub(crate) struct Rejected {
    pub(crate) oversized: AtomicU64,
    pub(crate) version: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) status: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) superseded: AtomicU64,
    pub(crate) unsigned: AtomicU64,
    pub(crate) signature: AtomicU64,
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
    /// With a [`secret`](crate::fleet::FleetBuilder::secret): a message or stored copy without a MAC.
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
    /// Events dropped because the publish queue was full. A 404 dropped so costs a peer one
    /// upstream request; forgets and clears dropped so are sent as one clear instead.
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

impl Counters {
    pub(crate) fn snapshot(&self, queue_full: u64) -> FleetStats {
        FleetStats {
            published: self.published.load(Relaxed),
            publish_failures: self.publish_failures.load(Relaxed),
            queue_full,
            received: self.received.load(Relaxed),
            learned: self.learned.load(Relaxed),
            forgotten: self.forgotten.load(Relaxed),
            clamped: self.clamped.load(Relaxed),
            unshared: self.unshared.load(Relaxed),
            rejected: self.rejected.snapshot(),
            warmed: self.warmed.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            retried: self.retried.load(Relaxed),
            auth_failures: self.auth_failures.load(Relaxed),
            connected: self.connected.load(Relaxed),
        }
    }
}
