//! The response future: a synthesized answer, a call upstream, or a wait on another's call;
//! and what is done with an upstream answer once it lands.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use http::header::{ACCEPT_ENCODING, AGE, CONTENT_LENGTH, CONTENT_LOCATION, HOST, LOCATION};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::NegativeCacheHit;
use super::answer::Head;
use super::body::ResponseBody;
use super::coalesce::{Flight, Leader};
use super::key::{Key, KeyRef, origin_target, target_key};
use super::record::Recorder;
use super::reference::{Target, resolve};
use super::state::State;
use super::store::{Fresh, Stored, Ticket};
use super::ttl::freshness;
use crate::classify::{Classify, Outcome};
use crate::counter::bump;
use crate::headers::RequestDirectives;

/// What to do with the answer once it comes.
#[derive(Debug)]
pub(crate) struct Pending {
    /// A read's key: remembered if the answer is Missing, forgotten if it is Success.
    key: Option<ReadKey>,
    /// This request leads a flight: its waiters wake when it has settled.
    /// Boxed, as `written`: only a coalescing leader or a write pays for its size, not every
    /// read's future, which every layer above moves.
    leader: Option<Box<Leader>>,
    /// A write's target: forgotten (with `Location`, `Content-Location`) on 2xx/3xx.
    written: Option<Box<Written>>,
    /// The request said `no-store`: its answer is not stored (RFC 9111 §5.2.1.5).
    no_store: bool,
    /// An entry may be stored for the key already (the request went upstream past one: a
    /// refresh, or one too old for it); else the store's insert count before the lookup.
    known: Known,
    /// The read's place among the reads in flight for its key (see `Versions`).
    ticket: Option<Ticket>,
    /// When the read left: peers order its 404 against their own changes by it.
    started: Option<tokio::time::Instant>,
    /// When the request was handed to the inner service (a coalesced waiter's, once it stops
    /// waiting): its answer's age counts from here (RFC 9111 §4.2.3 `request_time`).
    sent: Option<tokio::time::Instant>,
    /// A HEAD: its answer has no body to keep (the entry is head-only).
    head: bool,
}

/// A read's key, or what it is made from: most reads are answered present and never need
/// the key itself (it is made for a Missing answer, or to forget an entry), so a plain miss
/// keeps its request target — a `Uri` clone shares the request's bytes — rather than
/// allocating the key's text for every request that goes by.
#[derive(Debug)]
pub(crate) enum ReadKey {
    Key(Key),
    /// The target [`State::key_for`] made the lookup from.
    Target {
        uri: Uri,
        host: Option<HeaderValue>,
        cred: u64,
    },
}

impl ReadKey {
    /// The key, made now if it was not yet (the same one the lookup used).
    fn into_key(self, state: &State) -> Option<Key> {
        match self {
            ReadKey::Key(k) => Some(k),
            ReadKey::Target { uri, host, cred } => {
                state.key_for(&uri, host.as_ref(), cred)?.to_key()
            }
        }
    }

    /// Runs `f` on the key's target ([`Key::target`]), without making the key.
    fn with_target(&self, state: &State, f: impl FnOnce(KeyRef<'_>)) {
        match self {
            ReadKey::Key(k) => f(k.target()),
            ReadKey::Target { uri, host, cred } => {
                if let Some(lookup) = state.key_for(uri, host.as_ref(), *cred) {
                    f(lookup.target());
                }
            }
        }
    }

    fn as_key(&self) -> Option<&Key> {
        match self {
            ReadKey::Key(k) => Some(k),
            ReadKey::Target { .. } => None,
        }
    }
}

/// What a read knows of its key's entry when it goes upstream.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Known {
    /// There may be one.
    Maybe,
    /// There was none at the lookup, when the store had made this many inserts.
    AbsentAt(u64),
}

/// The target of a write, as the origin sees it.
#[derive(Debug)]
pub(crate) struct Written {
    uri: Uri,
    host: Option<HeaderValue>,
}

impl Written {
    pub(crate) fn of<B>(req: &Request<B>) -> Self {
        Written {
            uri: req.uri().clone(),
            host: req.headers().get(HOST).cloned(),
        }
    }
}

impl Pending {
    pub(crate) fn none() -> Self {
        Pending {
            key: None,
            leader: None,
            written: None,
            no_store: false,
            known: Known::Maybe,
            ticket: None,
            started: None,
            sent: None,
            head: false,
        }
    }

