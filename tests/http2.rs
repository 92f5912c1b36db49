//! Both layers over HTTP/2: a hyper-util client speaking h2c (prior knowledge) to a real hyper
//! HTTP/2 server on 127.0.0.1. A 404 reaches the origin once, a 503 is retried on the same
//! connection, a discarded body costs no connection (HTTP/2 resets the stream, not the
//! connection), and coalescing holds concurrent misses of one key to one origin request.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::{ServiceBuilder, ServiceExt};
use tower_negative_cache::retry::Jitter;
use tower_negative_cache::{NegativeCacheLayer, RetryInfo, StatusAwareRetryLayer};

/// An HTTP/2 origin: each path answers its scripted statuses in turn (then 200), each with a
/// body of `body_len` bytes, after `delay`; it counts connections and requests per path.
#[derive(Clone)]
struct Origin {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Origin {
    async fn start(script: &[(&str, &[u16])], body_len: usize, delay: Duration) -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let script: HashMap<String, Vec<u16>> = script
            .iter()
            .map(|(p, s)| (p.to_string(), s.to_vec()))
            .collect();
        let origin = Origin {
            addr: listener.local_addr().unwrap(),
            connections: Arc::default(),
            hits: Arc::default(),
        };
        let o = origin.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                o.connections.fetch_add(1, SeqCst);
                let (hits, script) = (o.hits.clone(), script.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let path = req.uri().path().to_owned();
                        let n = {
                            let mut hits = hits.lock().unwrap();
                            let n = hits.entry(path.clone()).or_insert(0);
                            *n += 1;
                            *n
                        };
                        let status = script
                            .get(&path)
                            .and_then(|s| s.get(n - 1).copied())
                            .unwrap_or(200);
                        async move {
                            assert_eq!(req.version(), Version::HTTP_2);
                            tokio::time::sleep(delay).await;
                            let mut res =
                                Response::new(Full::new(Bytes::from(vec![b'x'; body_len])));
                            *res.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(res)
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        origin
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn h2_client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

fn get(url: &str) -> Request<Empty<Bytes>> {
    Request::get(url).body(Empty::new()).unwrap()
}

fn retry() -> tower_negative_cache::retry::Builder {
    StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .jitter(Jitter::None)
        .no_budget()
}

#[tokio::test]
async fn a_503_is_retried_on_one_connection_and_a_404_reaches_the_origin_once() {
    let origin = Origin::start(
        &[("/flaky", &[503, 503]), ("/gone", &[404, 200])],
        100,
        Duration::ZERO,
    )
    .await;
    let layer = retry().build().unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(h2_client());

    let res = svc
        .clone()
        .oneshot(get(&origin.url("/flaky")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(RetryInfo::of(&res).unwrap().attempts, 3);
    let res = svc.oneshot(get(&origin.url("/gone"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    assert_eq!((origin.hits("/flaky"), origin.hits("/gone")), (3, 1));
    assert_eq!(
        origin.connections.load(SeqCst),
        1,
        "every stream on one connection"
    );
    let s = layer.stats();
    assert_eq!(
        (s.retries, s.missing, s.drained_bytes),
        (2, 1, 200),
        "{s:?}"
    );
}

#[tokio::test]
async fn an_undrained_discarded_body_resets_its_stream_not_the_connection() {
    // 200 KiB bodies, nothing drained: over HTTP/1 each would cost a connection.
    let origin = Origin::start(&[("/big", &[503, 503])], 200 * 1024, Duration::ZERO).await;
    let layer = retry().drain_limit(0).build().unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(h2_client());
    let res = svc.oneshot(get(&origin.url("/big"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(origin.hits("/big"), 3);
    assert_eq!(origin.connections.load(SeqCst), 1);
    assert_eq!(layer.stats().drained_bytes, 0);
}

#[tokio::test]
async fn both_layers_remember_a_404_and_coalesce_concurrent_misses() {
    let origin = Origin::start(
        &[("/missing", &[404, 404, 404]), ("/burst", &[404, 404])],
        10,
        Duration::from_millis(50),
    )
    .await;
    let cache = NegativeCacheLayer::builder()
        .coalesce(Duration::from_secs(5))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(cache.clone())
        .layer(retry().build().unwrap())
        .service(h2_client());

    // Remembered: the repeat is answered without a request.
    for _ in 0..2 {
        let res = svc
            .clone()
            .oneshot(get(&origin.url("/missing")))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(origin.hits("/missing"), 1);

    // Coalesced: 20 concurrent misses of one key, one origin request.
    let calls: Vec<_> = (0..20)
        .map(|_| tokio::spawn(svc.clone().oneshot(get(&origin.url("/burst")))))
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap().status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(origin.hits("/burst"), 1);
    assert_eq!(origin.connections.load(SeqCst), 1);
}
