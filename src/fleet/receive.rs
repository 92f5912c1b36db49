//! The receiving task: other replicas' events from Redis, and the warm-up, each checked
//! against what this replica trusts (see the module docs of `fleet`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use http::StatusCode;
use http::header::AGE;
use tokio::time::{Instant, timeout};

use super::Counters;
use super::tasks::{CATCH_UP, CLOCKS, Config, KEEPALIVE, MAX_AGE, REPLICAS, TRANSIT, unix_ms};
use super::wire::{self, Body, Message, Refusal, ms};
use crate::cache::{Answer, Head, Learned, State};
use crate::counter::{Counter, bump};

/// Up to `limit` of the keys in Redis that start with `prefix`, as bytes: a key name that is
/// not text (something else wrote it) must not fail the whole scan.
async fn scan(
    prefix: &str,
    conn: &mut impl redis::aio::ConnectionLike,
    limit: usize,
    each: Duration,
) -> redis::RedisResult<Vec<Vec<u8>>> {
    let pattern = format!("{}*", glob_escape(prefix));
    let (mut cursor, mut keys) = (0u64, Vec::new());
    loop {
        let mut command = redis::cmd("SCAN");
        command
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000);
        let round = command.query_async(conn);
        let (next, batch): (u64, Vec<Vec<u8>>) = timeout(each, round)
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "SCAN timed out")))??;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 || keys.len() >= limit {
            keys.truncate(limit);
            return Ok(keys);
        }
    }
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What is read from Redis beside the message loop once subscribed.
#[derive(Clone, Copy, Debug)]
enum Sync {
    /// The first subscription: up to `warm` stored copies.
    Warm,
    /// A subscription lost at `lost_at` (at the latest: the last time it was heard from):
    /// what was sent since (a clear, forgets, 404s) is read back from the stored copies and
    /// tombstones.
    CatchUp { lost_at: Instant },
}

/// Subscribes to the channel and applies other replicas' events, reconnecting with backoff
/// whenever the subscription is lost. Once subscribed (so nothing published meanwhile is
/// missed), it warms up, or after a lost subscription catches up, *beside* the message loop:
/// a long warm-up never delays a message, whose age is judged from when it is handled.
pub(crate) async fn run(cfg: Arc<Config>, state: Arc<State>, counters: Arc<Counters>) {
    let mut backoff = cfg.reconnect_min;
    let mut pending = Some(Sync::Warm);
    let mut known: Option<u64> = None;
    let mut lost_at: Option<Instant> = None;
    let mut first = true;
    let mut seen = Seen::default();
    loop {
        let attempt = async {
            let mut pubsub = cfg.client.get_async_pubsub().await?;
            pubsub.subscribe(&cfg.channel).await?;
            // A SUBSCRIBE refused (NOAUTH, NOPERM) is not an error to redis-rs: the PING
            // that follows it is answered with the refusal.
            match pubsub.ping::<redis::Value>().await? {
                redis::Value::ServerError(e) => Err(redis::RedisError::from(e)),
                _ => Ok(pubsub),
            }
        };
        let pubsub = match timeout(cfg.timeout, attempt).await {
            Ok(Ok(pubsub)) => Some(pubsub),
            Ok(Err(e)) => {
                super::note_error(&counters, &e);
                None
            }
            Err(_) => None,
        };
        if let Some(pubsub) = pubsub {
            if !first {
                bump(&counters.reconnects);
            }
            first = false;
            counters.set_connected(true);
            backoff = cfg.reconnect_min;
            if let Some(at) = lost_at {
                // Counted from the loss, not from now: what was sent after it is read back
                // (a catch-up that fails is retried, from the same loss).
                pending = Some(Sync::CatchUp { lost_at: at });
            }
            // The last sign of life of this subscription: a silent loss (a half-open
            // connection) is noticed only when a keepalive PING goes unanswered, and what
            // was sent since this moment may not have come.
            let mut heard = Instant::now();
            let (mut sink, mut stream) = pubsub.split();
            let mut syncing = pending.is_some();
            let reading = sync(
                &cfg,
                &state,
                &counters,
                pending.unwrap_or(Sync::Warm),
                known,
            );
            tokio::pin!(reading);
            // A warm-up or catch-up that failed (Redis busy or slow past the timeout) is
            // tried again with backoff while the subscription lasts: one that stays up would
            // otherwise never catch up on the forgets sent while it was lost.
            let (mut retry_at, mut retry_in) = (None, cfg.reconnect_min);
            loop {
                tokio::select! {
                    read = &mut reading, if syncing => {
                        syncing = false;
                        if let Some(generation) = read {
                            known = generation;
                            pending = None;
                            lost_at = None;
                        } else {
                            retry_at = Some(Instant::now() + retry_in);
                            retry_in = (retry_in * 2).min(cfg.reconnect_max);
                        }
                    }
                    () = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                        retry_at = None;
                        syncing = true;
                        let kind = pending.unwrap_or(Sync::Warm);
                        reading.set(sync(&cfg, &state, &counters, kind, known));
                    }
                    next = timeout(KEEPALIVE, stream.next()) => match next {
                        Ok(Some(msg)) => {
                            heard = Instant::now();
                            let payload = msg.get_payload_bytes();
                            apply(&cfg, &state, &counters, &mut seen, payload);
                        }
                        Ok(None) => break,
                        Err(_) => {
                            // Quiet for a while: make sure the connection is still there.
                            // While subscribed, Redis answers PING with ["pong", ""], not a
                            // string.
                            let ping = sink.ping::<redis::Value>();
                            if !matches!(timeout(cfg.timeout, ping).await, Ok(Ok(_))) {
                                break;
                            }
                            heard = Instant::now();
                        }
                    },
                }
            }
            counters.set_connected(false);
            lost_at.get_or_insert(heard);
            tracing::debug!("fleet: subscription lost, reconnecting");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(cfg.reconnect_max);
    }
}

