//! A service's memo of its last hit: the same request again is answered without a lookup.
//!
//! A client asking for one missing record over and over is the case a negative cache exists
//! for. The store's lookup is a key scan, a hash and the shard lock that every core takes for a
//! popular key (the `scaling` bench); the memo is a comparison on the service's own memory.
//!
//! It keeps the request target as spelled — copied into the memo, so that it holds none of the
//! request's buffers (a server's request may share its connection's read buffer) — its `Host`,
//! the credentials' fingerprint (or partition), and the entry, its answer held weakly: what the
//! store forgets is freed whatever the memos hold. It is valid while the store's generation is
//! the one read before the entry was and no change of the store is in progress: any change to
//! the store since (an insert, an eviction, a removal), or under way (a scan removes entries
//! one by one and moves the generation at its end), sends the next request to the store.
//! Every [`USES`]th answer still goes to the store, so its eviction policy sees the entry in
//! use. Requests for other targets leave it in place: the missing record is usually asked for
//! between others (the `scaling` bench alternates a hit and a pass-through), and a memo
//! dropped by each of them was a store lookup, and its shard lock, for every hit.

use http::uri::Scheme;
use http::{HeaderValue, Uri};

use super::state::State;
use super::store::{Entry, Fresh, WeakEntry};
use crate::clock;
use crate::headers::RequestDirectives;

/// Answers from a memo before the next goes to the store.
const USES: u32 = 64;

/// The longest target (authority, path and query, `Host`) a memo keeps: longer ones go to the
/// store every time.
const ROOM: usize = 192;

/// See the module.
pub(crate) struct Memo {
    /// `http` or `https` (1, 2), or none (0): another scheme is not memoised.
    scheme: u8,
    /// The lengths of the authority, the path and query, and the `Host` value in `text`.
    lens: [u8; 3],
    has_host: bool,
    text: [u8; ROOM],
    cred: u64,
    generation: u64,
    entry: WeakEntry,
    uses: u32,
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memo")
            .field("generation", &self.generation)
            .field("uses", &self.uses)
            .finish_non_exhaustive()
    }
}

/// The parts of a target a memo compares.
struct Spelling<'a> {
    scheme: u8,
    authority: &'a [u8],
    pq: &'a [u8],
    host: Option<&'a [u8]>,
}

impl<'a> Spelling<'a> {
    fn of(uri: &'a Uri, host: Option<&'a HeaderValue>) -> Option<Self> {
        let scheme = match uri.scheme() {
            None => 0,
            Some(s) if *s == Scheme::HTTP => 1,
            Some(s) if *s == Scheme::HTTPS => 2,
            Some(_) => return None,
        };
        Some(Spelling {
            scheme,
            authority: uri.authority().map_or("", |a| a.as_str()).as_bytes(),
            pq: uri.path_and_query().map_or("", |p| p.as_str()).as_bytes(),
            host: host.map(HeaderValue::as_bytes),
        })
    }

    fn lens(&self) -> Option<[u8; 3]> {
        let host = self.host.map_or(0, <[u8]>::len);
        if self.authority.len() + self.pq.len() + host > ROOM {
            return None;
        }
        // Each fits: their sum does.
        let len = |n: usize| u8::try_from(n).ok();
        Some([len(self.authority.len())?, len(self.pq.len())?, len(host)?])
    }
}

impl Memo {
    /// A memo of the hit on `entry` for this target, the store's generation read before the
    /// lookup that found it; `None` for a target it does not keep (too long, another scheme).
    pub(crate) fn new(
        uri: &Uri,
        host: Option<&HeaderValue>,
        cred: u64,
        generation: u64,
        entry: Entry,
    ) -> Option<Memo> {
        let spelling = Spelling::of(uri, host)?;
        let lens = spelling.lens()?;
        let mut text = [0u8; ROOM];
        let (a, p) = (spelling.authority.len(), spelling.pq.len());
        text[..a].copy_from_slice(spelling.authority);
        text[a..a + p].copy_from_slice(spelling.pq);
        if let Some(h) = spelling.host {
            text[a + p..a + p + h.len()].copy_from_slice(h);
        }
        Some(Memo {
            scheme: spelling.scheme,
            lens,
            has_host: spelling.host.is_some(),
            text,
            cred,
            generation,
            entry: entry.into_weak(),
            uses: 0,
        })
    }

    /// Whether this is a memo of the target `uri` and `host` spell, byte for byte.
    fn is_of(&self, uri: &Uri, host: Option<&HeaderValue>) -> bool {
        let Some(s) = Spelling::of(uri, host) else {
            return false;
        };
        let [a, p, h] = self.lens.map(usize::from);
        s.scheme == self.scheme
            && s.host.is_some() == self.has_host
            && s.authority.len() == a
            && s.pq.len() == p
            && s.host.map_or(0, <[u8]>::len) == h
            && self.text[..a] == *s.authority
            && self.text[a..a + p] == *s.pq
            && s.host
                .is_none_or(|host| self.text[a + p..a + p + h] == *host)
    }
}

/// The memo's entry, if the memo is of this request's target and still valid, the entry is
/// fresh now and acceptable to the request. A memo found stale is dropped; a memo of another
/// target stays: a client that asks for one missing record between other requests (the usual
/// mix) keeps answering it from the memo.
pub(crate) fn hit(
    memo: &mut Option<Memo>,
    st: &State,
    uri: &Uri,
    host: Option<&HeaderValue>,
    cred: u64,
    directives: &RequestDirectives,
    head: bool,
) -> Option<Fresh> {
    let m = memo.as_mut()?;
    match m.judge(uri, host, cred, st.store.settled_generation()) {
        Verdict::Other => return None,
        Verdict::Stale => {
            *memo = None;
            return None;
        }
        Verdict::Use => {}
    }
    let fresh = st.store.fresh_weak(&m.entry, clock::now())?;
    (directives.accepts(fresh.age, fresh.remaining) && fresh.serves(head)).then_some(fresh)
}

