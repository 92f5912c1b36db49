//! Both layers composed with tower-http's (0.7) client middleware, stored as one boxed client type,
//! against a local axum origin that gzips its answers.
//!
//! Run: `cargo run --example tower_http_stack`
//!
//! The stack, outermost first (the crate docs' "Composing with tower-http" says why):
//!
//! ```text
//! TraceLayer -> FollowRedirectLayer -> NegativeCacheLayer -> DecompressionLayer
//!            -> StatusAwareRetryLayer -> tower::timeout::TimeoutLayer (per attempt)
//!            -> WitnessLayer -> Client
//! ```
//!
//! It shows, and exits non-zero if any of it does not hold: a 404 reaches the origin once and
//! repeats are answered by the cache; a redirect is followed and each hop is its own cache
//! key (a redirect to a missing record is remembered under the target, not the old path); a
//! gzipped body arrives decoded; a 503 is retried; an attempt that outlives the per-attempt
//! timeout is retried as transient; the trace layer sees each caller request once.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower::timeout::TimeoutLayer;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::decompression::DecompressionLayer;
use tower_http::follow_redirect::FollowRedirectLayer;
use tower_http::trace::TraceLayer;
use tower_negative_cache::cache::NegativeCacheHit;
use tower_negative_cache::retry::WitnessLayer;
use tower_negative_cache::{NegativeCacheLayer, RetryInfo, StatusAwareRetryLayer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The whole stack as one type, to keep in a struct: cloneable, `Send + Sync`, one body type.
type HttpClient = BoxCloneSyncService<
    http::Request<Full<Bytes>>,
    http::Response<BoxBody<Bytes, BoxError>>,
    BoxError,
>;

// ----- the origin ---------------------------------------------------------------------------

#[derive(Default)]
struct Origin {
    /// Requests per path, as the origin counted them.
    hits: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Requests that asked for gzip.
    asked_gzip: AtomicU64,
}

impl Origin {
    /// Counts a request for `path` and returns how many it has seen for it (this one included).
    fn count(&self, path: &str, headers: &HeaderMap) -> u64 {
        if headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("gzip"))
        {
            self.asked_gzip.fetch_add(1, Relaxed);
        }
        let mut hits = self.hits.lock().unwrap();
        let n = hits.entry(path.to_owned()).or_default();
        *n += 1;
        *n
    }

    fn seen(&self, path: &str) -> u64 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// Long enough that the origin's compression applies (it skips bodies under 32 bytes).
fn record_text(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","title":"record {id}","notes":"{}"}}"#,
        "lorem ipsum ".repeat(20)
    )
}

async fn record(
    State(o): State<Arc<Origin>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    o.count(&format!("/records/{id}"), &headers);
    match id.as_str() {
        "1" | "2" => (
            [(header::CONTENT_TYPE, "application/json")],
            record_text(&id),
        )
            .into_response(),
        _ => (StatusCode::NOT_FOUND, "no such record").into_response(),
    }
}

async fn moved(State(o): State<Arc<Origin>>, Path(id): Path<String>, h: HeaderMap) -> Redirect {
    o.count(&format!("/old/{id}"), &h);
    Redirect::permanent(&format!("/records/{id}"))
}

async fn flaky(State(o): State<Arc<Origin>>, h: HeaderMap) -> Response {
    match o.count("/flaky", &h) {
        1 => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        _ => record_text("flaky").into_response(),
    }
}

