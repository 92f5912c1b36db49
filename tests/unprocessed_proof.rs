//! Issue 22, item 1: a POST is sent again only on proof tied to the request the retry layer
//! sent. Over real servers: an origin that processes the POST and answers `303 See Other`
//! with a `Location` at a port that refuses connections, and a port that refuses the POST
//! itself; through the stack (retry -> FollowRedirect -> client) and the README's
//! (Trace -> FollowRedirect -> cache -> Decompression -> retry -> timeout -> client).

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use tower::timeout::TimeoutLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::decompression::DecompressionLayer;
use tower_http::follow_redirect::FollowRedirectLayer;
use tower_http::trace::TraceLayer;
use tower_negative_cache::retry::{Jitter, WitnessLayer};
use tower_negative_cache::{NegativeCacheLayer, StatusAwareRetryLayer};

use support::{Reply, TestServer};

#[test]
fn the_witness_and_its_future_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    type Client = hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >;
    type W = tower_negative_cache::retry::Witness<Client>;
    send_sync::<WitnessLayer>();
    send_sync::<W>();
    send_sync::<<W as tower::Service<Request<Full<Bytes>>>>::Future>();
}

fn retry() -> StatusAwareRetryLayer {
    StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .jitter(Jitter::None)
        .no_budget()
        .build()
        .unwrap()
}

/// An origin that processes `POST /orders` and answers 303 to a port where nothing listens.
async fn origin() -> TestServer {
    let gone = support::refused_addr();
    TestServer::builder()
        .default_reply(Reply::status(303).header("location", &format!("http://{gone}/done")))
        .start()
        .await
}

fn post(url: String) -> Request<Full<Bytes>> {
    Request::post(url)
        .body(Full::new(Bytes::from_static(b"order-1")))
        .unwrap()
}

#[tokio::test]
async fn a_post_answered_303_to_a_refusing_port_is_sent_once_through_follow_redirect() {
    for witness in [false, true] {
        let server = origin().await;
        let layer = retry();
        let client = support::client_full();
        let result = if witness {
            ServiceBuilder::new()
                .layer(layer.clone())
                .layer(FollowRedirectLayer::new())
                .layer(WitnessLayer::new())
                .service(client)
                .oneshot(post(server.url("/orders")))
                .await
        } else {
            ServiceBuilder::new()
                .layer(layer.clone())
                .layer(FollowRedirectLayer::new())
                .service(client)
                .oneshot(post(server.url("/orders")))
                .await
        };
        let err = result.expect_err("the redirect's hop is refused");
        assert!(err.is_connect(), "{err}");
        let stats = layer.stats();
        assert_eq!(
            server.hits_for(Method::POST, "/orders"),
            1,
            "witness: {witness}; the POST was processed once and must not be sent again: {stats:?}"
        );
        assert_eq!((stats.retries, stats.not_retried), (0, 1), "{stats:?}");
        assert_eq!(stats.unwitnessed, 1, "{stats:?}");
    }
}

