//! `NegativeCacheLayer` over a real hyper-util legacy client talking to a real hyper server on
//! 127.0.0.1 (alone, and outside `StatusAwareRetryLayer`): how many requests reach the origin,
//! and what the caller gets back.

mod support;

use std::fmt::Debug;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::task::JoinSet;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::StatusAwareRetryLayer;
use tower_negative_cache::cache::{
    BypassNegativeCache, CacheStats, Credentials, NegativeCache, NegativeCacheHandle,
    NegativeCacheHit, NegativeCacheLayer, ResponseBody, ResponseFuture,
};
use tower_negative_cache::classify::DefaultClassifier;
use tower_negative_cache::retry::StatusAwareRetry;

use support::{Reply, TestServer};

type Inner = Client<HttpConnector, Empty<Bytes>>;
type Res = Response<ResponseBody<Incoming>>;

fn cached(layer: &NegativeCacheLayer) -> NegativeCache<Inner> {
    ServiceBuilder::new()
        .layer(layer.clone())
        .service(support::client())
}

/// The recommended stack: the cache outside the retry layer.
fn cached_retried(
    cache: &NegativeCacheLayer,
    retry: &StatusAwareRetryLayer,
) -> NegativeCache<StatusAwareRetry<Inner>> {
    ServiceBuilder::new()
        .layer(cache.clone())
        .layer(retry.clone())
        .service(support::client())
}

async fn send<S>(svc: &mut S, req: Request<Empty<Bytes>>) -> Res
where
    S: Service<Request<Empty<Bytes>>, Response = Res>,
    S::Error: Debug,
{
    svc.ready()
        .await
        .expect("the client is ready")
        .call(req)
        .await
        .expect("an answer")
}

fn hit_of<B>(res: &Response<B>) -> Option<NegativeCacheHit> {
    res.extensions().get::<NegativeCacheHit>().copied()
}

