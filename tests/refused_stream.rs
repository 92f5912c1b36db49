//! A request the HTTP/2 server never processed may be retried whatever its method (RFC 9113
//! §8.7; RFC 9110 §9.2.2): a POST refused with `REFUSED_STREAM` by a real hyper HTTP/2 server
//! is retried once and succeeds (and is sent once with `retry_unprocessed(false)`), a POST
//! above a GOAWAY's last stream id (an h2 server) too; a POST that fails with an ordinary
//! transient error (the connection dropped while the server had it) is not. Each client has
//! a `WitnessLayer` on it: the proof must be the request's own (tests/unprocessed_proof.rs).
//!
//! Making a real server refuse a stream: the hyper server allows one concurrent stream
//! (`max_concurrent_streams(1)`) and holds the first request open. The client would respect
//! that limit once it read the server's SETTINGS, so the client's connection withholds what the
//! server sends (a gate on its reads) until the client has written the second request's
//! HEADERS frame: the second stream goes out, and the server refuses it. No timing is involved.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tower::{Layer, ServiceExt};
use tower_negative_cache::classify::Outcome;
use tower_negative_cache::retry::{Jitter, RetryStats, WitnessLayer};
use tower_negative_cache::{RetryInfo, StatusAwareRetryLayer};

// ----- the client's gated connection --------------------------------------------------------

/// Opens when the client has written the HEADERS frame that opens stream `on_stream`.
struct Gate {
    on_stream: u32,
    open: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    fn new(on_stream: u32) -> Arc<Gate> {
        Arc::new(Gate {
            on_stream,
            open: AtomicBool::new(false),
            waker: Mutex::new(None),
        })
    }

    fn open(&self) {
        self.open.store(true, SeqCst);
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
    }
}

/// Reads the frame headers of what the client writes (RFC 9113 §4.1: 24 bytes of preface, then
/// frames of a 9-byte header and `length` bytes of payload), to see a HEADERS frame go out.
#[derive(Default)]
struct FrameScan {
    skip: usize,
    header: Vec<u8>,
    started: bool,
}

impl FrameScan {
    /// Feeds written bytes; returns the stream ids of HEADERS frames that completed.
    fn feed(&mut self, mut bytes: &[u8]) -> Vec<u32> {
        let mut opened = Vec::new();
        if !self.started {
            self.started = true;
            self.skip = 24;
        }
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                (self.skip, bytes) = (self.skip - n, &bytes[n..]);
                continue;
            }
            let n = (9 - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == 9 {
                let h = std::mem::take(&mut self.header);
                let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                if h[3] == 0x1 {
                    opened.push(stream);
                }
                self.skip = len;
            }
        }
        opened
    }
}

/// A client connection whose reads wait for its gate.
struct Gated {
    io: TokioIo<TcpStream>,
    gate: Option<Arc<Gate>>,
    scan: FrameScan,
}

impl Connection for Gated {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for Gated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(gate) = &self.gate {
            if !gate.open.load(SeqCst) {
                *gate.waker.lock().unwrap() = Some(cx.waker().clone());
                // Checked again: an opening between the load and the store is not missed.
                if !gate.open.load(SeqCst) {
                    return Poll::Pending;
                }
            }
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for Gated {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = std::task::ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        if let Some(gate) = &this.gate {
            if this.scan.feed(&buf[..n]).contains(&gate.on_stream) {
                gate.open();
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<Gated>> + Send>>;

/// An h2c client whose first connection is gated until it has sent stream `on_stream`'s
/// HEADERS; later connections are not gated.
fn gated_client(
    addr: SocketAddr,
    on_stream: u32,
) -> Client<impl hyper_util::client::legacy::connect::Connect + Clone, Full<Bytes>> {
    let first = Arc::new(Mutex::new(Some(Gate::new(on_stream))));
    let connector = tower::service_fn(move |_: Uri| -> Connecting {
        let gate = first.lock().unwrap().take();
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            Ok(Gated {
                io: TokioIo::new(tcp),
                gate,
                scan: FrameScan::default(),
            })
        })
    });
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector)
}

// ----- the server ---------------------------------------------------------------------------

/// What the origin saw: each request it processed, as (method, path, body).
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<(Method, String, Bytes)>>,
    release: Notify,
}

impl Seen {
    fn count(&self, path: &str) -> usize {
        let r = self.requests.lock().unwrap();
        r.iter().filter(|(_, p, _)| p == path).count()
    }
}

/// A hyper HTTP/2 server (h2c) allowing `max_streams` concurrent streams per connection.
/// `/hold` answers when released; `/crash` drops its connection; anything else answers 200
/// with its request body.
async fn start(max_streams: u32) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let (crash_tx, crash_rx) = oneshot::channel::<()>();
                let crash_tx = Arc::new(Mutex::new(Some(crash_tx)));
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (s, crash) = (s.clone(), crash_tx.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let path = parts.uri.path().to_owned();
                        s.requests
                            .lock()
                            .unwrap()
                            .push((parts.method, path.clone(), body.clone()));
                        match path.as_str() {
                            "/hold" => s.release.notified().await,
                            "/crash" => {
                                if let Some(tx) = crash.lock().unwrap().take() {
                                    let _ = tx.send(());
                                }
                                std::future::pending::<()>().await;
                            }
                            _ => {}
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(body)))
                    }
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(max_streams)
                    .serve_connection(TokioIo::new(tcp), svc);
                // `/crash` drops the connection (and its TCP socket) mid-request.
                tokio::select! {
                    _ = conn => {}
                    _ = crash_rx => {}
                }
            });
        }
    });
    (addr, seen)
}

