//! Whether the layers scale: hits and pass-throughs on 1 and on 2 threads at once, through one
//! pair of layers (one store, one budget, one set of counters) shared by both threads.
//!
//! Group `scaling_hits_and_passthroughs`, each iteration one hit (a remembered 404, the same
//! key on every thread: a popular missing key) and one pass-through (a 200 through both
//! layers, a key of the thread's own), on every thread:
//! - `1 thread`: one worker;
//! - `2 threads`: two workers at once, started together, timed until both are done;
//! - `bare service_fn, 1 thread` and `bare service_fn, 2 threads`: the same calls on the
//!   upstream alone, which shares nothing between the threads — what this machine's cores give
//!   at all (on a virtual machine, 2 vCPUs may not be 2 idle cores), measured in the same run.
//!
//! Criterion reports throughput in calls per second; the goal is `2 threads` ≥ 1.8 × `1
//! thread` — nothing every request writes (a counter, a lock, a reference count on one cache
//! line) may serialise the threads. On a machine with fewer than 2 idle cores the figure
//! says nothing: check `nproc` and the load.
//!
//! Each worker drives its calls on a current-thread tokio runtime of its own, with its own
//! clone of the service.
//!
//! Run: `cargo bench --bench scaling`

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::ready;
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Empty;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

type Req = Request<Empty<Bytes>>;

const MISSING: &str = "http://records.internal/records/404";

fn request(uri: &Uri) -> Req {
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = uri.clone();
    req
}

/// 404 for the missing record, 200 for every other.
fn upstream() -> impl Service<Req, Response = Response<Empty<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(|req: Req| {
        let mut res = Response::new(Empty::new());
        if req.uri().path() == "/records/404" {
            *res.status_mut() = StatusCode::NOT_FOUND;
        }
        ready(Ok::<_, Infallible>(res))
    })
}

async fn call<S, B>(svc: &mut S, uri: &Uri) -> StatusCode
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Debug,
{
    let res = svc.ready().await.unwrap().call(request(uri)).await.unwrap();
    black_box(res).status()
}

/// `iters` rounds of (a hit, a pass-through) on each of `threads` threads at once; the time
/// from their common start until the last is done.
fn run<S, B>(svc: &S, threads: usize, iters: u64) -> Duration
where
    S: Service<Req, Response = Response<B>> + Clone + Send,
    S::Error: Debug,
{
    let start = Barrier::new(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (mut svc, start) = (svc.clone(), &start);
                scope.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    let missing = Uri::from_static(MISSING);
                    let present: Uri = format!("http://records.internal/records/{t}")
                        .parse()
                        .unwrap();
                    rt.block_on(async {
                        // Warm: this thread's first calls (lazily set up state) are not timed.
                        call(&mut svc, &present).await;
                        start.wait();
                        let began = Instant::now();
                        for _ in 0..iters {
                            assert_eq!(call(&mut svc, &missing).await, StatusCode::NOT_FOUND);
                            assert_eq!(call(&mut svc, &present).await, StatusCode::OK);
                        }
                        (began, Instant::now())
                    })
                })
            })
            .collect();
        // Each thread times itself from the common start: this thread may be scheduled out
        // past the others' end on a loaded machine.
        let spans: Vec<(Instant, Instant)> =
            workers.into_iter().map(|w| w.join().unwrap()).collect();
        let began = spans.iter().map(|s| s.0).min().unwrap();
        let ended = spans.iter().map(|s| s.1).max().unwrap();
        ended - began
    })
}

fn scaling(c: &mut Criterion) {
    let cache = NegativeCacheLayer::new();
    let svc = ServiceBuilder::new()
        .layer(cache.clone())
        .layer(StatusAwareRetryLayer::new())
        .service(upstream());
    // Remember the missing key: from then on it is a hit on every thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let status = rt.block_on(call(&mut svc.clone(), &Uri::from_static(MISSING)));
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(cache.handle().stats().inserts, 1);

    let mut group = c.benchmark_group("scaling_hits_and_passthroughs");
    for (name, threads) in [("1 thread", 1usize), ("2 threads", 2)] {
        // Each iteration: a hit and a pass-through on every thread.
        group.throughput(Throughput::Elements(2 * threads as u64));
        group.bench_function(name, |b| b.iter_custom(|iters| run(&svc, threads, iters)));
    }
    let bare = upstream();
    for (name, threads) in [
        ("bare service_fn, 1 thread", 1usize),
        ("bare service_fn, 2 threads", 2),
    ] {
        group.throughput(Throughput::Elements(2 * threads as u64));
        group.bench_function(name, |b| b.iter_custom(|iters| run(&bare, threads, iters)));
    }
    group.finish();
    let stats = cache.handle().stats();
    assert_eq!(stats.inserts, 1, "{stats:?}");
}

criterion_group!(benches, scaling);
criterion_main!(benches);
