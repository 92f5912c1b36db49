//! The retry loop itself: the upstream answers 503, 503, then 200 for every request, and
//! nothing waits between attempts.
//!
//! Group `retry_503_503_200`, every variant in the same run:
//! - `bare service_fn (1 call)`: one call, for reference;
//! - `bare service_fn, caller loops (3 calls)`: a hand-written loop calling until the 200, the
//!   floor of any retry mechanism;
//! - `tower::retry`: `tower::retry::Retry` with a policy retrying 503 up to 2 times, no wait;
//! - `ours: retry`: `StatusAwareRetryLayer` with `backoff_base(0)`, `no_budget()`,
//!   `max_retries(2)`;
//! - `ours: retry, deadline`: the same with a 60 s `deadline`, where the service for a retry is
//!   made ready before the discarded answer is released;
//! - `ours: retry, budget per host` and `ours: retry, one budget for the layer`: the budget on
//!   (ratio 1000, so every retry is granted), scoped per host (the default) or as one for the
//!   layer (the default before): the cost of finding the host's budget.
//!
//! The upstream counts its calls and answers by the count mod 3, so with 3 calls per request
//! each request sees 503, 503, 200 (checked before and after measuring). One current-thread
//! tokio runtime, one `block_on` per batch.
//!
//! Run: `cargo bench --bench retry_path`

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Empty;
use tokio::runtime::Runtime;
use tower::retry::{Policy, Retry};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::retry::BudgetScope;
use tower_negative_cache::{RetryInfo, StatusAwareRetryLayer};

type Req = Request<Empty<Bytes>>;

const URI: &str = "http://records.internal/records/42";

fn request(uri: &Uri) -> Req {
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = uri.clone();
    req
}

/// The upstream: 503, 503, 200, 503, 503, 200, ... by its own call count.
fn flaky_upstream(
    calls: Arc<AtomicU64>,
) -> impl Service<Req, Response = Response<Empty<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(move |_req: Req| {
        let n = calls.fetch_add(1, Relaxed);
        let mut res = Response::new(Empty::new());
        if n % 3 != 2 {
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        ready(Ok::<_, Infallible>(res))
    })
}

/// A `tower::retry` policy equivalent to ours here: retry a 503 up to twice, at once.
#[derive(Clone, Copy, Debug)]
struct Retry503 {
    remaining: u32,
}

impl<B, E> Policy<Req, Response<B>, E> for Retry503 {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Response<B>, E>) -> Option<Ready<()>> {
        match result {
            Ok(res) if res.status() == StatusCode::SERVICE_UNAVAILABLE && self.remaining > 0 => {
                self.remaining -= 1;
                Some(ready(()))
            }
            _ => None,
        }
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

/// One request; with `caller_loops`, sent again until it is not a 503.
async fn send<S, B>(svc: &mut S, uri: &Uri, caller_loops: bool) -> Response<B>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Debug,
{
    loop {
        let res = svc.ready().await.unwrap().call(request(uri)).await.unwrap();
        if !caller_loops || res.status() != StatusCode::SERVICE_UNAVAILABLE {
            return res;
        }
    }
}

async fn timed_sends<S, B>(svc: &mut S, uri: &Uri, caller_loops: bool, iters: u64) -> Duration
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Debug,
{
    let start = Instant::now();
    for _ in 0..iters {
        black_box(send(svc, uri, caller_loops).await);
    }
    start.elapsed()
}

/// Benches `svc` over its own upstream, checking each request made `calls_per_request`
/// upstream calls (and, with 3, ended in the 200).
fn bench_retry<S, B>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    calls_per_request: u64,
    caller_loops: bool,
    make: impl FnOnce(Arc<AtomicU64>) -> S,
) where
    S: Service<Req, Response = Response<B>>,
    S::Error: Debug,
{
    let uri = Uri::from_static(URI);
    let calls = Arc::new(AtomicU64::new(0));
    let mut svc = make(calls.clone());
    let mut requests = 0u64;
    if calls_per_request == 3 {
        let res = rt.block_on(send(&mut svc, &uri, caller_loops));
        assert_eq!(res.status(), StatusCode::OK, "{name}");
        assert_eq!(calls.load(Relaxed), 3, "{name}: 503, 503, 200");
        requests += 1;
    }
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            requests += iters;
            rt.block_on(timed_sends(&mut svc, &uri, caller_loops, iters))
        });
    });
    assert_eq!(
        calls.load(Relaxed),
        calls_per_request * requests,
        "{name}: {calls_per_request} calls a request"
    );
}

fn retry_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("retry_503_503_200");
    group.throughput(Throughput::Elements(1));

    bench_retry(
        &mut group,
        &rt,
        "bare service_fn (1 call)",
        1,
        false,
        flaky_upstream,
    );
    bench_retry(
        &mut group,
        &rt,
        "bare service_fn, caller loops (3 calls)",
        3,
        true,
        flaky_upstream,
    );
    bench_retry(&mut group, &rt, "tower::retry", 3, false, |calls| {
        Retry::new(Retry503 { remaining: 2 }, flaky_upstream(calls))
    });

    let layer = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::ZERO)
        .no_budget()
        .max_retries(2)
        .build()
        .unwrap();
    bench_retry(&mut group, &rt, "ours: retry", 3, false, |calls| {
        ServiceBuilder::new()
            .layer(layer.clone())
            .service(flaky_upstream(calls))
    });
    let with_deadline = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::ZERO)
        .no_budget()
        .max_retries(2)
        .deadline(Duration::from_secs(60))
        .build()
        .unwrap();
    bench_retry(
        &mut group,
        &rt,
        "ours: retry, deadline",
        3,
        false,
        |calls| {
            ServiceBuilder::new()
                .layer(with_deadline.clone())
                .service(flaky_upstream(calls))
        },
    );
    let budgeted = |scope: BudgetScope| {
        StatusAwareRetryLayer::builder()
            .backoff_base(Duration::ZERO)
            .budget_ratio(1000.0)
            .budget_scope(scope)
            .max_retries(2)
            .build()
            .unwrap()
    };
    let (per_host, per_layer) = (
        budgeted(BudgetScope::per_host()),
        budgeted(BudgetScope::layer()),
    );
    for (name, layer) in [
        ("ours: retry, budget per host", &per_host),
        ("ours: retry, one budget for the layer", &per_layer),
    ] {
        bench_retry(&mut group, &rt, name, 3, false, |calls| {
            ServiceBuilder::new()
                .layer(layer.clone())
                .service(flaky_upstream(calls))
        });
    }
    for stats in [
        layer.stats(),
        with_deadline.stats(),
        per_host.stats(),
        per_layer.stats(),
    ] {
        assert_eq!(stats.retries, 2 * stats.requests, "{stats:?}");
        assert_eq!(stats.gave_up, 0, "{stats:?}");
    }
    group.finish();

    // Ours leaves its verdict on the answer: 3 attempts, success.
    let calls = Arc::new(AtomicU64::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(flaky_upstream(calls));
    let res = rt.block_on(send(&mut svc, &Uri::from_static(URI), false));
    let info = RetryInfo::of(&res).unwrap();
    assert_eq!(info.attempts, 3);
}

criterion_group!(benches, retry_path);
criterion_main!(benches);
