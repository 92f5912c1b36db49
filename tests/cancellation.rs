//! Cancellation: the caller's future dropped at each await point. Afterwards nothing is left
//! running or held, the budget has spent only what the cancelled request spent, every waiter
//! is released within its bound, and the cache is consistent.
//!
//! No socket is involved: the upstream is an in-process service, time is tokio's paused clock.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::Empty;
use tokio::task::JoinSet;
use tower::{Service, ServiceExt};
use tower_negative_cache::retry::Jitter;
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

/// Polls `fut` once; whether it finished.
async fn poll_once<F: Future>(fut: Pin<&mut F>) -> bool {
    let mut fut = Some(fut);
    poll_fn(|cx| Poll::Ready(fut.take().unwrap().poll(cx).is_ready())).await
}

/// Sets its flag when dropped: shows what a cancelled future released.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// A body that never yields a frame, and reports its drop.
struct Stuck(#[allow(dead_code)] DropFlag);
impl Body for Stuck {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
}

fn retry_layer() -> StatusAwareRetryLayer {
    StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_secs(1))
        .jitter(Jitter::None)
        .drain_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn dropped_during_the_upstream_call() {
    let released = Arc::new(AtomicBool::new(false));
    let flag = released.clone();
    let upstream = tower::service_fn(move |_: Request<Empty<Bytes>>| {
        let guard = DropFlag(flag.clone());
        async move {
            let _guard = guard;
            std::future::pending::<Result<Response<Empty<Bytes>>, Infallible>>().await
        }
    });
    let layer = retry_layer();
    let mut svc = tower::Layer::layer(&layer, upstream);
    {
        let fut = pin!(svc.ready().await.unwrap().call(Request::new(Empty::new())));
        assert!(!poll_once(fut).await);
    }
    assert!(
        released.load(SeqCst),
        "the upstream call was dropped with the caller's future"
    );
    let s = layer.stats();
    assert_eq!((s.requests, s.attempts, s.retries), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn dropped_during_the_drain() {
    let released = Arc::new(AtomicBool::new(false));
    let flag = released.clone();
    let upstream = tower::service_fn(move |_: Request<Empty<Bytes>>| {
        let body = Stuck(DropFlag(flag.clone()));
        async move {
            let mut res = Response::new(body);
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok::<_, Infallible>(res)
        }
    });
    let layer = retry_layer();
    let mut svc = tower::Layer::layer(&layer, upstream);
    {
        let fut = pin!(svc.ready().await.unwrap().call(Request::new(Empty::new())));
        // The 503 arrives; its body never ends, so the future sits in the drain.
        assert!(!poll_once(fut).await);
        assert!(!released.load(SeqCst), "still draining");
    }
    assert!(
        released.load(SeqCst),
        "the body being drained was dropped with the future"
    );
    // The retry was decided (and its budget spent) before the drain, but never sent: the
    // stats count only retries sent.
    assert_eq!(layer.stats().retries, 0);
}

#[tokio::test(start_paused = true)]
async fn dropped_during_the_backoff_wait_spends_only_its_own_retry() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let upstream = tower::service_fn(move |_: Request<Empty<Bytes>>| {
        c.fetch_add(1, SeqCst);
        async {
            let mut res = Response::new(Empty::<Bytes>::new());
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok::<_, Infallible>(res)
        }
    });
    // No per-second reserve: 1 request deposits 1 retry (ratio 1.0), so exactly the cancelled request's
    // own allowance is visible.
    let layer = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_secs(1))
        .jitter(Jitter::None)
        .budget_ratio(1.0)
        .budget_min_per_sec(0)
        .build()
        .unwrap();
    let mut svc = tower::Layer::layer(&layer, upstream);
    {
        let fut = pin!(svc.ready().await.unwrap().call(Request::new(Empty::new())));
        assert!(!poll_once(fut).await, "waiting out the backoff");
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        calls.load(SeqCst),
        1,
        "a cancelled wait never becomes an attempt"
    );
    let s = layer.stats();
    assert_eq!(
        (s.requests, s.attempts, s.retries, s.answered()),
        (1, 1, 0, 0)
    );
    // The next request gets its own deposit and can retry; the cancelled one spent its own.
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(Empty::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let s = layer.stats();
    assert_eq!(s.requests, 2);
    assert_eq!(
        s.retries, 1,
        "one retry sent, for the second request: {s:?}"
    );
    assert_eq!(
        s.budget_exhausted, 1,
        "its second retry had no budget: {s:?}"
    );
}

/// An upstream for the cache tests: 404 after `delay`, counting calls; `hold` keeps every call
/// pending until it is set.
fn slow_404(
    calls: Arc<AtomicUsize>,
    delay: Duration,
) -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<Empty<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Empty<Bytes>>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_: Request<Empty<Bytes>>| {
        calls.fetch_add(1, SeqCst);
        async move {
            tokio::time::sleep(delay).await;
            let mut res = Response::new(Empty::<Bytes>::new());
            *res.status_mut() = StatusCode::NOT_FOUND;
            Ok(res)
        }
    })
}