// ----- the tests ----------------------------------------------------------------------------

fn retry(unprocessed: bool) -> StatusAwareRetryLayer {
    StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .jitter(Jitter::None)
        .no_budget()
        .retry_unprocessed(unprocessed)
        .build()
        .unwrap()
}

fn post(addr: SocketAddr, path: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// Waits until `done` holds, checking every millisecond; panics after 20 s (a bound for a
/// stuck test, not a measurement: nothing asserts how long it took).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..20_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never happened: {what}");
}

/// Sends a POST through `layer` to a hyper HTTP/2 server that refuses its stream
/// (`REFUSED_STREAM`), holding another stream open meanwhile; returns the POST's result and
/// the bodies of the POSTs the server processed.
async fn refused_post(
    layer: &StatusAwareRetryLayer,
) -> (
    Result<Response<Incoming>, hyper_util::client::legacy::Error>,
    Vec<Bytes>,
) {
    let (addr, seen) = start(1).await;
    // Stream 1 is the held request, stream 3 the POST: the gate opens once stream 3 is sent.
    let client = gated_client(addr, 3);
    let held = tokio::spawn(
        client.clone().oneshot(
            Request::get(format!("http://{addr}/hold"))
                .body(Full::default())
                .unwrap(),
        ),
    );
    until("the held request reaches the server", || {
        seen.count("/hold") == 1
    })
    .await;

    let before = layer.stats().answered();
    let order = tokio::spawn(
        layer
            .layer(WitnessLayer::new().layer(client))
            .oneshot(post(addr, "/orders", "order-1")),
    );
    // The server refuses the POST's stream; a retry waits for the held stream to end.
    until("the POST is answered or retried", || {
        order.is_finished() || layer.stats().retries > 0 || layer.stats().answered() > before
    })
    .await;
    seen.release.notify_one();
    let held = held.await.unwrap().expect("the held request is answered");
    held.into_body().collect().await.unwrap();

    let result = order.await.unwrap();
    let posts = seen
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, p, _)| m == Method::POST && p == "/orders")
        .map(|(_, _, b)| b.clone())
        .collect();
    (result, posts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_refused_before_processing_is_retried_once_and_succeeds() {
    let layer = retry(true);
    let (result, posts) = refused_post(&layer).await;
    let res = result.expect("the refused POST is retried and answered");
    assert_eq!(res.status(), StatusCode::OK);
    let info = RetryInfo::of(&res).unwrap();
    assert_eq!((info.outcome, info.attempts), (Outcome::Success, 2));
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"order-1", "the retry replays the whole body");
    // Processed once: the refused stream never reached the service.
    assert_eq!(posts, vec![Bytes::from_static(b"order-1")]);
    let s: RetryStats = layer.stats();
    assert_eq!((s.requests, s.retries, s.succeeded), (1, 1, 1), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retry_unprocessed_off_a_refused_post_is_sent_once() {
    let layer = retry(false);
    let (result, posts) = refused_post(&layer).await;
    let err = result.expect_err("the refusal is returned");
    assert!(format!("{err:?}").contains("REFUSED_STREAM"), "{err:?}");
    assert!(posts.is_empty());
    let s = layer.stats();
    assert_eq!((s.retries, s.not_retried), (0, 1), "{s:?}");
}

/// An h2 server (hyper's HTTP/2 implementation, used directly: hyper has no way to send a
/// GOAWAY below a stream it has received) whose first connection takes one request, then
/// sends GOAWAY with that request's stream as the last one and closes; later connections
/// answer each request with its body. Returns its address, what it processed, and a signal
/// that the first connection is closed.
async fn start_goaway() -> (SocketAddr, Arc<Seen>, Arc<Notify>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, closed) = (Arc::new(Seen::default()), Arc::new(Notify::new()));
    let (s, c) = (seen.clone(), closed.clone());
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (s, c, going_away) = (s.clone(), c.clone(), std::mem::take(&mut first));
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(tcp).await.unwrap();
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let (parts, mut body) = req.into_parts();
                    if going_away {
                        s.requests.lock().unwrap().push((
                            parts.method,
                            parts.uri.path().to_owned(),
                            Bytes::new(),
                        ));
                        // GOAWAY, last stream id = this request's: later streams unprocessed.
                        conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                        while conn.accept().await.is_some() {}
                        drop(respond);
                        c.notify_one();
                        // The socket stays open (half-closed) until the test ends: closed, it
                        // would answer the client's stream 3 with a reset, and a loaded machine
                        // could let the client's write see the reset (a broken pipe, which
                        // proves nothing unprocessed) before it reads the GOAWAY.
                        std::future::pending::<()>().await;
                        return;
                    }
                    let s = s.clone();
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            buf.extend_from_slice(&chunk);
                        }
                        let buf = Bytes::from(buf);
                        let path = parts.uri.path().to_owned();
                        s.requests
                            .lock()
                            .unwrap()
                            .push((parts.method, path, buf.clone()));
                        let mut send = respond.send_response(Response::new(()), false).unwrap();
                        let _ = send.send_data(buf, true);
                    });
                }
            });
        }
    });
    (addr, seen, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_above_a_goaways_last_stream_id_is_retried_once_and_succeeds() {
    let (addr, seen, closed) = start_goaway().await;
    // The server's GOAWAY reaches the client only after it has sent the POST on stream 3.
    let client = gated_client(addr, 3);
    let layer = retry(true);
    let closing = closed.notified();
    let first = tokio::spawn(
        client.clone().oneshot(
            Request::get(format!("http://{addr}/first"))
                .body(Full::default())
                .unwrap(),
        ),
    );
    closing.await;

    let res = layer
        .layer(WitnessLayer::new().layer(client))
        .oneshot(post(addr, "/orders", "order-3"))
        .await
        .expect("the POST above the GOAWAY is retried on a new connection");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(RetryInfo::of(&res).unwrap().attempts, 2);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"order-3");
    let posts: Vec<_> = seen
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, _, _)| m == Method::POST)
        .map(|(_, p, b)| (p.clone(), b.clone()))
        .collect();
    assert_eq!(
        posts,
        vec![("/orders".to_owned(), Bytes::from_static(b"order-3"))]
    );
    let _ = first.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_fails_with_an_ordinary_transient_error_is_not_retried() {
    let (addr, seen) = start(100).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let layer = retry(true);
    let svc = layer.layer(WitnessLayer::new().layer(client));

    // The server had the POST when its connection dropped: it may have been processed.
    let err = svc
        .clone()
        .oneshot(post(addr, "/crash", "order-2"))
        .await
        .expect_err("the connection dropped");
    assert_eq!(
        seen.count("/crash"),
        1,
        "a POST the server had is sent once"
    );
    let s = layer.stats();
    assert_eq!((s.retries, s.not_retried), (0, 1), "{s:?} ({err})");

    // The same error is transient: a GET is retried (and fails each time).
    let get = Request::get(format!("http://{addr}/crash"))
        .body(Full::default())
        .unwrap();
    svc.oneshot(get).await.expect_err("every attempt drops");
    assert_eq!(seen.count("/crash"), 1 + 3);
    assert_eq!(layer.stats().retries, 2);
}