/// A synthesized answer: the status, `NegativeCacheHit`, `Age`, `content-length: 0`, no body.
async fn assert_synthesized(res: Res, status: u16, what: &str) -> NegativeCacheHit {
    assert_eq!(res.status().as_u16(), status, "{what}: status");
    let hit = hit_of(&res).unwrap_or_else(|| panic!("{what}: no NegativeCacheHit"));
    let age: u64 = res.headers()["age"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{what}: Age is not delta-seconds"));
    assert_eq!(age, hit.age.as_secs(), "{what}: Age header vs extension");
    assert_eq!(res.headers()["content-length"], "0", "{what}");
    assert!(res.body().is_synthesized(), "{what}: body not synthesized");
    assert!(support::body_bytes(res).await.is_empty(), "{what}: body");
    hit
}

/// An answer that came from the origin.
fn assert_upstream(res: &Res, status: u16, what: &str) {
    assert_eq!(res.status().as_u16(), status, "{what}: status");
    assert!(hit_of(res).is_none(), "{what}: unexpected NegativeCacheHit");
    assert!(!res.body().is_synthesized(), "{what}: synthesized body");
}

fn assert_adds_up(s: &CacheStats) {
    assert_eq!(s.lookups, s.hits + s.misses, "{s:?}");
    let rate = if s.lookups == 0 {
        0.0
    } else {
        s.hits as f64 / s.lookups as f64
    };
    assert!((s.hit_rate - rate).abs() < 1e-12, "{s:?}");
}

// 1 -------------------------------------------------------------------------------------------

/// Five GETs of `path`: the first goes upstream, the four others are synthesized.
async fn five_gets<S>(svc: &mut S, server: &TestServer, path: &str, status: u16)
where
    S: Service<Request<Empty<Bytes>>, Response = Res>,
    S::Error: Debug,
{
    let url = server.url(path);
    let res = send(svc, support::get(&url)).await;
    assert_upstream(&res, status, path);
    let _ = support::body_bytes(res).await;
    let default_ttl = if status == 410 {
        Duration::from_secs(3600)
    } else {
        Duration::from_secs(60)
    };
    for i in 1..5 {
        let res = send(svc, support::get(&url)).await;
        let hit = assert_synthesized(res, status, &format!("{path} #{i}")).await;
        assert!(hit.remaining <= default_ttl, "{path}: {hit:?}");
        assert!(
            hit.remaining > default_ttl - Duration::from_secs(5),
            "{path}: {hit:?}"
        );
    }
    assert_eq!(server.hits(path), 1, "{path}: upstream calls");
}

#[tokio::test]
async fn a_repeated_404_or_410_reaches_the_origin_once() {
    let mut builder = TestServer::builder();
    for path in ["/a/404", "/b/404"] {
        builder = builder.route(path, [Reply::status(404), Reply::ok("must not be reached")]);
    }
    for path in ["/a/410", "/b/410"] {
        builder = builder.route(path, [Reply::status(410), Reply::ok("must not be reached")]);
    }
    let server = builder.start().await;

    // The cache alone.
    let cache = NegativeCacheLayer::new();
    let mut svc = cached(&cache);
    five_gets(&mut svc, &server, "/a/404", 404).await;
    five_gets(&mut svc, &server, "/a/410", 410).await;
    // Hits open no connection: the one pooled connection carried both misses.
    assert_eq!(server.connections(), 1);
    let s = cache.handle().stats();
    assert_eq!(
        (s.lookups, s.hits, s.misses, s.inserts, s.len),
        (10, 8, 2, 2, 2)
    );
    assert_adds_up(&s);

    // Outside the retry layer: a remembered answer never reaches it.
    let cache = NegativeCacheLayer::new();
    let retry = StatusAwareRetryLayer::new();
    let mut svc = cached_retried(&cache, &retry);
    five_gets(&mut svc, &server, "/b/404", 404).await;
    five_gets(&mut svc, &server, "/b/410", 410).await;
    let r = retry.stats();
    assert_eq!((r.requests, r.attempts, r.retries), (2, 2, 0));
    let s = cache.handle().stats();
    assert_eq!((s.lookups, s.hits, s.misses, s.inserts), (10, 8, 2, 2));
    assert_eq!(server.total_hits(), 4);
}

// 2 -------------------------------------------------------------------------------------------

/// The origin's `max-age` (less the age its `Date` gives the answer: hyper's `Date` has a
/// resolution of one second) sets how long the 404 is kept. Expiry itself is held, on paused
/// time, by `tests/cache_semantics.rs`.
#[tokio::test]
async fn max_age_on_the_404_sets_the_ttl() {
    let server =
        TestServer::always(Reply::status(404).header("cache-control", "max-age=600")).await;
    let cache = NegativeCacheLayer::new();
    let mut svc = cached(&cache);
    let url = server.url("/short");

    let res = send(&mut svc, support::get(&url)).await;
    assert_upstream(&res, 404, "first");
    let hit = assert_synthesized(send(&mut svc, support::get(&url)).await, 404, "second").await;
    assert!(hit.remaining <= Duration::from_secs(600), "{hit:?}");
    assert!(
        hit.remaining + hit.age >= Duration::from_secs(598),
        "{hit:?}"
    );
    assert_eq!(server.hits("/short"), 1);
    let s = cache.handle().stats();
    assert_eq!((s.inserts, s.hits), (1, 1));
}

// 3 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn no_store_or_no_cache_on_the_404_is_never_remembered() {
    let server = TestServer::builder()
        .handler(|r| match r.path.as_str() {
            "/no-store" => Some(Reply::status(404).header("cache-control", "no-store")),
            "/no-cache" => Some(Reply::status(404).header("cache-control", "no-cache")),
            _ => None,
        })
        .start()
        .await;
    let cache = NegativeCacheLayer::new();
    let mut svc = cached(&cache);

    for path in ["/no-store", "/no-cache"] {
        for i in 0..3 {
            let res = send(&mut svc, support::get(&server.url(path))).await;
            assert_upstream(&res, 404, &format!("{path} #{i}"));
        }
        assert_eq!(server.hits(path), 3, "{path}");
    }
    let s = cache.handle().stats();
    assert_eq!((s.inserts, s.hits, s.len), (0, 0, 0));
}

