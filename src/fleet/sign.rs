//! Signing with the fleet's shared secret: HMAC-SHA256 (RustCrypto `hmac` and `sha2`). Pure:
//! no I/O, no clock.
//!
//! Two domains, so a MAC of one kind can never pass for the other: a message's MAC covers the
//! channel's name and the message after its MAC field (so it cannot be moved to another
//! fleet's channel); a stored copy's covers where it is stored (its Redis key: the
//! prefix, the generation, the key), status, TTL and the publisher's wall-clock time. Checked in constant time (`Mac::verify_slice`).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The secret, keyed once; cloned (a few hundred bytes) per MAC.
#[derive(Clone)]
pub(crate) struct Signer(HmacSha256);

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    pub(crate) fn new(secret: &[u8]) -> Signer {
        // HMAC takes keys of any length: this cannot fail.
        Signer(HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length"))
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = self.0.clone();
        for p in parts {
            // Length-prefixed, so no two different part lists feed the same bytes.
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac
    }

    /// The MAC (hex) of a message's `covered` bytes on `channel`.
    pub(crate) fn message(&self, channel: &str, covered: &[u8]) -> String {
        let parts: [&[u8]; 3] = [b"message", channel.as_bytes(), covered];
        hex(&self.mac(&parts).finalize().into_bytes())
    }

    /// Whether `mac_hex` is the MAC of a message's `covered` bytes on `channel`.
    pub(crate) fn check_message(&self, channel: &str, covered: &[u8], mac_hex: &str) -> bool {
        let parts: [&[u8]; 3] = [b"message", channel.as_bytes(), covered];
        unhex(mac_hex).is_some_and(|m| self.mac(&parts).verify_slice(&m).is_ok())
    }

    /// The MAC (hex) of a stored copy.
    pub(crate) fn stored(&self, prefix: &str, key: &str, fields: &str) -> String {
        let parts: [&[u8]; 4] = [
            b"stored",
            prefix.as_bytes(),
            key.as_bytes(),
            fields.as_bytes(),
        ];
        hex(&self.mac(&parts).finalize().into_bytes())
    }

    /// Whether `mac_hex` is the MAC of a stored copy.
    pub(crate) fn check_stored(
        &self,
        prefix: &str,
        key: &str,
        fields: &str,
        mac_hex: &str,
    ) -> bool {
        let parts: [&[u8]; 4] = [
            b"stored",
            prefix.as_bytes(),
            key.as_bytes(),
            fields.as_bytes(),
        ];
        unhex(mac_hex).is_some_and(|m| self.mac(&parts).verify_slice(&m).is_ok())
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// 32 bytes from 64 hex digits, or `None`.
fn unhex(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(s[2 * i])? << 4 | digit(s[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        // RFC 4231, test case 2 (key "Jefe"), through the same HMAC as `Signer`.
        let mut mac = HmacSha256::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn only_the_same_secret_channel_and_bytes_check() {
        let s = Signer::new(b"0123456789abcdef");
        let mac = s.message("chan", b"body");
        assert!(s.check_message("chan", b"body", &mac));
        assert!(!s.check_message("chan", b"bodY", &mac));
        assert!(!s.check_message("other", b"body", &mac));
        assert!(!Signer::new(b"0123456789abcdeF").check_message("chan", b"body", &mac));
        let flipped = format!(
            "{}{}",
            if mac.starts_with('0') { '1' } else { '0' },
            &mac[1..]
        );
        assert!(!s.check_message("chan", b"body", &flipped));
        assert!(!s.check_message("chan", b"body", "zz"));
        // A message's MAC is not a stored copy's.
        assert!(!s.check_stored("chan", "body", "", &mac));
        let st = s.stored("p:k:", "http://h/r", "404 60000 1");
        assert!(s.check_stored("p:k:", "http://h/r", "404 60000 1", &st));
        assert!(!s.check_stored("p:k:", "http://h/r", "404 60001 1", &st));
        assert_eq!(unhex(&hex(&[0xab; 32])), Some([0xab; 32]));
    }
}
