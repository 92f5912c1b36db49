//! How long the negative cache keeps a Missing answer. Pure: time comes in as an argument, no
//! I/O, no panics on any header bytes.
//!
//! After RFC 9111 §4.2 (freshness) and RFC 2308 §5 (a negative answer is kept for a bounded
//! time):
//!
//! 1. Not stored at all: `no-store` or `no-cache` on the answer (§5.2.2.4, §5.2.2.5: the
//!    negative cache never revalidates), `private` in shared mode (§5.2.2.7), a `Vary` on
//!    anything but `Accept-Encoding` (§4.1: the request fields it names are not kept to match
//!    later requests against; see `varies`).
//! 2. The freshness lifetime (§4.2.1): with `respect_headers`, the origin's explicit one —
//!    `s-maxage` (shared mode only), else `max-age`, else `Expires − Date` (the arrival time
//!    standing in for a missing `Date`, an invalid `Expires` meaning already expired, §5.3);
//!    otherwise the per-status default (`ttl_410` for 410, `ttl_404` for any other status).
//! 3. The age on arrival (§4.2.3, `corrected_initial_age`): the larger of `now − Date` and
//!    the origin's `Age` plus the response delay (from when the request left the cache to when
//!    its answer came back): an answer that took 5 s is at least 5 s old.
//! 4. Lifetime ≤ age: stale on arrival, not stored (§4.2). Else the entry is kept for
//!    `lifetime − age`, cut to `max`. Nothing ever raises an origin's explicit lifetime: the
//!    answer is never served for longer than its origin said it was fresh.
//! 5. With the adaptive TTL (opt-in, [`adapt`]), a default lifetime — never an explicit one —
//!    doubles with each time in a row the origin confirmed the same Missing answer after the
//!    entry expired: `base × 2^n`, up to the ceiling, and still cut to `max`.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode, header};

use crate::headers::{self, CacheControl};

/// TTL settings of the negative cache (validated by its builder: defaults <= max).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TtlConfig {
    /// Default lifetime for 404 (and any other Missing status but 410): 60 s.
    pub(crate) ttl_404: Duration,
    /// Default lifetime for 410: 1 h.
    pub(crate) ttl_410: Duration,
    /// Upper bound on what is kept: 1 day.
    pub(crate) max: Duration,
    /// Use the origin's own freshness (`s-maxage`, `max-age`, `Expires`): true.
    pub(crate) respect_headers: bool,
    /// Shared-cache mode: `s-maxage` wins, `private` forbids storing: false.
    pub(crate) shared: bool,
    /// The adaptive TTL's ceiling on a learned lifetime: none (off).
    pub(crate) adaptive: Option<Duration>,
}

impl Default for TtlConfig {
    fn default() -> Self {
        TtlConfig {
            ttl_404: Duration::from_secs(60),
            ttl_410: Duration::from_secs(60 * 60),
            max: Duration::from_secs(24 * 60 * 60),
            respect_headers: true,
            shared: false,
            adaptive: None,
        }
    }
}

/// How long a Missing answer is kept, and how old it already was when it arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// From arrival on: `lifetime − age`, cut to `max`; never zero.
    pub(crate) ttl: Duration,
    /// The answer's age on arrival (§4.2.3 `corrected_initial_age`).
    pub(crate) age: Duration,
    /// Where the lifetime came from.
    pub(crate) source: TtlSource,
}

/// Why a remembered answer is kept for as long as it is (in
/// [`NegativeCacheHit::ttl_source`](crate::cache::NegativeCacheHit)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum TtlSource {
    /// The origin's explicit freshness: `s-maxage`, `max-age` or `Expires`.
    Origin,
    /// The per-status default (`ttl_404`, `ttl_410`).
    Base,
    /// The adaptive TTL: the default, doubled for each time in a row the origin confirmed
    /// the same Missing answer (`confirmed` times), up to the ceiling.
    Learned {
        /// Confirmations in a row before this answer.
        confirmed: u8,
    },
    /// A peer replica's entry (the fleet tier): the TTL its message carried.
    Peer,
}

/// The adaptive TTL applied to `fresh`, an answer of `status` whose key the origin confirmed
/// `confirmed` times in a row: a default lifetime (`Base`) becomes `base × 2^confirmed`, at
/// most the ceiling, less the answer's age, at most `max`. An explicit lifetime (`Origin`), or
/// adaptive TTL off, or no confirmation: `fresh` unchanged.
pub(crate) fn adapt(
    cfg: &TtlConfig,
    fresh: Freshness,
    status: StatusCode,
    confirmed: u8,
) -> Freshness {
    let Some(ceiling) = cfg.adaptive else {
        return fresh;
    };
    if fresh.source != TtlSource::Base || confirmed == 0 {
        return fresh;
    }
    let base = default_lifetime(cfg, status);
    let lifetime = base
        .checked_mul(1u32 << u32::from(confirmed.min(31)))
        .unwrap_or(Duration::MAX)
        .min(ceiling.max(base));
    match lifetime.checked_sub(fresh.age) {
        Some(ttl) if !ttl.is_zero() => Freshness {
            ttl: ttl.min(cfg.max),
            age: fresh.age,
            source: TtlSource::Learned { confirmed },
        },
        _ => fresh,
    }
}

