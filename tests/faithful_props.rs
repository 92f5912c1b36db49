//! Property test of invariant 12, a hit is the origin's answer: for any Missing answer — a
//! status, arbitrary header fields (hop-by-hop ones and `Set-Cookie` included), a body of any
//! length split into any chunks, read to its end or dropped at any point — a later hit (GET or
//! HEAD) equals the origin's answer minus the fields that belonged to one exchange, plus `Age`;
//! or, when the body was not kept whole, is head-only. Never a partial body, never a
//! `Content-Length` that disagrees with the bytes sent; and the first caller receives the
//! origin's bytes unchanged, as they come.
//!
//! A scripted upstream on tokio's paused clock: no socket is part of what is tested here (the
//! real-server tests are in tests/faithful_server.rs).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use proptest::prelude::*;
use proptest::test_runner::Config;
use tower::{Layer, Service, ServiceExt};
use tower_negative_cache::cache::{NegativeCacheHit, NegativeCacheLayer};

const LIMIT: usize = 64;

/// An upstream body: its chunks, and (when `exact`) a known length, so that it says it has
/// ended as soon as its last chunk is read (as hyper's `Incoming` does with `Content-Length`).
struct Chunks {
    chunks: VecDeque<Bytes>,
    exact: Option<u64>,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }
    fn is_end_stream(&self) -> bool {
        self.exact.is_some() && self.chunks.is_empty()
    }
    fn size_hint(&self) -> SizeHint {
        match self.exact {
            Some(_) => SizeHint::with_exact(self.chunks.iter().map(|c| c.len() as u64).sum()),
            None => SizeHint::default(),
        }
    }
}

const NAMES: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-language",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "set-cookie",
    "age",
    "x-conn-opt",
    "x-request-id",
    "cache-control",
    "date",
    "etag",
    "x-error-code",
];

const VALUES: &[&str] = &[
    "application/json",
    "gzip",
    "identity",
    "close",
    "close, x-conn-opt",
    "x-error-code",
    "keep-alive",
    "sid=1; Path=/",
    "max-age=300",
    "12",
    "",
    "W/\"v1\"",
    // A `Date` in the future: the answer is not made old by the real clock.
    "Thu, 03 Dec 2099 08:00:00 GMT",
];

#[derive(Clone, Debug)]
struct Case {
    status: u16,
    fields: Vec<(usize, usize)>,
    body: Vec<u8>,
    /// Where the body is cut into chunks.
    cuts: Vec<usize>,
    exact: bool,
    /// Frames the caller reads before dropping the body; `None`: reads it to its end.
    read: Option<usize>,
    head_hit: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![404u16, 410]),
        prop::collection::vec((0..NAMES.len(), 0..VALUES.len()), 0..10),
        prop::collection::vec(any::<u8>(), 0..(LIMIT * 2 + 8)),
        prop::collection::vec(0usize..200, 0..6),
        any::<bool>(),
        prop::option::of(0usize..8),
        any::<bool>(),
    )
        .prop_map(|(status, fields, body, cuts, exact, read, head_hit)| Case {
            status,
            fields,
            body,
            cuts,
            exact,
            read,
            head_hit,
        })
}

fn chunks(body: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    if body.is_empty() {
        return Vec::new();
    }
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for c in cuts.into_iter().chain([body.len()]) {
        out.push(Bytes::copy_from_slice(&body[at..c]));
        at = c;
    }
    // The last chunk may be empty (a cut at the end): drop empty trailing chunks but one.
    while out.len() > 1 && out.last().is_some_and(Bytes::is_empty) {
        out.pop();
    }
    out
}

/// The origin's fields a hit may send (RFC 9110 §7.6.1; `Set-Cookie`; what the hit states
/// itself), in order, written independently of the crate's own list.
fn expected_fields(origin: &HeaderMap, kept: bool) -> Vec<(String, Vec<u8>)> {
    let named: Vec<String> = origin
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let exchange = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
        "set-cookie",
        "content-length",
        "age",
    ];
    let body_fields = [
        "content-type",
        "content-encoding",
        "content-language",
        "content-range",
        "content-md5",
        "content-digest",
        "repr-digest",
        "digest",
    ];
    origin
        .iter()
        .filter(|(n, _)| !exchange.contains(&n.as_str()) && !named.iter().any(|m| m == n.as_str()))
        .filter(|(n, _)| kept || !body_fields.contains(&n.as_str()))
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

