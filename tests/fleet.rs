//! Fleet: replicas share what is missing through a real `redis-server` (started by the test on
//! a free loopback port; `redis-server` must be on PATH).

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
use tower_negative_cache::cache::{NegativeCache, NegativeCacheHandle, NegativeCacheHit};
use tower_negative_cache::fleet::{Fleet, FleetBuilder, StartErrorKind};
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

use redis_support::RedisServer;
use support::{Reply, TestServer};

type Stack = NegativeCache<
    tower_negative_cache::retry::StatusAwareRetry<Client<HttpConnector, Empty<Bytes>>>,
>;

/// A replica: its own cache, retry layer and client, and its fleet tier.
struct Replica {
    client: Stack,
    cache: NegativeCacheHandle,
    fleet: Fleet,
}

fn replica(redis_url: &str) -> Replica {
    replica_with(redis_url, |b| b)
}

/// A replica whose tier's builder `tier` adjusts.
fn replica_with(redis_url: &str, tier: impl FnOnce(FleetBuilder) -> FleetBuilder) -> Replica {
    let cache = NegativeCacheLayer::builder()
        .ttl(Duration::from_secs(60))
        .max_ttl(Duration::from_secs(120))
        .build()
        .unwrap();
    let fleet = Fleet::builder(redis_url)
        .prefix("fleet-test")
        .reconnect(Duration::from_millis(20), Duration::from_millis(200))
        .timeout(Duration::from_millis(300));
    let fleet = tier(fleet).start(&cache).unwrap();
    let retry = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(cache.clone())
        .layer(retry)
        .service(support::client());
    Replica {
        client,
        cache: cache.handle(),
        fleet,
    }
}

impl Replica {
    async fn get(
        &self,
        url: &str,
    ) -> http::Response<tower_negative_cache::cache::ResponseBody<hyper::body::Incoming>> {
        let req = Request::get(url).body(Empty::new()).unwrap();
        self.client
            .clone()
            .oneshot(req)
            .await
            .expect("an answer, Redis or not")
    }

    async fn put(&self, url: &str) -> StatusCode {
        let req = Request::builder()
            .method(Method::PUT)
            .uri(url)
            .body(Empty::new())
            .unwrap();
        self.client
            .clone()
            .oneshot(req)
            .await
            .expect("an answer")
            .status()
    }

    async fn wait_connected(&self) {
        wait_until(Duration::from_secs(5), || self.fleet.stats().connected).await;
    }
}

/// Polls `f` every millisecond until it holds; how long that took. Panics after `limit`.
async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    t.elapsed()
}

async fn origin() -> TestServer {
    TestServer::builder()
        .handler(|r| {
            let present = r.path.starts_with("/present/") || r.method != Method::GET;
            Some(if present {
                Reply::ok("here")
            } else {
                Reply::status(404)
            })
        })
        .start()
        .await
}

#[tokio::test]
async fn a_404_seen_by_one_replica_costs_the_others_nothing() {
    let Some(redis) = RedisServer::try_start("a_404_seen_by_one_replica_costs_the_others_nothing")
    else {
        return;
    };
    let origin = origin().await;
    let (a, b) = (replica(&redis.url()), replica(&redis.url()));
    a.wait_connected().await;
    b.wait_connected().await;

    let url = origin.url("/records/k1");
    assert_eq!(a.get(&url).await.status(), StatusCode::NOT_FOUND);
    let uri: Uri = url.parse().unwrap();
    let took = wait_until(Duration::from_millis(100), || b.cache.peek(&uri).is_some()).await;
    println!("propagated to replica B in {took:?}");

    let res = b.get(&url).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(
        res.extensions().get::<NegativeCacheHit>().is_some(),
        "B answered from its cache"
    );
    assert_eq!(
        origin.hits("/records/k1"),
        1,
        "one upstream 404 for two replicas"
    );
    assert_eq!(b.fleet.stats().learned, 1);
    // B can learn before A has counted its publish.
    wait_until(Duration::from_secs(2), || a.fleet.stats().published >= 1).await;
    assert_eq!(a.fleet.stats().published, 1);
    assert_eq!(
        a.fleet.stats().learned,
        0,
        "a replica ignores its own messages"
    );
}

