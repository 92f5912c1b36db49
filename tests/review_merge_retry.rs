//! Adversarial review of the merged tree (issues 18, 19, 20, 22): the retry layer's and the
//! observability promises, each break held by a test that failed before its fix.

// A global allocator (to measure what the layer keeps alive) can't be written without `unsafe`:
// the crate denies it, this file allows it.
#![allow(unsafe_code)]

#[path = "support/events.rs"]
mod events;
mod support;

use std::time::Duration;

use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::StatusAwareRetryLayer;

use support::{Reply, TestServer};

/// The tests of this file run one at a time: some capture `tracing` events with a thread-local
/// subscriber, and a callsite first reached on another thread at the moment one registers can
/// cache "never" and hide its events (tracing-core's interest cache).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Per-host budgets key on the host, not on who asks it: `http://alice:pw@host/` and
/// `http://bob:pw@host/` are one upstream (RFC 3986 §3.2: the userinfo is not part of the
/// host), so a down host gets one budget however many credentials reach it — and the
/// credentials never show in `budget_exhausted_scopes`, which operators serve and log.
#[tokio::test]
async fn userinfo_neither_splits_a_hosts_budget_nor_shows_in_the_exhausted_scopes() {
    let _serial = SERIAL.lock().await;
    const USERS: usize = 30;
    let down = TestServer::always(Reply::status(503)).await;
    // No ratio, 1 retry a second over 10 s: the host's budget holds 10 retries.
    let layer = StatusAwareRetryLayer::builder()
        .max_retries(1)
        .backoff_base(Duration::from_millis(1))
        .budget_ratio(0.0)
        .budget_min_per_sec(1)
        .budget_window(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(support::client());
    let base = down.url("/down");
    for u in 0..USERS {
        let url = base.replacen("http://", &format!("http://user{u}:secret{u}@"), 1);
        let res = client
            .ready()
            .await
            .unwrap()
            .call(support::get(&url))
            .await
            .unwrap();
        assert_eq!(res.status(), 503);
    }
    let stats = layer.stats();
    assert_eq!(stats.requests, USERS as u64);
    assert!(
        stats.retries <= 10,
        "one host, one budget of 10 retries: {} retries sent ({} requests reached it)",
        stats.retries,
        down.total_hits()
    );
    let scopes = layer.budget_exhausted_scopes();
    assert!(!scopes.is_empty(), "the budget ran out: {stats:?}");
    for (name, _) in &scopes {
        assert!(
            !name.contains('@') && !name.contains("secret"),
            "credentials in an exhausted scope's name: {name}"
        );
    }
}

/// Bytes allocated and not yet freed by the current thread (a counting global allocator).
mod live {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    pub(crate) struct Counting;

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = LIVE.try_with(|l| l.set(l.get() + layout.size() as isize));
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            let _ = LIVE.try_with(|l| l.set(l.get() - layout.size() as isize));
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
            let _ = LIVE.try_with(|l| l.set(l.get() + new as isize - layout.size() as isize));
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
            unsafe { System.realloc(ptr, layout, new) }
        }
    }

    pub(crate) fn bytes() -> isize {
        LIVE.with(|l| l.get())
    }

    /// Allocations (and reallocations) made by the current thread so far.
    pub(crate) fn count() -> u64 {
        COUNT.with(|c| c.get())
    }
}

#[global_allocator]
static ALLOC: live::Counting = live::Counting;

/// `budget_max_scopes` promised that "a client fed arbitrary URLs can't grow memory" past about
/// 200 KiB (1024 scopes); now 512 KiB at most. A scope's name is the request's authority, as long as the URI allows:
/// 1,100 hosts of 16 KB names each must not keep megabytes alive in the layer.
#[tokio::test]
async fn long_host_names_do_not_grow_the_budgets_past_their_stated_bound() {
    let _serial = SERIAL.lock().await;
    const HOSTS: usize = 1_100;
    let layer = StatusAwareRetryLayer::new();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(tower::service_fn(
            |_req: http::Request<http_body_util::Empty<bytes::Bytes>>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                    bytes::Bytes,
                >::new()))
            },
        ));
    let long = "a".repeat(16_000);
    // Warm up whatever allocates once (the runtime, the tracing callsites).
    svc.ready()
        .await
        .unwrap()
        .call(support::get("http://warm.test/"))
        .await
        .unwrap();
    let before = live::bytes();
    for i in 0..HOSTS {
        let url = format!("http://{long}{i}.test/");
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(support::get(&url))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let held = live::bytes() - before;
    assert_eq!(layer.stats().requests, HOSTS as u64 + 1);
    assert!(
        held < 1 << 20,
        "{HOSTS} hosts keep {held} bytes alive in the retry layer's budgets"
    );
    // Names at the longest kept (a 253-byte DNS name and a port) fill the 1024 scopes within
    // the stated 512 KiB.
    let dns = "b".repeat(240);
    let before = live::bytes();
    for i in 0..HOSTS {
        let url = format!("http://{dns}{i:05}.test:65535/");
        svc.ready()
            .await
            .unwrap()
            .call(support::get(&url))
            .await
            .unwrap();
    }
    let held = live::bytes() - before;
    assert!(
        held < 512 << 10,
        "{HOSTS} DNS-long hosts keep {held} bytes alive"
    );
    assert!(held > 100 << 10, "the scopes were made: {held} bytes");
}

