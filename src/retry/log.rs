//! What the retry layer's log events say about a request: its method and URI, and an error's
//! text.

use std::fmt;

use http::{HeaderMap, HeaderValue, Method, Request, Uri, header::HOST};

/// A request's method and URI, kept for log events when no copy of the request is; and its
/// `Host` field when the URI names no host (origin-form, a forwarding proxy's request).
pub(crate) struct Head {
    method: Method,
    uri: Uri,
    host: Option<HeaderValue>,
}

impl Head {
    /// The head of `req`, if a debug event could show it.
    pub(crate) fn for_logs<B>(req: &Request<B>) -> Option<Box<Head>> {
        tracing::enabled!(tracing::Level::DEBUG).then(|| {
            Box::new(Head {
                method: req.method().clone(),
                uri: req.uri().clone(),
                host: host_field(req),
            })
        })
    }
}

/// `req`'s `Host` field, when its URI names no host.
fn host_field<B>(req: &Request<B>) -> Option<HeaderValue> {
    match req.uri().host() {
        Some(_) => None,
        None => req.headers().get(HOST).cloned(),
    }
}

/// Where an attempt went, for log events: from the request's copy, or its kept head.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a>(Option<(&'a Method, &'a Uri, Field<'a>)>);

/// Where a target's `Host` field is: looked up only when an event shows the host (every
/// answer makes a `Target`; few are shown).
#[derive(Clone, Copy)]
enum Field<'a> {
    In(&'a HeaderMap),
    Kept(Option<&'a HeaderValue>),
}

impl<'a> Target<'a> {
    pub(crate) fn of<B>(replay: Option<&'a Request<B>>, head: Option<&'a Head>) -> Self {
        Target(
            replay
                .map(|r| (r.method(), r.uri(), Field::In(r.headers())))
                .or(head.map(|h| (&h.method, &h.uri, Field::Kept(h.host.as_ref())))),
        )
    }

    pub(crate) fn method(self) -> Shown<&'a Method> {
        Shown(self.0.map(|t| t.0))
    }

    /// The host it went to (`server.address`), without userinfo or port: the URI's, else the
    /// `Host` field's (RFC 9110 §7.2), as the per-host budget and the cache's hit event take it.
    pub(crate) fn host(self) -> Shown<&'a str> {
        Shown(self.0.and_then(|(_, uri, field)| {
            uri.host().or_else(|| {
                let field = match field {
                    Field::In(headers) => headers.get(HOST),
                    Field::Kept(value) => value,
                };
                field.and_then(|f| f.to_str().ok()).and_then(host_of_field)
            })
        }))
    }

    pub(crate) fn uri(self) -> Shown<Redacted<'a>> {
        Shown(self.0.map(|t| Redacted(t.1)))
    }
}

/// The host of a `Host` field's `host[:port]`, without allocating: an IP-literal keeps its
/// brackets (as `Uri::host` does); `None` when there is none.
fn host_of_field(field: &str) -> Option<&str> {
    // A userinfo has no place in `Host`; should one come, it is not the host.
    let field = field.rsplit('@').next().unwrap_or(field).trim();
    let host = if field.starts_with('[') {
        &field[..field.find(']')? + 1]
    } else {
        match field.rfind(':') {
            Some(colon) if field[colon + 1..].bytes().all(|b| b.is_ascii_digit()) => {
                &field[..colon]
            }
            _ => field,
        }
    };
    (!host.is_empty()).then_some(host)
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
    fn a_host_fields_host_is_shown_without_port_or_userinfo() {
        for (field, host) in [
            ("records.internal", Some("records.internal")),
            ("records.internal:8080", Some("records.internal")),
            ("127.0.0.1:3000", Some("127.0.0.1")),
            ("[::1]:3000", Some("[::1]")),
            ("[::1]", Some("[::1]")),
            ("user:pw@h.test:80", Some("h.test")),
            ("", None),
            (":80", None),
            ("[::1", None),
        ] {
            assert_eq!(host_of_field(field), host, "{field}");
        }
    }

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
