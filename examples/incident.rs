//! The incident, reproduced against a local record origin: a naive client that retries every
//! non-2xx answer twice, then both layers over a hyper-util client.
//!
//! Run: `cargo run --release --example incident`
//!
//! Every request count below is what the origin server counted. The process exits non-zero if a
//! layered count exceeds its bound, so CI can run it as a smoke test.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::retry::Jitter;
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

/// The backoff both clients use: the incident's 200 ms base (the default), shortened so the demo stays fast.
const BACKOFF: Duration = Duration::from_millis(10);
/// Error bodies are not empty: their buffers are what piled up in the incident.
const ERROR_BODY: &[u8] = &[b'x'; 512];

// ----- the origin ---------------------------------------------------------------------------

/// Records referencing records: a workout with 10 references, each with 5; 10 of the 50
/// second-level references are missing (chosen by a seeded generator).
struct Origin {
    records: HashMap<String, Vec<String>>,
    requests: AtomicU64,
}

impl Origin {
    fn new(seed: u64) -> Self {
        let mut records = HashMap::new();
        let level1: Vec<String> = (0..10).map(|i| format!("w-1-{i}")).collect();
        records.insert("w-root".to_owned(), level1.clone());
        let mut leaves = Vec::new();
        for (i, l1) in level1.iter().enumerate() {
            let refs: Vec<String> = (0..5).map(|j| format!("w-2-{i}-{j}")).collect();
            leaves.extend(refs.iter().cloned());
            records.insert(l1.clone(), refs);
        }
        let mut rng = seed;
        let mut missing = HashSet::new();
        while missing.len() < 10 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            missing.insert(leaves[(rng % leaves.len() as u64) as usize].clone());
        }
        for leaf in leaves.into_iter().filter(|l| !missing.contains(l)) {
            records.insert(leaf, Vec::new());
        }
        Origin {
            records,
            requests: AtomicU64::new(0),
        }
    }

    fn answer(&self, path: &str) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Relaxed);
        let (status, body) = if path.starts_with("/unavailable/") {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from_static(ERROR_BODY),
            )
        } else {
            match path
                .strip_prefix("/records/")
                .and_then(|id| self.records.get(id))
            {
                Some(refs) => (StatusCode::OK, Bytes::from(refs.join("\n"))),
                None => (StatusCode::NOT_FOUND, Bytes::from_static(ERROR_BODY)),
            }
        };
        let mut res = Response::new(Full::new(body));
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

// ----- the clients --------------------------------------------------------------------------

type HyperClient = Client<HttpConnector, Empty<Bytes>>;

/// The bug: release the answer, retry every non-2xx twice.
#[derive(Clone)]
struct Naive {
    client: HyperClient,
    discarded: Arc<AtomicU64>,
}

impl Naive {
    async fn get(&self, uri: http::Uri) -> Result<Response<Incoming>, BoxError> {
        let mut attempt = 0;
        loop {
            let res = self.client.get(uri.clone()).await?;
            if res.status().is_success() || attempt == 2 {
                return Ok(res);
            }
            // The answer is released (its body dropped unread) before anything else happens.
            let len = res.body().size_hint().exact().unwrap_or(0);
            self.discarded.fetch_add(len, Relaxed);
            drop(res);
            attempt += 1;
            tokio::time::sleep(BACKOFF * 2u32.pow(attempt)).await;
        }
    }
}

/// Fetches `path` through `svc`; the status and the body.
async fn fetch<S, B>(mut svc: S, base: &str, path: &str) -> (StatusCode, Bytes)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
    B::Error: std::fmt::Debug,
{
    let req = Request::get(format!("{base}{path}"))
        .body(Empty::new())
        .unwrap();
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(req)
        .await
        .expect("the origin answers");
    let status = res.status();
    (
        status,
        res.into_body().collect().await.expect("a body").to_bytes(),
    )
}

// ----- scenarios ----------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Scenario {
    OneMissing,
    Burst56,
    Workout,
    Concurrent50,
    Storm503,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::OneMissing,
        Scenario::Burst56,
        Scenario::Workout,
        Scenario::Concurrent50,
        Scenario::Storm503,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::OneMissing => "one missing record",
            Scenario::Burst56 => "burst of 56 missing records",
            Scenario::Workout => "workout resolved 2 levels deep (61 fetches, 10 missing)",
            Scenario::Concurrent50 => "50 concurrent requests for one missing record",
            Scenario::Storm503 => "origin answering 503 to everything, 1,000 requests",
        }
    }

    /// Bounds on the layered client's upstream requests: first run, repeat.
    fn bounds(self) -> (u64, Option<u64>) {
        match self {
            Scenario::OneMissing => (1, Some(0)),
            Scenario::Burst56 => (56, Some(0)),
            Scenario::Workout => (61, Some(51)),
            Scenario::Concurrent50 => (1, Some(0)),
            // 20% of 1,000 plus the budget's 10/s reserve over its 10 s window.
            Scenario::Storm503 => (1_300, None),
        }
    }
}

