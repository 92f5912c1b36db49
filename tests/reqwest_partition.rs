//! Two `reqwest::Client`s whose `default_headers` carry different credentials, under one
//! negative cache store (feature `reqwest`): the cache can't see headers reqwest adds, so each
//! client gets its own partition (`NegativeCacheLayer::partition`).
#![cfg(feature = "reqwest")]

mod support;

use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use tower::{ServiceBuilder, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::cache::NegativeCacheHit;
use tower_negative_cache::reqwest::ReqwestService;

use support::{Reply, TestServer};

/// A reqwest client sending `Authorization: Bearer {who}` on every request.
fn client_of(who: &str) -> ReqwestService {
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_str(&format!("Bearer {who}")).unwrap();
    headers.insert(http::header::AUTHORIZATION, value);
    ReqwestService::from_builder(reqwest::Client::builder().default_headers(headers)).unwrap()
}

fn req(method: Method, url: &str) -> Request<reqwest::Body> {
    Request::builder()
        .method(method)
        .uri(url)
        .body(reqwest::Body::from(""))
        .unwrap()
}

#[tokio::test]
async fn two_reqwest_clients_with_their_own_default_credentials_never_share_a_404() {
    let server = TestServer::builder()
        .handler(|r| {
            Some(
                match (r.method.as_str(), r.header("authorization").as_deref()) {
                    ("GET", Some("Bearer bob")) => Reply::ok("bob's"),
                    ("GET", _) => Reply::status(404),
                    _ => Reply::status(204),
                },
            )
        })
        .start()
        .await;
    let url = server.url("/private/7");
    let cache = NegativeCacheLayer::new();
    let stack = |layer: NegativeCacheLayer, who: &str| {
        ServiceBuilder::new().layer(layer).service(client_of(who))
    };

    // One layer cloned over both clients: bob is served alice's 404 (what the cache can't see).
    let (alice, bob) = (stack(cache.clone(), "alice"), stack(cache.clone(), "bob"));
    assert_eq!(
        alice
            .oneshot(req(Method::GET, &url))
            .await
            .unwrap()
            .status(),
        404
    );
    let res = bob.oneshot(req(Method::GET, &url)).await.unwrap();
    assert!(res.extensions().get::<NegativeCacheHit>().is_some());
    cache.handle().clear();

    // A partition per client: bob gets his 200, alice keeps her 404.
    let alice = stack(cache.partition("alice"), "alice");
    let bob = stack(cache.partition("bob"), "bob");
    let res = alice.clone().oneshot(req(Method::GET, &url)).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = bob.clone().oneshot(req(Method::GET, &url)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = alice.clone().oneshot(req(Method::GET, &url)).await.unwrap();
    assert!(res.extensions().get::<NegativeCacheHit>().is_some());
    // bob's write forgets it for alice too.
    let res = bob.oneshot(req(Method::PUT, &url)).await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = alice.oneshot(req(Method::GET, &url)).await.unwrap();
    assert!(res.extensions().get::<NegativeCacheHit>().is_none());
    assert_eq!(server.hits_for(Method::GET, "/private/7"), 4);
}
