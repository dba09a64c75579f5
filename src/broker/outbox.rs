//! The shard's write side of one client: the [`ConnHandle`] through which the shard queues
//! packets for the connection (encoded into its outbox as they are produced, so a burst of
//! deliveries costs the connection task one write), asks it to close, and holds its
//! acknowledgements until they may leave. It owns no socket and never awaits.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use bytes::BytesMut;
use bytestring::ByteString;
use smallvec::SmallVec;
use std::num::NonZeroU16;

use super::counters::{DropReason, ShardCounters};
use super::signal::{Event, Signal};
use crate::auth::Credentials;
use crate::protocol::{
    Ack, ConnAck, Disconnect, Packet, PacketId, Properties, PropertyContext, ProtocolVersion,
    Publish, QoS, ReasonCode, TopicFilter, TopicName,
};

/// A connection, unique across shards and the process's life: the shard id in the top bits, a
/// counter below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// No connection: a session restored from the store, not yet resumed.
    pub const NONE: ConnId = ConnId(0);

    /// The `nth` connection made on `shard` (`nth` from 1, below 2^48: never `NONE`).
    pub fn new(shard: usize, nth: u64) -> ConnId {
        debug_assert!((1..1 << 48).contains(&nth));
        ConnId(((shard as u64) << 48) | nth)
    }
}

/// Above this many unwritten bytes, QoS 0 messages to the connection are dropped (and counted)
/// instead of buffered: a slow subscriber must not grow the broker's memory without bound. QoS
/// 1 and 2 are bounded by the in-flight window and the session queue instead.
pub const OUTBOX_BYTES_MAX: usize = 4 << 20;

/// Unwritten bytes in a subscriber's outbox above which its publishers wait.
pub const OUTBOX_HIGH_WATER_BYTES: usize = 64 << 10;
/// Messages queued for an online subscriber (behind its window) above which publishers wait.
pub const QUEUE_HIGH_WATER: usize = 64;
/// Acknowledgements a connection may hold for durability (`persistence_sync ack`) before it
/// reads nothing more until the store catches up (TCP then pushes back on the client). A
/// commit takes milliseconds, so a flat-out publisher holds a few hundred at most; a stalled
/// disk would otherwise grow them at the client's rate.
pub const HELD_ACKS_MAX: usize = 1024;
/// What an outbox allocates when a packet goes into an empty one, and the least it grows by
/// after: a small first allocation made busy connections reallocate on every turn. An idle
/// connection's outbox holds nothing (`ConnHandle::release_idle_outbox`).
pub const OUTBOX_FIRST_BYTES: usize = 4 << 10;

/// Why a connection ends. Decides whether the will is published and what a 5.0 client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The client sent DISCONNECT; a 5.0 client may still ask for its will (reason 0x04).
    ClientDisconnect {
        publish_will: bool,
    },
    /// The socket closed or failed without DISCONNECT.
    ConnectionLost,
    KeepAliveTimeout,
    /// Another connection took the client id; the evicting shard already published the will.
    TakenOver,
    /// The client broke the protocol; 5.0 clients are told why.
    ProtocolError(ReasonCode),
    /// The broker is stopping (SIGTERM/SIGINT). Wills are not published: nobody stays to
    /// receive them.
    ServerShuttingDown,
}

impl Close {
    pub fn publishes_will(self) -> bool {
        match self {
            Close::ClientDisconnect { publish_will } => publish_will,
            Close::ConnectionLost | Close::KeepAliveTimeout | Close::ProtocolError(_) => true,
            Close::TakenOver | Close::ServerShuttingDown => false,
        }
    }

    fn reason_code(self) -> Option<ReasonCode> {
        match self {
            Close::ClientDisconnect { .. } | Close::ConnectionLost => None,
            Close::KeepAliveTimeout => Some(ReasonCode::KeepAliveTimeout),
            Close::TakenOver => Some(ReasonCode::SessionTakenOver),
            Close::ProtocolError(reason) => Some(reason),
            Close::ServerShuttingDown => Some(ReasonCode::ServerShuttingDown),
        }
    }
}