/// The last sequence number of each replica heard from, for the most recent [`REPLICAS`].
#[derive(Default)]
struct Seen {
    last: HashMap<u64, u64>,
    order: VecDeque<u64>,
}

impl Seen {
    /// Whether `seq` is new from `replica` (and notes it).
    fn fresh(&mut self, replica: u64, seq: u64) -> bool {
        match self.last.get_mut(&replica) {
            Some(last) if seq <= *last => false,
            Some(last) => {
                *last = seq;
                true
            }
            None => {
                if self.order.len() >= REPLICAS {
                    if let Some(old) = self.order.pop_front() {
                        self.last.remove(&old);
                    }
                }
                self.order.push_back(replica);
                self.last.insert(replica, seq);
                true
            }
        }
    }
}

fn apply(cfg: &Config, state: &State, counters: &Counters, seen: &mut Seen, payload: &[u8]) {
    let rejected = &counters.rejected;
    let signed = match wire::decode(payload) {
        Ok(s) => s,
        Err(Refusal::Oversized) => return bump(&rejected.oversized),
        Err(Refusal::Version) => return bump(&rejected.version),
        Err(Refusal::Malformed) => return bump(&rejected.malformed),
    };
    let Message {
        replica,
        seq,
        sent_ms,
        body,
    } = signed.message;
    if replica == cfg.replica {
        return;
    }
    bump(&counters.received);
    // Authenticated before anything else is believed, the sequence number included (a forger
    // must not be able to make a replica's genuine messages look replayed).
    if let Some(signer) = &cfg.signer {
        let Some(mac) = signed.mac else {
            return bump(&rejected.unsigned);
        };
        if !signer.check_message(&cfg.channel, signed.covered, mac) {
            return bump(&rejected.signature);
        }
        if unix_ms().abs_diff(sent_ms) > ms(CLOCKS) {
            return bump(&rejected.stale);
        }
        // Sent before this tier started: its replay memory cannot tell a copy played again
        // from the genuine message, and a write made before it started (by another replica,
        // or here before the tier attached) may have superseded it. A 404 lost this way costs
        // one upstream request.
        if matches!(body, Body::Missing { .. }) && sent_ms < cfg.started_ms {
            return bump(&rejected.stale);
        }
    }
    if !seen.fresh(replica, seq) {
        return bump(&rejected.replayed);
    }
    match body {
        Body::Missing {
            key,
            status,
            ttl,
            age,
            confirmed,
        } => {
            // Only what this replica would have remembered itself: a peer must not make it
            // answer 503 (or 200) from its cache.
            if !(cfg.missing)(status) {
                return bump(&rejected.status);
            }
            if age > MAX_AGE {
                return bump(&rejected.stale);
            }
            // The answer it carries (a `m` message always has one): its fields filtered again
            // here, its body kept only within this replica's limit.
            let Some(answer) = signed.answer.and_then(wire::decode_answer) else {
                return bump(&rejected.malformed);
            };
            // The age the answer had on arrival at the peer (see `publish::answer_section`).
            let origin_age = answer
                .fields
                .iter()
                .find(|(n, _)| n == AGE)
                .and_then(|(_, v)| crate::headers::age(Some(v)))
                .map_or(Duration::ZERO, Duration::from_secs);
            let answer =
                Answer::from_peer(answer.kept, answer.fields, answer.body, state.body_limit);
            // The time the message spent between the peer and here, which its age (counted
            // when it was sent) can't show: told by the two wall clocks, which may disagree,
            // so within `[0, TRANSIT]`. It dates the entry (its `Age`, and its order against
            // an answer that arrived here: RFC 9111 §4). What is left of its TTL stays as
            // the message says, left from now: a peer whose clock lags would otherwise shorten
            // every entry by the whole allowance.
            let transit = Duration::from_millis(unix_ms().saturating_sub(sent_ms)).min(TRANSIT);
            let heard = Heard {
                status,
                ttl,
                age: age + transit,
                origin_age,
                confirmed,
                answer,
            };
            learn(state, counters, &key, heard, &counters.learned);
        }
        Body::Forget { key } => {
            if let Some(k) = state.key_from_text(&key) {
                state.forget_here(&k);
                bump(&counters.forgotten);
            }
        }
        Body::Clear => {
            state.clear(false);
            bump(&counters.forgotten);
        }
    }
}

