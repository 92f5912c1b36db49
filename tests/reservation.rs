//! Issue 22, "deadline holds a reservation": a retry's backoff wait holds no `ConcurrencyLimit`
//! permit (nor `Buffer` slot), with or without a deadline; the permit is taken again after the
//! wait, as `tower::retry` does. Measured on tokio's paused clock, so the figures are exact:
//! over a `ConcurrencyLimit` of 1, with a 1 s backoff, another caller arriving during the wait
//! used to start only when the retry had finished (at 1.020 s); it now starts at once (at
//! 0.010 s), and the retry still starts when its wait ends (1.010 s).
//!
//! What the deadline still promises: an answer that holds nothing (an error, or a response
//! whose body has ended) is kept through the wait and returned at the deadline if the service
//! is not ready by then; an answer whose body had to be released during the wait can't be,
//! so its retry waits for the service and, if that is past the deadline, is counted in
//! `sent_past_deadline`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::retry::Jitter;
use tower_negative_cache::{RetryInfo, StatusAwareRetryLayer};

/// Who called the upstream, and when (ms since the start).
type Calls = Arc<Mutex<Vec<(&'static str, u64)>>>;

/// An upstream that takes 10 ms per request and answers the first request of `who` "a" with
/// a 503 (with a body when `body`), everything else with 200.
fn upstream(
    calls: Calls,
    t0: Instant,
    body: bool,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send {
    tower::service_fn(move |req: Request<Full<Bytes>>| {
        let who = if req.uri().path() == "/a" { "a" } else { "b" };
        let first_a = {
            let mut calls = calls.lock().unwrap();
            calls.push((who, t0.elapsed().as_millis() as u64));
            who == "a" && calls.iter().filter(|(w, _)| *w == "a").count() == 1
        };
        async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let mut res = Response::new(if first_a && body {
                Full::new(Bytes::from_static(b"try again later"))
            } else {
                Full::default()
            });
            if first_a {
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok::<_, Infallible>(res)
        }
    })
}

fn layer(deadline: Option<Duration>) -> StatusAwareRetryLayer {
    let b = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_secs(1))
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

fn req(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://h.test{path}"))
        .body(Full::default())
        .unwrap()
}

/// Caller a's first attempt gets a 503 at 10 ms; caller b asks at 11 ms, during a's 1 s wait.
/// Returns when each upstream call started (ms) and when each caller got its answer.
async fn measure(deadline: Option<Duration>, body: bool) -> (Vec<(&'static str, u64)>, u64, u64) {
    let t0 = Instant::now();
    let calls: Calls = Arc::default();
    let limited =
        ServiceBuilder::new()
            .concurrency_limit(1)
            .service(upstream(calls.clone(), t0, body));
    let layer = layer(deadline);
    let a = tokio::spawn({
        let svc = layer.layer(limited.clone());
        async move {
            let res = svc.oneshot(req("/a")).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.extensions().get::<RetryInfo>().unwrap().attempts, 2);
            t0.elapsed().as_millis() as u64
        }
    });
    tokio::time::sleep(Duration::from_millis(11)).await;
    let b = tokio::spawn({
        let svc = layer.layer(limited);
        async move {
            svc.oneshot(req("/b")).await.unwrap();
            t0.elapsed().as_millis() as u64
        }
    });
    let (a_done, b_done) = (a.await.unwrap(), b.await.unwrap());
    let calls = calls.lock().unwrap().clone();
    (calls, a_done, b_done)
}

#[tokio::test(start_paused = true)]
async fn a_backoff_wait_holds_no_permit_with_or_without_a_deadline() {
    for deadline in [None, Some(Duration::from_secs(5))] {
        for body in [false, true] {
            let (calls, a_done, b_done) = measure(deadline, body).await;
            // b is served during a's wait; a's retry starts when its wait ends.
            assert_eq!(
                calls,
                vec![("a", 0), ("b", 11), ("a", 1010)],
                "deadline {deadline:?}, body {body}"
            );
            assert_eq!(
                (b_done, a_done),
                (21, 1020),
                "deadline {deadline:?}, body {body}"
            );
        }
    }
}

/// The deadline still bounds the wait for the permit when the answer in hand holds nothing:
/// another caller takes the permit during the wait and keeps it past the deadline, so the
/// retry gets no attempt and the 503 is returned at the deadline.
#[tokio::test(start_paused = true)]
async fn a_kept_answer_is_returned_at_the_deadline_when_the_permit_is_still_taken() {
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
    let layer = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(100))
        .jitter(Jitter::None)
        .max_retries(1)
        .deadline(Duration::from_secs(1))
        .no_budget()
        .build()
        .unwrap();
    let t0 = Instant::now();
    let ours = tokio::spawn(
        layer
            .layer(limited)
            .oneshot(Request::get("http://h.test/r").body(Empty::new()).unwrap()),
    );
    // During our wait (10 ms to 110 ms), another caller takes the permit for 10 s.
    let holder = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ServiceExt::<Request<Empty<Bytes>>>::ready(&mut other)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(other);
    });
    let res = ours.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.extensions().get::<RetryInfo>().unwrap().attempts, 1);
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    assert_eq!(calls.lock().unwrap().len(), 1);
    let s = layer.stats();
    assert_eq!(
        (s.gave_up, s.retries, s.sent_past_deadline),
        (1, 0, 0),
        "{s:?}"
    );
    holder.await.unwrap();
}

/// An answer with a body is released during the wait, so none is left to return at the
/// deadline: its retry waits for the permit, and is counted when sent past the deadline.
#[tokio::test(start_paused = true)]
async fn a_released_answers_retry_past_the_deadline_is_counted() {
    let calls: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let c = calls.clone();
    let upstream = tower::service_fn(move |_req: Request<Empty<Bytes>>| {
        let n = {
            let mut c = c.lock().unwrap();
            c.push(Instant::now());
            c.len()
        };
        async move {
            let mut res = Response::new(Full::new(Bytes::from_static(b"busy")));
            if n == 1 {
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok::<_, Infallible>(res)
        }
    });
    let limited = ServiceBuilder::new().concurrency_limit(1).service(upstream);
    let mut other = limited.clone();
    let layer = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(100))
        .jitter(Jitter::None)
        .max_retries(1)
        .deadline(Duration::from_secs(1))
        .no_budget()
        .build()
        .unwrap();
    let t0 = Instant::now();
    let ours = tokio::spawn(
        layer
            .layer(limited)
            .oneshot(Request::get("http://h.test/r").body(Empty::new()).unwrap()),
    );
    let holder = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ServiceExt::<Request<Empty<Bytes>>>::ready(&mut other)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(other);
    });
    let res = ours.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let starts: Vec<Duration> = calls.lock().unwrap().iter().map(|t| *t - t0).collect();
    assert_eq!(starts, [Duration::ZERO, Duration::from_millis(2050)]);
    let s = layer.stats();
    assert_eq!((s.retries, s.sent_past_deadline), (1, 1), "{s:?}");
    holder.await.unwrap();
}
