//! A client's session: its subscriptions and the QoS state of messages flowing to it (the
//! in-flight window, the queue behind it, and QoS 2 packet ids awaiting PUBREL). A state machine
//! without I/O: it writes packets through its connection's handle, never awaits, and its
//! transferable part ([`SessionState`]) is plain data that can move to another shard on takeover.

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use smallvec::SmallVec;

use super::counters::DropReason;
use super::journal::{restored_message, restored_will, stored_will, StoredAt};
use super::messages::{Routing, ShardId};
use super::outbox::{ConnHandle, ConnId};
use crate::auth::Credentials;
use crate::config::Config;
use crate::protocol::{
    Ack, LastWill, Packet, PacketId, Properties, Publish, QoS, SubscriptionId, SubscriptionOptions,
    TopicFilter, TopicName,
};
use crate::store::{RecoveredSession, RouteTag, Stage, StoreOp, StoredSession};

/// A published message as the broker routes it: one allocation shared by every shard and every
/// subscriber it reaches.
#[derive(Debug)]
pub struct Message {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// 5.0 properties forwarded to subscribers (never a topic alias or subscription id).
    pub properties: Properties,
    /// Client id of the publisher, for No Local subscriptions.
    pub publisher: ByteString,
    /// Who may vouch for it when it is retained (`check_retain_source`).
    pub source: Source,
    /// From the 5.0 Message Expiry Interval: undelivered after this, it is dropped.
    pub expires_at: Option<Instant>,
}

/// Whose write access a retained message needs when it is sent to a new subscriber
/// (`check_retain_source`, as Mosquitto: access taken away by an ACL reload takes the client's
/// retained messages with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A client's PUBLISH: its client id (`Message::publisher`) and user name.
    Client { username: Option<ByteString> },
    /// What the broker publishes itself (`$SYS`, bridge state, what a bridge brings in), a will
    /// (checked when its CONNECT came), or a message restored from a store that did not keep
    /// its source: not checked again.
    Unchecked,
}

impl Message {
    /// Its topic and payload bytes: what queue and batch bounds count.
    pub fn size_bytes(&self) -> usize {
        self.topic.len() + self.payload.len()
    }

    fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// A copy whose topic and payload have their own allocations. A decoded PUBLISH is a slice
    /// of its connection's read buffer and keeps the whole buffer alive: fine while in flight,
    /// not for what is stored (a 10-byte retained message would hold 16 KiB or more). 5.0
    /// properties are still shared with the buffer.
    pub fn detached(&self) -> Message {
        Message {
            topic: self.topic.detached(),
            payload: Bytes::copy_from_slice(&self.payload),
            qos: self.qos,
            retain: self.retain,
            properties: self.properties.clone(),
            publisher: self.publisher.clone(),
            source: self.source.clone(),
            expires_at: self.expires_at,
        }
    }
}

/// The identity a session's deliveries are checked against, and the access rules of the
/// listener it last connected through (as Mosquitto with `per_listener_settings true`).
#[derive(Debug, Clone)]
pub struct Reader {
    pub username: Option<ByteString>,
    pub credentials: Arc<Credentials>,
}

/// One subscription of a session: its options and, in 5.0, its identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    pub id: Option<SubscriptionId>,
}

/// How long a session outlives its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionExpiry {
    /// 3.x clean session, 5.0 Session Expiry Interval 0.
    OnDisconnect,
    After(Duration),
    /// 3.x persistent session, 5.0 interval 0xFFFFFFFF [MQTT-3.1.2-23].
    Never,
}

impl SessionExpiry {
    pub fn from_interval_secs(secs: u32) -> Self {
        match secs {
            0 => SessionExpiry::OnDisconnect,
            u32::MAX => SessionExpiry::Never,
            secs => SessionExpiry::After(Duration::from_secs(u64::from(secs))),
        }
    }
}

/// One message on its way to one subscriber, at the QoS and retain flag it is delivered with.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    /// Identifiers of the subscriptions it matched (5.0) [MQTT-3.3.4-3].
    pub subscription_ids: SmallVec<[SubscriptionId; 1]>,
    /// The shared subscription (filter, group) it was delivered for, so that another member
    /// can take it if this session ends first.
    pub shared: Option<Box<(ByteString, ByteString)>>,
    /// Its number in the session's store, once written there (persistent sessions only).
    pub seq: Option<u64>,
}

