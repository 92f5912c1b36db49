//! Review of 1a07544 (the retry layer's `finish` readies the answer in place): every answer the
//! layer returns carries exactly the `RetryInfo` it did before — none on a first attempt's
//! Success with a 1xx-3xx status, the verdict otherwise, a `Stop::Deadline` return of a kept
//! answer included — nothing else in its extensions, its status and body untouched, and lands
//! in exactly one answer counter. The table below was read from the parent's code (the same
//! test run with 1a07544 reverted) and is asserted on the new one.

use std::collections::VecDeque;
use std::future::Ready;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_negative_cache::classify::RetryAfter;
use tower_negative_cache::retry::{Jitter, RetryStats};
use tower_negative_cache::{Outcome, RetryInfo, StatusAwareRetryLayer};

type Answer = Result<Response<Full<Bytes>>, io::Error>;

/// What the inner service does once it has been called once.
#[derive(Clone, Copy, Debug)]
enum Then {
    Ready,
    /// Never ready again: an answer kept through the wait is returned at the deadline.
    Never,
    /// Ready for a second call, never after it.
    NeverAfterTwo,
    /// `poll_ready` fails.
    Fails,
}

#[derive(Clone)]
struct Script {
    answers: Arc<Mutex<VecDeque<Answer>>>,
    calls: Arc<Mutex<usize>>,
    then: Then,
}

impl Script {
    fn new(answers: Vec<Answer>, then: Then) -> Self {
        Script {
            answers: Arc::new(Mutex::new(answers.into())),
            calls: Arc::default(),
            then,
        }
    }
}

impl Service<Request<Full<Bytes>>> for Script {
    type Response = Response<Full<Bytes>>;
    type Error = io::Error;
    type Future = Ready<Answer>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        let calls = *self.calls.lock().unwrap();
        if calls == 0 {
            return Poll::Ready(Ok(()));
        }
        match self.then {
            Then::Ready => Poll::Ready(Ok(())),
            Then::NeverAfterTwo if calls < 2 => Poll::Ready(Ok(())),
            Then::NeverAfterTwo => Poll::Pending,
            Then::Never => Poll::Pending,
            Then::Fails => Poll::Ready(Err(io::Error::other("not ready"))),
        }
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        *self.calls.lock().unwrap() += 1;
        let next = self.answers.lock().unwrap().pop_front();
        std::future::ready(next.expect("the script has an answer for every attempt"))
    }
}

fn res(status: u16, headers: &[(&str, &str)], body: &'static [u8]) -> Answer {
    let mut b = Response::builder().status(status);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    Ok(b.body(Full::new(Bytes::from_static(body))).unwrap())
}

fn err(kind: io::ErrorKind) -> Answer {
    Err(io::Error::new(kind, "transport"))
}

/// What the caller got: status (or the error), the `RetryInfo` extension as attached (not
/// `RetryInfo::of`), how many extensions in all, the body, and the answer counters
/// `[succeeded, missing, failed, gave_up, budget_exhausted, not_retried]` and `attempts`.
#[derive(Debug, PartialEq)]
struct Seen {
    answer: Result<u16, String>,
    info: Option<(Outcome, u32)>,
    extensions: usize,
    body: Vec<u8>,
    counters: [u64; 6],
    attempts: u64,
}

fn counters(s: &RetryStats) -> [u64; 6] {
    [
        s.succeeded,
        s.missing,
        s.failed,
        s.gave_up,
        s.budget_exhausted,
        s.not_retried,
    ]
}

async fn run<L>(
    layer: &L,
    stats: impl Fn() -> RetryStats,
    method: Method,
    answers: Vec<Answer>,
    then: Then,
) -> Seen
where
    L: Layer<Script>,
    L::Service: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = io::Error>,
{
    let req = Request::builder()
        .method(method)
        .uri("http://h.test/r")
        .body(Full::new(Bytes::from_static(b"req")))
        .unwrap();
    let out = layer.layer(Script::new(answers, then)).oneshot(req).await;
    let s = stats();
    assert_eq!(s.answered(), 1, "exactly one answer counter: {s:?}");
    let (answer, info, extensions, body) = match out {
        Ok(res) => {
            let status = res.status().as_u16();
            let info = res
                .extensions()
                .get::<RetryInfo>()
                .map(|i| (i.outcome, i.attempts));
            let n = res.extensions().len();
            let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
            (Ok(status), info, n, body)
        }
        Err(e) => (Err(format!("{:?}: {e}", e.kind())), None, 0, Vec::new()),
    };
    Seen {
        answer,
        info,
        extensions,
        body,
        counters: counters(&s),
        attempts: s.attempts,
    }
}

