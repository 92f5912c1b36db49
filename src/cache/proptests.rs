//! Stateful property test of the negative cache: the real layer over a scripted upstream on
//! tokio's paused clock, step by step against a small reference model.
//!
//! The model is a map key -> (status, stored_ms, expires_ms) that, like the store, keeps an
//! expired entry until it is read. Fresh means `now_ms < expires_ms`: exactly at expiry is a
//! miss. With a capacity of at least [`KEYS`] the cache must agree with it exactly; below, it
//! may have evicted what the model remembers (a hit may become an upstream call), but it may
//! never answer from the cache what the model does not hold fresh.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::Empty;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::Config;
use tower::{Layer, Service, ServiceExt};

use super::{CacheStats, NegativeCacheHit, NegativeCacheLayer};

const KEYS: usize = 6;
const DAY_MS: u64 = 86_400_000;
type R<T = ()> = Result<T, TestCaseError>;

/// What the origin adds to a scripted answer.
#[derive(Clone, Copy, Debug)]
enum Cc {
    Plain,
    NoStore,
    MaxAge(u64),
}

/// What upstream answers a GET or HEAD.
#[derive(Clone, Copy, Debug)]
struct Answer {
    status: u16,
    cc: Cc,
}

/// A `Location` (or `Content-Location`) on a write's answer: a path of this origin, or the
/// same path on another origin (which must not be forgotten).
#[derive(Clone, Copy, Debug)]
struct Loc {
    content: bool,
    k: usize,
    foreign: bool,
}

/// A GET or HEAD (`head`), with `Cache-Control: no-cache` or not, and upstream's answer.
#[derive(Clone, Copy, Debug)]
struct Get {
    k: usize,
    head: bool,
    no_cache: bool,
    alt_uri: bool,
    answer: Answer,
}

/// A PUT, POST or DELETE of `k`, and upstream's answer.
#[derive(Clone, Debug)]
struct Write {
    k: usize,
    method: Method,
    status: u16,
    loc: Option<Loc>,
}

#[derive(Clone, Debug)]
enum Op {
    Get(Get),
    Write(Write),
    Advance(u64),
    /// Advances to the model's expiry of the next op's key, plus `delta` ms: boundaries.
    ToExpiry(i8),
    /// `handle.invalidate_uri` of `k`, through the alternative URI form or not.
    Invalidate(usize, bool),
    Clear,
}

/// A configuration the builder accepts (all times in ms).
#[derive(Clone, Copy, Debug)]
struct Cfg {
    capacity: u64,
    ttl_404: u64,
    ttl_410: u64,
    max: u64,
    respect: bool,
}

impl Cfg {
    /// The TTL the layer should give an answer, or `None` if it must not remember it.
    fn ttl(&self, a: Answer) -> Option<u64> {
        let default = if a.status == 410 {
            self.ttl_410
        } else {
            self.ttl_404
        };
        // An explicit lifetime is an upper bound; zero is stale on arrival (RFC 9111 §4.2).
        let raw = match a.cc {
            Cc::NoStore => return None,
            Cc::MaxAge(n) if self.respect => n * 1000,
            _ => default,
        };
        (raw > 0).then(|| raw.min(self.max))
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    status: u16,
    stored: u64,
    expires: u64,
    /// Learned from a HEAD: it answers a HEAD only (RFC 9111 §4).
    head: bool,
}

#[derive(Debug, Default)]
struct Model {
    now: u64,
    entries: HashMap<usize, Entry>,
    /// Answered 2xx, written successfully or invalidated since its last remembered 404/410.
    cleared: [bool; KEYS],
    lookups: u64,
    hits: u64,
    inserts: u64,
    expirations: u64,
    invalidations: u64,
    bypasses: u64,
}

impl Model {
    /// The fresh entry for `k`; an expired one is dropped, as the store drops it when read.
    /// What a GET (or a HEAD: `head`) of `k` is answered from.
    fn lookup(&mut self, k: usize, head: bool) -> Option<Entry> {
        let e = *self.entries.get(&k)?;
        if e.expires <= self.now {
            self.entries.remove(&k);
            self.expirations += 1;
            return None;
        }
        Some(e).filter(|e| head || !e.head)
    }

    fn forget(&mut self, k: usize) {
        self.cleared[k] = true;
        if self.entries.remove(&k).is_some() {
            self.invalidations += 1;
        }
    }

