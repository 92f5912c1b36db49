//! What a negative-cache hit costs, against what it saves.
//!
//! Group `negative_cache_hit`, every variant in the same run, each a full
//! `ready().await; call(req).await` plus reading the response body to its end:
//! - `bare service_fn`: an in-process `tower::service_fn` answering 404 (the floor of any call);
//! - `bare service_fn, same answer as a hit`: the same, answering what a hit synthesizes (two
//!   headers, one extension), to tell the answer's own cost from the lookup's (reference);
//! - `bare service_fn, same answer, Age from a clock read`: the same, with `Age` worked out
//!   from one read of tokio's clock, as any cache must (RFC 9111 §4.2.3): what the clock costs;
//! - `hit`: `NegativeCacheLayer::new()` over that service, the key remembered by one 404
//!   beforehand, so every call is answered by a synthesized 404 without calling upstream;
//! - `loopback 404`: the same 404 fetched from a hyper server on 127.0.0.1 through a hyper-util
//!   client (HTTP/1 keep-alive, `TCP_NODELAY` on both ends), body read — what a hit saves.
//!
//! Group `negative_cache_faithful_hit` (a hit is the origin's answer): a 404 with four header
//! fields (`Content-Type`, `Content-Language`, `Server`, an `X-Request-Id`) and a 100-byte body,
//! read to its end:
//! - `bare service_fn, same faithful answer`: a `service_fn` building that answer (the fields,
//!   `Content-Length`, `Age`, one extension, the body as a shared `Bytes`) per call;
//! - `faithful hit`: `NegativeCacheLayer::new()` over an upstream answering it, the key
//!   remembered by one call beforehand: every call replays the remembered head and body.
//!
//! One current-thread tokio runtime drives everything, the server's tasks included (they run
//! while the client waits), with one `block_on` per batch of calls.
//!
//! Run: `cargo bench --bench cache_hit`

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::ready;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use http::header::{AGE, CONTENT_LENGTH};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::cache::NegativeCacheHit;

type Req = Request<Empty<Bytes>>;

/// The body of the origin's 404 (the in-process upstream's and the cache's are empty).
const NOT_FOUND_BODY: &[u8] = b"not found";

fn request(uri: &Uri) -> Req {
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = uri.clone();
    req
}

/// The in-process upstream: a 404 with an empty body, answered at once.
fn upstream_404() -> impl Service<Req, Response = Response<Empty<Bytes>>, Error = Infallible> + Clone
{
    tower::service_fn(|_req: Req| {
        let mut res = Response::new(Empty::new());
        *res.status_mut() = StatusCode::NOT_FOUND;
        ready(Ok::<_, Infallible>(res))
    })
}

/// A stand-in for [`NegativeCacheHit`] (which only the crate can build): same fields, same size.
#[derive(Clone, Copy, Debug)]
#[allow(
    dead_code,
    reason = "only its size and its place in the extensions matter"
)]
struct HitLike {
    age: Duration,
    remaining: Duration,
}

