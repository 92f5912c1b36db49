//! A hostile review of the negative cache (fourth round): each test is a guarantee the crate
//! states (GUARANTEES.md, `src/cache/mod.rs`) that an earlier build broke.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::cache::{Credentials, NegativeCacheHit};

type Req = Request<Full<Bytes>>;
type Res = Response<Full<Bytes>>;

/// An origin that answers every request with what `make` builds, counting calls.
fn origin(
    calls: Arc<AtomicUsize>,
    make: fn() -> Res,
) -> impl Service<Req, Response = Res, Error = Infallible, Future = impl Send> + Clone {
    tower::service_fn(move |_req: Req| {
        calls.fetch_add(1, SeqCst);
        let res = make();
        async move { Ok::<_, Infallible>(res) }
    })
}

/// One call: ready, call, the answer.
async fn send<S>(svc: &mut S, req: Req) -> S::Response
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    svc.ready().await.unwrap().call(req).await.unwrap()
}

fn get(uri: &str) -> Req {
    Request::get(uri).body(Full::new(Bytes::new())).unwrap()
}

fn is_hit<B>(res: &Response<B>) -> bool {
    res.extensions().get::<NegativeCacheHit>().is_some()
}

const PROBLEM: &[u8] = b"{\"error\":\"not found\"}";

fn not_found_for_ten_seconds() -> Res {
    Response::builder()
        .status(404)
        .header("cache-control", "max-age=10")
        .body(Full::new(Bytes::from_static(PROBLEM)))
        .unwrap()
}

/// GUARANTEES.md: "Nothing stale is served" and "A hit says its whole age". A 404 with
/// `max-age=10` whose body the caller reads 8 s after the answer arrived: its entry is dated
/// from the answer's arrival (RFC 9111 §4.2.3 `response_time`), not from the body's end, so its
/// hits say their whole age and it is gone 10 s after arrival.
#[tokio::test(start_paused = true)]
async fn a_body_read_late_does_not_extend_the_origins_freshness() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(NegativeCacheLayer::new())
        .service(origin(calls.clone(), not_found_for_ten_seconds));

    let res = send(&mut svc, get("http://o.test/r/1")).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    tokio::time::advance(Duration::from_secs(8)).await;
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], PROBLEM);

    // 9 s after arrival: a hit, at least 9 s old.
    tokio::time::advance(Duration::from_secs(1)).await;
    let hit = send(&mut svc, get("http://o.test/r/1")).await;
    let info = *hit.extensions().get::<NegativeCacheHit>().expect("a hit");
    assert!(
        info.age >= Duration::from_secs(9) && hit.headers()["age"] == "9",
        "9 s after arrival the hit says age {:?} (Age: {:?})",
        info.age,
        hit.headers().get("age")
    );
    assert!(info.remaining <= Duration::from_secs(1), "{info:?}");

    // 12 s after arrival: past the origin's max-age=10, so upstream.
    tokio::time::advance(Duration::from_secs(3)).await;
    let again = send(&mut svc, get("http://o.test/r/1")).await;
    assert!(
        !is_hit(&again),
        "12 s after arrival a max-age=10 answer was served from the cache: {:?}",
        again.extensions().get::<NegativeCacheHit>()
    );
    assert_eq!(calls.load(SeqCst), 2);
}

/// The same when the caller drops the body late (the entry is stored head-only then).
#[tokio::test(start_paused = true)]
async fn a_body_dropped_late_does_not_extend_the_origins_freshness() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(NegativeCacheLayer::new())
        .service(origin(calls.clone(), not_found_for_ten_seconds));
    let res = send(&mut svc, get("http://o.test/r/1")).await;
    tokio::time::advance(Duration::from_secs(8)).await;
    drop(res);
    tokio::time::advance(Duration::from_secs(4)).await;
    let again = send(&mut svc, get("http://o.test/r/1")).await;
    assert!(
        !is_hit(&again),
        "{:?}",
        again.extensions().get::<NegativeCacheHit>()
    );
    assert_eq!(calls.load(SeqCst), 2);
}

/// A body that ends after the answer's freshness ran out is not stored at all (it would be
/// stale on arrival in the store), and counted as not stored.
#[tokio::test(start_paused = true)]
async fn a_body_that_ends_after_its_freshness_is_not_stored() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = NegativeCacheLayer::new();
    let handle = layer.handle();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(origin(calls.clone(), not_found_for_ten_seconds));
    let res = send(&mut svc, get("http://o.test/r/1")).await;
    tokio::time::advance(Duration::from_secs(11)).await;
    res.into_body().collect().await.unwrap();
    let stats = handle.stats();
    assert_eq!((stats.inserts, stats.uncacheable), (0, 1), "{stats:?}");
    let again = send(&mut svc, get("http://o.test/r/1")).await;
    assert!(!is_hit(&again));
    assert_eq!(calls.load(SeqCst), 2);
}

