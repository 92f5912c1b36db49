//! What a hit sends: the origin's end-to-end header fields and, when it was kept whole, its
//! body (RFC 9111 §4: a cache sends the stored response, with `Age`).
//!
//! Pure: no I/O, no clock. The fields are copied once, when the answer is stored, into one
//! buffer of their own (an upstream's values may be slices of its connection's read buffer,
//! which holding them would keep alive); each hit then shares them (`Bytes` refcounts) rather
//! than copying.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{
    AGE, CONNECTION, CONTENT_ENCODING, CONTENT_LANGUAGE, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, HeaderName, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderValue};

/// The most body bytes an entry may keep: 1 MiB. A negative answer worth replaying is an error
/// document, not a page; past this a typo is likelier than a need.
pub(crate) const MAX_BODY_LIMIT: u64 = 1 << 20;

/// The default body limit: 4 KiB keeps JSON and `application/problem+json` errors (usually a
/// few hundred bytes) and drops error pages (the incident's was 16 KiB).
pub(crate) const DEFAULT_BODY_LIMIT: u64 = 4096;

/// What one field costs besides its name's and value's bytes: its bucket in the map, its
/// index slot and its value's shared handle (measured with a counting allocator in
/// tests/flood.rs, rounded up).
const FIELD_OVERHEAD: u64 = 160;

/// A remembered answer's head and (kept whole) body, as every hit of its entry sends them.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The origin's end-to-end fields, `Content-Length` for the bytes a hit sends, and an
    /// `Age` placeholder each hit overwrites in place (so a hit's map never grows).
    headers: HeaderMap,
    /// The body, empty when not kept.
    body: Bytes,
    /// The body was kept whole; false: a head-only answer (no body, no field describing one).
    kept: bool,
    /// The kept body has a `Content-Encoding` (other than `identity`): it is sent only to a
    /// request that accepts each of its codings (RFC 9110 §12.5.3), else the hit is head-only.
    coded: bool,
    /// The answer to a HEAD (see [`Answer::of_head`]): it answers a HEAD only.
    from_head: bool,
    weight: u64,
}

/// The fields a hit never replays: what belonged to one connection (RFC 9110 §7.6.1), one
/// exchange (`Set-Cookie`: replayed, an old cookie would overwrite a newer session), trailers
/// a hit does not have, and what the hit states itself (`Content-Length`, `Age`).
fn exchange_specific(name: &HeaderName) -> bool {
    const KEEP_ALIVE: &str = "keep-alive";
    const PROXY_CONNECTION: &str = "proxy-connection";
    name == CONNECTION
        || name == TE
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == TRAILER
        || name == SET_COOKIE
        || name == CONTENT_LENGTH
        || name == AGE
        || name.as_str() == KEEP_ALIVE
        || name.as_str() == PROXY_CONNECTION
}

/// Fields that describe body bytes: a head-only answer, which has none, does not send them.
fn describes_body(name: &HeaderName) -> bool {
    name == CONTENT_TYPE
        || name == CONTENT_ENCODING
        || name == CONTENT_LANGUAGE
        || name == CONTENT_RANGE
        || matches!(
            name.as_str(),
            "content-md5" | "content-digest" | "repr-digest" | "digest"
        )
}

