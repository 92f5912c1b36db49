//! Feature `metrics`: what the layers record through the `metrics` facade equals their stats
//! snapshot over the same traffic, and the series stay bounded whatever the URIs. Against a
//! real hyper server, with metrics-util's `DebuggingRecorder` as the application's recorder.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::metrics::{
    self as m, CacheMetrics, LABEL_NAME, LABEL_OUTCOME, LABEL_REASON, RetryMetrics,
};
use tower_negative_cache::retry::Jitter;
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

use support::{Reply, TestServer};

/// A series' labels, sorted.
type Labels = Vec<(String, String)>;

/// Every series of a snapshot: name, labels, value.
struct Series(Vec<(String, Labels, DebugValue)>);

impl Series {
    fn of(snapshotter: &Snapshotter) -> Series {
        Series(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, _, _, value)| {
                    let key = key.key();
                    let mut labels: Vec<_> = key
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect();
                    labels.sort();
                    (key.name().to_owned(), labels, value)
                })
                .collect(),
        )
    }

    /// The series `name` whose labels include every one of `labels`.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> &DebugValue {
        let found: Vec<_> = self
            .0
            .iter()
            .filter(|(n, ls, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
        &found[0].2
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.find(name, labels) {
            DebugValue::Counter(n) => *n,
            other => panic!("{name} is not a counter: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.find(name, labels) {
            DebugValue::Gauge(v) => v.into_inner(),
            other => panic!("{name} is not a gauge: {other:?}"),
        }
    }

    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.find(name, labels) {
            DebugValue::Histogram(v) => v.iter().map(|x| x.into_inner()).collect(),
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }
}

/// An origin: `/missing/*` is 404 to reads and 200 to writes, `/flaky` 503 then 200,
/// `/down` always 503, anything else 200.
async fn origin() -> TestServer {
    TestServer::builder()
        .handler(|r| {
            if r.path.starts_with("/missing/") {
                Some(Reply::status(if r.method == Method::GET {
                    404
                } else {
                    200
                }))
            } else if r.path == "/down" {
                Some(Reply::status(503))
            } else {
                None
            }
        })
        .route("/flaky", [Reply::status(503), Reply::ok("x")])
        .start()
        .await
}

fn layers(
    recorder: &DebuggingRecorder,
    name: &'static str,
) -> (NegativeCacheLayer, StatusAwareRetryLayer) {
    // Handles are registered with the recorder installed when the observer is made.
    let (cache_metrics, retry_metrics) = metrics::with_local_recorder(recorder, || {
        (CacheMetrics::new(name), RetryMetrics::new(name))
    });
    let cache = NegativeCacheLayer::builder()
        .capacity(8)
        .observer(Arc::new(cache_metrics))
        .build()
        .unwrap();
    let retry = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .jitter(Jitter::None)
        .no_budget()
        .observer(Arc::new(retry_metrics))
        .build()
        .unwrap();
    (cache, retry)
}

#[tokio::test]
async fn every_counter_equals_the_stats_snapshot() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (cache, retry) = layers(&recorder, "records");
    let handle = cache.handle();
    let server = origin().await;
    let svc = ServiceBuilder::new()
        .layer(cache)
        .layer(retry.clone())
        .service(support::client());

    // 20 distinct missing keys, twice: inserts, evictions (capacity 8), hits, misses.
    for _ in 0..2 {
        for i in 0..20 {
            let url = server.url(&format!("/missing/{i}"));
            let res = svc.clone().oneshot(support::get(&url)).await.unwrap();
            assert_eq!(res.status(), 404);
        }
    }
    // Retried for a status, then answered; retried until given up.
    let res = svc
        .clone()
        .oneshot(support::get(&server.url("/flaky")))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = svc
        .clone()
        .oneshot(support::get(&server.url("/down")))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    // A write: a bypass, and (for a remembered key) an invalidation.
    let url = server.url("/missing/19");
    let res = svc
        .clone()
        .oneshot(support::request(Method::DELETE, &url))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // A transport error, retried until given up.
    let refused = format!("http://{}/x", support::refused_addr());
    svc.clone()
        .oneshot(support::get(&refused))
        .await
        .unwrap_err();
    // The handle's own invalidations.
    handle.invalidate_if(|k| k.ends_with("/missing/18"));
    handle.clear();
    let res = svc
        .clone()
        .ready()
        .await
        .unwrap()
        .call(support::get(&server.url("/missing/1")))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    let cs = handle.stats();
    let rs = retry.stats();
    let s = Series::of(&snapshotter);
    let n = (LABEL_NAME, "records");
    let outcome = |o| [n, (LABEL_OUTCOME, o)];

    // The workload reached what it meant to: these comparisons are not 0 = 0.
    assert!(cs.hits > 0 && cs.misses > 0 && cs.bypasses > 0, "{cs:?}");
    assert!(
        cs.inserts > 0 && cs.evictions > 0 && cs.invalidations > 0,
        "{cs:?}"
    );
    assert!(
        rs.retries >= 5 && rs.gave_up == 2 && rs.succeeded > 0,
        "{rs:?}"
    );

    assert_eq!(s.counter(m::CACHE_REQUESTS, &outcome("hit")), cs.hits);
    assert_eq!(s.counter(m::CACHE_REQUESTS, &outcome("miss")), cs.misses);
    assert_eq!(
        s.counter(m::CACHE_REQUESTS, &outcome("bypass")),
        cs.bypasses
    );
    assert_eq!(s.counter(m::CACHE_COALESCED, &[n]), cs.coalesced);
    assert_eq!(s.counter(m::CACHE_WAIT_TIMEOUTS, &[n]), cs.wait_timeouts);
    assert_eq!(
        s.counter(m::CACHE_ONLY_IF_CACHED_MISSES, &[n]),
        cs.only_if_cached_misses
    );
    assert_eq!(s.counter(m::CACHE_INSERTS, &[n]), cs.inserts);
    assert_eq!(s.counter(m::CACHE_HEAD_ONLY, &[n]), cs.head_only);
    assert_eq!(s.counter(m::CACHE_UNCACHEABLE, &[n]), cs.uncacheable);
    assert_eq!(s.counter(m::CACHE_EVICTIONS, &[n]), cs.evictions);
    assert_eq!(s.counter(m::CACHE_EXPIRATIONS, &[n]), cs.expirations);
    assert_eq!(s.counter(m::CACHE_INVALIDATIONS, &[n]), cs.invalidations);
    assert_eq!(s.gauge(m::CACHE_ENTRIES, &[n]), cs.len as f64);
    assert_eq!(s.gauge(m::CACHE_MEMORY_USAGE, &[n]), cs.memory_bytes as f64);

    let answers = [
        ("succeeded", rs.succeeded),
        ("missing", rs.missing),
        ("failed", rs.failed),
        ("gave_up", rs.gave_up),
        ("budget_exhausted", rs.budget_exhausted),
        ("not_retried", rs.not_retried),
    ];
    for (o, stat) in answers {
        assert_eq!(s.counter(m::RETRY_REQUESTS, &outcome(o)), stat, "{o}");
    }
    let reason = |r| s.counter(m::RETRY_RETRIES, &[n, (LABEL_REASON, r)]);
    assert_eq!(
        reason("status") + reason("transport_error") + reason("unprocessed"),
        rs.retries
    );
    assert_eq!(reason("status"), 3, "/flaky once, /down twice");
    assert_eq!(s.counter(m::RETRY_NOT_REPLAYABLE, &[n]), rs.not_replayable);
    assert_eq!(s.counter(m::RETRY_DRAINED, &[n]), rs.drained_bytes);
    assert_eq!(
        s.counter(m::RETRY_UNRECOGNISED_ERRORS, &[n]),
        rs.unrecognised_errors
    );
    assert_eq!(
        s.counter(m::RETRY_SENT_PAST_DEADLINE, &[n]),
        rs.sent_past_deadline
    );
    assert_eq!(s.counter(m::RETRY_UNWITNESSED, &[n]), rs.unwitnessed);
    // One wait per retry sent (none was dropped during its wait), 1 ms then 2 ms.
    let waits = s.histogram(m::RETRY_BACKOFF, &[n]);
    assert_eq!(waits.len() as u64, rs.retries);
    assert!(
        waits.iter().all(|w| [0.001, 0.002].contains(w)),
        "{waits:?}"
    );
    // A96: one value per request retried at least once — /flaky 1, /down 2, refused 2.
    let mut per_call = s.histogram(m::RETRY_CALL_RETRIES, &[n]);
    per_call.sort_by(f64::total_cmp);
    assert_eq!(per_call.iter().sum::<f64>() as u64, rs.retries);
    assert_eq!(per_call, [1.0, 2.0, 2.0]);
}