/// The shard's side of a live connection.
pub struct ConnHandle {
    pub id: ConnId,
    pub version: ProtocolVersion,
    pub client_id: ByteString,
    /// The username the client authenticated with, for the ACL file.
    pub username: Option<ByteString>,
    /// Its listener's `mount_point`: put in front of the topics and filters the client sends,
    /// taken off the topics it receives.
    pub mount_point: Option<ByteString>,
    /// Its listener's access rules; `None` for a bridge's own session, which is not restricted:
    /// Mosquitto 2.0 does not apply the ACL file to it either, `local_username` or not.
    pub credentials: Option<Arc<Credentials>>,
    /// The client sent an empty id and the broker assigned `client_id`.
    pub assigned_client_id: bool,
    /// A peer broker's bridge (Mosquitto's bridge bit in CONNECT): its subscriptions are No
    /// Local and Retain As Published, so nothing it sends comes back to it.
    pub is_bridge: bool,
    /// One of this broker's own bridges (`crate::bridge`), not a network client: it is
    /// not authenticated by password and the remote broker's window applies, not ours.
    pub internal: bool,
    /// In seconds; 0: the client asked for no keep alive.
    pub keep_alive_secs: u16,
    /// The keep alive the broker imposed on a 5.0 client (`max_keepalive`), sent in CONNACK.
    pub server_keep_alive: Option<u16>,
    /// The client's Maximum Packet Size (5.0); larger packets are not sent [MQTT-3.1.2-24].
    max_packet_size: u32,
    /// The client's Receive Maximum (5.0): our in-flight window toward it never exceeds it.
    pub receive_maximum: usize,
    /// The client's Request Problem Information (5.0): without it, acknowledgements carry no
    /// Reason String [MQTT-3.1.2-29].
    pub problem_information: bool,
    /// Culex's `reason_strings`: refusals carry a Reason String. Off by default, as Mosquitto
    /// 2.0 sends none and tools compare its packets byte for byte.
    pub reason_strings: bool,
    /// Topic aliases the client set on its PUBLISHes (5.0), up to `topic_aliases_accepted`.
    /// Both alias tables are made at their first alias: most clients use none, and an empty
    /// map cost every connection 72 bytes.
    topic_aliases: RefCell<Option<Box<AHashMap<u16, TopicName>>>>,
    /// The Topic Alias Maximum announced to it (its listener's `max_topic_alias`; 0: none).
    pub topic_aliases_accepted: u16,
    /// The client's Topic Alias Maximum (5.0): how many aliases the broker may use toward it.
    pub topic_alias_maximum: u16,
    /// Aliases the broker has given topics toward this client.
    topic_aliases_out: RefCell<Option<Box<AHashMap<TopicName, u16>>>>,
    outbox: RefCell<BytesMut>,
    wake: Signal,
    close: Cell<Option<Close>>,
    /// Notified each time the connection task has written the outbox. Made when a publisher
    /// first waits for this connection: most never congest, and 56 bytes of every connection
    /// went to it (heaptrack, 4,000 idle connections).
    drained: OnceCell<Rc<Event>>,
    /// Listed in the shard's congested connections (so it is listed once).
    pub listed_congested: Cell<bool>,
    /// Took less than `runtime::flow::PROGRESS_MIN_BYTES` within `STUCK_AFTER` while publishers
    /// waited for it: they no longer wait for it until it drains.
    pub stuck: Cell<bool>,
    /// Bytes its socket has taken, ever: what publishers waiting for it judge its progress by
    /// (a slow subscriber's write of a large outbox is progress long before it ends).
    written_bytes: Cell<u64>,
    pub last_seen: Cell<Instant>,
    /// Its shard's `$SYS` counters: packets and bytes sent, messages dropped.
    counters: Arc<ShardCounters>,
    /// Acknowledgements waiting for their messages to be durable (`persistence true`), in the
    /// order the PUBLISHes came. They leave in that order [MQTT-4.6.0-2]. Made at the first:
    /// without persistence there is none, and inline the queue took 32 bytes of every handle.
    #[expect(
        clippy::box_collection,
        reason = "boxed, `None` takes 8 bytes where a VecDeque takes 32"
    )]
    held_acks: RefCell<Option<Box<VecDeque<HeldAck>>>>,
}

