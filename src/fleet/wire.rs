//! The messages replicas exchange: small, versioned, plain text. Pure: no I/O, no clock.
//!
//! `tnc3 <mac> <replica> <seq> <sent> <op> <status> <ttl_ms> <age_ms> <key>`, space-separated,
//! the key last (it may hold spaces):
//!
//! - `mac`: the HMAC-SHA256 of everything after it (and of the channel's name), in hex, when
//!   the replicas share a secret; `-` otherwise.
//! - `replica` (16 hex digits, random per tier) and `seq` (counting up from 1 per replica): a
//!   receiver refuses a message whose `seq` is not above the last one it saw from that replica,
//!   so a copied message cannot be played again while the replica is remembered.
//! - `sent`: the publisher's wall clock (Unix milliseconds), checked only with a secret (to
//!   refuse copies replayed later); ordering never depends on clocks agreeing.
//! - `op`: `m` (missing), `f` (forget) or `c` (clear). For `m`, `ttl_ms` is what was left of
//!   the entry and `age_ms` how long ago its request left, both at the moment of publishing;
//!   `m` followed by a number (`m3`, at most 31) carries the key's adaptive-TTL streak.
//!
//! A `m` message is followed by its answer section (see [`encode_answer`]): a NUL byte, then
//! the remembered answer's head fields and kept body, at most [`MAX_ANSWER`] bytes (a larger
//! one travels head-only). The MAC covers it too. Its `Age` field, when there is one, is the
//! age the answer had on arrival at the publisher (the origin's): the receiver adds it to
//! `age_ms` for the entry's `Age`, never for ordering.
//!
//! Versions 1 (`tnc1`, no age) and 2 (`tnc2`, no answer) are refused and counted (`version`):
//! without the age a receiver cannot tell a stale 404 from a fresh one, and without the
//! answer it would replay a made-up one.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

const VERSION: &str = "tnc3";
/// The longest key shared, in bytes. A longer key is kept local by its publisher (counted
/// `unshared`) and refused by a receiver (`oversized`): 8 KiB is what common servers accept as
/// a request line, so nothing a client could send is lost.
pub(crate) const MAX_KEY: usize = 8 * 1024;
/// Longer payloads are refused (`oversized`) before they are parsed.
pub(crate) const MAX_PAYLOAD: usize = MAX_KEY + 256 + 1 + MAX_ANSWER;

/// Why a payload was not understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Longer than [`MAX_PAYLOAD`], or a key longer than [`MAX_KEY`].
    Oversized,
    /// A message of another version of this protocol.
    Version,
    /// Not a message of this version.
    Malformed,
}

/// What a message says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Body {
    Missing {
        key: Box<str>,
        status: StatusCode,
        ttl: Duration,
        age: Duration,
        /// The publisher's adaptive-TTL streak for the key (see [`missing_op`]).
        confirmed: u8,
    },
    Forget {
        key: Box<str>,
    },
    Clear,
}

/// A decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) replica: u64,
    pub(crate) seq: u64,
    pub(crate) sent_ms: u64,
    pub(crate) body: Body,
}

/// A decoded message with what its MAC covers.
#[derive(Debug)]
pub(crate) struct Signed<'a> {
    pub(crate) message: Message,
    /// The MAC's hex digits, or `None` for `-`.
    pub(crate) mac: Option<&'a str>,
    /// The bytes the MAC covers (after the channel's name).
    pub(crate) covered: &'a [u8],
    /// The answer section of a `m` message, undecoded (see [`decode_answer`]).
    pub(crate) answer: Option<&'a [u8]>,
}

/// A duration in whole milliseconds, saturating (what every message and stored copy carries).
pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The part of a message after its MAC.
pub(crate) fn encode_body(replica: u64, seq: u64, sent_ms: u64, body: &Body) -> String {
    let head = format!("{replica:016x} {seq} {sent_ms}");
    match body {
        Body::Missing {
            key,
            status,
            ttl,
            age,
            confirmed,
        } => format!(
            "{head} {} {} {} {} {key}",
            missing_op(*confirmed),
            status.as_u16(),
            ms(*ttl).max(1),
            ms(*age)
        ),
        Body::Forget { key } => format!("{head} f 0 0 0 {key}"),
        Body::Clear => format!("{head} c 0 0 0 "),
    }
}

/// A whole message, from its body and its MAC (hex) if any.
#[cfg(test)]
pub(crate) fn assemble(mac: Option<&str>, body: &str) -> String {
    format!("{VERSION} {} {body}", mac.unwrap_or("-"))
}

