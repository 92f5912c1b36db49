//! The negative cache service: answers remembered misses, remembers new ones.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HOST;
use http::{Method, Request, Response};
use tower::Service;

use super::body::ResponseBody;
use super::coalesce::Role;
use super::future::{Known, Pending, ReadKey, ResponseFuture, Synth, Unwinding, Written};
use super::handle::NegativeCacheHandle;
use super::key::{Credentials, Hashed, Lookup};
use super::key::{credential_fingerprint, has_credentials};
use super::memo::{self, Memo};
use super::state::State;
use super::store::Fresh;
use crate::classify::{Classify, DefaultClassifier};
use crate::clock;
use crate::counter::bump;
use crate::headers::{RequestDirectives, request_directives};

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
/// # Readiness
///
/// `poll_ready` is the inner service's, and every path hands back what it reserved, as
/// tower-http's `FollowRedirect` does: a miss calls the ready inner service; a hit (which
/// calls nothing) and a coalesced waiter swap the ready instance for a clone and drop it,
/// releasing its reservation at once — so over `Buffer` or `ConcurrencyLimit`, a caller that
/// holds its service after a hit keeps no slot, and a waiter holds none while it waits (its
/// clone is driven to ready only when it must go upstream).
///
/// That is why `S` must be `Clone` (a hyper-util `Client`, `Buffer`, `BoxCloneSyncService`
/// are): releasing a reservation without a call means dropping the instance that holds it.
/// Wrap a service that is not (a `BoxService`) in `tower::buffer::Buffer` or box it with
/// `BoxCloneSyncService`.
///
/// A hit waits for the inner service's readiness like any call: put a concurrency limit or a
/// load shedder *outside* this layer if hits should be answered while upstream is saturated.
pub struct NegativeCache<S, C = DefaultClassifier> {
    inner: S,
    state: Arc<State>,
    classifier: C,
    /// See [`NegativeCacheLayer::partition`](super::NegativeCacheLayer::partition); 0: none.
    partition: u64,
    /// This service's last hit, to answer the same request again without a lookup.
    memo: Option<Memo>,
}

impl<S, C> NegativeCache<S, C> {
    pub(crate) fn from_parts(inner: S, state: Arc<State>, classifier: C, partition: u64) -> Self {
        NegativeCache {
            inner,
            state,
            classifier,
            partition,
            memo: None,
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
            partition: self.partition,
            memo: None,
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
    ResB: http_body::Body,
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
            let pending = if method.is_safe() {
                Pending::none()
            } else {
                Pending::write(Written::of(&req))
            };
            return self.upstream(req, pending);
        }
        let (uri, headers) = (req.uri(), req.headers());
        // Most client requests carry none of the headers the cache reads: one check skips them.
        let plain = headers.is_empty();
        let directives = if plain {
            RequestDirectives::default()
        } else {
            request_directives(headers)
        };
        let names = &st.credential_headers;
        let cred = if !has_credentials(uri, headers, names) {
            self.partition
        } else if st.credentials == Credentials::Fingerprint {
            credential_fingerprint(uri, headers, names, &st.secret, self.partition)
        } else {
            return self.bypass(req, &directives);
        };
        let host = if plain { None } else { headers.get(HOST) };
        let head = method == Method::HEAD;
        let refresh = directives.refresh || req.extensions().get::<BypassNegativeCache>().is_some();
        if !refresh {
            if let Some(fresh) = memo::hit(&mut self.memo, st, uri, host, cred, &directives, head) {
                return self.hit(&req, fresh);
            }
        }
        let Some(lookup) = st.key_for(uri, host, cred) else {
            return self.bypass(req, &directives);
        };
        // RFC 9111 §5.2.1.4: `no-cache` (and `max-age=0`, §5.2.1.1) — go upstream, and let the
        // answer refresh the entry.
        if refresh {
            if directives.only_if_cached {
                return self.bypass(req, &directives);
            }
            bump(&st.stats.bypasses);
            let pending = match lookup.to_key() {
                Some(key) => Pending::read(
                    st,
                    key,
                    Known::Maybe,
                    None,
                    &directives,
                    clock::now(),
                    req.method(),
                ),
                None => Pending::none(),
            };
            return self.upstream(req, pending);
        }
        // The caller's reading, if a layer of this crate lent one (see `clock`).
        let now = clock::now();
        let inserted = st.store.inserted();
        let generation = st.store.generation();
        // The key's text is scanned once: the store and the reads in flight take its hash.
        let hashed = Hashed::of(&lookup);
        let found = st
            .store
            .get_entry(&hashed, now, || bump(&st.stats.expirations));
        // An entry too old for the request's `max-age`, or too close to its end for its
        // `min-fresh`, is not used; the answer upstream gives refreshes it.
        let known = match found {
            Some((entry, fresh))
                if directives.accepts(fresh.age, fresh.remaining) && fresh.serves(head) =>
            {
                self.memo = Memo::new(uri, host, cred, generation, entry);
                return self.hit(&req, fresh);
            }
            Some(_) => Known::Maybe,
            None => Known::AbsentAt(inserted),
        };
        if directives.only_if_cached {
            bump(&st.stats.misses);
            return self.gateway_timeout(&req);
        }
        if !lookup.fits() {
            bump(&st.stats.misses);
            return self.upstream(req, Pending::none());
        }
        let Some(bound) = st.coalesce.filter(|_| !directives.no_store) else {
            bump(&st.stats.misses);
            // The key itself is made only if the answer needs it (see `ReadKey`).
            let ticket = st.store.versions.start_hashed(hashed.target);
            let key = match lookup {
                Lookup::Owned(key) => ReadKey::Key(key),
                Lookup::Borrowed(_) => ReadKey::Target {
                    uri: req.uri().clone(),
                    host: host.cloned(),
                    cred,
                },
            };
            let pending =
                Pending::read_ticketed(key, ticket, known, None, &directives, now, req.method());
            return self.upstream(req, pending);
        };
        let Some(key) = lookup.to_key() else {
            bump(&st.stats.misses);
            return self.upstream(req, Pending::none());
        };
        match st.flights.join(key.clone()) {
            Role::Leader(leader) => {
                // The flight before ours may have landed between our lookup and our join.
                let again = st.store.get(&key, now, || bump(&st.stats.expirations));
                let again = again.filter(|f| directives.accepts(f.age, f.remaining));
                if let Some(fresh) = again.filter(|f| f.serves(head)) {
                    drop(leader);
                    return self.hit(&req, fresh);
                }
                bump(&st.stats.misses);
                let pending =
                    Pending::read(st, key, known, Some(leader), &directives, now, req.method());
                self.upstream(req, pending)
            }
            Role::Waiter(flight) => {
                bump(&st.stats.misses);
                bump(&st.stats.coalesced);
                let pending = Pending::read(st, key, known, None, &directives, now, req.method());
                self.release_reservation();
                ResponseFuture::wait(
                    flight,
                    bound,
                    req,
                    directives,
                    self.inner.clone(),
                    pending,
                    self.state.clone(),
                    self.classifier.clone(),
                )
            }
        }
    }
}

