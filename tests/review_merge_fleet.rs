//! Fleet, the merged tree (issues 17, 18, 19, 23 written apart, merged together): an
//! adversarial review, each break held against a real `redis-server` started by the test on a
//! free port.

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::{ServiceBuilder, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::cache::{NegativeCache, NegativeCacheHandle};
use tower_negative_cache::fleet::{Fleet, FleetBuilder};

use redis_support::RedisServer;
use support::{Reply, TestServer};

struct Node {
    layer: NegativeCacheLayer,
    client: NegativeCache<Client<HttpConnector, Empty<Bytes>>>,
    cache: NegativeCacheHandle,
}

fn node() -> Node {
    let layer = NegativeCacheLayer::builder()
        .ttl(Duration::from_secs(60))
        .max_ttl(Duration::from_secs(120))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(support::client());
    Node {
        cache: layer.handle(),
        layer,
        client,
    }
}

fn tier(url: &str) -> FleetBuilder {
    Fleet::builder(url)
        .prefix("fleet-test")
        .reconnect(Duration::from_millis(20), Duration::from_millis(200))
        .timeout(Duration::from_millis(300))
}

impl Node {
    fn start(&self, b: FleetBuilder) -> Fleet {
        b.start(&self.layer).unwrap()
    }

    async fn get(&self, url: &str) -> StatusCode {
        let req = Request::builder()
            .method(Method::GET)
            .uri(url)
            .body(Empty::new())
            .unwrap();
        self.client.clone().oneshot(req).await.unwrap().status()
    }

    fn holds(&self, url: &str) -> bool {
        self.cache.peek(&url.parse::<Uri>().unwrap()).is_some()
    }
}

async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn connected(f: &Fleet) {
    wait_until(Duration::from_secs(10), || f.stats().connected).await;
}

async fn origin() -> TestServer {
    TestServer::builder()
        .handler(|r| {
            Some(if r.method != Method::GET {
                Reply::ok("here")
            } else {
                Reply::status(404)
            })
        })
        .start()
        .await
}

async fn eval<T: redis::FromRedisValue>(redis: &RedisServer, script: &str, args: &[&str]) -> T {
    let mut c = redis::cmd("EVAL");
    c.arg(script).arg(0);
    for a in args {
        c.arg(*a);
    }
    c.query_async(&mut redis.admin().await).await.unwrap()
}

macro_rules! redis_or_skip {
    ($name:literal) => {
        match RedisServer::try_start($name) {
            Some(r) => r,
            None => return,
        }
    };
}

/// Issue 23 item 6, on a slow Redis: the catch-up after a lost subscription reads back the
/// tombstones written since the loss. It compared each tombstone's time with how long the
/// subscription had been lost *when it came back*, but with Redis's clock *when the
/// tombstones were read* — after a scan that may take seconds (a big keyspace, a busy
/// Redis). A forget sent right after the loss then looked older than the loss and was
/// skipped: the replica kept the forgotten 404 for its TTL.
#[tokio::test]
async fn a_slow_catch_up_still_reads_back_the_forgets_sent_while_away() {
    let redis = redis_or_skip!("a_slow_catch_up_still_reads_back_the_forgets_sent_while_away");
    // A big keyspace (none of it the fleet's): the catch-up's SCAN takes many round trips.
    let _: i64 = eval(
        &redis,
        "for i = 1, 400000 do redis.call('SET', 'filler:' .. i, 'x') end \
         local p = 'fleet-test:k:' .. ARGV[1] .. ':http://h.test/old/' \
         for i = 1, 99000 do redis.call('SET', p .. i, 't 1') end return 1",
        &["1"],
    )
    .await;
    let _: () = redis.cmd(&["SET", "fleet-test:gen", "1"]).await;
    let origin = origin().await;
    let b = node();
    let fb = b.start(tier(&redis.url()).timeout(Duration::from_secs(2)));
    connected(&fb).await;
    let url = origin.url("/records/away-slow");
    assert_eq!(b.get(&url).await, StatusCode::NOT_FOUND);
    wait_until(Duration::from_secs(5), || fb.stats().published >= 1).await;
    let keys: Vec<String> = redis.cmd(&["KEYS", "fleet-test:k:*away-slow"]).await;
    assert_eq!(keys.len(), 1);
    // B's subscription is lost; meanwhile another replica forgets the key (its tombstone,
    // stamped with Redis's clock, replaces the stored copy; its message is not heard).
    let _: i64 = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    let _: i64 = eval(
        &redis,
        "local t = redis.call('TIME') \
         local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
         redis.call('SET', ARGV[1], 't ' .. now, 'PX', 10000) return 1",
        &[&keys[0]],
    )
    .await;
    // B resubscribes and starts catching up; Redis is then busy for 2 s (a long command:
    // the same as a slow network or a big keyspace), in the middle of the catch-up's scan.
    let mut conn = redis.admin().await;
    let t = Instant::now();
    loop {
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("fleet-test:db0:events")
            .query_async(&mut conn)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "B never resubscribed"
        );
    }
    let _: i64 = redis::cmd("EVAL")
        .arg(
            "local t0 = redis.call('TIME') local t = t0 \
             while (tonumber(t[1]) - tonumber(t0[1])) * 1000000 + tonumber(t[2]) - tonumber(t0[2]) < 2000000 do \
             t = redis.call('TIME') end return 1",
        )
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        b.holds(&url),
        "forgotten before the catch-up: nothing tested"
    );
    wait_until(Duration::from_secs(20), || fb.stats().reconnects >= 1).await;
    // The catch-up ends (its reads finish within a few seconds of the busy spell).
    let deadline = Instant::now() + Duration::from_secs(15);
    while b.holds(&url) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !b.holds(&url),
        "the forget sent while away was not caught up: {:?}",
        fb.stats()
    );
}

