//! Races between requests for one key, and inputs that could make a loop spin: found in
//! review, each a test that failed before its fix.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::Empty;
use tokio::sync::Notify;
use tower::{ServiceBuilder, ServiceExt};
use tower_negative_cache::cache::NegativeCacheHit;
use tower_negative_cache::retry::Jitter;
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

fn req(m: Method, uri: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .method(m)
        .uri(uri)
        .body(Empty::new())
        .unwrap()
}

fn answer(status: u16) -> Response<Empty<Bytes>> {
    Response::builder()
        .status(status)
        .body(Empty::new())
        .unwrap()
}

/// An origin whose first GET answers 404 only when `gate` opens; everything else answers at
/// once: PUT 201, later GETs 200.
fn gated_origin(
    gate: Arc<Notify>,
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<Empty<Bytes>>,
    Response = Response<Empty<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Empty<Bytes>>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |r: Request<Empty<Bytes>>| {
        let (gate, n) = (gate.clone(), calls.fetch_add(1, SeqCst));
        async move {
            Ok(match (r.method().clone(), n) {
                (Method::GET, 0) => {
                    gate.notified().await;
                    answer(404)
                }
                (Method::PUT, _) => answer(201),
                _ => answer(200),
            })
        }
    })
}

#[tokio::test]
async fn a_404_overtaken_by_a_write_is_not_remembered() {
    let (gate, calls) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
    let cache = NegativeCacheLayer::new();
    let svc = ServiceBuilder::new()
        .layer(cache.clone())
        .service(gated_origin(gate.clone(), calls.clone()));

    let slow_get = tokio::spawn(svc.clone().oneshot(req(Method::GET, "http://h/r/1")));
    tokio::task::yield_now().await;
    let put = svc
        .clone()
        .oneshot(req(Method::PUT, "http://h/r/1"))
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    gate.notify_one();
    assert_eq!(slow_get.await.unwrap().unwrap().status(), 404);

    let after = svc
        .clone()
        .oneshot(req(Method::GET, "http://h/r/1"))
        .await
        .unwrap();
    assert_eq!(after.status(), 200, "the record exists since the write");
    assert!(after.extensions().get::<NegativeCacheHit>().is_none());
    assert_eq!(cache.handle().stats().len, 0);
}

#[tokio::test]
async fn a_404_overtaken_by_a_200_is_not_remembered() {
    let (gate, calls) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
    let cache = NegativeCacheLayer::new();
    let svc = ServiceBuilder::new()
        .layer(cache.clone())
        .service(gated_origin(gate.clone(), calls.clone()));

    let first = tokio::spawn(svc.clone().oneshot(req(Method::GET, "http://h/r/2")));
    tokio::task::yield_now().await;
    let second = svc
        .clone()
        .oneshot(req(Method::GET, "http://h/r/2"))
        .await
        .unwrap();
    assert_eq!(second.status(), 200);
    gate.notify_one();
    assert_eq!(first.await.unwrap().unwrap().status(), 404);

    let third = svc
        .clone()
        .oneshot(req(Method::GET, "http://h/r/2"))
        .await
        .unwrap();
    assert_eq!(third.status(), 200, "the newer answer (present) wins");
    assert_eq!(calls.load(SeqCst), 3);
}

#[tokio::test]
async fn a_404_overtaken_by_an_invalidation_is_not_remembered() {
    let (gate, calls) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
    let cache = NegativeCacheLayer::new();
    let svc = ServiceBuilder::new()
        .layer(cache.clone())
        .service(gated_origin(gate.clone(), calls.clone()));
    let slow_get = tokio::spawn(svc.clone().oneshot(req(Method::GET, "http://h/r/3")));
    tokio::task::yield_now().await;
    cache.handle().invalidate("http://h/r/3");
    gate.notify_one();
    assert_eq!(slow_get.await.unwrap().unwrap().status(), 404);
    assert_eq!(cache.handle().stats().len, 0);
}