fn sent_fields(hit: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    hit.iter()
        .filter(|(n, _)| *n != "content-length" && *n != "age")
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

fn run(c: Case) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut origin = HeaderMap::new();
        for &(n, v) in &c.fields {
            origin.append(
                HeaderName::from_static(NAMES[n]),
                HeaderValue::from_static(VALUES[v]),
            );
        }
        let parts = chunks(&c.body, &c.cuts);
        let calls = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(Mutex::new(Some((origin.clone(), parts.clone()))));
        let upstream = {
            let (calls, answer, status, exact) = (calls.clone(), answer.clone(), c.status, c.exact);
            tower::service_fn(move |_req: Request<Empty<Bytes>>| {
                calls.fetch_add(1, Ordering::SeqCst);
                let (headers, parts) = answer.lock().unwrap().take().expect("called once");
                let total = parts.iter().map(|p| p.len() as u64).sum();
                let mut res = Response::new(Chunks {
                    chunks: parts.into(),
                    exact: exact.then_some(total),
                });
                *res.status_mut() = StatusCode::from_u16(status).unwrap();
                *res.headers_mut() = headers;
                std::future::ready(Ok::<_, Infallible>(res))
            })
        };
        let layer = NegativeCacheLayer::builder()
            .max_body_bytes(LIMIT as u64)
            .respect_cache_headers(false)
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut svc = layer.layer(upstream);
        let req = |m: Method| {
            Request::builder()
                .method(m)
                .uri("http://origin.test/r/1")
                .header("accept-encoding", "gzip, br")
                .body(Empty::<Bytes>::new())
                .unwrap()
        };

        // The first caller: the origin's answer, its bytes as they come.
        let first = svc
            .ready()
            .await
            .unwrap()
            .call(req(Method::GET))
            .await
            .unwrap();
        prop_assert_eq!(first.status().as_u16(), c.status);
        prop_assert_eq!(first.headers(), &origin);
        let mut body = first.into_body();
        let mut got = Vec::new();
        let mut frames = 0;
        let mut ended = false;
        loop {
            if c.read.is_some_and(|r| frames >= r) {
                break;
            }
            match body.frame().await {
                Some(f) => {
                    got.extend_from_slice(&f.unwrap().into_data().unwrap());
                    frames += 1;
                }
                None => {
                    ended = true;
                    break;
                }
            }
        }
        prop_assert_eq!(&got[..], &c.body[..got.len()], "the caller's bytes changed");
        let read_all = got.len() == c.body.len() && frames >= parts.len();
        drop(body);

        // The body is kept when it was read whole (its end seen, or known) within the limit.
        let whole = ended || (c.exact && read_all) || (c.exact && c.body.is_empty());
        let kept = whole && c.body.len() <= LIMIT;
        let peek = handle.peek(&"http://origin.test/r/1".parse().unwrap());
        prop_assert!(
            peek.is_some(),
            "a Missing answer is remembered, body kept or not"
        );
        let peek = peek.unwrap();
        prop_assert_eq!(peek.body_kept, kept, "peek");
        prop_assert_eq!(handle.stats().head_only, u64::from(!kept));

        // A later hit: no upstream call; the origin's answer, or head-only.
        let m = if c.head_hit {
            Method::HEAD
        } else {
            Method::GET
        };
        let hit = svc.ready().await.unwrap().call(req(m)).await.unwrap();
        prop_assert_eq!(calls.load(Ordering::SeqCst), 1, "a hit went upstream");
        // A kept body in a coding the request does not accept is not sent (head-only).
        let accepted = origin
            .get_all("content-encoding")
            .iter()
            .flat_map(|v| v.to_str().unwrap().split(','))
            .map(str::trim)
            .all(|c| ["gzip", "br", "identity", ""].contains(&c));
        let kept = kept && (accepted || c.body.is_empty());
        let info = *hit.extensions().get::<NegativeCacheHit>().expect("a hit");
        prop_assert_eq!(info.body_kept, kept);
        prop_assert_eq!(hit.status().as_u16(), c.status);
        prop_assert_eq!(sent_fields(hit.headers()), expected_fields(&origin, kept));
        prop_assert_eq!(hit.headers().get_all("age").iter().count(), 1);
        // The age it arrived with (the origin's `Age`), the paused clock adding nothing.
        let arrived = origin
            .get("age")
            .and_then(|v| {
                v.to_str()
                    .ok()?
                    .split(',')
                    .next()?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        prop_assert_eq!(&hit.headers()["age"], &arrived.to_string());
        let lengths: Vec<_> = hit.headers().get_all("content-length").iter().collect();
        let want: &[u8] = if kept { &c.body } else { &[] };
        if c.head_hit && !kept {
            // RFC 9110 §8.6: a HEAD's `Content-Length` is the GET's body length, which an
            // entry without its body does not know: none is sent.
            prop_assert_eq!(lengths.len(), 0, "a HEAD's Content-Length it does not know");
        } else {
            prop_assert_eq!(lengths.len(), 1);
            let length: usize = lengths[0].to_str().unwrap().parse().unwrap();
            // A HEAD's answer: a GET's fields (its Content-Length too), no body (§9.3.2).
            prop_assert_eq!(length, want.len(), "Content-Length");
        }
        let sent = hit.into_body().collect().await.unwrap().to_bytes();
        if c.head_hit {
            prop_assert!(sent.is_empty(), "a HEAD's hit has a body");
        } else {
            prop_assert_eq!(&sent[..], want, "a partial or wrong body");
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(Config { cases: 512, failure_persistence: None, ..Config::default() })]

    #[test]
    fn a_hit_is_the_origins_answer_or_head_only(c in case()) {
        run(c)?;
    }
}
