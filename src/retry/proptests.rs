//! Property tests of the retry layer: the real `StatusAwareRetry` over a scripted mock upstream
//! on tokio's paused clock (nothing really sleeps), and the pure policy it asks.

use std::error::Error;
use std::io;
use std::io::ErrorKind::{self, ConnectionRefused, ConnectionReset, PermissionDenied};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::Config;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

use super::StatusAwareRetryLayer;
use super::layer::Builder;
use super::policy::{Attempt, Backoff, Decision, Jitter, Policy, Stop};
use crate::RetryInfo;
use crate::classify::{Classify, DefaultClassifier, Outcome, response_outcome};

type BoxError = Box<dyn Error + Send + Sync>;
type Model = fn(&Answer) -> Outcome;
type R = Result<(), TestCaseError>;
const US: Duration = Duration::from_micros(1);
const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const ATTEMPT: &str = "x-attempt";
const BODY: &[u8] = b"discarded"; // every mock answer's body: drained (instantly) before a retry

fn cases(cases: u32) -> Config {
    // No regression files: this module owns no file but itself.
    let mut config = Config::with_cases(cases);
    config.failure_persistence = None;
    config
}

/// One scripted upstream answer: a status with an optional `Retry-After`, or an error.
#[derive(Clone, Debug)]
enum Answer {
    Status(u16, Option<HeaderValue>),
    Fail(ErrorKind),
    /// An error that [`WithRefusals`] calls unprocessed (as the default classifier calls an
    /// HTTP/2 stream refused with `REFUSED_STREAM`, which a mock can't produce).
    Refused,
}

#[derive(Debug)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused before processing")
    }
}

impl Error for Refused {}

/// The default classifier, with [`Refused`] errors unprocessed.
struct WithRefusals;

impl Classify for WithRefusals {
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Outcome {
        DefaultClassifier::default().classify_response(status, headers)
    }

    fn classify_error(&self, error: &(dyn Error + 'static)) -> Option<Outcome> {
        if error.is::<Refused>() {
            return Some(Outcome::UNPROCESSED);
        }
        crate::classify::recognise_error(error)
    }
}

impl Answer {
    const OK: Answer = Answer::Status(200, None);

    fn head(&self) -> Option<(StatusCode, HeaderMap)> {
        let Answer::Status(s, ra) = self else {
            return None;
        };
        let headers = ra
            .iter()
            .map(|v| (header::RETRY_AFTER, v.clone()))
            .collect();
        Some((StatusCode::from_u16(*s).unwrap(), headers))
    }

    fn respond(&self) -> Result<Response<Full<Bytes>>, BoxError> {
        let Some((status, headers)) = self.head() else {
            return Err(match self {
                Answer::Fail(kind) => Box::new(io::Error::from(*kind)),
                _ => Box::new(Refused),
            });
        };
        let mut res = Response::new(Full::new(Bytes::from_static(BODY)));
        (*res.status_mut(), *res.headers_mut()) = (status, headers);
        Ok(res)
    }
}

/// What the default classifier must make of an answer.
fn by_default(a: &Answer) -> Outcome {
    match (a, a.head()) {
        (_, Some((s, h))) => response_outcome(&DefaultClassifier::default(), s, &h),
        (Answer::Fail(PermissionDenied), _) => Outcome::Fatal,
        _ => Outcome::RETRYABLE,
    }
}

/// What [`WithRefusals`] must make of an answer.
fn by_refusals(a: &Answer) -> Outcome {
    match a {
        Answer::Refused => Outcome::UNPROCESSED,
        _ => by_default(a),
    }
}

/// What the layer must make of an answer under a classifier that calls every status retryable.
fn by_rogue(a: &Answer) -> Outcome {
    match a {
        Answer::Status(404 | 410, _) => Outcome::Missing,
        Answer::Status(..) => Outcome::RETRYABLE,
        _ => by_default(a),
    }
}

#[derive(Clone, Debug)]
struct Cfg {
    p: Policy,
    budget: Option<(u32, u32, u64)>, // ratio in 1/1000, min_per_sec, window in s
    non_idempotent: bool,
    attempt_header: bool,
}

impl Cfg {
    fn builder(&self) -> Builder {
        let (p, b) = (&self.p, &self.p.backoff);
        let mut builder = StatusAwareRetryLayer::builder()
            .max_retries(p.max_retries)
            .backoff_base(b.base)
            .backoff_factor(b.factor)
            .backoff_cap(b.cap)
            .jitter(b.jitter)
            .max_retry_after(p.max_retry_after)
            .retry_non_idempotent(self.non_idempotent);
        if let Some(d) = p.deadline {
            builder = builder.deadline(d);
        }
        if self.attempt_header {
            builder = builder.attempt_header(HeaderName::from_static(ATTEMPT));
        }
        match self.budget {
            Some((r, m, w)) => builder
                .budget_ratio(f64::from(r) / 1000.0)
                .budget_min_per_sec(m)
                .budget_window(Duration::from_secs(w)),
            None => builder.no_budget(),
        }
    }