#[tokio::test]
async fn invalidation_on_one_replica_reaches_the_others() {
    let Some(redis) = RedisServer::try_start("invalidation_on_one_replica_reaches_the_others")
    else {
        return;
    };
    let origin = origin().await;
    let (a, b) = (replica(&redis.url()), replica(&redis.url()));
    a.wait_connected().await;
    b.wait_connected().await;
    let uri: Uri = origin.url("/records/k2").parse().unwrap();

    a.get(&uri.to_string()).await;
    wait_until(Duration::from_millis(100), || b.cache.peek(&uri).is_some()).await;
    assert!(a.cache.invalidate_uri(&uri));
    wait_until(Duration::from_millis(100), || b.cache.peek(&uri).is_none()).await;

    // A successful write through B is forgotten on A as well. (Another key: for a second
    // after A forgot k2, A refuses peers' 404s for it, as their requests may have left before.)
    let uri: Uri = origin.url("/records/k3").parse().unwrap();
    b.get(&uri.to_string()).await;
    wait_until(Duration::from_millis(100), || a.cache.peek(&uri).is_some()).await;
    assert_eq!(b.put(&uri.to_string()).await, StatusCode::OK);
    wait_until(Duration::from_millis(100), || a.cache.peek(&uri).is_none()).await;
    assert!(b.fleet.stats().forgotten >= 1 && a.fleet.stats().forgotten >= 1);
}

#[tokio::test]
async fn requests_work_while_redis_is_down_and_sharing_resumes_when_it_is_back() {
    let Some(mut redis) = RedisServer::try_start(
        "requests_work_while_redis_is_down_and_sharing_resumes_when_it_is_back",
    ) else {
        return;
    };
    let origin = origin().await;
    let (a, b) = (replica(&redis.url()), replica(&redis.url()));
    a.wait_connected().await;
    b.wait_connected().await;

    redis.stop();
    wait_until(Duration::from_secs(2), || !a.fleet.stats().connected).await;
    for i in 0..10 {
        let present = origin.url(&format!("/present/{i}"));
        let missing = origin.url(&format!("/records/down-{i}"));
        for r in [&a, &b] {
            assert_eq!(r.get(&present).await.status(), StatusCode::OK);
            assert_eq!(r.get(&missing).await.status(), StatusCode::NOT_FOUND);
        }
    }
    // The events queued while Redis was down fail (counted), and never reach a request.
    wait_until(Duration::from_secs(2), || {
        a.fleet.stats().publish_failures > 0
    })
    .await;

    redis.restart();
    a.wait_connected().await;
    b.wait_connected().await;
    assert!(a.fleet.stats().reconnects >= 1);
    // The publisher reconnects on its next event; allow it one backoff.
    let shared = async {
        for i in 0..50 {
            let uri: Uri = origin.url(&format!("/records/after-{i}")).parse().unwrap();
            a.get(&uri.to_string()).await;
            if wait_until_soft(Duration::from_millis(100), || b.cache.peek(&uri).is_some()).await {
                return true;
            }
        }
        false
    };
    assert!(
        shared.await,
        "sharing resumed: {:?} / {:?}",
        a.fleet.stats(),
        b.fleet.stats()
    );
}

