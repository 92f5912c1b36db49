//! The tier's two background tasks: one publishes this replica's events, one applies the
//! others'. Both outlive Redis outages by reconnecting with backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::StreamExt;
use http::StatusCode;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::Counters;
use super::wire::{self, Message, Refusal};
use crate::cache::{PeerEvent, State};

/// Whether this replica's classifier calls a status Missing.
pub(crate) type IsMissing = Box<dyn Fn(StatusCode) -> bool + Send + Sync>;

pub(crate) struct Config {
    pub(crate) client: redis::Client,
    pub(crate) replica: u64,
    pub(crate) channel: String,
    pub(crate) key_prefix: String,
    pub(crate) warm: usize,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) timeout: Duration,
    pub(crate) missing: IsMissing,
}

/// How often an idle subscription is checked with PING, so a half-open connection is noticed.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// At most this many keys are deleted from Redis for one `clear`.
const CLEAR_LIMIT: usize = 100_000;

/// Publishes queued events. A failure drops the event (counted): the request path never
/// waits for Redis, so neither does the queue.
pub(crate) async fn publish(
    cfg: Arc<Config>,
    mut rx: mpsc::Receiver<PeerEvent>,
    counters: Arc<Counters>,
) {
    let mut conn: Option<ConnectionManager> = None;
    // After a failure, events fail fast (counted) until the next try: a Redis that is down
    // costs one timeout per backoff period, not one per event.
    let mut next_try = tokio::time::Instant::now();
    let mut backoff = cfg.reconnect_min;
    while let Some(event) = rx.recv().await {
        if let PeerEvent::Missing { key, .. } | PeerEvent::Forget { key } = &event {
            if key.len() > wire::MAX_KEY {
                counters.unshared.fetch_add(1, Relaxed);
                continue;
            }
        }
        if tokio::time::Instant::now() < next_try {
            counters.publish_failures.fetch_add(1, Relaxed);
            continue;
        }
        if conn.is_none() {
            let manager_cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(cfg.timeout))
                .set_response_timeout(Some(cfg.timeout))
                .set_number_of_retries(1)
                .set_min_delay(cfg.reconnect_min)
                .set_max_delay(cfg.reconnect_max);
            let connect = ConnectionManager::new_with_config(cfg.client.clone(), manager_cfg);
            if let Ok(Ok(c)) = timeout(cfg.timeout, connect).await {
                conn = Some(c);
            }
        }
        let sent = match conn.as_mut() {
            Some(c) => matches!(
                timeout(cfg.timeout, send(&cfg, c, &event)).await,
                Ok(Ok(()))
            ),
            None => false,
        };
        if sent {
            counters.published.fetch_add(1, Relaxed);
            backoff = cfg.reconnect_min;
        } else {
            counters.publish_failures.fetch_add(1, Relaxed);
            next_try = tokio::time::Instant::now() + backoff;
            backoff = (backoff * 2).min(cfg.reconnect_max);
        }
    }
}

async fn send(
    cfg: &Config,
    conn: &mut ConnectionManager,
    event: &PeerEvent,
) -> redis::RedisResult<()> {
    let payload = wire::encode(cfg.replica, event);
    let mut pipe = redis::pipe();
    match event {
        PeerEvent::Missing { key, status, ttl } => {
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            pipe.cmd("SET")
                .arg(format!("{}{key}", cfg.key_prefix))
                .arg(status.as_u16())
                .arg("PX")
                .arg(ms)
                .ignore();
        }
        PeerEvent::Forget { key } => {
            pipe.cmd("DEL")
                .arg(format!("{}{key}", cfg.key_prefix))
                .ignore();
        }
        // Peers first: the stored copies only serve warm-ups, and expire by themselves.
        PeerEvent::Clear => {
            redis::cmd("PUBLISH")
                .arg(&cfg.channel)
                .arg(&payload)
                .query_async::<()>(conn)
                .await?;
            let keys = scan(cfg, conn, CLEAR_LIMIT).await?;
            for chunk in keys.chunks(500) {
                pipe.cmd("UNLINK").arg(chunk).ignore();
            }
            return pipe.query_async::<()>(conn).await;
        }
    }
    pipe.cmd("PUBLISH").arg(&cfg.channel).arg(payload).ignore();
    pipe.query_async::<()>(conn).await
}

