//! What shards tell each other (`ShardMsg`), and the batches a shard collects for each peer
//! during a turn (`Outbound`). The runtime's flusher sends each batch with one wake-up; the
//! queues are glommio's channel mesh, one bounded SPSC queue per ordered pair of shards, so the
//! messages from one shard to another keep their order (MQTT 4.6).

use std::rc::Rc;
use std::sync::Arc;

use bytestring::ByteString;

use super::outbox::ConnId;
use super::session::{Message, SessionState, Subscription};
use super::signal::{Event, Signal};
use crate::store::RouteTag;

/// A shard: its place in the mesh (glommio's peer id), which every shard agrees on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(usize);

impl ShardId {
    pub fn new(index: usize) -> ShardId {
        debug_assert!(index < SHARDS_MAX, "shard {index} beyond SHARDS_MAX");
        ShardId(index)
    }

    /// Its place in per-shard tables (the mesh, the counters, the store files).
    pub fn index(self) -> usize {
        self.0
    }

    fn bit(self) -> u64 {
        // Invariant: `new` keeps the index below SHARDS_MAX, the bits of a u64.
        1 << self.0
    }
}

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A set of shards, as a bitmask (hence `SHARDS_MAX`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardSet(u64);

impl ShardSet {
    pub fn insert(&mut self, shard: ShardId) {
        self.0 |= shard.bit();
    }

    pub fn remove(&mut self, shard: ShardId) {
        self.0 &= !shard.bit();
    }

    pub fn union(self, other: ShardSet) -> ShardSet {
        ShardSet(self.0 | other.0)
    }

    pub fn without(self, shard: ShardId) -> ShardSet {
        ShardSet(self.0 & !shard.bit())
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, shard: ShardId) -> bool {
        self.0 & shard.bit() != 0
    }

    /// Shards `0..count`.
    pub fn first(count: usize) -> ShardSet {
        debug_assert!(count <= SHARDS_MAX);
        ShardSet(u64::MAX.checked_shr(64 - count as u32).unwrap_or(0))
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The shards in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = ShardId> {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            let lowest = rest.trailing_zeros() as usize;
            rest &= rest.checked_sub(1)?;
            Some(ShardId(lowest))
        })
    }
}

/// How a QoS 2 message from a stored session is routed (`RouteTag`): its tag, and for a
/// retransmission that start-up found unreleased, the tag it had before the restart: the
/// sessions whose marks had reached that one had it, and do not take it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routing {
    pub tag: RouteTag,
    pub replay_of: Option<RouteTag>,
}

/// Shard sets are bitmasks: at most this many shards.
pub const SHARDS_MAX: usize = 64;

/// Batches in flight per ordered pair of shards. A full queue makes the flusher wait for that
/// peer (backpressure), never a connection task: no shard can block on a cycle of full queues
/// because receivers never wait on flushers.
pub const BATCHES_IN_FLIGHT_MAX: usize = 8;

pub type Batch = Vec<ShardMsg>;

/// Messages waiting for one other shard above which this shard's connections stop reading.
pub const OUTBOUND_HIGH_WATER: usize = 1024;
/// The same in payload bytes. The receiving shard delivers a whole batch before it waits for
/// the subscribers it congested, so a batch must fit in a subscriber's outbox: 1,024 messages of
/// 16 KiB once overflowed a healthy subscriber's 4 MiB cap (`OUTBOX_BYTES_MAX`) and dropped its
/// QoS 0 messages (`tests/hostile.rs`).
pub const OUTBOUND_HIGH_WATER_BYTES: usize = 1 << 20;

