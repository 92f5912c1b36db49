//! A hostile review (fourteenth round) of four fixes in the cache layer: entries dated from
//! their answer's arrival, dot segments removed in keys, length-prefixed credential
//! fingerprints, and HEAD answers answering HEADs only. Each test is a guarantee the crate
//! states (GUARANTEES.md, the crate docs) or an RFC rule it claims to follow, against a real
//! origin on 127.0.0.1:0.

mod support;

use std::fmt::Debug;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::cache::{
    NegativeCache, NegativeCacheHit, NegativeCacheLayer, ResponseBody,
};

use support::{Reply, TestServer};

type Inner = Client<HttpConnector, Empty<Bytes>>;
type Res = Response<ResponseBody<Incoming>>;

fn cached(layer: &NegativeCacheLayer) -> NegativeCache<Inner> {
    ServiceBuilder::new()
        .layer(layer.clone())
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

/// A cache whose key function keys a target by its path.
fn keyed_by_path() -> NegativeCacheLayer {
    NegativeCacheLayer::builder()
        .key_fn(|uri: &http::Uri| Some(uri.path().to_owned()))
        .build()
        .unwrap()
}

fn head(url: &str) -> Request<Empty<Bytes>> {
    support::request(Method::HEAD, url)
}

// 2. Dot segments, through a key function ------------------------------------------------------------------------------

/// GUARANTEES.md: "One target in any percent-encoding or with dot segments is one key (RFC 3986
/// §6.2.2.3: `/a/./b` and `/a/x/../b` are `/a/b`) ... in lookups, writes ..., and the URI a key
/// function is given". With a key function, `GET /items/./7` and `GET /items/7` are one target
/// (RFC 3986 §6.2.2.3), so the second is answered from the first's 404.
#[tokio::test]
async fn a_key_function_is_given_one_uri_for_dot_segment_spellings() {
    let server = TestServer::always(Reply::status(404)).await;
    let layer = keyed_by_path();
    let mut svc = cached(&layer);
    let first = send(&mut svc, support::get(&server.url("/items/./7"))).await;
    assert_eq!(first.status(), StatusCode::NOT_FOUND);
    assert!(hit_of(&first).is_none());
    drop(first);
    let second = send(&mut svc, support::get(&server.url("/items/7"))).await;
    assert!(
        hit_of(&second).is_some(),
        "GET /items/7 after GET /items/./7 went upstream: the key function was given two URIs \
         for one target (origin saw {} requests)",
        server.total_hits()
    );
}

/// The same rule for a write (CHANGELOG: "`PUT /items/x/../7` did not forget `GET /items/7`",
/// fixed for the default key): with a key function, a successful `PUT /items/x/../7` forgets
/// the 404 remembered for `GET /items/7` (RFC 9111 §4.4; GUARANTEES.md "A successful write
/// forgets its target ... in any spelling").
#[tokio::test]
async fn with_a_key_function_a_write_to_a_dot_segment_spelling_forgets_its_target() {
    let server = TestServer::builder()
        .handler(|r| (r.method == Method::PUT).then(|| Reply::status(204)))
        .default_reply(Reply::status(404))
        .start()
        .await;
    let layer = keyed_by_path();
    let mut svc = cached(&layer);
    drop(send(&mut svc, support::get(&server.url("/items/7"))).await);
    assert!(hit_of(&send(&mut svc, support::get(&server.url("/items/7"))).await).is_some());
    let put = send(
        &mut svc,
        support::request(Method::PUT, &server.url("/items/x/../7")),
    )
    .await;
    assert_eq!(put.status(), StatusCode::NO_CONTENT);
    drop(put);
    let after = send(&mut svc, support::get(&server.url("/items/7"))).await;
    assert!(
        hit_of(&after).is_none(),
        "a 404 for /items/7 was served after a successful PUT /items/x/../7: {:?}",
        hit_of(&after)
    );
}

/// The same rule for a `Location` (CHANGELOG: "`Location: http://o/items/./7` did not forget
/// `GET /items/./7`", fixed for the default key): with a key function, a 201 whose `Location`
/// is `/items/./7` forgets the 404 remembered for `GET /items/./7` — the very spelling the
/// origin named (RFC 9111 §4.4; GUARANTEES.md "A successful write forgets its target and its
/// same-origin `Location`/`Content-Location` in any spelling (relative, dot segments ...)").
#[tokio::test]
async fn with_a_key_function_a_location_forgets_its_own_dot_segment_spelling() {
    let server = TestServer::builder()
        .handler(|r| {
            (r.method == Method::POST).then(|| Reply::status(201).header("location", "/items/./7"))
        })
        .default_reply(Reply::status(404))
        .start()
        .await;
    let layer = keyed_by_path();
    let mut svc = cached(&layer);
    let url = server.url("/items/./7");
    drop(send(&mut svc, support::get(&url)).await);
    assert!(hit_of(&send(&mut svc, support::get(&url)).await).is_some());
    let post = send(
        &mut svc,
        support::request(Method::POST, &server.url("/items")),
    )
    .await;
    assert_eq!(post.status(), StatusCode::CREATED);
    drop(post);
    let after = send(&mut svc, support::get(&url)).await;
    assert!(
        hit_of(&after).is_none(),
        "GET /items/./7 was answered from the cache after a 201 with Location: /items/./7: {:?}",
        hit_of(&after)
    );
}

// 4. HEAD -------------------------------------------------------------------------------------

/// `NegativeCacheHandle::peek`: "What the cache would answer a GET for `uri` ... or `None`".
/// After a HEAD's 404 only, a GET is not answered from the cache (RFC 9111 §4; GUARANTEES.md
/// "a HEAD's answer ... never a GET, which goes upstream"), so `peek` must say `None`.
#[tokio::test]
async fn peek_does_not_claim_a_get_is_answered_by_a_heads_entry() {
    let server = TestServer::always(Reply::status(404).body("gone")).await;
    let layer = NegativeCacheLayer::new();
    let handle = layer.handle();
    let mut svc = cached(&layer);
    let url = server.url("/h/1");
    drop(send(&mut svc, head(&url)).await);
    let peeked = handle.peek(&url.parse().unwrap());
    let get = send(&mut svc, support::get(&url)).await;
    let answered = hit_of(&get).is_some();
    assert_eq!(
        peeked.is_some(),
        answered,
        "peek said {peeked:?} but the GET was {} (origin saw {} GETs)",
        if answered { "a hit" } else { "sent upstream" },
        server.hits_for(Method::GET, "/h/1")
    );
}

/// RFC 9111 §4.1: a stored response with `Vary: Accept-Encoding` is not used for a request
/// whose `Accept-Encoding` differs from the original request's. The crate keeps such answers
/// (GUARANTEES.md: "a `Vary` (but on `Accept-Encoding` alone: an encoded body is sent only to
/// requests that accept its coding)") and a GET's entry is sent head-only (no
/// `Content-Encoding`) to a request not accepting it. A HEAD's entry, now kept with every
/// field, is replayed to a HEAD that does not accept gzip with `Content-Encoding: gzip` and the
/// gzip representation's `Content-Length`: the head of a GET this client would never get.
#[tokio::test]
async fn a_heads_gzip_answer_is_not_replayed_to_a_head_that_does_not_accept_gzip() {
    let server = TestServer::builder()
        .handler(|r| {
            let gzip = r
                .header("accept-encoding")
                .is_some_and(|a| a.contains("gzip"));
            let reply = Reply::status(404)
                .header("vary", "accept-encoding")
                .header("content-type", "application/json");
            Some(if gzip {
                reply
                    .header("content-encoding", "gzip")
                    .header("content-length", "31")
            } else {
                reply.header("content-length", "57")
            })
        })
        .start()
        .await;
    let layer = NegativeCacheLayer::new();
    let mut svc = cached(&layer);
    let url = server.url("/z/1");
    let mut gz = head(&url);
    gz.headers_mut()
        .insert("accept-encoding", "gzip".parse().unwrap());
    let first = send(&mut svc, gz).await;
    assert_eq!(first.headers()["content-encoding"], "gzip");
    drop(first);

    // The same HEAD, from a client that accepts no coding.
    let plain = send(&mut svc, head(&url)).await;
    let origin = server.total_hits();
    assert!(
        hit_of(&plain).is_none() || plain.headers().get("content-encoding").is_none(),
        "a HEAD without Accept-Encoding was answered from the cache with Content-Encoding: {:?}, \
         Content-Length: {:?} (the origin would say identity, 57; origin requests: {origin})",
        plain.headers().get("content-encoding"),
        plain.headers().get("content-length"),
    );
}

// 2. Dot segments and key text ------------------------------------------------------------------

/// `NegativeCacheHandle::invalidate`: "Forgets the entry stored under `key`, as
/// `invalidate_if` sees keys". A request in origin form without a `Host` is keyed by its path
/// alone; `/.//evil.test/x` has the path `//evil.test/x` once its dot segment is removed (RFC
/// 3986 §5.2.4), and that text is read back as the key of host `evil.test`, path `/x`: the key
/// `invalidate_if` shows cannot be invalidated by its name (and a fleet peer, told the same
/// text, stores it under that other host: see `fleet::a_path_only_key_...`).
#[tokio::test]
async fn a_path_only_keys_text_names_it_again() {
    // A request in origin form without Host: keyed by its path alone.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c2 = calls.clone();
    let layer = NegativeCacheLayer::new();
    let handle = layer.handle();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(move |_r: Request<Empty<Bytes>>| {
            c2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(404)
                        .body(http_body_util::Full::new(Bytes::new()))
                        .unwrap(),
                )
            }
        }));
    for path in ["/.//evil.test/x", "//evil.test/x", "/users/7"] {
        let req = Request::get(path).body(Empty::new()).unwrap();
        let _ = svc.ready().await.unwrap().call(req).await.unwrap();
    }

    let keys = std::sync::Mutex::new(Vec::new());
    handle.invalidate_if(|k| {
        keys.lock().unwrap().push(k.to_owned());
        false
    });
    let keys = keys.into_inner().unwrap();
    // RFC 3986 §3.3: a path without an authority can't begin with `//`; such a target is not
    // keyed (its repeat goes upstream), and every key's text names it again.
    assert_eq!(keys, ["/users/7"], "the keys held");
    for k in &keys {
        assert!(handle.invalidate(k), "the key text {k:?} names another key");
    }
    let req = Request::get("/.//evil.test/x").body(Empty::new()).unwrap();
    let _ = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 4);
}

