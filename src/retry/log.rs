//! What the retry layer's log events say about a request: its method and URI, and an error's
//! text.

use std::fmt;

use http::{Method, Request, Uri};

/// A request's method and URI, kept for log events when no copy of the request is.
pub(crate) struct Head {
    method: Method,
    uri: Uri,
}

impl Head {
    /// The head of `req`, if a debug event could show it.
    pub(crate) fn for_logs<B>(req: &Request<B>) -> Option<Box<Head>> {
        tracing::enabled!(tracing::Level::DEBUG).then(|| {
            Box::new(Head {
                method: req.method().clone(),
                uri: req.uri().clone(),
            })
        })
    }
}

/// Where an attempt went, for log events: from the request's copy, or its kept head.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a>(Option<(&'a Method, &'a Uri)>);

impl<'a> Target<'a> {
    pub(crate) fn of<B>(replay: Option<&'a Request<B>>, head: Option<&'a Head>) -> Self {
        Target(
            replay
                .map(|r| (r.method(), r.uri()))
                .or(head.map(|h| (&h.method, &h.uri))),
        )
    }

    pub(crate) fn method(self) -> Shown<&'a Method> {
        Shown(self.0.map(|t| t.0))
    }

    pub(crate) fn uri(self) -> Shown<&'a Uri> {
        Shown(self.0.map(|t| t.1))
    }
}

/// An optional value in a log event: `-` when unknown.
pub(crate) struct Shown<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for Shown<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(t) => t.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// An error's text for log events: its message and its sources', or its type name when it is
/// not an error type the `source()` walk can read.
pub(crate) struct ErrorText<'a, E>(pub(crate) &'a E);

impl<E: 'static> fmt::Display for ErrorText<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match crate::classify::as_error(self.0) {
            Some(e) => {
                write!(f, "{e}")?;
                let mut next = e.source();
                while let Some(s) = next {
                    write!(f, ": {s}")?;
                    next = s.source();
                }
                Ok(())
            }
            None => write!(f, "an error of type {}", std::any::type_name::<E>()),
        }
    }
}
