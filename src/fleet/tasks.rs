//! The tier's two background tasks: one publishes this replica's events, one applies the
//! others'. Both outlive Redis outages by reconnecting with backoff.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use http::StatusCode;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use super::Counters;
use super::sign::Signer;
use super::wire::{self, Body, Message, Refusal};
use crate::cache::{Learned, PeerEvent, State};

/// Whether this replica's classifier calls a status Missing.
pub(crate) type IsMissing = Box<dyn Fn(StatusCode) -> bool + Send + Sync>;

pub(crate) struct Config {
    pub(crate) client: redis::Client,
    pub(crate) replica: u64,
    pub(crate) channel: String,
    pub(crate) key_prefix: String,
    pub(crate) gen_key: String,
    pub(crate) warm: usize,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) timeout: Duration,
    pub(crate) missing: IsMissing,
    pub(crate) signer: Option<Signer>,
}

/// How often an idle subscription is checked with PING, so a half-open connection is noticed.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// Forgets and clears waiting for Redis to come back; more become one clear.
const RETRY: usize = 1024;
/// A peer's 404 whose request left longer ago than this (when it was published) is refused
/// (`stale`): a queue that far behind holds news too old to check against this replica's
/// tombstones.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(5);
/// Time a message may spend between its publisher and a receiver (Redis's queues, the
/// network) that the age in it cannot show: a local change up to this long before the
/// estimated start of a peer's request still refuses it.
pub(crate) const TRANSIT: Duration = Duration::from_secs(1);
/// How long a forgotten key's tombstone stays in Redis, guarding its stored copy.
const TOMBSTONE: Duration = crate::cache::RECENT_WINDOW;
const _: () = assert!(MAX_AGE.as_millis() + TRANSIT.as_millis() < TOMBSTONE.as_millis());
/// With a secret, how far a signed message's wall-clock time may be from this replica's.
const CLOCKS: Duration = Duration::from_secs(60);
/// The most replicas whose last sequence number is remembered (to refuse replays).
const REPLICAS: usize = 4096;

/// Where a stored copy lives: `KEYS[1]` is the generation key (the Redis time of the last
/// clear, 0 before any), `ARGV[1]` the key prefix and `ARGV[2]` the key. Every entry lives
/// under its generation's prefix, so a clear is one `SET` of the generation, whatever Redis
/// holds, and warm-up reads the current generation only; older ones expire by their TTL.
const LOCATE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gen = tonumber(redis.call('GET', KEYS[1]) or '0')
local key = ARGV[1] .. gen .. ':' .. ARGV[2]
";

/// Stores a copy of a 404 unless its request left before the last clear or before a
/// tombstone of its key (less the transit allowance), or the news is too old. Times are
/// Redis's own clock, so replicas' clocks need not agree. ARGV[3..]: age, ttl (ms), status,
/// transit, max age, and what follows in the value (` <sent> <mac>` with a secret).
const SET_MISSING: &str = r"
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

/// Replaces a key's stored copy with a tombstone stamped with Redis's clock. ARGV[3]: its
/// TTL (ms).
const FORGET: &str = r"
redis.call('SET', key, 't ' .. now, 'PX', ARGV[3])
return 1
";

/// Starts a new generation (never below the last one, should Redis's clock step back).
const CLEAR: &str = r"
redis.call('SET', KEYS[1], math.max(now, gen + 1))
return 1
";

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| ms(d))
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

