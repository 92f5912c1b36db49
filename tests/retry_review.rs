//! Regressions from the second review of the retry layer (review2 items 8-11): each test
//! states a promise of the README's Guarantees table or of the module docs that used to be
//! broken. Real hyper server where the wire is the subject, paused time for the deadline.

#[path = "support/events.rs"]
mod events;
mod support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::retry::{Builder, Jitter};
use tower_negative_cache::{RetryInfo, StatusAwareRetryLayer};

use support::{Reply, TestServer};

fn fast() -> Builder {
    StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .jitter(Jitter::None)
        .no_budget()
}

/// A stream of chunks, as a file or a channel gives them: no size hint, and it knows it has
/// ended only when polled once more after its last chunk (like `StreamBody`).
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// README: streamed bodies are "captured as the first attempt sends them, up to
/// `capture_limit` (default 64 KiB), and replayed from the copy when the whole body fit". An
/// upload whose length is known (a file) is sent with its `Content-Length` header: hyper's
/// HTTP/1 client then stops polling the body once that many bytes are written — it never asks
/// for the final `None`. The capture used to wait for that end, stayed incomplete, and a 503
/// to a 9-byte body was never retried (counted `not_replayable`), though all of it was sent
/// and kept; now 9 bytes kept of 9 declared is complete.
#[tokio::test]
async fn a_streamed_upload_with_a_content_length_is_replayed() {
    let server = TestServer::builder()
        .route("/up", [Reply::status(503), Reply::ok("stored")])
        .start()
        .await;
    let layer = fast().build().unwrap();
    let client: Client<HttpConnector, BoxBody<Bytes, Infallible>> =
        Client::builder(TokioExecutor::new()).build_http();
    let svc = ServiceBuilder::new().layer(layer.clone()).service(client);
    let chunks = Chunks(["abc", "def", "ghi"].into_iter().map(Bytes::from).collect());
    let req = Request::put(server.url("/up"))
        .header("content-length", "9")
        .body(chunks.boxed())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let bodies: Vec<Bytes> = server.requests().iter().map(|r| r.body.clone()).collect();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the whole body was sent ({bodies:?}) and fits the capture, yet it was not retried: {:?}",
        layer.stats()
    );
    assert_eq!(bodies, [Bytes::from("abcdefghi"), Bytes::from("abcdefghi")]);
}

/// README: "A request body is never lost, truncated or half-sent twice: a retry replays only a
/// complete copy". A `BoxBody` of exact size 0 used to be taken for bodiless and replayed as
/// `BoxBody::default()`: its trailers were dropped from every retry (the first attempt sent
/// them). `Empty.with_trailers(..)` reports an exact size of 0; it is captured now.
#[tokio::test]
async fn a_zero_length_body_with_trailers_is_replayed_whole() {
    let seen: Arc<Mutex<Vec<Option<HeaderMap>>>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let (s, c) = (seen.clone(), calls.clone());
    let upstream = tower::service_fn(move |req: Request<BoxBody<Bytes, Infallible>>| {
        let (s, n) = (s.clone(), c.fetch_add(1, SeqCst));
        async move {
            let collected = req.into_body().collect().await.unwrap();
            s.lock().unwrap().push(collected.trailers().cloned());
            let status = if n == 0 { 503 } else { 200 };
            let mut res = Response::new(Empty::<Bytes>::new());
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok::<_, Infallible>(res)
        }
    });
    let layer = fast().build().unwrap();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let t = trailers.clone();
    let body = Empty::<Bytes>::new()
        .with_trailers(async move { Some(Ok::<_, Infallible>(t)) })
        .boxed();
    let res = layer
        .layer(upstream)
        .oneshot(Request::put("http://h.test/r").body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [Some(trailers.clone()), Some(trailers)],
        "the retry sent the body without its trailers"
    );
}

/// The retry layer's log events carry the request's URI (issue 10 §6) — `Uri`'s `Display`
/// includes a userinfo, so the password of `http://user:password@host/` used to be written to
/// the logs at DEBUG (the fleet tier takes care to redact its own URL; `reqwest` strips
/// userinfo from the URLs in its errors' text too).
#[tokio::test]
async fn a_uri_password_never_reaches_the_logs() {
    let (events, _guard) = events::capture();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let upstream = tower::service_fn(move |_req: Request<Empty<Bytes>>| {
        let n = c.fetch_add(1, SeqCst);
        async move {
            let mut res = Response::new(Empty::<Bytes>::new());
            *res.status_mut() = if n == 0 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            Ok::<_, Infallible>(res)
        }
    });
    let req = Request::get("http://alice:hunter2-password@records.test/r/1")
        .body(Empty::new())
        .unwrap();
    let res = fast()
        .build()
        .unwrap()
        .layer(upstream)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let leaked: Vec<_> = events
        .all()
        .into_iter()
        .filter(|e| e.fields.values().any(|v| v.contains("hunter2-password")))
        .collect();
    assert!(leaked.is_empty(), "the password is logged: {leaked:?}");
    // The URI is still shown, without its userinfo.
    let retrying: Vec<_> = events
        .all()
        .into_iter()
        .filter(|e| e.fields.get("message").is_some_and(|m| m == "retrying"))
        .collect();
    assert_eq!(retrying.len(), 1);
    assert_eq!(retrying[0].fields["uri"], "http://records.test/r/1");
}

