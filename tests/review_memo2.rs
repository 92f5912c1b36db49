//! Second review of fc00f0b (a service's memo of its last hit outlives requests for other
//! targets), after `tests/review_memo.rs`: the angles that file does not take.
//!
//! The guarantee under test: a hit answered from a service's memo is what a store lookup
//! would answer at that moment. The oracle for "a store lookup" is a fresh clone of the same
//! service (a clone has no memo), mostly with `only-if-cached`.
//!
//! - A change of the store that is *in progress* (a `remove_where` scan: `invalidate_if`,
//!   `clear`, and every write's forget under `Credentials::Fingerprint`) has already removed the
//!   entry — lookups miss it, a fresh clone goes upstream and sees the record present — while
//!   the generation has not moved yet, so a memo still answers the removed entry.
//! - The fleet tier: a peer's forget, a peer's other Missing answer, a peer's clear.
//! - The adaptive TTL: a relearned entry (another TTL and source) is answered, not the memo's.
//! - A key function that maps several spellings to one key.
//! - Eviction racing a memo on another thread, entries without answers (the generation alone
//!   guards them).
//! - The 64 uses: HEAD and GET of the target count, other credentials and Hosts don't.

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AGE, AUTHORIZATION, CACHE_CONTROL, HOST};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Empty, Full};
use tower::{Layer, Service, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::cache::{Credentials, NegativeCacheHit, ResponseBody, TtlSource};

type Req = Request<Empty<Bytes>>;
type Res = Response<Full<Bytes>>;

/// A programmable origin: per-path statuses (404 by default; writes answer 204), a call
/// counter; bodies empty unless `bodies` (then the body names the origin's version), so that
/// an entry holds no answer and only the store's generation can stop a memo of it.
#[derive(Default)]
struct Origin {
    statuses: Mutex<HashMap<String, u16>>,
    calls: AtomicUsize,
    version: AtomicU64,
    bodies: AtomicBool,
}

impl Origin {
    fn set(&self, path: &str, status: u16) {
        self.version.fetch_add(1, Ordering::SeqCst);
        self.statuses
            .lock()
            .unwrap()
            .insert(path.to_owned(), status);
    }
}

fn origin(
    o: Arc<Origin>,
) -> impl Service<Req, Response = Res, Error = Infallible, Future: Send> + Clone + Send + 'static {
    tower::service_fn(move |req: Req| {
        let o = o.clone();
        async move {
            o.calls.fetch_add(1, Ordering::SeqCst);
            let status = if req.method().is_safe() {
                let s = o.statuses.lock().unwrap().get(req.uri().path()).copied();
                s.unwrap_or(404)
            } else {
                204
            };
            let body = if o.bodies.load(Ordering::SeqCst) && req.method() == Method::GET {
                Full::new(Bytes::from(format!(
                    "v{}",
                    o.version.load(Ordering::SeqCst)
                )))
            } else {
                Full::default()
            };
            let res = Response::builder().status(status).body(body).unwrap();
            Ok::<_, Infallible>(res)
        }
    })
}

/// An answer as the caller sees it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    status: u16,
    age: Option<String>,
    body: Vec<u8>,
    hit: Option<NegativeCacheHit>,
}

async fn send<S, B>(svc: &mut S, req: Req) -> Seen
where
    S: Service<Req, Response = Response<ResponseBody<B>>, Error = Infallible>,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    let status = res.status().as_u16();
    let age = res.headers().get(AGE).map(|v| v.to_str().unwrap().into());
    let hit = res.extensions().get::<NegativeCacheHit>().copied();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    Seen {
        status,
        age,
        body,
        hit,
    }
}

fn req(method: Method, uri: &str, fields: &[(http::HeaderName, &str)]) -> Req {
    let mut b = Request::builder().method(method).uri(uri);
    for (n, v) in fields {
        b = b.header(n, *v);
    }
    b.body(Empty::new()).unwrap()
}

fn get(uri: &str) -> Req {
    req(Method::GET, uri, &[])
}

fn head(uri: &str) -> Req {
    req(Method::HEAD, uri, &[])
}

