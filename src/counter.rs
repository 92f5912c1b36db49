//! The one way the crate's statistics count: a relaxed increment (counters are read as a
//! snapshot, never to order other memory).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Adds one to `counter`.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}
