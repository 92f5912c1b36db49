//! The one way the crate's statistics count: a relaxed increment (counters are read as a
//! snapshot, never to order other memory), on a [`Counter`] striped over cache lines so that
//! threads on different cores never write the same line for a request.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Stripes per counter: threads beyond this many share a stripe (still correct, just less
/// spread).
const STRIPES: usize = 8;

/// One stripe on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Stripe(AtomicU64);

/// A statistics counter every request may bump: one [`AtomicU64`] per stripe, each on its own
/// cache line, a thread always bumping the same stripe. A single shared `AtomicU64` bumped by
/// every request on every core bounces its line between the cores (the `scaling` bench);
/// reading sums the stripes.
///
/// Its methods mirror `AtomicU64`'s, so a counter reads like one.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    stripes: [Stripe; STRIPES],
}

impl Counter {
    /// Adds `n` on this thread's stripe.
    pub(crate) fn fetch_add(&self, n: u64, order: Ordering) {
        self.stripes[stripe()].0.fetch_add(n, order);
    }

    /// The sum of the stripes. Not a snapshot of one instant (no counter read is): adds that
    /// land while it sums are counted or not.
    pub(crate) fn load(&self, order: Ordering) -> u64 {
        self.stripes
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(s.0.load(order)))
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
            i = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(i);
        }
        i
    })
}

/// What [`bump`] counts on.
pub(crate) trait Bump {
    fn bump(&self);
}

impl Bump for AtomicU64 {
    fn bump(&self) {
        self.fetch_add(1, Ordering::Relaxed);
    }
}

impl<T: Bump + ?Sized> Bump for std::sync::Arc<T> {
    fn bump(&self) {
        (**self).bump();
    }
}

impl Bump for Counter {
    fn bump(&self) {
        self.fetch_add(1, Ordering::Relaxed);
    }
}

/// Adds one to `counter`.
pub(crate) fn bump(counter: &impl Bump) {
    counter.bump();
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
                    c.fetch_add(t, Ordering::Relaxed);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = STRIPES as u64 + 3;
        assert_eq!(c.load(Ordering::Relaxed), n * 1000 + n * (n - 1) / 2);
    }

    #[test]
    fn stripes_are_on_lines_of_their_own() {
        assert_eq!(std::mem::align_of::<Stripe>(), 64);
        assert_eq!(std::mem::size_of::<Counter>(), 64 * STRIPES);
    }
}