/// The fields `Connection` names (RFC 9110 §7.6.1): connection options, not to be forwarded.
fn connection_options(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// An answer's map of `fields`, with room for the two a hit states itself (`Content-Length`,
/// `Age`), and what the answer weighs with them (its body aside).
fn with_room_for_two(fields: Vec<(HeaderName, HeaderValue)>) -> (HeaderMap, u64) {
    let mut headers = HeaderMap::with_capacity(fields.len() + 2);
    let mut weight = std::mem::size_of::<Answer>() as u64 + 2 * FIELD_OVERHEAD;
    for (n, v) in fields {
        weight += n.as_str().len() as u64 + v.len() as u64 + FIELD_OVERHEAD;
        headers.append(n, v);
    }
    (headers, weight)
}

/// The origin's end-to-end fields, copied: what an entry keeps of a Missing answer's head.
#[derive(Clone, Debug, Default)]
pub(crate) struct Head {
    fields: Vec<(HeaderName, HeaderValue)>,
}

impl Head {
    /// Copies the fields of `headers` a hit may replay, in their order, into one buffer.
    pub(crate) fn of(headers: &HeaderMap) -> Head {
        if headers.is_empty() {
            return Head::default();
        }
        let named = if headers.contains_key(CONNECTION) {
            connection_options(headers)
        } else {
            Vec::new()
        };
        let kept = || {
            headers
                .iter()
                .filter(|(n, _)| !exchange_specific(n) && !named.contains(n))
        };
        let len: usize = kept().map(|(_, v)| v.len()).sum();
        let mut buf = BytesMut::with_capacity(len);
        for (_, v) in kept() {
            buf.extend_from_slice(v.as_bytes());
        }
        let buf = buf.freeze();
        let mut at = 0;
        let fields = kept()
            .map(|(n, v)| {
                let slice = buf.slice(at..at + v.len());
                at += v.len();
                // The same bytes passed the same check when `v` was made; should one not (a
                // value built unchecked), it is shared as it is rather than dropped.
                let mut value = HeaderValue::from_maybe_shared(slice).unwrap_or_else(|_| v.clone());
                value.set_sensitive(v.is_sensitive());
                // A standard name is a constant; a custom one is copied out of the upstream's
                // buffer for the same reason as the values.
                let name = HeaderName::from_bytes(n.as_str().as_bytes()).unwrap_or(n.clone());
                (name, value)
            })
            .collect();
        Head { fields }
    }
}

impl Answer {
    /// The answer an entry replays: `head` with `body` when it was kept whole, else head-only.
    /// `None` when there is nothing to replay but the status (no fields, an empty body kept):
    /// such an entry costs no allocation, and its hit is the status, `Content-Length: 0` and
    /// `Age`.
    pub(crate) fn new(head: Head, body: Option<Bytes>) -> Option<Arc<Answer>> {
        let kept = body.is_some();
        let body = body.unwrap_or_default();
        let fields = head
            .fields
            .into_iter()
            .filter(|(n, _)| kept || !describes_body(n))
            .collect::<Vec<_>>();
        if fields.is_empty() && body.is_empty() {
            return if kept {
                None
            } else {
                // One for every bare head-only entry (a GET's answer without fields whose body
                // was not kept): it weighs nothing, as the bare entry that `None` stands for.
                static BARE: std::sync::LazyLock<Arc<Answer>> = std::sync::LazyLock::new(|| {
                    let mut headers = HeaderMap::with_capacity(2);
                    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
                    headers.insert(AGE, HeaderValue::from_static("0"));
                    Arc::new(Answer {
                        headers,
                        body: Bytes::new(),
                        kept: false,
                        coded: false,
                        from_head: false,
                        weight: 0,
                    })
                });
                Some(BARE.clone())
            };
        }
        let (mut headers, weight) = with_room_for_two(fields);
        let weight = weight + body.len() as u64;
        // RFC 9110 §8.6: the length of what this hit sends.
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        headers.insert(AGE, HeaderValue::from_static("0"));
        let coded = kept && !body.is_empty() && has_coding(&headers);
        Some(Arc::new(Answer {
            headers,
            body,
            kept,
            coded,
            from_head: false,
            weight,
        }))
    }

    /// The answer to a HEAD, as the origin sent it: its fields all kept, those describing the
    /// body and its `Content-Length` too, which are a GET's (RFC 9110 §9.3.2, §8.6). It answers
    /// only a HEAD: a HEAD's answer has no body to stand for a GET's (RFC 9111 §4).
    pub(crate) fn of_head(head: Head, length: Option<HeaderValue>) -> Arc<Answer> {
        let (mut headers, weight) = with_room_for_two(head.fields);
        if let Some(length) = length {
            headers.insert(CONTENT_LENGTH, length);
        }
        headers.insert(AGE, HeaderValue::from_static("0"));
        // Its fields describe a coded body (the GET's): replayed only to a request that
        // accepts the coding, as a kept coded body is (RFC 9110 §12.5.3); to another, the hit
        // is head-only.
        let coded = has_coding(&headers);
        Arc::new(Answer {
            headers,
            body: Bytes::new(),
            kept: false,
            coded,
            from_head: true,
            weight,
        })
    }

    /// Whether this answer may answer a GET (one learned from a HEAD may not).
    pub(crate) fn serves_get(&self) -> bool {
        !self.from_head
    }

    /// A peer's answer: its fields filtered as an origin's are (a peer is not trusted to
    /// have), its body kept only within this cache's `limit`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn from_peer(
        kept: bool,
        fields: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
        limit: u64,
    ) -> Option<Arc<Answer>> {
        let mut map = HeaderMap::with_capacity(fields.len());
        for (n, v) in fields {
            map.append(n, v);
        }
        let body = Some(body).filter(|b| kept && b.len() as u64 <= limit);
        Answer::new(Head::of(&map), body)
    }

    /// The fields a peer is sent: the hit's, but `Content-Length` and `Age` (its own to state).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.headers
            .iter()
            .filter(|(n, _)| *n != CONTENT_LENGTH && *n != AGE)
    }

    /// The same answer without its body (for a request that does not accept its coding, or a
    /// store that cannot hold the body).
    pub(crate) fn head_only(&self) -> Option<Arc<Answer>> {
        let fields = self
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        Answer::new(Head { fields }, None)
    }

    /// The fields a hit sends, `Age` still to be set.
    pub(crate) fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body a GET's hit sends (empty when not kept).
    pub(crate) fn body(&self) -> &Bytes {
        &self.body
    }

    /// Whether the body was kept whole.
    pub(crate) fn kept(&self) -> bool {
        self.kept
    }

    /// Whether a request with this `Accept-Encoding` may get the kept body: it has no content
    /// coding, or the request accepts each of its codings.
    pub(crate) fn acceptable_to(&self, accept: Option<&HeaderValue>) -> bool {
        !self.coded
            || self
                .headers
                .get_all(CONTENT_ENCODING)
                .iter()
                .all(|c| accepts_coding(accept, c))
    }

    /// What the entry's answer holds, in bytes, as it counts in `max_bytes`.
    pub(crate) fn weight(&self) -> u64 {
        self.weight
    }
}

