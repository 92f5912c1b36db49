//! Third review (adversarial) of the retry layer after i10, fix-retry and the classify
//! API commit. Each test states a promise that does not hold on 69f8055.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tower::{Layer, Service, ServiceExt};
use tower_negative_cache::retry::{Builder, Jitter};
use tower_negative_cache::{RetryInfo, StatusAwareRetryLayer};

use support::{Reply, TestServer};

/// One HTTP/1 connection as a service (`hyper::client::conn::http1`): it is ready for the
/// next request only once the previous answer's body has been read — as any pool whose
/// readiness means "a connection is free" is.
#[derive(Clone)]
struct OneConnection(Arc<Mutex<SendRequest<Full<Bytes>>>>);

impl Service<Request<Full<Bytes>>> for OneConnection {
    type Response = Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.lock().unwrap().poll_ready(cx)
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        Box::pin(self.0.lock().unwrap().send_request(req))
    }
}

async fn one_connection(server: &TestServer) -> OneConnection {
    let addr = server.url("/").parse::<http::Uri>().unwrap();
    let stream = tokio::net::TcpStream::connect(addr.authority().unwrap().as_str())
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    OneConnection(Arc::new(Mutex::new(send)))
}

fn retry_once(deadline: Option<Duration>) -> StatusAwareRetryLayer {
    let b: Builder = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(10))
        .jitter(Jitter::None)
        .max_retries(1)
        .no_budget();
    match deadline {
        Some(d) => b.deadline(d),
        None => b,
    }
    .build()
    .unwrap()
}

async fn get_over_one_connection(layer: &StatusAwareRetryLayer) -> (StatusCode, u32) {
    let server = TestServer::builder()
        .route(
            "/r",
            [
                Reply::status(503).body(vec![b'x'; 60_000]),
                Reply::ok("fine"),
            ],
        )
        .start()
        .await;
    let svc = layer.layer(one_connection(&server).await);
    let req = Request::get(server.url("/r"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let attempts = RetryInfo::of(&res).unwrap().attempts;
    (res.status(), attempts)
}

/// Module docs: "During [the wait], the retried answer's body is read up to `drain_limit` ...
/// (so its HTTP/1 connection goes back to the pool)". Without a deadline that is so: the 503's
/// 60 KB body (within `drain_limit`) is drained, the connection is free, the retry gets its 200.
#[tokio::test]
async fn without_a_deadline_the_drained_503_frees_its_connection_for_the_retry() {
    let layer = retry_once(None);
    assert_eq!(get_over_one_connection(&layer).await, (StatusCode::OK, 2));
}

/// With a deadline (fix-retry, `State::Reserving`) the service is driven to ready *while the
/// 503 is held, body unread*: a service that is ready only once that body is read (one
/// HTTP/1 connection, a pool of busy connections) can never become ready, so the request
/// waits out the whole deadline and returns the 503 (`gave_up`) — a self-inflicted deadlock
/// bounded only by the deadline. Before the fix the body was drained first and the retry
/// succeeded.
#[tokio::test]
async fn with_a_deadline_the_held_503_does_not_block_its_own_retry() {
    let layer = retry_once(Some(Duration::from_secs(3)));
    let got = get_over_one_connection(&layer).await;
    let stats = layer.stats();
    assert_eq!(got, (StatusCode::OK, 2), "{stats:?}");
    assert_eq!(stats.sent_past_deadline, 0, "{stats:?}");
}

/// A stream of chunks with no size hint, ending when polled after its last chunk.
struct Chunks(std::collections::VecDeque<Bytes>, Option<http::HeaderMap>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(b) = self.0.pop_front() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(b))));
        }
        Poll::Ready(self.1.take().map(|t| Ok(http_body::Frame::trailers(t))))
    }
}

type Boxed = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// An inner service that reads each request body whole (an in-process router, a tower-http
/// stack that buffers, a test double): 503 first, then 200. It records what each attempt got.
fn recording(
    seen: Arc<Mutex<Vec<Bytes>>>,
) -> impl Service<
    Request<Boxed>,
    Response = Response<Full<Bytes>>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |req: Request<Boxed>| {
        let seen = seen.clone();
        async move {
            use http_body_util::BodyExt;
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let mut seen = seen.lock().unwrap();
            seen.push(body);
            let status = if seen.len() == 1 { 503 } else { 200 };
            let mut res = Response::new(Full::new(Bytes::new()));
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok::<_, std::convert::Infallible>(res)
        }
    })
}

