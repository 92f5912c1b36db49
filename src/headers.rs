//! Parsing of the header values the layers act on. Pure: no clock, no I/O, no panics on any bytes.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, header};

/// A server's `Retry-After` hint, as sent: a delay, or a point in wall-clock time (RFC 9110
/// §10.2.3).
///
/// Not `#[non_exhaustive]`, deliberately: these are the two forms the RFC defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryAfter {
    /// `Retry-After: <delta-seconds>`.
    Delay(Duration),
    /// `Retry-After: <HTTP-date>`.
    At(SystemTime),
}

impl RetryAfter {
    /// The wait this hint asks for, seen from `now`; a date in the past asks for no wait.
    pub fn delay_from(&self, now: SystemTime) -> Duration {
        match *self {
            RetryAfter::Delay(d) => d,
            RetryAfter::At(at) => at.duration_since(now).unwrap_or(Duration::ZERO),
        }
    }
}

/// `Retry-After`: delta-seconds or an HTTP-date (RFC 9110 §10.2.3). Anything else is `None`;
/// a delay too large for `u64` seconds saturates (the policy caps it).
pub(crate) fn retry_after(value: Option<&HeaderValue>) -> Option<RetryAfter> {
    let s = value?.to_str().ok()?.trim();
    if let Some(secs) = delta_seconds(s) {
        return Some(RetryAfter::Delay(Duration::from_secs(secs)));
    }
    httpdate::parse_http_date(s).ok().map(RetryAfter::At)
}

/// An answer's `Retry-After`. A singleton field (RFC 9110 §5.3) that came several times (a
/// proxy added its own): the longest wait any valid line asks for, seen from now — the origin
/// asked for at least that much — a line that is not valid hiding none that is. One line,
/// the usual case, reads no clock.
pub(crate) fn retry_after_of(headers: &HeaderMap) -> Option<RetryAfter> {
    let mut lines = headers.get_all(header::RETRY_AFTER).iter();
    let mut best = retry_after(lines.next());
    let mut now = None;
    for hint in lines.filter_map(|v| retry_after(Some(v))) {
        best = match best {
            Some(b) => {
                let now = *now.get_or_insert_with(SystemTime::now);
                Some(if hint.delay_from(now) > b.delay_from(now) {
                    hint
                } else {
                    b
                })
            }
            None => Some(hint),
        };
    }
    best
}

/// RFC 9111 §1.2.2 delta-seconds: one or more digits; values past `u64::MAX` saturate.
pub(crate) fn delta_seconds(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().unwrap_or(u64::MAX))
}

/// The `Cache-Control` directives the layers act on (RFC 9111 §5.2), read from every
/// `Cache-Control` field line of a message.
///
/// Conservative where the message is ambiguous: a directive that appears several times is
/// honoured if any occurrence is, the qualified forms `no-cache="field"` and `private="field"`
/// count as their unqualified forms, and of several valid `max-age` (or `s-maxage`) values the
/// smallest wins. An invalid argument (`max-age=abc`, `-1`, `1.5`, none at all) is ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    /// `no-store`.
    pub(crate) no_store: bool,
    /// `no-cache`, with or without a field-name list.
    pub(crate) no_cache: bool,
    /// `private`, with or without a field-name list.
    pub(crate) private: bool,
    /// The smallest valid `max-age`, in seconds (saturated at `u64::MAX`).
    pub(crate) max_age: Option<u64>,
    /// The smallest valid `s-maxage`, in seconds (saturated at `u64::MAX`).
    pub(crate) s_maxage: Option<u64>,
    /// The largest valid `min-fresh` (a request directive), in seconds.
    pub(crate) min_fresh: Option<u64>,
    /// `only-if-cached` (a request directive).
    pub(crate) only_if_cached: bool,
}

