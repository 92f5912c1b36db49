//! The layer and its builder.

use std::any::TypeId;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderName, StatusCode};
use tokio::time::Instant;
use tower::Layer;

use super::StatusAwareRetry;
use super::budget::RetryBudget;
use super::policy::{Backoff, Jitter, Policy};
use super::scope::{BudgetScope, Scopes};
use super::stats::{Counters, RetryStats};
use crate::BuildError;
use crate::classify::{DefaultClassifier, SourceWalk};
use crate::error::FirstError;
use crate::observe::{Observer, SharedObserver, ShowObserver};

/// Applies [`StatusAwareRetry`] to a service: retries transient failures, never 404 or 410.
///
/// Cloning the layer shares its retry budget and its stats: build it once per upstream and
/// apply it to every client that calls that upstream.
///
/// ```
/// use std::time::Duration;
/// use tower_negative_cache::StatusAwareRetryLayer;
/// use tower_negative_cache::retry::Jitter;
///
/// let layer = StatusAwareRetryLayer::builder()
///     .max_retries(3)
///     .backoff_base(Duration::from_millis(50))
///     .jitter(Jitter::Equal)
///     .deadline(Duration::from_secs(5))
///     .build()
///     .expect("valid settings");
/// # let _ = layer;
/// ```
pub struct StatusAwareRetryLayer<C = DefaultClassifier, EC = SourceWalk> {
    shared: Arc<Shared<C, EC>>,
}

/// What every clone of a layer, its services and their futures share.
pub(crate) struct Shared<C, EC = SourceWalk> {
    pub(crate) classifier: C,
    pub(crate) error_classifier: EC,
    /// The error types already warned about as unrecognised: one warning per type.
    pub(crate) warned: Mutex<Vec<TypeId>>,
    /// Whether an unprocessed verdict was already set aside for want of a witness (warned once).
    pub(crate) warned_unwitnessed: AtomicBool,
    pub(crate) policy: Policy,
    pub(crate) budget: Option<Scopes>,
    pub(crate) stats: Counters,
    pub(crate) retry_non_idempotent: bool,
    pub(crate) retry_unprocessed: bool,
    pub(crate) drain_limit: usize,
    pub(crate) drain_timeout: Duration,
    pub(crate) capture_limit: usize,
    pub(crate) attempt_header: Option<HeaderName>,
    /// When the layer was built: stands in for a request's start where nothing needs the time
    /// (see [`Shared::timed`]), never read as one.
    pub(crate) built: Instant,
}

impl<C, EC> Shared<C, EC> {
    /// Whether a request needs the time before a wait does: for its budget's slots, or for
    /// its deadline. Without either, the clock is read only to time a wait (a nonzero delay).
    pub(crate) fn timed(&self) -> bool {
        self.budget.is_some() || self.policy.deadline.is_some()
    }
}

impl StatusAwareRetryLayer {
    /// A layer with every default (see [`Builder`]).
    pub fn new() -> Self {
        Self::builder().build().expect("the defaults are valid")
    }

    /// A builder starting from the defaults.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl Default for StatusAwareRetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<C, EC> StatusAwareRetryLayer<C, EC> {
    /// A snapshot of the counters of this layer and all its clones.
    pub fn stats(&self) -> RetryStats {
        self.shared.stats.snapshot()
    }

    /// Which budgets ran out: the scopes (hosts, by default; see
    /// [`Builder::budget_scope`]) whose spent budget refused a retry most often, busiest
    /// first, as `(scope, answers returned because of it)` — at most 8 scopes, so an operator
    /// sees which upstream is burning retries whatever the number of hosts. Scopes past
    /// [`budget_max_scopes`](Builder::budget_max_scopes) share the `"(overflow)"` budget; a
    /// layer scoped as a whole reports `"(layer)"`.
    ///
    /// The counts are exact for a scope that has been in the list since its first refusal; a
    /// scope entering a full list takes the place of the smallest count and starts from it
    /// (the Space-Saving algorithm), so a count may be overstated, never understated. Their
    /// sum is `RetryStats::budget_exhausted`. Empty without a budget.
    pub fn budget_exhausted_scopes(&self) -> Vec<(String, u64)> {
        self.shared
            .budget
            .as_ref()
            .map(Scopes::exhausted_scopes)
            .unwrap_or_default()
    }
}

