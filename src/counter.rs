//! The one way the crate's statistics count: a relaxed increment (counters are read as a
//! snapshot, never to order other memory) — and, when the builder was given an observer, the
//! same event told to it, in the same place, so the two can't drift apart.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::observe::{Observer, SharedObserver};

/// Something that counts.
pub(crate) trait Count {
    fn add(&self, n: u64);
}

impl Count for AtomicU64 {
    fn add(&self, n: u64) {
        self.fetch_add(n, Relaxed);
    }
}

impl<T: Count> Count for std::sync::Arc<T> {
    fn add(&self, n: u64) {
        (**self).add(n);
    }
}

/// Adds one to `counter`.
pub(crate) fn bump(counter: &impl Count) {
    counter.add(1);
}

/// Tells an observer that a counter grew by `n`.
pub(crate) type Emit = fn(&dyn Observer, u64);

/// A statistics counter that also tells the layer's observer, if it has one.
pub(crate) struct Counter {
    n: AtomicU64,
    tap: Option<(SharedObserver, Emit)>,
}

impl Counter {
    /// A counter at 0 that calls `emit` on `observer` (if any) as it grows.
    pub(crate) fn new(observer: &Option<SharedObserver>, emit: Emit) -> Self {
        Counter {
            n: AtomicU64::new(0),
            tap: observer.clone().map(|o| (o, emit)),
        }
    }

    /// Its value now.
    pub(crate) fn get(&self) -> u64 {
        self.n.load(Relaxed)
    }
}

impl Count for Counter {
    #[inline]
    fn add(&self, n: u64) {
        self.n.fetch_add(n, Relaxed);
        if let Some((observer, emit)) = &self.tap {
            emit(&**observer, n);
        }
    }
}

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}
