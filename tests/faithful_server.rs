//! A hit is the origin's answer (invariant 12), against real servers on 127.0.0.1: an axum
//! origin's JSON 404 and `application/problem+json` 410 deserialised the first time and from
//! the cache; a 16 KiB HTML 404 whose repeats are free (head-only); a gzip 404 under
//! tower-http's `DecompressionLayer`; coalesced waiters; how HEAD and GET share an entry.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode as AxumStatus;
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use tokio::task::JoinSet;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::compression::CompressionLayer;
use tower_http::decompression::DecompressionLayer;
use tower_negative_cache::cache::{NegativeCacheHit, NegativeCacheLayer};

use support::{Reply, TestServer};

#[derive(Debug, Deserialize, PartialEq)]
struct ApiError {
    error: String,
    code: u32,
}

/// RFC 9457 problem details.
#[derive(Debug, Deserialize, PartialEq)]
struct Problem {
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
}

const JSON_404: &str = r#"{"error":"not_found","code":4040}"#;
const PROBLEM_410: &str = r#"{"type":"https://example.com/probs/gone","title":"Record deleted","status":410,"detail":"record 7 was deleted on 2026-11-30"}"#;

/// An axum origin: a JSON 404, a problem+json 410, a 16 KiB HTML 404, each counting its hits;
/// gzip-compressed when the client accepts it (`gzip` = true).
async fn axum_origin(gzip: bool) -> (String, Arc<[AtomicUsize; 3]>) {
    let hits: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let h = hits.clone();
    let app = Router::new()
        .route(
            "/records/404",
            get(move || {
                h[0].fetch_add(1, Ordering::SeqCst);
                async {
                    let headers = [
                        ("content-type", "application/json"),
                        ("x-error-code", "4040"),
                        ("set-cookie", "sid=abc; Path=/"),
                    ];
                    (AxumStatus::NOT_FOUND, headers, JSON_404).into_response()
                }
            }),
        )
        .route("/records/7", {
            let h = hits.clone();
            get(move || {
                h[1].fetch_add(1, Ordering::SeqCst);
                async {
                    let headers = [
                        ("content-type", "application/problem+json"),
                        ("content-language", "en"),
                    ];
                    (AxumStatus::GONE, headers, PROBLEM_410).into_response()
                }
            })
        })
        .route("/page", {
            let h = hits.clone();
            get(move || {
                h[2].fetch_add(1, Ordering::SeqCst);
                async {
                    let html = format!("<html><body>{}</body></html>", "x".repeat(16 * 1024));
                    let headers = [("content-type", "text/html; charset=utf-8")];
                    (AxumStatus::NOT_FOUND, headers, html).into_response()
                }
            })
        });
    let app = if gzip {
        app.layer(CompressionLayer::new())
    } else {
        app
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), hits)
}

async fn read<B>(res: Response<B>) -> Bytes
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    res.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn json_and_problem_errors_deserialise_the_first_time_and_from_the_cache() {
    let (base, hits) = axum_origin(false).await;
    let layer = NegativeCacheLayer::new();
    let mut client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(support::client());

    for round in 0..3 {
        let res = client
            .ready()
            .await
            .unwrap()
            .call(support::get(&format!("{base}/records/404")))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        let hit = res.extensions().get::<NegativeCacheHit>().copied();
        assert_eq!(hit.is_some(), round > 0, "round {round}");
        if let Some(hit) = hit {
            assert!(hit.body_kept);
            // One exchange's cookie is not replayed.
            assert!(res.headers().get("set-cookie").is_none());
            assert!(res.headers().contains_key("age"));
        }
        assert_eq!(res.headers()["content-type"], "application/json");
        assert_eq!(res.headers()["x-error-code"], "4040");
        let body = read(res).await;
        let err: ApiError = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            err,
            ApiError {
                error: "not_found".into(),
                code: 4040
            }
        );

        let res = client
            .ready()
            .await
            .unwrap()
            .call(support::get(&format!("{base}/records/7")))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::GONE);
        assert_eq!(
            res.extensions().get::<NegativeCacheHit>().is_some(),
            round > 0
        );
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert_eq!(res.headers()["content-language"], "en");
        let len: usize = res.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = read(res).await;
        assert_eq!(len, body.len());
        let p: Problem = serde_json::from_slice(&body).unwrap();
        assert_eq!((p.status, p.title.as_str()), (410, "Record deleted"));
        assert_eq!(p.kind, "https://example.com/probs/gone");
        assert!(p.detail.contains("record 7"));
    }
    assert_eq!(hits[0].load(Ordering::SeqCst), 1);
    assert_eq!(hits[1].load(Ordering::SeqCst), 1);
    let stats = layer.handle().stats();
    assert_eq!((stats.hits, stats.inserts, stats.head_only), (4, 2, 0));
}