impl<S: Clone, C: Clone> NegativeCache<S, C> {
    /// Answers `req` with `fresh`, calling nothing.
    fn hit<ReqB>(&mut self, req: &Request<ReqB>, fresh: Fresh) -> ResponseFuture<S, C, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        bump(&self.state.stats.hits);
        hit_event(req, &fresh);
        let synth = Synth::hit(fresh, req);
        self.release_reservation();
        ResponseFuture::synthesized(synth)
    }
}

/// A hit, as a `tracing` event in OpenTelemetry's HTTP client shape: the host it spared
/// (`server.address`), never the key — a URI's path and query may carry ids and tokens, and
/// an event per distinct key is a series per key in whatever counts the events.
fn hit_event<B>(req: &Request<B>, fresh: &Fresh) {
    tracing::debug!(
        server.address = %host_of(req),
        http.request.method = %req.method(),
        http.response.status_code = fresh.status.as_u16(),
        "negative cache: hit"
    );
}

/// The host a request goes to: its URI's, else its `Host` field's (without the port);
/// `-` when it names none. Computed only when the event is enabled.
fn host_of<B>(req: &Request<B>) -> String {
    if let Some(host) = req.uri().host() {
        return host.to_owned();
    }
    let authority = req.headers().get(HOST).and_then(|h| h.to_str().ok());
    match authority.and_then(|a| a.parse::<http::uri::Authority>().ok()) {
        Some(a) => a.host().to_owned(),
        None => "-".to_owned(),
    }
}

impl<S, C> NegativeCache<S, C>
where
    C: Clone,
{
    /// A request the cache can't serve (credentials, an invalid `Host`, a bypass): upstream —
    /// or, for `only-if-cached`, a 504, since it must not go there (RFC 9111 §5.2.1.7).
    fn bypass<ReqB>(
        &mut self,
        req: Request<ReqB>,
        directives: &RequestDirectives,
    ) -> ResponseFuture<S, C, ReqB>
    where
        S: Service<Request<ReqB>> + Clone,
    {
        bump(&self.state.stats.bypasses);
        if directives.only_if_cached {
            return self.gateway_timeout(&req);
        }
        self.upstream(req, Pending::none())
    }

    /// The 504 an `only-if-cached` request gets when the cache can't answer it.
    fn gateway_timeout<ReqB>(&mut self, req: &Request<ReqB>) -> ResponseFuture<S, C, ReqB>
    where
        S: Service<Request<ReqB>> + Clone,
    {
        bump(&self.state.stats.only_if_cached_misses);
        self.release_reservation();
        ResponseFuture::synthesized(Synth::gateway_timeout(req.version()))
    }

    /// Gives back the reservation `poll_ready` made, for a path that calls nothing now: the
    /// ready instance is swapped for a fresh clone and dropped.
    fn release_reservation(&mut self)
    where
        S: Clone,
    {
        let fresh = self.inner.clone();
        drop(std::mem::replace(&mut self.inner, fresh));
    }

    #[inline(always)]
    fn upstream<ReqB>(
        &mut self,
        req: Request<ReqB>,
        mut pending: Pending,
    ) -> ResponseFuture<S, C, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        // The inner `call` may panic: the read's ticket must not stay in its slot then.
        let guard = Unwinding::new(&self.state.store.versions, &mut pending);
        // A read dated when it was sent lends that time to the layers below (see `clock`).
        let loan = pending.sent().map(clock::lend);
        let future = self.inner.call(req);
        drop(loan);
        guard.restore(&mut pending);
        ResponseFuture::called(future, pending, self.state.clone(), self.classifier.clone())
    }
}
