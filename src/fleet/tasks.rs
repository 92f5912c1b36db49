//! What the tier's two background tasks share: configuration, limits, small helpers. The
//! tasks themselves: [`publish`](super::publish) sends this replica's events,
//! [`receive`](super::receive) applies the others'. Both outlive Redis outages by
//! reconnecting with backoff.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;

use super::sign::Signer;
use super::wire::ms;

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
    /// This tier's wall-clock start (Unix ms): with a secret, a signed 404 sent before it is
    /// refused (its replay memory starts empty here).
    pub(crate) started_ms: u64,
    pub(crate) signer: Option<Signer>,
}

/// How often an idle subscription is checked with PING, so a half-open connection is noticed.
pub(super) const KEEPALIVE: Duration = Duration::from_secs(5);
/// Forgets and clears waiting for Redis to come back; more become one clear.
pub(super) const RETRY: usize = 1024;
/// A peer's 404 whose request left longer ago than this (when it was published) is refused
/// (`stale`): a queue that far behind holds news too old to check against this replica's
/// tombstones.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(5);
/// Time a message may spend between its publisher and a receiver (Redis's queues, the
/// network) that the age in it cannot show: a local change up to this long before the
/// estimated start of a peer's request still refuses it.
pub(crate) const TRANSIT: Duration = Duration::from_secs(1);
/// How long a forgotten key's tombstone stays in Redis, guarding its stored copy.
pub(super) const TOMBSTONE: Duration = crate::cache::RECENT_WINDOW;
const _: () = assert!(MAX_AGE.as_millis() + TRANSIT.as_millis() < TOMBSTONE.as_millis());
/// With a secret, how far a signed message's wall-clock time may be from this replica's.
pub(super) const CLOCKS: Duration = Duration::from_secs(60);
/// After a lost subscription, how many stored keys (at least) are read back to catch up on
/// the forgets and clears sent meanwhile.
pub(super) const CATCH_UP: usize = 100_000;
/// The most replicas whose last sequence number is remembered (to refuse replays).
pub(super) const REPLICAS: usize = 4096;

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, ms)
}
