//! Adversarial review of the hot-path performance work (b30779c..69ea3c3): the shared key hash,
//! the version tickets without `Arc`, the per-service memo of the last hit, the strong scope
//! memory of the retry budgets. Each test states what must hold.

// A global allocator (to measure what a panicking inner `call` leaves behind) can't be
// written without `unsafe`: the crate denies it, this file allows it.
#![allow(unsafe_code)]

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::cache::{BypassNegativeCache, Credentials, NegativeCacheHit};

type Req = Request<Full<Bytes>>;
type Res = Response<Full<Bytes>>;

/// An in-process origin: answers each path with the status set for it (404 by default), body
/// "gone" on a 404/410, and counts the calls per (method, path).
#[derive(Clone, Default)]
struct Origin {
    status: Arc<Mutex<HashMap<String, u16>>>,
    calls: Arc<Mutex<HashMap<(Method, String), usize>>>,
    total: Arc<AtomicUsize>,
}

impl Origin {
    fn set(&self, path: &str, status: u16) {
        self.status.lock().unwrap().insert(path.to_owned(), status);
    }
    fn calls(&self) -> usize {
        self.total.load(SeqCst)
    }
    fn service(
        &self,
    ) -> impl Service<Req, Response = Res, Error = Infallible, Future = impl Send> + Clone + Send
    {
        let o = self.clone();
        tower::service_fn(move |req: Req| {
            let o = o.clone();
            async move {
                let path = req.uri().path().to_owned();
                o.total.fetch_add(1, SeqCst);
                *o.calls
                    .lock()
                    .unwrap()
                    .entry((req.method().clone(), path.clone()))
                    .or_default() += 1;
                let status = if req.method() == Method::GET || req.method() == Method::HEAD {
                    *o.status.lock().unwrap().get(&path).unwrap_or(&404)
                } else {
                    201
                };
                let body = if matches!(status, 404 | 410) && req.method() != Method::HEAD {
                    Bytes::from_static(b"gone")
                } else {
                    Bytes::new()
                };
                let mut res = Response::new(Full::new(body));
                *res.status_mut() = StatusCode::from_u16(status).unwrap();
                Ok::<_, Infallible>(res)
            }
        })
    }
}

fn req(method: Method, uri: &str) -> Req {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn get(uri: &str) -> Req {
    req(Method::GET, uri)
}

fn get_with(uri: &str, headers: &[(&str, &str)]) -> Req {
    let mut r = get(uri);
    for (n, v) in headers {
        r.headers_mut().append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    r
}

/// Sends `r` through `svc` (the same instance: its memo), reads the body whole; the status,
/// whether the cache answered, and the body.
async fn send<S, B>(svc: &mut S, r: Req) -> (StatusCode, bool, Bytes)
where
    S: Service<Req, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let res = svc.ready().await.unwrap().call(r).await.unwrap();
    let hit = res.extensions().get::<NegativeCacheHit>().is_some();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, hit, body)
}

/// A 404 remembered and then hit twice through `svc` (the second hit from its memo).
async fn remember_and_memo<S, B>(svc: &mut S, o: &Origin, uri: &str)
where
    S: Service<Req, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    assert_eq!(send(svc, get(uri)).await.0, 404);
    let before = o.calls();
    for _ in 0..3 {
        let (status, hit, _) = send(svc, get(uri)).await;
        assert!(hit && status == 404, "a hit");
    }
    assert_eq!(o.calls(), before, "hits call nothing");
}

