//! Third review: an unprocessed verdict (retried whatever the method) over reqwest.
#![cfg(feature = "reqwest")]

mod support;

use std::time::Duration;

use http::{Method, Request, StatusCode};
use tower::{Layer, ServiceExt};
use tower_negative_cache::StatusAwareRetryLayer;
use tower_negative_cache::reqwest::ReqwestService;
use tower_negative_cache::retry::Jitter;

use support::{Reply, TestServer, refused_addr};

/// classify.rs: a connect error is "unprocessed" — "no connection, nothing sent" — so a POST
/// is retried (`retry_unprocessed`, on by default). But reqwest follows redirects itself: a
/// POST the origin *processed*, answered `303 See Other` (RFC 9110 §15.4.4: "the server has
/// received the data" — the usual answer to a form or an order), is followed by a GET to the
/// Location; if that host can't be reached, reqwest's error `is_connect()` (it names the
/// hop's failure, not the POST's), and the retry layer sends the POST again: the order is
/// placed twice (three times with the default 2 retries).
///
/// Since issue 22 item 6 the adapter's client follows no redirects: the 303 itself is the
/// answer (the caller, or a `FollowRedirectLayer` above, decides what to do with it), and
/// the POST is sent once.
#[tokio::test]
async fn a_post_processed_then_redirected_to_an_unreachable_host_is_not_sent_again() {
    let gone = refused_addr();
    let server = TestServer::builder()
        .route(
            "/orders",
            std::iter::repeat_n(
                Reply::status(303).header("location", &format!("http://{gone}/orders/1")),
                3,
            ),
        )
        .start()
        .await;
    let layer = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .jitter(Jitter::None)
        .no_budget()
        .build()
        .unwrap();
    let svc = layer.layer(ReqwestService::new().unwrap());
    let req = Request::post(server.url("/orders"))
        .body(reqwest::Body::from("one order"))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        server.hits_for(Method::POST, "/orders"),
        1,
        "the POST the origin answered was sent again; stats: {:?}",
        layer.stats()
    );
}
