//! An axum service that resolves records and their references from an upstream origin through
//! a hyper-util client wrapped in both layers, and serves the negative cache's stats as JSON.
//!
//! Run: `cargo run --features serde --example axum_resolver`
//!
//! - `GET /records/{id}?resolveDepth=N` fetches the record, then its references, theirs, ... to
//!   depth N (0 to 5, default 0). A reference the origin says is missing (404/410) is reported
//!   as `{"status": "missing"}` in the tree, not as an error; `cached: true` says the negative
//!   cache answered it with no upstream call.
//! - `GET /metrics/negative-cache` is `axum::Json(handle.stats())` (needs the crate's `serde`
//!   feature).
//!
//! `main` starts the origin and the app on 127.0.0.1, resolves the same record twice and prints
//! what the origin counted each time; it exits non-zero if the repeat asked the origin for a
//! reference it already knew to be missing. `tests/axum_resolver.rs` runs [`app`] against real
//! sockets too.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::{ServiceBuilder, ServiceExt};
use tower_negative_cache::cache::{NegativeCache, NegativeCacheHandle, NegativeCacheHit};
use tower_negative_cache::retry::StatusAwareRetry;
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

/// The deepest resolution a caller may ask for.
pub const MAX_DEPTH: u32 = 5;

// ----- the app ------------------------------------------------------------------------------

/// The hyper-util client with both layers, the cache outside.
type Upstream = NegativeCache<StatusAwareRetry<Client<HttpConnector, Empty<Bytes>>>>;

#[derive(Clone)]
struct AppState {
    upstream: Upstream,
    base: Arc<str>,
    cache: NegativeCacheHandle,
}

/// The router, and a handle on its negative cache (for stats and invalidation).
///
/// `upstream_base` is the origin's scheme and authority, e.g. `http://127.0.0.1:8080`; records
/// are fetched from `{upstream_base}/records/{id}`.
pub fn app(upstream_base: String) -> (Router, NegativeCacheHandle) {
    let cache = NegativeCacheLayer::builder()
        .ttl(Duration::from_secs(300))
        .build()
        .expect("valid cache settings");
    let retry = StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(20))
        .deadline(Duration::from_secs(2))
        .build()
        .expect("valid retry settings");
    let upstream = ServiceBuilder::new()
        .layer(cache.clone())
        .layer(retry)
        .service(Client::builder(TokioExecutor::new()).build_http());
    let handle = cache.handle();
    let state = AppState {
        upstream,
        base: upstream_base.trim_end_matches('/').into(),
        cache: handle.clone(),
    };
    let router = Router::new()
        .route("/records/{id}", get(get_record))
        .route("/metrics/negative-cache", get(metrics))
        .with_state(state);
    (router, handle)
}

#[derive(Debug, Deserialize)]
struct ResolveParams {
    #[serde(rename = "resolveDepth", default)]
    resolve_depth: u32,
}

/// A record as the origin serves it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    /// The record's id.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// The ids of the records it references.
    #[serde(default)]
    pub refs: Vec<String>,
}

/// A node of a resolved tree, as the app serves it.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Node {
    /// The origin has the record; `refs` are resolved while depth remains.
    Found {
        /// The record's id.
        id: String,
        /// Its display name.
        name: String,
        /// Its references: resolved nodes, or `unresolved` ones past the requested depth.
        refs: Vec<Node>,
    },
    /// The origin answered 404 or 410.
    Missing {
        /// The id asked for.
        id: String,
        /// The origin's status (or the one the negative cache remembered).
        http_status: u16,
        /// Whether the negative cache answered, with no upstream call.
        cached: bool,
    },
    /// Past the requested depth: not fetched.
    Unresolved {
        /// The referenced id.
        id: String,
    },
    /// The origin failed (after the retry layer's attempts) or sent something unreadable.
    Error {
        /// The id asked for.
        id: String,
        /// What went wrong.
        error: String,
    },
}

