//! Every builder setter refuses its invalid values with a `BuildError` that names the setter
//! (`setting()`) and, in its message, the valid range; valid boundary values build.
//!
//! One test per setter, so that a setter that lets an absurd value through shows up by name.
//! Only the public API is used.

use std::fmt::Debug;
use std::time::Duration;

use http::StatusCode;
use tower_negative_cache::{BuildError, NegativeCacheLayer, StatusAwareRetryLayer};

const NS: Duration = Duration::from_nanos(1);
const DAY: Duration = Duration::from_secs(86_400);
/// The longest TTL a negative cache accepts.
const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);
const MIB: usize = 1 << 20;

/// `built` is an error naming `setting`, showing `value` and naming the valid `range`.
#[track_caller]
fn refused<T: Debug>(built: Result<T, BuildError>, setting: &str, value: &str, range: &str) {
    let err = match built {
        Ok(layer) => panic!("`{setting}` = {value} was accepted: {layer:?}"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert_eq!(err.setting(), setting, "wrong setter named by: {msg}");
    assert!(
        msg.starts_with(&format!("invalid `{setting}`: ")),
        "message does not start with the setter: {msg}"
    );
    assert!(msg.contains(value), "message does not show {value}: {msg}");
    assert!(
        msg.contains(range),
        "message does not name the valid range {range}: {msg}"
    );
}

fn retry() -> tower_negative_cache::retry::Builder {
    StatusAwareRetryLayer::builder()
}

fn cache() -> tower_negative_cache::cache::Builder {
    NegativeCacheLayer::builder()
}

// ---- StatusAwareRetryLayer::builder() ----

#[test]
fn max_retries_rejects_more_than_ten() {
    refused(
        retry().max_retries(11).build(),
        "max_retries",
        "11",
        "0..=10",
    );
    refused(
        retry().max_retries(u32::MAX).build(),
        "max_retries",
        "4294967295",
        "0..=10",
    );
}

#[test]
fn backoff_base_rejects_more_than_a_minute() {
    for (base, shown) in [
        (Duration::from_secs(60) + NS, "60.000000001s"),
        (Duration::from_secs(61), "61s"),
        (Duration::MAX, "18446744073709551615.999999999s"),
    ] {
        refused(
            retry().backoff_base(base).build(),
            "backoff_base",
            shown,
            "0s..=60s",
        );
    }
}

#[test]
fn backoff_factor_rejects_nan_shrinking_negative_infinite_and_above_ten() {
    for (factor, shown) in [
        (f64::NAN, "NaN"),
        (0.5, "0.5"),
        (0.0, "0.0"),
        (-1.0, "-1.0"),
        (f64::INFINITY, "inf"),
        (f64::NEG_INFINITY, "-inf"),
        (11.0, "11.0"),
        (10.000001, "10.000001"),
    ] {
        refused(
            retry().backoff_factor(factor).build(),
            "backoff_factor",
            shown,
            "1.0..=10.0",
        );
    }
}

#[test]
fn backoff_cap_rejects_more_than_an_hour_and_less_than_the_base() {
    for (cap, shown) in [
        (Duration::from_secs(3600) + NS, "3600.000000001s"),
        (Duration::from_secs(7200), "7200s"),
        (Duration::MAX, "18446744073709551615.999999999s"),
    ] {
        refused(
            retry().backoff_cap(cap).build(),
            "backoff_cap",
            shown,
            "0s..=3600s",
        );
    }
    // Below the base: the bound is the base, which the message names.
    refused(
        retry()
            .backoff_base(Duration::from_millis(200))
            .backoff_cap(Duration::from_millis(100))
            .build(),
        "backoff_cap",
        "100ms",
        "backoff_base (200ms)",
    );
    // Whatever order the two are set in.
    refused(
        retry()
            .backoff_cap(Duration::from_millis(100))
            .backoff_base(Duration::from_millis(200))
            .build(),
        "backoff_cap",
        "100ms",
        "backoff_base (200ms)",
    );
}

#[test]
fn max_retry_after_rejects_more_than_a_day() {
    for (max, shown) in [
        (DAY + NS, "86400.000000001s"),
        (Duration::from_secs(86_401), "86401s"),
        (Duration::MAX, "18446744073709551615.999999999s"),
    ] {
        refused(
            retry().max_retry_after(max).build(),
            "max_retry_after",
            shown,
            "0s..=86400s",
        );
    }
}

#[test]
fn deadline_rejects_zero_and_more_than_a_day() {
    for (deadline, shown) in [
        (Duration::ZERO, "0ns"),
        (Duration::from_micros(999), "999µs"),
        (DAY + NS, "86400.000000001s"),
        (Duration::MAX, "18446744073709551615.999999999s"),
    ] {
        refused(
            retry().deadline(deadline).build(),
            "deadline",
            shown,
            "1ms..=86400s",
        );
    }
}

#[test]
fn budget_ratio_rejects_nan_negative_infinite_and_above_a_thousand() {
    for (ratio, shown) in [
        (f64::NAN, "NaN"),
        (-1.0, "-1.0"),
        (-0.001, "-0.001"),
        (1000.001, "1000.001"),
        (1e9, "1000000000.0"),
        (f64::INFINITY, "inf"),
        (f64::NEG_INFINITY, "-inf"),
    ] {
        refused(
            retry().budget_ratio(ratio).build(),
            "budget_ratio",
            shown,
            "0.0..=1000.0",
        );
    }
}

#[test]
fn budget_min_per_sec_rejects_more_than_a_million() {
    for (n, shown) in [(1_000_001, "1000001"), (u32::MAX, "4294967295")] {
        refused(
            retry().budget_min_per_sec(n).build(),
            "budget_min_per_sec",
            shown,
            "0..=1000000",
        );
    }
}

#[test]
fn budget_window_rejects_zero_under_a_second_and_over_a_minute() {
    for (window, shown) in [
        (Duration::ZERO, "0ns"),
        (Duration::from_millis(999), "999ms"),
        (Duration::from_secs(61), "61s"),
        (Duration::from_secs(60) + NS, "60.000000001s"),
        (Duration::MAX, "18446744073709551615.999999999s"),
    ] {
        refused(
            retry().budget_window(window).build(),
            "budget_window",
            shown,
            "1s..=60s",
        );
    }
}

#[test]
fn drain_limit_rejects_more_than_16_mib() {
    for (bytes, shown) in [
        (16 * MIB + 1, "16777217".to_string()),
        (usize::MAX, usize::MAX.to_string()),
    ] {
        refused(
            retry().drain_limit(bytes).build(),
            "drain_limit",
            &shown,
            "0..=16777216",
        );
    }
}

#[test]
fn drain_timeout_rejects_more_than_ten_seconds() {
    for (timeout, shown) in [
        (Duration::from_secs(10) + NS, "10.000000001s"),
        (Duration::from_secs(11), "11s"),
        (Duration::MAX, "18446744073709551615.999999999s"),
    ] {
        refused(
            retry().drain_timeout(timeout).build(),
            "drain_timeout",
            shown,
            "0s..=10s",
        );
    }
}

#[test]
fn retry_statuses_rejects_final_and_non_error_statuses() {
    let s = |n: u16| StatusCode::from_u16(n).unwrap();
    // Final statuses: never retryable, alone or among valid ones. The message names the status
    // and, like every other message, the valid range.
    for statuses in [
        vec![s(404)],
        vec![s(410)],
        vec![s(503), s(404)],
        vec![s(410), s(502)],
    ] {
        let bad = if statuses.contains(&s(404)) {
            "404"
        } else {
            "410"
        };
        refused(
            retry().retry_statuses(statuses.clone()).build(),
            "retry_statuses",
            bad,
            "400..=599 except 404, 410",
        );
    }
    // Not error statuses at all.
    for (n, list) in [
        (200, vec![s(200)]),
        (302, vec![s(302)]),
        (100, vec![s(100)]),
        (399, vec![s(503), s(399)]),
        (600, vec![s(600)]),
        (999, vec![s(999)]),
    ] {
        refused(
            retry().retry_statuses(list).build(),
            "retry_statuses",
            &n.to_string(),
            "400..=599 except 404, 410",
        );
    }
}

// ---- NegativeCacheLayer::builder() ----

#[test]
fn capacity_rejects_zero_and_more_than_a_hundred_million() {
    for (n, shown) in [
        (0, "0"),
        (100_000_001, "100000001"),
        (u64::MAX, "18446744073709551615"),
    ] {
        refused(
            cache().capacity(n).build(),
            "capacity",
            shown,
            "1..=100000000",
        );
    }
}

#[test]
fn ttl_rejects_zero_more_than_30_days_and_above_max_ttl() {
    for (ttl, shown) in [
        (Duration::ZERO, "0ns"),
        (Duration::from_micros(999), "999µs"),
        (MAX_TTL + NS, "2592000.000000001s"),
        (Duration::MAX, "18446744073709551615.999999999s"),
    ] {
        refused(cache().ttl(ttl).build(), "ttl", shown, "1ms..=30d");
    }
    // Valid on its own, but above max_ttl (1 day by default): the error should name the
    // setter the caller used, `ttl`.
    refused(
        cache().ttl(Duration::from_secs(2 * 86_400)).build(),
        "ttl",
        "172800s",
        "above max_ttl (86400s)",
    );
    // There is no lower clamp any more: a sub-second default is valid.
    assert!(cache().ttl(Duration::from_millis(500)).build().is_ok());
}

#[test]
fn ttl_404_rejects_zero_more_than_30_days_and_above_max_ttl() {
    for (ttl, shown) in [
        (Duration::ZERO, "0ns"),
        (MAX_TTL + NS, "2592000.000000001s"),
        (Duration::MAX, "18446744073709551615.999999999s"),
    ] {
        refused(cache().ttl_404(ttl).build(), "ttl_404", shown, "1ms..=30d");
    }
    refused(
        cache().ttl_404(Duration::from_secs(2 * 86_400)).build(),
        "ttl_404",
        "172800s",
        "above max_ttl (86400s)",
    );
    // A max_ttl below a default the caller did not set names max_ttl.
    refused(
        cache().max_ttl(Duration::from_millis(10)).build(),
        "max_ttl",
        "the default",
        "above max_ttl (10ms)",
    );
}

#[test]
fn ttl_410_rejects_zero_more_than_30_days_and_above_max_ttl() {
    for (ttl, shown) in [
        (Duration::ZERO, "0ns"),
        (MAX_TTL + NS, "2592000.000000001s"),
        (Duration::MAX, "18446744073709551615.999999999s"),
    ] {
        refused(cache().ttl_410(ttl).build(), "ttl_410", shown, "1ms..=30d");
    }
    refused(
        cache().ttl_410(Duration::from_secs(2 * 86_400)).build(),
        "ttl_410",
        "172800s",
        "above max_ttl (86400s)",
    );
    // A max_ttl below a default the caller did not set names max_ttl.
    refused(
        cache().max_ttl(Duration::from_millis(10)).build(),
        "max_ttl",
        "the default",
        "above max_ttl (10ms)",
    );
}

#[test]
fn max_ttl_rejects_zero_and_more_than_30_days() {
    for (ttl, shown) in [
        (Duration::ZERO, "0ns"),
        (Duration::from_micros(999), "999µs"),
        (MAX_TTL + NS, "2592000.000000001s"),
        (Duration::MAX, "18446744073709551615.999999999s"),
    ] {
        refused(cache().max_ttl(ttl).build(), "max_ttl", shown, "1ms..=30d");
    }
}

#[test]
fn coalesce_rejects_zero_and_more_than_a_minute() {
    for (bound, shown) in [
        (Duration::ZERO, "0ns"),
        (Duration::from_micros(999), "999µs"),
        (Duration::from_secs(60) + NS, "60.000000001s"),
        (Duration::from_secs(61), "61s"),
        (Duration::MAX, "18446744073709551615.999999999s"),
    ] {
        refused(
            cache().coalesce(bound).build(),
            "coalesce",
            shown,
            "1ms..=60s",
        );
    }
}

// ---- boundaries and ordering ----

#[test]
fn valid_boundary_values_build() {
    let ok = |b: tower_negative_cache::retry::Builder, what: &str| {
        if let Err(e) = b.build() {
            panic!("{what} was refused: {e}");
        }
    };
    let s = |n: u16| StatusCode::from_u16(n).unwrap();
    ok(retry().max_retries(0), "max_retries 0");
    ok(retry().max_retries(10), "max_retries 10");
    ok(retry().backoff_base(Duration::ZERO), "backoff_base 0");
    ok(
        retry()
            .backoff_base(Duration::from_secs(60))
            .backoff_cap(Duration::from_secs(60)),
        "backoff_base 60 s (cap 60 s)",
    );
    ok(retry().backoff_factor(1.0), "backoff_factor 1.0");
    ok(retry().backoff_factor(10.0), "backoff_factor 10.0");
    ok(
        retry()
            .backoff_base(Duration::ZERO)
            .backoff_cap(Duration::ZERO),
        "backoff_cap 0 (base 0)",
    );
    ok(
        retry().backoff_cap(Duration::from_secs(3600)),
        "backoff_cap 1 h",
    );
    ok(retry().max_retry_after(Duration::ZERO), "max_retry_after 0");
    ok(retry().max_retry_after(DAY), "max_retry_after 1 day");
    ok(retry().deadline(Duration::from_millis(1)), "deadline 1 ms");
    ok(retry().deadline(DAY), "deadline 1 day");
    ok(retry().budget_ratio(0.0), "budget_ratio 0.0");
    ok(retry().budget_ratio(1000.0), "budget_ratio 1000.0");
    ok(retry().budget_min_per_sec(0), "budget_min_per_sec 0");
    ok(
        retry().budget_min_per_sec(1_000_000),
        "budget_min_per_sec 1,000,000",
    );
    ok(
        retry().budget_window(Duration::from_secs(1)),
        "budget_window 1 s",
    );
    ok(
        retry().budget_window(Duration::from_secs(60)),
        "budget_window 60 s",
    );
    ok(
        retry()
            .budget_ratio(1000.0)
            .budget_min_per_sec(1_000_000)
            .budget_window(Duration::from_secs(60)),
        "the largest budget",
    );
    ok(retry().drain_limit(0), "drain_limit 0");
    ok(retry().drain_limit(16 * MIB), "drain_limit 16 MiB");
    ok(retry().drain_timeout(Duration::ZERO), "drain_timeout 0");
    ok(
        retry().drain_timeout(Duration::from_secs(10)),
        "drain_timeout 10 s",
    );
    ok(
        retry().retry_statuses([s(400), s(599)]),
        "retry_statuses 400, 599",
    );
    ok(
        retry().retry_statuses([s(403), s(405), s(409), s(411)]),
        "retry_statuses around 404 and 410",
    );
    ok(retry().retry_statuses([]), "retry_statuses empty");

    let ok = |b: tower_negative_cache::cache::Builder, what: &str| {
        if let Err(e) = b.build() {
            panic!("{what} was refused: {e}");
        }
    };
    let ms = Duration::from_millis(1);
    ok(cache().capacity(1), "capacity 1");
    ok(cache().capacity(100_000_000), "capacity 100,000,000");
    ok(cache().ttl(ms), "ttl 1 ms");
    ok(cache().max_ttl(MAX_TTL).ttl(MAX_TTL), "ttl 30 d (max 30 d)");
    ok(cache().ttl_404(ms), "ttl_404 1 ms");
    ok(
        cache().max_ttl(MAX_TTL).ttl_410(MAX_TTL),
        "ttl_410 30 d (max 30 d)",
    );
    ok(cache().max_ttl(MAX_TTL), "max_ttl 30 d");
    ok(cache().max_ttl(ms).ttl(ms), "ttl = max = 1 ms");
    ok(cache().coalesce(ms), "coalesce 1 ms");
    ok(cache().coalesce(Duration::from_secs(60)), "coalesce 60 s");
}

#[test]
fn max_bytes_rejects_less_than_4096_and_more_than_a_tebibyte() {
    for (bytes, shown) in [
        (0u64, "0"),
        (4095, "4095"),
        ((1 << 40) + 1, "1099511627777"),
        (u64::MAX, "18446744073709551615"),
    ] {
        refused(
            cache().max_bytes(bytes).build(),
            "max_bytes",
            shown,
            "4096..=1099511627776",
        );
    }
    assert!(cache().max_bytes(4096).build().is_ok());
    assert!(cache().max_bytes(1 << 40).build().is_ok());
}

#[test]
fn max_body_bytes_rejects_more_than_a_mebibyte() {
    for (bytes, shown) in [
        ((1 << 20) + 1, "1048577"),
        (u64::MAX, "18446744073709551615"),
    ] {
        refused(
            cache().max_body_bytes(bytes).build(),
            "max_body_bytes",
            shown,
            "0..=1048576",
        );
    }
    assert!(cache().max_body_bytes(0).build().is_ok());
    assert!(cache().max_body_bytes(1 << 20).build().is_ok());
}

#[test]
fn first_invalid_setting_wins() {
    let first = |e: BuildError| e.setting();
    assert_eq!(
        first(
            retry()
                .max_retries(11)
                .backoff_factor(f64::NAN)
                .build()
                .unwrap_err()
        ),
        "max_retries"
    );
    assert_eq!(
        first(
            retry()
                .backoff_factor(f64::NAN)
                .max_retries(11)
                .build()
                .unwrap_err()
        ),
        "backoff_factor"
    );
    assert_eq!(
        first(
            retry()
                .drain_timeout(Duration::from_secs(11))
                .deadline(Duration::ZERO)
                .drain_limit(usize::MAX)
                .build()
                .unwrap_err()
        ),
        "drain_timeout"
    );
    assert_eq!(
        first(
            retry()
                .retry_statuses([StatusCode::NOT_FOUND])
                .max_retry_after(Duration::MAX)
                .build()
                .unwrap_err()
        ),
        "retry_statuses"
    );
    // A later valid value does not undo an earlier invalid one.
    assert_eq!(
        first(retry().max_retries(11).max_retries(3).build().unwrap_err()),
        "max_retries"
    );

    assert_eq!(
        first(
            cache()
                .coalesce(Duration::ZERO)
                .capacity(0)
                .build()
                .unwrap_err()
        ),
        "coalesce"
    );
    assert_eq!(
        first(
            cache()
                .capacity(0)
                .max_ttl(Duration::ZERO)
                .build()
                .unwrap_err()
        ),
        "capacity"
    );
    assert_eq!(
        first(
            cache()
                .ttl_410(Duration::ZERO)
                .ttl_404(Duration::ZERO)
                .build()
                .unwrap_err()
        ),
        "ttl_410"
    );
    assert_eq!(
        first(cache().capacity(0).capacity(10).build().unwrap_err()),
        "capacity"
    );
}

/// The budget setters are checked only in `build()`, after every other setter: an invalid
/// budget value given first must still be the one reported.
#[test]
fn first_invalid_setting_wins_for_the_budget_setters_too() {
    let first = |b: tower_negative_cache::retry::Builder| b.build().unwrap_err().setting();
    assert_eq!(
        first(retry().budget_ratio(f64::NAN).max_retries(11)),
        "budget_ratio"
    );
    assert_eq!(
        first(retry().budget_min_per_sec(u32::MAX).drain_limit(usize::MAX)),
        "budget_min_per_sec"
    );
    assert_eq!(
        first(
            retry()
                .budget_window(Duration::ZERO)
                .backoff_factor(f64::NAN)
        ),
        "budget_window"
    );
}

/// An invalid budget value is an error even when `no_budget()` is called afterwards: like every
/// other setter, the value given is refused, not silently dropped.
#[test]
fn budget_setters_refuse_invalid_values_even_when_the_budget_is_turned_off() {
    for (b, setting) in [
        (retry().budget_ratio(f64::NAN).no_budget(), "budget_ratio"),
        (
            retry().budget_min_per_sec(u32::MAX).no_budget(),
            "budget_min_per_sec",
        ),
        (
            retry().budget_window(Duration::ZERO).no_budget(),
            "budget_window",
        ),
    ] {
        match b.build() {
            Ok(layer) => panic!("an invalid `{setting}` was dropped by no_budget(): {layer:?}"),
            Err(e) => assert_eq!(e.setting(), setting, "{e}"),
        }
    }
}
