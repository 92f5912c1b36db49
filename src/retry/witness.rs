//! The witness: ties an "unprocessed" verdict to the request the retry layer sent (see
//! [`WitnessLayer`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::classify::{ClassifyError, SourceWalk, as_dyn_error, recognise_error};

/// What the witness saw of the requests carrying one ticket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Seen {
    /// Requests sent with the ticket.
    sent: u32,
    fate: Fate,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Fate {
    /// Not answered (yet), or its future was dropped.
    #[default]
    Pending,
    /// Answered with a response of this status.
    Answered(StatusCode),
    /// Failed with an error that proves it was never processed.
    Unprocessed,
    /// Failed otherwise.
    Failed,
}

/// The retry layer's mark on one attempt: the witness writes what happened to the requests
/// that carry it. Private: nothing but the retry layer can make one.
#[derive(Clone, Default)]
pub(crate) struct Ticket(Arc<Mutex<Seen>>);

impl Ticket {
    fn seen(&self) -> Seen {
        // Plain data, valid whatever a panicking holder left.
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Whether the witness ties an answer of `status` (`None`: an error the retry layer's
    /// classifier calls unprocessed) to the one request sent with this ticket.
    pub(crate) fn proves(&self, status: Option<StatusCode>) -> Proof {
        let seen = self.seen();
        match seen.sent {
            0 => Proof::NoWitness,
            1 => match (seen.fate, status) {
                (Fate::Unprocessed, None) => Proof::Proven,
                (Fate::Answered(s), Some(status)) if s == status => Proof::Proven,
                _ => Proof::NotThisRequest,
            },
            _ => Proof::NotThisRequest,
        }
    }
}

/// Marks `req` with a fresh ticket (replacing any a copy inherited from an earlier attempt)
/// and returns it.
pub(crate) fn issue<B>(req: &mut Request<B>) -> Ticket {
    let ticket = Ticket::default();
    req.extensions_mut().insert(ticket.clone());
    ticket
}

/// What a ticket says of an unprocessed verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proof {
    /// Exactly one request carried the ticket, and the verdict is about its own answer.
    Proven,
    /// No witness saw the request: none is installed under the retry layer (or a layer
    /// between them dropped the request's extensions).
    NoWitness,
    /// Several requests carried the ticket, or the answer the witness saw is not the one the
    /// retry layer got: a layer between them sent more than the request.
    NotThisRequest,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Ticket").field(&self.seen()).finish()
    }
}

/// Applies [`Witness`]: put it directly on the transport (the hyper-util `Client`), under the
/// retry layer and under every layer that may send more than one request per call.
///
/// Without one, a request that only an unprocessed answer may send again (POST, PATCH without
/// `Idempotency-Key`; see [`Builder::retry_unprocessed`](super::Builder::retry_unprocessed))
/// is never sent twice. Why: an error that proves a request was never processed (a refused
/// connection, a refused HTTP/2 stream) proves it of *a* request, the one that failed.
/// Between the retry layer and the transport, a layer may send several requests for one call
/// — a redirect follower, an auth refresh, a hedge — and the failure it returns may be a later
/// request's: a POST answered `303 See Other` (processed, RFC 9110 §15.4.4) whose `Location`
/// refuses connections fails with a connect error. Nothing in that error names its request
/// (hyper-util's error carries none), so the error alone can't tell.
///
/// So the retry layer sends each attempt of such a request with a ticket in its extensions,
/// and believes an unprocessed verdict (RFC 9110 §9.2.2: the client may retry when it can
/// "detect that the original request was never applied") only when the witness reports that
/// exactly one request carrying that ticket was sent and that *its* answer is the one the
/// verdict is about: an error the witness's rules call unprocessed too, or a response of the
/// same status. Anything else — no witness, two requests with the ticket (tower-http 0.7's
/// `FollowRedirect` carries extensions to each hop), a ticket answered with a `303` while an
/// error came back (tower-http 0.6's hops carry none) — is no proof: the request is not sent
/// again, and the verdict is counted in
/// [`RetryStats::unwitnessed`](super::RetryStats::unwitnessed).
///
/// Which stacks keep the proof: a witness directly on the client, with only layers that send
/// the request they were given at most once between it and the retry layer (a per-attempt
/// `tower::timeout`, `map_request`/`map_response`, decompression, tracing, a concurrency
/// limit, a `Buffer`). Not a witness above a redirect follower, a retrying or hedging layer,
/// or reqwest (which follows redirects inside itself; its connect errors are never called
/// unprocessed). What the ticket can't see is a request built anew *without the original's
/// extensions* and sent after the original failed unprocessed, or before it (a fallback that
/// rebuilds the request for another backend): its answer is not witnessed. A redirect
/// follower is safe either way, as it follows only a response; don't put a layer of that
/// other kind between the witness and the retry layer.
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use tower::ServiceBuilder;
/// use tower::timeout::TimeoutLayer;
/// use tower_negative_cache::StatusAwareRetryLayer;
/// use tower_negative_cache::retry::WitnessLayer;
///
/// let client = ServiceBuilder::new()
///     .layer(StatusAwareRetryLayer::new())
///     .layer(TimeoutLayer::new(Duration::from_secs(2))) // per attempt: sends one request
///     .layer(WitnessLayer::new()) // on the transport: a refused connection is the POST's own
///     .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
/// # let _ = client;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct WitnessLayer<EC = SourceWalk> {
    rules: EC,
}

