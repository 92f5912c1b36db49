//! The publishing task: this replica's events to Redis, never making a request wait.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use http::header::AGE;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use super::Counters;
use super::tasks::{Config, MAX_AGE, RETRY, TOMBSTONE, TRANSIT, unix_ms};
use super::wire::{self, Body, ms};
use crate::cache::{PeerEvent, State};
use crate::counter::bump;

/// Where a stored copy lives: `KEYS[1]` is the generation key (the Redis time of the last
/// clear, 0 before any), `ARGV[1]` the key prefix and `ARGV[2]` the key. Every entry lives
/// under its generation's prefix, so a clear is one `SET` of the generation, whatever Redis
/// holds, and warm-up reads the current generation only; older ones expire by their TTL.
///
/// A generation that is not a plain number of at most 15 digits (something else wrote the
/// key, or a value of another type) would make every script fail for good: it is replaced by
/// a new generation, as a clear would, since nothing stored before can be trusted to be newer
/// than the last real clear.
const LOCATE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local raw = redis.pcall('GET', KEYS[1])
if not raw then
  raw = string.format('%d', now - 6001)
  redis.pcall('SET', KEYS[1], raw)
elseif type(raw) ~= 'string' or #raw > 15 or not string.match(raw, '^%d+$') then
  raw = tostring(now)
  redis.call('SET', KEYS[1], raw)
end
local gen = tonumber(raw)
local key = ARGV[1] .. raw .. ':' .. ARGV[2]
";

/// Stores a copy of a 404 unless its request left before the last clear or before a
/// tombstone of its key (less the transit allowance), or the news is too old. Times are
/// Redis's own clock, so replicas' clocks need not agree. ARGV[3..]: age, ttl (ms), status,
/// transit, max age, what follows in the value (` <sent> <mac>` with a secret), and the
/// generation that MAC was made for (empty without a secret): if another is current, nothing
/// is stored and the current one is returned (`g<generation>`), for the next copy's MAC.
const SET_MISSING: &str = r"
if ARGV[9] ~= '' and ARGV[9] ~= raw then return 'g' .. raw end
local age = tonumber(ARGV[3])
if age > tonumber(ARGV[7]) then return 0 end
local start = now - age
if gen >= start - tonumber(ARGV[6]) then return 0 end
local cur = redis.call('GET', key)
if cur then
  local at = string.match(cur, '^t (%d+)')
  if at and tonumber(at) >= start - tonumber(ARGV[6]) then return 0 end
end
local v = 'm ' .. start .. ' ' .. ARGV[4] .. ' ' .. ARGV[5] .. ARGV[8]
redis.call('SET', key, v, 'PX', ARGV[4])
return 1
";

/// Returns the current generation, repaired by `LOCATE` as every script
/// would: the signing publisher reads it through this, never with a plain `GET`, which fails
/// for good on a key of another type.
const GENERATION: &str = r"
return raw
";

/// Replaces a key's stored copy with a tombstone stamped with Redis's clock. ARGV[3]: its
/// TTL (ms).
///
/// The stored copy is deleted first: a full Redis (`maxmemory`, `noeviction`) refuses the
/// tombstone's `SET` but never a `DEL`, so no late replica warms the forgotten copy up; the
/// failed tombstone is an error, and the forget is retried until it is written.
const FORGET: &str = r"
redis.call('DEL', key)
local ok = redis.pcall('SET', key, 't ' .. now, 'PX', ARGV[3])
if type(ok) == 'table' and ok.err then return redis.error_reply(ok.err) end
return 1
";

/// Starts a new generation (never below the last one, should Redis's clock step back), and
/// returns it (`g<generation>`).
///
/// A full Redis refuses the `SET`: the generation key is deleted instead (never refused), so
/// warm-up reads nothing until the next write starts a new generation; the clear is still an
/// error, retried.
const CLEAR: &str = r"
local next = string.format('%d', math.max(now, gen + 1))
local ok = redis.pcall('SET', KEYS[1], next)
if type(ok) == 'table' and ok.err then
  redis.call('DEL', KEYS[1])
  return redis.error_reply(ok.err)
end
return 'g' .. next
";

