//! Both layers over a `reqwest::Client` (feature `reqwest`), against a real hyper server on
//! 127.0.0.1: retries, a 404 sent once and remembered, connect errors and timeouts classified as
//! transient, buffered and streamed `reqwest::Body`s replayed.
#![cfg(feature = "reqwest")]

mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tower::{ServiceBuilder, ServiceExt};
use tower_negative_cache::reqwest::ReqwestService;
use tower_negative_cache::retry::{Builder, Jitter};
use tower_negative_cache::{NegativeCacheLayer, RetryInfo, StatusAwareRetryLayer};

use support::{Reply, TestServer};

fn fast() -> Builder {
    StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .jitter(Jitter::None)
        .no_budget()
}

fn client() -> ReqwestService {
    ReqwestService::new().unwrap()
}

fn get(url: &str) -> Request<reqwest::Body> {
    Request::get(url).body(reqwest::Body::from("")).unwrap()
}

#[tokio::test]
async fn a_503_is_retried_and_a_404_reaches_the_origin_once_and_is_remembered() {
    let server = TestServer::builder()
        .route("/flaky", [Reply::status(503), Reply::ok("ok")])
        .route("/missing", [Reply::status(404), Reply::ok("no")])
        .start()
        .await;
    let retry = fast().build().unwrap();
    let cache = NegativeCacheLayer::new();
    let svc = ServiceBuilder::new()
        .layer(cache.clone())
        .layer(retry.clone())
        .service(client());

    let res = svc
        .clone()
        .oneshot(get(&server.url("/flaky")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(RetryInfo::of(&res).unwrap().attempts, 2);
    assert_eq!(support::body_bytes(res).await, "ok");
    for _ in 0..3 {
        let res = svc
            .clone()
            .oneshot(get(&server.url("/missing")))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!((server.hits("/flaky"), server.hits("/missing")), (2, 1));
    assert_eq!(cache.handle().stats().hits, 2);
}

#[tokio::test]
async fn connect_errors_and_timeouts_are_transient() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = format!("http://{}/r", listener.local_addr().unwrap());
    drop(listener);
    let retry = fast().build().unwrap();
    let svc = ServiceBuilder::new().layer(retry.clone()).service(client());
    let err = svc.oneshot(get(&refused)).await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    let s = retry.stats();
    assert_eq!(
        (s.attempts, s.gave_up, s.unrecognised_errors),
        (3, 1, 0),
        "{s:?}"
    );

    // A reqwest timeout shorter than the origin's answer: each attempt times out.
    let slow = TestServer::always(Reply::ok("late").delay(Duration::from_secs(5))).await;
    let timing_out =
        ReqwestService::from_builder(reqwest::Client::builder().timeout(Duration::from_millis(50)))
            .unwrap();
    let retry = fast().max_retries(1).build().unwrap();
    let svc = ServiceBuilder::new()
        .layer(retry.clone())
        .service(timing_out);
    let err = svc.oneshot(get(&slow.url("/slow"))).await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(retry.stats().attempts, 2);
}

/// A stream of two chunks, of unknown size.
struct Chunks(Vec<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready((!self.0.is_empty()).then(|| Ok(Frame::data(self.0.remove(0)))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[tokio::test]
async fn buffered_and_streamed_bodies_are_replayed() {
    let server = TestServer::builder()
        .route("/buffered", [Reply::status(503), Reply::ok("1")])
        .route("/streamed", [Reply::status(503), Reply::ok("2")])
        .start()
        .await;
    let retry = fast().build().unwrap();
    let svc = ServiceBuilder::new().layer(retry.clone()).service(client());
    let bodies = [
        ("/buffered", reqwest::Body::from("payload")),
        (
            "/streamed",
            reqwest::Body::wrap(Chunks(vec!["pay".into(), "load".into()])),
        ),
    ];
    for (path, body) in bodies {
        let req = Request::put(server.url(path)).body(body).unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let seen: Vec<_> = server
            .requests_for(path)
            .into_iter()
            .map(|r| r.body)
            .collect();
        assert_eq!(seen, ["payload", "payload"], "{path}");
    }
    assert_eq!(retry.stats().not_replayable, 0);
}

/// reqwest turns a URL's userinfo into Basic credentials (`RequestBuilder::new` calls
/// `extract_authority`), and the negative cache treats a userinfo as a credential. The
/// adapter converts with `reqwest::Request::try_from`, which keeps the userinfo in the URL,
/// and `Client::execute` never reads it: the credentials used to be silently dropped and the
/// origin saw an anonymous request (401s, or another user's view) — review2 item 12.
#[tokio::test]
async fn a_uri_userinfo_is_sent_as_reqwest_would_send_it() {
    let server = TestServer::always(Reply::ok("x")).await;
    let url = server
        .url("/private")
        .replacen("http://", "http://alice:secret@", 1);

    // reqwest itself.
    let direct = reqwest::Client::new();
    direct.get(&url).send().await.unwrap();
    let direct = server.requests()[0].header("authorization");
    assert!(direct.is_some(), "reqwest sends Basic credentials");

    // The same request through the adapter.
    let req = Request::get(&url).body(reqwest::Body::from("")).unwrap();
    client().oneshot(req).await.unwrap();
    let adapted = server.requests()[1].header("authorization");
    assert_eq!(adapted, direct, "the adapter dropped the URL's credentials");
}

/// An explicit `Authorization` header wins over a URI's userinfo, as with reqwest's
/// `RequestBuilder::headers`: sent alone, never beside a second, Basic one.
#[tokio::test]
async fn an_explicit_authorization_wins_over_a_uri_userinfo() {
    let server = TestServer::always(Reply::ok("x")).await;
    let url = server
        .url("/private")
        .replacen("http://", "http://alice:secret@", 1);
    let req = Request::get(&url)
        .header("authorization", "Bearer token")
        .body(reqwest::Body::from(""))
        .unwrap();
    client().oneshot(req).await.unwrap();
    let seen = &server.requests()[0];
    let auth: Vec<_> = seen.headers.get_all("authorization").iter().collect();
    assert_eq!(auth, ["Bearer token"]);
}

/// Issue 22 item 6: reqwest follows redirects itself, below the cache. `/old` → 301 → `/new`
/// answering 404 was remembered under `/old`, and a `PUT /new` (201) through the same client
/// never forgot it. The recipe: redirects followed outside the cache (tower-http's
/// `FollowRedirectLayer`), so each hop is its own request to the cache — the 404 is
/// remembered under `/new`, where the write forgets it.
#[tokio::test]
async fn a_redirected_404_is_remembered_under_its_own_url_and_a_write_there_forgets_it() {
    let server = TestServer::builder()
        .route(
            "/old",
            std::iter::repeat_n(Reply::status(301).header("location", "/new"), 3),
        )
        .route(
            "/new",
            [Reply::status(404), Reply::status(201), Reply::ok("here")],
        )
        .start()
        .await;
    let cache = NegativeCacheLayer::new();
    let svc = ServiceBuilder::new()
        .layer(tower_http::follow_redirect::FollowRedirectLayer::new())
        .layer(cache.clone())
        .layer(fast().build().unwrap())
        .service(client());

    let res = svc.clone().oneshot(get(&server.url("/old"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let put = Request::put(server.url("/new"))
        .body(reqwest::Body::from("created"))
        .unwrap();
    let res = svc.clone().oneshot(put).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = svc.clone().oneshot(get(&server.url("/old"))).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the 404 outlived the write that created its target; stats: {:?}",
        cache.handle().stats()
    );
    assert_eq!(support::body_bytes(res).await, "here");
    assert_eq!((server.hits("/old"), server.hits("/new")), (2, 3));
}

/// Safe by default, whatever the builder said: the adapter's client returns a redirect as the
/// origin sent it, and nothing is remembered for it.
#[tokio::test]
async fn the_adapter_never_follows_a_redirect_whatever_the_builder_said() {
    let server = TestServer::builder()
        .route(
            "/old",
            std::iter::repeat_n(Reply::status(301).header("location", "/new"), 2),
        )
        .route("/new", [Reply::status(404)])
        .start()
        .await;
    let following = reqwest::Client::builder().redirect(reqwest::redirect::Policy::limited(5));
    for svc in [client(), ReqwestService::from_builder(following).unwrap()] {
        let cache = NegativeCacheLayer::new();
        let svc = ServiceBuilder::new().layer(cache.clone()).service(svc);
        let res = svc.oneshot(get(&server.url("/old"))).await.unwrap();
        assert_eq!(res.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(res.headers()["location"], "/new");
        assert_eq!(cache.handle().stats().inserts, 0);
    }
    assert_eq!((server.hits("/old"), server.hits("/new")), (2, 0));
}