/// The message in `payload`, or why it is refused.
pub(crate) fn decode(payload: &[u8]) -> Result<Signed<'_>, Refusal> {
    if payload.len() > MAX_PAYLOAD {
        return Err(Refusal::Oversized);
    }
    let word = payload.split(|b| *b == b' ').next().unwrap_or_default();
    let other_version = word.len() > 3
        && word.starts_with(b"tnc")
        && word[3..].iter().all(u8::is_ascii_digit)
        && word != VERSION.as_bytes();
    if other_version {
        return Err(Refusal::Version);
    }
    let signed = parse(payload).ok_or(Refusal::Malformed)?;
    match &signed.message.body {
        Body::Missing { key, .. } | Body::Forget { key } if key.len() > MAX_KEY => {
            Err(Refusal::Oversized)
        }
        _ => Ok(signed),
    }
}

/// Whether a Missing message can carry `key`: not over [`MAX_KEY`], and without a NUL byte
/// (its answer section starts at the first NUL). A forget can carry any key.
pub(crate) fn shareable(key: &str) -> bool {
    key.len() <= MAX_KEY && !key.contains('\0')
}

/// The `op` of a Missing message: `m`, followed by the publisher's adaptive-TTL streak when
/// it has one (`m3`: confirmed three times in a row), so a replica that learns the entry
/// carries the streak on. Its own field-free encoding, so it merges with other changes to the
/// format; a receiver without it refuses `m3` as malformed (counted), never misreads it.
fn missing_op(confirmed: u8) -> String {
    match confirmed {
        0 => "m".to_owned(),
        n => format!("m{n}"),
    }
}

/// The streak in a Missing message's `op`, or `None` if `op` is not one.
fn parse_missing_op(op: &str) -> Option<u8> {
    let digits = op.strip_prefix('m')?;
    if digits.is_empty() {
        return Some(0);
    }
    // At most 31 counts (the history's bound); no sign, no leading zero.
    if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u8>().ok().filter(|n| *n <= 31)
}

fn parse(payload: &[u8]) -> Option<Signed<'_>> {
    // Only a `m` message has an answer section: a forget's key runs to the end, NUL bytes
    // included (a key function may use them as separators; a `m` of such a key is not sent).
    let (head, answer) = split_answer(payload);
    let op = head.split(|b| *b == b' ').nth(5).unwrap_or_default();
    let (text, answer) = if op.starts_with(b"m") {
        (head, answer)
    } else {
        (payload, None)
    };
    let text = std::str::from_utf8(text).ok()?;
    let rest = text.strip_prefix("tnc3 ")?;
    let (mac, covered_text) = rest.split_once(' ')?;
    // What the MAC covers: the text after it and the answer section.
    let covered =
        &payload[payload.len() - covered_text.len() - answer.map_or(0, |a| a.len() + 1)..];
    let mut parts = covered_text.splitn(8, ' ');
    let mut next = || parts.next();
    let (replica, seq, sent, op, status, ttl, age, key) = (
        next()?,
        next()?,
        next()?,
        next()?,
        next()?,
        next()?,
        next()?,
        next()?,
    );
    if replica.len() != 16 {
        return None;
    }
    let number = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<u64>().ok())?
    };
    let message = Message {
        replica: u64::from_str_radix(replica, 16).ok()?,
        seq: number(seq)?,
        sent_ms: number(sent)?,
        body: match (op, parse_missing_op(op)) {
            (_, Some(confirmed)) if !key.is_empty() => Body::Missing {
                key: key.into(),
                status: number(status)
                    .and_then(|s| u16::try_from(s).ok())
                    .and_then(|s| StatusCode::from_u16(s).ok())?,
                ttl: Duration::from_millis(number(ttl).filter(|t| *t > 0)?),
                age: Duration::from_millis(number(age)?),
                confirmed,
            },
            ("f", _) if !key.is_empty() && answer.is_none() => Body::Forget { key: key.into() },
            ("c", _) if key.is_empty() && answer.is_none() => Body::Clear,
            _ => return None,
        },
    };
    let mac = match mac {
        "-" => None,
        hex if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Some(hex),
        _ => return None,
    };
    Some(Signed {
        message,
        mac,
        covered,
        answer,
    })
}

// Issue 17: the remembered answer a `m` message carries. Kept apart from the fields above.

/// The most bytes of a remembered answer (head fields and body) a message carries: a larger
/// one is sent head-only (and, should its fields alone be larger, as a bare head-only answer).
pub(crate) const MAX_ANSWER: usize = 8 * 1024;

