//! Percent-encoding normalisation of keys (RFC 3986 §6.2.2.1, §6.2.2.2): one target in any
//! spelling is one key. Pure: no I/O, no panics on any bytes.

/// Whether `s` is already in the normal form of RFC 3986 §6.2.2.1 and §6.2.2.2: every
/// percent-escape in upper-case hex, and none of an unreserved character (`ALPHA / DIGIT / "-"
/// / "." / "_" / "~"`, §2.3). Most targets have no `%` at all: one `memchr` says so. A target
/// with a stray `%` (one not followed by two hex digits) is taken as it is: see
/// [`pct_normalise`].
pub(crate) fn pct_normal(s: &str) -> bool {
    // No escape at all (most targets): one pass without early exit, vectorised.
    if !s.bytes().fold(false, |pct, b| pct | (b == b'%')) {
        return true;
    }
    let b = s.as_bytes();
    let mut normal = true;
    let mut i = 0;
    while i < b.len() {
        match escape_at(b, i) {
            Some((byte, upper_hex)) => {
                normal &= upper_hex && !unreserved(byte);
                i += 3;
            }
            None if b[i] == b'%' => return true,
            None => i += 1,
        }
    }
    normal
}

/// `s` in the normal form of [`pct_normal`]: escapes of unreserved characters decoded
/// (§6.2.2.2), the others' hex digits in upper case (§6.2.2.1). A target with a stray `%` (not
/// followed by two hex digits: not a valid URI, §2.1, though `http::Uri` takes it) is left as
/// it is, whole: decoding next to it could make a new escape (`%%34A` would become `%4A`, then
/// `J`), so its spellings are not recognised as one. `None` only if the result were not UTF-8,
/// which cannot happen: only ASCII is rewritten.
pub(crate) fn pct_normalise(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let stray = (0..b.len()).any(|i| b[i] == b'%' && escape_at(b, i).is_none());
    if stray {
        return Some(s.to_owned());
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match escape_at(b, i) {
            Some((byte, _)) if unreserved(byte) => {
                out.push(byte);
                i += 3;
            }
            Some(_) => {
                out.extend([
                    b'%',
                    b[i + 1].to_ascii_uppercase(),
                    b[i + 2].to_ascii_uppercase(),
                ]);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A host as keys hold it: escapes of unreserved characters decoded (§6.2.2.2), then all of
/// it in lower case (§6.2.2.1: the host is case-insensitive; so are an escape's hex digits,
/// which lower case keeps apart from any decoded byte).
pub(crate) fn normal_host(host: &str) -> Option<String> {
    let mut h = pct_normalise(host)?;
    h.make_ascii_lowercase();
    Some(h)
}

/// The byte `%XX` at `i` encodes, and whether its hex digits are upper case (digits count as
/// both); `None` when there is no well-formed escape at `i`.
fn escape_at(b: &[u8], i: usize) -> Option<(u8, bool)> {
    if b.get(i) != Some(&b'%') {
        return None;
    }
    let (hi, lo) = (*b.get(i + 1)?, *b.get(i + 2)?);
    let val = |c: u8| (c as char).to_digit(16);
    let byte = u8::try_from(val(hi)? * 16 + val(lo)?).ok()?;
    Some((byte, !hi.is_ascii_lowercase() && !lo.is_ascii_lowercase()))
}

/// RFC 3986 §2.3.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::{Key, Lookup, target_key};
    use proptest::prelude::*;
    use quick_cache::Equivalent;
    use std::hash::BuildHasher;

    /// One unit of a path or query, abstractly: a character written as it is, or a byte
    /// percent-encoded.
    #[derive(Clone, Debug)]
    enum Unit {
        Char(char),
        Escaped(u8),
    }

    /// The unit in its §6.2.2 normal form: an escaped unreserved character is the
    /// character.
    fn canonical(u: &Unit) -> Unit {
        match *u {
            Unit::Escaped(b) if unreserved(b) => Unit::Char(b as char),
            ref other => other.clone(),
        }
    }

    /// Whether two unit sequences (each after a leading `/`) name one target: equal unit by
    /// unit in their §6.2.2.1/§6.2.2.2 normal form, then with dot segments removed from the
    /// path (§6.2.2.3, RFC 3986 §5.2.4). An escaped `?` or `/` stays escaped: it separates
    /// nothing.
    fn same(a: &[Unit], b: &[Unit]) -> bool {
        /// A normal unit as text, escapes distinct from the characters they stand for.
        fn text(units: &[Unit]) -> String {
            let mut s = String::from("/");
            for u in units {
                match canonical(u) {
                    Unit::Char(c) => s.push(c),
                    Unit::Escaped(b) => s.push_str(&format!("%{b:02X}")),
                }
            }
            match s.split_once('?') {
                Some((path, query)) => {
                    format!(
                        "{}?{query}",
                        crate::cache::reference::remove_dot_segments(path)
                    )
                }
                None => crate::cache::reference::remove_dot_segments(&s),
            }
        }
        text(a) == text(b)
    }

    fn unit() -> impl Strategy<Value = Unit> {
        // Every character a path or query may hold as it is but `%` (RFC 3986 §3.3,
        // §3.4): unreserved, sub-delims, ':', '@', '/', '?'.
        let chars: Vec<char> = "aZ09-._~!$&'()*+,;=:@/?".chars().collect();
        prop_oneof![
            prop::sample::select(chars).prop_map(Unit::Char),
            any::<u8>().prop_map(Unit::Escaped),
            // Escapes of unreserved characters, often.
            prop::sample::select(b"aZ09-._~".to_vec()).prop_map(Unit::Escaped),
        ]
    }

    /// One spelling of `units`: each unreserved character may be escaped, each escape
    /// in either case per digit.
    fn spell(units: &[Unit], choices: &[u8]) -> String {
        let mut s = String::from("/");
        for (i, u) in units.iter().enumerate() {
            let c = choices.get(i).copied().unwrap_or(0);
            let escape = |b: u8, s: &mut String| {
                let hex = format!("{b:02X}");
                for (j, d) in hex.chars().enumerate() {
                    s.push(if c >> (j + 1) & 1 == 1 {
                        d.to_ascii_lowercase()
                    } else {
                        d
                    });
                }
            };
            match *u {
                Unit::Char(ch) if c & 1 == 1 && unreserved(ch as u8) => {
                    s.push('%');
                    escape(ch as u8, &mut s);
                }
                Unit::Char(ch) => s.push(ch),
                Unit::Escaped(b) => {
                    s.push('%');
                    escape(b, &mut s);
                }
            }
        }
        s
    }

    fn key_of(pq: &str) -> Option<Key> {
        target_key("http", "h.test", pq, 0)?.to_key()
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(2048) })]

        /// Two spellings share a key exactly when they are equal under RFC 3986 §6.2.2.1,
        /// §6.2.2.2 and §6.2.2.3: any two spellings of one target give one key, and different
        /// targets never collide.
        #[test]
        fn spellings_share_a_key_iff_equivalent(
            a in prop::collection::vec(unit(), 0..12),
            b in prop::collection::vec(unit(), 0..12),
            ca in prop::collection::vec(any::<u8>(), 12),
            cb in prop::collection::vec(any::<u8>(), 12),
            same_target in any::<bool>(),
        ) {
            let b = if same_target { a.clone() } else { b };
            let (sa, sb) = (spell(&a, &ca), spell(&b, &cb));
            let (ka, kb) = (key_of(&sa).unwrap(), key_of(&sb).unwrap());
            prop_assert_eq!(ka == kb, same(&a, &b), "{} {}", sa, sb);
            if ka == kb {
                let state = std::collections::hash_map::RandomState::new();
                prop_assert_eq!(state.hash_one(&ka), state.hash_one(&kb));
            }
            // The stored text is normal: it keys itself, borrowed.
            prop_assert!(pct_normal(ka.as_str()));
            let again = target_key("http", "h.test", &ka.as_str()["http://h.test".len()..], 0).unwrap();
            prop_assert!(matches!(again, Lookup::Borrowed(_)));
            prop_assert!(again.equivalent(&ka));
        }

        /// Normalising never panics, is idempotent, and never lengthens.
        #[test]
        fn normalising_is_idempotent(s in "[%a-fA-F0-9~/?=._-]{0,24}") {
            let n = pct_normalise(&s).unwrap();
            prop_assert!(n.len() <= s.len());
            prop_assert!(pct_normal(&n));
            prop_assert_eq!(pct_normalise(&n).unwrap(), n.clone());
            prop_assert_eq!(pct_normal(&s), n == s);
        }

        /// A stray `%` leaves the target as it is: decoding beside it never makes a new
        /// escape (`%%34A` is not `%4A`).
        #[test]
        fn a_stray_percent_leaves_the_target_as_it_is(s in "[%a-fA-F0-9~]{0,12}") {
            let b = s.as_bytes();
            if (0..b.len()).any(|i| b[i] == b'%' && escape_at(b, i).is_none()) {
                prop_assert_eq!(pct_normalise(&s).unwrap(), s.clone());
                prop_assert!(pct_normal(&s));
            }
        }
    }
}
