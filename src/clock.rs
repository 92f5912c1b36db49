//! One clock read per request across the crate's layers.
//!
//! Each layer reads tokio's clock when a request comes in: the negative cache to check an
//! entry's freshness and to date the request (RFC 9111 §4.2.3 `request_time`), the retry
//! layer to start the request's deadline and to pick its budget slot. Stacked, they would read
//! it twice within a microsecond, and a read is a fifth of what a pass-through costs the retry
//! layer (a vDSO `clock_gettime`, about 20 ns on a VM). So a layer lends its reading to the
//! layers it calls synchronously: the time is set for the duration of its inner service's
//! `call` and taken by the next layer's `call` instead of a read of its own.
//!
//! Only a `call` made inside the lender's `call` on the same thread sees the loan: a layer
//! between them that queues the request (`Buffer`) or spawns it calls the next layer later,
//! on another task, which reads the clock itself. The loan is always the earlier reading, so a
//! deadline counted from it ends no later than one counted from a fresh reading would; it is
//! stale only by what the layers between spend in their own `call` (a `call` that blocks the
//! thread would make it so: tower's contract asks `call` to return at once). For the negative
//! cache stale is the lenient side: an entry is judged fresh as of the lender's reading.

use std::cell::Cell;

use tokio::time::Instant;

thread_local! {
    static LENT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The time a calling layer lent, or tokio's clock read now.
#[inline]
pub(crate) fn now() -> Instant {
    LENT.try_with(Cell::get)
        .ok()
        .flatten()
        .unwrap_or_else(Instant::now)
}

/// Lends `now` to the layers called until the returned guard drops (on unwinding too), when
/// whatever was lent before is lent again.
#[inline]
pub(crate) fn lend(now: Instant) -> Loan {
    Loan(LENT.try_with(|l| l.replace(Some(now))).ok().flatten())
}

/// A loan of the time: see [`lend`].
pub(crate) struct Loan(Option<Instant>);

impl Drop for Loan {
    #[inline]
    fn drop(&mut self) {
        let _ = LENT.try_with(|l| l.set(self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_loan_lasts_while_its_guard_lives_and_nests() {
        let t0 = Instant::now();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            now(),
            t0 + Duration::from_secs(5),
            "nothing lent: the clock"
        );
        {
            let _outer = lend(t0);
            assert_eq!(now(), t0);
            {
                let _inner = lend(t0 + Duration::from_secs(1));
                assert_eq!(now(), t0 + Duration::from_secs(1));
            }
            assert_eq!(now(), t0, "the outer loan again");
        }
        assert_eq!(now(), t0 + Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_loan_ends_when_the_call_it_covers_panics() {
        let t0 = Instant::now();
        tokio::time::advance(Duration::from_secs(5)).await;
        let caught = std::panic::catch_unwind(|| {
            let _loan = lend(t0);
            panic!("the inner call panics");
        });
        assert!(caught.is_err());
        assert_eq!(now(), t0 + Duration::from_secs(5));
    }

    #[test]
    fn a_loan_is_of_its_own_thread() {
        let past = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        let _loan = lend(past);
        let other = std::thread::spawn(now).join().unwrap();
        assert!(
            other >= past + Duration::from_millis(2),
            "another thread reads the clock"
        );
        assert_eq!(now(), past);
    }
}
