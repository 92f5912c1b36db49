//! Review of ee656e8 (a hit without a kept answer builds `Content-Length: 0` and `Age` in the
//! response's own map after `reserve(2)`, instead of a `with_capacity(2)` map built apart):
//! every hit answers what it did before — status, version, fields in order, the map's
//! capacity, body, HEAD, `Accept-Encoding` not accepted, the `NegativeCacheHit` extension —
//! and `only-if-cached`'s 504 is unchanged. The expected answers below were read from the
//! parent's code (this test run with ee656e8 reverted) and are asserted on the new one.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response, Version};
use http_body_util::{BodyExt, Empty, Full};
use tower::{Layer, Service, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::cache::{NegativeCache, NegativeCacheHit, ResponseBody};

type Req = Request<Empty<Bytes>>;

/// An origin answering every request with `status`, `fields` and `body`.
fn origin(
    status: u16,
    fields: &'static [(&'static str, &'static str)],
    body: &'static [u8],
) -> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |req: Req| {
        let mut b = Response::builder().status(status).version(req.version());
        for (n, v) in fields {
            b = b.header(*n, *v);
        }
        let body = if req.method() == Method::HEAD {
            Full::default()
        } else {
            Full::new(Bytes::from_static(body))
        };
        std::future::ready(Ok::<_, Infallible>(b.body(body).unwrap()))
    })
}

fn req(method: Method, version: Version, headers: &[(&str, &str)]) -> Req {
    let mut b = Request::builder()
        .method(method)
        .version(version)
        .uri("http://h.test/r/1");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Empty::new()).unwrap()
}

/// An answer as the caller sees it, every part that a hit is made of.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    version: Version,
    fields: Vec<(String, String)>,
    capacity: usize,
    body: Vec<u8>,
    synthesized: bool,
    /// `(status, body_kept, ttl secs, ttl source, age secs)`
    hit: Option<(u16, bool, u64, String, u64)>,
    extensions: usize,
}

async fn seen(res: Response<ResponseBody<Full<Bytes>>>) -> Seen {
    let hit = res.extensions().get::<NegativeCacheHit>().map(|h| {
        (
            h.status.as_u16(),
            h.body_kept,
            h.ttl.as_secs_f64().round() as u64,
            format!("{:?}", h.ttl_source),
            h.age.as_secs(),
        )
    });
    let fields = res
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    let (status, version, capacity) = (
        res.status().as_u16(),
        res.version(),
        res.headers().capacity(),
    );
    let extensions = res.extensions().len();
    let synthesized = res.body().is_synthesized();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    Seen {
        status,
        version,
        fields,
        capacity,
        body,
        synthesized,
        hit,
        extensions,
    }
}

fn f(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

/// A request to send as a hit: its method, version and headers.
type Hit<'a> = (Method, Version, &'a [(&'a str, &'a str)]);

/// Stores the origin's answer (a GET, or a HEAD when `learn_head`), then sends each of `hits`
/// through a fresh clone (the store is looked up) and again through that service (its memo
/// answers), and returns what each answered.
async fn hits<S>(
    layer: &NegativeCacheLayer,
    origin: S,
    learn_head: bool,
    hits: &[Hit<'_>],
) -> Vec<Seen>
where
    S: Service<Req, Response = Response<Full<Bytes>>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let svc = layer.layer(origin);
    let learn = if learn_head {
        Method::HEAD
    } else {
        Method::GET
    };
    let miss = svc
        .clone()
        .oneshot(req(learn, Version::HTTP_11, &[]))
        .await
        .unwrap();
    assert!(miss.extensions().get::<NegativeCacheHit>().is_none());
    miss.into_body().collect().await.unwrap(); // read whole: the body is kept
    let mut out = Vec::new();
    for (method, version, headers) in hits {
        let send = |mut svc: NegativeCache<S>| async move {
            let r = svc
                .ready()
                .await
                .unwrap()
                .call(req(method.clone(), *version, headers))
                .await
                .unwrap();
            (seen(r).await, svc)
        };
        // A fresh clone has no memo: the store is looked up.
        let (first, same) = send(svc.clone()).await;
        out.push(first);
        // The same service again: its memo answers.
        let (memo, same) = send(same).await;
        let (again, _) = send(same).await;
        assert_eq!(memo, again, "the memo answers the same each time");
        out.push(memo);
    }
    out
}