/// An inner service whose clones become ready only once `ready_at` has passed, like a
/// `ConcurrencyLimit` whose permits are held by other callers, or a full `Buffer`: after each
/// call it is busy for `busy_for`.
#[derive(Clone)]
struct Busy {
    busy_for: Duration,
    ready_at: Arc<Mutex<Option<Instant>>>,
    sleep: Option<Arc<Mutex<Pin<Box<tokio::time::Sleep>>>>>,
    calls: Arc<Mutex<Vec<Instant>>>,
}

impl Busy {
    fn new(busy_for: Duration) -> Self {
        Busy {
            busy_for,
            ready_at: Arc::default(),
            sleep: None,
            calls: Arc::default(),
        }
    }
}

impl Service<Request<Empty<Bytes>>> for Busy {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        let Some(at) = *self.ready_at.lock().unwrap() else {
            return Poll::Ready(Ok(()));
        };
        let sleep = self
            .sleep
            .get_or_insert_with(|| Arc::new(Mutex::new(Box::pin(tokio::time::sleep_until(at)))));
        sleep.lock().unwrap().as_mut().poll(cx).map(Ok)
    }

    fn call(&mut self, _: Request<Empty<Bytes>>) -> Self::Future {
        self.calls.lock().unwrap().push(Instant::now());
        *self.ready_at.lock().unwrap() = Some(Instant::now() + self.busy_for);
        let mut res = Response::new(Empty::new());
        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        std::future::ready(Ok(res))
    }
}

use std::future::Future;

fn one_retry_within_a_second() -> StatusAwareRetryLayer {
    StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(100))
        .jitter(Jitter::None)
        .max_retries(1)
        .deadline(Duration::from_secs(1))
        .no_budget()
        .build()
        .unwrap()
}

/// README: "The deadline bounds everything: ... no attempt starts past the deadline". With a
/// 1 s deadline a retry used to start at 10 s, once the inner service (a `ConcurrencyLimit`
/// whose permits are busy, say) became ready, and the discarded 503 had been released before
/// the wait, so there was no answer left to return at the deadline. Now the service is driven
/// to ready while the 503 is kept: not ready by the deadline, the 503 is returned, counted as
/// given up, after one attempt.
#[tokio::test(start_paused = true)]
async fn no_attempt_starts_past_the_deadline_even_when_the_inner_service_is_busy() {
    let busy = Busy::new(Duration::from_secs(10));
    let calls = busy.calls.clone();
    let layer = one_retry_within_a_second();
    let t0 = Instant::now();
    let res = layer
        .layer(busy)
        .oneshot(Request::get("http://h.test/r").body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let starts: Vec<Duration> = calls.lock().unwrap().iter().map(|t| *t - t0).collect();
    assert!(
        starts.iter().all(|s| *s <= Duration::from_secs(1)),
        "an attempt started past the 1 s deadline: {starts:?}"
    );
    assert_eq!(RetryInfo::of(&res).unwrap().attempts, 1);
    // Returned at the deadline, not when the service became ready.
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    let stats = layer.stats();
    assert_eq!((stats.gave_up, stats.retries), (1, 0), "{stats:?}");
}

/// A service that becomes ready within the deadline is retried as soon as it is ready: the
/// wait (100 ms, timed from the decision) is not added after the 300 ms it took.
#[tokio::test(start_paused = true)]
async fn a_service_ready_within_the_deadline_is_retried_once_ready() {
    let busy = Busy::new(Duration::from_millis(300));
    let calls = busy.calls.clone();
    let layer = one_retry_within_a_second();
    let t0 = Instant::now();
    let res = layer
        .layer(busy)
        .oneshot(Request::get("http://h.test/r").body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(RetryInfo::of(&res).unwrap().attempts, 2);
    let starts: Vec<Duration> = calls.lock().unwrap().iter().map(|t| *t - t0).collect();
    assert_eq!(starts, [Duration::ZERO, Duration::from_millis(300)]);
    assert_eq!(layer.stats().retries, 1);
}

/// The same over tower's own `ConcurrencyLimit` of 1: while our first attempt is in flight
/// another caller queues for the permit, gets it when the 503 comes back and keeps it 10 s.
/// With a 1 s deadline the retry gets no attempt: the 503 is returned at the deadline.
#[tokio::test(start_paused = true)]
async fn a_permit_held_past_the_deadline_by_another_caller_gets_no_attempt() {
    let calls: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let c = calls.clone();
    let upstream = tower::service_fn(move |_req: Request<Empty<Bytes>>| {
        c.lock().unwrap().push(Instant::now());
        async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let mut res = Response::new(Empty::<Bytes>::new());
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok::<_, Infallible>(res)
        }
    });
    let limited = ServiceBuilder::new().concurrency_limit(1).service(upstream);
    let mut other = limited.clone();
    let layer = one_retry_within_a_second();
    let t0 = Instant::now();
    let req = Request::get("http://h.test/r").body(Empty::new()).unwrap();
    let ours = tokio::spawn(layer.layer(limited).oneshot(req));
    let holder = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        ServiceExt::<Request<Empty<Bytes>>>::ready(&mut other)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(other);
    });
    let res = ours.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(RetryInfo::of(&res).unwrap().attempts, 1);
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    assert_eq!(calls.lock().unwrap().len(), 1);
    holder.await.unwrap();
}
