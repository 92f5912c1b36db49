//! The retry decision: pure functions of the outcome, the attempt, the clock and a random sample.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method};

use crate::classify::Outcome;

/// How a backoff delay is spread, so that clients failing together do not retry together.
///
/// See AWS's "Exponential Backoff and Jitter". With `e = min(cap, base × factor^(n-1))` for the
/// n-th retry (1-based: the first retry's `e` is `base`) and `u` uniform in `[0, 1)`:
///
/// More strategies may come: match with a `_` arm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Jitter {
    /// `e`: deterministic, for tests.
    None,
    /// `u × e` (the default): the least contention.
    #[default]
    Full,
    /// `e/2 + u × e/2`: never less than half the backoff.
    Equal,
    /// `min(cap, base + u × (3 × max(previous, base) − base))`: grows from the previous delay.
    Decorrelated,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    pub(crate) base: Duration,
    pub(crate) factor: f64,
    pub(crate) cap: Duration,
    pub(crate) jitter: Jitter,
}

impl Backoff {
    /// The wait before retry `n` (1-based); `prev` the wait before the last one; `u` in [0, 1).
    /// Always within `[0, cap]`. The first retry's wait is drawn from `base` itself.
    pub(crate) fn delay(&self, n: u32, prev: Duration, u: f64) -> Duration {
        let u = if (0.0..1.0).contains(&u) { u } else { 0.0 };
        let cap = self.cap.as_secs_f64();
        let base = self.base.as_secs_f64();
        // factor <= 10, so factor^64 <= 1e64 stays finite: no `0 × inf = NaN` for a zero base.
        let growth = n.saturating_sub(1).min(64) as i32;
        let exp = (base * self.factor.powi(growth)).min(cap);
        let secs = match self.jitter {
            Jitter::None => exp,
            Jitter::Full => exp * u,
            Jitter::Equal => exp / 2.0 + u * exp / 2.0,
            Jitter::Decorrelated => {
                // AWS's formula: the first "previous" sleep is the base, so the first retry is
                // already spread over [base, 3 × base].
                let hi = prev.as_secs_f64().max(base) * 3.0;
                (base + u * (hi - base)).min(cap)
            }
        };
        // `exp` is finite (capped); clamp again so float rounding can't leave [0, cap].
        Duration::from_secs_f64(secs.clamp(0.0, cap))
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    pub(crate) max_retries: u32,
    pub(crate) backoff: Backoff,
    pub(crate) max_retry_after: Duration,
    pub(crate) deadline: Option<Duration>,
}

/// Why an answer was returned rather than retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Success, Missing or Fatal: nothing to retry.
    Final,
    /// The request can't be retried (method, or a body that can't be replayed).
    NotEligible,
    /// `max_retries` used up.
    Exhausted,
    /// `Retry-After` beyond `max_retry_after`.
    HintTooLong,
    /// The next attempt would begin past the deadline.
    Deadline,
    /// The retry budget is spent.
    Budget,
}

impl Stop {
    /// Why a retryable answer was returned, for log events.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Stop::Final => "final",
            Stop::NotEligible => "not replayable or not idempotent",
            Stop::Exhausted => "max_retries used up",
            Stop::HintTooLong => "retry-after beyond max_retry_after",
            Stop::Deadline => "the next wait would end past the deadline",
            Stop::Budget => "retry budget spent",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Retry(Duration),
    Stop(Stop),
}

/// What the policy knows of the request so far.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attempt {
    /// Retries already made (0 after the first attempt).
    pub(crate) retries: u32,
    /// Time since the request was first sent.
    pub(crate) elapsed: Duration,
    /// The last wait, for decorrelated jitter.
    pub(crate) prev_delay: Duration,
}