// 4 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn successful_writes_forget_their_target_and_location() {
    let server = TestServer::builder()
        .handler(|r| match (r.method.as_str(), r.path.as_str()) {
            ("PUT", "/records/1") => Some(Reply::status(201)),
            ("PUT", "/records/9") => Some(Reply::status(409)),
            ("POST", "/records") => Some(Reply::status(201).header("location", "/records/7")),
            ("POST", "/elsewhere") => {
                Some(Reply::status(201).header("location", "http://other.example/records/8"))
            }
            ("GET", _) => Some(Reply::status(404)),
            _ => None,
        })
        .start()
        .await;
    let cache = NegativeCacheLayer::new();
    let mut svc = cached(&cache);
    let gets = |path: &str| server.hits_for(Method::GET, path);

    // Cache 404s for /records/{1,7,8,9}.
    for path in ["/records/1", "/records/7", "/records/8", "/records/9"] {
        for _ in 0..2 {
            let _ = send(&mut svc, support::get(&server.url(path))).await;
        }
        assert_eq!(gets(path), 1, "{path}");
    }

    // PUT answered 201: the next GET goes upstream.
    let res = send(
        &mut svc,
        support::request(Method::PUT, &server.url("/records/1")),
    )
    .await;
    assert_upstream(&res, 201, "PUT");
    let res = send(&mut svc, support::get(&server.url("/records/1"))).await;
    assert_upstream(&res, 404, "GET after PUT");
    assert_eq!(gets("/records/1"), 2);

    // POST answered 201 with `Location: /records/7` (same origin): /records/7 is forgotten.
    let res = send(
        &mut svc,
        support::request(Method::POST, &server.url("/records")),
    )
    .await;
    assert_upstream(&res, 201, "POST");
    let res = send(&mut svc, support::get(&server.url("/records/7"))).await;
    assert_upstream(&res, 404, "GET after POST");
    assert_eq!(gets("/records/7"), 2);

    // A Location on another origin forgets nothing here; a failed write forgets nothing.
    let _ = send(
        &mut svc,
        support::request(Method::POST, &server.url("/elsewhere")),
    )
    .await;
    let res = send(
        &mut svc,
        support::request(Method::PUT, &server.url("/records/9")),
    )
    .await;
    assert_upstream(&res, 409, "failed PUT");
    for path in ["/records/8", "/records/9"] {
        let res = send(&mut svc, support::get(&server.url(path))).await;
        assert_synthesized(res, 404, path).await;
        assert_eq!(gets(path), 1, "{path}");
    }
    let s = cache.handle().stats();
    assert_eq!(s.invalidations, 2, "{s:?}");
    assert_eq!(s.bypasses, 4, "the writes: {s:?}");
}

// 5 -------------------------------------------------------------------------------------------

/// 50 concurrent GETs of `url` through clones of `svc`; their statuses and whether each was
/// synthesized.
async fn burst(svc: &NegativeCache<Inner>, url: &str) -> Vec<(StatusCode, bool)> {
    let mut set = JoinSet::new();
    for _ in 0..50 {
        let mut svc = svc.clone();
        let url = url.to_owned();
        set.spawn(async move {
            let res = send(&mut svc, support::get(&url)).await;
            let out = (res.status(), hit_of(&res).is_some());
            let _ = support::body_bytes(res).await;
            out
        });
    }
    set.join_all().await
}

#[tokio::test]
async fn coalescing_sends_one_of_50_concurrent_misses_upstream() {
    let server = TestServer::always(Reply::status(404).delay(Duration::from_millis(50))).await;
    let cache = NegativeCacheLayer::builder()
        .coalesce(Duration::from_secs(2))
        .build()
        .unwrap();
    let svc = cached(&cache);

    let t0 = std::time::Instant::now();
    let answers = burst(&svc, &server.url("/burst")).await;
    let elapsed = t0.elapsed();

    assert!(answers.iter().all(|(s, _)| *s == StatusCode::NOT_FOUND));
    assert_eq!(answers.iter().filter(|(_, synth)| *synth).count(), 49);
    assert_eq!(server.hits("/burst"), 1);
    let s = cache.handle().stats();
    println!("coalesced burst of 50 missing: {elapsed:?}, {s:?}");
    assert_eq!(
        (s.lookups, s.misses, s.hits, s.coalesced, s.inserts),
        (50, 50, 0, 49, 1)
    );
    assert_eq!(s.wait_timeouts, 0);
    assert_adds_up(&s);
}

