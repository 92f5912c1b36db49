//! `StatusAwareRetryLayer` in front of a real hyper-util legacy client talking to a real hyper
//! server on 127.0.0.1: what the upstream sees (calls, connections, timing, headers) and what the
//! caller gets back.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::classify::DefaultClassifier;
use tower_negative_cache::retry::{Builder, Jitter, ResponseFuture, StatusAwareRetry};
use tower_negative_cache::{Outcome, RetryInfo, StatusAwareRetryLayer};

use support::{BodyProbe, Reply, TestServer, TrackedBody};

/// Backoff 10 ms, 20 ms (base 10 ms × 2^(n-1)), no jitter: deterministic and quick.
fn fast() -> Builder {
    StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(10))
        .jitter(Jitter::None)
}

fn info<B>(res: &Response<B>) -> RetryInfo {
    RetryInfo::of(res).expect("the layer leaves a RetryInfo on every response")
}

fn retried_client(
    layer: &StatusAwareRetryLayer,
) -> StatusAwareRetry<Client<HttpConnector, Empty<Bytes>>> {
    ServiceBuilder::new()
        .layer(layer.clone())
        .service(support::client())
}

fn retried_client_full(
    layer: &StatusAwareRetryLayer,
) -> StatusAwareRetry<Client<HttpConnector, Full<Bytes>>> {
    ServiceBuilder::new()
        .layer(layer.clone())
        .service(support::client_full())
}

// 1 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn transient_503s_are_retried_until_200() {
    let server = TestServer::builder()
        .route(
            "/r",
            [Reply::status(503), Reply::status(503), Reply::ok("hello")],
        )
        .start()
        .await;
    let layer = fast().build().unwrap();

    let res = retried_client(&layer)
        .oneshot(support::get(&server.url("/r")))
        .await
        .unwrap();

    assert_eq!(res.status(), StatusCode::OK);
    let i = info(&res);
    assert_eq!((i.outcome, i.attempts), (Outcome::Success, 3));
    assert_eq!(support::body_bytes(res).await, "hello");
    assert_eq!(server.hits("/r"), 3);
    let stats = layer.stats();
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.attempts, 3);
    assert_eq!(stats.retries, 2);
    assert_eq!(stats.gave_up, 0);
}

// 2 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn missing_404_and_410_are_never_retried() {
    let server = TestServer::builder()
        .route(
            "/404",
            [Reply::status(404), Reply::ok("must not be reached")],
        )
        .route(
            "/410",
            [Reply::status(410), Reply::ok("must not be reached")],
        )
        // A Retry-After on a 404 changes nothing.
        .route(
            "/404-hint",
            [
                Reply::status(404).header("retry-after", "0"),
                Reply::ok("no"),
            ],
        )
        .start()
        .await;
    let layer = fast().build().unwrap();
    let svc = retried_client(&layer);

    for (path, status) in [("/404", 404), ("/410", 410), ("/404-hint", 404)] {
        let res = svc
            .clone()
            .oneshot(support::get(&server.url(path)))
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status, "{path}");
        let i = info(&res);
        assert_eq!((i.outcome, i.attempts), (Outcome::Missing, 1), "{path}");
        assert_eq!(server.hits(path), 1, "{path}");
    }
    let stats = layer.stats();
    assert_eq!(stats.missing, 3);
    assert_eq!(stats.attempts, 3);
    assert_eq!(stats.retries, 0);
}

#[tokio::test]
async fn a_classifier_calling_everything_retryable_still_cannot_retry_404_or_410() {
    let server = TestServer::builder()
        .route(
            "/404",
            [Reply::status(404), Reply::ok("must not be reached")],
        )
        .route(
            "/410",
            [Reply::status(410), Reply::ok("must not be reached")],
        )
        .start()
        .await;
    let rogue = |_: StatusCode, _: &HeaderMap| Outcome::RETRYABLE;
    let layer = fast().classifier(rogue).build().unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(support::client());

    for (path, status) in [("/404", 404), ("/410", 410)] {
        let res = svc
            .clone()
            .oneshot(support::get(&server.url(path)))
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status);
        assert_eq!(info(&res).outcome, Outcome::Missing);
        assert_eq!(server.hits(path), 1, "{path}");
    }
    assert_eq!(layer.stats().missing, 2);
}

