//! A retry budget: retries allowed as a ratio of requests, plus a small per-second allowance.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{
    AtomicI64, AtomicU64, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release, SeqCst},
};
use std::time::Duration;

use tokio::time::Instant;

use crate::BuildError;

/// Fixed-point unit of the budget: one retry costs `UNIT`, one request deposits `ratio * UNIT`.
///
/// tower's `TpsBudget` sets the cost of a retry to `(1.0 / ratio) as isize`, truncating: a ratio
/// of 0.6 costs 1 and admits a retry per request (100%), 0.3 admits 33%
/// (tower-rs/tower#857). Scaling the deposit instead keeps the ratio exact to 1/1000.
const UNIT: i64 = 1000;
const SLOTS: usize = 10;

/// Retries allowed as a fraction of recent requests, plus a per-second reserve — the budget of
/// Finagle, Envoy and gRPC, and of tower's `TpsBudget`, with exact fractional ratios.
///
/// Each request deposits `ratio` of a retry; each retry withdraws one. Deposits and withdrawals
/// expire after `window`, and `min_per_sec × window` retries are always available on top, so a
/// failing upstream sees at most `(1 + ratio) ×` its normal load plus that allowance.
///
/// The layer keeps one per scope ([`BudgetScope`](super::BudgetScope): per host by default),
/// shared by all clones of [`StatusAwareRetryLayer`](crate::StatusAwareRetryLayer) that built it.
/// The methods taking `now` are pure bookkeeping (the layer passes tokio's clock), so the
/// arithmetic can be tested without sleeping; it also implements tower's
/// [`Budget`](tower::retry::budget::Budget) for use with `tower::retry`.
///
/// ```
/// use std::time::Duration;
/// use tokio::time::Instant;
/// use tower_negative_cache::retry::RetryBudget;
///
/// let budget = RetryBudget::new(0.6, 0, Duration::from_secs(10)).unwrap();
/// let now = Instant::now();
/// let mut retries = 0;
/// for _ in 0..100 {
///     budget.deposit_at(now);
///     if budget.withdraw_at(now) {
///         retries += 1;
///     }
/// }
/// assert_eq!(retries, 60);
/// ```
pub struct RetryBudget {
    deposit: i64,
    reserve: i64,
    slot_ns: u64,
    epoch: Instant,
    // Deposits and withdrawals of the last SLOTS tenths of the window. A request only adds to
    // the current slot (one atomic add); moving to the next slot takes the lock, once per
    // tenth of a window.
    slots: [AtomicI64; SLOTS],
    current: AtomicUsize,
    /// When the current slot ends, in nanoseconds since `epoch`.
    slot_end: AtomicU64,
    rotation: Mutex<()>,
}

impl RetryBudget {
    /// The defaults: 20% of requests, plus 10 retries per second, over a 10 s window.
    pub fn default_budget() -> Self {
        Self::new(0.2, 10, Duration::from_secs(10)).expect("defaults are valid")
    }

    /// A budget of `ratio` retries per request (`0.0..=1000.0`), plus `min_per_sec` retries per
    /// second (`0..=1_000_000`), counted over `window` (`1 s..=60 s`).
    pub fn new(ratio: f64, min_per_sec: u32, window: Duration) -> Result<Self, BuildError> {
        Self::validate((ratio, min_per_sec, window))?;
        Ok(Self::starting_at(
            ratio,
            min_per_sec,
            window,
            Instant::now(),
        ))
    }

    /// A budget of validated settings whose slots are counted from `epoch` (a scope's budget
    /// made when its first request came).
    pub(crate) fn starting_at(
        ratio: f64,
        min_per_sec: u32,
        window: Duration,
        epoch: Instant,
    ) -> Self {
        let reserve = (f64::from(min_per_sec) * window.as_secs_f64() * UNIT as f64) as i64;
        let slot_ns = u64::try_from((window / SLOTS as u32).as_nanos()).unwrap_or(u64::MAX);
        RetryBudget {
            deposit: (ratio * UNIT as f64).round() as i64,
            reserve,
            slot_ns,
            epoch,
            slots: Default::default(),
            current: AtomicUsize::new(0),
            slot_end: AtomicU64::new(slot_ns),
            rotation: Mutex::new(()),
        }
    }

