//! Errors of the user's own type: a stack that maps the client's errors into an enum of its own
//! (`map_err`) against a real refused connection (a port bound on 127.0.0.1 and released).
//! Without rules over that enum the refusal can't be recognised: it is returned at once, and
//! counted and warned about (once per type); with an `error_classifier` it is retried.

#[path = "support/events.rs"]
mod events;
mod support;

use std::error::Error;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;

use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_negative_cache::StatusAwareRetryLayer;
use tower_negative_cache::classify::{Outcome, recognise_error};
use tower_negative_cache::retry::Jitter;
use tracing::Level;

/// The application's error type, as a service stack might map hyper-util's into.
#[derive(Debug)]
enum AppError {
    Transport(hyper_util::client::legacy::Error),
    #[allow(dead_code)]
    Decode,
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::Transport(e) => write!(f, "transport: {e}"),
            AppError::Decode => f.write_str("decode"),
        }
    }
}

impl Error for AppError {}

/// An address where nothing listens: bound, then released.
async fn refused() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

fn quick() -> tower_negative_cache::retry::Builder {
    StatusAwareRetryLayer::builder()
        .backoff_base(Duration::from_millis(1))
        .jitter(Jitter::None)
        .no_budget()
}

#[tokio::test]
async fn a_refused_connection_in_a_user_enum_is_retried_with_an_error_classifier() {
    let addr = refused().await;
    let layer = quick()
        .error_classifier(|e: &AppError| match e {
            AppError::Transport(e) => recognise_error(e),
            AppError::Decode => Some(Outcome::Fatal),
        })
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .map_err(AppError::Transport)
        .service(support::client());
    let err = svc
        .oneshot(support::get(&format!("http://{addr}/r")))
        .await
        .unwrap_err();
    let AppError::Transport(e) = &err else {
        panic!("{err:?}")
    };
    assert!(e.is_connect(), "{e:?}");
    let s = layer.stats();
    assert_eq!((s.attempts, s.retries, s.gave_up), (3, 2, 1), "{s:?}");
    assert_eq!((s.unrecognised_errors, s.failed), (0, 0), "{s:?}");
}

#[tokio::test]
async fn unrecognised_errors_are_counted_and_warned_once_per_type() {
    let (events, _guard) = events::capture();
    let addr = refused().await;
    let url = format!("http://{addr}/r");
    let layer = quick().build().unwrap();
    // The default source() walk can't see into AppError: the refusal is Fatal, sent once.
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .map_err(AppError::Transport)
        .service(support::client());
    for _ in 0..3 {
        let err = svc.clone().oneshot(support::get(&url)).await.unwrap_err();
        assert!(matches!(err, AppError::Transport(_)), "{err:?}");
    }
    // A boxed error whose chain holds nothing known: also unrecognised, another type.
    let boxed = layer.layer(tower::service_fn(|_: http::Request<()>| async {
        Err::<http::Response<Empty<Bytes>>, Box<dyn Error + Send + Sync>>("no such tenant".into())
    }));
    for _ in 0..2 {
        let err = boxed.clone().oneshot(http::Request::new(())).await;
        assert!(err.is_err());
    }
    // A recognised error is neither: a refused connection as hyper-util reports it.
    let plain = layer.layer(support::client());
    let err = plain.oneshot(support::get(&url)).await.unwrap_err();
    assert!(err.is_connect());

    let s = layer.stats();
    assert_eq!(s.unrecognised_errors, 5, "{s:?}");
    assert_eq!((s.failed, s.gave_up), (5, 1), "{s:?}");
    assert_eq!(
        s.attempts,
        3 + 2 + 3,
        "only the recognised refusal was retried: {s:?}"
    );
    let warns = events.at(Level::WARN);
    let types: Vec<_> = warns.iter().map(|w| w.get("error_type").unwrap()).collect();
    assert_eq!(types.len(), 2, "one warning per error type: {warns:?}");
    assert!(types[0].ends_with("AppError"), "{types:?}");
    assert!(types[1].contains("dyn core::error::Error"), "{types:?}");
    // The boxed error's text is in its warning.
    assert_eq!(warns[1].get("error"), Some("no such tenant"));
}