// 6 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn coalescing_does_not_serialise_present_keys() {
    let server = TestServer::always(Reply::ok("here").delay(Duration::from_millis(50))).await;
    let cache = NegativeCacheLayer::builder()
        .coalesce(Duration::from_secs(2))
        .build()
        .unwrap();
    let svc = cached(&cache);

    let t0 = std::time::Instant::now();
    let answers = burst(&svc, &server.url("/present")).await;
    let elapsed = t0.elapsed();

    assert!(
        answers
            .iter()
            .all(|(s, synth)| *s == StatusCode::OK && !synth)
    );
    assert_eq!(server.hits("/present"), 50);
    let peak = server.peak_in_flight();
    let s = cache.handle().stats();
    println!(
        "coalesced burst of 50 present: peak in flight at the origin {peak}, {elapsed:?}, \
         {} connections, {s:?}",
        server.connections()
    );
    // Serialised, they would reach the origin one at a time: the peak shows they did not
    // (the elapsed time, printed, depends on how busy the machine is).
    assert!(peak >= 25, "peak in flight {peak}");
    assert_eq!((s.inserts, s.hits, s.wait_timeouts), (0, 0, 0));
}

// 7 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn credentials_bypass_by_default() {
    let server = TestServer::always(Reply::status(404)).await;
    let cache = NegativeCacheLayer::new();
    let mut svc = cached(&cache);
    let url = server.url("/private");

    for i in 0..2 {
        let res = send(
            &mut svc,
            support::get_with(&url, "authorization", "Bearer a"),
        )
        .await;
        assert_upstream(&res, 404, &format!("authorized #{i}"));
    }
    let res = send(&mut svc, support::get_with(&url, "cookie", "session=a")).await;
    assert_upstream(&res, 404, "cookie");
    assert_eq!(server.hits("/private"), 3);
    assert_eq!(cache.handle().stats().len, 0);

    // Nothing was stored for the anonymous request to find.
    let res = send(&mut svc, support::get(&url)).await;
    assert_upstream(&res, 404, "anonymous");
    assert_eq!(server.hits("/private"), 4);
    let s = cache.handle().stats();
    assert_eq!((s.bypasses, s.lookups, s.inserts), (3, 1, 1));
}

#[tokio::test]
async fn fingerprinted_credentials_never_share_an_entry() {
    let server = TestServer::always(Reply::status(404)).await;
    let cache = NegativeCacheLayer::builder()
        .credentials(Credentials::Fingerprint)
        .build()
        .unwrap();
    let mut svc = cached(&cache);
    let url = server.url("/private");
    let calls = || server.hits("/private");

    let alice = || support::get_with(&url, "authorization", "Bearer alice");
    let bob = || support::get_with(&url, "authorization", "Bearer bob");
    assert_upstream(&send(&mut svc, alice()).await, 404, "alice #1");
    assert_synthesized(send(&mut svc, alice()).await, 404, "alice #2").await;
    assert_eq!(calls(), 1);
    assert_upstream(&send(&mut svc, bob()).await, 404, "bob");
    assert_eq!(calls(), 2);
    assert_upstream(&send(&mut svc, support::get(&url)).await, 404, "anonymous");
    assert_eq!(calls(), 3);
    assert_synthesized(send(&mut svc, alice()).await, 404, "alice #3").await;
    assert_synthesized(send(&mut svc, bob()).await, 404, "bob #2").await;
    assert_eq!(calls(), 3);

    let cookie = |c: &str| support::get_with(&url, "cookie", c);
    assert_upstream(&send(&mut svc, cookie("session=a")).await, 404, "cookie a");
    assert_synthesized(
        send(&mut svc, cookie("session=a")).await,
        404,
        "cookie a #2",
    )
    .await;
    assert_upstream(&send(&mut svc, cookie("session=b")).await, 404, "cookie b");
    assert_eq!(calls(), 5);

    // One target, five credentials (none included): invalidating the URI forgets them all.
    assert_eq!(cache.handle().stats().len, 5);
    assert!(cache.handle().invalidate_uri(&url.parse().unwrap()));
    assert_eq!(cache.handle().stats().len, 0);
    assert_eq!(cache.handle().stats().invalidations, 5);
    assert_upstream(
        &send(&mut svc, alice()).await,
        404,
        "alice after invalidation",
    );
    assert_eq!(calls(), 6);
}

