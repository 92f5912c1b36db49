//! Review of the hit memo against a fleet tier (real `redis-server`, skipped without one): a
//! peer's forget must reach a service's memo as it reaches the store.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use http::{Method, Request, StatusCode, Uri};
use http_body_util::Empty;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::cache::NegativeCacheHit;
use tower_negative_cache::fleet::Fleet;

use redis_support::RedisServer;
use support::{Reply, TestServer};

async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn send_a<S, B>(svc: &mut S, r: Request<Empty<bytes::Bytes>>) -> (StatusCode, bool)
where
    S: Service<Request<Empty<bytes::Bytes>>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
{
    let res = svc.ready().await.unwrap().call(r).await.unwrap();
    (
        res.status(),
        res.extensions().get::<NegativeCacheHit>().is_some(),
    )
}

/// A write through replica B: A's store forgets (the peer's forget), and so must the memo of
/// A's service, which was answering the key without a lookup.
#[tokio::test]
async fn a_peers_forget_reaches_a_services_memo() {
    let Some(redis) = RedisServer::try_start("a_peers_forget_reaches_a_services_memo") else {
        return;
    };
    rounds(redis, &[0]).await;
}

/// NOT a regression of the reviewed commits (fails at b30779c too): GUARANTEES.md says a
/// replica publishes a forget for a read's 2xx "when it held a 404 for the key". B holds A's
/// 404 (learned); B's read answers 2xx; B removes its copy in `State::note_changed` (the tier
/// is on) and then `forget_exact` finds nothing to remove, so nothing is published: A keeps
/// serving the 404 for its TTL.
#[tokio::test]
async fn a_2xx_on_a_replica_that_held_the_404_is_published() {
    let Some(redis) = RedisServer::try_start("a_2xx_on_a_replica_that_held_the_404_is_published")
    else {
        return;
    };
    rounds(redis, &[1]).await;
}

async fn rounds(redis: RedisServer, which: &[usize]) {
    let present = Arc::new(AtomicBool::new(false));
    let p = present.clone();
    let origin = TestServer::builder()
        .handler(move |r| {
            Some(if r.method != Method::GET || p.load(SeqCst) {
                Reply::ok("here")
            } else {
                Reply::status(404)
            })
        })
        .start()
        .await;
    let node = || {
        NegativeCacheLayer::builder()
            .ttl(Duration::from_secs(60))
            .build()
            .unwrap()
    };
    let (la, lb) = (node(), node());
    let tier = |l: &NegativeCacheLayer| {
        Fleet::builder(redis.url())
            .prefix("memo-test")
            .reconnect(Duration::from_millis(20), Duration::from_millis(200))
            .timeout(Duration::from_millis(300))
            .start(l)
            .unwrap()
    };
    let (fa, fb) = (tier(&la), tier(&lb));
    wait_until(Duration::from_secs(10), || {
        fa.stats().connected && fb.stats().connected
    })
    .await;
    // One service instance on A (its memo), B's requests through clones.
    let mut a = ServiceBuilder::new()
        .layer(la.clone())
        .service(support::client());
    let b = ServiceBuilder::new()
        .layer(lb.clone())
        .service(support::client());
    let get = |url: &str, method: Method| {
        Request::builder()
            .method(method)
            .uri(url)
            .body(Empty::new())
            .unwrap()
    };
    for (round, path) in ["/m/write", "/m/present"].into_iter().enumerate() {
        if !which.contains(&round) {
            continue;
        }
        present.store(false, SeqCst);
        let url = origin.url(path);
        assert_eq!(
            send_a(&mut a, get(&url, Method::GET)).await.0,
            StatusCode::NOT_FOUND
        );
        for _ in 0..3 {
            assert!(
                send_a(&mut a, get(&url, Method::GET)).await.1,
                "A hits (the memo after the first)"
            );
        }
        // B learns A's 404 (so that a 2xx there is told to the peers).
        let key: Uri = url.parse().unwrap();
        wait_until(Duration::from_secs(5), || lb.handle().peek(&key).is_some()).await;
        let before = fa.stats().forgotten;
        if round == 0 {
            // A write through B.
            let res = b.clone().oneshot(get(&url, Method::POST)).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        } else {
            // A 2xx of the key through B (its request refreshes past B's learned entry).
            present.store(true, SeqCst);
            let mut r = get(&url, Method::GET);
            r.headers_mut()
                .insert("cache-control", "no-cache".parse().unwrap());
            let res = b.clone().oneshot(r).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
        wait_until(Duration::from_secs(5), || fa.stats().forgotten > before).await;
        if round == 1 {
            // The 2xx reached A (the point of that test); the memo is round 0's.
            continue;
        }
        assert!(la.handle().peek(&key).is_none(), "A's store forgot");
        let (status, hit) = send_a(&mut a, get(&url, Method::GET)).await;
        assert!(
            !hit,
            "round {round}: A's memo answered {status} after a peer's forget emptied its store"
        );
    }
}
