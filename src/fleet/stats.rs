//! The tier's counters, and their snapshot.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::counter::{Counter, bump};
use crate::observe::{FleetEvent, FleetRejection, SharedObserver};

#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) published: Counter,
    pub(crate) publish_failures: Counter,
    pub(crate) received: Counter,
    pub(crate) learned: Counter,
    pub(crate) forgotten: Counter,
    pub(crate) clamped: Counter,
    pub(crate) unshared: Counter,
    pub(crate) rejected: Rejected,
    pub(crate) warmed: Counter,
    pub(crate) reconnects: Counter,
    pub(crate) retried: Counter,
    pub(crate) auth_failures: Counter,
    connected: AtomicBool,
    observer: Option<SharedObserver>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new(None)
    }
}

impl Counters {
    /// Counters at 0, each telling `observer` (if any) its event.
    pub(crate) fn new(observer: Option<SharedObserver>) -> Self {
        use FleetEvent as E;
        use FleetRejection as R;
        let o = &observer;
        Counters {
            published: Counter::new(o, |o, _| o.fleet(E::Published)),
            publish_failures: Counter::new(o, |o, _| o.fleet(E::PublishFailed)),
            received: Counter::new(o, |o, _| o.fleet(E::Received)),
            learned: Counter::new(o, |o, _| o.fleet(E::Learned)),
            forgotten: Counter::new(o, |o, _| o.fleet(E::Forgotten)),
            clamped: Counter::new(o, |o, _| o.fleet(E::Clamped)),
            unshared: Counter::new(o, |o, _| o.fleet(E::Unshared)),
            rejected: Rejected {
                oversized: Counter::new(o, |o, _| o.fleet(E::Rejected(R::Oversized))),
                version: Counter::new(o, |o, _| o.fleet(E::Rejected(R::Version))),
                malformed: Counter::new(o, |o, _| o.fleet(E::Rejected(R::Malformed))),
                status: Counter::new(o, |o, _| o.fleet(E::Rejected(R::Status))),
                stale: Counter::new(o, |o, _| o.fleet(E::Rejected(R::Stale))),
                replayed: Counter::new(o, |o, _| o.fleet(E::Rejected(R::Replayed))),
                superseded: Counter::new(o, |o, _| o.fleet(E::Rejected(R::Superseded))),
                unsigned: Counter::new(o, |o, _| o.fleet(E::Rejected(R::Unsigned))),
                signature: Counter::new(o, |o, _| o.fleet(E::Rejected(R::Signature))),
            },
            warmed: Counter::new(o, |o, _| o.fleet(E::Warmed)),
            reconnects: Counter::new(o, |o, _| o.fleet(E::Reconnected)),
            retried: Counter::new(o, |o, _| o.fleet(E::Retried)),
            auth_failures: Counter::new(o, |o, _| o.fleet(E::AuthFailure)),
            connected: AtomicBool::new(false),
            observer,
        }
    }

    /// The subscription is up (or down): noted, and told when it changed.
    pub(crate) fn set_connected(&self, up: bool) {
        let was = self.connected.swap(up, Relaxed);
        if let Some(o) = self.observer.as_ref().filter(|_| was != up) {
            o.fleet(FleetEvent::Connected(up));
        }
    }
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
        bump(&counters.auth_failures);
        tracing::warn!(error = %e, "fleet: Redis refused the tier's credentials");
    } else {
        // An outage logs once per attempt, with backoff between attempts: debug, not warn.
        tracing::debug!(error = %e, "fleet: a Redis command failed");
    }
}

#[derive(Debug)]
pub(crate) struct Rejected {
    pub(crate) oversized: Counter,
    pub(crate) version: Counter,
    pub(crate) malformed: Counter,
    pub(crate) status: Counter,
    pub(crate) stale: Counter,
    pub(crate) replayed: Counter,
    pub(crate) superseded: Counter,
    pub(crate) unsigned: Counter,
    pub(crate) signature: Counter,
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
    /// after the peer's request left, less 1 s for transit, or whose key holds an answer that
    /// arrived here after the peer's request left: the answer here is newer.
    pub superseded: u64,
    /// With a [`secret`](crate::fleet::FleetBuilder::secret): a message or stored copy without a MAC.
    pub unsigned: u64,
    /// With a secret: a MAC that does not match (another secret, or altered bytes).
    pub signature: u64,
}

impl Rejected {
    fn snapshot(&self) -> FleetRejections {
        FleetRejections {
            oversized: self.oversized.get(),
            version: self.version.get(),
            malformed: self.malformed.get(),
            status: self.status.get(),
            stale: self.stale.get(),
            replayed: self.replayed.get(),
            superseded: self.superseded.get(),
            unsigned: self.unsigned.get(),
            signature: self.signature.get(),
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
            published: self.published.get(),
            publish_failures: self.publish_failures.get(),
            queue_full,
            received: self.received.get(),
            learned: self.learned.get(),
            forgotten: self.forgotten.get(),
            clamped: self.clamped.get(),
            unshared: self.unshared.get(),
            rejected: self.rejected.snapshot(),
            warmed: self.warmed.get(),
            reconnects: self.reconnects.get(),
            retried: self.retried.get(),
            auth_failures: self.auth_failures.get(),
            connected: self.connected.load(Relaxed),
        }
    }
}