/// GUARANTEES.md: "A hit says its whole age (`Age` includes the origin's)", up to the largest
/// age the store represents, 2^32 − 1 seconds (RFC 9111 §1.2.2 lets a cache take a larger
/// value as the greatest integer it can represent).
#[tokio::test(start_paused = true)]
async fn a_hit_never_says_less_age_than_the_origin_reported() {
    for (origin_age, hit_age) in [
        ("4000000000", 4_000_000_000u64),
        ("5000000000", u64::from(u32::MAX)),
    ] {
        let calls = Arc::new(AtomicUsize::new(0));
        let svc_origin = tower::service_fn(move |_req: Req| {
            let res = Response::builder()
                .status(404)
                .header("cache-control", "max-age=99999999999")
                .header("age", origin_age)
                .body(Full::new(Bytes::new()))
                .unwrap();
            async move { Ok::<_, Infallible>(res) }
        });
        let c = calls.clone();
        let mut svc = ServiceBuilder::new()
            .layer(NegativeCacheLayer::new())
            .map_request(move |r: Req| {
                c.fetch_add(1, SeqCst);
                r
            })
            .service(svc_origin);
        let first = send(&mut svc, get("http://o.test/old")).await;
        assert_eq!(
            first.headers()["age"],
            origin_age,
            "the origin's answer goes through"
        );
        first.into_body().collect().await.unwrap();
        let hit = send(&mut svc, get("http://o.test/old")).await;
        let info = *hit.extensions().get::<NegativeCacheHit>().expect("a hit");
        assert_eq!(calls.load(SeqCst), 1);
        assert_eq!(hit.headers()["age"], hit_age.to_string().as_str());
        assert_eq!(info.age, Duration::from_secs(hit_age));
    }
}

/// An origin answering GET and HEAD 404, and any write 201 with `Location: location`.
fn writable_origin(
    location: &'static str,
) -> impl Service<Req, Response = Res, Error = Infallible, Future = impl Send> + Clone {
    tower::service_fn(move |req: Req| {
        let res = if req.method() == http::Method::GET || req.method() == http::Method::HEAD {
            Response::builder()
                .status(404)
                .body(Full::<Bytes>::default())
                .unwrap()
        } else {
            Response::builder()
                .status(201)
                .header("location", location)
                .body(Full::<Bytes>::default())
                .unwrap()
        };
        async move { Ok::<_, Infallible>(res) }
    })
}

/// GUARANTEES.md: "A successful write forgets its target and its same-origin
/// `Location`/`Content-Location` in any spelling (relative, dot segments, default port,
/// case)". A `Location` spelled exactly as the remembered GET (dot segment and all) forgets it.
#[tokio::test(start_paused = true)]
async fn a_location_spelled_as_the_remembered_target_forgets_it() {
    let url = "http://o.test/items/./7";
    let mut svc = ServiceBuilder::new()
        .layer(NegativeCacheLayer::new())
        .service(writable_origin(url));
    send(&mut svc, get(url)).await;
    assert!(is_hit(&send(&mut svc, get(url)).await));
    assert!(
        is_hit(&send(&mut svc, get("http://o.test/items/7")).await),
        "`/items/./7` and `/items/7` are one target (RFC 3986 §6.2.2.3)"
    );

    let post = Request::post("http://o.test/items")
        .body(Full::<Bytes>::default())
        .unwrap();
    let res = send(&mut svc, post).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = send(&mut svc, get(url)).await;
    assert!(
        !is_hit(&res),
        "a 201 with Location: {url} left the 404 of GET {url}"
    );
}

/// The same rule for the write's own target: `PUT /items/x/../7` writes `/items/7` (RFC 3986
/// §5.2.4, §6.2.2.3), so the remembered 404 of `GET /items/7` goes.
#[tokio::test(start_paused = true)]
async fn a_write_to_a_dot_segment_spelling_forgets_its_target() {
    let url = "http://o.test/items/7";
    let mut svc = ServiceBuilder::new()
        .layer(NegativeCacheLayer::new())
        .service(writable_origin("/elsewhere"));
    send(&mut svc, get(url)).await;
    assert!(is_hit(&send(&mut svc, get(url)).await));
    let put = Request::put("http://o.test/items/x/../7")
        .body(Full::<Bytes>::default())
        .unwrap();
    let res = send(&mut svc, put).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = send(&mut svc, get(url)).await;
    assert!(
        !is_hit(&res),
        "PUT /items/x/../7 (201) left the 404 of GET /items/7"
    );
}