/// A TCP proxy whose connections can be cut off silently: nothing more passes either way,
/// but the client's side stays open (a half-open connection: a network partition, a NAT
/// that dropped its mapping, a Redis failed over behind a proxy).
struct SilentProxy {
    port: u16,
    cut: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl SilentProxy {
    async fn start(redis_port: u16) -> SilentProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(tokio::sync::watch::channel(0u64).0);
        let shared = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await
                else {
                    continue;
                };
                let mine = *shared.borrow();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    ),
                    (Box::new(sr), Box::new(cw)),
                ] {
                    let mut rx = shared.subscribe();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = tokio::select! {
                                n = from.read(&mut buf) => match n {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => n,
                                },
                                _ = rx.wait_for(|cut| *cut != mine) => break,
                            };
                            if *rx.borrow() != mine || to.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        // Cut: hold both ends open, silent, for good.
                        if *rx.borrow() != mine {
                            std::future::pending::<()>().await;
                        }
                    });
                }
            }
        });
        SilentProxy { port, cut }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Cuts every connection made so far, silently; later ones pass.
    fn cut(&self) {
        self.cut.send_modify(|epoch| *epoch += 1);
    }
}

/// Issue 23 item 6, a half-open subscription: the tier notices a silent loss only when its
/// keepalive PING goes unanswered (5 s of quiet, then the timeout). The catch-up counted
/// the loss from when it was *noticed*, so the forgets sent between the real loss and then
/// (their tombstones older than "lost for" allowed) were never read back: the replica kept
/// the forgotten 404 for its TTL.
#[tokio::test]
async fn after_a_silently_lost_subscription_the_forgets_sent_meanwhile_are_caught_up() {
    let redis = redis_or_skip!(
        "after_a_silently_lost_subscription_the_forgets_sent_meanwhile_are_caught_up"
    );
    let origin = origin().await;
    let proxy = SilentProxy::start(redis.port).await;
    let (a, b) = (node(), node());
    let fa = a.start(tier(&redis.url()));
    connected(&fa).await;
    // A generation exists before B starts (B's warm-up reads it: no clear is inferred later).
    assert_eq!(
        a.get(&origin.url("/records/first")).await,
        StatusCode::NOT_FOUND
    );
    wait_until(Duration::from_secs(5), || fa.stats().published >= 1).await;
    let fb = b.start(tier(&proxy.url()));
    connected(&fb).await;
    wait_until(Duration::from_secs(5), || fb.stats().warmed >= 1).await;
    let url = origin.url("/records/half-open");
    assert_eq!(a.get(&url).await, StatusCode::NOT_FOUND);
    wait_until(Duration::from_secs(5), || b.holds(&url)).await;
    // B's connections go silent (what Redis sends B is lost on the way), and B is not told.
    proxy.cut();
    assert!(a.cache.invalidate_uri(&url.parse().unwrap()));
    wait_until(Duration::from_secs(5), || fa.stats().published >= 3).await;
    assert!(b.holds(&url), "the forget reached B anyway: nothing tested");
    wait_until(Duration::from_secs(20), || fb.stats().reconnects >= 1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.holds(&url) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !b.holds(&url),
        "the forget sent while away was not caught up: {:?}",
        fb.stats()
    );
}

