//! Review of fc00f0b (a service's memo of its last hit outlives requests for other targets):
//! whatever comes between, a hit answered from the memo is exactly what a store lookup would
//! answer at that moment — same status, body, `Age`, TTL — and never an entry the store no
//! longer holds, nor another target's, Host's, credential's or partition's.
//!
//! The oracle for "what a store lookup would answer" is a fresh clone of the same service
//! (a clone starts without a memo) asked the same request with `only-if-cached`, right after
//! the request under test (paused time: no time passes in between, and a hit changes nothing);
//! for a plain absolute target outside every partition, also `handle().peek` right before it.
//! Store lookups themselves are counted through a key function, which the memo never calls.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AGE, AUTHORIZATION, CACHE_CONTROL, HOST};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Empty, Full};
use tower::{Layer, Service, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::cache::{
    BypassNegativeCache, Credentials, NegativeCacheHit, ResponseBody,
};

type Req = Request<Empty<Bytes>>;
type Res = Response<Full<Bytes>>;

/// What the origin answers for a path: status, extra fields; the body names the version.
#[derive(Clone)]
struct Answer {
    status: u16,
    fields: Vec<(&'static str, String)>,
}

/// A programmable origin: per-path answers (404 by default), a call counter, and a version
/// stamped into each body so that a replayed answer says which one it was.
#[derive(Default)]
struct OriginState {
    answers: Mutex<HashMap<String, Answer>>,
    /// What a write to a path leaves there (`None`: unchanged), and what the write answers.
    after_write: Mutex<HashMap<String, (u16, Option<u16>)>>,
    calls: AtomicUsize,
    version: AtomicU64,
    /// Answer every read with an empty body: an entry of a 404 without fields then holds no
    /// answer at all, so only the store's generation (not a dead weak answer) can stop a memo.
    empty: std::sync::atomic::AtomicBool,
}

impl OriginState {
    fn set(&self, path: &str, status: u16, fields: Vec<(&'static str, String)>) {
        self.version.fetch_add(1, Ordering::SeqCst);
        self.answers
            .lock()
            .unwrap()
            .insert(path.to_owned(), Answer { status, fields });
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn origin(
    state: Arc<OriginState>,
) -> impl Service<Req, Response = Res, Error = Infallible, Future: Send> + Clone + Send + 'static {
    tower::service_fn(move |req: Req| {
        let state = state.clone();
        async move {
            state.calls.fetch_add(1, Ordering::SeqCst);
            let path = req.uri().path().to_owned();
            if !req.method().is_safe() {
                let (answer, then) = state
                    .after_write
                    .lock()
                    .unwrap()
                    .get(&path)
                    .copied()
                    .unwrap_or((204, None));
                if let Some(s) = then {
                    state.set(&path, s, vec![]);
                }
                let res = Response::builder().status(answer);
                return Ok(res.body(Full::default()).unwrap());
            }
            let a = state.answers.lock().unwrap().get(&path).cloned();
            let a = a.unwrap_or(Answer {
                status: 404,
                fields: vec![],
            });
            let mut b = Response::builder().status(a.status);
            for (n, v) in &a.fields {
                b = b.header(*n, v);
            }
            let v = state.version.load(Ordering::SeqCst);
            let body = if req.method() == Method::HEAD || state.empty.load(Ordering::SeqCst) {
                Full::default()
            } else {
                Full::new(Bytes::from(format!("v{v}")))
            };
            Ok::<_, Infallible>(b.body(body).unwrap())
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

async fn seen<B>(res: Response<ResponseBody<B>>) -> Seen
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let status = res.status().as_u16();
    let age = res
        .headers()
        .get(AGE)
        .map(|v| v.to_str().unwrap().to_owned());
    let hit = res.extensions().get::<NegativeCacheHit>().copied();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    Seen {
        status,
        age,
        body,
        hit,
    }
}

/// Through `svc` itself (its memo kept).
async fn send<S, B>(svc: &mut S, req: Req) -> Seen
where
    S: Service<Req, Response = Response<ResponseBody<B>>, Error = Infallible>,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    seen(res).await
}

fn get(uri: &str) -> Req {
    Request::get(uri).body(Empty::new()).unwrap()
}

fn with(method: Method, uri: &str, fields: &[(http::HeaderName, String)]) -> Req {
    let mut b = Request::builder().method(method).uri(uri);
    for (n, v) in fields {
        b = b.header(n, v);
    }
    b.body(Empty::new()).unwrap()
}

/// A layer whose key function counts its calls (each a store lookup, a write's or a handle's
/// key; never the memo), keying by the whole normalised URI.
fn counted(
    builder: tower_negative_cache::cache::Builder,
) -> (NegativeCacheLayer, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    let layer = builder
        .key_fn(move |uri: &Uri| {
            c.fetch_add(1, Ordering::SeqCst);
            Some(uri.to_string())
        })
        .build()
        .unwrap();
    (layer, n)
}

fn lookups(n: &AtomicUsize) -> usize {
    n.load(Ordering::SeqCst)
}

const A: &str = "http://h.test/r/a";
const B: &str = "http://h.test/r/b";

/// Requests for other targets (200s passing through, other hits) neither drop the memo nor
/// count towards its 64 uses; 63 of its own are answered from it and the 64th goes to the
/// store. (Fails on fc00f0b's parent, where each B dropped the memo.)
#[tokio::test(start_paused = true)]
async fn other_targets_keep_the_memo_and_do_not_count() {
    let o = Arc::new(OriginState::default());
    o.set("/r/b", 200, vec![]);
    let (layer, keys) = counted(NegativeCacheLayer::builder());
    let mut svc = layer.layer(origin(o.clone()));
    assert_eq!(send(&mut svc, get(A)).await.hit, None, "first: upstream");
    let first = send(&mut svc, get(A)).await;
    assert!(
        first.hit.is_some(),
        "second: a hit from the store, memoised"
    );
    let (k0, c0) = (lookups(&keys), o.calls());
    for i in 1..64 {
        let b = send(&mut svc, get(B)).await;
        assert_eq!(b.status, 200);
        assert_eq!(lookups(&keys), k0 + 2 * i - 1, "B is looked up");
        let a = send(&mut svc, get(A)).await;
        assert_eq!(a, first, "use {i}: the same answer");
        assert_eq!(
            lookups(&keys),
            k0 + 2 * i - 1,
            "use {i} of A answered from the memo (no lookup) after a B"
        );
        // Again B, so that each A is between two Bs.
        send(&mut svc, get(B)).await;
    }
    assert_eq!(o.calls(), c0 + 2 * 63, "only B went upstream");
    let k = lookups(&keys);
    let a = send(&mut svc, get(A)).await;
    assert_eq!(a.hit, first.hit);
    assert_eq!(lookups(&keys), k + 1, "the 64th use goes to the store");
    let a = send(&mut svc, get(A)).await;
    assert_eq!(a.hit, first.hit);
    assert_eq!(lookups(&keys), k + 1, "and the memo is made again");
}

/// A 404 for another target, stored through the same service, moves the store: A's memo is
/// not used (its next request is a store lookup, still a hit).
#[tokio::test(start_paused = true)]
async fn an_insert_for_another_target_makes_the_memo_stale() {
    let o = Arc::new(OriginState::default());
    let (layer, keys) = counted(NegativeCacheLayer::builder());
    let mut svc = layer.layer(origin(o.clone()));
    send(&mut svc, get(A)).await;
    send(&mut svc, get(A)).await; // memoised
    let k = lookups(&keys);
    send(&mut svc, get(A)).await;
    assert_eq!(lookups(&keys), k, "from the memo");
    let b = send(&mut svc, get(B)).await; // 404 stored for B
    assert_eq!((b.status, b.hit), (404, None));
    let k = lookups(&keys);
    let a = send(&mut svc, get(A)).await;
    assert!(a.hit.is_some());
    assert_eq!(lookups(&keys), k + 1, "the store moved: a lookup");
}

/// A memoised 404 for A; then A is made present through every path that changes the store —
/// through the same service, another clone, another layer clone, the handle — with requests
/// for other targets around it. A's next request must go upstream and see 200.
#[tokio::test(start_paused = true)]
async fn every_forget_of_the_target_overtakes_the_memo() {
    #[derive(Debug, Clone, Copy)]
    enum Forget {
        WriteSame(&'static str),
        WriteClone(&'static str),
        WriteLayerClone,
        WriteOriginForm,
        WriteOtherSpelling,
        WriteLocationOfB,
        RefreshSame,
        RefreshClone,
        BypassExtension,
        InvalidateUri,
        Invalidate,
        InvalidateIf,
        Clear,
    }
    let cases = [
        Forget::WriteSame("POST"),
        Forget::WriteSame("PUT"),
        Forget::WriteSame("DELETE"),
        Forget::WriteClone("PATCH"),
        Forget::WriteLayerClone,
        Forget::WriteOriginForm,
        Forget::WriteOtherSpelling,
        Forget::WriteLocationOfB,
        Forget::RefreshSame,
        Forget::RefreshClone,
        Forget::BypassExtension,
        Forget::InvalidateUri,
        Forget::Invalidate,
        Forget::InvalidateIf,
        Forget::Clear,
    ];
    for (case, empty) in cases.into_iter().flat_map(|c| [(c, false), (c, true)]) {
        let o = Arc::new(OriginState::default());
        o.empty.store(empty, Ordering::SeqCst);
        o.set("/r/b", 200, vec![]);
        let layer = NegativeCacheLayer::new();
        let mut svc = layer.layer(origin(o.clone()));
        let mut other = svc.clone();
        let mut other_layer = layer.clone().layer(origin(o.clone()));
        send(&mut svc, get(A)).await;
        let hit = send(&mut svc, get(A)).await;
        assert!(hit.hit.is_some(), "{case:?}: memoised");
        send(&mut svc, get(B)).await;
        assert!(send(&mut svc, get(A)).await.hit.is_some());
        send(&mut svc, get(B)).await;
        // A is created (the origin now answers 200), and the cache told of it somehow.
        o.set("/r/a", 200, vec![]);
        let write = |m: &str, uri: &str| with(m.parse().unwrap(), uri, &[]);
        match case {
            Forget::WriteSame(m) => assert_eq!(send(&mut svc, write(m, A)).await.status, 204),
            Forget::WriteClone(m) => {
                assert_eq!(send(&mut other, write(m, A)).await.status, 204)
            }
            Forget::WriteLayerClone => {
                send(&mut other_layer, write("POST", A)).await;
            }
            Forget::WriteOriginForm => {
                let req = with(Method::PUT, "/r/a", &[(HOST, "h.test".into())]);
                send(&mut other, req).await;
            }
            Forget::WriteOtherSpelling => {
                send(&mut svc, write("DELETE", "HTTP://H.TEST:80/r/%61")).await;
            }
            Forget::WriteLocationOfB => {
                // A POST to B whose answer's `Content-Location` names A.
                let o2 = o.clone();
                let located = tower::service_fn(move |req: Req| {
                    let o2 = o2.clone();
                    async move {
                        o2.calls.fetch_add(1, Ordering::SeqCst);
                        let _ = req;
                        let res = Response::builder()
                            .status(201)
                            .header("content-location", "/r/a")
                            .body(Full::<Bytes>::default())
                            .unwrap();
                        Ok::<_, Infallible>(res)
                    }
                });
                let mut w = layer.layer(located);
                send(&mut w, write("POST", B)).await;
            }
            Forget::RefreshSame => {
                let req = with(Method::GET, A, &[(CACHE_CONTROL, "no-cache".into())]);
                assert_eq!(send(&mut svc, req).await.status, 200);
            }
            Forget::RefreshClone => {
                let req = with(Method::GET, A, &[(CACHE_CONTROL, "max-age=0".into())]);
                assert_eq!(send(&mut other, req).await.status, 200);
            }
            Forget::BypassExtension => {
                let mut req = get(A);
                req.extensions_mut().insert(BypassNegativeCache);
                assert_eq!(send(&mut other_layer, req).await.status, 200);
            }
            Forget::InvalidateUri => {
                assert!(svc.handle().invalidate_uri(&A.parse().unwrap()))
            }
            Forget::Invalidate => assert!(layer.handle().invalidate("http://h.test/r/a")),
            Forget::InvalidateIf => {
                assert_eq!(layer.handle().invalidate_if(|k| k.ends_with("/a")), 1)
            }
            Forget::Clear => assert_eq!(layer.handle().clear(), 1),
        }
        send(&mut svc, get(B)).await;
        let held = layer.handle().peek(&A.parse().unwrap());
        let calls = o.calls();
        let a = send(&mut svc, get(A)).await;
        if let Forget::WriteOriginForm = case {
            // An origin-form target's key carries no scheme: a write to `/r/a` (Host h.test)
            // does not forget `http://h.test/r/a`. The store still holds it; so may the memo.
            let held = held.expect("an origin-form write leaves the absolute-form key");
            assert_eq!(
                a.hit.map(|h| (h.status, h.age)),
                Some((held.status, held.age))
            );
            continue;
        }
        assert!(held.is_none(), "{case:?} {empty}: the store forgot A");
        assert_eq!(
            (a.status, a.hit),
            (200, None),
            "{case:?} {empty}: A after its forget"
        );
        assert_eq!(o.calls(), calls + 1, "{case:?}: upstream");
    }
}

/// At its TTL the memo's entry is not answered (the store would not answer it either), even
/// though nothing else touched the store; one microsecond before, it is, with the store's
/// `Age`. With other targets in between.
#[tokio::test(start_paused = true)]
async fn expiry_ends_the_memo_at_the_ttl() {
    let o = Arc::new(OriginState::default());
    o.set("/r/b", 200, vec![]);
    let layer = NegativeCacheLayer::builder()
        .ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut svc = layer.layer(origin(o.clone()));
    send(&mut svc, get(A)).await;
    assert!(send(&mut svc, get(A)).await.hit.is_some());
    tokio::time::advance(Duration::from_secs(10) - Duration::from_micros(1)).await;
    send(&mut svc, get(B)).await;
    let a = send(&mut svc, get(A)).await;
    let h = a.hit.expect("a hit one microsecond before the end");
    assert_eq!(a.age, Some(h.age.as_secs().to_string()));
    assert_eq!(h.age, Duration::from_secs(10) - Duration::from_micros(1));
    assert_eq!(h.remaining, Duration::from_micros(1));
    let peek = layer.handle().peek(&A.parse().unwrap()).unwrap();
    assert_eq!((peek.age, peek.remaining), (h.age, h.remaining));
    tokio::time::advance(Duration::from_micros(1)).await;
    assert!(layer.handle().peek(&A.parse().unwrap()).is_none());
    send(&mut svc, get(B)).await;
    let calls = o.calls();
    let a = send(&mut svc, get(A)).await;
    assert_eq!(a.hit, None, "expired: not from the memo");
    assert_eq!(o.calls(), calls + 1);
    assert_eq!(layer.handle().stats().expirations, 1);
}

/// An entry learned from a HEAD without fields is the shared bare head-only answer, which
/// never dies: its memo's weak answer always upgrades, so only the generation stops it. A
/// write through another clone, with requests for other targets around, must end it.
#[tokio::test(start_paused = true)]
async fn a_bare_head_only_memo_ends_with_its_entry() {
    let o = Arc::new(OriginState::default());
    o.set("/r/b", 200, vec![]);
    let layer = NegativeCacheLayer::new();
    let mut svc = layer.layer(origin(o.clone()));
    let mut other = svc.clone();
    let head = || with(Method::HEAD, A, &[]);
    send(&mut svc, head()).await;
    let h = send(&mut svc, head())
        .await
        .hit
        .expect("stored from a HEAD");
    assert!(!h.body_kept, "head-only");
    send(&mut svc, get(B)).await;
    assert!(send(&mut svc, head()).await.hit.is_some(), "from the memo");
    o.set("/r/a", 200, vec![]);
    send(&mut other, with(Method::PUT, A, &[])).await;
    send(&mut svc, get(B)).await;
    let calls = o.calls();
    let r = send(&mut svc, head()).await;
    assert_eq!((r.status, r.hit), (200, None), "after the write");
    assert_eq!(o.calls(), calls + 1);
    // And a GET after a HEAD-made memo goes upstream, as the store would send it (RFC 9111
    // §4: a HEAD's answer does not answer a GET).
    o.set("/r/a", 404, vec![]);
    send(&mut svc, head()).await;
    send(&mut svc, head()).await;
    let fresh = send(
        &mut svc.clone(),
        with(Method::GET, A, &[(CACHE_CONTROL, "only-if-cached".into())]),
    )
    .await;
    assert_eq!((fresh.status, fresh.hit), (504, None), "the store's answer");
    let calls = o.calls();
    let r = send(&mut svc, get(A)).await;
    assert_eq!((r.status, r.hit), (404, None));
    assert_eq!(o.calls(), calls + 1);
}

/// Capacity pressure: other keys stored through another service evict A; the memo must not
/// answer A then.
#[tokio::test(start_paused = true)]
async fn eviction_by_other_keys_ends_the_memo() {
    for empty in [false, true] {
        eviction_ends_the_memo(empty).await;
    }
}

async fn eviction_ends_the_memo(empty: bool) {
    let o = Arc::new(OriginState::default());
    o.empty.store(empty, Ordering::SeqCst);
    let layer = NegativeCacheLayer::builder().capacity(2).build().unwrap();
    let mut svc = layer.layer(origin(o.clone()));
    let mut other = svc.clone();
    send(&mut svc, get(A)).await;
    assert!(send(&mut svc, get(A)).await.hit.is_some());
    // CLOCK-Pro keeps a key used twice: the others are used twice too (a miss, then a hit).
    for i in 0..50 {
        let x = format!("http://h.test/r/x{i}");
        send(&mut other, get(&x)).await;
        send(&mut other, get(&x)).await;
        if layer.handle().peek(&A.parse().unwrap()).is_none() {
            break;
        }
    }
    assert!(
        layer.handle().peek(&A.parse().unwrap()).is_none(),
        "A was evicted"
    );
    assert!(layer.handle().stats().evictions >= 1);
    let calls = o.calls();
    let a = send(&mut svc, get(A)).await;
    assert_eq!(a.hit, None, "evicted: not from the memo");
    assert_eq!(o.calls(), calls + 1);
}

/// Same path, other Host / spelling / credentials / partition: never the memo's entry. Each
/// such request is asked between uses of the memo, and must go upstream (nothing stored for
/// it) — the origin answers each of them 200, A itself 404.
#[tokio::test(start_paused = true)]
async fn never_another_hosts_users_or_partitions_entry() {
    let o = Arc::new(OriginState::default());
    let layer = NegativeCacheLayer::builder()
        .credentials(Credentials::Fingerprint)
        .build()
        .unwrap();
    let part = layer.partition("p");
    let mut svc = layer.layer(origin(o.clone()));
    let mut in_part = part.layer(origin(o.clone()));
    // A origin-form under Host h.test, memoised.
    let a = || with(Method::GET, "/r/a", &[(HOST, "h.test".into())]);
    send(&mut svc, a()).await;
    assert!(send(&mut svc, a()).await.hit.is_some());
    let others: Vec<Req> = vec![
        with(Method::GET, "/r/a", &[(HOST, "other.test".into())]),
        with(Method::GET, "/r/a", &[(HOST, "h.test:8080".into())]),
        with(Method::GET, "https://h.test/r/a", &[]),
        with(
            Method::GET,
            "/r/a",
            &[(HOST, "h.test".into()), (AUTHORIZATION, "Bearer u1".into())],
        ),
        with(
            Method::GET,
            "/r/a",
            &[(HOST, "h.test".into()), (AUTHORIZATION, "Bearer u2".into())],
        ),
        with(
            Method::GET,
            "/r/a",
            &[
                (HOST, "h.test".into()),
                (http::header::COOKIE, "s=1".into()),
            ],
        ),
        with(Method::GET, "http://u:p@h.test/r/a", &[]),
        with(Method::GET, "/r/a?x", &[(HOST, "h.test".into())]),
    ];
    // The origin now answers 200 to everything: only a stored entry can say 404.
    o.set("/r/a", 200, vec![]);
    for (i, req) in others.into_iter().enumerate() {
        let calls = o.calls();
        let r = send(&mut svc, req).await;
        assert_eq!((r.status, r.hit), (200, None), "other {i}");
        assert_eq!(o.calls(), calls + 1);
        // A's memo still answers A (nothing was stored, nothing removed: a 200 for another
        // key under its own credentials removes nothing).
        let r = send(&mut svc, a()).await;
        assert_eq!(r.status, 404, "A after other {i}");
    }
    // The partition's service: A there was never stored.
    let r = send(&mut in_part, a()).await;
    assert_eq!((r.status, r.hit), (200, None));
    // A stored and memoised in the partition too.
    o.set("/r/a", 404, vec![]);
    send(&mut in_part, a()).await;
    assert!(send(&mut in_part, a()).await.hit.is_some());
    o.set("/r/a", 200, vec![]);
    let refresh = || {
        with(
            Method::GET,
            "/r/a",
            &[(HOST, "h.test".into()), (CACHE_CONTROL, "no-cache".into())],
        )
    };
    // A read's 2xx through a clone of the base service forgets the base entry only.
    assert_eq!(send(&mut svc.clone(), refresh()).await.status, 200);
    let r = send(&mut svc, a()).await;
    assert_eq!((r.status, r.hit), (200, None), "base: forgotten");
    let r = send(&mut in_part, a()).await;
    assert_eq!(r.status, 404, "the partition's entry stays");
    let only = with(
        Method::GET,
        "/r/a",
        &[
            (HOST, "h.test".into()),
            (CACHE_CONTROL, "only-if-cached".into()),
        ],
    );
    assert_eq!(r, send(&mut in_part.clone(), only).await);
    // One through a clone of the partition's service forgets the partition's.
    assert_eq!(send(&mut in_part.clone(), refresh()).await.status, 200);
    let r = send(&mut in_part, a()).await;
    assert_eq!((r.status, r.hit), (200, None), "partition: forgotten");
}

/// HEAD and GET share an entry; a memo made by a HEAD answers a GET as the store would (same
/// status, body-kept flag, `Age`), and the reverse.
#[tokio::test(start_paused = true)]
async fn head_and_get_through_the_memo_answer_as_the_store() {
    let o = Arc::new(OriginState::default());
    let layer = NegativeCacheLayer::new();
    let mut svc = layer.layer(origin(o.clone()));
    send(&mut svc, get(A)).await; // stored with its body
    let head = || with(Method::HEAD, A, &[]);
    for round in 0..3 {
        tokio::time::advance(Duration::from_millis(1500)).await;
        for req in [head(), get(A), head(), get(B), get(A)] {
            let is_head = req.method() == Method::HEAD;
            let oracle = {
                let mut r = with(req.method().clone(), &req.uri().to_string(), &[]);
                r.headers_mut()
                    .insert(CACHE_CONTROL, "only-if-cached".parse().unwrap());
                r
            };
            let is_b = req.uri() == B;
            let got = send(&mut svc, req).await;
            let fresh = send(&mut svc.clone(), oracle).await;
            if round == 0 && is_b {
                assert_eq!(got.hit, None, "B's first request: upstream");
                continue;
            }
            assert!(got.hit.is_some(), "round {round}, head {is_head}: a hit");
            assert_eq!(got, fresh, "round {round}, head {is_head}");
        }
    }
}

/// Request directives with a memo: `max-age`, `min-fresh` refuse it exactly when they would
/// refuse the store's entry, and a refused request goes upstream (whose 404 replaces the
/// entry: the memo must then not answer the old one's `Age`).
#[tokio::test(start_paused = true)]
async fn max_age_and_min_fresh_see_the_memo_as_the_store() {
    let o = Arc::new(OriginState::default());
    let layer = NegativeCacheLayer::builder()
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut svc = layer.layer(origin(o.clone()));
    send(&mut svc, get(A)).await;
    assert!(send(&mut svc, get(A)).await.hit.is_some());
    tokio::time::advance(Duration::from_secs(20)).await;
    let cc = |v: &str| with(Method::GET, A, &[(CACHE_CONTROL, v.into())]);
    // Accepted: from the memo, Age 20.
    let r = send(&mut svc, cc("max-age=30")).await;
    assert_eq!(r.age.as_deref(), Some("20"));
    // Refused: upstream, a new entry (Age 0 from now on).
    let calls = o.calls();
    let r = send(&mut svc, cc("max-age=10")).await;
    assert_eq!((r.status, r.hit), (404, None));
    assert_eq!(o.calls(), calls + 1);
    let r = send(&mut svc, get(A)).await;
    assert_eq!(
        r.age.as_deref(),
        Some("0"),
        "the new entry, not the memo's old one"
    );
    // Make a memo again, then min-fresh past the remaining 60 s.
    send(&mut svc, get(A)).await;
    let calls = o.calls();
    let r = send(&mut svc, cc("min-fresh=61")).await;
    assert_eq!(r.hit, None);
    assert_eq!(o.calls(), calls + 1);
    let r = send(&mut svc, cc("min-fresh=59")).await;
    assert!(r.hit.is_some());
    // only-if-cached after a forget: 504, not the memo.
    send(&mut svc, get(A)).await;
    layer.handle().invalidate(A);
    let r = send(&mut svc, cc("only-if-cached")).await;
    assert_eq!((r.status, r.hit), (504, None));
}

/// Cross-thread: one service answers A again and again on one thread while another thread
/// stores A (a 404 stamped with a version) and forgets it with a write. Once a write's answer
/// has come back, no hit on the reader may replay the version it forgot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memo_on_another_thread_never_outlives_a_forget() {
    let o = Arc::new(OriginState::default());
    o.set("/r/b", 200, vec![]);
    o.after_write
        .lock()
        .unwrap()
        .insert("/r/a".into(), (204, Some(200)));
    let layer = NegativeCacheLayer::new();
    let mut reader = layer.layer(origin(o.clone()));
    let mut writer = reader.clone();
    // The last version a completed write forgot.
    let forgot = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (f, s, o2) = (forgot.clone(), stop.clone(), o.clone());
    let writer_task = tokio::spawn(async move {
        for _ in 0..2_000 {
            o2.set("/r/a", 404, vec![]);
            let v = o2.version.load(Ordering::SeqCst);
            let req = with(Method::GET, A, &[(CACHE_CONTROL, "no-cache".into())]);
            let r = send(&mut writer, req).await;
            assert_eq!(r.body, format!("v{v}").into_bytes());
            // Let the reader use it a little.
            tokio::task::yield_now().await;
            send(&mut writer, get(B)).await;
            let r = send(&mut writer, with(Method::DELETE, A, &[])).await;
            assert_eq!(r.status, 204);
            f.store(v, Ordering::SeqCst);
            tokio::task::yield_now().await;
        }
        s.store(true, Ordering::SeqCst);
    });
    let mut hits = 0u64;
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let before = forgot.load(Ordering::SeqCst);
        let r = send(&mut reader, get(if i % 3 == 2 { B } else { A })).await;
        i += 1;
        if r.hit.is_some() {
            hits += 1;
            let v: u64 = std::str::from_utf8(&r.body[1..]).unwrap().parse().unwrap();
            assert!(
                v > before,
                "a hit replayed v{v}, forgotten by a write (up to v{before}) before it was asked"
            );
        }
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    writer_task.await.unwrap();
    assert!(hits > 0, "the reader hit at all ({i} requests)");
}

/// As above, with entries that hold no answer (no fields, empty bodies: only the store's
/// generation can stop a memo of them), told apart by status: cycle `k` stores a 404 for odd
/// `k`, a 410 for even, and a write forgets it. A hit whose status is that of the last
/// forgotten cycle, while no later cycle of that status has begun, replays a forgotten entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bodyless_memo_on_another_thread_never_outlives_a_forget() {
    let o = Arc::new(OriginState::default());
    o.empty.store(true, Ordering::SeqCst);
    o.set("/r/b", 200, vec![]);
    // Present until the first cycle: every 404 or 410 the reader sees is some cycle's.
    o.set("/r/a", 200, vec![]);
    o.after_write
        .lock()
        .unwrap()
        .insert("/r/a".into(), (204, Some(200)));
    let layer = NegativeCacheLayer::new();
    let mut reader = layer.layer(origin(o.clone()));
    let mut writer = reader.clone();
    let status_of = |k: u64| if k % 2 == 1 { 404u16 } else { 410 };
    // The last cycle begun (before the origin changes), and the last one forgotten.
    let begun = Arc::new(AtomicU64::new(0));
    let forgot = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (b, f, s, o2) = (begun.clone(), forgot.clone(), stop.clone(), o.clone());
    let writer_task = tokio::spawn(async move {
        for k in 1..=3_000u64 {
            b.store(k, Ordering::SeqCst);
            o2.set("/r/a", status_of(k), vec![]);
            let req = with(Method::GET, A, &[(CACHE_CONTROL, "no-cache".into())]);
            assert_eq!(send(&mut writer, req).await.status, status_of(k));
            tokio::task::yield_now().await;
            send(&mut writer, get(B)).await;
            assert_eq!(
                send(&mut writer, with(Method::DELETE, A, &[])).await.status,
                204
            );
            f.store(k, Ordering::SeqCst);
            tokio::task::yield_now().await;
        }
        s.store(true, Ordering::SeqCst);
    });
    let (mut hits, mut i) = (0u64, 0u64);
    while !stop.load(Ordering::SeqCst) {
        let before = forgot.load(Ordering::SeqCst);
        let r = send(&mut reader, get(if i % 3 == 2 { B } else { A })).await;
        let after = begun.load(Ordering::SeqCst);
        i += 1;
        if let Some(h) = r.hit {
            hits += 1;
            if after <= before {
                let peek = layer.handle().peek(&A.parse().unwrap());
                let oracle = with(Method::GET, A, &[(CACHE_CONTROL, "only-if-cached".into())]);
                let fresh = send(&mut reader.clone(), oracle).await;
                panic!(
                    "a hit with no cycle begun since the last forget: before {before} after {after} \
                     now begun {} forgot {}; hit {h:?}; peek {peek:?}; oracle {fresh:?}",
                    begun.load(Ordering::SeqCst),
                    forgot.load(Ordering::SeqCst)
                );
            }
            assert!(
                !(after == before + 1 && h.status.as_u16() == status_of(before)),
                "a hit replayed cycle {before}'s {}, forgotten before it was asked",
                h.status
            );
        }
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    writer_task.await.unwrap();
    assert!(hits > 0, "the reader hit at all ({i} requests)");
}

/// A tiny xorshift, so each seed's sequence is the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

/// Random sequences over a small store (capacity 4): reads of a few targets under various
/// spellings, Hosts, credentials and partitions, with request directives; writes; the
/// origin's answers changing (404/410/200/500, `max-age`, `Age`); handle invalidations and
/// clears; time moving. Each hit must (1) not have called upstream, (2) equal what a fresh
/// clone (no memo) answers with `only-if-cached` right after, and (3) for a plain absolute
/// target outside partitions, agree with `peek` right before it.
#[tokio::test(start_paused = true)]
async fn random_sequences_hits_are_what_the_store_holds() {
    let targets: &[(&str, Option<&str>)] = &[
        ("http://h.test/r/a", None),
        ("http://h.test/r/b", None),
        ("http://h.test/r/c", None),
        ("http://h.test/r/d", None),
        ("/r/a", Some("h.test")),
        ("/r/a", Some("other.test")),
        ("http://H.TEST/r/a", None),
        ("http://h.test:80/r/%61", None),
        ("/r/b", Some("h.test")),
    ];
    let paths = ["/r/a", "/r/b", "/r/c", "/r/d"];
    let directives = [
        None,
        None,
        None,
        None,
        Some("max-age=5"),
        Some("max-age=40"),
        Some("min-fresh=10"),
        Some("min-fresh=50"),
        Some("no-cache"),
        Some("only-if-cached"),
    ];
    let auths = [None, None, None, Some("Bearer u1"), Some("Bearer u2")];
    let mut total_hits = 0u64;
    let mut memo_like = 0u64;
    for seed in 1..=60u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let o = Arc::new(OriginState::default());
        o.empty.store(seed % 2 == 0, Ordering::SeqCst);
        let layer = NegativeCacheLayer::builder()
            .capacity(4)
            .ttl_404(Duration::from_secs(30))
            .ttl_410(Duration::from_secs(90))
            .credentials(Credentials::Fingerprint)
            .build()
            .unwrap();
        let part = layer.partition("p");
        let handle = layer.handle();
        let mut svcs = [
            layer.layer(origin(o.clone())),
            layer.layer(origin(o.clone())),
            part.layer(origin(o.clone())),
        ];
        let svcs_partitioned = [false, false, true];
        for step in 0..400 {
            let ctx = format!("seed {seed} step {step}");
            match rng.below(100) {
                0..=59 => {
                    let (uri, host) = *rng.pick(targets);
                    let s = rng.below(svcs.len() as u64) as usize;
                    let d = *rng.pick(&directives);
                    let auth = *rng.pick(&auths);
                    let method = if rng.below(5) == 0 {
                        Method::HEAD
                    } else {
                        Method::GET
                    };
                    let bypass = rng.below(30) == 0;
                    let mut fields = vec![];
                    if let Some(h) = host {
                        fields.push((HOST, h.to_owned()));
                    }
                    if let Some(a) = auth {
                        fields.push((AUTHORIZATION, a.to_owned()));
                    }
                    let mut oracle_fields = fields.clone();
                    if let Some(d) = d {
                        fields.push((CACHE_CONTROL, d.to_owned()));
                    }
                    oracle_fields.push((
                        CACHE_CONTROL,
                        match d {
                            Some(d) => format!("{d}, only-if-cached"),
                            None => "only-if-cached".to_owned(),
                        },
                    ));
                    let mut req = with(method.clone(), uri, &fields);
                    if bypass {
                        req.extensions_mut().insert(BypassNegativeCache);
                    }
                    let plain = host.is_none() && auth.is_none() && !svcs_partitioned[s];
                    // `peek` says what a GET would get: a HEAD's answer answers no GET
                    // (RFC 9111 §4), so it is not what `peek` reports.
                    let peeked = (plain && method == Method::GET)
                        .then(|| handle.peek(&uri.parse().unwrap()));
                    let calls = o.calls();
                    let got = send(&mut svcs[s], req).await;
                    let called = o.calls() != calls;
                    match got.hit {
                        Some(h) => {
                            total_hits += 1;
                            assert!(!called, "{ctx}: a hit called upstream");
                            assert!(!bypass && d != Some("no-cache"), "{ctx}: a refresh hit");
                            let oracle = with(method.clone(), uri, &oracle_fields);
                            let fresh = send(&mut svcs[s].clone(), oracle).await;
                            assert_eq!(got, fresh, "{ctx}: the hit vs. a store lookup now");
                            if let Some(p) = peeked {
                                let p = p.unwrap_or_else(|| {
                                    panic!("{ctx}: a hit the store did not hold: {got:?}")
                                });
                                assert_eq!(
                                    (p.status, p.age, p.remaining, p.ttl),
                                    (h.status, h.age, h.remaining, h.ttl),
                                    "{ctx}: peek before"
                                );
                            }
                            if d.is_none() && auth.is_none() && host.is_none() {
                                memo_like += 1;
                            }
                        }
                        None => {
                            assert!(
                                called || got.status == 504,
                                "{ctx}: neither a hit nor upstream: {got:?}"
                            );
                            if let Some(Some(p)) = peeked {
                                // The store held a fresh entry: only a directive or a bypass
                                // sends it upstream.
                                let refused = match d {
                                    Some("max-age=5") => p.age > Duration::from_secs(5),
                                    Some("max-age=40") => p.age > Duration::from_secs(40),
                                    Some("min-fresh=10") => p.remaining < Duration::from_secs(10),
                                    Some("min-fresh=50") => p.remaining < Duration::from_secs(50),
                                    Some("no-cache") => true,
                                    _ => false,
                                };
                                assert!(
                                    refused || bypass,
                                    "{ctx}: the store held {p:?}, not answered ({d:?})"
                                );
                            }
                        }
                    }
                }
                60..=69 => {
                    let (uri, host) = *rng.pick(targets);
                    let s = rng.below(svcs.len() as u64) as usize;
                    let m = rng
                        .pick(&[Method::POST, Method::PUT, Method::DELETE])
                        .clone();
                    let path = *rng.pick(&paths);
                    let answer = *rng.pick(&[204u16, 201, 500]);
                    let then = *rng.pick(&[None, Some(200u16), Some(404)]);
                    o.after_write
                        .lock()
                        .unwrap()
                        .insert(path.to_owned(), (answer, then));
                    let mut fields = vec![];
                    if let Some(h) = host {
                        fields.push((HOST, h.to_owned()));
                    }
                    send(&mut svcs[s], with(m, uri, &fields)).await;
                }
                70..=84 => {
                    let path = *rng.pick(&paths);
                    let status = *rng.pick(&[404u16, 404, 410, 200, 500]);
                    let fields = match rng.below(4) {
                        0 => vec![("cache-control", format!("max-age={}", rng.below(50)))],
                        1 => vec![("age", format!("{}", rng.below(40)))],
                        _ => vec![],
                    };
                    o.set(path, status, fields);
                }
                85..=89 => match rng.below(4) {
                    0 => {
                        let (uri, _) = *rng.pick(&targets[..4]);
                        handle.invalidate_uri(&uri.parse().unwrap());
                    }
                    1 => {
                        handle.invalidate(rng.pick(&targets[..4]).0);
                    }
                    2 => {
                        let path = *rng.pick(&paths);
                        handle.invalidate_if(|k| k.ends_with(path));
                    }
                    _ => {
                        handle.clear();
                    }
                },
                90..=94 => {
                    // Swap a service for a fresh clone now and then (a clone has no memo).
                    let s = rng.below(svcs.len() as u64) as usize;
                    if rng.below(4) == 0 {
                        svcs[s] = svcs[s].clone();
                    }
                }
                _ => {
                    let d = match rng.below(4) {
                        0 => Duration::from_millis(1),
                        1 => Duration::from_secs(rng.below(10)),
                        2 => Duration::from_secs(29) + Duration::from_millis(999),
                        _ => Duration::from_secs(rng.below(100)),
                    };
                    tokio::time::advance(d).await;
                }
            }
        }
    }
    assert!(total_hits > 1_000, "hits: {total_hits}");
    assert!(memo_like > 300, "plain hits: {memo_like}");
}
