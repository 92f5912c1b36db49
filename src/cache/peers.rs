//! What this cache learns and forgets, offered to other replicas.
//!
//! Nothing listens unless a fleet tier (the `redis` feature) attaches: until then sending is
//! an uncontended read lock, on misses and invalidations only. Sending never blocks: a full
//! queue drops the event and counts it.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::recent::Recent;

/// A change to share with other replicas. Keys are as [`NegativeCacheHandle::invalidate`]
/// takes them (the normalised target or the key function's id).
///
/// [`NegativeCacheHandle::invalidate`]: super::NegativeCacheHandle::invalidate
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PeerEvent {
    /// `key` answered `status`, remembered at `at` for `ttl`; its request left at `started`.
    /// Sent relative to the moment of publishing (remaining TTL, age of the request), so
    /// clocks need not agree.
    Missing {
        key: Box<str>,
        status: StatusCode,
        ttl: Duration,
        started: Instant,
        at: Instant,
    },
    /// `key` was forgotten.
    Forget { key: Box<str> },
    /// Everything was forgotten.
    Clear,
}

#[derive(Debug, Default)]
pub(crate) struct Peers {
    // A read lock per event (misses and invalidations only, never hits); written when a tier
    // attaches or detaches.
    tx: RwLock<Option<mpsc::Sender<PeerEvent>>>,
    pub(crate) dropped: AtomicU64,
    /// This cache's recent changes, recorded once a tier attaches.
    pub(crate) recent: Recent,
}

impl Peers {
    /// Starts sending events to `tx`; false if a live tier is attached already.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn attach(&self, tx: mpsc::Sender<PeerEvent>) -> bool {
        let mut slot = self.tx.write().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|t| !t.is_closed()) {
            return false;
        }
        *slot = Some(tx);
        self.recent.turn_on();
        true
    }

    /// Stops sending events.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn detach(&self) {
        *self.tx.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub(crate) fn attached(&self) -> bool {
        let slot = self.tx.read().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().is_some_and(|t| !t.is_closed())
    }

    /// Offers an event, built only if someone listens.
    pub(crate) fn send(&self, event: impl FnOnce() -> PeerEvent) {
        let slot = self.tx.read().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = slot.as_ref() {
            if tx.try_send(event()).is_err() {
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}
