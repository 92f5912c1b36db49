//! Parsing of the header values the layers act on. Pure: no clock, no I/O, no panics on any bytes.

use std::time::Duration;

use http::HeaderValue;

use crate::classify::RetryAfter;

/// `Retry-After`: delta-seconds or an HTTP-date (RFC 9110 §10.2.3). Anything else is `None`;
/// a delay too large for `u64` seconds saturates (the policy caps it).
pub(crate) fn retry_after(value: Option<&HeaderValue>) -> Option<RetryAfter> {
    let s = value?.to_str().ok()?.trim();
    if let Some(secs) = delta_seconds(s) {
        return Some(RetryAfter::Delay(Duration::from_secs(secs)));
    }
    httpdate::parse_http_date(s).ok().map(RetryAfter::At)
}

/// RFC 9111 §1.2.2 delta-seconds: one or more digits; values past `u64::MAX` saturate.
pub(crate) fn delta_seconds(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn parse(s: &[u8]) -> Option<RetryAfter> {
        retry_after(HeaderValue::from_bytes(s).ok().as_ref())
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse(b"120"), Some(RetryAfter::Delay(Duration::from_secs(120))));
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
}
