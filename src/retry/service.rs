//! The retry service: sends the request, and again while the policy says so.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower::Service;

use super::future::{Again, ResponseFuture};
use super::layer::Shared;
use super::log::Head;
use super::policy::{Eligible, eligibility};
use super::replay::{ReplayBody, clone_request, with_body};
use super::scope::LastScope;
use super::stats::RetryStats;
use super::witness::issue;
use crate::classify::{Classify, ClassifyError, DefaultClassifier, SourceWalk};
use crate::clock;
use crate::counter::bump;
use crate::headers::content_length;

/// Retries transient failures of an HTTP service; returns final answers (404, 410) at once.
///
/// Built by [`StatusAwareRetryLayer`](crate::StatusAwareRetryLayer). Each response carries its
/// outcome and the attempts it took, read by [`RetryInfo::of`](crate::RetryInfo::of) (a 1xx–3xx
/// Success at the first attempt as the absence of a [`RetryInfo`](crate::RetryInfo) extension:
/// it would be the commonest answer's only allocation).
///
/// Like `tower::retry::Retry`, every attempt after the first is sent through a clone of the
/// inner service made ready in the response future, so `S` must be `Clone` (a hyper-util
/// `Client` is).
pub struct StatusAwareRetry<S, C = DefaultClassifier, EC = SourceWalk> {
    inner: S,
    shared: Arc<Shared<C, EC>>,
    /// The budget scope this service deposited into last (see `Scopes::deposit`).
    last_scope: Option<LastScope>,
}

impl<S, C, EC> StatusAwareRetry<S, C, EC> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<C, EC>>) -> Self {
        StatusAwareRetry {
            inner,
            shared,
            last_scope: None,
        }
    }

    /// The counters shared with the layer that made this service and all its clones.
    pub fn stats(&self) -> RetryStats {
        self.shared.stats.snapshot()
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

impl<S: Clone, C, EC> Clone for StatusAwareRetry<S, C, EC> {
    fn clone(&self) -> Self {
        StatusAwareRetry {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            last_scope: self.last_scope.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug, EC> fmt::Debug for StatusAwareRetry<S, C, EC> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusAwareRetry")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, C, EC, ReqB, ResB> Service<Request<ReqB>> for StatusAwareRetry<S, C, EC>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    S::Error: 'static,
    C: Classify,
    EC: ClassifyError<S::Error>,
    ReqB: ReplayBody,
    ResB: Body,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S, C, ReqB, EC>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let shared = &self.shared;
        // The time, for the budget's slot and the deadline's start: the caller's reading if a
        // layer of this crate lent one (see `clock`). Without either, no clock is read.
        let now = shared.timed().then(clock::now);
        bump(&shared.stats.requests);
        // Every request deposits, whatever its answer (a 404 too: a final answer is a healthy
        // exchange, as in the SRE book and gRPC), when it is sent: the budget bounds the load a
        // host sees to (1 + ratio) x its requests, which counting answers could not promise.
        if let (Some(scopes), Some(now)) = (&shared.budget, now) {
            scopes.deposit(req.uri(), req.headers(), now, &mut self.last_scope);
        }
        let mut eligible = eligibility(
            req.method(),
            req.headers(),
            shared.retry_non_idempotent,
            shared.retry_unprocessed,
        );
        let (mut replay, mut capture) = (None, None);
        if shared.policy.max_retries > 0 && eligible != Eligible::Never {
            replay = clone_request(&req);
            if replay.is_none() && shared.capture_limit > 0 {
                // A stream: keep what the first attempt sends, up to the bound.
                capture = req.body_mut().capture(shared.capture_limit);
                if let Some(c) = &capture {
                    c.declare(
                        content_length(req.headers()),
                        req.version() < http::Version::HTTP_2,
                    );
                }
                replay = capture.as_ref().map(|c| with_body(&req, c.copy()));
            }
            if replay.is_none() {
                // Not counted for a request retried only if unprocessed: that would count
                // every POST whose body can't be copied, though few are ever refused (a
                // refused one is returned as `not_retried`).
                if eligible == Eligible::Any {
                    bump(&shared.stats.not_replayable);
                }
                eligible = Eligible::Never;
            }
        }
        // No copy to read the method and URI from later: keep them, if a log event could
        // show them.
        let head = if replay.is_none() {
            Head::for_logs(&req)
        } else {
            None
        };
        if let Some(name) = &shared.attempt_header {
            req.headers_mut()
                .insert(name.clone(), http::HeaderValue::from_static("1"));
        }
        // Only an unprocessed answer may send this request again: a witness on the transport
        // must tie that answer to the request sent (see `witness`). None when it can't be sent
        // again anyway (`max_retries(0)`): nothing to prove, nothing to warn about.
        let ticket =
            (eligible == Eligible::Unprocessed && replay.is_some()).then(|| issue(&mut req));
        let future = {
            let _loan = now.map(clock::lend);
            self.inner.call(req)
        };
        // Only a request that may be retried needs a service for its later attempts.
        let service = replay.as_ref().map(|_| self.inner.clone());
        let again = Again {
            replay,
            capture,
            head,
            eligible,
            ticket,
        };
        ResponseFuture::new(future, service, again, shared.clone(), now)
    }
}