impl<C, EC> Clone for StatusAwareRetryLayer<C, EC> {
    fn clone(&self) -> Self {
        StatusAwareRetryLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<C: fmt::Debug, EC> fmt::Debug for StatusAwareRetryLayer<C, EC> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

impl<C: fmt::Debug, EC> fmt::Debug for Shared<C, EC> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusAwareRetryLayer")
            .field("classifier", &self.classifier)
            .field("error_classifier", &std::any::type_name::<EC>())
            .field("policy", &self.policy)
            .field("budget", &self.budget)
            .field("retry_non_idempotent", &self.retry_non_idempotent)
            .field("retry_unprocessed", &self.retry_unprocessed)
            .field("drain_limit", &self.drain_limit)
            .field("drain_timeout", &self.drain_timeout)
            .field("capture_limit", &self.capture_limit)
            .field("attempt_header", &self.attempt_header)
            .finish_non_exhaustive()
    }
}

impl<S, C, EC> Layer<S> for StatusAwareRetryLayer<C, EC> {
    type Service = StatusAwareRetry<S, C, EC>;

    fn layer(&self, inner: S) -> Self::Service {
        StatusAwareRetry::from_shared(inner, self.shared.clone())
    }
}

/// Configures a [`StatusAwareRetryLayer`]. Every setter states its default and valid range;
/// a value outside it makes [`build`](Builder::build) return a [`BuildError`] naming the setter.
#[must_use]
pub struct Builder<C = DefaultClassifier, EC = SourceWalk> {
    classifier: C,
    error_classifier: EC,
    policy: Policy,
    budget: Option<(f64, u32, Duration)>,
    scope: BudgetScope,
    max_scopes: usize,
    retry_non_idempotent: bool,
    retry_unprocessed: bool,
    drain_limit: usize,
    drain_timeout: Duration,
    capture_limit: usize,
    attempt_header: Option<HeaderName>,
    observer: Option<SharedObserver>,
    /// Whether `backoff_cap` was set, so a base above the cap blames a setting the caller used.
    cap_set: bool,
    error: FirstError,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            classifier: DefaultClassifier::default(),
            error_classifier: SourceWalk,
            policy: Policy {
                max_retries: 2,
                backoff: Backoff {
                    base: Duration::from_millis(200),
                    factor: 2.0,
                    cap: Duration::from_secs(10),
                    jitter: Jitter::Full,
                },
                max_retry_after: Duration::from_secs(30),
                deadline: None,
            },
            budget: Some(DEFAULT_BUDGET),
            scope: BudgetScope::per_host(),
            max_scopes: DEFAULT_MAX_SCOPES,
            retry_non_idempotent: false,
            retry_unprocessed: true,
            drain_limit: 64 * 1024,
            drain_timeout: Duration::from_millis(100),
            capture_limit: 64 * 1024,
            attempt_header: None,
            observer: None,
            cap_set: false,
            error: FirstError::default(),
        }
    }
}

impl<EC> Builder<DefaultClassifier, EC> {
    /// The statuses retried by the default classifier. Default: 408, 429, 500, 502, 503, 504.
    /// Valid: 4xx and 5xx except 404 and 410, which are final and never retried.
    pub fn retry_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        match DefaultClassifier::with_retryable(statuses) {
            Ok(c) => self.classifier = c,
            Err(e) => self.error.fail(e),
        }
        self
    }
}

impl<C, EC> Builder<C, EC> {
    /// Changes one of the budget's settings (turning the budget on) and checks them.
    fn set_budget(mut self, change: impl FnOnce(&mut (f64, u32, Duration))) -> Self {
        let budget = self.budget.get_or_insert(DEFAULT_BUDGET);
        change(budget);
        if let Err(e) = RetryBudget::validate(*budget) {
            self.error.fail(e);
        }
        self
    }

    /// Replaces the classifier that decides what an answer means (and so
    /// [`retry_statuses`](Builder::retry_statuses)). Default: [`DefaultClassifier`].
    /// Whatever it says, 404 and 410 are never retried.
    pub fn classifier<C2>(self, classifier: C2) -> Builder<C2, EC> {
        Builder {
            classifier,
            error_classifier: self.error_classifier,
            policy: self.policy,
            budget: self.budget,
            scope: self.scope,
            max_scopes: self.max_scopes,
            retry_non_idempotent: self.retry_non_idempotent,
            retry_unprocessed: self.retry_unprocessed,
            drain_limit: self.drain_limit,
            drain_timeout: self.drain_timeout,
            capture_limit: self.capture_limit,
            attempt_header: self.attempt_header,
            observer: self.observer,
            cap_set: self.cap_set,
            error: self.error,
        }
    }

