//! Backpressure: when a task has produced more than the next hop can take, it waits before
//! reading more, so TCP pushes back on publishers instead of the broker buffering without bound.
//! Two hops can be congested: a subscriber's connection (its unwritten outbox, or the queue of
//! its online session behind a full in-flight window), and the batches waiting for another
//! shard. This module owns the thresholds and the waiting; the shard reports congestion.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use super::connection::{ConnHandle, ConnId};
use super::shard::Shard;
use super::signal::Event;

/// Unwritten bytes in a subscriber's outbox above which its publishers wait.
pub const OUTBOX_HIGH_WATER_BYTES: usize = 64 << 10;
/// Messages queued for an online subscriber (behind its window) above which publishers wait.
pub const QUEUE_HIGH_WATER: usize = 64;
/// Messages waiting for one other shard above which this shard's connections stop reading.
pub const OUTBOUND_HIGH_WATER: usize = 1024;
/// The longest a publisher waits for one subscriber. A subscriber that does not drain within it
/// is marked stuck: publishers stop waiting for it and its own limits (outbox cap, queue limits)
/// drop what it cannot take, so one stuck client cannot stall the others for long.
pub const STALL_MAX: Duration = Duration::from_millis(50);

/// What a producing task must wait for.
pub enum Congestion {
    /// A subscriber's connection; woken each time it writes.
    Subscriber(Rc<ConnHandle>),
    /// The batches for another shard; woken each time the flusher sends. The flusher always
    /// progresses (receivers never wait on flushers), so this wait has no time limit.
    Outbound(Rc<Event>),
}

/// Waits until nothing this shard produced is congested. `own` is the calling connection, which
/// cannot drain while it waits, so it is never waited for.
pub async fn wait_for_room(shard: &Rc<RefCell<Shard>>, own: Option<ConnId>) {
    loop {
        let congestion = shard.borrow_mut().congestion(own);
        match congestion {
            None => return,
            Some(Congestion::Outbound(sent)) => sent.wait().await,
            Some(Congestion::Subscriber(conn)) => {
                let drained = glommio::timer::timeout(STALL_MAX, async {
                    conn.drained().wait().await;
                    Ok(())
                })
                .await;
                if drained.is_err() {
                    tracing::debug!(client_id = %conn.client_id, "subscriber not draining: stuck");
                    shard.borrow_mut().mark_stuck(&conn);
                }
            }
        }
    }
}