    /// `min(cap, base × factor^(n-1))`, the un-jittered wait before retry `n` (1-based).
    fn exp(&self, n: u32) -> Duration {
        let b = &self.p.backoff;
        let e = b.base.as_secs_f64() * b.factor.powi(n as i32 - 1);
        Duration::from_secs_f64(e.min(b.cap.as_secs_f64()))
    }

    /// How far above a `Retry-After` hint the wait may be.
    fn spread(&self) -> Duration {
        self.p.backoff.base * u32::from(self.p.backoff.jitter != Jitter::None)
    }
}

fn dur(max: Duration) -> impl Strategy<Value = Duration> + Clone {
    (0..=max.as_nanos() as u64).prop_map(Duration::from_nanos)
}

fn jitter() -> impl Strategy<Value = Jitter> {
    use Jitter as J;
    select(vec![J::None, J::Full, J::Equal, J::Decorrelated])
}

prop_compose! {
    fn cfg()(
        max_retries in 0u32..=10, base in dur(2 * SEC), extra in prop_oneof![dur(SEC), dur(HOUR)],
        factor in 1.0f64..=10.0, jitter in jitter(), mra in prop_oneof![dur(100 * SEC), dur(DAY)],
        deadline in option::of(prop_oneof![dur(5 * SEC), dur(DAY - MS)].prop_map(|d| d + MS)),
        budget in option::of((0u32..=5000, 0u32..100, 1u64..=60)), flags: (bool, bool),
    ) -> Cfg {
        let backoff = Backoff { base, factor, cap: (base + extra).min(HOUR), jitter };
        let p = Policy { max_retries, backoff, max_retry_after: mra, deadline };
        Cfg { p, budget, non_idempotent: flags.0, attempt_header: flags.1 }
    }
}

/// Retry-After values: valid, garbage, huge, negative, fractional, HTTP-dates past and future.
fn retry_after() -> impl Strategy<Value = HeaderValue> {
    let date = |t: SystemTime| httpdate::fmt_http_date(t);
    let text = prop_oneof![
        4 => "[0-9]{1,2}",
        1 => " ?[0-9]{1,3} ?",
        1 => "[0-9]{4,25}",
        1 => Just("99999999999999999999".to_owned()),
        1 => "-[0-9]{1,5}",
        1 => "[0-9]{1,3}\\.[0-9]{1,3}",
        1 => "[a-zA-Z0-9 ,:+-]{0,30}",
        1 => (0u64..4_000_000_000).prop_map(move |s| date(UNIX_EPOCH + Duration::from_secs(s))),
        2 => (0u64..120).prop_map(move |s| date(SystemTime::now() + Duration::from_secs(s))),
    ];
    // HeaderValue refuses control bytes other than tab: map them.
    let visible = |b: u8| match b {
        b'\t' | b' '..=b'~' | 0x80.. => b,
        _ => b'?',
    };
    let raw = vec(any::<u8>(), 0..40).prop_map(move |v| v.into_iter().map(visible).collect());
    let bytes = prop_oneof![4 => text.prop_map(String::into_bytes), 1 => raw];
    bytes.prop_map(|b: Vec<u8>| HeaderValue::from_bytes(&b).unwrap())
}

fn answer() -> impl Strategy<Value = Answer> {
    let kinds = vec![ConnectionRefused, ConnectionReset, PermissionDenied];
    let retryable = select(vec![408u16, 429, 500, 502, 503, 504]);
    prop_oneof![
        4 => (retryable, option::of(retry_after())).prop_map(|(s, ra)| Answer::Status(s, ra)),
        2 => (100u16..=599, option::of(retry_after())).prop_map(|(s, ra)| Answer::Status(s, ra)),
        1 => select(kinds).prop_map(Answer::Fail),
    ]
}

/// A method and whether the request carries `Idempotency-Key`.
type Meth = (Method, bool);

fn method() -> impl Strategy<Value = Meth> {
    let all = "GET HEAD OPTIONS TRACE PUT DELETE POST PATCH CONNECT".split(' ');
    (
        select(all.map(|m| m.parse().unwrap()).collect::<Vec<Method>>()),
        any::<bool>(),
    )
}

/// May the layer send this request more than once? (RFC 9110 §9.2.2 plus the crate's rule.)
fn retry_eligible(cfg: &Cfg, (m, key): &Meth) -> bool {
    cfg.p.max_retries > 0
        && match m.as_str() {
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE" => true,
            "POST" | "PATCH" => *key || cfg.non_idempotent,
            _ => false,
        }
}

struct Call {
    at: Instant,
    attempt: Option<HeaderValue>,
    answer: Answer,
}

struct Trace {
    result: Result<Response<Full<Bytes>>, BoxError>,
    calls: Vec<Call>,
    started: Instant,
    wall: (SystemTime, SystemTime), // real time around the request, for HTTP-date hints
}

fn runtime() -> tokio::runtime::Runtime {
    let mut b = tokio::runtime::Builder::new_current_thread();
    b.enable_time().start_paused(true).build().unwrap()
}

/// Sends one request through `layer` to an upstream playing `script` (then 200s).
async fn send<C: Classify>(layer: &StatusAwareRetryLayer<C>, m: &Meth, script: &[Answer]) -> Trace {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (seen, script) = (log.clone(), Arc::new(script.to_vec()));
    let upstream = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let mut seen = seen.lock().unwrap();
        let answer = script.get(seen.len()).cloned().unwrap_or(Answer::OK);
        let attempt = req.headers().get(ATTEMPT).cloned();
        seen.push(Call {
            at: Instant::now(),
            attempt,
            answer: answer.clone(),
        });
        async move { answer.respond() }
    });
    // On the transport: ties a `Refused` to the request sent (it is the only request here).
    let refusals = |e: &BoxError| e.is::<Refused>().then_some(Outcome::UNPROCESSED);
    let upstream = super::WitnessLayer::new()
        .error_classifier(refusals)
        .layer(upstream);
    let mut req = Request::new(Full::new(Bytes::from_static(b"payload")));
    (*req.method_mut(), *req.uri_mut()) = (m.0.clone(), "http://up/records/42".parse().unwrap());
    if m.1 {
        req.headers_mut()
            .insert("idempotency-key", HeaderValue::from_static("k-1"));
    }
    let (wall0, started) = (SystemTime::now(), Instant::now());
    let result = layer.layer(upstream).oneshot(req).await;
    let calls = std::mem::take(&mut *log.lock().unwrap());
    Trace {
        result,
        calls,
        started,
        wall: (wall0, SystemTime::now()),
    }
}