/// Module docs / replay_props: a retry "sends a copy of the request"; a stream of declared
/// length is "replayed as exactly the declared bytes". When the `Content-Length` the caller
/// set is shorter than the stream, the first attempt still sends the whole stream (only
/// hyper's HTTP/1 encoder truncates; hyper's HTTP/2 client and any in-process service read
/// it all — capture.rs's "hyper (HTTP/1 and HTTP/2) refuses a body longer" is not so for
/// HTTP/2), while the capture, complete at the declared length, ignores what follows: the
/// retry sends a *different* body (3 bytes instead of 6).
#[tokio::test]
async fn a_retry_sends_the_body_the_first_attempt_sent_even_under_a_short_content_length() {
    use http_body_util::BodyExt;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let layer = retry_once(None);
    let body = Chunks(
        [Bytes::from_static(b"abc"), Bytes::from_static(b"def")].into(),
        None,
    )
    .boxed();
    let req = Request::put("http://h.test/r")
        .header(http::header::CONTENT_LENGTH, "3")
        .body(body)
        .unwrap();
    let res = layer
        .layer(recording(seen.clone()))
        .oneshot(req)
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    // Either the two attempts send the same bytes, or the request is not retried.
    if res.status() == StatusCode::OK {
        assert_eq!(seen[0], seen[1], "the retry replayed another body");
    }
}

/// policy.rs `may_retry_request`: "Never a request with `Cache-Control: only-if-cached` (RFC
/// 9111 §5.2.1.7): it asks not to reach the network". i10's `eligibility` falls through to
/// `Eligible::Unprocessed` whenever `may_retry_request` says no — only-if-cached included —
/// so such a GET whose connection is refused is now sent again (3 attempts by default).
#[tokio::test]
async fn a_request_only_if_cached_is_never_sent_again() {
    let layer = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .jitter(Jitter::None)
        .no_budget()
        .build()
        .unwrap();
    let gone = support::refused_addr();
    let req = Request::get(format!("http://{gone}/r"))
        .header(http::header::CACHE_CONTROL, "only-if-cached")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let err = layer
        .layer(support::client())
        .oneshot(req)
        .await
        .expect_err("nothing listens");
    assert!(err.is_connect(), "{err}");
    let stats = layer.stats();
    assert_eq!((stats.attempts, stats.retries), (1, 0), "{stats:?}");
}

/// Data then trailers; the trailers come only once `gate` is opened (a checksum computed at
/// the end of an upload, a gRPC status).
struct DataThenTrailers {
    data: Option<Bytes>,
    gate: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl http_body::Body for DataThenTrailers {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(d))));
        }
        let Some(gate) = self.gate.as_mut() else {
            return Poll::Ready(None);
        };
        let _ = std::task::ready!(Pin::new(gate).poll(cx));
        self.gate = None;
        let mut t = http::HeaderMap::new();
        t.insert(
            "x-checksum",
            http::HeaderValue::from_static("900150983cd24fb0"),
        );
        Poll::Ready(Some(Ok(http_body::Frame::trailers(t))))
    }
}

