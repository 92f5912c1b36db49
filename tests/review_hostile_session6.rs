//! A hostile review (session 6) of the last two commits' cache fixes: a Missing answer older
//! than the stored entry is not stored (`Store::holds_newer`), and a fleet message carries the
//! answer's arrival age. Each test is a guarantee the crate states (GUARANTEES.md) or an RFC
//! rule it claims to follow.

#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
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

fn get(uri: &str) -> Req {
    Request::get(uri).body(Full::new(Bytes::new())).unwrap()
}

fn hit_of<B>(res: &Response<B>) -> Option<NegativeCacheHit> {
    res.extensions().get::<NegativeCacheHit>().copied()
}

/// An origin answering `status` with `cache_control` and `body`, after `delay`, counting calls.
fn answering(
    calls: Arc<AtomicUsize>,
    status: u16,
    cache_control: &'static str,
    body: &'static str,
    delay: Duration,
) -> impl Service<Req, Response = Res, Error = Infallible, Future = impl Send> + Clone {
    tower::service_fn(move |_req: Req| {
        calls.fetch_add(1, SeqCst);
        let res = Response::builder()
            .status(status)
            .header("cache-control", cache_control)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, Infallible>(res)
        }
    })
}

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;

#[cfg(feature = "redis")]
mod fleet {
    use super::redis_support::RedisServer;
    use super::*;
    use tower_negative_cache::fleet::Fleet;

    /// Two caches, A and B, each with a tier on `redis` under `prefix`, both connected.
    async fn two_replicas(
        redis: &RedisServer,
        prefix: &str,
    ) -> (NegativeCacheLayer, NegativeCacheLayer, Fleet, Fleet) {
        let (la, lb) = (NegativeCacheLayer::new(), NegativeCacheLayer::new());
        let (fa, fb) = (
            tier(redis, prefix).start(&la).unwrap(),
            tier(redis, prefix).start(&lb).unwrap(),
        );
        wait_until(Duration::from_secs(10), || {
            fa.stats().connected && fb.stats().connected
        })
        .await;
        (la, lb, fa, fb)
    }