    /// A read whose Missing answer is remembered under `key` — unless the key has changed
    /// by the time the answer comes, or the request said `no-store`.
    pub(crate) fn read(
        state: &State,
        key: Key,
        known: Known,
        leader: Option<Leader>,
        directives: &RequestDirectives,
        started: Instant,
        method: &Method,
    ) -> Self {
        let ticket = state.store.versions.start(&key);
        Self::read_ticketed(
            ReadKey::Key(key),
            ticket,
            known,
            leader,
            directives,
            started,
            method,
        )
    }

    /// A read as [`read`](Self::read), its place among the reads of its key taken already.
    #[inline(always)]
    pub(crate) fn read_ticketed(
        key: ReadKey,
        ticket: Ticket,
        known: Known,
        leader: Option<Leader>,
        directives: &RequestDirectives,
        started: Instant,
        method: &Method,
    ) -> Self {
        Pending {
            head: method == Method::HEAD,
            ticket: Some(ticket),
            key: Some(key),
            leader: leader.map(Box::new),
            no_store: directives.no_store,
            known,
            started: Some(started),
            sent: Some(started),
            ..Self::none()
        }
    }

    /// When the read was handed to the inner service, if it is dated.
    pub(crate) fn sent(&self) -> Option<Instant> {
        self.sent
    }

    pub(crate) fn write(written: Written) -> Self {
        Pending {
            written: Some(Box::new(written)),
            ..Self::none()
        }
    }
}

/// A read's ticket held across the inner service's `call`, which may panic (and be caught
/// above the cache: a catch-panic layer, a tokio task): unwinding, the ticket leaves its key's
/// slot, as the response future's drop would have done. Only the ticket is taken out of its
/// [`Pending`] (not the whole, which would be copied twice more).
pub(crate) struct Unwinding<'a> {
    versions: &'a super::store::Versions,
    ticket: Option<Ticket>,
}

impl<'a> Unwinding<'a> {
    pub(crate) fn new(versions: &'a super::store::Versions, pending: &mut Pending) -> Self {
        Unwinding {
            versions,
            ticket: pending.ticket.take(),
        }
    }

    /// The call returned: the ticket goes back into its pending read.
    pub(crate) fn restore(mut self, pending: &mut Pending) {
        pending.ticket = self.ticket.take();
    }
}

impl Drop for Unwinding<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            t.abandon(self.versions);
        }
    }
}

/// An answer the cache makes up: a remembered Missing answer, or the 504 an `only-if-cached`
/// request gets when nothing is remembered (RFC 9111 §5.2.1.7).
#[derive(Clone, Debug)]
pub(crate) struct Synth {
    hit: Option<Fresh>,
    version: Version,
    /// A HEAD: the head a GET's hit would have, no body (RFC 9110 §9.3.2).
    head: bool,
    /// The request accepts the kept body's content coding (or it has none).
    accepts: bool,
}

impl Synth {
    /// The hit of `fresh` for `req`.
    pub(crate) fn hit<B>(fresh: Fresh, req: &Request<B>) -> Self {
        let accept = req.headers().get(ACCEPT_ENCODING);
        let accepts = fresh
            .answer
            .as_ref()
            .is_none_or(|a| a.acceptable_to(accept));
        Synth {
            hit: Some(fresh),
            version: req.version(),
            head: req.method() == Method::HEAD,
            accepts,
        }
    }

    pub(crate) fn gateway_timeout(version: Version) -> Self {
        Synth {
            hit: None,
            version,
            head: false,
            accepts: true,
        }
    }
}

pin_project! {
    /// The future of [`NegativeCache`](super::NegativeCache).
    pub struct ResponseFuture<S, C, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        step: Step<S, S::Future, ReqB>,
        pending: Pending,
        // What an answer from upstream is settled with; a hit needs neither.
        ctx: Option<(Arc<State>, C)>,
    }

    impl<S, C, ReqB> PinnedDrop for ResponseFuture<S, C, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let Some((state, _)) = this.ctx.as_ref() else {
                return;
            };
            // A read that ended without settling (an error, another outcome, dropped) leaves
            // its key's slot.
            if let Some(t) = this.pending.ticket.take() {
                t.abandon(&state.store.versions);
            }
            // Dropped before its answer came: a write the origin may have processed.
            if let Some(w) = this.pending.written.take() {
                forget_unanswered(state, &w);
            }
        }
    }
}