/// capture.rs: a stream of declared length "is complete once that many bytes are kept ...
/// trailers that follow the last byte still join the copy" — only if they come before the
/// retry's copy is read. HTTP/2
/// (and any service reading a request while answering) keeps sending the first attempt's body
/// after its answer: here the 503 comes after the 3 declared bytes, the capture was complete,
/// the retry replayed `abc` *without* the trailers that the first attempt then sends. Now a
/// capture is complete only at the stream's end (or its drop after the declared bytes).
#[tokio::test]
async fn a_retry_keeps_the_trailers_of_the_body_it_replays() {
    use http_body_util::BodyExt;
    let trailers_seen = Arc::new(Mutex::new(Vec::<bool>::new()));
    let background = Arc::new(Mutex::new(None::<tokio::task::JoinHandle<()>>));
    let svc = {
        let (seen, background) = (trailers_seen.clone(), background.clone());
        tower::service_fn(move |req: Request<Boxed>| {
            let (seen, background) = (seen.clone(), background.clone());
            async move {
                let mut body = req.into_body();
                let first = seen.lock().unwrap().is_empty() && background.lock().unwrap().is_none();
                if first {
                    // Full duplex: answer after the data, read the rest of the body on.
                    let _data = body.frame().await.unwrap().unwrap();
                    let seen2 = seen.clone();
                    *background.lock().unwrap() = Some(tokio::spawn(async move {
                        let rest = body.collect().await.unwrap();
                        seen2.lock().unwrap().insert(0, rest.trailers().is_some());
                    }));
                    let mut res = Response::new(Full::new(Bytes::new()));
                    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    return Ok::<_, std::convert::Infallible>(res);
                }
                let all = body.collect().await.unwrap();
                seen.lock().unwrap().push(all.trailers().is_some());
                Ok(Response::new(Full::new(Bytes::new())))
            }
        })
    };
    let (open, gate) = tokio::sync::oneshot::channel();
    let body = DataThenTrailers {
        data: Some(Bytes::from_static(b"abc")),
        gate: Some(gate),
    }
    .boxed();
    let req = Request::put("http://h.test/upload")
        .header(http::header::CONTENT_LENGTH, "3")
        .body(body)
        .unwrap();
    let layer = retry_once(None);
    let res = layer.layer(svc).oneshot(req).await.unwrap();
    // The trailers exist only once the gate opens, after this request is answered: no retry
    // sent before can carry them. A copy made while the original stream may still send is
    // not the request the first attempt sent, so the request is sent once (fix3-retry: as
    // reviewed, this asserted a 200 *and* a retry with trailers, which nothing can give).
    let stats = layer.stats();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{stats:?}");
    assert_eq!(RetryInfo::of(&res).unwrap().attempts, 1);
    assert_eq!((stats.retries, stats.not_replayable), (0, 1), "{stats:?}");
    // The first attempt's body goes on to its end.
    open.send(()).unwrap();
    let task = background.lock().unwrap().take().unwrap();
    task.await.unwrap();
    let seen = trailers_seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![true],
        "[first attempt, retry] had trailers: the retry replayed a different request"
    );
}

/// 503 at every call; after its first call, not ready for an hour (a `ConcurrencyLimit`
/// whose permits another caller holds).
#[derive(Clone)]
struct BusyAfterOne {
    called: Arc<Mutex<bool>>,
    sleep: Option<Arc<Mutex<Pin<Box<tokio::time::Sleep>>>>>,
}

impl Service<Request<Full<Bytes>>> for BusyAfterOne {
    type Response = Response<Full<Bytes>>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !*self.called.lock().unwrap() {
            return Poll::Ready(Ok(()));
        }
        let s = self.sleep.get_or_insert_with(|| {
            Arc::new(Mutex::new(Box::pin(tokio::time::sleep(
                Duration::from_secs(3600),
            ))))
        });
        s.lock().unwrap().as_mut().poll(cx).map(Ok)
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        *self.called.lock().unwrap() = true;
        let mut res = Response::new(Full::new(Bytes::new()));
        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        std::future::ready(Ok(res))
    }
}

