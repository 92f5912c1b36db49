//! Per-host retry budgets against two real origins: host A is down (every answer 503), host B
//! is healthy but each of its records answers one 503 before its 200. Two servers on
//! 127.0.0.1:0 are two authorities (their ports differ).
//!
//! A's outage must change nothing for B: with per-host budgets (the default) every one of B's
//! requests gets its retry; with one budget for the layer, A's outage spends B's retries.

mod support;

use std::time::Duration;

use tokio::task::JoinSet;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::retry::{BudgetScope, Builder};
use tower_negative_cache::{RetryInfo, StatusAwareRetryLayer};

use support::{Reply, TestServer};

const DOWN_REQUESTS: usize = 2_000;
const HEALTHY_REQUESTS: usize = 100;
const TASKS: usize = 16;

/// Runs the scenario through a layer built from `builder`; returns how many of B's requests
/// were retried (answered 200 after 2 attempts) and the layer.
async fn scenario(builder: Builder) -> (usize, StatusAwareRetryLayer, String) {
    let down = TestServer::always(Reply::status(503)).await;
    // One 503 per record, then 200.
    let healthy = TestServer::builder().start().await;
    for i in 0..HEALTHY_REQUESTS {
        let path = format!("/records/{i}");
        healthy.push(&path, Reply::status(503));
        healthy.push(&path, Reply::status(200));
    }
    // A long window, so the whole run counts in one window however slow the machine is; a
    // 1 ms backoff.
    let layer = builder
        .backoff_base(Duration::from_millis(1))
        .budget_window(Duration::from_secs(60))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(support::client());

    // A's outage first: its requests spend whatever budget they can reach.
    let mut tasks = JoinSet::new();
    for t in 0..TASKS {
        let mut client = client.clone();
        let url = down.url("/down");
        tasks.spawn(async move {
            for _ in (t..DOWN_REQUESTS).step_by(TASKS) {
                let res = client
                    .ready()
                    .await
                    .unwrap()
                    .call(support::get(&url))
                    .await
                    .unwrap();
                assert_eq!(res.status(), 503);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let mut retried = 0;
    for i in 0..HEALTHY_REQUESTS {
        let url = healthy.url(&format!("/records/{i}"));
        let res = client.clone().oneshot(support::get(&url)).await.unwrap();
        let info = *res.extensions().get::<RetryInfo>().unwrap();
        if res.status() == 200 {
            assert_eq!(info.attempts, 2);
            retried += 1;
        } else {
            assert_eq!((res.status().as_u16(), info.attempts), (503, 1));
        }
    }
    let down_host = down.addr.to_string();
    (retried, layer, down_host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_host_does_not_spend_a_healthy_hosts_retries() {
    let (retried, layer, down_host) = scenario(StatusAwareRetryLayer::builder()).await;
    let stats = layer.stats();
    assert_eq!(
        retried, HEALTHY_REQUESTS,
        "B got {retried} of {HEALTHY_REQUESTS} retried beside A's outage: {stats:?}"
    );
    // A's outage was bounded by A's own budget: 20% of its requests plus 10/s over 60 s.
    let a_retries = stats.retries as usize - HEALTHY_REQUESTS;
    assert!(
        a_retries <= DOWN_REQUESTS / 5 + 600 + 1,
        "A got {a_retries} retries"
    );
    assert!(
        stats.budget_exhausted > 0,
        "A's budget was never spent: {stats:?}"
    );

    // The operator's view: the exhausted budget is A's, and only A's.
    let scopes = layer.budget_exhausted_scopes();
    assert_eq!(scopes, vec![(down_host, stats.budget_exhausted)]);
}

/// The same outage through one budget for the layer (the old default): A spends B's retries.
/// This is what the default guards against, measured on the same servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_budget_for_the_layer_lets_a_down_host_spend_a_healthy_hosts_retries() {
    let builder = StatusAwareRetryLayer::builder().budget_scope(BudgetScope::layer());
    let (retried, layer, _) = scenario(builder).await;
    assert!(
        retried < HEALTHY_REQUESTS / 2,
        "B got {retried} of {HEALTHY_REQUESTS} retried through A's budget"
    );
    let scopes = layer.budget_exhausted_scopes();
    assert_eq!(scopes[0].0, "(layer)");
    assert_eq!(scopes[0].1, layer.stats().budget_exhausted);
}
