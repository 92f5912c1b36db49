//! Both layers' metrics in Prometheus: installs `metrics-exporter-prometheus` as the
//! application's recorder, runs traffic through the negative cache and the retry layer against
//! a local origin, serves `/metrics` through axum, scrapes itself once and prints the
//! exposition text.
//!
//! Run: `cargo run --features metrics --example prometheus`
//!
//! Exits non-zero if the scrape lacks a `# TYPE` line of either layer or a counter disagrees
//! with the stats snapshot, so CI runs it as a smoke test.

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
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_negative_cache::metrics::{self as m, CacheMetrics, RetryMetrics};
use tower_negative_cache::retry::Jitter;
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

/// Serves `router` on 127.0.0.1:0; its address.
async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// The origin: records 1-3 exist, other ids are 404; `/flaky` answers 503 every other time.
fn origin() -> Router {
    let flaky = Arc::new(AtomicU32::new(0));
    Router::new()
        .route(
            "/records/{id}",
            get(|Path(id): Path<String>| async move {
                match id.as_str() {
                    "1" | "2" | "3" => (StatusCode::OK, "record"),
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

async fn text(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: &str,
) -> String {
    let req = Request::get(url).body(Empty::new()).expect("request");
    let res = client.request(req).await.expect("scrape");
    let body = res.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::main]
async fn main() -> ExitCode {
    // 1. The application installs its recorder first: the layers' observers register their
    //    handles with the recorder installed when they are made. gRPC A96's buckets for the
    //    retries-per-call histogram.
    let handle: PrometheusHandle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(m::RETRY_CALL_RETRIES.to_owned()),
            &m::RETRIES_PER_CALL_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(m::RETRY_BACKOFF.to_owned()),
                &[0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0],
            )
        })
        .expect("buckets")
        .install_recorder()
        .expect("no other recorder installed");

    // 2. Both layers, each with its observer, named "records".
    let cache = NegativeCacheLayer::builder()
        .observer(Arc::new(CacheMetrics::new("records")))
        .build()
        .expect("valid cache");
    let retry = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .jitter(Jitter::None)
        .observer(Arc::new(RetryMetrics::new("records")))
        .build()
        .expect("valid retry");
    let (cache_handle, retry_stats) = (cache.handle(), retry.clone());
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let svc = ServiceBuilder::new()
        .layer(cache)
        .layer(retry)
        .service(client.clone());

    // 3. Traffic: present and missing records, each twice; a flaky route.
    let origin = serve(origin()).await;
    for path in ["/records/1", "/records/404", "/records/405", "/flaky"] {
        for _ in 0..2 {
            let req = Request::get(format!("{origin}{path}"))
                .body(Empty::<Bytes>::new())
                .expect("request");
            let res = svc.clone().oneshot(req).await.expect("an answer");
            println!("GET {path} -> {}", res.status());
        }
    }

    // 4. /metrics through axum, scraped once.
    let metrics = Router::new().route("/metrics", get(move || async move { handle.render() }));
    let exposition = text(&client, &format!("{}/metrics", serve(metrics).await)).await;
    println!("\n{exposition}");

    let (cs, rs) = (cache_handle.stats(), retry_stats.stats());
    println!("cache stats: {cs:?}\nretry stats: {rs:?}");
    let mut failures = Vec::new();
    for line in [
        "# TYPE negative_cache_requests counter",
        "# TYPE negative_cache_inserts counter",
        "# TYPE negative_cache_entries gauge",
        "# TYPE negative_cache_retry_requests counter",
        "# TYPE negative_cache_retry_retries counter",
        "# TYPE negative_cache_retry_call_retries histogram",
    ] {
        if !exposition.contains(line) {
            failures.push(format!("missing `{line}`"));
        }
    }
    for (series, want) in [
        (
            r#"negative_cache_requests{name="records",outcome="hit"}"#,
            cs.hits,
        ),
        (r#"negative_cache_inserts{name="records"}"#, cs.inserts),
        (
            r#"negative_cache_retry_retries{name="records",reason="status"}"#,
            rs.retries,
        ),
    ] {
        let line = exposition.lines().find(|l| l.starts_with(series));
        let got = line.and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
        if got != Some(want) || want == 0 {
            failures.push(format!("{series}: scraped {got:?}, stats {want}"));
        }
    }
    if failures.is_empty() {
        println!("ok: the scrape shows both layers, and its counters equal the stats");
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        ExitCode::FAILURE
    }
}
