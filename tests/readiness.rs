//! The tower readiness contract under the negative cache: only a service driven to ready is
//! called, and no path keeps a reservation it did not use — over `Buffer` and
//! `ConcurrencyLimit`, with callers that hold their service across awaits (the ordinary
//! `svc.ready().await?.call(req).await` pattern), for hits, misses, coalesced waiters and
//! leaders that fail.
//!
//! In-process upstreams (`tower::service_fn`) on tokio's paused clock: what is under test is
//! readiness, not the network. A hang shows as the 60 s (paused) timeout firing.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use tokio::sync::Notify;
use tower::buffer::Buffer;
use tower::limit::ConcurrencyLimit;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::cache::NegativeCacheHit;

type Req = Request<Empty<Bytes>>;

const NO_HANG: Duration = Duration::from_secs(60);

fn get(path: &str) -> Req {
    Request::get(format!("http://origin.test{path}"))
        .body(Empty::new())
        .unwrap()
}

/// 404 for `/missing*`, 200 for anything else; counts calls.
fn origin(
    calls: Arc<AtomicUsize>,
) -> impl Service<Req, Response = Response<Empty<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |req: Req| {
        calls.fetch_add(1, SeqCst);
        let status = if req.uri().path().starts_with("/missing") {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        let mut res = Response::new(Empty::new());
        *res.status_mut() = status;
        std::future::ready(Ok::<_, Infallible>(res))
    })
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(NO_HANG, f).await {
        Ok(t) => t,
        Err(_) => panic!("{what}: hung (no answer within {NO_HANG:?} of paused time)"),
    }
}

/// A caller that got a hit and keeps its service must not keep the inner slot: another caller
/// of a `Buffer(1)` (or `ConcurrencyLimit(1)`) under it still gets through.
async fn hit_keeps_no_slot<S>(inner: S)
where
    S: Service<Req, Response = Response<Empty<Bytes>>, Error = BoxError> + Clone,
{
    let cache = NegativeCacheLayer::new();
    let mut a = cache.layer(inner.clone());
    let mut b = cache.layer(inner);
    // Remember the 404, then hit it; `a` stays alive (a caller holding its service).
    let first = within("first", a.ready().await.unwrap().call(get("/missing"))).await;
    assert_eq!(first.unwrap().status(), StatusCode::NOT_FOUND);
    let hit = within("hit", async {
        a.ready().await?.call(get("/missing")).await
    })
    .await;
    assert!(
        hit.unwrap()
            .extensions()
            .get::<NegativeCacheHit>()
            .is_some()
    );
    // `a` polled ready for the hit: under the old code it still held the only slot here.
    within("another caller after a hit", async {
        let res = b.ready().await?.call(get("/present")).await?;
        assert_eq!(res.status(), StatusCode::OK);
        Ok::<_, BoxError>(())
    })
    .await
    .unwrap();
    drop(a);
}

#[tokio::test(start_paused = true)]
async fn a_hit_releases_its_buffer_slot() {
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = Buffer::new(origin(calls.clone()), 1);
    hit_keeps_no_slot(inner).await;
    assert_eq!(
        calls.load(SeqCst),
        2,
        "the 404 and the 200; the hit called nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hit_releases_its_concurrency_limit_permit() {
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = ConcurrencyLimit::new(origin(calls.clone()).map_err(BoxError::from), 1);
    hit_keeps_no_slot(inner).await;
    assert_eq!(calls.load(SeqCst), 2);
}

/// Many callers, each holding its service, all answered by hits, over a limit smaller than
/// their number: none starves.
#[tokio::test(start_paused = true)]
async fn idle_callers_after_hits_do_not_starve_a_limit() {
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = ConcurrencyLimit::new(origin(calls.clone()).map_err(BoxError::from), 2);
    let cache = NegativeCacheLayer::new();
    let mut seed = cache.layer(inner.clone());
    seed.ready()
        .await
        .unwrap()
        .call(get("/missing"))
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut svc = cache.layer(inner.clone());
        let res = within("hit", async {
            svc.ready().await?.call(get("/missing")).await
        })
        .await;
        assert!(
            res.unwrap()
                .extensions()
                .get::<NegativeCacheHit>()
                .is_some()
        );
        held.push(svc);
    }
    let mut late = cache.layer(inner);
    within("a miss behind 8 idle callers", async {
        late.ready().await?.call(get("/present")).await
    })
    .await
    .unwrap();
    assert_eq!(calls.load(SeqCst), 2);
}

