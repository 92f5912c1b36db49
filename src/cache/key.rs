//! Cache keys: the normalised request target, or the application's own id.
//!
//! A lookup of the default key borrows from the request's URI (no allocation): [`KeyRef`]
//! hashes and compares like the stored [`Key`] it stands for. Only a URI that needs rewriting
//! to be normalised (an upper-case scheme or host, an absolute URI without a path, a
//! percent-escape in lower-case hex or of an unreserved character: see `percent`) is copied.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use quick_cache::Equivalent;

use super::percent::{normal_host, pct_normal, pct_normalise};
use super::reference::remove_dot_segments;

/// Maps a request target to the application's own key; `None` leaves the request uncached.
pub(crate) type KeyFn = Arc<dyn Fn(&Uri) -> Option<String> + Send + Sync>;

/// What to do with requests that carry credentials (`Authorization`, `Cookie`, or a userinfo
/// `user:password@` in the URI).
///
/// A 404 can mean "not yours" (GitHub answers 404 for private resources), so a negative
/// answer must never be shared across credentials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credentials {
    /// Neither served from nor stored in the cache (the default).
    #[default]
    Bypass,
    /// Cached under a fingerprint of the credentials: a 64-bit hash keyed by a random secret
    /// of the cache, so two credentials collide with probability 2^-63 and nobody can pick a
    /// colliding one. An invalidation (a successful write, a handle call) must then find the
    /// entry under every credential, so it visits every entry: O(capacity) per write.
    Fingerprint,
}

/// A stored key: `{scheme}://{host}{:port}{path?query}` (`//{host}{:port}{path?query}` for an
/// origin-form target with a `Host` header, just `{path?query}` without one, or the
/// application's id), plus the fingerprint of the credentials it was
/// fetched with (0: none). 32 bytes: the text, three offsets into it and the port (kept, not
/// parsed from the text at every comparison).
#[derive(Clone, Debug)]
pub(crate) struct Key {
    text: Box<str>,
    scheme_end: u16,
    host_end: u16,
    /// 0 when there is no `scheme://host` prefix; then the whole text is path and query.
    pq_start: u16,
    /// The port as written in the text (0: none, the scheme's default).
    port: u16,
    cred: u64,
}

/// The parts of a key, borrowed: what hashing and equality look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyRef<'a> {
    scheme: &'a str,
    host: &'a str,
    port: u16,
    pq: &'a str,
    cred: u64,
}

impl KeyRef<'_> {
    /// The length of the key's text, as [`Key::from_parts`] writes it.
    fn text_len(&self) -> usize {
        if self.scheme.is_empty() && self.host.is_empty() {
            return self.pq.len();
        }
        let port_len = match self.port {
            0 => 0,
            n => 2 + n.checked_ilog10().unwrap_or(0) as usize,
        };
        let sep = if self.scheme.is_empty() { 2 } else { 3 };
        self.scheme.len() + sep + self.host.len() + port_len + self.pq.len()
    }
}

/// The process's secret seed for [`KeyRef::target_hash`]: a key is hashed into a keyed 64-bit
/// value that the structures keyed by targets hash again as an integer. On a lookup it is
/// computed once ([`Hashed`]) and shared by the store and the reads in flight (`Versions`).
/// Random per process: nobody can choose targets that collide.
static TARGET_SEED: std::sync::LazyLock<quick_cache::DefaultHashBuilder> =
    std::sync::LazyLock::new(Default::default);

impl KeyRef<'_> {
    /// The keyed hash of the target (the credentials aside): what every structure keyed by a
    /// target hashes, computed once per request where it can be ([`Hashed`]).
    pub(crate) fn target_hash(&self) -> u64 {
        let mut h = TARGET_SEED.build_hasher();
        // Each part with its length, so that no two splits of one text hash alike.
        h.write_usize(self.scheme.len());
        h.write(self.scheme.as_bytes());
        h.write_usize(self.host.len());
        h.write(self.host.as_bytes());
        h.write_u16(self.port);
        h.write(self.pq.as_bytes());
        h.finish()
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.target_hash());
        state.write_u64(self.cred);
    }
}

/// What the store's lookups take: a hash of the target a key names ([`KeyRef::target_hash`])
/// and its credentials (or partition), which the store's presence counts are kept by. Equal
/// keys have equal presence hashes, whatever type spells them.
pub(crate) trait Targeted {
    fn presence_hash(&self) -> u64;
}

/// The target's hash, with the credential mixed in (a key without one keeps the target's):
/// one target held under many credentials spreads like as many targets.
fn presence_hash(target: u64, cred: u64) -> u64 {
    target ^ cred.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
}

impl Targeted for KeyRef<'_> {
    fn presence_hash(&self) -> u64 {
        presence_hash(self.target_hash(), self.cred)
    }
}

impl Targeted for Key {
    fn presence_hash(&self) -> u64 {
        self.parts().presence_hash()
    }
}

impl Targeted for Lookup<'_> {
    fn presence_hash(&self) -> u64 {
        presence_hash(self.target().target_hash(), self.cred())
    }
}

impl Targeted for Hashed<'_> {
    fn presence_hash(&self) -> u64 {
        presence_hash(self.target, self.key.cred())
    }
}

