//! A hostile review of the retry layer (fourth round): each test is a guarantee the crate
//! states (GUARANTEES.md, METRICS.md, `src/observe.rs`) that an earlier build broke.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use tower::{Layer, Service, ServiceExt};
use tower_negative_cache::StatusAwareRetryLayer;
use tower_negative_cache::observe::{Observer, RetryEvent};
use tower_negative_cache::retry::Jitter;

#[derive(Default)]
struct Tally {
    backoffs: AtomicU64,
    resent: AtomicU64,
}
impl Observer for Tally {
    fn retry(&self, e: RetryEvent) {
        match e {
            RetryEvent::Backoff { .. } => {
                self.backoffs.fetch_add(1, SeqCst);
            }
            RetryEvent::Resent { .. } => {
                self.resent.fetch_add(1, SeqCst);
            }
            _ => {}
        }
    }
}

/// The trailers the two trailer tests' bodies carry.
fn checksum() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    trailers
}

/// A PUT of `data` followed by [`checksum`]'s trailers, boxed, through a retry layer over
/// `upstream`.
async fn put_with_trailers<S, D>(upstream: S, data: D) -> Response<Empty<Bytes>>
where
    S: Service<
            Request<http_body_util::combinators::BoxBody<Bytes, Infallible>>,
            Response = Response<Empty<Bytes>>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
    D: http_body::Body<Data = Bytes, Error = Infallible> + Send + Sync + 'static,
{
    let t = checksum();
    let body = data
        .with_trailers(async move { Some(Ok::<_, Infallible>(t)) })
        .boxed();
    fast()
        .build()
        .unwrap()
        .layer(upstream)
        .oneshot(Request::put("http://h.test/r").body(body).unwrap())
        .await
        .unwrap()
}

fn fast() -> tower_negative_cache::retry::Builder {
    StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .jitter(Jitter::None)
        .no_budget()
}

/// GUARANTEES: "A request body is never lost, truncated or half-sent twice: a retry replays
/// only a complete copy (... streams from a capture that fit `capture_limit`, trailers
/// included)". A zero-length body with trailers (exact size hint 0) whose first attempt is
/// answered without its body being read (an overloaded origin shedding load with a 503) is
/// retried with a copy that has lost its trailers.
#[tokio::test(start_paused = true)]
async fn an_unread_zero_length_body_with_trailers_is_not_replayed_without_them() {
    use http::HeaderMap;
    use http_body_util::combinators::BoxBody;
    let seen: Arc<Mutex<Vec<Option<HeaderMap>>>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let (s, c) = (seen.clone(), calls.clone());
    let upstream = tower::service_fn(move |req: Request<BoxBody<Bytes, Infallible>>| {
        let (s, n) = (s.clone(), c.fetch_add(1, SeqCst));
        async move {
            if n == 0 {
                // Shed at once: the body is dropped unread.
                drop(req);
                let mut res = Response::new(Empty::<Bytes>::new());
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return Ok::<_, Infallible>(res);
            }
            let collected = req.into_body().collect().await.unwrap();
            s.lock().unwrap().push(collected.trailers().cloned());
            Ok(Response::new(Empty::<Bytes>::new()))
        }
    });
    let trailers = checksum();
    let res = put_with_trailers(upstream, Empty::<Bytes>::new()).await;
    let seen = seen.lock().unwrap().clone();
    let n = calls.load(SeqCst);
    assert!(
        n == 1 || seen == [Some(trailers.clone())],
        "status {}, {n} calls: the retry sent trailers {seen:?}, the request had {trailers:?}",
        res.status()
    );
}

/// Answers 503 with an empty body (an answer that "holds nothing", kept through the wait with a
/// deadline), then is never ready again.
#[derive(Clone)]
struct OnceThenStuck(Arc<AtomicUsize>);

impl Service<Request<Empty<Bytes>>> for OnceThenStuck {
    type Response = Response<Empty<Bytes>>;
    type Error = io::Error;
    type Future = std::future::Ready<Result<Response<Empty<Bytes>>, io::Error>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        if self.0.load(SeqCst) == 0 {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
    fn call(&mut self, _: Request<Empty<Bytes>>) -> Self::Future {
        self.0.fetch_add(1, SeqCst);
        let mut res = Response::new(Empty::new());
        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        std::future::ready(Ok(res))
    }
}

/// GUARANTEES (metrics row): "every counter recorded through the `metrics` facade equals the
/// stats snapshot over the same traffic (...; the backoff and retries-per-call histograms add
/// up to `retries`)"; observe.rs: `Backoff` is "a retry decided (a retry decided is sent after
/// the wait, unless its future is dropped or its service fails)". A retry whose service is not
/// ready by the deadline is neither dropped nor failed, yet it is told as a backoff and never
/// sent.
#[tokio::test(start_paused = true)]
async fn every_backoff_told_is_a_retry_sent_when_nothing_is_dropped_or_fails() {
    let tally = Arc::new(Tally::default());
    let layer = fast()
        .deadline(Duration::from_secs(1))
        .observer(tally.clone())
        .build()
        .unwrap();
    let res = layer
        .layer(OnceThenStuck(Arc::default()))
        .oneshot(Request::new(Empty::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let s = layer.stats();
    assert_eq!(s.gave_up, 1, "{s:?}");
    assert_eq!(
        (
            tally.backoffs.load(SeqCst),
            tally.resent.load(SeqCst),
            s.retries
        ),
        (s.retries, s.retries, s.retries),
        "backoffs told vs retries sent: {s:?}"
    );
}

/// A body that yields one 10-byte frame, then never ends.
struct TenThenStuck(bool);
impl http_body::Body for TenThenStuck {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if self.0 {
            return Poll::Pending;
        }
        self.0 = true;
        Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
            b"0123456789",
        )))))
    }
}

