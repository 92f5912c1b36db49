//! What the adaptive TTL remembers of each key past its entry's expiry: how many times in a row
//! the origin confirmed the same Missing answer, and whether the key was seen to flap.
//!
//! A table of `capacity` words (8 bytes each, counted in `max_bytes`) in buckets of 8 (one
//! cache line): a key's record is one `AtomicU64` in the bucket its hash picks, tagged with 32
//! more bits of the hash. A key new to a full bucket takes the place of the record with the
//! shortest streak, so the keys the adaptive TTL is for — missing, asked for again and again —
//! stay, and one-off keys pass through. A key whose record was pushed out (or whose tag
//! another key shares, one chance in 2^32 per bucket-mate) starts again from the base TTL or
//! from that key's streak: forgetting history only ever shortens a lifetime. No lock, no
//! allocation, no growth. (Direct-mapped, one record per slot, a key shares its slot with
//! another about 60% of the time at one slot per key: on `examples/ttl_simulation.rs`'s day
//! the adaptive TTL then asked the origin 59% as often as the fixed 60 s TTL; with buckets,
//! 44%.)

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use http::StatusCode;
use quick_cache::DefaultHashBuilder;

use super::key::{Key, KeyRef};

/// The longest streak counted: 2^15 times the base exceeds any ceiling the builder allows
/// (30 days / 1 s < 2^22 — the ceiling cuts it long before).
const MAX_STREAK: u64 = 31;
/// The key answered present (a 2xx) since its last Missing answer.
const PRESENT: u64 = 1 << 5;
/// The key was Missing, present, then Missing again: it stays at the base TTL.
const FLAPPED: u64 = 1 << 6;

/// Records per bucket: 64 bytes, one cache line.
const WAYS: usize = 8;

/// Packs a record: tag (32 bits) | status (16 bits) | flags and streak (8 bits).
fn pack(tag: u64, status: u16, bits: u64) -> u64 {
    (tag << 32) | (u64::from(status) << 8) | bits
}

pub(crate) struct Histories {
    slots: Box<[AtomicU64]>,
    hasher: DefaultHashBuilder,
}

/// What a key's history says about its next lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Streak {
    /// Confirmations in a row of the same Missing answer before this one (0: first, flapped,
    /// or reset).
    pub(crate) confirmed: u8,
    /// The key was seen to flap: it stays at the base TTL.
    pub(crate) flapped: bool,
}

impl Histories {
    /// A table of at least `slots` records, in buckets of [`WAYS`].
    pub(crate) fn new(slots: u64) -> Self {
        let buckets = usize::try_from(slots.div_ceil(WAYS as u64).max(1)).unwrap_or(usize::MAX);
        Histories {
            slots: (0..buckets.saturating_mul(WAYS))
                .map(|_| AtomicU64::new(0))
                .collect(),
            hasher: DefaultHashBuilder::default(),
        }
    }

    /// Bytes the table takes.
    pub(crate) fn bytes(&self) -> u64 {
        (self.slots.len() * std::mem::size_of::<AtomicU64>()) as u64
    }

    /// The bucket of `key`'s target (credentials apart: the origin's answer is about the
    /// target) and the tag its record carries. A tag of 0 marks an empty slot, so tags are
    /// never 0.
    fn locate(&self, key: &Key) -> (&[AtomicU64], u64) {
        self.locate_target(key.target())
    }

    fn locate_target(&self, target: KeyRef<'_>) -> (&[AtomicU64], u64) {
        let h = self.hasher.hash_one(target);
        let buckets = self.slots.len() / WAYS;
        // The bucket from the hash's high bits, the tag from its low ones.
        let b = ((u128::from(h) * buckets as u128) >> 64) as usize;
        (
            &self.slots[b * WAYS..(b + 1) * WAYS],
            (h & 0xffff_ffff).max(1),
        )
    }

    /// Changes the record tagged `tag` in `bucket` with `f` (`None`: leave it); whether a
    /// record of that tag was there.
    fn update(bucket: &[AtomicU64], tag: u64, mut f: impl FnMut(u64) -> Option<u64>) -> bool {
        let Some(slot) = bucket.iter().find(|s| s.load(Relaxed) >> 32 == tag) else {
            return false;
        };
        let mut found = true;
        let _ = slot.fetch_update(Relaxed, Relaxed, |old| {
            // Replaced meanwhile by another key: not this key's record any more.
            found = old >> 32 == tag;
            if found { f(old) } else { None }
        });
        found
    }

    /// Writes `record` in place of the bucket's least useful one: an empty slot, else the
    /// shortest streak (a flap counts as a streak of 8: remembering it keeps its key at the
    /// base). The keys the table is for — missing, asked for again and again — have the
    /// long streaks, so one-off keys pass through without pushing them out. Under a race for
    /// the slot it gives up: the key is then simply new next time.
    fn insert(bucket: &[AtomicU64], record: u64) {
        let rank = |v: u64| match v {
            0 => 0,
            v => 1 + (v & MAX_STREAK) + if v & FLAPPED != 0 { 8 } else { 0 },
        };
        let Some((slot, old)) = bucket
            .iter()
            .map(|s| (s, s.load(Relaxed)))
            .min_by_key(|(_, v)| rank(*v))
        else {
            return;
        };
        let _ = slot.compare_exchange(old, record, Relaxed, Relaxed);
    }