/// An acknowledgement held for durability, encoded (40 bytes held): a `Packet` takes 456 bytes,
/// an acknowledgement 4 (3.x) to 6 (5.0) without properties.
struct HeldAck {
    token: u64,
    encoded: SmallVec<[u8; 14]>,
    durable: bool,
}

impl ConnHandle {
    pub fn new(
        id: ConnId,
        version: ProtocolVersion,
        client_id: ByteString,
        keep_alive_secs: u16,
        max_packet_size: u32,
        counters: Arc<ShardCounters>,
    ) -> Self {
        ConnHandle {
            id,
            version,
            client_id,
            username: None,
            mount_point: None,
            credentials: None,
            assigned_client_id: false,
            is_bridge: false,
            internal: false,
            keep_alive_secs,
            server_keep_alive: None,
            max_packet_size,
            receive_maximum: usize::from(u16::MAX),
            problem_information: true,
            reason_strings: false,
            topic_aliases: RefCell::new(None),
            topic_aliases_accepted: 0,
            topic_alias_maximum: 0,
            topic_aliases_out: RefCell::new(None),
            outbox: RefCell::new(BytesMut::new()),
            wake: Signal::default(),
            close: Cell::new(None),
            drained: OnceCell::new(),
            listed_congested: Cell::new(false),
            stuck: Cell::new(false),
            written_bytes: Cell::new(0),
            last_seen: Cell::new(Instant::now()),
            counters,
            held_acks: RefCell::new(None),
        }
    }

    /// Holds an acknowledgement until `release_ack(token)`.
    pub fn hold_ack(&self, token: u64, ack: Packet) {
        let mut encoded = BytesMut::with_capacity(ack.encoded_len(self.version));
        ack.encode(self.version, &mut encoded);
        let held = HeldAck { token, encoded: SmallVec::from_slice(&encoded), durable: false };
        self.held_acks.borrow_mut().get_or_insert_with(Box::default).push_back(held);
    }

    /// The message behind `token` is durable: its acknowledgement leaves, with those held
    /// behind it that are durable too.
    pub fn release_ack(&self, token: u64) {
        let mut held = self.held_acks.borrow_mut();
        let Some(held) = held.as_mut() else { return };
        if let Some(entry) = held.iter_mut().find(|held| held.token == token) {
            entry.durable = true;
        }
        while held.front().is_some_and(|held| held.durable) {
            if let Some(ack) = held.pop_front() {
                self.send_encoded(&ack.encoded);
            }
        }
    }

    /// Queues a control packet.
    pub fn send(&self, packet: &Packet) {
        if self.close.get().is_some() {
            return;
        }
        self.encode(packet, &mut self.outbox.borrow_mut());
        self.wake.notify();
    }

    /// Appends a packet to the outbox, counted for `$SYS` unless the outbox is a bridge's
    /// (the bridge counts what it writes to its remote).
    fn encode(&self, packet: &Packet, outbox: &mut BytesMut) {
        if outbox.capacity() == 0 {
            *outbox = BytesMut::with_capacity(OUTBOX_FIRST_BYTES);
        }
        let before = outbox.len();
        packet.encode(self.version, outbox);
        self.count_sent(outbox.len() - before);
    }