/// METRICS.md: `negative_cache.retry.drained` equals `drained_bytes`, "Bytes of discarded
/// response bodies read (drained) before a retry". Bytes read from a discarded body during
/// the drain are not counted when the caller drops the future before the drain ends.
#[tokio::test(start_paused = true)]
async fn bytes_drained_before_a_cancellation_are_counted() {
    use std::future::{Future, poll_fn};
    let read = Arc::new(AtomicUsize::new(0));
    let r = read.clone();
    let upstream = tower::service_fn(move |_: Request<Empty<Bytes>>| {
        r.fetch_add(1, SeqCst);
        async {
            let mut res = Response::new(TenThenStuck(false));
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok::<_, Infallible>(res)
        }
    });
    let layer = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_secs(1))
        .jitter(Jitter::None)
        .drain_timeout(Duration::from_secs(5))
        .no_budget()
        .build()
        .unwrap();
    let mut svc = layer.layer(upstream);
    {
        let mut fut = std::pin::pin!(svc.ready().await.unwrap().call(Request::new(Empty::new())));
        let pending = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_pending())).await;
        assert!(pending, "draining");
    }
    assert_eq!(layer.stats().drained_bytes, 10, "{:?}", layer.stats());
}

/// The same with data: `Full("abc").with_trailers(..)` (exact size hint 3). The origin reads
/// the 3 bytes it was told of, answers 503 and drops the rest of the stream (its trailers)
/// unread; the retry replays "abc" without the trailers the request carries.
#[tokio::test(start_paused = true)]
async fn a_body_read_to_its_length_but_not_its_trailers_is_not_replayed_without_them() {
    use http::HeaderMap;
    use http_body_util::combinators::BoxBody;
    type Seen = Vec<(Bytes, Option<HeaderMap>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let (s, c) = (seen.clone(), calls.clone());
    let upstream = tower::service_fn(move |req: Request<BoxBody<Bytes, Infallible>>| {
        let (s, n) = (s.clone(), c.fetch_add(1, SeqCst));
        async move {
            let mut body = req.into_body();
            if n == 0 {
                let mut got = 0;
                while got < 3 {
                    let f = body.frame().await.unwrap().unwrap();
                    got += f.data_ref().map_or(0, |d| d.len());
                }
                drop(body);
                let mut res = Response::new(Empty::<Bytes>::new());
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return Ok::<_, Infallible>(res);
            }
            let collected = body.collect().await.unwrap();
            let t = collected.trailers().cloned();
            s.lock().unwrap().push((collected.to_bytes(), t));
            Ok(Response::new(Empty::<Bytes>::new()))
        }
    });
    let trailers = checksum();
    let res = put_with_trailers(upstream, Full::new(Bytes::from_static(b"abc"))).await;
    let seen = seen.lock().unwrap().clone();
    let n = calls.load(SeqCst);
    assert!(
        n == 1 || seen == [(Bytes::from_static(b"abc"), Some(trailers.clone()))],
        "status {}, {n} calls: the retry sent {seen:?}, the request had trailers {trailers:?}",
        res.status()
    );
}

/// RFC 9110 §10.2.3, §5.3: `Retry-After` is a singleton field. An answer that carries it
/// several times (a proxy added its own) is honoured for the longest wait any valid line asks
/// for — the origin asked for at least that much — and a line that is not valid does not hide
/// a valid one.
#[tokio::test(start_paused = true)]
async fn of_several_retry_after_lines_the_longest_valid_wait_is_honoured() {
    for (lines, wait) in [
        (&["1", "5"][..], 5),
        (&["5", "1"][..], 5),
        (&["soon", "3"][..], 3),
        (&["2", "soon"][..], 2),
    ] {
        let sent: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
        let s = sent.clone();
        let upstream = tower::service_fn(move |_: Request<Empty<Bytes>>| {
            let n = {
                let mut s = s.lock().unwrap();
                s.push(tokio::time::Instant::now());
                s.len()
            };
            let mut res = Response::builder();
            if n == 1 {
                res = res.status(StatusCode::SERVICE_UNAVAILABLE);
                for line in lines {
                    res = res.header("retry-after", *line);
                }
            }
            let res = res.body(Empty::<Bytes>::new()).unwrap();
            async move { Ok::<_, Infallible>(res) }
        });
        let res = StatusAwareRetryLayer::builder()
            .backoff_base(Duration::from_millis(10))
            .jitter(Jitter::None)
            .no_budget()
            .build()
            .unwrap()
            .layer(upstream)
            .oneshot(Request::new(Empty::<Bytes>::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let sent = sent.lock().unwrap();
        assert_eq!(sent.len(), 2);
        assert_eq!(
            sent[1] - sent[0],
            Duration::from_secs(wait),
            "Retry-After lines {lines:?}"
        );
    }
}