/// A key to look up with its target's hash computed already ([`KeyRef::target_hash`]): hashes
/// and compares as the key it stands for, without scanning its text again.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hashed<'a> {
    pub(crate) key: &'a Lookup<'a>,
    pub(crate) target: u64,
}

impl<'a> Hashed<'a> {
    pub(crate) fn of(key: &'a Lookup<'a>) -> Self {
        Hashed {
            key,
            target: key.target().target_hash(),
        }
    }
}

impl Hash for Hashed<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.target);
        state.write_u64(self.key.cred());
    }
}

impl Equivalent<Key> for Hashed<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.key.equivalent(key)
    }
}

impl Key {
    fn parts(&self) -> KeyRef<'_> {
        let t = &*self.text;
        let (scheme_end, host_end, pq_start) = (
            usize::from(self.scheme_end),
            usize::from(self.host_end),
            usize::from(self.pq_start),
        );
        if pq_start == 0 {
            return KeyRef {
                scheme: "",
                host: "",
                port: 0,
                pq: t,
                cred: self.cred,
            };
        }
        // `scheme://host` or, for an origin-form target keyed by its Host, `//host`.
        let host_start = if scheme_end == 0 { 2 } else { scheme_end + 3 };
        KeyRef {
            scheme: &t[..scheme_end],
            host: &t[host_start..host_end],
            port: self.port,
            pq: &t[pq_start..],
            cred: self.cred,
        }
    }

    /// The credential fingerprint the key was stored under (0: none).
    pub(crate) fn cred(&self) -> u64 {
        self.cred
    }

    /// The key as text: what `invalidate_if` predicates see.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// The target this key names, whatever the credentials it was stored with.
    pub(crate) fn target(&self) -> KeyRef<'_> {
        KeyRef {
            cred: 0,
            ..self.parts()
        }
    }

    /// The target this key names, under the credential (or partition) `cred`.
    pub(crate) fn under(&self, cred: u64) -> KeyRef<'_> {
        KeyRef {
            cred,
            ..self.parts()
        }
    }

    /// Whether both keys name the same target, whatever their credentials.
    pub(crate) fn same_target(&self, other: &Key) -> bool {
        KeyRef {
            cred: 0,
            ..self.parts()
        } == KeyRef {
            cred: 0,
            ..other.parts()
        }
    }

    /// The application's own id as a key.
    pub(crate) fn id(id: String, cred: u64) -> Option<Key> {
        u16::try_from(id.len()).ok()?;
        Some(Key {
            text: id.into(),
            scheme_end: 0,
            host_end: 0,
            pq_start: 0,
            port: 0,
            cred,
        })
    }

    fn from_parts(p: KeyRef<'_>) -> Option<Key> {
        use std::fmt::Write;
        if p.scheme.is_empty() && p.host.is_empty() {
            return Key::id(p.pq.to_owned(), p.cred);
        }
        let sep = if p.scheme.is_empty() { "//" } else { "://" };
        let len = p.text_len();
        // Exactly sized, so turning it into a `Box<str>` does not reallocate.
        let mut text = String::with_capacity(len);
        text.push_str(p.scheme);
        text.push_str(sep);
        text.push_str(p.host);
        let host_end = text.len();
        if p.port != 0 {
            let _ = write!(text, ":{}", p.port);
        }
        let pq_start = text.len();
        text.push_str(p.pq);
        debug_assert_eq!(text.len(), len);
        let small = |n: usize| u16::try_from(n).ok();
        small(len)?;
        Some(Key {
            scheme_end: small(p.scheme.len())?,
            host_end: small(host_end)?,
            pq_start: small(pq_start)?,
            port: p.port,
            cred: p.cred,
            text: text.into_boxed_str(),
        })
    }

    #[cfg(test)]
    pub(crate) fn with_text(text: &str) -> Key {
        Key::id(text.to_owned(), 0).unwrap()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}
impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state)
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        *self == key.parts()
    }
}

/// A key to look up: borrowed from the request where possible.
#[derive(Debug)]
pub(crate) enum Lookup<'a> {
    Borrowed(KeyRef<'a>),
    Owned(Key),
}

impl Lookup<'_> {
    /// The credential fingerprint (or partition) the key is looked up under.
    pub(crate) fn cred(&self) -> u64 {
        match self {
            Lookup::Borrowed(r) => r.cred,
            Lookup::Owned(k) => k.cred,
        }
    }

    /// The origin the key names: scheme, host and port as normalised (port 0: the default).
    pub(crate) fn origin(&self) -> (&str, &str, u16) {
        let p = match self {
            Lookup::Borrowed(r) => *r,
            Lookup::Owned(k) => k.parts(),
        };
        (p.scheme, p.host, p.port)
    }

    pub(crate) fn to_key(&self) -> Option<Key> {
        match self {
            Lookup::Borrowed(r) => Key::from_parts(*r),
            Lookup::Owned(k) => Some(k.clone()),
        }
    }

    /// Whether [`to_key`](Self::to_key) makes a key, without making it: its text fits the
    /// key's 16-bit offsets.
    pub(crate) fn fits(&self) -> bool {
        match self {
            Lookup::Borrowed(r) => u16::try_from(r.text_len()).is_ok(),
            Lookup::Owned(_) => true,
        }
    }

    /// The key's target, credentials aside, as [`Key::target`] gives it.
    pub(crate) fn target(&self) -> KeyRef<'_> {
        match self {
            Lookup::Borrowed(r) => KeyRef { cred: 0, ..*r },
            Lookup::Owned(k) => k.target(),
        }
    }
}