/// Publishes queued events, never making a request wait.
///
/// After a failure, 404s fail fast (dropped, counted) until the next try: a Redis that is
/// down or slow costs one timeout per backoff period, not one per event, and a lost 404 only
/// costs a peer one upstream request. Forgets and clears are never dropped that way: they
/// wait (in order, at most [`RETRY`]; more collapse into one clear, which covers them) and
/// are retried first at the next try — a lost forget would let peers serve a stale 404. A
/// forget or clear that found the queue full (this task stuck on a slow Redis while traffic
/// went on) is owed as one clear the same way.
pub(crate) async fn run(
    cfg: Arc<Config>,
    rx: mpsc::Receiver<PeerEvent>,
    state: Arc<State>,
    counters: Arc<Counters>,
) {
    let mut link = Link {
        conn: None,
        next_try: Instant::now(),
        backoff: cfg.reconnect_min,
        seq: 0,
        generation: None,
    };
    let mut unsent = Unsent {
        waiting: Waiting::new(),
        rx,
        state: state.clone(),
    };
    let Unsent { waiting, rx, .. } = &mut unsent;
    let peers = &state.peers;
    loop {
        // Checked on every turn, not only when woken: a debt run up while this task was
        // busy is paid before the next event is looked at.
        if peers.take_owed_clear() {
            wait_for_retry(waiting, Body::Clear);
            if Instant::now() >= link.next_try {
                link.flush(&cfg, &counters, waiting).await;
            }
            continue;
        }
        let event = tokio::select! {
            biased;
            () = peers.clear_owed() => continue,
            () = tokio::time::sleep_until(link.next_try), if !waiting.is_empty() => {
                link.flush(&cfg, &counters, waiting).await;
                continue;
            }
            event = rx.recv() => event,
        };
        let Some(event) = event else { return };
        let made = Instant::now();
        let Some(body) = outgoing(&event, made) else {
            bump(&counters.unshared);
            continue;
        };
        if matches!(body, Body::Missing { .. }) {
            if Instant::now() < link.next_try || !waiting.is_empty() {
                bump(&counters.publish_failures);
            } else {
                let section = answer_section(&event);
                link.send(&cfg, &counters, &body, made, section.as_deref())
                    .await;
            }
            continue;
        }
        wait_for_retry(waiting, body);
        if Instant::now() >= link.next_try {
            link.flush(&cfg, &counters, waiting).await;
        }
    }
}

/// What the publisher holds that the peers have not heard yet. The task ends when its tier
/// is dropped (aborted at any await, or its queue closed): a forget or clear still waiting
/// or queued then is owed to the next tier attached to this cache as one clear — a lost
/// forget would let peers serve a stale 404.
struct Unsent {
    waiting: Waiting,
    rx: mpsc::Receiver<PeerEvent>,
    state: Arc<State>,
}

impl Drop for Unsent {
    fn drop(&mut self) {
        self.rx.close();
        let mut owed = !self.waiting.is_empty();
        while let Ok(event) = self.rx.try_recv() {
            owed |= !matches!(event, PeerEvent::Missing { .. });
        }
        if owed {
            self.state.peers.owe_clear();
        }
    }
}

/// Forgets and clears to send, in order, each with whether an attempt at it failed.
type Waiting = VecDeque<(Body, bool)>;

/// Queues a forget or clear; a clear makes everything before it moot.
fn wait_for_retry(waiting: &mut Waiting, body: Body) {
    if matches!(body, Body::Clear) || waiting.len() >= RETRY {
        let failed = waiting.iter().any(|(_, f)| *f);
        waiting.clear();
        waiting.push_back((Body::Clear, failed));
    } else {
        waiting.push_back((body, false));
    }
}

/// The publisher's connection and its backoff.
struct Link {
    conn: Option<ConnectionManager>,
    next_try: Instant,
    backoff: Duration,
    seq: u64,
    /// With a secret: the generation stored copies are signed for (a copy's MAC covers where
    /// it is stored, so it cannot be moved past a clear). `None` until read from Redis.
    generation: Option<String>,
}

impl Link {
    /// Sends what waits, in order, until one fails.
    async fn flush(&mut self, cfg: &Config, counters: &Counters, waiting: &mut Waiting) {
        while let Some((body, failed)) = waiting.front_mut() {
            if !self.send(cfg, counters, body, Instant::now(), None).await {
                *failed = true;
                return;
            }
            if *failed {
                bump(&counters.retried);
            }
            waiting.pop_front();
        }
    }