/// Invariant 2 / `RetryBudget`: the budget bounds *retries*. fix-retry's reservation takes
/// the retry from the budget when it is decided, then, the service not ready by the deadline,
/// sends none — and never gives it back. With a budget of one retry per window, that retry
/// that never happened makes the next request's retry refused (`budget_exhausted`), though
/// the upstream received no retry at all.
#[tokio::test(start_paused = true)]
async fn a_retry_never_sent_is_not_taken_from_the_budget() {
    let layer = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(10))
        .jitter(Jitter::None)
        .max_retries(1)
        .deadline(Duration::from_millis(100))
        .budget_ratio(0.0)
        .budget_min_per_sec(1)
        .budget_window(Duration::from_secs(1))
        .build()
        .unwrap();
    let busy = BusyAfterOne {
        called: Arc::default(),
        sleep: None,
    };
    let req = || {
        Request::get("http://h.test/r")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let res = layer.layer(busy).oneshot(req()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(layer.stats().retries, 0, "no retry was sent");
    // Another request, to a service that answers 503 then 200, within the same window.
    let calls = Arc::new(Mutex::new(0));
    let flaky = {
        let calls = calls.clone();
        tower::service_fn(move |_: Request<Full<Bytes>>| {
            let mut n = calls.lock().unwrap();
            *n += 1;
            let status = if *n == 1 { 503 } else { 200 };
            let mut res = Response::new(Full::new(Bytes::new()));
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            std::future::ready(Ok::<_, std::convert::Infallible>(res))
        })
    };
    let res = layer.layer(flaky).oneshot(req()).await.unwrap();
    let stats = layer.stats();
    assert_eq!(res.status(), StatusCode::OK, "{stats:?}");
}

/// 503 with a body at the first call, 200 after; after its first call, not ready for `busy`.
#[derive(Clone)]
struct BusyWithBody {
    calls: Arc<Mutex<u32>>,
    busy: Duration,
    sleep: Option<Arc<Mutex<Pin<Box<tokio::time::Sleep>>>>>,
}

impl Service<Request<Full<Bytes>>> for BusyWithBody {
    type Response = Response<Full<Bytes>>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if *self.calls.lock().unwrap() == 0 {
            return Poll::Ready(Ok(()));
        }
        let busy = self.busy;
        let s = self
            .sleep
            .get_or_insert_with(|| Arc::new(Mutex::new(Box::pin(tokio::time::sleep(busy)))));
        s.lock().unwrap().as_mut().poll(cx).map(Ok)
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        let mut n = self.calls.lock().unwrap();
        *n += 1;
        let (status, body) = if *n == 1 { (503, "busy") } else { (200, "") };
        let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        std::future::ready(Ok(res))
    }
}

/// The other side of the held-503 fix: an answer with a body to read is released rather than
/// held, so when the service becomes ready only past the deadline the retry is sent then —
/// counted in `sent_past_deadline`, never silently.
#[tokio::test(start_paused = true)]
async fn a_retry_sent_past_the_deadline_after_releasing_a_body_is_counted() {
    let layer = retry_once(Some(Duration::from_secs(1)));
    let svc = BusyWithBody {
        calls: Arc::default(),
        busy: Duration::from_secs(2),
        sleep: None,
    };
    let t0 = tokio::time::Instant::now();
    let req = Request::get("http://h.test/r")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = layer.layer(svc).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Readiness is driven after the 10 ms wait (no reservation is held through it: issue 22,
    // tests/reservation.rs), and this service is busy for 2 s from that first poll.
    assert_eq!(t0.elapsed(), Duration::from_millis(2010));
    let stats = layer.stats();
    assert_eq!(
        (stats.retries, stats.sent_past_deadline),
        (1, 1),
        "{stats:?}"
    );
}

/// Invariant 2 again, for the other way a decided retry goes unsent: the caller drops the
/// future during the backoff wait. Its withdrawal is given back.
#[tokio::test(start_paused = true)]
async fn a_retry_dropped_during_its_wait_is_given_back_to_the_budget() {
    let layer = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_secs(1))
        .jitter(Jitter::None)
        .max_retries(1)
        .budget_ratio(0.0)
        .budget_min_per_sec(1)
        .budget_window(Duration::from_secs(1))
        .build()
        .unwrap();
    let calls = Arc::new(Mutex::new(0));
    let flaky = {
        let calls = calls.clone();
        tower::service_fn(move |_: Request<Full<Bytes>>| {
            let mut n = calls.lock().unwrap();
            *n += 1;
            // 503 to the first two calls (the dropped request, then the next one's first).
            let status = if *n <= 2 { 503 } else { 200 };
            let mut res = Response::new(Full::new(Bytes::new()));
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            std::future::ready(Ok::<_, std::convert::Infallible>(res))
        })
    };
    let req = || {
        Request::get("http://h.test/r")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let svc = layer.layer(flaky);
    // The retry is decided (withdrawn) and waits 1 s; the caller gives up after 100 ms.
    let dropped =
        tokio::time::timeout(Duration::from_millis(100), svc.clone().oneshot(req())).await;
    assert!(dropped.is_err(), "the retry's wait outlasts the timeout");
    assert_eq!(*calls.lock().unwrap(), 1);
    let res = svc.oneshot(req()).await.unwrap();
    let stats = layer.stats();
    assert_eq!(res.status(), StatusCode::OK, "{stats:?}");
    assert_eq!(stats.retries, 1, "{stats:?}");
}