async fn wait_until_soft(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

#[tokio::test]
async fn malformed_messages_are_ignored_and_counted() {
    let Some(redis) = RedisServer::try_start("malformed_messages_are_ignored_and_counted") else {
        return;
    };
    let origin = origin().await;
    let b = replica(&redis.url());
    b.wait_connected().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for garbage in [
        &b"hello"[..],
        b"tnc3 - 0000000000000001 1 0 m 404 0 0 k\0k\n\n",
        b"\xff\xfe\xfd",
        b"",
    ] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("fleet-test:db0:events")
            .arg(garbage)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    wait_until(Duration::from_secs(1), || {
        b.fleet.stats().rejected.malformed == 4
    })
    .await;
    assert_eq!(b.cache.stats().len, 0);
    // And the replica still works and still shares.
    assert_eq!(
        b.get(&origin.url("/records/x")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(b.fleet.stats().learned, 0);
}

#[tokio::test]
async fn a_late_replica_warms_up_from_redis() {
    let Some(redis) = RedisServer::try_start("a_late_replica_warms_up_from_redis") else {
        return;
    };
    let origin = origin().await;
    let a = replica(&redis.url());
    a.wait_connected().await;
    for i in 0..20 {
        a.get(&origin.url(&format!("/records/early-{i}"))).await;
    }
    wait_until(Duration::from_secs(2), || a.fleet.stats().published == 20).await;

    let late = replica(&redis.url());
    wait_until(Duration::from_secs(2), || late.fleet.stats().warmed == 20).await;
    let uri: Uri = origin.url("/records/early-7").parse().unwrap();
    let hit = late.cache.peek(&uri).expect("warmed");
    assert!(hit.remaining > Duration::from_secs(50) && hit.remaining <= Duration::from_secs(60));
    assert_eq!(
        late.get(&uri.to_string()).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(origin.hits("/records/early-7"), 1);
}

#[tokio::test]
async fn an_unreachable_redis_changes_nothing_for_requests() {
    let origin = origin().await;
    let addr = support::refused_addr();
    let a = replica(&format!("redis://{addr}"));
    let url = origin.url("/records/alone");
    for _ in 0..3 {
        assert_eq!(a.get(&url).await.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(
        origin.hits("/records/alone"),
        1,
        "the local cache still works"
    );
    let s = a.fleet.stats();
    assert!(!s.connected);
    wait_until(Duration::from_secs(2), || {
        a.fleet.stats().publish_failures == 1
    })
    .await;
}

#[tokio::test]
async fn an_idle_subscription_stays_up() {
    let Some(redis) = RedisServer::try_start("an_idle_subscription_stays_up") else {
        return;
    };
    let origin = origin().await;
    let (a, b) = (replica(&redis.url()), replica(&redis.url()));
    a.wait_connected().await;
    b.wait_connected().await;
    // Longer than the keepalive (5 s): the PING must not break the subscription.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(b.fleet.stats().reconnects, 0, "{:?}", b.fleet.stats());
    assert!(b.fleet.stats().connected);
    let url = origin.url("/records/after-idle");
    a.get(&url).await;
    let uri: Uri = url.parse().unwrap();
    wait_until(Duration::from_millis(100), || b.cache.peek(&uri).is_some()).await;
}

#[tokio::test]
async fn a_dropped_tier_can_be_replaced() {
    let Some(redis) = RedisServer::try_start("a_dropped_tier_can_be_replaced") else {
        return;
    };
    let cache = NegativeCacheLayer::new();
    let first = Fleet::builder(redis.url()).start(&cache).unwrap();
    let err = Fleet::builder(redis.url()).start(&cache).unwrap_err();
    assert_eq!(
        err.kind(),
        StartErrorKind::AlreadyStarted,
        "one tier at a time: {err}"
    );
    drop(first);
    let second = Fleet::builder(redis.url()).start(&cache).unwrap();
    wait_until(Duration::from_secs(2), || second.stats().connected).await;
}

#[test]
fn a_tier_outside_a_runtime_or_with_a_bad_url_does_not_start() {
    let cache = NegativeCacheLayer::new();
    let err = Fleet::builder("redis://127.0.0.1:1")
        .start(&cache)
        .unwrap_err();
    assert_eq!(err.kind(), StartErrorKind::NoRuntime, "{err}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _in = rt.enter();
    let err = Fleet::builder("not a url").start(&cache).unwrap_err();
    assert_eq!(err.kind(), StartErrorKind::Url, "{err}");
    assert!(
        err.to_string().starts_with("fleet tier not started: "),
        "{err}"
    );
}

#[tokio::test]
async fn a_secret_too_short_or_too_long_is_refused_at_start() {
    let cache = NegativeCacheLayer::new();
    for secret in [vec![b'x'; 15], vec![b'x'; 1025]] {
        let err = Fleet::builder("redis://127.0.0.1:1")
            .secret(&secret)
            .start(&cache)
            .unwrap_err();
        assert_eq!(err.kind(), StartErrorKind::Setting, "{err}");
        assert_eq!(err.invalid_setting(), Some("secret"), "{err}");
    }
    let ok = Fleet::builder("redis://127.0.0.1:1")
        .secret([7u8; 16])
        .start(&cache);
    assert!(ok.is_ok());
    // Neither the secret nor the Redis password shows when the builder is logged.
    let shown = format!(
        "{:?}",
        Fleet::builder("redis://fleet:hunter2-pass@127.0.0.1:1/0").secret("the-secret-value-123")
    );
    assert!(
        !shown.contains("hunter2") && !shown.contains("the-secret"),
        "{shown}"
    );
    assert!(shown.contains("redis://fleet:***@127.0.0.1:1/0"), "{shown}");
}

/// Publishes raw payloads on the test tier's channel, as a hostile or broken publisher would.
async fn publish_raw(redis: &RedisServer, payloads: &[Vec<u8>]) {
    let client = redis::Client::open(redis.admin_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for p in payloads {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("fleet-test:db0:events")
            .arg(p.as_slice())
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// A Missing message in the wire format of this version, as a peer would send it: its
/// request left `age_ms` ago, `ttl_ms` are left of it.
fn missing_msg(seq: u64, status: u16, ttl_ms: u64, age_ms: u64, key: &str) -> Vec<u8> {
    format!("tnc3 - 0000000000000001 {seq} 0 m {status} {ttl_ms} {age_ms} {key}\0k\n\n")
        .into_bytes()
}

#[tokio::test]
async fn a_hostile_publisher_cannot_take_records_offline() {
    let Some(redis) = RedisServer::try_start("a_hostile_publisher_cannot_take_records_offline")
    else {
        return;
    };
    let b = replica(&redis.url());
    b.wait_connected().await;
    let k = |i: u32| format!("http://h.test/r/{i}");
    let long_key = format!("http://h.test/{}", "x".repeat(10 * 1024));
    let payloads = vec![
        // Statuses this replica's classifier does not call Missing.
        missing_msg(1, 503, 86_400_000, 0, &k(1)),
        missing_msg(2, 200, 60_000, 0, &k(2)),
        missing_msg(3, 500, 60_000, 0, &k(3)),
        // A key longer than the bound.
        missing_msg(4, 404, 60_000, 0, &long_key),
        // Garbage.
        b"tnc3 - zzzzzzzzzzzzzzzz 1 0 m 404 1000 0 k\0k\n\n".to_vec(),
        vec![0xff; 100],
        // The previous version: no age, so it cannot be ordered.
        format!("tnc1 0000000000000001 m 404 60000 {}", k(4)).into_bytes(),
        // A 404 from a request that left a minute before it was published.
        missing_msg(5, 404, 60_000, 60_000, &k(5)),
        // A copy of an earlier message played again.
        missing_msg(5, 404, 60_000, 0, &k(6)),
        missing_msg(2, 404, 60_000, 0, &k(6)),
    ];
    publish_raw(&redis, &payloads).await;
    // A huge TTL is clamped to this replica's max_ttl (120 s).
    publish_raw(&redis, &[missing_msg(6, 404, u64::MAX / 2, 0, &k(9))]).await;
    let uri9: Uri = k(9).parse().unwrap();
    wait_until(Duration::from_secs(2), || b.cache.peek(&uri9).is_some()).await;
    let hit = b.cache.peek(&uri9).unwrap();
    assert!(hit.remaining <= Duration::from_secs(120), "{hit:?}");
    for i in 1..=6 {
        assert!(b.cache.peek(&k(i).parse().unwrap()).is_none(), "key {i}");
    }
    assert!(b.cache.peek(&long_key.parse().unwrap()).is_none());
    assert_eq!(b.cache.stats().len, 1, "{:?}", b.fleet.stats());
    let s = b.fleet.stats();
    assert_eq!(
        (
            s.rejected.status,
            s.rejected.oversized,
            s.rejected.malformed
        ),
        (3, 1, 2),
        "{s:?}"
    );
    assert_eq!((s.learned, s.clamped), (1, 1), "{s:?}");
}

/// An origin where `/records/*` is missing until a PUT creates it (answered 201).
async fn writable_origin() -> TestServer {
    let created = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    TestServer::builder()
        .handler(move |r| {
            let mut created = created.lock().unwrap();
            Some(if r.method == Method::PUT {
                created.insert(r.path.clone());
                Reply::status(201)
            } else if created.contains(&r.path) {
                Reply::ok("here")
            } else {
                Reply::status(404)
            })
        })
        .start()
        .await
}

#[tokio::test]
async fn a_peers_stale_404_does_not_undo_a_local_put() {
    let Some(redis) = RedisServer::try_start("a_peers_stale_404_does_not_undo_a_local_put") else {
        return;
    };
    let proxy = redis_support::StallProxy::start(redis.port).await;
    let origin = writable_origin().await;
    // B reaches Redis through a proxy that can stall it: its publish queue backs up.
    let (a, b) = (replica(&redis.url()), replica(&proxy.url()));
    a.wait_connected().await;
    b.wait_connected().await;
    let url = origin.url("/records/w1");
    let uri: Uri = url.parse().unwrap();

    proxy.hold(true);
    assert_eq!(b.get(&url).await.status(), StatusCode::NOT_FOUND);
    // The record is created through A after B's 404, and before B's message reaches anyone.
    assert_eq!(a.put(&url).await, StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(50)).await;
    proxy.hold(false);
    wait_until(Duration::from_secs(2), || a.fleet.stats().received >= 1).await;

    assert!(a.cache.peek(&uri).is_none(), "{:?}", a.fleet.stats());
    assert_eq!(a.fleet.stats().rejected.superseded, 1);
    assert_eq!(a.get(&url).await.status(), StatusCode::OK);
    // B forgets its own 404 when A's forget reaches it.
    wait_until(Duration::from_secs(2), || b.cache.peek(&uri).is_none()).await;
}

#[tokio::test]
async fn warm_up_after_a_forget_does_not_resurrect_the_entry() {
    let Some(redis) = RedisServer::try_start("warm_up_after_a_forget_does_not_resurrect_the_entry")
    else {
        return;
    };
    let proxy = redis_support::StallProxy::start(redis.port).await;
    let origin = writable_origin().await;
    let (a, b) = (replica(&redis.url()), replica(&proxy.url()));
    a.wait_connected().await;
    b.wait_connected().await;
    let url = origin.url("/records/w2");

    proxy.hold(true);
    assert_eq!(b.get(&url).await.status(), StatusCode::NOT_FOUND);
    // A forgets the key (say the record was created out of band) while B's copy is on its way:
    // B's stored copy reaches Redis after A's forget did.
    a.cache.invalidate(&url);
    wait_until(Duration::from_secs(2), || a.fleet.stats().published >= 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    proxy.hold(false);
    wait_until(Duration::from_secs(2), || {
        b.fleet.stats().published + b.fleet.stats().publish_failures >= 1
    })
    .await;
    // A marker the late replica does warm up, so we know when its warm-up is over.
    a.get(&origin.url("/records/marker")).await;
    wait_until(Duration::from_secs(2), || a.fleet.stats().published >= 2).await;

    let late = replica(&redis.url());
    wait_until(Duration::from_secs(2), || late.fleet.stats().warmed >= 1).await;
    assert!(
        late.cache.peek(&url.parse().unwrap()).is_none(),
        "{:?}",
        late.fleet.stats()
    );
    assert_eq!(late.fleet.stats().warmed, 1);
    assert!(a.cache.peek(&url.parse().unwrap()).is_none());
}

/// Writes `n` stored copies of 404s straight into Redis, in the tier's layout (under the
/// current generation), as `n` publishes would have (much faster than through requests).
async fn fill_stored(redis: &RedisServer, n: u64) {
    const FILL: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gen = redis.call('GET', 'fleet-test:gen')
if not gen then
  gen = string.format('%d', now - 10000)
  redis.call('SET', 'fleet-test:gen', gen)
end
local prefix = KEYS[1] .. gen .. ':http://h.test/r/'
for i = 1, tonumber(ARGV[1]) do
  redis.call('SET', prefix .. i, 'm ' .. now .. ' 60000 404', 'PX', 60000)
end
return 1
";
    let client = redis::Client::open(redis.url()).unwrap();
    // Filling takes a while on a busy machine: no response timeout.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let _: i64 = redis::cmd("EVAL")
        .arg(FILL)
        .arg(1)
        .arg("fleet-test:k:")
        .arg(n)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_clear_is_complete_whatever_redis_holds() {
    let Some(redis) = RedisServer::try_start("a_clear_is_complete_whatever_redis_holds") else {
        return;
    };
    let a = replica(&redis.url());
    a.wait_connected().await;
    fill_stored(&redis, 150_000).await;
    a.cache.clear();
    wait_until(Duration::from_secs(5), || {
        let s = a.fleet.stats();
        s.published + s.publish_failures >= 1
    })
    .await;
    assert_eq!(a.fleet.stats().published, 1, "{:?}", a.fleet.stats());
    // What is stored after the clear is warmed up, and nothing from before.
    fill_stored(&redis, 5).await;
    let late = Fleet::builder(redis.url())
        .prefix("fleet-test")
        .warm(1_000_000)
        .timeout(Duration::from_millis(300))
        .start(&NegativeCacheLayer::new())
        .unwrap();
    wait_until(Duration::from_secs(5), || late.stats().warmed >= 5).await;
    // Warm-up has no end marker: give it time to read anything else it would.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(late.stats().warmed, 5, "{:?}", late.stats());
}

#[tokio::test]
async fn a_slow_redis_never_makes_the_tier_drop_a_forget() {
    let Some(redis) = RedisServer::try_start("a_slow_redis_never_makes_the_tier_drop_a_forget")
    else {
        return;
    };
    let proxy = redis_support::StallProxy::start(redis.port).await;
    let origin = origin().await;
    let (a, b) = (replica(&proxy.url()), replica(&redis.url()));
    a.wait_connected().await;
    b.wait_connected().await;
    let uri: Uri = origin.url("/records/f1").parse().unwrap();
    a.get(&uri.to_string()).await;
    wait_until(Duration::from_secs(2), || b.cache.peek(&uri).is_some()).await;

    // Redis is slow for A: the next publish times out, and A backs off.
    proxy.hold(true);
    a.get(&origin.url("/records/f2")).await;
    // The forget is queued behind the slow publish, and reaches the queue's head during the
    // backoff that follows it.
    assert!(a.cache.invalidate_uri(&uri));
    wait_until(Duration::from_secs(2), || {
        a.fleet.stats().publish_failures >= 1
    })
    .await;
    proxy.hold(false);
    wait_until(Duration::from_secs(5), || b.cache.peek(&uri).is_none()).await;
    // The 404 for f2 was dropped; the forget went through once Redis answered again (B can
    // act on it before A has counted it: wait for the count too).
    wait_until(Duration::from_secs(2), || a.fleet.stats().published >= 2).await;
    assert_eq!(a.fleet.stats().published, 2, "{:?}", a.fleet.stats());
}

const SECRET: &str = "a secret all replicas share";

#[tokio::test]
async fn with_a_secret_only_signed_messages_are_applied() {
    let Some(redis) = RedisServer::try_start("with_a_secret_only_signed_messages_are_applied")
    else {
        return;
    };
    let origin = origin().await;
    let signed = |r: &str| replica_with(r, |b| b.secret(SECRET));
    let (a, b) = (signed(&redis.url()), signed(&redis.url()));
    let other = replica_with(&redis.url(), |b| b.secret("another secret, another fleet"));
    for r in [&a, &b, &other] {
        r.wait_connected().await;
    }
    // Listen as an outsider would, to replay what A sends.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut spy = client.get_async_pubsub().await.unwrap();
    spy.subscribe("fleet-test:db0:events").await.unwrap();
    let mut spied = spy.on_message();

    // Signed by the shared secret: applied.
    let url = origin.url("/records/s1");
    a.get(&url).await;
    wait_until(Duration::from_secs(2), || b.fleet.stats().learned == 1).await;
    let genuine: Vec<u8> = {
        use futures_util::StreamExt;
        spied.next().await.unwrap().get_payload_bytes().to_vec()
    };
    assert!(genuine.starts_with(b"tnc3 "));
    assert!(!genuine.starts_with(b"tnc3 - "), "signed");

    let k = |i: u32| format!("http://h.test/s/{i}");
    let forged_mac = format!(
        "tnc3 {} 0000000000000009 1 0 m 404 60000 0 {}\0k\n\n",
        "0".repeat(64),
        k(2)
    );
    publish_raw(
        &redis,
        &[
            // Unsigned.
            missing_msg(1, 404, 60_000, 0, &k(1)),
            // A MAC that is not the secret's.
            forged_mac.into_bytes(),
            // A genuine message played again.
            genuine,
        ],
    )
    .await;
    // Signed by another fleet's secret.
    other.get(&origin.url("/records/s3")).await;
    wait_until(Duration::from_secs(2), || {
        let r = b.fleet.stats().rejected;
        r.unsigned + r.signature + r.replayed >= 4
    })
    .await;
    let r = b.fleet.stats().rejected;
    assert_eq!((r.unsigned, r.signature, r.replayed), (1, 2, 1), "{r:?}");
    assert_eq!(b.fleet.stats().learned, 1);
    for uri in [k(1), k(2), origin.url("/records/s3")] {
        assert!(b.cache.peek(&uri.parse().unwrap()).is_none(), "{uri}");
    }
    // The other fleet ignores this one's messages alike.
    assert_eq!(other.fleet.stats().learned, 0);
    assert!(other.fleet.stats().rejected.signature >= 1);
}

#[tokio::test]
async fn with_a_secret_unsigned_stored_copies_do_not_warm_anyone_up() {
    let Some(redis) =
        RedisServer::try_start("with_a_secret_unsigned_stored_copies_do_not_warm_anyone_up")
    else {
        return;
    };
    let origin = origin().await;
    let a = replica_with(&redis.url(), |b| b.secret(SECRET));
    a.wait_connected().await;
    // Written into Redis by someone without the secret.
    fill_stored(&redis, 3).await;
    // Signed by A.
    a.get(&origin.url("/records/w")).await;
    wait_until(Duration::from_secs(2), || a.fleet.stats().published == 1).await;
    let late = replica_with(&redis.url(), |b| b.secret(SECRET));
    wait_until(Duration::from_secs(2), || {
        let s = late.fleet.stats();
        s.warmed + s.rejected.unsigned >= 4
    })
    .await;
    let s = late.fleet.stats();
    assert_eq!((s.warmed, s.rejected.unsigned), (1, 3), "{s:?}");
}

#[tokio::test]
async fn a_password_or_acl_user_in_the_url_works_and_a_wrong_one_is_reported() {
    let Some(redis) = RedisServer::try_start_with_password(
        "a_password_or_acl_user_in_the_url_works_and_a_wrong_one_is_reported",
        "a password long enough",
    ) else {
        return;
    };
    // An ACL user limited to the tier's keys and channel.
    let admin = redis::Client::open(redis.admin_url()).unwrap();
    let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "fleet",
            "on",
            ">fleet-pass",
            "~fleet-test:*",
            "&fleet-test:*",
        ])
        .arg(&["+@all", "-@dangerous"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let origin = origin().await;
    let a = replica(&redis.url_as("", "a password long enough"));
    let b = replica(&redis.url_as("fleet", "fleet-pass"));
    a.wait_connected().await;
    b.wait_connected().await;
    let url = origin.url("/records/acl");
    a.get(&url).await;
    wait_until(Duration::from_secs(2), || b.fleet.stats().learned == 1).await;
    b.cache.invalidate(&url);
    wait_until(Duration::from_secs(2), || {
        a.cache.peek(&url.parse().unwrap()).is_none()
    })
    .await;

    // A wrong password, and none: requests carry on, and the tier says why it is not sharing.
    for url in [redis.url_as("", "wrong"), redis.url()] {
        let c = replica(&url);
        let missing = origin.url(&format!("/records/alone-{}", url.len()));
        for _ in 0..2 {
            assert_eq!(c.get(&missing).await.status(), StatusCode::NOT_FOUND);
        }
        assert_eq!(
            origin.hits(&missing[missing.find("/records").unwrap()..]),
            1
        );
        wait_until(Duration::from_secs(2), || {
            c.fleet.stats().auth_failures >= 2
        })
        .await;
        assert!(!c.fleet.stats().connected);
        assert_eq!(c.fleet.stats().published, 0);
    }
}

#[tokio::test]
async fn a_peers_404_learned_while_a_read_was_out_goes_when_its_2xx_lands() {
    let Some(redis) =
        RedisServer::try_start("a_peers_404_learned_while_a_read_was_out_goes_when_its_2xx_lands")
    else {
        return;
    };
    let origin = TestServer::builder()
        .handler(|_| Some(Reply::ok("here").delay(Duration::from_millis(300))))
        .start()
        .await;
    let a = replica(&redis.url());
    a.wait_connected().await;
    let url = origin.url("/records/r1");
    let read = {
        let a_client = a.client.clone();
        let req = Request::get(url.as_str()).body(Empty::new()).unwrap();
        tokio::spawn(async move { a_client.oneshot(req).await.unwrap().status() })
    };
    // While A's read is out, a peer says the key is missing.
    wait_until(Duration::from_secs(2), || origin.total_hits() == 1).await;
    publish_raw(&redis, &[missing_msg(1, 404, 60_000, 0, &url)]).await;
    wait_until(Duration::from_secs(2), || a.fleet.stats().learned == 1).await;
    // A's own answer is newer, and present: the peer's 404 must not outlive it.
    assert_eq!(read.await.unwrap(), StatusCode::OK);
    assert!(a.cache.peek(&url.parse().unwrap()).is_none());
}

/// Invariant 12 through the fleet: a peer's hit is the origin's answer — its end-to-end fields
/// and its kept body, signed with the fleet's secret — never one exchange's `Set-Cookie`; and
/// a body the first replica did not keep whole reaches the peer head-only.
#[tokio::test]
async fn a_peers_hit_is_the_origins_answer() {
    let Some(redis) = RedisServer::try_start("a_peers_hit_is_the_origins_answer") else {
        return;
    };
    const JSON: &str = r#"{"error":"not_found","code":4040}"#;
    let origin = TestServer::builder()
        .handler(|r| {
            Some(if r.path == "/page" {
                Reply::status(404)
                    .header("content-type", "text/html")
                    .body(vec![b'x'; 16 * 1024])
            } else {
                Reply::status(404)
                    .header("content-type", "application/json")
                    .header("x-error-code", "4040")
                    .header("set-cookie", "sid=1")
                    .body(JSON)
            })
        })
        .start()
        .await;
    let secret = "a-fleet-secret-of-some-length";
    let a = replica_with(&redis.url(), |b| b.secret(secret));
    let b = replica_with(&redis.url(), |b| b.secret(secret));
    a.wait_connected().await;
    b.wait_connected().await;

    let url = origin.url("/records/j1");
    let res = a.get(&url).await;
    assert_eq!(support::body_bytes(res).await, JSON.as_bytes());
    let uri: Uri = url.parse().unwrap();
    wait_until(Duration::from_secs(5), || b.cache.peek(&uri).is_some()).await;
    assert!(b.cache.peek(&uri).unwrap().body_kept);
    let res = b.get(&url).await;
    let hit = *res
        .extensions()
        .get::<NegativeCacheHit>()
        .expect("a hit on B");
    assert!(hit.body_kept);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["x-error-code"], "4040");
    assert!(res.headers().get("set-cookie").is_none());
    let length = res.headers()["content-length"].clone();
    let body = support::body_bytes(res).await;
    assert_eq!(body, JSON.as_bytes());
    assert_eq!(length, JSON.len().to_string().as_str());
    assert_eq!(origin.hits("/records/j1"), 1);

    // Over the body limit on A: head-only there, and so on B.
    let page = origin.url("/page");
    assert_eq!(
        support::body_bytes(a.get(&page).await).await.len(),
        16 * 1024
    );
    let page_uri: Uri = page.parse().unwrap();
    wait_until(Duration::from_secs(5), || b.cache.peek(&page_uri).is_some()).await;
    let res = b.get(&page).await;
    let hit = *res
        .extensions()
        .get::<NegativeCacheHit>()
        .expect("a hit on B");
    assert!(!hit.body_kept);
    assert!(res.headers().get("content-type").is_none());
    assert!(support::body_bytes(res).await.is_empty());
    assert_eq!(origin.hits("/page"), 1);
    assert_eq!(b.fleet.stats().learned, 2);
}

/// The adaptive TTL's streak travels with a peer's message: a replica that learned a key
/// confirmed twice elsewhere grows its own next lifetime from there (base × 2^3), not from
/// the base.
#[tokio::test]
async fn a_peers_adaptive_streak_carries_on_here() {
    use tower_negative_cache::cache::TtlSource;
    let Some(redis) = RedisServer::try_start("a_peers_adaptive_streak_carries_on_here") else {
        return;
    };
    let origin = origin().await;
    let cache = NegativeCacheLayer::builder()
        .ttl(Duration::from_secs(10))
        .max_ttl(Duration::from_secs(3600))
        .adaptive_ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let fleet = Fleet::builder(redis.url())
        .prefix("fleet-test")
        .reconnect(Duration::from_millis(20), Duration::from_millis(200))
        .timeout(Duration::from_millis(300))
        .start(&cache)
        .unwrap();
    let b = Replica {
        client: ServiceBuilder::new()
            .layer(cache.clone())
            .layer(StatusAwareRetryLayer::new())
            .service(support::client()),
        cache: cache.handle(),
        fleet,
    };
    b.wait_connected().await;
    let url = origin.url("/records/streak");
    let uri: Uri = url.parse().unwrap();
    // A peer confirmed it twice in a row (`m2`); 300 ms are left of its entry.
    let msg = format!("tnc3 - 0000000000000001 1 0 m2 404 300 0 {url}\0k\n\n");
    publish_raw(&redis, &[msg.into_bytes()]).await;
    wait_until(Duration::from_secs(5), || b.cache.peek(&uri).is_some()).await;
    assert_eq!(b.cache.peek(&uri).unwrap().ttl_source, TtlSource::Peer);
    // The peer's entry expires; this replica asks the origin, which confirms once more.
    wait_until(Duration::from_secs(5), || b.cache.peek(&uri).is_none()).await;
    assert_eq!(b.get(&url).await.status(), StatusCode::NOT_FOUND);
    let hit = b.cache.peek(&uri).unwrap();
    assert_eq!(hit.ttl_source, TtlSource::Learned { confirmed: 3 });
    // 10 s × 2^3, less the age the origin's `Date` gives the answer on arrival (< 1 s).
    assert!(
        hit.ttl > Duration::from_secs(78) && hit.ttl <= Duration::from_secs(80),
        "{hit:?}"
    );
}
