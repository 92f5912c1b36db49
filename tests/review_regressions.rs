//! Regressions from an adversarial review of the negative cache's promises (README Guarantees,
//! `cache` module docs): each test failed on the code it was written against.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use tower::{Layer, Service, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::cache::NegativeCacheHit;

type Req = Request<Empty<Bytes>>;

/// Answers by `(method, path)`: status and headers.
type Routes = HashMap<(Method, String), (u16, Vec<(String, String)>)>;

/// An in-process origin: answers by `(method, path)` (default 404), records every request.
#[derive(Clone, Default)]
struct Origin {
    routes: Arc<Mutex<Routes>>,
    seen: Arc<Mutex<Vec<(Method, String)>>>,
}

impl Origin {
    fn answer(&self, method: Method, path: &str, status: u16, headers: &[(&str, &str)]) {
        let h = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        self.routes
            .lock()
            .unwrap()
            .insert((method, path.to_owned()), (status, h));
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn service(
        &self,
    ) -> impl Service<Req, Response = Response<Empty<Bytes>>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static {
        let o = self.clone();
        tower::service_fn(move |req: Req| {
            let path = req.uri().path().to_owned();
            o.seen
                .lock()
                .unwrap()
                .push((req.method().clone(), path.clone()));
            let (status, headers) = o
                .routes
                .lock()
                .unwrap()
                .get(&(req.method().clone(), path))
                .cloned()
                .unwrap_or((404, Vec::new()));
            let mut b = Response::builder().status(status);
            for (n, v) in headers {
                b = b.header(n, v);
            }
            std::future::ready(Ok::<_, Infallible>(b.body(Empty::new()).unwrap()))
        })
    }
}

fn req(method: Method, uri: &str, headers: &[(&str, &str)]) -> Req {
    let mut b = Request::builder().method(method).uri(uri);
    for &(n, v) in headers {
        b = b.header(n, v);
    }
    b.body(Empty::new()).unwrap()
}

async fn send<S, B>(svc: &mut S, r: Req) -> Response<B>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    svc.ready().await.unwrap().call(r).await.unwrap()
}

fn hit<B>(res: &Response<B>) -> Option<NegativeCacheHit> {
    res.extensions().get::<NegativeCacheHit>().copied()
}

// ---- only-if-cached: "never goes upstream (504 when nothing is stored)" ----

/// RFC 9111 §5.2.1.7 with §5.2.1.4: a request that may not be answered from the store without
/// validation, and may not go upstream, gets a 504. The README promises `only-if-cached`
/// never goes upstream; combined with `no-cache` (or `max-age=0`) it does.
#[tokio::test(start_paused = true)]
async fn only_if_cached_never_goes_upstream_even_with_no_cache() {
    for cc in ["only-if-cached, no-cache", "only-if-cached, max-age=0"] {
        let origin = Origin::default();
        let mut svc = NegativeCacheLayer::new().layer(origin.service());
        let res = send(
            &mut svc,
            req(Method::GET, "http://o.test/r/1", &[("cache-control", cc)]),
        )
        .await;
        assert_eq!(
            (res.status(), origin.calls()),
            (StatusCode::GATEWAY_TIMEOUT, 0),
            "`{cc}` went upstream"
        );
    }
}

/// The same promise for a request the cache bypasses (credentials under the default
/// `Credentials::Bypass`, a `Host` that is not an authority): it still went upstream.
#[tokio::test(start_paused = true)]
async fn only_if_cached_never_goes_upstream_even_when_bypassed() {
    for extra in [("authorization", "Bearer x"), ("host", "a b")] {
        let origin = Origin::default();
        let mut svc = NegativeCacheLayer::new().layer(origin.service());
        let res = send(
            &mut svc,
            req(
                Method::GET,
                "http://o.test/r/1",
                &[("cache-control", "only-if-cached"), extra],
            ),
        )
        .await;
        assert_eq!(
            (res.status(), origin.calls()),
            (StatusCode::GATEWAY_TIMEOUT, 0),
            "only-if-cached with {extra:?} went upstream"
        );
    }
}

// ---- Location on an origin-form write ----

/// A proxy (or per-host connection) sends origin-form targets with a `Host`. Its GET of
/// `/records/43` is remembered under `//a.test/records/43`; a POST answered
/// `201 Location: http://a.test/records/43` (the usual absolute form) names the same resource
/// on the same origin, and must forget it ("A successful write forgets ... its same-origin
/// Location in any spelling").
#[tokio::test(start_paused = true)]
async fn an_absolute_location_on_an_origin_form_write_forgets_the_entry() {
    for location in ["http://a.test/records/43", "https://a.test/records/43"] {
        let origin = Origin::default();
        let mut svc = NegativeCacheLayer::new().layer(origin.service());
        let host = [("host", "a.test")];
        let res = send(&mut svc, req(Method::GET, "/records/43", &host)).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert!(hit(&send(&mut svc, req(Method::GET, "/records/43", &host)).await).is_some());

        origin.answer(Method::POST, "/records/", 201, &[("location", location)]);
        origin.answer(Method::GET, "/records/43", 200, &[]);
        let res = send(&mut svc, req(Method::POST, "/records/", &host)).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let res = send(&mut svc, req(Method::GET, "/records/43", &host)).await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "the record created at {location} is still answered with the cached 404"
        );
    }
}

