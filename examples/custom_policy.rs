//! Custom policy: a key function that gives two URL shapes of one record one cache entry, and a
//! classifier that reads an upstream's own way of saying "no such record".
//!
//! Run: `cargo run --example custom_policy`
//!
//! The local origin serves records under `/records/{id}` (v1) and `/v2/records/{id}` (v2). For an
//! unknown id v1 answers 404, but v2 answers `400` with `x-error: unknown-id`, which the default
//! classifier calls Fatal (not retried, not remembered). The custom classifier calls it Missing
//! and defers to [`DefaultClassifier`] for everything else. Given to the retry layer's builder,
//! both layers apply it (the cache follows the retry layer's verdict, `RetryInfo`, unless it
//! has a classifier of its own); here it is given to both. The last step shows a classifier
//! given to the cache only: the cache applies it too — a classifier is never ignored.
//!
//! Every step checks its status, the origin's request count and whether the cache answered; the
//! process exits non-zero if one differs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::cache::{NegativeCacheHandle, NegativeCacheHit};
use tower_negative_cache::classify::{Classify, DefaultClassifier};
use tower_negative_cache::retry::Jitter;
use tower_negative_cache::{NegativeCacheLayer, Outcome, RetryInfo, StatusAwareRetryLayer};

// ----- the policy ---------------------------------------------------------------------------

/// `/records/{id}` and `/v2/records/{id}` are one record: key `record:{id}`. Any other target
/// is left uncached (`None`).
fn record_key(uri: &Uri) -> Option<String> {
    let path = uri.path();
    let id = path
        .strip_prefix("/v2")
        .unwrap_or(path)
        .strip_prefix("/records/")?;
    (!id.is_empty() && !id.contains('/')).then(|| format!("record:{id}"))
}

// ----- the origin ---------------------------------------------------------------------------

/// Records 1, 2 and 9 exist; `PUT /records/{id}` creates one. Record 9 answers 503 the first
/// time it is asked for. An unknown id is 404 on v1 and `400 x-error: unknown-id` on v2; an id
/// that is not a number is `400` (no `x-error`) on both.
struct Origin {
    requests: AtomicU64,
    records: Mutex<Vec<String>>,
    warming: Mutex<bool>,
}

impl Origin {
    fn answer(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Relaxed);
        let (v2, id) = match path.strip_prefix("/v2") {
            Some(rest) => (true, rest.strip_prefix("/records/")),
            None => (false, path.strip_prefix("/records/")),
        };
        let Some(id) = id else {
            return reply(StatusCode::NOT_FOUND, None);
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return reply(StatusCode::BAD_REQUEST, None);
        }
        let mut records = self.records.lock().unwrap();
        if method == Method::PUT {
            if !records.iter().any(|r| r == id) {
                records.push(id.to_owned());
            }
            return reply(StatusCode::CREATED, None);
        }
        if id == "9" && std::mem::replace(&mut *self.warming.lock().unwrap(), false) {
            return reply(StatusCode::SERVICE_UNAVAILABLE, None);
        }
        match (records.iter().any(|r| r == id), v2) {
            (true, _) => reply(StatusCode::OK, None),
            (false, false) => reply(StatusCode::NOT_FOUND, None),
            (false, true) => reply(StatusCode::BAD_REQUEST, Some("unknown-id")),
        }
    }
}

fn reply(status: StatusCode, x_error: Option<&'static str>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(status.to_string())));
    *res.status_mut() = status;
    if let Some(e) = x_error {
        res.headers_mut()
            .insert("x-error", http::HeaderValue::from_static(e));
    }
    res
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
                    let res = origin.answer(req.method(), req.uri().path());
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

// ----- the steps ----------------------------------------------------------------------------

struct Run<'a> {
    origin: &'a Origin,
    base: String,
    failures: Vec<String>,
}

impl Run<'_> {
    /// Sends `method path` through `client`, prints what happened and checks it.
    async fn step<S, B>(
        &mut self,
        client: &mut S,
        method: Method,
        path: &str,
        want_status: u16,
        want_upstream: u64,
        want_hit: bool,
    ) where
        S: Service<Request<Empty<Bytes>>, Response = Response<B>>,
        S::Error: std::fmt::Display,
        B: http_body::Body,
    {
        let before = self.origin.requests.load(Relaxed);
        let req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base))
            .body(Empty::new())
            .unwrap();
        let what = format!("{method} {path}");
        let res = match client.ready().await {
            Ok(svc) => svc.call(req).await,
            Err(e) => Err(e),
        };
        let res = match res {
            Ok(res) => res,
            Err(e) => {
                self.failures.push(format!("{what}: {e}"));
                return;
            }
        };
        let status = res.status();
        let hit = res.extensions().get::<NegativeCacheHit>().is_some();
        let verdict = RetryInfo::of(&res).map_or_else(
            || "-".to_owned(),
            |i| format!("{} x{}", i.outcome, i.attempts),
        );
        let x_error = res
            .headers()
            .get("x-error")
            .map_or(String::new(), |v| format!(" x-error: {v:?}"));
        // Read the body to the end so the connection goes back to the pool.
        let _ = res.into_body().collect().await;
        let upstream = self.origin.requests.load(Relaxed) - before;
        println!(
            "{what:<22} {:<36} {upstream:>8} {verdict:>12}  {}",
            format!("{status}{x_error}"),
            if hit { "negative cache" } else { "origin" }
        );
        if status.as_u16() != want_status {
            self.failures
                .push(format!("{what}: status {status}, expected {want_status}"));
        }
        if upstream != want_upstream {
            self.failures.push(format!(
                "{what}: {upstream} upstream requests, expected {want_upstream}"
            ));
        }
        if hit != want_hit {
            self.failures
                .push(format!("{what}: cache hit {hit}, expected {want_hit}"));
        }
    }
}