    /// Queues a packet encoded before (an acknowledgement that was held).
    fn send_encoded(&self, encoded: &[u8]) {
        if self.close.get().is_some() {
            return;
        }
        let mut outbox = self.outbox.borrow_mut();
        if outbox.capacity() == 0 {
            *outbox = BytesMut::with_capacity(OUTBOX_FIRST_BYTES);
        }
        outbox.extend_from_slice(encoded);
        self.count_sent(encoded.len());
        self.wake.notify();
    }

    fn count_sent(&self, bytes: usize) {
        if !self.internal {
            self.counters.packets_sent.add(1);
            self.counters.bytes_sent.add(bytes as u64);
        }
    }

    /// One message not delivered to this client, counted where the refusal was decided.
    pub fn count_dropped(&self, reason: DropReason) {
        self.counters.count_drop(reason);
    }

    /// Whether the client's Maximum Packet Size admits this PUBLISH (before any topic alias,
    /// which only makes it smaller).
    pub fn accepts(&self, publish: &Publish) -> bool {
        self.max_packet_size == u32::MAX
            || Packet::Publish(publish.clone()).encoded_len(self.version)
                <= self.max_packet_size as usize
    }

    /// Queues a PUBLISH unless it is larger than the client accepts, or it is QoS 0 and the
    /// outbox is over its bound. Returns whether it was queued.
    pub fn publish(&self, mut publish: Publish) -> bool {
        if self.close.get().is_some() {
            return false;
        }
        if let Some(mount) = &self.mount_point {
            // Only topics under the mount point match its clients' filters; the topic equal to
            // the mount point itself has nothing left to send.
            let unmounted = publish.topic.as_str().strip_prefix(&**mount);
            match unmounted.and_then(|rest| TopicName::new(rest.to_string()).ok()) {
                Some(topic) => publish.topic = topic,
                None => return false,
            }
        }
        let qos0 = publish.packet_id.is_none();
        let mut outbox = self.outbox.borrow_mut();
        if qos0 && outbox.len() > OUTBOX_BYTES_MAX {
            self.count_dropped(DropReason::OutboxFull);
            return false;
        }
        let new_alias = if self.version.is_v5() {
            self.apply_topic_alias(&mut publish)
        } else {
            publish.properties = Properties::default();
            None
        };
        debug_assert!(
            publish.properties.fits(PropertyContext::Publish),
            "{:?}",
            publish.properties
        );
        let packet = Packet::Publish(publish);
        if packet.encoded_len(self.version) > self.max_packet_size as usize {
            self.count_dropped(DropReason::TooLarge);
            return false;
        }
        // An alias is known to the client only once a PUBLISH that sets it is sent.
        if let Some((topic, alias)) = new_alias {
            self.topic_aliases_out.borrow_mut().get_or_insert_default().insert(topic, alias);
        }
        if let Packet::Publish(publish) = &packet {
            self.counters.count_publish_sent(publish.qos, publish.payload.len());
        }
        self.encode(&packet, &mut outbox);
        drop(outbox);
        self.wake.notify();
        true
    }

    /// Uses a topic alias toward a 5.0 client that accepts them: a topic already aliased goes as
    /// the alias alone; a new topic takes the next free alias while any remain (aliases are never
    /// reassigned). Returns the alias to record if this PUBLISH introduces one.
    fn apply_topic_alias(&self, publish: &mut Publish) -> Option<(TopicName, u16)> {
        if self.topic_alias_maximum == 0 {
            return None;
        }
        let aliases = self.topic_aliases_out.borrow();
        if let Some(alias) = aliases.as_ref().and_then(|aliases| aliases.get(&publish.topic)) {
            publish.properties.topic_alias = NonZeroU16::new(*alias);
            publish.topic = TopicName::default();
            return None;
        }
        let used = aliases.as_ref().map_or(0, |aliases| aliases.len());
        let next = u16::try_from(used).ok()?.checked_add(1)?;
        if next > self.topic_alias_maximum {
            return None;
        }
        publish.properties.topic_alias = NonZeroU16::new(next);
        Some((publish.topic.clone(), next))
    }

