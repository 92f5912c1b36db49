//! Issue 22, item 1: a POST is sent again only on proof tied to the request the retry layer
//! sent. Over real servers: an origin that processes the POST and answers `303 See Other`
//! with a `Location` at a port that refuses connections, and a port that refuses the POST
//! itself; through the stack (retry -> FollowRedirect -> client) and the README's
//! (Trace -> FollowRedirect -> cache -> Decompression -> retry -> timeout -> client).

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use tower::timeout::TimeoutLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::decompression::DecompressionLayer;
use tower_http::follow_redirect::FollowRedirectLayer;
use tower_http::trace::TraceLayer;
use tower_negative_cache::retry::{Jitter, WitnessLayer};
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

use support::{Reply, TestServer};

fn retry() -> StatusAwareRetryLayer {
    StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .jitter(Jitter::None)
        .no_budget()
        .build()
        .unwrap()
}

/// An origin that processes `POST /orders` and answers 303 to a port where nothing listens.
async fn origin() -> TestServer {
    let gone = support::refused_addr();
    TestServer::builder()
        .default_reply(Reply::status(303).header("location", &format!("http://{gone}/done")))
        .start()
        .await
}

fn post(url: String) -> Request<Full<Bytes>> {
    Request::post(url)
        .body(Full::new(Bytes::from_static(b"order-1")))
        .unwrap()
}

#[tokio::test]
async fn a_post_answered_303_to_a_refusing_port_is_sent_once_through_follow_redirect() {
    for witness in [false, true] {
        let server = origin().await;
        let layer = retry();
        let client = support::client_full();
        let result = if witness {
            ServiceBuilder::new()
                .layer(layer.clone())
                .layer(FollowRedirectLayer::new())
                .layer(WitnessLayer::new())
                .service(client)
                .oneshot(post(server.url("/orders")))
                .await
        } else {
            ServiceBuilder::new()
                .layer(layer.clone())
                .layer(FollowRedirectLayer::new())
                .service(client)
                .oneshot(post(server.url("/orders")))
                .await
        };
        let err = result.expect_err("the redirect's hop is refused");
        assert!(err.is_connect(), "{err}");
        let stats = layer.stats();
        assert_eq!(
            server.hits_for(Method::POST, "/orders"),
            1,
            "witness: {witness}; the POST was processed once and must not be sent again: {stats:?}"
        );
        assert_eq!((stats.retries, stats.not_retried), (0, 1), "{stats:?}");
        assert_eq!(stats.unwitnessed, 1, "{stats:?}");
    }
}

#[tokio::test]
async fn through_the_readme_stack_a_processed_post_is_sent_once_and_a_refused_one_is_retried() {
    let cache = NegativeCacheLayer::new();
    let layer = retry();
    let stack = |witness: bool| {
        let base = ServiceBuilder::new()
            .layer(TraceLayer::new_for_http())
            .layer(FollowRedirectLayer::new())
            .layer(cache.clone())
            .layer(DecompressionLayer::new())
            .layer(layer.clone())
            .layer(TimeoutLayer::new(Duration::from_secs(10)));
        let client = support::client_full();
        if witness {
            tower::util::Either::Left(base.layer(WitnessLayer::new()).service(client))
        } else {
            tower::util::Either::Right(base.service(client))
        }
    };

    // Processed, answered 303 to a refusing port: the redirect outside the retry layer makes
    // the hop a GET of its own (retried, idempotent); the POST went once.
    let server = origin().await;
    let err = stack(true).oneshot(post(server.url("/orders"))).await;
    let err = failed(err, "the redirect's hop is refused");
    assert!(err.to_string().contains("onnect"), "{err}");
    assert_eq!(server.hits_for(Method::POST, "/orders"), 1);
    let s = layer.stats();
    assert_eq!(
        (s.requests, s.succeeded),
        (2, 1),
        "the POST's 303 and the GET hop: {s:?}"
    );
    assert_eq!(
        (s.retries, s.gave_up),
        (2, 1),
        "the GET hop is retried: {s:?}"
    );

    // Refused itself, with a witness on the transport: proof of the request's own, retried.
    let gone = support::refused_addr();
    let before = layer.stats();
    let err = stack(true)
        .oneshot(post(format!("http://{gone}/orders")))
        .await;
    let err = failed(err, "nothing listens");
    assert!(err.to_string().contains("onnect"), "{err}");
    let s = layer.stats();
    assert_eq!(s.attempts - before.attempts, 3, "{s:?}");
    assert_eq!(s.unwitnessed, before.unwitnessed, "{s:?}");

    // The same without a witness: no proof tied to the request, sent once and counted.
    let before = layer.stats();
    let err = stack(false)
        .oneshot(post(format!("http://{gone}/orders")))
        .await;
    let err = failed(err, "nothing listens");
    assert!(err.to_string().contains("onnect"), "{err}");
    let s = layer.stats();
    assert_eq!(s.attempts - before.attempts, 1, "{s:?}");
    assert_eq!(s.unwitnessed - before.unwitnessed, 1, "{s:?}");
    assert_eq!(s.not_retried - before.not_retried, 1, "{s:?}");

    // An idempotent request needs no proof: a refused PUT is retried without a witness.
    let before = layer.stats();
    let put = Request::put(format!("http://{gone}/orders/1"))
        .body(Full::new(Bytes::from_static(b"order-1")))
        .unwrap();
    failed(stack(false).oneshot(put).await, "nothing listens");
    let s = layer.stats();
    assert_eq!(s.attempts - before.attempts, 3, "{s:?}");
    assert_eq!(s.unwitnessed, before.unwitnessed, "{s:?}");
}

/// The error of a result that must have failed (the response types here have no `Debug`).
fn failed<T, E>(result: Result<T, E>, why: &str) -> E {
    match result {
        Ok(_) => panic!("answered, expected an error: {why}"),
        Err(e) => e,
    }
}