impl Trace {
    /// What every run must show, whatever the config and the answers.
    fn check(&self, cfg: &Cfg, m: &Meth, model: Model) -> R {
        let (n, p) = (self.calls.len(), &cfg.p);
        prop_assert!(n >= 1 && n <= 1 + p.max_retries as usize, "{n} calls");
        // Success, Missing and Fatal end the loop at once: all answers but the last were
        // retryable; a request whose method may not be repeated was sent again only after an
        // answer proving it unprocessed.
        for c in &self.calls[..n - 1] {
            let o = model(&c.answer);
            prop_assert!(o.is_retryable(), "retried {:?}", c.answer);
            prop_assert!(
                retry_eligible(cfg, m) || o.is_unprocessed(),
                "{m:?} sent {n} times, again after {:?}",
                c.answer
            );
        }
        // The caller gets the last answer, as it was, with its verdict.
        let last = &self.calls[n - 1].answer;
        match (&self.result, last) {
            (Ok(res), Answer::Status(s, _)) => {
                prop_assert_eq!(res.status().as_u16(), *s);
                let info = RetryInfo::of(res).map(|i| (i.outcome, i.attempts));
                prop_assert_eq!(info, Some((model(last), n as u32)));
            }
            (Err(e), Answer::Fail(kind)) => {
                let got = e.downcast_ref::<io::Error>().map(io::Error::kind);
                prop_assert_eq!(got, Some(*kind));
            }
            (Err(e), Answer::Refused) => prop_assert!(e.is::<Refused>(), "{e}"),
            (r, _) => prop_assert!(false, "{:?} for {last:?}", r.as_ref().map(|r| r.status())),
        }
        for (i, c) in self.calls.iter().enumerate() {
            let sent = cfg.attempt_header.then(|| HeaderValue::from(i + 1));
            prop_assert_eq!(&c.attempt, &sent);
        }
        // Waits between calls (paused clock: a sleep ends on the next 1 ms tick; draining is
        // instant).
        for (i, pair) in self.calls.windows(2).enumerate() {
            let gap = pair[1].at - pair[0].at;
            let (lo, hi) = match model(&pair[0].answer) {
                Outcome::Retryable {
                    after: Some(hint), ..
                } => {
                    let lo = hint.delay_from(self.wall.1);
                    prop_assert!(lo <= p.max_retry_after, "hint {lo:?} over the cap honoured");
                    let hi = hint.delay_from(self.wall.0) + cfg.spread();
                    (lo, hi.min(p.max_retry_after))
                }
                _ => {
                    let e = cfg.exp(i as u32 + 1);
                    match p.backoff.jitter {
                        Jitter::None => (e, e),
                        Jitter::Full => (Duration::ZERO, e),
                        Jitter::Equal => (e / 2, e),
                        Jitter::Decorrelated => (p.backoff.base, p.backoff.cap),
                    }
                }
            };
            let ok = gap + US >= lo && gap <= hi + MS + US;
            prop_assert!(ok, "wait {i}: {gap:?} not in [{lo:?}, {hi:?}]");
        }
        let last_at = self.calls[n - 1].at - self.started;
        prop_assert!(
            p.deadline.is_none_or(|d| last_at <= d + MS),
            "past deadline"
        );
        // Liveness: with nothing else to stop it, a retryable answer is retried.
        let hint_over = match model(last) {
            Outcome::Retryable { after: Some(h), .. } => {
                h.delay_from(self.wall.0) > p.max_retry_after
            }
            o => !o.is_retryable(),
        };
        if retry_eligible(cfg, m) && cfg.budget.is_none() && p.deadline.is_none() && !hint_over {
            prop_assert_eq!(n, 1 + p.max_retries as usize, "gave up early");
        }
        Ok(())
    }
}