/// The per-status default lifetime.
fn default_lifetime(cfg: &TtlConfig, status: StatusCode) -> Duration {
    if status == StatusCode::GONE {
        cfg.ttl_410
    } else {
        cfg.ttl_404
    }
}

/// How long to keep a Missing answer that arrived at `now`, `response_delay` after its request
/// left, or `None` when it must not be stored (a refusing directive, `Vary: *`, or stale on
/// arrival).
pub(crate) fn freshness(
    cfg: &TtlConfig,
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
    response_delay: Duration,
) -> Option<Freshness> {
    let cc = headers::cache_control(headers);
    // Checked whatever `respect_headers` says: these directives are not about *how long* an
    // answer stays fresh (which `respect_headers` lets the operator override) but about whether
    // it may be stored at all.
    if cc.no_store || cc.no_cache || (cfg.shared && cc.private) || varies(headers) {
        return None;
    }
    let date = headers::http_date(headers.get(header::DATE));
    let explicit = cfg
        .respect_headers
        .then(|| explicit_lifetime(cfg.shared, &cc, headers, date.unwrap_or(now)))
        .flatten();
    let source = match explicit {
        Some(_) => TtlSource::Origin,
        None => TtlSource::Base,
    };
    let lifetime = explicit.unwrap_or_else(|| default_lifetime(cfg, status));
    // §4.2.3: apparent_age (by the origin's clock), or corrected_age_value (the Age it
    // reports plus the time the answer took to come back), whichever is larger.
    let age_value =
        headers::age(headers.get(header::AGE)).map_or(Duration::ZERO, Duration::from_secs);
    let apparent = date.map_or(Duration::ZERO, |d| {
        now.duration_since(d).unwrap_or_default()
    });
    let age = age_value.saturating_add(response_delay).max(apparent);
    let ttl = lifetime.checked_sub(age)?.min(cfg.max);
    (!ttl.is_zero()).then_some(Freshness { ttl, age, source })
}

/// Whether the answer varies on a request field that matters to a bodiless answer (§4.1).
///
/// A stored answer with `Vary` may serve only requests whose varied fields match the ones it
/// was fetched with. Those fields went upstream before the answer said which ones matter, and
/// copying every request's headers on the chance would cost each miss an allocation; so such
/// an answer is not stored (counted as `uncacheable`). `Accept-Encoding` alone is the
/// exception: the cache's answer has no body, so no content coding can differ between the
/// variants — and compressing origins (nginx's `gzip_vary`, tower-http's compression) send it
/// on nearly every answer.
fn varies(headers: &HeaderMap) -> bool {
    headers.get_all(header::VARY).iter().any(|line| {
        line.as_bytes()
            .split(|&b| b == b',')
            .map(|n| n.trim_ascii())
            .any(|n| !n.is_empty() && !n.eq_ignore_ascii_case(b"accept-encoding"))
    })
}

/// The origin's explicit freshness lifetime (§4.2.1), if it gives one: `s-maxage` (shared
/// mode), `max-age`, or `Expires − Date`. `date` is the answer's `Date`, or its arrival time.
fn explicit_lifetime(
    shared: bool,
    cc: &CacheControl,
    headers: &HeaderMap,
    date: SystemTime,
) -> Option<Duration> {
    match cc.s_maxage.filter(|_| shared).or(cc.max_age) {
        // max-age (and s-maxage) override Expires (§5.3).
        Some(secs) => Some(Duration::from_secs(secs)),
        None => expires_lifetime(headers, date),
    }
}