/// key.rs `Credentials::Fingerprint`: two different credentials share a fingerprint with
/// probability 2^-63 and nobody can pick a colliding one. One `Authorization: x<0xff>y` and
/// two lines `x` and `y` are different credentials.
#[tokio::test(start_paused = true)]
async fn two_different_credentials_do_not_share_a_fingerprint() {
    let upstream = tower::service_fn(move |req: Req| {
        let auth = req.headers().get_all("authorization").iter().count();
        // Only the one-line credential is refused.
        let status = if auth == 1 { 404 } else { 200 };
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
        }
    });
    let layer = NegativeCacheLayer::builder()
        .credentials(Credentials::Fingerprint)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(upstream);

    let mut a = get("http://o.test/private/1");
    a.headers_mut()
        .insert("authorization", HeaderValue::from_bytes(b"x\xffy").unwrap());
    let res = send(&mut svc, a).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    let mut b = get("http://o.test/private/1");
    b.headers_mut()
        .append("authorization", HeaderValue::from_static("x"));
    b.headers_mut()
        .append("authorization", HeaderValue::from_static("y"));
    let res = send(&mut svc, b).await;
    assert!(
        !is_hit(&res),
        "another credential was answered with the first one's 404"
    );
    assert_eq!(res.status(), StatusCode::OK);
}
/// mod.rs: "A hit is the origin's answer (RFC 9111 §4)"; RFC 9110 §9.3.2: a HEAD's answer
/// has the fields a GET's would. The origin answers HEAD with `Content-Length: 21` and a
/// `Content-Type`; the same HEAD answered from the cache says the same.
#[tokio::test(start_paused = true)]
async fn a_head_hit_of_a_heads_answer_keeps_its_fields() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(NegativeCacheLayer::new())
        .service(origin(calls.clone(), || {
            Response::builder()
                .status(404)
                .header("content-type", "application/json")
                .header("content-length", "21")
                .body(Full::<Bytes>::default())
                .unwrap()
        }));
    let head = || {
        Request::head("http://o.test/r/9")
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    let first = send(&mut svc, head()).await;
    assert_eq!(first.headers()["content-length"], "21");
    first.into_body().collect().await.unwrap();

    let hit = send(&mut svc, head()).await;
    assert!(is_hit(&hit));
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(
        (
            hit.headers().get("content-length"),
            hit.headers().get("content-type")
        ),
        (
            Some(&HeaderValue::from_static("21")),
            Some(&HeaderValue::from_static("application/json"))
        ),
        "the origin's HEAD said Content-Length: 21, Content-Type: application/json"
    );
    assert!(
        hit.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );

    // RFC 9111 §4: a HEAD's answer can't stand for a GET's (it has no body): a GET goes
    // upstream, and its own answer is remembered.
    let res = send(&mut svc, get("http://o.test/r/9")).await;
    assert!(!is_hit(&res), "a GET answered from a HEAD's answer");
    assert_eq!(calls.load(SeqCst), 2);
}

// Fifth round: the suspicions the fourth round's reviewers left unconfirmed.

/// An origin whose n-th answer (from 0) is `answers[n]` (the last one repeated), counting
/// calls.
fn answering(
    calls: Arc<AtomicUsize>,
    answers: &'static [(u16, &'static str, &'static str)],
) -> impl Service<Req, Response = Res, Error = Infallible, Future = impl Send> + Clone {
    tower::service_fn(move |_req: Req| {
        let n = calls.fetch_add(1, SeqCst);
        let (status, cache_control, body) = answers[n.min(answers.len() - 1)];
        let res = Response::builder()
            .status(status)
            .header("cache-control", cache_control)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        async move { Ok::<_, Infallible>(res) }
    })
}