// 3 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn retry_after_on_429_is_honoured() {
    let server = TestServer::builder()
        .route(
            "/limited",
            [
                Reply::status(429).header("retry-after", "1"),
                Reply::ok("done"),
            ],
        )
        .start()
        .await;
    let layer = fast().build().unwrap();

    let res = retried_client(&layer)
        .oneshot(support::get(&server.url("/limited")))
        .await
        .unwrap();

    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(info(&res).attempts, 2);
    let seen = server.requests_for("/limited");
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    println!("429 Retry-After: 1 -> second attempt {gap:?} after the first");
    assert!(
        gap >= Duration::from_secs(1),
        "second attempt only {gap:?} after the first"
    );
    // Jitter::None adds nothing above the hint; the upper bound only catches a runaway wait.
    assert!(
        gap < Duration::from_secs(3),
        "second attempt {gap:?} after the first"
    );
}

// 4 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn refused_connections_are_retried_then_the_error_reaches_the_caller() {
    let addr = support::refused_addr();
    let layer = fast().max_retries(3).build().unwrap();

    let err = retried_client(&layer)
        .oneshot(support::get(&format!("http://{addr}/x")))
        .await
        .expect_err("nothing listens there");

    assert!(err.is_connect(), "expected a connect error, got {err:?}");
    let stats = layer.stats();
    assert_eq!(stats.attempts, 1 + 3);
    assert_eq!(stats.retries, 3);
}

// 5 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn post_is_not_retried_without_idempotency_key() {
    let server = TestServer::always(Reply::status(503)).await;
    let layer = fast().build().unwrap();

    let req = support::with_body(Method::POST, &server.url("/orders"), "payload");
    let res = retried_client_full(&layer).oneshot(req).await.unwrap();

    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let i = info(&res);
    assert_eq!((i.outcome, i.attempts), (Outcome::RETRYABLE, 1));
    assert_eq!(server.hits_for(Method::POST, "/orders"), 1);
    assert_eq!(layer.stats().retries, 0);
}

#[tokio::test]
async fn post_with_idempotency_key_is_retried_with_its_body_replayed() {
    let server = TestServer::always(Reply::status(503)).await;
    let layer = fast().build().unwrap();

    let mut req = support::with_body(Method::POST, &server.url("/orders"), "payload");
    req.headers_mut()
        .insert("idempotency-key", "k-1".parse().unwrap());
    let res = retried_client_full(&layer).oneshot(req).await.unwrap();

    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(info(&res).attempts, 3);
    let seen = server.requests_for("/orders");
    assert_eq!(seen.len(), 3);
    for r in &seen {
        assert_eq!(r.method, Method::POST);
        assert_eq!(r.body, "payload", "every attempt carries the whole body");
        assert_eq!(r.header("idempotency-key").as_deref(), Some("k-1"));
    }
}

#[tokio::test]
async fn retry_non_idempotent_retries_post() {
    let server = TestServer::always(Reply::status(503)).await;
    let layer = fast().retry_non_idempotent(true).build().unwrap();

    let req = support::with_body(Method::POST, &server.url("/orders"), "payload");
    let res = retried_client_full(&layer).oneshot(req).await.unwrap();

    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(info(&res).attempts, 3);
    assert_eq!(server.hits_for(Method::POST, "/orders"), 3);
    assert!(
        server
            .requests_for("/orders")
            .iter()
            .all(|r| r.body == "payload")
    );
}

// 6 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn drained_bodies_let_the_pooled_connection_be_reused() {
    let server = TestServer::always(Reply::status(503).body(vec![b'x'; 100])).await;
    let layer = fast().build().unwrap(); // max_retries 2, drain_limit 64 KiB

    let res = retried_client(&layer)
        .oneshot(support::get(&server.url("/busy")))
        .await
        .unwrap();
    assert_eq!(info(&res).attempts, 3);
    assert_eq!(
        support::body_bytes(res).await.len(),
        100,
        "the last answer's body is intact"
    );

    let conns = server.connections();
    let used: Vec<usize> = server
        .requests_for("/busy")
        .iter()
        .map(|r| r.conn)
        .collect();
    println!(
        "drained 100-byte 503 bodies: {} attempts over {conns} accepted connection(s) {used:?}, \
         drained_bytes {}",
        used.len(),
        layer.stats().drained_bytes
    );
    assert_eq!(used.len(), 3);
    assert_eq!(
        conns, 1,
        "all three attempts should share one pooled connection"
    );
    assert_eq!(used, [0, 0, 0]);
    assert_eq!(
        layer.stats().drained_bytes,
        200,
        "two discarded bodies of 100 bytes were read"
    );
}