/// An in-process upstream answering what the cache synthesizes for a hit: a 404 with
/// `content-length: 0`, an `Age` header and an extension like [`NegativeCacheHit`]. What a
/// hit costs that is the answer's own, not the lookup's.
fn upstream_synthesized()
-> impl Service<Req, Response = Response<Empty<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(|_req: Req| {
        let mut res = Response::new(Empty::new());
        *res.status_mut() = StatusCode::NOT_FOUND;
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

/// The same answer, its `Age` worked out from a clock read against when the answer was stored,
/// as any cache must (RFC 9111 §4.2.3): the answer's cost plus one read of tokio's clock.
fn upstream_synthesized_timed()
-> impl Service<Req, Response = Response<Empty<Bytes>>, Error = Infallible> + Clone {
    let stored = tokio::time::Instant::now();
    tower::service_fn(move |_req: Req| {
        let age = tokio::time::Instant::now().saturating_duration_since(stored);
        let mut res = Response::new(Empty::new());
        *res.status_mut() = StatusCode::NOT_FOUND;
        let headers = res.headers_mut();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        headers.insert(AGE, HeaderValue::from(age.as_secs()));
        res.extensions_mut().insert(black_box(HitLike {
            age,
            remaining: Duration::from_secs(60).saturating_sub(age),
        }));
        ready(Ok::<_, Infallible>(res))
    })
}

/// A request mapper that counts the requests that reach the upstream behind it, read by the
/// checks after each hit bench. A hit calls nothing, and the cache's clone of its inner service
/// on a hit (giving back the reservation) copies a `&'static`: it costs a hit nothing.
fn counting(calls: &'static AtomicU64) -> impl Fn(Req) -> Req + Clone {
    move |req| {
        calls.fetch_add(1, Relaxed);
        req
    }
}

/// The faithful answer's body: 100 bytes of a JSON error.
const FAITHFUL_BODY: &[u8; 100] =
    br#"{"type":"https://api.test/probs/not-found","title":"no such record","status":404,"code":4040}       "#;

/// The faithful answer's fields, as an origin sends them.
fn faithful_fields(headers: &mut http::HeaderMap) {
    use http::header::{CONTENT_LANGUAGE, CONTENT_TYPE, SERVER};
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    headers.insert(CONTENT_LANGUAGE, HeaderValue::from_static("en"));
    headers.insert(SERVER, HeaderValue::from_static("records/1.4"));
    headers.insert(
        "x-request-id",
        HeaderValue::from_static("3f1c9a0e-5b7d-4c1e-9f1a-2b3c4d5e6f70"),
    );
}

/// The upstream of the faithful hit: a 404 with four fields and a 100-byte body.
fn upstream_faithful()
-> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(|_req: Req| {
        let mut res = Response::new(Full::new(Bytes::from_static(FAITHFUL_BODY)));
        *res.status_mut() = StatusCode::NOT_FOUND;
        faithful_fields(res.headers_mut());
        ready(Ok::<_, Infallible>(res))
    })
}

/// A bare service building what a faithful hit answers: the four fields, `Content-Length`,
/// `Age`, an extension like [`NegativeCacheHit`], and the body.
fn upstream_faithful_synthesized()
-> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(|_req: Req| {
        let mut res = Response::new(Full::new(Bytes::from_static(FAITHFUL_BODY)));
        *res.status_mut() = StatusCode::NOT_FOUND;
        let headers = res.headers_mut();
        faithful_fields(headers);
        headers.insert(CONTENT_LENGTH, HeaderValue::from(FAITHFUL_BODY.len()));
        headers.insert(AGE, HeaderValue::from(black_box(0u64)));
        res.extensions_mut().insert(black_box(HitLike {
            age: Duration::ZERO,
            remaining: Duration::from_secs(60),
        }));
        ready(Ok::<_, Infallible>(res))
    })
}

