//! Request bodies of the types real clients use: a bodiless `BoxBody` GET is replayed as empty,
//! and a streamed body forwarded by a proxy (hyper's `Incoming`, boxed) is captured as it is
//! sent and replayed when it fits the capture bound — and sent once, whole, when it does not.
//! Real hyper servers on 127.0.0.1 and the hyper-util client.

mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::retry::{Builder, Jitter, StatusAwareRetry};
use tower_negative_cache::{RetryInfo, StatusAwareRetryLayer};

use support::{Reply, TestServer};

type Boxed = BoxBody<Bytes, hyper::Error>;

fn fast() -> Builder {
    StatusAwareRetryLayer::builder()
        .backoff_base(std::time::Duration::from_millis(1))
        .jitter(Jitter::None)
        .no_budget()
}

fn attempts<B>(res: &Response<B>) -> u32 {
    RetryInfo::of(res).unwrap().attempts
}

#[tokio::test]
async fn a_bodiless_boxbody_get_answered_503_then_200_is_retried() {
    let server = TestServer::builder()
        .route("/r", [Reply::status(503), Reply::ok("here")])
        .start()
        .await;
    let layer = fast().build().unwrap();
    let client: Client<HttpConnector, BoxBody<Bytes, Infallible>> =
        Client::builder(TokioExecutor::new()).build_http();
    let svc = ServiceBuilder::new().layer(layer.clone()).service(client);
    let req = Request::get(server.url("/r"))
        .body(Empty::<Bytes>::new().boxed())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(attempts(&res), 2);
    assert_eq!(server.hits("/r"), 2);
    let s = layer.stats();
    assert_eq!(
        (s.not_replayable, s.retries, s.succeeded),
        (0, 1, 1),
        "{s:?}"
    );
}

/// A body of `chunks`, each sent as its own frame, of unknown size: a stream.
struct Chunks(Vec<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.0.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(self.0.remove(0)))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

type Forwarder = StatusAwareRetry<Client<HttpConnector, Boxed>>;