fn hit(
    status: u16,
    version: Version,
    fields: &[(&str, &str)],
    capacity: usize,
    body: &[u8],
    kept: bool,
    age: u64,
) -> Seen {
    Seen {
        status,
        version,
        fields: f(fields),
        capacity,
        body: body.to_vec(),
        synthesized: true,
        hit: Some((status, kept, 60, "Base".to_owned(), age)),
        extensions: 1,
    }
}

const GET: Method = Method::GET;
const HEAD: Method = Method::HEAD;
const V10: Version = Version::HTTP_10;
const V11: Version = Version::HTTP_11;
const V2: Version = Version::HTTP_2;

fn layer() -> NegativeCacheLayer {
    NegativeCacheLayer::builder()
        .ttl(std::time::Duration::from_secs(60))
        .build()
        .unwrap()
}

fn twice(seen: Vec<Seen>) -> Vec<Seen> {
    seen.into_iter().flat_map(|s| [s.clone_(), s]).collect()
}

impl Seen {
    fn clone_(&self) -> Seen {
        Seen {
            status: self.status,
            version: self.version,
            fields: self.fields.clone(),
            capacity: self.capacity,
            body: self.body.clone(),
            synthesized: self.synthesized,
            hit: self.hit.clone(),
            extensions: self.extensions,
        }
    }
}

/// The path ee656e8 changed: an origin's bare answer (no fields kept, empty body) has no kept
/// answer; its hit is `content-length: 0` then `age`, in a map of capacity 2 (as
/// `with_capacity(2)` made it), whatever the method, version or `Accept-Encoding`.
#[tokio::test]
async fn a_bare_hit_answers_as_before() {
    let bare = [("content-length", "0"), ("age", "0")];
    for status in [404, 410] {
        let got = hits(
            &layer(),
            origin(status, &[], b""),
            false,
            &[
                (GET, V11, &[]),
                (HEAD, V11, &[]),
                (GET, V10, &[]),
                (GET, V2, &[("accept-encoding", "identity")]),
                (GET, V11, &[("cache-control", "only-if-cached")]),
            ],
        )
        .await;
        let want = twice(vec![
            hit(status, V11, &bare, 2, b"", true, 0),
            hit(status, V11, &bare, 2, b"", true, 0),
            hit(status, V10, &bare, 2, b"", true, 0),
            hit(status, V2, &bare, 2, b"", true, 0),
            hit(status, V11, &bare, 2, b"", true, 0),
        ]);
        assert_eq!(got, want, "{status}");
    }
    // Learned from a HEAD without fields: a HEAD's hit is that answer, `Age` added (no
    // `Content-Length`: the origin stated none, RFC 9110 §8.6). A GET goes upstream (RFC 9111
    // §4), `tests/review_hostile_cache.rs`.
    let got = hits(&layer(), origin(404, &[], b""), true, &[(HEAD, V11, &[])]).await;
    let want = twice(vec![hit(404, V11, &[("age", "0")], 2, b"", false, 0)]);
    assert_eq!(got, want);
}