pin_project! {
    #[project = StepProj]
    enum Step<S, F, ReqB> {
        Hit { synth: Option<Synth> },
        Called { #[pin] future: F },
        // Boxed: only coalesced waiters pay for its size, not every hit and miss.
        Waiting { waiter: Pin<Box<Waiter<S, ReqB>>> },
        Done,
    }
}

pin_project! {
    /// A miss waiting for the request already in flight for its key, then looking the key up
    /// again, then (if nothing is there) going upstream itself.
    ///
    /// It holds no reservation of the inner service while it waits: the caller's ready
    /// instance was released when it started waiting, and this clone is driven to ready only
    /// once it must go upstream.
    struct Waiter<S, ReqB> {
        #[pin]
        notified: OwnedNotified,
        #[pin]
        timer: Sleep,
        flight: Arc<Flight>,
        request: Option<Request<ReqB>>,
        directives: RequestDirectives,
        service: S,
        released: bool,
    }
}

impl<S, C, ReqB> ResponseFuture<S, C, ReqB>
where
    S: Service<Request<ReqB>>,
{
    pub(crate) fn synthesized(synth: Synth) -> Self {
        ResponseFuture {
            step: Step::Hit { synth: Some(synth) },
            pending: Pending::none(),
            ctx: None,
        }
    }

    #[inline(always)]
    pub(crate) fn called(
        future: S::Future,
        pending: Pending,
        state: Arc<State>,
        classifier: C,
    ) -> Self {
        ResponseFuture {
            step: Step::Called { future },
            pending,
            ctx: Some((state, classifier)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn wait(
        flight: Arc<Flight>,
        bound: std::time::Duration,
        request: Request<ReqB>,
        directives: RequestDirectives,
        service: S,
        pending: Pending,
        state: Arc<State>,
        classifier: C,
    ) -> Self {
        let step = Step::Waiting {
            waiter: Box::pin(Waiter {
                notified: flight.notified(),
                timer: tokio::time::sleep(bound),
                flight,
                request: Some(request),
                directives,
                service,
                released: false,
            }),
        };
        ResponseFuture {
            step,
            pending,
            ctx: Some((state, classifier)),
        }
    }
}

impl<S, C, ReqB, ResB> Future for ResponseFuture<S, C, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    C: Classify,
    ResB: Body,
{
    type Output = Result<Response<ResponseBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.step.as_mut().project() {
                StepProj::Hit { synth } => {
                    let synth = synth.take().expect("a hit is answered once");
                    this.step.set(Step::Done);
                    return Poll::Ready(Ok(synthesize(synth)));
                }
                StepProj::Called { future } => {
                    let res = match ready!(future.poll(cx)) {
                        Ok(res) => res,
                        Err(e) => {
                            // Wake the waiters now, not when the caller drops this future.
                            drop(this.pending.leader.take());
                            if let (Some(w), Some((state, _))) =
                                (this.pending.written.take(), this.ctx.as_ref())
                            {
                                forget_unanswered(state, &w);
                            }
                            this.step.set(Step::Done);
                            return Poll::Ready(Err(e));
                        }
                    };
                    this.step.set(Step::Done);
                    let recorder = match this.ctx.as_ref() {
                        Some((state, classifier)) => settle(state, classifier, this.pending, &res),
                        None => None,
                    };
                    return Poll::Ready(Ok(match recorder {
                        Some(r) => res.map(|b| ResponseBody::recording(b, r)),
                        None => res.map(ResponseBody::upstream),
                    }));
                }
                StepProj::Waiting { waiter } => {
                    let w = waiter.as_mut().project();
                    if !*w.released {
                        if !w.flight.landed() {
                            if w.notified.poll(cx).is_ready() {
                                // Landed: look the key up below.
                            } else if w.timer.poll(cx).is_ready() {
                                if let Some((state, _)) = this.ctx.as_ref() {
                                    bump(&state.stats.wait_timeouts);
                                }
                            } else {
                                return Poll::Pending;
                            }
                        }
                        *w.released = true;
                        // The same rule as any lookup: only what the store holds now.
                        let key = this.pending.key.as_ref().and_then(ReadKey::as_key);
                        let found = match (this.ctx.as_ref(), key) {
                            (Some((state, _)), Some(key)) => state
                                .store
                                .get(key, Instant::now(), || bump(&state.stats.expirations))
                                .filter(|f| w.directives.accepts(f.age, f.remaining))
                                .filter(|f| f.serves(this.pending.head)),
                            _ => None,
                        };
                        if let Some((fresh, req)) = found.zip(w.request.as_ref()) {
                            let synth = Synth::hit(fresh, req);
                            this.step.set(Step::Done);
                            return Poll::Ready(Ok(synthesize(synth)));
                        }
                    }
                    // Released: go upstream through our own service, once it is ready.
                    ready!(w.service.poll_ready(cx))?;
                    let req = w.request.take().expect("a released waiter has its request");
                    this.pending.sent = Some(Instant::now());
                    let future = w.service.call(req);
                    this.step.set(Step::Called { future });
                }
                StepProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

/// The answer the cache makes up, in the request's HTTP version: a hit is the origin's answer
/// as remembered (RFC 9111 §4), its `Age` set (§5.1: the age includes what the origin reported
/// on arrival).
fn synthesize<B>(synth: Synth) -> Response<ResponseBody<B>> {
    let Some(fresh) = synth.hit else {
        let mut res = Response::new(ResponseBody::synthesized());
        *res.version_mut() = synth.version;
        *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        *res.headers_mut() = bare_headers();
        return res;
    };
    // A kept body in a coding the request does not accept is not sent (RFC 9110 §12.5.3):
    // the hit is head-only, as for a body that was not kept. Rare, so made per hit.
    let answer = match fresh.answer {
        Some(a) if !synth.accepts => a.head_only(),
        a => a,
    };
    let (body, body_kept) = match &answer {
        // Shared, not copied: the body is refcounted.
        Some(a) => (a.body().clone(), a.kept()),
        None => (bytes::Bytes::new(), true),
    };
    // RFC 9110 §9.3.2: a HEAD's answer has the GET's fields (its `Content-Length` too), no body.
    let body = if synth.head {
        bytes::Bytes::new()
    } else {
        body
    };
    let mut res = Response::new(ResponseBody::remembered(body));
    *res.version_mut() = synth.version;
    *res.status_mut() = fresh.status;
    let headers = res.headers_mut();
    match &answer {
        // Shared, not copied: the map's values are refcounted.
        Some(a) => *headers = a.headers().clone(),
        // Built in the answer's own (empty, unallocated) map: nothing made to be dropped.
        None => bare_headers_in(headers),
    }
    // Overwrites the placeholder in place: the map does not grow.
    headers.insert(AGE, age_value(fresh.age.as_secs()));
    // RFC 9110 §8.6: a HEAD's `Content-Length` is the length a GET's body would have; an
    // entry that kept no body does not know it (one learned from a HEAD keeps the origin's).
    if synth.head && !body_kept && answer.as_ref().is_some_and(|a| a.serves_get()) {
        headers.remove(CONTENT_LENGTH);
    }
    res.extensions_mut().insert(NegativeCacheHit {
        status: fresh.status,
        age: fresh.age,
        remaining: fresh.remaining,
        body_kept,
        ttl: fresh.ttl,
        ttl_source: fresh.source,
    });
    res
}

/// `Content-Length: 0` and room for `Age`: the default map's first table is 600-odd bytes.
fn bare_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    bare_headers_in(&mut headers);
    headers
}

/// [`bare_headers`] in `headers`, an empty map that has not allocated.
fn bare_headers_in(headers: &mut HeaderMap) {
    headers.reserve(2);
    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
}

/// `Age` without allocating for the first minute (most hits are young).
fn age_value(secs: u64) -> HeaderValue {
    const YOUNG: [&str; 60] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31",
        "32", "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46",
        "47", "48", "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59",
    ];
    match YOUNG.get(secs as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(secs),
    }
}

/// Acts on an upstream answer: remember, forget, then wake the waiters.
///
/// The rule it keeps (with [`Ticket`] and [`State::forget_exact`]): a remembered Missing answer
/// is served only if no 2xx, successful write or invalidation of its key landed after its
/// request started. A Missing answer that lands after such a change is not remembered; a
/// change that lands after a Missing answer was remembered forgets it.
///
/// A Missing answer whose body is still to come is remembered once the caller has read it
/// (or dropped it): the returned recorder, carried by the body, does that.
fn settle<C: Classify, B: Body>(
    state: &Arc<State>,
    classifier: &C,
    pending: &mut Pending,
    res: &Response<B>,
) -> Option<Box<Recorder>> {
    // Dropped last, once the store says what the waiters should see (or handed to the
    // recorder, which drops it once the entry is stored).
    let mut leader = pending.leader.take();
    if let Some(w) = pending.written.take() {
        if res.status().is_success() || res.status().is_redirection() {
            forget_written(state, &w, res.headers());
        }
        return None;
    }
    // Taken out only where the key is made: a move of it costs as much as the check.
    pending.key.as_ref()?;
    match state.outcome(classifier, res) {
        Outcome::Missing => {
            let key = pending.key.take()?.into_key(state)?;
            let (status, headers) = (res.status(), res.headers());
            // RFC 9111 §4.2.3: response_delay = response_time − request_time; the entry is
            // dated from response_time, however late its body ends.
            let arrived = Instant::now();
            let delay = pending.sent.map_or(Duration::ZERO, |sent| {
                arrived.saturating_duration_since(sent)
            });
            let fresh = freshness(&state.ttl, status, headers, SystemTime::now(), delay);
            match fresh.filter(|_| !pending.no_store) {
                Some(f) => {
                    let mut stored = Stored {
                        status,
                        answer: None,
                        ttl: f.ttl,
                        age: f.age,
                        source: f.source,
                    };
                    let fields = Head::of(headers);
                    let started = pending.started.unwrap_or_else(Instant::now);
                    let body = res.body();
                    let hint = body.size_hint();
                    // The body is kept if the caller reads it whole within the limit: wait for
                    // it, unless the answer is known now (`Ok`: a HEAD's, no body, or one too
                    // long to keep); `Err` gives the fields back to the recorder.
                    let now = if pending.head {
                        // RFC 9110 §9.3.2: a HEAD's answer is a GET's head, its
                        // `Content-Length` the GET's body length (§8.6): kept as it came.
                        let length = crate::headers::content_length(headers).map(HeaderValue::from);
                        Ok(Some(super::answer::Answer::of_head(fields, length)))
                    } else if body.is_end_stream() {
                        Ok(super::answer::Answer::new(
                            fields,
                            Some(bytes::Bytes::new()),
                        ))
                    } else if hint.lower() > state.body_limit {
                        Ok(super::answer::Answer::new(fields, None))
                    } else {
                        Err(fields)
                    };
                    // Taken once the body (the caller's type, which may panic) has answered.
                    let ticket = pending.ticket.take()?;
                    match now {
                        Ok(answer) => {
                            stored.answer = answer;
                            // Remembered only if the key did not change while this read was
                            // out.
                            ticket.settle_with(&state.store.versions, || {
                                state.remember(key, stored, started, arrived)
                            });
                        }
                        Err(fields) => {
                            let expected = hint.exact();
                            return Some(Box::new(Recorder::new(
                                state.clone(),
                                key,
                                stored,
                                fields,
                                ticket,
                                started,
                                arrived,
                                leader.take().map(|l| *l),
                                expected,
                            )));
                        }
                    }
                }
                None => {
                    bump(&state.stats.uncacheable);
                    tracing::debug!(
                        key = key.as_str(),
                        %status,
                        request_no_store = pending.no_store,
                        "negative cache: Missing answer not stored (no-store, no-cache, Vary, or stale on arrival)"
                    );
                    // The origin's newest word on this key forbids reuse: what was remembered
                    // before (under this request's credentials) is not to be used either.
                    if fresh.is_none() {
                        state.forget_exact(&key);
                    }
                }
            }
        }
        // Present, or another final answer (a 403, a 400): the origin's latest word on this
        // key is not Missing. A Missing answer remembered for it is forgotten, and those still
        // on their way are not remembered. A Retryable answer (a 503) says nothing about the
        // resource and leaves what is held (RFC 9111 §4.3.3 lets a cache keep using it).
        Outcome::Success | Outcome::Fatal => {
            // The key is made only if a fleet tier records the change or something may be
            // stored for it: most 2xx answers go by without it. Without a tier only the time
            // of the change is noted (for a tier attached later), and the adaptive TTL's
            // streak ends by the key's target.
            let read_key = &mut pending.key;
            let mut key = None;
            if !state.peers.recent.note_if_off(Instant::now) {
                key = read_key.take().and_then(|k| k.into_key(state));
                if let Some(k) = &key {
                    state.note_changed(k);
                }
            } else if let (Some(history), Some(k)) = (&state.history, &read_key) {
                // Present: the streak ends, and a Missing answer after this one is a flap.
                k.with_target(state, |t| history.present_target(t));
            }
            if let Some(t) = pending.ticket.take() {
                t.settle_present(&state.store.versions);
            }
            // Only when something may be stored for the key: most 2xx answers go by without
            // touching the store (see `Store::inserted`).
            let maybe = match pending.known {
                Known::Maybe => true,
                Known::AbsentAt(n) => state.store.inserted() != n,
            };
            if maybe {
                let key = key.or_else(|| read_key.take().and_then(|k| k.into_key(state)));
                if let Some(k) = &key {
                    state.forget_exact(k);
                }
            }
        }
        _ => {}
    }
    drop(leader);
    None
}

/// An unsafe request that ended without an answer (an error, or dropped while upstream): the
/// origin may have processed it, and its answer is lost. Its target is forgotten — at worst
/// that costs one more request for it — but nothing its answer would have named (no
/// `Location` came).
fn forget_unanswered(state: &State, w: &Written) {
    tracing::debug!(
        path = w.uri.path(),
        "negative cache: a write ended without an answer, its target forgotten"
    );
    forget_written(state, w, &HeaderMap::new());
}

/// A successful write: forget its target and what its answer's `Location` and
/// `Content-Location` name on the same origin (RFC 9111 §4.4), resolved against the target
/// (RFC 3986 §5.2) and compared as keys are (scheme and host lower-case, default port elided).
fn forget_written(state: &State, w: &Written, headers: &HeaderMap) {
    let Some((scheme, authority, pq)) =
        origin_target(&w.uri, w.host.as_ref(), &state.origin_scheme)
    else {
        // Not keyed: a `Host` naming another host than the URI. The request went to the URI's
        // authority and the origin may have read the `Host` (RFC 9110 §7.2): the write may
        // have changed either target, so both are forgotten, with what the answer names.
        if let (Some(_), Some(host)) = (w.uri.authority(), &w.host) {
            forget_written(
                state,
                &Written {
                    uri: w.uri.clone(),
                    host: None,
                },
                headers,
            );
            let mut parts = w.uri.clone().into_parts();
            if let Some(authority) = host.to_str().ok().and_then(|h| h.parse().ok()) {
                parts.authority = Some(authority);
                if let Ok(uri) = Uri::from_parts(parts) {
                    forget_written(state, &Written { uri, host: None }, headers);
                }
            }
        }
        return;
    };
    if let Some(k) = state
        .key_for(&w.uri, w.host.as_ref(), 0)
        .and_then(|t| t.to_key())
    {
        state.forget(&k);
    }
    // The same target the key was made from, as owned parts to resolve against.
    let base = Target {
        scheme: scheme.to_ascii_lowercase(),
        authority: authority.to_owned(),
        pq: if pq.is_empty() { "/" } else { pq }.to_owned(),
    };
    let origin_of = |t: &Target| {
        target_key(&t.scheme, &t.authority, &t.pq, 0).map(|l| {
            let (s, h, p) = l.origin();
            (s.to_owned(), h.to_owned(), p)
        })
    };
    let Some(origin) = origin_of(&base) else {
        return;
    };
    for name in [LOCATION, CONTENT_LOCATION] {
        let Some(value) = headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let Some(mut resolved) = resolve(&base, value) else {
            continue;
        };
        // An origin-form target's keys carry no scheme (the request did not say it): an
        // absolute reference to its host names the same keys, scheme aside.
        if base.scheme.is_empty() {
            resolved.scheme.clear();
        }
        // Cross-origin references never invalidate: another origin's answer says nothing
        // about it (§4.4), and that would let one origin empty another's entries.
        if origin_of(&resolved).as_ref() != Some(&origin) {
            continue;
        }
        if let Some(k) = state.key_for_target(&resolved) {
            state.forget(&k);
        }
    }
}