async fn get_record(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<ResolveParams>,
) -> Response {
    if !valid_id(&id) {
        let error = "ids are 1 to 64 of [A-Za-z0-9_-]";
        return (
            StatusCode::BAD_REQUEST,
            Json(Node::Error {
                id,
                error: error.into(),
            }),
        )
            .into_response();
    }
    if params.resolve_depth > MAX_DEPTH {
        let error = format!("resolveDepth is at most {MAX_DEPTH}");
        return (StatusCode::BAD_REQUEST, Json(Node::Error { id, error })).into_response();
    }
    let node = resolve(state, id, params.resolve_depth).await;
    let status = match &node {
        Node::Found { .. } | Node::Unresolved { .. } => StatusCode::OK,
        Node::Missing { .. } => StatusCode::NOT_FOUND,
        Node::Error { .. } => StatusCode::BAD_GATEWAY,
    };
    (status, Json(node)).into_response()
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.cache.stats())
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Fetches `id` and resolves its references `depth` levels deep, all references of a record at
/// once. Boxed: the future contains itself.
fn resolve(state: AppState, id: String, depth: u32) -> Pin<Box<dyn Future<Output = Node> + Send>> {
    Box::pin(async move {
        let record = match fetch(&state, &id).await {
            Ok(record) => record,
            Err(node) => return node,
        };
        let refs = if depth == 0 {
            record
                .refs
                .into_iter()
                .map(|id| Node::Unresolved { id })
                .collect()
        } else {
            let mut set = JoinSet::new();
            for (i, r) in record.refs.into_iter().enumerate() {
                let state = state.clone();
                set.spawn(async move { (i, resolve(state, r, depth - 1).await) });
            }
            let mut refs: Vec<(usize, Node)> = set.join_all().await;
            refs.sort_by_key(|(i, _)| *i);
            refs.into_iter().map(|(_, node)| node).collect()
        };
        Node::Found {
            id: record.id,
            name: record.name,
            refs,
        }
    })
}

/// One record from the origin, through both layers; any other answer as the node to report.
async fn fetch(state: &AppState, id: &str) -> Result<Record, Node> {
    let error = |error: String| Node::Error {
        id: id.to_owned(),
        error,
    };
    if !valid_id(id) {
        return Err(error("not a valid id".into()));
    }
    let req = http::Request::get(format!("{}/records/{id}", state.base))
        .body(Empty::new())
        .map_err(|e| error(e.to_string()))?;
    let res = state
        .upstream
        .clone()
        .oneshot(req)
        .await
        .map_err(|e| error(format!("upstream: {e}")))?;
    let status = res.status();
    if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
        return Err(Node::Missing {
            id: id.to_owned(),
            http_status: status.as_u16(),
            cached: res.extensions().get::<NegativeCacheHit>().is_some(),
        });
    }
    if !status.is_success() {
        return Err(error(format!("upstream answered {status}")));
    }
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| error(format!("upstream body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| error(format!("upstream record: {e}")))
}

// ----- the origin ---------------------------------------------------------------------------

/// The upstream record service: a small graph with missing and gone references and a cycle,
/// counting the requests it receives per id.
///
/// ```text
/// w-root ─┬─ w-1 ─┬─ w-1-a
///         │       └─ w-1-b   (404)
///         ├─ w-2 ─┬─ w-2-a   (410)
///         │       └─ w-root  (cycle)
///         └─ w-3             (404)
/// ```
#[derive(Debug, Default)]
pub struct Origin {
    requests: Mutex<HashMap<String, u64>>,
}

impl Origin {
    /// Requests received for `id`.
    pub fn requests_for(&self, id: &str) -> u64 {
        self.requests.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    /// Requests received in all.
    pub fn total_requests(&self) -> u64 {
        self.requests.lock().unwrap().values().sum()
    }

    fn record(id: &str) -> Result<Record, StatusCode> {
        let (name, refs): (&str, &[&str]) = match id {
            "w-root" => ("Morning run", &["w-1", "w-2", "w-3"]),
            "w-1" => ("Warm-up", &["w-1-a", "w-1-b"]),
            "w-2" => ("Intervals", &["w-2-a", "w-root"]),
            "w-1-a" => ("Easy jog", &[]),
            "w-2-a" => return Err(StatusCode::GONE),
            _ => return Err(StatusCode::NOT_FOUND),
        };
        Ok(Record {
            id: id.to_owned(),
            name: name.to_owned(),
            refs: refs.iter().map(|r| (*r).to_owned()).collect(),
        })
    }
}

async fn origin_record(State(origin): State<Arc<Origin>>, Path(id): Path<String>) -> Response {
    *origin
        .requests
        .lock()
        .unwrap()
        .entry(id.clone())
        .or_default() += 1;
    match Origin::record(&id) {
        Ok(record) => Json(record).into_response(),
        Err(status) => status.into_response(),
    }
}

/// Starts the origin on 127.0.0.1 (a free port); its base URL and its counters.
pub async fn serve_origin() -> (String, Arc<Origin>) {
    let origin = Arc::new(Origin::default());
    let router = Router::new()
        .route("/records/{id}", get(origin_record))
        .with_state(origin.clone());
    let addr = serve(router).await;
    (format!("http://{addr}"), origin)
}

/// Serves `router` on 127.0.0.1 (a free port) in the background; its address.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("a local address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// GETs `url` with a plain hyper-util client (no layers); the status and the JSON body.
pub async fn get_json(url: &str) -> (StatusCode, serde_json::Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let res = client
        .get(url.parse().expect("a valid URL"))
        .await
        .expect("the app answers");
    let status = res.status();
    let body = res.into_body().collect().await.expect("a body").to_bytes();
    let json = serde_json::from_slice(&body).expect("a JSON body");
    (status, json)
}

/// Every node of a resolved tree whose `status` is `status`, depth first.
pub fn nodes_with_status<'a>(
    tree: &'a serde_json::Value,
    status: &str,
) -> Vec<&'a serde_json::Value> {
    let mut out = Vec::new();
    let mut stack = vec![tree];
    while let Some(node) = stack.pop() {
        if node["status"] == status {
            out.push(node);
        }
        if let Some(refs) = node["refs"].as_array() {
            stack.extend(refs.iter().rev());
        }
    }
    out
}

