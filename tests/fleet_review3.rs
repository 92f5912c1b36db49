//! Fleet: what Redis forgets or delays, the tier must not believe (the third adversarial
//! review), each held against a real `redis-server` started by the test on a free port.

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

const SECRET: &str = "a secret all replicas share";

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

    async fn send(
        &self,
        method: Method,
        url: &str,
    ) -> http::Response<tower_negative_cache::cache::ResponseBody<hyper::body::Incoming>> {
        let req = Request::builder()
            .method(method)
            .uri(url)
            .body(Empty::new())
            .unwrap();
        self.client.clone().oneshot(req).await.unwrap()
    }

    async fn get(&self, url: &str) -> StatusCode {
        self.send(Method::GET, url).await.status()
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

/// `n` stored copies under the current generation (creating one if there is none).
async fn fill(redis: &RedisServer, n: u64) {
    const FILL: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gen = redis.call('GET', 'fleet-test:gen')
if not gen then
  gen = string.format('%d', now - 10000)
  redis.call('SET', 'fleet-test:gen', gen)
end
local prefix = 'fleet-test:k:' .. gen .. ':http://h.test/r/'
for i = 1, tonumber(ARGV[1]) do
  redis.call('SET', prefix .. i, 'm ' .. now .. ' 60000 404', 'PX', 60000)
end
return 1
";
    let _: i64 = redis::cmd("EVAL")
        .arg(FILL)
        .arg(0)
        .arg(n)
        .query_async(&mut redis.admin().await)
        .await
        .unwrap();
}

macro_rules! redis_or_skip {
    ($name:literal) => {
        match RedisServer::try_start($name) {
            Some(r) => r,
            None => return,
        }
    };
}

/// Item 1: a warm-up that takes seconds must not hold back a peer's 404 until it looks newer
/// than this replica's own later write.
#[tokio::test]
async fn a_long_warm_up_does_not_make_a_late_message_look_new() {
    let redis = redis_or_skip!("a_long_warm_up_does_not_make_a_late_message_look_new");
    let origin = origin().await;
    const N: u64 = 300_000;
    fill(&redis, N).await;
    let (a, b) = (node(), node());
    let fa = a.start(tier(&redis.url()));
    connected(&fa).await;
    let fb = b.start(tier(&redis.url()).warm(1_000_000));
    connected(&fb).await;
    let url = origin.url("/records/new");
    // A's 404 leaves, then B creates the record, while B is still warming up.
    assert_eq!(a.get(&url).await, StatusCode::NOT_FOUND);
    wait_until(Duration::from_secs(5), || fa.stats().published >= 1).await;
    assert_eq!(b.send(Method::POST, &url).await.status(), StatusCode::OK);
    assert!(
        fb.stats().warmed < N,
        "warm-up was over before the test could race it: {:?}",
        fb.stats()
    );
    wait_until(Duration::from_secs(60), || fb.stats().warmed >= N).await;
    assert!(
        !b.holds(&url),
        "B serves 404 for the record it created: {:?}",
        fb.stats()
    );
}

/// Item 2: a change seen before the tier attached orders out a peer's older stored 404.
#[tokio::test]
async fn a_change_before_the_tier_started_orders_out_an_older_stored_404() {
    let redis = redis_or_skip!("a_change_before_the_tier_started_orders_out_an_older_stored_404");
    let origin = origin().await;
    let a = node();
    let fa = a.start(tier(&redis.url()));
    connected(&fa).await;
    let url = origin.url("/records/r2");
    a.get(&url).await;
    wait_until(Duration::from_secs(5), || fa.stats().published >= 1).await;
    let b = node();
    assert_eq!(b.send(Method::POST, &url).await.status(), StatusCode::OK);
    let fb = b.start(tier(&redis.url()));
    wait_until(Duration::from_secs(5), || {
        let s = fb.stats();
        s.warmed + s.rejected.superseded >= 1
    })
    .await;
    assert!(!b.holds(&url), "{:?}", fb.stats());
    assert_eq!(fb.stats().rejected.superseded, 1, "{:?}", fb.stats());
}

/// Item 3: the generation key lost (evicted; here `DEL`) must not revive copies from before
/// a clear, with a secret too.
#[tokio::test]
async fn a_lost_generation_key_revives_nothing_from_before_a_clear() {
    let redis = redis_or_skip!("a_lost_generation_key_revives_nothing_from_before_a_clear");
    let origin = origin().await;
    let a = node();
    let fa = a.start(tier(&redis.url()).secret(SECRET));
    connected(&fa).await;
    a.get(&origin.url("/records/c1")).await;
    wait_until(Duration::from_secs(5), || fa.stats().published >= 1).await;
    a.cache.clear();
    wait_until(Duration::from_secs(5), || fa.stats().published >= 2).await;
    let _: i64 = redis.cmd(&["DEL", "fleet-test:gen"]).await;
    let late = node();
    let fl = late.start(tier(&redis.url()).secret(SECRET));
    connected(&fl).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fl.stats().warmed, 0, "{:?}", fl.stats());
}

