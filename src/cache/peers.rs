//! What this cache learns and forgets, offered to other replicas.
//!
//! Nothing listens unless a fleet tier (the `redis` feature) attaches: until then sending is
//! an uncontended read lock, on misses and invalidations only. Sending never blocks: a full
//! queue drops the event and counts it — and a dropped forget or clear leaves the publisher a
//! debt of one clear, so peers never keep what this cache forgot. The debt outlives the tier:
//! a forget or clear lost because the tier was dropped (unsent, or made while no tier was
//! attached after one had been) is paid by the next tier attached to this cache, as its first
//! message.

use std::sync::RwLock;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::answer::Answer;
use super::recent::Recent;
use std::sync::Arc;

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
        /// What a hit replays besides the status (`None`: nothing; see `Answer::new`).
        answer: Option<Arc<Answer>>,
        status: StatusCode,
        ttl: Duration,
        started: Instant,
        at: Instant,
        /// The adaptive TTL's streak behind `ttl` (0 without it): travels to the peers.
        confirmed: u8,
        /// The age the answer had on arrival beyond the time since its request left (the
        /// origin's `Age`, or what its `Date` says, less the response delay, which the
        /// message's age counts): travels in the answer section as an `Age` field, so that a
        /// peer's hit says its whole age (RFC 9111 §4.2.3).
        origin_age: Duration,
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
    /// A forget or clear found the queue full: the publisher owes the peers one clear (which
    /// covers any forget, as past its own limit of forgets waiting).
    owed_clear: AtomicBool,
    /// A tier was attached once: peers may hold what this cache told them, so a forget or
    /// clear made while none is attached is owed to the next one.
    attached_once: AtomicBool,
    /// Wakes the publisher when a clear becomes owed while it waits for events.
    owed_wake: tokio::sync::Notify,
    /// This cache's recent changes, recorded once a tier attaches.
    pub(crate) recent: Recent,
    /// What this cache's stack called each status, when the cache follows the retry layer's
    /// verdict (it has no classifier of its own for a tier to ask).
    pub(crate) verdicts: Verdicts,
}

/// The verdicts this cache's stack gave each status (100 to 999): Missing, not Missing, both
/// (mixed), or none yet. A peer's answer of a status is applied only if this stack would
/// remember it too.
///
/// A status's verdict can depend on more than the status (a classifier of headers, a retry
/// classifier that reads the request): once this stack has called a status Missing for one
/// answer and something else for another, what a peer's answer of it would mean here is
/// unknown — a message carries no headers — so the status is mixed for good and peers'
/// answers with it are refused. Letting the last verdict decide would let one unrelated
/// request decide what a peer may make another key mean.
pub(crate) struct Verdicts(Box<[AtomicU8]>);

const UNKNOWN: u8 = 0;
const MISSING: u8 = 1;
const NOT_MISSING: u8 = 2;
const MIXED: u8 = 3;

impl Default for Verdicts {
    fn default() -> Self {
        Verdicts((100..1000).map(|_| AtomicU8::new(UNKNOWN)).collect())
    }
}

impl std::fmt::Debug for Verdicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verdicts(..)")
    }
}

impl Verdicts {
    /// This stack called `status` Missing or not.
    pub(crate) fn note(&self, status: StatusCode, missing: bool) {
        let v = if missing { MISSING } else { NOT_MISSING };
        let slot = &self.0[usize::from(status.as_u16() - 100)];
        // Read first: the same verdict again (nearly always) writes nothing, so replicas'
        // cores do not fight over the line. The slot only ever moves from UNKNOWN to a
        // verdict and from a verdict to MIXED, so the update settles within two tries.
        let _ = slot.fetch_update(Relaxed, Relaxed, |cur| match cur {
            UNKNOWN => Some(v),
            c if c == v || c == MIXED => None,
            _ => Some(MIXED),
        });
    }