fn only_if_cached(uri: &str) -> Req {
    req(Method::GET, uri, &[(CACHE_CONTROL, "only-if-cached")])
}

const A: &str = "http://h.test/r/a";
const B: &str = "http://h.test/r/b";

/// What the closure of a blocked `invalidate_if` reports.
#[derive(Debug, PartialEq)]
enum Scan {
    /// A was removed and the scan is held on a later key.
    Held,
    /// The scan ended without holding (A was the last key it visited).
    Done,
}

/// `invalidate_if` removes A, and is held (its closure waits) on a key it visits after A —
/// a slow predicate, or a large store: the closure runs under the store's locks, one key
/// after another, and the generation moves once the whole scan is over. Meanwhile A is gone
/// from the store: a fresh clone misses it (`only-if-cached`: 504), goes upstream and sees the
/// record present (200). The memoised service, asked A right after (a request for another
/// target in between, which no longer drops the memo), must answer as the store: upstream, 200.
///
/// Failed on fc00f0b (and before it, without the request for B): the memo answered the
/// removed 404, after a 200 for the same request was seen. Fixed by the store's count of
/// changes in progress (`Store::settled_generation`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memo_never_answers_an_entry_a_running_scan_removed() {
    for attempt in 0..8 {
        let o = Arc::new(Origin::default());
        o.set("/r/b", 200);
        let layer = NegativeCacheLayer::builder()
            .capacity(100_000)
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut svc = layer.layer(origin(o.clone()));
        // Other keys, so that the scan has keys to visit after A.
        for i in 0..32 {
            send(&mut svc, get(&format!("http://h.test/r/x{i}"))).await;
        }
        send(&mut svc, get(A)).await;
        assert!(send(&mut svc, get(A)).await.hit.is_some(), "memoised");
        send(&mut svc, get(B)).await;
        assert!(send(&mut svc, get(A)).await.hit.is_some(), "from the memo");
        // A is created at the origin; an invalidation of A is on its way.
        o.set("/r/a", 200);
        let (tell, told) = mpsc::channel();
        let (go, wait) = mpsc::channel::<()>();
        let scan = tokio::task::spawn_blocking(move || {
            let wait = Mutex::new(wait);
            let (seen_a, held) = (AtomicBool::new(false), AtomicBool::new(false));
            let tell2 = tell.clone();
            let n = handle.invalidate_if(|k| {
                if seen_a.load(Ordering::SeqCst) && !held.swap(true, Ordering::SeqCst) {
                    tell2.send(Scan::Held).unwrap();
                    let _ = wait.lock().unwrap().recv();
                }
                let is_a = k.ends_with("/r/a");
                if is_a {
                    seen_a.store(true, Ordering::SeqCst);
                }
                is_a
            });
            let _ = tell.send(Scan::Done);
            n
        });
        if told.recv().unwrap() == Scan::Done {
            // A came last: nothing to hold the scan on. Another store, another order.
            assert_eq!(scan.await.unwrap(), 1);
            assert!(attempt < 7, "A was the last key of every scan");
            continue;
        }
        // The scan is held after A: the store no longer holds A.
        let store_now = send(&mut svc.clone(), only_if_cached(A)).await;
        let fresh = send(&mut svc.clone(), get(A)).await;
        send(&mut svc, get(B)).await;
        let memo = send(&mut svc, get(A)).await;
        drop(go);
        assert_eq!(scan.await.unwrap(), 1);
        assert_eq!(
            (store_now.status, store_now.hit),
            (504, None),
            "the store no longer holds A"
        );
        assert_eq!((fresh.status, fresh.hit), (200, None), "a fresh clone: 200");
        assert_eq!(
            (memo.status, memo.hit.map(|h| h.status.as_u16())),
            (200, None),
            "after a 200 for A was seen, the memoised service answered {memo:?}: an entry \
             the store no longer held (its generation moves only when the scan ends)"
        );
        return;
    }
}

