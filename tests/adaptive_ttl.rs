//! The adaptive negative TTL (`Builder::adaptive_ttl`), driven through the real layer on paused
//! time: an origin whose answer per path the test sets, counting its calls.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::cache::{NegativeCacheHit, TtlSource};

type Req = Request<Empty<Bytes>>;

const SEC: Duration = Duration::from_secs(1);

/// Per path: the status, and a `Cache-Control` if any.
type Answers = HashMap<String, (u16, Option<&'static str>)>;

#[derive(Clone, Default)]
struct Origin {
    answers: Arc<Mutex<Answers>>,
    calls: Arc<Mutex<u64>>,
}

impl Origin {
    fn set(&self, path: &str, status: u16) {
        self.answers
            .lock()
            .unwrap()
            .insert(path.into(), (status, None));
    }
    fn set_cc(&self, path: &str, status: u16, cc: &'static str) {
        self.answers
            .lock()
            .unwrap()
            .insert(path.into(), (status, Some(cc)));
    }
    fn calls(&self) -> u64 {
        *self.calls.lock().unwrap()
    }
    fn service(
        &self,
    ) -> impl Service<Req, Response = Response<Empty<Bytes>>, Error = Infallible> + Clone {
        let o = self.clone();
        tower::service_fn(move |req: Req| {
            *o.calls.lock().unwrap() += 1;
            let (status, cc) = if req.method() == Method::GET {
                o.answers
                    .lock()
                    .unwrap()
                    .get(req.uri().path())
                    .copied()
                    .unwrap_or((404, None))
            } else {
                (204, None)
            };
            let mut b = Response::builder().status(status);
            if let Some(cc) = cc {
                b = b.header("cache-control", cc);
            }
            std::future::ready(Ok::<_, Infallible>(b.body(Empty::new()).unwrap()))
        })
    }
}

/// A GET of `path`; the hit's extension when the cache answered.
async fn get<S>(svc: &S, path: &str) -> (StatusCode, Option<NegativeCacheHit>)
where
    S: Service<Req, Response = Response<tower_negative_cache::cache::ResponseBody<Empty<Bytes>>>>
        + Clone,
    S::Error: std::fmt::Debug,
{
    let req = Request::get(format!("http://origin.test{path}"))
        .body(Empty::new())
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    (
        res.status(),
        res.extensions().get::<NegativeCacheHit>().copied(),
    )
}

fn layer(ceiling: Duration) -> NegativeCacheLayer {
    NegativeCacheLayer::builder()
        .ttl(60 * SEC)
        .adaptive_ttl(ceiling)
        .build()
        .unwrap()
}

/// The lifetime of the entry a miss just stored, and why.
fn stored(layer: &NegativeCacheLayer, path: &str) -> (Duration, TtlSource) {
    let hit = layer
        .handle()
        .peek(&format!("http://origin.test{path}").parse().unwrap())
        .expect("an entry");
    (hit.ttl, hit.ttl_source)
}

/// Waits out the entry, then asks again: the origin confirms (one call).
async fn expire_and_confirm<S>(svc: &S, layer: &NegativeCacheLayer, origin: &Origin, path: &str)
where
    S: Service<Req, Response = Response<tower_negative_cache::cache::ResponseBody<Empty<Bytes>>>>
        + Clone,
    S::Error: std::fmt::Debug,
{
    let (ttl, _) = stored(layer, path);
    let before = origin.calls();
    // Just before the end: still a hit.
    tokio::time::advance(ttl - SEC).await;
    let (_, hit) = get(svc, path).await;
    assert!(
        hit.is_some(),
        "{path}: not remembered for its whole {ttl:?}"
    );
    assert_eq!(origin.calls(), before);
    tokio::time::advance(2 * SEC).await;
    let (status, hit) = get(svc, path).await;
    assert!(hit.is_none());
    assert_eq!(origin.calls(), before + 1, "{status}");
}

#[tokio::test(start_paused = true)]
async fn a_confirmed_missing_key_doubles_its_lifetime_up_to_the_ceiling() {
    let origin = Origin::default();
    let layer = layer(600 * SEC);
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(origin.service());
    get(&svc, "/gone-for-good").await;
    assert_eq!(
        stored(&layer, "/gone-for-good"),
        (60 * SEC, TtlSource::Base)
    );
    let mut seen = vec![];
    for _ in 0..6 {
        expire_and_confirm(&svc, &layer, &origin, "/gone-for-good").await;
        seen.push(stored(&layer, "/gone-for-good").0.as_secs());
    }
    // 120, 240, 480, then the ceiling.
    assert_eq!(seen, [120, 240, 480, 600, 600, 600]);
    assert_eq!(
        stored(&layer, "/gone-for-good").1,
        TtlSource::Learned { confirmed: 6 }
    );
    // The hit says the same.
    let (_, hit) = get(&svc, "/gone-for-good").await;
    let hit = hit.unwrap();
    assert_eq!(
        (hit.ttl, hit.ttl_source),
        (600 * SEC, TtlSource::Learned { confirmed: 6 })
    );
}

#[tokio::test(start_paused = true)]
async fn without_the_setting_every_lifetime_is_the_base() {
    let origin = Origin::default();
    let layer = NegativeCacheLayer::builder().ttl(60 * SEC).build().unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(origin.service());
    get(&svc, "/k").await;
    for _ in 0..4 {
        expire_and_confirm(&svc, &layer, &origin, "/k").await;
        assert_eq!(stored(&layer, "/k"), (60 * SEC, TtlSource::Base));
    }
}

#[tokio::test(start_paused = true)]
async fn explicit_freshness_wins_and_max_ttl_bounds() {
    let origin = Origin::default();
    origin.set_cc("/explicit", 404, "max-age=30");
    let layer = NegativeCacheLayer::builder()
        .ttl(60 * SEC)
        .max_ttl(200 * SEC)
        .adaptive_ttl(200 * SEC)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(origin.service());
    get(&svc, "/explicit").await;
    for _ in 0..3 {
        expire_and_confirm(&svc, &layer, &origin, "/explicit").await;
        assert_eq!(stored(&layer, "/explicit"), (30 * SEC, TtlSource::Origin));
    }
    get(&svc, "/learned").await;
    for _ in 0..4 {
        expire_and_confirm(&svc, &layer, &origin, "/learned").await;
        assert!(stored(&layer, "/learned").0 <= 200 * SEC);
    }
    assert_eq!(stored(&layer, "/learned").0, 200 * SEC);
}

#[tokio::test(start_paused = true)]
async fn a_2xx_a_write_an_invalidation_or_another_status_start_again_and_a_flap_stays_at_the_base()
{
    let origin = Origin::default();
    let layer = layer(3600 * SEC);
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(origin.service());
    let grown = |path: &'static str| {
        let (svc, layer, origin) = (svc.clone(), layer.clone(), origin.clone());
        async move {
            origin.set(path, 404);
            get(&svc, path).await;
            expire_and_confirm(&svc, &layer, &origin, path).await;
            expire_and_confirm(&svc, &layer, &origin, path).await;
            assert_eq!(stored(&layer, path).0, 240 * SEC, "{path}");
        }
    };

    // Another status: 404 -> 410 starts from the base.
    grown("/status").await;
    origin.set("/status", 410);
    expire_and_confirm(&svc, &layer, &origin, "/status").await;
    assert_eq!(stored(&layer, "/status"), (60 * SEC, TtlSource::Base));

    // A write through the cache.
    grown("/written").await;
    let put = Request::builder()
        .method(Method::PUT)
        .uri("http://origin.test/written")
        .body(Empty::new())
        .unwrap();
    svc.clone().oneshot(put).await.unwrap();
    get(&svc, "/written").await;
    assert_eq!(stored(&layer, "/written"), (60 * SEC, TtlSource::Base));

    // An invalidation.
    grown("/invalidated").await;
    assert!(
        layer
            .handle()
            .invalidate_uri(&"http://origin.test/invalidated".parse().unwrap())
    );
    get(&svc, "/invalidated").await;
    assert_eq!(stored(&layer, "/invalidated"), (60 * SEC, TtlSource::Base));

    // Present, then Missing again: it flaps, and stays at the base from then on.
    grown("/flaps").await;
    tokio::time::advance(3600 * SEC).await;
    origin.set("/flaps", 200);
    assert_eq!(get(&svc, "/flaps").await.0, StatusCode::OK);
    origin.set("/flaps", 404);
    get(&svc, "/flaps").await;
    assert_eq!(stored(&layer, "/flaps"), (60 * SEC, TtlSource::Base));
    for _ in 0..3 {
        expire_and_confirm(&svc, &layer, &origin, "/flaps").await;
        assert_eq!(stored(&layer, "/flaps"), (60 * SEC, TtlSource::Base));
    }
}