// 8 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn head_and_get_share_the_entry() {
    let server = TestServer::always(Reply::status(404)).await;
    let cache = NegativeCacheLayer::new();
    let mut svc = cached(&cache);
    let head = |path: &str| support::request(Method::HEAD, &server.url(path));

    // GET first, HEAD from the cache.
    assert_upstream(
        &send(&mut svc, support::get(&server.url("/g"))).await,
        404,
        "GET",
    );
    assert_synthesized(send(&mut svc, head("/g")).await, 404, "HEAD after GET").await;
    assert_eq!(server.hits("/g"), 1);

    // HEAD first: a HEAD from the cache, but a GET upstream (RFC 9111 §4: a HEAD's answer
    // has no body to stand for a GET's); the GET's answer then answers both.
    let res = send(&mut svc, head("/h")).await;
    assert_upstream(&res, 404, "HEAD");
    let origin_length = res.headers().get("content-length").cloned();
    assert!(support::body_bytes(res).await.is_empty());
    let res = send(&mut svc, head("/h")).await;
    assert!(hit_of(&res).is_some(), "HEAD after HEAD");
    assert_eq!(res.headers().get("content-length"), origin_length.as_ref());
    assert!(support::body_bytes(res).await.is_empty());
    assert_eq!(server.hits("/h"), 1);
    let get = || support::get(&server.url("/h"));
    assert_upstream(&send(&mut svc, get()).await, 404, "GET after HEAD");
    assert_eq!(server.hits_for(Method::GET, "/h"), 1);
    assert_synthesized(send(&mut svc, get()).await, 404, "GET after GET").await;
    assert_synthesized(send(&mut svc, head("/h")).await, 404, "HEAD after GET").await;
    assert_eq!(server.hits("/h"), 2);
}

// 9 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_no_cache_request_goes_upstream_and_refreshes_the_entry() {
    let server = TestServer::builder()
        .route(
            "/cc",
            [
                Reply::status(404),
                Reply::status(404),
                Reply::ok("now here"),
            ],
        )
        .route("/ext", [Reply::status(404), Reply::ok("now here")])
        .route("/pragma", [Reply::status(404), Reply::status(410)])
        .default_reply(Reply::ok("here"))
        .start()
        .await;
    let cache = NegativeCacheLayer::new();
    let mut svc = cached(&cache);
    let url = |p: &str| server.url(p);
    let no_cache = |p: &str| support::get_with(&server.url(p), "cache-control", "no-cache");

    // Cache-Control: no-cache, origin still 404: upstream, and the entry is stored again.
    assert_upstream(
        &send(&mut svc, support::get(&url("/cc"))).await,
        404,
        "cc #1",
    );
    assert_synthesized(
        send(&mut svc, support::get(&url("/cc"))).await,
        404,
        "cc #2",
    )
    .await;
    assert_upstream(&send(&mut svc, no_cache("/cc")).await, 404, "cc no-cache");
    assert_eq!(server.hits("/cc"), 2);
    assert_synthesized(
        send(&mut svc, support::get(&url("/cc"))).await,
        404,
        "cc #3",
    )
    .await;
    // ... origin now 200: the entry is gone, later GETs go upstream.
    assert_upstream(
        &send(&mut svc, no_cache("/cc")).await,
        200,
        "cc no-cache, found",
    );
    assert_upstream(
        &send(&mut svc, support::get(&url("/cc"))).await,
        200,
        "cc after",
    );
    assert_eq!(server.hits("/cc"), 4);

    // The BypassNegativeCache extension does the same.
    assert_upstream(
        &send(&mut svc, support::get(&url("/ext"))).await,
        404,
        "ext #1",
    );
    assert_synthesized(
        send(&mut svc, support::get(&url("/ext"))).await,
        404,
        "ext #2",
    )
    .await;
    let mut req = support::get(&url("/ext"));
    req.extensions_mut().insert(BypassNegativeCache);
    assert_upstream(&send(&mut svc, req).await, 200, "ext bypass");
    assert_upstream(
        &send(&mut svc, support::get(&url("/ext"))).await,
        200,
        "ext after",
    );
    assert_eq!(server.hits("/ext"), 3);

    // Pragma: no-cache (no Cache-Control): the refreshed answer (now 410) replaces the 404.
    assert_upstream(
        &send(&mut svc, support::get(&url("/pragma"))).await,
        404,
        "pragma #1",
    );
    let req = support::get_with(&url("/pragma"), "pragma", "no-cache");
    assert_upstream(&send(&mut svc, req).await, 410, "pragma refresh");
    assert_synthesized(
        send(&mut svc, support::get(&url("/pragma"))).await,
        410,
        "pragma #2",
    )
    .await;
    assert_eq!(server.hits("/pragma"), 2);

    let s = cache.handle().stats();
    assert_eq!(s.bypasses, 4, "{s:?}");
    assert_adds_up(&s);
}