// ---- the handle on Host-keyed entries ----

/// `NegativeCacheHandle::invalidate` forgets "the entry stored under `key`, as
/// `invalidate_if` sees keys". An origin-form GET with a `Host` is stored as
/// `//a.test/r/3`; invalidating that very text forgets nothing.
#[tokio::test(start_paused = true)]
async fn invalidate_takes_the_keys_invalidate_if_shows() {
    let origin = Origin::default();
    let cache = NegativeCacheLayer::new();
    let mut svc = cache.layer(origin.service());
    send(&mut svc, req(Method::GET, "/r/3", &[("host", "a.test")])).await;
    let seen = Mutex::new(Vec::new());
    cache.handle().invalidate_if(|k| {
        seen.lock().unwrap().push(k.to_owned());
        false
    });
    let keys = seen.into_inner().unwrap();
    assert_eq!(keys, ["//a.test/r/3"]);
    assert!(
        cache.handle().invalidate(&keys[0]),
        "invalidate({:?}) forgot nothing",
        keys[0]
    );
}

// ---- stats: `lookups == hits + misses` ----

/// `CacheStats` documents `lookups == hits + misses` and `hit_rate = hits / lookups`. Under
/// concurrent hits a snapshot reads `lookups` first and `hits` later, so it counts hits whose
/// lookups it did not: `hits > lookups` and a hit rate above 1 are observed.
#[test]
fn a_snapshot_never_counts_more_hits_than_lookups() {
    let origin = Origin::default();
    let cache = NegativeCacheLayer::new();
    let svc = cache.layer(origin.service());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let uri = "http://o.test/r/1";
    rt.block_on(send(&mut svc.clone(), req(Method::GET, uri, &[])));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let mut svc = svc.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for _ in 0..64 {
                            send(&mut svc, req(Method::GET, uri, &[])).await;
                        }
                    }
                })
            })
        })
        .collect();
    let handle = cache.handle();
    let mut worst = None;
    for _ in 0..200_000 {
        let s = handle.stats();
        if s.hits + s.misses > s.lookups {
            worst = Some((s.lookups, s.hits, s.misses, s.hit_rate));
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(
        worst, None,
        "a snapshot with hits + misses > lookups: (lookups, hits, misses, hit_rate)"
    );
}

// ---- hostile Location and Host values ----

fn piece() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        prop::sample::select(vec![
            "http:", "HTTP:", "https:", "//", "http://", "https://", "b.test", "B.TEST", "a.test",
            "A.Test", ":80", ":443", ":0", ":99999", "@", "a.test@", "b.test@", "[::1]", "[", "]",
            "/", "\\", "..", ".", "./", "../", "?", "#", "%2F", "%", " ", "x", ";",
        ])
        .prop_map(str::to_owned),
        "[ -~]{0,6}",
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 512, failure_persistence: None, ..Default::default() })]

    /// Whatever a write's `Location` says and whatever `Host` it carries: nothing panics, and
    /// an entry on another origin (`http://b.test/x`) is never forgotten by a write to a.test.
    #[test]
    fn hostile_locations_never_panic_or_cross_origins(
        parts in proptest::collection::vec(piece(), 0..8),
        origin_form in proptest::bool::ANY,
    ) {
        let location: String = parts.concat();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let origin = Origin::default();
            let cache = NegativeCacheLayer::new();
            let mut svc = cache.layer(origin.service());
            send(&mut svc, req(Method::GET, "http://b.test/x", &[])).await;
            send(&mut svc, req(Method::GET, "/x", &[("host", "b.test")])).await;
            assert_eq!(cache.handle().stats().len, 2);
            if http::HeaderValue::from_str(&location).is_err() {
                return Ok(());
            }
            origin.answer(Method::POST, "/a/", 201, &[("location", &location)]);
            let (uri, host): (&str, &[(&str, &str)]) = if origin_form {
                ("/a/", &[("host", "a.test")])
            } else {
                ("http://a.test/a/", &[])
            };
            send(&mut svc, req(Method::POST, uri, host)).await;
            proptest::prop_assert_eq!(
                cache.handle().stats().len, 2, "Location {:?} forgot another origin's entry", location
            );
            Ok(())
        })?;
    }
}

// ---- keys: the URI's authority is dropped when a Host header is present ----