// ---------------------------------------------------------------------------------------------
// The memo: never serves what the store would not
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_memo_is_dropped_by_every_handle_invalidation() {
    let o = Origin::default();
    let layer = NegativeCacheLayer::new();
    let handle = layer.handle();
    let mut svc = layer.layer(o.service());
    let uri = "http://h.test/a";
    type Forget = (&'static str, Box<dyn Fn()>);
    let forgets: [Forget; 4] = [
        ("invalidate", {
            let h = handle.clone();
            Box::new(move || assert!(h.invalidate("http://h.test/a")))
        }),
        ("invalidate_uri", {
            let h = handle.clone();
            Box::new(move || assert!(h.invalidate_uri(&"HTTP://H.TEST:80/a".parse().unwrap())))
        }),
        ("invalidate_if", {
            let h = handle.clone();
            Box::new(move || assert_eq!(h.invalidate_if(|k| k.ends_with("/a")), 1))
        }),
        ("clear", {
            let h = handle.clone();
            Box::new(move || assert_eq!(h.clear(), 1))
        }),
    ];
    for (name, forget) in forgets {
        remember_and_memo(&mut svc, &o, uri).await;
        forget();
        assert!(handle.peek(&uri.parse().unwrap()).is_none(), "{name}");
        let before = o.calls();
        let (_, hit, _) = send(&mut svc, get(uri)).await;
        assert!(!hit, "after {name}, the memo served the forgotten 404");
        assert_eq!(o.calls(), before + 1, "{name}");
    }
}

#[tokio::test]
async fn a_memo_is_dropped_by_a_write_or_a_2xx_through_another_clone() {
    let o = Origin::default();
    let layer = NegativeCacheLayer::new();
    let mut a = layer.layer(o.service());
    let mut b = a.clone();
    let uri = "http://h.test/w";
    // A successful write through another clone.
    remember_and_memo(&mut a, &o, uri).await;
    let (status, _, _) = send(&mut b, req(Method::PUT, uri)).await;
    assert_eq!(status, 201);
    let (_, hit, _) = send(&mut a, get(uri)).await;
    assert!(!hit, "the memo outlived a write through another clone");
    // A 2xx of the same key through another clone (its request refreshes: `no-cache`).
    remember_and_memo(&mut a, &o, uri).await;
    o.set("/w", 200);
    let (status, hit, _) = send(&mut b, get_with(uri, &[("cache-control", "no-cache")])).await;
    assert!(status == 200 && !hit);
    let (status, hit, _) = send(&mut a, get(uri)).await;
    assert!(
        status == 200 && !hit,
        "the memo outlived a 2xx through another clone"
    );
    // A 2xx through another clone that refreshes with `max-age=0`.
    o.set("/w", 404);
    remember_and_memo(&mut a, &o, uri).await;
    o.set("/w", 200);
    let (status, hit, _) = send(&mut b, get_with(uri, &[("cache-control", "max-age=0")])).await;
    assert!(status == 200 && !hit);
    assert!(!send(&mut a, get(uri)).await.1);
}

#[tokio::test(start_paused = true)]
async fn a_memo_expires_with_its_entry_and_follows_the_requests_directives() {
    let o = Origin::default();
    let layer = NegativeCacheLayer::builder()
        .ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut svc = layer.layer(o.service());
    let uri = "http://h.test/e";
    remember_and_memo(&mut svc, &o, uri).await;
    tokio::time::advance(Duration::from_secs(6)).await;
    // Too old for max-age=5, too close to its end for min-fresh=5: upstream, not the memo.
    for cc in ["max-age=5", "min-fresh=5", "no-cache", "max-age=0"] {
        remember_and_memo(&mut svc, &o, uri).await;
        tokio::time::advance(Duration::from_secs(6)).await;
        let before = o.calls();
        let (_, hit, _) = send(&mut svc, get_with(uri, &[("cache-control", cc)])).await;
        assert!(!hit, "{cc}: the memo answered");
        assert_eq!(o.calls(), before + 1, "{cc}");
        // The refresh stored a new entry (404 again): wait for it to be older.
    }
    // only-if-cached: the memo's entry, while fresh.
    remember_and_memo(&mut svc, &o, uri).await;
    let (status, hit, _) = send(
        &mut svc,
        get_with(uri, &[("cache-control", "only-if-cached")]),
    )
    .await;
    assert!(status == 404 && hit);
    // Expired: neither the memo nor the store answers.
    tokio::time::advance(Duration::from_secs(10)).await;
    let before = o.calls();
    let (_, hit, _) = send(&mut svc, get(uri)).await;
    assert!(!hit, "the memo outlived its entry");
    assert_eq!(o.calls(), before + 1);
    // BypassNegativeCache goes upstream past a memo.
    remember_and_memo(&mut svc, &o, uri).await;
    let mut r = get(uri);
    r.extensions_mut().insert(BypassNegativeCache);
    let before = o.calls();
    assert!(!send(&mut svc, r).await.1);
    assert_eq!(o.calls(), before + 1);
}

#[tokio::test]
async fn a_memo_is_of_one_host_one_credential_one_partition() {
    let o = Origin::default();
    // Origin-form targets keyed by their Host.
    let layer = NegativeCacheLayer::new();
    let mut svc = layer.layer(o.service());
    let h1 = get_with("/p", &[("host", "one.test")]);
    assert!(!send(&mut svc, h1).await.1);
    for _ in 0..2 {
        assert!(
            send(&mut svc, get_with("/p", &[("host", "one.test")]))
                .await
                .1
        );
    }
    let (_, hit, _) = send(&mut svc, get_with("/p", &[("host", "two.test")])).await;
    assert!(!hit, "another Host got the memo's entry");
    // Credentials bypassed by default, whatever the memo.
    let mut svc = NegativeCacheLayer::new().layer(o.service());
    remember_and_memo(&mut svc, &o, "http://h.test/c").await;
    for cred in [("authorization", "Bearer x"), ("cookie", "s=1")] {
        assert!(!send(&mut svc, get_with("http://h.test/c", &[cred])).await.1);
    }
    assert!(!send(&mut svc, get("http://u:p@h.test/c")).await.1);
    // Fingerprinted: one credential's entry is not another's.
    let layer = NegativeCacheLayer::builder()
        .credentials(Credentials::Fingerprint)
        .build()
        .unwrap();
    let mut svc = layer.layer(o.service());
    let alice = [("authorization", "Bearer alice")];
    assert!(!send(&mut svc, get_with("http://h.test/f", &alice)).await.1);
    assert!(send(&mut svc, get_with("http://h.test/f", &alice)).await.1);
    assert!(send(&mut svc, get_with("http://h.test/f", &alice)).await.1);
    let bob = [("authorization", "Bearer bob")];
    assert!(
        !send(&mut svc, get_with("http://h.test/f", &bob)).await.1,
        "bob got alice's"
    );
    assert!(
        !send(&mut svc, get("http://h.test/f")).await.1,
        "none got alice's"
    );
    assert!(!send(&mut svc, get("http://bob:pw@h.test/f")).await.1);
    // Partitions: one partition's memo is not another's, and a write through either forgets.
    let layer = NegativeCacheLayer::new();
    let mut p1 = layer.partition("one").layer(o.service());
    let mut p2 = layer.partition("two").layer(o.service());
    remember_and_memo(&mut p1, &o, "http://h.test/part").await;
    assert!(!send(&mut p2, get("http://h.test/part")).await.1);
    assert!(send(&mut p1, get("http://h.test/part")).await.1);
    assert_eq!(
        send(&mut p2, req(Method::DELETE, "http://h.test/part"))
            .await
            .0,
        201
    );
    assert!(
        !send(&mut p1, get("http://h.test/part")).await.1,
        "a write through p2"
    );
}

#[tokio::test]
async fn a_memo_answers_head_and_get_each_their_own_way() {
    let o = Origin::default();
    let mut svc = NegativeCacheLayer::new().layer(o.service());
    let uri = "http://h.test/hg";
    remember_and_memo(&mut svc, &o, uri).await;
    let (status, hit, body) = send(&mut svc, req(Method::HEAD, uri)).await;
    assert!(status == 404 && hit && body.is_empty(), "HEAD: {body:?}");
    let (status, hit, body) = send(&mut svc, get(uri)).await;
    assert!(
        status == 404 && hit && &body[..] == b"gone",
        "GET: {body:?}"
    );
    // With coalescing on too.
    let layer = NegativeCacheLayer::builder()
        .coalesce(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(o.service());
    remember_and_memo(&mut svc, &o, uri).await;
    assert!(handle.invalidate(uri));
    assert!(!send(&mut svc, get(uri)).await.1);
}

/// Every spelling of one target is one key: stored through one spelling, hit (and memoised)
/// through another, forgotten through a third, and the memo of each spelling forgets too.
#[tokio::test]
async fn every_spelling_of_a_target_is_one_key_for_store_memo_and_invalidation() {
    let o = Origin::default();
    let layer = NegativeCacheLayer::new();
    let handle = layer.handle();
    let mut svc = layer.layer(o.service());
    let families: &[&[&str]] = &[
        &[
            "http://h.test/~ann/x?q=1",
            "HTTP://H.TEST:80/%7eann/x?q=1",
            "http://h.TEST/%7Eann/x?q=1",
        ],
        &[
            "https://h.test/a",
            "https://H.test:443/a",
            "HTTPS://h.test:443/a",
        ],
        &[
            "http://h.test:8080/a",
            "http://H.TEST:8080/a",
            "http://u:p@h.test:8080/a",
        ],
        &["http://[::1]:8080/v6", "http://[::1]:8080/v6"],
        &["http://[::1]/v6", "http://[::1]:80/v6"],
        &["http://h.test/caf%C3%A9", "http://h.test/caf%c3%a9"],
    ];
    for family in families {
        let before = o.calls();
        // The userinfo spelling is a credential (bypassed): skipped for hits.
        let plain: Vec<&str> = family
            .iter()
            .copied()
            .filter(|u| !u.contains('@'))
            .collect();
        assert!(!send(&mut svc, get(plain[0])).await.1);
        for u in &plain {
            for _ in 0..2 {
                assert!(send(&mut svc, get(u)).await.1, "{u} missed {}", plain[0]);
            }
        }
        assert_eq!(o.calls(), before + 1, "{family:?}");
        // Invalidated through the last spelling (a handle takes it as text, normalised).
        let last = family.last().unwrap();
        let last = last.replace("u:p@", "");
        assert!(
            handle.invalidate_uri(&last.parse::<Uri>().unwrap()),
            "{last} did not name {}",
            plain[0]
        );
        // The service's memo is of the spelling it hit last.
        let memo = plain.last().unwrap();
        assert!(
            !send(&mut svc, get(memo)).await.1,
            "{memo} after the invalidation"
        );
        handle.clear();
        // The key is not another port's, scheme's or host's.
        assert!(!send(&mut svc, get(plain[0])).await.1);
        for other in [
            plain[0].replacen("h.test", "h.test:81", 1),
            plain[0].replacen("http://", "https://", 1),
            plain[0].replacen("h.test", "i.test", 1),
        ] {
            if other != plain[0] && other.parse::<Uri>().is_ok() {
                assert!(
                    !send(&mut svc, get(&other)).await.1,
                    "{other} hit {}",
                    plain[0]
                );
            }
        }
        handle.clear();
    }
}

#[tokio::test]
async fn a_memo_under_a_key_function_forgets_with_its_id() {
    let o = Origin::default();
    let layer = NegativeCacheLayer::builder()
        .key_fn(|u: &Uri| {
            u.path()
                .strip_prefix("/users/")
                .map(|id| format!("user:{id}"))
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(o.service());
    remember_and_memo(&mut svc, &o, "http://h.test/users/7").await;
    assert!(
        send(&mut svc, get("http://other.test/users/7")).await.1,
        "one id"
    );
    assert!(handle.invalidate("user:7"));
    assert!(!send(&mut svc, get("http://h.test/users/7")).await.1);
}

/// The ordering argument, under real threads: once an invalidation has returned (and told the
/// reader so), the reader's next request must not be answered from its memo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_invalidation_returns_no_memo_answers_on_another_thread() {
    const ROUNDS: usize = 3_000;
    let o = Origin::default();
    let layer = NegativeCacheLayer::new();
    let handle = layer.handle();
    let mut svc = layer.layer(o.service());
    let uri = "http://h.test/race";
    let origin = o.clone();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let writer = std::thread::spawn(move || {
        while go_rx.recv().is_ok() {
            // Let the reader hit from its memo meanwhile.
            for _ in 0..50 {
                std::hint::spin_loop();
            }
            // The key answers present from now on, and is invalidated: no 404 may be served
            // after this (one in flight across it is not remembered: the version tickets).
            origin.set("/race", 200);
            handle.invalidate(uri);
            done_tx.send(()).unwrap();
        }
    });
    let mut stale = 0;
    for _ in 0..ROUNDS {
        o.set("/race", 404);
        send(&mut svc, get(uri)).await;
        assert!(send(&mut svc, get(uri)).await.1, "remembered");
        go_tx.send(()).unwrap();
        // Hits (from the memo) while the invalidation runs on the other thread.
        loop {
            tokio::select! {
                biased;
                _ = done_rx.recv() => break,
                r = send(&mut svc, get(uri)) => {
                    let _ = r;
                    tokio::task::yield_now().await;
                }
            }
        }
        if send(&mut svc, get(uri)).await.1 {
            stale += 1;
        }
    }
    drop(go_tx);
    writer.join().unwrap();
    assert_eq!(
        stale, 0,
        "of {ROUNDS} rounds, the memo answered after the invalidation"
    );
}

// ---------------------------------------------------------------------------------------------
// Version tickets: every path settles or abandons
// ---------------------------------------------------------------------------------------------

/// Bytes allocated and not yet freed by the current thread (a counting global allocator).
mod live {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
    }

    pub(crate) struct Counting;

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = LIVE.try_with(|l| l.set(l.get() + layout.size() as isize));
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            let _ = LIVE.try_with(|l| l.set(l.get() - layout.size() as isize));
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
            let _ = LIVE.try_with(|l| l.set(l.get() + new as isize - layout.size() as isize));
            unsafe { System.realloc(ptr, layout, new) }
        }
    }

    pub(crate) fn bytes() -> isize {
        LIVE.with(|l| l.get())
    }
}