    /// The topic the client set `alias` for (5.0), if it did.
    pub fn aliased_topic(&self, alias: u16) -> Option<TopicName> {
        self.topic_aliases.borrow().as_ref()?.get(&alias).cloned()
    }

    /// The client set `alias` for `topic` (5.0).
    pub fn set_topic_alias(&self, alias: u16, topic: TopicName) {
        self.topic_aliases.borrow_mut().get_or_insert_default().insert(alias, topic);
    }

    /// A topic the client sent, as the broker knows it: under the listener's mount point.
    pub fn mounted_topic(&self, topic: TopicName) -> Result<TopicName, Close> {
        let Some(mount) = &self.mount_point else { return Ok(topic) };
        TopicName::new(format!("{mount}{}", topic.as_str()))
            .map_err(|_| Close::ProtocolError(ReasonCode::TopicNameInvalid))
    }

    /// A filter the client sent, as the broker keeps it: the mount point goes after a shared
    /// subscription's `$share/GROUP/`.
    pub fn mounted_filter(&self, filter: TopicFilter) -> Result<TopicFilter, Close> {
        let Some(mount) = &self.mount_point else { return Ok(filter) };
        let mounted = match filter.shared() {
            Some(shared) => format!("$share/{}/{mount}{}", shared.group, shared.filter),
            None => format!("{mount}{}", filter.as_str()),
        };
        TopicFilter::new(mounted).map_err(|_| Close::ProtocolError(ReasonCode::TopicFilterInvalid))
    }

    /// Asks the connection task to close. A 5.0 client is sent DISCONNECT with the reason
    /// code (and, with `reason_strings`, its name as the Reason String).
    pub fn close(&self, close: Close) {
        self.close_explained(close, close.reason_code().map_or("", ReasonCode::description));
    }

    /// As [`close`](Self::close), with a Reason String that says more than the code (what the
    /// decoder found wrong). A DISCONNECT may carry one whatever the client's Request Problem
    /// Information [MQTT-3.1.2-29].
    pub fn close_explained(&self, close: Close, why: &str) {
        if self.close.get().is_some() {
            return;
        }
        if let (true, Some(reason)) = (self.version.is_v5(), close.reason_code()) {
            let mut disconnect = Disconnect::new(reason);
            if self.reason_strings {
                disconnect.properties.reason_string = Some(why.into());
            }
            let mut packet = Packet::Disconnect(disconnect);
            if packet.encoded_len(self.version) > self.max_packet_size as usize {
                packet = Packet::Disconnect(Disconnect::new(reason));
            }
            self.encode(&packet, &mut self.outbox.borrow_mut());
        }
        self.close.set(Some(close));
        self.wake.notify();
    }

