//! Adversarial review of the hot-path work of issue 21 (8f24c64..5b7afee): the clock one layer
//! lends the next for the duration of its inner `call`, and the retry layer that reads no clock
//! without a budget or a deadline. Each test states what must hold; all run on tokio's paused
//! clock, over in-process upstreams (the timing logic is the subject).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};
use tower_negative_cache::retry::{Builder, Jitter};
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

type Req = Request<Empty<Bytes>>;
type Res = Response<Empty<Bytes>>;

const MS: Duration = Duration::from_millis(1);

fn get(uri: &str) -> Req {
    Request::get(uri).body(Empty::new()).unwrap()
}

fn answer(status: u16) -> Res {
    let mut res = Response::new(Empty::new());
    *res.status_mut() = StatusCode::from_u16(status).unwrap();
    res
}

/// An upstream that answers the statuses of `script` in turn (then 200), and notes when it was
/// called.
#[derive(Clone, Default)]
struct Script {
    answers: Arc<Mutex<Vec<Res>>>,
    calls: Arc<Mutex<Vec<Instant>>>,
}

impl Script {
    fn new(script: impl IntoIterator<Item = Res>) -> Self {
        let mut answers: Vec<Res> = script.into_iter().collect();
        answers.reverse();
        Script {
            answers: Arc::new(Mutex::new(answers)),
            calls: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    /// The call times, relative to `t0`.
    fn times(&self, t0: Instant) -> Vec<Duration> {
        self.calls.lock().unwrap().iter().map(|t| *t - t0).collect()
    }

    fn service(&self) -> BoxCloneSyncService<Req, Res, Infallible> {
        let s = self.clone();
        BoxCloneSyncService::new(tower::service_fn(move |_: Req| {
            s.calls.lock().unwrap().push(Instant::now());
            let res = s
                .answers
                .lock()
                .unwrap()
                .pop()
                .unwrap_or_else(|| answer(200));
            async move { Ok::<_, Infallible>(res) }
        }))
    }
}

/// An upstream that always answers 404.
fn not_found() -> Script {
    Script::new((0..100).map(|_| answer(404)))
}

fn retry(base: Duration) -> Builder {
    StatusAwareRetryLayer::builder()
        .backoff_base(base)
        .jitter(Jitter::None)
        .no_budget()
}

fn cache() -> NegativeCacheLayer {
    NegativeCacheLayer::builder()
        .ttl(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// A request through `svc`, its status.
async fn status<S>(svc: &mut S, uri: &str) -> StatusCode
where
    S: Service<Req, Response = Response<tower_negative_cache::cache::ResponseBody<Empty<Bytes>>>>,
    S::Error: std::fmt::Debug,
{
    svc.ready()
        .await
        .unwrap()
        .call(get(uri))
        .await
        .unwrap()
        .status()
}

/// The retry layer lends its reading (it has a deadline) to the cache it calls: the loan ends
/// with the retry layer's `call`. A later request, straight to the cache on the same thread,
/// judges its entry by the clock: the 404 remembered for 1 s is not served 2 s later.
#[tokio::test(start_paused = true)]
async fn the_retry_layers_loan_ends_with_its_call() {
    let origin = not_found();
    let cache = cache();
    let mut direct = cache.layer(origin.service());
    assert_eq!(status(&mut direct, "http://h.test/a").await, 404);
    // Through retry (deadline: it reads the clock and lends it) -> cache, another key.
    let mut stack = retry(MS)
        .deadline(Duration::from_secs(10))
        .build()
        .unwrap()
        .layer(cache.layer(origin.service()));
    let res = stack
        .ready()
        .await
        .unwrap()
        .call(get("http://h.test/b"))
        .await;
    assert_eq!(res.unwrap().status(), 404);
    assert_eq!(origin.calls(), 2);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(status(&mut direct, "http://h.test/a").await, 404);
    assert_eq!(
        origin.calls(),
        3,
        "an entry 1 s past its TTL was served as fresh"
    );
}

/// The cache lends the time its read was sent to the retry layer below: the loan ends with the
/// cache's `call`. A retry layer called later on the same thread, straight, times its deadline
/// from its own reading: 10 s after the cache's call, a 503 is still retried within a 1 s
/// deadline.
#[tokio::test(start_paused = true)]
async fn the_caches_loan_ends_with_its_call() {
    let origin = not_found();
    let mut cached = cache().layer(origin.service());
    assert_eq!(status(&mut cached, "http://h.test/a").await, 404);
    tokio::time::advance(Duration::from_secs(10)).await;
    let flaky = Script::new([answer(503)]);
    let res = retry(500 * MS)
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap()
        .layer(flaky.service())
        .oneshot(get("http://h.test/b"))
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "the deadline was counted from a stale loan"
    );
    assert_eq!(flaky.calls(), 2);
}

/// A panic in the inner `call` unwinds through the lender: its loan ends with it.
#[tokio::test(start_paused = true)]
async fn a_loan_ends_when_the_inner_call_panics() {
    let origin = not_found();
    let cache = cache();
    let mut direct = cache.layer(origin.service());
    assert_eq!(status(&mut direct, "http://h.test/a").await, 404);
    let panicking = tower::service_fn(|_: Req| -> std::future::Ready<Result<Res, Infallible>> {
        panic!("the inner call panics")
    });
    let mut stack = retry(MS)
        .deadline(Duration::from_secs(10))
        .build()
        .unwrap()
        .layer(cache.layer(panicking));
    stack.ready().await.unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        stack.call(get("http://h.test/b"))
    }));
    assert!(caught.is_err());
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(status(&mut direct, "http://h.test/a").await, 404);
    assert_eq!(
        origin.calls(),
        2,
        "an entry 1 s past its TTL was served as fresh"
    );
}