fn header(title: &str) {
    println!("\n{title}");
    println!(
        "{:<22} {:<36} {:>8} {:>12}  answered by",
        "request", "status", "upstream", "verdict"
    );
}

#[tokio::main]
async fn main() -> ExitCode {
    let origin = Arc::new(Origin {
        requests: AtomicU64::new(0),
        records: Mutex::new(vec!["1".to_owned(), "2".to_owned(), "9".to_owned()]),
        warming: Mutex::new(true),
    });
    let base = format!("http://{}", serve(origin.clone()).await);
    println!("origin: {base}");

    // The v2 API says "no such record" with a 400 and a header: Missing. Everything else is
    // decided by the default classifier (404/410 Missing, 503 retryable, other 400s Fatal).
    // A closure that captures nothing is `Copy`, so both builders can take it.
    let classifier = |status: StatusCode, headers: &HeaderMap| {
        if status == StatusCode::BAD_REQUEST
            && headers.get("x-error").is_some_and(|v| v == "unknown-id")
        {
            Outcome::Missing
        } else {
            DefaultClassifier::default().classify_response(status, headers)
        }
    };

    let cache = NegativeCacheLayer::builder()
        .classifier(classifier)
        .key_fn(record_key)
        .ttl(Duration::from_secs(300))
        .build()
        .expect("valid cache settings");
    let retry = StatusAwareRetryLayer::builder()
        .classifier(classifier)
        .backoff_base(Duration::from_millis(20))
        .jitter(Jitter::None)
        .build()
        .expect("valid retry settings");
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut client = ServiceBuilder::new()
        .layer(cache.clone())
        .layer(retry.clone())
        .service(http.clone());
    let handle: NegativeCacheHandle = cache.handle();

    let mut run = Run {
        origin: &origin,
        base,
        failures: Vec::new(),
    };
    use Method as M;

    header("One key for two URLs (key_fn: /records/{id}, /v2/records/{id} -> record:{id})");
    run.step(&mut client, M::GET, "/records/42", 404, 1, false)
        .await;
    // Same key: answered from the cache, with the status it remembered (v1's 404).
    run.step(&mut client, M::GET, "/v2/records/42", 404, 0, true)
        .await;
    // A write through either URL forgets the shared key: v2 then goes to the origin.
    run.step(&mut client, M::PUT, "/records/42", 201, 1, false)
        .await;
    run.step(&mut client, M::GET, "/v2/records/42", 200, 1, false)
        .await;

    header("Custom classifier (400 + x-error: unknown-id is Missing), on both layers");
    // Missing, not retried, remembered; the v1 URL shares the entry.
    run.step(&mut client, M::GET, "/v2/records/77", 400, 1, false)
        .await;
    run.step(&mut client, M::GET, "/records/77", 400, 0, true)
        .await;
    // Any other 400 is the default's Fatal: not retried, not remembered.
    run.step(&mut client, M::GET, "/v2/records/abc", 400, 1, false)
        .await;
    run.step(&mut client, M::GET, "/v2/records/abc", 400, 1, false)
        .await;
    // The default still decides 503: retried, the caller sees the 200.
    run.step(&mut client, M::GET, "/v2/records/9", 200, 2, false)
        .await;
    // Forgotten on demand, by key or by URL (through the key function).
    let by_key = handle.invalidate("record:77");
    println!("handle.invalidate(\"record:77\") -> {by_key}");
    run.step(&mut client, M::GET, "/records/77", 404, 1, false)
        .await;
    let by_uri = handle.invalidate_uri(&format!("{}/v2/records/77", run.base).parse().unwrap());
    println!("handle.invalidate_uri(\".../v2/records/77\") -> {by_uri}");
    if !(by_key && by_uri) {
        run.failures
            .push("invalidate and invalidate_uri should each find record:77".to_owned());
    }

    let retry_stats = retry.stats();
    let cache_stats = cache.handle().stats();
    println!("\nretry.stats():          {retry_stats:?}");
    println!("cache.handle().stats(): {cache_stats:?}");
    if (retry_stats.missing, retry_stats.retries) != (3, 1) {
        run.failures.push(format!(
            "retry: {} missing, {} retries; expected 3 and 1",
            retry_stats.missing, retry_stats.retries
        ));
    }
    if (cache_stats.hits, cache_stats.inserts) != (2, 3) {
        run.failures.push(format!(
            "cache: {} hits, {} inserts; expected 2 and 3",
            cache_stats.hits, cache_stats.inserts
        ));
    }

    // The classifier given to the cache only: the retry layer (default classifier) calls the
    // 400 Fatal, but the cache has a classifier of its own and applies it: the 400 is
    // remembered, and the repeat is answered without the origin.
    let cache_only = NegativeCacheLayer::builder()
        .classifier(classifier)
        .key_fn(record_key)
        .build()
        .expect("valid cache settings");
    let mut mismatched = ServiceBuilder::new()
        .layer(cache_only.clone())
        .layer(StatusAwareRetryLayer::new())
        .service(http);
    header("Classifier on the cache only: the cache applies its own");
    run.step(&mut mismatched, M::GET, "/v2/records/88", 400, 1, false)
        .await;
    run.step(&mut mismatched, M::GET, "/v2/records/88", 400, 0, true)
        .await;
    println!(
        "cache_only.handle().stats().inserts = {}",
        cache_only.handle().stats().inserts
    );

    if run.failures.is_empty() {
        println!("\nEvery step is as expected.");
        ExitCode::SUCCESS
    } else {
        for f in &run.failures {
            eprintln!("FAIL: {f}");
        }
        ExitCode::FAILURE
    }
}
