//! Readiness and coalescing over `Buffer` and a concurrency limit under load: many callers on a
//! multi-thread runtime, futures dropped at random awaits, keys changing under them. No hang,
//! every permit comes back, and the stats add up.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use tokio::sync::Semaphore;
use tower::buffer::Buffer;
use tower::limit::ConcurrencyLimit;
use tower::{Layer, Service, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;

type Req = Request<Empty<Bytes>>;

fn origin(
    calls: Arc<AtomicUsize>,
    flip: Arc<AtomicU64>,
) -> impl Service<Req, Response = Response<Empty<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |req: Req| {
        let n = calls.fetch_add(1, Relaxed) as u64;
        let k: u64 = req
            .uri()
            .path()
            .trim_start_matches("/r/")
            .parse()
            .unwrap_or(0);
        let present = (flip.load(Relaxed) + k) % 3 == 0;
        async move {
            tokio::time::sleep(Duration::from_micros(50 + (n * 37) % 400)).await;
            let status = if present { 200 } else { 404 };
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .body(Empty::new())
                    .unwrap(),
            )
        }
    })
}

async fn hammer<S>(svc: S, flip: Arc<AtomicU64>, cache: NegativeCacheLayer)
where
    S: Service<Req, Response = Response<tower_negative_cache::cache::ResponseBody<Empty<Bytes>>>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    let tasks: Vec<_> = (0..48u64)
        .map(|t| {
            let mut svc = svc.clone();
            let flip = flip.clone();
            let handle = cache.handle();
            tokio::spawn(async move {
                for i in 0..150u64 {
                    let k = (t + i) % 5;
                    let req = Request::get(format!("http://o.test/r/{k}"))
                        .body(Empty::new())
                        .unwrap();
                    // Hold the service across the await, as `svc.ready().await?.call()` does.
                    let ready = svc.ready().await.unwrap();
                    let fut = ready.call(req);
                    if (t * 7 + i) % 5 == 0 {
                        // Dropped at a random await.
                        let _ = tokio::time::timeout(Duration::from_micros(100), fut).await;
                    } else {
                        let res = fut.await.unwrap();
                        assert!(matches!(
                            res.status(),
                            StatusCode::OK | StatusCode::NOT_FOUND
                        ));
                    }
                    match i % 37 {
                        0 => {
                            flip.fetch_add(1, Relaxed);
                        }
                        1 => {
                            handle.invalidate_uri(&format!("http://o.test/r/{k}").parse().unwrap());
                        }
                        2 if t == 0 => {
                            handle.clear();
                        }
                        _ => {}
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_callers_over_a_limit_with_coalescing_never_hang_or_leak_permits() {
    let calls = Arc::new(AtomicUsize::new(0));
    let flip = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(Semaphore::new(3));
    let inner = ConcurrencyLimit::with_semaphore(origin(calls.clone(), flip.clone()), sem.clone());
    let cache = NegativeCacheLayer::builder()
        .coalesce(Duration::from_millis(20))
        .build()
        .unwrap();
    let svc = cache.layer(inner);
    let run = hammer(svc.clone(), flip, cache.clone());
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("hung");
    drop(svc);
    // Every permit is back once every caller and future is gone.
    assert_eq!(sem.available_permits(), 3, "permits leaked");
    let s = cache.handle().stats();
    assert_eq!(s.lookups, s.hits + s.misses, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_callers_over_a_buffer_with_coalescing_never_hang() {
    let calls = Arc::new(AtomicUsize::new(0));
    let flip = Arc::new(AtomicU64::new(0));
    let inner = Buffer::new(origin(calls.clone(), flip.clone()), 2);
    let cache = NegativeCacheLayer::builder()
        .coalesce(Duration::from_millis(20))
        .build()
        .unwrap();
    let svc = cache.layer(inner);
    let run = hammer(svc.clone(), flip, cache.clone());
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("hung");
    let s = cache.handle().stats();
    assert_eq!(s.lookups, s.hits + s.misses, "{s:?}");
    assert!(s.hits > 0 && s.coalesced > 0, "{s:?}");
}