impl Policy {
    /// Decide whether to retry after `outcome`. `withdraw` is asked last, only when everything
    /// else allows a retry, so a refused retry never spends budget.
    pub(crate) fn decide(
        &self,
        outcome: &Outcome,
        at: Attempt,
        wall_now: SystemTime,
        u: f64,
        withdraw: impl FnOnce() -> bool,
    ) -> Decision {
        // The only way to another attempt: a Retryable outcome. Missing (404/410, whatever the
        // classifier said — see `classify::response_outcome`) stops here.
        let Outcome::Retryable { after, .. } = outcome else {
            return Decision::Stop(Stop::Final);
        };
        // Whatever the caller's random source gave, a sample outside [0, 1) (NaN included)
        // must not reach `Duration::mul_f64`, which panics on it.
        let u = if (0.0..1.0).contains(&u) { u } else { 0.0 };
        if at.retries >= self.max_retries {
            return Decision::Stop(Stop::Exhausted);
        }
        let delay = match after {
            Some(hint) => {
                let hint = hint.delay_from(wall_now);
                if hint > self.max_retry_after {
                    return Decision::Stop(Stop::HintTooLong);
                }
                // Jitter only above the hint: spread by up to one base delay...
                let spread = match self.backoff.jitter {
                    Jitter::None => Duration::ZERO,
                    _ => self.backoff.base.mul_f64(u),
                };
                // ...but never past the cap on hints.
                hint.saturating_add(spread).min(self.max_retry_after)
            }
            None => self.backoff.delay(at.retries + 1, at.prev_delay, u),
        };
        if let Some(deadline) = self.deadline {
            if at.elapsed.saturating_add(delay) > deadline {
                return Decision::Stop(Stop::Deadline);
            }
        }
        if !withdraw() {
            return Decision::Stop(Stop::Budget);
        }
        Decision::Retry(delay)
    }
}

/// Which retryable answers may send a request again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Eligible {
    /// Idempotent, or made so: any retryable answer.
    Any,
    /// Not idempotent: only an answer that proves the server never processed the request
    /// ([`Outcome::is_unprocessed`]) — RFC 9110 §9.2.2 allows a retry of any method when the
    /// client can "detect that the original request was never applied".
    Unprocessed,
    /// Sent once, whatever the answer.
    Never,
}

impl Eligible {
    /// Whether `outcome` may send the request again (the rest of the policy permitting).
    pub(crate) fn allows(self, outcome: &Outcome) -> bool {
        match self {
            Eligible::Any => outcome.is_retryable(),
            Eligible::Unprocessed => outcome.is_unprocessed(),
            Eligible::Never => false,
        }
    }
}

/// Which answers may send this request again: any retryable one when its method may be
/// repeated ([`may_retry_request`]), else — if `unprocessed` is on — only one that proves the
/// server never processed it, whatever the method. A request with `Cache-Control:
/// only-if-cached` never: it asks not to reach the network at all (RFC 9111 §5.2.1.7), so
/// not even an unprocessed failure earns it a second try.
pub(crate) fn eligibility(
    method: &Method,
    headers: &HeaderMap,
    non_idempotent: bool,
    unprocessed: bool,
) -> Eligible {
    if only_if_cached(headers) {
        Eligible::Never
    } else if may_retry_request(method, headers, non_idempotent) {
        Eligible::Any
    } else if unprocessed {
        Eligible::Unprocessed
    } else {
        Eligible::Never
    }
}

/// Whether a request may be sent more than once: idempotent methods (RFC 9110 §9.2.2) always;
/// POST and PATCH when they carry `Idempotency-Key` or the user opted in; other methods never.
/// Never a request with `Cache-Control: only-if-cached` (RFC 9111 §5.2.1.7): it asks not to
/// reach the network, so the 504 a cache gives it will not change by asking again.
pub(crate) fn may_retry_request(
    method: &Method,
    headers: &HeaderMap,
    non_idempotent: bool,
) -> bool {
    !only_if_cached(headers) && may_retry_method(method, headers, non_idempotent)
}

/// Whether the request says `Cache-Control: only-if-cached`. Most requests carry no header at
/// all: one check skips parsing them (and the hot path's every header lookup).
fn only_if_cached(headers: &HeaderMap) -> bool {
    !headers.is_empty() && crate::headers::request_directives(headers).only_if_cached
}