    /// Answers a QoS 1/2 PUBLISH that the broker did not accept. 3.x has no reason codes: the
    /// acknowledgement alone tells the client to stop resending it.
    pub fn refuse_publish(&self, qos: QoS, packet_id: PacketId, reason: ReasonCode) {
        let mut ack = Ack::new(packet_id);
        if self.version.is_v5() {
            ack.reason = reason;
            if self.reason_strings && self.problem_information {
                ack.properties.reason_string = Some(reason.description().into());
            }
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(ack)),
            QoS::ExactlyOnce => self.send(&Packet::PubRec(ack)),
        }
    }

    pub fn take_outbox(&self) -> BytesMut {
        self.outbox.borrow_mut().split()
    }

    pub fn is_closing(&self) -> bool {
        self.close.get().is_some()
    }

    /// Why the connection was asked to close, if it was.
    pub fn close_reason(&self) -> Option<Close> {
        self.close.get()
    }

    /// Whether it holds `HELD_ACKS_MAX` acknowledgements or more: its task reads no more.
    pub fn holds_too_many_acks(&self) -> bool {
        self.held_acks.borrow().as_ref().is_some_and(|held| held.len() >= HELD_ACKS_MAX)
    }

    pub fn has_outbox(&self) -> bool {
        !self.outbox.borrow().is_empty()
    }

    /// An empty outbox gives its memory back (4 KiB of every idle connection otherwise).
    pub fn release_idle_outbox(&self) {
        let mut outbox = self.outbox.borrow_mut();
        if outbox.is_empty() && outbox.capacity() > 0 {
            *outbox = BytesMut::new();
        }
    }

    /// Notified when something is queued for the connection or it is asked to close.
    pub fn wake(&self) -> &Signal {
        &self.wake
    }

    pub fn drained(&self) -> Rc<Event> {
        self.drained.get_or_init(Rc::default).clone()
    }

    /// Whether publishers should wait for this subscriber, given its session's queue length.
    pub fn is_congested(&self, queued: usize) -> bool {
        !self.stuck.get()
            && !self.is_closing()
            && (self.outbox.borrow().len() > OUTBOX_HIGH_WATER_BYTES || queued > QUEUE_HIGH_WATER)
    }

    /// Bytes its socket has taken since the connection began.
    pub fn written_bytes(&self) -> u64 {
        self.written_bytes.get()
    }

    /// Its socket took `bytes` more of the outbox.
    pub fn progressed(&self, bytes: usize) {
        self.written_bytes.set(self.written_bytes.get() + bytes as u64);
    }

    /// The connection task wrote the outbox: wake waiting publishers, and a stuck subscriber
    /// that caught up is waited for again.
    pub fn wrote(&self) {
        if self.outbox.borrow().len() <= OUTBOX_HIGH_WATER_BYTES {
            self.stuck.set(false);
        }
        if let Some(drained) = self.drained.get() {
            drained.notify_all();
        }
    }
}

/// What a listener applies to the clients it accepts.
#[derive(Debug)]
pub struct ListenerContext {
    pub mount_point: Option<ByteString>,
    /// Its access rules: everyone's, or its own with `per_listener_settings true`.
    pub credentials: Arc<Credentials>,
    /// Topic aliases its 5.0 clients may set (`max_topic_alias`).
    pub topic_alias_maximum: u16,
    /// Topic aliases the broker sets toward one of its 5.0 clients at most
    /// (`max_topic_alias_broker`): each holds a topic for the connection's life.
    pub topic_aliases_sent_max: u16,
    /// `use_identity_as_username` or `use_subject_as_username`: a client's user name is the
    /// name in its TLS certificate, and its password is not checked.
    pub username_from_certificate: bool,
    /// `accept_protocol_versions`: the protocol levels it takes (`None`: all).
    pub protocol_levels: Option<Vec<u8>>,
}

impl ListenerContext {
    /// A listener with these rules and Mosquitto's defaults for the rest.
    pub fn new(credentials: Arc<Credentials>) -> ListenerContext {
        ListenerContext {
            mount_point: None,
            credentials,
            topic_alias_maximum: crate::config::MAX_TOPIC_ALIAS_DEFAULT,
            topic_aliases_sent_max: crate::config::MAX_TOPIC_ALIAS_DEFAULT,
            username_from_certificate: false,
            protocol_levels: None,
        }
    }
}

/// The CONNACK bytes that refuse a client, in its own protocol version. With `explain`
/// (`reason_strings`), a 5.0 client also gets the reason in words, unless that would exceed the
/// Maximum Packet Size it announced.
pub fn refusal(
    version: ProtocolVersion,
    reason: ReasonCode,
    max_packet_size: u32,
    explain: bool,
) -> BytesMut {
    let mut connack = ConnAck { session_present: false, reason, properties: Properties::default() };
    if version.is_v5() && explain {
        connack.properties.reason_string = Some(reason.description().into());
        if Packet::ConnAck(connack.clone()).encoded_len(version) > max_packet_size as usize {
            connack.properties = Properties::default();
        }
    }
    let mut out = BytesMut::new();
    Packet::ConnAck(connack).encode(version, &mut out);
    out
}
