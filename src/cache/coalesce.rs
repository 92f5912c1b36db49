//! Burst coalescing: concurrent misses for one key wait for the first to answer.
//!
//! quick_cache has placeholders for this, but its guard, when dropped without a value, hands
//! the slot to *one* waiter at a time: 50 waiters behind a 20 ms origin took 1.06 s,
//! serialised. Here the leader's end is broadcast: when it has settled its answer (remembered
//! a Missing one, or not) or is cancelled, every waiter wakes at once and looks the key up in
//! the store — so a waiter is answered by the same rule as any other lookup (a 404 forgotten
//! since by a 2xx or a write is not served) — and goes upstream itself if nothing is there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::key::Key;

#[derive(Debug)]
pub(crate) struct Flight {
    landed: AtomicBool,
    notify: Arc<Notify>,
}

impl Flight {
    fn new() -> Self {
        Flight {
            landed: AtomicBool::new(false),
            notify: Arc::new(Notify::new()),
        }
    }

    /// Whether the leader has settled (or is gone).
    pub(crate) fn landed(&self) -> bool {
        self.landed.load(Ordering::Acquire)
    }

    /// A notification for the landing. Made *before* reading [`landed`](Self::landed), it
    /// can't be missed: `notify_waiters` reaches every notification made before it.
    pub(crate) fn notified(&self) -> tokio::sync::futures::OwnedNotified {
        self.notify.clone().notified_owned()
    }
}

/// The flights in progress, by key.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<Key, Arc<Flight>>>,
}

pub(crate) enum Role {
    Leader(Leader),
    Waiter(Arc<Flight>),
}

impl Flights {
    pub(crate) fn join(self: &Arc<Self>, key: Key) -> Role {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(&key) {
            return Role::Waiter(f.clone());
        }
        let flight = Arc::new(Flight::new());
        map.insert(key.clone(), flight.clone());
        Role::Leader(Leader {
            flights: self.clone(),
            key,
            flight,
        })
    }

    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

/// The request that went upstream for a key. Dropping it — once its answer is settled, or on
/// cancellation, an error, a panic — wakes every waiter.
#[derive(Debug)]
pub(crate) struct Leader {
    flights: Arc<Flights>,
    key: Key,
    flight: Arc<Flight>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        {
            let mut map = self.flights.map.lock().unwrap_or_else(|p| p.into_inner());
            if map
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                map.remove(&self.key);
            }
        }
        self.flight.landed.store(true, Ordering::Release);
        self.flight.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dropped_leader_releases_every_waiter_at_once() {
        let flights = Arc::new(Flights::default());
        let Role::Leader(leader) = flights.join(Key::with_text("k")) else {
            panic!("leader")
        };
        let waiters: Vec<_> = (0..50)
            .map(|_| match flights.join(Key::with_text("k")) {
                Role::Waiter(f) => {
                    let n = f.notified();
                    tokio::spawn(async move {
                        if !f.landed() {
                            n.await;
                        }
                        f.landed()
                    })
                }
                Role::Leader(_) => panic!("second leader"),
            })
            .collect();
        drop(leader);
        assert_eq!(flights.in_flight(), 0);
        for w in waiters {
            assert!(w.await.unwrap());
        }
        assert!(matches!(flights.join(Key::with_text("k")), Role::Leader(_)));
    }
}