#[derive(Debug)]
pub enum ShardMsg {
    /// Deliver to this shard's matching subscribers.
    Publish(Arc<Message>),
    /// The same with persistence: answer `origin` with `Durable { token }` once what the
    /// delivery stored here is durable.
    DurablePublish {
        message: Arc<Message>,
        origin: ShardId,
        token: u64,
        routing: Option<Box<Routing>>,
    },
    /// A message routed with `token` is durable on the sending shard.
    Durable {
        token: u64,
    },
    /// A session moved away and is durable on its new shard: forget its records of `epoch`
    /// and before.
    Forget {
        client_id: ByteString,
        epoch: u64,
    },
    /// Store (or, with an empty payload, delete) in this shard's replica of the retained store.
    Retain(Arc<Message>),
    /// `from` gained its first (`added`) or lost its last subscriber on `filter`.
    Interest {
        filter: ByteString,
        from: ShardId,
        added: bool,
    },
    /// Answered with `BarrierAck` once everything `from` sent before it has been applied here.
    Barrier {
        from: ShardId,
        token: u64,
    },
    BarrierAck {
        token: u64,
    },
    /// To the shard that owns `client_id`'s registry entry: a connection on `from` wants it.
    Claim {
        client_id: ByteString,
        from: ShardId,
        conn: ConnId,
        clean_start: bool,
    },
    /// To the shard holding the previous session (`previous`'s): close it and hand its state
    /// to `to`.
    Evict {
        client_id: ByteString,
        to: ShardId,
        conn: ConnId,
        clean_start: bool,
        previous: ConnId,
    },
    /// `from` gained its first or lost its last member of a shared subscription group.
    SharedInterest {
        filter: ByteString,
        group: ByteString,
        from: ShardId,
        has_members: bool,
    },
    /// Deliver to one member of the group on this shard (forwarded at most `hops` times when
    /// the members left meanwhile).
    SharedPublish {
        message: Arc<Message>,
        filter: ByteString,
        group: ByteString,
        hops: u8,
        /// Who waits for it to be stored (see `DurablePublish`).
        durable: Option<(ShardId, u64)>,
    },
    /// The answer to a claim: the previous session's state, if it is to be resumed, from the
    /// shard that held it (`from`).
    Handoff {
        client_id: ByteString,
        conn: ConnId,
        state: Option<Box<SessionState>>,
        from: ShardId,
    },
    /// From a session's old shard to its new one (`broker::moves`): a message that the old
    /// shard's subscriptions for the session matched, to deliver to it there.
    Forward {
        client_id: ByteString,
        message: Arc<Message>,
        routing: Option<Box<Routing>>,
        /// Who waits for it to be stored (see `DurablePublish`).
        durable: Option<(ShardId, u64)>,
        /// For a shared subscription: the group's member the old shard picked.
        shared: Option<Box<SharedPick>>,
    },
    /// From the new shard to every other one but the old: route the session's messages to
    /// `to` from now on, and say so to both (`MoveSeen` to `from`, `SwitchedHere` to `to`).
    MoveStarted {
        client_id: ByteString,
        from: ShardId,
        to: ShardId,
    },
    /// To the old shard: what `by` routes from now on goes to the new shard directly.
    MoveSeen {
        client_id: ByteString,
        by: ShardId,
    },
    /// To the new shard, from `by`, at the same point of `by`'s routing as its `MoveSeen`.
    SwitchedHere {
        client_id: ByteString,
        by: ShardId,
    },
    /// From the old shard to the new: it has forwarded everything `by` routed before its switch.
    SeenBy {
        client_id: ByteString,
        by: ShardId,
    },
    /// From the old shard to the new: every shard has switched, and the old one has dropped
    /// the session's subscriptions.
    MoveDone {
        client_id: ByteString,
    },
    /// A connection ended together with its session: forget the registry entry if it is still
    /// that connection's.
    Release {
        client_id: ByteString,
        conn: ConnId,
    },
}

/// A member of a shared group picked for a message: the group's filter and name, and the
/// member's subscription.
#[derive(Debug)]
pub struct SharedPick {
    pub filter: ByteString,
    pub group: ByteString,
    pub subscription: Subscription,
}

impl ShardMsg {
    /// The topic and payload bytes it carries, for the bound on batches.
    fn payload_bytes(&self) -> usize {
        match self {
            ShardMsg::Publish(message)
            | ShardMsg::Retain(message)
            | ShardMsg::DurablePublish { message, .. }
            | ShardMsg::SharedPublish { message, .. }
            | ShardMsg::Forward { message, .. } => message.size_bytes(),
            _ => 0,
        }
    }
}

/// Messages waiting to leave this shard, one batch per destination.
pub struct Outbound {
    batches: Vec<Batch>,
    /// Payload bytes in each batch.
    bytes: Vec<usize>,
    ready: Rc<Signal>,
    /// Notified after every round of sends.
    sent: Rc<Event>,
}

impl Outbound {
    pub fn new(shard_count: usize) -> Self {
        Outbound {
            batches: (0..shard_count).map(|_| Vec::new()).collect(),
            bytes: vec![0; shard_count],
            ready: Rc::new(Signal::default()),
            sent: Rc::new(Event::default()),
        }
    }

    pub fn push(&mut self, to: ShardId, msg: ShardMsg) {
        if let (Some(batch), Some(bytes)) =
            (self.batches.get_mut(to.index()), self.bytes.get_mut(to.index()))
        {
            *bytes += msg.payload_bytes();
            batch.push(msg);
            self.ready.notify();
        }
    }

    pub fn ready(&self) -> Rc<Signal> {
        self.ready.clone()
    }

    pub fn sent(&self) -> Rc<Event> {
        self.sent.clone()
    }

    /// Whether some shard has more waiting than `OUTBOUND_HIGH_WATER` messages or
    /// `OUTBOUND_HIGH_WATER_BYTES` bytes.
    pub fn is_congested(&self) -> bool {
        let over = |(batch, bytes): (&Batch, &usize)| {
            batch.len() > OUTBOUND_HIGH_WATER || *bytes > OUTBOUND_HIGH_WATER_BYTES
        };
        self.batches.iter().zip(&self.bytes).any(over)
    }

    /// Messages waiting, for every shard.
    pub fn pending(&self) -> usize {
        self.batches.iter().map(Vec::len).sum()
    }

    pub fn take(&mut self) -> Vec<(ShardId, Batch)> {
        self.bytes.iter_mut().for_each(|bytes| *bytes = 0);
        self.batches
            .iter_mut()
            .enumerate()
            .filter(|(_, batch)| !batch.is_empty())
            .map(|(to, batch)| (ShardId(to), std::mem::take(batch)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_set_holds_what_was_put_in_lowest_first() {
        let mut set = ShardSet::default();
        assert!(set.is_empty() && set.iter().next().is_none());
        for shard in [5, 0, 63, 5] {
            set.insert(ShardId::new(shard));
        }
        let shards: Vec<usize> = set.iter().map(ShardId::index).collect();
        assert_eq!(shards, [0, 5, 63]);
        assert_eq!(set.len(), 3);
        set.remove(ShardId::new(0));
        assert_eq!(set.without(ShardId::new(5)).iter().collect::<Vec<_>>(), [ShardId::new(63)]);
        let mut other = ShardSet::default();
        other.insert(ShardId::new(1));
        assert_eq!(set.union(other).len(), 3);
    }
}