fn base() -> tower_negative_cache::retry::Builder {
    StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(10))
        .jitter(Jitter::None)
        .no_budget()
}

const S: [u64; 6] = [1, 0, 0, 0, 0, 0];
const M: [u64; 6] = [0, 1, 0, 0, 0, 0];
const F: [u64; 6] = [0, 0, 1, 0, 0, 0];
const G: [u64; 6] = [0, 0, 0, 1, 0, 0];
const B: [u64; 6] = [0, 0, 0, 0, 1, 0];
const N: [u64; 6] = [0, 0, 0, 0, 0, 1];

fn seen(
    answer: Result<u16, &str>,
    info: Option<(Outcome, u32)>,
    body: &[u8],
    counters: [u64; 6],
    attempts: u64,
) -> Seen {
    Seen {
        answer: answer.map_err(str::to_owned),
        extensions: usize::from(info.is_some()),
        info,
        body: body.to_vec(),
        counters,
        attempts,
    }
}

const R: Outcome = Outcome::RETRYABLE;

#[tokio::test(start_paused = true)]
async fn every_stop_returns_the_same_marks_and_one_counter() {
    use Method as Me;
    // (name, layer, method, script, then, expected)
    type Case = (
        &'static str,
        tower_negative_cache::retry::Builder,
        Method,
        Vec<Answer>,
        Then,
        Seen,
    );
    let refused = "ConnectionRefused: transport";
    let cases: Vec<Case> = vec![
        // Final, first attempt: 1xx-3xx Success unmarked; everything else marked.
        (
            "200",
            base(),
            Me::GET,
            vec![res(200, &[], b"ok")],
            Then::Ready,
            seen(Ok(200), None, b"ok", S, 1),
        ),
        (
            "204",
            base(),
            Me::GET,
            vec![res(204, &[], b"")],
            Then::Ready,
            seen(Ok(204), None, b"", S, 1),
        ),
        (
            "101",
            base(),
            Me::GET,
            vec![res(101, &[], b"")],
            Then::Ready,
            seen(Ok(101), None, b"", S, 1),
        ),
        (
            "301",
            base(),
            Me::GET,
            vec![res(301, &[("location", "/x")], b"moved")],
            Then::Ready,
            seen(Ok(301), None, b"moved", S, 1),
        ),
        (
            "HEAD 200",
            base(),
            Me::HEAD,
            vec![res(200, &[], b"")],
            Then::Ready,
            seen(Ok(200), None, b"", S, 1),
        ),
        (
            "POST 200",
            base(),
            Me::POST,
            vec![res(200, &[], b"made")],
            Then::Ready,
            seen(Ok(200), None, b"made", S, 1),
        ),
        (
            "404",
            base(),
            Me::GET,
            vec![res(404, &[], b"gone")],
            Then::Ready,
            seen(Ok(404), Some((Outcome::Missing, 1)), b"gone", M, 1),
        ),
        (
            "410",
            base(),
            Me::GET,
            vec![res(410, &[], b"")],
            Then::Ready,
            seen(Ok(410), Some((Outcome::Missing, 1)), b"", M, 1),
        ),
        (
            "400",
            base(),
            Me::GET,
            vec![res(400, &[], b"bad")],
            Then::Ready,
            seen(Ok(400), Some((Outcome::Fatal, 1)), b"bad", F, 1),
        ),
        (
            "501",
            base(),
            Me::GET,
            vec![res(501, &[], b"")],
            Then::Ready,
            seen(Ok(501), Some((Outcome::Fatal, 1)), b"", F, 1),
        ),
        (
            "fatal error",
            base(),
            Me::GET,
            vec![err(io::ErrorKind::PermissionDenied)],
            Then::Ready,
            seen(Err("PermissionDenied: transport"), None, b"", F, 1),
        ),
        // Final after retries: marked with the attempts.
        (
            "503 then 200",
            base(),
            Me::GET,
            vec![res(503, &[], b"busy"), res(200, &[], b"ok")],
            Then::Ready,
            seen(Ok(200), Some((Outcome::Success, 2)), b"ok", S, 2),
        ),
        (
            "503 then 404",
            base(),
            Me::GET,
            vec![res(503, &[], b""), res(404, &[], b"")],
            Then::Ready,
            seen(Ok(404), Some((Outcome::Missing, 2)), b"", M, 2),
        ),
        (
            "refused then 204",
            base(),
            Me::GET,
            vec![err(io::ErrorKind::ConnectionRefused), res(204, &[], b"")],
            Then::Ready,
            seen(Ok(204), Some((Outcome::Success, 2)), b"", S, 2),
        ),
        (
            "refused then fatal",
            base(),
            Me::GET,
            vec![
                err(io::ErrorKind::ConnectionRefused),
                err(io::ErrorKind::PermissionDenied),
            ],
            Then::Ready,
            seen(Err("PermissionDenied: transport"), None, b"", F, 2),
        ),
        // Exhausted.
        (
            "503 x2, max 1",
            base().max_retries(1),
            Me::GET,
            vec![res(503, &[], b"a"), res(503, &[], b"b")],
            Then::Ready,
            seen(Ok(503), Some((R, 2)), b"b", G, 2),
        ),
        (
            "503, max 0",
            base().max_retries(0),
            Me::GET,
            vec![res(503, &[], b"a")],
            Then::Ready,
            seen(Ok(503), Some((R, 1)), b"a", G, 1),
        ),
        (
            "refused, max 0",
            base().max_retries(0),
            Me::GET,
            vec![err(io::ErrorKind::ConnectionRefused)],
            Then::Ready,
            seen(Err(refused), None, b"", G, 1),
        ),
        // NotEligible.
        (
            "POST 503",
            base(),
            Me::POST,
            vec![res(503, &[], b"busy")],
            Then::Ready,
            seen(Ok(503), Some((R, 1)), b"busy", N, 1),
        ),
        (
            "POST refused",
            base(),
            Me::POST,
            vec![err(io::ErrorKind::ConnectionRefused)],
            Then::Ready,
            seen(Err(refused), None, b"", N, 1),
        ),
        // Budget.
        (
            "503, no budget left",
            StatusAwareRetryLayer::builder()
                .jitter(Jitter::None)
                .budget_ratio(0.0)
                .budget_min_per_sec(0),
            Me::GET,
            vec![res(503, &[], b"busy")],
            Then::Ready,
            seen(Ok(503), Some((R, 1)), b"busy", B, 1),
        ),
        // HintTooLong.
        (
            "503 Retry-After 3600",
            base().max_retry_after(Duration::from_secs(1)),
            Me::GET,
            vec![res(503, &[("retry-after", "3600")], b"")],
            Then::Ready,
            seen(
                Ok(503),
                Some((
                    Outcome::retry_after(RetryAfter::Delay(Duration::from_secs(3600))),
                    1,
                )),
                b"",
                G,
                1,
            ),
        ),
        // Deadline in the policy: the wait would end past it.
        (
            "503, wait past deadline",
            base()
                .backoff_base(Duration::from_secs(2))
                .deadline(Duration::from_secs(1)),
            Me::GET,
            vec![res(503, &[], b"")],
            Then::Ready,
            seen(Ok(503), Some((R, 1)), b"", G, 1),
        ),
        // Stop::Deadline of a kept answer (it holds nothing): returned at the deadline.
        (
            "kept 503 at deadline",
            base().deadline(Duration::from_secs(1)),
            Me::GET,
            vec![res(503, &[], b"")],
            Then::Never,
            seen(Ok(503), Some((R, 1)), b"", G, 1),
        ),
        (
            "kept 500 after a retry at deadline",
            base().deadline(Duration::from_secs(1)),
            Me::GET,
            vec![res(503, &[], b""), res(500, &[], b"")],
            Then::NeverAfterTwo,
            seen(Ok(500), Some((R, 2)), b"", G, 2),
        ),
        (
            "kept error at deadline",
            base().deadline(Duration::from_secs(1)),
            Me::GET,
            vec![err(io::ErrorKind::ConnectionRefused)],
            Then::Never,
            seen(Err(refused), None, b"", G, 1),
        ),
        // Readiness failing before a retry: the service's error, in `failed`.
        (
            "503 then not ready",
            base(),
            Me::GET,
            vec![res(503, &[], b"")],
            Then::Fails,
            seen(Err("Other: not ready"), None, b"", F, 1),
        ),
    ];
    let mut failures = Vec::new();
    for (name, builder, method, answers, then, want) in cases {
        let layer = builder.build().unwrap();
        let got = run(&layer, || layer.stats(), method, answers, then).await;
        if got != want {
            failures.push(format!("{name}:\n  got  {got:?}\n  want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A classifier that calls a 200 Fatal or Retryable, or a 404 Success: marked by the verdict,
/// not the status; a Success on a 4xx status (not unmarked: `RetryInfo::of` would say None) is
/// marked at the first attempt.
#[tokio::test(start_paused = true)]
async fn a_classifiers_verdict_is_marked_whatever_the_status() {
    let classify = |status: StatusCode, headers: &HeaderMap| match status.as_u16() {
        200 if headers.contains_key("x-fatal") => Outcome::Fatal,
        200 if headers.contains_key("x-again") => Outcome::RETRYABLE,
        404 => Outcome::Success,
        s if s >= 500 => Outcome::RETRYABLE,
        _ => Outcome::Success,
    };
    let build = || base().classifier(classify).build().unwrap();
    type Case = (&'static str, Vec<Answer>, Seen);
    let cases: Vec<Case> = vec![
        (
            "200 fatal",
            vec![res(200, &[("x-fatal", "1")], b"x")],
            seen(Ok(200), Some((Outcome::Fatal, 1)), b"x", F, 1),
        ),
        (
            "404 success",
            vec![res(404, &[], b"")],
            seen(Ok(404), Some((Outcome::Success, 1)), b"", S, 1),
        ),
        (
            "200 again then 200",
            vec![res(200, &[("x-again", "1")], b""), res(200, &[], b"ok")],
            seen(Ok(200), Some((Outcome::Success, 2)), b"ok", S, 2),
        ),
        (
            "503 then 404 success",
            vec![res(503, &[], b""), res(404, &[], b"")],
            seen(Ok(404), Some((Outcome::Success, 2)), b"", S, 2),
        ),
        (
            "200",
            vec![res(200, &[], b"")],
            seen(Ok(200), None, b"", S, 1),
        ),
    ];
    let mut failures = Vec::new();
    for (name, answers, want) in cases {
        let layer = build();
        let got = run(&layer, || layer.stats(), Method::GET, answers, Then::Ready).await;
        if got != want {
            failures.push(format!("{name}:\n  got  {got:?}\n  want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An extension the inner service put on its answer is kept beside `RetryInfo` (the answer is
/// marked in place, not rebuilt).
#[tokio::test(start_paused = true)]
async fn the_inner_services_extensions_are_kept() {
    #[derive(Clone, Debug, PartialEq)]
    struct Mine(u32);
    let with = |status: u16| -> Answer {
        let mut r = res(status, &[], b"")?;
        r.extensions_mut().insert(Mine(status as u32));
        Ok(r)
    };
    for (answers, status, info, attempts) in [
        (vec![with(200)], 200, None, 1),
        (vec![with(404)], 404, Some((Outcome::Missing, 1)), 1),
        (
            vec![with(503), with(200)],
            200,
            Some((Outcome::Success, 2)),
            2,
        ),
    ] {
        let layer = base().build().unwrap();
        let res = layer
            .layer(Script::new(answers, Then::Ready))
            .oneshot(
                Request::get("http://h.test/")
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), status);
        assert_eq!(res.extensions().get::<Mine>(), Some(&Mine(status as u32)));
        assert_eq!(
            res.extensions()
                .get::<RetryInfo>()
                .map(|i| (i.outcome, i.attempts)),
            info
        );
        assert_eq!(res.extensions().len(), 1 + usize::from(info.is_some()));
        assert_eq!(layer.stats().answered(), 1);
        assert_eq!(layer.stats().attempts, attempts);
    }
}
