//! The defaults reproduce the incident's fix: two retries, the first waiting up to 200 ms, the
//! second up to 400 ms (backoff base 200 ms, factor 2). Paused time: no socket involved.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_negative_cache::StatusAwareRetryLayer;
use tower_negative_cache::retry::Jitter;

/// The gaps between the attempts `layer` makes against an origin answering 503 every time.
async fn gaps(layer: StatusAwareRetryLayer) -> Vec<Duration> {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let upstream = tower::service_fn(move |_req: Request<Empty<Bytes>>| {
        seen.lock().unwrap().push(Instant::now());
        async {
            let mut res = Response::new(Empty::<Bytes>::new());
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok::<_, Infallible>(res)
        }
    });
    let res = layer
        .layer(upstream)
        .oneshot(Request::new(Empty::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let at = calls.lock().unwrap().clone();
    at.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn the_default_backoff_waits_200_ms_then_400_ms() {
    // The default base and factor, without the spread of the jitter.
    let layer = StatusAwareRetryLayer::builder()
        .jitter(Jitter::None)
        .no_budget()
        .build()
        .unwrap();
    let gaps = gaps(layer).await;
    assert_eq!(gaps.len(), 2, "two retries by default: {gaps:?}");
    let ms = |d: &Duration| d.as_millis();
    assert_eq!(gaps.iter().map(ms).collect::<Vec<_>>(), [200, 400]);
}

#[tokio::test(start_paused = true)]
async fn the_default_jitter_waits_up_to_200_ms_then_up_to_400_ms() {
    let (mut longest_first, mut longest_second) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..32 {
        let gaps = gaps(
            StatusAwareRetryLayer::builder()
                .no_budget()
                .build()
                .unwrap(),
        )
        .await;
        assert_eq!(gaps.len(), 2);
        assert!(gaps[0] <= Duration::from_millis(200), "{gaps:?}");
        assert!(gaps[1] <= Duration::from_millis(400), "{gaps:?}");
        longest_first = longest_first.max(gaps[0]);
        longest_second = longest_second.max(gaps[1]);
    }
    // Full jitter draws uniformly below the bound: over 32 draws, one above the old defaults
    // (100 ms, 200 ms) fails to appear with probability 2^-32.
    assert!(
        longest_first > Duration::from_millis(100),
        "{longest_first:?}"
    );
    assert!(
        longest_second > Duration::from_millis(200),
        "{longest_second:?}"
    );
}