/// Records when each retry was decided, on tokio's clock: the observer's `Backoff` event is
/// told when the retry is sent, with the wait since it was decided.
#[derive(Debug, Default)]
struct Decided(std::sync::Mutex<Vec<tokio::time::Instant>>);

impl tower_negative_cache::observe::Observer for Decided {
    fn retry(&self, event: tower_negative_cache::observe::RetryEvent) {
        if let tower_negative_cache::observe::RetryEvent::Backoff { wait } = event {
            self.0
                .lock()
                .unwrap()
                .push(tokio::time::Instant::now() - wait);
        }
    }
}

/// A host's budget is forgotten when idle for a window — but a request waiting through a
/// `Retry-After` longer than the window (20 s of the 30 s allowed, window 10 s) still holds
/// it. Forgotten under it and made again for the host's new requests, the host had two budgets
/// at once: the new requests spent the new one, the waiting requests' next retries the old
/// one, twice the host's allowance within one window.
#[tokio::test(start_paused = true)]
async fn a_host_forgotten_while_its_requests_wait_does_not_get_a_second_budget() {
    let _serial = SERIAL.lock().await;
    use std::sync::Arc;
    use tokio::time::{Instant, sleep};

    let a = TestServer::always(Reply::status(503).header("retry-after", "20")).await;
    let (b, c) = (
        TestServer::always(Reply::status(200)).await,
        TestServer::always(Reply::status(200)).await,
    );
    let decided = Arc::new(Decided::default());
    // Two scopes; no ratio, 1 retry a second over 10 s: 10 retries per host per window.
    let layer = StatusAwareRetryLayer::builder()
        .max_retries(2)
        .budget_max_scopes(2)
        .budget_ratio(0.0)
        .budget_min_per_sec(1)
        .budget_window(Duration::from_secs(10))
        .observer(decided.clone())
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(support::client());
    let start = Instant::now();
    let send = |url: String| {
        let client = client.clone();
        tokio::spawn(async move { client.oneshot(support::get(&url)).await.unwrap().status() })
    };
    // t = 0: 20 requests to A (10 get a retry, to be sent at t = 20), one to B: the map is full.
    let mut first: Vec<_> = (0..20).map(|_| send(a.url("/a"))).collect();
    first.push(send(b.url("/b")));
    // t = 12: C sweeps the idle scopes; then 20 new requests to A.
    sleep(Duration::from_secs(12)).await;
    assert_eq!(send(c.url("/c")).await.unwrap(), 200);
    let second: Vec<_> = (0..20).map(|_| send(a.url("/a"))).collect();
    for t in first.into_iter().chain(second) {
        t.await.unwrap();
    }
    let at: Vec<f64> = decided
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|t| (*t - start).as_secs_f64())
        .collect();
    let early = at.iter().filter(|&&t| t < 1.0).count();
    let later = at.iter().filter(|&&t| (11.0..21.5).contains(&t)).count();
    assert_eq!(early, 10, "A's first window: {at:?}");
    assert!(
        later <= 10,
        "A got {later} retries within one window [11 s, 21.5 s) with an allowance of 10: {at:?}"
    );
}

