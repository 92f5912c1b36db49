//! Features `metrics` + `redis`: what a fleet tier records through the `metrics` facade equals
//! its stats snapshot, for two replicas over a real `redis-server` (started by the test).

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{ServiceBuilder, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::fleet::{Fleet, FleetStats};
use tower_negative_cache::metrics::{self as m, FleetMetrics};
use tower_negative_cache::observe::FleetRejection;

use redis_support::RedisServer;
use support::{Reply, TestServer};

async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A snapshot's series: name, labels, value.
type Series = (String, Vec<(String, String)>, DebugValue);

/// The value of the series `name` labelled `name = replica` (and `extra`, if given).
fn value(snapshot: &[Series], name: &str, replica: &str, extra: Option<(&str, &str)>) -> f64 {
    let found: Vec<_> = snapshot
        .iter()
        .filter(|(n, labels, _)| {
            let has = |k: &str, v: &str| labels.iter().any(|(lk, lv)| lk == k && lv == v);
            n == name && has(m::LABEL_NAME, replica) && extra.is_none_or(|(k, v)| has(k, v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {replica} {extra:?}: {found:?}");
    match &found[0].2 {
        DebugValue::Counter(n) => *n as f64,
        DebugValue::Gauge(g) => g.into_inner(),
        DebugValue::Histogram(_) => panic!("{name} is a histogram"),
    }
}

#[tokio::test]
async fn every_fleet_counter_equals_the_stats_snapshot() {
    let Some(redis) = RedisServer::try_start("every_fleet_counter_equals_the_stats_snapshot")
    else {
        return;
    };
    let origin = TestServer::builder()
        .handler(|r| {
            Some(if r.method == Method::GET {
                Reply::status(404)
            } else {
                Reply::ok("written")
            })
        })
        .start()
        .await;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let replica = |name: &'static str| {
        let cache = NegativeCacheLayer::builder().build().unwrap();
        let observer = metrics::with_local_recorder(&recorder, || FleetMetrics::new(name));
        let fleet = Fleet::builder(redis.url())
            .prefix("fleet-metrics")
            .observer(Arc::new(observer))
            .start(&cache)
            .unwrap();
        let client = ServiceBuilder::new()
            .layer(cache)
            .service(support::client());
        (client, fleet)
    };
    let (a, fleet_a) = replica("a");
    let (_b, fleet_b) = replica("b");
    wait_until(Duration::from_secs(5), || {
        fleet_a.stats().connected && fleet_b.stats().connected
    })
    .await;

    // A learns three 404s and publishes them; B learns them.
    for i in 0..3 {
        let req = Request::get(origin.url(&format!("/records/{i}")))
            .body(Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(a.clone().oneshot(req).await.unwrap().status(), 404);
    }
    wait_until(Duration::from_secs(5), || fleet_b.stats().learned == 3).await;
    // A write at A forgets a key everywhere.
    let req = Request::put(origin.url("/records/0"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(
        a.clone().oneshot(req).await.unwrap().status(),
        StatusCode::OK
    );
    wait_until(Duration::from_secs(5), || fleet_b.stats().forgotten == 1).await;
    // Garbage on the channel: both replicas refuse it.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for garbage in [&b"hello"[..], b"\xff\xfe"] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("fleet-metrics:db0:events")
            .arg(garbage)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    wait_until(Duration::from_secs(5), || {
        fleet_a.stats().rejected.malformed == 2 && fleet_b.stats().rejected.malformed == 2
    })
    .await;

    let snapshot: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| {
            let key = k.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.name().to_owned(), labels, v)
        })
        .collect();
    let check = |name: &str, stats: FleetStats| {
        let v = |metric: &str, extra| value(&snapshot, metric, name, extra) as u64;
        assert_eq!(v(m::FLEET_PUBLISHED, None), stats.published, "{name}");
        assert_eq!(v(m::FLEET_PUBLISH_FAILURES, None), stats.publish_failures);
        assert_eq!(v(m::FLEET_RECEIVED, None), stats.received, "{name}");
        let applied = |o| v(m::FLEET_APPLIED, Some((m::LABEL_OUTCOME, o)));
        assert_eq!(applied("learned"), stats.learned, "{name}");
        assert_eq!(applied("forgotten"), stats.forgotten, "{name}");
        assert_eq!(applied("warmed"), stats.warmed, "{name}");
        let r = stats.rejected;
        let by_reason = [
            r.oversized,
            r.version,
            r.malformed,
            r.status,
            r.stale,
            r.replayed,
            r.superseded,
            r.unsigned,
            r.signature,
        ];
        for (reason, stat) in FleetRejection::ALL.iter().zip(by_reason) {
            let got = v(m::FLEET_REJECTED, Some((m::LABEL_REASON, reason.as_str())));
            assert_eq!(got, stat, "{name} {reason:?}");
        }
        assert_eq!(v(m::FLEET_CONNECTED, None), u64::from(stats.connected));
        assert_eq!(v(m::FLEET_RECONNECTS, None), stats.reconnects, "{name}");
        assert_eq!(v(m::FLEET_AUTH_FAILURES, None), stats.auth_failures);
    };
    let (sa, sb) = (fleet_a.stats(), fleet_b.stats());
    // Not 0 = 0: the traffic reached each counter compared here.
    assert!(
        sa.published >= 4 && sb.learned == 3 && sb.forgotten == 1,
        "{sa:?} {sb:?}"
    );
    assert!(sa.connected && sb.connected);
    check("a", sa);
    check("b", sb);
}