/// Attempts through a fresh client and layer against a server always answering `reply`; returns
/// the connections the server accepted and the bytes the layer drained.
async fn connections_for(reply: Reply, layer: Builder, label: &str) -> (usize, u64) {
    let server = TestServer::always(reply).await;
    let layer = layer.build().unwrap();
    let res = retried_client(&layer)
        .oneshot(support::get(&server.url("/busy")))
        .await
        .unwrap();
    assert_eq!(info(&res).attempts, 3, "{label}");
    drop(res);
    let (conns, drained) = (server.connections(), layer.stats().drained_bytes);
    println!("{label}: 3 attempts over {conns} accepted connection(s), drained_bytes {drained}");
    (conns, drained)
}

/// Contrasts with the test above: when the layer does not drain a discarded body, whether the
/// connection survives depends on whether hyper already holds the whole body.
///
/// hyper 1's client, on finding the body receiver dropped, reads once more from what it has
/// buffered (`poll_drain_or_close_read`): if that completes the message the connection is kept,
/// otherwise it is closed. So a 100-byte body sent with its head survives even `drain_limit(0)`;
/// a body that arrives after the head, or one larger than the drain limit, costs a new TCP
/// connection per attempt; and the drain is what saves the connection in the slow-body case.
#[tokio::test]
async fn undrained_bodies_cost_a_connection_per_attempt() {
    let small = || Reply::status(503).body(vec![b'x'; 100]);
    let late = || small().body_delay(Duration::from_millis(20));

    // Sent with the head: hyper finishes it itself when the layer drops it unread.
    let observed = connections_for(
        small(),
        fast().drain_limit(0),
        "drain_limit(0), 100 B with head",
    )
    .await;
    assert_eq!(observed, (1, 0));

    // Sent 20 ms after the head: the layer's drain (default: 64 KiB within 100 ms, during the
    // wait) waits for it and the connection is reused...
    let waits_50_100 = || fast().backoff_base(Duration::from_millis(50));
    let observed = connections_for(
        late(),
        waits_50_100(),
        "default drain, waits 50/100 ms, 100 B 20 ms after head",
    )
    .await;
    assert_eq!(observed, (1, 200));
    // ...without the drain, each dropped body closes its connection.
    let observed = connections_for(
        late(),
        waits_50_100().drain_limit(0),
        "drain_limit(0), 100 B 20 ms after head",
    )
    .await;
    assert_eq!(observed, (3, 0));
    // ...and the drain never outlasts the backoff wait: a body arriving after the wait has
    // ended is dropped with its connection, so draining never delays the next attempt.
    let after_wait = small().body_delay(Duration::from_millis(150));
    let observed = connections_for(
        after_wait,
        fast().drain_timeout(Duration::from_secs(1)),
        "drain_timeout 1 s, waits 10/20 ms, 100 B 150 ms after head",
    )
    .await;
    assert_eq!(observed, (3, 0));
    // ...and a body slower than drain_timeout is given up on, closing its connection too.
    let slow = small().body_delay(Duration::from_millis(150));
    let observed = connections_for(
        slow,
        fast().drain_timeout(Duration::from_millis(30)),
        "drain_timeout 30 ms, 100 B 150 ms after head",
    )
    .await;
    assert_eq!(observed, (3, 0));

    // Longer than the default 64 KiB drain limit (known from Content-Length): dropped at once.
    let big = Reply::status(503).body(vec![b'x'; 200 * 1024]);
    let observed = connections_for(big, fast(), "default drain, 200 KiB with head").await;
    assert_eq!(observed, (3, 0));
}

