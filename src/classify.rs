//! What an answer means: the one place that turns a response head or an error into an [`Outcome`].
//!
//! Both layers ask this module and nothing else. A classifier sees the status and headers of a
//! response — never its body — so the decision is made before anything could release the
//! response, which is the bug this crate exists to make impossible.
//!
//! # Example
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use tower_negative_cache::classify::{Classify, DefaultClassifier, Outcome};
//!
//! let c = DefaultClassifier::default();
//! assert_eq!(c.classify_response(StatusCode::NOT_FOUND, &HeaderMap::new()), Outcome::Missing);
//! assert!(c.classify_response(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()).is_retryable());
//!
//! // A closure is a classifier too: here 400 means "no such record" for this upstream.
//! let custom = |status: StatusCode, headers: &HeaderMap| match status {
//!     StatusCode::BAD_REQUEST => Outcome::Missing,
//!     _ => DefaultClassifier::default().classify_response(status, headers),
//! };
//! assert_eq!(custom.classify_response(StatusCode::BAD_REQUEST, &HeaderMap::new()), Outcome::Missing);
//! ```

use std::any::Any;
use std::error::Error;
use std::fmt;
use std::io;

use http::{HeaderMap, StatusCode};

use crate::BuildError;
use crate::headers;

/// What an answer means to the layers.
///
/// A closed set, on purpose: these four meanings are what both layers act on, and code that
/// matches on them (a classifier, a reader of [`RetryInfo`]) should be told by the compiler if
/// one were ever added. Only the fields of [`Retryable`](Outcome::Retryable) may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// 1xx-3xx by default: return it.
    Success,
    /// The resource does not exist (404, 410 by default): final. Never retried; remembered by
    /// the negative cache.
    Missing,
    /// A transient failure (408, 429, 500, 502, 503, 504, transport errors by default): another
    /// attempt may succeed. Its fields may grow: build one with [`Outcome::RETRYABLE`],
    /// [`Outcome::UNPROCESSED`] or [`Outcome::retry_after`], and match it with `..`.
    #[non_exhaustive]
    Retryable {
        /// The server's own hint of when to try again (`Retry-After`), if it gave a valid one.
        after: Option<RetryAfter>,
        /// The server never processed the request, so sending it again can't apply it twice
        /// (RFC 9110 §9.2.2): the retry layer may then retry it *whatever its method*, POST
        /// included, if its body can be replayed. By default only errors that prove it set
        /// this ([`recognise_error`]): an HTTP/2 stream refused with `REFUSED_STREAM` or above
        /// a GOAWAY's last stream id (RFC 9113 §8.7), a request hyper canceled before sending
        /// it, a connection that was never established. A response never sets it by default;
        /// a classifier that sets it on one vouches that such an answer means "not processed".
        /// It says a request was not processed, not which: the retry layer acts on it for a
        /// request that only it may send again when a
        /// [`WitnessLayer`](crate::retry::WitnessLayer) ties it to the request sent.
        unprocessed: bool,
    },
    /// Any other failure: return it, do not retry, do not remember. Final all the same: the
    /// negative cache forgets a 404 it held for the key, as for a `Success`.
    Fatal,
}

impl Outcome {
    /// A [`Retryable`](Outcome::Retryable) outcome without a server hint, of a request the
    /// server may have processed.
    pub const RETRYABLE: Outcome = Outcome::Retryable {
        after: None,
        unprocessed: false,
    };

    /// A [`Retryable`](Outcome::Retryable) outcome of a request the server never processed:
    /// retried whatever its method.
    pub const UNPROCESSED: Outcome = Outcome::Retryable {
        after: None,
        unprocessed: true,
    };

    /// A [`Retryable`](Outcome::Retryable) outcome with the server's hint of when to try again.
    pub const fn retry_after(after: RetryAfter) -> Outcome {
        Outcome::Retryable {
            after: Some(after),
            unprocessed: false,
        }
    }

