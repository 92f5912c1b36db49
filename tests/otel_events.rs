//! `tracing` in OpenTelemetry's HTTP client shape: each resend's answer carries
//! `http.request.resend_count`, `http.request.method`, `server.address`,
//! `http.response.status_code` and `error.type`; a cache hit names its host, never its key.
//! Against a real hyper server with retries, and a real refused connection.

#[path = "support/events.rs"]
mod events;
mod support;

use std::time::Duration;

use tower::{ServiceBuilder, ServiceExt};
use tower_negative_cache::retry::Jitter;
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};
use tracing::Level;

use events::Recorded;
use support::{Reply, TestServer};

fn named(events: &[Recorded], message: &str) -> Vec<Recorded> {
    events
        .iter()
        .filter(|e| e.get("message") == Some(message))
        .cloned()
        .collect()
}

fn fast() -> StatusAwareRetryLayer {
    StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .jitter(Jitter::None)
        .no_budget()
        .build()
        .unwrap()
}

#[tokio::test]
async fn each_resend_carries_the_otel_http_client_attributes() {
    let (events, _guard) = events::capture();
    let server = TestServer::builder()
        .route(
            "/r",
            [Reply::status(503), Reply::status(502), Reply::ok("x")],
        )
        .start()
        .await;
    let svc = ServiceBuilder::new()
        .layer(fast())
        .service(support::client());
    let url = server.url("/r?id=7");
    let res = svc.oneshot(support::get(&url)).await.unwrap();
    assert_eq!(res.status(), 200);

    let resends = named(&events.at(Level::DEBUG), "http resend answered");
    assert_eq!(resends.len(), 2, "{resends:?}");
    for (e, (count, status, error)) in resends
        .iter()
        .zip([("1", "502", Some("502")), ("2", "200", None)])
    {
        assert_eq!(e.get("http.request.resend_count"), Some(count), "{e:?}");
        assert_eq!(e.get("http.request.method"), Some("GET"), "{e:?}");
        assert_eq!(e.get("server.address"), Some("127.0.0.1"), "{e:?}");
        assert_eq!(e.get("http.response.status_code"), Some(status), "{e:?}");
        assert_eq!(e.get("error.type"), error, "{e:?}");
        // Bounded: no URI, path or query in the attributes.
        assert!(e.fields.values().all(|v| !v.contains("id=7")), "{e:?}");
    }
}

#[tokio::test]
async fn a_resent_transport_error_carries_its_error_type() {
    let (events, _guard) = events::capture();
    let url = format!("http://{}/gone", support::refused_addr());
    let svc = ServiceBuilder::new()
        .layer(fast())
        .service(support::client());
    svc.oneshot(support::get(&url)).await.unwrap_err();

    let resends = named(&events.at(Level::DEBUG), "http resend answered");
    assert_eq!(resends.len(), 2, "{resends:?}");
    for (i, e) in resends.iter().enumerate() {
        let count = (i + 1).to_string();
        assert_eq!(e.get("http.request.resend_count"), Some(&*count), "{e:?}");
        assert_eq!(e.get("server.address"), Some("127.0.0.1"), "{e:?}");
        assert_eq!(e.get("http.response.status_code"), None, "{e:?}");
        let error = e.get("error.type").unwrap_or_default();
        assert!(error.contains("hyper_util"), "{e:?}");
    }
}

#[tokio::test]
async fn a_hit_names_its_host_never_its_key() {
    let (events, _guard) = events::capture();
    let server = TestServer::always(Reply::status(404)).await;
    let svc = ServiceBuilder::new()
        .layer(NegativeCacheLayer::new())
        .layer(fast())
        .service(support::client());
    let url = server.url("/records/secret-id-42?token=t0k3n");
    for _ in 0..2 {
        let res = svc.clone().oneshot(support::get(&url)).await.unwrap();
        assert_eq!(res.status(), 404);
    }
    assert_eq!(server.total_hits(), 1);

    let hits = named(&events.at(Level::DEBUG), "negative cache: hit");
    assert_eq!(hits.len(), 1, "{hits:?}");
    let hit = &hits[0];
    assert_eq!(hit.get("server.address"), Some("127.0.0.1"), "{hit:?}");
    assert_eq!(hit.get("http.request.method"), Some("GET"), "{hit:?}");
    assert_eq!(hit.get("http.response.status_code"), Some("404"), "{hit:?}");
    for value in hit.fields.values() {
        assert!(
            !value.contains("secret-id-42") && !value.contains("t0k3n"),
            "{hit:?}"
        );
    }
}