impl WitnessLayer {
    /// A witness that reads errors with the `source()` walk
    /// ([`recognise_error`](crate::classify::recognise_error)): a hyper-util connect error, a
    /// refused HTTP/2 stream, a request hyper canceled before sending it.
    pub fn new() -> Self {
        WitnessLayer { rules: SourceWalk }
    }
}

impl<EC> WitnessLayer<EC> {
    /// Rules over the transport's own error type, asked before the `source()` walk, as the
    /// retry builder's [`error_classifier`](super::Builder::error_classifier): for a transport
    /// whose errors the walk can't read. The witness calls an error unprocessed when these
    /// rules (or, if they return `None`, the walk) say [`Outcome::is_unprocessed`]; the retry
    /// layer's own classifier must say so too. Default: [`SourceWalk`] (the walk alone).
    ///
    /// [`Outcome::is_unprocessed`]: crate::Outcome::is_unprocessed
    pub fn error_classifier<EC2>(self, rules: EC2) -> WitnessLayer<EC2> {
        WitnessLayer { rules }
    }
}

impl<S, EC: Clone> Layer<S> for WitnessLayer<EC> {
    type Service = Witness<S, EC>;

    fn layer(&self, inner: S) -> Self::Service {
        Witness {
            inner,
            rules: self.rules.clone(),
        }
    }
}

/// Reports to the retry layer what happened to the request it sent: whether one request or
/// several went out with its ticket, and what answered it. Made by [`WitnessLayer`]; a
/// request without a ticket (an idempotent one, or one without a retry layer above) passes
/// through untouched.
#[derive(Clone, Debug)]
pub struct Witness<S, EC = SourceWalk> {
    inner: S,
    rules: EC,
}

impl<S, EC> Witness<S, EC> {
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

impl<S, EC, B, ResB> Service<Request<B>> for Witness<S, EC>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: 'static,
    EC: ClassifyError<S::Error> + Clone,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = WitnessFuture<S::Future, EC>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Counted when sent, not when answered: a second request with the ticket spoils the
        // proof even if the first one's answer is still to come.
        let ticket = req.extensions().get::<Ticket>().cloned();
        if let Some(t) = &ticket {
            t.update(|s| s.sent = s.sent.saturating_add(1));
        }
        WitnessFuture {
            future: self.inner.call(req),
            ticket: ticket.map(|t| (t, self.rules.clone())),
        }
    }
}

pin_project! {
    /// The future of [`Witness`].
    pub struct WitnessFuture<F, EC> {
        #[pin]
        future: F,
        ticket: Option<(Ticket, EC)>,
    }
}

impl<F, EC> fmt::Debug for WitnessFuture<F, EC> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WitnessFuture")
            .field("ticket", &self.ticket.as_ref().map(|(t, _)| t))
            .finish_non_exhaustive()
    }
}

impl<F, EC, ResB, E> Future for WitnessFuture<F, EC>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: 'static,
    EC: ClassifyError<E>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        if let Some((ticket, rules)) = this.ticket.take() {
            let fate = match &result {
                Ok(res) => Fate::Answered(res.status()),
                Err(e) => {
                    let outcome = rules
                        .classify(e)
                        .or_else(|| recognise_error(as_dyn_error(e)?));
                    if outcome.is_some_and(|o| o.is_unprocessed()) {
                        Fate::Unprocessed
                    } else {
                        Fate::Failed
                    }
                }
            };
            ticket.update(|s| s.fate = fate);
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_proves_only_its_one_requests_own_answer() {
        let t = Ticket::default();
        assert_eq!(t.proves(None), Proof::NoWitness);
        t.update(|s| s.sent = 1);
        assert_eq!(t.proves(None), Proof::NotThisRequest, "not answered");
        t.update(|s| s.fate = Fate::Unprocessed);
        assert_eq!(t.proves(None), Proof::Proven);
        assert_eq!(t.proves(Some(StatusCode::OK)), Proof::NotThisRequest);
        t.update(|s| s.fate = Fate::Answered(StatusCode::SEE_OTHER));
        assert_eq!(
            t.proves(None),
            Proof::NotThisRequest,
            "a 303, then an error"
        );
        assert_eq!(t.proves(Some(StatusCode::SEE_OTHER)), Proof::Proven);
        assert_eq!(t.proves(Some(StatusCode::OK)), Proof::NotThisRequest);
        t.update(|s| (s.sent, s.fate) = (2, Fate::Unprocessed));
        assert_eq!(t.proves(None), Proof::NotThisRequest, "two requests");
    }
}
