//! Storm: an origin answering 503 to everything. The retry budget keeps the load it sees within
//! `(1 + ratio)` times the request rate plus the budget's per-second allowance.

mod support;

use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::StatusAwareRetryLayer;
use tower_negative_cache::retry::Jitter;

use support::{Reply, TestServer};

const REQUESTS: usize = 10_000;
const TASKS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_storm_is_amplified_at_most_by_the_budget() {
    let origin = TestServer::always(Reply::status(503).body("unavailable")).await;
    // The default budget: 20% of requests plus 10 retries/s over a 10 s window.
    let retry = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .jitter(Jitter::Full)
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(retry.clone())
        .service(support::client());

    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for t in 0..TASKS {
        let mut client = client.clone();
        let url = origin.url("/storm");
        tasks.spawn(async move {
            for _ in (t..REQUESTS).step_by(TASKS) {
                let res = client
                    .ready()
                    .await
                    .unwrap()
                    .call(support::get(&url))
                    .await
                    .expect("an answer");
                assert_eq!(res.status(), 503);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("no task panicked");
    }
    let run = started.elapsed();

    let attempts = origin.total_hits();
    let stats = retry.stats();
    assert_eq!(stats.requests, REQUESTS as u64);
    assert_eq!(
        stats.attempts, attempts as u64,
        "the layer's count agrees with the origin's"
    );
    // A spent retry comes back when its tenth-of-a-window slot is recycled (after 0.9 to 1.0
    // window), so the 10/s reserve can refill once per 0.9 window at most.
    let window = 10.0;
    let reserve = 10.0 * window * (1.0 + run.as_secs_f64() / (0.9 * window));
    let bound = REQUESTS as f64 * 1.2 + reserve;
    let amplification = attempts as f64 / REQUESTS as f64;
    println!(
        "storm: {REQUESTS} requests, {TASKS} tasks, {run:.2?}: {attempts} upstream attempts, \
         amplification {amplification:.3}x (naive 3x), bound {bound:.0}; {stats:?}"
    );
    assert!(attempts as f64 <= bound, "{attempts} attempts > {bound}");
    assert!(
        stats.budget_exhausted > 0,
        "the budget, not max_retries, stopped the storm"
    );
}