/// Stores a peer's entry whose request left `age` ago (plus what transit hides) unless the
/// key changed here since; counts into `stored` or the reason it was refused.
/// What a peer said of a key.
struct Heard {
    status: StatusCode,
    ttl: Duration,
    /// How long ago its request left: the message's age, plus its time in transit as the
    /// wall clocks tell it (within `TRANSIT`).
    age: Duration,
    /// The age its answer had on arrival at the peer beyond the request's own (the origin's
    /// `Age`), added to `age` for the entry's `Age` but not for ordering it.
    origin_age: Duration,
    /// Its adaptive TTL's streak (0 from a stored copy, which does not keep it).
    confirmed: u8,
    /// The origin's answer as the peer remembered it (head-only from a stored copy).
    answer: Option<Arc<Answer>>,
}

fn learn(state: &State, counters: &Counters, key: &str, heard: Heard, stored: &Counter) {
    let Heard {
        status,
        ttl,
        age,
        origin_age,
        confirmed,
        answer,
    } = heard;
    let Some(started) = Instant::now().checked_sub(age + TRANSIT) else {
        // Before this process's clock began: nothing to check it against.
        return bump(&counters.rejected.superseded);
    };
    match state.learn(
        key, status, ttl, started, answer, confirmed, age, origin_age,
    ) {
        Learned::Stored { clamped } => {
            bump(stored);
            if clamped {
                bump(&counters.clamped);
            }
        }
        Learned::Superseded => bump(&counters.rejected.superseded),
        Learned::Unreadable => bump(&counters.rejected.malformed),
        // Too large for this replica's byte budget (`max_bytes`).
        Learned::TooLarge => bump(&counters.rejected.oversized),
    }
}

