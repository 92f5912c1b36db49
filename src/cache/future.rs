//! The response future: a synthesized answer, a call upstream, or a wait on another's call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::header::{AGE, CONTENT_LENGTH, CONTENT_LOCATION, LOCATION};
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::time::Sleep;
use tower::Service;

use super::NegativeCacheHit;
use super::body::ResponseBody;
use super::coalesce::{Flight, Landing, Leader};
use super::key::Key;
use super::state::State;
use super::stats::bump;
use super::store::{Fresh, Ticket};
use super::ttl::ttl;
use crate::RetryInfo;
use crate::classify::{Classify, Outcome, response_outcome};

/// What to do with the answer once it comes.
#[derive(Debug)]
pub(crate) struct Pending {
    /// A read's key: remembered if the answer is Missing, forgotten if it is Success.
    key: Option<Key>,
    /// This request leads a flight: its answer is shared with the waiters.
    leader: Option<Leader>,
    /// A write's target: forgotten (with `Location`, `Content-Location`) on 2xx/3xx.
    written: Option<Uri>,
    /// The request skipped the cache to refresh its entry.
    refresh: bool,
    /// The read's place among the reads in flight for its key (see `Versions`).
    ticket: Option<Ticket>,
    /// When the read left: peers order its 404 against their own changes by it.
    started: Option<tokio::time::Instant>,
}

impl Pending {
    pub(crate) fn none() -> Self {
        Pending {
            key: None,
            leader: None,
            written: None,
            refresh: false,
            ticket: None,
            started: None,
        }
    }

    /// A read whose Missing answer is remembered under `key` — unless the key has changed
    /// by the time the answer comes.
    pub(crate) fn read(state: &State, key: Option<Key>, leader: Option<Leader>) -> Self {
        let ticket = key.as_ref().map(|k| state.store.versions.start(k));
        Pending {
            key,
            leader,
            ticket,
            started: Some(tokio::time::Instant::now()),
            ..Self::none()
        }
    }

    pub(crate) fn refresh(state: &State, key: Option<Key>) -> Self {
        Pending {
            refresh: true,
            ..Self::read(state, key, None)
        }
    }

