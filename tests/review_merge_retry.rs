//! Adversarial review of the merged tree (issues 18, 19, 20, 22): the retry layer's and the
//! observability promises, each break held by a test that failed before its fix.

mod support;

use std::time::Duration;

use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::StatusAwareRetryLayer;

use support::{Reply, TestServer};

/// Per-host budgets key on the host, not on who asks it: `http://alice:pw@host/` and
/// `http://bob:pw@host/` are one upstream (RFC 3986 §3.2: the userinfo is not part of the
/// host), so a down host gets one budget however many credentials reach it — and the
/// credentials never show in `budget_exhausted_scopes`, which operators serve and log.
#[tokio::test]
async fn userinfo_neither_splits_a_hosts_budget_nor_shows_in_the_exhausted_scopes() {
    const USERS: usize = 30;
    let down = TestServer::always(Reply::status(503)).await;
    // No ratio, 1 retry a second over 10 s: the host's budget holds 10 retries.
    let layer = StatusAwareRetryLayer::builder()
        .max_retries(1)
        .backoff_base(Duration::from_millis(1))
        .budget_ratio(0.0)
        .budget_min_per_sec(1)
        .budget_window(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(support::client());
    let base = down.url("/down");
    for u in 0..USERS {
        let url = base.replacen("http://", &format!("http://user{u}:secret{u}@"), 1);
        let res = client
            .ready()
            .await
            .unwrap()
            .call(support::get(&url))
            .await
            .unwrap();
        assert_eq!(res.status(), 503);
    }
    let stats = layer.stats();
    assert_eq!(stats.requests, USERS as u64);
    assert!(
        stats.retries <= 10,
        "one host, one budget of 10 retries: {} retries sent ({} requests reached it)",
        stats.retries,
        down.total_hits()
    );
    let scopes = layer.budget_exhausted_scopes();
    assert!(!scopes.is_empty(), "the budget ran out: {stats:?}");
    for (name, _) in &scopes {
        assert!(
            !name.contains('@') && !name.contains("secret"),
            "credentials in an exhausted scope's name: {name}"
        );
    }
}