#[tokio::test]
async fn through_the_readme_stack_a_processed_post_is_sent_once_and_a_refused_one_is_retried() {
    let cache = NegativeCacheLayer::new();
    let layer = retry();
    let stack = |witness: bool| {
        let base = ServiceBuilder::new()
            .layer(TraceLayer::new_for_http())
            .layer(FollowRedirectLayer::new())
            .layer(cache.clone())
            .layer(DecompressionLayer::new())
            .layer(layer.clone())
            .layer(TimeoutLayer::new(Duration::from_secs(10)));
        let client = support::client_full();
        if witness {
            tower::util::Either::Left(base.layer(WitnessLayer::new()).service(client))
        } else {
            tower::util::Either::Right(base.service(client))
        }
    };

    // Processed, answered 303 to a refusing port: the redirect outside the retry layer makes
    // the hop a GET of its own (retried, idempotent); the POST went once.
    let server = origin().await;
    let err = stack(true).oneshot(post(server.url("/orders"))).await;
    let err = failed(err, "the redirect's hop is refused");
    assert!(err.to_string().contains("onnect"), "{err}");
    assert_eq!(server.hits_for(Method::POST, "/orders"), 1);
    let s = layer.stats();
    assert_eq!(
        (s.requests, s.succeeded),
        (2, 1),
        "the POST's 303 and the GET hop: {s:?}"
    );
    assert_eq!(
        (s.retries, s.gave_up),
        (2, 1),
        "the GET hop is retried: {s:?}"
    );

    // Refused itself, with a witness on the transport: proof of the request's own, retried.
    let gone = support::refused_addr();
    let before = layer.stats();
    let err = stack(true)
        .oneshot(post(format!("http://{gone}/orders")))
        .await;
    let err = failed(err, "nothing listens");
    assert!(err.to_string().contains("onnect"), "{err}");
    let s = layer.stats();
    assert_eq!(s.attempts - before.attempts, 3, "{s:?}");
    assert_eq!(s.unwitnessed, before.unwitnessed, "{s:?}");

    // The same without a witness: no proof tied to the request, sent once and counted.
    let before = layer.stats();
    let err = stack(false)
        .oneshot(post(format!("http://{gone}/orders")))
        .await;
    let err = failed(err, "nothing listens");
    assert!(err.to_string().contains("onnect"), "{err}");
    let s = layer.stats();
    assert_eq!(s.attempts - before.attempts, 1, "{s:?}");
    assert_eq!(s.unwitnessed - before.unwitnessed, 1, "{s:?}");
    assert_eq!(s.not_retried - before.not_retried, 1, "{s:?}");

    // An idempotent request needs no proof: a refused PUT is retried without a witness.
    let before = layer.stats();
    let put = Request::put(format!("http://{gone}/orders/1"))
        .body(Full::new(Bytes::from_static(b"order-1")))
        .unwrap();
    failed(stack(false).oneshot(put).await, "nothing listens");
    let s = layer.stats();
    assert_eq!(s.attempts - before.attempts, 3, "{s:?}");
    assert_eq!(s.unwitnessed, before.unwitnessed, "{s:?}");
}

/// The error of a result that must have failed (the response types here have no `Debug`).
fn failed<T, E>(result: Result<T, E>, why: &str) -> E {
    match result {
        Ok(_) => panic!("answered, expected an error: {why}"),
        Err(e) => e,
    }
}

/// The proof over multi-request layers, as a property. Between the retry layer and the
/// witness, a layer sends one to three requests per call and returns the last answer: the
/// first is the request it was given; later ones are either copies with its extensions, sent
/// whatever the answer (a hedge, an auth refresh), or, like a redirect follower's hops, sent
/// only after a response, with or without its extensions (tower-http 0.7 carries them, 0.6
/// does not). Whatever the transport answers, a POST is sent again only after an attempt in
/// which its one request reached the transport and was refused unprocessed; and such a POST
/// is sent again.
mod property {
    use std::error::Error;
    use std::fmt;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{Empty, Full};
    use proptest::prelude::*;
    use tower::{Layer, Service, ServiceExt};
    use tower_negative_cache::StatusAwareRetryLayer;
    use tower_negative_cache::classify::Outcome;
    use tower_negative_cache::retry::{Jitter, WitnessLayer};

    type BoxError = Box<dyn Error + Send + Sync>;

    #[derive(Debug)]
    struct Refused;

