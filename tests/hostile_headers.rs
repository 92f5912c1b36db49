//! Hostile header bytes through the real layers: an in-process upstream (`tower::service_fn`)
//! answers with arbitrary `Retry-After`, `Cache-Control`, `Expires`, `Date` and `Age` values —
//! garbage, non-UTF-8, huge, negative and fractional numbers, HTTP-dates from 1970 to 9999,
//! repeated and conflicting lines — and the layers must never panic, never wait longer than
//! their caps, and never remember an answer for longer than `max_ttl` (nor one that says
//! `no-store` or `no-cache`).
//!
//! Each case runs on its own current-thread runtime with tokio's clock paused, so backoff waits
//! take no real time and are measured exactly (to the timer's 1 ms tick). `Retry-After`
//! HTTP-dates are compared by the layer against the real wall clock (`SystemTime`), so the
//! oracle brackets them with wall-clock readings taken before and after each case.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Empty;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_negative_cache::cache::NegativeCacheHit;
use tower_negative_cache::retry::Jitter;
use tower_negative_cache::{NegativeCacheLayer, Outcome, RetryInfo, StatusAwareRetryLayer};

/// The resolution of tokio's timer: a sleep ends on the first 1 ms tick at or after its deadline.
const TICK: Duration = Duration::from_millis(1);
/// The last second an HTTP-date can say: 9999-12-31T23:59:59Z.
const LAST_HTTP_DATE: u64 = 253_402_300_799;
const URI: &str = "http://origin.test/records/42";

type Headers = Vec<(HeaderName, HeaderValue)>;

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
}

fn get() -> Request<Empty<Bytes>> {
    Request::get(URI).body(Empty::new()).unwrap()
}

fn respond(status: StatusCode, headers: &Headers) -> Response<Empty<Bytes>> {
    let mut res = Response::new(Empty::new());
    *res.status_mut() = status;
    for (name, value) in headers {
        res.headers_mut().append(name.clone(), value.clone());
    }
    res
}

fn header_map(headers: &Headers) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(name.clone(), value.clone());
    }
    map
}

// ---------------------------------------------------------------------------------------------
// Hostile values
// ---------------------------------------------------------------------------------------------

fn garbage() -> BoxedStrategy<Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40).boxed()
}

/// Printable text around bytes that are not UTF-8 (obs-text; `HeaderValue` accepts them).
fn non_utf8() -> BoxedStrategy<Vec<u8>> {
    (
        prop::collection::vec(0x20u8..0x7f, 0..8),
        prop::collection::vec(0x80u8..=0xff, 1..6),
        prop::collection::vec(0x20u8..0x7f, 0..8),
    )
        .prop_map(|(a, b, c)| [a, b, c].concat())
        .boxed()
}

fn number() -> BoxedStrategy<String> {
    prop_oneof![
        3 => (0u64..10).prop_map(|n| n.to_string()),
        1 => (0u64..100_000).prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<u128>().prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => (-10i64..0).prop_map(|n| n.to_string()),
        1 => (any::<u32>(), 0u32..1000).prop_map(|(a, b)| format!("{a}.{b}")),
        1 => (0u32..10, 0u32..1000).prop_map(|(a, b)| format!("{a}.{b}")),
        2 => prop::sample::select(vec![
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999",
            "00000000000000000000000003",
            "-0",
            "-1",
            "+5",
            "1.5",
            "0.5",
            "1e3",
            "0x10",
            "NaN",
            "inf",
            "-inf",
            "",
            " 3 ",
            "\t2\t",
            "3 4",
            "3, 4",
            "2,",
        ])
        .prop_map(String::from),
    ]
    .boxed()
}