/// Item 5: a full Redis (`maxmemory`, `noeviction`) refuses the forget's tombstone: a late
/// replica must still not warm the forgotten 404 up.
#[tokio::test]
async fn a_full_redis_does_not_revive_a_forgotten_404() {
    let redis = redis_or_skip!("a_full_redis_does_not_revive_a_forgotten_404");
    let origin = origin().await;
    let a = node();
    let fa = a.start(tier(&redis.url()));
    connected(&fa).await;
    let url = origin.url("/records/full");
    a.get(&url).await;
    wait_until(Duration::from_secs(5), || fa.stats().published >= 1).await;
    let _: () = redis.cmd(&["CONFIG", "SET", "maxmemory", "1"]).await;
    assert!(a.cache.invalidate_uri(&url.parse().unwrap()));
    // The script deletes the copy before writing the tombstone: Redis refuses a script's
    // first write when full, never a `DEL` (and then lets the rest through).
    wait_until(Duration::from_secs(5), || {
        let s = fa.stats();
        s.published + s.publish_failures >= 2
    })
    .await;
    let late = node();
    let fl = late.start(tier(&redis.url()));
    connected(&fl).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!late.holds(&url), "{:?}", fl.stats());
    assert_eq!(fl.stats().warmed, 0, "{:?}", fl.stats());
}

/// Item 6: a replica whose subscription was lost catches up on the forgets sent meanwhile.
#[tokio::test]
async fn after_a_lost_subscription_the_forgets_sent_meanwhile_are_caught_up() {
    let redis =
        redis_or_skip!("after_a_lost_subscription_the_forgets_sent_meanwhile_are_caught_up");
    let origin = origin().await;
    let (a, b) = (node(), node());
    let fa = a.start(tier(&redis.url()));
    // B waits long before resubscribing, so the forget below lands while it is away.
    let fb =
        b.start(tier(&redis.url()).reconnect(Duration::from_millis(1500), Duration::from_secs(2)));
    connected(&fa).await;
    connected(&fb).await;
    let url = origin.url("/records/away");
    a.get(&url).await;
    wait_until(Duration::from_secs(5), || b.holds(&url)).await;
    let _: i64 = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    wait_until(Duration::from_secs(5), || !fb.stats().connected).await;
    assert!(a.cache.invalidate_uri(&url.parse().unwrap()));
    wait_until(Duration::from_secs(5), || fa.stats().published >= 2).await;
    assert!(b.holds(&url), "the forget reached B anyway: nothing tested");
    wait_until(Duration::from_secs(10), || fb.stats().reconnects >= 1).await;
    wait_until(Duration::from_secs(10), || !b.holds(&url)).await;
}

/// Item 7: with a secret, rewriting a stored copy's `start` in Redis does not extend it.
#[tokio::test]
async fn with_a_secret_a_rewritten_start_does_not_extend_a_copy() {
    let redis = redis_or_skip!("with_a_secret_a_rewritten_start_does_not_extend_a_copy");
    let origin = origin().await;
    let a = node();
    let fa = a.start(tier(&redis.url()).secret(SECRET));
    connected(&fa).await;
    let url = origin.url("/records/extend");
    a.get(&url).await;
    wait_until(Duration::from_secs(5), || fa.stats().published >= 1).await;
    let keys: Vec<String> = redis.cmd(&["KEYS", "fleet-test:k:*"]).await;
    let value: String = redis.cmd(&["GET", &keys[0]]).await;
    let mut parts: Vec<String> = value.split(' ').map(str::to_owned).collect();
    // 100 s later: a 60 s copy would read as fresh for 120 s (`max_ttl`) more.
    parts[1] = (parts[1].parse::<u64>().unwrap() + 100_000).to_string();
    let _: () = redis.cmd(&["SET", &keys[0], &parts.join(" ")]).await;
    let late = node();
    let fl = late.start(tier(&redis.url()).secret(SECRET));
    wait_until(Duration::from_secs(5), || fl.stats().warmed >= 1).await;
    let hit = late.cache.peek(&url.parse().unwrap()).unwrap();
    assert!(hit.remaining <= Duration::from_secs(61), "{hit:?}");
}

