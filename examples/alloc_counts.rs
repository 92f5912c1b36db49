//! Heap allocations per call through each layer, and heap bytes per negative-cache entry,
//! counted by a global allocator.
//!
//! Run: `cargo run --release --example alloc_counts`
//!
//! This is an example rather than a criterion bench because a counting global allocator would
//! slow every allocation of a timed benchmark. The upstream is an in-process
//! `tower::service_fn` (as in `benches/passthrough.rs` and `benches/cache_hit.rs`), futures are
//! driven by a current-thread tokio runtime (no other thread allocates), and each figure is the
//! average over many calls after a warm-up, so one-off allocations (lazy statics, first-use
//! growth) do not count.
//!
//! Counted: every `alloc`, `alloc_zeroed` and `realloc` is one allocation; bytes are the sizes
//! requested (a `realloc` counts its new size), not what the system allocator rounds them up
//! to. Live heap is requested bytes allocated minus bytes freed.

// A global allocator can't be written without `unsafe`: the crate denies it, this file allows it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use http::header::{AGE, CONTENT_LENGTH};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::Empty;
use tokio::runtime::Runtime;
use tower::retry::{Policy, Retry};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_negative_cache::cache::NegativeCacheHit;
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

// ----- the counting allocator ---------------------------------------------------------------

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicI64 = AtomicI64::new(0);
/// The largest single block asked for since the last reset.
static LARGEST: AtomicU64 = AtomicU64::new(0);

fn counted(size: usize) {
    ALLOCATIONS.fetch_add(1, Relaxed);
    BYTES.fetch_add(size as u64, Relaxed);
    LIVE.fetch_add(size as i64, Relaxed);
    LARGEST.fetch_max(size as u64, Relaxed);
}

struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting
// touches only atomics and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted(new_size);
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Copy, Debug)]
struct Snapshot {
    allocations: u64,
    bytes: u64,
    live: i64,
}

fn snapshot() -> Snapshot {
    Snapshot {
        allocations: ALLOCATIONS.load(Relaxed),
        bytes: BYTES.load(Relaxed),
        live: LIVE.load(Relaxed),
    }
}

// ----- the services -------------------------------------------------------------------------

type Req = Request<Empty<Bytes>>;

const WARM_UP: u64 = 1_000;
const CALLS: u64 = 100_000;
const ENTRIES: u64 = 100_000;

fn request(uri: &Uri) -> Req {
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = uri.clone();
    req
}

/// An in-process upstream answering `status` with an empty body, at once.
fn upstream(
    status: StatusCode,
) -> impl Service<Req, Response = Response<Empty<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(move |_req: Req| {
        let mut res = Response::new(Empty::new());
        *res.status_mut() = status;
        ready(Ok::<_, Infallible>(res))
    })
}

/// A stand-in for [`NegativeCacheHit`] (which only the crate can build): same fields, same size.
#[derive(Clone, Copy, Debug)]
#[allow(
    dead_code,
    reason = "only its size and its place in the extensions matter"
)]
struct HitLike {
    age: std::time::Duration,
    remaining: std::time::Duration,
}

/// An in-process upstream answering what the negative cache synthesizes for a hit (a 404,
/// `content-length: 0`, an `Age`, an extension like [`NegativeCacheHit`]): the allocations a
/// hit can't avoid without changing its answer.
fn upstream_synthesized()
-> impl Service<Req, Response = Response<Empty<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(|_req: Req| {
        let mut res = Response::new(Empty::new());
        *res.status_mut() = StatusCode::NOT_FOUND;
        let headers = res.headers_mut();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        headers.insert(AGE, HeaderValue::from(black_box(0u64)));
        res.extensions_mut().insert(black_box(HitLike {
            age: std::time::Duration::ZERO,
            remaining: std::time::Duration::from_secs(60),
        }));
        ready(Ok::<_, Infallible>(res))
    })
}

/// A `tower::retry` policy that never retries, but copies each request as ours does.
#[derive(Clone, Copy, Debug)]
struct NoRetry;

impl<Res, E> Policy<Req, Res, E> for NoRetry {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, _result: &mut Result<Res, E>) -> Option<Ready<()>> {
        None
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        let mut copy = Request::new(Empty::new());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }
}

async fn calls<S, B>(svc: &mut S, uri: &Uri, n: u64)
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Debug,
{
    for _ in 0..n {
        let res = svc.ready().await.unwrap().call(request(uri)).await.unwrap();
        black_box(res);
    }
}