/// A kept answer: the origin's fields (a clone of the kept map) with `Age` set, its body to a
/// GET that accepts its coding, none to a HEAD (its `Content-Length` kept), head-only when the
/// request does not accept its coding.
#[tokio::test]
async fn a_kept_answer_hits_as_before() {
    // Fields and a body.
    let got = hits(
        &layer(),
        origin(
            404,
            &[("content-type", "text/plain"), ("x-trace", "t1")],
            b"not here",
        ),
        false,
        &[(GET, V11, &[]), (HEAD, V11, &[]), (GET, V2, &[])],
    )
    .await;
    let fields = [
        ("content-type", "text/plain"),
        ("x-trace", "t1"),
        ("content-length", "8"),
        ("age", "0"),
    ];
    let want = twice(vec![
        hit(404, V11, &fields, 6, b"not here", true, 0),
        hit(404, V11, &fields, 6, b"", true, 0),
        hit(404, V2, &fields, 6, b"not here", true, 0),
    ]);
    assert_eq!(got, want);

    // A coded body: sent to a request that accepts gzip, head-only otherwise (no
    // `Accept-Encoding` is taken as `identity` only).
    let got = hits(
        &layer(),
        origin(
            410,
            &[
                ("content-type", "text/plain"),
                ("content-encoding", "gzip"),
                ("x-trace", "t2"),
            ],
            b"gz",
        ),
        false,
        &[
            (GET, V11, &[("accept-encoding", "gzip")]),
            (GET, V11, &[("accept-encoding", "identity")]),
            (HEAD, V11, &[("accept-encoding", "br")]),
            (GET, V11, &[]),
        ],
    )
    .await;
    let coded = [
        ("content-type", "text/plain"),
        ("content-encoding", "gzip"),
        ("x-trace", "t2"),
        ("content-length", "2"),
        ("age", "0"),
    ];
    let head_only = [("x-trace", "t2"), ("content-length", "0"), ("age", "0")];
    // A HEAD's `Content-Length` would be the GET's, which a head-only hit does not know
    // (RFC 9110 §8.6): none.
    let head_only_head = [("x-trace", "t2"), ("age", "0")];
    let want = twice(vec![
        hit(410, V11, &coded, 6, b"gz", true, 0),
        Seen {
            hit: Some((410, false, 60, "Base".to_owned(), 0)),
            ..hit(410, V11, &head_only, 6, b"", false, 0)
        },
        Seen {
            hit: Some((410, false, 60, "Base".to_owned(), 0)),
            ..hit(410, V11, &head_only_head, 6, b"", false, 0)
        },
        Seen {
            hit: Some((410, false, 60, "Base".to_owned(), 0)),
            ..hit(410, V11, &head_only, 6, b"", false, 0)
        },
    ]);
    assert_eq!(got, want);

    // Fields, no body; and an origin's `Age` (a young one, and one past the first minute).
    let got = hits(
        &layer(),
        origin(404, &[("x-a", "1"), ("age", "5")], b""),
        false,
        &[(GET, V11, &[])],
    )
    .await;
    let fields = [("x-a", "1"), ("content-length", "0"), ("age", "5")];
    let want = twice(vec![Seen {
        hit: Some((404, true, 55, "Base".to_owned(), 5)),
        ..hit(404, V11, &fields, 6, b"", true, 5)
    }]);
    assert_eq!(got, want);
    let got = hits(
        &NegativeCacheLayer::builder()
            .ttl(std::time::Duration::from_secs(600))
            .build()
            .unwrap(),
        origin(404, &[("age", "75")], b""),
        false,
        &[(GET, V11, &[])],
    )
    .await;
    // `Age` alone is not a field kept: the answer is bare again.
    let fields = [("content-length", "0"), ("age", "75")];
    let want = twice(vec![Seen {
        hit: Some((404, true, 525, "Base".to_owned(), 75)),
        ..hit(404, V11, &fields, 2, b"", true, 75)
    }]);
    assert_eq!(got, want);
}

/// `only-if-cached` with nothing stored: 504, `content-length: 0` alone in a map of capacity
/// 2, an empty synthesized body, no `NegativeCacheHit`, the request's version.
#[tokio::test]
async fn only_if_cached_without_an_entry_is_the_same_504() {
    for version in [V10, V11, V2] {
        let svc = layer().layer(origin(404, &[], b""));
        let res = svc
            .oneshot(req(GET, version, &[("cache-control", "only-if-cached")]))
            .await
            .unwrap();
        let got = seen(res).await;
        assert_eq!(
            got,
            Seen {
                status: 504,
                version,
                fields: f(&[("content-length", "0")]),
                capacity: 2,
                body: Vec::new(),
                synthesized: true,
                hit: None,
                extensions: 0,
            }
        );
    }
}
