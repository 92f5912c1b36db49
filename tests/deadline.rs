//! The deadline bounds everything: a backoff wait is timed from the retry decision, the
//! discarded answer's body is drained while it runs and dropped when it ends (or at the drain
//! timeout, if sooner), and the first retry waits `backoff_base`. On tokio's paused clock, over
//! a mock upstream (no socket: the timing logic is the subject; `tests/retry_server.rs` shows
//! the drain keeping a real pooled connection).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::Empty;
use tokio::time::{Instant, Sleep};
use tower::{Layer, ServiceExt};
use tower_negative_cache::StatusAwareRetryLayer;
use tower_negative_cache::retry::{Builder, Jitter};

const MS: Duration = Duration::from_millis(1);

/// A body that sends one byte every `period`, `frames` times (`None`: forever), and records
/// when it is dropped.
struct Trickle {
    period: Duration,
    frames: Option<u32>,
    next: Pin<Box<Sleep>>,
    dropped: Arc<Mutex<Option<Instant>>>,
}

impl Body for Trickle {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.frames == Some(0) {
            return Poll::Ready(None);
        }
        ready!(self.next.as_mut().poll(cx));
        let next = Instant::now() + self.period;
        self.next.as_mut().reset(next);
        if let Some(n) = &mut self.frames {
            *n -= 1;
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        *self.dropped.lock().unwrap() = Some(Instant::now());
    }
}

/// What the upstream saw and what became of the bodies it sent.
#[derive(Default)]
struct Log {
    calls: Vec<Instant>,
    dropped: Vec<Arc<Mutex<Option<Instant>>>>,
}

/// Sends one GET through `layer` to an upstream answering 503 with a body trickling one byte
/// per `period` (`frames` times, or forever) for its first `failures` calls, then 200. Returns
/// the status, the call times and the drop times of the 503 bodies, all relative to the start.
async fn run(layer: Builder, failures: usize, period: Duration, frames: Option<u32>) -> Ran {
    run_aged(layer, Duration::ZERO, failures, period, frames).await
}

/// The status, the call times, the 503 bodies' drop times, and the layer (see [`run`]).
type Ran = (
    StatusCode,
    Vec<Duration>,
    Vec<Option<Duration>>,
    StatusAwareRetryLayer,
);