/// Parses all `Cache-Control` field lines of `headers` (repeated lines combine, RFC 9110 §5.3).
///
/// Each line is parsed on its own, as raw bytes: a line that isn't UTF-8, or that leaves a
/// quoted-string open, can't hide the directives of another line.
pub(crate) fn cache_control(headers: &HeaderMap) -> CacheControl {
    let mut cc = CacheControl::default();
    for line in headers.get_all(header::CACHE_CONTROL) {
        for (name, arg) in directives(line.as_bytes()) {
            if name.eq_ignore_ascii_case(b"no-store") {
                cc.no_store = true;
            } else if name.eq_ignore_ascii_case(b"no-cache") {
                cc.no_cache = true;
            } else if name.eq_ignore_ascii_case(b"private") {
                cc.private = true;
            } else if name.eq_ignore_ascii_case(b"max-age") {
                keep_smallest(&mut cc.max_age, arg);
            } else if name.eq_ignore_ascii_case(b"s-maxage") {
                keep_smallest(&mut cc.s_maxage, arg);
            } else if name.eq_ignore_ascii_case(b"min-fresh") {
                // The largest is the most demanding, so the conservative reading.
                if let Some(s) = arg.and_then(|a| delta_seconds(std::str::from_utf8(&a).ok()?)) {
                    cc.min_fresh = Some(cc.min_fresh.map_or(s, |old| old.max(s)));
                }
            } else if name.eq_ignore_ascii_case(b"only-if-cached") {
                cc.only_if_cached = true;
            }
        }
    }
    cc
}

fn keep_smallest(slot: &mut Option<u64>, arg: Option<Cow<'_, [u8]>>) {
    let secs = arg.and_then(|a| delta_seconds(std::str::from_utf8(&a).ok()?));
    if let Some(secs) = secs {
        *slot = Some(slot.map_or(secs, |old| old.min(secs)));
    }
}

/// What a request's own `Cache-Control` asks of a cache (RFC 9111 §5.2.1), as the negative
/// cache acts on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RequestDirectives {
    /// Not to be answered from the store (`no-cache`, `max-age=0`, or `Pragma: no-cache` without
    /// a `Cache-Control` field): the answer refreshes the entry.
    pub(crate) refresh: bool,
    /// `no-store`: the answer must not be stored (§5.2.1.5).
    pub(crate) no_store: bool,
    /// `max-age=N`: only an entry at most N seconds old may answer (§5.2.1.1).
    pub(crate) max_age: Option<u64>,
    /// `min-fresh=N`: only an entry fresh for at least N more seconds may answer (§5.2.1.3).
    pub(crate) min_fresh: Option<u64>,
    /// `only-if-cached`: answer from the store or with 504, never upstream (§5.2.1.7).
    pub(crate) only_if_cached: bool,
}

impl RequestDirectives {
    /// Whether an entry of this age, fresh for `remaining` more, may answer the request.
    pub(crate) fn accepts(&self, age: Duration, remaining: Duration) -> bool {
        self.max_age.is_none_or(|m| age.as_secs() <= m)
            && self
                .min_fresh
                .is_none_or(|m| remaining >= Duration::from_secs(m))
    }
}

/// A request's cache directives. Reads nothing (the common case) when the request has neither
/// `Cache-Control` nor `Pragma`.
pub(crate) fn request_directives(headers: &HeaderMap) -> RequestDirectives {
    if headers.contains_key(header::CACHE_CONTROL) {
        let cc = cache_control(headers);
        return RequestDirectives {
            // max-age=0: no stored answer is young enough; go upstream and refresh.
            refresh: cc.no_cache || cc.max_age == Some(0),
            no_store: cc.no_store,
            max_age: cc.max_age,
            min_fresh: cc.min_fresh,
            only_if_cached: cc.only_if_cached,
        };
    }
    // §5.4: `Pragma: no-cache` counts only without a Cache-Control field.
    let refresh = headers.get_all(header::PRAGMA).iter().any(|line| {
        directives(line.as_bytes()).any(|(name, _)| name.eq_ignore_ascii_case(b"no-cache"))
    });
    RequestDirectives {
        refresh,
        ..RequestDirectives::default()
    }
}

/// An HTTP-date (RFC 9110 §5.6.7: IMF-fixdate, RFC 850 or asctime form), as in `Date` and
/// `Expires`. Anything else is `None`.
pub(crate) fn http_date(value: Option<&HeaderValue>) -> Option<SystemTime> {
    httpdate::parse_http_date(value?.to_str().ok()?.trim()).ok()
}