#[tokio::test]
async fn a_16_kib_html_404_is_read_whole_and_its_repeats_are_free_and_head_only() {
    let (base, hits) = axum_origin(false).await;
    let layer = NegativeCacheLayer::new();
    let handle = layer.handle();
    let mut client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(support::client());
    let url = format!("{base}/page");
    let res = client
        .ready()
        .await
        .unwrap()
        .call(support::get(&url))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // The caller gets every byte: nothing held back past the limit.
    assert!(read(res).await.len() > 16 * 1024);
    let peek = handle.peek(&url.parse().unwrap()).expect("remembered");
    assert!(!peek.body_kept);
    for _ in 0..20 {
        let res = client
            .ready()
            .await
            .unwrap()
            .call(support::get(&url))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        let hit = *res.extensions().get::<NegativeCacheHit>().expect("a hit");
        assert!(!hit.body_kept);
        // No body, so nothing that describes one.
        assert!(res.headers().get("content-type").is_none());
        assert_eq!(res.headers()["content-length"], "0");
        assert!(read(res).await.is_empty());
    }
    assert_eq!(hits[2].load(Ordering::SeqCst), 1, "repeats went upstream");
    let stats = handle.stats();
    assert_eq!((stats.hits, stats.head_only), (20, 1));
}

#[tokio::test]
async fn a_gzip_404_is_decoded_from_the_cache_under_decompression_layer() {
    let (base, hits) = axum_origin(true).await;
    let layer = NegativeCacheLayer::new();
    // The README's order: decompression outside the cache, so a hit is decoded like the
    // original.
    let mut client = ServiceBuilder::new()
        .layer(DecompressionLayer::new())
        .layer(layer.clone())
        .service(support::client());
    let url = format!("{base}/records/7");
    for round in 0..3 {
        let res = client
            .ready()
            .await
            .unwrap()
            .call(support::get(&url))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::GONE);
        assert_eq!(
            res.extensions().get::<NegativeCacheHit>().is_some(),
            round > 0
        );
        // Decoded: the encoding was gzip on the wire and in the cache alike.
        assert!(res.headers().get("content-encoding").is_none());
        let body = read(res).await;
        let p: Problem = serde_json::from_slice(&body).unwrap();
        assert_eq!(p.status, 410);
    }
    assert_eq!(hits[1].load(Ordering::SeqCst), 1);
    // What the cache keeps and replays is the encoded body, with its coding.
    let mut raw = ServiceBuilder::new()
        .layer(layer.clone())
        .service(support::client());
    let req = support::get_with(&url, "accept-encoding", "gzip");
    let res = raw.ready().await.unwrap().call(req).await.unwrap();
    assert!(
        res.extensions()
            .get::<NegativeCacheHit>()
            .unwrap()
            .body_kept
    );
    assert_eq!(res.headers()["content-encoding"], "gzip");
    let gz = read(res).await;
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "a gzip member");
    // A request that does not accept gzip is not sent it: head-only, still free.
    let res = raw
        .ready()
        .await
        .unwrap()
        .call(support::get(&url))
        .await
        .unwrap();
    assert!(
        !res.extensions()
            .get::<NegativeCacheHit>()
            .unwrap()
            .body_kept
    );
    assert!(res.headers().get("content-encoding").is_none());
    assert!(read(res).await.is_empty());
    assert_eq!(hits[1].load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn coalesced_waiters_get_the_same_faithful_answer() {
    let reply = Reply::status(404)
        .header("content-type", "application/json")
        .header("x-error-code", "4040")
        .body(JSON_404)
        .delay(Duration::from_millis(200));
    let server = TestServer::always(reply).await;
    let layer = NegativeCacheLayer::builder()
        .coalesce(Duration::from_secs(30))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(support::client());
    let url = server.url("/records/404");
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let (mut client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            let res = client
                .ready()
                .await
                .unwrap()
                .call(support::get(&url))
                .await
                .unwrap();
            let hit = res.extensions().get::<NegativeCacheHit>().copied();
            let (status, headers) = (res.status(), res.headers().clone());
            (hit, status, headers, read(res).await)
        });
    }
    let mut from_cache = 0;
    while let Some(r) = tasks.join_next().await {
        let (hit, status, headers, body) = r.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-error-code"], "4040");
        assert_eq!(body, JSON_404.as_bytes());
        if let Some(h) = hit {
            assert!(h.body_kept);
            from_cache += 1;
        }
    }
    assert_eq!(server.hits("/records/404"), 1);
    assert_eq!(from_cache, 7);
    assert_eq!(layer.handle().stats().coalesced, 7);
}