    /// Whether a peer's answer of `status` means Missing to this stack: `Some(true)` if it
    /// only ever called it Missing, `Some(false)` if never or not always (mixed), `None`
    /// before it answered one.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn missing(&self, status: StatusCode) -> Option<bool> {
        match self.0[usize::from(status.as_u16() - 100)].load(Relaxed) {
            MISSING => Some(true),
            NOT_MISSING | MIXED => Some(false),
            _ => None,
        }
    }
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
        // A clear owed by a former tier is not forgiven: its peers are this tier's peers
        // (whatever Redis it names, they may hold this cache's 404s), and the publisher pays
        // it before anything else.
        self.attached_once.store(true, Ordering::Release);
        self.recent.turn_on();
        true
    }

    /// Stops sending events.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn detach(&self) {
        *self.tx.write().unwrap_or_else(|p| p.into_inner()) = None;
        // Until the next tier: changes are noted by time, which no window forgets.
        self.recent.turn_off();
    }

    pub(crate) fn attached(&self) -> bool {
        let slot = self.tx.read().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().is_some_and(|t| !t.is_closed())
    }

    /// Offers an event, built only if someone listens. A 404 that finds the queue full is
    /// dropped (it costs a peer one upstream request); a forget or clear becomes a clear owed,
    /// because a lost forget would let peers serve a stale 404.
    pub(crate) fn send(&self, event: impl FnOnce() -> PeerEvent) {
        let slot = self.tx.read().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(tx) => {
                if let Err(e) = tx.try_send(event()) {
                    self.dropped.fetch_add(1, Relaxed);
                    if !matches!(e.into_inner(), PeerEvent::Missing { .. }) {
                        self.owe_clear();
                    }
                }
            }
            // Between tiers: built only to see what it is, and only after a tier has been
            // attached (before that, nothing was ever told to the peers).
            None if self.attached_once.load(Ordering::Acquire)
                && !matches!(event(), PeerEvent::Missing { .. }) =>
            {
                self.owe_clear();
            }
            None => {}
        }
    }

    /// Records that a forget or clear did not reach the peers: one clear is owed.
    pub(crate) fn owe_clear(&self) {
        self.owed_clear.store(true, Ordering::Release);
        self.owed_wake.notify_one();
    }

    /// Whether a clear is owed to the peers (and it is now the caller's to send).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn take_owed_clear(&self) -> bool {
        self.owed_clear.swap(false, Ordering::AcqRel)
    }

    /// Resolves when a clear may have become owed (then see [`take_owed_clear`]).
    ///
    /// [`take_owed_clear`]: Peers::take_owed_clear
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) async fn clear_owed(&self) {
        self.owed_wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forget_or_clear_that_finds_the_queue_full_is_owed_as_a_clear() {
        let peers = Peers::default();
        let (tx, _rx) = mpsc::channel(1);
        assert!(peers.attach(tx));
        let missing = || PeerEvent::Missing {
            key: "k".into(),
            answer: None,
            status: StatusCode::NOT_FOUND,
            ttl: Duration::from_secs(1),
            started: Instant::now(),
            at: Instant::now(),
            confirmed: 0,
            origin_age: Duration::ZERO,
        };
        peers.send(missing);
        // Full: a 404 is dropped and owes nothing.
        peers.send(missing);
        assert!(!peers.take_owed_clear());
        peers.send(|| PeerEvent::Forget { key: "k".into() });
        assert!(peers.take_owed_clear(), "a dropped forget is owed");
        assert!(!peers.take_owed_clear(), "once");
        peers.send(|| PeerEvent::Clear);
        assert!(peers.take_owed_clear(), "a dropped clear is owed");
        assert_eq!(peers.dropped.load(Relaxed), 3);
    }

    #[test]
    fn a_clear_owed_outlives_the_tier_that_owed_it() {
        let peers = Peers::default();
        peers.send(|| PeerEvent::Forget { key: "k".into() });
        assert!(
            !peers.take_owed_clear(),
            "no tier ever: nothing told, nothing owed"
        );
        let (tx, rx) = mpsc::channel(1);
        assert!(peers.attach(tx));
        peers.send(|| PeerEvent::Clear);
        peers.send(|| PeerEvent::Forget { key: "k".into() });
        peers.detach();
        drop(rx);
        let (tx, _rx) = mpsc::channel(1);
        assert!(peers.attach(tx));
        assert!(
            peers.take_owed_clear(),
            "a new tier pays the former one's debt"
        );
        peers.detach();
        peers.send(|| PeerEvent::Forget { key: "k".into() });
        let (tx, _rx) = mpsc::channel(1);
        assert!(peers.attach(tx));
        assert!(peers.take_owed_clear(), "a forget between tiers is owed");
        assert!(!peers.take_owed_clear(), "once");
    }

    #[test]
    fn a_status_called_both_missing_and_not_is_refused_for_good() {
        let v = Verdicts::default();
        let (nf, gone) = (StatusCode::NOT_FOUND, StatusCode::GONE);
        assert_eq!(v.missing(nf), None);
        v.note(nf, true);
        v.note(nf, true);
        assert_eq!(v.missing(nf), Some(true));
        v.note(nf, false);
        assert_eq!(v.missing(nf), Some(false), "mixed");
        for _ in 0..3 {
            v.note(nf, true);
        }
        assert_eq!(v.missing(nf), Some(false), "mixed for good");
        v.note(gone, false);
        assert_eq!(v.missing(gone), Some(false));
        v.note(gone, true);
        assert_eq!(v.missing(gone), Some(false), "mixed either way round");
        assert_eq!(v.missing(StatusCode::IM_A_TEAPOT), None, "per status");
    }
}