/// As above without a closure of the test's own: under `Credentials::Fingerprint` a write's
/// forget scans the whole store (`remove_where`, to reach every credential's entry), and the
/// generation moves when the scan ends. A store of many entries; a DELETE of A through
/// another clone, on another task; the memoised service's task polls the store (a fresh
/// clone, `only-if-cached`) until A is gone, then asks its memo.
///
/// Failed on fc00f0b whenever the poll landed inside the scan (most rounds, in a debug
/// build), before the store counted changes in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memo_never_answers_an_entry_a_fingerprint_write_is_forgetting() {
    const ENTRIES: usize = 60_000;
    const ROUNDS: usize = 40;
    let o = Arc::new(Origin::default());
    o.set("/r/b", 200);
    let layer = NegativeCacheLayer::builder()
        .capacity(2 * ENTRIES as u64)
        .credentials(Credentials::Fingerprint)
        .build()
        .unwrap();
    let mut svc = layer.layer(origin(o.clone()));
    let mut filler = svc.clone();
    for i in 0..ENTRIES {
        send(&mut filler, get(&format!("http://h.test/f/{i}"))).await;
    }
    assert!(layer.handle().stats().len >= ENTRIES as u64 - 10);
    let mut caught = Vec::new();
    for round in 0..ROUNDS {
        o.set("/r/a", 404);
        send(&mut svc, get(A)).await;
        assert!(send(&mut svc, get(A)).await.hit.is_some(), "memoised");
        send(&mut svc, get(B)).await;
        o.set("/r/a", 200);
        let mut writer = svc.clone();
        let write =
            tokio::spawn(
                async move { send(&mut writer, req(Method::DELETE, A, &[])).await.status },
            );
        // Until the store has lost A (or the write is back).
        let mut oracle = svc.clone();
        let gone = loop {
            if send(&mut oracle, only_if_cached(A)).await.status == 504 {
                break true;
            }
            if write.is_finished() {
                break false;
            }
        };
        let memo = send(&mut svc, get(A)).await;
        assert_eq!(write.await.unwrap(), 204);
        if gone && memo.hit.is_some() {
            caught.push((round, memo.status));
        }
    }
    assert!(
        caught.is_empty(),
        "{} of {ROUNDS} rounds: the store had lost A, then the memo answered it: {caught:?}",
        caught.len()
    );
}

/// The adaptive TTL: an entry relearned after expiry (another TTL, another source) or reset by
/// a write is what the memoised service answers — the hit's TTL, source and `Age` are the
/// store's at each step, never the memo's older entry's. Requests for another target between.
#[tokio::test(start_paused = true)]
async fn adaptive_ttl_entries_are_answered_as_the_store_holds_them() {
    let o = Arc::new(Origin::default());
    o.set("/r/b", 200);
    let layer = NegativeCacheLayer::builder()
        .ttl(Duration::from_secs(10))
        .adaptive_ttl(Duration::from_secs(600))
        .build()
        .unwrap();
    let mut svc = layer.layer(origin(o.clone()));
    let mut other = svc.clone();
    // `svc`'s answer for A, checked against a fresh clone's store lookup right after.
    async fn a_as_the_store<S, B>(svc: &mut S) -> NegativeCacheHit
    where
        S: Service<Req, Response = Response<ResponseBody<B>>, Error = Infallible> + Clone,
        B: http_body::Body<Data = Bytes>,
        B::Error: std::fmt::Debug,
    {
        send(svc, get(B)).await;
        let got = send(svc, get(A)).await;
        let store = send(&mut svc.clone(), only_if_cached(A)).await;
        assert_eq!(got, store, "the memoised service vs. a store lookup");
        got.hit.expect("a hit")
    }
    send(&mut svc, get(A)).await;
    let h = a_as_the_store(&mut svc).await;
    assert_eq!(
        (h.ttl_source, h.ttl),
        (TtlSource::Base, Duration::from_secs(10))
    );
    tokio::time::advance(Duration::from_secs(4)).await;
    assert_eq!(a_as_the_store(&mut svc).await.age, Duration::from_secs(4));
    // Expired; the origin confirms: relearned for twice as long.
    tokio::time::advance(Duration::from_secs(6)).await;
    send(&mut svc, get(B)).await;
    assert_eq!(send(&mut svc, get(A)).await.hit, None, "expired: upstream");
    let h = a_as_the_store(&mut svc).await;
    assert_eq!(h.ttl_source, TtlSource::Learned { confirmed: 1 });
    assert_eq!((h.ttl, h.age), (Duration::from_secs(20), Duration::ZERO));
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(a_as_the_store(&mut svc).await.age, Duration::from_secs(3));
    // Refreshed through another clone: a new entry (Age 0), whatever its TTL.
    let r = send(
        &mut other,
        req(Method::GET, A, &[(CACHE_CONTROL, "no-cache")]),
    )
    .await;
    assert_eq!((r.status, r.hit), (404, None));
    assert_eq!(a_as_the_store(&mut svc).await.age, Duration::ZERO);
    // A write through another clone ends the learned lifetime: back to the base TTL.
    assert_eq!(send(&mut other, req(Method::PUT, A, &[])).await.status, 204);
    send(&mut svc, get(B)).await;
    assert_eq!(
        send(&mut svc, get(A)).await.hit,
        None,
        "forgotten: upstream"
    );
    let h = a_as_the_store(&mut svc).await;
    assert_eq!(
        (h.ttl_source, h.ttl),
        (TtlSource::Base, Duration::from_secs(10))
    );
}

