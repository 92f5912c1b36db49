//! Remembering a Missing answer whose body is still on its way to the caller.
//!
//! The head is copied when the answer lands; the body is copied chunk by chunk as the caller
//! reads it, never ahead of it and without holding anything back. The entry is stored once the
//! body ends — whole when it stayed within the limit, head-only past the limit or when the
//! body failed or was dropped before its end (a body is never replayed in part). Until then
//! the read's ticket is held (so a change to the key meanwhile is seen) and so is the flight's
//! lead (so coalesced waiters are answered with the whole answer).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::answer::{Answer, Head};
use super::coalesce::Leader;
use super::key::Key;
use super::state::State;
use super::store::{Stored, Ticket};

/// An answer being remembered while its body streams to the caller.
pub(crate) struct Recorder {
    state: Arc<State>,
    /// Taken when the entry is stored: the recorder is done.
    key: Option<Key>,
    stored: Stored,
    head: Head,
    ticket: Option<Ticket>,
    started: Instant,
    /// When the answer's head arrived: the entry is dated from then (see `State::remember`).
    arrived: Instant,
    leader: Option<Leader>,
    buf: BytesMut,
    limit: usize,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("key", &self.key)
            .field("copied", &self.buf.len())
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        state: Arc<State>,
        key: Key,
        stored: Stored,
        head: Head,
        ticket: Ticket,
        started: Instant,
        arrived: Instant,
        leader: Option<Leader>,
        expected: Option<u64>,
    ) -> Self {
        let limit = usize::try_from(state.body_limit).unwrap_or(usize::MAX);
        // Sized once when the length is known (and within the limit): no regrowth.
        let expected = expected.map_or(0, |n| usize::try_from(n).unwrap_or(0).min(limit));
        Recorder {
            state,
            key: Some(key),
            stored,
            head,
            ticket: Some(ticket),
            started,
            arrived,
            leader,
            buf: BytesMut::with_capacity(expected),
            limit,
        }
    }

    /// A chunk passed to the caller.
    pub(crate) fn data(&mut self, chunk: &[u8]) {
        if self.key.is_none() {
            return;
        }
        if self.buf.len() + chunk.len() > self.limit {
            // Over the limit: head-only now, so waiters need not wait for the rest.
            self.buf = BytesMut::new();
            self.finish(None);
        } else {
            self.buf.extend_from_slice(chunk);
        }
    }

    /// The body ended: the entry keeps it whole.
    pub(crate) fn end(&mut self) {
        if self.key.is_none() {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        // A buffer that grew past what it holds is copied to its size: the entry's weight
        // counts what it holds.
        let body = if buf.capacity() - buf.len() > 64 {
            Bytes::copy_from_slice(&buf)
        } else {
            buf.freeze()
        };
        self.finish(Some(body));
    }

    /// The body failed: head-only.
    pub(crate) fn abandon(&mut self) {
        self.finish(None);
    }

    fn finish(&mut self, body: Option<Bytes>) {
        let Some(key) = self.key.take() else {
            return;
        };
        let mut stored = self.stored.clone();
        stored.answer = Answer::new(std::mem::take(&mut self.head), body);
        if let Some(t) = self.ticket.take() {
            let (state, started, arrived) = (&self.state, self.started, self.arrived);
            t.settle_with(&state.store.versions, || {
                state.remember(key, stored, started, arrived)
            });
        }
        // The waiters wake once the store says what they should see.
        drop(self.leader.take());
    }
}

impl Drop for Recorder {
    /// Dropped before its end: never replayed in part.
    fn drop(&mut self) {
        self.finish(None);
    }
}
