//! The hot paths, each run `N` times in a loop: the driver the instruction-count guard
//! (`.ci/instructions`) runs under `valgrind --tool=callgrind`.
//!
//! Run: `cargo run --release --example hot_paths -- <path> <calls>`, or with no arguments to
//! list the paths. The guard runs each path twice (a short and a long loop) and takes the
//! difference, so what every run does once — the process, the runtime, building the service,
//! the first calls — cancels out, and what is left is instructions per call.
//!
//! The paths are the ones the criterion benches time (`benches/passthrough.rs`,
//! `benches/cache_hit.rs`, `benches/retry_path.rs`), built the same way: an in-process
//! `tower::service_fn` upstream, one current-thread tokio runtime, a full
//! `ready().await; call(req).await` per call (and, for the hit group, the body read to its end).

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AGE, CONTENT_LENGTH};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use tower::retry::{Policy, Retry};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

type Req = Request<Empty<Bytes>>;

/// Each path: its name, the bench id it mirrors, and what it is.
const PATHS: &[(&str, &str)] = &[
    ("bare_200", "passthrough_200/bare service_fn"),
    ("tower_retry_200", "passthrough_200/tower::retry no-op"),
    ("retry_200", "passthrough_200/ours: retry"),
    (
        "cache_miss_200",
        "passthrough_200/ours: negative cache miss",
    ),
    ("both_200", "passthrough_200/ours: both layers"),
    (
        "bare_hit_answer",
        "negative_cache_hit/bare service_fn, same answer as a hit",
    ),
    ("hit", "negative_cache_hit/hit"),
    ("tower_retry_503_503_200", "retry_503_503_200/tower::retry"),
    ("retry_503_503_200", "retry_503_503_200/ours: retry"),
    (
        "hit_and_200",
        "scaling_hits_and_passthroughs/1 thread (a hit and a 200, both layers)",
    ),
];

fn request(uri: &Uri) -> Req {
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = uri.clone();
    req
}

fn answer(status: StatusCode) -> Response<Empty<Bytes>> {
    let mut res = Response::new(Empty::new());
    *res.status_mut() = status;
    res
}

fn upstream(
    status: StatusCode,
) -> impl Service<Req, Response = Response<Empty<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(move |_req: Req| ready(Ok::<_, Infallible>(answer(status))))
}

/// What a hit synthesizes (a 404, `content-length: 0`, `Age`, an extension of the same size),
/// built by an in-process service, as `benches/cache_hit.rs` builds it.
fn upstream_synthesized()
-> impl Service<Req, Response = Response<Empty<Bytes>>, Error = Infallible> + Clone {
    #[derive(Clone, Copy, Debug)]
    #[allow(dead_code, reason = "only its size and its place matter")]
    struct HitLike {
        age: Duration,
        remaining: Duration,
    }
    tower::service_fn(|_req: Req| {
        let mut res = answer(StatusCode::NOT_FOUND);
        let headers = res.headers_mut();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        headers.insert(AGE, HeaderValue::from(black_box(0u64)));
        res.extensions_mut().insert(black_box(HitLike {
            age: Duration::ZERO,
            remaining: Duration::from_secs(60),
        }));
        ready(Ok::<_, Infallible>(res))
    })
}

/// 503, 503, 200, 503, ... by its own call count.
fn flaky_upstream()
-> impl Service<Req, Response = Response<Empty<Bytes>>, Error = Infallible> + Clone {
    let calls = Arc::new(AtomicU64::new(0));
    tower::service_fn(move |_req: Req| {
        let n = calls.fetch_add(1, Relaxed);
        let status = if n % 3 == 2 {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        ready(Ok::<_, Infallible>(answer(status)))
    })
}

fn copy(req: &Req) -> Req {
    let mut copy = Request::new(Empty::new());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    copy
}

/// `tower::retry`, never retrying but copying each request (as the benches' `NoRetry`), or
/// retrying a 503 up to `remaining` times at once (the benches' `Retry503`).
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
        Some(copy(req))
    }
}