    /// Whether this is [`Outcome::Retryable`], with or without a hint.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Outcome::Retryable { .. })
    }

    /// Whether this is [`Outcome::Retryable`] for a request the server never processed.
    pub fn is_unprocessed(&self) -> bool {
        matches!(
            self,
            Outcome::Retryable {
                unprocessed: true,
                ..
            }
        )
    }

    /// Whether this is [`Outcome::Missing`].
    pub fn is_missing(&self) -> bool {
        matches!(self, Outcome::Missing)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Success => "success",
            Outcome::Missing => "missing",
            Outcome::Retryable { .. } => "retryable",
            Outcome::Fatal => "fatal",
        })
    }
}

/// The verdict on an answer, left on the response by
/// [`StatusAwareRetryLayer`](crate::StatusAwareRetryLayer) so that callers and outer layers
/// read it instead of deciding again (a negative cache without a classifier of its own follows
/// it). Read it with [`RetryInfo::of`].
///
/// The commonest answer — a 1xx–3xx answer to the first attempt, called
/// [`Outcome::Success`] — carries no extension: inserting one allocates (the extensions map,
/// its table and the boxed value), and would be the only allocation of the layer's commonest
/// path. Every other answer carries one. [`RetryInfo::of`] reads both cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryInfo {
    /// What the last answer meant.
    pub outcome: Outcome,
    /// How many times the request was sent (1 when it was not retried).
    pub attempts: u32,
}

impl RetryInfo {
    /// The retry layer's verdict on `res`: its `RetryInfo` extension, or, on a 1xx–3xx answer
    /// without one, a [`Outcome::Success`] at the first attempt (the answer the layer leaves
    /// unmarked). `None` for a 4xx or 5xx answer without one: it did not come through a retry
    /// layer.
    ///
    /// ```
    /// use http::{Response, StatusCode};
    /// use tower_negative_cache::{Outcome, RetryInfo};
    ///
    /// let ok = Response::new(());
    /// let info = RetryInfo::of(&ok).unwrap();
    /// assert_eq!((info.outcome, info.attempts), (Outcome::Success, 1));
    ///
    /// let mut not_found = Response::new(());
    /// *not_found.status_mut() = StatusCode::NOT_FOUND;
    /// assert_eq!(RetryInfo::of(&not_found), None);
    /// ```
    pub fn of<B>(res: &http::Response<B>) -> Option<RetryInfo> {
        match res.extensions().get::<RetryInfo>() {
            Some(info) => Some(*info),
            None => Self::unmarked(res.status()).then_some(RetryInfo {
                outcome: Outcome::Success,
                attempts: 1,
            }),
        }
    }

    /// Whether the retry layer leaves a `Success` at the first attempt with `status` unmarked:
    /// 1xx–3xx, where the default classifier says Success too — so a cache following the retry
    /// layer's verdict reads the same verdict from an unmarked answer as from a marked one.
    pub(crate) fn unmarked(status: StatusCode) -> bool {
        status.as_u16() < 400
    }
}

pub use crate::headers::RetryAfter;

/// Decides what an answer means.
///
/// Implemented for [`DefaultClassifier`] and for every closure
/// `Fn(StatusCode, &HeaderMap) -> Outcome`; errors of the inner service are then classified by
/// [`recognise_error`] (the `source()` walk). For errors of your own type (an enum your stack
/// maps errors into), give the retry layer a [`ClassifyError`] too. The negative cache clones its classifier into each service and
/// each request that goes upstream, so there it must be `Clone` and should be cheap to clone
/// (a closure capturing nothing, or an `Arc`).
///
/// Given to the retry layer's builder, a classifier is applied by both layers: a negative cache
/// outside it with no classifier of its own follows the retry layer's verdict
/// ([`RetryInfo`]). Given to the cache's builder, it is the cache's own, whatever is under it.
///
/// Whatever a classifier returns, 404 and 410 are never retried: a `Retryable` verdict on either
/// is read as [`Outcome::Missing`] by both layers.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a classifier",
    label = "`Classify` is not implemented for `{Self}`",
    note = "a classifier is `DefaultClassifier` (or `DefaultClassifier::with_retryable(..)`), or a closure `|status: StatusCode, headers: &HeaderMap| -> Outcome` with both argument types written out",
    note = "to classify errors of your own type, use the retry builder's `error_classifier` instead"
)]
pub trait Classify {
    /// The outcome of a response, from its head only.
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Outcome;