    /// One attempt; whether it went through. `made`: when `body` was made (a 404's age and
    /// TTL are as of then); `answer`: a `m` message's answer section.
    async fn send(
        &mut self,
        cfg: &Config,
        counters: &Counters,
        body: &Body,
        made: Instant,
        answer: Option<&[u8]>,
    ) -> bool {
        if self.conn.is_none() {
            let manager_cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(cfg.timeout))
                .set_response_timeout(Some(cfg.timeout))
                .set_number_of_retries(1)
                .set_min_delay(cfg.reconnect_min)
                .set_max_delay(cfg.reconnect_max);
            let connect = ConnectionManager::new_with_config(cfg.client.clone(), manager_cfg);
            match timeout(cfg.timeout, connect).await {
                Ok(Ok(c)) => self.conn = Some(c),
                Ok(Err(e)) => super::note_error(counters, &e),
                Err(_) => {}
            }
        }
        self.seq += 1;
        let sent = match self.conn.as_mut() {
            Some(c) => match timeout(
                cfg.timeout,
                send(cfg, c, self.seq, body, made, answer, &mut self.generation),
            )
            .await
            {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    super::note_error(counters, &e);
                    false
                }
                Err(_) => false,
            },
            None => false,
        };
        if sent {
            bump(&counters.published);
            self.backoff = cfg.reconnect_min;
        } else {
            bump(&counters.publish_failures);
            self.next_try = Instant::now() + self.backoff;
            self.backoff = (self.backoff * 2).min(cfg.reconnect_max);
        }
        sent
    }
}

/// Issue 17: a `m` message's answer section (see [`wire::encode_answer`]): the remembered
/// answer; head-only when it is larger than [`wire::MAX_ANSWER`]; bare head-only when even its
/// fields are. `None` for other events.
///
/// The age the answer had on arrival travels as an `Age` field (whole seconds, none when 0):
/// the receiver adds it to the age of the request, so a peer's hit says its whole age, the
/// origin's included (RFC 9111 §4.2.3, §5.1).
fn answer_section(event: &PeerEvent) -> Option<Vec<u8>> {
    let PeerEvent::Missing {
        answer, origin_age, ..
    } = event
    else {
        return None;
    };
    // Whole seconds, rounded up: an age is never understated (RFC 9111 §4.2.3).
    let secs = origin_age.as_secs() + u64::from(origin_age.subsec_nanos() > 0);
    let age = (secs > 0).then(|| HeaderValue::from(secs));
    let age = age.as_ref().map(|v| (&AGE, v));
    let bare_head_only = || wire::encode_answer(false, age.into_iter(), &[]);
    let Some(a) = answer else {
        // Nothing but the status: kept, no fields, an empty body.
        return Some(wire::encode_answer(true, age.into_iter(), &[]));
    };
    let full = wire::encode_answer(a.kept(), a.fields().chain(age), a.body());
    if full.len() <= wire::MAX_ANSWER {
        return Some(full);
    }
    let head = a
        .head_only()
        .map(|h| wire::encode_answer(false, h.fields().chain(age), &[]))
        .filter(|h| h.len() <= wire::MAX_ANSWER);
    Some(head.unwrap_or_else(bare_head_only))
}

/// What `event` says at `now`, or `None` if it is not to be shared: a key too long, an entry
/// expired while queued, or a 404 too old for a peer to accept.
fn outgoing(event: &PeerEvent, now: Instant) -> Option<Body> {
    Some(match event {
        PeerEvent::Missing {
            key,
            status,
            ttl,
            answer: _,
            started,
            at,
            confirmed,
            // In the answer section (see `answer_section`).
            origin_age: _,
        } => {
            let left = (*at + *ttl).checked_duration_since(now)?;
            let age = now.saturating_duration_since(*started);
            if !wire::shareable(key) || left.is_zero() || age > MAX_AGE {
                return None;
            }
            Body::Missing {
                key: key.clone(),
                status: *status,
                ttl: left,
                age,
                confirmed: *confirmed,
            }
        }
        PeerEvent::Forget { key } if key.len() > wire::MAX_KEY => return None,
        PeerEvent::Forget { key } => Body::Forget { key: key.clone() },
        PeerEvent::Clear => Body::Clear,
    })
}

