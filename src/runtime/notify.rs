//! systemd's notification protocol (sd_notify(3)), for a unit with `Type=notify`: `READY=1` once
//! every shard serves (listeners bound, recovery done), `WATCHDOG=1` only while every shard's
//! executor keeps sweeping (so a wedged shard stops the pings and systemd restarts the broker),
//! `STATUS=` lines with clients and message rates, `STOPPING=1` on shutdown. Each is a datagram
//! to `$NOTIFY_SOCKET`; without it (not started by systemd) nothing is sent.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::broker::counters::{ShardCounters, Totals};

/// Shards that have started serving (accepting clients, or running their bridges).
static SHARDS_SERVING: AtomicUsize = AtomicUsize::new(0);

/// How often the supervisor looks when systemd asked for no watchdog.
const TICK_MAX: Duration = Duration::from_secs(1);
/// How often a `STATUS=` line is sent.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Where notifications go: `$NOTIFY_SOCKET`, a path or (with a leading `@`) an abstract name.
pub struct Notifier {
    socket: UnixDatagram,
    target: SocketAddr,
}

impl Notifier {
    /// The notifier systemd asked for, if it did.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let path = path.to_str()?;
        let target = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok()?,
            None => SocketAddr::from_pathname(path).ok()?,
        };
        let socket = UnixDatagram::unbound().ok()?;
        Some(Notifier { socket, target })
    }

    /// Sends `state` (newline-separated `NAME=value` lines). Failure is logged, never fatal:
    /// systemd going away must not take the broker with it.
    pub fn send(&self, state: &str) {
        if let Err(error) = self.socket.send_to_addr(state.as_bytes(), &self.target) {
            tracing::warn!(%error, state, "systemd notification not sent");
        }
    }
}

/// A shard calls this once it serves.
pub fn shard_serving() {
    SHARDS_SERVING.fetch_add(1, Ordering::Relaxed);
}

/// Whether all `shards` serve.
pub fn all_serving(shards: usize) -> bool {
    SHARDS_SERVING.load(Ordering::Relaxed) >= shards
}

/// `STOPPING=1`, as shutdown begins.
pub fn stopping() {
    if let Some(notifier) = Notifier::from_env() {
        notifier.send("STOPPING=1");
    }
}

/// The watchdog period systemd set (`WATCHDOG_USEC`, for this process when `WATCHDOG_PID`
/// names one): pings go out at half of it.
fn watchdog_period() -> Option<Duration> {
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok()) {
        if pid != std::process::id() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Starts the thread that tells systemd how the broker is, if systemd listens.
pub fn supervise(counters: Arc<[Arc<ShardCounters>]>) {
    let Some(notifier) = Notifier::from_env() else { return };
    let watchdog = watchdog_period();
    let tick = watchdog.map_or(TICK_MAX, |period| (period / 2).min(TICK_MAX));
    let spawned = std::thread::Builder::new().name("culex-notify".into()).spawn(move || {
        let shards = counters.len();
        while !all_serving(shards) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut last = (Instant::now(), Totals::sum(&counters));
        notifier.send(&format!("READY=1\nSTATUS={}", status(&last.1, None)));
        let mut sweeps: Vec<u64> = counters.iter().map(|c| c.sweeps.get()).collect();
        loop {
            std::thread::sleep(tick);
            if watchdog.is_some() {
                // Every shard must have swept since the last ping: one wedged shard stops them.
                let now: Vec<u64> = counters.iter().map(|c| c.sweeps.get()).collect();
                if now.iter().zip(&sweeps).all(|(now, then)| now > then) {
                    notifier.send("WATCHDOG=1");
                    sweeps = now;
                }
            }
            if last.0.elapsed() >= STATUS_EVERY {
                let totals = Totals::sum(&counters);
                let rate = rate(&last, &totals);
                notifier.send(&format!("STATUS={}", status(&totals, Some(rate))));
                last = (Instant::now(), totals);
            }
        }
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the systemd notification thread");
    }
}

/// Messages received and sent per second since `last`.
fn rate(last: &(Instant, Totals), now: &Totals) -> (u64, u64) {
    let secs = last.0.elapsed().as_secs_f64().max(0.001);
    let per_sec = |now: u64, then: u64| (now.saturating_sub(then) as f64 / secs) as u64;
    (
        per_sec(now.publish_received, last.1.publish_received),
        per_sec(now.publish_sent, last.1.publish_sent),
    )
}

fn status(totals: &Totals, rate: Option<(u64, u64)>) -> String {
    let clients = format!("{} clients connected", totals.clients_connected);
    match rate {
        None => clients,
        Some((received, sent)) => format!("{clients}, {received} msg/s in, {sent} msg/s out"),
    }
}