impl Outgoing {
    fn size_bytes(&self) -> usize {
        self.message.size_bytes()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // Each is named after the packet it waits for.
enum InflightState {
    /// QoS 1 PUBLISH sent.
    AwaitPubAck,
    /// QoS 2 PUBLISH sent.
    AwaitPubRec,
    /// QoS 2 PUBREL sent: the message itself is delivered; only the release is retried.
    AwaitPubComp,
}

impl InflightState {
    fn stage(self, packet_id: PacketId) -> Stage {
        match self {
            InflightState::AwaitPubAck => Stage::AwaitPubAck(packet_id),
            InflightState::AwaitPubRec => Stage::AwaitPubRec(packet_id),
            InflightState::AwaitPubComp => Stage::AwaitPubComp(packet_id),
        }
    }
}

#[derive(Debug)]
struct Inflight {
    packet_id: PacketId,
    outgoing: Outgoing,
    state: InflightState,
}

/// The session limits of the configuration, with Mosquitto's "0 means no limit".
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub inflight_max: usize,
    pub queued_messages_max: usize,
    pub queued_bytes_max: usize,
    pub queue_qos0: bool,
}

impl Limits {
    pub fn from_config(config: &Config) -> Self {
        let no_limit_if_zero = |n: usize| if n == 0 { usize::MAX } else { n };
        Limits {
            inflight_max: match config.max_inflight_messages {
                0 => usize::from(u16::MAX),
                n => usize::from(n),
            },
            queued_messages_max: no_limit_if_zero(config.max_queued_messages),
            queued_bytes_max: no_limit_if_zero(config.max_queued_bytes),
            queue_qos0: config.queue_qos0_messages,
        }
    }
}

/// A client sent more unreleased QoS 2 messages than the broker's Receive Maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveMaximumExceeded;

/// What happened to a message handed to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    Queued,
    /// Dropped by the queue limits, expiry, or as QoS 0 to an offline client: counted by the
    /// caller.
    Dropped(DropReason),
    /// Refused by the connection (its outbox full, or larger than the client takes), which
    /// counted it.
    Refused,
}

/// An incoming QoS 2 message its publisher has not released yet.
#[derive(Debug, Clone, Copy)]
struct Unreleased {
    /// How it was routed, for a stored session.
    tag: Option<RouteTag>,
    /// Found in the store at start-up and not routed by this process: its retransmission is
    /// routed again, to the shards that had not stored it before the restart.
    restored: bool,
}

/// A stored session's marks: per routing shard, the largest `RouteTag` number it took.
#[derive(Debug, Default)]
struct Marks {
    /// As committed with the messages taken; written again when the session moves.
    taken: Vec<(u16, u64)>,
    /// As start-up found them: marks raised since, by new messages, say nothing of a replay.
    recovered: Vec<(u16, u64)>,
}

fn mark_of(marks: &[(u16, u64)], shard: u16) -> u64 {
    marks.iter().find(|(s, _)| *s == shard).map_or(0, |(_, number)| *number)
}

/// What to do with an incoming QoS 2 PUBLISH.
#[derive(Debug, PartialEq, Eq)]
pub enum Qos2Arrival {
    /// Route it: a new message (or one that start-up found unreleased), with its routing when
    /// the session is stored.
    Route(Option<Routing>),
    /// A retransmission of one routed already: acknowledge it only.
    Repeat,
}

/// A map keyed by packet id: a hasher with fixed keys, stored in no map (each `AHashMap` keeps
/// its own 32-byte random state, 64 bytes of every session for these two). Random keys defend
/// against a client choosing keys that collide; packet ids have 65,535 values in all, so a
/// client choosing them can make a few hundred share a bucket at most: longer probes, never a
/// quadratic blow-up.
type ByPacketId<V> =
    std::collections::HashMap<PacketId, V, std::hash::BuildHasherDefault<ahash::AHasher>>;

/// Random hash keys drawn once for the process and kept in no map: a session's filters are
/// the client's to choose, so their keys must be unknown to it, but one set serves every
/// session (an `AHashMap` keeps 32 bytes of its own keys: of every session, for this map).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessKeys;

impl std::hash::BuildHasher for ProcessKeys {
    type Hasher = ahash::AHasher;

    fn build_hasher(&self) -> ahash::AHasher {
        static KEYS: std::sync::OnceLock<ahash::RandomState> = std::sync::OnceLock::new();
        KEYS.get_or_init(ahash::RandomState::new).build_hasher()
    }
}

/// The part of a session that outlives a connection and can move between shards.
#[derive(Debug, Default)]
pub struct SessionState {
    pub subscriptions: std::collections::HashMap<TopicFilter, Subscription, ProcessKeys>,
    inflight: InflightWindow,
    queue: VecDeque<Outgoing>,
    queued_bytes: usize,
    /// Incoming QoS 2 packet ids delivered but not yet released [MQTT-4.3.3].
    awaiting_pubrel: ByPacketId<Unreleased>,
    /// With persistence, once it took a QoS 2 message from a stored session (`RouteTag`).
    marks: Option<Box<Marks>>,
    /// Messages dropped (limits, expiry) since the count was last taken.
    dropped: u64,
    /// Where this state is stored while it moves to another shard: (shard, epoch) of the
    /// records that the new shard has that shard forget once it has written its own. Boxed:
    /// only a moving session has it, and inline it took 24 bytes of every session.
    pub stored_at: Option<Box<(ShardId, u64)>>,
}

/// Messages sent and not yet acknowledged: in send order (a resumed session resends them in
/// that order), and found by packet id without a scan. A linear window cost 71% of a shard's
/// samples (perf) in fan-in QoS 1 with `max_inflight_messages 0`, where windows reach 65,535.
#[derive(Debug, Default)]
struct InflightWindow {
    by_order: BTreeMap<u64, Inflight>,
    order_of: ByPacketId<u64>,
    next_order: u64,
    last_packet_id: u16,
}

impl InflightWindow {
    fn len(&self) -> usize {
        self.order_of.len()
    }

