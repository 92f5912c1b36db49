//! Shared helpers for the integration tests: a scripted hyper 1 origin server that counts what it
//! sees, hyper-util legacy clients, and a response body that records when it is released.
//!
//! The server binds `127.0.0.1:0`, serves HTTP/1 with one tokio task per connection, and stops
//! (accept loop and every connection task) when its [`TestServer`] handle is dropped.
//!
//! How a request is answered, first match wins:
//! 1. the handler closure given to [`ServerBuilder::handler`], if it returns `Some`;
//! 2. the next reply queued for the request's path ([`ServerBuilder::route`], [`TestServer::push`]);
//! 3. the default reply ([`ServerBuilder::default_reply`]; 200 with an empty body unless set).

#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

/// One scripted answer: status, headers, body bytes and an optional delay before answering.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    pub delay: Duration,
    pub body_delay: Duration,
}

impl Reply {
    /// An answer with this status, no extra headers, an empty body and no delay.
    pub fn status(status: u16) -> Self {
        Reply {
            status: StatusCode::from_u16(status).expect("a valid status code"),
            headers: Vec::new(),
            body: Bytes::new(),
            delay: Duration::ZERO,
            body_delay: Duration::ZERO,
        }
    }

    /// 200 with `body`.
    pub fn ok(body: impl Into<Bytes>) -> Self {
        Self::status(200).body(body)
    }

    /// Adds a header (several with one name are all sent).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((
            HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
            HeaderValue::from_str(value).expect("a valid header value"),
        ));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Waits this long (after reading the request body) before answering.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sends the head at once and the body (still with its `Content-Length`) this much later,
    /// so the body is not in the client's buffer when the head is read.
    pub fn body_delay(mut self, delay: Duration) -> Self {
        self.body_delay = delay;
        self
    }

    fn into_response(self) -> Response<ServerBody> {
        let body = ServerBody {
            wait: (!self.body_delay.is_zero())
                .then(|| Box::pin(tokio::time::sleep(self.body_delay))),
            data: Some(self.body).filter(|b| !b.is_empty()),
        };
        let mut res = Response::new(body);
        *res.status_mut() = self.status;
        for (name, value) in self.headers {
            res.headers_mut().append(name, value);
        }
        res
    }
}

// ---------------------------------------------------------------------------------------------
// What the server saw
// ---------------------------------------------------------------------------------------------

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// The path without the query.
    pub path: String,
    /// Path and query, as sent.
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the request head arrived (tokio's clock).
    pub at: Instant,
    /// 0-based index of the TCP connection (in accept order) that carried the request.
    pub conn: usize,
    /// 1-based: this is the n-th request the server saw for this path.
    pub nth_for_path: usize,
}

