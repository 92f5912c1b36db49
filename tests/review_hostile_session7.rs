//! A hostile review (session 7) of commits 0d81593 (a peer's older 404 no longer replaces a
//! newer local answer: `State::learn` + `Store::holds_newer`) and 22d2995 (with a declared
//! `origin_form_scheme` a key function is given an origin-form target's absolute URI).

#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::cache::NegativeCacheHit;

type Req = Request<Full<Bytes>>;
type Res = Response<Full<Bytes>>;

async fn send<S>(svc: &mut S, req: Req) -> S::Response
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    svc.ready().await.unwrap().call(req).await.unwrap()
}

/// Sends and reads the whole body (an entry is stored once its body ends).
async fn fetch<S, B>(svc: &mut S, req: Req) -> (StatusCode, Option<NegativeCacheHit>)
where
    S: Service<Req, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let res = send(svc, req).await;
    let (status, hit) = (res.status(), hit_of(&res));
    res.into_body().collect().await.unwrap();
    (status, hit)
}

fn get(uri: &str) -> Req {
    Request::get(uri).body(Full::new(Bytes::new())).unwrap()
}

fn origin_form(method: Method, path: &str, host: &str) -> Req {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn hit_of<B>(res: &Response<B>) -> Option<NegativeCacheHit> {
    res.extensions().get::<NegativeCacheHit>().copied()
}

/// An origin: GET answers `get_status` (max-age=300), anything else 201 with `location` if any.
fn origin(
    calls: Arc<AtomicUsize>,
    get_status: u16,
    location: Option<&'static str>,
) -> impl Service<Req, Response = Res, Error = Infallible, Future = impl Send> + Clone {
    tower::service_fn(move |req: Req| {
        calls.fetch_add(1, SeqCst);
        let mut b = Response::builder();
        if req.method() == Method::GET || req.method() == Method::HEAD {
            b = b.status(get_status).header("cache-control", "max-age=300");
        } else {
            b = b.status(201);
            if let Some(l) = location {
                b = b.header("location", l);
            }
        }
        let res = b.body(Full::new(Bytes::new())).unwrap();
        async move { Ok::<_, Infallible>(res) }
    })
}

/// A key function that keeps the whole URI it is given (any application keying by authority
/// and path does the same): what it is given is the key.
fn whole_uri_layer(seen: Arc<std::sync::Mutex<Vec<String>>>) -> NegativeCacheLayer {
    NegativeCacheLayer::builder()
        .origin_form_scheme(Scheme::HTTP)
        .key_fn(move |u: &Uri| {
            seen.lock().unwrap().push(u.to_string());
            Some(u.to_string())
        })
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Fix 2 (22d2995): one target, one key function input
// ---------------------------------------------------------------------------------------------

/// GUARANTEES.md: "declared, both forms read, write and forget one entry, and a key function
/// is given the origin-form target's absolute URI". RFC 9110 §4.2.3: `http://h:80/x` and
/// `http://h/x` are one resource (the default port elided), and §7.2 `Host: h:80` names it.
/// Control: without a key function the two forms share a key.
#[tokio::test(start_paused = true)]
async fn with_a_key_function_a_host_with_the_default_port_shares_the_absolute_forms_entry() {
    // Control: the default key.
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = NegativeCacheLayer::builder()
        .origin_form_scheme(Scheme::HTTP)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(origin(calls.clone(), 404, None));
    fetch(&mut svc, get("http://h.test/x")).await;
    let (_, hit) = fetch(&mut svc, origin_form(Method::GET, "/x", "h.test:80")).await;
    assert!(hit.is_some(), "control: the default key shares");
    assert_eq!(calls.load(SeqCst), 1);

    // With a key function.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(whole_uri_layer(seen.clone()))
        .service(origin(calls.clone(), 404, None));
    fetch(&mut svc, get("http://h.test/x")).await;
    let (_, hit) = fetch(&mut svc, origin_form(Method::GET, "/x", "h.test:80")).await;
    assert!(
        hit.is_some(),
        "`/x` with `Host: h.test:80` is `http://h.test/x`: one entry with a key function too \
         (the key function was given {:?})",
        seen.lock().unwrap()
    );
}

/// The same with an upper-case `Host` (RFC 3986 §6.2.2.1, RFC 9110 §4.2.3: the host is
/// case-insensitive).
#[tokio::test(start_paused = true)]
async fn with_a_key_function_an_upper_case_host_shares_the_absolute_forms_entry() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(whole_uri_layer(seen.clone()))
        .service(origin(calls.clone(), 404, None));
    fetch(&mut svc, get("http://h.test/x")).await;
    let (_, hit) = fetch(&mut svc, origin_form(Method::GET, "/x", "H.Test")).await;
    assert!(
        hit.is_some(),
        "`/x` with `Host: H.Test` is `http://h.test/x` (the key function was given {:?})",
        seen.lock().unwrap()
    );
}

/// RFC 9111 §4.4 (a successful write invalidates the `Location` it names on the same origin)
/// and GUARANTEES.md ("a key function is given the origin-form target's absolute URI, as it is
/// given a resolved `Location`"). An origin-form 404 read through `Host: h.test:80`; a write
/// answers 201 with `Location: http://h.test/r/3` — the same target. Control: without a key
/// function it is forgotten.
#[tokio::test(start_paused = true)]
async fn with_a_key_function_a_location_forgets_an_origin_form_entry_read_with_an_explicit_port() {
    for with_key_fn in [false, true] {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let layer = if with_key_fn {
            whole_uri_layer(seen.clone())
        } else {
            NegativeCacheLayer::builder()
                .origin_form_scheme(Scheme::HTTP)
                .build()
                .unwrap()
        };
        let calls = Arc::new(AtomicUsize::new(0));
        let mut svc = ServiceBuilder::new().layer(layer).service(origin(
            calls.clone(),
            404,
            Some("http://h.test/r/3"),
        ));
        fetch(&mut svc, origin_form(Method::GET, "/r/3", "h.test:80")).await;
        let (_, hit) = fetch(&mut svc, origin_form(Method::GET, "/r/3", "h.test:80")).await;
        assert!(hit.is_some());
        let (status, _) = fetch(&mut svc, origin_form(Method::POST, "/items", "h.test:80")).await;
        assert_eq!(status, StatusCode::CREATED);
        let (_, hit) = fetch(&mut svc, origin_form(Method::GET, "/r/3", "h.test:80")).await;
        assert!(
            hit.is_none(),
            "with_key_fn={with_key_fn}: the 201's Location names /r/3: its 404 must be \
             forgotten (the key function was given {:?})",
            seen.lock().unwrap()
        );
    }
}

/// Holds: a relative `Location` resolved against an origin-form target with an upper-case
/// `Host`, and the handle's `invalidate_uri` in absolute form, reach the origin-form entry.
#[tokio::test(start_paused = true)]
async fn with_a_key_function_a_relative_location_and_invalidate_uri_reach_the_origin_form_entry() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let layer = whole_uri_layer(seen.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new().layer(layer.clone()).service(origin(
        calls.clone(),
        404,
        Some("/r/3"),
    ));
    fetch(&mut svc, origin_form(Method::GET, "/r/3", "h.test")).await;
    fetch(&mut svc, origin_form(Method::POST, "/items", "h.test")).await;
    let (_, hit) = fetch(&mut svc, origin_form(Method::GET, "/r/3", "h.test")).await;
    assert!(
        hit.is_none(),
        "relative Location: {:?}",
        seen.lock().unwrap()
    );
    // Remembered again; the handle forgets it by its absolute URI.
    let (_, hit) = fetch(&mut svc, origin_form(Method::GET, "/r/3", "h.test")).await;
    assert!(hit.is_some());
    let abs: Uri = "http://h.test/r/3".parse().unwrap();
    assert!(layer.handle().peek(&abs).is_some());
    assert!(layer.handle().invalidate_uri(&abs));
    let (_, hit) = fetch(&mut svc, origin_form(Method::GET, "/r/%33", "h.test")).await;
    assert!(hit.is_none());
    let (_, hit) = fetch(&mut svc, origin_form(Method::GET, "/a/../r/3", "h.test")).await;
    assert!(
        hit.is_some(),
        "dot segments and percent-encoding: one entry: {:?}",
        seen.lock().unwrap()
    );
}

/// The same gap in absolute form (older than 22d2995, which carried it over to origin form): an
/// entry read as `http://h.test:80/r/3` is not forgotten by `Location: http://h.test/r/3`
/// with a key function; it is without one.
#[tokio::test(start_paused = true)]
async fn with_a_key_function_a_location_forgets_an_absolute_form_entry_read_with_an_explicit_port()
{
    for with_key_fn in [false, true] {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let layer = if with_key_fn {
            whole_uri_layer(seen.clone())
        } else {
            NegativeCacheLayer::new()
        };
        let calls = Arc::new(AtomicUsize::new(0));
        let mut svc = ServiceBuilder::new().layer(layer).service(origin(
            calls.clone(),
            404,
            Some("http://h.test/r/3"),
        ));
        fetch(&mut svc, get("http://h.test:80/r/3")).await;
        let post = Request::post("http://h.test:80/items")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(fetch(&mut svc, post).await.0, StatusCode::CREATED);
        let (_, hit) = fetch(&mut svc, get("http://h.test:80/r/3")).await;
        assert!(
            hit.is_none(),
            "with_key_fn={with_key_fn}: absolute form, the Location names it (given {:?})",
            seen.lock().unwrap()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Fix 1 (0d81593): a peer's older 404 does not replace a newer answer here
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;

#[cfg(feature = "redis")]
mod fleet {
    use super::redis_support::{RedisServer, StallProxy};
    use super::*;
    use tower_negative_cache::fleet::Fleet;

    async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
        let t = std::time::Instant::now();
        while !f() {
            assert!(t.elapsed() < limit, "not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn tier(url: String, prefix: &str) -> tower_negative_cache::fleet::FleetBuilder {
        Fleet::builder(url)
            .prefix(prefix)
            .reconnect(Duration::from_millis(20), Duration::from_millis(200))
            .timeout(Duration::from_secs(3))
    }

    fn unix_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    /// A peer's `m` message, as `publish` sends it (unsigned).
    async fn publish_missing(
        conn: &mut redis::aio::MultiplexedConnection,
        prefix: &str,
        seq: u64,
        status: u16,
        ttl_ms: u64,
        age_ms: u64,
        key: &str,
    ) {
        let mut payload = format!(
            "tnc3 - {:016x} {seq} {} m {status} {ttl_ms} {age_ms} {key}",
            0xfeed_u64,
            unix_ms()
        )
        .into_bytes();
        payload.extend_from_slice(b"\0k\n\n");
        let _: i64 = redis::cmd("PUBLISH")
            .arg(format!("{prefix}:db0:events"))
            .arg(payload)
            .query_async(conn)
            .await
            .unwrap();
    }

    /// RFC 9111 §4 and the fix's own rule ("a local answer that arrived after the peer's
    /// request left is newer"), applied to two peer answers: a replica that started moments
    /// ago hears a 410 whose request left 1 s before it started, then a 404 whose request
    /// left 2.5 s before it started — older. The older must be refused (`superseded`), as it
    /// is a few seconds later (second half, control).
    #[tokio::test]
    async fn two_peer_answers_from_before_the_store_began_keep_their_order() {
        let Some(redis) = RedisServer::try_start("session7_epoch_order") else {
            return;
        };
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        // "late" first: the control (both requests left after the store began) holds.
        for (round, settle) in [("late", Duration::from_secs(3)), ("early", Duration::ZERO)] {
            let prefix = format!("session7e-{round}");
            let built = std::time::Instant::now();
            let layer = NegativeCacheLayer::new();
            let fleet = tier(redis.url(), &prefix).start(&layer).unwrap();
            wait_until(Duration::from_secs(10), || fleet.stats().connected).await;
            tokio::time::sleep(settle).await;
            let up = built.elapsed().as_millis() as u64;
            // Early: both requests left before the store began; late: both after.
            let base = if round == "early" { up } else { 0 };
            if round == "early" && up > 2_000 {
                eprintln!("{round}: skipped, the replica took {up} ms to connect");
                continue;
            }
            let key = "http://o.test/records/1";
            let uri: Uri = key.parse().unwrap();
            // The newer: its request left 1 s before the replica's store began.
            publish_missing(&mut conn, &prefix, 1, 410, 300_000, base + 1_000, key).await;
            wait_until(Duration::from_secs(5), || fleet.stats().learned == 1).await;
            assert_eq!(layer.handle().peek(&uri).unwrap().status, StatusCode::GONE);
            // The older: its request left 2.5 s before the store began (1.5 s before the 410's).
            publish_missing(&mut conn, &prefix, 2, 404, 300_000, base + 2_500, key).await;
            wait_until(Duration::from_secs(5), || {
                let s = fleet.stats();
                s.learned + s.rejected.superseded == 2
            })
            .await;
            assert_eq!(
                layer.handle().peek(&uri).unwrap().status,
                StatusCode::GONE,
                "{round}: a 404 whose request left 1.5 s before the 410's replaced it \
                 (superseded = {})",
                fleet.stats().rejected.superseded
            );
        }
    }

    /// The fix's rule with a real delay between a peer's answer and its message's delivery.
    /// Peer P's request leaves and its 404 arrives; P's link to Redis is held 800 ms
    /// (`StallProxy`, a slow link). Meanwhile replica R's own request leaves and its 410
    /// arrives: newer. P's message then arrives: R must keep its own newer 410.
    ///
    /// Two rounds: P's first message (its connection is made on the way, so the delay comes
    /// before the send time the message carries: its age must count it — an earlier build
    /// counted the age before connecting), and a message on a connection P made before (the
    /// delay comes after the send time: the receiver must count it from the wall clocks — an
    /// earlier build counted no transit).
    #[tokio::test]
    async fn a_peers_older_404_delayed_in_transit_does_not_replace_a_newer_local_410() {
        let Some(redis) = RedisServer::try_start("session7_transit") else {
            return;
        };
        let port: u16 = redis
            .url()
            .rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let proxy = StallProxy::start(port).await;
        let prefix = "session7t";
        let (lp, lr) = (NegativeCacheLayer::new(), NegativeCacheLayer::new());
        let fp = tier(proxy.url(), prefix).start(&lp).unwrap();
        let fr = tier(redis.url(), prefix).start(&lr).unwrap();
        wait_until(Duration::from_secs(10), || {
            fp.stats().connected && fr.stats().connected
        })
        .await;
        let (cp, cr) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut p = ServiceBuilder::new()
            .layer(lp.clone())
            .service(origin(cp.clone(), 404, None));
        let mut r = ServiceBuilder::new()
            .layer(lr.clone())
            .service(origin(cr.clone(), 410, None));

        for (round, url) in [
            ("connecting", "http://o.test/records/2"),
            ("connected", "http://o.test/records/5"),
        ] {
            let uri: Uri = url.parse().unwrap();
            let heard = || {
                let s = fr.stats();
                s.learned + s.rejected.superseded
            };
            let before = heard();
            proxy.hold(true);
            // P: request leaves, 404 arrives (older). Its message is held on its way.
            assert_eq!(fetch(&mut p, get(url)).await.0, StatusCode::NOT_FOUND);
            tokio::time::sleep(Duration::from_millis(300)).await;
            // R: request leaves after P's answer arrived; its 410 is newer.
            assert_eq!(fetch(&mut r, get(url)).await.0, StatusCode::GONE);
            assert_eq!(lr.handle().peek(&uri).unwrap().status, StatusCode::GONE);
            tokio::time::sleep(Duration::from_millis(500)).await;
            proxy.hold(false);
            wait_until(Duration::from_secs(5), || heard() > before).await;
            let s = fr.stats();
            assert_eq!(
                lr.handle().peek(&uri).unwrap().status,
                StatusCode::GONE,
                "{round}: P's older 404 (request left 300 ms before R's) replaced R's newer \
                 410 (learned = {}, superseded = {})",
                s.learned,
                s.rejected.superseded
            );
            // The round went as described: P's message went out on the connection it names
            // (counted once Redis answered P, which may come after R heard it).
            let published = if round == "connecting" { 1 } else { 2 };
            wait_until(Duration::from_secs(5), || fp.stats().published == published).await;
        }
    }

    /// Holds (control for the fix's other direction): a peer's genuinely newer 404 replaces
    /// an entry this replica learned earlier from a peer, and one it stored itself.
    #[tokio::test]
    async fn a_peers_newer_answer_replaces_a_learned_and_a_local_entry() {
        let Some(redis) = RedisServer::try_start("session7_newer") else {
            return;
        };
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let prefix = "session7n";
        let layer = NegativeCacheLayer::new();
        let fleet = tier(redis.url(), prefix).start(&layer).unwrap();
        wait_until(Duration::from_secs(10), || fleet.stats().connected).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let key = "http://o.test/records/3";
        let uri: Uri = key.parse().unwrap();
        publish_missing(&mut conn, prefix, 1, 410, 300_000, 2_000, key).await;
        wait_until(Duration::from_secs(5), || fleet.stats().learned == 1).await;
        publish_missing(&mut conn, prefix, 2, 404, 300_000, 500, key).await;
        wait_until(Duration::from_secs(5), || {
            let s = fleet.stats();
            s.learned + s.rejected.superseded == 2
        })
        .await;
        assert_eq!(
            layer.handle().peek(&uri).unwrap().status,
            StatusCode::NOT_FOUND
        );

        // A local 410, then a peer's 404 whose request left after it arrived (age 0 now).
        let calls = Arc::new(AtomicUsize::new(0));
        let mut svc = ServiceBuilder::new()
            .layer(layer.clone())
            .service(origin(calls, 410, None));
        let url4 = "http://o.test/records/4";
        fetch(&mut svc, get(url4)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        publish_missing(&mut conn, prefix, 3, 404, 300_000, 0, url4).await;
        wait_until(Duration::from_secs(5), || {
            let s = fleet.stats();
            s.learned + s.rejected.superseded == 3
        })
        .await;
        assert_eq!(
            layer.handle().peek(&url4.parse().unwrap()).unwrap().status,
            StatusCode::NOT_FOUND
        );
    }
}
