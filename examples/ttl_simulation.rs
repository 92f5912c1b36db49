//! A simulated day through the real `NegativeCacheLayer`, on paused time: the default fixed TTL
//! (60 s), a fixed 1 h TTL, and the adaptive TTL (60 s base, 1 h ceiling), side by side on the
//! same trace.
//!
//! Run: `cargo run --release --example ttl_simulation` (a million requests, a few seconds), or
//! `cargo run --example ttl_simulation -- --requests 200000` for a smaller day.
//!
//! The trace (seeded, the same for every policy): 10,000 keys, requested with Zipf popularity
//! (s = 1) by a Poisson stream over 24 simulated hours. The keys' fates are drawn apart from
//! their popularity:
//! - 80% never appear (the incident's case: missing records stay missing);
//! - 15% appear once, at a uniform random time of the day (created by another writer, through
//!   another path: this cache never sees the write);
//! - 5% flap: missing and present in turns, each phase lasting 10 min to 3 h.
//!
//! The origin is an in-process `service_fn` (a socket would need the real clock): it answers
//! each key 404 or 200 as its fate says at the simulated time, and counts its calls.
//!
//! Staleness: each time a key becomes present, the cache may still hold its 404 — it would
//! answer 404 for the rest of that entry's life (or until the key goes missing again). That
//! window, whether requests came during it or not, is the key's staleness for that appearance
//! (zero if nothing was held). The table gives the total over the day, and the p50 and p99
//! over all appearances, and the stale answers actually served (a 404 from the cache for a
//! key that existed).
//!
//! The last line reads `summary: fixed_requests=N adaptive_requests=M stale_seconds_fixed=A
//! stale_seconds_adaptive=B` (fixed: the 60 s default). The process exits non-zero unless
//! M <= N/2 at the full day (a million requests); a smaller day (`--requests`, as CI runs it
//! in a debug build) spreads its requests thinner, so that fewer keys are asked for twice
//! within a TTL, and it checks only M < N.

use std::collections::HashMap;
use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Empty;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::cache::NegativeCacheHit;

const KEYS: usize = 10_000;
const DAY: f64 = 86_400.0;
const SEED: u64 = 0x005e_ed19;

/// SplitMix64: a seeded generator, so every run and every policy sees the same day.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// When a key exists: sorted instants (seconds into the day) at which it turns present or
/// missing, starting missing.
#[derive(Clone, Debug)]
enum Fate {
    Never,
    Appears(f64),
    Flaps(Vec<f64>),
}

impl Fate {
    fn present_at(&self, t: f64) -> bool {
        match self {
            Fate::Never => false,
            Fate::Appears(at) => t >= *at,
            // Odd number of toggles passed: present.
            Fate::Flaps(toggles) => toggles.partition_point(|&x| x <= t) % 2 == 1,
        }
    }
    /// (appeared at, present until) for each appearance within the day.
    fn appearances(&self) -> Vec<(f64, f64)> {
        match self {
            Fate::Never => vec![],
            Fate::Appears(at) => vec![(*at, DAY)],
            Fate::Flaps(toggles) => toggles
                .chunks(2)
                .map(|c| (c[0], c.get(1).copied().unwrap_or(DAY)))
                .collect(),
        }
    }
}

struct Trace {
    fates: Vec<Fate>,
    /// (seconds into the day, key index).
    requests: Vec<(f64, usize)>,
    shares: [usize; 3],
}

fn trace(requests: usize) -> Trace {
    let mut rng = Rng(SEED);
    let mut shares = [0; 3];
    let fates: Vec<Fate> = (0..KEYS)
        .map(|_| {
            let u = rng.unit();
            if u < 0.80 {
                shares[0] += 1;
                Fate::Never
            } else if u < 0.95 {
                shares[1] += 1;
                Fate::Appears(rng.unit() * DAY)
            } else {
                shares[2] += 1;
                let mut t = rng.unit() * 3.0 * 3600.0;
                let mut toggles = vec![];
                while t < DAY {
                    toggles.push(t);
                    t += 600.0 + rng.unit() * (3.0 * 3600.0 - 600.0);
                }
                Fate::Flaps(toggles)
            }
        })
        .collect();
    // Zipf(1) over ranks; the rank -> key map is a seeded shuffle, so popularity and fate are
    // independent.
    let weights: Vec<f64> = (1..=KEYS).map(|k| 1.0 / k as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(KEYS);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cdf.push(acc);
    }
    let mut by_rank: Vec<usize> = (0..KEYS).collect();
    for i in (1..KEYS).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        by_rank.swap(i, j);
    }
    let rate = requests as f64 / DAY;
    let mut t = 0.0;
    let mut reqs = Vec::with_capacity(requests);
    loop {
        t += -(1.0 - rng.unit()).ln() / rate;
        if t >= DAY {
            break;
        }
        let u = rng.unit();
        let rank = cdf.partition_point(|&c| c < u).min(KEYS - 1);
        reqs.push((t, by_rank[rank]));
    }
    Trace {
        fates,
        requests: reqs,
        shares,
    }
}

fn uri(key: usize) -> Uri {
    format!("http://records.internal/r/{key}").parse().unwrap()
}

#[derive(Debug, Default)]
struct Outcome {
    upstream: u64,
    stale_answers: u64,
    /// Staleness of each appearance, in seconds.
    stale: Vec<f64>,
}

