//! A shard's side of persistence: the changes its sessions and retained messages made since the
//! last commit, and the acknowledgements that wait for those changes to be durable.
//!
//! Sessions write here as they change (no I/O, no await); the shard's store task (`persist`)
//! takes everything pending, commits it in one transaction on the shard's blocking thread, and
//! then releases what waited on it. While one batch commits, the next one fills: group commit.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ahash::AHashMap;
use bytestring::ByteString;

use super::messages::{Routing, ShardId};
use super::outbox::ConnHandle;
use super::session::{Message, Outgoing, Source};
use super::signal::Signal;
use crate::protocol::{LastWill, Packet, PacketId, Publish};
use crate::store::{RouteTag, Stage, StoreOp, StoredEntry, StoredMessage, StoredSource};

/// Who waits for the pending changes to be durable.
pub enum Waiter {
    /// An acknowledgement held on this shard (`Shard::durable`).
    Local(u64),
    /// A barrier of this shard (CONNACK, SUBACK): what they confirm must be durable first.
    Barrier(u64),
    /// One held on another shard, for a message it routed here.
    Remote { shard: ShardId, token: u64 },
    /// A session moved here from `shard`: once its records are durable here, that shard may
    /// forget its own.
    Moved { shard: ShardId, client_id: ByteString, epoch: u64 },
    /// A packet to a stored session's client that must not leave before the change it
    /// reflects (`Session::transmit`).
    Send { conn: Rc<ConnHandle>, packet: Box<Packet> },
    /// A QoS 2 message from a stored session, routed (under acknowledgement `token`) once its
    /// packet id is durable (`Shard::acknowledge`).
    Route { token: u64, message: Arc<Message>, routing: Box<Routing> },
}

#[derive(Default)]
pub struct Journal {
    ops: Vec<StoreOp>,
    waiters: Vec<Waiter>,
    /// The shard whose journal this is, for the `RouteTag`s it gives out.
    shard: u16,
    next_seq: u64,
    next_epoch: u64,
    next_route_number: u64,
    /// Sessions' marks raised since the last take, by (client, epoch, routing shard): written
    /// once per batch, not once per message.
    raised: AHashMap<(ByteString, u64, u16), u64>,
    /// `persistence_sync ack`: acknowledgements and sends wait for their commit.
    holds: bool,
    /// Wakes the store task when there is something to commit or someone waiting.
    wake: Rc<Signal>,
}

pub type SharedJournal = Rc<RefCell<Journal>>;

/// Where a session's records live: its journal, and its incarnation there.
#[derive(Clone)]
pub struct StoredAt {
    pub journal: SharedJournal,
    pub client_id: ByteString,
    pub epoch: u64,
}

/// Where a shard's journal starts: its shard, and the numbers start-up found in use in any
/// store (new ones continue after them).
#[derive(Clone, Copy)]
pub struct JournalStart {
    pub shard: ShardId,
    pub max_seq: u64,
    pub max_epoch: u64,
    pub max_route_number: u64,
}

impl Journal {
    /// `holds`: what depends on a change waits until it is durable (`persistence_sync ack`).
    pub fn new(start: JournalStart, holds: bool) -> SharedJournal {
        Rc::new(RefCell::new(Journal {
            shard: start.shard.index() as u16,
            next_seq: start.max_seq,
            next_epoch: start.max_epoch,
            next_route_number: start.max_route_number,
            holds,
            ..Default::default()
        }))
    }

    pub fn holds(&self) -> bool {
        self.holds
    }

    pub fn push(&mut self, op: StoreOp) {
        self.ops.push(op);
        self.wake.notify();
    }

    /// `waiter` is released once everything pushed so far is durable.
    pub fn wait(&mut self, waiter: Waiter) {
        self.waiters.push(waiter);
        self.wake.notify();
    }

    pub fn wake(&self) -> Rc<Signal> {
        self.wake.clone()
    }

    /// Everything pending, to commit, and who waits for it.
    pub fn take(&mut self) -> (Vec<StoreOp>, Vec<Waiter>) {
        // The marks first: a session forgotten in this batch takes its marks with it.
        let raised = self.raised.drain();
        let mut ops: Vec<StoreOp> = raised
            .map(|((client_id, epoch, shard), number)| StoreOp::SetMark {
                client_id,
                epoch,
                shard,
                number,
            })
            .collect();
        ops.append(&mut self.ops);
        (ops, std::mem::take(&mut self.waiters))
    }

    /// A new tag for a QoS 2 message this shard routes.
    pub fn next_route_tag(&mut self) -> RouteTag {
        self.next_route_number += 1;
        RouteTag { shard: self.shard, number: self.next_route_number }
    }

    pub fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// A new incarnation number for a session, above `continued` (the incarnation it takes
    /// over, numbered by another shard's counter when it moved here). Start-up keeps each
    /// session's highest incarnation: a session that moved to a shard whose counter was behind
    /// came back from a kill -9 as its stale copy, and replayed hundreds of QoS 2 messages
    /// (the chaos soak through bridges).
    pub fn next_epoch(&mut self, continued: Option<u64>) -> u64 {
        self.next_epoch = self.next_epoch.max(continued.unwrap_or(0)) + 1;
        self.next_epoch
    }
}

impl StoredAt {
    fn push(&self, op: StoreOp) {
        self.journal.borrow_mut().push(op);
    }

    /// Records a delivery not stored yet, and returns its sequence number.
    pub fn put_entry(&self, outgoing: &Outgoing, stage: Stage) -> u64 {
        let seq = self.journal.borrow_mut().next_seq();
        let entry = StoredEntry {
            seq,
            message: stored_message(&outgoing.message),
            qos: outgoing.qos,
            retain: outgoing.retain,
            subscription_ids: outgoing.subscription_ids.to_vec(),
            stage,
        };
        self.push(StoreOp::PutEntry {
            client_id: self.client_id.clone(),
            epoch: self.epoch,
            entry: Box::new(entry),
        });
        seq
    }