/// `Expires − date`. `None` (no explicit lifetime) without an `Expires` field.
///
/// An `Expires` that doesn't parse ("0", "-1", garbage) means "already expired" (§5.3: a cache
/// MUST read invalid dates as in the past): zero. Of several `Expires` lines the earliest
/// counts (the most conservative, like the smallest `max-age`).
fn expires_lifetime(headers: &HeaderMap, date: SystemTime) -> Option<Duration> {
    let mut earliest: Option<SystemTime> = None;
    for value in headers.get_all(header::EXPIRES) {
        let Some(at) = headers::http_date(Some(value)) else {
            return Some(Duration::ZERO);
        };
        earliest = Some(earliest.map_or(at, |e| e.min(at)));
    }
    Some(earliest?.duration_since(date).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http::header::HeaderName;
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    const SEC: Duration = Duration::from_secs(1);
    const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    fn h(pairs: &[(HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn cfg() -> TtlConfig {
        TtlConfig::default()
    }

    fn shared() -> TtlConfig {
        TtlConfig {
            shared: true,
            ..cfg()
        }
    }

    fn ignoring() -> TtlConfig {
        TtlConfig {
            respect_headers: false,
            ..cfg()
        }
    }

    /// The TTL of an answer arriving at `DATE`.
    fn ttl(cfg: &TtlConfig, status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
        freshness(cfg, status, headers, now(), Duration::ZERO).map(|f| f.ttl)
    }

    fn now() -> SystemTime {
        httpdate::parse_http_date(DATE).unwrap()
    }

    fn not_found(cfg: &TtlConfig, headers: &HeaderMap) -> Option<Duration> {
        ttl(cfg, StatusCode::NOT_FOUND, headers)
    }

    fn secs(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n))
    }

    /// `DATE` plus `offset` seconds, as an HTTP-date.
    fn date_plus(offset: i64) -> String {
        let base = httpdate::parse_http_date(DATE).unwrap();
        let at = if offset >= 0 {
            base + Duration::from_secs(offset.unsigned_abs())
        } else {
            base - Duration::from_secs(offset.unsigned_abs())
        };
        httpdate::fmt_http_date(at)
    }

    #[test]
    fn defaults() {
        let c = cfg();
        assert_eq!(
            (c.ttl_404, c.ttl_410, c.max, c.respect_headers, c.shared),
            (60 * SEC, 3600 * SEC, 86400 * SEC, true, false)
        );
    }

    #[test]
    fn per_status_defaults_without_headers() {
        let none = HeaderMap::new();
        assert_eq!(ttl(&cfg(), StatusCode::NOT_FOUND, &none), secs(60));
        assert_eq!(ttl(&cfg(), StatusCode::GONE, &none), secs(3600));
        // Any other status a classifier calls Missing gets the 404 default.
        assert_eq!(ttl(&cfg(), StatusCode::BAD_REQUEST, &none), secs(60));
        assert_eq!(ttl(&cfg(), StatusCode::OK, &none), secs(60));
    }

    #[test]
    fn no_store_and_no_cache_are_never_remembered() {
        for cc in [
            "no-store",
            "no-cache",
            "max-age=60, No-Store",
            "no-cache=\"Set-Cookie\"",
        ] {
            let headers = h(&[(header::CACHE_CONTROL, cc)]);
            for c in [cfg(), shared(), ignoring()] {
                assert_eq!(not_found(&c, &headers), None, "{cc} {c:?}");
                assert_eq!(ttl(&c, StatusCode::GONE, &headers), None, "{cc} {c:?}");
            }
        }
        // Also when the directive comes in a second field line.
        let headers = h(&[
            (header::CACHE_CONTROL, "max-age=60"),
            (header::CACHE_CONTROL, "no-store"),
        ]);
        assert_eq!(not_found(&cfg(), &headers), None);
    }

    #[test]
    fn private_forbids_storing_only_in_shared_mode() {
        let headers = h(&[(header::CACHE_CONTROL, "private, max-age=30")]);
        assert_eq!(not_found(&shared(), &headers), None);
        let ignoring_shared = TtlConfig {
            shared: true,
            ..ignoring()
        };
        assert_eq!(not_found(&ignoring_shared, &headers), None);
        assert_eq!(not_found(&cfg(), &headers), secs(30));
        assert_eq!(not_found(&ignoring(), &headers), secs(60));
    }

    #[test]
    fn max_age_rung() {
        let headers = h(&[(header::CACHE_CONTROL, "max-age=300")]);
        assert_eq!(not_found(&cfg(), &headers), secs(300));
        assert_eq!(ttl(&cfg(), StatusCode::GONE, &headers), secs(300));
        // Duplicates: the smallest.
        let headers = h(&[(header::CACHE_CONTROL, "max-age=300, max-age=200")]);
        assert_eq!(not_found(&cfg(), &headers), secs(200));
        // An invalid max-age is ignored: the next rung (here the default) answers.
        for bad in ["max-age=abc", "max-age=-1", "max-age=1.5", "max-age="] {
            let headers = h(&[(header::CACHE_CONTROL, bad)]);
            assert_eq!(not_found(&cfg(), &headers), secs(60), "{bad}");
            assert_eq!(ttl(&cfg(), StatusCode::GONE, &headers), secs(3600), "{bad}");
        }
    }

    #[test]
    fn s_maxage_wins_in_shared_mode_only() {
        let headers = h(&[(header::CACHE_CONTROL, "max-age=300, s-maxage=600")]);
        assert_eq!(not_found(&shared(), &headers), secs(600));
        assert_eq!(not_found(&cfg(), &headers), secs(300));
        let headers = h(&[(header::CACHE_CONTROL, "s-maxage=600")]);
        assert_eq!(not_found(&shared(), &headers), secs(600));
        assert_eq!(not_found(&cfg(), &headers), secs(60)); // private cache: no rung applies
        // An invalid s-maxage falls back to max-age.
        let headers = h(&[(header::CACHE_CONTROL, "s-maxage=x, max-age=300")]);
        assert_eq!(not_found(&shared(), &headers), secs(300));
    }

    #[test]
    fn expires_rung() {
        let lifetime = |expires: &str, date: Option<&str>| {
            let mut headers = h(&[(header::EXPIRES, expires)]);
            if let Some(date) = date {
                headers.insert(header::DATE, HeaderValue::from_str(date).unwrap());
            }
            not_found(&cfg(), &headers)
        };
        assert_eq!(lifetime(&date_plus(120), Some(DATE)), secs(120));
        assert_eq!(lifetime(&date_plus(7200), Some(DATE)), secs(7200));
        // Expires not after Date: stale on arrival, not stored (RFC 9111 §4.2).
        assert_eq!(lifetime(&date_plus(-120), Some(DATE)), None);
        assert_eq!(lifetime(DATE, Some(DATE)), None);
        // Without a valid Date, counted from the arrival (here at DATE).
        assert_eq!(lifetime(&date_plus(120), None), secs(120));
        assert_eq!(lifetime(&date_plus(120), Some("yesterday")), secs(120));
        assert_eq!(lifetime(&date_plus(120), Some("")), secs(120));
        assert_eq!(lifetime(&date_plus(-1), None), None);
        // An invalid Expires is "already expired" (RFC 9111 §5.3), Date or not.
        for bad in ["0", "-1", "never", ""] {
            assert_eq!(lifetime(bad, Some(DATE)), None, "{bad}");
            assert_eq!(lifetime(bad, None), None, "{bad}");
        }
        // Several Expires lines: the earliest; any invalid one: expired.
        let headers = h(&[
            (header::DATE, DATE),
            (header::EXPIRES, &date_plus(500)),
            (header::EXPIRES, &date_plus(90)),
        ]);
        assert_eq!(not_found(&cfg(), &headers), secs(90));
        let headers = h(&[
            (header::DATE, DATE),
            (header::EXPIRES, &date_plus(500)),
            (header::EXPIRES, "0"),
        ]);
        assert_eq!(not_found(&cfg(), &headers), None);
    }

    #[test]
    fn max_age_overrides_expires() {
        let headers = h(&[
            (header::CACHE_CONTROL, "max-age=300"),
            (header::DATE, DATE),
            (header::EXPIRES, &date_plus(5000)),
        ]);
        assert_eq!(not_found(&cfg(), &headers), secs(300));
        let headers = h(&[
            (header::CACHE_CONTROL, "max-age=300"),
            (header::EXPIRES, "0"),
        ]);
        assert_eq!(not_found(&cfg(), &headers), secs(300));
        // A max-age that is ignored does not hide Expires.
        let headers = h(&[
            (header::CACHE_CONTROL, "max-age=soon"),
            (header::DATE, DATE),
            (header::EXPIRES, &date_plus(500)),
        ]);
        assert_eq!(not_found(&cfg(), &headers), secs(500));
    }

    #[test]
    fn age_is_subtracted() {
        let headers = h(&[(header::CACHE_CONTROL, "max-age=100"), (header::AGE, "30")]);
        assert_eq!(not_found(&cfg(), &headers), secs(70));
        let headers = h(&[(header::CACHE_CONTROL, "s-maxage=100"), (header::AGE, "30")]);
        assert_eq!(not_found(&shared(), &headers), secs(70));
        let headers = h(&[
            (header::DATE, DATE),
            (header::EXPIRES, &date_plus(100)),
            (header::AGE, "40"),
        ]);
        assert_eq!(not_found(&cfg(), &headers), secs(60));
        // As old as its lifetime or older: stale on arrival, not stored.
        for age in ["100", "500", "99999999999999999999"] {
            let headers = h(&[(header::CACHE_CONTROL, "max-age=100"), (header::AGE, age)]);
            assert_eq!(not_found(&cfg(), &headers), None, "{age}");
        }
        // An invalid Age is ignored.
        for bad in ["-5", "1.5", "abc", ""] {
            let headers = h(&[(header::CACHE_CONTROL, "max-age=100"), (header::AGE, bad)]);
            assert_eq!(not_found(&cfg(), &headers), secs(100), "{bad}");
        }
        // The default lifetime counts the age too.
        let headers = h(&[(header::AGE, "30")]);
        assert_eq!(not_found(&cfg(), &headers), secs(30));
        // The apparent age by the origin's Date counts when it is the larger (§4.2.3).
        let headers = h(&[
            (header::CACHE_CONTROL, "max-age=100"),
            (header::DATE, &date_plus(-10)),
            (header::AGE, "4"),
        ]);
        assert_eq!(
            freshness(
                &cfg(),
                StatusCode::NOT_FOUND,
                &headers,
                now(),
                Duration::ZERO
            ),
            Some(Freshness {
                ttl: 90 * SEC,
                age: 10 * SEC,
                source: TtlSource::Origin,
            })
        );
    }

    /// RFC 9111 §4.2.3: `corrected_age_value = age_value + response_delay`, and the age on
    /// arrival is the larger of it and the apparent age.
    #[test]
    fn the_response_delay_counts_in_the_age() {
        let f = |headers: &HeaderMap, delay: Duration| {
            freshness(&cfg(), StatusCode::NOT_FOUND, headers, now(), delay)
        };
        let three = h(&[(header::CACHE_CONTROL, "max-age=3")]);
        // Took 5 s to come back: stale on arrival.
        assert_eq!(f(&three, 5 * SEC), None);
        assert_eq!(f(&three, 3 * SEC), None);
        let ten = h(&[(header::CACHE_CONTROL, "max-age=10"), (header::AGE, "2")]);
        assert_eq!(
            f(&ten, Duration::from_millis(1500)),
            Some(Freshness {
                ttl: Duration::from_millis(6500),
                age: Duration::from_millis(3500),
                source: TtlSource::Origin,
            })
        );
        // The apparent age wins when it is the larger.
        let dated = h(&[
            (header::CACHE_CONTROL, "max-age=10"),
            (header::DATE, &date_plus(-6)),
        ]);
        assert_eq!(f(&dated, SEC).map(|f| f.age), Some(6 * SEC));
        // The per-status default counts it too; an absurd delay saturates, never panics.
        assert_eq!(f(&HeaderMap::new(), 20 * SEC).map(|f| f.ttl), secs(40));
        assert_eq!(f(&HeaderMap::new(), Duration::MAX), None);
    }

    #[test]
    fn zero_lifetimes_are_stale_on_arrival() {
        for cc in ["max-age=0", "max-age=0, s-maxage=60"] {
            let headers = h(&[(header::CACHE_CONTROL, cc)]);
            assert_eq!(not_found(&cfg(), &headers), None, "{cc}");
        }
        let headers = h(&[(header::CACHE_CONTROL, "s-maxage=0, max-age=60")]);
        assert_eq!(not_found(&shared(), &headers), None);
        assert_eq!(not_found(&cfg(), &headers), secs(60));
    }

    #[test]
    fn answers_with_vary_are_never_stored_but_for_accept_encoding() {
        for vary in ["accept, *", "x-tenant", "*", "Accept-Encoding, Origin"] {
            let headers = h(&[(header::VARY, vary)]);
            assert_eq!(not_found(&cfg(), &headers), None, "{vary}");
            assert_eq!(not_found(&ignoring(), &headers), None, "{vary}");
        }
        for vary in ["accept-encoding", "Accept-Encoding ,", ""] {
            let headers = h(&[(header::VARY, vary)]);
            assert_eq!(not_found(&cfg(), &headers), secs(60), "{vary}");
        }
    }

    #[test]
    fn results_are_cut_to_max_never_raised() {
        let max_age = |v: &str| {
            not_found(
                &cfg(),
                &h(&[(header::CACHE_CONTROL, &format!("max-age={v}"))]),
            )
        };
        assert_eq!(max_age("1"), secs(1));
        assert_eq!(max_age("86400"), secs(86400));
        assert_eq!(max_age("86401"), secs(86400));
        assert_eq!(max_age("18446744073709551615"), secs(86400));
        assert_eq!(max_age("99999999999999999999999999999"), secs(86400));
        // Dates at the ends of what an HTTP-date can say.
        let far = h(&[
            (header::DATE, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (header::EXPIRES, "Fri, 31 Dec 9999 23:59:59 GMT"),
        ]);
        assert_eq!(not_found(&cfg(), &far), secs(86400));
        let backwards = h(&[
            (header::DATE, "Fri, 31 Dec 9999 23:59:59 GMT"),
            (header::EXPIRES, "Thu, 01 Jan 1970 00:00:00 GMT"),
        ]);
        assert_eq!(not_found(&cfg(), &backwards), None);
        // The defaults are cut too.
        let narrow = TtlConfig {
            max: 120 * SEC,
            ..cfg()
        };
        assert_eq!(not_found(&narrow, &HeaderMap::new()), secs(60));
        assert_eq!(ttl(&narrow, StatusCode::GONE, &HeaderMap::new()), secs(120));
        let extreme = TtlConfig {
            max: Duration::MAX,
            ..cfg()
        };
        assert_eq!(not_found(&extreme, &HeaderMap::new()), secs(60));
    }

    #[test]
    fn respect_headers_false_uses_the_defaults() {
        let headers = h(&[
            (header::CACHE_CONTROL, "max-age=300, s-maxage=900"),
            (header::DATE, DATE),
            (header::EXPIRES, &date_plus(5000)),
            (header::AGE, "30"),
        ]);
        // The per-status default, less the age the answer arrived with.
        assert_eq!(not_found(&ignoring(), &headers), secs(30));
        assert_eq!(ttl(&ignoring(), StatusCode::GONE, &headers), secs(3570));
        let ignoring_shared = TtlConfig {
            shared: true,
            ..ignoring()
        };
        assert_eq!(not_found(&ignoring_shared, &headers), secs(30));
    }

    // ---- properties ----

    fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (0u64..200_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            Just(Duration::ZERO),
            Just(Duration::MAX),
        ]
    }

    /// Any configuration the builder accepts: both defaults <= max.
    fn config() -> impl Strategy<Value = TtlConfig> {
        (
            prop::array::uniform3(duration()),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(mut d, swap, respect_headers, shared)| {
                d.sort();
                let (ttl_404, ttl_410) = if swap { (d[1], d[0]) } else { (d[0], d[1]) };
                TtlConfig {
                    ttl_404,
                    ttl_410,
                    max: d[2],
                    respect_headers,
                    shared,
                    adaptive: None,
                }
            })
    }

    fn garbage() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..40)
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..100_000).prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<u128>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            (any::<u32>(), any::<u16>()).prop_map(|(a, b)| format!("{a}.{b}")),
            prop::sample::select(vec![
                "", "-0", "+1", "1e9", "0x10", " 5", "5 ", "inf", "NaN"
            ])
            .prop_map(String::from),
        ]
    }

    fn cache_control_value() -> impl Strategy<Value = Vec<u8>> {
        let fragment = prop_oneof![
            prop::sample::select(vec![
                "no-store",
                "No-Store",
                "no-cache",
                "NO-CACHE",
                "private",
                "Private",
                "public",
                "no-cache=\"Set-Cookie\"",
                "private=\"a, b\"",
                "must-revalidate",
                "x=\"no-store",
                "ext=\"a,\\\"no-cache\"",
                "",
                " ",
                "\"",
                ",",
                "=",
                "\\",
            ])
            .prop_map(String::from),
            (
                prop::sample::select(vec!["max-age", "MAX-AGE", "s-maxage", "S-MaxAge"]),
                number(),
                any::<bool>()
            )
                .prop_map(|(n, v, q)| if q {
                    format!("{n}=\"{v}\"")
                } else {
                    format!("{n}={v}")
                }),
        ];
        prop_oneof![
            3 => prop::collection::vec((fragment, prop::sample::select(vec![",", ", ", " ,\t", ""])), 0..6)
                .prop_map(|fs| fs.into_iter().flat_map(|(f, sep)| [f, sep.to_string()]).collect::<String>().into_bytes()),
            1 => garbage(),
        ]
    }

    /// Last second an HTTP-date can say: 9999-12-31T23:59:59Z.
    const LAST: u64 = 253_402_300_799;

    fn date_value() -> impl Strategy<Value = Vec<u8>> {
        let at = prop_oneof![
            // Near one another, so that Expires − Date is often within the clamps.
            1_700_000_000u64..1_700_200_000,
            0..=LAST,
            Just(0),
            Just(LAST),
        ];
        prop_oneof![
            4 => at.prop_map(|s| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s)).into_bytes()),
            1 => prop::sample::select(vec![
                "0", "-1", "", "Wed, 31 Dec 1969 23:59:59 GMT", "Sat, 01 Jan 10000 00:00:00 GMT",
                "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994",
                "Sun, 06 Nov 1994 08:49:37 UTC", "Mon, 30 Feb 2015 00:00:00 GMT",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            1 => number().prop_map(String::into_bytes),
            1 => garbage(),
        ]
    }

    fn entry() -> impl Strategy<Value = (HeaderName, Vec<u8>)> {
        let name = prop::sample::select(vec![
            header::CACHE_CONTROL,
            header::EXPIRES,
            header::DATE,
            header::AGE,
            header::PRAGMA,
        ]);
        prop_oneof![
            3 => cache_control_value().prop_map(|v| (header::CACHE_CONTROL, v)),
            2 => date_value().prop_map(|v| (header::EXPIRES, v)),
            2 => date_value().prop_map(|v| (header::DATE, v)),
            2 => number().prop_map(|v| (header::AGE, v.into_bytes())),
            1 => (name, garbage()),
        ]
    }

    fn headers() -> impl Strategy<Value = HeaderMap> {
        prop::collection::vec(entry(), 0..8).prop_map(|entries| {
            let mut map = HeaderMap::new();
            for (name, value) in entries {
                // Bytes no HeaderValue can hold can't reach the policy: skip them.
                if let Ok(value) = HeaderValue::from_bytes(&value) {
                    map.append(name, value);
                }
            }
            map
        })
    }

    fn status() -> impl Strategy<Value = StatusCode> {
        prop_oneof![
            prop::sample::select(vec![StatusCode::NOT_FOUND, StatusCode::GONE]),
            (100u16..1000).prop_map(|s| StatusCode::from_u16(s).unwrap()),
        ]
    }

    fn mentions(headers: &HeaderMap, word: &[u8]) -> bool {
        headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
            v.as_bytes()
                .to_ascii_lowercase()
                .windows(word.len())
                .any(|w| w == word)
        })
    }

    proptest! {
        // No regression files: a failure prints its minimal case, to be pinned by hand.
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(1024) })]

        /// Some TTL is never zero and never above `max`; None only when the answer says not to
        /// store it or could be stale on arrival (it names a lifetime or an age).
        #[test]
        fn ttl_always_within_clamps(cfg in config(), status in status(), headers in headers(), skew in 0u64..200_000) {
            let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + skew);
            let got = freshness(&cfg, status, &headers, now, Duration::ZERO);
            let cc = headers::cache_control(&headers);
            let refused = cc.no_store || cc.no_cache || (cfg.shared && cc.private) || varies(&headers);
            let timed = [header::AGE, header::DATE, header::EXPIRES].iter().any(|n| headers.contains_key(n))
                || cc.max_age.is_some() || cc.s_maxage.is_some();
            let default = if status == StatusCode::GONE { cfg.ttl_410 } else { cfg.ttl_404 };
            match got {
                None => prop_assert!(refused || timed || default.is_zero() || cfg.max.is_zero(), "None without a reason: {:?}", headers),
                Some(f) => {
                    prop_assert!(!refused, "{:?} despite {:?}", f, cc);
                    prop_assert!(!f.ttl.is_zero() && f.ttl <= cfg.max, "{:?} outside (0, {:?}]", f.ttl, cfg.max);
                }
            }
            // The same, checked against the raw bytes rather than the parser.
            let could_refuse = mentions(&headers, b"no-store")
                || mentions(&headers, b"no-cache")
                || (cfg.shared && mentions(&headers, b"private"));
            if !could_refuse && !timed && !default.is_zero() && !cfg.max.is_zero() {
                prop_assert!(got.is_some());
            }
        }

        /// A clean `no-store` (or `no-cache`) line refuses, whatever else the answer says.
        #[test]
        fn refusal_wins_over_everything(
            cfg in config(),
            status in status(),
            mut headers in headers(),
            directive in prop::sample::select(vec!["no-store", "no-cache", "NO-STORE", "No-Cache"]),
        ) {
            headers.append(header::CACHE_CONTROL, HeaderValue::from_static(directive));
            prop_assert_eq!(ttl(&cfg, status, &headers), None);
        }

        /// With respect_headers off, never more than the per-status default.
        #[test]
        fn ignoring_headers_gives_at_most_the_default(cfg in config(), status in status(), headers in headers()) {
            let cfg = TtlConfig { respect_headers: false, ..cfg };
            let default = if status == StatusCode::GONE { cfg.ttl_410 } else { cfg.ttl_404 };
            if let Some(d) = ttl(&cfg, status, &headers) {
                prop_assert!(d <= default);
            }
        }

        /// A clean, lone max-age is an upper bound: the answer is kept for `max-age − Age`,
        /// cut to max, and not at all when that is zero.
        #[test]
        fn max_age_is_honoured(cfg in config(), secs in any::<u64>(), age in proptest::option::of(any::<u64>())) {
            let cfg = TtlConfig { respect_headers: true, ..cfg };
            let mut headers = h(&[(header::CACHE_CONTROL, &format!("max-age={secs}"))]);
            if let Some(age) = age {
                headers.insert(header::AGE, HeaderValue::from(age));
            }
            let fresh = Duration::from_secs(secs.saturating_sub(age.unwrap_or(0)));
            let want = Some(fresh.min(cfg.max)).filter(|d| !d.is_zero());
            prop_assert_eq!(not_found(&cfg, &headers), want);
        }

        /// A slower answer is never kept longer: the TTL never exceeds the lifetime less the
        /// response delay.
        #[test]
        fn the_response_delay_only_shortens(cfg in config(), status in status(), headers in headers(), ms in 0u64..200_000) {
            let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            let delay = Duration::from_millis(ms);
            let quick = freshness(&cfg, status, &headers, now, Duration::ZERO);
            let slow = freshness(&cfg, status, &headers, now, delay);
            match (quick, slow) {
                (Some(q), Some(s)) => {
                    prop_assert!(s.ttl <= q.ttl && s.age >= delay && s.age >= q.age, "{:?} {:?}", q, s);
                }
                (None, Some(s)) => prop_assert!(false, "a delay made {:?} storable", s),
                _ => {}
            }
        }

        /// Whatever else the answer says, the TTL never exceeds a clean max-age less the age.
        #[test]
        fn never_kept_longer_than_the_origin_said(cfg in config(), status in status(), mut headers in headers(), secs in 0u64..100_000) {
            let cfg = TtlConfig { respect_headers: true, ..cfg };
            headers.remove(header::CACHE_CONTROL);
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_str(&format!("max-age={secs}")).unwrap());
            if let Some(d) = ttl(&cfg, status, &headers) {
                prop_assert!(d <= Duration::from_secs(secs), "{:?} > max-age={}", d, secs);
            }
        }
    }
}

