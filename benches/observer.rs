//! What observing costs: a cache hit and a retry layer pass-through, each with no observer
//! (the default), and with `CacheMetrics`/`RetryMetrics` recording into metrics-util's
//! `DebuggingRecorder` (atomic handles, as real recorders hold) — measured in the same run,
//! so the ratio is what to read.
//!
//! Run: `cargo bench --features metrics --bench observer`

use std::convert::Infallible;
use std::future::ready;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group};
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use metrics_util::debugging::DebuggingRecorder;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::metrics::{CacheMetrics, RetryMetrics};
use tower_negative_cache::observe::Observer;
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

type Req = Request<Empty<Bytes>>;

fn upstream(
    status: StatusCode,
) -> impl Service<Req, Response = Response<Empty<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(move |_req: Req| {
        let mut res = Response::new(Empty::new());
        *res.status_mut() = status;
        ready(Ok::<_, Infallible>(res))
    })
}

fn request() -> Req {
    Request::get("http://origin.test/records/missing")
        .body(Empty::new())
        .unwrap()
}

fn observers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let recorder = DebuggingRecorder::new();
    let (cache_metrics, retry_metrics) = metrics::with_local_recorder(&recorder, || {
        (CacheMetrics::new("bench"), RetryMetrics::new("bench"))
    });
    let cache_metrics: Arc<dyn Observer> = Arc::new(cache_metrics);
    let retry_metrics: Arc<dyn Observer> = Arc::new(retry_metrics);

    let mut group = c.benchmark_group("observer/cache_hit");
    group.throughput(Throughput::Elements(1));
    for (name, observer) in [("off", None), ("metrics", Some(cache_metrics))] {
        let mut builder = NegativeCacheLayer::builder();
        if let Some(o) = observer {
            builder = builder.observer(o);
        }
        let mut svc = ServiceBuilder::new()
            .layer(builder.build().unwrap())
            .service(upstream(StatusCode::NOT_FOUND));
        rt.block_on(async { svc.ready().await.unwrap().call(request()).await.unwrap() });
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let res = svc.ready().await.unwrap().call(request()).await.unwrap();
                        black_box(res.status());
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("observer/retry_passthrough");
    group.throughput(Throughput::Elements(1));
    for (name, observer) in [("off", None), ("metrics", Some(retry_metrics))] {
        let mut builder = StatusAwareRetryLayer::builder();
        if let Some(o) = observer {
            builder = builder.observer(o);
        }
        let mut svc = ServiceBuilder::new()
            .layer(builder.build().unwrap())
            .service(upstream(StatusCode::OK));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let res = svc.ready().await.unwrap().call(request()).await.unwrap();
                        black_box(res.status());
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, observers);

/// With `OBSERVER_CALLS=n OBSERVER_VARIANT=cache_off|cache_metrics|retry_off|retry_metrics`,
/// makes `n` calls of that variant and exits, for an instruction count under callgrind (run
/// with two values of `n`; the difference divided by the difference of calls is the figure):
/// steadier than wall time on a shared machine.
fn main() {
    if let (Ok(n), Ok(variant)) = (
        std::env::var("OBSERVER_CALLS"),
        std::env::var("OBSERVER_VARIANT"),
    ) {
        return count(n.parse().expect("a number of calls"), &variant);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

fn count(n: u64, variant: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let recorder = DebuggingRecorder::new();
    let (cache_metrics, retry_metrics) = metrics::with_local_recorder(&recorder, || {
        (CacheMetrics::new("bench"), RetryMetrics::new("bench"))
    });
    let run = |mut svc: tower::util::UnsyncBoxService<Req, Response<Empty<Bytes>>, Infallible>| {
        rt.block_on(async {
            for _ in 0..n {
                let res = svc.ready().await.unwrap().call(request()).await.unwrap();
                black_box(res.status());
            }
        })
    };
    let cache = |o: Option<Arc<dyn Observer>>| {
        let mut b = NegativeCacheLayer::builder();
        if let Some(o) = o {
            b = b.observer(o);
        }
        let svc = ServiceBuilder::new()
            .layer(b.build().unwrap())
            .service(upstream(StatusCode::NOT_FOUND))
            .map_response(|r| r.map(|_| Empty::new()));
        tower::util::UnsyncBoxService::new(svc)
    };
    let retry = |o: Option<Arc<dyn Observer>>| {
        let mut b = StatusAwareRetryLayer::builder();
        if let Some(o) = o {
            b = b.observer(o);
        }
        let svc = ServiceBuilder::new()
            .layer(b.build().unwrap())
            .service(upstream(StatusCode::OK));
        tower::util::UnsyncBoxService::new(svc)
    };
    match variant {
        "cache_off" => run(cache(None)),
        "cache_metrics" => run(cache(Some(Arc::new(cache_metrics)))),
        "retry_off" => run(retry(None)),
        "retry_metrics" => run(retry(Some(Arc::new(retry_metrics)))),
        other => panic!("unknown variant {other}"),
    }
}