    async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
        let t = std::time::Instant::now();
        while !f() {
            assert!(t.elapsed() < limit, "not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn tier(redis: &RedisServer, prefix: &str) -> tower_negative_cache::fleet::FleetBuilder {
        Fleet::builder(redis.url())
            .prefix(prefix)
            .reconnect(Duration::from_millis(20), Duration::from_millis(200))
            .timeout(Duration::from_millis(300))
    }

    /// RFC 9111 §4 ("the most recent response ... MUST be used") and GUARANTEES.md "The latest
    /// answer wins ... an older 404 or 410 whose body ends late never replaces a newer one".
    ///
    /// Replica A asks first: its request leaves and its 410 arrives; its caller reads the body
    /// late. Replica B asks after: its request leaves and its 404 arrives after A's 410 did;
    /// its caller reads the body late too. A's caller ends its body: A stores and publishes the
    /// 410 (the message says its request left before B's). B learns it. B's caller then ends
    /// the 404's body: B's own, newer answer is stored (an earlier build dated the learned
    /// entry from the message's arrival, and refused B's 404 as older).
    #[tokio::test]
    async fn a_peers_older_answer_does_not_refuse_a_newer_local_one() {
        let Some(redis) = RedisServer::try_start("a_peers_older_answer_does_not_refuse") else {
            return;
        };
        let (la, lb, fa, fb) = two_replicas(&redis, "session6a").await;
        let (ca, cb) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut a = ServiceBuilder::new().layer(la.clone()).service(answering(
            ca.clone(),
            410,
            "max-age=300",
            "gone (A, older)",
            Duration::ZERO,
        ));
        let mut b = ServiceBuilder::new().layer(lb.clone()).service(answering(
            cb.clone(),
            404,
            "max-age=300",
            "not found (B, newer)",
            Duration::ZERO,
        ));
        let url = "http://o.test/records/1";
        let uri: http::Uri = url.parse().unwrap();

        // A's request leaves and its 410 arrives first; its body is not read yet.
        let older = send(&mut a, get(url)).await;
        assert_eq!(older.status(), StatusCode::GONE);
        tokio::time::sleep(Duration::from_millis(30)).await;
        // B's request leaves after A's answer arrived; its 404 arrives; body not read yet.
        let newer = send(&mut b, get(url)).await;
        assert_eq!(newer.status(), StatusCode::NOT_FOUND);
        tokio::time::sleep(Duration::from_millis(30)).await;
        // A's caller ends the older body: A stores the 410 and tells B.
        older.into_body().collect().await.unwrap();
        wait_until(Duration::from_secs(5), || lb.handle().peek(&uri).is_some()).await;
        assert_eq!(lb.handle().peek(&uri).unwrap().status, StatusCode::GONE);
        // B's caller ends the newer body.
        newer.into_body().collect().await.unwrap();

        let res = send(&mut b, get(url)).await;
        assert_eq!(
            res.status(),
            StatusCode::NOT_FOUND,
            "B answered {} (hit: {:?}): A's 410, whose request left and whose answer arrived \
             before B's own 404, was kept and B's newer 404 refused (B's stats: {:?})",
            res.status(),
            hit_of(&res),
            lb.handle().stats()
        );
        drop((fa, fb));
    }

    /// RFC 9111 §4 ("the most recent response ... MUST be used") and GUARANTEES.md "The latest
    /// answer wins", the other way round: a peer's older 404 does not replace a newer local
    /// 410.
    ///
    /// B asks first: its 404 arrives, its caller reads the body late. A, not connected to the
    /// fleet yet (so B never hears of A's answer, as with a Redis down for A), asks after
    /// that: its 410 arrives and is stored. A connects. B's caller then ends the 404's body: B
    /// stores it and tells A, the message saying B's request left before A's answer arrived.
    /// A keeps its own newer 410 (an earlier build stored the peer's 404 over it: the learn
    /// path did not compare).
    #[tokio::test]
    async fn a_peers_older_answer_does_not_replace_a_newer_local_one() {
        let Some(redis) = RedisServer::try_start("a_peers_older_answer_does_not_replace") else {
            return;
        };
        let (la, lb) = (NegativeCacheLayer::new(), NegativeCacheLayer::new());
        let fb = tier(&redis, "session7a").start(&lb).unwrap();
        wait_until(Duration::from_secs(10), || fb.stats().connected).await;
        let (ca, cb) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut a = ServiceBuilder::new().layer(la.clone()).service(answering(
            ca.clone(),
            410,
            "max-age=300",
            "gone (A, newer)",
            Duration::ZERO,
        ));
        let mut b = ServiceBuilder::new().layer(lb.clone()).service(answering(
            cb.clone(),
            404,
            "max-age=300",
            "not found (B, older)",
            Duration::ZERO,
        ));
        let url = "http://o.test/records/2";
        let uri: http::Uri = url.parse().unwrap();

        // B's request leaves and its 404 arrives first; its body is not read yet.
        let older = send(&mut b, get(url)).await;
        assert_eq!(older.status(), StatusCode::NOT_FOUND);
        tokio::time::sleep(Duration::from_millis(30)).await;
        // A's request leaves after B's answer arrived; A's 410 arrives and is stored.
        send(&mut a, get(url))
            .await
            .into_body()
            .collect()
            .await
            .unwrap();
        assert_eq!(la.handle().peek(&uri).unwrap().status, StatusCode::GONE);
        let fa = tier(&redis, "session7a").start(&la).unwrap();
        wait_until(Duration::from_secs(10), || fa.stats().connected).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        // B's caller ends the older body: B stores the 404 and tells A.
        older.into_body().collect().await.unwrap();
        wait_until(Duration::from_secs(5), || {
            let s = fa.stats();
            s.learned + s.rejected.superseded > 0
        })
        .await;

        let res = send(&mut a, get(url)).await;
        assert_eq!(
            res.status(),
            StatusCode::GONE,
            "A answered {} (hit: {:?}): B's 404, whose request left and whose answer arrived \
             before A's own 410, replaced it (A's fleet stats: {:?})",
            res.status(),
            hit_of(&res),
            fa.stats()
        );
        assert_eq!(ca.load(SeqCst), 1, "A's repeat is a hit");
        drop((fa, fb));
    }

    /// RFC 9111 §4.2.3 (`corrected_initial_age = age_value + response_delay`, `current_age =
    /// corrected_initial_age + resident_time`) and GUARANTEES.md "A hit says its whole age"; "a
    /// learned 404 keeps its age (`Age`): the time since its request, and for a learned one the
    /// age its answer had on arrival at the peer (the origin's `Age`) too".
    ///
    /// The origin takes 3 s to answer a 404 (`max-age=300`, no `Age`). A's age on arrival is
    /// the response delay (3 s: RFC 9111 §4.2.3). The fleet message says the request left
    /// 3 s ago (age_ms); B's hit must not add the delay again (an earlier build sent the age
    /// on arrival whole, and B said about 6 s where A, at the same moment, said 3 s).
    #[tokio::test]
    async fn a_peers_hit_does_not_count_the_response_delay_twice() {
        let Some(redis) = RedisServer::try_start("a_peers_hit_does_not_count_the_delay_twice")
        else {
            return;
        };
        let (la, lb, fa, fb) = two_replicas(&redis, "session6b").await;
        let (ca, cb) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut a = ServiceBuilder::new().layer(la.clone()).service(answering(
            ca.clone(),
            404,
            "max-age=300",
            "slow",
            Duration::from_secs(3),
        ));
        let mut b = ServiceBuilder::new().layer(lb.clone()).service(answering(
            cb.clone(),
            404,
            "max-age=300",
            "slow",
            Duration::from_secs(3),
        ));
        let url = "http://o.test/records/slow";
        let uri: http::Uri = url.parse().unwrap();

        send(&mut a, get(url))
            .await
            .into_body()
            .collect()
            .await
            .unwrap();
        wait_until(Duration::from_secs(5), || lb.handle().peek(&uri).is_some()).await;
        let on_a = send(&mut a, get(url)).await;
        let on_b = send(&mut b, get(url)).await;
        let (ha, hb) = (
            hit_of(&on_a).expect("A's hit"),
            hit_of(&on_b).expect("B's hit"),
        );
        assert_eq!(cb.load(SeqCst), 0);
        assert!(
            hb.age <= ha.age + Duration::from_secs(1),
            "B's hit says Age: {:?} where A's, at the same moment, says {:?}: the response \
             delay was counted twice (B: {hb:?}, A: {ha:?})",
            on_b.headers().get("age"),
            on_a.headers().get("age"),
        );
        drop((fa, fb));
    }
}
