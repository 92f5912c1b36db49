//! The one way the crate's statistics count: a relaxed increment (counters are read as a
//! snapshot, never to order other memory) on a [`Counter`] striped over cache lines, so that
//! threads on different cores never write the same line for a request — and, when the builder
//! was given an observer, the same event told to it, in the same place, so the two can't drift
//! apart.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::observe::{Observer, SharedObserver};

/// Stripes per counter: threads beyond this many share a stripe (still correct, just less
/// spread).
const STRIPES: usize = 8;

/// One stripe on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Stripe(AtomicU64);

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

/// A statistics counter every request may bump, which also tells the layer's observer, if it
/// has one. One [`AtomicU64`] per stripe, each on its own cache line, a thread always bumping
/// the same stripe: a single shared `AtomicU64` bumped by every request on every core bounces
/// its line between the cores (the `scaling` bench); reading sums the stripes.
pub(crate) struct Counter {
    stripes: [Stripe; STRIPES],
    tap: Option<(SharedObserver, Emit)>,
}

impl Counter {
    /// A counter at 0 that calls `emit` on `observer` (if any) as it grows.
    pub(crate) fn new(observer: &Option<SharedObserver>, emit: Emit) -> Self {
        Counter {
            stripes: Default::default(),
            tap: observer.clone().map(|o| (o, emit)),
        }
    }

    /// The sum of the stripes. Not a snapshot of one instant (no counter read is): adds that
    /// land while it sums are counted or not.
    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(s.0.load(Relaxed)))
    }
}

impl Default for Counter {
    fn default() -> Self {
        Counter::new(&None, |_, _| {})
    }
}

impl Count for Counter {
    #[inline]
    fn add(&self, n: u64) {
        self.stripes[stripe()].0.fetch_add(n, Relaxed);
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

/// This thread's stripe, handed out round-robin at the thread's first count.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Relaxed) % STRIPES;
            s.set(i);
        }
        i
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn every_add_from_every_thread_is_counted() {
        let c = Arc::new(Counter::default());
        let threads: Vec<_> = (0..STRIPES as u64 + 3)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        bump(&*c);
                    }
                    c.add(t);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = STRIPES as u64 + 3;
        assert_eq!(c.get(), n * 1000 + n * (n - 1) / 2);
    }

    #[test]
    fn stripes_are_on_lines_of_their_own() {
        assert_eq!(std::mem::align_of::<Stripe>(), 64);
        assert_eq!(std::mem::size_of::<[Stripe; STRIPES]>(), 64 * STRIPES);
    }
}