// 10 ------------------------------------------------------------------------------------------

/// A GET of `url` (upstream unless cached), then a second one that must be synthesized.
async fn cache_it(svc: &mut NegativeCache<Inner>, url: &str) {
    let _ = send(svc, support::get(url)).await;
    let res = send(svc, support::get(url)).await;
    assert_synthesized(res, 404, url).await;
}

#[tokio::test]
async fn the_handle_invalidates_on_demand() {
    let server = TestServer::always(Reply::status(404)).await;
    let cache = NegativeCacheLayer::new();
    let handle = cache.handle();
    let mut svc = cached(&cache);
    let url = server.url("/records/42?x=1");
    let calls = || server.hits("/records/42");

    cache_it(&mut svc, &url).await;
    assert_eq!(calls(), 1);
    assert!(handle.invalidate_uri(&url.parse().unwrap()));
    assert!(
        !handle.invalidate_uri(&url.parse().unwrap()),
        "already gone"
    );

    cache_it(&mut svc, &url).await;
    assert_eq!(calls(), 2);
    // The key as text: the normalised target.
    assert!(handle.invalidate(&format!("http://{}/records/42?x=1", server.addr)));
    assert!(!handle.invalidate(&server.url("/records/43")));

    cache_it(&mut svc, &url).await;
    assert_eq!(calls(), 3);
    assert_eq!(handle.invalidate_if(|k| k.contains("/nothing/")), 0);
    assert_eq!(handle.invalidate_if(|k| k.ends_with("/records/42?x=1")), 1);

    cache_it(&mut svc, &url).await;
    assert_eq!(calls(), 4);
    assert_eq!(handle.clear(), 1);

    cache_it(&mut svc, &url).await;
    assert_eq!(calls(), 5);
    let s = handle.stats();
    assert_eq!((s.invalidations, s.len, s.inserts, s.hits), (4, 1, 5, 5));
}

// 11 ------------------------------------------------------------------------------------------

#[test]
fn the_layer_service_future_body_and_handle_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<NegativeCacheLayer>();
    assert_send_sync::<NegativeCacheHandle>();
    assert_send_sync::<NegativeCache<Inner>>();
    assert_send_sync::<ResponseFuture<Inner, DefaultClassifier, Empty<Bytes>>>();
    assert_send_sync::<<NegativeCache<Inner> as Service<Request<Empty<Bytes>>>>::Future>();
    assert_send_sync::<ResponseBody<Incoming>>();
    type Both = NegativeCache<StatusAwareRetry<Inner>>;
    assert_send_sync::<Both>();
    assert_send_sync::<<Both as Service<Request<Empty<Bytes>>>>::Future>();
}