impl Hash for Lookup<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Lookup::Borrowed(r) => r.hash(state),
            Lookup::Owned(k) => k.hash(state),
        }
    }
}

impl Equivalent<Key> for Lookup<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        match self {
            Lookup::Borrowed(r) => r.equivalent(key),
            Lookup::Owned(k) => k == key,
        }
    }
}

/// The target the origin will see, as parts: the URI's scheme, the authority (the `Host`
/// header for an origin-form target — hyper-util sends it as it is, and the origin resolves
/// the target against it, RFC 9110 §7.2 — else the URI's), and path and query.
///
/// An origin-form target's scheme is not in the request: it is the connection's (RFC 9112
/// §3.3), which only the application knows. `origin_scheme` is what it declared
/// (`Builder::origin_form_scheme`), or empty: then the target is keyed scheme-relative
/// (`//host/path`), apart from any absolute-form key, since `http://h/x` and `https://h/x` are
/// two resources (RFC 9110 §4.2).
///
/// `None` when the target can't be keyed safely: a `Host` header that is not a valid
/// `host[:port]`, or one that names another host than an absolute URI's authority (the
/// connection goes to one, the origin reads the other: keying by either could let one
/// server's answer stand for another's).
pub(crate) fn origin_target<'a>(
    uri: &'a Uri,
    host_header: Option<&'a HeaderValue>,
    origin_scheme: &'a str,
) -> Option<(&'a str, &'a str, &'a str)> {
    let scheme = match uri.scheme_str() {
        Some(s) => s,
        // RFC 9112 §3.2.1, §3.3: origin-form, its authority from `Host`, its scheme the
        // connection's.
        None if uri.authority().is_none() && host_header.is_some() => origin_scheme,
        None => "",
    };
    let pq = uri.path_and_query().map_or("", |pq| pq.as_str());
    let uri_authority = uri.authority().map_or("", |a| a.as_str());
    let authority = match host_header {
        None => uri_authority,
        Some(v) => {
            let host = valid_authority(v)?;
            if !uri_authority.is_empty() && !same_host(scheme, uri_authority, host) {
                return None;
            }
            if uri_authority.is_empty() {
                host
            } else {
                uri_authority
            }
        }
    };
    Some((scheme, authority, pq))
}

/// Whether two authorities name the same host and port, as keys compare them.
fn same_host(scheme: &str, a: &str, b: &str) -> bool {
    let norm = |auth: &str| {
        let (host, port) = host_port(auth);
        let port = match (scheme, port) {
            ("http", Some(80)) | ("https", Some(443)) => None,
            (_, p) => p,
        };
        (host.to_ascii_lowercase(), port)
    };
    norm(a) == norm(b)
}

/// The normalised key of the target a request names (see [`origin_target`]), scheme and host
/// lower-case, default port elided, an empty path as `/`, percent-encoding normalised (RFC 3986
/// §6.2.2.1, §6.2.2.2), dot segments removed (§6.2.2.3). `None` when it can't be keyed.
pub(crate) fn uri_key<'a>(
    uri: &'a Uri,
    host_header: Option<&'a HeaderValue>,
    origin_scheme: &'a str,
    cred: u64,
) -> Option<Lookup<'a>> {
    let (scheme, authority, pq) = origin_target(uri, host_header, origin_scheme)?;
    target_key(scheme, authority, pq, cred)
}

/// The key a text names, as [`Key::as_str`] gives it: an absolute URI, an origin-form target
/// keyed by its host (`//host/path`), or a path.
pub(crate) fn text_key(text: &str) -> Option<Key> {
    if let Some(rest) = text.strip_prefix("//") {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let pq = if end == rest.len() { "/" } else { &rest[end..] };
        return target_key("", &rest[..end], pq, 0)?.to_key();
    }
    let uri: Uri = text.parse().ok()?;
    uri_key(&uri, None, "", 0)?.to_key()
}