    /// The next packet id not in flight. Invariant: the window holds fewer than 65,535
    /// messages (`Limits::inflight_max`), so a free id exists.
    fn free_packet_id(&mut self) -> PacketId {
        debug_assert!(self.len() < usize::from(u16::MAX));
        loop {
            self.last_packet_id = self.last_packet_id.wrapping_add(1);
            if let Some(id) = PacketId::new(self.last_packet_id) {
                if !self.order_of.contains_key(&id) {
                    return id;
                }
            }
        }
    }

    fn get_mut(&mut self, packet_id: PacketId) -> Option<&mut Inflight> {
        let order = self.order_of.get(&packet_id)?;
        self.by_order.get_mut(order)
    }

    /// Removes the message with this id if it is in the expected state.
    fn complete(&mut self, packet_id: PacketId, expected: InflightState) -> Option<Inflight> {
        if self.get_mut(packet_id).is_none_or(|i| i.state != expected) {
            return None;
        }
        let order = self.order_of.remove(&packet_id);
        order.and_then(|o| self.by_order.remove(&o))
    }

    /// Records a message as sent under `packet_id` (fresh, or the one it had before a restart).
    fn insert(&mut self, packet_id: PacketId, outgoing: Outgoing, state: InflightState) {
        let order = self.next_order;
        self.next_order += 1;
        self.order_of.insert(packet_id, order);
        self.by_order.insert(order, Inflight { packet_id, outgoing, state });
        self.last_packet_id = packet_id.get();
    }

    fn iter(&self) -> impl Iterator<Item = &Inflight> {
        self.by_order.values()
    }

    /// Removes and returns the messages `take` selects, in send order.
    fn take_where(&mut self, take: impl Fn(&Inflight) -> bool) -> Vec<Inflight> {
        let orders: Vec<u64> =
            self.by_order.iter().filter(|(_, i)| take(i)).map(|(order, _)| *order).collect();
        let mut taken = Vec::with_capacity(orders.len());
        for order in orders {
            if let Some(inflight) = self.by_order.remove(&order) {
                self.order_of.remove(&inflight.packet_id);
                taken.push(inflight);
            }
        }
        taken
    }
}

pub struct Session {
    pub expiry: SessionExpiry,
    /// When the last connection ended (`None` while connected).
    pub offline_since: Option<Instant>,
    /// The connection the session was last installed for: the registry entry names it.
    pub conn_id: ConnId,
    pub state: SessionState,
    pub conn: Option<Rc<ConnHandle>>,
    /// Boxed, as the delayed will: most sessions have none, and a `LastWill` inline took 456
    /// bytes of every session in the shard's map (heaptrack, 4,000 idle connections).
    pub will: Option<Box<LastWill>>,
    /// Who the session belongs to, for the read rules of the ACL file; `None` for a bridge's
    /// own session, which the ACL file does not restrict.
    pub reader: Option<Reader>,
    /// A will held back by its Will Delay Interval, due at the instant given. It goes with the
    /// session: resuming the session (here or on another shard) drops it [MQTT-3.1.3-9].
    /// Boxed with its instant: inline, the instant took 16 bytes of every session.
    pub delayed_will: Option<Box<(LastWill, Instant)>>,
    /// Where its records are written (`persistence true`, persistent sessions only). Boxed:
    /// most brokers store nothing, and inline it took 40 bytes of every session.
    pub stored: Option<Box<StoredAt>>,
}

impl Session {
    pub fn new(expiry: SessionExpiry, conn_id: ConnId, state: SessionState) -> Self {
        Session {
            expiry,
            offline_since: None,
            conn_id,
            state,
            conn: None,
            will: None,
            reader: None,
            delayed_will: None,
            stored: None,
        }
    }

    /// Restores a session that start-up found in a store: offline from now, its messages in
    /// flight under their old packet ids (resent with DUP when the client returns), then queued.
    pub fn restore(recovered: RecoveredSession, stored: StoredAt) -> Self {
        let RecoveredSession { session, entries, incoming, marks } = recovered;
        let mut state = SessionState::default();
        for (filter, options, id) in session.subscriptions {
            state.subscriptions.insert(filter, Subscription { options, id });
        }
        for entry in entries {
            let outgoing = Outgoing {
                message: restored_message(entry.message),
                qos: entry.qos,
                retain: entry.retain,
                subscription_ids: entry.subscription_ids.into_iter().collect(),
                shared: None,
                seq: Some(entry.seq),
            };
            let (packet_id, inflight) = match entry.stage {
                Stage::Queued => {
                    state.queued_bytes += outgoing.size_bytes();
                    state.queue.push_back(outgoing);
                    continue;
                }
                Stage::AwaitPubAck(id) => (id, InflightState::AwaitPubAck),
                Stage::AwaitPubRec(id) => (id, InflightState::AwaitPubRec),
                Stage::AwaitPubComp(id) => (id, InflightState::AwaitPubComp),
            };
            state.inflight.insert(packet_id, outgoing, inflight);
        }
        state.awaiting_pubrel.extend(
            incoming
                .into_iter()
                .map(|(packet_id, tag)| (packet_id, Unreleased { tag: Some(tag), restored: true })),
        );
        if !marks.is_empty() {
            state.marks = Some(Box::new(Marks { taken: marks.clone(), recovered: marks }));
        }
        let expiry = SessionExpiry::from_interval_secs(session.expiry_secs);
        let mut restored = Session::new(expiry, ConnId::NONE, state);
        restored.offline_since = Some(Instant::now());
        restored.delayed_will =
            session.delayed_will.map(|(will, due)| Box::new(restored_will(will, due)));
        restored.stored = Some(Box::new(stored));
        restored
    }

