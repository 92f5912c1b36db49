//! Burst coalescing: concurrent misses for one key wait for the first to answer.
//!
//! quick_cache has placeholders for this, but its guard, when dropped without a value, hands
//! the slot to *one* waiter at a time: 50 waiters behind a 20 ms origin took 1.06 s,
//! serialised. Here the leader's landing is broadcast: on a Missing answer every waiter gets
//! the synthesized answer, on anything else (or if the leader is cancelled) every waiter is
//! released at once to go upstream itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::Notify;

use super::key::Key;
use super::store::Fresh;

/// How a flight ended, as its waiters see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Landing {
    InFlight,
    /// The leader's answer was Missing and was remembered for `ttl`.
    Missing {
        status: StatusCode,
        ttl: Duration,
    },
    /// Anything else: waiters go upstream themselves.
    Released,
}

impl From<Fresh> for Landing {
    fn from(f: Fresh) -> Self {
        Landing::Missing {
            status: f.status,
            ttl: f.remaining,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Flight {
    landing: Mutex<Landing>,
    notify: Arc<Notify>,
}

impl Flight {
    fn new() -> Self {
        Flight {
            landing: Mutex::new(Landing::InFlight),
            notify: Arc::new(Notify::new()),
        }
    }

    pub(crate) fn landing(&self) -> Landing {
        *self.landing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A notification for the landing. Made *before* reading [`landing`](Self::landing), it
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
            landed: false,
        })
    }

    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

/// The request that went upstream for a key. Dropping it without landing (cancellation, an
/// error, a panic) releases every waiter.
#[derive(Debug)]
pub(crate) struct Leader {
    flights: Arc<Flights>,
    key: Key,
    flight: Arc<Flight>,
    landed: bool,
}

impl Leader {
    pub(crate) fn land(mut self, landing: Landing) {
        self.land_mut(landing);
    }

    fn land_mut(&mut self, landing: Landing) {
        if self.landed {
            return;
        }
        self.landed = true;
        {
            let mut map = self.flights.map.lock().unwrap_or_else(|p| p.into_inner());
            if map
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                map.remove(&self.key);
            }
        }
        *self
            .flight
            .landing
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = landing;
        self.flight.notify.notify_waiters();
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.land_mut(Landing::Released);
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
                        if f.landing() == Landing::InFlight {
                            n.await;
                        }
                        f.landing()
                    })
                }
                Role::Leader(_) => panic!("second leader"),
            })
            .collect();
        drop(leader);
        assert_eq!(flights.in_flight(), 0);
        for w in waiters {
            assert_eq!(w.await.unwrap(), Landing::Released);
        }
        assert!(matches!(flights.join(Key::with_text("k")), Role::Leader(_)));
    }
}