    /// The outcome of an error of the inner service, seen as a `dyn Error`; `None` when no
    /// rule recognises it (the retry layer then treats it as [`Outcome::Fatal`], counts it in
    /// `RetryStats::unrecognised_errors` and logs one warning per error type). Defaults to
    /// [`recognise_error`].
    fn classify_error(&self, error: &(dyn Error + 'static)) -> Option<Outcome> {
        recognise_error(error)
    }
}

/// Classifies the inner service's own error type `E` (its `S::Error`), before the `source()`
/// walk: for a stack that maps errors into an enum of its own, which the walk can't see into.
///
/// Implemented for every closure `Fn(&E) -> Option<Outcome>`, and by [`SourceWalk`], the
/// default, which has no rules of its own. `None` means "not mine": the error then goes to the
/// `source()` walk ([`Classify::classify_error`]), if its type is one the walk can read.
///
/// ```
/// use std::io;
/// use tower_negative_cache::classify::{ClassifyError, Outcome, recognise_error};
///
/// #[derive(Debug)]
/// enum AppError {
///     Transport(io::Error),
///     Decode,
/// }
///
/// let rules = |e: &AppError| match e {
///     AppError::Transport(io) => recognise_error(io),
///     AppError::Decode => Some(Outcome::Fatal),
/// };
/// let refused = AppError::Transport(io::ErrorKind::ConnectionRefused.into());
/// assert_eq!(rules.classify(&refused), Some(Outcome::RETRYABLE));
/// assert_eq!(rules.classify(&AppError::Decode), Some(Outcome::Fatal));
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` can't classify errors of type `{E}`",
    label = "not an error classifier for `{E}`",
    note = "an error classifier is a closure `|e: &{E}| -> Option<Outcome>` over the inner service's error type"
)]
pub trait ClassifyError<E> {
    /// The outcome of `error`, or `None` if no rule of this classifier recognises it.
    fn classify(&self, error: &E) -> Option<Outcome>;
}

impl<E, F> ClassifyError<E> for F
where
    F: Fn(&E) -> Option<Outcome>,
{
    fn classify(&self, error: &E) -> Option<Outcome> {
        self(error)
    }
}

/// The default [`ClassifyError`]: no rules of its own, so every error goes to the `source()`
/// walk ([`recognise_error`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceWalk;

impl<E> ClassifyError<E> for SourceWalk {
    fn classify(&self, _: &E) -> Option<Outcome> {
        None
    }
}

impl<F> Classify for F
where
    F: Fn(StatusCode, &HeaderMap) -> Outcome,
{
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Outcome {
        self(status, headers)
    }
}

/// The outcome of a response as both layers see it: the classifier's verdict, except that a
/// final status (404, 410) is never [`Outcome::Retryable`], whatever the classifier says.
pub(crate) fn response_outcome<C: Classify + ?Sized>(
    classifier: &C,
    status: StatusCode,
    headers: &HeaderMap,
) -> Outcome {
    let outcome = classifier.classify_response(status, headers);
    if outcome.is_retryable() && is_final_status(status) {
        return Outcome::Missing;
    }
    outcome
}

/// The outcome of an error of the inner service as the retry layer sees it, or `None` when no
/// rule recognised it (the layer then treats it as [`Outcome::Fatal`], and counts and logs it).
///
/// First the user's `rules` over the error's own type ([`ClassifyError`]). Then, as errors are
/// typed by the inner service, the `source()` walk for the types it can read: `Box<dyn Error>`
/// (as returned by `tower::timeout` and most middleware), hyper-util's client error, hyper's
/// error, `std::io::Error` and the timeout errors of tower and tokio are given to
/// [`Classify::classify_error`]. An error of any other type — an enum of your own, say — is
/// recognised only by `rules`.
pub(crate) fn error_outcome<C, R, E>(classifier: &C, rules: &R, error: &E) -> Option<Outcome>
where
    C: Classify + ?Sized,
    R: ClassifyError<E> + ?Sized,
    E: 'static,
{
    rules
        .classify(error)
        .or_else(|| classifier.classify_error(as_dyn_error(error)?))
}

/// 404 and 410: answers that say the resource does not exist, and that no configuration may retry.
pub(crate) fn is_final_status(status: StatusCode) -> bool {
    status == StatusCode::NOT_FOUND || status == StatusCode::GONE
}

/// The error as a `dyn Error`, if its type is one the `source()` walk can read (also for logs).
pub(crate) fn as_dyn_error<E: 'static>(error: &E) -> Option<&(dyn Error + 'static)> {
    let any: &dyn Any = error;
    macro_rules! try_as {
        ($($t:ty),* $(,)?) => {$(
            if let Some(e) = any.downcast_ref::<$t>() {
                return Some(e);
            }
        )*};
    }
    if let Some(e) = any.downcast_ref::<Box<dyn Error + Send + Sync>>() {
        return Some(&**e);
    }
    if let Some(e) = any.downcast_ref::<Box<dyn Error + Send>>() {
        return Some(&**e);
    }
    if let Some(e) = any.downcast_ref::<Box<dyn Error>>() {
        return Some(&**e);
    }
    try_as!(
        io::Error,
        tower::timeout::error::Elapsed,
        tokio::time::error::Elapsed,
    );
    #[cfg(feature = "hyper")]
    try_as!(hyper::Error, hyper_util::client::legacy::Error, h2::Error);
    #[cfg(feature = "reqwest")]
    try_as!(reqwest::Error);
    None
}

/// What the `source()` walk makes of an error (the default for every error type; an error
/// classifier of your own can fall back on it).
///
/// Transient: an `io::Error` of kind `ConnectionRefused`, `ConnectionReset`, `ConnectionAborted`,
/// `BrokenPipe`, `TimedOut`, `NotConnected` or `UnexpectedEof`; a timeout of tower or tokio;
/// with the `hyper` feature, hyper-util's connect errors and hyper's incomplete-message,
/// canceled, closed and timeout errors; with the `reqwest` feature, reqwest's connect errors
/// and timeouts.
///
/// Transient *and unprocessed* ([`Outcome::UNPROCESSED`], retried whatever the method): with
/// the `hyper` feature, an `h2::Error` that is a `RST_STREAM` with `REFUSED_STREAM` from the
/// server, or a GOAWAY from the server (h2 gives it only to streams above the GOAWAY's last
/// stream id and to streams opened after it; streams the server may have processed end with
/// an I/O error instead) — RFC 9113 §8.7: "the request can be safely retried"; hyper's
/// canceled error (the request was never handed to the connection); hyper-util's connect
/// errors (no connection, nothing sent) — of the request that failed, which a layer between
/// the retry layer and the client (a redirect follower) may have sent after the request it was
/// given: the retry layer acts on it for a POST only when a
/// [`WitnessLayer`](crate::retry::WitnessLayer) on the client ties it to the request sent.
/// Never anything in or under a `reqwest::Error`:
/// reqwest follows redirects itself, and its connect error may name a later hop — a POST
/// answered `303 See Other` (processed: RFC 9110 §15.4.4) whose `Location` refuses connections
/// fails with `is_connect()` — so a reqwest connect error is only Transient, retried for an
/// idempotent request and not for a POST (set `redirect::Policy::none()` and follow redirects
/// yourself to have a refused connection retried whatever the method).
///
/// The verdict: [`Outcome::Retryable`] when anything in the chain is such a transient
/// transport failure, with `unprocessed` set when anything in it proves the server never
/// processed the request; [`Outcome::Fatal`] when the chain holds a
/// transport error type this crate knows (`io::Error`, a timeout, hyper's, hyper-util's and
/// h2's errors) and none is transient; `None` when nothing in the chain is known — a plain
/// message, or an error type of another crate.
pub fn recognise_error(error: &(dyn Error + 'static)) -> Option<Outcome> {
    let (mut next, mut verdict) = (Some(error), None);
    // Under a client that follows redirects, a failure may be a later hop's, not the request's.
    let mut redirected = false;
    while let Some(e) = next {
        redirected |= follows_redirects(e);
        match kind_of(e) {
            Some(Kind::Unprocessed) if redirected => verdict = Some(Outcome::RETRYABLE),
            // Proof that the request was never processed outweighs the rest of the chain.
            Some(Kind::Unprocessed) => return Some(Outcome::UNPROCESSED),
            Some(Kind::Transient) => verdict = Some(Outcome::RETRYABLE),
            Some(Kind::Other) => {
                verdict.get_or_insert(Outcome::Fatal);
            }
            None => {}
        }
        next = e.source();
    }
    verdict
}

/// Whether `e` comes from a client that follows redirects itself (reqwest): what it or its
/// sources say of a connection may concern another hop than the request's own.
fn follows_redirects(e: &(dyn Error + 'static)) -> bool {
    #[cfg(feature = "reqwest")]
    if e.is::<reqwest::Error>() {
        return true;
    }
    let _ = e;
    false
}

/// What one error of a chain says, if its type is one this crate knows.
enum Kind {
    /// The server never processed the request (only the `hyper` rules can tell).
    #[cfg_attr(not(feature = "hyper"), allow(dead_code))]
    Unprocessed,
    /// A transient failure; the request may have been processed.
    Transient,
    /// Known, not transient.
    Other,
}

impl From<bool> for Kind {
    fn from(transient: bool) -> Kind {
        if transient {
            Kind::Transient
        } else {
            Kind::Other
        }
    }
}

/// What `e` itself says; `None` if its type is not one this crate knows.
fn kind_of(e: &(dyn Error + 'static)) -> Option<Kind> {
    if let Some(io) = e.downcast_ref::<io::Error>() {
        return Some(Kind::from(matches!(
            io.kind(),
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::TimedOut
                | io::ErrorKind::NotConnected
                | io::ErrorKind::UnexpectedEof
        )));
    }
    if e.is::<tower::timeout::error::Elapsed>() || e.is::<tokio::time::error::Elapsed>() {
        return Some(Kind::Transient);
    }
    #[cfg(feature = "reqwest")]
    if let Some(r) = e.downcast_ref::<reqwest::Error>() {
        // A connect error: transient, but not proof that the request was never processed —
        // it may be a redirect's hop (see `recognise_error`). Otherwise not transient itself
        // unless a timeout; its source may still be.
        return Some(Kind::from(r.is_connect() || r.is_timeout()));
    }
    #[cfg(feature = "hyper")]
    {
        if let Some(h) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            // A connect error: no connection, nothing sent. Otherwise not transient itself;
            // its source may still be.
            return Some(if h.is_connect() {
                Kind::Unprocessed
            } else {
                Kind::Other
            });
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            // hyper: canceled "before it can be dispatched to the connection".
            if h.is_canceled() {
                return Some(Kind::Unprocessed);
            }
            let t = h.is_incomplete_message() || h.is_closed() || h.is_timeout();
            return Some(Kind::from(t));
        }
        if let Some(h) = e.downcast_ref::<h2::Error>() {
            // RFC 9113 §8.7: REFUSED_STREAM means "closed prior to any processing", and
            // requests on streams above a GOAWAY's last stream id were not processed. h2 gives
            // the server's GOAWAY as an error only to those streams and to streams opened
            // after it; the streams it may have processed end with an I/O error.
            let refused = h.is_reset() && h.reason() == Some(h2::Reason::REFUSED_STREAM);
            let above_goaway = h.is_go_away();
            return Some(if h.is_remote() && (refused || above_goaway) {
                Kind::Unprocessed
            } else {
                Kind::Other
            });
        }
    }
    None
}

/// The statuses [`DefaultClassifier`] retries unless told otherwise: 408, 429, 500, 502, 503, 504.
pub const DEFAULT_RETRYABLE: [StatusCode; 6] = [
    StatusCode::REQUEST_TIMEOUT,
    StatusCode::TOO_MANY_REQUESTS,
    StatusCode::INTERNAL_SERVER_ERROR,
    StatusCode::BAD_GATEWAY,
    StatusCode::SERVICE_UNAVAILABLE,
    StatusCode::GATEWAY_TIMEOUT,
];

/// The classifier both layers use unless given another.
///
/// | status | outcome |
/// |---|---|
/// | 1xx, 2xx, 3xx | [`Outcome::Success`] |
/// | 404, 410 | [`Outcome::Missing`] |
/// | 408, 429, 500, 502, 503, 504 (configurable) | [`Outcome::Retryable`], with `Retry-After` parsed |
/// | any other | [`Outcome::Fatal`] |
///
/// Errors are classified by [`recognise_error`] (Fatal when it recognises nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DefaultClassifier {
    // One bit per status 400..=599: small, Copy, and a lookup is a shift.
    retryable: [u64; 4],
}

impl Default for DefaultClassifier {
    fn default() -> Self {
        Self::with_retryable(DEFAULT_RETRYABLE).expect("the default set is valid")
    }
}

impl DefaultClassifier {
    /// A classifier that retries exactly `statuses` (instead of [`DEFAULT_RETRYABLE`]).
    ///
    /// Valid: 4xx and 5xx statuses other than 404 and 410. Anything else is a [`BuildError`]:
    /// a final answer can't be made retryable.
    pub fn with_retryable(
        statuses: impl IntoIterator<Item = StatusCode>,
    ) -> Result<Self, BuildError> {
        let mut retryable = [0u64; 4];
        for s in statuses {
            if is_final_status(s) {
                return Err(BuildError::new(
                    "retry_statuses",
                    format!(
                        "{} is final and is never retried; valid: 400..=599 except 404, 410",
                        s.as_u16()
                    ),
                ));
            }
            let Some(bit) = s.as_u16().checked_sub(400).filter(|b| *b < 200) else {
                return Err(BuildError::new(
                    "retry_statuses",
                    format!(
                        "{} is not an error status; valid: 400..=599 except 404, 410",
                        s.as_u16()
                    ),
                ));
            };
            retryable[usize::from(bit / 64)] |= 1 << (bit % 64);
        }
        Ok(DefaultClassifier { retryable })
    }

    fn is_retryable_status(&self, status: StatusCode) -> bool {
        match status.as_u16().checked_sub(400) {
            Some(bit) if bit < 200 => {
                self.retryable[usize::from(bit / 64)] & (1 << (bit % 64)) != 0
            }
            _ => false,
        }
    }
}

impl Classify for DefaultClassifier {
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Outcome {
        if status.as_u16() < 400 {
            Outcome::Success
        } else if is_final_status(status) {
            Outcome::Missing
        } else if self.is_retryable_status(status) {
            Outcome::Retryable {
                after: headers::retry_after_of(headers),
                unprocessed: false,
            }
        } else {
            Outcome::Fatal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;
    use std::time::Duration;

    fn outcome(status: u16) -> Outcome {
        DefaultClassifier::default()
            .classify_response(StatusCode::from_u16(status).unwrap(), &HeaderMap::new())
    }

    #[test]
    fn default_status_table() {
        for s in 100..=399 {
            assert_eq!(outcome(s), Outcome::Success, "{s}");
        }
        for s in [404, 410] {
            assert_eq!(outcome(s), Outcome::Missing, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(outcome(s), Outcome::RETRYABLE, "{s}");
        }
        for s in [400, 401, 403, 405, 409, 418, 422, 501, 505, 599] {
            assert_eq!(outcome(s), Outcome::Fatal, "{s}");
        }
    }

    #[test]
    fn retry_after_is_carried() {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, "7".parse().unwrap());
        let o = DefaultClassifier::default().classify_response(StatusCode::TOO_MANY_REQUESTS, &h);
        assert_eq!(
            o,
            Outcome::Retryable {
                after: Some(RetryAfter::Delay(Duration::from_secs(7))),
                unprocessed: false,
            }
        );
    }

    #[test]
    fn final_statuses_are_refused_in_retry_set() {
        for s in [StatusCode::NOT_FOUND, StatusCode::GONE] {
            let e = DefaultClassifier::with_retryable([StatusCode::BAD_GATEWAY, s]).unwrap_err();
            assert_eq!(e.setting(), "retry_statuses");
            assert!(e.to_string().contains(s.as_str()), "{e}");
        }
        let e = DefaultClassifier::with_retryable([StatusCode::OK]).unwrap_err();
        assert!(e.to_string().contains("400..=599"), "{e}");
    }

    #[test]
    fn a_classifier_cannot_make_404_retryable() {
        let rogue = |_: StatusCode, _: &HeaderMap| Outcome::RETRYABLE;
        let h = HeaderMap::new();
        assert_eq!(
            response_outcome(&rogue, StatusCode::NOT_FOUND, &h),
            Outcome::Missing
        );
        assert_eq!(
            response_outcome(&rogue, StatusCode::GONE, &h),
            Outcome::Missing
        );
        assert_eq!(
            response_outcome(&rogue, StatusCode::BAD_GATEWAY, &h),
            Outcome::RETRYABLE
        );
    }

    #[test]
    fn io_errors_by_kind() {
        let c = DefaultClassifier::default();
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::TimedOut,
        ] {
            assert_eq!(
                walk(&c, &io::Error::from(kind)),
                Some(Outcome::RETRYABLE),
                "{kind:?}"
            );
        }
        // A known type, not transient: recognised as Fatal.
        assert_eq!(
            walk(&c, &io::Error::from(io::ErrorKind::PermissionDenied)),
            Some(Outcome::Fatal)
        );
    }

    fn walk<E: 'static>(c: &DefaultClassifier, e: &E) -> Option<Outcome> {
        error_outcome(c, &SourceWalk, e)
    }

    #[derive(Debug)]
    struct Wrapper(io::Error);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn boxed_errors_are_walked_through_their_source_chain() {
        let c = DefaultClassifier::default();
        let boxed: Box<dyn Error + Send + Sync> =
            Box::new(Wrapper(io::Error::from(io::ErrorKind::ConnectionReset)));
        assert_eq!(walk(&c, &boxed), Some(Outcome::RETRYABLE));
        // Nothing known in the chain: unrecognised.
        let boxed: Box<dyn Error + Send + Sync> = "plain message".into();
        assert_eq!(walk(&c, &boxed), None);
        // An unknown error type can't be walked: unrecognised, unless rules over it say more.
        let own = Wrapper(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(walk(&c, &own), None);
        let rules = |e: &Wrapper| recognise_error(&e.0);
        assert_eq!(error_outcome(&c, &rules, &own), Some(Outcome::RETRYABLE));
        // The rules come first; `None` from them falls back to the walk.
        let not_mine = |_: &io::Error| None;
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            error_outcome(&c, &not_mine, &refused),
            Some(Outcome::RETRYABLE)
        );
        let fatal = |_: &io::Error| Some(Outcome::Fatal);
        assert_eq!(error_outcome(&c, &fatal, &refused), Some(Outcome::Fatal));
    }

    #[cfg(feature = "hyper")]
    #[test]
    fn only_the_servers_refusal_makes_an_h2_error_unprocessed() {
        // A reason h2 made locally (not the server's RST_STREAM or GOAWAY) proves nothing:
        // known, not transient. The server's own are in tests/refused_stream.rs (h2 makes
        // remote errors only from frames it received).
        for reason in [h2::Reason::REFUSED_STREAM, h2::Reason::INTERNAL_ERROR] {
            let e = h2::Error::from(reason);
            assert_eq!(recognise_error(&e), Some(Outcome::Fatal), "{reason:?}");
        }
        let boxed: Box<dyn Error + Send + Sync> = Box::new(h2::Error::from(h2::Reason::CANCEL));
        assert_eq!(
            walk(&DefaultClassifier::default(), &boxed),
            Some(Outcome::Fatal)
        );
    }

    #[test]
    fn unprocessed_outweighs_the_rest_of_the_chain() {
        assert!(Outcome::UNPROCESSED.is_retryable() && Outcome::UNPROCESSED.is_unprocessed());
        assert!(!Outcome::RETRYABLE.is_unprocessed() && !Outcome::Fatal.is_unprocessed());
        // A transient error under a known fatal one is still transient (the walk goes on).
        let reset = Wrapper(io::Error::from(io::ErrorKind::ConnectionReset));
        let outer = io::Error::other(reset);
        assert_eq!(recognise_error(&outer), Some(Outcome::RETRYABLE));
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_of_tower_and_tokio_are_retryable() {
        use tower::{Service, ServiceExt};
        let c = DefaultClassifier::default();
        let slow = tower::service_fn(|()| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, io::Error>(())
        });
        let mut svc = tower::timeout::Timeout::new(slow, Duration::from_millis(1));
        let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
        assert!(err.is::<tower::timeout::error::Elapsed>());
        assert_eq!(walk(&c, &err), Some(Outcome::RETRYABLE));

        let err = tokio::time::timeout(Duration::from_millis(1), std::future::pending::<()>())
            .await
            .unwrap_err();
        assert_eq!(walk(&c, &err), Some(Outcome::RETRYABLE));
    }
}