    /// The session's record for the store (its messages are written one by one).
    fn record(&self, stored: &StoredAt) -> StoredSession {
        let expiry_secs = match self.expiry {
            SessionExpiry::OnDisconnect => 0,
            SessionExpiry::After(interval) => {
                u32::try_from(interval.as_secs()).unwrap_or(u32::MAX - 1)
            }
            SessionExpiry::Never => u32::MAX,
        };
        StoredSession {
            client_id: stored.client_id.clone(),
            epoch: stored.epoch,
            expiry_secs,
            subscriptions: self
                .state
                .subscriptions
                .iter()
                .map(|(filter, s)| (filter.clone(), s.options, s.id))
                .collect(),
            delayed_will: self
                .delayed_will
                .as_ref()
                .map(|delayed| stored_will(&stored.client_id, &delayed.0, delayed.1)),
        }
    }

    /// Writes the session's record again (subscriptions or expiry changed).
    pub fn store_record(&self) {
        if let Some(stored) = &self.stored {
            stored.journal.borrow_mut().push(StoreOp::PutSession(Box::new(self.record(stored))));
        }
    }

    /// Writes the whole session under a new incarnation: its record, every message in flight
    /// or queued (renumbered, in delivery order), and the QoS 2 ids awaiting release.
    pub fn store_all(&mut self, stored: StoredAt) {
        stored.journal.borrow_mut().push(StoreOp::PutSession(Box::new(self.record(&stored))));
        for inflight in self.state.inflight.by_order.values_mut() {
            let stage = inflight.state.stage(inflight.packet_id);
            inflight.outgoing.seq = Some(stored.put_entry(&inflight.outgoing, stage));
        }
        for outgoing in &mut self.state.queue {
            outgoing.seq = Some(stored.put_entry(outgoing, Stage::Queued));
        }
        for (packet_id, unreleased) in &mut self.state.awaiting_pubrel {
            // Routed while the session was not stored: it is not replayed after a restart.
            let tag = *unreleased.tag.get_or_insert(RouteTag::NOT_REPLAYED);
            stored.put_incoming(*packet_id, tag);
        }
        for &(shard, number) in self.state.marks.iter().flat_map(|m| &m.taken) {
            let (client_id, epoch) = (stored.client_id.clone(), stored.epoch);
            stored.journal.borrow_mut().push(StoreOp::SetMark { client_id, epoch, shard, number });
        }
        self.stored = Some(Box::new(stored));
    }

    /// Whether the session outlives its connection at all.
    pub fn is_persistent(&self) -> bool {
        self.expiry != SessionExpiry::OnDisconnect
    }

    /// Whether the session has been offline for its whole expiry interval. Sessions that never
    /// expire do after `never_after` when it is set (Mosquitto's `persistent_client_expiration`).
    pub fn has_expired(&self, now: Instant, never_after: Option<Duration>) -> bool {
        let interval = match self.expiry {
            SessionExpiry::After(interval) => interval,
            SessionExpiry::Never => match never_after {
                Some(limit) => limit,
                None => return false,
            },
            SessionExpiry::OnDisconnect => return false,
        };
        self.offline_since.is_some_and(|since| now.duration_since(since) >= interval)
    }

    /// The in-flight window: the configured maximum, and never more than the client's Receive
    /// Maximum [MQTT-3.3.4-9].
    fn window(&self, limits: &Limits) -> usize {
        self.conn
            .as_ref()
            .map_or(limits.inflight_max, |c| limits.inflight_max.min(c.receive_maximum))
    }

    /// Hands a message to the session: sent at once when connected and the window allows,
    /// otherwise queued within the limits (QoS 0 only with `queue_qos0_messages`). What is
    /// dropped is counted.
    pub fn deliver(&mut self, outgoing: Outgoing, limits: &Limits) -> Delivery {
        let delivery = self.offer(outgoing, limits);
        if matches!(delivery, Delivery::Dropped(_) | Delivery::Refused) {
            self.state.dropped += 1;
        }
        delivery
    }