impl Recorded {
    /// A header's value as a string, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Option<Reply> + Send + Sync>;

#[derive(Default)]
struct Log {
    requests: Vec<Recorded>,
    by_path: HashMap<String, usize>,
    by_method_path: HashMap<(Method, String), usize>,
    queues: HashMap<String, VecDeque<Reply>>,
}

struct State {
    log: Mutex<Log>,
    handler: Option<Handler>,
    default: Reply,
    connections: AtomicUsize,
    closed_connections: AtomicUsize,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

impl State {
    fn log(&self) -> MutexGuard<'_, Log> {
        // A panicking test thread must not hide the counters from the others.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Decrements the in-flight count however the request ends (answered or connection dropped).
struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn enter(state: &'a State) -> Self {
        let now = state.in_flight.fetch_add(1, SeqCst) + 1;
        state.peak_in_flight.fetch_max(now, SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// Configures a [`TestServer`].
#[must_use]
pub struct ServerBuilder {
    handler: Option<Handler>,
    queues: HashMap<String, VecDeque<Reply>>,
    default: Reply,
}

impl ServerBuilder {
    /// A closure consulted first for every request; `None` falls through to the queue and the
    /// default.
    pub fn handler(
        mut self,
        f: impl Fn(&Recorded) -> Option<Reply> + Send + Sync + 'static,
    ) -> Self {
        self.handler = Some(Arc::new(f));
        self
    }

    /// Queues replies for `path` (without query), answered in order, one per request.
    pub fn route(mut self, path: &str, replies: impl IntoIterator<Item = Reply>) -> Self {
        self.queues
            .entry(path.to_owned())
            .or_default()
            .extend(replies);
        self
    }

    /// The answer when neither the handler nor a queue has one. Default: 200, empty body.
    pub fn default_reply(mut self, reply: Reply) -> Self {
        self.default = reply;
        self
    }

    /// Binds 127.0.0.1:0 and starts serving.
    pub async fn start(self) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            log: Mutex::new(Log {
                queues: self.queues,
                ..Log::default()
            }),
            handler: self.handler,
            default: self.default,
            connections: AtomicUsize::new(0),
            closed_connections: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        TestServer { addr, state, task }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    // Owned by this task: aborting the task drops the set, which aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => continue,
        };
        while connections.try_join_next().is_some() {}
        let conn = state.connections.fetch_add(1, SeqCst);
        let state = state.clone();
        connections.spawn(async move {
            let svc = {
                let state = state.clone();
                hyper::service::service_fn(move |req| answer(state.clone(), conn, req))
            };
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            state.closed_connections.fetch_add(1, SeqCst);
        });
    }
}

async fn answer(
    state: Arc<State>,
    conn: usize,
    req: Request<Incoming>,
) -> Result<Response<ServerBody>, Infallible> {
    let _in_flight = InFlight::enter(&state);
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let path = parts.uri.path().to_owned();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| path.clone(), |pq| pq.as_str().to_owned());
    let recorded = {
        let mut log = state.log();
        let nth_for_path = {
            let n = log.by_path.entry(path.clone()).or_insert(0);
            *n += 1;
            *n
        };
        *log.by_method_path
            .entry((parts.method.clone(), path.clone()))
            .or_insert(0) += 1;
        let recorded = Recorded {
            method: parts.method,
            path: path.clone(),
            path_and_query,
            headers: parts.headers,
            body,
            at,
            conn,
            nth_for_path,
        };
        log.requests.push(recorded.clone());
        recorded
    };
    // The handler runs without the lock held; the queue is popped only if it declines.
    let reply = state
        .handler
        .as_ref()
        .and_then(|h| h(&recorded))
        .or_else(|| {
            state
                .log()
                .queues
                .get_mut(&path)
                .and_then(VecDeque::pop_front)
        })
        .unwrap_or_else(|| state.default.clone());
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    Ok(reply.into_response())
}

/// The server's response body: one data frame, optionally after a delay; exact size hint, so
/// hyper sends a `Content-Length`.
struct ServerBody {
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
    data: Option<Bytes>,
}

impl Body for ServerBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(wait) = &mut self.wait {
            std::task::ready!(wait.as_mut().poll(cx));
            self.wait = None;
        }
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// A running test origin. Dropping it stops the accept loop and closes every connection.
pub struct TestServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// A builder: no handler, no queues, default reply 200 with an empty body.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            handler: None,
            queues: HashMap::new(),
            default: Reply::status(200),
        }
    }

    /// A server answering every request with `reply`.
    pub async fn always(reply: Reply) -> TestServer {
        Self::builder().default_reply(reply).start().await
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Queues more replies for `path` while the server runs.
    pub fn push(&self, path: &str, reply: Reply) {
        self.state
            .log()
            .queues
            .entry(path.to_owned())
            .or_default()
            .push_back(reply);
    }

    /// Requests received for `path` (any method, query ignored).
    pub fn hits(&self, path: &str) -> usize {
        self.state.log().by_path.get(path).copied().unwrap_or(0)
    }

    /// Requests received for `method` and `path`.
    pub fn hits_for(&self, method: Method, path: &str) -> usize {
        self.state
            .log()
            .by_method_path
            .get(&(method, path.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Requests received in all.
    pub fn total_hits(&self) -> usize {
        self.state.log().requests.len()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.log().requests.clone()
    }

    /// The requests received for `path`, in arrival order.
    pub fn requests_for(&self, path: &str) -> Vec<Recorded> {
        self.state
            .log()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(SeqCst)
    }

    /// TCP connections that have ended (closed by either side).
    pub fn closed_connections(&self) -> usize {
        self.state.closed_connections.load(SeqCst)
    }

    /// Requests being answered right now (received, reply not yet handed to hyper).
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(SeqCst)
    }

    /// The most requests ever in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.state.peak_in_flight.load(SeqCst)
    }

    /// Waits until the server has seen `n` requests in all, or panics after `timeout`.
    pub async fn wait_for_hits(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.total_hits() < n {
            assert!(
                Instant::now() < deadline,
                "server saw {} requests, expected {n} within {timeout:?}",
                self.total_hits()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address on 127.0.0.1 where nothing listens: a port bound, read and released.
pub fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    addr
}

// ---------------------------------------------------------------------------------------------
// Clients and requests
// ---------------------------------------------------------------------------------------------

/// A pooled hyper-util legacy HTTP/1 client for bodiless requests.
pub fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>()
}

/// A pooled hyper-util legacy HTTP/1 client for requests with a buffered body (POST, PUT).
pub fn client_full() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>()
}

/// `GET url` with an empty body.
pub fn get(url: &str) -> Request<Empty<Bytes>> {
    Request::get(url)
        .body(Empty::new())
        .expect("a valid request")
}

/// `method url` with an empty body (HEAD, PUT, DELETE... through a client for `Empty` bodies).
pub fn request(method: Method, url: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .body(Empty::new())
        .expect("a valid request")
}

/// `GET url` with one extra header.
pub fn get_with(url: &str, name: &str, value: &str) -> Request<Empty<Bytes>> {
    Request::get(url)
        .header(name, value)
        .body(Empty::new())
        .expect("a valid request")
}

/// `method url` with `body`.
pub fn with_body(method: Method, url: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body.into()))
        .expect("a valid request")
}