// ----- the demo -----------------------------------------------------------------------------

#[tokio::main]
async fn main() -> ExitCode {
    let (origin_base, origin) = serve_origin().await;
    let (router, _handle) = app(origin_base.clone());
    let app_base = format!("http://{}", serve(router).await);
    println!("origin: {origin_base}");
    println!("app:    {app_base}\n");

    let url = format!("{app_base}/records/w-root?resolveDepth=2");
    let missing = ["w-3", "w-1-b", "w-2-a"];
    let mut failed = false;
    for round in 1..=2 {
        let before = origin.total_requests();
        let (status, json) = get_json(&url).await;
        let upstream = origin.total_requests() - before;
        println!(
            "GET /records/w-root?resolveDepth=2 (round {round}): {status}, {upstream} upstream requests"
        );
        if round == 1 {
            println!("{}", serde_json::to_string_pretty(&json).unwrap());
        }
        // The missing references: fetched on the first round, the negative cache's the second.
        for node in nodes_with_status(&json, "missing") {
            println!("  missing: {node}");
            if node["cached"] != (round == 2) {
                eprintln!("FAIL: expected \"cached\": {}", round == 2);
                failed = true;
            }
        }
        if status != StatusCode::OK {
            eprintln!("FAIL: expected 200 OK");
            failed = true;
        }
        for id in missing {
            if origin.requests_for(id) != 1 {
                eprintln!(
                    "FAIL: the origin was asked for {id} {} times; once is enough",
                    origin.requests_for(id)
                );
                failed = true;
            }
        }
    }

    let (status, stats) = get_json(&format!("{app_base}/metrics/negative-cache")).await;
    println!("\nGET /metrics/negative-cache: {status}\n{stats}");
    if stats["hits"] != 3 {
        eprintln!("FAIL: expected 3 hits (the missing references, second round)");
        failed = true;
    }

    if failed {
        return ExitCode::FAILURE;
    }
    println!("\nThe repeat cost no upstream request for a missing reference.");
    ExitCode::SUCCESS
}