/// The first 404/410 of a script, and a copy whose answers before it are all retried by `model`.
fn forced(script: &[Answer], model: Model) -> (usize, Vec<Answer>) {
    let p = script.iter().position(|a| by_default(a).is_missing());
    let p = p.unwrap();
    let mut s = script.to_vec();
    for a in &mut s[..p] {
        if !matches!(model(a), Outcome::Retryable { after: None, .. }) {
            *a = Answer::Fail(ConnectionReset);
        }
    }
    (p, s)
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn never_retries_404(
        cfg in cfg(), m in method(), mut script in vec(answer(), 0..=10),
        missing in (select(vec![404u16, 410]), option::of(retry_after())),
        tail in vec(answer(), 0..4),
    ) {
        script.push(Answer::Status(missing.0, missing.1));
        script.extend(tail);
        let rt = runtime();
        // Any config and method: nothing is sent after the first 404/410.
        let (p, _) = forced(&script, by_default);
        let t = rt.block_on(send(&cfg.builder().build().unwrap(), &m, &script));
        t.check(&cfg, &m, by_default)?;
        prop_assert!(t.calls.len() <= p + 1);
        // With nothing else to stop it, the loop reaches the 404/410 and ends there — also when
        // the classifier calls every answer retryable.
        let p = Policy { max_retries: 10, deadline: None, ..cfg.p };
        let sure = Cfg { p, budget: None, ..cfg };
        let get = (Method::GET, false);
        for rogue in [false, true] {
            let model = if rogue { by_rogue } else { by_default };
            let (p, script) = forced(&script, model);
            let t = if rogue {
                let rogue = |_: StatusCode, _: &HeaderMap| Outcome::RETRYABLE;
                rt.block_on(send(&sure.builder().classifier(rogue).build().unwrap(), &get, &script))
            } else {
                rt.block_on(send(&sure.builder().build().unwrap(), &get, &script))
            };
            t.check(&sure, &get, model)?;
            prop_assert_eq!(t.calls.len(), p + 1);
            prop_assert!(matches!(t.result.map(|r| r.status().as_u16()), Ok(404 | 410)));
        }
    }

    #[test]
    fn attempts_bounded_and_final_outcomes_stop(
        cfg in cfg(), reqs in vec((method(), vec(answer(), 0..12)), 1..4),
    ) {
        let layer = cfg.builder().build().unwrap();
        let rt = runtime();
        let (mut attempts, mut missing, mut drained) = (0, 0, 0);
        for (m, script) in &reqs {
            let t = rt.block_on(send(&layer, m, script));
            t.check(&cfg, m, by_default)?;
            attempts += t.calls.len() as u64;
            let (last, retried) = t.calls.split_last().unwrap();
            missing += u64::from(by_default(&last.answer).is_missing());
            let bodies = retried.iter().filter(|c| matches!(c.answer, Answer::Status(..)));
            drained += (BODY.len() * bodies.count()) as u64;
        }
        let s = layer.stats();
        prop_assert_eq!((s.requests, s.attempts), (reqs.len() as u64, attempts));
        prop_assert_eq!(s.retries, s.attempts - s.requests);
        prop_assert_eq!((s.missing, s.drained_bytes, s.not_replayable), (missing, drained, 0));
    }

    /// Every returned answer lands in exactly one answer counter, the one its outcome and the
    /// reason it was returned name; the answer counters add up to `requests`.
    #[test]
    fn every_answer_lands_in_exactly_one_counter(
        cfg in cfg(), m in method(), script in vec(answer(), 0..12),
    ) {
        let layer = cfg.builder().build().unwrap();
        let t = runtime().block_on(send(&layer, &m, &script));
        let s = layer.stats();
        prop_assert_eq!((s.requests, s.answered()), (1, 1), "{:?}", s);
        let last = &t.calls.last().unwrap().answer;
        let method_ok = retry_eligible(&Cfg { p: Policy { max_retries: 1, ..cfg.p }, ..cfg.clone() }, &m);
        let (counter, value) = match by_default(last) {
            Outcome::Success => ("succeeded", s.succeeded),
            Outcome::Missing => ("missing", s.missing),
            Outcome::Fatal => ("failed", s.failed),
            Outcome::Retryable { .. } if !method_ok => ("not_retried", s.not_retried),
            Outcome::Retryable { .. } if cfg.p.max_retries == 0 => ("gave_up", s.gave_up),
            // Spent max_retries, deadline or hint cap, or the budget: timing decides which.
            Outcome::Retryable { .. } => {
                let budget = if cfg.budget.is_some() { s.budget_exhausted } else { 0 };
                ("gave_up or budget_exhausted", s.gave_up + budget)
            }
        };
        prop_assert_eq!(value, 1, "{} for {:?}: {:?}", counter, last, s);
        prop_assert_eq!(s.retries, s.attempts - s.requests);
        prop_assert_eq!(s.attempts, t.calls.len() as u64);
    }

    #[test]
    fn non_idempotent_requests_reach_upstream_once(
        cfg in cfg(), script in vec(answer(), 1..8),
        (m, key, opt_in) in prop_oneof![
            select(vec![Method::POST, Method::PATCH]).prop_map(|m| (m, false, false)),
            any::<(bool, bool)>().prop_map(|(key, opt_in)| (Method::CONNECT, key, opt_in)),
        ],
    ) {
        let (cfg, m) = (Cfg { non_idempotent: opt_in, ..cfg }, (m, key));
        let t = runtime().block_on(send(&cfg.builder().build().unwrap(), &m, &script));
        t.check(&cfg, &m, by_default)?;
        prop_assert_eq!(t.calls.len(), 1);
    }
}