/// HTTP-dates (well-formed and not) from 1970 to 9999, many of them near the wall clock.
fn date_value() -> BoxedStrategy<Vec<u8>> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = prop_oneof![
        Just(0u64),
        Just(LAST_HTTP_DATE),
        0..=LAST_HTTP_DATE,
        // Near now, so that Retry-After dates are often within a small max_retry_after.
        (now - 120)..(now + 12),
        now..(now + 7),
        1_700_000_000u64..1_700_200_000,
    ];
    let fmt = |s: u64| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s));
    prop_oneof![
        6 => at.clone().prop_map(move |s| fmt(s).into_bytes()),
        1 => at.prop_map(move |s| format!(" \t{} ", fmt(s)).into_bytes()),
        2 => prop::sample::select(vec![
            "Thu, 01 Jan 1970 00:00:00 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Wed, 31 Dec 1969 23:59:59 GMT",
            "Sat, 01 Jan 10000 00:00:00 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Mon, 30 Feb 2015 00:00:00 GMT",
            "Sun, 06 Nov 1994 25:61:61 GMT",
            "tomorrow",
            "0",
            "-1",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => number().prop_map(String::into_bytes),
        1 => non_utf8(),
        1 => garbage(),
    ]
    .boxed()
}

fn cache_control_value() -> BoxedStrategy<Vec<u8>> {
    let fragment = prop_oneof![
        4 => prop::sample::select(vec![
            "no-store",
            "No-Store",
            "NO-STORE",
            "no-cache",
            "No-Cache",
            "no-cache=\"Set-Cookie\"",
            "private",
            "private=\"a, no-store\"",
            "public",
            "must-revalidate",
            "immutable",
            "no-storex",
            "xno-cache",
            "no_store",
            "no-store=",
            "no-cache = x",
            "max-age",
            "max-age=",
            "x=\"no-store",
            "ext=\"a,\\\"no-cache\"",
            "\"",
            "\\",
            ",",
            "=",
            "",
            " ",
            "\t",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        4 => (
            prop::sample::select(vec!["max-age", "MAX-AGE", "s-maxage", "Max-Age"]),
            number(),
            any::<bool>(),
        )
            .prop_map(|(name, v, quoted)| {
                if quoted {
                    format!("{name}=\"{v}\"").into_bytes()
                } else {
                    format!("{name}={v}").into_bytes()
                }
            }),
        1 => non_utf8(),
        1 => garbage(),
    ];
    let separator = prop::sample::select(vec![",", ", ", " ,\t", "", ";"]);
    prop_oneof![
        5 => prop::collection::vec((fragment, separator), 0..6).prop_map(|parts| {
            parts
                .into_iter()
                .flat_map(|(f, sep)| [f, sep.as_bytes().to_vec()])
                .collect::<Vec<Vec<u8>>>()
                .concat()
        }),
        1 => garbage(),
    ]
    .boxed()
}

fn retry_after_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => (0u64..8).prop_map(|n| n.to_string().into_bytes()),
        // A date a few seconds from the wall clock's now, when the case runs.
        2 => (-3i64..8).prop_map(|offset| {
            let now = SystemTime::now();
            let at = if offset >= 0 {
                now + Duration::from_secs(offset.unsigned_abs())
            } else {
                now - Duration::from_secs(offset.unsigned_abs())
            };
            httpdate::fmt_http_date(at).into_bytes()
        }),
        4 => number().prop_map(String::into_bytes),
        3 => date_value(),
        1 => non_utf8(),
        1 => garbage(),
    ]
    .boxed()
}

/// Field lines in order, with repeated and conflicting lines for one name; values that
/// `HeaderValue::from_bytes` refuses can't be sent and are skipped.
fn headers(retry_after_weight: u32) -> BoxedStrategy<Headers> {
    let any_name = prop::sample::select(vec![
        header::RETRY_AFTER,
        header::CACHE_CONTROL,
        header::EXPIRES,
        header::DATE,
        header::AGE,
    ]);
    let entry = prop_oneof![
        retry_after_weight => retry_after_value().prop_map(|v| (header::RETRY_AFTER, v)),
        3 => cache_control_value().prop_map(|v| (header::CACHE_CONTROL, v)),
        2 => date_value().prop_map(|v| (header::EXPIRES, v)),
        2 => date_value().prop_map(|v| (header::DATE, v)),
        2 => number().prop_map(|v| (header::AGE, v.into_bytes())),
        1 => (any_name, garbage()),
    ];
    prop::collection::vec(entry, 0..8)
        .prop_map(|entries| {
            entries
                .into_iter()
                .filter_map(|(name, bytes)| Some((name, HeaderValue::from_bytes(&bytes).ok()?)))
                .collect()
        })
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// Retry
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct RetryCase {
    status: StatusCode,
    headers: Headers,
    max_retries: u32,
    base: Duration,
    factor: f64,
    cap: Duration,
    max_retry_after: Duration,
    jitter: Jitter,
}

fn retry_case() -> impl Strategy<Value = RetryCase> {
    let ms = |r: std::ops::RangeInclusive<u64>| r.prop_map(Duration::from_millis);
    (
        prop::sample::select(vec![
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::TOO_MANY_REQUESTS,
        ]),
        headers(2),
        // Most often a Retry-After line of its own, somewhere among the others.
        prop::option::weighted(0.85, (retry_after_value(), any::<prop::sample::Index>())),
        1u32..=3,
        prop_oneof![Just(Duration::ZERO), ms(0..=500)],
        prop_oneof![Just(1.0), Just(2.0), 1.0f64..=10.0],
        prop_oneof![Just(Duration::ZERO), ms(0..=3000)],
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::from_secs(5)),
            ms(0..=5000)
        ],
        prop::sample::select(vec![Jitter::None, Jitter::Full]),
    )
        .prop_map(
            |(
                status,
                mut headers,
                extra,
                max_retries,
                base,
                factor,
                cap,
                max_retry_after,
                jitter,
            )| {
                if let Some((bytes, at)) = extra {
                    if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                        let at = at.index(headers.len() + 1);
                        headers.insert(at, (header::RETRY_AFTER, value));
                    }
                }
                RetryCase {
                    status,
                    headers,
                    max_retries,
                    base,
                    factor,
                    cap: cap.max(base),
                    max_retry_after,
                    jitter,
                }
            },
        )
}

