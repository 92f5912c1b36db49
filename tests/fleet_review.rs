//! Fleet: the promises of the README's fleet section that the second adversarial review broke,
//! each held against a real `redis-server` (started by the test on a free loopback port).

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

use redis_support::{RedisServer, StallProxy};
use support::{Reply, TestServer};

type Stack = NegativeCache<Client<HttpConnector, Empty<Bytes>>>;

struct Replica {
    client: Stack,
    cache: NegativeCacheHandle,
    fleet: Fleet,
}

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
    let client = ServiceBuilder::new()
        .layer(cache.clone())
        .service(support::client());
    Replica {
        client,
        cache: cache.handle(),
        fleet,
    }
}

impl Replica {
    async fn get(&self, url: &str) -> StatusCode {
        let req = Request::get(url).body(Empty::new()).unwrap();
        self.client.clone().oneshot(req).await.unwrap().status()
    }

    async fn wait_connected(&self) {
        wait_until(Duration::from_secs(5), || self.fleet.stats().connected).await;
    }
}

/// Polls `f` every millisecond until it holds. Panics after `limit` (generous: the machine is
/// shared and loaded; a limit only bounds a failing run).
async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether `f` comes to hold within `limit`.
async fn soon(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f()
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

async fn publish(redis: &RedisServer, msg: String) {
    let _: i64 = redis::cmd("PUBLISH")
        .arg("fleet-test:db0:events")
        .arg(msg)
        .query_async(&mut redis.admin().await)
        .await
        .unwrap();
}

/// README (fleet): "A slow or failing Redis never makes the tier drop a forget or a clear".
/// While the publisher is stuck in a slow command, ordinary misses fill the bounded event
/// queue; a forget that comes then must still reach the peers (the queue being full turns
/// into one clear, never into nothing).
#[tokio::test]
async fn a_slow_redis_and_a_busy_replica_never_drop_a_forget() {
    let Some(redis) = RedisServer::try_start("a_slow_redis_and_a_busy_replica_never_drop_a_forget")
    else {
        return;
    };
    let proxy = StallProxy::start(redis.port).await;
    let origin = origin().await;
    // A long command timeout: the publish stays stuck while the misses below fill the queue,
    // however slow this machine is.
    let a = replica_with(&proxy.url(), |b| b.queue(4).timeout(Duration::from_secs(5)));
    let b = replica_with(&redis.url(), |b| b);
    a.wait_connected().await;
    b.wait_connected().await;
    let uri: Uri = origin.url("/records/q1").parse().unwrap();
    a.get(&uri.to_string()).await;
    wait_until(Duration::from_secs(5), || b.cache.peek(&uri).is_some()).await;

    // Redis is slow for A, and A keeps serving traffic: misses queue up behind the stalled
    // publish.
    proxy.hold(true);
    for i in 0..10 {
        a.get(&origin.url(&format!("/records/busy-{i}"))).await;
    }
    // Then the record is created: A forgets it and must tell B.
    assert!(a.cache.invalidate_uri(&uri));
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.hold(false);
    assert!(
        soon(Duration::from_secs(10), || b.cache.peek(&uri).is_none()).await,
        "B still serves the stale 404 after A forgot it; A's stats: {:?}",
        a.fleet.stats()
    );
    assert!(a.fleet.stats().queue_full >= 1, "{:?}", a.fleet.stats());
}

/// README (fleet): "A late replica never warms up ... anything stored before a clear, whatever
/// Redis holds", with a secret even against someone who can write to Redis: a stored copy's MAC
/// covers the generation it was stored under, so moving it past a clear (a `RENAME`) makes it
/// refused.
#[tokio::test]
async fn with_a_secret_a_copy_from_before_a_clear_cannot_be_moved_past_it() {
    const SECRET: &str = "a secret all replicas share";
    let Some(redis) =
        RedisServer::try_start("with_a_secret_a_copy_from_before_a_clear_cannot_be_moved_past_it")
    else {
        return;
    };
    let origin = origin().await;
    let a = replica_with(&redis.url(), |b| b.secret(SECRET));
    a.wait_connected().await;
    let url = origin.url("/records/cleared");
    a.get(&url).await;
    wait_until(Duration::from_secs(5), || a.fleet.stats().published == 1).await;
    let mut conn = redis.admin().await;
    let before: Vec<String> = redis::cmd("KEYS")
        .arg("fleet-test:k:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(before.len(), 1, "{before:?}");

    a.cache.clear();
    wait_until(Duration::from_secs(5), || a.fleet.stats().published == 2).await;
    let generation: String = redis::cmd("GET")
        .arg("fleet-test:gen")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Someone with write access to Redis but without the secret: a RENAME.
    let old_generation = before[0]
        .strip_prefix("fleet-test:k:")
        .and_then(|rest| rest.split_once(':'))
        .unwrap()
        .0;
    let moved = before[0].replacen(
        &format!("fleet-test:k:{old_generation}:"),
        &format!("fleet-test:k:{generation}:"),
        1,
    );
    let _: () = redis::cmd("RENAME")
        .arg(&before[0])
        .arg(&moved)
        .query_async(&mut conn)
        .await
        .unwrap();

    // A 404 learned after the clear (past the transit allowance) is stored, signed for the new
    // generation.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = origin.url("/records/after");
    a.get(&after).await;
    wait_until(Duration::from_secs(5), || a.fleet.stats().published == 3).await;

    let late = replica_with(&redis.url(), |b| b.secret(SECRET));
    late.wait_connected().await;
    // The moved copy is read, and refused for its signature; the one after the clear is
    // warmed up.
    let refused = || {
        let s = late.fleet.stats();
        s.rejected.signature == 1 && s.warmed == 1
    };
    assert!(
        soon(Duration::from_secs(5), refused).await,
        "{:?}",
        late.fleet.stats()
    );
    let s = late.fleet.stats();
    assert!(
        late.cache.peek(&url.parse().unwrap()).is_none(),
        "a 404 cleared fleet-wide was warmed up from a copy moved past the clear: {s:?}"
    );
    assert!(late.cache.peek(&after.parse().unwrap()).is_some(), "{s:?}");
}

/// The fleet's `Debug` hides the URL's password ("builders get logged"), whichever form the URL
/// takes: userinfo, or the query of a Unix-socket URL (`redis+unix:///path?pass=...`).
#[test]
fn the_builders_debug_hides_a_unix_urls_password() {
    for url in [
        "redis+unix:///run/redis.sock?db=0&pass=hunter2-hunter2",
        "unix:///run/redis.sock?pass=hunter2-hunter2&db=1",
        "redis+unix:///run/redis.sock?user=u&PASS=hunter2-hunter2",
        "redis://user:hunter2-hunter2@127.0.0.1:6379",
        "rediss://:hunter2-hunter2@127.0.0.1:6379/0",
    ] {
        let shown = format!("{:?}", Fleet::builder(url));
        assert!(
            !shown.contains("hunter2"),
            "the password is printed: {shown}"
        );
        assert!(shown.contains("***"), "{shown}");
    }
}

/// README: "A classifier given to either builder is applied; none is silently ignored". A cache
/// without a classifier of its own follows the retry layer's verdict; here that calls 404 a
/// Success, so this replica never remembers a 404 — and a peer must not make it.
#[tokio::test]
async fn a_peer_cannot_make_a_replica_remember_what_its_own_stack_never_would() {
    use tower_negative_cache::classify::{Classify, DefaultClassifier};
    use tower_negative_cache::{Outcome, StatusAwareRetryLayer};

    let Some(redis) = RedisServer::try_start(
        "a_peer_cannot_make_a_replica_remember_what_its_own_stack_never_would",
    ) else {
        return;
    };
    let origin = origin().await;
    let cache = NegativeCacheLayer::new();
    let fleet = Fleet::builder(redis.url())
        .prefix("fleet-test")
        .reconnect(Duration::from_millis(20), Duration::from_millis(200))
        .start(&cache)
        .unwrap();
    wait_until(Duration::from_secs(5), || fleet.stats().connected).await;
    let retry = StatusAwareRetryLayer::builder()
        .classifier(|status: StatusCode, headers: &http::HeaderMap| {
            if status == StatusCode::NOT_FOUND {
                Outcome::Success
            } else {
                DefaultClassifier::default().classify_response(status, headers)
            }
        })
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(cache.clone())
        .layer(retry)
        .service(support::client());
    let url = origin.url("/records/empty-ok");
    for _ in 0..2 {
        let req = Request::get(&url).body(Empty::new()).unwrap();
        assert_eq!(client.clone().oneshot(req).await.unwrap().status(), 404);
    }
    assert_eq!(origin.hits("/records/empty-ok"), 2, "never remembered here");
    // Past the transit allowance, so the local answers above do not order the peer's out.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    publish(
        &redis,
        format!("tnc3 - 0000000000000001 1 0 m 404 60000 0 {url}\0k\n\n"),
    )
    .await;
    wait_until(Duration::from_secs(5), || fleet.stats().received == 1).await;
    let req = Request::get(&url).body(Empty::new()).unwrap();
    let res = client.clone().oneshot(req).await.unwrap();
    assert_eq!(
        origin.hits("/records/empty-ok"),
        3,
        "a peer's 404 was served from the cache of a stack that never caches 404: {:?}, {:?}",
        res.extensions()
            .get::<tower_negative_cache::cache::NegativeCacheHit>(),
        fleet.stats()
    );
    assert_eq!(fleet.stats().rejected.status, 1, "{:?}", fleet.stats());
}

/// Invariant 7 (README) through `invalidate_if`: a peer's 404 whose request left before the
/// invalidation is not applied after it, even for a key this replica did not hold; peers
/// forget the matching keys this replica held. (Peers keep matching keys this replica did not
/// hold: a closure cannot be sent — the README's "Not guaranteed" says so.)
#[tokio::test]
async fn invalidate_if_orders_out_older_peer_404s_for_keys_this_replica_did_not_hold() {
    let Some(redis) = RedisServer::try_start(
        "invalidate_if_orders_out_older_peer_404s_for_keys_this_replica_did_not_hold",
    ) else {
        return;
    };
    let origin = origin().await;
    let b = replica_with(&redis.url(), |b| b);
    b.wait_connected().await;
    // A joins without warm-up; both learn p1 from A's miss, B alone holds p0 (before A).
    let p0: Uri = origin.url("/records/p0").parse().unwrap();
    b.get(&p0.to_string()).await;
    wait_until(Duration::from_secs(5), || b.fleet.stats().published == 1).await;
    let a = replica_with(&redis.url(), |b| b.warm(0));
    a.wait_connected().await;
    let p1: Uri = origin.url("/records/p1").parse().unwrap();
    a.get(&p1.to_string()).await;
    wait_until(Duration::from_secs(5), || b.cache.peek(&p1).is_some()).await;

    let n = a.cache.invalidate_if(|k| k.contains("/records/"));
    assert_eq!(n, 1);
    // A peer's 404 for a matching key A never held, from a request that left 2 s before the
    // invalidation, arrives just after it.
    let p2 = origin.url("/records/p2");
    publish(
        &redis,
        format!("tnc3 - 00000000000000aa 1 0 m 404 60000 2000 {p2}\0k\n\n"),
    )
    .await;
    wait_until(Duration::from_secs(5), || a.fleet.stats().received >= 1).await;
    assert!(
        a.cache.peek(&p2.parse().unwrap()).is_none(),
        "a peer's older 404 was applied after invalidate_if: {:?}",
        a.fleet.stats()
    );
    assert_eq!(
        a.fleet.stats().rejected.superseded,
        1,
        "{:?}",
        a.fleet.stats()
    );
    // B forgets the key A held and told it about.
    assert!(
        soon(Duration::from_secs(5), || b.cache.peek(&p1).is_none()).await,
        "{:?}",
        a.fleet.stats()
    );
}

/// Garbage in Redis: the generation key (`<prefix>:gen`) holding something that is not a
/// number (a stray `SET`, another tool sharing the prefix) must not stop sharing for good.
#[tokio::test]
async fn a_garbage_generation_key_does_not_stop_sharing_for_good() {
    let Some(redis) =
        RedisServer::try_start("a_garbage_generation_key_does_not_stop_sharing_for_good")
    else {
        return;
    };
    let origin = origin().await;
    let a = replica_with(&redis.url(), |b| b);
    let b = replica_with(&redis.url(), |b| b);
    a.wait_connected().await;
    b.wait_connected().await;
    let _: () = redis::cmd("SET")
        .arg("fleet-test:gen")
        .arg("garbage")
        .query_async(&mut redis.admin().await)
        .await
        .unwrap();
    // A write on A: its forget must be written to Redis.
    let uri: Uri = origin.url("/records/w1").parse().unwrap();
    a.cache.invalidate_uri(&uri);
    // The forget's script starts a new generation: copies of requests that left within the
    // transit allowance (1 s) of it are not stored (peers are told all the same).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Then ordinary misses on A.
    let mut shared = 0;
    for i in 0..20 {
        let uri: Uri = origin.url(&format!("/records/g{i}")).parse().unwrap();
        a.get(&uri.to_string()).await;
        shared += usize::from(soon(Duration::from_secs(2), || b.cache.peek(&uri).is_some()).await);
    }
    assert!(
        shared >= 15,
        "{shared} of 20 misses reached B: A {:?}",
        a.fleet.stats()
    );
    // And a late replica still warms up.
    let late = replica_with(&redis.url(), |b| b);
    late.wait_connected().await;
    assert!(
        soon(Duration::from_secs(5), || late.fleet.stats().warmed >= 15).await,
        "{:?}",
        late.fleet.stats()
    );
}

/// Third review (publish.rs `LOCATE`): a generation key of another type is "replaced by a new
/// generation instead of failing every script for good" — with a secret too. The signing
/// publisher reads the generation to sign for; that read must repair the key as the scripts
/// do, not fail on `WRONGTYPE` before every publish.
#[tokio::test]
async fn with_a_secret_a_generation_key_of_another_type_does_not_stop_sharing_for_good() {
    let Some(redis) = RedisServer::try_start(
        "with_a_secret_a_generation_key_of_another_type_does_not_stop_sharing_for_good",
    ) else {
        return;
    };
    let origin = origin().await;
    let signed = |b: FleetBuilder| b.secret("a secret all replicas share");
    let a = replica_with(&redis.url(), signed);
    let b = replica_with(&redis.url(), signed);
    a.wait_connected().await;
    b.wait_connected().await;
    let _: i64 = redis::cmd("RPUSH")
        .arg("fleet-test:gen")
        .arg("not a number")
        .query_async(&mut redis.admin().await)
        .await
        .unwrap();
    let mut shared = 0;
    for i in 0..20 {
        let uri: Uri = origin.url(&format!("/records/t{i}")).parse().unwrap();
        a.get(&uri.to_string()).await;
        shared += usize::from(soon(Duration::from_secs(2), || b.cache.peek(&uri).is_some()).await);
    }
    assert!(
        shared >= 15,
        "{shared} of 20 misses reached B: A {:?}",
        a.fleet.stats()
    );
}

/// Third review (cache/state.rs `outcome`, cache/peers.rs `Verdicts`): the stack here remembers
/// a 404 only when the origin itself said so (`x-origin: 1`), a classifier of headers as
/// `Classify::classify_response` allows. A verdict kept per *status*, the last one seen, let an
/// unrelated request's 404 decide that a peer's 404 for `/soft` — which this stack never
/// remembers — is applied. A status this stack has called both Missing and not is mixed for
/// good: peers' answers with it are refused (`rejected.status`).
#[tokio::test]
async fn one_requests_verdict_does_not_decide_what_a_peer_may_make_another_key_mean() {
    use tower_negative_cache::classify::{Classify, DefaultClassifier};
    use tower_negative_cache::{Outcome, StatusAwareRetryLayer};

    let Some(redis) = RedisServer::try_start(
        "one_requests_verdict_does_not_decide_what_a_peer_may_make_another_key_mean",
    ) else {
        return;
    };
    let origin = TestServer::builder()
        .handler(|r| {
            Some(if r.path == "/real" {
                Reply::status(404).header("x-origin", "1")
            } else {
                Reply::status(404)
            })
        })
        .start()
        .await;
    let cache = NegativeCacheLayer::new();
    let fleet = Fleet::builder(redis.url())
        .prefix("fleet-test")
        .reconnect(Duration::from_millis(20), Duration::from_millis(200))
        .start(&cache)
        .unwrap();
    wait_until(Duration::from_secs(5), || fleet.stats().connected).await;
    let retry = StatusAwareRetryLayer::builder()
        .classifier(|status: StatusCode, headers: &http::HeaderMap| {
            if status == StatusCode::NOT_FOUND && !headers.contains_key("x-origin") {
                Outcome::Success
            } else {
                DefaultClassifier::default().classify_response(status, headers)
            }
        })
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(cache.clone())
        .layer(retry)
        .service(support::client());
    let get = |path: &str| {
        let req = Request::get(origin.url(path)).body(Empty::new()).unwrap();
        client.clone().oneshot(req)
    };
    for _ in 0..2 {
        assert_eq!(get("/soft").await.unwrap().status(), 404);
    }
    assert_eq!(origin.hits("/soft"), 2, "this stack never remembers /soft");
    // An unrelated key whose 404 this stack does remember.
    assert_eq!(get("/real").await.unwrap().status(), 404);
    assert_eq!(get("/real").await.unwrap().status(), 404);
    assert_eq!(origin.hits("/real"), 1, "this stack remembers /real");
    // Past the transit allowance, so the local answers do not order the peer's out.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let url = origin.url("/soft");
    publish(
        &redis,
        format!("tnc3 - 0000000000000001 1 0 m 404 60000 0 {url}\0k\n\n"),
    )
    .await;
    wait_until(Duration::from_secs(5), || fleet.stats().received == 1).await;
    let _ = get("/soft").await.unwrap();
    assert_eq!(
        origin.hits("/soft"),
        3,
        "a peer's 404 for /soft was served from a cache whose stack never remembers it: {:?}",
        fleet.stats()
    );
    assert_eq!(fleet.stats().rejected.status, 1, "{:?}", fleet.stats());
}

/// A forget this cache could not tell its peers (the queue full behind a stalled Redis, or
/// waiting for Redis to answer) when its tier is dropped is owed to the next tier started on
/// the same cache: that tier's first message is one clear, so peers never keep a 404 this
/// cache forgot. (`Peers::attach` used to forgive the debt, and the waiting forgets went with
/// the aborted task.)
async fn a_restarted_tier_pays_a_forget_its_predecessor_owed(stuck_in_queue: bool) {
    let name = format!("a_restarted_tier_pays_a_forget_its_predecessor_owed_{stuck_in_queue}");
    let Some(redis) = RedisServer::try_start(&name) else {
        return;
    };
    let proxy = StallProxy::start(redis.port).await;
    let origin = origin().await;
    let layer = NegativeCacheLayer::builder()
        .ttl(Duration::from_secs(60))
        .max_ttl(Duration::from_secs(120))
        .build()
        .unwrap();
    let tier = |url: &str, b: fn(FleetBuilder) -> FleetBuilder| {
        b(Fleet::builder(url)
            .prefix("fleet-test")
            .reconnect(Duration::from_millis(20), Duration::from_millis(200)))
        .start(&layer)
        .unwrap()
    };
    let a = Replica {
        client: ServiceBuilder::new()
            .layer(layer.clone())
            .service(support::client()),
        cache: layer.handle(),
        fleet: if stuck_in_queue {
            // A long command timeout: the publish stays stuck while misses fill the queue.
            tier(&proxy.url(), |b| b.queue(4).timeout(Duration::from_secs(5)))
        } else {
            // A short one: the forget fails and waits for the next try.
            tier(&proxy.url(), |b| b.timeout(Duration::from_millis(300)))
        },
    };
    let b = replica_with(&redis.url(), |b| b);
    a.wait_connected().await;
    b.wait_connected().await;
    let uri: Uri = origin.url("/records/r1").parse().unwrap();
    a.get(&uri.to_string()).await;
    wait_until(Duration::from_secs(5), || b.cache.peek(&uri).is_some()).await;

    proxy.hold(true);
    if stuck_in_queue {
        for i in 0..10 {
            a.get(&origin.url(&format!("/records/busy-{i}"))).await;
        }
    }
    assert!(a.cache.invalidate_uri(&uri));
    if stuck_in_queue {
        assert!(a.fleet.stats().queue_full >= 1, "{:?}", a.fleet.stats());
    } else {
        wait_until(Duration::from_secs(5), || {
            a.fleet.stats().publish_failures >= 1
        })
        .await;
    }
    // The tier goes (a redeploy of its configuration, say) before Redis answers A again.
    drop(a.fleet);
    let restarted = tier(&redis.url(), |b| b);
    assert!(
        soon(Duration::from_secs(10), || b.cache.peek(&uri).is_none()).await,
        "B still serves the 404 A forgot before its tier restarted: {:?}",
        restarted.stats()
    );
    assert!(restarted.stats().published >= 1, "{:?}", restarted.stats());
    // Paid once: the restarted tier shares again. Past the transit allowance (1 s), so B
    // does not order this miss before the clear it received.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again: Uri = origin.url("/records/r2").parse().unwrap();
    a.client
        .clone()
        .oneshot(Request::get(&again).body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert!(
        soon(Duration::from_secs(5), || b.cache.peek(&again).is_some()).await,
        "A {:?}, B {:?}",
        restarted.stats(),
        b.fleet.stats()
    );
}

#[tokio::test]
async fn a_restarted_tier_pays_a_forget_dropped_for_a_full_queue() {
    a_restarted_tier_pays_a_forget_its_predecessor_owed(true).await;
}

#[tokio::test]
async fn a_restarted_tier_pays_a_forget_still_waiting_for_redis() {
    a_restarted_tier_pays_a_forget_its_predecessor_owed(false).await;
}