/// Writes `body`'s stored copy (or tombstone, or generation) and publishes it, in one
/// round trip (two for the first signed copy, which needs the generation to sign for).
async fn send(
    cfg: &Config,
    conn: &mut ConnectionManager,
    seq: u64,
    body: &Body,
    made: Instant,
    answer: Option<&[u8]>,
    generation: &mut Option<String>,
) -> redis::RedisResult<()> {
    let signed_copy = cfg.signer.is_some() && matches!(body, Body::Missing { .. });
    if signed_copy && generation.is_none() {
        let current: String = redis::cmd("EVAL")
            .arg(format!("{LOCATE}{GENERATION}"))
            .arg(1)
            .arg(&cfg.gen_key)
            .arg(&cfg.key_prefix)
            .arg("")
            .query_async(&mut *conn)
            .await?;
        *generation = Some(current);
    }
    let sent = unix_ms();
    // A 404's age and what is left of its TTL as of the send time the message carries: the
    // connection (made at the first send) or the generation read may have taken a while,
    // which the age must count (a receiver counts what comes after `sent` from the clocks).
    let aged;
    let body = match body {
        Body::Missing {
            key,
            status,
            ttl,
            age,
            confirmed,
        } if !made.elapsed().is_zero() => {
            let late = made.elapsed();
            aged = Body::Missing {
                key: key.clone(),
                status: *status,
                ttl: ttl.saturating_sub(late),
                age: *age + late,
                confirmed: *confirmed,
            };
            &aged
        }
        _ => body,
    };
    let covered = wire::with_answer(wire::encode_body(cfg.replica, seq, sent, body), answer);
    let mac = cfg
        .signer
        .as_ref()
        .map(|s| s.message(&cfg.channel, &covered));
    let payload = wire::assemble_bytes(mac.as_deref(), &covered);
    let mut pipe = redis::pipe();
    // Peers first: they never read the stored copy when a message comes, so the script need
    // not delay them. A clear bumps the generation first (peers told of a clear must find no
    // copy from before it).
    if !matches!(body, Body::Clear) {
        pipe.cmd("PUBLISH").arg(&cfg.channel).arg(&payload).ignore();
    }
    let eval = |pipe: &mut redis::Pipeline, script: &str, key: &str| {
        pipe.cmd("EVAL")
            .arg(format!("{LOCATE}{script}"))
            .arg(1)
            .arg(&cfg.gen_key)
            .arg(&cfg.key_prefix)
            .arg(key);
    };
    match body {
        Body::Missing {
            key,
            status,
            ttl,
            age,
            ..
        } => {
            let (ttl, status) = (ms(*ttl).max(1), status.as_u16());
            let (suffix, signed_for) = match (&cfg.signer, generation.as_deref()) {
                (Some(s), Some(generation)) => {
                    let (fields, suffix) = stored_fields(status, ttl, sent, ms(*age));
                    let place = format!("{}{generation}:", cfg.key_prefix);
                    let mac = s.stored(&place, key, &fields);
                    (format!("{suffix} {mac}"), generation)
                }
                _ => (String::new(), ""),
            };
            eval(&mut pipe, SET_MISSING, key);
            pipe.arg(ms(*age))
                .arg(ttl)
                .arg(status)
                .arg(ms(TRANSIT))
                .arg(ms(MAX_AGE))
                .arg(suffix)
                .arg(signed_for);
        }
        Body::Forget { key } => {
            eval(&mut pipe, FORGET, key);
            pipe.arg(ms(TOMBSTONE));
        }
        Body::Clear => eval(&mut pipe, CLEAR, ""),
    }
    if matches!(body, Body::Clear) {
        pipe.cmd("PUBLISH").arg(&cfg.channel).arg(&payload).ignore();
    }
    // The script's answer: `g<generation>` when it names the current generation.
    let (answer,): (redis::Value,) = pipe.query_async(conn).await?;
    if let redis::Value::BulkString(b) = answer {
        if let Some(g) = b.strip_prefix(b"g") {
            *generation = Some(String::from_utf8_lossy(g).into_owned());
        }
    }
    Ok(())
}

/// A signed stored copy's fields after its Redis-stamped start: what the MAC covers, and
/// what follows the status in the value (before the MAC). Every field a receiver acts on is
/// covered: the status, the TTL, the publisher's wall-clock send time and the entry's age
/// then (the receiver bounds the unsigned `start` by them).
fn stored_fields(status: u16, ttl: u64, sent: u64, age: u64) -> (String, String) {
    (
        format!("{status} {ttl} {sent} {age}"),
        format!(" {sent} {age}"),
    )
}

