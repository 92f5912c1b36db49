//! What this cache learns and forgets, offered to other replicas.
//!
//! Nothing listens unless a fleet tier (the `redis` feature) attaches: until then sending is
//! one atomic load. Sending never blocks: a full queue drops the event and counts it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::mpsc;

/// A change to share with other replicas. Keys are as [`NegativeCacheHandle::invalidate`]
/// takes them (the normalised target or the key function's id).
///
/// [`NegativeCacheHandle::invalidate`]: super::NegativeCacheHandle::invalidate
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PeerEvent {
    /// `key` answered `status`, remembered for `ttl` (relative, so clocks need not agree).
    Missing {
        key: Box<str>,
        status: StatusCode,
        ttl: Duration,
    },
    /// `key` was forgotten.
    Forget { key: Box<str> },
    /// Everything was forgotten.
    Clear,
}

#[derive(Debug, Default)]
pub(crate) struct Peers {
    tx: OnceLock<mpsc::Sender<PeerEvent>>,
    pub(crate) dropped: AtomicU64,
}

impl Peers {
    /// Starts sending events to `tx`; false if something is attached already.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn attach(&self, tx: mpsc::Sender<PeerEvent>) -> bool {
        self.tx.set(tx).is_ok()
    }

    pub(crate) fn attached(&self) -> bool {
        self.tx.get().is_some()
    }

    /// Offers an event, built only if someone listens.
    pub(crate) fn send(&self, event: impl FnOnce() -> PeerEvent) {
        if let Some(tx) = self.tx.get() {
            if tx.try_send(event()).is_err() {
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}