// 7 -------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_discarded_body_is_released_before_the_backoff_wait() {
    let first = BodyProbe::new();
    let second = BodyProbe::new();
    let calls: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let upstream = {
        let (first, second, calls) = (first.clone(), second.clone(), calls.clone());
        tower::service_fn(move |_req: Request<Empty<Bytes>>| {
            let n = {
                let mut calls = calls.lock().unwrap();
                calls.push(Instant::now());
                calls.len()
            };
            let (status, probe) = if n == 1 {
                (503, first.clone())
            } else {
                (200, second.clone())
            };
            let res = Response::builder()
                .status(status)
                .body(TrackedBody::new(vec![b'x'; 100], probe))
                .unwrap();
            async move { Ok::<_, Infallible>(res) }
        })
    };
    let layer = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_secs(10))
        .backoff_cap(Duration::from_secs(10)) // so the first wait is exactly 10 s
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(layer.clone()).service(upstream);

    let t0 = Instant::now();
    let call = tokio::spawn(svc.oneshot(Request::new(Empty::new())));

    // One second into the 10 s wait: the 503's body is gone, the second attempt not yet sent.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        calls.lock().unwrap().len(),
        1,
        "the second attempt waits for the backoff"
    );
    assert!(
        first.dropped(),
        "the discarded body is still held during the backoff wait"
    );
    assert_eq!(
        first.frames_read(),
        1,
        "the discarded body was drained before it was dropped"
    );

    let res = call.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(info(&res).attempts, 2);

    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    let dropped = first.dropped_at().unwrap();
    assert_eq!(
        dropped - t0,
        Duration::ZERO,
        "dropped at once, on the paused clock"
    );
    assert!(dropped < calls[1]);
    assert!(
        calls[1] - calls[0] >= Duration::from_secs(10),
        "{:?}",
        calls[1] - calls[0]
    );
    assert_eq!(layer.stats().drained_bytes, 100);

    // The answer handed to the caller is not released by the layer.
    assert!(!second.dropped());
    drop(res);
    assert!(second.dropped());
}

// 8 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn attempt_header_numbers_each_attempt() {
    let server = TestServer::builder()
        .route(
            "/n",
            [
                Reply::status(503),
                Reply::status(502),
                Reply::ok("third time"),
            ],
        )
        .start()
        .await;
    let layer = fast()
        .attempt_header(HeaderName::from_static("x-attempt"))
        .build()
        .unwrap();

    let res = retried_client(&layer)
        .oneshot(support::get(&server.url("/n")))
        .await
        .unwrap();

    assert_eq!(res.status(), StatusCode::OK);
    let seen: Vec<Option<String>> = server
        .requests_for("/n")
        .iter()
        .map(|r| r.header("x-attempt"))
        .collect();
    assert_eq!(seen, [Some("1".into()), Some("2".into()), Some("3".into())]);
}

// 9 -------------------------------------------------------------------------------------------

#[test]
fn the_service_and_its_future_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    type Inner = Client<HttpConnector, Empty<Bytes>>;
    assert_send_sync::<StatusAwareRetryLayer>();
    assert_send_sync::<StatusAwareRetry<Inner>>();
    assert_send_sync::<ResponseFuture<Inner, DefaultClassifier, Empty<Bytes>>>();
    assert_send_sync::<<StatusAwareRetry<Inner> as Service<Request<Empty<Bytes>>>>::Future>();
    type InnerFull = Client<HttpConnector, Full<Bytes>>;
    assert_send_sync::<<StatusAwareRetry<InnerFull> as Service<Request<Full<Bytes>>>>::Future>();
}

// 10 ------------------------------------------------------------------------------------------

// Real sockets, paused clock: the waits are measured exactly, however busy the machine is.
#[tokio::test(start_paused = true)]
async fn the_deadline_stops_retries_whose_wait_would_end_past_it() {
    let server = TestServer::always(Reply::status(503)).await;
    // Waits would be 200 ms then 400 ms (the first retry waits the base).
    let base = || {
        StatusAwareRetryLayer::builder()
            .backoff_base(Duration::from_millis(200))
            .jitter(Jitter::None)
    };

    // 150 ms: even the first 200 ms wait ends past it.
    let layer = base().deadline(Duration::from_millis(150)).build().unwrap();
    let t0 = tokio::time::Instant::now();
    let res = retried_client(&layer)
        .oneshot(support::get(&server.url("/a")))
        .await
        .unwrap();
    let elapsed = t0.elapsed();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(info(&res).attempts, 1);
    assert_eq!(server.hits("/a"), 1);
    let stats = layer.stats();
    assert_eq!((stats.gave_up, stats.retries), (1, 0));
    assert!(
        elapsed < Duration::from_millis(150),
        "waited past the deadline: {elapsed:?}"
    );

    // 250 ms: the 200 ms wait fits, the 400 ms one after it does not.
    let layer = base().deadline(Duration::from_millis(250)).build().unwrap();
    let res = retried_client(&layer)
        .oneshot(support::get(&server.url("/b")))
        .await
        .unwrap();
    assert_eq!(info(&res).attempts, 2);
    assert_eq!(server.hits("/b"), 2);
    assert_eq!((layer.stats().gave_up, layer.stats().retries), (1, 1));
}