#[cfg(test)]
mod tests {

    /// Issue 17: an answer within the message limit travels whole; past it, head-only (its
    /// fields but none describing a body); fields past it too, bare head-only.
    #[test]
    fn answers_past_the_message_limit_travel_head_only() {
        use crate::cache::{Answer, Head};
        use std::sync::Arc;
        let event = |answer: Option<Arc<Answer>>| PeerEvent::Missing {
            key: "k".into(),
            answer,
            status: StatusCode::NOT_FOUND,
            ttl: Duration::from_secs(1),
            started: Instant::now(),
            at: Instant::now(),
            confirmed: 0,
            origin_age: Duration::ZERO,
        };
        let head = |fields: &[(&str, String)]| {
            let mut m = http::HeaderMap::new();
            for (n, v) in fields {
                m.append(
                    http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            Head::of(&m)
        };
        let ct = [
            ("content-type", "application/json".to_owned()),
            ("x-a", "1".to_owned()),
        ];
        let decoded = |a: Option<Arc<Answer>>| {
            let section = answer_section(&event(a)).unwrap();
            assert!(section.len() <= wire::MAX_ANSWER);
            wire::decode_answer(&section).unwrap()
        };
        let small = Answer::new(head(&ct), Some(bytes::Bytes::from_static(b"{}")));
        let w = decoded(small);
        assert!(w.kept);
        assert_eq!((w.fields.len(), &w.body[..]), (2, &b"{}"[..]));
        let big = Answer::new(head(&ct), Some(bytes::Bytes::from(vec![b'x'; 9000])));
        let w = decoded(big);
        assert!(!w.kept);
        let names: Vec<_> = w.fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-a"]);
        let huge = Answer::new(head(&[("x-b", "y".repeat(9000))]), None);
        let w = decoded(huge);
        assert!(!w.kept && w.fields.is_empty());
        // Nothing but the status: kept, empty.
        let w = decoded(None);
        assert!(w.kept && w.fields.is_empty() && w.body.is_empty());
        assert!(answer_section(&PeerEvent::Clear).is_none());
    }
    use super::*;
    use http::StatusCode;

    fn forget(i: usize) -> Body {
        Body::Forget {
            key: format!("k{i}").into(),
        }
    }

    #[test]
    fn forgets_wait_in_order_and_too_many_become_one_clear() {
        let mut waiting = Waiting::new();
        for i in 0..RETRY {
            wait_for_retry(&mut waiting, forget(i));
        }
        assert_eq!(waiting.len(), RETRY);
        assert_eq!(waiting[0].0, forget(0));
        waiting[3].1 = true;
        wait_for_retry(&mut waiting, forget(RETRY));
        assert_eq!(
            waiting.iter().cloned().collect::<Vec<_>>(),
            [(Body::Clear, true)]
        );
        // A clear makes what waits before it moot; what comes after it still waits.
        wait_for_retry(&mut waiting, forget(1));
        wait_for_retry(&mut waiting, Body::Clear);
        assert_eq!(waiting.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_not_worth_sharing_is_kept_local() {
        let now = Instant::now();
        let missing = |key: String, ttl: u64, age: u64| PeerEvent::Missing {
            key: key.into(),
            answer: None,
            status: StatusCode::NOT_FOUND,
            ttl: Duration::from_secs(ttl),
            started: now - Duration::from_secs(age),
            at: now - Duration::from_secs(age),
            confirmed: 0,
            origin_age: Duration::ZERO,
        };
        assert!(outgoing(&missing("k".into(), 60, 1), now).is_some());
        assert!(outgoing(&missing("k".repeat(wire::MAX_KEY + 1), 60, 1), now).is_none());
        assert!(
            outgoing(&missing("k".into(), 60, 6), now).is_none(),
            "too old"
        );
        assert!(
            outgoing(&missing("k".into(), 1, 2), now).is_none(),
            "expired"
        );
        let Some(Body::Missing { ttl, age, .. }) = outgoing(&missing("k".into(), 60, 3), now)
        else {
            panic!()
        };
        assert_eq!(
            (ttl, age),
            (Duration::from_secs(57), Duration::from_secs(3))
        );
    }
}
