//! Concurrency stress: many tasks on a multi-thread runtime mixing hits, misses, writes,
//! invalidations and clears on overlapping keys. No deadlock (the test has a timeout), the
//! stats add up, capacity holds.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use tokio::task::JoinSet;
use tower::{ServiceBuilder, ServiceExt};
use tower_negative_cache::retry::Jitter;
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

const TASKS: u64 = 32;
const KEYS: u64 = 64;
const CAPACITY: u64 = 24;
const RUN: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_traffic_on_overlapping_keys_neither_deadlocks_nor_miscounts() {
    let upstream_calls = Arc::new(AtomicU64::new(0));
    let calls = upstream_calls.clone();
    // Even keys are missing; odd keys present; every seventh call is a transient 503.
    let upstream = tower::service_fn(move |req: Request<Empty<Bytes>>| {
        let n = calls.fetch_add(1, Relaxed);
        let key: u64 = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        async move {
            tokio::task::yield_now().await;
            let status = match (req.method(), n % 7, key % 2) {
                (_, 0, _) => StatusCode::SERVICE_UNAVAILABLE,
                (&Method::GET | &Method::HEAD, _, 0) => StatusCode::NOT_FOUND,
                (&Method::GET | &Method::HEAD, _, _) => StatusCode::OK,
                _ => StatusCode::NO_CONTENT,
            };
            let mut res = Response::new(Empty::<Bytes>::new());
            *res.status_mut() = status;
            Ok::<_, Infallible>(res)
        }
    });
    let cache = NegativeCacheLayer::builder()
        .capacity(CAPACITY)
        .ttl(Duration::from_millis(300))
        .coalesce(Duration::from_millis(200))
        .build()
        .unwrap();
    let retry = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .jitter(Jitter::Full)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(cache.clone())
        .layer(retry)
        .service(upstream);
    let handle = cache.handle();
    let requests = Arc::new(AtomicU64::new(0));

    let work = async {
        let mut tasks = JoinSet::new();
        for t in 0..TASKS {
            let (svc, handle, requests) = (svc.clone(), handle.clone(), requests.clone());
            tasks.spawn(async move {
                let deadline = tokio::time::Instant::now() + RUN;
                let mut x = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                while tokio::time::Instant::now() < deadline {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = x % KEYS;
                    let uri = format!("http://stress.test/r/{key}");
                    match x % 100 {
                        0 => drop(handle.clear()),
                        1..=3 => drop(handle.invalidate_uri(&uri.parse().unwrap())),
                        4..=5 => drop(handle.invalidate_if(|k| k.ends_with('3'))),
                        6..=11 => {
                            let req = Request::builder().method(Method::PUT).uri(&uri);
                            let res = svc.clone().oneshot(req.body(Empty::new()).unwrap()).await;
                            assert!(res.is_ok());
                        }
                        _ => {
                            let method = if x % 3 == 0 {
                                Method::HEAD
                            } else {
                                Method::GET
                            };
                            let req = Request::builder().method(method).uri(&uri);
                            let res = svc.clone().oneshot(req.body(Empty::new()).unwrap()).await;
                            let status = res.unwrap().status();
                            // A present key is never answered 404 (from the cache or not).
                            if key % 2 == 1 {
                                assert_ne!(status, StatusCode::NOT_FOUND, "key {key}");
                            }
                            requests.fetch_add(1, Relaxed);
                        }
                    }
                    let len = handle.stats().len;
                    assert!(len <= CAPACITY, "{len} > {CAPACITY}");
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("no task panicked");
        }
    };
    tokio::time::timeout(RUN + Duration::from_secs(20), work)
        .await
        .expect("no deadlock: every task finished");

    let s = handle.stats();
    println!(
        "stress: {} reads, {} upstream calls; {s:?}",
        requests.load(Relaxed),
        upstream_calls.load(Relaxed)
    );
    assert_eq!(s.lookups, s.hits + s.misses, "{s:?}");
    assert_eq!(
        s.lookups,
        requests.load(Relaxed),
        "every read was looked up: {s:?}"
    );
    assert!(s.hits > 0 && s.misses > 0 && s.invalidations > 0, "{s:?}");
    assert!(s.len <= CAPACITY);
}