/// The normalised key of a target given as its parts (`authority` may hold a userinfo, which
/// is not part of the key).
pub(crate) fn target_key<'a>(
    scheme: &'a str,
    authority: &'a str,
    pq: &'a str,
    cred: u64,
) -> Option<Lookup<'a>> {
    // The commonest authority — a lower-case host name alone — is told in one pass.
    let plain = plain_host(authority);
    let (host, port) = if plain {
        (authority, None)
    } else {
        host_port(authority)
    };
    let port = match (scheme, port) {
        ("http", Some(80)) | ("https", Some(443)) | (_, None) => 0,
        (_, Some(p)) => p,
    };
    if scheme.len() + host.len() + pq.len() + 9 > usize::from(u16::MAX) {
        return None;
    }
    // An absolute URI's path-and-query must start with '/' ("http://a" and "http://a?q" don't).
    let no_authority = scheme.is_empty() && host.is_empty();
    let pq_ok = no_authority || pq.starts_with('/');
    let upper = |s: &str| s.bytes().any(|b| b.is_ascii_uppercase());
    // A host with a percent-escape is rare: it takes the copying path (see `normal_host`).
    let host_ok = plain || (!upper(host) && !host.contains('%'));
    if pq_ok
        && !upper(scheme)
        && host_ok
        && pct_normal(pq)
        && dot_free(pq)
        && !(no_authority && pq.starts_with("//"))
    {
        return Some(Lookup::Borrowed(KeyRef {
            scheme,
            host,
            port,
            pq,
            cred,
        }));
    }
    let (scheme, host) = (scheme.to_ascii_lowercase(), normal_host(host)?);
    let pq = pct_normalise(pq)?;
    let pq = if pq_ok { pq } else { format!("/{pq}") };
    // After the escapes are decoded: `%2E%2E` is `..` (RFC 3986 §6.2.2.2, then §6.2.2.3).
    let pq = without_dot_segments(pq);
    // RFC 3986 §3.3: without an authority a path can't begin with `//` (a key's text would
    // read it as one: `//evil.test/x` is the key of `/x` with `Host: evil.test`). Such a
    // target (`//x`, or `/.//x` once its dot segments are gone) is not keyed.
    if no_authority && pq.starts_with("//") {
        return None;
    }
    Key::from_parts(KeyRef {
        scheme: &scheme,
        host: &host,
        port,
        pq: &pq,
        cred,
    })
    .map(Lookup::Owned)
}

/// `pq` with the dot segments of its path removed (RFC 3986 §6.2.2.3, §5.2.4); its query as
/// it is.
fn without_dot_segments(pq: String) -> String {
    if dot_free(&pq) {
        return pq;
    }
    let (path, query) = pq
        .split_once('?')
        .map_or((&pq[..], None), |(p, q)| (p, Some(q)));
    let path = remove_dot_segments(path);
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}

/// The URI a key function is given: `uri` itself when it is normal (path and query:
/// [`pct_normal`], no dot segment; authority: [`normal_authority`]); else a copy normalised as
/// keys are, so that every spelling of one target gives the key function the same URI (RFC
/// 3986 §6.2.2, §6.2.3). `None` if the copy won't parse.
pub(crate) fn normal_uri(uri: &Uri) -> Option<std::borrow::Cow<'_, Uri>> {
    use std::borrow::Cow;
    let pq = uri.path_and_query().map_or("", |pq| pq.as_str());
    let scheme = uri.scheme_str().unwrap_or("");
    let authority = uri.authority().map_or("", |a| a.as_str());
    let pq_normal = pct_normal(pq) && dot_free(pq);
    // A lower-case host alone (most) is told in one pass.
    let authority = (!plain_host(authority))
        .then(|| normal_authority(scheme, authority))
        .flatten();
    if pq_normal && authority.is_none() {
        return Some(Cow::Borrowed(uri));
    }
    let mut parts = uri.clone().into_parts();
    if !pq_normal {
        parts.path_and_query = Some(without_dot_segments(pct_normalise(pq)?).parse().ok()?);
    }
    if let Some(a) = authority {
        parts.authority = Some(a.parse().ok()?);
    }
    Uri::from_parts(parts).ok().map(Cow::Owned)
}

/// `authority` as keys compare it (RFC 3986 §6.2.2.1, §6.2.3): its host in lower case and the
/// scheme's default port, or an empty one, elided (`H.Test:80` is `h.test` for `http`);
/// `None` if it is so already, or its port is not a number (left as it is). A userinfo is
/// kept as it is.
fn normal_authority(scheme: &str, authority: &str) -> Option<String> {
    let userinfo = authority.rfind('@').map_or("", |i| &authority[..=i]);
    let (host, _) = host_port(authority);
    let port = &authority[userinfo.len() + host.len()..];
    let port = match port.strip_prefix(':') {
        None => "",
        Some("") => ":",
        Some(p) => {
            let n: u16 = p.parse().ok()?;
            match (scheme, n) {
                ("http", 80) | ("https", 443) => ":",
                _ => port,
            }
        }
    };
    if port != ":" && !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let port = if port == ":" { "" } else { port };
    Some(format!("{userinfo}{}{port}", host.to_ascii_lowercase()))
}

/// The URI a key function is given for a request: [`normal_uri`] of its target, and for an
/// origin-form target with a `Host` on connections of a declared scheme
/// (`Builder::origin_form_scheme`) its absolute URI (RFC 9110 §7.1: that scheme, the `Host`
/// and the path), as a resolved `Location` is given ([`target_uri`]): one target, one URI,
/// in either form. `None` (not cached) for a `Host` that is not a valid authority then.
pub(crate) fn key_fn_uri<'a>(
    uri: &'a Uri,
    host: Option<&HeaderValue>,
    origin_scheme: &str,
) -> Option<std::borrow::Cow<'a, Uri>> {
    match host {
        Some(h)
            if uri.scheme().is_none() && uri.authority().is_none() && !origin_scheme.is_empty() =>
        {
            let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
            let absolute = target_uri(origin_scheme, valid_authority(h)?, pq)?;
            Some(std::borrow::Cow::Owned(normal_uri(&absolute)?.into_owned()))
        }
        _ => normal_uri(uri),
    }
}

/// The URI of a target given as parts: absolute with a scheme, else its path and query alone
/// (an origin-form target whose scheme is not known).
pub(crate) fn target_uri(scheme: &str, authority: &str, pq: &str) -> Option<Uri> {
    if scheme.is_empty() {
        pq.parse().ok()
    } else {
        format!("{scheme}://{authority}{pq}").parse().ok()
    }
}