    fn offer(&mut self, outgoing: Outgoing, limits: &Limits) -> Delivery {
        if outgoing.message.expires_at.is_some() && outgoing.message.is_expired(Instant::now()) {
            return Delivery::Dropped(DropReason::Expired);
        }
        let window = self.window(limits);
        if self.conn.is_some() {
            // Anything queued goes first, QoS 0 included: one publisher's messages reach a
            // subscriber in order whatever their QoS (stricter than MQTT 4.6's per-QoS order).
            if self.state.queue.is_empty() {
                if outgoing.qos == QoS::AtMostOnce {
                    let packet = Packet::Publish(publish_packet(&outgoing, None, false));
                    return if self.transmit(packet) { Delivery::Sent } else { Delivery::Refused };
                }
                if self.state.inflight.len() < window {
                    self.send_new(outgoing);
                    return Delivery::Sent;
                }
            }
        } else if outgoing.qos == QoS::AtMostOnce && !limits.queue_qos0 {
            return Delivery::Dropped(DropReason::Offline);
        }
        let state = &mut self.state;
        let size = outgoing.size_bytes();
        if state.queue.len() >= limits.queued_messages_max
            || state.queued_bytes.saturating_add(size) > limits.queued_bytes_max
        {
            return Delivery::Dropped(DropReason::QueueFull);
        }
        state.queued_bytes += size;
        let mut outgoing = outgoing;
        if let Some(stored) = &self.stored {
            outgoing.seq = Some(stored.put_entry(&outgoing, Stage::Queued));
        }
        // Queued for an absent client, the message may wait for hours: detach it from the read
        // buffer. Behind a live client's window it leaves soon (flow control bounds that queue),
        // so it stays zero-copy there.
        if self.conn.is_none() {
            let message = Arc::new(outgoing.message.detached());
            state.queue.push_back(Outgoing { message, ..outgoing });
        } else {
            state.queue.push_back(outgoing);
        }
        Delivery::Queued
    }

    fn send_new(&mut self, mut outgoing: Outgoing) {
        if self.conn.is_none() {
            return;
        }
        if outgoing.qos == QoS::AtMostOnce {
            self.transmit(Packet::Publish(publish_packet(&outgoing, None, false)));
            self.forget_entry(outgoing.seq);
            return;
        }
        let state = match outgoing.qos {
            QoS::ExactlyOnce => InflightState::AwaitPubRec,
            QoS::AtLeastOnce | QoS::AtMostOnce => InflightState::AwaitPubAck,
        };
        let packet = publish_packet(&outgoing, None, false);
        let packet_id = self.state.inflight.free_packet_id();
        if let Some(stored) = &self.stored {
            let stage = state.stage(packet_id);
            match outgoing.seq {
                Some(seq) => stored.set_stage(seq, stage),
                None => outgoing.seq = Some(stored.put_entry(&outgoing, stage)),
            }
        }
        self.state.inflight.insert(packet_id, outgoing, state);
        if !self.transmit(Packet::Publish(Publish { packet_id: Some(packet_id), ..packet })) {
            // Larger than the client accepts: discarded as if delivered [MQTT-3.1.2-25], or it
            // would hold a place in the window forever.
            let done = self.state.inflight.complete(packet_id, state);
            self.forget_entry(done.and_then(|i| i.outgoing.seq));
        }
    }

    /// A stored delivery is over (acknowledged, expired, discarded or moved away).
    fn forget_entry(&self, seq: Option<u64>) {
        if let (Some(stored), Some(seq)) = (&self.stored, seq) {
            stored.delete_entry(seq);
        }
    }

    /// Sends queued messages in order while the window has room (QoS 0 takes no room).
    fn fill_window(&mut self, limits: &Limits) {
        let window = self.window(limits);
        // Read the clock only for messages that can expire: this runs on every PUBACK.
        let mut now = None;
        while self.conn.is_some() {
            let Some(next) = self.state.queue.front() else { break };
            if next.qos != QoS::AtMostOnce && self.state.inflight.len() >= window {
                break;
            }
            let Some(outgoing) = self.state.queue.pop_front() else { break };
            debug_assert!(self.state.queued_bytes >= outgoing.size_bytes(), "queued bytes < 0");
            self.state.queued_bytes -= outgoing.size_bytes();
            // Expired while queued: dropped [MQTT-3.3.2-5].
            let expired = outgoing.message.expires_at.is_some()
                && outgoing.message.is_expired(*now.get_or_insert_with(Instant::now));
            if expired {
                self.forget_entry(outgoing.seq);
            } else {
                self.send_new(outgoing);
            }
            // Sent only into room: the window holds from this side; acknowledgements only
            // shrink it.
            debug_assert!(self.state.inflight.len() <= window, "in flight beyond the window");
        }
    }

    /// A connection took over this session: resend what is in flight (PUBLISH with DUP, or
    /// PUBREL where PUBREC already came) in order, then what is queued [MQTT-4.4.0-1].
    pub fn resume(&mut self, conn: Rc<ConnHandle>, limits: &Limits) {
        for inflight in self.state.inflight.iter() {
            match inflight.state {
                InflightState::AwaitPubAck | InflightState::AwaitPubRec => {
                    conn.publish(publish_packet(
                        &inflight.outgoing,
                        Some(inflight.packet_id),
                        true,
                    ));
                }
                InflightState::AwaitPubComp => {
                    conn.send(&Packet::PubRel(Ack::new(inflight.packet_id)))
                }
            }
        }
        self.conn = Some(conn);
        self.fill_window(limits);
    }

    /// PUBACK: a QoS 1 delivery is complete.
    pub fn on_puback(&mut self, packet_id: PacketId, limits: &Limits) {
        if let Some(done) = self.state.inflight.complete(packet_id, InflightState::AwaitPubAck) {
            self.forget_entry(done.outgoing.seq);
            self.fill_window(limits);
        }
    }

