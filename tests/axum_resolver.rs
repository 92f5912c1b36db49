//! The `axum_resolver` example's app, served on real sockets: its resolved trees, what its
//! origin counts, and its metrics route.
//!
//! Run: `cargo test --features serde --test axum_resolver`

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/axum_resolver.rs"]
mod axum_resolver;

use axum::http::StatusCode;
use serde_json::Value;

use axum_resolver::{app, get_json, nodes_with_status, serve, serve_origin};

/// The origin and the app, each on its own 127.0.0.1 port; the app's base URL.
async fn start() -> (
    String,
    std::sync::Arc<axum_resolver::Origin>,
    tower_negative_cache::cache::NegativeCacheHandle,
) {
    let (origin_base, origin) = serve_origin().await;
    let (router, handle) = app(origin_base);
    let app_base = format!("http://{}", serve(router).await);
    (app_base, origin, handle)
}

/// `tree` without its `cached` fields.
fn without_cached(mut tree: Value) -> Value {
    if let Some(node) = tree.as_object_mut() {
        node.remove("cached");
        if let Some(refs) = node.get_mut("refs").and_then(Value::as_array_mut) {
            for r in refs {
                *r = without_cached(r.take());
            }
        }
    }
    tree
}

fn ids(nodes: &[&Value]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn resolves_references_to_the_requested_depth() {
    let (app, origin, _) = start().await;

    let (status, tree) = get_json(&format!("{app}/records/w-root?resolveDepth=2")).await;
    assert_eq!(status, StatusCode::OK, "{tree}");
    assert_eq!(tree["status"], "found");
    assert_eq!(tree["id"], "w-root");
    assert_eq!(tree["name"], "Morning run");

    // Level 1: w-1 and w-2 found, w-3 missing, in the record's order.
    let level1 = tree["refs"].as_array().expect("refs is an array");
    let shape: Vec<(&str, &str)> = level1
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        shape,
        [("w-1", "found"), ("w-2", "found"), ("w-3", "missing")]
    );
    assert_eq!(level1[2]["http_status"], 404);
    assert_eq!(level1[2]["cached"], false);

    // Level 2: resolved; a 410 is missing too; the cycle back to w-root is cut at the depth.
    let w1 = &level1[0]["refs"];
    assert_eq!(w1[0]["id"], "w-1-a");
    assert_eq!(w1[0]["status"], "found");
    assert_eq!(w1[0]["refs"], serde_json::json!([]));
    assert_eq!(w1[1]["id"], "w-1-b");
    assert_eq!(w1[1]["status"], "missing");
    let w2 = &level1[1]["refs"];
    assert_eq!(w2[0]["id"], "w-2-a");
    assert_eq!(w2[0]["status"], "missing");
    assert_eq!(w2[0]["http_status"], 410);
    assert_eq!(w2[1]["id"], "w-root");
    assert_eq!(w2[1]["status"], "found");
    let unresolved = nodes_with_status(&w2[1], "unresolved");
    assert_eq!(ids(&unresolved), ["w-1", "w-2", "w-3"]);

    assert_eq!(
        ids(&nodes_with_status(&tree, "missing")),
        ["w-1-b", "w-2-a", "w-3"]
    );
    assert!(nodes_with_status(&tree, "error").is_empty(), "{tree}");
    // One request per node fetched: w-root twice (root and cycle), 6 others.
    assert_eq!(origin.total_requests(), 8);

    // Depth 0: the record alone, its references listed but not fetched.
    let (status, tree) = get_json(&format!("{app}/records/w-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        tree,
        serde_json::json!({
            "status": "found",
            "id": "w-1",
            "name": "Warm-up",
            "refs": [
                {"status": "unresolved", "id": "w-1-a"},
                {"status": "unresolved", "id": "w-1-b"},
            ],
        })
    );
    assert_eq!(origin.total_requests(), 9);
}

#[tokio::test]
async fn a_missing_root_is_404_and_bad_input_is_400() {
    let (app, origin, _) = start().await;

    let (status, body) = get_json(&format!("{app}/records/nope?resolveDepth=3")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["status"], "missing");
    assert_eq!(body["id"], "nope");

    let (status, body) = get_json(&format!("{app}/records/w-root?resolveDepth=99")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["status"], "error");

    let (status, _) = get_json(&format!("{app}/records/a%2Fb")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Only the first request reached the origin.
    assert_eq!(origin.total_requests(), 1);
}

#[tokio::test]
async fn a_repeat_costs_no_upstream_request_for_missing_references() {
    let (app, origin, _) = start().await;
    let url = format!("{app}/records/w-root?resolveDepth=2");
    let missing = ["w-1-b", "w-2-a", "w-3"];

    let (_, first) = get_json(&url).await;
    let after_first = origin.total_requests();
    for id in missing {
        assert_eq!(origin.requests_for(id), 1, "{id}");
    }

    let (status, second) = get_json(&url).await;
    assert_eq!(status, StatusCode::OK);
    for id in missing {
        assert_eq!(origin.requests_for(id), 1, "{id} was asked for again");
    }
    // The 5 found records are fetched again (only absence is cached); the 3 missing are not.
    assert_eq!(origin.total_requests() - after_first, 5);

    // The same tree, except that the negative cache answered the missing references.
    for node in nodes_with_status(&first, "missing") {
        assert_eq!(node["cached"], false, "{node}");
    }
    let cached = nodes_with_status(&second, "missing");
    assert_eq!(ids(&cached), missing);
    for node in &cached {
        assert_eq!(node["cached"], true, "{node}");
    }
    assert_eq!(without_cached(first), without_cached(second));
}

#[tokio::test]
async fn metrics_report_the_negative_cache_as_json() {
    let (app, _origin, handle) = start().await;
    let metrics = format!("{app}/metrics/negative-cache");

    let (status, empty) = get_json(&metrics).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(empty["lookups"], 0);
    assert_eq!(empty["hit_rate"], 0.0);
    assert_eq!(empty["capacity"], 10_000);

    let url = format!("{app}/records/w-root?resolveDepth=2");
    get_json(&url).await;
    get_json(&url).await;

    let (status, m) = get_json(&metrics).await;
    assert_eq!(status, StatusCode::OK);
    for field in [
        "lookups",
        "hits",
        "misses",
        "inserts",
        "evictions",
        "expirations",
        "invalidations",
        "bypasses",
        "coalesced",
        "wait_timeouts",
        "len",
        "capacity",
    ] {
        assert!(m[field].is_u64(), "{field} is a count: {m}");
    }
    let n = |field: &str| m[field].as_u64().unwrap();
    // 8 lookups per tree; the second tree's 3 missing references were hits.
    assert_eq!(n("lookups"), 16, "{m}");
    assert_eq!(n("hits"), 3, "{m}");
    assert_eq!(n("misses"), 13, "{m}");
    assert_eq!(n("lookups"), n("hits") + n("misses"));
    assert_eq!(n("inserts"), 3, "{m}");
    assert_eq!(n("len"), 3, "{m}");
    assert!(n("len") <= n("capacity"));
    assert_eq!(n("evictions") + n("expirations") + n("invalidations"), 0);
    let rate = m["hit_rate"].as_f64().expect("hit_rate is a number");
    assert!((rate - 3.0 / 16.0).abs() < 1e-9, "{m}");

    // The route serves exactly what the handle reports.
    assert_eq!(m, serde_json::to_value(handle.stats()).unwrap());
}