/// Whether `headers` state a content coding other than `identity`.
fn has_coding(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .any(|c| !c.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// Whether a request's `Accept-Encoding` (RFC 9110 §12.5.3) accepts every coding in `coding`
/// (a `Content-Encoding` list). No `Accept-Encoding` accepts any coding (§12.5.3: "any content
/// coding is considered acceptable"), but a client that sends none rarely decodes one: the
/// field's absence is taken as `identity` only, as most origins do.
pub(crate) fn accepts_coding(accept: Option<&HeaderValue>, coding: &HeaderValue) -> bool {
    let Some(accept) = accept.and_then(|a| a.to_str().ok()) else {
        return false;
    };
    let Ok(coding) = coding.to_str() else {
        return false;
    };
    let q_of = |name: &str| -> Option<bool> {
        let mut star = None;
        for member in accept.split(',') {
            let mut parts = member.split(';');
            let token = parts.next().unwrap_or("").trim();
            let zero = parts.any(|p| {
                let p = p.trim();
                let Some(q) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) else {
                    return false;
                };
                q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
            });
            if token.eq_ignore_ascii_case(name) {
                return Some(!zero);
            }
            if token == "*" {
                star = Some(!zero);
            }
        }
        star
    };
    coding
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
        .all(|c| q_of(c).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(fields: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in fields {
            m.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn exchange_and_connection_fields_are_not_kept() {
        let origin = map(&[
            ("content-type", "application/json"),
            ("connection", "close, x-conn-opt"),
            ("x-conn-opt", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("set-cookie", "s=1"),
            ("content-length", "17"),
            ("age", "5"),
            ("x-request-id", "a"),
            ("x-request-id", "b"),
        ]);
        let a = Answer::new(Head::of(&origin), Some(Bytes::from_static(b"{\"e\":1}"))).unwrap();
        let names: Vec<_> = a.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            ["content-type", "x-request-id", "content-length", "age"]
        );
        let ids: Vec<_> = a.headers().get_all("x-request-id").iter().collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(a.headers()[CONTENT_LENGTH], "7");
    }

    #[test]
    fn head_only_drops_what_describes_the_body() {
        let origin = map(&[
            ("content-type", "text/html"),
            ("content-encoding", "gzip"),
            ("content-language", "en"),
            ("x-trace", "t"),
        ]);
        let a = Answer::new(Head::of(&origin), None).unwrap();
        assert!(!a.kept());
        assert!(a.body().is_empty());
        let names: Vec<_> = a.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-trace", "content-length", "age"]);
        assert_eq!(a.headers()[CONTENT_LENGTH], "0");
    }

    #[test]
    fn a_bare_answer_costs_nothing() {
        assert!(Answer::new(Head::default(), Some(Bytes::new())).is_none());
        // Head-only, even without fields, says so.
        assert!(!Answer::new(Head::default(), None).unwrap().kept());
    }

    #[test]
    fn values_are_copied_out_of_the_upstream_buffer() {
        let big = Bytes::from(vec![b'a'; 8192]);
        let mut m = HeaderMap::new();
        m.insert(
            "x-a",
            HeaderValue::from_maybe_shared(big.slice(0..3)).unwrap(),
        );
        let head = Head::of(&m);
        let v = &head.fields[0].1;
        assert_eq!(v, "aaa");
        assert_ne!(v.as_bytes().as_ptr(), big.as_ptr());
    }

    #[test]
    fn accept_encoding() {
        let gzip = HeaderValue::from_static("gzip");
        let acc = |s: &str| accepts_coding(Some(&HeaderValue::from_str(s).unwrap()), &gzip);
        assert!(acc("gzip"));
        assert!(acc("br, GZIP;q=0.5"));
        assert!(acc("*"));
        assert!(!acc("br"));
        assert!(!acc("gzip;q=0"));
        assert!(!acc("*, gzip;q=0"));
        assert!(!accepts_coding(None, &gzip));
    }
}