// More ----------------------------------------------------------------------------------------

/// `RetryStats::gave_up` is documented to count "Retryable answers returned because
/// `max_retries`, the deadline or the `Retry-After` cap allowed no further attempt".
#[tokio::test]
async fn exhausting_max_retries_counts_as_gave_up() {
    let server = TestServer::always(Reply::status(503)).await;
    let layer = fast().build().unwrap(); // max_retries 2

    let res = retried_client(&layer)
        .oneshot(support::get(&server.url("/down")))
        .await
        .unwrap();

    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let i = info(&res);
    assert_eq!((i.outcome, i.attempts), (Outcome::RETRYABLE, 3));
    assert_eq!(server.hits("/down"), 3);
    let stats = layer.stats();
    assert_eq!(stats.retries, 2);
    assert_eq!(
        stats.gave_up, 1,
        "the 503 returned after max_retries was not counted: {stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_cap_returns_the_answer_at_once() {
    let server = TestServer::always(Reply::status(503).header("retry-after", "120")).await;
    let layer = fast()
        .max_retry_after(Duration::from_secs(30))
        .build()
        .unwrap();

    let t0 = tokio::time::Instant::now();
    let res = retried_client(&layer)
        .oneshot(support::get(&server.url("/x")))
        .await
        .unwrap();

    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(info(&res).attempts, 1);
    assert_eq!(server.hits("/x"), 1);
    assert_eq!(layer.stats().gave_up, 1);
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "waited for a hint beyond the cap"
    );
}

#[tokio::test]
async fn a_spent_budget_stops_retries() {
    let server = TestServer::always(Reply::status(503)).await;
    let layer = fast()
        .budget_ratio(0.0)
        .budget_min_per_sec(0)
        .build()
        .unwrap();

    let res = retried_client(&layer)
        .oneshot(support::get(&server.url("/x")))
        .await
        .unwrap();

    assert_eq!(info(&res).attempts, 1);
    assert_eq!(server.hits("/x"), 1);
    let stats = layer.stats();
    assert_eq!((stats.budget_exhausted, stats.retries), (1, 0));
}

#[tokio::test]
async fn attempts_are_sequential_never_concurrent() {
    let server = TestServer::builder()
        .route(
            "/slow",
            [
                Reply::status(503).delay(Duration::from_millis(30)),
                Reply::status(503).delay(Duration::from_millis(30)),
                Reply::ok("ok").delay(Duration::from_millis(30)),
            ],
        )
        .start()
        .await;
    let layer = fast().build().unwrap();

    let res = retried_client(&layer)
        .oneshot(support::get(&server.url("/slow")))
        .await
        .unwrap();

    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(server.hits("/slow"), 3);
    assert_eq!(server.peak_in_flight(), 1);
    assert_eq!(server.in_flight(), 0);
}

#[tokio::test]
async fn get_success_is_passed_through_untouched() {
    let server = TestServer::always(Reply::ok("body").header("x-origin", "yes")).await;
    let layer = fast().build().unwrap();

    let res = retried_client(&layer)
        .oneshot(support::get(&server.url("/ok?q=1")))
        .await
        .unwrap();

    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-origin"], "yes");
    let i = info(&res);
    assert_eq!((i.outcome, i.attempts), (Outcome::Success, 1));
    assert_eq!(support::body_bytes(res).await, "body");
    assert_eq!(server.requests()[0].path_and_query, "/ok?q=1");
    assert_eq!(layer.stats().retries, 0);
}

/// The support server's own contract: dropping the handle stops it.
#[tokio::test]
async fn dropping_the_test_server_stops_it() {
    let server = TestServer::always(Reply::ok("up")).await;
    let addr = server.addr;
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    drop(server);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
