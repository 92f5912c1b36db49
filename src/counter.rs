//! The one way the crate's statistics count: a relaxed increment (counters are read as a
//! snapshot, never to order other memory) on a [`Counter`] striped over cache lines, so that
//! threads on different cores never write the same line for a request — and, when the builder
//! was given an observer, the same event told to it, in the same place, so the two can't drift
//! apart.
//!
//! A thread that holds a stripe of its own (the first [`STRIPES`] threads alive that count)
//! is its only writer, so its add is a plain load and store: no locked instruction, which
//! costs as much as the rest of a counted event (a `lock xadd` drains the store buffer). Other
//! threads share one more stripe, with an atomic add. Linux's per-CPU counters and the
//! `thread_local` counters of metrics libraries count the same way.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{
    AtomicU64, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};

use crate::observe::{Observer, SharedObserver};

/// Stripes a thread may hold for itself: threads beyond this many alive share one more.
const STRIPES: usize = 8;

/// The stripe of the threads that hold none.
const SHARED: usize = STRIPES;

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
    /// One per thread that holds a stripe, and the shared one last.
    stripes: [Stripe; STRIPES + 1],
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
        match stripe() {
            SHARED => {
                self.stripes[SHARED].0.fetch_add(n, Relaxed);
            }
            own => {
                // This thread is the stripe's only writer while it holds it (see `Held`).
                let s = &self.stripes[own].0;
                s.store(s.load(Relaxed).wrapping_add(n), Relaxed);
            }
        }
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

/// Which stripes threads hold: bit `i` for stripe `i`.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// The stripe this thread holds (`usize::MAX` until its first count; [`SHARED`] when every
/// stripe was held then). Given back when the thread exits.
struct Held(Cell<usize>);

impl Drop for Held {
    fn drop(&mut self) {
        let i = self.0.get();
        if i < STRIPES {
            // Release: the next holder's first load sees this thread's last store.
            HELD.fetch_and(!(1 << i), Release);
        }
    }
}

thread_local! {
    static HOLDS: Held = const { Held(Cell::new(usize::MAX)) };
}

/// This thread's stripe, taken at its first count: a free one, or [`SHARED`]. During the
/// thread's exit, once its stripe is given back, [`SHARED`].
#[inline]
fn stripe() -> usize {
    HOLDS
        .try_with(|h| {
            let i = h.0.get();
            if i != usize::MAX {
                return i;
            }
            let i = take();
            h.0.set(i);
            i
        })
        .unwrap_or(SHARED)
}

/// Takes a free stripe for this thread, or [`SHARED`] if all are held.
#[cold]
fn take() -> usize {
    let mut held = HELD.load(Relaxed);
    loop {
        let free = !held & ((1 << STRIPES) - 1);
        if free == 0 {
            return SHARED;
        }
        let i = free.trailing_zeros() as usize;
        // Acquire: the previous holder's stores to stripe `i` are seen before ours.
        match HELD.compare_exchange_weak(held, held | 1 << i, Acquire, Relaxed) {
            Ok(_) => return i,
            Err(now) => held = now,
        }
    }
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

    /// Threads come and go in waves, more alive at once than there are stripes, each wave
    /// taking the stripes the last one gave back: a stripe with two writers at once, or a
    /// holder that misses its predecessor's last store, loses adds.
    #[test]
    fn a_stripe_has_one_writer_and_passes_on_its_count() {
        const ADDS: u64 = 100_000;
        let c = Arc::new(Counter::default());
        let alive = STRIPES + 4;
        for wave in 0..4 {
            let start = Arc::new(std::sync::Barrier::new(alive));
            let threads: Vec<_> = (0..alive)
                .map(|_| {
                    let (c, start) = (c.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        for _ in 0..ADDS {
                            bump(&*c);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(c.get(), (wave + 1) * alive as u64 * ADDS, "wave {wave}");
        }
    }

    /// Adds made while a thread exits, from the destructors of other thread-locals, are all
    /// counted: one destroyed before the thread gives its stripe back (it adds on the stripe),
    /// one destroyed after (it adds on the shared one, while another thread may hold the stripe
    /// given back), and one that makes the thread's very first count (it takes a stripe during
    /// the exit). Threads that hammer the counter all along take every stripe given back.
    #[test]
    fn adds_from_other_thread_locals_destructors_are_counted() {
        use std::cell::RefCell;
        use std::sync::atomic::AtomicBool;

        const ADDS: u64 = 20_000;
        struct CountsOnDrop(Arc<Counter>);
        impl Drop for CountsOnDrop {
            fn drop(&mut self) {
                for _ in 0..ADDS {
                    bump(&*self.0);
                }
            }
        }
        thread_local! {
            // Registered before the stripe's holder: destroyed after it.
            static BEFORE: RefCell<Option<CountsOnDrop>> = const { RefCell::new(None) };
            // Registered after it: destroyed before it.
            static AFTER: RefCell<Option<CountsOnDrop>> = const { RefCell::new(None) };
        }
        let c = Arc::new(Counter::default());
        let stop = Arc::new(AtomicBool::new(false));
        let hammers: Vec<_> = (0..STRIPES)
            .map(|_| {
                let (c, stop) = (c.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Relaxed) {
                        // Short-lived threads: each takes a stripe given back, if any.
                        let c = c.clone();
                        n += std::thread::spawn(move || {
                            for _ in 0..ADDS {
                                bump(&*c);
                            }
                            ADDS
                        })
                        .join()
                        .unwrap();
                    }
                    n
                })
            })
            .collect();
        let mut exits = 0u64;
        for round in 0..40 {
            let exiting: Vec<_> = (0..STRIPES)
                .map(|t| {
                    let c = c.clone();
                    std::thread::spawn(move || match (round + t) % 3 {
                        0 => {
                            BEFORE.with(|b| *b.borrow_mut() = Some(CountsOnDrop(c.clone())));
                            for _ in 0..ADDS {
                                bump(&*c);
                            }
                            AFTER.with(|a| *a.borrow_mut() = Some(CountsOnDrop(c)));
                            3
                        }
                        // The first count is made by a destructor.
                        1 => {
                            BEFORE.with(|b| *b.borrow_mut() = Some(CountsOnDrop(c)));
                            1
                        }
                        _ => {
                            AFTER.with(|a| *a.borrow_mut() = Some(CountsOnDrop(c.clone())));
                            for _ in 0..ADDS {
                                bump(&*c);
                            }
                            2
                        }
                    })
                })
                .collect();
            for t in exiting {
                exits += t.join().unwrap();
            }
        }
        stop.store(true, Relaxed);
        let hammered: u64 = hammers.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(c.get(), hammered + exits * ADDS);
    }

    #[test]
    fn stripes_are_on_lines_of_their_own() {
        assert_eq!(std::mem::align_of::<Stripe>(), 64);
        assert_eq!(
            std::mem::size_of::<[Stripe; STRIPES + 1]>(),
            64 * (STRIPES + 1)
        );
    }
}