/// What one `Retry-After` line says, read as RFC 9110 §10.2.3 does: delta-seconds
/// (saturating) or an HTTP-date, with surrounding whitespace; anything else is no hint.
#[derive(Debug)]
enum Hint {
    Delay(Duration),
    At(SystemTime),
}

fn hint_of(value: &HeaderValue) -> Option<Hint> {
    let s = value.to_str().ok()?.trim_matches([' ', '\t']);
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Hint::Delay(Duration::from_secs(
            s.parse().unwrap_or(u64::MAX),
        )));
    }
    httpdate::parse_http_date(s).ok().map(Hint::At)
}

/// The wait the lines ask for, as the shortest and longest it can be (the layer read the wall
/// clock somewhere between `before` and `after`): the longest wait of any valid line (a
/// singleton field sent several times, RFC 9110 §5.3); `None` without a valid line.
fn wait_asked(
    headers: &HeaderMap,
    before: SystemTime,
    after: SystemTime,
) -> Option<(Duration, Duration)> {
    headers
        .get_all(header::RETRY_AFTER)
        .iter()
        .filter_map(hint_of)
        .map(|h| match h {
            Hint::Delay(d) => (d, d),
            Hint::At(at) => (
                at.duration_since(after).unwrap_or(Duration::ZERO),
                at.duration_since(before).unwrap_or(Duration::ZERO),
            ),
        })
        .reduce(|a, b| (a.0.max(b.0), a.1.max(b.1)))
}