/// Whether the path of `pq` has no `.` or `..` segment (RFC 3986 §6.2.2.3: `/a/./b` and
/// `/a/x/../b` are `/a/b`). Most targets have no `.` at all: one pass without early exit,
/// which the compiler vectorises, tells (a lookup's scan, as `pct_normal`'s).
fn dot_free(pq: &str) -> bool {
    if !pq.bytes().fold(false, |dot, b| dot | (b == b'.')) {
        return true;
    }
    let path = pq.split_once('?').map_or(pq, |(p, _)| p);
    !path.split('/').any(|seg| seg == "." || seg == "..")
}

/// A `Host` header's value, if it is a valid `host[:port]` (RFC 9110 §7.2): a host that is not
/// empty, no userinfo, no path, nothing outside the characters a host may use.
fn valid_authority(v: &HeaderValue) -> Option<&str> {
    let s = v.to_str().ok()?;
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&b));
    (ok && !host_port(s).0.is_empty()).then_some(s)
}

/// Whether `authority` is a host name as a key keeps it: no upper case, no percent-escape, no
/// userinfo, port or IP literal. One pass without early exit, which the compiler vectorises:
/// the lookup's hottest scan.
fn plain_host(authority: &str) -> bool {
    let odd = authority.bytes().fold(false, |odd, b| {
        odd | b.is_ascii_uppercase() | matches!(b, b'%' | b'@' | b':' | b'[')
    });
    !odd
}

/// The host and port of an authority (`user@host:port`, `[v6]:port`), as http's `host()` and
/// `port_u16()` give them, in one backwards scan rather than their several (the lookup's
/// hottest part).
fn host_port(authority: &str) -> (&str, Option<u16>) {
    // One pass from the end: the last ':' seen before the last '@' (if any) is the port's.
    let b = authority.as_bytes();
    let (mut start, mut colon) = (0, None);
    for i in (0..b.len()).rev() {
        match b[i] {
            b'@' => {
                start = i + 1;
                break;
            }
            b':' if colon.is_none() => colon = Some(i),
            _ => {}
        }
    }
    let hostport = &authority[start..];
    let split = if hostport.starts_with('[') {
        hostport
            .find(']')
            .map(|i| i + 1)
            .filter(|&i| hostport[i..].starts_with(':'))
    } else {
        colon.map(|i| i - start)
    };
    match split {
        Some(i) => (&hostport[..i], hostport[i + 1..].parse().ok()),
        None => (hostport, None),
    }
}

/// The userinfo of a URI (`user:password@`), which some clients send as Basic credentials.
fn userinfo(uri: &Uri) -> Option<&str> {
    let a = uri.authority()?.as_str();
    a.bytes().rposition(|c| c == b'@').map(|i| &a[..i])
}

/// The request headers that carry credentials by default (RFC 9110 §11.6.2, §11.7.2; RFC 6265).
pub(crate) const DEFAULT_CREDENTIAL_HEADERS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
];

/// Whether the request carries credentials: one of `names` (by default `Authorization`,
/// `Proxy-Authorization`, `Cookie`), or a userinfo in its URI.
pub(crate) fn has_credentials(uri: &Uri, headers: &HeaderMap, names: &[HeaderName]) -> bool {
    let userinfo =
        |a: &http::uri::Authority| a.as_str().bytes().fold(false, |u, b| u | (b == b'@'));
    (!headers.is_empty() && names.iter().any(|n| headers.contains_key(n)))
        || uri.authority().is_some_and(userinfo)
}

/// A fingerprint of the request's credentials within `partition` (0: none, else a
/// [`partition_tag`]), keyed by a per-cache random secret; without credentials, the partition
/// itself (0 means neither).
///
/// Two different credentials share a fingerprint with probability 2^-63 per pair, and the
/// secret keeps anyone from choosing a colliding credential on purpose. A fingerprint is odd,
/// a partition tag even: neither stands for the other.
pub(crate) fn credential_fingerprint<S: BuildHasher>(
    uri: &Uri,
    headers: &HeaderMap,
    names: &[HeaderName],
    secret: &S,
    partition: u64,
) -> u64 {
    if !has_credentials(uri, headers, names) {
        return partition;
    }
    let mut h = secret.build_hasher();
    h.write_u64(partition);
    // A prefix-free encoding: each value is marked and led by its length, each name's list
    // ends with its own mark. A value's bytes may be anything a field allows (0x80–0xff
    // too), so a separator byte alone would let one value stand for two.
    for name in names {
        for v in headers.get_all(name) {
            h.write_u8(1);
            h.write_u64(v.as_bytes().len() as u64);
            h.write(v.as_bytes());
        }
        h.write_u8(0);
    }
    let userinfo = userinfo(uri).unwrap_or("");
    h.write_u64(userinfo.len() as u64);
    h.write(userinfo.as_bytes());
    h.finish() | 1
}

