//! HTTP semantics of the negative cache, each a regression test for a promise a review found
//! broken: freshness as RFC 9111 defines it, the request's own directives, keys that never
//! cross a `Host`, `Vary` or credential boundary, one classifier rule, `Location` in any
//! spelling, and what a synthesized answer says (`Age`, version).
//!
//! Where the network is part of the behaviour (what hyper-util sends as `Host`, a real origin's
//! `Location`), a real hyper server on 127.0.0.1; elsewhere an in-process upstream on tokio's
//! paused clock.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode, Version};
use http_body_util::Empty;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::cache::{Credentials, NegativeCacheHit};
use tower_negative_cache::classify::{DefaultClassifier, Outcome};
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

use support::{Reply, TestServer};

type Req = Request<Empty<Bytes>>;

/// An in-process origin: answers with `status` and `headers`, and records every request's
/// headers.
#[derive(Clone)]
struct Origin {
    status: u16,
    headers: Vec<(&'static str, String)>,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

impl Origin {
    fn new(status: u16, headers: &[(&'static str, &str)]) -> Self {
        Origin {
            status,
            headers: headers.iter().map(|&(n, v)| (n, v.to_owned())).collect(),
            seen: Arc::default(),
        }
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
            o.seen.lock().unwrap().push(req.headers().clone());
            let mut b = Response::builder().status(o.status);
            for (n, v) in &o.headers {
                b = b.header(*n, v);
            }
            std::future::ready(Ok::<_, Infallible>(b.body(Empty::new()).unwrap()))
        })
    }
}

fn get(uri: &str, headers: &[(&str, &str)]) -> Req {
    let mut b = Request::get(uri);
    for &(n, v) in headers {
        b = b.header(n, v);
    }
    b.body(Empty::new()).unwrap()
}

async fn send<S, B>(svc: &mut S, req: Req) -> Response<B>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    svc.ready().await.unwrap().call(req).await.unwrap()
}

fn hit<B>(res: &Response<B>) -> Option<NegativeCacheHit> {
    res.extensions().get::<NegativeCacheHit>().copied()
}

/// Two GETs of one URI against an origin answering 404 with `headers`: how many reached it.
async fn calls_for_two_gets(headers: &[(&'static str, &str)]) -> usize {
    let origin = Origin::new(404, headers);
    let mut svc = NegativeCacheLayer::new().layer(origin.service());
    for _ in 0..2 {
        let res = send(&mut svc, get("http://o.test/r/1", &[])).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    origin.calls()
}

// ---- 3. freshness as RFC 9111 defines it ----

#[tokio::test(start_paused = true)]
async fn stale_on_arrival_answers_are_not_stored() {
    let now = httpdate::fmt_http_date(SystemTime::now());
    let cases: [&[(&str, &str)]; 6] = [
        &[("cache-control", "max-age=0")],
        &[("cache-control", "max-age=30"), ("age", "30")],
        &[("cache-control", "max-age=30"), ("age", "31")],
        &[("date", &now), ("expires", &now)],
        &[("expires", "0")],
        &[("expires", "not a date")],
    ];
    for headers in cases {
        assert_eq!(
            calls_for_two_gets(headers).await,
            2,
            "{headers:?} was served"
        );
    }
    // Still fresh: remembered.
    assert_eq!(
        calls_for_two_gets(&[("cache-control", "max-age=30"), ("age", "29")]).await,
        1
    );
}

#[tokio::test(start_paused = true)]
async fn an_explicit_lifetime_is_an_upper_bound_and_expires_counts_from_arrival() {
    // `Expires` 30 s ahead and no `Date`: kept at most 30 s, not the 60 s default.
    let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
    let origin = Origin::new(404, &[("expires", &expires)]);
    let mut svc = NegativeCacheLayer::new().layer(origin.service());
    send(&mut svc, get("http://o.test/r/1", &[])).await;
    let h = hit(&send(&mut svc, get("http://o.test/r/1", &[])).await).expect("remembered");
    assert!(h.remaining <= Duration::from_secs(30), "{:?}", h.remaining);
    // max-age=1 is kept 1 s, whatever the configured defaults.
    let origin = Origin::new(404, &[("cache-control", "max-age=1")]);
    let cache = NegativeCacheLayer::builder()
        .ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut svc = cache.layer(origin.service());
    send(&mut svc, get("http://o.test/r/1", &[])).await;
    tokio::time::advance(Duration::from_millis(1000)).await;
    send(&mut svc, get("http://o.test/r/1", &[])).await;
    assert_eq!(origin.calls(), 2, "served past the origin's max-age");
}

#[tokio::test(start_paused = true)]
async fn the_request_max_age_and_no_cache_refresh_and_only_if_cached_never_goes_upstream() {
    let origin = Origin::new(404, &[]);
    let cache = NegativeCacheLayer::new();
    let mut svc = cache.layer(origin.service());
    let uri = "http://o.test/r/1";
    // only-if-cached with nothing stored: 504, no upstream call (RFC 9111 §5.2.1.7).
    let res = send(&mut svc, get(uri, &[("cache-control", "only-if-cached")])).await;
    assert_eq!(
        (res.status(), origin.calls()),
        (StatusCode::GATEWAY_TIMEOUT, 0)
    );
    send(&mut svc, get(uri, &[])).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    // Stored 10 s ago: max-age=20 accepts it, max-age=5 does not (and refreshes it).
    let res = send(&mut svc, get(uri, &[("cache-control", "max-age=20")])).await;
    assert!(hit(&res).is_some());
    let res = send(&mut svc, get(uri, &[("cache-control", "max-age=5")])).await;
    assert!(hit(&res).is_none());
    assert_eq!(origin.calls(), 2);
    // The refreshed entry is young again.
    let res = send(&mut svc, get(uri, &[("cache-control", "max-age=5")])).await;
    assert!(hit(&res).is_some());
    // max-age=0 and no-cache always go upstream.
    for cc in ["max-age=0", "no-cache"] {
        let res = send(&mut svc, get(uri, &[("cache-control", cc)])).await;
        assert!(hit(&res).is_none(), "{cc}");
    }
    assert_eq!(origin.calls(), 4);
    // min-fresh beyond what is left: upstream.
    let res = send(&mut svc, get(uri, &[("cache-control", "min-fresh=3600")])).await;
    assert!(hit(&res).is_none());
    // only-if-cached with an entry: answered from it.
    let res = send(&mut svc, get(uri, &[("cache-control", "only-if-cached")])).await;
    assert!(hit(&res).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_request_no_store_answer_is_not_stored() {
    let origin = Origin::new(404, &[]);
    let cache = NegativeCacheLayer::new();
    let mut svc = cache.layer(origin.service());
    let uri = "http://o.test/r/1";
    send(&mut svc, get(uri, &[("cache-control", "no-store")])).await;
    let res = send(&mut svc, get(uri, &[])).await;
    assert!(
        hit(&res).is_none(),
        "a no-store request's 404 was stored and served"
    );
    assert_eq!(origin.calls(), 2);
    assert_eq!(cache.handle().stats().uncacheable, 1);
    // It may be answered from what is stored (the directive forbids storing, not reuse).
    let res = send(&mut svc, get(uri, &[("cache-control", "no-store")])).await;
    assert!(hit(&res).is_some());
}

// ---- 4. keys that never cross a boundary ----

#[tokio::test(start_paused = true)]
async fn origin_form_targets_are_keyed_by_their_host() {
    let origin = Origin::new(404, &[]);
    let cache = NegativeCacheLayer::new();
    let mut svc = cache.layer(origin.service());
    send(&mut svc, get("/r/3", &[("host", "a.test")])).await;
    let res = send(&mut svc, get("/r/3", &[("host", "b.test")])).await;
    assert!(hit(&res).is_none(), "host a's 404 answered host b");
    let res = send(&mut svc, get("/r/3", &[("host", "A.TEST")])).await;
    assert!(hit(&res).is_some());
    assert_eq!(origin.calls(), 2);
}

/// hyper-util sends the request's own `Host`: two tenants behind one address, one missing.
#[tokio::test]
async fn an_explicit_host_header_is_part_of_the_key() {
    let server = TestServer::builder()
        .handler(|r| match r.header("host").as_deref() {
            Some("tenant-a.test") => Some(Reply::status(404)),
            _ => Some(Reply::status(200)),
        })
        .start()
        .await;
    let cache = NegativeCacheLayer::new();
    let mut svc = ServiceBuilder::new()
        .layer(cache.clone())
        .service(support::client());
    let url = server.url("/records/7");
    let a = send(&mut svc, get(&url, &[("host", "tenant-a.test")])).await;
    assert_eq!(a.status(), StatusCode::NOT_FOUND);
    let b = send(&mut svc, get(&url, &[("host", "tenant-b.test")])).await;
    assert_eq!(b.status(), StatusCode::OK, "tenant b got tenant a's 404");
    assert_eq!(server.total_hits(), 2);
}

#[tokio::test(start_paused = true)]
async fn answers_with_vary_are_not_stored_but_for_accept_encoding() {
    let origin = Origin::new(404, &[("vary", "Accept-Encoding")]);
    let cache = NegativeCacheLayer::new();
    let mut svc = cache.layer(origin.service());
    send(
        &mut svc,
        get("http://o.test/r/1", &[("accept-encoding", "gzip")]),
    )
    .await;
    let res = send(&mut svc, get("http://o.test/r/1", &[])).await;
    assert!(
        hit(&res).is_some(),
        "a bodiless answer does not vary by encoding"
    );
    for vary in ["x-tenant", "*", "accept-encoding, x-tenant"] {
        let origin = Origin::new(404, &[("vary", vary)]);
        let cache = NegativeCacheLayer::new();
        let mut svc = cache.layer(origin.service());
        send(&mut svc, get("http://o.test/r/1", &[("x-tenant", "a")])).await;
        let res = send(&mut svc, get("http://o.test/r/1", &[("x-tenant", "b")])).await;
        assert!(
            hit(&res).is_none(),
            "Vary: {vary}: tenant b got tenant a's 404"
        );
        assert_eq!(cache.handle().stats().uncacheable, 2, "{vary}");
    }
}

#[tokio::test(start_paused = true)]
async fn proxy_authorization_and_named_headers_are_credentials() {
    let origin = Origin::new(404, &[]);
    let cache = NegativeCacheLayer::new();
    let mut svc = cache.layer(origin.service());
    for _ in 0..2 {
        send(
            &mut svc,
            get("http://o.test/r/1", &[("proxy-authorization", "Basic a")]),
        )
        .await;
    }
    assert_eq!(
        origin.calls(),
        2,
        "a Proxy-Authorization request was cached"
    );

    let origin = Origin::new(404, &[]);
    let cache = NegativeCacheLayer::builder()
        .credential_header(HeaderName::from_static("x-api-key"))
        .credentials(Credentials::Fingerprint)
        .build()
        .unwrap();
    let mut svc = cache.layer(origin.service());
    send(
        &mut svc,
        get("http://o.test/r/1", &[("x-api-key", "alice")]),
    )
    .await;
    let bob = send(&mut svc, get("http://o.test/r/1", &[("x-api-key", "bob")])).await;
    assert!(hit(&bob).is_none(), "alice's 404 answered bob");
    let alice = send(
        &mut svc,
        get("http://o.test/r/1", &[("x-api-key", "alice")]),
    )
    .await;
    assert!(hit(&alice).is_some());
    assert_eq!(origin.calls(), 2);
}

// ---- 5. one classifier rule ----

fn bad_request_is_missing(status: StatusCode, headers: &HeaderMap) -> Outcome {
    if status == StatusCode::BAD_REQUEST {
        Outcome::Missing
    } else {
        tower_negative_cache::classify::Classify::classify_response(
            &DefaultClassifier::default(),
            status,
            headers,
        )
    }
}

#[tokio::test(start_paused = true)]
async fn a_classifier_given_to_either_builder_is_applied() {
    // Given to the cache only, over a retry layer with the default classifier.
    let origin = Origin::new(400, &[]);
    let cache = NegativeCacheLayer::builder()
        .classifier(bad_request_is_missing)
        .build()
        .unwrap();
    let retry = StatusAwareRetryLayer::builder()
        .no_budget()
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(cache.clone())
        .layer(retry)
        .service(origin.service());
    for _ in 0..2 {
        send(&mut svc, get("http://o.test/r/1", &[])).await;
    }
    assert_eq!(
        origin.calls(),
        1,
        "the cache's own classifier was ignored under retry"
    );

    // Given to the retry layer only: the cache follows its verdict.
    let origin = Origin::new(400, &[]);
    let cache = NegativeCacheLayer::new();
    let retry = StatusAwareRetryLayer::builder()
        .classifier(bad_request_is_missing)
        .no_budget()
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(cache.clone())
        .layer(retry)
        .service(origin.service());
    for _ in 0..2 {
        send(&mut svc, get("http://o.test/r/1", &[])).await;
    }
    assert_eq!(
        origin.calls(),
        1,
        "the retry layer's classifier was not followed"
    );
}

// ---- 14.5 Location in any spelling ----

#[tokio::test]
async fn same_origin_locations_in_any_spelling_invalidate_and_foreign_ones_never() {
    let server = TestServer::builder()
        .handler(|r| {
            let loc = |l: &str| Some(Reply::status(201).header("location", l));
            match (r.method.as_str(), r.path.as_str()) {
                ("POST", "/records/") => loc("42"),
                ("PUT", "/records/x") => loc("./44"),
                ("POST", "/other") => loc("http://elsewhere.test/records/45"),
                ("GET", _) => Some(Reply::status(404)),
                _ => None,
            }
        })
        .start()
        .await;
    let cache = NegativeCacheLayer::new();
    let handle = cache.handle();
    let mut svc = ServiceBuilder::new()
        .layer(cache.clone())
        .service(support::client());
    let port = server
        .url("/")
        .split(':')
        .nth(2)
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    for id in [42, 43, 44] {
        send(&mut svc, get(&server.url(&format!("/records/{id}")), &[])).await;
    }
    let held = |id: u32| {
        handle
            .peek(&server.url(&format!("/records/{id}")).parse().unwrap())
            .is_some()
    };
    assert!(held(42) && held(43) && held(44));
    let req = |m: Method, path: &str| {
        Request::builder()
            .method(m)
            .uri(server.url(path))
            .body(Empty::new())
            .unwrap()
    };
    // A relative reference, resolved against /records/ (RFC 3986 §5.2).
    send(&mut svc, req(Method::POST, "/records/")).await;
    assert!(!held(42), "Location: 42 did not forget /records/42");
    // A dot segment.
    send(&mut svc, req(Method::PUT, "/records/x")).await;
    assert!(!held(44), "Location: ./44 did not forget /records/44");
    // The same origin spelled with upper case and an explicit port, through a handle call of
    // the same form a Location takes.
    let spelled = format!("HTTP://127.0.0.1:{port}/records/43");
    assert!(handle.invalidate_uri(&spelled.parse().unwrap()));
    assert!(!held(43));
    // Another origin's reference never invalidates.
    send(&mut svc, get(&server.url("/records/45"), &[])).await;
    send(&mut svc, req(Method::POST, "/other")).await;
    assert!(held(45), "a cross-origin Location invalidated");
}

/// `http://h:80/x` in a `Location` names the key stored for `http://h/x`.
#[tokio::test(start_paused = true)]
async fn a_location_with_the_default_port_invalidates() {
    let origin = Origin::new(404, &[]);
    let writes = Origin::new(201, &[("location", "http://o.test:80/records/43")]);
    let cache = NegativeCacheLayer::new();
    let mut reads = cache.layer(origin.service());
    let mut svc = cache.layer(writes.service());
    send(&mut reads, get("http://o.test/records/43", &[])).await;
    let put = Request::put("http://o.test/records/")
        .body(Empty::new())
        .unwrap();
    send(&mut svc, put).await;
    assert!(
        cache
            .handle()
            .peek(&"http://o.test/records/43".parse().unwrap())
            .is_none()
    );
}

// ---- 14.6 what a synthesized answer says ----

#[tokio::test(start_paused = true)]
async fn a_hit_says_its_whole_age_and_the_requests_version() {
    let origin = Origin::new(404, &[("cache-control", "max-age=100"), ("age", "30")]);
    let mut svc = NegativeCacheLayer::new().layer(origin.service());
    send(&mut svc, get("http://o.test/r/1", &[])).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    let mut req = get("http://o.test/r/1", &[]);
    *req.version_mut() = Version::HTTP_2;
    let res = send(&mut svc, req).await;
    let h = hit(&res).expect("a hit");
    assert_eq!(
        res.headers()["age"],
        "35",
        "Age must include the origin's (RFC 9111 §5.1)"
    );
    assert_eq!(h.age, Duration::from_secs(35));
    assert_eq!(h.remaining, Duration::from_secs(65));
    assert_eq!(res.version(), Version::HTTP_2);
}
