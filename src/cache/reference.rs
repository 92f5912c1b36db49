//! Resolving a `Location` or `Content-Location` against the request's target (RFC 3986 §5.2),
//! so that a write forgets what its answer names, however the origin spells it. Pure.

/// A target as parts: scheme (empty for an origin-form target keyed by its `Host`),
/// authority, and path with query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) scheme: String,
    pub(crate) authority: String,
    pub(crate) pq: String,
}

/// The parts of a URI reference (RFC 3986 §4.1), fragment dropped.
struct Parts<'a> {
    scheme: Option<&'a str>,
    authority: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
}

/// RFC 3986 Appendix B, by hand: `^(([^:/?#]+):)?(//([^/?#]*))?([^?#]*)(\?([^#]*))?(#(.*))?`.
fn split(r: &str) -> Parts<'_> {
    let r = r.split('#').next().unwrap_or("");
    let (scheme, rest) = match r.find([':', '/', '?']) {
        Some(i) if i > 0 && r.as_bytes()[i] == b':' => (Some(&r[..i]), &r[i + 1..]),
        _ => (None, r),
    };
    let (authority, rest) = match rest.strip_prefix("//") {
        Some(a) => {
            let end = a.find(['/', '?']).unwrap_or(a.len());
            (Some(&a[..end]), &a[end..])
        }
        None => (None, rest),
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    Parts {
        scheme,
        authority,
        path,
        query,
    }
}

/// RFC 3986 §5.2.4.
pub(crate) fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let absolute = path.starts_with('/');
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        if i == 0 && absolute {
            continue;
        }
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut s = String::with_capacity(path.len());
    if absolute {
        s.push('/');
    }
    s.push_str(&out.join("/"));
    if trailing_slash && !s.ends_with('/') {
        s.push('/');
    }
    s
}

/// `reference` resolved against `base` (RFC 3986 §5.2.2, non-strict), or `None` when the
/// reference is not valid UTF-8 text or the base has no path.
pub(crate) fn resolve(base: &Target, reference: &str) -> Option<Target> {
    let r = split(reference.trim());
    let with_query = |path: String, q: Option<&str>| match q {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    if let Some(scheme) = r.scheme {
        return Some(Target {
            scheme: scheme.to_ascii_lowercase(),
            authority: r.authority.unwrap_or("").to_owned(),
            pq: with_query(remove_dot_segments(r.path), r.query),
        });
    }
    if let Some(authority) = r.authority {
        return Some(Target {
            scheme: base.scheme.clone(),
            authority: authority.to_owned(),
            pq: with_query(remove_dot_segments(r.path), r.query),
        });
    }
    let (base_path, base_query) = match base.pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (base.pq.as_str(), None),
    };
    let pq = if r.path.is_empty() {
        with_query(base_path.to_owned(), r.query.or(base_query))
    } else if r.path.starts_with('/') {
        with_query(remove_dot_segments(r.path), r.query)
    } else {
        // §5.2.3: merge with the base path up to its last '/'.
        let merged = match base_path.rfind('/') {
            Some(i) => format!("{}{}", &base_path[..=i], r.path),
            None => format!("/{}", r.path),
        };
        with_query(remove_dot_segments(&merged), r.query)
    };
    Some(Target {
        scheme: base.scheme.clone(),
        authority: base.authority.clone(),
        pq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Target {
        Target {
            scheme: "http".into(),
            authority: "a".into(),
            pq: "/b/c/d;p?q".into(),
        }
    }

    fn r(reference: &str) -> String {
        let t = resolve(&base(), reference).unwrap();
        match (t.scheme.as_str(), t.authority.as_str()) {
            ("", "") => t.pq,
            (s, a) => format!("{s}://{a}{}", t.pq),
        }
    }

    /// RFC 3986 §5.4.1 and §5.4.2, every example that names a target (fragments dropped).
    #[test]
    fn rfc_3986_examples() {
        for (reference, want) in [
            ("g", "http://a/b/c/g"),
            ("./g", "http://a/b/c/g"),
            ("g/", "http://a/b/c/g/"),
            ("/g", "http://a/g"),
            ("//g", "http://g"),
            ("?y", "http://a/b/c/d;p?y"),
            ("g?y", "http://a/b/c/g?y"),
            ("#s", "http://a/b/c/d;p?q"),
            ("g#s", "http://a/b/c/g"),
            (";x", "http://a/b/c/;x"),
            ("", "http://a/b/c/d;p?q"),
            (".", "http://a/b/c/"),
            ("./", "http://a/b/c/"),
            ("..", "http://a/b/"),
            ("../", "http://a/b/"),
            ("../g", "http://a/b/g"),
            ("../..", "http://a/"),
            ("../../", "http://a/"),
            ("../../g", "http://a/g"),
            ("../../../g", "http://a/g"),
            ("/./g", "http://a/g"),
            ("/../g", "http://a/g"),
            ("g.", "http://a/b/c/g."),
            (".g", "http://a/b/c/.g"),
            ("./../g", "http://a/b/g"),
            ("./g/.", "http://a/b/c/g/"),
            ("g/./h", "http://a/b/c/g/h"),
            ("g/../h", "http://a/b/c/h"),
            ("g;x=1/./y", "http://a/b/c/g;x=1/y"),
            ("g?y/./x", "http://a/b/c/g?y/./x"),
            ("http://other/x/../y", "http://other/y"),
            ("HTTP://a/z", "http://a/z"),
        ] {
            assert_eq!(r(reference), want, "{reference}");
        }
    }

    #[test]
    fn never_panics() {
        for reference in [
            "", ":", "::", "?", "//", "///", "a:b:c", "%", "/..", "../../..", "?#",
        ] {
            let _ = resolve(&base(), reference);
        }
    }
}