/// Publishes queued events, never making a request wait.
///
/// After a failure, 404s fail fast (dropped, counted) until the next try: a Redis that is
/// down or slow costs one timeout per backoff period, not one per event, and a lost 404 only
/// costs a peer one upstream request. Forgets and clears are never dropped that way: they
/// wait (in order, at most [`RETRY`]; more collapse into one clear, which covers them) and
/// are retried first at the next try — a lost forget would let peers serve a stale 404.
pub(crate) async fn publish(
    cfg: Arc<Config>,
    mut rx: mpsc::Receiver<PeerEvent>,
    counters: Arc<Counters>,
) {
    let mut link = Link {
        conn: None,
        next_try: Instant::now(),
        backoff: cfg.reconnect_min,
        seq: 0,
    };
    let mut waiting = Waiting::new();
    loop {
        let event = if waiting.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout_at(link.next_try, rx.recv()).await {
                Ok(e) => e,
                Err(_) => {
                    link.flush(&cfg, &counters, &mut waiting).await;
                    continue;
                }
            }
        };
        let Some(event) = event else { return };
        let Some(body) = outgoing(&event, Instant::now()) else {
            bump(&counters.unshared);
            continue;
        };
        if matches!(body, Body::Missing { .. }) {
            if Instant::now() < link.next_try || !waiting.is_empty() {
                bump(&counters.publish_failures);
            } else {
                link.send(&cfg, &counters, &body).await;
            }
            continue;
        }
        wait_for_retry(&mut waiting, body);
        if Instant::now() >= link.next_try {
            link.flush(&cfg, &counters, &mut waiting).await;
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
}

impl Link {
    /// Sends what waits, in order, until one fails.
    async fn flush(&mut self, cfg: &Config, counters: &Counters, waiting: &mut Waiting) {
        while let Some((body, failed)) = waiting.front_mut() {
            if !self.send(cfg, counters, body).await {
                *failed = true;
                return;
            }
            if *failed {
                bump(&counters.retried);
            }
            waiting.pop_front();
        }
    }

    /// One attempt; whether it went through.
    async fn send(&mut self, cfg: &Config, counters: &Counters, body: &Body) -> bool {
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
            Some(c) => match timeout(cfg.timeout, send(cfg, c, self.seq, body)).await {
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

/// What `event` says at `now`, or `None` if it is not to be shared: a key too long, an entry
/// expired while queued, or a 404 too old for a peer to accept.
fn outgoing(event: &PeerEvent, now: Instant) -> Option<Body> {
    Some(match event {
        PeerEvent::Missing {
            key,
            status,
            ttl,
            started,
            at,
        } => {
            let left = (*at + *ttl).checked_duration_since(now)?;
            let age = now.saturating_duration_since(*started);
            if key.len() > wire::MAX_KEY || left.is_zero() || age > MAX_AGE {
                return None;
            }
            Body::Missing {
                key: key.clone(),
                status: *status,
                ttl: left,
                age,
            }
        }
        PeerEvent::Forget { key } if key.len() > wire::MAX_KEY => return None,
        PeerEvent::Forget { key } => Body::Forget { key: key.clone() },
        PeerEvent::Clear => Body::Clear,
    })
}

/// Writes `body`'s stored copy (or tombstone, or generation) and publishes it, in one
/// round trip.
async fn send(
    cfg: &Config,
    conn: &mut ConnectionManager,
    seq: u64,
    body: &Body,
) -> redis::RedisResult<()> {
    let sent = unix_ms();
    let covered = wire::encode_body(cfg.replica, seq, sent, body);
    let mac = cfg
        .signer
        .as_ref()
        .map(|s| s.message(&cfg.channel, covered.as_bytes()));
    let payload = wire::assemble(mac.as_deref(), &covered);
    let mut pipe = redis::pipe();
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
        } => {
            let (ttl, status) = (ms(*ttl).max(1), status.as_u16());
            let suffix = match &cfg.signer {
                Some(s) => {
                    let fields = format!("{status} {ttl} {sent}");
                    format!(" {sent} {}", s.stored(&cfg.key_prefix, key, &fields))
                }
                None => String::new(),
            };
            eval(&mut pipe, SET_MISSING, key);
            pipe.arg(ms(*age))
                .arg(ttl)
                .arg(status)
                .arg(ms(TRANSIT))
                .arg(ms(MAX_AGE))
                .arg(suffix)
                .ignore();
        }
        Body::Forget { key } => {
            eval(&mut pipe, FORGET, key);
            pipe.arg(ms(TOMBSTONE)).ignore();
        }
        Body::Clear => {
            eval(&mut pipe, CLEAR, "");
            pipe.ignore();
        }
    }
    pipe.cmd("PUBLISH").arg(&cfg.channel).arg(payload).ignore();
    pipe.query_async::<()>(conn).await
}

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
pub(crate) async fn subscribe(cfg: Arc<Config>, state: Arc<State>, counters: Arc<Counters>) {
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
            counters.connected.store(true, Relaxed);
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
            counters.connected.store(false, Relaxed);
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
    stored: &AtomicU64,
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
    }
}

/// Reads up to `cfg.warm` remembered keys; whether it got through.
async fn warm(cfg: &Config, state: &State, counters: &Counters) -> bool {
    let work = async {
        let mut conn = cfg.client.get_multiplexed_async_connection().await?;
        let generation: Option<u64> = redis::cmd("GET")
            .arg(&cfg.gen_key)
            .query_async(&mut conn)
            .await?;
        let prefix = format!("{}{}:", cfg.key_prefix, generation.unwrap_or(0));
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
                warm_one(cfg, state, counters, text, value.as_deref(), now);
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
        if !signer.check_stored(&cfg.key_prefix, key, &fields, mac) {
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
            status: StatusCode::NOT_FOUND,
            ttl: Duration::from_secs(ttl),
            started: now - Duration::from_secs(age),
            at: now - Duration::from_secs(age),
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
