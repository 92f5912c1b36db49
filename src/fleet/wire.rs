//! The messages replicas exchange: small, versioned, plain text. Pure: no I/O.
//!
//! `tnc1 <replica> <op> <status> <ttl_ms> <key>`, space-separated, the key last (it may hold
//! spaces): `op` is `m` (missing: status and relative TTL), `f` (forget) or `c` (clear).

use std::fmt::Write;
use std::time::Duration;

use http::StatusCode;

use crate::cache::PeerEvent;

const VERSION: &str = "tnc1";
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
    /// Not a message of this version.
    Malformed,
}

/// A decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) replica: u64,
    pub(crate) event: PeerEvent,
}

pub(crate) fn encode(replica: u64, event: &PeerEvent) -> String {
    let mut s = String::with_capacity(64);
    let _ = match event {
        PeerEvent::Missing { key, status, ttl } => {
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            write!(
                s,
                "{VERSION} {replica:016x} m {} {ms} {key}",
                status.as_u16()
            )
        }
        PeerEvent::Forget { key } => write!(s, "{VERSION} {replica:016x} f 0 0 {key}"),
        PeerEvent::Clear => write!(s, "{VERSION} {replica:016x} c 0 0 "),
    };
    s
}

/// The message in `payload`, or why it is refused.
pub(crate) fn decode(payload: &[u8]) -> Result<Message, Refusal> {
    if payload.len() > MAX_PAYLOAD {
        return Err(Refusal::Oversized);
    }
    let msg = parse(payload).ok_or(Refusal::Malformed)?;
    match &msg.event {
        PeerEvent::Missing { key, .. } | PeerEvent::Forget { key } if key.len() > MAX_KEY => {
            Err(Refusal::Oversized)
        }
        _ => Ok(msg),
    }
}

fn parse(payload: &[u8]) -> Option<Message> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(6, ' ');
    let (version, replica, op, status, ttl, key) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if version != VERSION || replica.len() != 16 {
        return None;
    }
    let replica = u64::from_str_radix(replica, 16).ok()?;
    let event = match op {
        "m" if !key.is_empty() => PeerEvent::Missing {
            key: key.into(),
            status: status
                .parse::<u16>()
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())?,
            ttl: Duration::from_millis(ttl.parse::<u64>().ok().filter(|t| *t > 0)?),
        },
        "f" if !key.is_empty() => PeerEvent::Forget { key: key.into() },
        "c" if key.is_empty() => PeerEvent::Clear,
        _ => return None,
    };
    Some(Message { replica, event })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        for event in [
            PeerEvent::Missing {
                key: "http://a.test/r/1?x=y z".into(),
                status: StatusCode::GONE,
                ttl: Duration::from_millis(1500),
            },
            PeerEvent::Forget {
                key: "record:42".into(),
            },
            PeerEvent::Clear,
        ] {
            let wire = encode(0xdead_beef, &event);
            assert_eq!(
                decode(wire.as_bytes()),
                Ok(Message {
                    replica: 0xdead_beef,
                    event
                })
            );
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        for bad in [
            &b""[..],
            b"tnc1",
            b"tnc2 00000000deadbeef m 404 1000 k",
            b"tnc1 deadbeef m 404 1000 k",
            b"tnc1 00000000deadbeef m 99 1000 k",
            b"tnc1 00000000deadbeef m 404 0 k",
            b"tnc1 00000000deadbeef m 404 -5 k",
            b"tnc1 00000000deadbeef m 404 1000 ",
            b"tnc1 00000000deadbeef x 404 1000 k",
            b"tnc1 00000000deadbeef c 0 0 k",
            b"tnc1 00000000deadbeef m 404 1000 \xff\xfe",
        ] {
            assert_eq!(
                decode(bad),
                Err(Refusal::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            decode(&vec![b'a'; MAX_PAYLOAD + 1]),
            Err(Refusal::Oversized)
        );
        let long = encode(
            1,
            &PeerEvent::Forget {
                key: "k".repeat(MAX_KEY + 1).into(),
            },
        );
        assert_eq!(decode(long.as_bytes()), Err(Refusal::Oversized));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }
}