    /// PUBREC: the message arrived; answer with PUBREL and wait for PUBCOMP.
    pub fn on_pubrec(&mut self, packet_id: PacketId) {
        if let Some(inflight) = self.state.inflight.get_mut(packet_id) {
            if inflight.state == InflightState::AwaitPubRec {
                inflight.state = InflightState::AwaitPubComp;
                if let (Some(stored), Some(seq)) = (&self.stored, inflight.outgoing.seq) {
                    stored.set_stage(seq, Stage::AwaitPubComp(packet_id));
                }
            }
        }
        // A PUBREC for an unknown id still gets its PUBREL, so the client can finish.
        self.transmit(Packet::PubRel(Ack::new(packet_id)));
    }

    /// Sends a packet that follows a change of the session (a delivery, a PUBREL): at once, or
    /// for a stored session once that change is durable. Otherwise a crash could leave the
    /// client holding a packet id the store never heard of, and a QoS 2 message would be
    /// delivered twice (once under that id, once again when its publisher resends it). Packets
    /// of a session leave in the order they were made. False when the client cannot take it
    /// (larger than its Maximum Packet Size, or a QoS 0 message over the outbox bound).
    fn transmit(&self, packet: Packet) -> bool {
        let Some(conn) = &self.conn else { return false };
        match (&self.stored, packet) {
            (Some(stored), packet) if stored.journal.borrow().holds() => {
                if matches!(&packet, Packet::Publish(p) if !conn.accepts(p)) {
                    conn.count_dropped(DropReason::TooLarge);
                    return false;
                }
                stored.send_when_durable(conn.clone(), packet);
                true
            }
            (_, Packet::Publish(publish)) => conn.publish(publish),
            (_, other) => {
                conn.send(&other);
                true
            }
        }
    }

    /// PUBCOMP: a QoS 2 delivery is complete.
    pub fn on_pubcomp(&mut self, packet_id: PacketId, limits: &Limits) {
        if let Some(done) = self.state.inflight.complete(packet_id, InflightState::AwaitPubComp) {
            self.forget_entry(done.outgoing.seq);
            self.fill_window(limits);
        }
    }

    /// An incoming QoS 2 PUBLISH: routed when it is new, or when start-up found it unreleased
    /// (its publisher resends it); a repeat otherwise. `Err` when the client already has
    /// `receive_maximum` messages unreleased [MQTT-3.3.4-7]. A stored session records the id
    /// with a new `RouteTag`, in the journal batch that its local deliveries join.
    pub fn receive_qos2(
        &mut self,
        packet_id: PacketId,
        receive_maximum: usize,
    ) -> Result<Qos2Arrival, ReceiveMaximumExceeded> {
        let awaiting = &mut self.state.awaiting_pubrel;
        let replay_of = match awaiting.get(&packet_id) {
            Some(unreleased) if !unreleased.restored => return Ok(Qos2Arrival::Repeat),
            Some(unreleased) => unreleased.tag,
            None if awaiting.len() >= receive_maximum => return Err(ReceiveMaximumExceeded),
            None => None,
        };
        let tag = self.stored.as_ref().map(|stored| {
            let tag = stored.journal.borrow_mut().next_route_tag();
            stored.put_incoming(packet_id, tag);
            tag
        });
        awaiting.insert(packet_id, Unreleased { tag, restored: false });
        Ok(Qos2Arrival::Route(tag.map(|tag| Routing { tag, replay_of })))
    }

    /// A message routed with `routing` (a QoS 2 message from a stored session): whether this
    /// session takes it. A replay is skipped when the session's recovered mark for the old
    /// tag's routing shard had reached it: the session had it before the restart. A stored
    /// session raises its mark, committed with what the delivery stores.
    pub fn admits(&mut self, routing: Option<&Routing>) -> bool {
        let Some(routing) = routing else { return true };
        if let Some(old) = routing.replay_of {
            let recovered =
                self.state.marks.as_ref().map_or(0, |m| mark_of(&m.recovered, old.shard));
            if old.number <= recovered {
                return false;
            }
        }
        if let Some(stored) = &self.stored {
            let marks = self.state.marks.get_or_insert_with(Default::default);
            match marks.taken.iter_mut().find(|(shard, _)| *shard == routing.tag.shard) {
                Some((_, number)) => *number = (*number).max(routing.tag.number),
                None => marks.taken.push((routing.tag.shard, routing.tag.number)),
            }
            stored.raise_mark(routing.tag);
        }
        true
    }

    /// Messages dropped since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.state.dropped)
    }

    /// The peer started a new session: QoS 2 ids it never released are forgotten.
    pub fn forget_unreleased_qos2(&mut self) {
        for (packet_id, _) in self.state.awaiting_pubrel.drain() {
            if let Some(stored) = &self.stored {
                stored.delete_incoming(packet_id);
            }
        }
    }

    /// PUBREL: forget the packet id so it can be reused.
    pub fn release_qos2(&mut self, packet_id: PacketId) {
        if self.state.awaiting_pubrel.remove(&packet_id).is_some() {
            if let Some(stored) = &self.stored {
                stored.delete_incoming(packet_id);
            }
        }
    }
}