#[tokio::test]
async fn answers_for_other_keys_never_stop_a_404_from_being_remembered() {
    // Ten slow 404s in flight while 500 other keys are answered 2xx: keys are versioned one by
    // one, so none of the 404s may be lost to another key's answer.
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let upstream = tower::service_fn(move |r: Request<Empty<Bytes>>| {
        let (gate, missing) = (g.clone(), r.uri().path().starts_with("/missing/"));
        async move {
            if missing {
                gate.notified().await;
                return Ok::<_, Infallible>(answer(404));
            }
            Ok(answer(200))
        }
    });
    let cache = NegativeCacheLayer::new();
    let svc = ServiceBuilder::new().layer(cache.clone()).service(upstream);
    let slow: Vec<_> = (0..10)
        .map(|i| {
            tokio::spawn(
                svc.clone()
                    .oneshot(req(Method::GET, &format!("http://h/missing/{i}"))),
            )
        })
        .collect();
    tokio::task::yield_now().await;
    for i in 0..500 {
        let res = svc
            .clone()
            .oneshot(req(Method::GET, &format!("http://h/present/{i}")))
            .await;
        assert_eq!(res.unwrap().status(), 200);
    }
    gate.notify_waiters();
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap().status(), 404);
    }
    assert_eq!(cache.handle().stats().len, 10, "every 404 remembered");
}

/// A body always ready with empty frames: draining it must neither spin nor outlive its
/// timer.
struct EmptyForever;
impl Body for EmptyForever {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::new()))))
    }
}

#[test]
fn draining_an_always_ready_body_ends_at_its_timer() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let calls = Arc::new(AtomicUsize::new(0));
            let c = calls.clone();
            let upstream = tower::service_fn(move |_r: Request<Empty<Bytes>>| {
                let n = c.fetch_add(1, SeqCst);
                async move {
                    let status = if n == 0 { 503 } else { 200 };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .body(EmptyForever)
                            .unwrap(),
                    )
                }
            });
            let retry = StatusAwareRetryLayer::builder()
                .jitter(Jitter::None)
                .backoff_base(Duration::from_millis(1))
                .drain_timeout(Duration::from_millis(50))
                .build()
                .unwrap();
            let svc = ServiceBuilder::new().layer(retry).service(upstream);
            let res = tokio::time::timeout(
                Duration::from_secs(2),
                svc.oneshot(req(Method::GET, "http://h/x")),
            )
            .await;
            let _ = tx.send(res.map(|r| r.unwrap().status()).ok());
        });
    });
    let status = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the drain spun past its timer and the outer timeout");
    assert_eq!(
        status,
        Some(StatusCode::OK),
        "released at the drain timer, then retried"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hinted_wait_never_exceeds_max_retry_after() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let upstream = tower::service_fn(move |_r: Request<Empty<Bytes>>| {
        let n = c.fetch_add(1, SeqCst);
        async move {
            Ok::<_, Infallible>(if n == 0 {
                Response::builder()
                    .status(503)
                    .header("retry-after", "1")
                    .body(Empty::<Bytes>::new())
                    .unwrap()
            } else {
                answer(200)
            })
        }
    });
    // A base far above the hint cap: the spread above the hint must not carry the wait past
    // the cap.
    let retry = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_secs(60))
        .backoff_cap(Duration::from_secs(60))
        .max_retry_after(Duration::from_secs(1))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(retry).service(upstream);
    let t0 = tokio::time::Instant::now();
    let res = svc.oneshot(req(Method::GET, "http://h/x")).await.unwrap();
    assert_eq!(res.status(), 200);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited <= Duration::from_millis(1010),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn decorrelated_jitter_spreads_the_first_retry() {
    let mut waits = Vec::new();
    for _ in 0..8 {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let upstream = tower::service_fn(move |_r: Request<Empty<Bytes>>| {
            let n = c.fetch_add(1, SeqCst);
            async move { Ok::<_, Infallible>(answer(if n == 0 { 503 } else { 200 })) }
        });
        let retry = StatusAwareRetryLayer::builder()
            .backoff_base(Duration::from_millis(100))
            .jitter(Jitter::Decorrelated)
            .build()
            .unwrap();
        let svc = ServiceBuilder::new().layer(retry).service(upstream);
        let t0 = tokio::time::Instant::now();
        svc.oneshot(req(Method::GET, "http://h/x")).await.unwrap();
        let w = t0.elapsed();
        assert!(
            w >= Duration::from_millis(100) && w <= Duration::from_millis(301),
            "{w:?}"
        );
        waits.push(w);
    }
    waits.sort();
    waits.dedup();
    assert!(waits.len() > 1, "eight clients all waited {:?}", waits[0]);
}