    /// Rules over the inner service's own error type (`S::Error`), asked before the `source()`
    /// walk: for a stack that maps its errors into a type of its own (an enum, via
    /// `map_err`), which the walk can't see into. A closure `|e: &MyError| -> Option<Outcome>`;
    /// `None` falls back to the walk. Default: [`SourceWalk`] (the walk alone).
    ///
    /// An error that neither recognises is [`Outcome::Fatal`](crate::Outcome::Fatal) (returned,
    /// not retried), counted in `RetryStats::unrecognised_errors` and logged with one `warn!`
    /// per error type.
    ///
    /// ```
    /// use tower_negative_cache::StatusAwareRetryLayer;
    /// use tower_negative_cache::classify::{Outcome, recognise_error};
    ///
    /// #[derive(Debug)]
    /// enum AppError {
    ///     Io(std::io::Error),
    ///     Auth,
    /// }
    ///
    /// let layer = StatusAwareRetryLayer::builder()
    ///     .error_classifier(|e: &AppError| match e {
    ///         AppError::Io(io) => recognise_error(io),
    ///         AppError::Auth => Some(Outcome::Fatal),
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn error_classifier<EC2>(self, error_classifier: EC2) -> Builder<C, EC2> {
        Builder {
            classifier: self.classifier,
            error_classifier,
            policy: self.policy,
            budget: self.budget,
            scope: self.scope,
            max_scopes: self.max_scopes,
            retry_non_idempotent: self.retry_non_idempotent,
            retry_unprocessed: self.retry_unprocessed,
            drain_limit: self.drain_limit,
            drain_timeout: self.drain_timeout,
            capture_limit: self.capture_limit,
            attempt_header: self.attempt_header,
            observer: self.observer,
            cap_set: self.cap_set,
            error: self.error,
        }
    }

    /// Retries after the first attempt. Default: 2 (3 attempts). Valid: `0..=10` (every
    /// retry multiplies what a failing upstream receives; to keep trying for longer, give a
    /// `deadline` and a longer backoff rather than more attempts).
    pub fn max_retries(mut self, n: u32) -> Self {
        if self.error.check("max_retries", n, 0..=10, "0..=10") {
            self.policy.max_retries = n;
        }
        self
    }

    /// The base of the exponential backoff: the first retry waits up to `base`, the n-th up to
    /// `base × factor^(n-1)` (never above `backoff_cap`; how far "up to" goes is the
    /// [`jitter`](Builder::jitter)). Default: 200 ms (so up to 200 ms, then 400 ms, 800 ms, ...: the incident's fix). Valid:
    /// `0..=60 s` (0 retries at once; a first wait past a minute is a queue, not a retry).
    pub fn backoff_base(mut self, base: Duration) -> Self {
        if self.error.check(
            "backoff_base",
            base,
            Duration::ZERO..=Duration::from_secs(60),
            "0s..=60s",
        ) {
            self.policy.backoff.base = base;
        }
        self
    }

    /// The growth of the backoff per retry. Default: 2.0. Valid: `1.0..=10.0` (below 1 the
    /// waits would shrink; above 10 the second wait already reaches any sensible cap).
    pub fn backoff_factor(mut self, factor: f64) -> Self {
        if self
            .error
            .check("backoff_factor", factor, 1.0..=10.0, "1.0..=10.0")
        {
            self.policy.backoff.factor = factor;
        }
        self
    }

    /// The longest backoff wait. Default: 10 s. Valid: `0..=1 h` (a request waiting longer
    /// holds its caller, and its copy of the body, all that time), and at least
    /// `backoff_base`.
    pub fn backoff_cap(mut self, cap: Duration) -> Self {
        if self.error.check(
            "backoff_cap",
            cap,
            Duration::ZERO..=Duration::from_secs(3600),
            "0s..=3600s",
        ) {
            self.policy.backoff.cap = cap;
            self.cap_set = true;
        }
        self
    }