/// The README's defaults table is what a newcomer reads first (issue 18): after the merge it
/// still said the backoff base was 100 ms (the defaults are 200 ms, then 400 ms — the
/// incident's fix, `tests/retry_defaults.rs`) and that the budget was one shared by clones
/// (it is per host by default since issue 19, a change of default the README must say).
#[test]
fn the_readmes_defaults_are_the_layers() {
    let _serial = SERIAL.blocking_lock();
    let readme = include_str!("../README.md");
    let row = |setting: &str| {
        readme
            .lines()
            .find(|l| l.starts_with(&format!("| retry | {setting} |")))
            .unwrap_or_else(|| panic!("no `{setting}` row in the README's defaults"))
            .to_owned()
    };
    let backoff = row("backoff");
    assert!(
        backoff.contains("base 200 ms") && backoff.contains("up to 200 ms, 400 ms"),
        "{backoff}"
    );
    assert!(!backoff.contains("100 ms"), "{backoff}");
    let budget = row("budget");
    assert!(budget.contains("per host"), "{budget}");
    // And the layer's own Debug agrees on the scope.
    let layer = format!("{:?}", StatusAwareRetryLayer::new());
    assert!(layer.contains("BudgetScope::per_host"), "{layer}");
}

/// Sums the per-call retries (the A96 histogram's values) and counts the resends told.
#[derive(Debug, Default)]
struct PerCall {
    calls: std::sync::atomic::AtomicU64,
    retries: std::sync::atomic::AtomicU64,
    resent: std::sync::atomic::AtomicU64,
}

impl tower_negative_cache::observe::Observer for PerCall {
    fn retry(&self, event: tower_negative_cache::observe::RetryEvent) {
        use std::sync::atomic::Ordering::Relaxed;
        use tower_negative_cache::observe::RetryEvent as E;
        match event {
            E::CallEnded { retries } => {
                self.calls.fetch_add(1, Relaxed);
                self.retries.fetch_add(u64::from(retries), Relaxed);
            }
            E::Resent { .. } => {
                self.resent.fetch_add(1, Relaxed);
            }
            _ => {}
        }
    }
}

/// Callers give up at every point of a request's life — during the first attempt, the
/// backoff wait, the wait for `ConcurrencyLimit`'s permit, the retry in flight — through a
/// `Buffer` above the layer and a `ConcurrencyLimit` below it. Every retry withdrawn and never
/// sent must go back to the host's budget (no more, no less): afterwards the host still gets
/// exactly its allowance of retries sent, and the per-call histogram adds up to the retries sent.
#[tokio::test(start_paused = true)]
async fn dropped_callers_refund_their_hosts_budget_exactly_and_the_per_call_histogram_adds_up() {
    let _serial = SERIAL.lock().await;
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;
    use tower::buffer::BufferLayer;
    use tower::limit::ConcurrencyLimitLayer;

    const ALLOWANCE: u64 = 40;
    let down = TestServer::always(Reply::status(503).delay(Duration::from_millis(5))).await;
    let per_call = Arc::new(PerCall::default());
    let layer = StatusAwareRetryLayer::builder()
        .max_retries(2)
        .backoff_base(Duration::from_millis(10))
        .budget_ratio(0.0)
        .budget_min_per_sec(1)
        .budget_window(Duration::from_secs(ALLOWANCE))
        .observer(per_call.clone())
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(BufferLayer::new(64))
        .layer(layer.clone())
        .layer(ConcurrencyLimitLayer::new(1))
        .service(support::client());
    let url = down.url("/down");
    let mut tasks = Vec::new();
    for i in 0..24u64 {
        let (svc, url) = (svc.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let give_up = Duration::from_millis(3 + 11 * i);
            tokio::time::timeout(give_up, svc.oneshot(support::get(&url)))
                .await
                .is_err()
        }));
    }
    let mut gave_up = 0;
    for t in tasks {
        gave_up += usize::from(t.await.unwrap());
    }
    assert!(gave_up > 0, "some callers gave up");
    let sent_before = layer.stats().retries;
    assert!(sent_before < ALLOWANCE, "{:?}", layer.stats());
    // Now spend what is left, well within the window.
    for _ in 0..ALLOWANCE {
        let res = svc.clone().oneshot(support::get(&url)).await.unwrap();
        assert_eq!(res.status(), 503);
    }
    let stats = layer.stats();
    assert_eq!(
        stats.retries, ALLOWANCE,
        "retries sent over one window, with {gave_up} callers giving up ({sent_before} sent \
         before): {stats:?}"
    );
    assert_eq!(per_call.resent.load(Relaxed), stats.retries);
    assert_eq!(per_call.retries.load(Relaxed), stats.retries);
    assert!(per_call.calls.load(Relaxed) > 0);
}