/// `Age` (RFC 9111 §5.1): delta-seconds, saturating. Of a list-based value the first member is
/// used, as the RFC asks; anything invalid is `None`.
pub(crate) fn age(value: Option<&HeaderValue>) -> Option<u64> {
    let s = value?.to_str().ok()?;
    delta_seconds(s.split(',').next()?.trim())
}

/// `Content-Length` (RFC 9110 §8.6): `1*DIGIT`. Several field lines or a list are accepted
/// only when every member is the same valid value (§8.6 lets a recipient take such a list as
/// that one value); anything else — absent, invalid, conflicting, past `u64` — is `None`.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for member in value.to_str().ok()?.split(',') {
            let member = member.trim();
            if member.is_empty() || !member.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n = member.parse::<u64>().ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        }
    }
    length
}

/// The directives of one list-based field line (`#( token [ "=" ( token / quoted-string ) ] )`):
/// each name, and its argument when it has a valid one (a quoted-string unescaped).
///
/// Commas inside a quoted-string don't separate; empty elements are skipped; whitespace around
/// names, `=` and arguments is tolerated. Never panics, whatever the bytes.
fn directives(line: &[u8]) -> impl Iterator<Item = (&[u8], Option<Cow<'_, [u8]>>)> {
    let mut rest = line;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let end = element_end(rest);
            let element = &rest[..end];
            rest = rest.get(end + 1..).unwrap_or(&[]);
            let (name, arg) = match element.iter().position(|&b| b == b'=') {
                Some(eq) => (&element[..eq], Some(&element[eq + 1..])),
                None => (element, None),
            };
            let name = trim_ows(name);
            if name.is_empty() {
                continue;
            }
            return Some((name, arg.and_then(|a| argument(trim_ows(a)))));
        }
    })
}

/// The index of the first comma of `s` outside a quoted-string, or `s.len()`.
fn element_end(s: &[u8]) -> usize {
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in s.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted {
            match b {
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => quoted = true,
                b',' => return i,
                _ => {}
            }
        }
    }
    s.len()
}

/// A directive's argument: a token as is, a quoted-string unescaped; `None` when it is neither.
fn argument(a: &[u8]) -> Option<Cow<'_, [u8]>> {
    let Some(inner) = a.strip_prefix(b"\"") else {
        return (!a.is_empty() && a.iter().all(|&b| is_tchar(b))).then_some(Cow::Borrowed(a));
    };
    // The quoted-string must close at the last byte: no escape may swallow that quote.
    let mut out: Option<Vec<u8>> = None;
    let mut bytes = inner.iter().enumerate();
    while let Some((i, &b)) = bytes.next() {
        match b {
            b'"' => {
                return (i + 1 == inner.len())
                    .then(|| out.map_or(Cow::Borrowed(&inner[..i]), Cow::Owned));
            }
            b'\\' => {
                let (_, &next) = bytes.next()?;
                out.get_or_insert_with(|| inner[..i].to_vec()).push(next);
            }
            _ => {
                if let Some(out) = out.as_mut() {
                    out.push(b);
                }
            }
        }
    }
    None // unterminated
}

