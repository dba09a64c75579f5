//! Backpressure: when a task has produced more than the next hop can take, it waits before
//! reading more, so TCP pushes back on publishers instead of the broker buffering without bound.
//! Two hops can be congested: a subscriber's connection (its unwritten outbox, or the queue of
//! its online session behind a full in-flight window), and the batches waiting for another
//! shard. The shard reports congestion against its thresholds (`OUTBOX_HIGH_WATER_BYTES`,
//! `QUEUE_HIGH_WATER`, `OUTBOUND_HIGH_WATER`); this module owns the waiting, and when a
//! subscriber is too slow to wait for.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::broker::outbox::{ConnHandle, ConnId};
use crate::broker::Shard;

/// How often a publisher waiting for a subscriber looks at its progress.
pub const PROGRESS_CHECK_EVERY: Duration = Duration::from_millis(50);
/// A subscriber publishers wait for whose socket takes less than `PROGRESS_MIN_BYTES` in this
/// long is stuck: they stop waiting for it, and its own limits (outbox cap, queue limits) drop
/// what it cannot take, until it drains. One that reads, however much slower than its
/// publishers, paces them instead. This is the most a subscriber that stops reading costs the
/// tasks delivering to it, once each time it stops.
pub const STUCK_AFTER: Duration = Duration::from_millis(500);
/// See `STUCK_AFTER`: 8 KiB/s. Measured with four `mosquitto_pub -l` into one `mosquitto_sub`
/// on 2 busy cores: calling stuck any subscriber that had not written a whole outbox within 50
/// ms lost half the messages, since a runnable `mosquitto_sub` can wait that long for a core.
pub const PROGRESS_MIN_BYTES: u64 = 4 << 10;

/// What a connection (or bridge) that published waits for before it reads more: the
/// subscribers it congested, except itself (`own`, which cannot drain while it waits), then
/// room in the batches for other shards. Most turns have nothing to wait for, so the waiting is
/// boxed and made only when there is: inline, its timer made every connection's task 330 bytes
/// larger for its whole life (heaptrack, 4,000 idle connections).
pub async fn wait_after_publishing(
    shard: &Rc<RefCell<Shard>>,
    congested: Vec<Rc<ConnHandle>>,
    own: ConnId,
) {
    let waits =
        congested.iter().any(|conn| conn.id != own) || shard.borrow().outbound.is_congested();
    if waits {
        Box::pin(async {
            wait_for_subscribers(shard, congested, Some(own)).await;
            wait_for_outbound(shard).await;
        })
        .await;
    }
}

/// Waits until the subscribers this task congested have room again, for as long as each keeps
/// draining (see `STUCK_AFTER`). Only the task that made the deliveries waits: a shard-wide
/// wait made subscribers' own tasks wait on each other (measured: fan-out at a tenth of its
/// rate, both processes idle). `own` is the calling connection, which cannot drain while it
/// waits.
pub async fn wait_for_subscribers(
    shard: &Rc<RefCell<Shard>>,
    congested: Vec<Rc<ConnHandle>>,
    own: Option<ConnId>,
) {
    for conn in congested {
        if Some(conn.id) == own {
            continue;
        }
        let (mut progress_bytes, mut progress_at) = (conn.written_bytes(), Instant::now());
        if shard.borrow().is_congested(&conn) {
            shard.borrow().counters.flow_waits.add(1);
        }
        while shard.borrow().is_congested(&conn) {
            let drained = glommio::timer::timeout(PROGRESS_CHECK_EVERY, async {
                conn.drained().wait().await;
                Ok(())
            })
            .await;
            if drained.is_ok() {
                continue;
            }
            if conn.written_bytes() - progress_bytes >= PROGRESS_MIN_BYTES {
                (progress_bytes, progress_at) = (conn.written_bytes(), Instant::now());
            } else if progress_at.elapsed() >= STUCK_AFTER {
                tracing::debug!(client_id = %conn.client_id, "subscriber not draining: stuck");
                conn.stuck.set(true);
                shard.borrow().counters.flow_stuck.add(1);
            }
        }
    }
}

/// Waits while the batches for another shard are over their bound. Only connection tasks wait
/// here: the flusher always progresses because mesh receivers never wait on it, so no cycle of
/// full queues can form between shards.
async fn wait_for_outbound(shard: &Rc<RefCell<Shard>>) {
    loop {
        let sent = {
            let shard = shard.borrow();
            if !shard.outbound.is_congested() {
                return;
            }
            shard.counters.outbound_waits.add(1);
            shard.outbound.sent()
        };
        sent.wait().await;
    }
}
