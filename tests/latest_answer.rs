//! The latest answer wins, in every order: a concurrent model of the negative cache.
//!
//! The rule (the crate docs state it): **a remembered 404 or 410 is served only if no 2xx,
//! successful write or invalidation of its key landed after the 404's request started.**
//!
//! A proptest drives several requests for a few keys through the real `NegativeCache` over an
//! upstream whose calls park until the test lands them. Each step starts a GET or a PUT, lands
//! a parked call (404, 410, 200; a PUT's 201 or 409), invalidates a key, clears, or moves the
//! paused clock — in any interleaving, with coalescing on or off. After every step, what the
//! cache would answer for each key (`peek`) must equal what a reference model of the rule
//! says, and every request the cache answered itself must have been answered with what the
//! model holds.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};
use tokio::sync::oneshot;
use tower::{Layer, Service, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::cache::NegativeCacheHit;

const KEYS: usize = 3;
const TTL_404_MS: u64 = 1_000;
const TTL_410_MS: u64 = 2_500;

type Req = Request<Empty<Bytes>>;
type Res = Response<Empty<Bytes>>;

#[derive(Clone, Debug)]
enum Op {
    /// A GET (or a PUT) of key `k` starts.
    Start {
        k: usize,
        put: bool,
    },
    /// One of the parked upstream calls lands with this status (a GET's 404/410/200; a PUT
    /// lands 201 for a 2xx pick and 409 otherwise).
    Land {
        which: usize,
        status: u16,
    },
    Invalidate(usize),
    Clear,
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..KEYS, prop::bool::weighted(0.2)).prop_map(|(k, put)| Op::Start { k, put }),
        6 => (any::<usize>(), prop::sample::select(vec![404u16, 410, 200]))
            .prop_map(|(which, status)| Op::Land { which, status }),
        1 => (0..KEYS).prop_map(Op::Invalidate),
        1 => Just(Op::Clear),
        2 => prop_oneof![Just(0u64), Just(TTL_404_MS), 1..3_000u64].prop_map(Op::Advance),
    ]
}

/// A call the upstream received and holds until the test lands it.
struct Parked {
    id: usize,
    tx: oneshot::Sender<Res>,
    /// When it was sent (ms on the paused clock since the case began): its answer's age on
    /// arrival counts from here (RFC 9111 §4.2.3).
    sent_ms: u64,
}

#[derive(Default)]
struct Upstream {
    parked: Vec<Parked>,
}

/// What the model knows of one request.
#[derive(Clone, Copy, Debug)]
struct Started {
    k: usize,
    put: bool,
    /// The step it started at.
    at: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    status: u16,
    expires_ms: u64,
}

#[derive(Default, Debug)]
struct Model {
    now_ms: u64,
    entries: [Option<Entry>; KEYS],
    /// The last step at which each key changed (a 2xx, a successful write, an invalidation,
    /// a clear).
    changed_at: [Option<usize>; KEYS],
}

impl Model {
    fn fresh(&self, k: usize) -> Option<u16> {
        self.entries[k]
            .filter(|e| self.now_ms < e.expires_ms)
            .map(|e| e.status)
    }

    fn change(&mut self, k: usize, step: usize) {
        self.entries[k] = None;
        self.changed_at[k] = Some(step);
    }

    fn landed(&mut self, r: Started, status: u16, step: usize, sent_ms: u64) {
        let ttl = if status == 410 {
            TTL_410_MS
        } else {
            TTL_404_MS
        };
        match (r.put, status) {
            // Its lifetime counts from when it was sent: one that took the whole of it is
            // stale on arrival, not stored, and what was remembered for the key goes too.
            (false, 404 | 410) if self.now_ms - sent_ms >= ttl => self.change(r.k, step),
            // Remembered only if nothing changed the key since the request started.
            (false, 404 | 410) if self.changed_at[r.k].is_none_or(|c| c < r.at) => {
                self.entries[r.k] = Some(Entry {
                    status,
                    expires_ms: sent_ms + ttl,
                });
            }
            (_, 200..=299) => self.change(r.k, step),
            _ => {}
        }
    }
}

fn uri(k: usize) -> String {
    format!("http://origin.test/r/{k}")
}

/// Lets every spawned task run until none can make progress.
async fn settle() {
    for _ in 0..32 {
        tokio::task::yield_now().await;
    }
}

type Answer = Result<Res, Infallible>;

