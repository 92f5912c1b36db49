//! The receiving task: other replicas' events from Redis, and the warm-up, each checked
//! against what this replica trusts (see the module docs of `fleet`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use http::StatusCode;
use tokio::time::{Instant, timeout};

use super::Counters;
use super::tasks::{CLOCKS, Config, KEEPALIVE, MAX_AGE, REPLICAS, TRANSIT, unix_ms};
use super::wire::{self, Body, Message, Refusal, ms};
use crate::cache::{Learned, State};
use crate::counter::{Counter, bump};

/// Up to `limit` of the keys in Redis that start with `prefix`.
async fn scan(
    prefix: &str,
    conn: &mut impl redis::aio::ConnectionLike,
    limit: usize,
) -> redis::RedisResult<Vec<String>> {
    let pattern = format!("{}*", glob_escape(prefix));
    let (mut cursor, mut keys) = (0u64, Vec::new());
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
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

/// Subscribes to the channel and applies other replicas' events, reconnecting with backoff
/// whenever the subscription is lost. Warms up once, after the first subscription (so nothing
/// published while warming is missed).
pub(crate) async fn run(cfg: Arc<Config>, state: Arc<State>, counters: Arc<Counters>) {
    let mut backoff = cfg.reconnect_min;
    let mut warmed = cfg.warm == 0;
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
            if !warmed {
                warmed = warm(&cfg, &state, &counters).await;
            }
            let (mut sink, mut stream) = pubsub.split();
            loop {
                match timeout(KEEPALIVE, stream.next()).await {
                    Ok(Some(msg)) => {
                        let payload = msg.get_payload_bytes();
                        apply(&cfg, &state, &counters, &mut seen, payload);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        // Quiet for a while: make sure the connection is still there.
                        // While subscribed, Redis answers PING with ["pong", ""], not a string.
                        let ping = sink.ping::<redis::Value>();
                        if !matches!(timeout(cfg.timeout, ping).await, Ok(Ok(_))) {
                            break;
                        }
                    }
                }
            }
            counters.set_connected(false);
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
        } => {
            // Only what this replica would have remembered itself: a peer must not make it
            // answer 503 (or 200) from its cache.
            if !(cfg.missing)(status) {
                return bump(&rejected.status);
            }
            if age > MAX_AGE {
                return bump(&rejected.stale);
            }
            learn(state, counters, &key, status, ttl, age, &counters.learned);
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
fn learn(
    state: &State,
    counters: &Counters,
    key: &str,
    status: StatusCode,
    ttl: Duration,
    age: Duration,
    stored: &Counter,
) {
    let Some(started) = Instant::now().checked_sub(age + TRANSIT) else {
        // Before this process's clock began: nothing to check it against.
        return bump(&counters.rejected.superseded);
    };
    match state.learn(key, status, ttl, started) {
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

/// Reads up to `cfg.warm` remembered keys; whether it got through.
async fn warm(cfg: &Config, state: &State, counters: &Counters) -> bool {
    let work = async {
        let mut conn = cfg.client.get_multiplexed_async_connection().await?;
        // Not a number: something else wrote the key. Nothing stored can be placed after the
        // last clear then; the next publish starts a new generation (see `publish::LOCATE`).
        let generation = redis::cmd("GET")
            .arg(&cfg.gen_key)
            .query_async::<redis::Value>(&mut conn)
            .await?;
        let generation = match &generation {
            redis::Value::Nil => Some(0),
            redis::Value::BulkString(b) if b.len() <= 15 => std::str::from_utf8(b)
                .ok()
                .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok()),
            _ => None,
        };
        let Some(generation) = generation else {
            bump(&counters.rejected.malformed);
            tracing::warn!(key = %cfg.gen_key, "fleet: the generation key holds no number; not warming up");
            return Ok(());
        };
        let prefix = format!("{}{generation}:", cfg.key_prefix);
        let keys = scan(&prefix, &mut conn, cfg.warm).await?;
        for chunk in keys.chunks(500) {
            let (now, values): ((u64, u64), Vec<Option<String>>) = redis::pipe()
                .cmd("TIME")
                .cmd("MGET")
                .arg(chunk)
                .query_async(&mut conn)
                .await?;
            let now = now.0 * 1000 + now.1 / 1000;
            for (k, value) in chunk.iter().zip(values) {
                let text = &k[prefix.len()..];
                warm_one(cfg, state, counters, &prefix, text, value.as_deref(), now);
            }
        }
        redis::RedisResult::Ok(())
    };
    // Warming is bounded in keys and in time; a failure leaves it for the next connection.
    matches!(timeout(cfg.timeout * 10, work).await, Ok(Ok(())))
}

/// One stored copy, `m <start> <ttl> <status>` in Redis's clock (`now`), then ` <sent> <mac>`
/// with a secret; tombstones (`t …`) and keys gone since the scan are skipped.
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
    let mut parts = value.split(' ');
    let fields = (parts.next(), parts.next(), parts.next(), parts.next());
    let (sent, mac) = (parts.next(), parts.next());
    let (Some("m"), Some(start), Some(ttl), Some(status)) = fields else {
        // A copy stored by version 1 (a bare status) or by something else.
        let version1 = value.parse::<u16>().is_ok();
        return bump(if version1 {
            &counters.rejected.version
        } else {
            &counters.rejected.malformed
        });
    };
    if let Some(signer) = &cfg.signer {
        let (Some(sent), Some(mac)) = (sent, mac) else {
            return bump(&counters.rejected.unsigned);
        };
        let fields = format!("{status} {ttl} {sent}");
        // The MAC covers where the copy is stored, its generation included: a copy moved
        // past a clear (a `RENAME` by someone without the secret) does not check.
        if !signer.check_stored(place, key, &fields, mac) {
            return bump(&counters.rejected.signature);
        }
        // Past its lifetime by the publisher's clock (give or take `CLOCKS`): a copy written
        // back into Redis later.
        let end = sent
            .parse::<u64>()
            .unwrap_or(0)
            .saturating_add(ttl.parse().unwrap_or(0));
        if unix_ms() > end.saturating_add(ms(CLOCKS)) {
            return bump(&counters.rejected.stale);
        }
    }
    let parsed = (
        start.parse::<u64>(),
        ttl.parse::<u64>(),
        status.parse::<u16>(),
    );
    let (Ok(start), Ok(ttl), Ok(status)) = parsed else {
        return bump(&counters.rejected.malformed);
    };
    let Ok(status) = StatusCode::from_u16(status) else {
        return bump(&counters.rejected.malformed);
    };
    if !(cfg.missing)(status) {
        return bump(&counters.rejected.status);
    }
    let left = start.saturating_add(ttl).saturating_sub(now);
    if left == 0 {
        return;
    }
    let age = Duration::from_millis(now.saturating_sub(start));
    let ttl = Duration::from_millis(left);
    learn(state, counters, key, status, ttl, age, &counters.warmed);
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
