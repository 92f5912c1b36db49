//! The negative cache service: answers remembered misses, remembers new ones.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response, Uri};
use tokio::time::Instant;
use tower::Service;

use super::body::ResponseBody;
use super::coalesce::{Landing, Role};
use super::future::{Pending, ResponseFuture};
use super::handle::NegativeCacheHandle;
use super::key::{credential_fingerprint, has_credentials};
use super::layer::Credentials;
use super::state::State;
use super::stats::bump;
use crate::classify::{Classify, DefaultClassifier};
use crate::headers::request_no_cache;

/// Put this in a request's extensions to skip the cache for it: the request goes upstream and
/// its answer refreshes the entry (as `Cache-Control: no-cache` on the request does).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BypassNegativeCache;

/// Remembers keys whose answer was Missing and answers them without calling upstream.
///
/// Built by [`NegativeCacheLayer`](super::NegativeCacheLayer). Only GET and HEAD are looked
/// up; a successful write (any unsafe method answered 2xx or 3xx) forgets its target and the
/// same-origin `Location` and `Content-Location` of its answer. A cached answer carries a
/// [`NegativeCacheHit`](super::NegativeCacheHit) extension.
///
/// `S` must be `Clone` (a hyper-util `Client` is): a request waiting on another for the same
/// key (coalescing) goes upstream through a clone if it is released.
///
/// `poll_ready` is the inner service's: a hit is answered without calling upstream, but not
/// before the inner service is ready. Over a hyper-util `Client` (always ready) that costs
/// nothing; put a concurrency limit or a load shedder *outside* this layer if hits should be
/// answered while upstream is saturated.
pub struct NegativeCache<S, C = DefaultClassifier> {
    inner: S,
    state: Arc<State>,
    classifier: C,
}

impl<S, C> NegativeCache<S, C> {
    pub(crate) fn from_parts(inner: S, state: Arc<State>, classifier: C) -> Self {
        NegativeCache {
            inner,
            state,
            classifier,
        }
    }

    /// A handle on the store shared with the layer and all its services.
    pub fn handle(&self) -> NegativeCacheHandle {
        NegativeCacheHandle::new(self.state.clone())
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C: Clone> Clone for NegativeCache<S, C> {
    fn clone(&self) -> Self {
        NegativeCache {
            inner: self.inner.clone(),
            state: self.state.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug> fmt::Debug for NegativeCache<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NegativeCache")
            .field("inner", &self.inner)
            .field("state", &self.state)
            .field("classifier", &self.classifier)
            .finish()
    }
}

impl<S, C, ReqB, ResB> Service<Request<ReqB>> for NegativeCache<S, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    C: Classify + Clone,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, C, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let st = &*self.state;
        let method = req.method();
        if method != Method::GET && method != Method::HEAD {
            bump(&st.stats.bypasses);
            let written: Option<Uri> = (!method.is_safe()).then(|| req.uri().clone());
            return self.upstream(req, Pending::write(written));
        }
        let cred = if !has_credentials(req.uri(), req.headers()) {
            0
        } else if st.credentials == Credentials::Fingerprint {
            credential_fingerprint(req.uri(), req.headers(), &st.secret)
        } else {
            bump(&st.stats.bypasses);
            return self.upstream(req, Pending::none());
        };
        let refresh = request_no_cache(req.headers())
            || req.extensions().get::<BypassNegativeCache>().is_some();
        let Some(lookup) = st.key_for(req.uri(), cred) else {
            bump(&st.stats.bypasses);
            return self.upstream(req, Pending::none());
        };
        if refresh {
            bump(&st.stats.bypasses);
            let key = lookup.to_key();
            return self.upstream(req, Pending::refresh(st, key));
        }
        bump(&st.stats.lookups);
        let now = Instant::now();
        if let Some(fresh) = st.store.get(&lookup, now, || bump(&st.stats.expirations)) {
            bump(&st.stats.hits);
            return ResponseFuture::hit(fresh);
        }
        let Some(key) = lookup.to_key() else {
            bump(&st.stats.misses);
            return self.upstream(req, Pending::none());
        };
        let Some(bound) = st.coalesce else {
            bump(&st.stats.misses);
            return self.upstream(req, Pending::read(st, Some(key), None));
        };
        match st.flights.join(key.clone()) {
            Role::Leader(leader) => {
                // The flight before ours may have landed between our lookup and our join.
                if let Some(fresh) = st.store.get(&key, now, || bump(&st.stats.expirations)) {
                    bump(&st.stats.hits);
                    leader.land(Landing::from(fresh));
                    return ResponseFuture::hit(fresh);
                }
                bump(&st.stats.misses);
                let pending = Pending::read(st, Some(key), Some(leader));
                self.upstream(req, pending)
            }
            Role::Waiter(flight) => {
                bump(&st.stats.misses);
                bump(&st.stats.coalesced);
                ResponseFuture::wait(
                    flight,
                    bound,
                    req,
                    self.inner.clone(),
                    Pending::read(st, Some(key), None),
                    self.state.clone(),
                    self.classifier.clone(),
                )
            }
        }
    }
}

impl<S, C> NegativeCache<S, C>
where
    C: Clone,
{
    fn upstream<ReqB>(&mut self, req: Request<ReqB>, pending: Pending) -> ResponseFuture<S, C, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        let future = self.inner.call(req);
        ResponseFuture::called(future, pending, self.state.clone(), self.classifier.clone())
    }
}
