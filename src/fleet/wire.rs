//! The messages replicas exchange: small, versioned, plain text. Pure: no I/O, no clock.
//!
//! `tnc2 <mac> <replica> <seq> <sent> <op> <status> <ttl_ms> <age_ms> <key>`, space-separated,
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
//! Version 1 (`tnc1`, no age) is refused and counted (`version`): without the age a receiver
//! cannot tell a stale 404 from a fresh one.

use std::time::Duration;

use http::StatusCode;

const VERSION: &str = "tnc2";
/// The longest key shared, in bytes. A longer key is kept local by its publisher (counted
/// `unshared`) and refused by a receiver (`oversized`): 8 KiB is what common servers accept as
/// a request line, so nothing a client could send is lost.
pub(crate) const MAX_KEY: usize = 8 * 1024;
/// Longer payloads are refused (`oversized`) before they are parsed.
pub(crate) const MAX_PAYLOAD: usize = MAX_KEY + 256;

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
    let text = std::str::from_utf8(payload).ok()?;
    let rest = text.strip_prefix("tnc2 ")?;
    let (mac, covered) = rest.split_once(' ')?;
    let mut parts = covered.splitn(8, ' ');
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
            ("f", _) if !key.is_empty() => Body::Forget { key: key.into() },
            ("c", _) if key.is_empty() => Body::Clear,
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
        covered: covered.as_bytes(),
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
    fn malformed_messages_are_refused() {
        let head = "tnc2 - 00000000deadbeef 1 5";
        for bad in [
            String::new(),
            "tnc2".into(),
            "tnc2 -".into(),
            format!("{head} m 404 1000 0"),
            "tnc2 - deadbeef 1 5 m 404 1000 0 k".into(),
            format!("{head} m 99 1000 0 k"),
            format!("{head} m 404 0 0 k"),
            format!("{head} m 404 -5 0 k"),
            format!("{head} m 404 +5 0 k"),
            format!("{head} m 404 1000 -1 k"),
            format!("{head} m 404 1000 0 "),
            format!("{head} x 404 1000 0 k"),
            format!("{head} c 0 0 0 k"),
            "tnc2 nothex 00000000deadbeef 1 5 c 0 0 0 ".into(),
            "tnc2 - 00000000deadbeef x 5 c 0 0 0 ".into(),
        ] {
            assert_eq!(
                decode(bad.as_bytes()).err(),
                Some(Refusal::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            decode(b"tnc2 - 00000000deadbeef 1 5 m 404 1000 0 \xff\xfe").err(),
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
        for old in [&b"tnc1 0000000000000001 m 404 1000 k"[..], b"tnc3 x"] {
            assert_eq!(decode(old).err(), Some(Refusal::Version));
        }
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
