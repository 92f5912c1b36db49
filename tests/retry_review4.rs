//! Issue 22, items 2 and 3: a chunked upload with trailers over HTTP/1 is replayed, its
//! trailers count against `capture_limit`, and a drain stops at `drain_limit` between frames.
//! Each against a real hyper HTTP/1 server on 127.0.0.1.

mod support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};
use tower_negative_cache::retry::Jitter;
use tower_negative_cache::{RetryInfo, StatusAwareRetryLayer};

type Boxed = BoxBody<Bytes, Infallible>;

/// What the upload server saw of one request: its body and its trailers.
type Seen = Arc<Mutex<Vec<(Bytes, Option<HeaderMap>)>>>;

/// An HTTP/1 server that reads each request body to its end (trailers included), records it,
/// and answers with the next status of `statuses` (200 once they run out).
async fn upload_server(statuses: Vec<u16>) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let script = Arc::new(Mutex::new(VecDeque::from(statuses)));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (s, script) = (s.clone(), script.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (s, script) = (s.clone(), script.clone());
                    async move {
                        let all = req.into_body().collect().await.unwrap();
                        let trailers = all.trailers().cloned();
                        s.lock().unwrap().push((all.to_bytes(), trailers));
                        let status = script.lock().unwrap().pop_front().unwrap_or(200);
                        let mut res = Response::new(Full::new(Bytes::from_static(b"ok")));
                        *res.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A streamed body of the given frames whose length is not known in advance (a forwarded
/// upload): it says it has ended only by returning `None`.
struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

fn trailers(value: &str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("x-checksum", HeaderValue::from_str(value).unwrap());
    t
}

/// A chunked PUT (no `Content-Length`) of `data` then `trailers`; hyper's HTTP/1 client sends
/// trailers only when the `Trailer` header names them.
fn chunked_put(addr: SocketAddr, data: &'static [u8], trailers: HeaderMap) -> Request<Boxed> {
    let frames = VecDeque::from([
        Frame::data(Bytes::from_static(data)),
        Frame::trailers(trailers),
    ]);
    Request::put(format!("http://{addr}/upload"))
        .header(http::header::TRAILER, "x-checksum")
        .body(Frames(frames).boxed())
        .unwrap()
}

fn layer(capture_limit: usize) -> StatusAwareRetryLayer {
    StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .jitter(Jitter::None)
        .no_budget()
        .capture_limit(capture_limit)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_chunked_upload_with_trailers_over_http1_is_replayed_whole() {
    let (addr, seen) = upload_server(vec![503]).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Boxed>();
    let layer = layer(64 * 1024);
    let req = chunked_put(addr, b"abc", trailers("sum-1"));
    let res = layer.layer(client).oneshot(req).await.unwrap();
    let stats = layer.stats();
    // hyper writes the trailers frame, then drops the body without polling its end: the
    // trailers are the stream's last frame, so the capture is complete.
    assert_eq!(res.status(), StatusCode::OK, "{stats:?}");
    assert_eq!(res.extensions().get::<RetryInfo>().unwrap().attempts, 2);
    assert_eq!((stats.retries, stats.not_replayable), (1, 0), "{stats:?}");
    let seen = seen.lock().unwrap().clone();
    let expected = (Bytes::from_static(b"abc"), Some(trailers("sum-1")));
    assert_eq!(
        seen,
        vec![expected.clone(), expected],
        "each attempt sent the whole body"
    );
}

#[tokio::test]
async fn trailers_count_against_the_capture_limit() {
    let (addr, seen) = upload_server(vec![503]).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Boxed>();
    // 3 bytes of data fit 64 bytes; the trailer field (a 200-byte value) does not.
    let layer = layer(64);
    let big = "x".repeat(200);
    let req = chunked_put(addr, b"abc", trailers(&big));
    let res = layer.layer(client).oneshot(req).await.unwrap();
    let stats = layer.stats();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{stats:?}");
    assert_eq!((stats.retries, stats.not_replayable), (0, 1), "{stats:?}");
    // Sent once, whole.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(Bytes::from_static(b"abc"), Some(trailers(&big)))]
    );

    // The same upload within the limit is replayed: it was the trailers that did not fit.
    let (addr, _) = upload_server(vec![503]).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Boxed>();
    let layer = self::layer(64 * 1024);
    let res = layer
        .layer(client)
        .oneshot(chunked_put(addr, b"abc", trailers(&big)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{:?}", layer.stats());
}

/// An HTTP/1 server answering 503 with a chunked body, a chunk of `first` bytes then one of
/// `second`; then 200.
async fn chunked_503(first: usize, second: usize) -> (SocketAddr, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(Mutex::new(0usize));
    let c = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let c = c.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let c = c.clone();
                    async move {
                        let n = {
                            let mut n = c.lock().unwrap();
                            *n += 1;
                            *n
                        };
                        // No length: chunked, one chunk per frame.
                        let frames = if n == 1 {
                            VecDeque::from([
                                Frame::data(Bytes::from(vec![b'a'; first])),
                                Frame::data(Bytes::from(vec![b'b'; second])),
                            ])
                        } else {
                            VecDeque::from([Frame::data(Bytes::from_static(b"ok"))])
                        };
                        let body = Frames(frames);
                        let mut res = Response::new(body);
                        if n == 1 {
                            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, calls)
}

#[tokio::test]
async fn a_drain_stops_at_drain_limit_between_frames() {
    // The first chunk is exactly the drain limit: the drain must not read another frame, which
    // would cross it (before: it read on and counted the second chunk too).
    let limit = 16;
    let (addr, calls) = chunked_503(limit, 256 * 1024).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let layer = StatusAwareRetryLayer::builder()
        // A long wait and drain timeout: the drain ends by the limit, never by time.
        .backoff_base(Duration::from_millis(200))
        .jitter(Jitter::None)
        .drain_timeout(Duration::from_secs(5))
        .drain_limit(limit)
        .no_budget()
        .build()
        .unwrap();
    let req = Request::get(format!("http://{addr}/"))
        .body(Full::default())
        .unwrap();
    let res = layer.layer(client).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(*calls.lock().unwrap(), 2);
    let stats = layer.stats();
    assert_eq!(stats.drained_bytes, limit as u64, "{stats:?}");
}