/// Reads the generation and, as `kind` says, stored copies (and, catching up, tombstones);
/// the generation read (`None`: none usable), or `None` if Redis did not answer.
///
/// A generation other than the one last read means a clear this replica did not hear (or
/// a Redis that lost its generation key, or was restored from an older snapshot): it clears
/// what it holds. A missing generation key is no generation: nothing is warmed (copies
/// stored before it was lost may predate a clear) until the next write starts a new one.
async fn sync(
    cfg: &Config,
    state: &State,
    counters: &Counters,
    kind: Sync,
    known: Option<u64>,
) -> Option<Option<u64>> {
    let mut conn = within(cfg, counters, cfg.client.get_multiplexed_async_connection()).await?;
    let generation = within(
        cfg,
        counters,
        redis::cmd("GET")
            .arg(&cfg.gen_key)
            .query_async::<redis::Value>(&mut conn),
    )
    .await?;
    let generation = match &generation {
        redis::Value::Nil => None,
        redis::Value::BulkString(b) if b.len() <= 15 => {
            let number = std::str::from_utf8(b)
                .ok()
                .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok());
            if number.is_none() {
                bump(&counters.rejected.malformed);
            }
            number
        }
        _ => {
            // Something else wrote the key: nothing stored can be placed after the last
            // clear then; the next publish starts a new generation (see `publish::LOCATE`).
            bump(&counters.rejected.malformed);
            tracing::warn!(key = %cfg.gen_key, "fleet: the generation key holds no number; not warming up");
            None
        }
    };
    let (limit, learn_copies, lost_at) = match kind {
        Sync::Warm => (cfg.warm, true, None),
        Sync::CatchUp { lost_at } => {
            if generation != known {
                state.clear(false);
                bump(&counters.forgotten);
            }
            (cfg.warm.max(CATCH_UP), cfg.warm > 0, Some(lost_at))
        }
    };
    let Some(current) = generation else {
        return Some(None);
    };
    if limit == 0 {
        return Some(generation);
    }
    let prefix = format!("{}{current}:", cfg.key_prefix);
    let keys = match scan(&prefix, &mut conn, limit, cfg.timeout * 10).await {
        Ok(keys) => keys,
        Err(e) => {
            super::note_error(counters, &e);
            return None;
        }
    };
    // A key name that is not text is skipped and counted, as a value that is not.
    let keys: Vec<String> = keys
        .into_iter()
        .filter_map(|k| {
            String::from_utf8(k)
                .map_err(|_| bump(&counters.rejected.malformed))
                .ok()
        })
        .collect();
    for chunk in keys.chunks(500) {
        let (now, values): ((u64, u64), Vec<redis::Value>) = within(
            cfg,
            counters,
            redis::pipe()
                .cmd("TIME")
                .cmd("MGET")
                .arg(chunk)
                .query_async(&mut conn),
        )
        .await?;
        let now = now.0 * 1000 + now.1 / 1000;
        // How long ago the loss was, as of Redis's `now` (read just now): not as of the
        // resubscription, which a long scan or a busy Redis may have left seconds behind.
        let lost_for = lost_at.map(|at| at.elapsed());
        for (k, value) in chunk.iter().zip(values) {
            let text = &k[prefix.len()..];
            let value = match value {
                redis::Value::Nil => continue,
                redis::Value::BulkString(b) => match String::from_utf8(b) {
                    Ok(v) => v,
                    // Not text (something else wrote it): this one is skipped, the rest read.
                    Err(_) => {
                        bump(&counters.rejected.malformed);
                        continue;
                    }
                },
                _ => {
                    bump(&counters.rejected.malformed);
                    continue;
                }
            };
            if let Some(lost_for) = lost_for {
                if let Some(at) = value.strip_prefix("t ") {
                    // A forget sent while this replica was not listening (or so soon before
                    // that the transit allowance may hide it).
                    let at = at.parse::<u64>().unwrap_or(u64::MAX);
                    if at.saturating_add(ms(lost_for + TRANSIT)) >= now {
                        if let Some(key) = state.key_from_text(text) {
                            state.forget_here(&key);
                            bump(&counters.forgotten);
                        }
                    }
                    continue;
                }
            }
            if learn_copies {
                warm_one(cfg, state, counters, &prefix, text, Some(&value), now);
            }
        }
    }
    Some(generation)
}