#[cfg(test)]
mod adaptive_tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: Duration = Duration::from_secs(1);

    fn adaptive(ceiling: Duration) -> TtlConfig {
        TtlConfig {
            adaptive: Some(ceiling),
            ..TtlConfig::default()
        }
    }

    fn base(ttl: Duration, age: Duration) -> Freshness {
        Freshness {
            ttl,
            age,
            source: TtlSource::Base,
        }
    }

    #[test]
    fn a_confirmed_default_doubles_up_to_the_ceiling() {
        let cfg = adaptive(3600 * SEC);
        let nf = StatusCode::NOT_FOUND;
        let ttls: Vec<_> = (0..9)
            .map(|n| adapt(&cfg, base(60 * SEC, Duration::ZERO), nf, n).ttl)
            .collect();
        let want: Vec<_> = [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
            .map(|s| s * SEC)
            .to_vec();
        assert_eq!(ttls, want);
        assert_eq!(
            adapt(&cfg, base(60 * SEC, Duration::ZERO), nf, 3).source,
            TtlSource::Learned { confirmed: 3 }
        );
        // 410's base is its own default (1 h): already at the ceiling.
        let gone = adapt(&cfg, base(3600 * SEC, Duration::ZERO), StatusCode::GONE, 2);
        assert_eq!(gone.ttl, 3600 * SEC);
    }

    #[test]
    fn explicit_freshness_and_adaptive_off_are_left_alone() {
        let origin = Freshness {
            ttl: 30 * SEC,
            age: Duration::ZERO,
            source: TtlSource::Origin,
        };
        let nf = StatusCode::NOT_FOUND;
        assert_eq!(adapt(&adaptive(3600 * SEC), origin, nf, 5), origin);
        let fresh = base(60 * SEC, Duration::ZERO);
        assert_eq!(adapt(&TtlConfig::default(), fresh, nf, 5), fresh);
        // Through `freshness`: max-age is the origin's, a bare 404 the base.
        let mut h = HeaderMap::new();
        let now = SystemTime::now();
        assert_eq!(
            freshness(&TtlConfig::default(), nf, &h, now, Duration::ZERO).map(|f| f.source),
            Some(TtlSource::Base)
        );
        h.insert(header::CACHE_CONTROL, "max-age=5".parse().unwrap());
        assert_eq!(
            freshness(&TtlConfig::default(), nf, &h, now, Duration::ZERO).map(|f| f.source),
            Some(TtlSource::Origin)
        );
    }

    proptest! {
        #![proptest_config(proptest::test_runner::Config { failure_persistence: None, ..Default::default() })]

        /// A learned TTL is never below what the base gives, never past the ceiling (less the
        /// age) nor `max_ttl`, and grows with the confirmations.
        #[test]
        fn learned_ttls_stay_within_base_ceiling_and_max(
            base_s in 1u64..7200,
            ceiling_s in 1u64..200_000,
            max_s in 1u64..200_000,
            age_s in 0u64..100,
            n in 0u8..=255,
        ) {
            let cfg = TtlConfig {
                ttl_404: Duration::from_secs(base_s),
                max: Duration::from_secs(max_s),
                adaptive: Some(Duration::from_secs(ceiling_s)),
                ..TtlConfig::default()
            };
            let nf = StatusCode::NOT_FOUND;
            // The answer arrives `age_s` old (its `Age`).
            let mut headers = HeaderMap::new();
            headers.insert(header::AGE, age_s.into());
            let Some(f) = freshness(&cfg, nf, &headers, SystemTime::now(), Duration::ZERO) else {
                return Ok(());
            };
            let a = adapt(&cfg, f, nf, n);
            prop_assert!(a.ttl >= f.ttl);
            prop_assert!(a.ttl <= cfg.max);
            prop_assert!(a.ttl <= (Duration::from_secs(ceiling_s)).max(Duration::from_secs(base_s)));
            if n < 255 {
                prop_assert!(adapt(&cfg, f, nf, n + 1).ttl >= a.ttl);
            }
        }
    }
}