// 12 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_stats_add_up_after_a_mixed_run() {
    let server = TestServer::builder()
        .handler(|r| match (r.method.as_str(), r.path.as_str()) {
            ("PUT", _) => Some(Reply::status(204)),
            (_, "/ok") => Some(Reply::ok("ok")),
            (_, "/gone") => Some(Reply::status(410)),
            (_, "/nostore") => Some(Reply::status(404).header("cache-control", "no-store")),
            _ => Some(Reply::status(404)),
        })
        .start()
        .await;
    let cache = NegativeCacheLayer::new();
    let mut svc = cached(&cache);
    let url = |p: &str| server.url(p);

    for p in [
        "/a", "/b", "/a", "/gone", "/ok", "/a", "/nostore", "/gone", "/ok",
    ] {
        let _ = send(&mut svc, support::get(&url(p))).await;
    }
    let _ = send(&mut svc, support::request(Method::HEAD, &url("/b"))).await;
    let _ = send(&mut svc, support::request(Method::PUT, &url("/a"))).await;
    let _ = send(&mut svc, support::get(&url("/a"))).await;
    let _ = send(
        &mut svc,
        support::get_with(&url("/b"), "authorization", "x"),
    )
    .await;
    let _ = send(
        &mut svc,
        support::get_with(&url("/b"), "cache-control", "no-cache"),
    )
    .await;
    let _ = send(&mut svc, support::get(&url("/b"))).await;

    let s = cache.handle().stats();
    println!("mixed run: {s:?}");
    assert_adds_up(&s);
    // GETs and HEADs looked up: 9 + 1 + 1 + 1 = 12; hits: /a twice, /gone, HEAD /b, last /b.
    assert_eq!((s.lookups, s.hits, s.misses), (12, 5, 7));
    // Bypasses: the PUT, the credentialed GET, the no-cache GET.
    assert_eq!(s.bypasses, 3);
    // Inserts: /a, /b, /gone, /a again after the PUT, /b refreshed.
    assert_eq!((s.inserts, s.invalidations, s.len), (5, 1, 3));
    let upstream = server.total_hits() as u64;
    assert_eq!(upstream, s.misses + s.bypasses);
}

// More ----------------------------------------------------------------------------------------

#[tokio::test]
async fn waiters_past_the_coalescing_bound_go_upstream_themselves() {
    let server = TestServer::always(Reply::status(404).delay(Duration::from_millis(300))).await;
    let cache = NegativeCacheLayer::builder()
        .coalesce(Duration::from_millis(50))
        .build()
        .unwrap();
    let svc = cached(&cache);

    let t0 = std::time::Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..10 {
        let mut svc = svc.clone();
        let url = server.url("/slow");
        set.spawn(async move { send(&mut svc, support::get(&url)).await.status() });
    }
    let statuses = set.join_all().await;
    let elapsed = t0.elapsed();

    assert!(statuses.iter().all(|s| *s == StatusCode::NOT_FOUND));
    assert_eq!(server.hits("/slow"), 10);
    // Released by the 50 ms bound, not by the leader's 300 ms answer: every waiter timed out.
    let s = cache.handle().stats();
    println!("10 waiters past a 50 ms bound: {elapsed:?}, {s:?}");
    assert_eq!((s.coalesced, s.wait_timeouts), (9, 9), "{s:?}");
}

/// `CacheStats::evictions` is documented as "Entries evicted to stay within capacity". A
/// refresh (a `no-cache` request answered 404 again) replaces the entry of its key; the
/// capacity (10,000) is nowhere near reached, so nothing is evicted.
#[tokio::test]
async fn refreshing_an_entry_is_not_an_eviction() {
    let server = TestServer::always(Reply::status(404)).await;
    let cache = NegativeCacheLayer::new();
    let mut svc = cached(&cache);
    let url = server.url("/refreshed");

    assert_upstream(&send(&mut svc, support::get(&url)).await, 404, "first");
    let req = support::get_with(&url, "cache-control", "no-cache");
    assert_upstream(&send(&mut svc, req).await, 404, "refresh");
    assert_synthesized(send(&mut svc, support::get(&url)).await, 404, "cached").await;

    let s = cache.handle().stats();
    assert_eq!((s.inserts, s.len), (2, 1), "{s:?}");
    assert_eq!(
        s.evictions, 0,
        "a replaced entry was counted as evicted: {s:?}"
    );
}
