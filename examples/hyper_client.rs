//! Both layers over a hyper-util legacy client, against a small local record origin: present
//! records, missing (404) and retired (410) ones, and a flaky route that answers 503 twice
//! before it answers 200.
//!
//! Run: `cargo run --example hyper_client`
//!
//! Each request prints its status, how many requests the origin counted for it, how many
//! attempts the retry layer made and whether the negative cache answered it; then both layers'
//! stats. The process exits non-zero if any of those differs from what the layers promise, so
//! CI can run it as a smoke test.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::cache::NegativeCacheHit;
use tower_negative_cache::retry::Jitter;
use tower_negative_cache::{NegativeCacheLayer, RetryInfo, StatusAwareRetryLayer};

// ----- the origin ---------------------------------------------------------------------------

/// Records 1, 2 and 3 exist, `retired` is gone (410), anything else under `/records/` is 404;
/// `/flaky` answers 503 twice, then 200. Counts every request it answers.
#[derive(Default)]
struct Origin {
    requests: AtomicU64,
    flaky_calls: Mutex<u32>,
}

impl Origin {
    fn answer(&self, path: &str) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Relaxed);
        let (status, body) = if path == "/flaky" {
            let mut calls = self.flaky_calls.lock().unwrap();
            *calls += 1;
            if *calls <= 2 {
                (StatusCode::SERVICE_UNAVAILABLE, "warming up".to_owned())
            } else {
                (StatusCode::OK, "ready".to_owned())
            }
        } else {
            match path.strip_prefix("/records/") {
                Some(id @ ("1" | "2" | "3")) => (
                    StatusCode::OK,
                    format!(r#"{{"id":"{id}","title":"record {id}"}}"#),
                ),
                Some("retired") => (StatusCode::GONE, "retired".to_owned()),
                _ => (StatusCode::NOT_FOUND, "no such record".to_owned()),
            }
        };
        let mut res = Response::new(Full::new(Bytes::from(body)));
        *res.status_mut() = status;
        res
    }
}

async fn serve(origin: Arc<Origin>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let origin = origin.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let res = origin.answer(req.uri().path());
                    async move { Ok::<_, Infallible>(res) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

// ----- the requests -------------------------------------------------------------------------

/// What one request should come to.
struct Expect {
    path: &'static str,
    status: StatusCode,
    /// Requests the origin should count for it.
    upstream: u64,
    /// Whether the negative cache should answer it.
    hit: bool,
}

fn expect(path: &'static str, status: u16, upstream: u64, hit: bool) -> Expect {
    let status = StatusCode::from_u16(status).expect("a valid status");
    Expect {
        path,
        status,
        upstream,
        hit,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let origin = Arc::new(Origin::default());
    let base = format!("http://{}", serve(origin.clone()).await);

    // Build each layer once and keep a clone: the clone reads the stats of every service the
    // layer made.
    let cache = NegativeCacheLayer::builder()
        .ttl(Duration::from_secs(600))
        .build()
        .expect("valid cache settings");
    let retry = StatusAwareRetryLayer::builder()
        .max_retries(2)
        .backoff_base(Duration::from_millis(20))
        .jitter(Jitter::Full)
        .build()
        .expect("valid retry settings");
    let mut client = ServiceBuilder::new()
        .layer(cache.clone()) // outside: a remembered 404 never reaches the retry layer
        .layer(retry.clone())
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());

    println!("origin: {base}");
    println!("stack:  NegativeCacheLayer -> StatusAwareRetryLayer -> hyper-util Client\n");
    println!(
        "{:<26} {:<16} {:>8} {:>8}  answered by",
        "request", "status", "upstream", "attempts"
    );

    let plan = [
        expect("/records/1", 200, 1, false),
        // 404 and 410 are final: one upstream request each, never retried...
        expect("/records/missing-7", 404, 1, false),
        // ...and remembered: the repeats cost nothing upstream.
        expect("/records/missing-7", 404, 0, true),
        expect("/records/retired", 410, 1, false),
        expect("/records/retired", 410, 0, true),
        // 503, 503, 200: retried with backoff, the caller sees only the 200.
        expect("/flaky", 200, 3, false),
        expect("/records/2", 200, 1, false),
    ];

    let mut failures = Vec::new();
    for e in &plan {
        let before = origin.requests.load(Relaxed);
        let req = Request::get(format!("{base}{}", e.path))
            .body(Empty::new())
            .unwrap();
        let res = match client.ready().await.unwrap().call(req).await {
            Ok(res) => res,
            Err(err) => {
                failures.push(format!("GET {}: {err}", e.path));
                continue;
            }
        };
        let status = res.status();
        let hit = res.extensions().get::<NegativeCacheHit>().copied();
        // The retry layer leaves its verdict on every answer that went upstream.
        let attempts = RetryInfo::of(&res).map_or("-".to_owned(), |i| i.attempts.to_string());
        let body = res.into_body().collect().await.map(|b| b.to_bytes());
        let upstream = origin.requests.load(Relaxed) - before;

        let by = match (hit, &body) {
            (Some(h), _) => format!(
                "negative cache (age {} ms, fresh for {} s)",
                h.age.as_millis(),
                h.remaining.as_secs()
            ),
            (None, Ok(b)) => format!("origin: {}", String::from_utf8_lossy(b)),
            (None, Err(err)) => format!("origin (body error: {err})"),
        };
        println!(
            "GET {:<22} {:<16} {:>8} {:>8}  {by}",
            e.path,
            status.to_string(),
            upstream,
            attempts
        );

        if status != e.status {
            failures.push(format!(
                "GET {}: status {status}, expected {}",
                e.path, e.status
            ));
        }
        if upstream != e.upstream {
            failures.push(format!(
                "GET {}: {upstream} upstream requests, expected {}",
                e.path, e.upstream
            ));
        }
        if hit.is_some() != e.hit {
            failures.push(format!(
                "GET {}: negative cache hit = {}, expected {}",
                e.path,
                hit.is_some(),
                e.hit
            ));
        }
    }

    let retry_stats = retry.stats();
    let cache_stats = cache.handle().stats();
    println!("\nretry.stats():          {retry_stats:?}");
    println!("cache.handle().stats(): {cache_stats:?}");
    println!(
        "origin counted {} requests for {} calls",
        origin.requests.load(Relaxed),
        plan.len()
    );

    // Totals the plan implies: 5 calls reached the retry layer, 2 of them final misses; the
    // flaky route took 2 retries; the cache answered 2 of 7 lookups and remembered 2 keys.
    let checks = [
        ("retry.requests", retry_stats.requests, 5),
        ("retry.attempts", retry_stats.attempts, 7),
        ("retry.retries", retry_stats.retries, 2),
        ("retry.missing", retry_stats.missing, 2),
        ("cache.lookups", cache_stats.lookups, 7),
        ("cache.hits", cache_stats.hits, 2),
        ("cache.misses", cache_stats.misses, 5),
        ("cache.inserts", cache_stats.inserts, 2),
        ("cache.len", cache_stats.len, 2),
    ];
    for (name, got, want) in checks {
        if got != want {
            failures.push(format!("{name} = {got}, expected {want}"));
        }
    }

    if failures.is_empty() {
        println!("\nEvery request and counter is as expected.");
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            eprintln!("FAIL: {f}");
        }
        ExitCode::FAILURE
    }
}
