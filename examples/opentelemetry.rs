//! An OpenTelemetry adapter from the observer seam, with no `opentelemetry` dependency in the
//! library: an `Observer` that adds to OpenTelemetry instruments, made once. Runs traffic
//! through both layers against a local origin, flushes the SDK's in-memory exporter and prints
//! what it holds.
//!
//! Run: `cargo run --example opentelemetry`
//!
//! Exits non-zero if the exported hits or retries differ from the layers' stats. In an
//! application, give `SdkMeterProvider` the OTLP exporter instead of the in-memory one.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_negative_cache::observe::{CacheEvent, Observer, RetryEvent, RetryOutcome};
use tower_negative_cache::retry::Jitter;
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

/// The adapter: instruments and their attribute sets, built once; each event is one `add`.
struct Otel {
    requests: Counter<u64>,
    hit: [KeyValue; 2],
    miss: [KeyValue; 2],
    bypass: [KeyValue; 2],
    retries: Counter<u64>,
    retry_reasons: [[KeyValue; 2]; 3],
    answers: Counter<u64>,
    outcomes: Vec<[KeyValue; 2]>,
    call_retries: Histogram<u64>,
    name: [KeyValue; 1],
}

impl Otel {
    fn new(meter: &Meter, name: &'static str) -> Otel {
        let pair = |key: &'static str, value: &'static str| {
            [KeyValue::new("name", name), KeyValue::new(key, value)]
        };
        Otel {
            requests: meter
                .u64_counter("negative_cache.requests")
                .with_unit("{request}")
                .build(),
            hit: pair("outcome", "hit"),
            miss: pair("outcome", "miss"),
            bypass: pair("outcome", "bypass"),
            retries: meter
                .u64_counter("negative_cache.retry.retries")
                .with_unit("{retry}")
                .build(),
            retry_reasons: ["status", "transport_error", "unprocessed"].map(|r| pair("reason", r)),
            answers: meter
                .u64_counter("negative_cache.retry.requests")
                .with_unit("{request}")
                .build(),
            outcomes: RetryOutcome::ALL
                .iter()
                .map(|o| pair("outcome", o.as_str()))
                .collect(),
            // gRPC A96's shape: retries per call retried at least once, buckets 1-5.
            call_retries: meter
                .u64_histogram("negative_cache.retry.call.retries")
                .with_unit("{retry}")
                .with_boundaries(vec![1.0, 2.0, 3.0, 4.0, 5.0])
                .build(),
            name: [KeyValue::new("name", name)],
        }
    }
}

impl Observer for Otel {
    fn cache(&self, event: CacheEvent) {
        match event {
            CacheEvent::Hit => self.requests.add(1, &self.hit),
            CacheEvent::Miss => self.requests.add(1, &self.miss),
            CacheEvent::Bypass => self.requests.add(1, &self.bypass),
            _ => {}
        }
    }

    fn retry(&self, event: RetryEvent) {
        match event {
            RetryEvent::Resent { reason, .. } => {
                let i = reason.as_str();
                let attrs = self.retry_reasons.iter().find(|a| a[1].value.as_str() == i);
                if let Some(attrs) = attrs {
                    self.retries.add(1, attrs);
                }
            }
            RetryEvent::Answered(outcome) => {
                let i = RetryOutcome::ALL.iter().position(|o| *o == outcome);
                if let Some(i) = i {
                    self.answers.add(1, &self.outcomes[i]);
                }
            }
            RetryEvent::CallEnded { retries } => {
                self.call_retries.record(u64::from(retries), &self.name)
            }
            _ => {}
        }
    }
}

async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

fn origin() -> Router {
    let flaky = Arc::new(AtomicU32::new(0));
    Router::new()
        .route(
            "/records/{id}",
            get(|Path(id): Path<String>| async move {
                match id.as_str() {
                    "1" => (StatusCode::OK, "record"),
                    _ => (StatusCode::NOT_FOUND, "no such record"),
                }
            }),
        )
        .route(
            "/flaky",
            get(|State(n): State<Arc<AtomicU32>>| async move {
                if n.fetch_add(1, Relaxed) % 2 == 0 {
                    (StatusCode::SERVICE_UNAVAILABLE, "warming up")
                } else {
                    (StatusCode::OK, "ready")
                }
            }),
        )
        .with_state(flaky)
}

/// The sum of a u64 counter's data points with `attribute = value`, from the exporter.
fn exported(exporter: &InMemoryMetricExporter, name: &str, attribute: (&str, &str)) -> u64 {
    let mut total = 0;
    for resource in exporter.get_finished_metrics().expect("metrics") {
        for scope in resource.scope_metrics() {
            for metric in scope.metrics().filter(|m| m.name() == name) {
                if let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() {
                    for point in sum.data_points() {
                        let matches = point.attributes().any(|kv| {
                            kv.key.as_str() == attribute.0 && kv.value.as_str() == attribute.1
                        });
                        if matches {
                            // Cumulative temporality: the last export holds the total.
                            total = point.value();
                        }
                    }
                }
            }
        }
    }
    total
}

#[tokio::main]
async fn main() -> ExitCode {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let otel: Arc<dyn Observer> = Arc::new(Otel::new(
        &provider.meter("tower-negative-cache"),
        "records",
    ));

    let cache = NegativeCacheLayer::builder()
        .observer(otel.clone())
        .build()
        .expect("valid cache");
    let retry = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .jitter(Jitter::None)
        .observer(otel)
        .build()
        .expect("valid retry");
    let (handle, retry_stats) = (cache.handle(), retry.clone());
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let svc = ServiceBuilder::new()
        .layer(cache)
        .layer(retry)
        .service(client);

    let origin = serve(origin()).await;
    for path in ["/records/1", "/records/2", "/records/3", "/flaky"] {
        for _ in 0..2 {
            let req = Request::get(format!("{origin}{path}"))
                .body(Empty::<Bytes>::new())
                .expect("request");
            let res = svc.clone().oneshot(req).await.expect("an answer");
            println!("GET {path} -> {}", res.status());
        }
    }

    provider.force_flush().expect("flush");
    let (cs, rs) = (handle.stats(), retry_stats.stats());
    let hits = exported(&exporter, "negative_cache.requests", ("outcome", "hit"));
    let retries = exported(
        &exporter,
        "negative_cache.retry.retries",
        ("reason", "status"),
    );
    println!("\nexported: negative_cache.requests{{outcome=hit}} = {hits}");
    println!("exported: negative_cache.retry.retries{{reason=status}} = {retries}");
    println!("stats: hits {}, retries {}", cs.hits, rs.retries);
    let _ = provider.shutdown();
    if hits == cs.hits && retries == rs.retries && hits > 0 && retries > 0 {
        println!("ok: the OpenTelemetry instruments equal the stats");
        ExitCode::SUCCESS
    } else {
        eprintln!("FAILED: exported hits {hits}, retries {retries}; stats {cs:?} {rs:?}");
        ExitCode::FAILURE
    }
}
