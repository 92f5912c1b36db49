//! The response future: sequences attempts, releases discarded answers, waits.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::Buf;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::capture::Capture;
use super::layer::Shared;
use super::log::{ErrorText, Head, Target};
use super::policy::{Attempt, Decision, Eligible, Stop};
use super::replay::{ReplayBody, clone_request, with_body};
use super::scope::Hold;
use super::witness::{Proof, Ticket, issue};
use crate::RetryInfo;
use crate::classify::{
    Classify, ClassifyError, Outcome, SourceWalk, error_outcome, response_outcome,
};
use crate::counter::{Count, bump};
use crate::observe::{RetryEvent, RetryReason};

mod sealed {
    /// Names the body type of the inner service's response, so the future can hold a body
    /// being drained without a type parameter of its own.
    pub trait HttpResponse {
        type Body;
    }
    impl<B> HttpResponse for http::Response<B> {
        type Body = B;
    }
}
use sealed::HttpResponse;

type BodyOf<S, ReqB> = <<S as Service<Request<ReqB>>>::Response as HttpResponse>::Body;

pin_project! {
    /// The future of [`StatusAwareRetry`](super::StatusAwareRetry).
    pub struct ResponseFuture<S, C, ReqB, EC = SourceWalk>
    where
        S: Service<Request<ReqB>>,
        S::Response: HttpResponse,
    {
        // When the retry being prepared was taken from the budget: given back if it is never
        // sent (not ready by the deadline, readiness failed, the future dropped).
        withdrawn: Option<Instant>,
        // With a deadline, the answer a retry replaces when it holds nothing (an error, a
        // response whose body has ended): returned if the service is not ready by the
        // deadline. An answer with a body is released during the wait instead. Boxed: only a
        // retry with a deadline pays for its size, not every future moved around.
        kept: Option<Box<(Result<Response<BodyOf<S, ReqB>>, S::Error>, Outcome)>>,
        // The budget of the request's scope (its host, by default), looked up when a retry is
        // first decided: a request answered at once never needs it.
        budget: Option<Hold>,
        #[pin]
        state: State<S::Future, BodyOf<S, ReqB>>,
        // A service for the next attempt; None when the request can't be retried.
        service: Option<S>,
        // The copy the next attempt sends.
        replay: Option<Request<ReqB>>,
        // A streamed body's capture: its copies may be sent only once it is complete.
        capture: Option<Capture<ReqB>>,
        // The request's method and URI for log events, kept (when they are enabled) only
        // when there is no copy to read them from.
        head: Option<Box<Head>>,
        // Which retryable answers may send the request again (method and body): one it does
        // not allow is returned as `not_retried`.
        eligible: Eligible,
        // The current attempt's ticket, when only an unprocessed answer may send the request
        // again: what the witness on the transport saw of it.
        ticket: Option<Ticket>,
        shared: Arc<Shared<C, EC>>,
        // When the request came in, if it needs the time (see `Shared::timed`); else the
        // layer's build time, never read.
        started: Instant,
        attempts: u32,
        // Why the retry being prepared was decided: told when it is sent.
        reason: RetryReason,
        prev_delay: Duration,
        // When the current wait ends: the next attempt starts then, never later than the
        // policy allowed (the deadline).
        wake_at: Instant,
        // One timer for every wait of this request, reset for each; boxed so that only a
        // request that is retried pays for its size.
        timer: Option<Pin<Box<Sleep>>>,
    }

    impl<S, C, ReqB, EC> PinnedDrop for ResponseFuture<S, C, ReqB, EC>
    where
        S: Service<Request<ReqB>>,
        S::Response: HttpResponse,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            refund(this.budget, this.withdrawn);
            // Dropped while draining a discarded answer: what was read of it is counted.
            if let StateProj::Releasing { drained, .. } = this.state.project() {
                if *drained > 0 {
                    this.shared.stats.drained_bytes.add(*drained as u64);
                }
            }
            // Once per request, whether answered or dropped: gRPC A96's retries per call
            // (a call without a retry is not reported).
            if *this.attempts > 1 {
                let retries = *this.attempts - 1;
                this.shared.stats.tell(RetryEvent::CallEnded { retries });
            }
        }
    }
}

