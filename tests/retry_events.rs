//! The retry layer's `tracing` events carry what an operator needs to read them: the method,
//! the URI, the attempt, the wait and the status or the error text (with its sources). Against a
//! real hyper server and a real refused connection.

#[path = "support/events.rs"]
mod events;
mod support;

use std::time::Duration;

use http::Method;
use tower::{ServiceBuilder, ServiceExt};
use tower_negative_cache::StatusAwareRetryLayer;
use tower_negative_cache::retry::{Builder, Jitter};
use tracing::Level;

use events::Recorded;
use support::{Reply, TestServer};

/// Waits 1 ms then 2 ms.
fn fast() -> Builder {
    StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .jitter(Jitter::None)
        .no_budget()
}

fn with_message(events: &[Recorded], message: &str) -> Vec<Recorded> {
    events
        .iter()
        .filter(|e| e.get("message") == Some(message))
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_retry_names_the_method_uri_attempt_wait_and_status() {
    let (events, _guard) = events::capture();
    let server = TestServer::builder()
        .route(
            "/r",
            [Reply::status(503), Reply::status(502), Reply::ok("x")],
        )
        .start()
        .await;
    let url = server.url("/r?id=7");
    let svc = ServiceBuilder::new()
        .layer(fast().build().unwrap())
        .service(support::client());
    let res = svc.oneshot(support::get(&url)).await.unwrap();
    assert_eq!(res.status(), 200);

    let retries = with_message(&events.at(Level::DEBUG), "retrying");
    assert_eq!(retries.len(), 2, "{retries:?}");
    for (e, (attempt, wait, status)) in retries.iter().zip([
        ("1", "1ms", "503 Service Unavailable"),
        ("2", "2ms", "502 Bad Gateway"),
    ]) {
        assert_eq!(e.get("method"), Some("GET"), "{e:?}");
        assert_eq!(e.get("uri"), Some(url.as_str()), "{e:?}");
        assert_eq!(e.get("attempt"), Some(attempt), "{e:?}");
        assert_eq!(e.get("wait"), Some(wait), "{e:?}");
        assert_eq!(e.get("status"), Some(status), "{e:?}");
    }
}

#[tokio::test]
async fn a_refused_connection_is_logged_with_its_error_text_through_to_giving_up() {
    let (events, _guard) = events::capture();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/gone", listener.local_addr().unwrap());
    drop(listener);
    let svc = ServiceBuilder::new()
        .layer(fast().max_retries(1).build().unwrap())
        .service(support::client());
    svc.oneshot(support::get(&url)).await.unwrap_err();

    let debug = events.at(Level::DEBUG);
    let retry = &with_message(&debug, "retrying")[0];
    let gave_up = &with_message(&debug, "returning a retryable answer")[0];
    for e in [retry, gave_up] {
        assert_eq!(e.get("method"), Some("GET"), "{e:?}");
        assert_eq!(e.get("uri"), Some(url.as_str()), "{e:?}");
        // hyper-util's "client error (Connect)" and, from its sources, the OS's refusal.
        let text = e.get("error").unwrap_or_default();
        assert!(text.contains("client error (Connect)"), "{e:?}");
        assert!(text.to_lowercase().contains("refused"), "{e:?}");
    }
    assert_eq!(retry.get("wait"), Some("1ms"));
    assert_eq!(gave_up.get("attempts"), Some("2"));
    assert_eq!(gave_up.get("reason"), Some("max_retries used up"));
}

#[tokio::test]
async fn a_request_sent_once_is_logged_with_its_method_and_uri() {
    let (events, _guard) = events::capture();
    let server = TestServer::always(Reply::status(503)).await;
    let url = server.url("/orders");
    let svc = ServiceBuilder::new()
        .layer(fast().build().unwrap())
        .service(support::client());
    let res = svc
        .oneshot(support::request(Method::POST, &url))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let e = &with_message(&events.at(Level::DEBUG), "returning a retryable answer")[0];
    assert_eq!(e.get("method"), Some("POST"), "{e:?}");
    assert_eq!(e.get("uri"), Some(url.as_str()), "{e:?}");
    assert_eq!(e.get("reason"), Some("not replayable or not idempotent"));
    assert_eq!(e.get("status"), Some("503 Service Unavailable"));
}