async fn slow(State(o): State<Arc<Origin>>, h: HeaderMap) -> Response {
    if o.count("/slow", &h) == 1 {
        // Far beyond the per-attempt timeout: the client gives up on this attempt.
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    record_text("slow").into_response()
}

async fn serve(origin: Arc<Origin>) -> String {
    let app = Router::new()
        .route("/records/{id}", get(record))
        .route("/old/{id}", get(moved))
        .route("/flaky", get(flaky))
        .route("/slow", get(slow))
        .layer(tower_http::compression::CompressionLayer::new())
        .with_state(origin);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

// ----- the stack ----------------------------------------------------------------------------

fn build(
    cache: &NegativeCacheLayer,
    retry: &StatusAwareRetryLayer,
    traced: Arc<AtomicUsize>,
) -> HttpClient {
    let per_attempt = Duration::from_millis(500);
    let stack = ServiceBuilder::new()
        // One body and error type for the boxed client.
        .map_response(|res: http::Response<_>| {
            res.map(|b: _| BodyExt::map_err(b, Into::into).boxed())
        })
        // Outermost: one span per caller request, whatever happens inside (hits, hops, retries).
        .layer(TraceLayer::new_for_http().on_response(
            move |_: &http::Response<_>, _: Duration, _: &tracing::Span| {
                traced.fetch_add(1, Relaxed);
            },
        ))
        // Outside the cache: each hop is a request of its own, cached under its own target.
        .layer(FollowRedirectLayer::new())
        .layer(cache.clone())
        // Outside the retry layer: a discarded answer is drained compressed, never inflated.
        .layer(DecompressionLayer::new())
        .layer(retry.clone())
        // Inside the retry layer: bounds each attempt; its `Elapsed` is a transient error.
        .layer(TimeoutLayer::new(per_attempt))
        // On the client: ties a refused connection to the request the retry layer sent, so a
        // POST is resent only on proof of its own (tests/unprocessed_proof.rs).
        .layer(WitnessLayer::new())
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    BoxCloneSyncService::new(stack)
}

/// A client in a struct: the reason for the boxed type.
#[derive(Clone)]
struct Records {
    base: String,
    http: HttpClient,
}

struct Answer {
    status: StatusCode,
    body: String,
    from_cache: bool,
    attempts: Option<u32>,
    encoding: Option<String>,
}

impl Records {
    async fn get(&self, path: &str) -> Result<Answer, BoxError> {
        let req = http::Request::get(format!("{}{path}", self.base)).body(Full::default())?;
        let mut http = self.http.clone();
        let res = http.ready().await?.call(req).await?;
        let from_cache = res.extensions().get::<NegativeCacheHit>().is_some();
        let attempts = RetryInfo::of(&res).map(|i| i.attempts);
        let encoding = res
            .headers()
            .get(header::CONTENT_ENCODING)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
            from_cache,
            attempts,
            encoding,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let origin = Arc::new(Origin::default());
    let base = serve(origin.clone()).await;
    let cache = NegativeCacheLayer::builder()
        .ttl(Duration::from_secs(600))
        .build()
        .expect("valid cache settings");
    let retry = StatusAwareRetryLayer::builder()
        .max_retries(2)
        .backoff_base(Duration::from_millis(20))
        .deadline(Duration::from_secs(5))
        .build()
        .expect("valid retry settings");
    let traced = Arc::new(AtomicUsize::new(0));
    let records = Records {
        base: base.clone(),
        http: build(&cache, &retry, traced.clone()),
    };

    println!("origin: {base}");
    println!(
        "stack:  Trace -> FollowRedirect -> NegativeCache -> Decompression -> StatusAwareRetry \
         -> Timeout(500 ms per attempt) -> Witness -> hyper-util Client\n"
    );

    let mut failures: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        println!("  [{}] {what}", if ok { "ok" } else { "FAILED" });
        if !ok {
            failures.push(what);
        }
    };
    let mut calls = 0;
    let mut get = async |path: &str| {
        calls += 1;
        match records.get(path).await {
            Ok(a) => {
                println!(
                    "GET {path:<20} {} attempts={} cache={} encoding={}",
                    a.status,
                    a.attempts.map_or("-".into(), |n| n.to_string()),
                    a.from_cache,
                    a.encoding.as_deref().unwrap_or("-"),
                );
                Some(a)
            }
            Err(e) => {
                println!("GET {path:<20} error: {e}");
                None
            }
        }
    };

    // 1. A gzipped body arrives decoded.
    let a = get("/records/1").await;
    let decoded = a.as_ref().is_some_and(|a| {
        a.status == StatusCode::OK && a.encoding.is_none() && a.body == record_text("1")
    });
    check(
        decoded && origin.asked_gzip.load(Relaxed) == 1,
        "a gzipped body is decoded (the origin was asked for gzip; no Content-Encoding is left)"
            .into(),
    );

    // ...and it was compressed on the wire: the same request without the stack says gzip.
    let raw = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::get(format!("{base}/records/2"))
        .header(header::ACCEPT_ENCODING, "gzip")
        .body(Full::default())
        .expect("a valid request");
    let on_wire = match raw.request(req).await {
        Ok(res) => res
            .headers()
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v == "gzip"),
        Err(_) => false,
    };
    check(
        on_wire,
        "the origin sends that body gzipped on the wire".into(),
    );

    // 2. A 404 reaches the origin once; the repeats are answered by the cache.
    let mut hits = 0;
    for _ in 0..3 {
        if get("/records/404")
            .await
            .is_some_and(|a| a.status == StatusCode::NOT_FOUND && a.from_cache)
        {
            hits += 1;
        }
    }
    check(
        origin.seen("/records/404") == 1 && hits == 2,
        format!(
            "a 404 reached the origin {} time(s) for 3 requests, {hits} cache hits",
            origin.seen("/records/404")
        ),
    );

    // 3. A redirect is followed; a redirect to a missing record is remembered under its target.
    let a = get("/old/2").await;
    check(
        a.is_some_and(|a| a.status == StatusCode::OK && a.body == record_text("2")),
        "a 308 is followed to its target and the target's body is returned".into(),
    );
    let _ = get("/old/9").await;
    let a = get("/old/9").await;
    check(
        a.is_some_and(|a| a.status == StatusCode::NOT_FOUND && a.from_cache)
            && origin.seen("/old/9") == 2
            && origin.seen("/records/9") == 1,
        format!(
            "each hop is its own key: /old/9 went upstream {} times (a redirect is not a Missing answer), \
             its missing target once",
            origin.seen("/old/9")
        ),
    );

    // 4. A 503 is retried.
    let a = get("/flaky").await;
    check(
        a.is_some_and(|a| a.status == StatusCode::OK && a.attempts == Some(2))
            && origin.seen("/flaky") == 2,
        "a 503 is retried once and the 200 returned".into(),
    );

    // 5. An attempt that outlives the per-attempt timeout is retried as transient.
    let a = get("/slow").await;
    check(
        a.is_some_and(|a| a.status == StatusCode::OK && a.attempts == Some(2))
            && origin.seen("/slow") == 2,
        "an attempt past the per-attempt timeout is abandoned and retried".into(),
    );

    // 6. The trace layer saw each caller request once (not each hop, attempt or hit twice).
    let seen = traced.load(Relaxed);
    check(
        seen == calls,
        format!("the trace layer saw {seen} responses for {calls} requests"),
    );

    let (rs, cs) = (retry.stats(), cache.handle().stats());
    println!("\nretry: {rs:?}\ncache: {cs:?}");
    if failures.is_empty() {
        println!("\nall checks held");
        ExitCode::SUCCESS
    } else {
        eprintln!("\n{} check(s) failed: {failures:#?}", failures.len());
        ExitCode::FAILURE
    }
}
