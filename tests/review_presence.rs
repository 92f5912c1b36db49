//! Review of the store's presence counts (c034260): a lookup whose bucket counts none answers
//! "absent" without quick_cache. Whatever the builder options and however the target is
//! spelled, a 404 the store holds must still be served — through a fresh service each time,
//! so that the store (not a service's memo) answers.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::cache::{Credentials, NegativeCacheHit};

type Req = Request<Full<Bytes>>;

fn origin(
    calls: Arc<AtomicUsize>,
) -> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
+ Clone
+ Send {
    tower::service_fn(move |_req: Req| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, SeqCst);
            let mut res = Response::new(Full::new(Bytes::from_static(b"gone")));
            *res.status_mut() = StatusCode::NOT_FOUND;
            Ok::<_, Infallible>(res)
        }
    })
}

fn get(uri: &str, headers: &[(&str, &str)]) -> Req {
    let mut r = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
    for (n, v) in headers {
        r.headers_mut().append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    r
}

/// Sends `r` through a fresh service of `layer` (no memo): whether the cache answered.
async fn hit(layer: &NegativeCacheLayer, calls: &Arc<AtomicUsize>, r: Req) -> bool {
    let mut svc = layer.layer(origin(calls.clone()));
    let res = svc.ready().await.unwrap().call(r).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let h = res.extensions().get::<NegativeCacheHit>().is_some();
    let _ = res.into_body().collect().await.unwrap();
    h
}

type Case = (&'static str, &'static [(&'static str, &'static str)]);

/// Primes with the first spelling, then expects a hit for every other one.
async fn primes_then_hits(layer: NegativeCacheLayer, name: &str, spellings: &[Case]) {
    let calls = Arc::new(AtomicUsize::new(0));
    let (first, fh) = spellings[0];
    assert!(
        !hit(&layer, &calls, get(first, fh)).await,
        "{name}: first is a miss"
    );
    for &(uri, h) in spellings {
        assert!(
            hit(&layer, &calls, get(uri, h)).await,
            "{name}: {uri} {h:?} after priming with {first} {fh:?}: the held 404 was said absent"
        );
    }
    assert_eq!(calls.load(SeqCst), 1, "{name}: one call upstream");
}

const SPELLINGS: &[Case] = &[
    ("http://H.test:80/a/%7e%41b?x=%2f", &[]),
    ("http://h.test/a/~Ab?x=%2F", &[]),
    ("http://h.test:80/a/%7E%41b?x=%2f", &[]),
];

fn builders() -> Vec<(&'static str, NegativeCacheLayer)> {
    let b = NegativeCacheLayer::builder;
    vec![
        ("default", NegativeCacheLayer::new()),
        ("capacity 1", b().capacity(1).build().unwrap()),
        ("capacity 3", b().capacity(3).build().unwrap()),
        (
            "adaptive",
            b().adaptive_ttl(Duration::from_secs(600)).build().unwrap(),
        ),
        (
            "coalesce",
            b().coalesce(Duration::from_millis(500)).build().unwrap(),
        ),
        (
            "fingerprint",
            b().credentials(Credentials::Fingerprint).build().unwrap(),
        ),
        (
            "origin scheme",
            b().origin_form_scheme(http::uri::Scheme::HTTP)
                .build()
                .unwrap(),
        ),
        ("partition", NegativeCacheLayer::new().partition("tenant-a")),
    ]
}

#[tokio::test]
async fn every_spelling_of_a_held_target_hits_under_every_option() {
    for (name, layer) in builders() {
        primes_then_hits(layer, name, SPELLINGS).await;
    }
}

#[tokio::test]
async fn credentials_fingerprint_hits_under_the_same_credentials_only() {
    let layer = NegativeCacheLayer::builder()
        .credentials(Credentials::Fingerprint)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let alice: &[(&str, &str)] = &[("authorization", "Bearer alice")];
    let bob: &[(&str, &str)] = &[("authorization", "Bearer bob")];
    // 300 credentials for one target: its bucket fills to its top (255) and sticks.
    for i in 0..300 {
        let a = format!("Bearer u{i}");
        assert!(
            !hit(
                &layer,
                &calls,
                get("http://h.test/x", &[("authorization", &a)])
            )
            .await
        );
    }
    assert!(!hit(&layer, &calls, get("http://h.test/x", alice)).await);
    assert!(hit(&layer, &calls, get("http://h.test/x", alice)).await);
    assert!(hit(&layer, &calls, get("http://H.test:80/x", alice)).await);
    assert!(!hit(&layer, &calls, get("http://h.test/x", bob)).await);
    assert!(hit(&layer, &calls, get("http://h.test/x", bob)).await);
    for i in 0..300 {
        let a = format!("Bearer u{i}");
        assert!(
            hit(
                &layer,
                &calls,
                get("http://h.test/x", &[("authorization", &a)])
            )
            .await
        );
    }
    // Forgotten under every credential: a write to the target.
    assert!(
        layer
            .handle()
            .invalidate_uri(&"http://h.test/x".parse().unwrap())
    );
    assert!(!hit(&layer, &calls, get("http://h.test/x", alice)).await);
    assert!(hit(&layer, &calls, get("http://h.test/x", alice)).await);
}

#[tokio::test]
async fn origin_form_with_host_shares_the_absolute_form_key() {
    let layer = NegativeCacheLayer::builder()
        .origin_form_scheme(http::uri::Scheme::HTTP)
        .build()
        .unwrap();
    primes_then_hits(
        layer,
        "origin-form",
        &[
            ("/p/%7eq", &[("host", "H.test")]),
            ("http://h.test/p/~q", &[]),
            ("/p/~q", &[("host", "h.test:80")]),
        ],
    )
    .await;
    // Without a declared scheme: scheme-relative, shared among origin-form spellings.
    primes_then_hits(
        NegativeCacheLayer::new(),
        "scheme-relative",
        &[
            ("/p/%7eq", &[("host", "H.test")]),
            ("/p/~q", &[("host", "h.test")]),
        ],
    )
    .await;
}

#[tokio::test]
async fn key_fn_keys_hit_and_peek() {
    let layer = NegativeCacheLayer::builder()
        .key_fn(|uri: &Uri| {
            uri.path()
                .strip_prefix("/records/")
                .map(|id| format!("record:{id}"))
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    primes_then_hits(
        layer.clone(),
        "key_fn",
        &[
            ("http://a.test/records/7?v=1", &[]),
            ("http://b.test/records/7", &[]),
            ("/records/%37", &[("host", "c.test")]),
        ],
    )
    .await;
    assert!(
        handle
            .peek(&"http://z.test/records/7".parse().unwrap())
            .is_some()
    );
    assert!(handle.invalidate("record:7"));
    assert!(
        handle
            .peek(&"http://z.test/records/7".parse().unwrap())
            .is_none()
    );
    // A partition of a key_fn layer.
    let part = layer.partition("p");
    primes_then_hits(
        part,
        "key_fn partition",
        &[("http://a.test/records/8", &[])],
    )
    .await;
}

/// Many targets through a small store (shared buckets, evictions), from many tasks at once on
/// a multi-threaded runtime: whatever the store still holds is served, and the handle agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_the_store_holds_is_served_under_concurrent_traffic() {
    for cap in [1u64, 7, 64, 1000] {
        let layer = NegativeCacheLayer::builder().capacity(cap).build().unwrap();
        let handle = layer.handle();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let (layer, calls, handle) = (layer.clone(), calls.clone(), handle.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..400u64 {
                    let k = (i * 7 + t * 13) % 300;
                    let uri = format!("http://h{}.test/k/{k}", k % 5);
                    let held = handle.peek(&uri.parse().unwrap()).is_some();
                    let h = hit(&layer, &calls, get(&uri, &[])).await;
                    // Held before the request: only an eviction (a small store) or an
                    // invalidation (keys ending in 3) in between makes it a miss.
                    if held && !h && cap >= 1000 && !uri.ends_with('3') {
                        panic!("cap {cap}: {uri} held but missed");
                    }
                    if i % 97 == 0 {
                        handle.invalidate_if(|k| k.ends_with('3'));
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Quiescent: every key the handle says is held is served.
        let mut held = 0;
        for k in 0..300u64 {
            let uri = format!("http://h{}.test/k/{k}", k % 5);
            if handle.peek(&uri.parse().unwrap()).is_some() {
                held += 1;
                assert!(
                    hit(&layer, &calls, get(&uri, &[])).await,
                    "cap {cap}: {uri}"
                );
            }
        }
        assert_eq!(held as u64, handle.stats().len, "cap {cap}");
    }
}
