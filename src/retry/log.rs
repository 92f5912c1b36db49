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

    /// The host it went to (`server.address`), without userinfo or port.
    pub(crate) fn host(self) -> Shown<&'a str> {
        Shown(self.0.and_then(|t| t.1.host()))
    }

    pub(crate) fn uri(self) -> Shown<Redacted<'a>> {
        Shown(self.0.map(|t| Redacted(t.1)))
    }
}

/// A URI without its userinfo: `http://user:password@host/` is shown as `http://host/`, as
/// reqwest shows URLs in its errors. Logs are read by more people than hold the password.
pub(crate) struct Redacted<'a>(&'a Uri);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = self.0;
        let Some(authority) = uri.authority().map(|a| a.as_str()) else {
            return uri.fmt(f);
        };
        // RFC 3986 §3.2: the userinfo ends at the authority's last `@` (a host has none).
        let Some(at) = authority.rfind('@') else {
            return uri.fmt(f);
        };
        // As `Uri`'s own `Display`, but for the userinfo.
        if let Some(scheme) = uri.scheme() {
            write!(f, "{scheme}://")?;
        }
        f.write_str(&authority[at + 1..])?;
        f.write_str(uri.path())?;
        if let Some(query) = uri.query() {
            write!(f, "?{query}")?;
        }
        Ok(())
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
        match crate::classify::as_dyn_error(self.0) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_userinfo_is_never_shown() {
        for (uri, shown) in [
            ("http://alice:pw@h.test/r?q=1", "http://h.test/r?q=1"),
            ("http://alice@h.test:8080/", "http://h.test:8080/"),
            ("http://a:b@c@h.test/", "http://h.test/"),
            ("http://h.test/r", "http://h.test/r"),
            ("/r?q", "/r?q"),
            ("h.test:443", "h.test:443"),
        ] {
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(Redacted(&uri).to_string(), shown);
        }
    }
}