/// Average allocations and bytes per call of `svc`, after a warm-up, and the largest block.
fn per_call<S, B>(rt: &Runtime, mut svc: S) -> (f64, f64, u64)
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Debug,
{
    let uri = Uri::from_static("http://records.internal/records/42");
    rt.block_on(calls(&mut svc, &uri, WARM_UP));
    LARGEST.store(0, Relaxed);
    let before = snapshot();
    rt.block_on(calls(&mut svc, &uri, CALLS));
    let after = snapshot();
    (
        (after.allocations - before.allocations) as f64 / CALLS as f64,
        (after.bytes - before.bytes) as f64 / CALLS as f64,
        LARGEST.load(Relaxed),
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ok = StatusCode::OK;

    let hit_cache = NegativeCacheLayer::new();
    let hit_svc = ServiceBuilder::new()
        .layer(hit_cache.clone())
        .service(upstream(StatusCode::NOT_FOUND));
    let rows = [
        ("bare service_fn (200)", per_call(&rt, upstream(ok))),
        (
            "tower::retry no-op (200)",
            per_call(&rt, Retry::new(NoRetry, upstream(ok))),
        ),
        (
            "ours: retry (200)",
            per_call(
                &rt,
                ServiceBuilder::new()
                    .layer(StatusAwareRetryLayer::new())
                    .service(upstream(ok)),
            ),
        ),
        (
            "ours: negative cache miss (200)",
            per_call(
                &rt,
                ServiceBuilder::new()
                    .layer(NegativeCacheLayer::new())
                    .service(upstream(ok)),
            ),
        ),
        (
            "ours: both layers (200)",
            per_call(
                &rt,
                ServiceBuilder::new()
                    .layer(NegativeCacheLayer::new())
                    .layer(StatusAwareRetryLayer::new())
                    .service(upstream(ok)),
            ),
        ),
        ("ours: negative cache hit (404)", per_call(&rt, hit_svc)),
        (
            "bare service_fn, same answer as a hit",
            per_call(&rt, upstream_synthesized()),
        ),
    ];
    // The warm-up's first call remembered the key; every measured call was a hit.
    let stats = hit_cache.handle().stats();
    assert_eq!(
        (stats.inserts, stats.hits),
        (1, WARM_UP + CALLS - 1),
        "{stats:?}"
    );

    println!("heap allocations per call ({CALLS} calls after {WARM_UP} warm-up calls)\n");
    println!(
        "| {:<38} | {:>11} | {:>10} | {:>13} |",
        "operation", "allocs/call", "bytes/call", "largest block"
    );
    println!("|{:-<40}|{:->13}|{:->12}|{:->15}|", "", "", "", "");
    for (name, (allocs, bytes, largest)) in rows {
        println!("| {name:<38} | {allocs:>11.2} | {bytes:>10.1} | {largest:>13} |");
    }

    // ----- bytes per entry ------------------------------------------------------------------

    // Short keys (an ordinary record URL) and long ones (a crawler's, or a user-supplied link).
    bytes_per_entry(&rt, 0);
    bytes_per_entry(&rt, 2_000);
}

/// Fills a layer of `ENTRIES` capacity with distinct 404 keys padded by `pad` bytes, and prints
/// what each entry costs.
fn bytes_per_entry(rt: &tokio::runtime::Runtime, pad: usize) {
    // ----- bytes per entry ------------------------------------------------------------------

    let padding = "p".repeat(pad);
    let target = |i: u64| format!("http://records.internal/records/missing-{i:010}{padding}");
    let key_len = target(0).len();
    let before_build = snapshot();
    let cache = NegativeCacheLayer::builder()
        .capacity(ENTRIES)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(cache.clone())
        .service(upstream(StatusCode::NOT_FOUND));
    let built = snapshot();
    let tables_empty = cache.handle().memory_bytes();
    rt.block_on(async {
        for i in 0..ENTRIES {
            let uri: Uri = target(i).parse().unwrap();
            let res = svc
                .ready()
                .await
                .unwrap()
                .call(request(&uri))
                .await
                .unwrap();
            debug_assert!(res.extensions().get::<NegativeCacheHit>().is_none());
        }
    });
    let filled = snapshot();
    let handle = cache.handle();
    let stats = handle.stats();
    assert_eq!(stats.inserts + stats.uncacheable, ENTRIES);
    let len = stats.len;
    let per = |bytes: i64| bytes as f64 / len as f64;
    let tables = handle.memory_bytes();
    let build_growth = built.live - before_build.live;
    let fill_growth = filled.live - built.live;
    let total_growth = filled.live - before_build.live;

    println!(
        "\nbytes per negative-cache entry: capacity {ENTRIES}, {ENTRIES} distinct 404 keys \
         of {key_len} bytes of text each\n"
    );
    println!(
        "entries held: {len} ({} evicted: shards get equal shares of the capacity, and \
         entries weigh their bytes against max_bytes = {} B)\n",
        stats.evictions, stats.max_bytes
    );
    println!(
        "| {:<62} | {:>11} | {:>9} |",
        "measure", "bytes", "per entry"
    );
    println!("|{:-<64}|{:->13}|{:->11}|", "", "", "");
    let row = |name: &str, bytes: i64| {
        println!("| {name:<62} | {bytes:>11} | {:>9.1} |", per(bytes));
    };
    println!(
        "| {:<62} | {tables_empty:>11} | {:>9} |",
        "handle.memory_bytes() of the empty layer", "—"
    );
    row(
        "(a) handle.memory_bytes(): store tables and key text",
        tables as i64,
    );
    row("live heap growth: building the layer (empty)", build_growth);
    row("live heap growth: filling it", fill_growth);
    row(
        "(b) live heap growth: build + fill, including key text",
        total_growth,
    );
    row(
        "(b) minus the keys' own text (key_len per entry held)",
        total_growth - (key_len as u64 * len) as i64,
    );
    println!(
        "\nKey text is {key_len} bytes per key (a Box<str>, one allocation each); the system \
         allocator rounds each block up and adds its own header, which no figure here counts."
    );
}
