//! Faults: a raw-TCP origin that misbehaves on purpose, driven through a hyper-util client with
//! a per-attempt timeout under the retry layer and an overall deadline.
//!
//! Whatever the origin does, the caller gets an answer or a typed error within the deadline
//! plus one attempt's timeout, attempts stay within `1 + max_retries`, and nothing panics.
//!
//! The sockets are real; the clock is tokio's, paused: it moves only when every task waits, so
//! timeouts, waits and drains are measured exactly, however busy the machine is.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::timeout::TimeoutLayer;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::retry::{Jitter, RetryStats};
use tower_negative_cache::{RetryInfo, StatusAwareRetryLayer};

const MAX_RETRIES: u32 = 2;
const PER_ATTEMPT: Duration = Duration::from_millis(300);
const DEADLINE: Duration = Duration::from_secs(2);
/// What the caller may wait beyond the deadline: one attempt's timeout (the clock is paused,
/// so there is no scheduling slack to allow for).
const MARGIN: Duration = PER_ATTEMPT;

/// How the origin treats each connection.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Read the request, then reset the connection.
    ResetAfterRequest,
    /// Send half a status line and headers, then reset.
    ResetMidHeaders,
    /// Send a 200 head promising 1,000 bytes, 100 of them, then reset.
    ResetMidBody,
    /// Send a 503 head promising 1,000 bytes, then nothing, keeping the connection open.
    HeadersThenHang,
    /// Read the request and never answer.
    Silent,
    /// Answer with a status line that is not HTTP.
    MalformedStatus,
    /// Answer 200 with `Connection: keep-alive`, then close the connection.
    CloseAfterAnswer,
}

struct Origin {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn origin(fault: Fault) -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, SeqCst);
            if !read_head(&mut stream).await {
                continue;
            }
            match fault {
                Fault::ResetAfterRequest => reset(stream),
                Fault::ResetMidHeaders => {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Le").await;
                    reset(stream);
                }
                Fault::ResetMidBody => {
                    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n";
                    let _ = stream.write_all(head).await;
                    let _ = stream.write_all(&[b'x'; 100]).await;
                    let _ = stream.flush().await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    reset(stream);
                }
                Fault::HeadersThenHang => {
                    let head = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 1000\r\n\r\n";
                    let _ = stream.write_all(head).await;
                    held.push(stream);
                }
                Fault::Silent => held.push(stream),
                Fault::MalformedStatus => {
                    let _ = stream.write_all(b"HTTX/1.1 abc nonsense\r\n\r\n").await;
                    held.push(stream);
                }
                Fault::CloseAfterAnswer => {
                    let answer =
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok";
                    let _ = stream.write_all(answer).await;
                    let _ = stream.shutdown().await;
                }
            }
        }
    });
    Origin {
        addr,
        connections,
        task,
    }
}

/// Reads up to the end of a request head; false if the peer went away first.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

#[allow(deprecated)] // SO_LINGER 0 is the point: an immediate RST, no blocking close.
fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

type Outcome = (
    Result<http::Response<hyper::body::Incoming>, BoxError>,
    RetryStats,
    Duration,
);

/// One GET through retry(deadline) -> timeout(per attempt) -> hyper-util client.
async fn get(addr: std::net::SocketAddr) -> Outcome {
    let retry = StatusAwareRetryLayer::builder()
        .max_retries(MAX_RETRIES)
        .backoff_base(Duration::from_millis(20))
        .jitter(Jitter::None)
        .deadline(DEADLINE)
        .drain_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    get_with(addr, "/r/1", &retry).await
}

/// One GET for `path` through `retry` -> timeout(per attempt) -> hyper-util client.
async fn get_with(
    addr: std::net::SocketAddr,
    path: &str,
    retry: &StatusAwareRetryLayer,
) -> Outcome {
    let mut svc = ServiceBuilder::new()
        .layer(retry.clone())
        .layer(TimeoutLayer::new(PER_ATTEMPT))
        .map_err(BoxError::from)
        .service(support::client());
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let t = Instant::now();
    let res = svc.ready().await.unwrap().call(req).await;
    (res, retry.stats(), t.elapsed())
}

