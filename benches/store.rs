//! The negative cache's store under insertion pressure: every request is a new missing key.
//!
//! - Group `negative_cache_insert_at_capacity`: a `NegativeCacheLayer` of capacity 10,000,
//!   filled with 10,000 missing keys beforehand; each iteration is a request for a key never
//!   seen before, answered 404 by an in-process `tower::service_fn`, so it is looked up, missed,
//!   inserted, and pushes another entry out. Baseline: the same requests through the bare
//!   service_fn.
//! - Group `negative_cache_flood`: 100,000 distinct missing keys as one iteration through a
//!   layer of capacity 10,000 (`Throughput::Elements(100_000)`), against the same through the
//!   bare service_fn.
//!
//! The request targets (distinct, fixed length: `http://records.internal/records/missing-`
//! and a ten-digit counter) are built before the timer starts; the timed part is the
//! `ready().await; call(req).await` of each. One current-thread tokio runtime, one `block_on`
//! per batch.
//!
//! Run: `cargo bench --bench store`

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::ready;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Empty;
use tokio::runtime::Runtime;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;

type Req = Request<Empty<Bytes>>;

const CAPACITY: u64 = 10_000;
const FLOOD: u64 = 100_000;

/// Distinct request targets of one length: a counter that never repeats within a run.
struct Targets(u64);

impl Targets {
    fn next(&mut self) -> Uri {
        self.0 += 1;
        format!("http://records.internal/records/missing-{:010}", self.0)
            .parse()
            .unwrap()
    }

    fn take(&mut self, n: u64) -> Vec<Uri> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// The upstream: a 404 with an empty body, answered at once.
fn upstream_404() -> impl Service<Req, Response = Response<Empty<Bytes>>, Error = Infallible> + Clone
{
    tower::service_fn(|_req: Req| {
        let mut res = Response::new(Empty::new());
        *res.status_mut() = StatusCode::NOT_FOUND;
        ready(Ok::<_, Infallible>(res))
    })
}

/// Sends one request per target through `svc`; the time it took.
async fn timed_requests<S, B>(svc: &mut S, targets: Vec<Uri>) -> Duration
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Debug,
{
    let start = Instant::now();
    for uri in targets {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = uri;
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        black_box(res);
    }
    start.elapsed()
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A layer of capacity 10,000 already holding (about) 10,000 missing keys: those of `fill`.
fn full_cache(
    rt: &Runtime,
    fill: Vec<Uri>,
) -> (
    NegativeCacheLayer,
    impl Service<Req, Response = Response<impl Sized>, Error = Infallible>,
) {
    let cache = NegativeCacheLayer::builder()
        .capacity(CAPACITY)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(cache.clone())
        .service(upstream_404());
    rt.block_on(timed_requests(&mut svc, fill));
    let stats = cache.handle().stats();
    assert_eq!(stats.inserts, CAPACITY);
    // Shards get equal shares of the capacity, so a few may have been pushed out already.
    assert!(
        stats.len > CAPACITY * 9 / 10,
        "filled to {} of {CAPACITY}",
        stats.len
    );
    (cache, svc)
}

fn insert_at_capacity(c: &mut Criterion) {
    let rt = runtime();
    let mut targets = Targets(0);
    let mut group = c.benchmark_group("negative_cache_insert_at_capacity");
    group.throughput(Throughput::Elements(1));

    let mut bare = upstream_404();
    group.bench_function("bare service_fn", |b| {
        b.iter_custom(|iters| {
            let batch = targets.take(iters);
            rt.block_on(timed_requests(&mut bare, batch))
        });
    });

    let (cache, mut svc) = full_cache(&rt, targets.take(CAPACITY));
    let evictions_before = cache.handle().stats().evictions;
    group.bench_function("negative cache, insert + evict", |b| {
        b.iter_custom(|iters| {
            let batch = targets.take(iters);
            rt.block_on(timed_requests(&mut svc, batch))
        });
    });
    let stats = cache.handle().stats();
    assert_eq!(stats.hits, 0, "every key is new");
    assert!(stats.len <= CAPACITY);
    assert!(stats.evictions > evictions_before);
    assert_eq!(
        stats.evictions,
        stats.inserts - stats.len,
        "every entry not held was evicted: {stats:?}"
    );
    group.finish();
}

fn flood(c: &mut Criterion) {
    let rt = runtime();
    let mut targets = Targets(1 << 32);
    let mut group = c.benchmark_group("negative_cache_flood");
    group.throughput(Throughput::Elements(FLOOD));
    // Tens of milliseconds an iteration: every sample the same size.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);

    let mut bare = upstream_404();
    group.bench_function("bare service_fn", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let batch = targets.take(FLOOD);
                    rt.block_on(timed_requests(&mut bare, batch))
                })
                .sum()
        });
    });

    let (cache, mut svc) = full_cache(&rt, targets.take(CAPACITY));
    group.bench_function("negative cache, 100k new keys", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let batch = targets.take(FLOOD);
                    rt.block_on(timed_requests(&mut svc, batch))
                })
                .sum()
        });
    });
    let stats = cache.handle().stats();
    assert_eq!(stats.hits, 0, "every key is new");
    assert!(stats.len <= CAPACITY);
    group.finish();
}

criterion_group!(benches, insert_at_capacity, flood);
criterion_main!(benches);