    /// Whether nothing happened to the budget for a whole window by `now`: every deposit and
    /// withdrawal has expired, so a new budget would answer exactly as this one.
    pub(crate) fn idle_at(&self, now: Instant) -> bool {
        let now_ns =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let window = self.slot_ns.saturating_mul(SLOTS as u64);
        now_ns >= self.slot_end.load(Acquire).saturating_add(window)
    }

    /// The settings' one check, shared with the layer builder's setters.
    pub(crate) fn validate(
        (ratio, min_per_sec, window): (f64, u32, Duration),
    ) -> Result<(), BuildError> {
        if !(0.0..=1000.0).contains(&ratio) {
            return Err(BuildError::range("budget_ratio", ratio, "0.0..=1000.0"));
        }
        if min_per_sec > 1_000_000 {
            return Err(BuildError::range(
                "budget_min_per_sec",
                min_per_sec,
                "0..=1000000",
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&window) {
            return Err(BuildError::range("budget_window", window, "1s..=60s"));
        }
        Ok(())
    }

    /// Records a request at `now`.
    pub fn deposit_at(&self, now: Instant) {
        let slot = self.slot(now);
        slot.fetch_add(self.deposit, Relaxed);
    }

    /// Records a request at `now`, as [`deposit_at`](Self::deposit_at) does; `until` is the
    /// caller's memory of when the slot current at its last deposit ends (set here). Before
    /// then, that slot is still the current one, and its end need not be worked out from the
    /// epoch (a 128-bit division per request, the costliest part of a deposit).
    pub(crate) fn deposit_before(&self, now: Instant, until: &mut Option<Instant>) {
        if until.is_some_and(|u| now < u) {
            self.slots[self.current.load(Acquire)].fetch_add(self.deposit, Relaxed);
            return;
        }
        self.deposit_at(now);
        *until = Some(self.epoch + Duration::from_nanos(self.slot_end.load(Acquire)));
    }

    /// Takes one retry at `now` if the budget allows it.
    ///
    /// Atomic: concurrent withdrawals never take more retries than the balance holds. Under
    /// contention a withdrawal may be refused although a retry was left (two callers racing
    /// for the last one may both be refused); it is never granted twice.
    pub fn withdraw_at(&self, now: Instant) -> bool {
        let slot = self.slot(now);
        // Subtract first, then check, then refund: checking the balance and subtracting as two
        // steps let two callers both take the last retry (tower's `TpsBudget` does so). Every
        // withdrawal's subtraction is ordered before its reads (SeqCst), so of two racing
        // withdrawals at least one sees the other's subtraction, even in different slots.
        slot.fetch_sub(UNIT, SeqCst);
        let sum = self
            .slots
            .iter()
            .fold(self.reserve, |a, b| a.saturating_add(b.load(SeqCst)));
        if sum >= 0 {
            return true;
        }
        // If the slot was recycled in between (a jump of a whole window), the refund lands in
        // the new slot: at most one retry per racing caller, expiring with that slot.
        slot.fetch_add(UNIT, SeqCst);
        false
    }

    /// Gives back the retry withdrawn at `withdrawn` (a granted [`withdraw_at`]) that was never
    /// sent: the budget bounds retries sent, so one given up before it was sent — its service
    /// not ready by the deadline, its future dropped during the wait — must not count.
    ///
    /// The retry goes back to the slot it was taken from, so that it expires when the
    /// withdrawal would have: refunded into a later slot it would outlive the withdrawal and
    /// lend a retry the ratio never allowed. A withdrawal older than the window has already
    /// expired and there is nothing to give back.
    ///
    /// [`withdraw_at`]: RetryBudget::withdraw_at
    pub(crate) fn refund_at(&self, withdrawn: Instant, now: Instant) {
        // Recycles the slots that expired by `now`, so `slot_end` ends the current slot.
        let _ = self.slot(now);
        let _guard = self.rotation.lock().unwrap_or_else(|p| p.into_inner());
        let end = self.slot_end.load(Acquire);
        let start = end.saturating_sub(self.slot_ns);
        let at = u64::try_from(withdrawn.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX);
        let back = if at >= start {
            0
        } else {
            (start - 1 - at) / self.slot_ns.max(1) + 1
        };
        if back >= SLOTS as u64 {
            return;
        }
        let current = self.current.load(Acquire);
        let index = (current + SLOTS - back as usize) % SLOTS;
        self.slots[index].fetch_add(UNIT, SeqCst);
    }

    /// The current slot at `now`, after recycling the slots that have expired.
    fn slot(&self, now: Instant) -> &AtomicI64 {
        let now_ns =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        if now_ns >= self.slot_end.load(Acquire) {
            // The state is plain integers, valid whatever a panicking holder left.
            let _guard = self.rotation.lock().unwrap_or_else(|p| p.into_inner());
            let end = self.slot_end.load(Acquire);
            if now_ns >= end {
                let steps = (now_ns - end) / self.slot_ns.max(1) + 1;
                let mut current = self.current.load(Acquire);
                for _ in 0..steps.min(SLOTS as u64) {
                    current = (current + 1) % SLOTS;
                    self.slots[current].store(0, Relaxed);
                }
                self.current.store(current, Release);
                let next = end.saturating_add(steps.saturating_mul(self.slot_ns));
                self.slot_end.store(next, Release);
            }
        }
        &self.slots[self.current.load(Acquire)]
    }
}

impl tower::retry::budget::Budget for RetryBudget {
    fn deposit(&self) {
        self.deposit_at(Instant::now())
    }

    fn withdraw(&self) -> bool {
        self.withdraw_at(Instant::now())
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &(self.deposit as f64 / UNIT as f64))
            .field("reserve", &(self.reserve / UNIT))
            .field(
                "window",
                &Duration::from_nanos(self.slot_ns.saturating_mul(SLOTS as u64)),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tower::retry::budget::{Budget, TpsBudget};

    fn admitted(ratio: f64, requests: u32) -> u32 {
        let b = RetryBudget::new(ratio, 0, Duration::from_secs(10)).unwrap();
        let now = Instant::now();
        (0..requests)
            .filter(|_| {
                b.deposit_at(now);
                b.withdraw_at(now)
            })
            .count() as u32
    }

    #[test]
    fn fractional_ratios_are_exact_unlike_tower_857() {
        assert_eq!(admitted(0.6, 1000), 600);
        assert_eq!(admitted(0.3, 1000), 300);
        assert_eq!(admitted(0.2, 1000), 200);
        assert_eq!(admitted(0.0, 1000), 0);
        assert_eq!(admitted(2.5, 1000), 1000); // more than one retry per request available

        // The bug this diverges from, measured: tower's TpsBudget at 0.6 admits every retry.
        let tower = TpsBudget::new(Duration::from_secs(10), 0, 0.6);
        let tower_admitted = (0..1000)
            .filter(|_| {
                tower.deposit();
                tower.withdraw()
            })
            .count();
        assert_eq!(tower_admitted, 1000);
    }

    #[test]
    fn a_refund_gives_back_the_retry_into_the_slot_it_came_from() {
        let b = RetryBudget::new(0.0, 1, Duration::from_secs(1)).unwrap();
        let t0 = Instant::now();
        assert!(b.withdraw_at(t0));
        assert!(!b.withdraw_at(t0));
        b.refund_at(t0, t0 + Duration::from_millis(500));
        // Given back: exactly one more retry, not two.
        assert!(b.withdraw_at(t0 + Duration::from_millis(500)));
        assert!(!b.withdraw_at(t0 + Duration::from_millis(500)));
        // Given back into the first slot: at 1.3 s that slot has expired, the second
        // withdrawal still counts. Refunded into the current slot, it would have outlived the
        // first withdrawal and lent a retry here.
        assert!(!b.withdraw_at(t0 + Duration::from_millis(1300)));
        assert!(b.withdraw_at(t0 + Duration::from_millis(1500)));
    }

    #[test]
    fn a_refund_of_an_expired_withdrawal_lends_nothing() {
        let b = RetryBudget::new(0.0, 1, Duration::from_secs(1)).unwrap();
        let t0 = Instant::now();
        assert!(b.withdraw_at(t0));
        let later = t0 + Duration::from_secs(5);
        assert!(b.withdraw_at(later));
        b.refund_at(t0, later);
        assert!(!b.withdraw_at(later), "an expired withdrawal was refunded");
    }

    #[test]
    fn reserve_allows_min_per_sec_over_the_window_then_refills() {
        let b = RetryBudget::new(0.0, 10, Duration::from_secs(10)).unwrap();
        let t0 = Instant::now();
        let burst = (0..1000).filter(|_| b.withdraw_at(t0)).count();
        assert_eq!(burst, 100);
        assert!(!b.withdraw_at(t0 + Duration::from_secs(5)));
        // Once the window has passed, the spent withdrawals have expired.
        assert!(b.withdraw_at(t0 + Duration::from_secs(11)));
    }

    #[test]
    fn invalid_settings_are_named() {
        for (r, m, w, setting) in [
            (f64::NAN, 0, 10, "budget_ratio"),
            (-0.1, 0, 10, "budget_ratio"),
            (1000.5, 0, 10, "budget_ratio"),
            (0.2, 2_000_000, 10, "budget_min_per_sec"),
            (0.2, 10, 0, "budget_window"),
            (0.2, 10, 61, "budget_window"),
        ] {
            let e = RetryBudget::new(r, m, Duration::from_secs(w)).unwrap_err();
            assert_eq!(e.setting(), setting);
        }
    }

    /// Two threads withdraw the one retry of the same budget at the same moment, round after
    /// round: a check-then-subtract withdrawal grants it twice in most rounds.
    #[test]
    fn one_retry_is_never_granted_twice_under_concurrency() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

        const ROUNDS: u64 = 20_000;
        let now = Instant::now();
        // ratio 1.0, no reserve, one deposit: exactly one retry in each budget.
        let budgets: Arc<Vec<RetryBudget>> = Arc::new(
            (0..ROUNDS)
                .map(|_| {
                    let b = RetryBudget::new(1.0, 0, Duration::from_secs(10)).unwrap();
                    b.deposit_at(now);
                    b
                })
                .collect(),
        );
        let arrived = Arc::new(AtomicU64::new(0));
        let grants: Vec<_> = (0..2)
            .map(|_| {
                let (budgets, arrived) = (budgets.clone(), arrived.clone());
                std::thread::spawn(move || {
                    let mut granted = Vec::with_capacity(ROUNDS as usize);
                    for (round, b) in budgets.iter().enumerate() {
                        // A spinning barrier, so both threads withdraw at the same moment.
                        arrived.fetch_add(1, SeqCst);
                        let mut spins = 0u32;
                        while arrived.load(SeqCst) < 2 * (round as u64 + 1) {
                            spins += 1;
                            if spins % 1024 == 0 {
                                std::thread::yield_now();
                            }
                            std::hint::spin_loop();
                        }
                        granted.push(b.withdraw_at(now));
                    }
                    granted
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let twice = (0..ROUNDS as usize)
            .filter(|&i| grants[0][i] && grants[1][i])
            .count();
        let once = (0..ROUNDS as usize)
            .filter(|&i| grants[0][i] != grants[1][i])
            .count();
        assert_eq!(
            twice, 0,
            "{twice} of {ROUNDS} one-retry budgets granted twice"
        );
        // Not vacuous: the budgets do grant their retry (a refused withdrawal under contention
        // is allowed, never a second grant). How many are refused depends on the machine's
        // load (12% granted was seen on a loaded 2-core machine), so only "some" is asserted.
        assert!(once > 0, "only {once} of {ROUNDS} granted once");
        // A refused withdrawal left the retry where it was; a granted one took it.
        for (i, b) in budgets.iter().enumerate() {
            let left = !(grants[0][i] || grants[1][i]);
            assert_eq!(b.withdraw_at(now), left, "round {i}: the balance is off");
            assert!(
                !b.withdraw_at(now),
                "round {i}: a spent budget granted another retry"
            );
        }
    }

    proptest! {
        // No regression files: a failure prints its minimal case, to be pinned by hand.
        #![proptest_config(proptest::test_runner::Config { failure_persistence: None, ..Default::default() })]

        /// Over a long run, retries <= ratio x requests + min_per_sec x (run + window).
        #[test]
        fn long_run_stays_within_ratio_plus_allowance(
            ratio in 0.0f64..3.0,
            min_per_sec in 0u32..50,
            window_s in 1u64..=60,
            steps in proptest::collection::vec((0u64..400, 0u8..4, 0u8..4), 1..400),
        ) {
            let window = Duration::from_secs(window_s);
            let b = RetryBudget::new(ratio, min_per_sec, window).unwrap();
            let t0 = Instant::now();
            let mut now = t0;
            let (mut requests, mut retries) = (0u64, 0u64);
            for (advance_ms, reqs, tries) in steps {
                now += Duration::from_millis(advance_ms);
                for _ in 0..reqs { b.deposit_at(now); requests += 1; }
                for _ in 0..tries { if b.withdraw_at(now) { retries += 1; } }
            }
            // A spent retry comes back when its slot (a tenth of the window) is recycled, after
            // 0.9 to 1.0 windows: the reserve can refill once per 0.9 window at most.
            let run = (now - t0).as_secs_f64();
            let refills = 1.0 + run / (0.9 * window.as_secs_f64());
            let bound = ratio * requests as f64 + f64::from(min_per_sec) * window_s as f64 * refills + 1.0;
            prop_assert!(retries as f64 <= bound, "{retries} retries > {bound}");
        }

        /// Withdrawals given back (retries decided, never sent) change nothing to the bound
        /// on retries sent, and never cost one: whoever withdraws after a refund gets what
        /// the budget would have given without the refunded withdrawal.
        #[test]
        fn refunds_keep_the_bound_on_retries_sent(
            ratio in 0.0f64..3.0,
            min_per_sec in 0u32..20,
            window_s in 1u64..=10,
            steps in proptest::collection::vec((0u64..400, 0u8..4, 0u8..4, 0u8..3), 1..300),
        ) {
            let window = Duration::from_secs(window_s);
            let b = RetryBudget::new(ratio, min_per_sec, window).unwrap();
            let t0 = Instant::now();
            let mut now = t0;
            let (mut requests, mut sent) = (0u64, 0u64);
            let mut pending: Vec<Instant> = Vec::new();
            for (advance_ms, reqs, tries, refunds) in steps {
                now += Duration::from_millis(advance_ms);
                for _ in 0..reqs { b.deposit_at(now); requests += 1; }
                for _ in 0..tries { if b.withdraw_at(now) { pending.push(now); } }
                // Of the decided retries, some are refunded, the oldest is sent.
                for _ in 0..refunds { if let Some(at) = pending.pop() { b.refund_at(at, now); } }
                if !pending.is_empty() { pending.remove(0); sent += 1; }
            }
            let run = (now - t0).as_secs_f64();
            let refills = 1.0 + run / (0.9 * window.as_secs_f64());
            let bound = ratio * requests as f64 + f64::from(min_per_sec) * window_s as f64 * refills + 1.0;
            prop_assert!(sent as f64 <= bound, "{sent} retries sent > {bound}");
        }
    }
}