/// The warning that tells a user why a POST refused a connection is not resent — the one
/// message pointing at `WitnessLayer` — read as the merge left it: its line continuations were
/// lost, so it carried runs of spaces in the middle of sentences ("under              the
/// retry layer").
#[tokio::test]
async fn the_unwitnessed_warning_reads_as_one_sentence() {
    let _serial = SERIAL.lock().await;
    let (events, _guard) = events::capture();
    let layer = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(support::client());
    let url = format!("http://{}/orders", support::refused_addr());
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(support::request(http::Method::POST, &url))
        .await;
    assert!(res.is_err());
    assert_eq!(layer.stats().unwitnessed, 1, "{:?}", layer.stats());
    let warnings = events.at(tracing::Level::WARN);
    let message = warnings
        .iter()
        .filter_map(|e| e.get("message"))
        .find(|m| m.contains("WitnessLayer"))
        .unwrap_or_else(|| panic!("no warning names WitnessLayer: {warnings:?}"));
    assert!(!message.contains("  "), "{message:?}");
    assert!(
        message.contains("no WitnessLayer under the retry layer saw the request"),
        "{message:?}"
    );
}

/// A forwarding proxy (feature `axum`: "for axum servers that forward") hands on what its
/// server received: an origin-form URI (`/r`) and a `Host` field. The per-host budget and the
/// cache's hit event take the host from `Host` then; a resend's `server.address` said `-`.
#[tokio::test]
async fn a_resend_of_an_origin_form_request_names_the_host_of_its_host_field() {
    let _serial = SERIAL.lock().await;
    let (events, _guard) = events::capture();
    let server = TestServer::builder()
        .route(
            "/r",
            [Reply::status(503), Reply::status(502), Reply::ok("x")],
        )
        .start()
        .await;
    // The transport a proxy would use: the upstream named by `Host`, in absolute form.
    let client = support::client();
    let transport = tower::service_fn(
        move |mut req: http::Request<http_body_util::Empty<bytes::Bytes>>| {
            let host = req.headers()[http::header::HOST]
                .to_str()
                .unwrap()
                .to_owned();
            *req.uri_mut() = format!("http://{host}{}", req.uri()).parse().unwrap();
            client.request(req)
        },
    );
    let svc = ServiceBuilder::new()
        .layer(
            StatusAwareRetryLayer::builder()
                .backoff_base(Duration::from_millis(1))
                .build()
                .unwrap(),
        )
        .service(transport);
    let req = http::Request::builder()
        .uri("/r?id=7")
        .header(http::header::HOST, server.addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let resends: Vec<_> = events
        .at(tracing::Level::DEBUG)
        .into_iter()
        .filter(|e| e.get("message") == Some("http resend answered"))
        .collect();
    assert_eq!(resends.len(), 2, "{resends:?}");
    for e in &resends {
        assert_eq!(e.get("server.address"), Some("127.0.0.1"), "{e:?}");
        assert!(e.fields.values().all(|v| !v.contains("id=7")), "{e:?}");
    }
}

/// GUARANTEES: "A first-attempt success through the retry layer ... allocates nothing beyond
/// what the inner service allocates". A POST (retried only if provably unprocessed, the
/// default) carries a witness's ticket in its extensions: an `Arc` and the extensions' map,
/// allocated for every POST, answered or not. Measured per call against the inner service
/// alone, polled by hand (no runtime, no other thread).
#[test]
fn what_a_first_attempt_post_allocates_is_what_the_guarantee_says() {
    let _serial = SERIAL.blocking_lock();
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    use tower::Layer;

    fn per_call<S>(mut svc: S) -> u64
    where
        S: Service<http::Request<http_body_util::Full<bytes::Bytes>>>,
        S::Error: std::fmt::Debug,
    {
        let mut cx = Context::from_waker(Waker::noop());
        let mut once = || {
            let mut req =
                http::Request::new(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")));
            *req.method_mut() = http::Method::POST;
            *req.uri_mut() = http::Uri::from_static("http://records.internal/orders");
            assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            let mut fut = std::pin::pin!(svc.call(req));
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(res) => drop(res.unwrap()),
                Poll::Pending => panic!("the origin answers at once"),
            }
        };
        once(); // the host's budget is made at its first request
        let before = live::count();
        for _ in 0..100 {
            once();
        }
        (live::count() - before) / 100
    }
    let origin = || {
        tower::service_fn(|_req: http::Request<http_body_util::Full<bytes::Bytes>>| {
            std::future::ready(Ok::<_, std::convert::Infallible>(http::Response::new(
                http_body_util::Empty::<bytes::Bytes>::new(),
            )))
        })
    };
    let inner = per_call(origin());
    let retry = per_call(StatusAwareRetryLayer::new().layer(origin()));
    let guarantees = include_str!("../GUARANTEES.md");
    let row = guarantees
        .lines()
        .find(|l| l.starts_with("| A first-attempt success through the retry layer"))
        .expect("the row");
    if retry > inner {
        // Then the row must say what a POST costs.
        assert!(
            row.contains("POST") && row.contains(&format!("{} allocations", retry - inner)),
            "a first-attempt POST allocates {} more than the inner service ({inner}), and the \
             guarantee says: {row}",
            retry - inner
        );
    }
    // Without the ticket (no unprocessed retries), a POST costs nothing more.
    let no_ticket = per_call(
        StatusAwareRetryLayer::builder()
            .retry_unprocessed(false)
            .build()
            .unwrap()
            .layer(origin()),
    );
    assert_eq!(no_ticket, inner);
}

/// With `max_retries(0)` nothing is ever sent twice: a POST refused a connection is not "set
/// aside for want of a witness", and the warning telling the user to install a `WitnessLayer`
/// "to retry such requests" is wrong advice. It is given up like any request at
/// `max_retries(0)` (`gave_up`), and no ticket is issued (4 allocations a POST for nothing).
#[tokio::test]
async fn with_max_retries_0_a_post_is_neither_unwitnessed_nor_warned_about() {
    let _serial = SERIAL.lock().await;
    let (events, _guard) = events::capture();
    let layer = StatusAwareRetryLayer::builder()
        .max_retries(0)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(support::client());
    let url = format!("http://{}/orders", support::refused_addr());
    for method in [http::Method::POST, http::Method::GET] {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(support::request(method, &url))
            .await;
        assert!(res.is_err());
    }
    let stats = layer.stats();
    assert_eq!(stats.unwitnessed, 0, "{stats:?}");
    // The POST ends as the GET does.
    assert_eq!((stats.gave_up, stats.not_retried), (2, 0), "{stats:?}");
    let warned = events
        .at(tracing::Level::WARN)
        .into_iter()
        .filter(|e| e.get("message").is_some_and(|m| m.contains("WitnessLayer")))
        .count();
    assert_eq!(warned, 0);
}

/// A `Host` field may carry obs-text bytes (RFC 9110 §5.5; hyper's server passes them on), and
/// a proxy forwards it. Such a host got a budget of its own at its first request, but its name,
/// kept as lossy UTF-8, never matched the field again: every later request went to the
/// overflow budget, shared with every such host — a down one spent a healthy one's retries.
#[tokio::test]
async fn a_host_field_with_obs_text_keeps_its_own_budget() {
    let _serial = SERIAL.lock().await;
    let down = TestServer::always(Reply::status(503)).await;
    let healthy = TestServer::builder().start().await;
    for i in 0..10 {
        healthy.push(&format!("/r/{i}"), Reply::status(503));
    }
    // The transport: the upstream named after the field's last byte, in absolute form.
    let client = support::client();
    let (down_addr, healthy_addr) = (down.addr, healthy.addr);
    let transport = tower::service_fn(
        move |mut req: http::Request<http_body_util::Empty<bytes::Bytes>>| {
            let to = if req.headers()[http::header::HOST]
                .as_bytes()
                .ends_with(b"\xe9d")
            {
                down_addr
            } else {
                healthy_addr
            };
            *req.uri_mut() = format!("http://{to}{}", req.uri()).parse().unwrap();
            client.request(req)
        },
    );
    // No ratio, 1 retry a second over 10 s: 10 retries per host.
    let layer = StatusAwareRetryLayer::builder()
        .max_retries(1)
        .backoff_base(Duration::from_millis(1))
        .budget_ratio(0.0)
        .budget_min_per_sec(1)
        .budget_window(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(transport);
    let get = |host: &'static [u8], path: String| {
        http::Request::builder()
            .uri(path)
            .header(
                http::header::HOST,
                http::HeaderValue::from_bytes(host).unwrap(),
            )
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    // The healthy host is seen first, then the down one spends its own budget (and more).
    svc.ready()
        .await
        .unwrap()
        .call(get(b"caf\xe9h", "/warm".into()))
        .await
        .unwrap();
    for _ in 0..30 {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(get(b"caf\xe9d", "/down".into()))
            .await
            .unwrap();
        assert_eq!(res.status(), 503);
    }
    let mut retried = 0;
    for i in 0..10 {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(get(b"caf\xe9h", format!("/r/{i}")))
            .await
            .unwrap();
        retried += usize::from(res.status() == 200);
    }
    assert_eq!(
        retried,
        10,
        "the healthy host's retries: {:?} {:?}",
        layer.stats(),
        layer.budget_exhausted_scopes()
    );
}