/// Reads a response body to the end.
pub async fn body_bytes<B>(res: Response<B>) -> Bytes
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    res.into_body()
        .collect()
        .await
        .expect("read the body")
        .to_bytes()
}

// ---------------------------------------------------------------------------------------------
// A body that records its release
// ---------------------------------------------------------------------------------------------

/// Where a [`TrackedBody`] records what happened to it. Cloned handles share the record.
#[derive(Clone, Debug, Default)]
pub struct BodyProbe {
    inner: Arc<ProbeInner>,
}

#[derive(Debug, Default)]
struct ProbeInner {
    dropped: AtomicBool,
    dropped_at: Mutex<Option<Instant>>,
    frames_read: AtomicUsize,
}

impl BodyProbe {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the body was dropped.
    pub fn dropped(&self) -> bool {
        self.inner.dropped.load(SeqCst)
    }

    /// When the body was dropped (tokio's clock).
    pub fn dropped_at(&self) -> Option<Instant> {
        *self
            .inner
            .dropped_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Data frames handed out.
    pub fn frames_read(&self) -> usize {
        self.inner.frames_read.load(SeqCst)
    }
}

/// A `Full<Bytes>` that records in its [`BodyProbe`] the frames read and when it was dropped.
#[derive(Debug)]
pub struct TrackedBody {
    inner: Full<Bytes>,
    probe: BodyProbe,
}

impl TrackedBody {
    pub fn new(bytes: impl Into<Bytes>, probe: BodyProbe) -> Self {
        TrackedBody {
            inner: Full::new(bytes.into()),
            probe,
        }
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if frame.is_data() {
                self.probe.inner.frames_read.fetch_add(1, SeqCst);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        *self
            .probe
            .inner
            .dropped_at
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.probe.inner.dropped.store(true, SeqCst);
    }
}
