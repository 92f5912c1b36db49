//! Heap allocations of a negative-cache hit, counted by a global allocator.
//!
//! The claim: looking a request up (key and store) allocates nothing; a hit costs only the
//! allocations of the synthesized answer itself (an `http::Response` with two headers and one
//! extension). The inner service is a mock (`tower::service_fn`), so only the layer is measured,
//! and futures are polled by hand with a no-op waker: no runtime, no other thread involved.
//!
//! Counting is per thread (a const-initialised thread-local `Cell`, which needs no allocation
//! and no destructor), so the test harness's other threads can't add to a measurement.

// A global allocator can't be written without `unsafe`: the crate denies it, this file allows it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::header::{AGE, CONTENT_LENGTH};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Empty;
use tower::{Layer, Service};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::cache::{Credentials, NegativeCacheHit};

// ---------------------------------------------------------------------------------------------
// The counting allocator
// ---------------------------------------------------------------------------------------------

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: the allocator may run while this thread's locals are being torn down.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting
// touches only a thread-local `Cell` and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// `f`'s result and how many allocations (and reallocations) it made on this thread.
fn allocations<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = ALLOCATIONS.with(Cell::get);
    let r = f();
    let after = ALLOCATIONS.with(Cell::get);
    (r, after - before)
}

// ---------------------------------------------------------------------------------------------
// The layer over a mock origin
// ---------------------------------------------------------------------------------------------

/// Allocations of a synthesized answer: the header map sized for its two headers (2 tables),
/// the extensions' map, its table and the boxed `NegativeCacheHit` (3). `Age` comes from a
/// static string for the first minute of an entry.
const SYNTHESIZED: u64 = 5;

const URI: &str = "http://records.internal/records/42?x=1";

type Req = Request<Empty<Bytes>>;

/// A service answering 404 to everything, and how many times it was called.
fn origin() -> (
    impl Service<Req, Response = Response<Empty<Bytes>>, Error = Infallible> + Clone,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = {
        let calls = calls.clone();
        tower::service_fn(move |_req: Req| {
            calls.fetch_add(1, SeqCst);
            std::future::ready(Ok::<_, Infallible>(
                Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Empty::new())
                    .unwrap(),
            ))
        })
    };
    (svc, calls)
}

fn ready_now<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the mock origin answers at once"),
    }
}

fn request(uri: &str, headers: &[(&str, &str)]) -> Req {
    let mut b = Request::get(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Empty::new()).unwrap()
}

/// Allocations of one hit, by stage: `poll_ready`, `call` (key, store lookup, future), `poll`
/// (the synthesized answer); and the hit's extension.
struct HitCost {
    ready: u64,
    call: u64,
    poll: u64,
    hit: NegativeCacheHit,
}

impl HitCost {
    fn total(&self) -> u64 {
        self.ready + self.call + self.poll
    }
}

fn hit_cost<S>(svc: &mut S, req: impl Fn() -> Req) -> HitCost
where
    S: Service<Req, Response = Response<tower_negative_cache::cache::ResponseBody<Empty<Bytes>>>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let req = req(); // Building the request (URI parsing) is the caller's cost, not the layer's.
    let (ready, ready_allocs) = allocations(|| svc.poll_ready(&mut cx));
    assert!(matches!(ready, Poll::Ready(Ok(()))));
    let (fut, call) = allocations(|| svc.call(req));
    let mut fut = pin!(fut);
    let (res, poll) = allocations(|| fut.as_mut().poll(&mut cx));
    let Poll::Ready(Ok(res)) = res else {
        panic!("a hit is answered at once")
    };
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let hit = *res
        .extensions()
        .get::<NegativeCacheHit>()
        .expect("a synthesized answer");
    HitCost {
        ready: ready_allocs,
        call,
        poll,
        hit,
    }
}

/// The synthesized answer built by hand: the same status, headers and extension.
fn synthesized_by_hand(hit: NegativeCacheHit) -> Response<()> {
    let mut res = Response::new(());
    *res.status_mut() = StatusCode::NOT_FOUND;
    let headers = res.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    headers.insert(AGE, HeaderValue::from(hit.age.as_secs()));
    res.extensions_mut().insert(hit);
    res
}

/// Which way a hit is answered: the store's lookup (a service's first request for the target),
/// or the service's memo of its last hit (the same request again).
#[derive(Clone, Copy, Debug)]
enum Path {
    Lookup,
    Memo,
}