/// Issue 23 item 2 (`Recent::note_if_off`, added during the merge), on a cache whose tier was
/// dropped and started again: a read's 2xx seen while no tier was attached must order out a
/// peer's older stored 404 when the next tier warms up, as it does before a cache's first tier.
/// Once a tier had been attached, recording stayed on, so such a 2xx was kept only as a
/// per-key tombstone of 10 s: a tier started later warmed the older 404 up and the replica
/// answered 404 for a record it had just seen present.
#[tokio::test]
async fn a_2xx_seen_between_two_tiers_orders_out_an_older_stored_404() {
    let redis = redis_or_skip!("a_2xx_seen_between_two_tiers_orders_out_an_older_stored_404");
    // The record is missing for A's read, then present for B's.
    let origin = TestServer::builder()
        .route("/records/between", [Reply::status(404), Reply::ok("here")])
        .start()
        .await;
    let url = origin.url("/records/between");
    let (a, b) = (node(), node());
    // B had a tier once, and dropped it (a restart of the tier, a deploy of its config).
    let fb = b.start(tier(&redis.url()));
    connected(&fb).await;
    drop(fb);
    let fa = a.start(tier(&redis.url()));
    connected(&fa).await;
    assert_eq!(a.get(&url).await, StatusCode::NOT_FOUND);
    wait_until(Duration::from_secs(5), || fa.stats().published >= 1).await;
    // B, with no tier, reads the record: present, after A's request left.
    assert_eq!(b.get(&url).await, StatusCode::OK);
    // Later than the 10 s of a per-key tombstone, B's tier is started again.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let fb = b.start(tier(&redis.url()));
    connected(&fb).await;
    wait_until(Duration::from_secs(5), || {
        let s = fb.stats();
        s.warmed + s.rejected.superseded >= 1
    })
    .await;
    assert!(
        !b.holds(&url),
        "A's older 404 was warmed up: {:?}",
        fb.stats()
    );
    assert_eq!(fb.stats().rejected.superseded, 1, "{:?}", fb.stats());
}

/// Issue 17 against issue 23: a stored copy carries no answer (it warms a head-only entry),
/// and the catch-up after a lost subscription warms stored copies again. It replaced what the
/// replica already held — its own entry, the origin's JSON body and `Content-Type` — with a
/// bare head-only one: after the catch-up its hit was no longer the origin's answer.
#[tokio::test]
async fn a_catch_up_does_not_replace_a_held_answer_with_a_head_only_copy() {
    const JSON: &str = r#"{"error":"not_found","code":4040}"#;
    let redis = redis_or_skip!("a_catch_up_does_not_replace_a_held_answer_with_a_head_only_copy");
    let origin = TestServer::builder()
        .handler(|_| {
            Some(
                Reply::status(404)
                    .header("content-type", "application/json")
                    .body(JSON),
            )
        })
        .start()
        .await;
    // A generation from before B starts (one B's first warm-up reads).
    let _: () = redis.cmd(&["SET", "fleet-test:gen", "1"]).await;
    let b = node();
    let fb = b.start(tier(&redis.url()));
    connected(&fb).await;
    let url = origin.url("/records/json");
    let req = Request::get(&url).body(Empty::new()).unwrap();
    let res = b.client.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(support::body_bytes(res).await, JSON.as_bytes());
    wait_until(Duration::from_secs(5), || fb.stats().published >= 1).await;
    assert!(b.cache.peek(&url.parse().unwrap()).unwrap().body_kept);
    // The subscription is lost and comes back: B catches up from Redis.
    let _: i64 = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    wait_until(Duration::from_secs(10), || fb.stats().reconnects >= 1).await;
    // The catch-up has read the stored copies (the copy is B's own: there is one).
    let mut conn = redis.admin().await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg("fleet-test:db0:events")
        .arg("not a message")
        .query_async(&mut conn)
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), || {
        fb.stats().rejected.malformed >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let req = Request::get(&url).body(Empty::new()).unwrap();
    let res = b.client.clone().oneshot(req).await.unwrap();
    assert_eq!(origin.hits("/records/json"), 1, "not a hit");
    assert_eq!(
        res.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "{:?} {:?}",
        res.headers(),
        fb.stats()
    );
    assert_eq!(support::body_bytes(res).await, JSON.as_bytes());
}