/// Two origins (two servers, say two regions or a blue/green pair) reached with the same
/// `Host` header: the cache keys both by `http://records.example/r/1`, so one server's 404
/// answers a request to the other, where the record exists. The README: "A negative entry
/// never crosses a host: keys carry the Host the request carries" - but not the host the
/// request is sent to. (The issue allowed "bypass when the two differ".)
#[tokio::test]
async fn the_same_host_header_on_two_servers_never_shares_an_entry() {
    let us = support::TestServer::always(support::Reply::status(404)).await;
    let eu = support::TestServer::always(support::Reply::status(200)).await;
    let mut svc = NegativeCacheLayer::new().layer(support::client());
    let host = [("host", "records.example")];
    let a = send(&mut svc, req(Method::GET, &us.url("/r/1"), &host)).await;
    assert_eq!(a.status(), StatusCode::NOT_FOUND);
    let b = send(&mut svc, req(Method::GET, &eu.url("/r/1"), &host)).await;
    assert_eq!(
        (b.status(), eu.total_hits()),
        (StatusCode::OK, 1),
        "the request to the second server was answered with the first server's 404"
    );
}

// ---- the synthesized 504 of only-if-cached under a retry layer ----

// ---- origin-form targets: the default port in the Host ----

/// A `Host` with a port and an empty host (`:8081`) was keyed as a path-only id, so its 404
/// was served to requests of the same path without a `Host`. It is not a valid authority: such
/// a request is not cached, and leaves the others alone.
#[tokio::test(start_paused = true)]
async fn an_empty_host_with_a_port_keys_like_its_lookup() {
    let origin = Origin::default();
    let mut svc = NegativeCacheLayer::new().layer(origin.service());
    send(&mut svc, req(Method::GET, "/r/3", &[("host", ":8081")])).await;
    let again = send(&mut svc, req(Method::GET, "/r/3", &[("host", ":8081")])).await;
    let other = send(&mut svc, req(Method::GET, "/r/3", &[])).await;
    assert_eq!(
        (hit(&again).is_some(), hit(&other).is_some()),
        (false, false),
        "(an invalid Host is not cached, and a request without Host is not answered by it)"
    );
}

fn host_piece() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        prop::sample::select(vec![
            "a.test", "A.TEST", ":", ":80", ":443", ":8080", ":0", ":99999", "[::1]", "[::A]", "[",
            "]", ".", "%41", "", "x",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z0-9:.\\[\\]%-]{0,4}",
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 512, failure_persistence: None, ..Default::default() })]

    /// Whatever the target and `Host`: a request whose 404 was stored hits it on the next
    /// identical request (the borrowed lookup and the stored key agree).
    #[test]
    fn a_stored_404_is_hit_by_the_same_request(
        host in proptest::collection::vec(host_piece(), 0..4),
        with_host in proptest::bool::ANY,
        absolute in proptest::sample::select(vec!["", "http://b.test", "HTTP://B.test:80", "https://b.test:443", "http://[::1]:8080"]),
        path in proptest::sample::select(vec!["/r/3", "/", "/r?q", "/R/%41"]),
    ) {
        let host = host.concat();
        let uri = format!("{absolute}{path}");
        let headers: Vec<(&str, &str)> = if with_host { vec![("host", host.as_str())] } else { vec![] };
        if http::HeaderValue::from_str(&host).is_err() { return Ok(()); }
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let origin = Origin::default();
            let cache = NegativeCacheLayer::new();
            let mut svc = cache.layer(origin.service());
            send(&mut svc, req(Method::GET, &uri, &headers)).await;
            if cache.handle().stats().inserts == 1 {
                let res = send(&mut svc, req(Method::GET, &uri, &headers)).await;
                proptest::prop_assert!(hit(&res).is_some(), "{} with {:?}: stored but not hit", uri, headers);
            }
            Ok(())
        })?;
    }
}

// ---- coalescing on a runtime without timers ----

/// "The other order works" (lib.rs, Layer ordering): with the retry layer outside the cache,
/// an `only-if-cached` miss is answered with the cache's own synthesized 504 - which the retry
/// layer calls Retryable, and retries with backoff (spending budget) to get the same made-up
/// 504 again. Nothing upstream can change it: it must not be retried.
#[tokio::test(start_paused = true)]
async fn the_only_if_cached_504_is_not_retried() {
    let origin = Origin::default();
    let retry = tower_negative_cache::StatusAwareRetryLayer::builder()
        .max_retries(2)
        .build()
        .unwrap();
    let mut svc = tower::ServiceBuilder::new()
        .layer(retry)
        .layer(NegativeCacheLayer::new())
        .service(origin.service());
    let t0 = tokio::time::Instant::now();
    let res = send(
        &mut svc,
        req(
            Method::GET,
            "http://o.test/r/1",
            &[("cache-control", "only-if-cached")],
        ),
    )
    .await;
    assert_eq!(
        (res.status(), origin.calls()),
        (StatusCode::GATEWAY_TIMEOUT, 0)
    );
    let info = tower_negative_cache::RetryInfo::of(&res);
    assert_eq!(
        info.map(|i| i.attempts),
        Some(1),
        "the synthesized 504 was retried ({:?} of paused time in backoff)",
        t0.elapsed()
    );
}