fn run_retry_case(case: &RetryCase) -> Result<(), TestCaseError> {
    let rt = paused_runtime();
    let layer = StatusAwareRetryLayer::builder()
        .max_retries(case.max_retries)
        .backoff_base(case.base)
        .backoff_factor(case.factor)
        .backoff_cap(case.cap)
        .max_retry_after(case.max_retry_after)
        .jitter(case.jitter)
        .no_budget()
        .build()
        .expect("a valid configuration");

    let calls: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let upstream = {
        let calls = calls.clone();
        let (status, headers) = (case.status, case.headers.clone());
        tower::service_fn(move |_req: Request<Empty<Bytes>>| {
            let n = {
                let mut calls = calls.lock().unwrap();
                calls.push(Instant::now());
                calls.len()
            };
            let res = if n == 1 {
                respond(status, &headers)
            } else {
                respond(StatusCode::OK, &Vec::new())
            };
            async move { Ok::<_, Infallible>(res) }
        })
    };
    let svc = layer.layer(upstream);

    let wall_before = SystemTime::now();
    let res = rt.block_on(svc.oneshot(get())).expect("infallible");
    let wall_after = SystemTime::now();

    let calls = calls.lock().unwrap().clone();
    let info =
        RetryInfo::of(&res).ok_or_else(|| TestCaseError::fail("no RetryInfo on the answer"))?;
    let spread = match case.jitter {
        Jitter::None => Duration::ZERO,
        _ => case.base,
    };
    let bound = case.cap.max(case.max_retry_after);

    let gap = match calls.len() {
        1 => {
            // The layer stopped: the retryable answer itself comes back.
            prop_assert_eq!(res.status(), case.status);
            prop_assert_eq!(info.attempts, 1);
            prop_assert!(info.outcome.is_retryable(), "{:?}", info.outcome);
            None
        }
        2 => {
            prop_assert_eq!(res.status(), StatusCode::OK);
            prop_assert_eq!(info.attempts, 2);
            prop_assert_eq!(info.outcome, Outcome::Success);
            let gap = calls[1] - calls[0];
            prop_assert!(
                gap <= bound + TICK,
                "waited {:?}, beyond max(backoff_cap, max_retry_after) = {:?}",
                gap,
                bound
            );
            Some(gap)
        }
        n => return Err(TestCaseError::fail(format!("{n} upstream calls"))),
    };

    // The wait the layer should have chosen, from the Retry-After lines.
    let map = header_map(&case.headers);
    match wait_asked(&map, wall_before, wall_after) {
        Some((shortest, _)) if shortest > case.max_retry_after => {
            prop_assert!(gap.is_none(), "retried on a hint {:?} away", shortest);
        }
        Some((shortest, longest)) if longest <= case.max_retry_after => {
            let gap = gap.ok_or_else(|| {
                TestCaseError::fail(format!("no retry on a hint {longest:?} away"))
            })?;
            prop_assert!(
                shortest <= gap && gap <= (longest + spread).min(case.max_retry_after) + TICK,
                "hint {:?}..{:?} away: waited {:?}",
                shortest,
                longest,
                gap
            );
        }
        // A date that crossed the cap while the layer read its clock: either is right.
        Some(_) => {}
        None => {
            let gap = gap.ok_or_else(|| TestCaseError::fail("no retry without a hint"))?;
            // The first backoff: min(cap, base), spread by the jitter.
            let full = case.base.min(case.cap);
            let lowest = match case.jitter {
                Jitter::None => full.saturating_sub(TICK),
                _ => Duration::ZERO,
            };
            prop_assert!(
                lowest <= gap && gap <= full + TICK,
                "no hint, backoff {:?}: waited {:?}",
                full,
                gap
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Cache
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct CacheCase {
    status: StatusCode,
    headers: Headers,
    ttl_404: Duration,
    ttl_410: Duration,
    max_ttl: Duration,
    respect: bool,
    through_retry: bool,
}

/// The longest TTL a negative cache accepts (30 days).
const MAX_TTL_MS: u64 = 30 * 86_400_000;

/// Lines that state a freshness lifetime cleanly, so that the origin's TTL often falls below
/// `max_ttl` rather than being cut to it.
fn freshness() -> BoxedStrategy<Headers> {
    let value = |s: String| HeaderValue::from_str(&s).unwrap();
    prop_oneof![
        (0u64..200_000)
            .prop_map(move |n| vec![(header::CACHE_CONTROL, value(format!("max-age={n}")))]),
        (0u64..200_000, 0u64..200_000).prop_map(move |(n, m)| vec![(
            header::CACHE_CONTROL,
            value(format!("s-maxage={m}, max-age={n}"))
        )]),
        (1_700_000_000u64..1_800_000_000, 0u64..200_000).prop_map(move |(date, life)| {
            let fmt = |s: u64| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s));
            vec![
                (header::DATE, value(fmt(date))),
                (header::EXPIRES, value(fmt(date + life))),
            ]
        }),
        (0u64..200_000).prop_map(move |n| vec![(header::AGE, value(n.to_string()))]),
    ]
    .boxed()
}

/// A valid TTL setting, in whole milliseconds (sub-millisecond TTLs are pinned by
/// `sub_millisecond_ttls_are_kept_exactly` below).
fn ttl_ms() -> BoxedStrategy<u64> {
    prop_oneof![
        Just(1u64),
        Just(MAX_TTL_MS),
        1u64..=5_000,
        (1u64..=100_000).prop_map(|s| s * 1000),
        1..=MAX_TTL_MS,
    ]
    .boxed()
}

fn cache_case() -> impl Strategy<Value = CacheCase> {
    (
        prop::sample::select(vec![StatusCode::NOT_FOUND, StatusCode::GONE]),
        headers(1),
        // Sometimes a plain refusing line of its own, somewhere among the others.
        prop::option::weighted(
            0.15,
            (
                prop::sample::select(vec![
                    "no-store",
                    "No-Cache",
                    "max-age=60, NO-STORE",
                    " no-cache ,",
                ]),
                any::<prop::sample::Index>(),
            ),
        ),
        prop::option::weighted(0.6, (freshness(), any::<prop::sample::Index>())),
        (
            ttl_ms(),
            ttl_ms(),
            prop_oneof![Just(MAX_TTL_MS), Just(86_400_000), ttl_ms()],
        ),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(status, mut headers, refuse, fresh, d, swap, respect, through_retry)| {
                if let Some((line, at)) = refuse {
                    let at = at.index(headers.len() + 1);
                    headers.insert(at, (header::CACHE_CONTROL, HeaderValue::from_static(line)));
                }
                if let Some((lines, at)) = fresh {
                    let at = at.index(headers.len() + 1);
                    headers.splice(at..at, lines);
                }
                let mut d = [d.0, d.1, d.2];
                d.sort_unstable();
                let [a, b, max] = d.map(Duration::from_millis);
                let (ttl_404, ttl_410) = if swap { (b, a) } else { (a, b) };
                CacheCase {
                    status,
                    headers,
                    ttl_404,
                    ttl_410,
                    max_ttl: max,
                    respect,
                    through_retry,
                }
            },
        )
}

/// Whether the answer's Cache-Control lines say `no-store` or `no-cache`:
/// `(certainly, possibly)`.
///
/// Certainly: a line without a quote (so its list syntax is unambiguous) has an element whose
/// name is the directive, in any case. Possibly: some line mentions it anywhere, in any case —
/// inside a quoted-string or among bytes no grammar reads, which no parser must be held to.
fn refusal(headers: &HeaderMap) -> (bool, bool) {
    let (mut certainly, mut possibly) = (false, false);
    for line in headers.get_all(header::CACHE_CONTROL) {
        let bytes = line.as_bytes();
        let lower = bytes.to_ascii_lowercase();
        if !lower
            .windows(8)
            .any(|w| w == b"no-store" || w == b"no-cache")
        {
            continue;
        }
        possibly = true;
        if bytes.contains(&b'"') {
            continue;
        }
        for element in bytes.split(|&b| b == b',') {
            let name = element.split(|&b| b == b'=').next().unwrap_or_default();
            let name = trim_ows(name);
            if name.eq_ignore_ascii_case(b"no-store") || name.eq_ignore_ascii_case(b"no-cache") {
                certainly = true;
            }
        }
    }
    (certainly, possibly)
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Two GETs for one key through `svc`.
async fn two_gets<S, B>(mut svc: S) -> (Response<B>, Response<B>)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let first = svc.ready().await.unwrap().call(get()).await.unwrap();
    let second = svc.ready().await.unwrap().call(get()).await.unwrap();
    (first, second)
}

fn run_cache_case(case: &CacheCase) -> Result<(), TestCaseError> {
    let rt = paused_runtime();
    let calls = Arc::new(Mutex::new(0u32));
    let upstream = {
        let calls = calls.clone();
        let (status, headers) = (case.status, case.headers.clone());
        tower::service_fn(move |_req: Request<Empty<Bytes>>| {
            *calls.lock().unwrap() += 1;
            let res = respond(status, &headers);
            async move { Ok::<_, Infallible>(res) }
        })
    };
    let (cache, (first, second)) = rt.block_on(async {
        let cache = NegativeCacheLayer::builder()
            .capacity(16)
            .max_ttl(case.max_ttl)
            .ttl_404(case.ttl_404)
            .ttl_410(case.ttl_410)
            .respect_cache_headers(case.respect)
            .build()
            .expect("a valid configuration");
        let answers = if case.through_retry {
            let retry = StatusAwareRetryLayer::builder()
                .no_budget()
                .build()
                .unwrap();
            let svc = cache.layer(retry.layer(upstream));
            let (a, b) = two_gets(svc).await;
            (a.map(|_| ()), b.map(|_| ()))
        } else {
            let (a, b) = two_gets(cache.layer(upstream)).await;
            (a.map(|_| ()), b.map(|_| ()))
        };
        (cache, answers)
    });
    let calls = *calls.lock().unwrap();

    prop_assert_eq!(first.status(), case.status);
    prop_assert!(first.extensions().get::<NegativeCacheHit>().is_none());
    prop_assert_eq!(second.status(), case.status, "404 stays 404, 410 stays 410");

    let hit = second.extensions().get::<NegativeCacheHit>().copied();
    prop_assert_eq!(calls, if hit.is_some() { 1 } else { 2 });
    prop_assert_eq!(cache.handle().stats().hits, u64::from(hit.is_some()));

    let map = header_map(&case.headers);
    let (certainly, possibly) = refusal(&map);
    match hit {
        Some(hit) => {
            prop_assert!(
                !certainly,
                "remembered despite {:?}",
                map.get_all(header::CACHE_CONTROL)
                    .iter()
                    .collect::<Vec<_>>()
            );
            prop_assert!(
                !hit.remaining.is_zero() && hit.remaining <= case.max_ttl,
                "remaining {:?} outside (0, {:?}]",
                hit.remaining,
                case.max_ttl
            );
            let default = if case.status == StatusCode::GONE {
                case.ttl_410
            } else {
                case.ttl_404
            };
            let says_how_long =
                map.contains_key(header::CACHE_CONTROL) || map.contains_key(header::EXPIRES);
            if !case.respect || !says_how_long {
                // The default, less the age the answer arrived with.
                prop_assert!(hit.remaining <= default, "more than the per-status default");
            }
        }
        None => {
            // Only a refusal, or a lifetime or age that makes it stale on arrival.
            let timed = [
                header::AGE,
                header::DATE,
                header::EXPIRES,
                header::CACHE_CONTROL,
            ]
            .iter()
            .any(|n| map.contains_key(n));
            prop_assert!(
                possibly || timed,
                "not remembered, without a refusal or a lifetime: {:?}",
                map
            );
        }
    }
    Ok(())
}

proptest! {
    // No regression file is written: a failure prints its minimal case, to be pinned by hand.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(256)
    })]

    #[test]
    fn hostile_retry_headers_never_panic_and_delays_stay_clamped(case in retry_case()) {
        run_retry_case(&case)?;
    }

    #[test]
    fn hostile_cache_headers_never_panic_and_ttls_stay_within_max(case in cache_case()) {
        run_cache_case(&case)?;
    }
}

