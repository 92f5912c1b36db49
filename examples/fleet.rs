//! Fleet: R replicas, each with its own negative cache, asking for the same missing keys —
//! without the Redis tier (each replica learns alone) and with it (one learns for all).
//!
//! Run: `cargo run --release --features redis --example fleet -- [--replicas N] [--redis URL]`
//!
//! Without `--redis`, a `redis-server` from PATH is started on a free loopback port and stopped
//! at the end. Upstream counts are what the local origin counted.

use std::convert::Infallible;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::cache::NegativeCacheHandle;
use tower_negative_cache::fleet::Fleet;

const KEYS: usize = 200;
/// Replica i asks for a key `i × STAGGER` after replica 0 did.
const STAGGER: Duration = Duration::from_millis(5);

async fn origin(count: Arc<AtomicU64>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_: Request<Incoming>| {
                    count.fetch_add(1, Relaxed);
                    let mut res = Response::new(Full::new(Bytes::from_static(b"no such record")));
                    *res.status_mut() = StatusCode::NOT_FOUND;
                    async { Ok::<_, Infallible>(res) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

struct OwnRedis(Child);

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Result<(String, OwnRedis), String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("could not run redis-server ({e}); install it or pass --redis URL"))?;
    let guard = OwnRedis(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("redis-server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((format!("redis://127.0.0.1:{port}"), guard))
}

/// Runs the workload over `replicas` fresh caches; upstream requests and, with a tier, the
/// delays until every other replica knew each key.
async fn run(
    base: &str,
    upstream: &AtomicU64,
    replicas: usize,
    redis: Option<&str>,
    round: &str,
) -> (u64, Vec<Duration>) {
    let mut caches: Vec<(NegativeCacheLayer, Option<Fleet>)> = Vec::new();
    for _ in 0..replicas {
        let cache = NegativeCacheLayer::builder()
            .ttl(Duration::from_secs(300))
            .build()
            .unwrap();
        let fleet = redis.map(|url| {
            Fleet::builder(url)
                .prefix(format!("fleet-example-{round}"))
                .start(&cache)
                .unwrap()
        });
        caches.push((cache, fleet));
    }
    for (_, fleet) in &caches {
        if let Some(f) = fleet {
            let t = Instant::now();
            while !f.stats().connected && t.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let clients: Vec<_> = caches
        .iter()
        .map(|(c, _)| ServiceBuilder::new().layer(c.clone()).service(http.clone()))
        .collect();
    let handles: Vec<NegativeCacheHandle> = caches.iter().map(|(c, _)| c.handle()).collect();

    let before = upstream.load(Relaxed);
    let mut delays = Vec::new();
    for k in 0..KEYS {
        let uri: Uri = format!("{base}/records/{round}-{k}").parse().unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, client) in clients.iter().enumerate() {
            let (client, uri) = (client.clone(), uri.clone());
            tasks.spawn(async move {
                tokio::time::sleep(STAGGER * i as u32).await;
                let req = Request::get(uri).body(Empty::new()).unwrap();
                client.oneshot(req).await.unwrap().status()
            });
        }
        if redis.is_some() {
            // From the first replica's answer until every other replica has the key.
            let t = Instant::now();
            while handles[0].peek(&uri).is_none() && t.elapsed() < Duration::from_secs(1) {
                tokio::task::yield_now().await;
            }
            let t = Instant::now();
            while !handles[1..].iter().all(|h| h.peek(&uri).is_some()) {
                if t.elapsed() > Duration::from_secs(1) {
                    break;
                }
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
            delays.push(t.elapsed());
        }
        while let Some(r) = tasks.join_next().await {
            assert_eq!(r.unwrap(), StatusCode::NOT_FOUND);
        }
    }
    (upstream.load(Relaxed) - before, delays)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let replicas: usize = flag("--replicas")
        .and_then(|r| r.parse().ok())
        .unwrap_or(4)
        .max(2);
    let (redis_url, _own) = match flag("--redis") {
        Some(url) => (url.clone(), None),
        None => match start_redis() {
            Ok((url, guard)) => (url, Some(guard)),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let upstream = Arc::new(AtomicU64::new(0));
    let base = origin(upstream.clone()).await;
    println!(
        "{replicas} replicas, {KEYS} missing keys, replica i asks {STAGGER:?} x i after replica 0"
    );
    println!("origin {base}, redis {redis_url}\n");

    let (alone, _) = run(&base, &upstream, replicas, None, "alone").await;
    let (shared, mut delays) = run(&base, &upstream, replicas, Some(&redis_url), "shared").await;
    delays.sort();

    println!(
        "{:<28} {:>18} {:>22}",
        "", "upstream requests", "per missing key"
    );
    println!(
        "{:<28} {:>18} {:>22.2}",
        "without the tier",
        alone,
        alone as f64 / KEYS as f64
    );
    println!(
        "{:<28} {:>18} {:>22.2}",
        "with the Redis tier",
        shared,
        shared as f64 / KEYS as f64
    );
    println!(
        "\npropagation to all {} other replicas: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        replicas - 1,
        percentile(&delays, 0.5),
        percentile(&delays, 0.9),
        percentile(&delays, 0.99),
        delays.last().unwrap()
    );
    if shared as f64 / KEYS as f64 > 1.5 {
        eprintln!("the tier did not share: {shared} upstream requests for {KEYS} keys");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