impl Outcome {
    fn total(&self) -> f64 {
        self.stale.iter().sum()
    }
    fn quantile(&self, q: f64) -> f64 {
        let mut v = self.stale.clone();
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    }
}

/// The day through `layer`, on paused time.
async fn run(layer: NegativeCacheLayer, trace: &Trace) -> Outcome {
    let start = Instant::now();
    let fates = Arc::new(trace.fates.clone());
    let calls = Arc::new(Mutex::new(0u64));
    let origin = {
        let (fates, calls) = (fates.clone(), calls.clone());
        tower::service_fn(move |req: Request<Empty<Bytes>>| {
            *calls.lock().unwrap() += 1;
            let key: usize = req.uri().path()[3..].parse().unwrap();
            let t = start.elapsed().as_secs_f64();
            let status = if fates[key].present_at(t) {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            let res = Response::builder()
                .status(status)
                .body(Empty::<Bytes>::new());
            std::future::ready(Ok::<_, Infallible>(res.unwrap()))
        })
    };
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(origin);

    // Appearances, in time order, interleaved with the requests: at each, what the cache holds.
    let mut appearances: Vec<(f64, f64, usize)> = trace
        .fates
        .iter()
        .enumerate()
        .flat_map(|(k, f)| f.appearances().into_iter().map(move |(a, b)| (a, b, k)))
        .collect();
    appearances.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut next = appearances.iter().peekable();
    let mut out = Outcome::default();
    let uris: Vec<Uri> = (0..KEYS).map(uri).collect();
    let seen_at = |t: f64| Duration::from_secs_f64(t).saturating_sub(start.elapsed());

    for &(t, key) in &trace.requests {
        while let Some(&&(at, until, k)) = next.peek().filter(|a| a.0 <= t) {
            tokio::time::advance(seen_at(at)).await;
            let held = handle
                .peek(&uris[k])
                .map_or(0.0, |h| h.remaining.as_secs_f64());
            out.stale.push(held.min(until - at));
            next.next();
        }
        tokio::time::advance(seen_at(t)).await;
        let req = Request::get(uris[key].clone()).body(Empty::new()).unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        let present = trace.fates[key].present_at(start.elapsed().as_secs_f64());
        if present && res.extensions().get::<NegativeCacheHit>().is_some() {
            out.stale_answers += 1;
        }
    }
    for &(at, until, k) in next {
        tokio::time::advance(seen_at(at)).await;
        let held = handle
            .peek(&uris[k])
            .map_or(0.0, |h| h.remaining.as_secs_f64());
        out.stale.push(held.min(until - at));
    }
    out.upstream = *calls.lock().unwrap();
    out
}

fn main() -> ExitCode {
    let mut requests = 1_000_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|n| n.parse().ok())) {
            ("--requests", Some(n)) if n > 0 => requests = n,
            _ => {
                eprintln!("usage: ttl_simulation [--requests N]");
                return ExitCode::FAILURE;
            }
        }
    }
    let trace = trace(requests);
    println!(
        "{} requests over 24 h to {KEYS} keys (Zipf s=1); fates: {} never appear, {} appear once \
         (uniform time), {} flap (phases 10 min - 3 h); seed {SEED:#x}",
        trace.requests.len(),
        trace.shares[0],
        trace.shares[1],
        trace.shares[2],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let min = Duration::from_secs(60);
    let hour = Duration::from_secs(3600);
    let policies: [(&str, NegativeCacheLayer); 3] = [
        (
            "fixed 60 s (default)",
            NegativeCacheLayer::builder().ttl(min).build().unwrap(),
        ),
        (
            "fixed 1 h",
            NegativeCacheLayer::builder().ttl(hour).build().unwrap(),
        ),
        (
            "adaptive 60 s -> 1 h",
            NegativeCacheLayer::builder()
                .ttl(min)
                .adaptive_ttl(hour)
                .build()
                .unwrap(),
        ),
    ];
    println!(
        "\n| policy | upstream requests | stale answers | stale seconds total | p50 | p99 |\n|---|---:|---:|---:|---:|---:|"
    );
    let mut results: HashMap<&str, Outcome> = HashMap::new();
    for (name, layer) in policies {
        let out = rt.block_on(run(layer, &trace));
        println!(
            "| {name} | {} | {} | {:.0} | {:.0} | {:.0} |",
            out.upstream,
            out.stale_answers,
            out.total(),
            out.quantile(0.5),
            out.quantile(0.99)
        );
        results.insert(name, out);
    }
    let fixed = &results["fixed 60 s (default)"];
    let adaptive = &results["adaptive 60 s -> 1 h"];
    println!(
        "({} appearances; staleness per appearance: how long the cache would still answer 404)",
        fixed.stale.len()
    );
    println!(
        "summary: fixed_requests={} adaptive_requests={} stale_seconds_fixed={:.0} stale_seconds_adaptive={:.0}",
        fixed.upstream,
        adaptive.upstream,
        fixed.total(),
        adaptive.total()
    );
    let goal = if requests >= 1_000_000 {
        adaptive.upstream * 2 <= fixed.upstream
    } else {
        adaptive.upstream < fixed.upstream
    };
    if !goal {
        eprintln!("the adaptive TTL missed its goal against the fixed 60 s TTL");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