#[tokio::test]
async fn series_stay_bounded_under_ten_thousand_distinct_uris() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (cache, retry) = layers(&recorder, "bounded");
    let server = origin().await;
    let svc = ServiceBuilder::new()
        .layer(cache)
        .layer(retry)
        .service(support::client());
    let run = |from: usize, to: usize| {
        let (svc, server) = (svc.clone(), &server);
        async move {
            for i in from..to {
                let url = server.url(&format!("/missing/{i}?token=secret{i}"));
                let res = svc.clone().oneshot(support::get(&url)).await.unwrap();
                assert_eq!(res.status(), 404);
            }
        }
    };
    run(0, 100).await;
    // Every series a workload of 100 URIs makes (registered up front: none appears later).
    let series = |s: &Series| -> HashSet<(String, Labels)> {
        s.0.iter().map(|(n, l, _)| (n.clone(), l.clone())).collect()
    };
    let after_100 = series(&Series::of(&snapshotter));
    run(100, 10_000).await;
    let last = Series::of(&snapshotter);
    let after_10_000 = series(&last);
    assert_eq!(after_100, after_10_000);
    assert!(after_10_000.len() < 40, "{}", after_10_000.len());
    // No label names a URI, a key or anything per request.
    for (_, labels) in &after_10_000 {
        for (_, value) in labels {
            assert!(!value.contains('/') && !value.contains("secret"), "{value}");
        }
    }
    // And the traffic was counted (10,000 misses less the first snapshot's 100: a snapshot
    // hands counters' values out and resets them).
    let n = (LABEL_NAME, "bounded");
    assert_eq!(
        last.counter(m::CACHE_REQUESTS, &[n, (LABEL_OUTCOME, "miss")]),
        9_900
    );
}