proptest! {
    #![proptest_config(cases(256))]

    /// POST, PATCH and CONNECT (without opt-in) are sent again only after an answer proving
    /// the server never processed them, and — unless `retry_unprocessed(false)` — are sent
    /// again after one when nothing else stops the retry.
    #[test]
    fn a_request_that_may_not_be_repeated_is_resent_only_when_unprocessed(
        cfg in cfg(), opt_out: bool,
        script in vec(prop_oneof![2 => answer(), 1 => Just(Answer::Refused)], 1..8),
        m in prop_oneof![
            select(vec![Method::POST, Method::PATCH]).prop_map(|m| (m, false)),
            any::<bool>().prop_map(|key| (Method::CONNECT, key)),
        ],
    ) {
        let cfg = Cfg { non_idempotent: false, ..cfg };
        let layer = cfg
            .builder()
            .retry_unprocessed(!opt_out)
            .classifier(WithRefusals)
            .build()
            .unwrap();
        let t = runtime().block_on(send(&layer, &m, &script));
        t.check(&cfg, &m, by_refusals)?;
        let n = t.calls.len();
        for c in &t.calls[..n - 1] {
            prop_assert!(matches!(c.answer, Answer::Refused), "resent after {:?}", c.answer);
        }
        if opt_out {
            prop_assert_eq!(n, 1);
        }
        let free = cfg.p.max_retries > 0 && cfg.budget.is_none() && cfg.p.deadline.is_none();
        if !opt_out && free && matches!(script[0], Answer::Refused) {
            prop_assert!(n >= 2, "a refused request was not retried");
        }
        let s = layer.stats();
        prop_assert_eq!((s.requests, s.answered(), s.not_replayable), (1, 1, 0));
    }
}