    impl fmt::Display for Refused {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("refused before processing")
        }
    }

    impl Error for Refused {}

    fn refusals(e: &BoxError) -> Option<Outcome> {
        e.is::<Refused>().then_some(Outcome::UNPROCESSED)
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Answer {
        Refused,
        Status(u16),
    }

    fn answer() -> impl Strategy<Value = Answer> {
        prop_oneof![
            3 => Just(Answer::Refused),
            1 => Just(Answer::Status(303)),
            1 => Just(Answer::Status(503)),
            1 => Just(Answer::Status(200)),
        ]
    }

    /// (attempt, answer) for every request that reached the transport.
    type Log = Arc<Mutex<Vec<(usize, Answer)>>>;

    fn run(script: Vec<Answer>, hops: Vec<(usize, bool)>) -> Result<(), TestCaseError> {
        let log: Log = Arc::default();
        let (l, script) = (log.clone(), Arc::new(script));
        let attempt = Arc::new(Mutex::new(0usize));
        let a = attempt.clone();
        let transport = tower::service_fn(move |_req: Request<Full<Bytes>>| {
            let mut log = l.lock().unwrap();
            let answer = script
                .get(log.len())
                .copied()
                .unwrap_or(Answer::Status(200));
            log.push((*a.lock().unwrap(), answer));
            async move {
                match answer {
                    Answer::Refused => Err::<Response<Empty<Bytes>>, BoxError>(Box::new(Refused)),
                    Answer::Status(s) => {
                        let mut res = Response::new(Empty::new());
                        *res.status_mut() = http::StatusCode::from_u16(s).unwrap();
                        Ok(res)
                    }
                }
            }
        });
        let witnessed = WitnessLayer::new()
            .error_classifier(refusals)
            .layer(transport);
        let (hops, calls) = (Arc::new(hops), Arc::new(Mutex::new(0usize)));
        let multi = tower::service_fn(move |req: Request<Full<Bytes>>| {
            let mut inner = witnessed.clone();
            let (hops, calls, attempt) = (hops.clone(), calls.clone(), attempt.clone());
            async move {
                let n = {
                    let mut c = calls.lock().unwrap();
                    *c += 1;
                    *c - 1
                };
                *attempt.lock().unwrap() = n;
                let (k, keep_extensions) = hops.get(n).copied().unwrap_or((1, true));
                let (parts, body) = req.into_parts();
                let mut last: Option<Result<_, BoxError>> = None;
                for i in 0..k {
                    // Without the extensions, a hop: only after a response.
                    if !keep_extensions && last.as_ref().is_some_and(|r| r.is_err()) {
                        break;
                    }
                    let mut next = Request::new(body.clone());
                    *next.method_mut() = parts.method.clone();
                    *next.uri_mut() = parts.uri.clone();
                    if i == 0 || keep_extensions {
                        *next.extensions_mut() = parts.extensions.clone();
                    }
                    last = Some(inner.ready().await?.call(next).await);
                }
                last.expect("k >= 1")
            }
        });
        let layer = StatusAwareRetryLayer::builder()
            .backoff_base(std::time::Duration::ZERO)
            .jitter(Jitter::None)
            .no_budget()
            .max_retries(3)
            .error_classifier(refusals)
            .build()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let req = Request::post("http://h.test/orders")
            .body(Full::new(Bytes::from_static(b"order")))
            .unwrap();
        let _ = rt.block_on(layer.layer(multi).oneshot(req));
        let log = log.lock().unwrap().clone();
        let attempts = log.iter().map(|(a, _)| a + 1).max().unwrap_or(0);
        prop_assert_eq!(attempts as u64, layer.stats().attempts);
        for a in 0..attempts.saturating_sub(1) {
            let this: Vec<Answer> = log
                .iter()
                .filter(|(i, _)| *i == a)
                .map(|(_, x)| *x)
                .collect();
            prop_assert!(
                this.len() == 1 && this[0] == Answer::Refused,
                "attempt {} was followed by another, though its requests got {:?}",
                a,
                this
            );
        }
        // And one whose single request was refused is sent again (while retries remain).
        let last = attempts - 1;
        let this: Vec<Answer> = log
            .iter()
            .filter(|(i, _)| *i == last)
            .map(|(_, x)| *x)
            .collect();
        if last < 3 {
            prop_assert!(
                !(this.len() == 1 && this[0] == Answer::Refused),
                "a POST refused alone was not sent again: {:?}",
                log
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn a_post_is_resent_only_when_its_one_request_was_refused(
            script in proptest::collection::vec(answer(), 0..12),
            hops in proptest::collection::vec((1usize..=3, any::<bool>()), 0..5),
        ) {
            run(script, hops)?;
        }
    }
}
