//! Soak: mixed traffic — present, missing, flaky (503), slow — against a local origin through
//! both layers, printing throughput, upstream calls, cache size and resident memory.
//!
//! Run: `cargo run --release --example soak -- [SECONDS]` (default 30).
//!
//! Resident memory must be flat after warm-up: the example exits non-zero if the last reading
//! exceeds the one taken after warm-up by more than 20%.

#![allow(unsafe_code)] // a counting global allocator, to tell live heap from RSS

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::timeout::TimeoutLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

/// Counts live heap bytes, so growth of the heap can be told from growth of RSS (which also
/// holds the allocator's free lists and per-thread arenas).
struct Counting;

static LIVE: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const TASKS: u64 = 32;
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// The origin: `/present/N` 200 with 1 KiB, `/missing/N` 404, `/flaky/N` 503 every other
/// time, `/slow/N` 200 after 20 ms.
async fn origin(upstream: Arc<AtomicU64>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let flaky = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (upstream, flaky) = (upstream.clone(), flaky.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    upstream.fetch_add(1, Relaxed);
                    let path = req.uri().path().to_owned();
                    let flip = flaky.fetch_add(1, Relaxed) % 2 == 0;
                    async move {
                        let (status, body) = if path.starts_with("/missing/") {
                            (StatusCode::NOT_FOUND, Bytes::from_static(b"no such record"))
                        } else if path.starts_with("/flaky/") && flip {
                            (StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(b"busy"))
                        } else {
                            if path.starts_with("/slow/") {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            (StatusCode::OK, Bytes::from(vec![b'r'; 1024]))
                        };
                        let mut res = Response::new(Full::new(body));
                        *res.status_mut() = status;
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// Resident set size in KiB, from /proc (Linux); 0 elsewhere.
fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

#[tokio::main]
async fn main() -> ExitCode {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let upstream = Arc::new(AtomicU64::new(0));
    let base: Arc<str> = origin(upstream.clone()).await.into();

    let cache = NegativeCacheLayer::builder()
        .capacity(10_000)
        .ttl(Duration::from_secs(5))
        .coalesce(Duration::from_secs(1))
        .build()
        .unwrap();
    let retry = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(5))
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(cache.clone())
        .layer(retry.clone())
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());

    let requests = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = JoinSet::new();
    for t in 0..TASKS {
        let (client, base, requests, errors) = (
            client.clone(),
            base.clone(),
            requests.clone(),
            errors.clone(),
        );
        tasks.spawn(async move {
            let mut x = (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            while Instant::now() < stop {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Missing ids are drawn from a space much larger than the cache, so entries
                // keep being evicted and replaced.
                let path = match x % 10 {
                    0..=3 => format!("/present/{}", x % 1_000),
                    4..=7 => format!("/missing/{}", x % 200_000),
                    8 => format!("/flaky/{}", x % 100),
                    _ => format!("/slow/{}", x % 100),
                };
                let req = Request::get(format!("{base}{path}"))
                    .body(Empty::new())
                    .unwrap();
                match client.clone().oneshot(req).await {
                    Ok(res) => {
                        let _ = res.into_body().collect().await;
                    }
                    Err(_) => {
                        errors.fetch_add(1, Relaxed);
                    }
                }
                requests.fetch_add(1, Relaxed);
            }
        });
    }

    println!("soak: {seconds} s, {TASKS} tasks against {base}");
    println!(
        "{:>6} {:>9} {:>10} {:>9} {:>8} {:>9} {:>9} {:>10}",
        "t (s)", "req/s", "upstream", "errors", "cache", "hit rate", "RSS KiB", "heap KiB"
    );
    let started = Instant::now();
    let (mut last_req, mut readings) = (0, Vec::new());
    while Instant::now() < stop {
        tokio::time::sleep(REPORT_EVERY.min(stop.saturating_duration_since(Instant::now()))).await;
        let n = requests.load(Relaxed);
        let s = cache.handle().stats();
        let rss = rss_kib();
        readings.push(rss);
        println!(
            "{:>6.0} {:>9.0} {:>10} {:>9} {:>8} {:>8.1}% {:>9} {:>10}",
            started.elapsed().as_secs_f64(),
            (n - last_req) as f64 / REPORT_EVERY.as_secs_f64(),
            upstream.load(Relaxed),
            errors.load(Relaxed),
            s.len,
            s.hit_rate * 100.0,
            rss,
            LIVE.load(Relaxed) / 1024
        );
        last_req = n;
    }
    while tasks.join_next().await.is_some() {}
    println!("retry: {:?}", retry.stats());
    println!("cache: {:?}", cache.handle().stats());

    // The reading after warm-up (the second, or the first of a short run) against the last.
    let warm = readings.get(1).or(readings.first()).copied().unwrap_or(0);
    let last = readings.last().copied().unwrap_or(0);
    println!(
        "resident memory: first {} KiB, after warm-up {warm} KiB, last {last} KiB",
        readings.first().copied().unwrap_or(0)
    );
    if warm > 0 && last > warm + warm / 5 {
        eprintln!("resident memory grew by more than 20% after warm-up");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