/// A hyper HTTP/1 server on 127.0.0.1 answering every request with a 404 and a short body,
/// spawned on the current runtime.
async fn spawn_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| {
                    let mut res = Response::new(Full::new(Bytes::from_static(NOT_FOUND_BODY)));
                    *res.status_mut() = StatusCode::NOT_FOUND;
                    ready(Ok::<_, Infallible>(res))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn hyper_client() -> Client<HttpConnector, Empty<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// One full call: ready, call, read the body to its end.
async fn fetch<S, B>(svc: &mut S, uri: &Uri) -> (StatusCode, Bytes)
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Debug,
    B: Body,
    B::Error: Debug,
{
    let res = svc.ready().await.unwrap().call(request(uri)).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

async fn timed_fetches<S, B>(svc: &mut S, uri: &Uri, iters: u64) -> Duration
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Debug,
    B: Body,
    B::Error: Debug,
{
    let start = Instant::now();
    for _ in 0..iters {
        black_box(fetch(svc, uri).await);
    }
    start.elapsed()
}

fn bench_fetch<S, B>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    uri: &Uri,
    mut svc: S,
) where
    S: Service<Req, Response = Response<B>>,
    S::Error: Debug,
    B: Body,
    B::Error: Debug,
{
    group.bench_function(name, |b| {
        b.iter_custom(|iters| rt.block_on(timed_fetches(&mut svc, uri, iters)));
    });
}

fn negative_cache_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("negative_cache_hit");
    group.throughput(Throughput::Elements(1));

    let uri = Uri::from_static("http://records.internal/records/404");
    bench_fetch(&mut group, &rt, "bare service_fn", &uri, upstream_404());
    bench_fetch(
        &mut group,
        &rt,
        "bare service_fn, same answer as a hit",
        &uri,
        upstream_synthesized(),
    );
    bench_fetch(
        &mut group,
        &rt,
        "bare service_fn, same answer, Age from a clock read",
        &uri,
        upstream_synthesized_timed(),
    );

    static UPSTREAM_CALLS: AtomicU64 = AtomicU64::new(0);
    let mut layered = ServiceBuilder::new()
        .layer(NegativeCacheLayer::new())
        .map_request(counting(&UPSTREAM_CALLS))
        .service(upstream_404());
    // One 404 remembers the key; from then on every call is a hit.
    rt.block_on(async {
        let (status, _) = fetch(&mut layered, &uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let res = layered
            .ready()
            .await
            .unwrap()
            .call(request(&uri))
            .await
            .unwrap();
        assert!(
            res.extensions().get::<NegativeCacheHit>().is_some(),
            "a hit"
        );
    });
    bench_fetch(&mut group, &rt, "hit", &uri, layered);
    assert_eq!(
        UPSTREAM_CALLS.load(Relaxed),
        1,
        "only the first call went upstream"
    );

    let addr = rt.block_on(spawn_origin());
    let origin: Uri = format!("http://{addr}/records/404").parse().unwrap();
    let mut client = hyper_client();
    rt.block_on(async {
        let (status, body) = fetch(&mut client, &origin).await;
        assert_eq!((status, &body[..]), (StatusCode::NOT_FOUND, NOT_FOUND_BODY));
    });
    bench_fetch(&mut group, &rt, "loopback 404", &origin, client);
    group.finish();
}

fn negative_cache_faithful_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("negative_cache_faithful_hit");
    group.throughput(Throughput::Elements(1));
    let uri = Uri::from_static("http://records.internal/records/404");
    bench_fetch(
        &mut group,
        &rt,
        "bare service_fn, same faithful answer",
        &uri,
        upstream_faithful_synthesized(),
    );
    static UPSTREAM_CALLS: AtomicU64 = AtomicU64::new(0);
    let mut layered = ServiceBuilder::new()
        .layer(NegativeCacheLayer::new())
        .map_request(counting(&UPSTREAM_CALLS))
        .service(upstream_faithful());
    rt.block_on(async {
        let (status, body) = fetch(&mut layered, &uri).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::NOT_FOUND, &FAITHFUL_BODY[..])
        );
        let res = layered
            .ready()
            .await
            .unwrap()
            .call(request(&uri))
            .await
            .unwrap();
        assert!(
            res.extensions()
                .get::<NegativeCacheHit>()
                .unwrap()
                .body_kept
        );
        assert_eq!(res.headers().len(), 6, "{:?}", res.headers());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], &FAITHFUL_BODY[..]);
    });
    bench_fetch(&mut group, &rt, "faithful hit", &uri, layered);
    assert_eq!(
        UPSTREAM_CALLS.load(Relaxed),
        1,
        "only the first call went upstream"
    );
    group.finish();
}

criterion_group!(benches, negative_cache_hit, negative_cache_faithful_hit);
criterion_main!(benches);