/// Up to `limit` of the tier's keys in Redis.
async fn scan(
    cfg: &Config,
    conn: &mut impl redis::aio::ConnectionLike,
    limit: usize,
) -> redis::RedisResult<Vec<String>> {
    let pattern = format!("{}*", glob_escape(&cfg.key_prefix));
    let (mut cursor, mut keys) = (0u64, Vec::new());
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(500)
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
    loop {
        let attempt = async {
            let mut pubsub = cfg.client.get_async_pubsub().await?;
            pubsub.subscribe(&cfg.channel).await?;
            redis::RedisResult::Ok(pubsub)
        };
        if let Ok(Ok(pubsub)) = timeout(cfg.timeout, attempt).await {
            if !first {
                counters.reconnects.fetch_add(1, Relaxed);
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
                    Ok(Some(msg)) => apply(&cfg, &state, &counters, msg.get_payload_bytes()),
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

fn apply(cfg: &Config, state: &State, counters: &Counters, payload: &[u8]) {
    let rejected = &counters.rejected;
    let Message { replica, event } = match wire::decode(payload) {
        Ok(m) => m,
        Err(Refusal::Oversized) => return bump(&rejected.oversized),
        Err(Refusal::Malformed) => return bump(&rejected.malformed),
    };
    if replica == cfg.replica {
        return;
    }
    counters.received.fetch_add(1, Relaxed);
    match event {
        PeerEvent::Missing { key, status, ttl } => {
            // Only what this replica would have remembered itself: a peer must not make it
            // answer 503 (or 200) from its cache.
            if !(cfg.missing)(status) {
                return bump(&rejected.status);
            }
            match state.learn(&key, status, ttl) {
                Some(clamped) => {
                    bump(&counters.learned);
                    if clamped {
                        bump(&counters.clamped);
                    }
                }
                None => bump(&rejected.malformed),
            }
        }
        PeerEvent::Forget { key } => {
            if let Some(k) = state.key_from_text(&key) {
                state.forget_here(&k);
                counters.forgotten.fetch_add(1, Relaxed);
            }
        }
        PeerEvent::Clear => {
            state.clear(false);
            counters.forgotten.fetch_add(1, Relaxed);
        }
    }
}

fn bump(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

/// Reads up to `cfg.warm` remembered keys with their remaining TTL; whether it got through.
async fn warm(cfg: &Config, state: &State, counters: &Counters) -> bool {
    let work = async {
        let mut conn = cfg.client.get_multiplexed_async_connection().await?;
        let keys = scan(cfg, &mut conn, cfg.warm).await?;
        for chunk in keys.chunks(500) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.cmd("GET").arg(k).cmd("PTTL").arg(k);
            }
            let values: Vec<(Option<String>, i64)> = pipe.query_async(&mut conn).await?;
            for (k, (status, pttl)) in chunk.iter().zip(values) {
                let status = status.and_then(|s| s.parse::<u16>().ok());
                let status = status.and_then(|s| StatusCode::from_u16(s).ok());
                let text = &k[cfg.key_prefix.len()..];
                if let (Some(status), Ok(ms @ 1..)) = (status, u64::try_from(pttl)) {
                    if !(cfg.missing)(status) {
                        bump(&counters.rejected.status);
                    } else if state
                        .learn(text, status, Duration::from_millis(ms))
                        .is_some()
                    {
                        counters.warmed.fetch_add(1, Relaxed);
                    }
                }
            }
        }
        redis::RedisResult::Ok(())
    };
    // Warming is bounded in keys and in time; a failure leaves it for the next connection.
    matches!(timeout(cfg.timeout * 10, work).await, Ok(Ok(())))
}