/// `work` within the tier's timeout per round trip (warm-up is as long as it needs to be,
/// beside the message loop, but no single command may hang it); `None` on an error (noted)
/// or a timeout.
async fn within<T>(
    cfg: &Config,
    counters: &Counters,
    work: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Option<T> {
    match timeout(cfg.timeout * 10, work).await {
        Ok(Ok(t)) => Some(t),
        Ok(Err(e)) => {
            super::note_error(counters, &e);
            None
        }
        Err(_) => None,
    }
}

/// One stored copy, `m <start> <ttl> <status>` in Redis's clock (`now`), then
/// ` <sent> <age> <mac>` with a secret; tombstones (`t …`) and keys gone since the scan are
/// skipped.
fn warm_one(
    cfg: &Config,
    state: &State,
    counters: &Counters,
    place: &str,
    key: &str,
    value: Option<&str>,
    now: u64,
) {
    let Some(value) = value else { return };
    if value.starts_with("t ") {
        return;
    }
    // A key held here already (its own answer, or a peer's message, which carry the origin's
    // fields and kept body) is not replaced by a copy, which carries none: a catch-up, or a
    // warm-up that a message overtook, must not turn a faithful hit into a bare head-only one.
    if state
        .key_from_text(key)
        .is_some_and(|k| state.store.peek(&k, Instant::now()).is_some())
    {
        return;
    }
    let mut parts = value.split(' ');
    let fields = (parts.next(), parts.next(), parts.next(), parts.next());
    let (Some("m"), Some(start), Some(ttl), Some(status)) = fields else {
        // A copy stored by version 1 (a bare status) or by something else.
        let version1 = value.parse::<u16>().is_ok();
        return bump(if version1 {
            &counters.rejected.version
        } else {
            &counters.rejected.malformed
        });
    };
    let parsed = (
        start.parse::<u64>(),
        ttl.parse::<u64>(),
        status.parse::<u16>(),
    );
    let (Ok(start), Ok(ttl_ms), Ok(status_code)) = parsed else {
        return bump(&counters.rejected.malformed);
    };
    // In Redis's clock: what is left and how old the entry is.
    let mut left = start.saturating_add(ttl_ms).saturating_sub(now);
    let mut age = now.saturating_sub(start);
    if let Some(signer) = &cfg.signer {
        let (sent, sent_age, mac) = (parts.next(), parts.next(), parts.next());
        let (Some(sent), Some(sent_age), Some(mac)) = (sent, sent_age, mac) else {
            return bump(&counters.rejected.unsigned);
        };
        // Every field a receiver acts on is signed: `start` is Redis's (the script stamps
        // it, the publisher cannot sign it), so it is only believed as far as the signed
        // fields allow — the publisher's send time and the entry's age and TTL then, in its
        // wall clock. The MAC also covers where the copy is stored, its generation included:
        // a copy moved past a clear (a `RENAME` by someone without the secret) does not check.
        let fields = format!("{status} {ttl} {sent} {sent_age}");
        if !signer.check_stored(place, key, &fields, mac) {
            return bump(&counters.rejected.signature);
        }
        let (Ok(sent), Ok(sent_age)) = (sent.parse::<u64>(), sent_age.parse::<u64>()) else {
            return bump(&counters.rejected.malformed);
        };
        let clock = unix_ms();
        let end = sent.saturating_add(ttl_ms);
        // Past its lifetime by the publisher's clock (give or take `CLOCKS`): a copy written
        // back into Redis later.
        if clock > end.saturating_add(ms(CLOCKS)) {
            return bump(&counters.rejected.stale);
        }
        // A rewritten `start` can shorten an entry or age it, never extend or rejuvenate it
        // (beyond the difference between the two wall clocks).
        left = left.min(end.saturating_sub(clock));
        age = age.max(clock.saturating_sub(sent.saturating_sub(sent_age)));
    }
    let Ok(status) = StatusCode::from_u16(status_code) else {
        return bump(&counters.rejected.malformed);
    };
    if !(cfg.missing)(status) {
        return bump(&counters.rejected.status);
    }
    if left == 0 {
        return;
    }
    let age = Duration::from_millis(age);
    let ttl = Duration::from_millis(left);
    // A stored copy carries no answer: what the origin said besides its status is unknown,
    // so the entry says plainly that it has no body (head-only, no fields). Nor the age the
    // answer had on arrival: its `Age` counts from the request (GUARANTEES.md, "Not
    // guaranteed").
    let heard = Heard {
        status,
        ttl,
        age,
        origin_age: Duration::ZERO,
        confirmed: 0,
        answer: Answer::new(Head::default(), None),
    };
    learn(state, counters, key, heard, &counters.warmed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_message_once_per_replica_and_bounded() {
        let mut seen = Seen::default();
        assert!(seen.fresh(1, 1));
        assert!(seen.fresh(1, 2));
        assert!(!seen.fresh(1, 2), "the same again");
        assert!(!seen.fresh(1, 1), "an older one");
        assert!(seen.fresh(2, 1), "another replica counts apart");
        for r in 10..10 + REPLICAS as u64 {
            seen.fresh(r, 1);
        }
        assert!(seen.last.len() <= REPLICAS && seen.order.len() <= REPLICAS);
    }
}