fn unit() -> impl Strategy<Value = f64> {
    let inf = f64::INFINITY;
    let odd = vec![f64::NAN, -1.0, 2.0, 1.0, -0.0, inf, -inf, f64::MIN_POSITIVE];
    prop_oneof![4 => 0.0f64..1.0, 1 => select(odd)]
}

prop_compose! {
    fn attempt()(
        retries in prop_oneof![4 => 0u32..=12, 1 => any::<u32>()], elapsed in dur(2 * DAY),
        prev_delay in prop_oneof![4 => dur(2 * HOUR), 1 => Just(Duration::MAX)],
    ) -> Attempt {
        Attempt { retries, elapsed, prev_delay }
    }
}

/// Asks the policy about `outcome` and checks its answer against the documented rules.
fn decide_checked(cfg: &Cfg, outcome: Outcome, at: Attempt, u: f64, budget_ok: bool) -> R {
    let (p, wall, mut asked) = (&cfg.p, SystemTime::now(), false);
    let mut withdraw = || {
        asked = true;
        budget_ok
    };
    let d = p.decide(&outcome, at, wall, u, &mut withdraw);
    let Outcome::Retryable { after, .. } = outcome else {
        prop_assert_eq!((d, asked), (Decision::Stop(Stop::Final), false));
        return Ok(());
    };
    // The budget is asked last, only for a retry everything else allows.
    let asks = matches!(d, Decision::Retry(_) | Decision::Stop(Stop::Budget));
    prop_assert_eq!(asked, asks);
    let hint = after.map(|a| a.delay_from(wall));
    let (more, hint_over) = (at.retries < p.max_retries, hint > Some(p.max_retry_after));
    match (d, hint) {
        (Decision::Retry(delay), None) => {
            prop_assert!(delay <= p.backoff.cap, "{delay:?} > cap");
            prop_assert_eq!(delay, p.backoff.delay(at.retries + 1, at.prev_delay, u));
        }
        (Decision::Retry(delay), Some(h)) => {
            let ok = h <= delay && delay <= h + cfg.spread();
            prop_assert!(ok, "{delay:?} for hint {h:?}");
        }
        (Decision::Stop(Stop::Exhausted), _) => prop_assert!(!more),
        (Decision::Stop(Stop::HintTooLong), _) => prop_assert!(more && hint_over),
        (Decision::Stop(Stop::Deadline), _) => prop_assert!(p.deadline.is_some()),
        (Decision::Stop(Stop::Budget), _) => prop_assert!(!budget_ok),
        (other, _) => prop_assert!(false, "{other:?} for a retryable answer"),
    }
    if let Decision::Retry(delay) = d {
        prop_assert!(more && budget_ok && !hint_over);
        prop_assert!(p.deadline.is_none_or(|dl| at.elapsed + delay <= dl));
    }
    prop_assert!(more || d == Decision::Stop(Stop::Exhausted));
    prop_assert!(!(more && hint_over) || d == Decision::Stop(Stop::HintTooLong));
    Ok(())
}