/// Gives a withdrawn retry that will not be sent back to the budget.
fn refund(budget: &Option<Hold>, withdrawn: &mut Option<Instant>) {
    if let (Some(at), Some(scope)) = (withdrawn.take(), budget.as_ref()) {
        scope.budget.refund_at(at, Instant::now());
    }
}

/// What a request keeps for its later attempts (see the future's fields).
pub(crate) struct Again<ReqB> {
    pub(crate) replay: Option<Request<ReqB>>,
    pub(crate) capture: Option<Capture<ReqB>>,
    pub(crate) head: Option<Box<Head>>,
    pub(crate) eligible: Eligible,
    pub(crate) ticket: Option<Ticket>,
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Called { #[pin] future: F },
        // Waiting for the next attempt while reading the discarded answer's body, so its
        // connection can be reused; the timer, if `timed`, ends the drain (drain timeout or
        // end of wait).
        Releasing { #[pin] body: B, drained: usize, timed: bool },
        // Waiting for the next attempt, the discarded answer released (or kept, if it holds
        // nothing); the timer is set to the end of the wait on the first poll.
        Waiting { armed: bool },
        // Driving the service to ready for the next attempt, after the wait: no reservation
        // is held while waiting. With a kept answer, the timer is set to the deadline on the
        // first poll that finds the service not ready.
        Ready { armed: bool },
    }
}

impl<S, C, ReqB, EC> ResponseFuture<S, C, ReqB, EC>
where
    S: Service<Request<ReqB>>,
    S::Response: HttpResponse,
{
    #[inline(always)]
    pub(crate) fn new(
        future: S::Future,
        service: Option<S>,
        again: Again<ReqB>,
        shared: Arc<Shared<C, EC>>,
        started: Option<Instant>,
    ) -> Self {
        let started = started.unwrap_or(shared.built);
        let Again {
            replay,
            capture,
            head,
            eligible,
            ticket,
        } = again;
        ResponseFuture {
            withdrawn: None,
            kept: None,
            budget: None,
            state: State::Called { future },
            service,
            replay,
            capture,
            head,
            eligible,
            ticket,
            shared,
            started,
            attempts: 1,
            reason: RetryReason::Status,
            prev_delay: Duration::ZERO,
            wake_at: started,
            timer: None,
        }
    }
}

/// Sets `timer` to fire at `at`, allocating it on first use.
fn arm(timer: &mut Option<Pin<Box<Sleep>>>, at: Instant) {
    match timer {
        Some(t) => t.as_mut().reset(at),
        None => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
    }
}

impl<S, C, EC, ReqB, ResB> Future for ResponseFuture<S, C, ReqB, EC>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: 'static,
    C: Classify,
    EC: ClassifyError<S::Error>,
    ReqB: ReplayBody,
    ResB: Body,
{
    type Output = Result<Response<ResB>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let result = ready!(future.poll(cx));
                    let target = Target::of(this.replay.as_ref(), this.head.as_deref());
                    let mut outcome = match &result {
                        Ok(res) => {
                            response_outcome(&shared.classifier, res.status(), res.headers())
                        }
                        Err(e) => error_outcome(&shared.classifier, &shared.error_classifier, e)
                            .unwrap_or_else(|| unrecognised(shared, e, target)),
                    };
                    if let (Some(ticket), true) = (this.ticket.as_ref(), outcome.is_unprocessed()) {
                        let status = result.as_ref().ok().map(|r| r.status());
                        outcome = witnessed(shared, outcome, ticket.proves(status), target);
                    }
                    if *this.attempts > 1 {
                        resend_event(&result, *this.attempts - 1, target);
                    }
                    // The wait is timed from when the retry is decided (read only when the
                    // policy is asked: a final answer costs no clock read; and only if the
                    // budget or the deadline needs it, or the wait is not zero): draining the
                    // discarded body happens during the wait, not before it.
                    let mut now = *this.started;
                    let decision = if !outcome.is_retryable() {
                        Decision::Stop(Stop::Final)
                    } else if !this.eligible.allows(&outcome) {
                        // Not idempotent and not proven unprocessed, or never to be sent twice.
                        Decision::Stop(Stop::NotEligible)
                    } else if this.replay.is_none() {
                        // An eligible request has no copy only when `max_retries` is used up
                        // (at once with `max_retries(0)`).
                        Decision::Stop(Stop::Exhausted)
                    } else if this.capture.as_ref().is_some_and(|c| !c.is_complete()) {
                        // The stream outgrew the capture, failed, or was not sent to its end:
                        // sent once, whole or not at all, never again.
                        bump(&shared.stats.not_replayable);
                        Decision::Stop(Stop::NotEligible)
                    } else {
                        if shared.timed() {
                            now = Instant::now();
                        }
                        let at = Attempt {
                            retries: *this.attempts - 1,
                            elapsed: now.saturating_duration_since(*this.started),
                            prev_delay: *this.prev_delay,
                        };
                        let u = jitter_sample();
                        // The wall clock only dates a `Retry-After` hint: without one it is
                        // not read (the policy does not look at it then).
                        let wall = match &outcome {
                            Outcome::Retryable { after: Some(_), .. } => SystemTime::now(),
                            _ => SystemTime::UNIX_EPOCH,
                        };
                        let (budget, replay) = (&mut *this.budget, this.replay.as_ref());
                        shared.policy.decide(&outcome, at, wall, u, || {
                            let (Some(scopes), Some(req)) = (&shared.budget, replay) else {
                                return true;
                            };
                            let scope = budget.get_or_insert_with(|| {
                                scopes.scope_of(req.uri(), req.headers(), now)
                            });
                            scope.budget.withdraw_at(now)
                        })
                    };
                    let delay = match decision {
                        Decision::Stop(stop) => {
                            if let (Stop::Budget, Some(scopes), Some(scope)) =
                                (stop, &shared.budget, this.budget.as_ref())
                            {
                                scopes.exhausted(scope);
                            }
                            let mut result = result;
                            finish(
                                shared,
                                &mut result,
                                outcome,
                                (stop, stop.reason()),
                                *this.attempts,
                                target,
                            );
                            return Poll::Ready(result);
                        }
                        Decision::Retry(delay) => {
                            if !shared.timed() && !delay.is_zero() {
                                now = Instant::now();
                            }
                            delay
                        }
                    };
                    *this.reason = match (&result, outcome.is_unprocessed()) {
                        (_, true) => RetryReason::Unprocessed,
                        (Ok(_), false) => RetryReason::Status,
                        (Err(_), false) => RetryReason::TransportError,
                    };
                    if this.budget.is_some() {
                        *this.withdrawn = Some(now);
                    }
                    *this.prev_delay = delay;
                    // The policy checked `elapsed + delay` against the deadline: waking at
                    // `now + delay` starts the next attempt within it.
                    *this.wake_at = now + delay;
                    let (method, uri, attempt) = (target.method(), target.uri(), *this.attempts);
                    match &result {
                        Ok(res) => tracing::debug!(
                            %method, %uri, attempt, wait = ?delay, status = %res.status(),
                            "retrying"
                        ),
                        Err(e) => tracing::debug!(
                            %method, %uri, attempt, wait = ?delay, error = %ErrorText(e),
                            unprocessed = outcome.is_unprocessed(), "retrying"
                        ),
                    }
                    // No reservation is taken before the wait (a `ConcurrencyLimit` permit held
                    // through a 10 s backoff serves no one): readiness is driven after it, as
                    // `tower::retry` does. With a deadline, an answer that holds nothing is kept
                    // through the wait, to be returned if the service is not ready by then.
                    let holds_nothing = match &result {
                        Ok(res) => res.body().is_end_stream(),
                        Err(_) => true,
                    };
                    if shared.policy.deadline.is_some() && holds_nothing {
                        *this.kept = Some(Box::new((result, outcome)));
                        this.state.set(wait(delay));
                    } else {
                        let next = release(result, shared, (now, delay), this.timer);
                        this.state.set(next);
                    }
                }
                StateProj::Releasing {
                    mut body,
                    drained,
                    timed,
                } => {
                    // Bounded in bytes, in time, and in frames per poll: a body that is always
                    // ready (empty frames, trailers) can neither spin nor outlive its timer.
                    // Frames already buffered are read first, so even a zero wait drains a
                    // body that came with its head.
                    let mut frames = 0;
                    let done = loop {
                        if frames == FRAMES_PER_POLL {
                            cx.waker().wake_by_ref();
                            break false;
                        }
                        frames += 1;
                        // `drain_limit` is checked before each read, not after it: a read is
                        // started only if what the body says remains fits what is left of
                        // the limit (exact for a body of known length), and never with the
                        // limit reached while data may still come. Only a frame of unknown
                        // size can cross it, by itself alone.
                        let left = shared.drain_limit.saturating_sub(*drained) as u64;
                        let hint = body.size_hint();
                        if hint.lower() > left || (left == 0 && hint.upper() != Some(0)) {
                            break true;
                        }
                        match body.as_mut().poll_frame(cx) {
                            Poll::Ready(Some(Ok(frame))) => {
                                if let Some(data) = frame.data_ref() {
                                    *drained += data.remaining();
                                    if *drained > shared.drain_limit {
                                        break true;
                                    }
                                }
                            }
                            Poll::Ready(_) => break true,
                            Poll::Pending => break false,
                        }
                    };
                    if !done && *timed {
                        let timer = this.timer.as_mut().expect("a drain in a wait has a timer");
                        if timer.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                    }
                    if *drained > 0 {
                        shared.stats.drained_bytes.add(*drained as u64);
                    }
                    // Replacing the state drops the body: now, before the wait's end.
                    this.state.set(wait(*this.prev_delay));
                }
                StateProj::Waiting { armed } => {
                    if !*armed {
                        arm(this.timer, *this.wake_at);
                        *armed = true;
                    }
                    let timer = this.timer.as_mut().expect("armed above");
                    ready!(timer.as_mut().poll(cx));
                    this.state.set(State::Ready { armed: false });
                }
                StateProj::Ready { armed } => {
                    let service = this.service.as_mut().expect("a retry always has a service");
                    match service.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => {
                            // An answer like any other: counted, so the counters add up.
                            refund(this.budget, this.withdrawn);
                            bump(&shared.stats.failed);
                            return Poll::Ready(Err(e));
                        }
                        Poll::Pending => {
                            // Only an answer kept through the wait can be returned instead.
                            let Some(deadline) =
                                shared.policy.deadline.filter(|_| this.kept.is_some())
                            else {
                                return Poll::Pending;
                            };
                            if !*armed {
                                arm(this.timer, *this.started + deadline);
                                *armed = true;
                            }
                            let timer = this.timer.as_mut().expect("armed above");
                            ready!(timer.as_mut().poll(cx));
                            // Not ready by the deadline: the answer in hand is the last one.
                            refund(this.budget, this.withdrawn);
                            let (answer, outcome) = *this.kept.take().expect("checked above");
                            let target = Target::of(this.replay.as_ref(), this.head.as_deref());
                            let mut answer = answer;
                            finish(
                                shared,
                                &mut answer,
                                outcome,
                                (
                                    Stop::Deadline,
                                    "the inner service was not ready by the deadline",
                                ),
                                *this.attempts,
                                target,
                            );
                            return Poll::Ready(answer);
                        }
                    }
                    // Ready: the kept answer is discarded now. Without one (its body was
                    // released during the wait), readiness was awaited whatever the deadline.
                    let kept = this.kept.take().is_some();
                    let deadline = shared.policy.deadline.map(|d| *this.started + d);
                    if !kept && deadline.is_some_and(|d| Instant::now() > d) {
                        bump(&shared.stats.sent_past_deadline);
                        let target = Target::of(this.replay.as_ref(), this.head.as_deref());
                        tracing::debug!(
                            method = %target.method(), uri = %target.uri(),
                            "a retry is sent past the deadline: its service became ready only \
                             after the wait, and the answer it replaces had been released"
                        );
                    }
                    // Sent: the withdrawal is spent.
                    *this.withdrawn = None;
                    let mut req = this.replay.take().expect("a retry always has a request");
                    *this.attempts += 1;
                    if *this.attempts <= shared.policy.max_retries {
                        *this.replay = match this.capture {
                            Some(c) => Some(with_body(&req, c.copy())),
                            None => clone_request(&req),
                        };
                    } else {
                        *this.head = Head::for_logs(&req);
                    }
                    if let Some(name) = &shared.attempt_header {
                        req.headers_mut()
                            .insert(name.clone(), HeaderValue::from(*this.attempts));
                    }
                    if this.ticket.is_some() {
                        *this.ticket = Some(issue(&mut req));
                    }
                    // Told when sent, with the wait before it: the backoff histogram adds up
                    // to `retries` (a retry decided but never sent is not in it).
                    shared.stats.tell(RetryEvent::Backoff {
                        wait: *this.prev_delay,
                    });
                    shared.stats.resent(*this.reason, *this.attempts - 1);
                    let future = service.call(req);
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

/// Releases a discarded answer: the state that drains its body during the wait (decided at
/// `decided`, `delay` long), or that waits with it dropped.
fn release<F, B: Body, E>(
    result: Result<Response<B>, E>,
    shared: &Shared<impl Sized, impl Sized>,
    (decided, delay): (Instant, Duration),
    timer: &mut Option<Pin<Box<Sleep>>>,
) -> State<F, B> {
    let body = match result {
        Ok(res) => res.into_body(),
        Err(_) => return wait(delay),
    };
    let too_long = body.size_hint().lower() > shared.drain_limit as u64;
    if body.is_end_stream() || too_long || shared.drain_timeout.is_zero() {
        return wait(delay);
    }
    // Drained until the wait ends, or the drain timeout if sooner; a zero wait reads only
    // what is already there (no timer).
    let timed = !delay.is_zero();
    if timed {
        arm(timer, (decided + shared.drain_timeout).min(decided + delay));
    }
    State::Releasing {
        body,
        drained: 0,
        timed,
    }
}

/// A uniform sample in [0, 1) for the jitter: xorshift64* on a per-thread state seeded once
/// from std's random keys. (tower's `HasherRng::new()` built a `RandomState` and ran SipHash
/// for every sample: ~150 instructions a retry.) Jitter needs spread, not secrecy.
fn jitter_sample() -> f64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, RandomState};
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(0u64) | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        // The top 53 bits of the product, scaled: every f64 step in [0, 1) equally likely.
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    })
}

