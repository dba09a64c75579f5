//! The two kinds of task per shard that carry `ShardMsg`s: one flusher that sends each peer's
//! batch with one wake-up, and one receiver per peer that applies what it sends, in order.

use std::cell::RefCell;
use std::rc::Rc;

use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::{GlommioError, ResourceType};

use super::flow;
use crate::broker::messages::Batch;
use crate::broker::messages::ShardId;
use crate::broker::Shard;

/// Sends pending batches whenever there are some, waiting on a full queue.
pub async fn run_flusher(shard: Rc<RefCell<Shard>>, senders: Senders<Batch>) {
    let (ready, sent, counters) = {
        let shard = shard.borrow();
        (shard.outbound.ready(), shard.outbound.sent(), shard.counters.clone())
    };
    loop {
        ready.wait().await;
        let batches = shard.borrow_mut().outbound.take();
        for (to, batch) in batches {
            counters.mesh_batches.add(1);
            counters.mesh_messages.add(batch.len() as u64);
            let result = match senders.try_send_to(to.index(), batch) {
                Err(GlommioError::WouldBlock(ResourceType::Channel(batch))) => {
                    senders.send_to(to.index(), batch).await
                }
                other => other,
            };
            if let Err(error) = result {
                tracing::error!(%to, %error, "cross-shard queue failed; shard stops sending");
                return;
            }
        }
        sent.notify_all();
    }
}

/// Applies every batch a peer sends, in order.
pub fn spawn_receivers(shard: &Rc<RefCell<Shard>>, mut receivers: Receivers<Batch>) {
    for (peer, receiver) in receivers.streams() {
        // Peers are numbered as shards (`try_send_to` in `run_flusher` relies on it too).
        let from = ShardId::new(peer);
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(batch) = receiver.recv().await {
                {
                    let mut shard = shard.borrow_mut();
                    for msg in batch {
                        shard.handle_shard_msg(from, msg);
                    }
                }
                // Subscribers that could not take this batch slow the sending shard down.
                let congested = shard.borrow_mut().take_congested();
                flow::wait_for_subscribers(&shard, congested, None).await;
                glommio::yield_if_needed().await;
            }
        })
        .detach();
    }
}