/// Item 8: a signed 404 captured before a write and played again to a replica started after
/// the write is refused.
#[tokio::test]
async fn with_a_secret_a_replayed_404_from_before_a_new_replica_started_is_refused() {
    let redis =
        redis_or_skip!("with_a_secret_a_replayed_404_from_before_a_new_replica_started_is_refused");
    let origin = origin().await;
    let a = node();
    let fa = a.start(tier(&redis.url()).secret(SECRET));
    connected(&fa).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut spy = client.get_async_pubsub().await.unwrap();
    spy.subscribe("fleet-test:db0:events").await.unwrap();
    let url = origin.url("/records/replayed");
    a.get(&url).await;
    let captured: Vec<u8> = {
        use futures_util::StreamExt;
        let mut s = spy.on_message();
        tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .unwrap()
            .unwrap()
            .get_payload_bytes()
            .to_vec()
    };
    assert_eq!(a.send(Method::POST, &url).await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let late = node();
    let fl = late.start(tier(&redis.url()).secret(SECRET).warm(0));
    connected(&fl).await;
    let mut conn = redis.admin().await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg("fleet-test:db0:events")
        .arg(captured)
        .query_async(&mut conn)
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), || fl.stats().received >= 1).await;
    assert!(!late.holds(&url), "{:?}", fl.stats());
    assert_eq!(fl.stats().rejected.stale, 1, "{:?}", fl.stats());
}

/// Item 9: two fleets with one prefix in two databases of one Redis do not hear each other.
#[tokio::test]
async fn fleets_in_two_databases_do_not_share() {
    let redis = redis_or_skip!("fleets_in_two_databases_do_not_share");
    let origin = origin().await;
    let url1 = format!("{}/1", redis.url());
    let url2 = format!("{}/2", redis.url());
    let (a, b, c) = (node(), node(), node());
    let fa = a.start(tier(&url1));
    let fb = b.start(tier(&url2));
    let fc = c.start(tier(&url1));
    for f in [&fa, &fb, &fc] {
        connected(f).await;
    }
    let url = origin.url("/records/staging");
    a.get(&url).await;
    wait_until(Duration::from_secs(5), || c.holds(&url)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!b.holds(&url), "{:?}", fb.stats());
    assert_eq!(fb.stats().received, 0, "{:?}", fb.stats());
}

/// Item 10: a binary stored value is skipped and counted; the rest is warmed up.
#[tokio::test]
async fn a_binary_stored_value_is_skipped_and_counted() {
    let redis = redis_or_skip!("a_binary_stored_value_is_skipped_and_counted");
    fill(&redis, 3).await;
    let generation: String = redis.cmd(&["GET", "fleet-test:gen"]).await;
    let _: () = redis::cmd("SET")
        .arg(format!("fleet-test:k:{generation}:http://h.test/bin"))
        .arg(&b"\xff\xfe\x00binary"[..])
        .query_async(&mut redis.admin().await)
        .await
        .unwrap();
    let late = node();
    let fl = late.start(tier(&redis.url()));
    wait_until(Duration::from_secs(5), || fl.stats().warmed >= 3).await;
    wait_until(Duration::from_secs(5), || {
        fl.stats().rejected.malformed >= 1
    })
    .await;
    assert_eq!(fl.stats().rejected.malformed, 1, "{:?}", fl.stats());
}

/// Item 11: a warmed-up 404 keeps its age.
#[tokio::test]
async fn a_warmed_up_404_keeps_its_age() {
    let redis = redis_or_skip!("a_warmed_up_404_keeps_its_age");
    let origin = origin().await;
    let a = node();
    let fa = a.start(tier(&redis.url()));
    connected(&fa).await;
    let url = origin.url("/records/aged");
    a.get(&url).await;
    wait_until(Duration::from_secs(5), || fa.stats().published >= 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let late = node();
    let fl = late.start(tier(&redis.url()));
    wait_until(Duration::from_secs(5), || fl.stats().warmed >= 1).await;
    let res = late.send(Method::GET, &url).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let age: u64 = res.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!(age >= 2, "age {age}");
}