/// Frames read from a discarded body in one poll before yielding to the executor.
const FRAMES_PER_POLL: u32 = 64;

/// The state after a discarded answer is released: a zero wait retries at once, without a
/// timer or a clock read.
fn wait<F, B>(delay: Duration) -> State<F, B> {
    if delay.is_zero() {
        State::Ready { armed: false }
    } else {
        State::Waiting { armed: false }
    }
}

/// An unprocessed verdict on a request that only such a verdict may send again stands only if
/// the witness ties it to the request sent; else it is an ordinary retryable one (the request
/// is then returned, not retried), counted, and logged — as a warning once per layer when no
/// witness is installed, at debug level when a layer below sent more than the request.
fn witnessed<C, EC>(
    shared: &Shared<C, EC>,
    outcome: Outcome,
    proof: Proof,
    target: Target<'_>,
) -> Outcome {
    let Outcome::Retryable { after, .. } = outcome else {
        return outcome;
    };
    if proof == Proof::Proven {
        return outcome;
    }
    bump(&shared.stats.unwitnessed);
    let (method, uri) = (target.method(), target.uri());
    if proof == Proof::NoWitness && !shared.warned_unwitnessed.swap(true, Relaxed) {
        tracing::warn!(
            %method, %uri,
            "an answer proving a request unprocessed is not acted on: no WitnessLayer under \
             the retry layer saw the request, so the answer may be another request's (a \
             redirect's hop); put `retry::WitnessLayer` on the transport to retry such \
             requests, or `retry_unprocessed(false)` to say you don't (warned once)"
        );
    } else {
        tracing::debug!(
            %method, %uri, ?proof,
            "an unprocessed verdict is not the request's own: not sent again"
        );
    }
    Outcome::Retryable {
        after,
        unprocessed: false,
    }
}