#[global_allocator]
static ALLOC: live::Counting = live::Counting;

/// A read's ticket is taken before the inner service's `call`; an inner service whose `call`
/// panics (caught: a server's catch-panic layer, a tokio task) unwinds through the `Pending`
/// holding it. Before 32879ef the ticket's `Drop` released its slot; now the slot of every
/// such key stays in `Versions` for the life of the cache: memory that grows with the number
/// of distinct keys whose call ever panicked (a crawler over a buggy route), "reads in flight"
/// that are in flight forever.
#[test]
fn a_panicking_inner_call_leaves_no_read_in_flight_behind() {
    const KEYS: usize = 20_000;
    let layer = NegativeCacheLayer::new();
    let inner = tower::service_fn(|req: Req| {
        if req.uri().path().starts_with("/boom/") {
            panic!("the inner service's call panics");
        }
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
    });
    let mut svc = layer.layer(inner);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut call = |i: usize| {
        let r = get(&format!("http://h.test/boom/{i}"));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            drop(svc.call(r));
        }));
        assert!(caught.is_err());
    };
    // Warm up what allocates once.
    for i in 0..200 {
        call(i);
    }
    let before = live::bytes();
    for i in 200..200 + KEYS {
        call(i);
    }
    let held = live::bytes() - before;
    std::panic::set_hook(hook);
    assert!(
        held < 64 << 10,
        "{KEYS} reads whose inner call panicked keep {held} bytes alive in the cache"
    );
}