/// The method's part of [`may_retry_request`].
fn may_retry_method(method: &Method, headers: &HeaderMap, non_idempotent: bool) -> bool {
    match *method {
        Method::GET
        | Method::HEAD
        | Method::OPTIONS
        | Method::TRACE
        | Method::PUT
        | Method::DELETE => true,
        Method::POST | Method::PATCH => non_idempotent || headers.contains_key("idempotency-key"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::RetryAfter;

    fn policy(jitter: Jitter) -> Policy {
        Policy {
            max_retries: 2,
            backoff: Backoff {
                base: Duration::from_millis(100),
                factor: 2.0,
                cap: Duration::from_secs(10),
                jitter,
            },
            max_retry_after: Duration::from_secs(30),
            deadline: None,
        }
    }

    fn first() -> Attempt {
        Attempt {
            retries: 0,
            elapsed: Duration::ZERO,
            prev_delay: Duration::ZERO,
        }
    }

    #[test]
    fn the_first_wait_is_base_then_it_grows_by_factor() {
        let b = policy(Jitter::None).backoff;
        assert_eq!(b.delay(1, Duration::ZERO, 0.5), Duration::from_millis(100));
        assert_eq!(b.delay(2, Duration::ZERO, 0.5), Duration::from_millis(200));
        assert_eq!(b.delay(3, Duration::ZERO, 0.5), Duration::from_millis(400));
        // The incident's 200 ms then 400 ms: base 200 ms.
        let incident = Backoff {
            base: Duration::from_millis(200),
            ..b
        };
        assert_eq!(
            incident.delay(1, Duration::ZERO, 0.0),
            Duration::from_millis(200)
        );
        assert_eq!(
            incident.delay(2, Duration::ZERO, 0.0),
            Duration::from_millis(400)
        );
        assert_eq!(b.delay(20, Duration::ZERO, 0.5), Duration::from_secs(10));
        let zero = Backoff {
            base: Duration::ZERO,
            ..b
        };
        assert_eq!(zero.delay(400, Duration::ZERO, 0.5), Duration::ZERO);
    }

    #[test]
    fn retry_after_beyond_the_cap_stops() {
        let p = policy(Jitter::Full);
        let o = Outcome::Retryable {
            after: Some(RetryAfter::Delay(Duration::from_secs(31))),
            unprocessed: false,
        };
        assert_eq!(
            p.decide(&o, first(), SystemTime::now(), 0.5, || true),
            Decision::Stop(Stop::HintTooLong)
        );
        let o = Outcome::Retryable {
            after: Some(RetryAfter::Delay(Duration::from_secs(3))),
            unprocessed: false,
        };
        assert_eq!(
            p.decide(&o, first(), SystemTime::now(), 0.5, || true),
            Decision::Retry(Duration::from_millis(3050))
        );
    }

    #[test]
    fn budget_is_asked_last() {
        let p = Policy {
            deadline: Some(Duration::from_millis(50)),
            ..policy(Jitter::None)
        };
        let d = p.decide(&Outcome::RETRYABLE, first(), SystemTime::now(), 0.0, || {
            panic!("asked the budget for a retry the deadline refuses")
        });
        assert_eq!(d, Decision::Stop(Stop::Deadline));
    }

    #[test]
    fn methods() {
        let h = HeaderMap::new();
        let mut key = HeaderMap::new();
        key.insert("idempotency-key", "k1".parse().unwrap());
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(may_retry_request(&m, &h, false), "{m}");
        }
        for m in [Method::POST, Method::PATCH] {
            assert!(!may_retry_request(&m, &h, false), "{m}");
            assert!(may_retry_request(&m, &key, false), "{m}");
            assert!(may_retry_request(&m, &h, true), "{m}");
        }
        assert!(!may_retry_request(&Method::CONNECT, &h, true));
        let mut cached = HeaderMap::new();
        cached.insert(
            "cache-control",
            "max-age=5, only-if-cached".parse().unwrap(),
        );
        assert!(!may_retry_request(&Method::GET, &cached, true));
    }

    #[test]
    fn a_request_that_may_not_be_repeated_is_retried_only_when_unprocessed() {
        let h = HeaderMap::new();
        let refused = Outcome::UNPROCESSED;
        let hinted = Outcome::Retryable {
            after: Some(RetryAfter::Delay(Duration::from_secs(1))),
            unprocessed: false,
        };
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            let e = eligibility(&m, &h, false, true);
            assert_eq!(e, Eligible::Unprocessed, "{m}");
            assert!(e.allows(&refused), "{m}");
            for o in [Outcome::RETRYABLE, hinted, Outcome::Fatal, Outcome::Missing] {
                assert!(!e.allows(&o), "{m} {o:?}");
            }
            assert_eq!(eligibility(&m, &h, false, false), Eligible::Never, "{m}");
            assert!(!Eligible::Never.allows(&refused));
        }
        let get = eligibility(&Method::GET, &h, false, false);
        assert_eq!(get, Eligible::Any);
        assert!(get.allows(&refused) && get.allows(&hinted) && !get.allows(&Outcome::Missing));
    }

    #[test]
    fn only_if_cached_is_never_sent_again_whatever_the_method_or_the_answer() {
        let mut h = HeaderMap::new();
        h.insert(
            "cache-control",
            "max-age=5, only-if-cached".parse().unwrap(),
        );
        for m in [Method::GET, Method::POST, Method::PUT] {
            for (non_idempotent, unprocessed) in [(false, false), (true, true)] {
                let e = eligibility(&m, &h, non_idempotent, unprocessed);
                assert_eq!(e, Eligible::Never, "{m}");
            }
        }
    }
}