/// A remembered answer as a peer sent it: whether its body was kept whole, its end-to-end
/// fields (a receiver filters them again: a peer is not trusted to have) and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WireAnswer {
    pub(crate) kept: bool,
    pub(crate) fields: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: Bytes,
}

/// An answer section: `k` (body kept) or `h` (head-only), `\n`, then `name:value\n` per field
/// (a field value holds no CR or LF, a name no colon), an empty line, and the body's bytes.
pub(crate) fn encode_answer<'a>(
    kept: bool,
    fields: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + body.len());
    out.extend_from_slice(if kept { b"k\n" } else { b"h\n" });
    for (n, v) in fields {
        out.extend_from_slice(n.as_str().as_bytes());
        out.push(b':');
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    if kept {
        out.extend_from_slice(body);
    }
    out
}

/// The message's covered text with its answer section after a NUL (none for forgets and
/// clears).
pub(crate) fn with_answer(covered: String, answer: Option<&[u8]>) -> Vec<u8> {
    let mut out = covered.into_bytes();
    if let Some(a) = answer {
        out.push(0);
        out.extend_from_slice(a);
    }
    out
}

/// A whole message from its covered bytes (see [`with_answer`]) and its MAC (hex) if any.
pub(crate) fn assemble_bytes(mac: Option<&str>, covered: &[u8]) -> Vec<u8> {
    let mut out = format!("{VERSION} {} ", mac.unwrap_or("-")).into_bytes();
    out.extend_from_slice(covered);
    out
}

/// A payload's text and, after the first NUL, its answer section (for a `m` message: its key
/// holds no NUL, see [`shareable`]).
fn split_answer(payload: &[u8]) -> (&[u8], Option<&[u8]>) {
    match payload.iter().position(|b| *b == 0) {
        Some(i) => (&payload[..i], Some(&payload[i + 1..])),
        None => (payload, None),
    }
}

