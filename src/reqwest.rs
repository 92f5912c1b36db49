//! reqwest under both layers (feature `reqwest`): a `tower::Service<http::Request<reqwest::Body>>`
//! over a `reqwest::Client`.
//!
//! reqwest's `Client` is a `tower::Service` of its own request type (`reqwest::Request`), which
//! the layers can't read as an `http::Request`, and no well-kept crate adapts it; this adapter is
//! the conversion both ways (`reqwest::Request::try_from(http::Request)`,
//! `http::Response::from(reqwest::Response)`). Its errors are `reqwest::Error`, which the
//! [`classify`](crate::classify) walk reads: connect errors and timeouts are transient.
//! A buffered `reqwest::Body` is replayed by copying its bytes; a streamed one is captured
//! (see [`ReplayBody`](crate::retry::ReplayBody)).
//!
//! A URI's userinfo (`http://user:password@host/`) is sent as reqwest's own `Client::get`
//! sends it: as `Authorization: Basic` credentials, the userinfo taken out of the URL. An
//! `Authorization` header already on the request wins, as with reqwest's
//! `RequestBuilder::headers`.
//!
//! # Redirects: never followed below the layers
//!
//! A `reqwest::Client` follows redirects itself (up to 10 by default). Below the cache that
//! is wrong: `/old` → 301 → `/new` answering 404 would be remembered under `/old`, and a
//! `PUT /new` would never forget it; below the retry layer a connect error could be a later
//! hop's, not the request's. So `ReqwestService` builds its own client with
//! `redirect::Policy::none()` ([`ReqwestService::new`], [`ReqwestService::from_builder`]) and
//! takes no ready-made `Client` (whose policy can't be read back): a 3xx is returned as the
//! origin sent it. To follow redirects, put tower-http's `FollowRedirectLayer` *outside* the
//! cache (as for any client, see the crate docs' "Composing with tower-http"): each hop is then
//! a request of its own to the cache, remembered and forgotten under its own URL.
//!
//! # Example
//!
//! ```no_run
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_negative_cache::reqwest::ReqwestService;
//! use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = ServiceBuilder::new()
//!     .layer(NegativeCacheLayer::new())
//!     .layer(StatusAwareRetryLayer::new())
//!     .service(ReqwestService::new()?);
//! let req = http::Request::get("http://localhost:8080/records/42").body(reqwest::Body::from(""))?;
//! let res = client.oneshot(req).await?;
//! println!("{}", res.status());
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};

/// A `tower::Service<http::Request<reqwest::Body>>` sending through a `reqwest::Client` that
/// never follows redirects (see the [module docs](self#redirects-never-followed-below-the-layers)).
///
/// Cloning it clones the client (an `Arc`): the connection pool is shared.
#[derive(Clone, Debug)]
pub struct ReqwestService {
    // Built here, with `redirect::Policy::none()`; never replaced (no `get_mut`): a client
    // from elsewhere may follow redirects below the layers.
    client: reqwest::Client,
}

impl ReqwestService {
    /// A client with reqwest's defaults (its default features pick the TLS backend), except
    /// that redirects are returned, not followed. Fails as `reqwest::ClientBuilder::build`
    /// fails (a TLS backend that can't start).
    pub fn new() -> Result<Self, reqwest::Error> {
        Self::from_builder(reqwest::Client::builder())
    }

    /// The client `builder` configures (timeouts, default headers, proxies, TLS, ...), except
    /// its redirect policy: replaced by `redirect::Policy::none()` whatever it was, since a
    /// redirect followed below the layers is remembered and forgotten under the wrong URL.
    /// Follow redirects with tower-http's `FollowRedirectLayer` outside the cache instead.
    pub fn from_builder(builder: reqwest::ClientBuilder) -> Result<Self, reqwest::Error> {
        let client = builder
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(ReqwestService { client })
    }

    /// The client (redirects off), for requests of your own outside the layers.
    pub fn get_ref(&self) -> &reqwest::Client {
        &self.client
    }

    /// Unwraps the client (redirects off).
    pub fn into_inner(self) -> reqwest::Client {
        self.client
    }
}

/// The future of [`ReqwestService`].
pub struct ResponseFuture {
    // reqwest's own future type is not public: boxed, as reqwest boxes its own internally.
    inner: Pin<Box<dyn Future<Output = Result<Response<reqwest::Body>, reqwest::Error>> + Send>>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<reqwest::Body>, reqwest::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// Does to `req`'s URL userinfo what reqwest's `RequestBuilder` does (`Request::try_from` and
/// `Client::execute` don't): Basic credentials, percent-decoded, and a URL without them.
fn move_userinfo_to_authorization(
    client: &reqwest::Client,
    req: &mut reqwest::Request,
) -> Result<(), reqwest::Error> {
    let url = req.url();
    if url.username().is_empty() && url.password().is_none() {
        return Ok(());
    }
    // reqwest's own builder makes the header and strips the URL (its encoding is private):
    // one extra request head, for requests with a userinfo only.
    let built = client.get(url.clone()).build()?;
    *req.url_mut() = built.url().clone();
    if let Some(auth) = built.headers().get(http::header::AUTHORIZATION) {
        req.headers_mut()
            .entry(http::header::AUTHORIZATION)
            .or_insert_with(|| auth.clone());
    }
    Ok(())
}

impl tower::Service<Request<reqwest::Body>> for ReqwestService {
    type Response = Response<reqwest::Body>;
    type Error = reqwest::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // reqwest queues nothing of its own: always ready, like its own `Service` impl.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<reqwest::Body>) -> Self::Future {
        let client = self.client.clone();
        ResponseFuture {
            inner: Box::pin(async move {
                let mut req = reqwest::Request::try_from(req)?;
                move_userinfo_to_authorization(&client, &mut req)?;
                let res = client.execute(req).await?;
                Ok(Response::from(res))
            }),
        }
    }
}
