//! What the layers cost on an answer that passes through them: a 200 from an in-process
//! `tower::service_fn`, per `ready().await; call(req).await`.
//!
//! Group `passthrough_200`, every variant in the same run:
//! - `bare service_fn`: the floor;
//! - `tower::retry no-op`: `tower::retry::Retry` with a policy that never retries but clones
//!   each request (the same work as ours, which copies every replayable request);
//! - `tower::retry no-op, TpsBudget`: the same with tower's `TpsBudget::default()` (10 s, 10
//!   per second, 20%, as ours), every answer deposited into it: what a budget costs tower;
//! - `ours: retry`: `StatusAwareRetryLayer::new()` (default config: a budget per host);
//! - `ours: retry, one budget for the layer`: the same with `BudgetScope::layer()` (the
//!   default before per-host budgets), the baseline of their cost;
//! - `ours: retry, no budget`: the same with `no_budget()`: what the budget's deposit costs;
//! - `ours: negative cache miss`: `NegativeCacheLayer::new()`; a 200 is never remembered, so
//!   every call is a miss (lookup, key copy, forget);
//! - `ours: negative cache miss, adaptive TTL`: the same with `adaptive_ttl(1 h)` (a 2xx
//!   looks up the key's history);
//! - `ours: both layers`: cache outside retry, as the crate recommends;
//! - `ours: both layers, no budget`: the same, the retry layer with `no_budget()`: what the
//!   budget costs both layers (`benches/attribution/run` reads it).
//!
//! Futures are driven by a current-thread tokio runtime, one `block_on` per batch of calls, so
//! the runtime's entry cost is not in the per-call time.
//!
//! Run: `cargo bench --bench passthrough`

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Empty;
use tokio::runtime::Runtime;
use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::{Policy, Retry};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::retry::BudgetScope;
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

type Req = Request<Empty<Bytes>>;

const URI: &str = "http://records.internal/records/42";

fn request(uri: &Uri) -> Req {
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = uri.clone();
    req
}

/// The upstream: a 200 with an empty body, answered at once.
fn upstream_200() -> impl Service<Req, Response = Response<Empty<Bytes>>, Error = Infallible> + Clone
{
    tower::service_fn(|_req: Req| ready(Ok::<_, Infallible>(Response::new(Empty::new()))))
}

/// A `tower::retry` policy that never retries, but copies each request as ours does.
#[derive(Clone, Copy, Debug)]
struct NoRetry;

impl<Res, E> Policy<Req, Res, E> for NoRetry {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, _result: &mut Result<Res, E>) -> Option<Ready<()>> {
        None
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        let mut copy = Request::new(Empty::new());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }
}

/// [`NoRetry`] with tower's own retry budget: every answer deposits into it, as tower's docs
/// show a policy doing (on success), so the pair is what a budget costs `tower::retry`.
#[derive(Clone, Debug)]
struct NoRetryBudgeted(Arc<TpsBudget>);

impl<Res, E> Policy<Req, Res, E> for NoRetryBudgeted {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, _result: &mut Result<Res, E>) -> Option<Ready<()>> {
        self.0.deposit();
        None
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        <NoRetry as Policy<Req, Res, E>>::clone_request(&mut NoRetry, req)
    }
}

/// `iters` calls through `svc`, timed.
async fn timed_calls<S, B>(svc: &mut S, uri: &Uri, iters: u64) -> Duration
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Debug,
{
    let start = Instant::now();
    for _ in 0..iters {
        let res = svc.ready().await.unwrap().call(request(uri)).await.unwrap();
        black_box(res);
    }
    start.elapsed()
}

fn bench_service<S, B>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    mut svc: S,
) where
    S: Service<Req, Response = Response<B>>,
    S::Error: Debug,
{
    let uri = Uri::from_static(URI);
    // Every variant answers the 200 it was given.
    let res = rt
        .block_on(async { svc.ready().await.unwrap().call(request(&uri)).await })
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{name}");
    drop(res);
    group.bench_function(name, |b| {
        b.iter_custom(|iters| rt.block_on(timed_calls(&mut svc, &uri, iters)));
    });
}

fn passthrough(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("passthrough_200");
    group.throughput(Throughput::Elements(1));
    let no_budget = || {
        StatusAwareRetryLayer::builder()
            .no_budget()
            .build()
            .unwrap()
    };

    bench_service(&mut group, &rt, "bare service_fn", upstream_200());
    bench_service(
        &mut group,
        &rt,
        "tower::retry no-op",
        Retry::new(NoRetry, upstream_200()),
    );
    bench_service(
        &mut group,
        &rt,
        "tower::retry no-op, TpsBudget",
        Retry::new(
            NoRetryBudgeted(Arc::new(TpsBudget::default())),
            upstream_200(),
        ),
    );
    bench_service(
        &mut group,
        &rt,
        "ours: retry",
        ServiceBuilder::new()
            .layer(StatusAwareRetryLayer::new())
            .service(upstream_200()),
    );
    bench_service(
        &mut group,
        &rt,
        "ours: retry, one budget for the layer",
        ServiceBuilder::new()
            .layer(
                StatusAwareRetryLayer::builder()
                    .budget_scope(BudgetScope::layer())
                    .build()
                    .unwrap(),
            )
            .service(upstream_200()),
    );
    bench_service(
        &mut group,
        &rt,
        "ours: retry, no budget",
        ServiceBuilder::new()
            .layer(no_budget())
            .service(upstream_200()),
    );
    let cache = NegativeCacheLayer::new();
    bench_service(
        &mut group,
        &rt,
        "ours: negative cache miss",
        ServiceBuilder::new()
            .layer(cache.clone())
            .service(upstream_200()),
    );
    let stats = cache.handle().stats();
    assert_eq!((stats.hits, stats.len), (0, 0), "a 200 is never remembered");
    bench_service(
        &mut group,
        &rt,
        "ours: negative cache miss, adaptive TTL",
        ServiceBuilder::new()
            .layer(
                NegativeCacheLayer::builder()
                    .adaptive_ttl(std::time::Duration::from_secs(3600))
                    .build()
                    .unwrap(),
            )
            .service(upstream_200()),
    );
    bench_service(
        &mut group,
        &rt,
        "ours: both layers",
        ServiceBuilder::new()
            .layer(NegativeCacheLayer::new())
            .layer(StatusAwareRetryLayer::new())
            .service(upstream_200()),
    );
    bench_service(
        &mut group,
        &rt,
        "ours: both layers, no budget",
        ServiceBuilder::new()
            .layer(NegativeCacheLayer::new())
            .layer(no_budget())
            .service(upstream_200()),
    );
    group.finish();
}

criterion_group!(benches, passthrough);
criterion_main!(benches);