fn primed(
    layer: NegativeCacheLayer,
    uri: &'static str,
    headers: &[(&str, &str)],
) -> (impl FnMut(Path) -> HitCost, u64) {
    let (origin, calls) = origin();
    let mut svc = layer.layer(origin);
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    let req = move || {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        request(uri, &h)
    };
    // The miss that stores the 404, then one hit to warm up whatever is lazily set up.
    let res = ready_now(tower::ServiceExt::oneshot(svc.clone(), req())).unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(calls.load(SeqCst), 1);
    let _ = hit_cost(&mut svc, &req);
    let baseline = {
        let hit = hit_cost(&mut svc, &req).hit;
        let (res, n) = allocations(|| synthesized_by_hand(hit));
        drop(res);
        n
    };
    let measure = move |path: Path| {
        let cost = match path {
            // A clone starts with no memo of its own: the store is looked up.
            Path::Lookup => hit_cost(&mut svc.clone(), &req),
            Path::Memo => hit_cost(&mut svc, &req),
        };
        assert_eq!(calls.load(SeqCst), 1, "a hit never calls the origin");
        cost
    };
    (measure, baseline)
}

#[test]
fn a_hit_allocates_only_the_synthesized_answer() {
    let (mut measure, baseline) = primed(NegativeCacheLayer::new(), URI, &[]);
    let cost = measure(Path::Lookup);
    println!(
        "hit path: {} allocations (poll_ready {}, call = key + store lookup + future {}, \
         poll = synthesized answer {}); the same Response built by hand: {baseline}",
        cost.total(),
        cost.ready,
        cost.call,
        cost.poll,
    );
    assert_eq!(cost.ready, 0, "poll_ready");
    assert_eq!(
        cost.call, 0,
        "key computation and store lookup must not allocate"
    );
    assert_eq!(cost.poll, SYNTHESIZED, "the synthesized answer");
    assert!(
        SYNTHESIZED < baseline,
        "cheaper than the same answer built the plain way ({baseline})"
    );
    assert_eq!(cost.total(), SYNTHESIZED);
    // Built the plain way (http 1.x): the header map's two tables, the `Age` value (itoa into
    // a `BytesMut`, then frozen), the extensions' map, its table and the boxed extension.
    assert!(baseline <= 8, "{baseline}");
    // Steady state: every hit costs the same, from the store or from the memo.
    for _ in 0..100 {
        assert_eq!(measure(Path::Lookup).total(), SYNTHESIZED);
        assert_eq!(measure(Path::Memo).total(), SYNTHESIZED);
    }
}

#[test]
fn fingerprinted_credentials_allocate_nothing_either() {
    let layer = NegativeCacheLayer::builder()
        .credentials(Credentials::Fingerprint)
        .build()
        .unwrap();
    let (mut measure, baseline) = primed(
        layer,
        URI,
        &[("authorization", "Bearer alice"), ("cookie", "a=1; b=2")],
    );
    let cost = measure(Path::Lookup);
    println!(
        "hit path with a fingerprinted Authorization + Cookie: {} allocations (call {}, poll {})",
        cost.total(),
        cost.call,
        cost.poll
    );
    assert_eq!((cost.ready, cost.call), (0, 0));
    assert_eq!(cost.poll, SYNTHESIZED, "baseline by hand: {baseline}");
}

#[test]
fn what_does_allocate_on_lookup() {
    // A key function allocates its key (documented on `Builder::key_fn`).
    let layer = NegativeCacheLayer::builder()
        .key_fn(|uri: &http::Uri| Some(uri.path().to_owned()))
        .build()
        .unwrap();
    let (mut measure, baseline) = primed(layer, URI, &[]);
    let cost = measure(Path::Lookup);
    println!(
        "hit path with a key_fn returning the path: call {} allocations, poll {}",
        cost.call, cost.poll
    );
    assert!(cost.call >= 1);
    assert_eq!(cost.poll, SYNTHESIZED, "baseline by hand: {baseline}");
}

#[test]
fn a_target_that_needs_normalising_is_copied() {
    // An upper-case host must be lower-cased into a new key before the lookup.
    let (mut measure, baseline) = primed(
        NegativeCacheLayer::new(),
        "http://Records.Internal/records/42?x=1",
        &[],
    );
    let cost = measure(Path::Lookup);
    println!(
        "hit path for an upper-case host: call {} allocations, poll {}",
        cost.call, cost.poll
    );
    assert!(cost.call >= 1);
    assert_eq!(cost.poll, SYNTHESIZED, "baseline by hand: {baseline}");
}