#[test]
fn the_ceiling_is_checked_and_the_history_counts_in_max_bytes() {
    let e = NegativeCacheLayer::builder()
        .ttl(60 * SEC)
        .adaptive_ttl(30 * SEC)
        .build()
        .unwrap_err();
    assert_eq!(e.setting(), "adaptive_ttl");
    let e = NegativeCacheLayer::builder()
        .max_ttl(3600 * SEC)
        .adaptive_ttl(7200 * SEC)
        .build()
        .unwrap_err();
    assert_eq!(e.setting(), "adaptive_ttl");
    // 1,000 entries: 8,000 bytes of history within the 400,000 bytes.
    let on = NegativeCacheLayer::builder()
        .capacity(1000)
        .adaptive_ttl(3600 * SEC)
        .build()
        .unwrap();
    let off = NegativeCacheLayer::builder()
        .capacity(1000)
        .build()
        .unwrap();
    let (on, off) = (on.handle().stats(), off.handle().stats());
    assert_eq!(on.max_bytes, off.max_bytes);
    assert_eq!(on.memory_bytes, off.memory_bytes + 8_000);
    let e = NegativeCacheLayer::builder()
        .capacity(1000)
        .max_bytes(5000)
        .adaptive_ttl(3600 * SEC)
        .build()
        .unwrap_err();
    assert_eq!(e.setting(), "max_bytes");
}