/// The answer in a section, or `None` if it is not one (a receiver refuses the message).
pub(crate) fn decode_answer(section: &[u8]) -> Option<WireAnswer> {
    if section.len() > MAX_ANSWER {
        return None;
    }
    let kept = match section.get(..2)? {
        b"k\n" => true,
        b"h\n" => false,
        _ => return None,
    };
    let mut rest = &section[2..];
    let mut fields = Vec::new();
    loop {
        let end = rest.iter().position(|b| *b == b'\n')?;
        let line = &rest[..end];
        rest = &rest[end + 1..];
        if line.is_empty() {
            break;
        }
        let colon = line.iter().position(|b| *b == b':')?;
        let name = HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = HeaderValue::from_bytes(&line[colon + 1..]).ok()?;
        fields.push((name, value));
    }
    if !kept && !rest.is_empty() {
        return None;
    }
    Some(WireAnswer {
        kept,
        fields,
        body: Bytes::copy_from_slice(rest),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_streak_rides_in_the_op_and_nothing_else_parses_as_one() {
        assert_eq!(missing_op(0), "m");
        assert_eq!(missing_op(7), "m7");
        for (op, want) in [("m", Some(0)), ("m1", Some(1)), ("m31", Some(31))] {
            assert_eq!(parse_missing_op(op), want, "{op}");
        }
        for op in ["m32", "m255", "m07", "m-1", "m+1", "mx", "f", "c", "", "M1"] {
            assert_eq!(parse_missing_op(op), None, "{op}");
        }
    }

    #[test]
    fn round_trips() {
        for body in [
            Body::Missing {
                key: "http://a.test/r/1?x=y z".into(),
                status: StatusCode::GONE,
                ttl: Duration::from_millis(1500),
                age: Duration::from_millis(42),
                confirmed: 0,
            },
            Body::Missing {
                key: "http://a.test/r/2".into(),
                status: StatusCode::NOT_FOUND,
                ttl: Duration::from_millis(240_000),
                age: Duration::from_millis(3),
                confirmed: 2,
            },
            Body::Forget {
                key: "record:42".into(),
            },
            // A key function's key may hold NUL bytes: a forget carries it whole.
            Body::Forget {
                key: "h.test\0/r/1\0k\n\n".into(),
            },
            Body::Clear,
        ] {
            let wire = assemble(None, &encode_body(0xdead_beef, 7, 1_700_000_000_000, &body));
            let signed = decode(wire.as_bytes()).unwrap();
            assert_eq!(signed.mac, None);
            assert_eq!(
                signed.message,
                Message {
                    replica: 0xdead_beef,
                    seq: 7,
                    sent_ms: 1_700_000_000_000,
                    body
                }
            );
        }
        let mac = "ab".repeat(32);
        let wire = assemble(Some(&mac), &encode_body(1, 1, 1, &Body::Clear));
        let signed = decode(wire.as_bytes()).unwrap();
        assert_eq!(signed.mac, Some(mac.as_str()));
        assert_eq!(
            signed.covered,
            encode_body(1, 1, 1, &Body::Clear).as_bytes()
        );
    }

    #[test]
    fn a_missing_message_never_carries_a_key_its_answer_section_would_split() {
        assert!(shareable("http://h.test/r/1"));
        assert!(!shareable("h.test\0/r/1"));
        assert!(!shareable(&"k".repeat(MAX_KEY + 1)));
    }

    #[test]
    fn malformed_messages_are_refused() {
        let head = "tnc3 - 00000000deadbeef 1 5";
        for bad in [
            String::new(),
            "tnc3".into(),
            "tnc3 -".into(),
            format!("{head} m 404 1000 0"),
            "tnc3 - deadbeef 1 5 m 404 1000 0 k".into(),
            format!("{head} m 99 1000 0 k"),
            format!("{head} m 404 0 0 k"),
            format!("{head} m 404 -5 0 k"),
            format!("{head} m 404 +5 0 k"),
            format!("{head} m 404 1000 -1 k"),
            format!("{head} m 404 1000 0 "),
            format!("{head} x 404 1000 0 k"),
            format!("{head} c 0 0 0 k"),
            "tnc3 nothex 00000000deadbeef 1 5 c 0 0 0 ".into(),
            "tnc3 - 00000000deadbeef x 5 c 0 0 0 ".into(),
        ] {
            assert_eq!(
                decode(bad.as_bytes()).err(),
                Some(Refusal::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            decode(b"tnc3 - 00000000deadbeef 1 5 m 404 1000 0 \xff\xfe").err(),
            Some(Refusal::Malformed)
        );
        assert_eq!(
            decode(&vec![b'a'; MAX_PAYLOAD + 1]).err(),
            Some(Refusal::Oversized)
        );
        let long = assemble(
            None,
            &encode_body(
                1,
                1,
                1,
                &Body::Forget {
                    key: "k".repeat(MAX_KEY + 1).into(),
                },
            ),
        );
        assert_eq!(decode(long.as_bytes()).err(), Some(Refusal::Oversized));
        for old in [
            &b"tnc1 0000000000000001 m 404 1000 k"[..],
            b"tnc2 - 00000000deadbeef 1 5 m 404 1000 0 k",
            b"tnc4 x",
        ] {
            assert_eq!(decode(old).err(), Some(Refusal::Version));
        }
    }

    #[test]
    fn answers_round_trip_under_the_mac() {
        let body = Body::Missing {
            key: "http://a.test/r/1".into(),
            status: StatusCode::NOT_FOUND,
            ttl: Duration::from_millis(1500),
            age: Duration::ZERO,
            confirmed: 0,
        };
        let ct = (
            HeaderName::from_static("content-type"),
            HeaderValue::from_static("application/json"),
        );
        let gz = Bytes::from_static(&[0x1f, 0x8b, 0, b'\n', 0xff]);
        for (kept, payload) in [(true, gz.clone()), (false, Bytes::new())] {
            let section = encode_answer(kept, [(&ct.0, &ct.1)].into_iter(), &payload);
            let covered = with_answer(encode_body(1, 2, 3, &body), Some(&section));
            let wire = assemble_bytes(Some(&"ab".repeat(32)), &covered);
            let signed = decode(&wire).unwrap();
            assert_eq!(signed.covered, &covered[..]);
            assert_eq!(signed.message.body, body);
            let answer = decode_answer(signed.answer.unwrap()).unwrap();
            assert_eq!(
                answer,
                WireAnswer {
                    kept,
                    fields: vec![ct.clone()],
                    body: payload
                }
            );
        }
        // Not an answer: refused.
        for bad in [
            &b""[..],
            b"x\n\n",
            b"k\nno-colon\n\n",
            b"h\n\nbody",
            b"k\nbad name:v\n\n",
        ] {
            assert_eq!(decode_answer(bad), None, "{bad:?}");
        }
        // A forget or clear carries none.
        let covered = with_answer(encode_body(1, 2, 3, &Body::Clear), Some(b"k\n\n"));
        assert!(decode(&assemble_bytes(None, &covered)).is_err());
    }

    proptest! {
        // No regression files: a failure prints its minimal case, to be pinned by hand.
        #![proptest_config(proptest::test_runner::Config { failure_persistence: None, ..Default::default() })]

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }
}