proptest! {
    #![proptest_config(cases(2048))]

    #[test]
    fn delays_within_bounds_and_no_panic(
        cfg in cfg(), at in attempt(), u in unit(), budget_ok: bool,
        status in 100u16..=599, ra in option::of(retry_after()), n: u32, unprocessed: bool,
    ) {
        let b = cfg.p.backoff;
        let d = b.delay(n, at.prev_delay, u);
        prop_assert!(d <= b.cap, "{d:?} > cap");
        if b.jitter == Jitter::None && (1..=11).contains(&n) {
            let e = cfg.exp(n);
            prop_assert!(d + US >= e && d <= e + US, "{d:?} != {e:?}");
        }
        let (status, headers) = Answer::Status(status, ra).head().unwrap();
        let outcome = DefaultClassifier::default().classify_response(status, &headers);
        let hint = crate::headers::retry_after(headers.get(header::RETRY_AFTER));
        decide_checked(&cfg, outcome, at, u, budget_ok)?;
        decide_checked(&cfg, Outcome::Retryable { after: hint, unprocessed }, at, u, budget_ok)?;
    }
}

proptest! {
    #![proptest_config(cases(32))]

    #[test]
    fn budget_long_run_bound(
        // Mostly a budget that binds: small ratio and reserve, many retries allowed per request.
        ratio_milli in prop_oneof![3 => 0u32..=1000, 1 => 0u32..=5000],
        min_per_sec in prop_oneof![3 => 0u32..5, 1 => 0u32..100], window_s in 1u64..=60,
        max_retries in prop_oneof![3 => 4u32..=10, 1 => 0u32..=10], base in dur(50 * MS),
        requests in 200usize..=2000, jitter in jitter(), gaps_ms in vec(0u64..200, 1..50),
    ) {
        let layer = StatusAwareRetryLayer::builder()
            .max_retries(max_retries)
            .backoff_base(base)
            .backoff_cap(base * 8)
            .jitter(jitter)
            .budget_ratio(f64::from(ratio_milli) / 1000.0)
            .budget_min_per_sec(min_per_sec)
            .budget_window(Duration::from_secs(window_s))
            .build()
            .unwrap();
        let upstream = tower::service_fn(|_: Request<Full<Bytes>>| async {
            Answer::Status(503, None).respond()
        });
        let svc = layer.layer(upstream);
        let run = runtime().block_on(async {
            let t0 = Instant::now();
            for i in 0..requests {
                let _ = svc.clone().oneshot(Request::new(Full::new(Bytes::new()))).await;
                tokio::time::advance(Duration::from_millis(gaps_ms[i % gaps_ms.len()])).await;
            }
            t0.elapsed().as_secs_f64()
        });
        // Spent retries come back when their slot (a tenth of the window) is recycled, after 0.9
        // to 1 window: the per-second reserve refills at most once per 0.9 window.
        let (w, s) = (window_s as f64, layer.stats());
        let bound = f64::from(ratio_milli) / 1000.0 * requests as f64
            + f64::from(min_per_sec) * w * (1.0 + run / (0.9 * w)) + 1.0;
        prop_assert_eq!(s.requests, requests as u64);
        prop_assert!(s.retries as f64 <= bound, "{} retries > {bound} ({:?})", s.retries, s);
    }
}