/// What a memo is to a request.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Of another target or other credentials: the request goes to the store, the memo stays.
    Other,
    /// Of this request, but the store changed since (or is changing) or it has answered
    /// [`USES`] times: the request goes to the store, and the memo is dropped.
    Stale,
    /// Of this request, and valid.
    Use,
}

impl Memo {
    /// What this memo is to a request for `uri` and `host` with credentials `cred`, the
    /// store's generation being `generation` (`None`: a change is in progress, see
    /// `Store::settled_generation`). Counts a use only of a request it is of.
    fn judge(
        &mut self,
        uri: &Uri,
        host: Option<&HeaderValue>,
        cred: u64,
        generation: Option<u64>,
    ) -> Verdict {
        if self.cred != cred || !self.is_of(uri, host) {
            return Verdict::Other;
        }
        self.uses += 1;
        if self.uses >= USES || generation != Some(self.generation) {
            Verdict::Stale
        } else {
            Verdict::Use
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spelled(uri: &str, host: Option<&str>) -> (Uri, Option<HeaderValue>) {
        (
            uri.parse().unwrap(),
            host.map(|h| HeaderValue::from_str(h).unwrap()),
        )
    }

    #[test]
    fn a_memo_is_of_one_spelling_of_its_target() {
        let (u, h) = spelled("http://h.test/r/1?x=1", None);
        let m = Memo::new(&u, h.as_ref(), 0, 0, Entry::for_test()).unwrap();
        assert!(m.is_of(&u, None));
        assert!(m.is_of(&u.clone(), None), "the same buffer");
        for (other, host) in [
            ("https://h.test/r/1?x=1", None),
            ("http://H.test/r/1?x=1", None),
            ("http://h.test:81/r/1?x=1", None),
            ("http://h.test/r/1?x=2", None),
            ("http://h.test/r/1", None),
            ("http://h.test/r/10?x=1", None),
            ("/r/1?x=1", None),
            ("http://h.test/r/1?x=1", Some("h.test")),
        ] {
            let (o, oh) = spelled(other, host);
            assert!(!m.is_of(&o, oh.as_ref()), "{other} {host:?}");
        }
        // Origin-form with its Host: the Host is part of the spelling.
        let (o, oh) = spelled("/r/1", Some("a.test"));
        let m = Memo::new(&o, oh.as_ref(), 0, 0, Entry::for_test()).unwrap();
        assert!(m.is_of(&o, oh.as_ref()));
        let (_, other_host) = spelled("/", Some("b.test"));
        assert!(!m.is_of(&o, other_host.as_ref()));
        assert!(!m.is_of(&o, None));
    }

    /// A memo outlives requests for other targets (and other credentials): it is dropped only
    /// when the store changes or it has answered `USES` times, which requests for other
    /// targets don't count towards.
    #[test]
    fn a_memo_stays_through_other_targets_and_goes_when_stale() {
        let (a, _) = spelled("http://h.test/r/404", None);
        let (b, _) = spelled("http://h.test/r/1", None);
        let (same_len, _) = spelled("http://h.test/r/405", None);
        let mut m = Memo::new(&a, None, 7, 3, Entry::for_test()).unwrap();
        for _ in 0..(2 * USES) {
            assert_eq!(m.judge(&b, None, 7, Some(3)), Verdict::Other);
            assert_eq!(m.judge(&same_len, None, 7, Some(3)), Verdict::Other);
            assert_eq!(
                m.judge(&a, None, 8, Some(3)),
                Verdict::Other,
                "other credentials"
            );
        }
        assert_eq!(m.uses, 0, "only its own requests count");
        for _ in 1..USES {
            assert_eq!(m.judge(&a, None, 7, Some(3)), Verdict::Use);
        }
        assert_eq!(
            m.judge(&a, None, 7, Some(3)),
            Verdict::Stale,
            "every USES-th goes to the store"
        );
        let mut m = Memo::new(&a, None, 7, 3, Entry::for_test()).unwrap();
        assert_eq!(
            m.judge(&a, None, 7, Some(4)),
            Verdict::Stale,
            "the store changed"
        );
        let mut m = Memo::new(&a, None, 7, 3, Entry::for_test()).unwrap();
        assert_eq!(
            m.judge(&a, None, 7, None),
            Verdict::Stale,
            "a change in progress"
        );
    }

    /// The size the crate's memory table states (264 bytes on 64-bit targets, in the service).
    #[test]
    fn a_memo_is_a_few_hundred_bytes() {
        let size = std::mem::size_of::<Option<Memo>>();
        assert!((256..=288).contains(&size), "{size}");
    }

    #[test]
    fn a_long_target_or_another_scheme_is_not_memoised() {
        let long = format!("http://h.test/{}", "a".repeat(ROOM));
        let (u, _) = spelled(&long, None);
        assert!(Memo::new(&u, None, 0, 0, Entry::for_test()).is_none());
        let (u, _) = spelled("ftp://h.test/x", None);
        assert!(Memo::new(&u, None, 0, 0, Entry::for_test()).is_none());
        let (u, h) = spelled("/x", Some(&"h".repeat(ROOM)));
        assert!(Memo::new(&u, h.as_ref(), 0, 0, Entry::for_test()).is_none());
    }
}