fn get() -> Request<Empty<Bytes>> {
    Request::get("http://origin.test/records/gone")
        .body(Empty::new())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_waiter_dropped_while_waiting_leaves_the_flight_intact() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = NegativeCacheLayer::builder()
        .coalesce(Duration::from_secs(5))
        .build()
        .unwrap();
    let svc = tower::Layer::layer(&layer, slow_404(calls.clone(), Duration::from_millis(100)));

    let leader = tokio::spawn(svc.clone().oneshot(get()));
    tokio::task::yield_now().await;
    {
        let mut s = svc.clone();
        let fut = pin!(s.ready().await.unwrap().call(get()));
        assert!(!poll_once(fut).await, "waiting on the leader");
    }
    let res = leader.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(calls.load(SeqCst), 1);
    let s = layer.handle().stats();
    assert_eq!(
        (s.lookups, s.hits + s.misses, s.coalesced, s.len),
        (2, 2, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_leader_releases_every_waiter_at_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = NegativeCacheLayer::builder()
        .coalesce(Duration::from_secs(30))
        .build()
        .unwrap();
    let svc = tower::Layer::layer(&layer, slow_404(calls.clone(), Duration::from_millis(100)));

    let mut leader_svc = svc.clone();
    let mut leader = Box::pin(leader_svc.ready().await.unwrap().call(get()));
    assert!(!poll_once(leader.as_mut()).await, "the leader is upstream");
    let mut waiters = JoinSet::new();
    for _ in 0..20 {
        waiters.spawn(svc.clone().oneshot(get()));
    }
    tokio::task::yield_now().await;
    assert_eq!(layer.handle().stats().coalesced, 20);
    let dropped_at = tokio::time::Instant::now();
    drop(leader);
    while let Some(r) = waiters.join_next().await {
        assert_eq!(r.unwrap().unwrap().status(), StatusCode::NOT_FOUND);
    }
    // Released together, they all went upstream in parallel: one origin delay, not twenty,
    // and far below the 30 s wait bound.
    assert!(
        dropped_at.elapsed() < Duration::from_millis(200),
        "{:?}",
        dropped_at.elapsed()
    );
    assert_eq!(calls.load(SeqCst), 1 + 20);
    let s = layer.handle().stats();
    assert_eq!(s.wait_timeouts, 0);
    assert_eq!(s.len, 1, "the released waiters' 404s are remembered");
    assert_eq!(s.lookups, s.hits + s.misses);
}

#[tokio::test(start_paused = true)]
async fn waiters_never_outlive_their_bound() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = NegativeCacheLayer::builder()
        .coalesce(Duration::from_millis(250))
        .build()
        .unwrap();
    // The leader's answer takes 10 s; waiters give up on it after 250 ms.
    let svc = tower::Layer::layer(&layer, slow_404(calls.clone(), Duration::from_secs(10)));
    let leader = tokio::spawn(svc.clone().oneshot(get()));
    tokio::task::yield_now().await;
    let started = tokio::time::Instant::now();
    let waiter = tokio::spawn(svc.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        calls.load(SeqCst),
        2,
        "the waiter went upstream itself at its bound"
    );
    assert_eq!(layer.handle().stats().wait_timeouts, 1);
    waiter.await.unwrap().unwrap();
    leader.await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_secs(10));
}