fn within_bounds(stats: &RetryStats, elapsed: Duration) {
    assert!(stats.attempts <= u64::from(1 + MAX_RETRIES), "{stats:?}");
    assert!(elapsed <= DEADLINE + MARGIN, "took {elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn refused_connections_end_in_a_connect_error_after_every_attempt() {
    let (res, stats, elapsed) = get(support::refused_addr()).await;
    let err = res.unwrap_err();
    let e = err
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .expect("hyper-util error");
    assert!(e.is_connect(), "{e:?}");
    assert_eq!(stats.attempts, u64::from(1 + MAX_RETRIES));
    within_bounds(&stats, elapsed);
}

#[tokio::test(start_paused = true)]
async fn a_reset_after_the_request_is_retried_then_reported() {
    let o = origin(Fault::ResetAfterRequest).await;
    let (res, stats, elapsed) = get(o.addr).await;
    assert!(res.is_err(), "a reset can't become an answer");
    assert_eq!(stats.attempts, u64::from(1 + MAX_RETRIES), "{stats:?}");
    assert_eq!(o.connections.load(SeqCst), 3);
    within_bounds(&stats, elapsed);
}

#[tokio::test(start_paused = true)]
async fn a_reset_mid_headers_is_retried_then_reported() {
    let o = origin(Fault::ResetMidHeaders).await;
    let (res, stats, elapsed) = get(o.addr).await;
    assert!(res.is_err());
    assert_eq!(stats.attempts, u64::from(1 + MAX_RETRIES), "{stats:?}");
    within_bounds(&stats, elapsed);
}

#[tokio::test(start_paused = true)]
async fn a_reset_mid_body_of_a_returned_answer_is_a_body_error_not_a_retry() {
    let o = origin(Fault::ResetMidBody).await;
    let (res, stats, elapsed) = get(o.addr).await;
    let res = res.expect("the head arrived whole");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(RetryInfo::of(&res).unwrap().attempts, 1);
    let body = res.into_body().collect().await;
    assert!(body.is_err(), "the reset surfaces while reading the body");
    assert_eq!(stats.attempts, 1, "{stats:?}");
    assert_eq!(o.connections.load(SeqCst), 1);
    within_bounds(&stats, elapsed);
}

#[tokio::test(start_paused = true)]
async fn a_head_whose_body_never_comes_is_released_within_the_drain_bound() {
    let o = origin(Fault::HeadersThenHang).await;
    let (res, stats, elapsed) = get(o.addr).await;
    // Three 503 heads; each discarded body is given up after the drain timeout, not awaited.
    let res = res.expect("the last 503 is returned");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(stats.attempts, u64::from(1 + MAX_RETRIES), "{stats:?}");
    assert_eq!(stats.gave_up, 1, "{stats:?}");
    // Two drains of 100 ms and two short waits: far below three attempt timeouts.
    assert!(elapsed < Duration::from_millis(900), "took {elapsed:?}");
    within_bounds(&stats, elapsed);
}

#[tokio::test(start_paused = true)]
async fn a_silent_origin_times_out_each_attempt_within_the_deadline() {
    let o = origin(Fault::Silent).await;
    let (res, stats, elapsed) = get(o.addr).await;
    let err = res.unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err:?}");
    assert_eq!(stats.attempts, u64::from(1 + MAX_RETRIES), "{stats:?}");
    assert!(elapsed >= PER_ATTEMPT * 3, "took {elapsed:?}");
    within_bounds(&stats, elapsed);
}

#[tokio::test(start_paused = true)]
async fn a_silent_origin_stops_at_the_deadline() {
    let o = origin(Fault::Silent).await;
    let retry = StatusAwareRetryLayer::builder()
        .max_retries(10)
        .backoff_base(Duration::from_millis(50))
        .jitter(Jitter::None)
        .deadline(Duration::from_millis(700))
        .no_budget()
        .build()
        .unwrap();
    let (res, stats, elapsed) = get_with(o.addr, "/r/1", &retry).await;
    assert!(res.is_err());
    // 300 ms + 100 ms wait + 300 ms = 700 ms: a third attempt would begin past the deadline.
    assert_eq!(stats.attempts, 2, "{stats:?}");
    assert_eq!(stats.gave_up, 1, "{stats:?}");
    assert!(
        elapsed < Duration::from_millis(700) + MARGIN,
        "took {elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_malformed_status_line_is_a_fatal_typed_error() {
    let o = origin(Fault::MalformedStatus).await;
    let (res, stats, elapsed) = get(o.addr).await;
    let err = res.unwrap_err();
    let e = err
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .expect("hyper-util error");
    assert!(!e.is_connect(), "{e:?}");
    assert_eq!(
        stats.attempts, 1,
        "a parse error is not transient: {stats:?}"
    );
    within_bounds(&stats, elapsed);
}

#[tokio::test(start_paused = true)]
async fn a_keep_alive_connection_closed_between_requests_costs_no_error() {
    let o = origin(Fault::CloseAfterAnswer).await;
    let retry = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(5))
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(retry.clone())
        .layer(TimeoutLayer::new(PER_ATTEMPT))
        .map_err(BoxError::from)
        .service(support::client());
    for i in 0..5 {
        let req = Request::get(format!("http://{}/r/{i}", o.addr))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(req)
            .await
            .expect("an answer every time");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
        // Give the client time to see (or not) the close before reusing the connection.
        tokio::time::sleep(Duration::from_millis(if i % 2 == 0 { 0 } else { 20 })).await;
    }
    let stats = retry.stats();
    assert_eq!(stats.requests, 5);
    assert!(stats.attempts <= 10, "{stats:?}");
}