#[test]
fn a_percent_encoded_target_already_normal_is_not_copied() {
    // RFC 3986 §6.2.2: keys are percent-normalised; a target already in normal form (escapes
    // in upper-case hex, none of an unreserved character) is looked up where it lies.
    let (mut measure, baseline) = primed(
        NegativeCacheLayer::new(),
        "http://records.internal/r/caf%C3%A9?q=a%2Fb",
        &[],
    );
    let cost = measure(Path::Lookup);
    println!(
        "hit path for a normal percent-encoded target: call {} allocations, poll {}",
        cost.call, cost.poll
    );
    assert_eq!((cost.ready, cost.call), (0, 0));
    assert_eq!(cost.poll, SYNTHESIZED, "baseline by hand: {baseline}");
    // Lower-case hex or an escaped unreserved character must be rewritten: copied.
    for uri in [
        "http://records.internal/r/caf%c3%a9",
        "http://records.internal/users/%7Eann",
    ] {
        let (mut measure, _) = primed(NegativeCacheLayer::new(), uri, &[]);
        assert!(measure(Path::Lookup).call >= 1, "{uri}");
        assert_eq!(measure(Path::Memo).call, 0, "{uri}: the same request again");
    }
}
// ---------------------------------------------------------------------------------------------
// A first-attempt success through the retry layer, and through both layers
// ---------------------------------------------------------------------------------------------

/// An extension an inner service may leave on its answers (as hyper-util's client leaves
/// `HttpInfo`): the answer then comes with an extensions map already.
#[derive(Clone, Copy, Debug)]
struct InnerInfo(#[allow(dead_code, reason = "only its presence matters")] u64);

/// A service answering 200 to everything, with an `InnerInfo` extension if `tagged`.
fn origin_200(
    tagged: bool,
) -> impl Service<Req, Response = Response<Empty<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(move |_req: Req| {
        let mut res = Response::new(Empty::new());
        if tagged {
            res.extensions_mut().insert(InnerInfo(7));
        }
        std::future::ready(Ok::<_, Infallible>(res))
    })
}

/// Allocations of one full call (`poll_ready`, `call`, the future polled to its answer, and
/// the answer dropped) of `svc` with a request made by `req`, after warming up.
fn call_cost<S, B>(mut svc: S, req: impl Fn() -> Req) -> u64
where
    S: Service<Req, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let mut once = || {
        let mut cx = Context::from_waker(Waker::noop());
        // Building the request is the caller's cost, not the layer's.
        let req = req();
        let ((), n) = allocations(|| {
            assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            let res = ready_now(svc.call(req)).unwrap();
            drop(res);
        });
        n
    };
    for _ in 0..3 {
        once();
    }
    let n = once();
    for _ in 0..20 {
        assert_eq!(once(), n, "the same every call");
    }
    n
}

/// A `tower::retry` policy that never retries and copies each request, as ours does.
#[derive(Clone, Copy, Debug)]
struct CopyNoRetry;

impl<Res, E> tower::retry::Policy<Req, Res, E> for CopyNoRetry {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _: &mut Req, _: &mut Result<Res, E>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        let mut copy = Request::new(Empty::new());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.headers_mut() = req.headers().clone();
        Some(copy)
    }
}

#[test]
fn a_first_attempt_success_allocates_nothing_beyond_the_inner_service() {
    use tower_negative_cache::StatusAwareRetryLayer;
    // A URI that is not parsed per request (`Uri::from_static`): copying it for a replay
    // costs nothing, so anything counted here is the layers' own.
    let static_req = || {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = http::Uri::from_static(URI);
        req
    };
    for tagged in [false, true] {
        let inner = call_cost(origin_200(tagged), static_req);
        let retry = call_cost(
            StatusAwareRetryLayer::new().layer(origin_200(tagged)),
            static_req,
        );
        let both = call_cost(
            NegativeCacheLayer::new().layer(StatusAwareRetryLayer::new().layer(origin_200(tagged))),
            static_req,
        );
        println!("inner extension {tagged}: inner {inner}, retry layer {retry}, both {both}");
        assert_eq!(retry, inner, "retry layer, inner extension: {tagged}");
        assert_eq!(both, inner, "both layers, inner extension: {tagged}");
    }
}

#[test]
fn a_parsed_uri_costs_the_copy_tower_retry_makes_too() {
    use tower_negative_cache::StatusAwareRetryLayer;
    // A URI parsed per request: its first copy moves its bytes to a shared buffer (one
    // allocation), which any retry mechanism that keeps a copy pays: `tower::retry` too.
    let parsed_req = || request(URI, &[]);
    let inner = call_cost(origin_200(false), parsed_req);
    let tower_retry = call_cost(
        tower::retry::Retry::new(CopyNoRetry, origin_200(false)),
        parsed_req,
    );
    let retry = call_cost(
        StatusAwareRetryLayer::new().layer(origin_200(false)),
        parsed_req,
    );
    let both = call_cost(
        NegativeCacheLayer::new().layer(StatusAwareRetryLayer::new().layer(origin_200(false))),
        parsed_req,
    );
    println!("parsed URI: inner {inner}, tower::retry {tower_retry}, retry {retry}, both {both}");
    assert_eq!(retry, tower_retry);
    assert_eq!(both, tower_retry);
}