/// A `Buffer` between the cache and the retry layer calls the retry layer later, from its
/// worker: the retry layer reads the clock itself then, and does not take the cache's loan.
/// The request waits 2 s in the buffer; its 503 comes at once, and with a 3 s deadline counted
/// from the retry layer's call, a 2 s backoff still fits (counted from the cache's call, it
/// would not).
#[tokio::test(start_paused = true)]
async fn a_layer_called_later_through_a_buffer_reads_its_own_clock() {
    let flaky = Script::new([answer(503)]);
    let retrying = retry(Duration::from_secs(2))
        .deadline(Duration::from_secs(3))
        .build()
        .unwrap()
        .layer(flaky.service());
    let buffered = tower::buffer::Buffer::new(retrying, 8);
    let mut stack = cache().layer(buffered);
    let t0 = Instant::now();
    stack.ready().await.unwrap();
    let future = stack.call(get("http://h.test/a"));
    // The worker runs once this task yields: after the clock moved.
    tokio::time::advance(Duration::from_secs(2)).await;
    let res = future.await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        flaky.times(t0),
        [Duration::from_secs(2), Duration::from_secs(4)]
    );
}

/// Sends one GET through a retry layer built from `layer` in another runtime, whose paused
/// clock had run `ahead` (a layer in a `static` shared by tests, each with its runtime), to an
/// upstream answering `script`. Returns the call times relative to the request.
fn built_in_another_runtime(layer: Builder, ahead: Duration, script: Vec<Res>) -> Vec<Duration> {
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let layer = paused().block_on(async {
        tokio::time::advance(ahead).await;
        layer.build().unwrap()
    });
    paused().block_on(async {
        let upstream = Script::new(script);
        let t0 = Instant::now();
        let res = tokio::time::timeout(
            Duration::from_secs(60),
            layer
                .layer(upstream.service())
                .oneshot(get("http://h.test/a")),
        )
        .await
        .expect("the retries end within a minute")
        .unwrap();
        assert_eq!(res.status(), 200);
        upstream.times(t0)
    })
}

/// Without a budget or a deadline the layer's build time stands in for the request's start.
/// Even a build time from a clock that ran a day ahead of this one is never waited for: a zero
/// backoff resends at once, a backoff and a `Retry-After` are timed from the decision.
#[test]
fn a_layer_built_on_a_clock_ahead_times_its_waits_from_the_decision() {
    let day = Duration::from_secs(86_400);
    assert_eq!(
        built_in_another_runtime(retry(Duration::ZERO), day, vec![answer(503), answer(503)]),
        [Duration::ZERO; 3]
    );
    assert_eq!(
        built_in_another_runtime(retry(100 * MS), day, vec![answer(503), answer(503)]),
        [Duration::ZERO, 100 * MS, 300 * MS]
    );
    let mut after = answer(503);
    after
        .headers_mut()
        .insert(RETRY_AFTER, http::HeaderValue::from_static("2"));
    assert_eq!(
        built_in_another_runtime(retry(Duration::ZERO), day, vec![after]),
        [Duration::ZERO, Duration::from_secs(2)]
    );
}