/// The wire's answer section (issue 17) starts at the first NUL of a payload, but a key from
/// a key function may hold NUL bytes (a common field separator): a forget of such a key was
/// split there and refused as malformed by every peer, so a peer holding that key (from its
/// own upstream, or warmed from a stored copy, which Redis keeps whole) served the forgotten
/// 404 for its TTL.
#[tokio::test]
async fn a_forget_of_a_key_with_a_nul_byte_reaches_the_peers() {
    let redis = redis_or_skip!("a_forget_of_a_key_with_a_nul_byte_reaches_the_peers");
    let origin = origin().await;
    let keyed = || {
        let layer = NegativeCacheLayer::builder()
            .ttl(Duration::from_secs(60))
            .max_ttl(Duration::from_secs(120))
            .key_fn(|uri: &Uri| Some(format!("{}\0{}", uri.authority()?, uri.path())))
            .build()
            .unwrap();
        let client = ServiceBuilder::new()
            .layer(layer.clone())
            .service(support::client());
        Node {
            cache: layer.handle(),
            layer,
            client,
        }
    };
    let (a, b) = (keyed(), keyed());
    let fa = a.start(tier(&redis.url()));
    let fb = b.start(tier(&redis.url()));
    connected(&fa).await;
    connected(&fb).await;
    let url = origin.url("/records/nul");
    // B remembers the 404 itself.
    assert_eq!(b.get(&url).await, StatusCode::NOT_FOUND);
    assert!(b.holds(&url));
    // A's record is created: A forgets it and tells the peers.
    let req = Request::post(&url).body(Empty::new()).unwrap();
    assert_eq!(
        a.client.clone().oneshot(req).await.unwrap().status(),
        StatusCode::OK
    );
    wait_until(Duration::from_secs(5), || {
        let s = fb.stats();
        s.received + s.rejected.malformed >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!b.holds(&url), "B kept the forgotten 404: {:?}", fb.stats());
}

/// Issue 23 item 10's sibling: a stored *key name* that is not text (something else wrote it
/// under the prefix). The scan read key names as strings, so one such key failed every
/// warm-up (and every catch-up after a lost subscription: the forgets sent meanwhile were
/// never read back). It is skipped and counted, the rest warmed up.
#[tokio::test]
async fn a_binary_stored_key_name_is_skipped_and_the_rest_warmed() {
    let redis = redis_or_skip!("a_binary_stored_key_name_is_skipped_and_the_rest_warmed");
    let origin = origin().await;
    let a = node();
    let fa = a.start(tier(&redis.url()));
    connected(&fa).await;
    let url = origin.url("/records/beside-binary");
    assert_eq!(a.get(&url).await, StatusCode::NOT_FOUND);
    wait_until(Duration::from_secs(5), || fa.stats().published >= 1).await;
    let generation: String = redis.cmd(&["GET", "fleet-test:gen"]).await;
    let mut name = format!("fleet-test:k:{generation}:http://h.test/").into_bytes();
    name.extend_from_slice(b"\xff\xfe");
    let _: () = redis::cmd("SET")
        .arg(name)
        .arg("t 1")
        .query_async(&mut redis.admin().await)
        .await
        .unwrap();
    let late = node();
    let fl = late.start(tier(&redis.url()));
    connected(&fl).await;
    wait_until(Duration::from_secs(5), || {
        let s = fl.stats();
        s.warmed + s.rejected.malformed >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(late.holds(&url), "{:?}", fl.stats());
    assert_eq!(fl.stats().rejected.malformed, 1, "{:?}", fl.stats());
}