    /// Upstream answered a read of `k` (a HEAD: `head`) with `a`.
    fn answered(&mut self, cfg: &Cfg, k: usize, a: Answer, head: bool) {
        match a.status {
            200..=399 => self.forget(k),
            404 | 410 => match cfg.ttl(a) {
                Some(ttl) => {
                    let e = Entry {
                        status: a.status,
                        stored: self.now,
                        expires: self.now + ttl,
                        head,
                    };
                    // Over an entry still held (a refresh): a replacement, not an eviction.
                    self.entries.insert(k, e);
                    self.cleared[k] = false;
                    self.inserts += 1;
                }
                // no-store: whatever was remembered is dropped too (not an invalidation).
                // Not to be stored: what was remembered is forgotten (and counted).
                None => {
                    if self.entries.remove(&k).is_some() {
                        self.invalidations += 1;
                    }
                }
            },
            _ => {}
        }
    }
}

/// Upstream's next answer and the calls it got, per key (index `KEYS`: any other path).
#[derive(Default)]
struct Script {
    next: Option<Response<Empty<Bytes>>>,
    calls: [u64; KEYS + 1],
}

fn uri(k: usize, alt: bool) -> String {
    if alt {
        format!("HTTP://Origin.TEST:80/r/{k}") // normalises to the same key
    } else {
        format!("http://origin.test/r/{k}")
    }
}

fn response(status: u16, headers: &[(&str, String)]) -> Response<Empty<Bytes>> {
    let mut b = Response::builder().status(status);
    for &(name, ref value) in headers {
        b = b.header(name, value);
    }
    b.body(Empty::new()).unwrap()
}

/// Runs `ops` against a fresh layer and the model; the layer's final stats.
fn run(cfg: Cfg, ops: &[Op]) -> R<CacheStats> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    // The store's epoch is read at build: on the paused clock, like every later `now`.
    let _ctx = rt.enter();
    let ms = Duration::from_millis;
    let layer = NegativeCacheLayer::builder()
        .capacity(cfg.capacity)
        .ttl_404(ms(cfg.ttl_404))
        .ttl_410(ms(cfg.ttl_410))
        .max_ttl(ms(cfg.max))
        .respect_cache_headers(cfg.respect)
        .build()
        .expect("a valid configuration");
    let handle = layer.handle();
    let script = Arc::new(Mutex::new(Script::default()));
    let upstream = {
        let script = script.clone();
        tower::service_fn(move |req: Request<Empty<Bytes>>| {
            let mut s = script.lock().unwrap();
            let k = req.uri().path().strip_prefix("/r/");
            let k = k.and_then(|k| k.parse().ok()).unwrap_or(KEYS).min(KEYS);
            s.calls[k] += 1;
            let res = s.next.take().unwrap_or_else(|| response(599, &[]));
            std::future::ready(Ok::<_, Infallible>(res))
        })
    };
    let mut svc = layer.layer(upstream);
    let mut send = |req: Request<Empty<Bytes>>, next: Response<Empty<Bytes>>| {
        let before = script.lock().unwrap().calls;
        script.lock().unwrap().next = Some(next);
        let res = rt.block_on(async { svc.ready().await?.call(req).await });
        let mut s = script.lock().unwrap();
        s.next = None;
        let called: Vec<u64> = (0..=KEYS).map(|i| s.calls[i] - before[i]).collect();
        (res.unwrap_or_else(|e| match e {}), called)
    };
    let once = |k: usize| -> Vec<u64> { (0..=KEYS).map(|i| u64::from(i == k)).collect() };
    let none = vec![0; KEYS + 1];
    let exact = cfg.capacity >= KEYS as u64;
    let mut m = Model::default();
    for (step, op) in ops.iter().enumerate() {
        let at = format!("step {step} at {} ms: {op:?}", m.now);
        match *op {
            Op::Get(g) => {
                let (k, answer) = (g.k, g.answer);
                let method = if g.head { Method::HEAD } else { Method::GET };
                let mut req = Request::builder().method(method).uri(uri(k, g.alt_uri));
                if g.no_cache {
                    req = req.header(header::CACHE_CONTROL, "no-cache");
                }
                let cc = match answer.cc {
                    Cc::Plain => vec![],
                    Cc::NoStore => vec![("cache-control", "no-store".to_owned())],
                    Cc::MaxAge(n) => vec![("cache-control", format!("max-age={n}"))],
                };
                let next = response(answer.status, &cc);
                let (res, called) = send(req.body(Empty::new()).unwrap(), next);
                let expected = if g.no_cache {
                    m.bypasses += 1;
                    None
                } else {
                    m.lookups += 1;
                    m.lookup(k, g.head)
                };
                let status = res.status().as_u16();
                let synthesized = res.body().is_synthesized();
                match (res.extensions().get::<NegativeCacheHit>(), expected) {
                    (Some(h), Some(e)) => {
                        m.hits += 1;
                        let age = res.headers().get(header::AGE).map(|v| v.to_str().ok());
                        let got = (called, status, synthesized, h.age, h.remaining, age);
                        let (age, left) = (ms(m.now - e.stored), ms(e.expires - m.now));
                        let secs = age.as_secs().to_string();
                        let want = (none.clone(), e.status, true, age, left, Some(Some(&*secs)));
                        let what = "(calls, status, synthesized, age, remaining, Age)";
                        prop_assert_eq!(got, want, "{}: {}", at, what);
                        prop_assert!(!m.cleared[k], "{}: a cleared key served from the cache", at);
                    }
                    (Some(h), None) => {
                        let e = m.entries.get(&k);
                        prop_assert!(false, "{}: hit {:?}, but the model has {:?}", at, h, e);
                    }
                    (None, e) => {
                        // Only an eviction may lose a fresh entry.
                        let evictions = handle.stats().evictions;
                        let lost = e.is_some() && (exact || evictions == 0);
                        prop_assert!(!lost, "{}: missed {:?} ({} evictions)", at, e, evictions);
                        let want = (once(k), answer.status, false);
                        prop_assert_eq!((called, status, synthesized), want, "{}", at);
                        m.answered(&cfg, k, answer, g.head);
                    }
                }
            }
            Op::Write(ref w) => {
                let (k, status, loc) = (w.k, w.status, w.loc);
                let header = |l: &Loc| {
                    let name = ["location", "content-location"][usize::from(l.content)];
                    let origin = if l.foreign { "http://other.test" } else { "" };
                    (name, format!("{origin}/r/{}", l.k))
                };
                let next = response(status, &loc.iter().map(header).collect::<Vec<_>>());
                let req = Request::builder()
                    .method(w.method.clone())
                    .uri(uri(k, false));
                let (res, called) = send(req.body(Empty::new()).unwrap(), next);
                m.bypasses += 1;
                let hit = res.extensions().get::<NegativeCacheHit>().is_some();
                let got = (called, res.status().as_u16(), hit);
                prop_assert_eq!(got, (once(k), status, false), "{}", at);
                if (200..400).contains(&status) {
                    m.forget(k);
                    if let Some(l) = loc.filter(|l| !l.foreign) {
                        m.forget(l.k);
                    }
                }
            }
            Op::Advance(_) | Op::ToExpiry(_) => {
                let d = match (op, ops.get(step + 1)) {
                    (Op::Advance(d), _) => *d,
                    (Op::ToExpiry(delta), Some(Op::Get(g))) => m.entries.get(&g.k).map_or(0, |e| {
                        e.expires
                            .saturating_add_signed((*delta).into())
                            .saturating_sub(m.now)
                    }),
                    _ => 0,
                };
                m.now += d;
                rt.block_on(tokio::time::advance(ms(d)));
            }
            Op::Invalidate(k, alt_uri) => {
                let had = m.entries.contains_key(&k);
                let was = handle.invalidate_uri(&uri(k, alt_uri).parse().unwrap());
                prop_assert!(was == had || (!exact && had), "{}: returned {}", at, was);
                m.forget(k);
            }
            Op::Clear => {
                let (n, held) = (handle.clear(), m.entries.len() as u64);
                let ok = n == held || (!exact && n < held);
                prop_assert!(ok, "{}: {} of {}", at, n, held);
                m.invalidations += n;
                m.entries.clear();
                m.cleared = [true; KEYS];
            }
        }
        let st = handle.stats();
        prop_assert!(st.len <= cfg.capacity, "{}: len {}", at, st.len);
        prop_assert_eq!(st.lookups, st.hits + st.misses, "{}", at);
        let got = (st.lookups, st.hits, st.inserts, st.bypasses);
        prop_assert_eq!(got, (m.lookups, m.hits, m.inserts, m.bypasses), "{}", at);
        if exact {
            let got = (st.len, st.evictions, st.expirations, st.invalidations);
            let want = (m.entries.len() as u64, 0, m.expirations, m.invalidations);
            let what = "(len, evictions, expirations, invalidations)";
            prop_assert_eq!(got, want, "{}: {}", at, what);
        }
    }
    Ok(handle.stats())
}

