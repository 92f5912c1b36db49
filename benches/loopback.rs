//! End to end over loopback: what both layers add to a real HTTP round trip.
//!
//! A hyper HTTP/1 server on 127.0.0.1 answers every request with a 200 and a 16-byte body; a
//! hyper-util client (keep-alive, `TCP_NODELAY` on both ends) fetches it and reads the body.
//! Variants, in the same run: `bare client`, and `both layers` (`NegativeCacheLayer::new()`
//! outside `StatusAwareRetryLayer::new()`, default configs, over the same kind of client).
//!
//! - Group `loopback_sequential`: one request per iteration, on a current-thread tokio runtime
//!   that also runs the server's tasks; with each layer alone as references.
//! - Group `loopback_concurrent_32`: 32 requests per iteration, each spawned as a task, all
//!   awaited (`Throughput::Elements(32)`), on a multi-thread tokio runtime with 2 workers that
//!   also runs the server's tasks; the runtime is built once, outside the timed code.
//!
//! Run: `cargo bench --bench loopback`

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::ready;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

type Req = Request<Empty<Bytes>>;

const BODY: &[u8] = b"{\"id\":42,\"ok\":1}";
const CONCURRENCY: u64 = 32;

fn request(uri: &Uri) -> Req {
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = uri.clone();
    req
}

/// A hyper HTTP/1 server on 127.0.0.1 answering every request with a 200 and `BODY`, spawned
/// on the current runtime.
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
                    ready(Ok::<_, Infallible>(Response::new(Full::new(
                        Bytes::from_static(BODY),
                    ))))
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
async fn fetch<S, B>(svc: &mut S, uri: &Uri) -> Bytes
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Debug,
    B: Body,
    B::Error: Debug,
{
    let res = svc.ready().await.unwrap().call(request(uri)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.into_body().collect().await.unwrap().to_bytes()
}

async fn timed_sequential<S, B>(svc: &mut S, uri: &Uri, iters: u64) -> Duration
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

async fn timed_concurrent<S, B>(svc: &S, uri: &Uri, iters: u64) -> Duration
where
    S: Service<Req, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug,
    B: Body + Send,
    B::Data: Send,
    B::Error: Debug,
{
    let start = Instant::now();
    for _ in 0..iters {
        let mut set = JoinSet::new();
        for _ in 0..CONCURRENCY {
            let (mut svc, uri) = (svc.clone(), uri.clone());
            set.spawn(async move { fetch(&mut svc, &uri).await });
        }
        while let Some(body) = set.join_next().await {
            black_box(body.unwrap());
        }
    }
    start.elapsed()
}

/// The two clients under test, over one origin started on `rt`: bare, and with both layers.
fn clients(
    rt: &Runtime,
) -> (
    Uri,
    Client<HttpConnector, Empty<Bytes>>,
    impl Service<
        Req,
        Response = Response<impl Body<Data = Bytes, Error: Debug> + Send>,
        Error: Debug,
        Future: Send,
    > + Clone
    + Send
    + 'static,
) {
    let addr = rt.block_on(spawn_origin());
    let uri: Uri = format!("http://{addr}/records/42").parse().unwrap();
    let layered = ServiceBuilder::new()
        .layer(NegativeCacheLayer::new())
        .layer(StatusAwareRetryLayer::new())
        .service(hyper_client());
    (uri, hyper_client(), layered)
}

fn bench_sequential<S, B>(
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
    assert_eq!(rt.block_on(fetch(&mut svc, uri)), BODY);
    group.bench_function(name, |b| {
        b.iter_custom(|iters| rt.block_on(timed_sequential(&mut svc, uri, iters)));
    });
}

fn bench_concurrent<S, B>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    uri: &Uri,
    svc: S,
) where
    S: Service<Req, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug,
    B: Body + Send,
    B::Data: Send,
    B::Error: Debug,
{
    // Opens the pool's connections before measuring.
    rt.block_on(timed_concurrent(&svc, uri, 1));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| rt.block_on(timed_concurrent(&svc, uri, iters)));
    });
}

fn loopback_sequential(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (uri, bare, layered) = clients(&rt);
    let mut group = c.benchmark_group("loopback_sequential");
    group.throughput(Throughput::Elements(1));
    bench_sequential(&mut group, &rt, "bare client", &uri, bare);
    bench_sequential(&mut group, &rt, "both layers", &uri, layered);
    // References: which layer the overhead comes from.
    let retry_only = ServiceBuilder::new()
        .layer(StatusAwareRetryLayer::new())
        .service(hyper_client());
    bench_sequential(&mut group, &rt, "retry layer only", &uri, retry_only);
    let cache_only = ServiceBuilder::new()
        .layer(NegativeCacheLayer::new())
        .service(hyper_client());
    bench_sequential(&mut group, &rt, "negative cache only", &uri, cache_only);
    group.finish();
}

fn loopback_concurrent(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (uri, bare, layered) = clients(&rt);
    let mut group = c.benchmark_group("loopback_concurrent_32");
    group.throughput(Throughput::Elements(CONCURRENCY));
    bench_concurrent(&mut group, &rt, "bare client", &uri, bare);
    bench_concurrent(&mut group, &rt, "both layers", &uri, layered);
    group.finish();
}

criterion_group!(benches, loopback_sequential, loopback_concurrent);
criterion_main!(benches);