/// An upstream whose answers wait for the test: 200 (or an error) once released.
#[derive(Clone)]
struct Gate {
    open: Arc<Notify>,
    fail: bool,
    calls: Arc<AtomicUsize>,
}

impl Service<Req> for Gate {
    type Response = Response<Empty<Bytes>>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Response<Empty<Bytes>>, BoxError>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Req) -> Self::Future {
        let n = self.calls.fetch_add(1, SeqCst);
        let (open, fail) = (self.open.clone(), self.fail && n == 0);
        Box::pin(async move {
            if n == 0 {
                open.notified().await;
            }
            if fail {
                return Err::<_, BoxError>("the leader's call failed".into());
            }
            Ok(Response::new(Empty::new()))
        })
    }
}

/// A coalesced waiter released by its leader's answer (200, or an error) goes upstream through
/// a `Buffer(1)`, while its caller holds its own service: it must not wait on the slot its own
/// caller's service holds.
async fn released_waiter_gets_through(fail: bool) {
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Gate {
        open: Arc::new(Notify::new()),
        fail,
        calls: calls.clone(),
    };
    let inner = Buffer::new(gate.clone(), 1);
    let cache = NegativeCacheLayer::builder()
        .coalesce(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut leader_svc = cache.layer(inner.clone());
    let mut waiter_svc = cache.layer(inner);
    let leader = leader_svc.ready().await.unwrap().call(get("/r/1"));
    let leader = tokio::spawn(leader);
    // Let the buffer's worker take the leader's request.
    while calls.load(SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let waiter = async {
        // The ordinary pattern: the caller holds `waiter_svc` across the whole await.
        let svc = waiter_svc.ready().await?;
        svc.call(get("/r/1")).await
    };
    let waiter = async {
        tokio::pin!(waiter);
        // Park the waiter on the flight, then release the leader.
        tokio::select! {
            biased;
            _ = &mut waiter => panic!("the waiter did not wait for the leader"),
            _ = tokio::task::yield_now() => {}
        }
        gate.open.notify_one();
        waiter.await
    };
    let res = within("a released waiter over Buffer(1)", waiter).await;
    assert_eq!(res.unwrap().status(), StatusCode::OK);
    let led = leader.await.unwrap();
    assert_eq!(led.is_err(), fail);
    assert_eq!(
        calls.load(SeqCst),
        2,
        "the leader's call and the released waiter's"
    );
    assert_eq!(cache.handle().stats().coalesced, 1);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_released_by_a_200_gets_through_a_buffer_of_one() {
    released_waiter_gets_through(false).await;
}

#[tokio::test(start_paused = true)]
async fn a_waiter_released_by_a_failed_leader_gets_through_a_buffer_of_one() {
    released_waiter_gets_through(true).await;
}

/// A waiter holds no slot while it waits: with `ConcurrencyLimit(1)` under the cache, a caller
/// for another key gets through while a leader and a waiter are out.
#[tokio::test(start_paused = true)]
async fn a_waiter_holds_no_slot_while_it_waits() {
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Gate {
        open: Arc::new(Notify::new()),
        fail: false,
        calls: calls.clone(),
    };
    // The limit is above the leader's own call: 2 slots, the leader takes one.
    let inner = ConcurrencyLimit::new(gate.clone(), 2);
    let cache = NegativeCacheLayer::builder()
        .coalesce(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut a = cache.layer(inner.clone());
    let mut b = cache.layer(inner.clone());
    let mut c = cache.layer(inner);
    let leader = tokio::spawn(a.ready().await.unwrap().call(get("/r/1")));
    tokio::task::yield_now().await;
    let waiter = tokio::spawn(b.ready().await.unwrap().call(get("/r/1")));
    tokio::task::yield_now().await;
    // The leader holds one slot; the waiter must hold none, so `c` gets the other.
    let other = within("another key while a waiter waits", async {
        c.ready().await?.call(get("/r/2")).await
    })
    .await;
    assert_eq!(other.unwrap().status(), StatusCode::OK);
    gate.open.notify_one();
    within("leader", leader).await.unwrap().unwrap();
    within("waiter", waiter).await.unwrap().unwrap();
}

/// A non-`Clone` service is used through `BoxCloneSyncService` (or `Buffer`), as the docs say.
#[tokio::test(start_paused = true)]
async fn boxed_clone_services_work() {
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = BoxCloneSyncService::new(origin(calls.clone()).map_err(BoxError::from));
    let cache = NegativeCacheLayer::new();
    let mut svc = cache.layer(inner);
    for _ in 0..3 {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(get("/missing"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(calls.load(SeqCst), 1);
}