fn run(coalesce: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut builder = NegativeCacheLayer::builder()
            .ttl_404(Duration::from_millis(TTL_404_MS))
            .ttl_410(Duration::from_millis(TTL_410_MS));
        if coalesce {
            // Long enough that no wait ends by its bound within a case.
            builder = builder.coalesce(Duration::from_secs(60));
        }
        let cache = builder.build().unwrap();
        let handle = cache.handle();
        let upstream = Arc::new(Mutex::new(Upstream::default()));
        let begin = tokio::time::Instant::now();
        let inner = {
            let upstream = upstream.clone();
            tower::service_fn(move |req: Req| {
                let id: usize = req.headers()["x-id"].to_str().unwrap().parse().unwrap();
                let (tx, rx) = oneshot::channel();
                let sent_ms = u64::try_from(begin.elapsed().as_millis()).unwrap();
                upstream
                    .lock()
                    .unwrap()
                    .parked
                    .push(Parked { id, tx, sent_ms });
                async move { Ok::<_, Infallible>(rx.await.expect("every parked call is landed")) }
            })
        };
        let mut svc = cache.layer(inner);
        let mut model = Model::default();
        let mut started: Vec<Started> = Vec::new();
        let mut tasks: HashMap<usize, tokio::task::JoinHandle<Answer>> = HashMap::new();

        for (step, op) in ops.iter().enumerate() {
            let at = format!("step {step} ({op:?}), model {model:?}");
            match *op {
                Op::Start { k, put } => {
                    let id = started.len();
                    started.push(Started { k, put, at: step });
                    let method = if put { Method::PUT } else { Method::GET };
                    let req = Request::builder()
                        .method(method)
                        .uri(uri(k))
                        .header("x-id", id)
                        .body(Empty::new())
                        .unwrap();
                    let fut = svc.ready().await.unwrap().call(req);
                    let fut: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(fut);
                    tasks.insert(
                        id,
                        tokio::spawn(async move { fut.await.map(|r| r.map(|_| Empty::new())) }),
                    );
                }
                Op::Land { which, status } => {
                    let parked = {
                        let mut up = upstream.lock().unwrap();
                        if up.parked.is_empty() {
                            None
                        } else {
                            let i = which % up.parked.len();
                            Some(up.parked.remove(i))
                        }
                    };
                    if let Some(p) = parked {
                        let r = started[p.id];
                        let status = match (r.put, status) {
                            (true, 200) => 201,
                            (true, _) => 409,
                            (false, s) => s,
                        };
                        let mut res = Response::new(Empty::new());
                        *res.status_mut() = StatusCode::from_u16(status).unwrap();
                        let _ = p.tx.send(res);
                        // The cache settles the answer when the caller's task polls it.
                        let task = tasks.remove(&p.id).expect("a parked call has its task");
                        let res = task.await.unwrap().unwrap();
                        prop_assert_eq!(res.status().as_u16(), status, "{}", at);
                        model.landed(r, status, step, p.sent_ms);
                    }
                }
                Op::Invalidate(k) => {
                    handle.invalidate_uri(&uri(k).parse().unwrap());
                    model.change(k, step);
                }
                Op::Clear => {
                    handle.clear();
                    for k in 0..KEYS {
                        model.change(k, step);
                    }
                }
                Op::Advance(ms) => {
                    tokio::time::advance(Duration::from_millis(ms)).await;
                    model.now_ms += ms;
                }
            }
            settle().await;
            // Requests the cache answered itself (hits, and waiters it answered): each with
            // what the model holds now.
            let finished: Vec<usize> = tasks
                .iter()
                .filter(|(_, t)| t.is_finished())
                .map(|(&id, _)| id)
                .collect();
            for id in finished {
                let res = tasks.remove(&id).unwrap().await.unwrap().unwrap();
                let r = started[id];
                let hit = res.extensions().get::<NegativeCacheHit>().copied();
                prop_assert!(
                    hit.is_some(),
                    "{}: request {} answered without upstream, not a hit",
                    at,
                    id
                );
                prop_assert!(!r.put, "{}: a PUT answered by the cache", at);
                let want = model.fresh(r.k);
                prop_assert_eq!(
                    Some(res.status().as_u16()),
                    want,
                    "{}: request {} answered from the cache",
                    at,
                    id
                );
            }
            for k in 0..KEYS {
                let got = handle
                    .peek(&uri(k).parse().unwrap())
                    .map(|h| h.status.as_u16());
                prop_assert_eq!(got, model.fresh(k), "{}: key {} after the step", at, k);
            }
        }
        if std::env::var_os("LATEST_DEBUG").is_some() {
            eprintln!(
                "coalesce {coalesce} ops {} started {} stats {:?}",
                ops.len(),
                started.len(),
                handle.stats()
            );
        }
        // Nothing is left hanging: land everything still parked with 200.
        loop {
            settle().await;
            let next = upstream.lock().unwrap().parked.pop();
            let Some(p) = next else { break };
            let _ = p.tx.send(Response::new(Empty::new()));
        }
        for (id, task) in tasks {
            let done = tokio::time::timeout(Duration::from_secs(120), task).await;
            prop_assert!(done.is_ok(), "request {} never finished", id);
        }
        Ok(())
    })
}

fn config() -> Config {
    let mut c = Config::with_cases(256);
    c.failure_persistence = None;
    c
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_latest_answer_wins_in_every_order(coalesce in any::<bool>(), ops in prop::collection::vec(op(), 1..40)) {
        run(coalesce, &ops)?;
    }
}

/// The order the first review found: a slow 200 that started before a fast 404 lands after it.
#[test]
fn a_slow_200_landing_after_a_fast_404_forgets_it() {
    for coalesce in [false, true] {
        let ops = [
            Op::Start { k: 0, put: false },
            Op::Start { k: 0, put: false },
            // Without coalescing both are parked: land the second (404) first, then the first
            // (200). With coalescing the second waits; land the leader with 404 and the
            // second is answered from the cache.
            Op::Land {
                which: 1,
                status: 404,
            },
            Op::Land {
                which: 0,
                status: 200,
            },
        ];
        run(coalesce, &ops).unwrap();
    }
}