    pub(crate) fn write(written: Option<Uri>) -> Self {
        Pending {
            written,
            ..Self::none()
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
}

pin_project! {
    #[project = StepProj]
    enum Step<S, F, ReqB> {
        Hit { fresh: Fresh },
        Called { #[pin] future: F },
        // Boxed: only coalesced waiters pay for its size, not every hit and miss.
        Waiting { waiter: Pin<Box<Waiter<S, ReqB>>> },
        Done,
    }
}

pin_project! {
    /// A miss waiting for the request already in flight for its key, then (if released)
    /// going upstream itself.
    struct Waiter<S, ReqB> {
        #[pin]
        notified: OwnedNotified,
        #[pin]
        timer: Sleep,
        flight: Arc<Flight>,
        request: Option<Request<ReqB>>,
        service: S,
        released: bool,
    }
}

impl<S, C, ReqB> ResponseFuture<S, C, ReqB>
where
    S: Service<Request<ReqB>>,
{
    pub(crate) fn hit(fresh: Fresh) -> Self {
        ResponseFuture {
            step: Step::Hit { fresh },
            pending: Pending::none(),
            ctx: None,
        }
    }

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

    pub(crate) fn wait(
        flight: Arc<Flight>,
        bound: Duration,
        request: Request<ReqB>,
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
{
    type Output = Result<Response<ResponseBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.step.as_mut().project() {
                StepProj::Hit { fresh } => {
                    let fresh = *fresh;
                    this.step.set(Step::Done);
                    return Poll::Ready(Ok(synthesize(fresh)));
                }
                StepProj::Called { future } => {
                    let res = match ready!(future.poll(cx)) {
                        Ok(res) => res,
                        Err(e) => {
                            // Release the waiters now, not when the caller drops this future.
                            drop(this.pending.leader.take());
                            this.step.set(Step::Done);
                            return Poll::Ready(Err(e));
                        }
                    };
                    this.step.set(Step::Done);
                    if let Some((state, classifier)) = this.ctx.as_ref() {
                        settle(state, classifier, this.pending, &res);
                    }
                    return Poll::Ready(Ok(res.map(ResponseBody::upstream)));
                }
                StepProj::Waiting { waiter } => {
                    let w = waiter.as_mut().project();
                    if !*w.released {
                        let mut landing = w.flight.landing();
                        if landing == Landing::InFlight {
                            if w.notified.poll(cx).is_ready() {
                                landing = w.flight.landing();
                            } else if w.timer.poll(cx).is_ready() {
                                if let Some((state, _)) = this.ctx.as_ref() {
                                    bump(&state.stats.wait_timeouts);
                                }
                            } else {
                                return Poll::Pending;
                            }
                        }
                        if let Landing::Missing { status, ttl } = landing {
                            this.step.set(Step::Done);
                            let fresh = Fresh {
                                status,
                                age: Duration::ZERO,
                                remaining: ttl,
                            };
                            return Poll::Ready(Ok(synthesize(fresh)));
                        }
                        *w.released = true;
                    }
                    // Released: go upstream through our own service.
                    ready!(w.service.poll_ready(cx))?;
                    let req = w.request.take().expect("a released waiter has its request");
                    let future = w.service.call(req);
                    this.step.set(Step::Called { future });
                }
                StepProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

/// The answer the cache gives for a remembered key.
fn synthesize<B>(fresh: Fresh) -> Response<ResponseBody<B>> {
    let mut res = Response::new(ResponseBody::synthesized());
    *res.status_mut() = fresh.status;
    // Sized for the two headers: the default map's first table is 600-odd bytes.
    let mut headers = HeaderMap::with_capacity(2);
    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    headers.insert(AGE, age_value(fresh.age.as_secs()));
    *res.headers_mut() = headers;
    res.extensions_mut().insert(NegativeCacheHit {
        status: fresh.status,
        age: fresh.age,
        remaining: fresh.remaining,
    });
    res
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

/// Acts on an upstream answer: remember, forget, and tell the waiters.
fn settle<C: Classify, B>(state: &State, classifier: &C, pending: &mut Pending, res: &Response<B>) {
    let leader = pending.leader.take();
    if let Some(uri) = pending.written.take() {
        if res.status().is_success() || res.status().is_redirection() {
            forget_written(state, &uri, res.headers());
        }
        return;
    }
    let Some(key) = pending.key.take() else {
        return;
    };
    // The retry layer has already classified this answer: use its verdict.
    let outcome = match res.extensions().get::<RetryInfo>() {
        Some(info) => info.outcome,
        None => response_outcome(classifier, res.status(), res.headers()),
    };
    match outcome {
        Outcome::Missing => match ttl(&state.ttl, res.status(), res.headers()) {
            Some(ttl) => {
                // Remembered only if the key did not change while this read was out: a 404
                // overtaken by a write, a 2xx or an invalidation would be stale.
                let status = res.status();
                let started = pending.started.unwrap_or_else(tokio::time::Instant::now);
                let remembered = match pending.ticket.take() {
                    Some(t) => t.settle_with(|| state.remember(key, status, ttl, started)),
                    None => {
                        state.remember(key, status, ttl, started);
                        true
                    }
                };
                if !remembered {
                    return;
                }
                if let Some(leader) = leader {
                    leader.land(Landing::Missing {
                        status: res.status(),
                        ttl,
                    });
                }
            }
            // `no-store`/`no-cache`: whatever was remembered is not to be used either.
            None => {
                if state.store.contains(&key) {
                    state.forget(&key);
                }
            }
        },
        // Present: Missing answers still on their way for this key must not be remembered,
        // and what a refreshing request found remembered is forgotten.
        Outcome::Success => {
            state.note_changed(&key);
            if let Some(t) = pending.ticket.take() {
                t.settle_present();
            }
            if pending.refresh && state.store.contains(&key) {
                state.forget(&key);
            }
        }
        _ => {}
    }
}

/// A successful write: forget its target and the same-origin `Location`, `Content-Location`
/// of its answer (RFC 9111 §4.4).
fn forget_written(state: &State, target: &Uri, headers: &HeaderMap) {
    if let Some(k) = state.key_for(target, 0).and_then(|l| l.to_key()) {
        state.forget(&k);
    }
    for name in [LOCATION, CONTENT_LOCATION] {
        let Some(uri) = headers.get(&name).and_then(|v| same_origin(target, v)) else {
            continue;
        };
        if let Some(k) = state.key_for(&uri, 0).and_then(|l| l.to_key()) {
            state.forget(&k);
        }
    }
}

/// `value` as a URI of `base`'s origin: an absolute URI with the same scheme and authority,
/// or an absolute path resolved against `base`. Anything else is `None`.
fn same_origin(base: &Uri, value: &HeaderValue) -> Option<Uri> {
    let uri: Uri = value.to_str().ok()?.parse().ok()?;
    match (uri.scheme(), uri.authority()) {
        (Some(s), Some(a)) => {
            let same = Some(s) == base.scheme()
                && base
                    .authority()
                    .is_some_and(|b| b.as_str().eq_ignore_ascii_case(a.as_str()));
            same.then_some(uri)
        }
        (None, None) if uri.path().starts_with('/') => {
            let mut parts = uri.into_parts();
            parts.scheme = base.scheme().cloned();
            parts.authority = base.authority().cloned();
            Uri::from_parts(parts).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_rules() {
        let base: Uri = "http://api.example/records".parse().unwrap();
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            same_origin(&base, &v("/records/7")).unwrap(),
            "http://api.example/records/7".parse::<Uri>().unwrap()
        );
        assert!(same_origin(&base, &v("http://API.example/records/7")).is_some());
        assert!(same_origin(&base, &v("http://evil.example/records/7")).is_none());
        assert!(same_origin(&base, &v("https://api.example/records/7")).is_none());
        assert!(same_origin(&base, &v("7")).is_none());
    }
}