    /// The origin answered `status` (Missing, without explicit freshness) for `key`, which had
    /// no fresh entry: records it and returns the streak that sets its lifetime.
    pub(crate) fn missing(&self, key: &Key, status: StatusCode) -> Streak {
        let (bucket, tag) = self.locate(key);
        let status = status.as_u16();
        let mut streak = Streak {
            confirmed: 0,
            flapped: false,
        };
        let known = Self::update(bucket, tag, |old| {
            let bits = if (old >> 8) as u16 != status {
                // Another status (404 -> 410): from the base.
                0
            } else if old & (FLAPPED | PRESENT) != 0 {
                // Missing, present, Missing again: it flaps, and stays at the base.
                FLAPPED
            } else {
                ((old & MAX_STREAK) + 1).min(MAX_STREAK)
            };
            streak = Streak {
                confirmed: (bits & MAX_STREAK) as u8,
                flapped: bits & FLAPPED != 0,
            };
            Some(pack(tag, status, bits))
        });
        if !known {
            Self::insert(bucket, pack(tag, status, 0));
        }
        streak
    }

    /// `key` answered present (a 2xx): its streak ends; a Missing answer after this one
    /// marks it as flapping. A key with no record gets none (a 2xx costs no slot).
    pub(crate) fn present(&self, key: &Key) {
        self.present_target(key.target());
    }

    /// As [`present`](Self::present), from the key's target ([`Key::target`]): a read
    /// answered 2xx need not make its key for this.
    pub(crate) fn present_target(&self, target: KeyRef<'_>) {
        let (bucket, tag) = self.locate_target(target);
        Self::update(bucket, tag, |old| Some((old & !MAX_STREAK) | PRESENT));
    }

    /// `key` was written or invalidated: its history is forgotten (it starts again from the
    /// base, and a flap seen before no longer counts).
    pub(crate) fn reset(&self, key: &Key) {
        let (bucket, tag) = self.locate(key);
        Self::update(bucket, tag, |_| Some(0));
    }

    /// Everything was invalidated.
    pub(crate) fn clear(&self) {
        for s in self.slots.iter() {
            s.store(0, Relaxed);
        }
    }

    /// A peer saw `status` confirmed `confirmed` times in a row for `key`: this replica
    /// carries the streak on from there (never shortening its own, never past a flap).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn learned(&self, key: &Key, status: StatusCode, confirmed: u8) {
        let (bucket, tag) = self.locate(key);
        let status = status.as_u16();
        let confirmed = u64::from(confirmed).min(MAX_STREAK);
        let known = Self::update(bucket, tag, |old| {
            if (old >> 8) as u16 != status {
                return Some(pack(tag, status, confirmed));
            }
            let bits = old & 0xff;
            (bits & (FLAPPED | PRESENT) == 0 && bits < confirmed)
                .then(|| pack(tag, status, confirmed))
        });
        if !known {
            Self::insert(bucket, pack(tag, status, confirmed));
        }
    }
}

impl std::fmt::Debug for Histories {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histories")
            .field("slots", &self.slots.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NF: StatusCode = StatusCode::NOT_FOUND;

    fn key(n: u32) -> Key {
        Key::with_text(&format!("http://h.test/r/{n}"))
    }

    #[test]
    fn a_streak_grows_flaps_stick_and_resets_forget() {
        let h = Histories::new(1024);
        let k = key(1);
        let confirmed: Vec<u8> = (0..4).map(|_| h.missing(&k, NF).confirmed).collect();
        assert_eq!(confirmed, [0, 1, 2, 3]);
        h.present(&k);
        let flap = h.missing(&k, NF);
        assert_eq!((flap.confirmed, flap.flapped), (0, true));
        assert_eq!(h.missing(&k, NF).confirmed, 0, "a flap stays at the base");
        // A peer's streak does not undo a flap seen here.
        h.learned(&k, NF, 5);
        assert_eq!(h.missing(&k, NF).confirmed, 0);
        h.reset(&k);
        assert_eq!(h.missing(&k, NF).confirmed, 0);
        assert_eq!(
            h.missing(&k, NF).confirmed,
            1,
            "a reset forgets the flap too"
        );
        // A peer's longer streak carries on; a shorter one changes nothing.
        h.learned(&k, NF, 6);
        h.learned(&k, NF, 2);
        assert_eq!(h.missing(&k, NF).confirmed, 7);
        // A 2xx for a key without a record takes no slot.
        let fresh = key(2);
        h.present(&fresh);
        assert_eq!(
            h.missing(&fresh, NF),
            Streak {
                confirmed: 0,
                flapped: false
            }
        );
    }

    #[test]
    fn a_full_bucket_keeps_the_long_streaks_and_pushed_out_keys_fall_back_to_the_base() {
        // One bucket of 8: a ninth key takes the place of the shortest streak.
        let h = Histories::new(1);
        assert_eq!(h.bytes(), 64);
        let a = key(100);
        for _ in 0..3 {
            h.missing(&a, NF);
        }
        let others: Vec<Key> = (0..8).map(key).collect();
        for k in &others {
            h.missing(k, NF);
        }
        // a's streak (2 so far) survived the eight one-off keys: the eighth pushed out a
        // one-off key, not the long streak.
        assert_eq!(h.missing(&a, NF).confirmed, 3);
        // A key pushed out starts again from the base: never with another key's streak.
        let again: Vec<u8> = others.iter().map(|k| h.missing(k, NF).confirmed).collect();
        assert!(again.iter().all(|&c| c <= 1), "{again:?}");
        assert!(again.contains(&0), "nine keys in eight slots: {again:?}");
        for _ in 0..100 {
            h.missing(&a, NF);
        }
        assert_eq!(h.missing(&a, NF).confirmed, MAX_STREAK as u8);
    }
}