/// The builder accepts any TTL from 1 ms, to the nanosecond (`ttl(1500 µs)` is valid): an
/// entry then starts with 1.5 ms remaining, is still there 1 ms later, and gone after 1.5 ms.
#[test]
fn sub_millisecond_ttls_are_kept_exactly() {
    let ttl = Duration::from_micros(1500);
    let rt = paused_runtime();
    let (remaining, kept, gone) = rt.block_on(async {
        let cache = NegativeCacheLayer::builder().ttl(ttl).build().unwrap();
        let upstream = tower::service_fn(|_req: Request<Empty<Bytes>>| async {
            Ok::<_, Infallible>(respond(StatusCode::NOT_FOUND, &Vec::new()))
        });
        let mut svc = cache.layer(upstream);
        let (_, second) = two_gets(svc.clone()).await;
        let hit = *second
            .extensions()
            .get::<NegativeCacheHit>()
            .expect("a hit right after the 404");
        tokio::time::advance(Duration::from_millis(1)).await;
        let third = svc.ready().await.unwrap().call(get()).await.unwrap();
        let kept = third.extensions().get::<NegativeCacheHit>().is_some();
        tokio::time::advance(Duration::from_micros(500)).await;
        let fourth = svc.ready().await.unwrap().call(get()).await.unwrap();
        let gone = fourth.extensions().get::<NegativeCacheHit>().is_none();
        (hit.remaining, kept, gone)
    });
    assert!(
        remaining == ttl && kept && gone,
        "ttl {ttl:?}: remaining {remaining:?} on the first hit; \
         still remembered 1 ms later: {kept}; gone at 1.5 ms: {gone}"
    );
}