/// RFC 9110 §5.6.2 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Strips RFC 9110 OWS (spaces and horizontal tabs) from both ends.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn parse(s: &[u8]) -> Option<RetryAfter> {
        retry_after(HeaderValue::from_bytes(s).ok().as_ref())
    }

    #[test]
    fn content_length_forms() {
        let of = |values: &[&[u8]]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::CONTENT_LENGTH, HeaderValue::from_bytes(v).unwrap());
            }
            content_length(&headers)
        };
        assert_eq!(of(&[]), None);
        assert_eq!(of(&[b"9"]), Some(9));
        assert_eq!(of(&[b" 0 "]), Some(0));
        assert_eq!(of(&[b"9", b"9"]), Some(9));
        assert_eq!(of(&[b"9, 9"]), Some(9));
        assert_eq!(of(&[b"9", b"10"]), None);
        assert_eq!(of(&[b"9,"]), None);
        assert_eq!(of(&[b"-1"]), None);
        assert_eq!(of(&[b"+9"]), None);
        assert_eq!(of(&[b"0x10"]), None);
        assert_eq!(of(&[b"99999999999999999999999"]), None);
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(
            parse(b"120"),
            Some(RetryAfter::Delay(Duration::from_secs(120)))
        );
        assert_eq!(parse(b" 0 "), Some(RetryAfter::Delay(Duration::ZERO)));
        assert_eq!(
            parse(b"99999999999999999999999"),
            Some(RetryAfter::Delay(Duration::from_secs(u64::MAX)))
        );
        assert_eq!(
            parse(b"Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(RetryAfter::At(UNIX_EPOCH + Duration::from_secs(784111777)))
        );
        for bad in [&b""[..], b"-1", b"1.5", b"+3", b"soon", b"\xff\xfe", b"1e3"] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(retry_after(None), None);
        let past = parse(b"Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(past.delay_from(SystemTime::now()), Duration::ZERO);
    }

    /// A map with one field line per element of `lines` for `name`.
    fn map(name: header::HeaderName, lines: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append(name.clone(), HeaderValue::from_bytes(line).unwrap());
        }
        h
    }

    fn cc(lines: &[&[u8]]) -> CacheControl {
        cache_control(&map(header::CACHE_CONTROL, lines))
    }

    fn max_age(line: &[u8]) -> Option<u64> {
        cc(&[line]).max_age
    }

    #[test]
    fn cache_control_absent_is_default() {
        assert_eq!(cache_control(&HeaderMap::new()), CacheControl::default());
        assert_eq!(cc(&[b""]), CacheControl::default());
    }

    #[test]
    fn cache_control_directives() {
        assert_eq!(
            cc(&[
                b"no-store, no-cache, private, max-age=60, s-maxage=120, public, must-revalidate"
            ]),
            CacheControl {
                no_store: true,
                no_cache: true,
                private: true,
                max_age: Some(60),
                s_maxage: Some(120),
                ..Default::default()
            }
        );
        assert_eq!(
            cc(&[b"no-store"]),
            CacheControl {
                no_store: true,
                ..Default::default()
            }
        );
        assert_eq!(cc(&[b"public, immutable"]), CacheControl::default());
    }

    #[test]
    fn cache_control_names_are_case_insensitive() {
        assert_eq!(
            cc(&[b"No-Store, NO-CACHE, Private, MAX-AGE=5, S-MaxAge=7"]),
            CacheControl {
                no_store: true,
                no_cache: true,
                private: true,
                max_age: Some(5),
                s_maxage: Some(7),
                ..Default::default()
            }
        );
    }

    #[test]
    fn cache_control_field_lines_combine() {
        assert_eq!(
            cc(&[b"max-age=60", b"no-store", b"s-maxage=3"]),
            CacheControl {
                no_store: true,
                max_age: Some(60),
                s_maxage: Some(3),
                ..Default::default()
            }
        );
        // A broken line (open quote, non-UTF-8 bytes) can't hide another line's directives.
        assert!(cc(&[b"private=\"unterminated, max-age=1", b"no-cache"]).no_cache);
        assert!(cc(&[b"\xff\xfe\x80", b"no-store"]).no_store);
    }

    #[test]
    fn cache_control_empty_elements_and_whitespace() {
        assert!(cc(&[b",, ,\tno-store ,,"]).no_store);
        assert_eq!(max_age(b" max-age=5 "), Some(5));
        // Whitespace around `=` is not in the grammar, but is unambiguous: tolerated.
        assert_eq!(max_age(b"max-age = 5"), Some(5));
        assert_eq!(max_age(b"max-age=\t5\t, no-cache"), Some(5));
    }

    #[test]
    fn cache_control_quoted_strings() {
        assert_eq!(max_age(b"max-age=\"30\""), Some(30));
        assert_eq!(max_age(b"max-age=\"1\\2\""), Some(12)); // quoted-pair unescaped
        // Commas and directive names inside a quoted-string are not directives.
        let c = cc(&[b"private=\"Set-Cookie, no-store, max-age=1\", max-age=40"]);
        assert_eq!(
            c,
            CacheControl {
                private: true,
                max_age: Some(40),
                ..Default::default()
            }
        );
        let c = cc(&[b"no-cache=\"a\\\", no-store\", max-age=9"]);
        assert_eq!(
            c,
            CacheControl {
                no_cache: true,
                max_age: Some(9),
                ..Default::default()
            }
        );
        // Qualified no-cache and private count as the plain directives (conservative).
        assert!(cc(&[b"no-cache=\"Set-Cookie\""]).no_cache);
        assert!(cc(&[b"PRIVATE=x"]).private);
        // An unterminated quote runs to the end of the line.
        let c = cc(&[b"private=\"a, no-store"]);
        assert_eq!(
            c,
            CacheControl {
                private: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn cache_control_invalid_arguments_are_ignored() {
        for bad in [
            &b"max-age=abc"[..],
            b"max-age=-1",
            b"max-age=1.5",
            b"max-age=+3",
            b"max-age=1e3",
            b"max-age=",
            b"max-age",
            b"max-age=\"\"",
            b"max-age=\"5",
            b"max-age=\"5\"x",
            b"max-age=5x",
            b"max-age=5 6",
            b"max-age=\"5 \"",
            b"max-age=\xef\xbc\x95", // a full-width digit
            b"max-age=\"\\",
        ] {
            assert_eq!(max_age(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        // An invalid occurrence doesn't void a valid one.
        assert_eq!(max_age(b"max-age=abc, max-age=30"), Some(30));
    }

    #[test]
    fn cache_control_smallest_duplicate_wins() {
        assert_eq!(max_age(b"max-age=100, max-age=20, max-age=50"), Some(20));
        assert_eq!(cc(&[b"max-age=100", b"max-age=7"]).max_age, Some(7));
        assert_eq!(cc(&[b"s-maxage=9, s-maxage=3"]).s_maxage, Some(3));
        assert_eq!(max_age(b"max-age=0, max-age=10"), Some(0));
    }

    #[test]
    fn cache_control_huge_values_saturate() {
        assert_eq!(
            max_age(b"max-age=99999999999999999999999999"),
            Some(u64::MAX)
        );
        assert_eq!(max_age(b"max-age=18446744073709551615"), Some(u64::MAX));
        assert_eq!(max_age(b"max-age=18446744073709551614"), Some(u64::MAX - 1));
        assert_eq!(max_age(b"max-age=00000000000000000000000042"), Some(42));
    }

    #[test]
    fn request_refresh_forms() {
        let none = HeaderMap::new();
        assert!(!request_no_cache(&none));
        assert!(request_no_cache(&map(
            header::CACHE_CONTROL,
            &[b"no-cache"]
        )));
        assert!(request_no_cache(&map(
            header::CACHE_CONTROL,
            &[b"max-age=0, No-Cache"]
        )));
        assert!(!request_no_cache(&map(
            header::CACHE_CONTROL,
            &[b"no-store"]
        )));
        // max-age=0: no stored answer is young enough (RFC 9111 §5.2.1.1).
        assert!(request_no_cache(&map(
            header::CACHE_CONTROL,
            &[b"max-age=0"]
        )));
        assert!(!request_no_cache(&map(
            header::CACHE_CONTROL,
            &[b"max-age=1"]
        )));
        assert!(request_no_cache(&map(header::PRAGMA, &[b"no-cache"])));
        assert!(request_no_cache(&map(
            header::PRAGMA,
            &[b"foo=\"bar, baz\", NO-CACHE"]
        )));
        assert!(request_no_cache(&map(
            header::PRAGMA,
            &[b"foo", b"no-cache"]
        )));
        assert!(!request_no_cache(&map(
            header::PRAGMA,
            &[b"foo=\"no-cache\""]
        )));
        assert!(!request_no_cache(&map(header::PRAGMA, &[b"\xffno-cache"])));
        // With a Cache-Control field, Pragma is ignored (RFC 9111 §5.4).
        let mut both = map(header::PRAGMA, &[b"no-cache"]);
        both.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=10"),
        );
        assert!(!request_no_cache(&both));
    }

    fn request_no_cache(headers: &HeaderMap) -> bool {
        request_directives(headers).refresh
    }

    #[test]
    fn request_directives_forms() {
        let d = request_directives(&map(
            header::CACHE_CONTROL,
            &[
                b"no-store, max-age=30",
                b"min-fresh=5, min-fresh=9, only-if-cached",
            ],
        ));
        assert_eq!(
            d,
            RequestDirectives {
                refresh: false,
                no_store: true,
                max_age: Some(30),
                min_fresh: Some(9),
                only_if_cached: true,
            }
        );
        let s = Duration::from_secs;
        assert!(d.accepts(s(30), s(9)));
        assert!(!d.accepts(s(31), s(100)));
        assert!(!d.accepts(s(0), s(8)));
        assert!(RequestDirectives::default().accepts(s(u64::MAX), Duration::ZERO));
    }

    fn date(s: &[u8]) -> Option<SystemTime> {
        http_date(HeaderValue::from_bytes(s).ok().as_ref())
    }

    #[test]
    fn http_date_forms() {
        let t = UNIX_EPOCH + Duration::from_secs(784111777);
        assert_eq!(date(b"Sun, 06 Nov 1994 08:49:37 GMT"), Some(t));
        assert_eq!(date(b" Sun, 06 Nov 1994 08:49:37 GMT "), Some(t));
        assert_eq!(date(b"Sunday, 06-Nov-94 08:49:37 GMT"), Some(t));
        assert_eq!(date(b"Sun Nov  6 08:49:37 1994"), Some(t));
        assert_eq!(date(b"Thu, 01 Jan 1970 00:00:00 GMT"), Some(UNIX_EPOCH));
        assert_eq!(
            date(b"Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(253402300799))
        );
        for bad in [
            &b""[..],
            b"0",
            b"-1",
            b"tomorrow",
            b"Wed, 31 Dec 1969 23:59:59 GMT",
            b"Sun, 06 Nov 1994 08:49:37 UTC",
            b"Sun, 06 Nov 1994 08:49:37 GMT\xff",
            b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5\xf4\xf3\xf2\xf1\xf0\xef\xee\xed",
        ] {
            assert_eq!(date(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(http_date(None), None);
    }

    fn age_of(s: &[u8]) -> Option<u64> {
        age(HeaderValue::from_bytes(s).ok().as_ref())
    }

    #[test]
    fn age_forms() {
        assert_eq!(age_of(b"0"), Some(0));
        assert_eq!(age_of(b" 42 "), Some(42));
        assert_eq!(age_of(b"5, 10"), Some(5)); // list-based: the first member
        assert_eq!(age_of(b"99999999999999999999999"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"-1",
            b"1.5",
            b"+1",
            b"abc",
            b"\xff",
            b", 5",
            b"1 2",
        ] {
            assert_eq!(age_of(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(age(None), None);
    }

    /// A directive as generated for the model test below.
    #[derive(Clone, Debug)]
    enum Directive {
        NoStore,
        NoCache(Option<String>),
        Private(Option<String>),
        MaxAge(Arg),
        SMaxAge(Arg),
        Other(String),
    }

    #[derive(Clone, Debug)]
    enum Arg {
        Valid(u128, bool), // value (may exceed u64), quoted
        Invalid(&'static str),
    }

    impl Arg {
        fn secs(&self) -> Option<u64> {
            match *self {
                Arg::Valid(v, _) => Some(u64::try_from(v).unwrap_or(u64::MAX)),
                Arg::Invalid(_) => None,
            }
        }
        fn render(&self) -> String {
            match self {
                Arg::Valid(v, false) => v.to_string(),
                Arg::Valid(v, true) => format!("\"{v}\""),
                Arg::Invalid(s) => (*s).to_string(),
            }
        }
    }

    fn with_case(name: &str, upper: u32) -> String {
        name.chars()
            .enumerate()
            .map(|(i, c)| {
                if (upper >> (i % 32)) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    }

    fn quoted_list() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(
            prop::sample::select(vec!["Set-Cookie", "a, no-store", "x\\\"y, max-age=0", ""])
                .prop_map(|s| format!("\"{s}\"")),
        )
    }

    fn arg() -> impl Strategy<Value = Arg> {
        prop_oneof![
            (0u128..1000, any::<bool>()).prop_map(|(v, q)| Arg::Valid(v, q)),
            (any::<u128>(), any::<bool>()).prop_map(|(v, q)| Arg::Valid(v, q)),
            // Not an open quote: it would swallow the rest of the line (unit-tested above).
            prop::sample::select(vec![
                "", "abc", "-1", "1.5", "5x", "\"\"", "1e3", "+2", "\"4\"x"
            ])
            .prop_map(Arg::Invalid),
        ]
    }

    fn directive() -> impl Strategy<Value = Directive> {
        prop_oneof![
            Just(Directive::NoStore),
            quoted_list().prop_map(Directive::NoCache),
            quoted_list().prop_map(Directive::Private),
            arg().prop_map(Directive::MaxAge),
            arg().prop_map(Directive::SMaxAge),
            prop::sample::select(vec!["public", "must-revalidate", "ext=\"no-store\"", "x=1"])
                .prop_map(|s| Directive::Other(s.to_string())),
        ]
    }

    proptest! {
        // No regression files: a failure prints its minimal case, to be pinned by hand.
        #![proptest_config(proptest::test_runner::Config { failure_persistence: None, ..Default::default() })]

        /// The parser agrees with a model on generated directive lists: any case, any OWS, any
        /// split into field lines, quoted or not.
        #[test]
        fn cache_control_matches_model(
            ds in prop::collection::vec((directive(), any::<u32>(), 0usize..3, any::<bool>()), 0..8),
        ) {
            let mut lines = vec![String::new()];
            let mut want = CacheControl::default();
            for (d, upper, ws, new_line) in &ds {
                let pad = [" ", "", "\t "][*ws];
                let text = match d {
                    Directive::NoStore => {
                        want.no_store = true;
                        with_case("no-store", *upper)
                    }
                    Directive::NoCache(q) => {
                        want.no_cache = true;
                        with_case("no-cache", *upper) + &q.as_ref().map_or(String::new(), |q| format!("={q}"))
                    }
                    Directive::Private(q) => {
                        want.private = true;
                        with_case("private", *upper) + &q.as_ref().map_or(String::new(), |q| format!("={q}"))
                    }
                    Directive::MaxAge(a) => {
                        if let Some(s) = a.secs() {
                            want.max_age = Some(want.max_age.map_or(s, |m| m.min(s)));
                        }
                        format!("{}={}", with_case("max-age", *upper), a.render())
                    }
                    Directive::SMaxAge(a) => {
                        if let Some(s) = a.secs() {
                            want.s_maxage = Some(want.s_maxage.map_or(s, |m| m.min(s)));
                        }
                        format!("{}={}", with_case("s-maxage", *upper), a.render())
                    }
                    Directive::Other(s) => s.clone(),
                };
                if *new_line {
                    lines.push(String::new());
                }
                let line = lines.last_mut().unwrap();
                line.push_str(&format!("{pad},{pad}{text}"));
            }
            let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
            prop_assert_eq!(cc(&lines), want);
        }

        /// No bytes make any of the parsers panic.
        #[test]
        fn parsers_never_panic(lines in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..48), 0..4)) {
            let mut h = HeaderMap::new();
            for line in &lines {
                if let Ok(v) = HeaderValue::from_bytes(line) {
                    h.append(header::CACHE_CONTROL, v.clone());
                    h.append(header::PRAGMA, v.clone());
                    let _ = (http_date(Some(&v)), age(Some(&v)), retry_after(Some(&v)));
                }
            }
            let c = cache_control(&h);
            let _ = request_no_cache(&h);
            // Whatever the bytes, a directive the parser reports appears in them.
            if c.no_store {
                prop_assert!(lines.iter().any(|l| l.to_ascii_lowercase().windows(8).any(|w| w == b"no-store")));
            }
        }
    }
}