// ---------------------------------------------------------------------------------------------
// Retry budgets: holds go back to zero however a future ends
// ---------------------------------------------------------------------------------------------

/// A request that decided a retry holds its host's scope until its future is dropped: dropped
/// during the backoff, during readiness, or after its answer, the scope must be forgettable
/// again once idle for a window — else `budget_max_scopes` fills with scopes held by nobody
/// and every new host shares the overflow budget forever.
#[tokio::test(start_paused = true)]
async fn a_dropped_retry_future_releases_its_scope_at_every_await_point() {
    use std::future::Future;
    use std::task::{Context, Poll};
    use tower_negative_cache::StatusAwareRetryLayer;

    let layer = StatusAwareRetryLayer::builder()
        .max_retries(1)
        .backoff_base(Duration::from_millis(10))
        .budget_max_scopes(1)
        .budget_ratio(0.0)
        .budget_min_per_sec(1)
        .budget_window(Duration::from_secs(10))
        .build()
        .unwrap();
    // Always 503; with `stall`, never ready again after its first call (a retry waits in
    // `poll_ready`).
    #[derive(Clone)]
    struct Down {
        calls: Arc<AtomicUsize>,
        stall: bool,
    }
    impl Service<Req> for Down {
        type Response = Res;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Res, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            if self.stall && self.calls.load(SeqCst) > 0 {
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Req) -> Self::Future {
            self.calls.fetch_add(1, SeqCst);
            let mut res = Response::new(Full::new(Bytes::new()));
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            std::future::ready(Ok(res))
        }
    }
    let waker = std::task::Waker::noop();
    // 0: dropped during the backoff; 1: during readiness; 2: after its answer.
    for case in 0..3 {
        let down = Down {
            calls: Arc::new(AtomicUsize::new(0)),
            stall: case == 1,
        };
        let mut svc = layer.layer(down.clone());
        let url = format!("http://held{case}.test/x");
        {
            let mut fut = Box::pin(svc.ready().await.unwrap().call(get(&url)));
            let mut cx = Context::from_waker(waker);
            match case {
                0 => assert!(fut.as_mut().poll(&mut cx).is_pending(), "in the backoff"),
                1 => {
                    assert!(fut.as_mut().poll(&mut cx).is_pending());
                    tokio::time::advance(Duration::from_secs(5)).await;
                    assert!(
                        fut.as_mut().poll(&mut cx).is_pending(),
                        "waiting to be ready"
                    );
                    assert_eq!(down.calls.load(SeqCst), 1);
                }
                _ => {
                    let res = fut.as_mut().await.unwrap();
                    assert_eq!(res.status(), 503);
                }
            }
        }
        drop(svc);
        // Idle for more than a window: a new host must get the only place.
        tokio::time::advance(Duration::from_secs(25)).await;
        let other = format!("http://other{case}.test/x");
        let mut client = layer.layer(Down {
            calls: Arc::new(AtomicUsize::new(0)),
            stall: false,
        });
        // 10 retries in its budget: the 11th and 12th are refused, counted by scope name.
        for _ in 0..12 {
            let _ = client.ready().await.unwrap().call(get(&other)).await;
        }
        let names: Vec<String> = layer
            .budget_exhausted_scopes()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert!(
            names.iter().any(|n| *n == format!("other{case}.test")),
            "{:?}",
            layer.stats()
        );
        assert!(
            names.iter().any(|n| *n == format!("other{case}.test")),
            "case {case}: the new host did not get the place left by the dropped future: {names:?}"
        );
        assert!(
            !names.iter().any(|n| n == "(overflow)"),
            "case {case}: {names:?}"
        );
        tokio::time::advance(Duration::from_secs(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Version tickets: the latest answer wins with many keys in flight (past the 2 inline slots of
// a shard), and whatever spelling the change used
// ---------------------------------------------------------------------------------------------

type Call = (Method, String, tokio::sync::oneshot::Sender<Res>);

/// An origin that parks every call until the test answers it.
fn parking() -> (
    impl Service<Req, Response = Res, Error = Infallible, Future = impl Send> + Clone + Send + 'static,
    tokio::sync::mpsc::UnboundedReceiver<Call>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Call>();
    let svc = tower::service_fn(move |req: Req| {
        let tx = tx.clone();
        async move {
            let (s, r) = tokio::sync::oneshot::channel();
            tx.send((req.method().clone(), req.uri().path().to_owned(), s))
                .unwrap();
            Ok::<_, Infallible>(r.await.unwrap())
        }
    });
    (svc, rx)
}

fn status(code: u16) -> Res {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::from_u16(code).unwrap();
    res
}

#[tokio::test]
async fn with_hundreds_of_keys_in_flight_no_404_outlives_a_change_that_landed_after_it_left() {
    const N: usize = 600;
    let (origin, mut calls) = parking();
    let layer = NegativeCacheLayer::new();
    let handle = layer.handle();
    let svc = layer.layer(origin);
    let spawn = |r: Req| {
        let svc = svc.clone();
        tokio::spawn(async move { svc.oneshot(r).await.unwrap().status() })
    };
    // Every key's spelling on the request: plain (a borrowed lookup).
    let uri = |i: usize| format!("http://h.test/~k/{i}");
    // The spelling the change uses: another one of the same target (an owned key).
    let other = |i: usize| format!("HTTP://H.TEST:80/%7Ek/{i}");
    let mut recv = async |n: usize| {
        let mut got = HashMap::new();
        for _ in 0..n {
            let (m, p, s) = calls.recv().await.unwrap();
            got.insert((m, p), s);
        }
        got
    };
    // 1. A read of every key leaves.
    let first: Vec<_> = (0..N).map(|i| spawn(get(&uri(i)))).collect();
    let mut a = recv(N).await;
    // 2. The even keys' reads land 404 (remembered): their slots free up, the odd keys' reads
    //    stay in flight, some of them in a shard's map past its inline slots.
    for i in (0..N).step_by(2) {
        let s = a.remove(&(Method::GET, format!("/~k/{i}"))).unwrap();
        s.send(status(404)).unwrap();
    }
    for i in (0..N).step_by(2) {
        tokio::task::yield_now().await;
        let _ = i;
    }
    // 3. A second read of every odd key leaves (joins its key's slot, wherever it is).
    let second: Vec<_> = (1..N).step_by(2).map(|i| spawn(get(&uri(i)))).collect();
    let mut b = recv(N / 2).await;
    // 4. Every odd key changes: a write through the cache (another spelling), or a handle
    //    invalidation (another spelling).
    let mut writes = Vec::new();
    for i in (1..N).step_by(2) {
        if i % 4 == 1 {
            writes.push(spawn(req(Method::PUT, &other(i))));
        } else {
            handle.invalidate_uri(&other(i).parse().unwrap());
        }
    }
    let mut w = recv(writes.len()).await;
    for (_, s) in w.drain() {
        s.send(status(201)).unwrap();
    }
    for t in writes {
        assert_eq!(t.await.unwrap(), 201);
    }
    // 5. Both reads of every odd key land 404, in either order: both left before the change.
    for i in (1..N).step_by(2) {
        let (x, y) = (
            a.remove(&(Method::GET, format!("/~k/{i}"))).unwrap(),
            b.remove(&(Method::GET, format!("/~k/{i}"))).unwrap(),
        );
        if i % 3 == 0 {
            x.send(status(404)).unwrap();
            y.send(status(404)).unwrap();
        } else {
            y.send(status(404)).unwrap();
            x.send(status(404)).unwrap();
        }
    }
    for t in first.into_iter().chain(second) {
        assert_eq!(t.await.unwrap(), 404);
    }
    let kept: Vec<usize> = (0..N)
        .filter(|i| handle.peek(&uri(*i).parse().unwrap()).is_some())
        .collect();
    let wrong: Vec<_> = kept.iter().filter(|i| *i % 2 == 1).collect();
    assert!(
        wrong.is_empty(),
        "404s that left before their key changed were kept: {wrong:?}"
    );
    assert_eq!(kept.len(), N / 2, "the even keys' 404s are kept");
    // 6. And a read that leaves after the change is remembered again (the slots were freed).
    let third: Vec<_> = (1..N).step_by(2).map(|i| spawn(get(&uri(i)))).collect();
    let mut c = recv(N / 2).await;
    for (_, s) in c.drain() {
        s.send(status(404)).unwrap();
    }
    for t in third {
        assert_eq!(t.await.unwrap(), 404);
    }
    assert!((0..N).all(|i| handle.peek(&uri(i).parse().unwrap()).is_some()));
}

/// The memory table (src/lib.rs) puts a service's memo at "about 200 bytes", and
/// `NegativeCacheHandle::clear` empties the store. But the memo keeps its `Entry`, whose
/// answer (`Arc<Answer>`: header fields and a body up to `max_body_bytes`, 1 MiB at most) is
/// then held by the memo alone, outside `max_bytes`, until that service's next request. With
/// long-lived services (one per worker, per upstream, per connection), a clear — or the
/// eviction that `max_bytes` relies on — frees nothing they memoised.
#[tokio::test]
async fn a_clear_frees_the_bodies_the_services_memoised() {
    const SERVICES: usize = 40;
    const BODY: usize = 64 << 10;
    let layer = NegativeCacheLayer::builder()
        .max_body_bytes(BODY as u64)
        .capacity(1_000)
        .max_bytes(16 << 20)
        .build()
        .unwrap();
    let handle = layer.handle();
    let inner = tower::service_fn(|_req: Req| async {
        let mut res = Response::new(Full::new(Bytes::from(vec![b'x'; BODY])));
        *res.status_mut() = StatusCode::NOT_FOUND;
        Ok::<_, Infallible>(res)
    });
    let mut services: Vec<_> = (0..SERVICES).map(|_| layer.layer(inner)).collect();
    // Warm up what allocates once.
    {
        let mut s = layer.layer(inner);
        send(&mut s, get("http://h.test/warm")).await;
        send(&mut s, get("http://h.test/warm")).await;
        drop(s);
        handle.clear();
    }
    let before = live::bytes();
    for (i, s) in services.iter_mut().enumerate() {
        let uri = format!("http://h.test/big/{i}");
        let (_, hit, body) = send(s, get(&uri)).await;
        assert!(!hit && body.len() == BODY);
        let (_, hit, body) = send(s, get(&uri)).await;
        assert!(hit && body.len() == BODY, "the body is replayed");
    }
    assert_eq!(handle.clear(), SERVICES as u64);
    assert!(handle.memory_bytes() < 64 << 10, "the store is empty");
    let held = live::bytes() - before;
    // The services are still alive here (they are dropped below, which frees it all).
    assert_eq!(services.len(), SERVICES);
    assert!(
        held < 256 << 10,
        "after a clear, {SERVICES} idle services keep {held} bytes of cleared 404 bodies alive"
    );
    drop(services);
    assert!(live::bytes() - before < 64 << 10);
}