fn refresh(uri: &str) -> Req {
    Request::get(uri)
        .header("cache-control", "no-cache")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// RFC 9111 §4: of the answers a cache holds for a request, the most recent is used. A 404
/// whose body the caller reads late is remembered once it is read; by then a 410 that arrived
/// after it was stored. The older 404 does not replace the newer 410.
#[tokio::test(start_paused = true)]
async fn an_older_answer_read_late_does_not_replace_a_newer_one() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(NegativeCacheLayer::new())
        .service(answering(
            calls.clone(),
            &[(404, "max-age=100", "old"), (410, "max-age=100", "new")],
        ));
    let old = send(&mut svc, get("http://o.test/r/1")).await;
    assert_eq!(old.status(), StatusCode::NOT_FOUND);
    tokio::time::advance(Duration::from_secs(1)).await;
    let new = send(&mut svc, refresh("http://o.test/r/1")).await;
    assert_eq!(new.status(), StatusCode::GONE);
    new.into_body().collect().await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    old.into_body().collect().await.unwrap();

    let hit = send(&mut svc, get("http://o.test/r/1")).await;
    assert!(is_hit(&hit));
    assert_eq!(
        hit.status(),
        StatusCode::GONE,
        "the 404 that arrived first replaced the 410 that arrived after it"
    );
    assert_eq!(hit.headers()["age"], "1");
    assert_eq!(calls.load(SeqCst), 2);
}

/// The same when the older answer's freshness ran out before its body ended: it is not
/// stored, and the newer answer stays.
#[tokio::test(start_paused = true)]
async fn an_older_answer_stale_by_its_end_leaves_a_newer_one() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(NegativeCacheLayer::new())
        .service(answering(
            calls.clone(),
            &[(404, "max-age=10", "old"), (410, "max-age=100", "new")],
        ));
    let old = send(&mut svc, get("http://o.test/r/1")).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    let new = send(&mut svc, refresh("http://o.test/r/1")).await;
    new.into_body().collect().await.unwrap();
    tokio::time::advance(Duration::from_secs(6)).await;
    old.into_body().collect().await.unwrap();

    let hit = send(&mut svc, get("http://o.test/r/1")).await;
    assert!(
        is_hit(&hit),
        "a stale older answer removed the newer one stored before it ended"
    );
    assert_eq!(hit.status(), StatusCode::GONE);
    assert_eq!(calls.load(SeqCst), 2);
}

/// "The latest answer wins" for every final answer: a refresh answered 403 (the resource is
/// there now, behind a credential) forgets the remembered 404, so the next plain GET asks the
/// origin rather than repeat a 404 the origin no longer gives. A 503 says nothing about the
/// resource (RFC 9111 §4.3.3 lets a cache keep using what it holds): the 404 stays.
#[tokio::test(start_paused = true)]
async fn a_final_answer_other_than_missing_forgets_the_remembered_404() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(NegativeCacheLayer::new())
        .service(answering(
            calls.clone(),
            &[
                (404, "max-age=100", "gone"),
                (503, "no-store", "busy"),
                (403, "no-store", "forbidden"),
            ],
        ));
    let url = "http://o.test/r/1";
    send(&mut svc, get(url))
        .await
        .into_body()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        send(&mut svc, refresh(url)).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(
        is_hit(&send(&mut svc, get(url)).await),
        "a 503 to a refresh forgot the 404"
    );
    assert_eq!(
        send(&mut svc, refresh(url)).await.status(),
        StatusCode::FORBIDDEN
    );
    let res = send(&mut svc, get(url)).await;
    assert!(
        !is_hit(&res),
        "the origin answered 403 last, and the cache still answered its older 404"
    );
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(calls.load(SeqCst), 4);
}

/// RFC 9110 §7.2: a request in absolute form goes to its URI's authority, and an origin
/// serving several hosts reads its `Host`. A write whose `Host` names another host than its
/// URI is not keyed, but it may have changed either: both targets' 404s are forgotten.
#[tokio::test(start_paused = true)]
async fn a_write_whose_host_disagrees_with_its_uri_forgets_both_targets() {
    let mut svc = ServiceBuilder::new()
        .layer(NegativeCacheLayer::new())
        .service(writable_origin("/elsewhere"));
    let (by_address, by_name) = ("http://10.0.0.1/r/3", "http://tenant-a.test/r/3");
    for url in [by_address, by_name] {
        send(&mut svc, get(url)).await;
        assert!(is_hit(&send(&mut svc, get(url)).await));
    }
    let put = Request::put(by_address)
        .header("host", "tenant-a.test")
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(send(&mut svc, put).await.status(), StatusCode::CREATED);
    for url in [by_address, by_name] {
        assert!(
            !is_hit(&send(&mut svc, get(url)).await),
            "PUT {by_address} with Host: tenant-a.test left the 404 of GET {url}"
        );
    }
}