// Through the fleet ------------------------------------------------------------------------------

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;

#[cfg(feature = "redis")]
mod fleet {
    use super::redis_support::RedisServer;
    use super::*;
    use std::time::Duration;
    use tower_negative_cache::fleet::Fleet;

    async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
        let t = std::time::Instant::now();
        while !f() {
            assert!(t.elapsed() < limit, "not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// GUARANTEES.md: "A hit says its whole age (`Age` includes the origin's)" and, for the
    /// fleet, "a learned 404 keeps its age (`Age`)"; RFC 9111 §4.2.3 (the age on
    /// arrival is at least the origin's `Age`) and §5.1. An origin's 404 arrives with `Age: 100`
    /// and `max-age=300`: replica A's hit says `Age: 100`; replica B, which learned the same
    /// entry from A (dated from A's arrival, 200 s left), must not say it is younger.
    #[tokio::test]
    async fn a_peers_hit_keeps_the_origins_age() {
        let Some(redis) = RedisServer::try_start("a_peers_hit_keeps_the_origins_age") else {
            return;
        };
        let origin = TestServer::always(
            Reply::status(404)
                .header("age", "100")
                .header("cache-control", "max-age=300")
                .body("gone"),
        )
        .await;
        let tier = || {
            Fleet::builder(redis.url())
                .prefix("review14")
                .reconnect(Duration::from_millis(20), Duration::from_millis(200))
                .timeout(Duration::from_millis(300))
        };
        let (la, lb) = (NegativeCacheLayer::new(), NegativeCacheLayer::new());
        let (fa, fb) = (tier().start(&la).unwrap(), tier().start(&lb).unwrap());
        wait_until(Duration::from_secs(10), || {
            fa.stats().connected && fb.stats().connected
        })
        .await;
        let (mut a, mut b) = (cached(&la), cached(&lb));
        let url = origin.url("/records/aged");

        drop(send(&mut a, support::get(&url)).await);
        let on_a = send(&mut a, support::get(&url)).await;
        assert_eq!(on_a.headers()["age"], "100", "A's own hit");
        let uri: http::Uri = url.parse().unwrap();
        wait_until(Duration::from_secs(5), || lb.handle().peek(&uri).is_some()).await;

        let on_b = send(&mut b, support::get(&url)).await;
        let hit = hit_of(&on_b).expect("a hit on B");
        assert!(
            hit.age >= Duration::from_secs(100),
            "B's hit of the origin's Age: 100 answer says Age: {:?} ({:?}; A said 100)",
            on_b.headers().get("age"),
            hit
        );
        assert_eq!(origin.total_hits(), 1);
        drop((fa, fb));
    }

    /// GUARANTEES.md: "A negative entry never crosses a host", and row "One target ... is one
    /// key ... in ... fleet messages". Replica A's stack sends origin-form requests without a
    /// `Host` and sets the origin below the cache (a base-URL layer): its keys are paths alone.
    /// `GET /users/..//evil.test/x` has the path `//evil.test/x` once dot segments are removed
    /// (RFC 3986 §5.2.4); its 404 is published as that text, which replica B reads as the
    /// origin-form key of host `evil.test`, path `/x`. B then answers `GET /x` with
    /// `Host: evil.test` from a 404 that host never gave.
    #[tokio::test]
    async fn a_path_only_key_does_not_reach_a_peer_as_another_hosts_key() {
        let Some(redis) = RedisServer::try_start("a_path_only_key_does_not_reach_a_peer") else {
            return;
        };
        let users = TestServer::always(Reply::status(404)).await;
        let evil = TestServer::always(Reply::ok("here")).await;
        let tier = || {
            Fleet::builder(redis.url())
                .prefix("review14b")
                .reconnect(Duration::from_millis(20), Duration::from_millis(200))
                .timeout(Duration::from_millis(300))
        };
        let (la, lb) = (NegativeCacheLayer::new(), NegativeCacheLayer::new());
        let (fa, fb) = (tier().start(&la).unwrap(), tier().start(&lb).unwrap());
        wait_until(Duration::from_secs(10), || {
            fa.stats().connected && fb.stats().connected
        })
        .await;
        // Below each cache: the origin the stack talks to, set on an origin-form request.
        let base = |addr: std::net::SocketAddr| {
            move |mut req: Request<Empty<Bytes>>| {
                let pq = req.uri().path_and_query().unwrap().as_str().to_owned();
                *req.uri_mut() = format!("http://{addr}{pq}").parse().unwrap();
                req
            }
        };
        let mut a = ServiceBuilder::new()
            .layer(la.clone())
            .map_request(base(users.addr))
            .service(support::client());
        let mut b = ServiceBuilder::new()
            .layer(lb.clone())
            .map_request(base(evil.addr))
            .service(support::client());

        let req = Request::get("/users/..//evil.test/x")
            .body(Empty::new())
            .unwrap();
        let res = send(&mut a, req).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        drop(res);
        // A keyed 404 after it: once B has learned that one, it has heard anything A
        // published before it.
        let res = send(&mut a, Request::get("/users/7").body(Empty::new()).unwrap()).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        drop(res);
        wait_until(Duration::from_secs(5), || fb.stats().learned >= 1).await;

        let req = Request::get("/x")
            .header("host", "evil.test")
            .body(Empty::new())
            .unwrap();
        let res = send(&mut b, req).await;
        assert!(
            hit_of(&res).is_none(),
            "B answered GET /x (Host: evil.test) with a {} from its cache, learned from A's \
             GET /users/..//evil.test/x (evil.test's origin saw {} requests; B learned {})",
            res.status(),
            evil.total_hits(),
            fb.stats().learned
        );
        assert_eq!(res.status(), StatusCode::OK);
        drop((fa, fb));
    }
}