fn cfg() -> impl Strategy<Value = Cfg> {
    let capacity = prop_oneof![1..=8u64, Just(10_000)];
    let min = select(vec![1u64, 250, 500, 1000, 2000]);
    let max = prop::option::of(0..=12u64);
    (capacity, min, 0..=16u64, 0..=16u64, max, any::<bool>()).prop_map(
        |(capacity, min, a, b, max, respect)| {
            let (ttl_404, ttl_410) = (min + 250 * a, min + 250 * b);
            Cfg {
                capacity,
                ttl_404,
                ttl_410,
                max: max.map_or(DAY_MS, |c| ttl_404.max(ttl_410) + 250 * c),
                respect,
            }
        },
    )
}

fn answer() -> impl Strategy<Value = Answer> {
    let plain = |status| Answer {
        status,
        cc: Cc::Plain,
    };
    prop_oneof![
        4 => select(vec![200u16, 404, 410, 503]).prop_map(plain),
        1 => Just(Answer { status: 404, cc: Cc::NoStore }),
        2 => (select(vec![404u16, 410]), 0..=8u64)
            .prop_map(|(status, n)| Answer { status, cc: Cc::MaxAge(n) }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..KEYS;
    let loc =
        (any::<bool>(), k.clone(), prop::bool::weighted(0.3)).prop_map(|(content, k, foreign)| {
            Loc {
                content,
                k,
                foreign,
            }
        });
    let write = (
        k.clone(),
        select(vec![Method::PUT, Method::POST, Method::DELETE]),
        select(vec![200u16, 201, 204, 303, 404, 409]),
        prop::option::weighted(0.3, loc),
    );
    // Multiples of 250 ms meet TTLs exactly at their expiry.
    let advance = prop_oneof![
        4 => (0..=12u64).prop_map(|n| n * 250),
        1 => 0..5000u64,
        1 => Just(1),
    ];
    prop_oneof![
        16 => (k.clone(), any::<bool>(), prop::bool::weighted(0.15), any::<bool>(), answer())
            .prop_map(|(k, head, no_cache, alt_uri, answer)| {
                Op::Get(Get { k, head, no_cache, alt_uri, answer })
            }),
        4 => write.prop_map(|(k, method, status, loc)| Op::Write(Write { k, method, status, loc })),
        6 => advance.prop_map(Op::Advance),
        2 => (-1i8..=1).prop_map(Op::ToExpiry),
        2 => (k, any::<bool>()).prop_map(|(k, alt)| Op::Invalidate(k, alt)),
        1 => Just(Op::Clear),
    ]
}

fn cases(cases: u32) -> Config {
    // No regression files: this module owns no file but itself.
    let mut config = Config::with_cases(cases);
    config.failure_persistence = None;
    config
}

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn cache_matches_model(cfg in cfg(), ops in prop::collection::vec(op(), 1..=60)) {
        run(cfg, &ops)?;
    }
}

fn get(k: usize, status: u16, cc: Cc) -> Op {
    let answer = Answer { status, cc };
    let (head, no_cache, alt_uri) = (false, false, false);
    Op::Get(Get {
        k,
        head,
        no_cache,
        alt_uri,
        answer,
    })
}

#[test]
fn expiry_boundary_is_a_miss() {
    let cfg = Cfg {
        capacity: 100,
        ttl_404: 1000,
        ttl_410: 2000,
        max: DAY_MS,
        respect: true,
    };
    let ops = [
        get(0, 404, Cc::Plain),     // remembered until 1000 ms
        get(1, 410, Cc::MaxAge(0)), // max-age=0: stale on arrival, not stored
        Op::Advance(1),
        get(1, 404, Cc::Plain), // at 1 ms: nothing there, upstream
        Op::Advance(998),
        get(0, 200, Cc::Plain), // at 999 ms: a hit
        Op::Advance(1),
        get(0, 410, Cc::Plain), // at 1000 ms: expired, upstream
    ];
    let st = run(cfg, &ops).unwrap();
    assert_eq!(
        (st.lookups, st.hits, st.expirations, st.inserts),
        (5, 1, 1, 3)
    );
}