/// The answer to a resend, as a `tracing` event in OpenTelemetry's HTTP client shape (the
/// attributes of a resend's span): `http.request.resend_count` (1 for the first retry),
/// `http.request.method`, `server.address`, and `http.response.status_code` or, for an error
/// (or a 4xx/5xx status, as its code), `error.type`. No URI: a path and query are unbounded.
fn resend_event<B, E>(result: &Result<Response<B>, E>, resend_count: u32, target: Target<'_>) {
    // The fields are worked out only when the event is enabled (inside the macros): the host
    // is a scan of the authority, which a disabled event must not pay for.
    let (method, host) = (|| target.method(), || target.host());
    match result {
        Ok(res) => {
            let status = res.status();
            let error =
                (status.is_client_error() || status.is_server_error()).then(|| status.as_str());
            tracing::debug!(
                http.request.resend_count = resend_count,
                http.request.method = %method(),
                server.address = %host(),
                http.response.status_code = status.as_u16(),
                error.type = error,
                "http resend answered"
            );
        }
        Err(_) => tracing::debug!(
            http.request.resend_count = resend_count,
            http.request.method = %method(),
            server.address = %host(),
            error.type = std::any::type_name::<E>(),
            "http resend answered"
        ),
    }
}

/// An error no rule recognised: Fatal, counted, and logged once per error type.
#[cold]
fn unrecognised<C, EC, E: 'static>(
    shared: &Shared<C, EC>,
    error: &E,
    target: Target<'_>,
) -> Outcome {
    bump(&shared.stats.unrecognised_errors);
    let id = std::any::TypeId::of::<E>();
    // A poisoned list is still a list of type ids.
    let mut warned = shared.warned.lock().unwrap_or_else(|p| p.into_inner());
    if !warned.contains(&id) {
        warned.push(id);
        drop(warned);
        tracing::warn!(
            method = %target.method(),
            uri = %target.uri(),
            error_type = std::any::type_name::<E>(),
            error = %ErrorText(error),
            "an error no rule recognised is returned as fatal, not retried; give the retry \
             layer an error_classifier for this type (warned once per type)"
        );
    }
    Outcome::Fatal
}