/// A key function that keys by path alone: the absolute target, origin-form ones under any
/// Host, and any query share one entry. The memo is of one spelling; a change made through
/// any other spelling (a read's 2xx, a write, a hit through another spelling in between)
/// must reach it.
#[tokio::test(start_paused = true)]
async fn a_key_function_s_aliases_reach_the_memo() {
    let o = Arc::new(Origin::default());
    o.set("/r/b", 200);
    let lookups = Arc::new(AtomicUsize::new(0));
    let n = lookups.clone();
    let layer = NegativeCacheLayer::builder()
        .key_fn(move |uri: &Uri| {
            n.fetch_add(1, Ordering::SeqCst);
            Some(uri.path().to_owned())
        })
        .build()
        .unwrap();
    let mut svc = layer.layer(origin(o.clone()));
    let mut other = svc.clone();
    let other_host = || req(Method::GET, "/r/a?x=2", &[(HOST, "other.test")]);
    send(&mut svc, get(A)).await;
    assert!(send(&mut svc, get(A)).await.hit.is_some());
    let k = lookups.load(Ordering::SeqCst);
    assert!(send(&mut svc, get(A)).await.hit.is_some());
    assert_eq!(lookups.load(Ordering::SeqCst), k, "from the memo");
    // Another spelling of the same key: a store lookup, a hit on the same entry.
    let alias = send(&mut svc, other_host()).await;
    assert!(alias.hit.is_some(), "an alias hits the shared entry");
    assert!(send(&mut svc, get(A)).await.hit.is_some());
    // The record appears; a read's 2xx through an alias, on another clone, forgets the key.
    o.set("/r/a", 200);
    let r = send(
        &mut other,
        req(
            Method::GET,
            "/r/a?x=3",
            &[(HOST, "third.test"), (CACHE_CONTROL, "no-cache")],
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(layer.handle().peek(&A.parse().unwrap()).is_none());
    send(&mut svc, get(B)).await;
    let r = send(&mut svc, get(A)).await;
    assert_eq!((r.status, r.hit), (200, None), "A after its alias's 2xx");
    // Again missing; memoised; a write to an alias on the same service forgets it.
    o.set("/r/a", 404);
    send(&mut svc, get(A)).await;
    assert!(send(&mut svc, get(A)).await.hit.is_some());
    send(&mut svc, req(Method::DELETE, "/r/a?y", &[(HOST, "x.test")])).await;
    o.set("/r/a", 200);
    send(&mut svc, get(B)).await;
    let r = send(&mut svc, get(A)).await;
    assert_eq!(
        (r.status, r.hit),
        (200, None),
        "A after a write to an alias"
    );
}

/// A layer under `Credentials::Fingerprint` whose key function counts its calls: one per store
/// lookup, which a memo never makes.
fn counting_store_lookups() -> (NegativeCacheLayer, Arc<AtomicUsize>) {
    let lookups = Arc::new(AtomicUsize::new(0));
    let n = lookups.clone();
    let layer = NegativeCacheLayer::builder()
        .credentials(Credentials::Fingerprint)
        .key_fn(move |uri: &Uri| {
            n.fetch_add(1, Ordering::SeqCst);
            Some(uri.to_string())
        })
        .build()
        .unwrap();
    (layer, lookups)
}

/// The 64 uses: a GET and a HEAD of the memo's target both count (both are its requests);
/// the same target under other credentials, another Host, another spelling, don't. Each of
/// those is a store lookup (counted through the key function, which the memo never calls).
#[tokio::test(start_paused = true)]
async fn only_the_memos_own_requests_count_towards_its_uses() {
    let o = Arc::new(Origin::default());
    let (layer, lookups) = counting_store_lookups();
    let mut svc = layer.layer(origin(o.clone()));
    // Entries for every spelling below, so that each is a hit from the store.
    let others = || {
        [
            req(Method::GET, A, &[(AUTHORIZATION, "Bearer u1")]),
            req(Method::GET, "/r/a", &[(HOST, "h.test")]),
            req(Method::HEAD, "http://h.test/r/a?", &[]),
        ]
    };
    for r in others() {
        send(&mut svc, r).await;
    }
    send(&mut svc, get(A)).await;
    let count = || lookups.load(Ordering::SeqCst);
    assert!(send(&mut svc, get(A)).await.hit.is_some(), "memoised");
    for use_ in 1..64 {
        for r in others() {
            let k = count();
            assert!(send(&mut svc, r).await.hit.is_some());
            assert_eq!(count(), k + 1, "another spelling: a store lookup");
        }
        // Each of those was a hit that memoised itself: A again from the store, then its own.
        let k = count();
        let own = if use_ % 2 == 0 { head(A) } else { get(A) };
        assert!(send(&mut svc, own).await.hit.is_some());
        assert_eq!(count(), k + 1, "the others replaced the memo");
    }
    // Now without others between: 63 from the memo, the 64th from the store.
    let k = count();
    for use_ in 1..64 {
        let own = if use_ % 3 == 0 { head(A) } else { get(A) };
        assert!(send(&mut svc, own).await.hit.is_some());
        assert_eq!(count(), k, "use {use_}: from the memo");
    }
    assert!(send(&mut svc, head(A)).await.hit.is_some());
    assert_eq!(count(), k + 1, "the 64th (a HEAD) went to the store");
}

/// Other targets between, without memoising themselves (200s pass through, misses go
/// upstream): those leave the memo and don't count; the memo's GETs and HEADs do.
#[tokio::test(start_paused = true)]
async fn heads_count_and_passing_requests_do_not() {
    let o = Arc::new(Origin::default());
    o.set("/r/b", 200);
    let (layer, lookups) = counting_store_lookups();
    let mut svc = layer.layer(origin(o.clone()));
    send(&mut svc, get(A)).await;
    assert!(send(&mut svc, get(A)).await.hit.is_some(), "memoised");
    let count = || lookups.load(Ordering::SeqCst);
    let k0 = count();
    for use_ in 1..64 {
        // A 200 for B, and A under a credential whose answer is 200 (only `Bearer ok`'s).
        send(&mut svc, get(B)).await;
        let own = if use_ % 2 == 0 { head(A) } else { get(A) };
        let r = send(&mut svc, own).await;
        assert!(r.hit.is_some(), "use {use_}");
        assert_eq!(count(), k0 + use_, "use {use_}: only B was looked up");
    }
    let k = count();
    assert!(send(&mut svc, head(A)).await.hit.is_some());
    assert_eq!(count(), k + 1, "the 64th own request went to the store");
}

/// Eviction racing a memo on another thread, entries without an answer (empty 404s and 410s:
/// only the generation stops a memo of them). Cycle `k` stores A as 404 (odd `k`) or 410
/// (even), makes the origin answer 200, and stores other keys until A is gone from the store
/// (evicted, or forgotten by the reader's own 200). A hit on the reader whose request began
/// after cycle `k`'s A was gone and ended before cycle `k + 1` began replays a lost entry —
/// unless the reader's own read of A in cycle `k` went upstream and came back Missing: that
/// read may have stored A again after the writer saw it gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memo_on_another_thread_never_outlives_an_eviction() {
    let o = Arc::new(Origin::default());
    o.set("/r/b", 200);
    o.set("/r/a", 200);
    let layer = NegativeCacheLayer::builder().capacity(4).build().unwrap();
    let handle = layer.handle();
    let mut reader = layer.layer(origin(o.clone()));
    let mut writer = reader.clone();
    let status_of = |k: u64| if k % 2 == 1 { 404u16 } else { 410 };
    let begun = Arc::new(AtomicU64::new(0));
    let gone = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // The reader's reads of A that have ended.
    let reads_of_a = Arc::new(AtomicU64::new(0));
    let (b, g, s, o2, h2, ra) = (
        begun.clone(),
        gone.clone(),
        stop.clone(),
        o.clone(),
        handle.clone(),
        reads_of_a.clone(),
    );
    let a: Uri = A.parse().unwrap();
    let writer_task = tokio::spawn(async move {
        let mut x = 0u64;
        for k in 1..=600u64 {
            b.store(k, Ordering::SeqCst);
            o2.set("/r/a", status_of(k));
            let r = send(
                &mut writer,
                req(Method::GET, A, &[(CACHE_CONTROL, "no-cache")]),
            )
            .await;
            assert_eq!(r.status, status_of(k));
            // Every hundredth cycle, A stays stored until a read of A that began after it was
            // stored has ended, so the reader hits at least then (whatever the scheduling).
            if k % 100 == 1 {
                let seen = ra.load(Ordering::SeqCst);
                while ra.load(Ordering::SeqCst) < seen + 2 {
                    tokio::task::yield_now().await;
                }
            }
            tokio::task::yield_now().await;
            o2.set("/r/a", 200);
            while h2.peek(&a).is_some() {
                x += 1;
                let other = format!("http://h.test/x/{x}");
                send(&mut writer, get(&other)).await;
                send(&mut writer, get(&other)).await;
            }
            g.store(k, Ordering::SeqCst);
            tokio::task::yield_now().await;
        }
        s.store(true, Ordering::SeqCst);
    });
    let (mut hits, mut i) = (0u64, 0u64);
    // The reader's own last read of A answered Missing by the origin (not a hit): its status,
    // and the cycle under way when it ended. Such a read stores what it brought, and may do so
    // after the writer saw that cycle's A gone: an eviction is no change of the origin's (no
    // write, no 2xx), so a read in flight still remembers its answer. A hit of that status
    // in that cycle is then the store's, not a lost entry.
    let mut own_missing: Option<(u16, u64)> = None;
    while !stop.load(Ordering::SeqCst) {
        let before = gone.load(Ordering::SeqCst);
        let of_a = i % 3 != 2;
        let r = send(&mut reader, get(if of_a { A } else { B })).await;
        let after = begun.load(Ordering::SeqCst);
        if of_a {
            reads_of_a.fetch_add(1, Ordering::SeqCst);
        }
        i += 1;
        if of_a && r.hit.is_none() && matches!(r.status, 404 | 410) {
            own_missing = Some((r.status, after));
        }
        if let Some(h) = r.hit {
            hits += 1;
            assert!(
                after > before || own_missing == Some((r.status, before)),
                "a hit ({}) with no cycle begun since cycle {before}'s A was gone",
                h.status
            );
        }
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    writer_task.await.unwrap();
    assert!(hits > 0, "the reader hit at all ({i} requests)");
    assert!(handle.stats().evictions > 100, "{:?}", handle.stats());
}

/// The fleet tier (a real `redis-server`; skipped without one, as `tests/fleet.rs`): what a
/// peer makes this replica's store do reaches a memo held across requests for other targets —
/// a peer's Missing answer of another status replaces the entry, a peer's forget removes it,
/// a peer's clear empties the store. Each time, the memoised service answers as the store.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_s_missing_forget_and_clear_reach_the_memo() {
    use tower_negative_cache::fleet::Fleet;
    let Some(redis) =
        redis_support::RedisServer::try_start("a_peer_s_missing_forget_and_clear_reach_the_memo")
    else {
        return;
    };
    /// Polls `f` (yielding, no timer) until it holds; panics after 10 s.
    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let t = std::time::Instant::now();
        while !f() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "not within 10 s: {what}"
            );
            tokio::task::yield_now().await;
        }
    }
    let o = Arc::new(Origin::default());
    o.set("/r/b", 200);
    let replica = || {
        let layer = NegativeCacheLayer::builder()
            .ttl(Duration::from_secs(60))
            .build()
            .unwrap();
        let fleet = Fleet::builder(redis.url())
            .prefix("review-memo2")
            .start(&layer)
            .unwrap();
        (layer, fleet)
    };
    let (one, fleet1) = replica();
    let (two, fleet2) = replica();
    until("connected", || {
        fleet1.stats().connected && fleet2.stats().connected
    })
    .await;
    let a: Uri = A.parse().unwrap();
    let (h1, h2) = (one.handle(), two.handle());
    let mut svc = one.layer(origin(o.clone()));
    let mut peer = two.layer(origin(o.clone()));
    // A missing, learned by the peer; memoised on replica one.
    send(&mut svc, get(A)).await;
    until("the peer learned A", || h2.peek(&a).is_some()).await;
    assert!(send(&mut svc, get(A)).await.hit.is_some());
    send(&mut svc, get(B)).await;
    assert!(send(&mut svc, get(A)).await.hit.is_some(), "from the memo");

    // The peer learns a 410 for A (a refresh there): replica one takes it.
    o.set("/r/a", 410);
    let r = send(
        &mut peer,
        req(Method::GET, A, &[(CACHE_CONTROL, "no-cache")]),
    )
    .await;
    assert_eq!(r.status, 410);
    until("replica one holds the peer's 410", || {
        h1.peek(&a).is_some_and(|h| h.status == 410)
    })
    .await;
    send(&mut svc, get(B)).await;
    let r = send(&mut svc, get(A)).await;
    assert_eq!(
        r.hit.map(|h| (h.status.as_u16(), h.ttl_source)),
        Some((410, TtlSource::Peer)),
        "the peer's entry, not the memo's 404"
    );
    // Real time runs here: all but the age, against a store lookup right after.
    let key = |h: NegativeCacheHit| (h.status, h.ttl, h.ttl_source, h.body_kept);
    let store = send(&mut svc.clone(), only_if_cached(A)).await;
    assert_eq!(r.hit.map(key), store.hit.map(key));
    assert!(send(&mut svc, get(A)).await.hit.is_some(), "memoised again");

    // A write through the peer: replica one forgets A.
    o.set("/r/a", 200);
    assert_eq!(send(&mut peer, req(Method::PUT, A, &[])).await.status, 204);
    until("replica one forgot A", || h1.peek(&a).is_none()).await;
    send(&mut svc, get(B)).await;
    let r = send(&mut svc, get(A)).await;
    assert_eq!((r.status, r.hit), (200, None), "after the peer's forget");

    // Missing again (another path, so no tombstone is in the way), memoised; the peer clears.
    let c = "http://h.test/r/c";
    send(&mut svc, get(c)).await;
    assert!(send(&mut svc, get(c)).await.hit.is_some());
    send(&mut svc, get(B)).await;
    assert!(send(&mut svc, get(c)).await.hit.is_some(), "from the memo");
    o.set("/r/c", 200);
    h2.clear();
    let cu: Uri = c.parse().unwrap();
    until("replica one cleared", || h1.peek(&cu).is_none()).await;
    send(&mut svc, get(B)).await;
    let r = send(&mut svc, get(c)).await;
    assert_eq!((r.status, r.hit), (200, None), "after the peer's clear");
}
