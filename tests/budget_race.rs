//! The retry budget under real parallelism: requests on two worker threads racing for the last
//! retry of a shared budget never both get it.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use tower::{Layer, ServiceExt};
use tower_negative_cache::StatusAwareRetryLayer;

const ROUNDS: usize = 300;
/// A bound on the spin, not a timing assertion: a round that waits it out still checks.
const SPIN_LIMIT: std::time::Duration = std::time::Duration::from_millis(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_requests_never_both_take_a_one_retry_budget() {
    let mut double = 0;
    for _ in 0..ROUNDS {
        // Two requests deposit 0.5 + 0.5: one retry between them, no per-second reserve.
        let layer = StatusAwareRetryLayer::builder()
            .max_retries(1)
            .backoff_base(std::time::Duration::ZERO)
            .budget_ratio(0.5)
            .budget_min_per_sec(0)
            .build()
            .unwrap();
        // Both first attempts are answered together, after both deposits, on two threads: a
        // spinning barrier (bounded, so two tasks on one worker can't deadlock), then the two
        // 503s ask the budget for its one retry at the same moment.
        let arrived = Arc::new(AtomicUsize::new(0));
        let upstream = {
            let arrived = arrived.clone();
            tower::service_fn(move |_: Request<Empty<Bytes>>| {
                if arrived.fetch_add(1, SeqCst) < 2 {
                    let since = std::time::Instant::now();
                    while arrived.load(SeqCst) < 2 && since.elapsed() < SPIN_LIMIT {
                        std::hint::spin_loop();
                    }
                }
                async {
                    let mut res = Response::new(Empty::<Bytes>::new());
                    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    Ok::<_, Infallible>(res)
                }
            })
        };
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let svc = layer.layer(upstream.clone());
                tokio::spawn(async move { svc.oneshot(Request::new(Empty::new())).await.unwrap() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        let s = layer.stats();
        assert!(
            s.retries <= 1,
            "a one-retry budget granted {}: {s:?}",
            s.retries
        );
        assert_eq!(s.answered(), 2, "{s:?}");
        double += usize::from(s.retries > 1);
    }
    assert_eq!(double, 0);
}