/// Readies the answer to return: counts it, logs why a retryable one is returned, marks it
/// with [`RetryInfo`]. In place: the answer is moved once, into the `Poll`.
fn finish<C, EC, B, E>(
    shared: &Shared<C, EC>,
    result: &mut Result<Response<B>, E>,
    outcome: Outcome,
    (stop, reason): (Stop, &'static str),
    attempts: u32,
    target: Target<'_>,
) where
    E: 'static,
{
    let stats = &shared.stats;
    // Exactly one answer counter per returned answer (see `RetryStats`).
    bump(match (stop, outcome) {
        (Stop::Final, Outcome::Success) => &stats.succeeded,
        (Stop::Final, Outcome::Missing) => &stats.missing,
        (Stop::Final, _) => &stats.failed,
        (Stop::NotEligible, _) => &stats.not_retried,
        (Stop::Budget, _) => &stats.budget_exhausted,
        (Stop::Exhausted | Stop::HintTooLong | Stop::Deadline, _) => &stats.gave_up,
    });
    if stop != Stop::Final {
        let (method, uri) = (target.method(), target.uri());
        match &*result {
            Ok(res) => tracing::debug!(
                %method, %uri, attempts, reason, status = %res.status(),
                "returning a retryable answer"
            ),
            Err(e) => tracing::debug!(
                %method, %uri, attempts, reason, error = %ErrorText(e),
                "returning a retryable answer"
            ),
        }
    }
    if let Ok(res) = result {
        // A first attempt's Success on a 1xx-3xx answer is left unmarked (`RetryInfo::of`
        // reads it): the extension would be the only allocation of the commonest answer.
        let unmarked = attempts == 1
            && matches!(outcome, Outcome::Success)
            && RetryInfo::unmarked(res.status());
        if !unmarked {
            res.extensions_mut().insert(RetryInfo { outcome, attempts });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::jitter_sample;

    #[test]
    fn jitter_samples_are_in_range_and_spread() {
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            let u = jitter_sample();
            assert!((0.0..1.0).contains(&u), "{u}");
            buckets[(u * 10.0) as usize] += 1;
        }
        // Each tenth gets its share within 5% (the expected spread is under 1%).
        for b in buckets {
            assert!((9_500..=10_500).contains(&b), "{buckets:?}");
        }
    }
}