/// Runs a scenario's workload through `svc`: the paths fetched, some at once.
async fn run<S, B>(scenario: Scenario, svc: S, base: &str)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
    B: Body + Send,
    B::Data: Send,
    B::Error: std::fmt::Debug,
{
    let base: Arc<str> = base.into();
    let all_at_once = |paths: Vec<String>| {
        let (svc, base) = (svc.clone(), base.clone());
        async move {
            let mut set = JoinSet::new();
            for p in paths {
                let (svc, base) = (svc.clone(), base.clone());
                set.spawn(async move { fetch(svc, &base, &p).await });
            }
            let mut out = Vec::new();
            while let Some(r) = set.join_next().await {
                out.push(r.expect("no panic"));
            }
            out
        }
    };
    match scenario {
        Scenario::OneMissing => {
            fetch(svc.clone(), &base, "/records/m-1").await;
        }
        Scenario::Burst56 => {
            all_at_once((0..56).map(|i| format!("/records/m-burst-{i}")).collect()).await;
        }
        Scenario::Workout => {
            let mut level = vec!["w-root".to_owned()];
            for _ in 0..3 {
                let answers =
                    all_at_once(level.iter().map(|id| format!("/records/{id}")).collect()).await;
                level = answers
                    .into_iter()
                    .filter(|(s, _)| s.is_success())
                    .flat_map(|(_, body)| {
                        String::from_utf8_lossy(&body)
                            .lines()
                            .map(str::to_owned)
                            .collect::<Vec<_>>()
                    })
                    .collect();
            }
        }
        Scenario::Concurrent50 => {
            all_at_once(vec!["/records/m-hot".to_owned(); 50]).await;
        }
        Scenario::Storm503 => {
            // 1,000 requests, 50 at a time.
            for chunk in 0..20 {
                all_at_once(
                    (0..50)
                        .map(|i| format!("/unavailable/{}", chunk * 50 + i))
                        .collect(),
                )
                .await;
            }
        }
    }
}

struct Column {
    requests: u64,
    wall: Duration,
}

async fn measure<F: std::future::Future<Output = ()>>(origin: &Origin, f: F) -> Column {
    let before = origin.requests.load(Relaxed);
    let t = Instant::now();
    f.await;
    Column {
        requests: origin.requests.load(Relaxed) - before,
        wall: t.elapsed(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let origin = Arc::new(Origin::new(0x5eed_1234));
    let base = format!("http://{}", serve(origin.clone()).await);
    let client: HyperClient = Client::builder(TokioExecutor::new()).build_http();

    println!(
        "origin: {base} (seeded record graph; error bodies of {} bytes)",
        ERROR_BODY.len()
    );
    println!(
        "naive: retries every non-2xx twice, releasing the answer first; backoff {BACKOFF:?} x 2^n"
    );
    println!(
        "layers: NegativeCacheLayer (coalescing on) outside StatusAwareRetryLayer, the same waits as their cap (full jitter)\n"
    );
    println!(
        "{:<58} {:>14} {:>14} {:>14}",
        "scenario", "naive", "layers, 1st", "layers, again"
    );

    let mut failed = false;
    let (mut naive_discarded, mut drained) = (0, 0);
    let mut hit_rates = Vec::new();
    for scenario in Scenario::ALL {
        let discarded = Arc::new(AtomicU64::new(0));
        let naive = Naive {
            client: client.clone(),
            discarded: discarded.clone(),
        };
        let naive_svc = tower::service_fn(move |req: Request<Empty<Bytes>>| {
            let naive = naive.clone();
            async move { naive.get(req.uri().clone()).await }
        });
        let naive_col = measure(&origin, run(scenario, naive_svc, &base)).await;
        naive_discarded += discarded.load(Relaxed);

        // A fresh stack per scenario: its own cache, budget and stats.
        let cache = NegativeCacheLayer::builder()
            .ttl(Duration::from_secs(3600))
            .coalesce(Duration::from_secs(5))
            .build()
            .unwrap();
        let retry = StatusAwareRetryLayer::builder()
            // The first retry waits up to the base: the naive client's first wait, BACKOFF x 2.
            .backoff_base(BACKOFF * 2)
            .jitter(Jitter::Full)
            .build()
            .unwrap();
        let layered = ServiceBuilder::new()
            .layer(cache.clone())
            .layer(retry.clone())
            .service(client.clone());
        let first = measure(&origin, run(scenario, layered.clone(), &base)).await;
        let (bound, repeat_bound) = scenario.bounds();
        let again = match repeat_bound {
            Some(_) => Some(measure(&origin, run(scenario, layered, &base)).await),
            None => None,
        };
        drained += retry.stats().drained_bytes;
        let stats = cache.handle().stats();
        hit_rates.push((scenario, stats.hit_rate, stats.hits, stats.lookups));

        let fmt = |c: &Column| format!("{} ({:.0?})", c.requests, c.wall);
        println!(
            "{:<58} {:>14} {:>14} {:>14}",
            scenario.name(),
            fmt(&naive_col),
            fmt(&first),
            again.as_ref().map_or("—".to_owned(), fmt)
        );
        if first.requests > bound {
            eprintln!(
                "  FAIL: {} upstream requests > bound {bound}",
                first.requests
            );
            failed = true;
        }
        if let (Some(again), Some(b)) = (&again, repeat_bound) {
            if again.requests > b {
                eprintln!(
                    "  FAIL: repeat made {} upstream requests > bound {b}",
                    again.requests
                );
                failed = true;
            }
        }
        if let Scenario::Storm503 = scenario {
            let amp = first.requests as f64 / 1000.0;
            println!(
                "{:<58} {:>14.2}x {:>13.2}x",
                "  amplification (upstream / request)",
                naive_col.requests as f64 / 1000.0,
                amp
            );
        }
    }
    println!("\nnegative cache hit rate per scenario (both runs):");
    for (s, rate, hits, lookups) in hit_rates {
        println!(
            "  {:<56} {:>5.1}%  ({hits}/{lookups})",
            s.name(),
            rate * 100.0
        );
    }
    println!(
        "\nresponse body bytes discarded: naive {naive_discarded} (dropped unread, connection lost); \
         layers {drained} (drained, connection reused)"
    );
    if failed {
        eprintln!("\nA layered count exceeded its bound.");
        return ExitCode::FAILURE;
    }
    println!("\nAll layered counts within their bounds.");
    ExitCode::SUCCESS
}