/// [`run`], the request sent `age` after the layer was built.
async fn run_aged(
    layer: Builder,
    age: Duration,
    failures: usize,
    period: Duration,
    frames: Option<u32>,
) -> Ran {
    let layer = layer.build().unwrap();
    tokio::time::advance(age).await;
    let log = Arc::new(Mutex::new(Log::default()));
    let seen = log.clone();
    let upstream = tower::service_fn(move |_: Request<Empty<Bytes>>| {
        let mut log = seen.lock().unwrap();
        log.calls.push(Instant::now());
        let failing = log.calls.len() <= failures;
        let dropped = Arc::new(Mutex::new(None));
        if failing {
            log.dropped.push(dropped.clone());
        }
        let body = Trickle {
            period,
            frames: if failing { frames } else { Some(0) },
            next: Box::pin(tokio::time::sleep(period)),
            dropped,
        };
        let mut res = Response::new(body);
        if failing {
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        async move { Ok::<_, Infallible>(res) }
    });
    let t0 = Instant::now();
    let res = layer
        .layer(upstream)
        .oneshot(Request::new(Empty::new()))
        .await
        .unwrap();
    let status = res.status();
    drop(res);
    let log = log.lock().unwrap();
    let calls = log.calls.iter().map(|t| *t - t0).collect();
    let dropped = log
        .dropped
        .iter()
        .map(|d| d.lock().unwrap().map(|t| t - t0))
        .collect();
    (status, calls, dropped, layer)
}

fn layer(base: Duration) -> Builder {
    StatusAwareRetryLayer::builder()
        .backoff_base(base)
        .jitter(Jitter::None)
        .no_budget()
}

/// Issue 10: with a 250 ms deadline and a 5 s drain timeout, a trickling body made the next
/// attempt start at 5.2 s. Now the wait (100 ms, decided at 0) includes the drain: the second
/// attempt starts at 100 ms, the next wait (200 ms) would end past the deadline, and the
/// answer is returned at 100 ms.
#[tokio::test(start_paused = true)]
async fn a_trickling_body_cannot_push_an_attempt_past_the_deadline() {
    let builder = layer(100 * MS)
        .max_retries(10)
        .deadline(250 * MS)
        .drain_timeout(Duration::from_secs(5))
        .drain_limit(16 << 20);
    let (status, calls, dropped, layer) = run(builder, usize::MAX, 10 * MS, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls, [Duration::ZERO, 100 * MS]);
    assert!(calls.iter().all(|c| *c <= 250 * MS), "{calls:?}");
    // The first body was read during the wait and dropped when it ended, before the attempt.
    assert_eq!(dropped[0], Some(100 * MS));
    let s = layer.stats();
    // Ten bytes, at 10, 20, ... 100 ms: what is ready when the wait ends is read first.
    assert_eq!((s.retries, s.gave_up, s.drained_bytes), (1, 1, 10), "{s:?}");
}

/// The docs say the first retry waits `backoff_base`, the n-th `base × factor^(n-1)`; it waited
/// `base × factor` first.
#[tokio::test(start_paused = true)]
async fn the_first_retry_waits_backoff_base() {
    let builder = layer(100 * MS).backoff_factor(3.0);
    let (status, calls, _, _) = run(builder, 2, MS, Some(0)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(calls, [Duration::ZERO, 100 * MS, 400 * MS]);
}

/// A body that ends during the wait is read whole (its connection could be reused) and dropped
/// when it ends; the wait is not lengthened by the drain.
#[tokio::test(start_paused = true)]
async fn a_body_is_drained_while_the_wait_runs() {
    let (status, calls, dropped, layer) = run(
        layer(100 * MS).drain_timeout(Duration::from_secs(1)),
        1,
        10 * MS,
        Some(5),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(calls, [Duration::ZERO, 100 * MS]);
    assert_eq!(dropped, [Some(50 * MS)]);
    assert_eq!(layer.stats().drained_bytes, 5);
}

/// A body slower than the wait is dropped when the wait ends, however long the drain timeout.
#[tokio::test(start_paused = true)]
async fn a_body_slower_than_the_wait_is_dropped_when_it_ends() {
    let builder = layer(100 * MS).drain_timeout(Duration::from_secs(10));
    let (status, calls, dropped, layer) = run(builder, 1, 30 * MS, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(calls, [Duration::ZERO, 100 * MS]);
    assert_eq!(dropped, [Some(100 * MS)]);
    assert_eq!(layer.stats().drained_bytes, 3); // at 30, 60 and 90 ms
}

/// A drain timeout shorter than the wait drops the body at the timeout; the wait goes on.
#[tokio::test(start_paused = true)]
async fn the_drain_timeout_ends_the_drain_within_a_longer_wait() {
    let builder = layer(Duration::from_secs(1)).drain_timeout(50 * MS);
    let (status, calls, dropped, layer) = run(builder, 1, 30 * MS, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(calls, [Duration::ZERO, Duration::from_secs(1)]);
    assert_eq!(dropped, [Some(50 * MS)]);
    assert_eq!(layer.stats().drained_bytes, 1);
}

/// Without a budget or a deadline, a request reads the clock only to time a wait: a wait is
/// still timed from its decision, and its drain from the same instant, however long ago the
/// layer was built (the time a request that needs none stands in with).
#[tokio::test(start_paused = true)]
async fn a_wait_is_timed_from_its_decision_without_budget_or_deadline() {
    let builder = layer(100 * MS).drain_timeout(50 * MS);
    let (status, calls, dropped, built) =
        run_aged(builder, Duration::from_secs(10), 2, 10 * MS, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(calls, [Duration::ZERO, 100 * MS, 300 * MS]);
    assert_eq!(dropped, [Some(50 * MS), Some(150 * MS)]);
    assert_eq!(built.stats().retries, 2);
    // A zero wait reads no clock, and resends at once.
    let (status, calls, _, _) = run_aged(
        layer(Duration::ZERO),
        Duration::from_secs(10),
        2,
        MS,
        Some(0),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(calls, [Duration::ZERO; 3]);
}