/// A proxy: a hyper server whose handler forwards `Request<Incoming>` — boxed, the one change
/// a proxy makes so its body can be replayed — to `origin` through the retry layer.
async fn proxy(origin: std::net::SocketAddr, retry: Forwarder) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let retry = retry.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let mut retry = retry.clone();
                    async move {
                        let (mut parts, body) = req.into_parts();
                        let pq = parts.uri.path_and_query().unwrap().as_str();
                        parts.uri = format!("http://{origin}{pq}").parse().unwrap();
                        let req = Request::from_parts(parts, body.boxed());
                        let res = retry.ready().await.unwrap().call(req).await.unwrap();
                        let n = attempts(&res);
                        let (mut parts, body) = res.into_parts();
                        parts.headers.insert("x-attempts", n.into());
                        Ok::<_, Infallible>(Response::from_parts(parts, body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// PUTs `body` (streamed, in 1 KiB chunks) through a proxy to an origin answering 503 then 200;
/// returns the status and attempts the caller saw, what the origin received, and the stats.
async fn forward(
    len: usize,
    capture_limit: usize,
) -> (
    u16,
    u32,
    Vec<Bytes>,
    tower_negative_cache::retry::RetryStats,
) {
    let origin = TestServer::builder()
        .route("/up", [Reply::status(503), Reply::ok("stored")])
        .start()
        .await;
    let layer = fast().capture_limit(capture_limit).build().unwrap();
    let client: Client<HttpConnector, Boxed> = Client::builder(TokioExecutor::new()).build_http();
    let front = proxy(origin.addr, layer.layer(client)).await;

    let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let chunks = payload.chunks(1024).map(Bytes::copy_from_slice).collect();
    let caller: Client<HttpConnector, Chunks> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::builder()
        .method(Method::PUT)
        .uri(format!("http://{front}/up"))
        .body(Chunks(chunks))
        .unwrap();
    let res = caller.request(req).await.unwrap();
    let status = res.status().as_u16();
    let n: u32 = res.headers()["x-attempts"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let seen: Vec<Bytes> = origin
        .requests_for("/up")
        .into_iter()
        .map(|r| r.body)
        .collect();
    for body in &seen {
        assert_eq!(body.len(), len, "the origin got the whole body each time");
        assert_eq!(&body[..], &payload[..], "byte for byte");
    }
    (status, n, seen, layer.stats())
}

#[tokio::test]
async fn a_small_streamed_body_forwarded_through_the_layer_is_retried_from_its_capture() {
    let (status, n, seen, s) = forward(10 * 1024, 64 * 1024).await;
    assert_eq!((status, n, seen.len()), (200, 2, 2));
    assert_eq!((s.not_replayable, s.retries), (0, 1), "{s:?}");
}

#[tokio::test]
async fn a_streamed_body_larger_than_the_capture_is_sent_once_whole_and_counted() {
    // 100 KiB in chunks of unknown total size: the capture starts and is outgrown midway.
    let (status, n, seen, s) = forward(100 * 1024, 64 * 1024).await;
    assert_eq!((status, n, seen.len()), (503, 1, 1));
    assert_eq!(
        (s.not_replayable, s.not_retried, s.retries),
        (1, 1, 0),
        "{s:?}"
    );
}

#[tokio::test]
async fn capture_limit_zero_turns_capturing_off() {
    let (status, n, seen, s) = forward(1024, 0).await;
    assert_eq!((status, n, seen.len()), (503, 1, 1));
    assert_eq!((s.not_replayable, s.not_retried), (1, 1), "{s:?}");
}

/// Issue 18: a forwarding proxy handing its `Request<Incoming>` to a `Client<_, Incoming>` under
/// the retry layer used to compile and never retry (`Incoming` was "sent once"). It no longer
/// compiles (`ReplayBody`'s compile-fail doc test shows the message naming the fix); with the
/// fix — the body boxed, `req.map(BodyExt::boxed)` — the proxy retries a GET, replays a small
/// POST carrying an `Idempotency-Key`, and sends a 4 MiB PUT once, whole.
#[tokio::test]
async fn the_obvious_proxy_with_its_body_boxed_retries_what_it_may() {
    let origin = TestServer::builder()
        .route("/get", [Reply::status(503), Reply::ok("got")])
        .route("/post", [Reply::status(503), Reply::ok("posted")])
        .route("/put", [Reply::status(503), Reply::ok("put")])
        .start()
        .await;
    // The default capture bound (64 KiB): the 4 MiB upload is too large to copy.
    let layer = fast().build().unwrap();
    let client: Client<HttpConnector, Boxed> = Client::builder(TokioExecutor::new()).build_http();
    let front = proxy(origin.addr, layer.layer(client)).await;
    let caller = support::client_full();
    let send = |method: Method, path: &str, body: Bytes, key: Option<&str>| {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{front}{path}"));
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        caller.request(req.body(Full::new(body)).unwrap())
    };

    let res = send(Method::GET, "/get", Bytes::new(), None).await.unwrap();
    assert_eq!(
        (res.status(), res.headers()["x-attempts"].to_str().unwrap()),
        (StatusCode::OK, "2")
    );

    let order = Bytes::from_static(b"{\"sku\":42}");
    let res = send(Method::POST, "/post", order.clone(), Some("order-1"))
        .await
        .unwrap();
    assert_eq!(
        (res.status(), res.headers()["x-attempts"].to_str().unwrap()),
        (StatusCode::OK, "2")
    );
    let posted: Vec<Bytes> = origin
        .requests_for("/post")
        .into_iter()
        .map(|r| r.body)
        .collect();
    assert_eq!(
        posted,
        [order.clone(), order],
        "the POST replayed byte for byte"
    );

    let upload: Bytes = (0..4 << 20)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let res = send(Method::PUT, "/put", upload.clone(), None)
        .await
        .unwrap();
    assert_eq!(
        (res.status(), res.headers()["x-attempts"].to_str().unwrap()),
        (StatusCode::SERVICE_UNAVAILABLE, "1"),
        "a body larger than the capture bound is sent once"
    );
    let put = origin.requests_for("/put");
    assert_eq!(put.len(), 1);
    assert!(put[0].body == upload, "the origin got the whole upload");

    assert_eq!(origin.hits("/get"), 2);
    let s = layer.stats();
    assert_eq!((s.retries, s.not_replayable), (2, 1), "{s:?}");
}

/// One client type carrying both a buffered body and a streamed one: `Either`.
#[tokio::test]
async fn either_bodies_are_replayed_when_their_side_is() {
    let server = TestServer::builder()
        .route("/a", [Reply::status(503), Reply::ok("a")])
        .route("/b", [Reply::status(503), Reply::ok("b")])
        .start()
        .await;
    type Mixed = Either<Full<Bytes>, BoxBody<Bytes, Infallible>>;
    let layer = fast().build().unwrap();
    let client: Client<HttpConnector, Mixed> = Client::builder(TokioExecutor::new()).build_http();
    let svc = ServiceBuilder::new().layer(layer.clone()).service(client);
    let full = Either::Left(Full::new(Bytes::from_static(b"buffered")));
    let streamed = Either::Right(Chunks(vec![Bytes::from_static(b"streamed")]).boxed());
    for (path, body, expect) in [("/a", full, "buffered"), ("/b", streamed, "streamed")] {
        let req = Request::put(server.url(path)).body(body).unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(
            (res.status(), attempts(&res)),
            (StatusCode::OK, 2),
            "{path}"
        );
        for r in server.requests_for(path) {
            assert_eq!(r.body, expect, "{path}");
        }
    }
    assert_eq!(layer.stats().not_replayable, 0);
}

/// axum's request body, as an axum proxy handler would forward it: bodiless is replayed as
/// empty, a stream is captured; trailers come back with the replay.
#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_bodies_are_replayed() {
    let server = TestServer::builder()
        .route("/get", [Reply::status(503), Reply::ok("x")])
        .route("/put", [Reply::status(503), Reply::ok("y")])
        .start()
        .await;
    let layer = fast().build().unwrap();
    let client: Client<HttpConnector, axum::body::Body> =
        Client::builder(TokioExecutor::new()).build_http();
    let svc = ServiceBuilder::new().layer(layer.clone()).service(client);
    let get = Request::get(server.url("/get"))
        .body(axum::body::Body::empty())
        .unwrap();
    let res = svc.clone().oneshot(get).await.unwrap();
    assert_eq!((res.status(), attempts(&res)), (StatusCode::OK, 2));
    let body = axum::body::Body::new(Chunks(vec![Bytes::from_static(b"ab"), "cd".into()]));
    let put = Request::put(server.url("/put")).body(body).unwrap();
    let res = svc.oneshot(put).await.unwrap();
    assert_eq!((res.status(), attempts(&res)), (StatusCode::OK, 2));
    for r in server.requests_for("/put") {
        assert_eq!(r.body, "abcd");
    }
    assert_eq!(layer.stats().not_replayable, 0);
}