/// `calls` full calls of `svc`; with `read_body`, each answer's body read to its end. Every
/// answer must have `status`.
async fn run<S, B>(mut svc: S, uri: &'static str, status: StatusCode, read_body: bool, calls: u64)
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Debug,
    B: Body,
    B::Error: Debug,
{
    let uri = Uri::from_static(uri);
    for _ in 0..calls {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(request(&uri))
            .await
            .unwrap();
        assert_eq!(res.status(), status);
        if read_body {
            black_box(res.into_body().collect().await.unwrap());
        } else {
            black_box(res);
        }
    }
}

const URI_200: &str = "http://records.internal/records/42";
const URI_404: &str = "http://records.internal/records/404";

async fn path(name: &str, calls: u64) -> Result<(), String> {
    let ok = StatusCode::OK;
    match name {
        "bare_200" => run(upstream(ok), URI_200, ok, false, calls).await,
        "tower_retry_200" => {
            let svc = Retry::new(Retry503 { remaining: 0 }, upstream(ok));
            run(svc, URI_200, ok, false, calls).await
        }
        "retry_200" => {
            let svc = ServiceBuilder::new()
                .layer(StatusAwareRetryLayer::new())
                .service(upstream(ok));
            run(svc, URI_200, ok, false, calls).await
        }
        "cache_miss_200" => {
            let svc = ServiceBuilder::new()
                .layer(NegativeCacheLayer::new())
                .service(upstream(ok));
            run(svc, URI_200, ok, false, calls).await
        }
        "both_200" => {
            let svc = ServiceBuilder::new()
                .layer(NegativeCacheLayer::new())
                .layer(StatusAwareRetryLayer::new())
                .service(upstream(ok));
            run(svc, URI_200, ok, false, calls).await
        }
        "bare_hit_answer" => {
            let missing = StatusCode::NOT_FOUND;
            run(upstream_synthesized(), URI_404, missing, true, calls).await
        }
        "hit" => {
            let cache = NegativeCacheLayer::new();
            let svc = ServiceBuilder::new()
                .layer(cache.clone())
                .service(upstream(StatusCode::NOT_FOUND));
            // The first call remembers the 404; every later one is a hit.
            run(svc, URI_404, StatusCode::NOT_FOUND, true, calls + 1).await;
            let stats = cache.handle().stats();
            assert_eq!((stats.inserts, stats.hits), (1, calls), "{stats:?}");
        }
        "tower_retry_503_503_200" => {
            let svc = Retry::new(Retry503 { remaining: 2 }, flaky_upstream());
            run(svc, URI_200, ok, false, calls).await
        }
        "retry_503_503_200" => {
            let layer = StatusAwareRetryLayer::builder()
                .backoff_base(Duration::ZERO)
                .no_budget()
                .max_retries(2)
                .build()
                .unwrap();
            let svc = ServiceBuilder::new()
                .layer(layer.clone())
                .service(flaky_upstream());
            run(svc, URI_200, ok, false, calls).await;
            assert_eq!(layer.stats().retries, 2 * calls);
        }
        "hit_and_200" => {
            // As `benches/scaling.rs` on one thread: a popular missing record asked for between
            // other requests, each call a hit and a 200 through both layers.
            let cache = NegativeCacheLayer::new();
            let mut svc = ServiceBuilder::new()
                .layer(cache.clone())
                .layer(StatusAwareRetryLayer::new())
                .service(tower::service_fn(|req: Req| {
                    let status = if req.uri().path() == "/records/404" {
                        StatusCode::NOT_FOUND
                    } else {
                        StatusCode::OK
                    };
                    ready(Ok::<_, Infallible>(answer(status)))
                }));
            let (missing, present) = (Uri::from_static(URI_404), Uri::from_static(URI_200));
            for _ in 0..=calls {
                for (uri, status) in [(&missing, StatusCode::NOT_FOUND), (&present, ok)] {
                    let res = svc.ready().await.unwrap().call(request(uri)).await.unwrap();
                    assert_eq!(res.status(), status);
                    black_box(res);
                }
            }
            let stats = cache.handle().stats();
            assert_eq!((stats.inserts, stats.hits), (1, calls), "{stats:?}");
        }
        other => return Err(format!("no path named {other:?}")),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (name, calls) = match &args[..] {
        [name, calls] => match calls.parse::<u64>() {
            Ok(calls) => (name.as_str(), calls),
            Err(e) => {
                eprintln!("calls: {e}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: hot_paths <path> <calls>; the paths (and the bench each mirrors):");
            for (name, bench) in PATHS {
                println!("{name}\t{bench}");
            }
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match rt.block_on(path(name, calls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}