    pub fn set_stage(&self, seq: u64, stage: Stage) {
        let (client_id, epoch) = (self.client_id.clone(), self.epoch);
        self.push(StoreOp::SetStage { client_id, epoch, seq, stage });
    }

    pub fn delete_entry(&self, seq: u64) {
        let (client_id, epoch) = (self.client_id.clone(), self.epoch);
        self.push(StoreOp::DeleteEntry { client_id, epoch, seq });
    }

    pub fn put_incoming(&self, packet_id: PacketId, tag: RouteTag) {
        let (client_id, epoch) = (self.client_id.clone(), self.epoch);
        self.push(StoreOp::PutIncoming { client_id, epoch, packet_id, tag });
    }

    /// The session took a message routed with `tag`: its mark is committed with the message.
    pub fn raise_mark(&self, tag: RouteTag) {
        let mut journal = self.journal.borrow_mut();
        let key = (self.client_id.clone(), self.epoch, tag.shard);
        let mark = journal.raised.entry(key).or_default();
        *mark = (*mark).max(tag.number);
        journal.wake.notify();
    }

    pub fn delete_incoming(&self, packet_id: PacketId) {
        let (client_id, epoch) = (self.client_id.clone(), self.epoch);
        self.push(StoreOp::DeleteIncoming { client_id, epoch, packet_id });
    }

    pub fn send_when_durable(&self, conn: Rc<ConnHandle>, packet: Packet) {
        self.journal.borrow_mut().wait(Waiter::Send { conn, packet: Box::new(packet) });
    }

    pub fn forget(&self) {
        let (client_id, epoch) = (self.client_id.clone(), self.epoch);
        self.push(StoreOp::ForgetSession { client_id, epoch });
    }
}

/// A message as the store keeps it: its expiry as wall-clock time, which survives a restart.
pub fn stored_message(message: &Message) -> StoredMessage {
    let expires_at_ms = message.expires_at.map(|at| {
        let left = at.saturating_duration_since(Instant::now());
        unix_millis(SystemTime::now() + left)
    });
    StoredMessage {
        publish: Publish {
            dup: false,
            qos: message.qos,
            retain: message.retain,
            topic: message.topic.clone(),
            packet_id: None,
            properties: message.properties.clone(),
            payload: message.payload.clone(),
        },
        publisher: message.publisher.clone(),
        expires_at_ms,
        source: match &message.source {
            Source::Client { username } => StoredSource::Client(username.clone()),
            Source::Unchecked => StoredSource::Unknown,
        },
    }
}

/// The message again, with its expiry back on this process's clock.
pub fn restored_message(stored: StoredMessage) -> Arc<Message> {
    let expires_at = stored.expires_at_ms.map(|ms| {
        let now_ms = unix_millis(SystemTime::now());
        Instant::now() + std::time::Duration::from_millis(ms.saturating_sub(now_ms))
    });
    let publish = stored.publish;
    Arc::new(Message {
        topic: publish.topic,
        payload: publish.payload,
        qos: publish.qos,
        retain: publish.retain,
        properties: publish.properties,
        publisher: stored.publisher,
        source: match stored.source {
            StoredSource::Client(username) => Source::Client { username },
            StoredSource::Unknown => Source::Unchecked,
        },
        expires_at,
    })
}

/// A will held back by its delay, as the store keeps it: the will as a message of its client,
/// and when it is due.
pub fn stored_will(client_id: &ByteString, will: &LastWill, due: Instant) -> (StoredMessage, u64) {
    let left = due.saturating_duration_since(Instant::now());
    // Stored as a PUBLISH, which cannot carry the one will-only property; `due` replaces it.
    let mut properties = will.properties.clone();
    properties.will_delay_interval = None;
    let message = StoredMessage {
        publish: Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: will.topic.clone(),
            packet_id: None,
            properties,
            payload: will.payload.clone(),
        },
        publisher: client_id.clone(),
        expires_at_ms: None,
        source: StoredSource::Unknown,
    };
    (message, unix_millis(SystemTime::now() + left))
}

/// The delayed will again, due on this process's clock (at once if its time passed).
pub fn restored_will(message: StoredMessage, due_ms: u64) -> (LastWill, Instant) {
    let now_ms = unix_millis(SystemTime::now());
    let due = Instant::now() + std::time::Duration::from_millis(due_ms.saturating_sub(now_ms));
    let publish = message.publish;
    let will = LastWill {
        topic: publish.topic,
        payload: publish.payload,
        qos: publish.qos,
        retain: publish.retain,
        properties: publish.properties,
    };
    (will, due)
}

fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Orders retained records of one topic written by different shards: wall-clock microseconds,
/// with the shard id in the low bits to break ties.
pub fn retained_stamp(shard: ShardId) -> u64 {
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    (micros << 8) | (shard.index() as u64 & 0xFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_session_gets_an_incarnation_above_the_one_it_continues() {
        let start = |max_epoch| JournalStart {
            shard: ShardId::new(1),
            max_seq: 0,
            max_epoch,
            max_route_number: 0,
        };
        let journal = Journal::new(start(3), false);
        assert_eq!(journal.borrow_mut().next_epoch(None), 4);
        assert_eq!(journal.borrow_mut().next_epoch(Some(40)), 41, "the other shard's was ahead");
        assert_eq!(journal.borrow_mut().next_epoch(Some(7)), 42, "and never goes back");
    }
}