    /// How backoff waits are spread. Default: [`Jitter::Full`].
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.policy.backoff.jitter = jitter;
        self
    }

    /// The longest `Retry-After` honoured. A longer hint stops retrying and returns that
    /// answer. Default: 30 s. Valid: `0..=1 day`.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        let day = Duration::from_secs(86_400);
        if self
            .error
            .check("max_retry_after", max, Duration::ZERO..=day, "0s..=86400s")
        {
            self.policy.max_retry_after = max;
        }
        self
    }

    /// An overall deadline from the first attempt: no retry is decided whose wait would end
    /// past it (the last answer is returned instead, counted as `gave_up`), and as the wait
    /// is timed from the decision — draining the discarded body runs during the wait, not
    /// before it — no attempt starts past it (within the timer's 1 ms resolution), but for
    /// one counted case below. Default: none. Valid: `1 ms..=1 day`.
    ///
    /// No reservation of the inner service (a `ConcurrencyLimit` permit, a `Buffer` slot) is
    /// held through a backoff wait: readiness for a retry is driven after the wait, as
    /// `tower::retry` does, so other callers are served while a retry waits. Measured over a
    /// `ConcurrencyLimit` of 1 with a 1 s backoff (`tests/reservation.rs`, paused clock): a
    /// caller arriving during the wait starts at once, where it used to wait for the whole
    /// wait and the retry (1.01 s). With a deadline, an answer that holds nothing — an error,
    /// or a response whose body has ended — is kept through the wait, and if the service is
    /// not ready by the deadline that answer is returned and no attempt is made (`gave_up`;
    /// its retry is given back to the budget). An answer with a body to read is released
    /// during the wait instead (its connection goes back to the pool), so there is none to
    /// return at the deadline: its retry awaits readiness whatever the deadline, and one so
    /// sent past the deadline is counted in
    /// [`RetryStats::sent_past_deadline`](super::RetryStats) and logged. Bound the inner
    /// service's readiness (a `tower::load_shed`, a pool timeout) if that matters more than
    /// the retry.
    ///
    /// It bounds waits, not attempts: put a `tower::timeout::TimeoutLayer` under this layer to
    /// bound each attempt.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        let range = Duration::from_millis(1)..=Duration::from_secs(86_400);
        if self
            .error
            .check("deadline", deadline, range, "1ms..=86400s")
        {
            self.policy.deadline = Some(deadline);
        }
        self
    }

    /// Retries allowed per request, on top of the per-second allowance. Default: 0.2 (20%).
    /// Valid: `0.0..=1000.0`, exact to 1/1000.
    pub fn budget_ratio(self, ratio: f64) -> Self {
        self.set_budget(|b| b.0 = ratio)
    }

    /// Retries per second always allowed, whatever the ratio. Default: 10. Valid:
    /// `0..=1_000_000`.
    pub fn budget_min_per_sec(self, n: u32) -> Self {
        self.set_budget(|b| b.1 = n)
    }

    /// The window over which the budget counts requests and retries. Default: 10 s. Valid:
    /// `1 s..=60 s` (the budget forgets what happened a window ago: a longer window would go
    /// on refusing retries long after an outage ended).
    pub fn budget_window(self, window: Duration) -> Self {
        self.set_budget(|b| b.2 = window)
    }

    /// Which requests share a budget: [`BudgetScope::per_host`] (the default) gives each
    /// upstream host its own, with the ratio, allowance and window set here, so a host's
    /// outage spends its own retries and never another host's;
    /// [`BudgetScope::layer`] one for the whole layer (the default before per-host budgets:
    /// a failing host could then leave none for healthy ones); [`BudgetScope::by`] one per
    /// value of a function of the request.
    ///
    /// The bound holds per scope: a scope's retries ≤ `ratio` × its requests + `min_per_sec`
    /// × the window. For the layer as a whole it is the sum over the scopes that were active:
    /// ≤ `ratio` × requests + `min_per_sec` × window × (active scopes, at most
    /// `budget_max_scopes` + 1).
    pub fn budget_scope(mut self, scope: BudgetScope) -> Self {
        self.scope = scope;
        self
    }

    /// How many scopes (hosts) get a budget of their own; requests for scopes past it share
    /// one overflow budget, and a scope idle for a whole window is forgotten (its deposits
    /// and withdrawals have all expired by then, so a fresh one answers the same). Default:
    /// 1024 — more upstreams than a service, a gateway or a resolver following references
    /// calls within a window, and about 250 KiB for usual host names (a budget is ~230 bytes
    /// with a short name and its map slot), 512 KiB at most: a scope's name is kept only up to
    /// 260 bytes (a DNS name and a port), a longer one shares the overflow budget — so a client
    /// fed arbitrary URLs can't grow memory past that. A crawler spreading over more hosts
    /// shares the overflow budget for the rest. Valid: `1..=65536`.
    pub fn budget_max_scopes(mut self, n: usize) -> Self {
        if self
            .error
            .check("budget_max_scopes", n, 1..=65_536, "1..=65536")
        {
            self.max_scopes = n;
        }
        self
    }

    /// Turns the retry budget off: only `max_retries` bounds retries. Default: the budget is on.
    pub fn no_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// Retry POST and PATCH even without an `Idempotency-Key` header. Default: `false`
    /// (GET, HEAD, OPTIONS, TRACE, PUT and DELETE are retried; POST and PATCH only with
    /// `Idempotency-Key`).
    pub fn retry_non_idempotent(mut self, yes: bool) -> Self {
        self.retry_non_idempotent = yes;
        self
    }

    /// Retry a request of any method — POST, PATCH, CONNECT included — when the answer proves
    /// the server never processed it ([`Outcome::is_unprocessed`](crate::Outcome::is_unprocessed):
    /// an HTTP/2 stream refused with `REFUSED_STREAM` or above a GOAWAY's last stream id, a
    /// request never sent, a connection never made), as Envoy's `refused-stream` policy does
    /// (RFC 9110 §9.2.2, RFC 9113 §8.7). Other retryable answers still retry such a request
    /// only as [`retry_non_idempotent`](Builder::retry_non_idempotent) and `Idempotency-Key`
    /// allow. Default: `true`.
    ///
    /// The proof must be the request's own: a [`WitnessLayer`](super::WitnessLayer) on the
    /// transport must tie the answer to the one request this layer sent (a layer in between
    /// may send several — a redirect follower whose hop is refused after the POST was
    /// processed). Without a witness, or when it saw more than that request, the answer is
    /// returned, counted in [`RetryStats::unwitnessed`](super::RetryStats::unwitnessed) and
    /// (the first time no witness saw it) logged with `warn!`: put the witness in, or set
    /// `false` to say you don't want these retries.
    ///
    /// Cost: each such request keeps a copy of itself for the retry, as an idempotent one does
    /// — a clone of a buffered body (a reference count for `Full<Bytes>`), or a capture of a
    /// streamed one up to [`capture_limit`](Builder::capture_limit). `false` sends them once
    /// and keeps no copy.
    pub fn retry_unprocessed(mut self, yes: bool) -> Self {
        self.retry_unprocessed = yes;
        self
    }

    /// How many bytes of a discarded answer's body are read so its connection can be reused;
    /// a longer body is dropped (closing an HTTP/1 connection). The drain runs during the
    /// backoff wait and ends with it at the latest. Default: 64 KiB. Valid: `0..=16 MiB`.
    ///
    /// The bound is checked before each read, as a body yields whole frames: no read starts
    /// when the body's size hint says more remains than the bound has left (exact for a body
    /// of known length: a `Content-Length`), nor once the bound is reached while data may
    /// still come (a chunked body of exactly this many bytes is then dropped before its end).
    /// A body of unknown length may cross it by one frame, read whole: at most `drain_limit`
    /// plus one frame — for hyper's client, one HTTP/1 chunk or read (its read buffer, at most
    /// about 400 KiB by default), one HTTP/2 DATA frame (16 KiB by default).
    pub fn drain_limit(mut self, bytes: usize) -> Self {
        if self
            .error
            .check("drain_limit", bytes, 0..=16 << 20, "0..=16777216")
        {
            self.drain_limit = bytes;
        }
        self
    }

    /// How long reading a discarded body may take before it is dropped, counted from the
    /// retry decision; the end of the backoff wait ends the drain too, whichever comes first,
    /// so draining never delays the next attempt. Default: 100 ms. Valid: `0..=10 s` (0 drops
    /// at once).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        let range = Duration::ZERO..=Duration::from_secs(10);
        if self
            .error
            .check("drain_timeout", timeout, range, "0s..=10s")
        {
            self.drain_timeout = timeout;
        }
        self
    }

    /// How many bytes of a streamed request body (one that [`ReplayBody`](super::ReplayBody)
    /// can't copy before sending, such as a `BoxBody` of a forwarded request) are kept as the
    /// first attempt sends it, so that a retry can replay them. A body that ends within the
    /// bound is replayed from the copy; a larger one is sent once, whole, and never retried
    /// (counted as `not_replayable`); it is never truncated or sent twice partially.
    ///
    /// Memory: at most this many bytes per request in flight whose body is being captured (the
    /// buffer's capacity may round up, to under twice the bound), freed as soon as the body
    /// outgrows the bound, else when the request's future ends. Trailers count with the data:
    /// each field its name and value plus 32 bytes (as HTTP/2 sizes a field, RFC 9113 §6.5.2). Default: 64 KiB. Valid:
    /// `0..=16 MiB`; 0 turns capturing off (streamed bodies are sent once).
    pub fn capture_limit(mut self, bytes: usize) -> Self {
        if self
            .error
            .check("capture_limit", bytes, 0..=16 << 20, "0..=16777216")
        {
            self.capture_limit = bytes;
        }
        self
    }

    /// Sends the attempt number (1, 2, ...) in this request header. Default: no header.
    pub fn attempt_header(mut self, name: HeaderName) -> Self {
        self.attempt_header = Some(name);
        self
    }

    /// Tells `observer` every event the layer counts, as it happens (see
    /// [`observe`](crate::observe)): requests, answers by outcome, retries sent by reason,
    /// backoff waits, retries per request, drained bytes. Default: none (an event then costs
    /// one branch). Every clone of the layer shares it. With the feature `metrics`,
    /// [`RetryMetrics`](crate::metrics::RetryMetrics) records them through the `metrics`
    /// facade.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The layer, or the first setting given an invalid value.
    pub fn build(self) -> Result<StatusAwareRetryLayer<C, EC>, BuildError> {
        self.error.result()?;
        let b = self.policy.backoff;
        if b.cap < b.base {
            return Err(if self.cap_set {
                BuildError::new(
                    "backoff_cap",
                    format!("{:?} is below backoff_base ({:?})", b.cap, b.base),
                )
            } else {
                BuildError::new(
                    "backoff_base",
                    format!(
                        "{:?} is above backoff_cap ({:?}, the default)",
                        b.base, b.cap
                    ),
                )
            });
        }
        let budget = match self.budget {
            Some(settings) => Some(Scopes::new(self.scope, settings, self.max_scopes)?),
            None => None,
        };
        Ok(StatusAwareRetryLayer {
            shared: Arc::new(Shared {
                classifier: self.classifier,
                error_classifier: self.error_classifier,
                warned: Mutex::default(),
                warned_unwitnessed: AtomicBool::new(false),
                policy: self.policy,
                budget,
                stats: Counters::new(self.observer),
                retry_non_idempotent: self.retry_non_idempotent,
                retry_unprocessed: self.retry_unprocessed,
                drain_limit: self.drain_limit,
                drain_timeout: self.drain_timeout,
                capture_limit: self.capture_limit,
                attempt_header: self.attempt_header,
                built: Instant::now(),
            }),
        })
    }
}

impl<C: fmt::Debug, EC> fmt::Debug for Builder<C, EC> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("classifier", &self.classifier)
            .field("error_classifier", &std::any::type_name::<EC>())
            .field("policy", &self.policy)
            .field("budget", &self.budget)
            .field("scope", &self.scope)
            .field("max_scopes", &self.max_scopes)
            .field("retry_non_idempotent", &self.retry_non_idempotent)
            .field("retry_unprocessed", &self.retry_unprocessed)
            .field("drain_limit", &self.drain_limit)
            .field("drain_timeout", &self.drain_timeout)
            .field("capture_limit", &self.capture_limit)
            .field("attempt_header", &self.attempt_header)
            .field("observer", &ShowObserver(&self.observer))
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

const DEFAULT_BUDGET: (f64, u32, Duration) = (0.2, 10, Duration::from_secs(10));
const DEFAULT_MAX_SCOPES: usize = 1024;