impl SessionState {
    /// Removes the shared-subscription messages not yet delivered: queued, or in flight short
    /// of PUBREC (after PUBREC a QoS 2 message has arrived and only its release is pending).
    pub fn take_shared_unfinished(&mut self) -> Vec<Outgoing> {
        let mut taken: Vec<Outgoing> = self
            .inflight
            .take_where(|i| i.state != InflightState::AwaitPubComp && i.outgoing.shared.is_some())
            .into_iter()
            .map(|i| i.outgoing)
            .collect();
        let (shared, rest): (VecDeque<Outgoing>, VecDeque<Outgoing>) =
            std::mem::take(&mut self.queue).into_iter().partition(|o| o.shared.is_some());
        self.queue = rest;
        self.queued_bytes = self.queue.iter().map(Outgoing::size_bytes).sum();
        taken.extend(shared);
        taken
    }

    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    /// Messages queued or in flight, and their topic and payload bytes (for `$SYS`).
    pub fn held_messages(&self) -> (u64, u64) {
        let inflight_bytes: usize = self.inflight.iter().map(|i| i.outgoing.size_bytes()).sum();
        let count = self.queue.len() + self.inflight.len();
        (count as u64, (self.queued_bytes + inflight_bytes) as u64)
    }
}

/// The PUBLISH for one subscriber: its QoS, retain flag and packet id, its subscription ids, and
/// what is left of the message's expiry interval [MQTT-3.3.2-6].
fn publish_packet(outgoing: &Outgoing, packet_id: Option<PacketId>, dup: bool) -> Publish {
    let message = &outgoing.message;
    let mut properties = message.properties.clone();
    if let Some(expires_at) = message.expires_at {
        // Whole seconds, rounded up: a message passed on at once keeps the interval it came
        // with, as Mosquitto (which counts in whole seconds) passes it on.
        let left = expires_at.saturating_duration_since(Instant::now());
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        properties.message_expiry_interval = Some(u32::try_from(secs).unwrap_or(u32::MAX));
    }
    properties.subscription_identifiers = outgoing.subscription_ids.to_vec();
    Publish {
        dup,
        qos: outgoing.qos,
        retain: outgoing.retain,
        topic: message.topic.clone(),
        packet_id,
        properties,
        payload: message.payload.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProtocolVersion;
    use bytes::BytesMut;

    fn message(qos: QoS) -> Outgoing {
        let message = Arc::new(Message {
            topic: TopicName::new("t").unwrap(),
            payload: Bytes::from_static(b"x"),
            qos,
            retain: false,
            properties: Properties::default(),
            publisher: "p".into(),
            source: Source::Unchecked,
            expires_at: None,
        });
        Outgoing {
            message,
            qos,
            retain: false,
            subscription_ids: SmallVec::new(),
            shared: None,
            seq: None,
        }
    }

    fn limits(inflight_max: usize, queued_messages_max: usize) -> Limits {
        Limits {
            inflight_max,
            queued_messages_max,
            queued_bytes_max: usize::MAX,
            queue_qos0: false,
        }
    }

    fn drain(conn: &ConnHandle) -> Vec<Packet> {
        let mut bytes: BytesMut = conn.take_outbox();
        let mut packets = Vec::new();
        while let Some(p) = Packet::decode(&mut bytes, ProtocolVersion::V311, u32::MAX).unwrap() {
            packets.push(p);
        }
        packets
    }

    /// Connection `id` of client "s" (a second one resumes the session).
    fn connection(id: ConnId) -> Rc<ConnHandle> {
        Rc::new(ConnHandle::new(
            id,
            ProtocolVersion::V311,
            "s".into(),
            0,
            u32::MAX,
            Default::default(),
        ))
    }

    fn connected() -> (Session, Rc<ConnHandle>) {
        let conn = connection(ConnId::new(0, 1));
        let mut session =
            Session::new(SessionExpiry::Never, ConnId::new(0, 1), SessionState::default());
        session.resume(conn.clone(), &limits(2, 10));
        (session, conn)
    }

    #[test]
    fn window_then_queue_then_drop() {
        let (mut session, conn) = connected();
        let limits = limits(2, 1);
        assert_eq!(session.deliver(message(QoS::AtLeastOnce), &limits), Delivery::Sent);
        assert_eq!(session.deliver(message(QoS::AtLeastOnce), &limits), Delivery::Sent);
        assert_eq!(session.deliver(message(QoS::AtLeastOnce), &limits), Delivery::Queued);
        let full = Delivery::Dropped(DropReason::QueueFull);
        assert_eq!(session.deliver(message(QoS::AtLeastOnce), &limits), full);
        assert_eq!(drain(&conn).len(), 2);
        session.on_puback(PacketId::new(1).unwrap(), &limits);
        let sent = drain(&conn);
        assert!(matches!(&sent[..], [Packet::Publish(p)] if p.packet_id == PacketId::new(3)));
        assert_eq!((session.state.inflight.len(), session.state.queue.len()), (2, 0));
    }

    #[test]
    fn messages_queued_for_an_absent_client_do_not_hold_the_read_buffer() {
        let read_buffer = Bytes::from(vec![0u8; 16 << 10]);
        let message = Arc::new(Message {
            topic: TopicName::new("t").unwrap(),
            payload: read_buffer.slice(100..110),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
            publisher: "p".into(),
            source: Source::Unchecked,
            expires_at: None,
        });
        let mut session =
            Session::new(SessionExpiry::Never, ConnId::new(0, 1), SessionState::default());
        let outgoing = Outgoing {
            message: message.clone(),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: SmallVec::new(),
            shared: None,
            seq: None,
        };
        assert_eq!(session.deliver(outgoing, &limits(2, 10)), Delivery::Queued);
        let queued = &session.state.queue[0].message;
        assert_eq!(queued.payload, message.payload);
        let buffer = read_buffer.as_ptr_range();
        assert!(!buffer.contains(&queued.payload.as_ptr()), "queued payload still in the buffer");
    }

    #[test]
    fn packet_ids_are_reused_only_after_completion_and_resent_in_order() {
        let (mut session, conn) = connected();
        let limits = limits(3, 10);
        for _ in 0..3 {
            session.deliver(message(QoS::AtLeastOnce), &limits);
        }
        drain(&conn);
        session.on_puback(PacketId::new(2).unwrap(), &limits);
        session.deliver(message(QoS::AtLeastOnce), &limits);
        let ids: Vec<u16> = session.state.inflight.iter().map(|i| i.packet_id.get()).collect();
        assert_eq!(ids, [1, 3, 4], "send order kept, acknowledged id gone");
        session.conn = None;
        let conn2 = connection(ConnId::new(0, 2));
        session.resume(conn2.clone(), &limits);
        let resent: Vec<u16> = drain(&conn2)
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => p.packet_id.map(|id| id.get()),
                _ => None,
            })
            .collect();
        assert_eq!(resent, [1, 3, 4]);
    }

    #[test]
    fn qos0_waits_behind_queued_messages() {
        let (mut session, conn) = connected();
        let limits = limits(1, 10);
        session.deliver(message(QoS::AtLeastOnce), &limits);
        session.deliver(message(QoS::AtLeastOnce), &limits);
        assert_eq!(session.deliver(message(QoS::AtMostOnce), &limits), Delivery::Queued);
        assert_eq!(drain(&conn).len(), 1);
        session.on_puback(PacketId::new(1).unwrap(), &limits);
        let sent = drain(&conn);
        let qos: Vec<QoS> = sent
            .iter()
            .map(|p| match p {
                Packet::Publish(p) => p.qos,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(qos, [QoS::AtLeastOnce, QoS::AtMostOnce]);
    }

    #[test]
    fn qos2_handshake_and_resume_sends_pubrel_not_publish() {
        let (mut session, conn) = connected();
        let limits = limits(2, 10);
        session.deliver(message(QoS::ExactlyOnce), &limits);
        session.deliver(message(QoS::ExactlyOnce), &limits);
        drain(&conn);
        session.on_pubrec(PacketId::new(1).unwrap());
        assert!(matches!(&drain(&conn)[..], [Packet::PubRel(_)]));
        // The connection drops; a new one resumes the session.
        session.conn = None;
        let conn2 = connection(ConnId::new(0, 2));
        session.resume(conn2.clone(), &limits);
        let resent = drain(&conn2);
        assert!(matches!(&resent[0], Packet::PubRel(a) if a.packet_id.get() == 1));
        assert!(
            matches!(&resent[1], Packet::Publish(p) if p.dup && p.packet_id.map(|i| i.get()) == Some(2))
        );
        session.on_pubcomp(PacketId::new(1).unwrap(), &limits);
        assert_eq!(session.state.inflight.len(), 1);
    }

    #[test]
    fn offline_sessions_queue_qos1_and_drop_qos0() {
        let mut session =
            Session::new(SessionExpiry::Never, ConnId::new(0, 1), SessionState::default());
        let limits = limits(2, 10);
        let offline = Delivery::Dropped(DropReason::Offline);
        assert_eq!(session.deliver(message(QoS::AtMostOnce), &limits), offline);
        assert_eq!(session.deliver(message(QoS::AtLeastOnce), &limits), Delivery::Queued);
    }

    #[test]
    fn duplicate_qos2_publish_is_routed_once() {
        let mut session =
            Session::new(SessionExpiry::Never, ConnId::new(0, 1), SessionState::default());
        let id = PacketId::new(9).unwrap();
        let route = Ok(Qos2Arrival::Route(None));
        assert_eq!(session.receive_qos2(id, 1), route);
        assert_eq!(session.receive_qos2(id, 1), Ok(Qos2Arrival::Repeat));
        assert_eq!(
            session.receive_qos2(PacketId::new(10).unwrap(), 1),
            Err(ReceiveMaximumExceeded)
        );
        session.release_qos2(id);
        assert_eq!(session.receive_qos2(id, 1), route);
    }

    /// `persistent_client_expiration` ends sessions that would never expire, and only those.
    #[test]
    fn sessions_that_never_expire_do_after_the_persistent_client_expiration() {
        let hour = Duration::from_secs(3600);
        let offline = |expiry| {
            let mut session = Session::new(expiry, ConnId::new(0, 1), SessionState::default());
            session.offline_since = Some(Instant::now());
            session
        };
        let never = offline(SessionExpiry::Never);
        let later = Instant::now() + hour;
        assert!(!never.has_expired(later, None));
        assert!(never.has_expired(later, Some(hour)));
        assert!(!never.has_expired(Instant::now(), Some(hour)));
        let interval = offline(SessionExpiry::After(2 * hour));
        assert!(!interval.has_expired(later, Some(hour)), "its own interval rules");
    }
}