/// How HEAD and GET share an entry: one entry per key, whichever method learned it. A GET's
/// answer answers a later HEAD with the same fields (its `Content-Length` too) and no body
/// (RFC 9110 §9.3.2); a HEAD's answer has no body to keep, so its entry is head-only and a
/// later GET gets no body (and no `Content-Type`) — but no upstream request either.
#[tokio::test]
async fn head_and_get_share_an_entry() {
    let reply = Reply::status(404)
        .header("content-type", "application/json")
        .body(JSON_404);
    let server = TestServer::always(reply).await;
    let layer = NegativeCacheLayer::new();
    let mut client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(support::client());

    // GET first, then HEAD.
    let get_url = server.url("/a");
    let res = client
        .ready()
        .await
        .unwrap()
        .call(support::get(&get_url))
        .await
        .unwrap();
    assert_eq!(read(res).await, JSON_404.as_bytes());
    let req = support::request(Method::HEAD, &get_url);
    let res = client.ready().await.unwrap().call(req).await.unwrap();
    let hit = *res.extensions().get::<NegativeCacheHit>().expect("a hit");
    assert!(hit.body_kept);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(
        res.headers()["content-length"],
        JSON_404.len().to_string().as_str()
    );
    assert!(read(res).await.is_empty());
    assert_eq!(server.hits("/a"), 1);

    // HEAD first: the HEAD's repeat is its answer as the origin sent it (its
    // `Content-Type` and `Content-Length` are a GET's, RFC 9110 §9.3.2); a GET goes upstream
    // (RFC 9111 §4: a HEAD's answer has no body to stand for a GET's) and its answer is kept.
    let head_url = server.url("/b");
    let req = support::request(Method::HEAD, &head_url);
    let res = client.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let origin_head = res.headers().clone();
    assert!(read(res).await.is_empty());
    let req = support::request(Method::HEAD, &head_url);
    let res = client.ready().await.unwrap().call(req).await.unwrap();
    let hit = *res.extensions().get::<NegativeCacheHit>().expect("a hit");
    assert!(!hit.body_kept);
    for name in ["content-type", "content-length"] {
        assert_eq!(res.headers().get(name), origin_head.get(name), "{name}");
    }
    assert!(read(res).await.is_empty());
    assert_eq!(server.hits("/b"), 1);
    assert_eq!(layer.handle().stats().head_only, 1);
    let res = client
        .ready()
        .await
        .unwrap()
        .call(support::get(&head_url))
        .await
        .unwrap();
    assert!(res.extensions().get::<NegativeCacheHit>().is_none());
    assert_eq!(read(res).await, JSON_404.as_bytes());
    assert_eq!(server.hits("/b"), 2);
    let res = client
        .ready()
        .await
        .unwrap()
        .call(support::get(&head_url))
        .await
        .unwrap();
    assert!(
        res.extensions()
            .get::<NegativeCacheHit>()
            .expect("a hit")
            .body_kept
    );
    assert_eq!(read(res).await, JSON_404.as_bytes());
    assert_eq!(server.hits("/b"), 2);
}

/// A body the caller drops before its end is never replayed in part: the entry is head-only,
/// and the repeat is still free.
#[tokio::test]
async fn a_body_dropped_before_its_end_is_not_replayed() {
    let reply = Reply::status(404)
        .header("content-type", "application/json")
        .body(JSON_404)
        .body_delay(Duration::from_millis(50));
    let server = TestServer::always(reply).await;
    let layer = NegativeCacheLayer::new();
    let mut client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(support::client());
    let url = server.url("/r");
    let res = client
        .ready()
        .await
        .unwrap()
        .call(support::get(&url))
        .await
        .unwrap();
    drop(res);
    let res = client
        .ready()
        .await
        .unwrap()
        .call(support::get(&url))
        .await
        .unwrap();
    let hit = *res.extensions().get::<NegativeCacheHit>().expect("a hit");
    assert!(!hit.body_kept);
    assert!(read(res).await.is_empty());
    assert_eq!(server.hits("/r"), 1);
}

/// The README's stack puts `DecompressionLayer` inside the cache: the cache then sees, keeps
/// and replays the decoded body (no `Content-Encoding`), and a hit needs no decoding.
#[tokio::test]
async fn a_gzip_404_decoded_inside_the_cache_is_kept_decoded() {
    let (base, hits) = axum_origin(true).await;
    let layer = NegativeCacheLayer::new();
    let mut client = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(DecompressionLayer::new())
        .service(support::client());
    let url = format!("{base}/records/7");
    for round in 0..3 {
        let res = client
            .ready()
            .await
            .unwrap()
            .call(support::get(&url))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::GONE);
        let hit = res.extensions().get::<NegativeCacheHit>().copied();
        assert_eq!(hit.is_some(), round > 0);
        assert!(hit.is_none_or(|h| h.body_kept));
        assert!(res.headers().get("content-encoding").is_none());
        let p: Problem = serde_json::from_slice(&read(res).await).unwrap();
        assert_eq!(p.status, 410);
    }
    assert_eq!(hits[1].load(Ordering::SeqCst), 1);
}