/// The tag of a partition named `name` inside `parent` (0: the whole store), keyed by the
/// cache's secret: even and never 0, so it is neither "no credentials" nor a fingerprint.
pub(crate) fn partition_tag<S: BuildHasher>(secret: &S, parent: u64, name: &[u8]) -> u64 {
    let mut h = secret.build_hasher();
    h.write_u64(parent);
    h.write(name);
    h.write_u8(0xfd);
    (h.finish() & !1).max(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::RandomState;

    const N: [HeaderName; 3] = DEFAULT_CREDENTIAL_HEADERS;

    fn hash_of<T: Hash>(t: &T) -> u64 {
        // One hasher state for both sides of a comparison.
        thread_local!(static S: RandomState = RandomState::new());
        S.with(|s| s.hash_one(t))
    }

    fn key(uri: &str) -> Key {
        let uri: Uri = uri.parse().unwrap();
        uri_key(&uri, None, "", 0).unwrap().to_key().unwrap()
    }

    #[test]
    fn normalisation() {
        assert_eq!(
            key("HTTP://Example.COM:80/a?b=1").as_str(),
            "http://example.com/a?b=1"
        );
        assert_eq!(
            key("https://example.com:443/a").as_str(),
            "https://example.com/a"
        );
        assert_eq!(
            key("https://example.com:8443/a").as_str(),
            "https://example.com:8443/a"
        );
        assert_eq!(key("http://example.com").as_str(), "http://example.com/");
        assert_eq!(
            key("http://example.com?q").as_str(),
            "http://example.com/?q"
        );
        assert_eq!(key("/records/1?x=2").as_str(), "/records/1?x=2");
        assert_ne!(key("http://a/x"), key("http://a/x?"));
        assert_ne!(key("http://a:81/x"), key("http://a/x"));
    }

    #[test]
    fn borrowed_lookup_matches_the_stored_key() {
        for s in [
            "http://example.com:80/a?b",
            "HTTP://EXAMPLE.com/a?b",
            "http://example.com/a?b",
        ] {
            let uri: Uri = s.parse().unwrap();
            let lookup = uri_key(&uri, None, "", 0).unwrap();
            let stored = key("http://example.com/a?b");
            assert!(lookup.equivalent(&stored), "{s}");
            assert_eq!(hash_of(&lookup), hash_of(&stored), "{s}");
        }
        let plain: Uri = "http://example.com/a?b".parse().unwrap();
        assert!(matches!(
            uri_key(&plain, None, "", 0),
            Some(Lookup::Borrowed(_))
        ));
    }

    #[test]
    fn host_and_port_agree_with_http() {
        for s in [
            "http://a.test/x",
            "http://a.test:8080/x",
            "http://user:pw@a.test:81/x",
            "http://user@a.test/x",
            "http://[::1]:9000/x",
            "http://[::1]/x",
            "http://a.test:/x",
            "a.test:443",
        ] {
            let uri: Uri = s.parse().unwrap();
            let a = uri.authority().unwrap().as_str();
            assert_eq!(host_port(a), (uri.host().unwrap(), uri.port_u16()), "{s}");
        }
    }

    #[test]
    fn keys_are_small_and_exactly_sized() {
        assert_eq!(std::mem::size_of::<Key>(), 32);
        for s in [
            "http://a.test/x",
            "https://a.test:8443/x?y",
            "/only/path",
            "http://a.test:1/",
        ] {
            let k = key(s);
            assert_eq!(k.as_str(), s);
            let uri: Uri = s.parse().unwrap();
            assert!(uri_key(&uri, None, "", 0).unwrap().equivalent(&k), "{s}");
        }
    }

    #[test]
    fn credentials_separate_keys() {
        let secret = RandomState::new();
        let uri: Uri = "http://x/r/1".parse().unwrap();
        let mut a = HeaderMap::new();
        a.insert(header::AUTHORIZATION, "Bearer alice".parse().unwrap());
        let mut b = HeaderMap::new();
        b.insert(header::AUTHORIZATION, "Bearer bob".parse().unwrap());
        let (fa, fb) = (
            credential_fingerprint(&uri, &a, &N, &secret, 0),
            credential_fingerprint(&uri, &b, &N, &secret, 0),
        );
        assert_ne!(fa, 0);
        assert_ne!(fa, fb);
        assert_eq!(
            credential_fingerprint(&uri, &HeaderMap::new(), &N, &secret, 0),
            0
        );
        let (alice, bob): (Uri, Uri) = (
            "http://alice:pw@x/r/1".parse().unwrap(),
            "http://bob:pw@x/r/1".parse().unwrap(),
        );
        assert!(has_credentials(&alice, &HeaderMap::new(), &N));
        let h = HeaderMap::new();
        assert_ne!(
            credential_fingerprint(&alice, &h, &N, &secret, 0),
            credential_fingerprint(&bob, &h, &N, &secret, 0)
        );
        let ka = uri_key(&uri, None, "", fa).unwrap().to_key().unwrap();
        assert!(!uri_key(&uri, None, "", fb).unwrap().equivalent(&ka));
        assert!(!uri_key(&uri, None, "", 0).unwrap().equivalent(&ka));
    }

    #[test]
    fn the_host_header_names_the_authority() {
        let host = |v: &'static str| Some(HeaderValue::from_static(v));
        let k = |uri: &str, h: Option<HeaderValue>| {
            let uri: Uri = uri.parse().unwrap();
            uri_key(&uri, h.as_ref(), "", 0).and_then(|l| l.to_key())
        };
        // Origin-form: keyed by its Host, scheme-relative.
        let a = k("/r/3", host("a.test")).unwrap();
        assert_eq!(a.as_str(), "//a.test/r/3");
        assert_ne!(a, k("/r/3", host("b.test")).unwrap());
        assert_eq!(a, k("/r/3", host("A.Test")).unwrap());
        assert_eq!(
            k("/r/3", host("a.test:8080")).unwrap().as_str(),
            "//a.test:8080/r/3"
        );
        // Without a Host, the path alone.
        assert_eq!(k("/r/3", None).unwrap().as_str(), "/r/3");
        // Absolute form: a Host naming another host is not keyed; the same host in another
        // spelling is.
        assert!(k("http://10.0.0.1/r/3", host("tenant-a.test")).is_none());
        assert_eq!(
            k("http://h/r/3", host("H:80")).unwrap(),
            k("http://h/r/3", None).unwrap()
        );
        // A Host that is not an authority: not keyed.
        for bad in ["", "a b", "u@h", "h/x", "h\\x", ":80", ":"] {
            let v = HeaderValue::from_str(bad).unwrap();
            assert!(k("/r/3", Some(v)).is_none(), "{bad:?}");
        }
        // Every key's text names it again.
        for key in [
            &a,
            &k("http://h:8080/x?y", None).unwrap(),
            &k("/r/3", None).unwrap(),
        ] {
            assert_eq!(
                text_key(key.as_str()).as_ref(),
                Some(key),
                "{}",
                key.as_str()
            );
        }
        // The borrowed lookup of a Host key equals the stored key.
        let uri: Uri = "/r/3".parse().unwrap();
        let h = HeaderValue::from_static("a.test");
        let lookup = uri_key(&uri, Some(&h), "", 0).unwrap();
        assert!(lookup.equivalent(&a));
        assert_eq!(hash_of(&lookup), hash_of(&a));
    }

    /// What a key function is given: the host in lower case, the scheme's default port (or
    /// an empty one) elided, a userinfo and any other port kept (RFC 3986 §6.2.2.1, §6.2.3);
    /// a URI normal already is the request's own.
    #[test]
    fn a_key_functions_uri_has_a_normal_authority() {
        let given = |s: &str| normal_uri(&s.parse().unwrap()).unwrap().to_string();
        for (a, b) in [
            ("http://H.Test:80/x", "http://h.test/x"),
            ("https://h.test:443/x?q=A", "https://h.test/x?q=A"),
            ("http://h.test:443/x", "http://h.test:443/x"),
            ("https://h.test:80/x", "https://h.test:80/x"),
            ("http://h.test:/x", "http://h.test/x"),
            ("http://h.test:8080/x", "http://h.test:8080/x"),
            ("http://Us%45r@H.test:80/x", "http://Us%45r@h.test/x"),
            ("http://u:p@h.test:81/x", "http://u:p@h.test:81/x"),
            ("http://[::FFFF]:80/x", "http://[::ffff]/x"),
            ("http://[::1]:8080/x", "http://[::1]:8080/x"),
            ("HTTP://H.TEST/%7e/./x", "http://h.test/~/x"),
            ("/r/3", "/r/3"),
        ] {
            assert_eq!(given(a), b, "{a}");
        }
        let plain: Uri = "http://h.test:8080/x".parse().unwrap();
        assert!(matches!(
            normal_uri(&plain),
            Some(std::borrow::Cow::Borrowed(_))
        ));
    }

    #[test]
    fn dot_segments_are_removed() {
        for (a, b) in [
            ("http://h/items/./7", "http://h/items/7"),
            ("http://h/items/x/../7", "http://h/items/7"),
            ("http://h/a/%2E%2E/b", "http://h/b"),
            ("http://h/a/b/..", "http://h/a/"),
            ("http://h/a/./b?q=/../", "http://h/a/b?q=/../"),
            ("http://h/../a", "http://h/a"),
            ("/p/./q", "/p/q"),
        ] {
            assert_eq!(key(a).as_str(), key(b).as_str(), "{a} {b}");
        }
        // A segment that only contains dots is a name, not a dot segment.
        for (a, b) in [
            ("http://h/a/.../b", "http://h/b"),
            ("http://h/a/.x/b", "http://h/a/b"),
            ("http://h/v1.2/x", "http://h/x"),
        ] {
            assert_ne!(key(a), key(b), "{a} {b}");
        }
        // A path with no dot segment is looked up as it is spelled (no copy).
        let uri: Uri = "http://h/v1.2/file.json?x=../".parse().unwrap();
        assert!(matches!(
            uri_key(&uri, None, "", 0),
            Some(Lookup::Borrowed(_))
        ));
    }

    #[test]
    fn percent_encoding_is_normalised() {
        for (a, b) in [
            ("http://h/users/%7Eann", "http://h/users/~ann"),
            ("http://h/r/caf%c3%a9", "http://h/r/caf%C3%A9"),
            ("http://h/%41%2d%5F%2e?q=%7e%3d", "http://h/A-_.?q=~%3D"),
            ("/p/%7e", "/p/~"),
        ] {
            assert_eq!(key(a), key(b), "{a} {b}");
            assert_eq!(key(a).as_str(), key(b).as_str(), "{a} {b}");
        }
        assert_eq!(key("http://h/r/caf%c3%a9").as_str(), "http://h/r/caf%C3%A9");
        // A `Host` may hold escapes too (http's `Uri` refuses them in an authority).
        let path: Uri = "/x".parse().unwrap();
        let by_host = |h: &'static str| {
            let h = HeaderValue::from_static(h);
            uri_key(&path, Some(&h), "", 0).unwrap().to_key().unwrap()
        };
        assert_eq!(by_host("%41.test"), by_host("a.test"));
        assert_eq!(by_host("%c3%a9.test"), by_host("%C3%A9.TEST"));
        // Reserved characters and their escapes are different resources (§2.2).
        for (a, b) in [
            ("http://h/a%2Fb", "http://h/a/b"),
            ("http://h/a?x%3Dy", "http://h/a?x=y"),
            ("http://h/a%25", "http://h/a%"),
        ] {
            assert_ne!(key(a), key(b), "{a} {b}");
        }
        // A `%` that starts no escape is kept as it is, and never panics.
        for s in [
            "http://h/%",
            "http://h/%4",
            "http://h/%zz",
            "http://h/%%41",
            "/%e",
        ] {
            let k = key(s);
            assert_eq!(text_key(k.as_str()).as_ref(), Some(&k), "{s}");
        }
        // With a stray `%` nothing is decoded: `%%34A` would otherwise become `%4A`, a new
        // escape, and normalising would not be idempotent.
        assert_eq!(key("http://h/%%41").as_str(), "http://h/%%41");
        assert_eq!(key("http://h/%%34A").as_str(), "http://h/%%34A");
        // Normal already: borrowed, no copy.
        for s in ["http://h/r/caf%C3%A9?a=%2F", "http://h/plain"] {
            let uri: Uri = s.parse().unwrap();
            assert!(
                matches!(uri_key(&uri, None, "", 0), Some(Lookup::Borrowed(_))),
                "{s}"
            );
        }
        let uri: Uri = "http://h/r/caf%c3%a9".parse().unwrap();
        let lookup = uri_key(&uri, None, "", 0).unwrap();
        assert!(matches!(lookup, Lookup::Owned(_)));
        assert!(lookup.equivalent(&key("http://h/r/caf%C3%A9")));
        assert_eq!(hash_of(&lookup), hash_of(&key("http://h/r/caf%C3%A9")));
    }

    #[test]
    fn a_declared_scheme_keys_origin_form_like_absolute_form() {
        let host = HeaderValue::from_static("a.test:80");
        let origin: Uri = "/r/3".parse().unwrap();
        let absolute: Uri = "http://a.test/r/3".parse().unwrap();
        let declared = uri_key(&origin, Some(&host), "http", 0).unwrap();
        let abs = uri_key(&absolute, None, "http", 0)
            .unwrap()
            .to_key()
            .unwrap();
        assert!(declared.equivalent(&abs));
        assert_eq!(declared.to_key().unwrap().as_str(), "http://a.test/r/3");
        // Another scheme, or none declared: another key.
        assert!(
            !uri_key(&origin, Some(&host), "https", 0)
                .unwrap()
                .equivalent(&abs)
        );
        assert!(
            !uri_key(&origin, Some(&host), "", 0)
                .unwrap()
                .equivalent(&abs)
        );
        // Without a Host there is no authority: the scheme is not applied.
        let bare = uri_key(&origin, None, "http", 0).unwrap().to_key().unwrap();
        assert_eq!(bare.as_str(), "/r/3");
    }

    #[test]
    fn partitions_are_neither_none_nor_a_fingerprint() {
        let secret = RandomState::new();
        let (a, b) = (
            partition_tag(&secret, 0, b"alice"),
            partition_tag(&secret, 0, b"bob"),
        );
        assert!(a != b && a != 0 && a % 2 == 0 && b % 2 == 0);
        assert_eq!(a, partition_tag(&secret, 0, b"alice"));
        assert_ne!(partition_tag(&secret, a, b"bob"), b);
        let uri: Uri = "http://x/r/1".parse().unwrap();
        let none = HeaderMap::new();
        assert_eq!(credential_fingerprint(&uri, &none, &N, &secret, a), a);
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer carol".parse().unwrap());
        let (fa, fb) = (
            credential_fingerprint(&uri, &h, &N, &secret, a),
            credential_fingerprint(&uri, &h, &N, &secret, b),
        );
        assert!(fa != fb && fa % 2 == 1 && fb % 2 == 1);
    }

    #[test]
    fn proxy_authorization_and_named_headers_are_credentials() {
        let uri: Uri = "http://x/r/1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::PROXY_AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(has_credentials(&uri, &h, &N));
        let mut api = HeaderMap::new();
        api.insert("x-api-key", "k1".parse().unwrap());
        assert!(!has_credentials(&uri, &api, &N));
        let named = [header::AUTHORIZATION, HeaderName::from_static("x-api-key")];
        assert!(has_credentials(&uri, &api, &named));
        let secret = RandomState::new();
        let mut api2 = HeaderMap::new();
        api2.insert("x-api-key", "k2".parse().unwrap());
        assert_ne!(
            credential_fingerprint(&uri, &api, &named, &secret, 0),
            credential_fingerprint(&uri, &api2, &named, &secret, 0)
        );
    }
}
