//! One shard's state and every decision made on it: the sessions of its connections, its
//! subscription trie, its replicas of the interest map and the retained store, the client-id
//! registry entries it owns, and the routing of each message (locally, and once to each other
//! shard with interest). Runs on its own executor; never awaits and never touches a socket:
//! connection tasks and mesh receivers call it, and it answers by writing into connection
//! handles and the outbound batches.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use bytes::BytesMut;
use bytestring::ByteString;
use smallvec::SmallVec;

use super::counters::ShardCounters;
use super::journal::{retained_stamp, stored_message, SharedJournal, StoredAt, Waiter};
use super::latch::Latches;
use super::messages::{Outbound, ShardId, ShardMsg, ShardSet};
use super::outbox::{refusal, Close, ConnHandle, ConnId, ListenerContext, TOPIC_ALIAS_MAXIMUM};
use super::session::{
    Delivery, Limits, Message, Outgoing, Reader, Session, SessionExpiry, SessionState, Subscription,
};
use super::shared::SharedSubscriptions;
use super::signal::Signal;
use super::trie::TopicTrie;
use crate::auth::{Access, Identity};
use crate::config::Config;
use crate::protocol::filter_matches;
use crate::protocol::{
    Ack, ConnAck, Connect, Packet, Properties, Publish, QoS, ReasonCode, RetainHandling, SubAck,
    Subscribe, SubscriptionOptions, TopicFilter, TopicName, UnsubAck, Unsubscribe,
};
use crate::store::{RecoveredSession, StoreOp};

/// Matching clients a delivery searches one by one for a client seen twice (overlapping
/// filters); beyond this many it indexes them.
const TARGETS_SEARCHED_MAX: usize = 16;

/// Local subscribers of one filter: client id and options. Most filters have one or two.
type Subscribers = SmallVec<[(ByteString, Subscription); 2]>;

/// What start-up recovered from the stores for one shard (see `runtime::recovery`).
#[derive(Default)]
pub struct Restored {
    pub sessions: Vec<RecoveredSession>,
    pub retained: Vec<Arc<Message>>,
    /// Client ids whose registry entry this shard keeps, and the shard holding each session.
    pub registered: Vec<(ByteString, ShardId)>,
    /// Filters subscribed on other shards, for this shard's interest replica.
    pub remote_interest: Vec<(ByteString, ShardId)>,
    /// Shared groups (filter, group) with members on other shards.
    pub remote_shared: Vec<(ByteString, ByteString, ShardId)>,
}

/// Where a client id's session lives, kept by the shard that owns the id.
#[derive(Debug, Clone, Copy)]
struct RegistryEntry {
    shard: ShardId,
    conn: ConnId,
}

/// A CONNECT on its way: first its claim comes back from the registry (with the previous
/// session's state, if resumed), then its CONNACK is sent once every shard routes the session's
/// subscriptions here.
#[derive(Default)]
pub struct PendingClaim {
    progressed: Signal,
    state: RefCell<Option<Option<Box<SessionState>>>>,
    connected: Cell<bool>,
}

impl PendingClaim {
    pub async fn answered(&self) {
        while self.state.borrow().is_none() {
            self.progressed.wait().await;
        }
    }

    pub async fn connected(&self) {
        while !self.connected.get() {
            self.progressed.wait().await;
        }
    }
}

/// A reply held until every other shard has acknowledged a barrier sent after this shard's
/// interest updates (see `barrier`).
enum HeldReply {
    ConnAck { conn: Rc<ConnHandle>, session_present: bool, claim: Rc<PendingClaim> },
    SubAck(Box<PendingSubAck>),
}

/// A SUBACK held back until every other shard acknowledged the barrier (see `subscribe`).
struct PendingSubAck {
    client_id: ByteString,
    conn: ConnId,
    suback: Packet,
    /// Filters whose retained messages follow the SUBACK, with their subscriptions.
    retained_for: Vec<(TopicFilter, Subscription)>,
}

/// Where a CONNECT comes from.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// A client over the network, with its address and what its listener applies to it.
    Network { peer: &'a str, listener: &'a ListenerContext },
    /// The local session of one of this broker's bridges, by connection name.
    Bridge(&'a str),
}

impl std::fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Network { peer, .. } => f.write_str(peer),
            Origin::Bridge(name) => write!(f, "bridge {name}"),
        }
    }
}

pub struct Shard {
    id: ShardId,
    shard_count: usize,
    config: Rc<Config>,
    /// Some listener has an ACL file: deliveries are checked against the reader's.
    checks_reads: bool,
    limits: Limits,
    sessions: AHashMap<ByteString, Session>,
    subscribers: TopicTrie<Subscribers>,
    /// Replica of the cluster-wide interest map: filter -> other shards with a subscriber.
    interest: TopicTrie<ShardSet>,
    /// Shared subscription groups: members here, shards with members elsewhere.
    shared: SharedSubscriptions,
    /// Replica of the retained store (every shard holds all of it; see docs/ARCHITECTURE.md).
    retained: AHashMap<TopicName, Arc<Message>>,
    registry: AHashMap<ByteString, RegistryEntry>,
    claims: AHashMap<ConnId, Rc<PendingClaim>>,
    /// Replies waiting for barrier acknowledgements (and, with persistence, the commit).
    held: Latches<HeldReply>,
    next_token: u64,
    next_conn: u64,
    pub outbound: Outbound,
    /// Connections that took deliveries beyond their high-water mark this turn.
    congested: Vec<Rc<ConnHandle>>,
    /// This shard's part of `$SYS` (`crate::sys`).
    pub counters: Arc<ShardCounters>,
    /// This shard's pending store changes (`persistence true`).
    journal: Option<SharedJournal>,
    /// Acknowledgements held until their message is durable everywhere it was stored: the
    /// publisher's connection, which holds the acknowledgement under the same token.
    durable: Latches<Rc<ConnHandle>>,
}

impl Shard {
    pub fn new(
        id: ShardId,
        shard_count: usize,
        config: Rc<Config>,
        journal: Option<SharedJournal>,
        counters: Arc<ShardCounters>,
    ) -> Self {
        Shard {
            id,
            shard_count,
            checks_reads: config.has_acl_file(),
            limits: Limits::from_config(&config),
            config,
            sessions: AHashMap::new(),
            subscribers: TopicTrie::default(),
            interest: TopicTrie::default(),
            shared: SharedSubscriptions::default(),
            retained: AHashMap::new(),
            registry: AHashMap::new(),
            claims: AHashMap::new(),
            held: Latches::default(),
            next_token: 0,
            next_conn: 0,
            outbound: Outbound::new(shard_count),
            congested: Vec::new(),
            counters,
            journal,
            durable: Latches::default(),
        }
    }

    /// Installs what start-up recovered for this shard, before any client connects.
    pub fn restore(&mut self, restored: Restored) {
        let Some(journal) = self.journal.clone() else { return };
        for message in restored.retained {
            self.store_retained(&message);
        }
        for recovered in restored.sessions {
            let client_id = recovered.session.client_id.clone();
            let epoch = recovered.session.epoch;
            let stored = StoredAt { journal: journal.clone(), client_id: client_id.clone(), epoch };
            let session = Session::restore(recovered, stored);
            let filters: Vec<(TopicFilter, Subscription)> =
                session.state.subscriptions.iter().map(|(f, s)| (f.clone(), *s)).collect();
            self.sessions.insert(client_id.clone(), session);
            for (filter, subscription) in &filters {
                self.add_local_subscriber(&client_id, filter, *subscription);
            }
        }
        for (client_id, shard) in restored.registered {
            // No connection yet: 0 is no connection's id.
            self.registry.insert(client_id, RegistryEntry { shard, conn: 0 });
        }
        for (filter, shard) in restored.remote_interest {
            *self.interest.entry(&filter, || 0) |= 1 << shard;
        }
        for (filter, group, shard) in restored.remote_shared {
            self.shared.set_remote(&filter, &group, shard, true);
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn owner_of(&self, client_id: &str) -> ShardId {
        registry_owner(client_id, self.shard_count)
    }

    /// Sends to a shard; to this shard, handles it at once.
    fn dispatch(&mut self, to: ShardId, msg: ShardMsg) {
        if to == self.id {
            self.handle_shard_msg(msg);
        } else {
            self.outbound.push(to, msg);
        }
    }

    fn other_shards(&self) -> impl Iterator<Item = ShardId> {
        let me = self.id;
        (0..self.shard_count).filter(move |s| *s != me)
    }

    // ---- Connecting -------------------------------------------------------------------------

    /// Checks a CONNECT and claims its client id. `Err` holds the CONNACK that refuses it.
    pub fn begin_connect(
        &mut self,
        connect: &Connect,
        origin: Origin<'_>,
    ) -> Result<(Rc<ConnHandle>, Rc<PendingClaim>), BytesMut> {
        let version = connect.protocol;
        let max_packet_size =
            connect.properties.maximum_packet_size.map_or(u32::MAX, |size| size.get());
        let refuse = |reason| Err(refusal(version, reason, max_packet_size));
        let peer = origin;
        let listener = match origin {
            Origin::Network { listener, .. } => Some(listener),
            Origin::Bridge(_) => None,
        };
        let internal = listener.is_none();
        let username = connect.username.as_deref();
        let credentials = listener.map(|l| l.credentials.clone());
        let admitted =
            credentials.as_ref().is_none_or(|c| c.admits(username, connect.password.as_deref()));
        if !admitted {
            // Mosquitto answers every refusal "not authorised" (3.x code 5, 5.0 0x87).
            tracing::info!(%peer, client_id = %connect.client_id, ?username, "refused: not authorised");
            return refuse(ReasonCode::NotAuthorized);
        }
        // `memory_limit`: checked afresh, so a client is not let in on a stale reading.
        if let Some(limit) = self.config.memory_limit.filter(|_| !internal) {
            if super::counters::check_memory_limit(limit) {
                tracing::info!(%peer, client_id = %connect.client_id, "refused: memory_limit");
                return refuse(ReasonCode::QuotaExceeded);
            }
        }
        if connect.properties.authentication_method.is_some() {
            // No enhanced authentication method is supported (Mosquitto without plugins).
            return refuse(ReasonCode::BadAuthenticationMethod);
        }
        if let Some(reason) = connect.will.as_ref().and_then(|will| self.refuses_will(will)) {
            if internal {
                // Our own bridge's will is its notification: not the client's to change.
            } else if version.is_v5() {
                tracing::info!(%peer, client_id = %connect.client_id, ?reason, "refused: will");
                return refuse(reason);
            } else {
                // 3.x has no return code for these: Mosquitto 2.0.11 closes the connection
                // without CONNACK (checked by hand), and so does Culex.
                tracing::info!(%peer, client_id = %connect.client_id, ?reason, "closed: will");
                return Err(BytesMut::new());
            }
        }
        // Mosquitto's `clientid_prefixes`: checked on the id the client sent.
        if let Some(prefix) = self.config.clientid_prefixes.as_deref() {
            if !internal && !connect.client_id.starts_with(prefix) {
                tracing::info!(%peer, client_id = %connect.client_id, "refused: client id prefix");
                return refuse(ReasonCode::NotAuthorized);
            }
        }
        let client_id = if self.config.use_username_as_clientid && !internal {
            // Mosquitto: the username replaces the id; no username, no connection.
            match &connect.username {
                Some(username) => username.clone(),
                None => return refuse(ReasonCode::NotAuthorized),
            }
        } else if connect.client_id.is_empty() {
            // Mosquitto: an empty id is refused in 3.1, and with a persistent session.
            let persistent = !connect.clean_start && !version.is_v5();
            // A bridge's own session always has an id: only network clients get here.
            let Some(credentials) = &credentials else {
                return refuse(ReasonCode::ClientIdentifierNotValid);
            };
            let settings = credentials.config();
            if version == crate::protocol::ProtocolVersion::V31
                || persistent
                || !settings.allow_zero_length_clientid
            {
                return refuse(ReasonCode::ClientIdentifierNotValid);
            }
            self.assign_client_id(&settings.auto_id_prefix)
        } else {
            connect.client_id.clone()
        };
        self.next_conn += 1;
        let conn_id = ((self.id as u64) << 48) | self.next_conn;
        // max_keepalive caps 5.0 clients through Server Keep Alive (Mosquitto 2.0: "This only
        // applies to MQTT v5 clients").
        let max = self.config.max_keepalive;
        let capped = version.is_v5() && max > 0 && connect.keep_alive_secs > max;
        let keep_alive_secs = if capped { max } else { connect.keep_alive_secs };
        let mut conn = ConnHandle::new(
            conn_id,
            version,
            client_id.clone(),
            keep_alive_secs,
            max_packet_size,
            self.counters.clone(),
        );
        conn.server_keep_alive = capped.then_some(max);
        conn.assigned_client_id = connect.client_id.is_empty();
        conn.is_bridge = connect.bridge;
        conn.internal = internal;
        conn.username = connect.username.clone();
        if let Some(listener) = listener {
            conn.mount_point = listener.mount_point.clone();
        }
        conn.credentials = credentials;
        if let Some(receive_maximum) = connect.properties.receive_maximum {
            conn.receive_maximum = usize::from(receive_maximum.get());
        }
        conn.topic_alias_maximum = connect.properties.topic_alias_maximum.unwrap_or(0);
        conn.problem_information = connect.properties.request_problem_information.unwrap_or(true);
        let conn = Rc::new(conn);
        let claim = Rc::new(PendingClaim::default());
        self.claims.insert(conn_id, claim.clone());
        tracing::info!(
            target: crate::logging::CONNECTION,
            shard = self.id, %peer, %client_id, ?version, "new client connecting"
        );
        let owner = self.owner_of(&client_id);
        self.dispatch(
            owner,
            ShardMsg::Claim {
                client_id,
                from: self.id,
                conn: conn_id,
                clean_start: connect.clean_start,
            },
        );
        Ok((conn, claim))
    }

    /// Why a will cannot be accepted, as a 5.0 CONNACK says it: beyond `max_qos`, retained
    /// while `retain_available` is false, or a payload that claims UTF-8 and is not.
    fn refuses_will(&self, will: &crate::protocol::LastWill) -> Option<ReasonCode> {
        if will.qos > self.config.max_qos {
            Some(ReasonCode::QosNotSupported)
        } else if will.retain && !self.config.retain_available {
            Some(ReasonCode::RetainNotSupported)
        } else if !payload_format_holds(&will.properties, &will.payload) {
            Some(ReasonCode::PayloadFormatInvalid)
        } else {
            None
        }
    }

    fn assign_client_id(&self, prefix: &str) -> ByteString {
        let random = ahash::RandomState::new();
        let a = random.hash_one(Instant::now());
        let b = random.hash_one(self.next_conn);
        format!("{prefix}{a:016x}{b:016x}").into()
    }

    /// The claim came back: install the session (resumed or new) without its connection yet,
    /// so what arrives for it is queued, and hold the CONNACK behind a barrier so that every
    /// shard routes its resumed subscriptions here before the client can act on the CONNACK.
    /// A session without subscriptions has nothing to route: its CONNACK waits only for the
    /// store, if any (most connections are clean; the round trip through every other shard was
    /// most of a connection's latency).
    pub fn finish_connect(
        &mut self,
        conn: &Rc<ConnHandle>,
        connect: Connect,
        claim: Rc<PendingClaim>,
    ) {
        self.counters.connections.add(1);
        let previous = claim.state.borrow_mut().take().flatten();
        let session_present = previous.is_some();
        let expiry = if connect.protocol.is_v5() {
            SessionExpiry::from_interval_secs(
                connect.properties.session_expiry_interval.unwrap_or(0),
            )
        } else if connect.clean_start {
            SessionExpiry::OnDisconnect
        } else {
            SessionExpiry::Never
        };
        let mut state = previous.map(|s| *s).unwrap_or_default();
        let stored_before = state.stored_at.take();
        let filters: Vec<(TopicFilter, Subscription)> =
            state.subscriptions.iter().map(|(f, s)| (f.clone(), *s)).collect();
        let client_id = conn.client_id.clone();
        let mut session = Session::new(expiry, conn.id, state);
        let identity = Identity { client_id: &client_id, username: conn.username.as_deref() };
        // A will the client could not publish itself is dropped when it connects. Its topic
        // is under the listener's mount point, as what the client publishes.
        let will = connect.will.and_then(|mut will| {
            will.topic = conn.mounted_topic(will.topic).ok()?;
            Some(will)
        });
        session.will = will.filter(|will| {
            let allowed = conn
                .credentials
                .as_ref()
                .is_none_or(|c| c.allows(identity, &will.topic, Access::Write));
            if !allowed {
                tracing::info!(%client_id, topic = %will.topic, "will denied by the acl file");
            }
            allowed
        });
        session.reader = conn
            .credentials
            .clone()
            .map(|credentials| Reader { username: conn.username.clone(), credentials });
        self.store_session(&client_id, &mut session, stored_before);
        self.sessions.insert(client_id.clone(), session);
        for (filter, subscription) in &filters {
            self.add_local_subscriber(&client_id, filter, *subscription);
        }
        let reply = HeldReply::ConnAck { conn: conn.clone(), session_present, claim };
        self.barrier(reply, !filters.is_empty());
    }

    /// Writes a session just installed here (persistent ones, with `persistence true`) under a
    /// new incarnation, and retires the records of the one it continues: in the same commit
    /// when they are in this shard's store, or by telling their shard once this commit is
    /// durable (so that a crash in between leaves two copies, never none).
    fn store_session(
        &mut self,
        client_id: &ByteString,
        session: &mut Session,
        before: Option<(ShardId, u64)>,
    ) {
        let Some(journal) = self.journal.clone() else { return };
        if session.is_persistent() {
            let epoch = journal.borrow_mut().next_epoch();
            let client_id = client_id.clone();
            session.store_all(StoredAt { journal: journal.clone(), client_id, epoch });
        }
        let Some((shard, epoch)) = before else { return };
        let client_id = client_id.clone();
        if shard == self.id {
            journal.borrow_mut().push(StoreOp::ForgetSession { client_id, epoch });
        } else if session.stored.is_some() {
            journal.borrow_mut().wait(Waiter::Moved { shard, client_id, epoch });
        } else {
            self.dispatch(shard, ShardMsg::Forget { client_id, epoch });
        }
    }

    /// Sends a barrier to every other shard when `routes_changed`; `reply` goes out when all
    /// have answered. With persistence, it also waits for this shard's pending changes (the
    /// session or subscriptions the reply confirms) to be durable.
    fn barrier(&mut self, reply: HeldReply, routes_changed: bool) {
        let token = self.next_token;
        self.next_token += 1;
        let others: SmallVec<[ShardId; 16]> =
            if routes_changed { self.other_shards().collect() } else { SmallVec::new() };
        for shard in &others {
            self.outbound.push(*shard, ShardMsg::Barrier { from: self.id, token });
        }
        let mut waiting = others.len();
        if let Some(journal) = self.holding_journal() {
            journal.borrow_mut().wait(Waiter::Barrier(token));
            waiting += 1;
        }
        if let Some(reply) = self.held.hold(token, waiting, reply) {
            self.release(reply);
        }
    }

    /// One of the acknowledgements a barrier waits for came.
    fn barrier_passed(&mut self, token: u64) {
        if let Some(reply) = self.held.confirm(token) {
            self.release(reply);
        }
    }

    fn release(&mut self, reply: HeldReply) {
        match reply {
            HeldReply::ConnAck { conn, session_present, claim } => {
                claim.connected.set(true);
                claim.progressed.notify();
                let limits = self.limits;
                let properties = self.connack_properties(&conn);
                let session =
                    self.sessions.get_mut(&conn.client_id).filter(|s| s.conn_id == conn.id);
                let Some(session) = session else {
                    // Taken over by a newer connection while the barrier was out.
                    conn.close(Close::TakenOver);
                    return;
                };
                conn.send(&Packet::ConnAck(ConnAck {
                    session_present,
                    reason: ReasonCode::Success,
                    properties,
                }));
                session.resume(conn, &limits);
            }
            HeldReply::SubAck(pending) => self.complete_suback(*pending),
        }
    }

    /// What a 5.0 CONNACK tells the client about this broker (3.x: nothing).
    fn connack_properties(&self, conn: &ConnHandle) -> Properties {
        let mut properties = Properties::default();
        if !conn.version.is_v5() {
            return properties;
        }
        if conn.assigned_client_id {
            properties.assigned_client_identifier = Some(conn.client_id.clone());
        }
        properties.topic_alias_maximum = Some(TOPIC_ALIAS_MAXIMUM);
        properties.server_keep_alive = conn.server_keep_alive;
        properties.receive_maximum = u16::try_from(self.limits.inflight_max)
            .ok()
            .filter(|max| *max < u16::MAX)
            .and_then(std::num::NonZeroU16::new);
        if !self.config.retain_available {
            properties.retain_available = Some(false);
        }
        if self.config.max_qos < QoS::ExactlyOnce {
            properties.maximum_qos = Some(self.config.max_qos);
        }
        if self.config.max_packet_size < crate::protocol::PACKET_SIZE_MAX {
            properties.maximum_packet_size = std::num::NonZeroU32::new(self.config.max_packet_size);
        }
        properties
    }

    /// The connection task ended: publish the will if due, then keep or end the session.
    pub fn connection_closed(&mut self, conn: &ConnHandle, close: Close) {
        tracing::info!(
            target: crate::logging::CONNECTION,
            client_id = %conn.client_id, ?close, "client disconnected"
        );
        let owns_session = self
            .sessions
            .get(&conn.client_id)
            .is_some_and(|s| s.conn.as_ref().is_some_and(|c| c.id == conn.id));
        if !owns_session {
            return;
        }
        let Some(session) = self.sessions.get_mut(&conn.client_id) else { return };
        session.conn = None;
        let will = session.will.take().filter(|_| close.publishes_will());
        let persistent = session.is_persistent();
        let now = Instant::now();
        session.offline_since = Some(now);
        if let Some(will) = will {
            let delay_secs = will.properties.will_delay_interval.unwrap_or(0);
            if persistent && delay_secs > 0 {
                let due = now + std::time::Duration::from_secs(u64::from(delay_secs));
                session.delayed_will = Some((will, due));
                session.store_record();
            } else {
                self.publish_will(&conn.client_id, will);
            }
        }
        if !persistent {
            if let Some(session) = self.end_session(&conn.client_id) {
                forget_stored(&session);
                self.redeliver_shared(session.state);
            }
            let owner = self.owner_of(&conn.client_id);
            self.dispatch(
                owner,
                ShardMsg::Release { client_id: conn.client_id.clone(), conn: conn.id },
            );
        }
    }

    /// Removes a session and its subscriptions from this shard, returning its state.
    fn end_session(&mut self, client_id: &ByteString) -> Option<Session> {
        let session = self.sessions.remove(client_id)?;
        for filter in session.state.subscriptions.keys() {
            self.remove_local_subscriber(client_id, filter);
        }
        Some(session)
    }

    fn publish_will(&mut self, client_id: &ByteString, will: crate::protocol::LastWill) {
        let mut properties = will.properties;
        // The one will property that is not a PUBLISH property [MQTT-3.1.3.2].
        properties.will_delay_interval = None;
        let message = Message {
            expires_at: expiry_deadline(&properties),
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties,
            publisher: client_id.clone(),
        };
        self.route(Arc::new(message), None);
    }

    /// Ends offline sessions whose expiry interval has passed [MQTT-3.1.2-23]
    /// and publishes delayed wills that fell due, or whose session ended first.
    pub fn expire_sessions(&mut self, now: Instant) {
        let due_wills: Vec<(ByteString, crate::protocol::LastWill)> = self
            .sessions
            .iter_mut()
            .filter(|(_, s)| s.delayed_will.as_ref().is_some_and(|(_, due)| *due <= now))
            .filter_map(|(client_id, s)| {
                let (will, _) = s.delayed_will.take()?;
                s.store_record();
                Some((client_id.clone(), will))
            })
            .collect();
        for (client_id, will) in due_wills {
            self.publish_will(&client_id, will);
        }
        let never_after = self.config.persistent_client_expiration;
        let expired: Vec<(ByteString, ConnId)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.conn.is_none() && s.has_expired(now, never_after))
            .map(|(client_id, s)| (client_id.clone(), s.conn_id))
            .collect();
        for (client_id, conn) in expired {
            tracing::info!(%client_id, "session expired");
            self.counters.sessions_expired.add(1);
            if let Some(session) = self.end_session(&client_id) {
                forget_stored(&session);
                if let Some((will, _)) = session.delayed_will {
                    self.publish_will(&client_id, will);
                }
                self.redeliver_shared(session.state);
            }
            let owner = self.owner_of(&client_id);
            self.dispatch(owner, ShardMsg::Release { client_id, conn });
        }
    }

    /// Closes every connection and logs this shard's message counts.
    pub fn close_all(&mut self, close: Close) {
        for conn in self.sessions.values().filter_map(|s| s.conn.as_ref()) {
            conn.close(close);
        }
        let received = self.counters.publish_received.get();
        let dropped = self.counters.publish_dropped.get();
        tracing::info!(shard = self.id, received, dropped, "shard closing");
    }

    /// Writes this shard's levels into its `$SYS` counters: clients, subscriptions and stored
    /// messages. Walks every session, so it runs on the sweep, not per event.
    pub fn sample_levels(&self) {
        let (mut connected, mut subscriptions, mut shared, mut messages, mut bytes) =
            (0, 0, 0, 0, 0);
        for session in self.sessions.values() {
            connected += u64::from(session.conn.is_some());
            for filter in session.state.subscriptions.keys() {
                match filter.shared() {
                    Some(_) => shared += 1,
                    None => subscriptions += 1,
                }
            }
            let (held, held_bytes) = session.state.held_messages();
            messages += held;
            bytes += held_bytes;
        }
        let counters = &self.counters;
        let offline = self.sessions.len() as u64 - connected;
        counters.clients_connected.set(connected);
        counters.clients_disconnected.set(offline);
        counters.subscriptions.set(subscriptions);
        counters.shared_subscriptions.set(shared);
        // Every shard holds every retained message: shard 0 reports them.
        if self.id == 0 {
            counters.retained.set(self.retained.len() as u64);
            messages += self.retained.len() as u64;
            let retained_bytes = self.retained.values().map(|m| m.topic.len() + m.payload.len());
            bytes += retained_bytes.sum::<usize>() as u64;
        }
        counters.stored_messages.set(messages);
        counters.stored_bytes.set(bytes);
    }

    /// Closes connections whose keep alive ran out: 1.5 times the interval without a packet
    /// [MQTT-3.1.2-24 (3.1.1)].
    pub fn expire_keep_alives(&mut self, now: Instant) {
        for session in self.sessions.values() {
            let Some(conn) = &session.conn else { continue };
            if conn.keep_alive.is_zero() || conn.is_closing() {
                continue;
            }
            if now.duration_since(conn.last_seen.get()) > conn.keep_alive.mul_f32(1.5) {
                tracing::info!(client_id = %conn.client_id, "keep alive timed out");
                conn.close(Close::KeepAliveTimeout);
            }
        }
    }

    // ---- Packets from a connected client ----------------------------------------------------

    pub fn handle_packet(&mut self, conn: &Rc<ConnHandle>, packet: Packet) -> Result<(), Close> {
        let protocol_error = Close::ProtocolError(ReasonCode::ProtocolError);
        match packet {
            Packet::Publish(publish) => self.client_publish(conn, publish),
            Packet::PubAck(ack) => {
                self.update_session(conn, |session, limits| {
                    session.on_puback(ack.packet_id, limits)
                });
                Ok(())
            }
            Packet::PubRec(ack) => {
                self.update_session(conn, |session, _| session.on_pubrec(ack.packet_id));
                Ok(())
            }
            Packet::PubComp(ack) => {
                self.update_session(conn, |session, limits| {
                    session.on_pubcomp(ack.packet_id, limits)
                });
                Ok(())
            }
            Packet::PubRel(ack) => {
                self.update_session(conn, |session, _| session.release_qos2(ack.packet_id));
                // With persistence, not before the release is durable: the client reuses the
                // id once it has PUBCOMP, and a store that still held it would take the next
                // message under that id for a retransmission and drop it.
                self.acknowledge(conn, Packet::PubComp(Ack::new(ack.packet_id)), None);
                Ok(())
            }
            Packet::Subscribe(subscribe) => self.subscribe(conn, subscribe),
            Packet::Unsubscribe(unsubscribe) => {
                self.unsubscribe(conn, unsubscribe);
                Ok(())
            }
            Packet::PingReq => {
                conn.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(disconnect) => {
                if let Some(secs) = disconnect.properties.session_expiry_interval {
                    let Some(session) = self.session_of(conn) else { return Err(protocol_error) };
                    // A session that ends at disconnect cannot be extended now [MQTT-3.14.2-2].
                    if session.expiry == SessionExpiry::OnDisconnect && secs != 0 {
                        return Err(protocol_error);
                    }
                    session.expiry = SessionExpiry::from_interval_secs(secs);
                    session.store_record();
                }
                Err(Close::ClientDisconnect {
                    publish_will: disconnect.reason == ReasonCode::DisconnectWithWillMessage,
                })
            }
            // A second CONNECT is a protocol violation [MQTT-3.1.0-2]; the rest are sent only by
            // servers. AUTH is refused until an authentication method is supported.
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp
            | Packet::Auth(_) => Err(protocol_error),
        }
    }

    /// Applies `update` to the connection's session, if it still has one.
    fn update_session(&mut self, conn: &ConnHandle, update: impl FnOnce(&mut Session, &Limits)) {
        let limits = self.limits;
        if let Some(session) = self.session_of(conn) {
            update(session, &limits);
        }
    }

    fn session_of(&mut self, conn: &ConnHandle) -> Option<&mut Session> {
        self.sessions
            .get_mut(&conn.client_id)
            .filter(|s| s.conn.as_ref().is_some_and(|c| c.id == conn.id))
    }

    fn client_publish(&mut self, conn: &Rc<ConnHandle>, publish: Publish) -> Result<(), Close> {
        self.counters.publish_received.add(1);
        self.counters.publish_bytes_received.add(publish.payload.len() as u64);
        // With `retain_available false` a retained PUBLISH is refused: DISCONNECT 0x9A for 5.0
        // clients, who were told in CONNACK [MQTT-3.3.1-11 (5.0)]; 3.x clients are closed, as
        // Mosquitto 2.0.11 does (checked by hand). A bridge's own session just drops the flag:
        // its remote cannot know this broker's setting.
        if publish.retain && !self.config.retain_available && !conn.internal {
            return Err(Close::ProtocolError(ReasonCode::RetainNotSupported));
        }
        // Above `max_qos` (announced in CONNACK): DISCONNECT 0x9B [MQTT-3.3.1-4], and 3.x
        // clients are closed, as Mosquitto 2.0.11 does. A bridge's own session publishes
        // what its remote sent; it is delivered at `max_qos` instead.
        if publish.qos > self.config.max_qos && !conn.internal {
            return Err(Close::ProtocolError(ReasonCode::QosNotSupported));
        }
        let topic = conn.mounted_topic(resolve_topic_alias(conn, &publish)?)?;
        let limit = self.config.message_size_limit;
        let refused = if super::counters::over_memory_limit() && !conn.internal {
            // As Mosquitto, a 3.x publisher is disconnected (it resends QoS 1 and 2 later);
            // a 5.0 one is told, and the connection stays.
            if !conn.version.is_v5() {
                return Err(Close::ProtocolError(ReasonCode::QuotaExceeded));
            }
            self.counters.publish_dropped.add(1);
            Some(ReasonCode::QuotaExceeded)
        } else if limit > 0 && publish.payload.len() > limit {
            // As Mosquitto 2.0.11: dropped and acknowledged; the connection stays (checked by
            // hand). Mosquitto tells 5.0 clients 0x95, which a PUBACK may not carry (MQTT 5.0
            // section 3.4.2.1): Culex says 0x97, an administrative limit exceeded.
            Some(ReasonCode::QuotaExceeded)
        } else if !payload_format_holds(&publish.properties, &publish.payload) {
            // The spec lets the receiver check [MQTT-3.3.2-4]; Mosquitto 2.0.11 does not, and
            // passes the false claim on to every subscriber.
            Some(ReasonCode::PayloadFormatInvalid)
        } else {
            let who = Identity { client_id: &conn.client_id, username: conn.username.as_deref() };
            // As Mosquitto 2.0.11: dropped, and acknowledged all the same.
            let denied =
                conn.credentials.as_ref().is_some_and(|c| !c.allows(who, &topic, Access::Write));
            denied.then_some(ReasonCode::NotAuthorized)
        };
        if let Some(reason) = refused {
            tracing::debug!(client_id = %conn.client_id, %topic, ?reason, "publish refused");
            if let Some(packet_id) = publish.packet_id {
                conn.refuse_publish(publish.qos, packet_id, reason);
            }
            return Ok(());
        }
        let mut properties = publish.properties;
        properties.topic_alias = None;
        // Subscription ids are the broker's to set on delivery [MQTT-3.3.4-6].
        properties.subscription_identifiers.clear();
        let expires_at = expiry_deadline(&properties);
        let message = Arc::new(Message {
            expires_at,
            topic,
            payload: publish.payload,
            qos: publish.qos.min(self.config.max_qos),
            retain: publish.retain && self.config.retain_available,
            properties,
            publisher: conn.client_id.clone(),
        });
        // Without persistence the acknowledgement goes out before any delivery, as Mosquitto
        // orders them: a client subscribed to its own topic sees PUBACK/PUBREC first. With it,
        // the acknowledgement waits until the message is durable (`acknowledge`).
        match (publish.qos, publish.packet_id) {
            (QoS::AtLeastOnce, Some(packet_id)) => {
                let mut ack = Ack::new(packet_id);
                // As Mosquitto 2.0.11, a 5.0 publisher learns that nobody subscribes (0x10).
                if conn.version.is_v5() && !conn.internal && !self.has_subscribers(&message.topic) {
                    ack.reason = ReasonCode::NoMatchingSubscribers;
                }
                self.acknowledge(conn, Packet::PubAck(ack), Some(message));
            }
            (QoS::ExactlyOnce, Some(packet_id)) => {
                // The broker's Receive Maximum is `max_inflight_messages`, as Mosquitto's: QoS 1
                // is acknowledged at once, QoS 2 counts until PUBREL. It is announced to 5.0
                // clients only; 3.x clients (Mosquitto's own bridges among them, which resend a
                // whole backlog after a reconnect) are bounded by the packet id space alone, and
                // so is a bridge's own session, which takes what its remote sends.
                let receive_maximum = if conn.version.is_v5() && !conn.internal {
                    self.limits.inflight_max
                } else {
                    usize::MAX
                };
                let is_new = match self.session_of(conn) {
                    Some(session) => session
                        .receive_qos2(packet_id, receive_maximum)
                        .map_err(|_| Close::ProtocolError(ReasonCode::ReceiveMaximumExceeded))?,
                    None => true,
                };
                let routed = is_new.then_some(message);
                self.acknowledge(conn, Packet::PubRec(Ack::new(packet_id)), routed);
            }
            _ => {
                self.route(message, None);
            }
        }
        Ok(())
    }

    /// Routes a QoS 1/2 message, if any, and sends `ack`: at once without persistence, else
    /// once every shard that stored the message has made it durable, this one included (with
    /// the QoS 2 packet id, retained message or session change the ack confirms). PUBCOMP and
    /// UNSUBACK come here with no message.
    fn acknowledge(&mut self, conn: &Rc<ConnHandle>, ack: Packet, message: Option<Arc<Message>>) {
        let Some(journal) = self.holding_journal() else {
            conn.send(&ack);
            if let Some(message) = message {
                self.route(message, None);
            }
            return;
        };
        let token = self.next_token;
        self.next_token += 1;
        let remote = message.map_or(0, |message| self.route(message, Some(token)));
        conn.hold_ack(token, ack);
        // Its own shard's commit, and each other shard's it went to.
        let held = self.durable.hold(token, remote + 1, conn.clone());
        debug_assert!(held.is_none());
        journal.borrow_mut().wait(Waiter::Local(token));
    }

    /// The journal, when what depends on a change waits for it (`persistence_sync ack`).
    fn holding_journal(&self) -> Option<SharedJournal> {
        self.journal.clone().filter(|journal| journal.borrow().holds())
    }

    /// One of the shards storing the message behind acknowledgement `token` made it durable.
    fn durable_confirmed(&mut self, token: u64) {
        if let Some(conn) = self.durable.confirm(token) {
            conn.release_ack(token);
        }
    }

    /// A commit of this shard's journal is durable: release who waited for it.
    pub fn committed(&mut self, waiters: Vec<Waiter>) {
        for waiter in waiters {
            match waiter {
                Waiter::Local(token) => self.durable_confirmed(token),
                Waiter::Barrier(token) => self.barrier_passed(token),
                Waiter::Remote { shard, token } => {
                    self.dispatch(shard, ShardMsg::Durable { token })
                }
                Waiter::Moved { shard, client_id, epoch } => {
                    self.dispatch(shard, ShardMsg::Forget { client_id, epoch })
                }
                Waiter::Send { conn, packet } => match *packet {
                    Packet::Publish(publish) => {
                        conn.publish(publish);
                    }
                    other => conn.send(&other),
                },
            }
        }
    }

    /// A message that another shard routed here waits for this shard's commit.
    fn confirm_durable(&mut self, durable: Option<(ShardId, u64)>) {
        let (Some((shard, token)), Some(journal)) = (durable, &self.journal) else { return };
        journal.borrow_mut().wait(Waiter::Remote { shard, token });
    }

    // ---- What bridges ask of their shard ----------------------------------------------------

    /// Publishes a message the broker makes itself (bridge link state), as if `publisher` had.
    pub fn publish_internal(&mut self, message: Message) {
        self.route(Arc::new(message), None);
    }

    /// Messages waiting in an offline session's queue (a lazy bridge connects at a threshold).
    pub fn queued_messages(&self, client_id: &str) -> usize {
        self.sessions.get(client_id).map_or(0, |s| s.state.queued_len())
    }

    /// Messages a session dropped (queue limits, expiry) since the last call.
    pub fn take_dropped(&mut self, client_id: &str) -> u64 {
        self.sessions.get_mut(client_id).map_or(0, Session::take_dropped)
    }

    /// The remote broker started a new session: QoS 2 packet ids it had not released yet will
    /// never be released, and must not make its next messages with those ids look like repeats.
    pub fn forget_unreleased_qos2(&mut self, conn: &ConnHandle) {
        if let Some(session) = self.session_of(conn) {
            session.forget_unreleased_qos2();
        }
    }

    // ---- Routing ----------------------------------------------------------------------------

    /// Routes a message published on this shard: retained store (all replicas), local
    /// subscribers, and once to each other shard with a matching subscription. With `durable`
    /// (an acknowledgement token), the shards it is sent to confirm once they have stored it;
    /// returns how many.
    fn route(&mut self, message: Arc<Message>, durable: Option<u64>) -> usize {
        let mut confirmations = 0;
        if message.retain {
            // Stored on every shard, possibly for a long time: detached from the read buffer.
            let stored = Arc::new(message.detached());
            self.store_retained(&stored);
            // `$SYS` is the broker's own state, published afresh after a restart.
            let stores = !stored.topic.starts_with("$SYS/");
            if let Some(journal) = self.journal.as_ref().filter(|_| stores) {
                // Written by the shard it was published on; start-up keeps the newest record.
                let stamp = retained_stamp(self.id);
                let kept = (!stored.payload.is_empty()).then(|| Box::new(stored_message(&stored)));
                let topic = ByteString::from(&*stored.topic);
                journal.borrow_mut().push(StoreOp::PutRetained { topic, stamp, message: kept });
            }
            for shard in self.other_shards().collect::<SmallVec<[ShardId; 16]>>() {
                self.outbound.push(shard, ShardMsg::Retain(stored.clone()));
            }
        }
        self.deliver_local(&message);
        let origin = durable.map(|token| (self.id, token));
        if !self.shared.is_empty() {
            for pick in self.shared.pick_shards(&message.topic, self.id) {
                if pick.shard == self.id {
                    self.deliver_shared(&message, &pick.filter, &pick.group, 0, None);
                } else {
                    confirmations += usize::from(durable.is_some());
                    let msg = ShardMsg::SharedPublish {
                        message: message.clone(),
                        filter: pick.filter,
                        group: pick.group,
                        hops: 0,
                        durable: origin,
                    };
                    self.outbound.push(pick.shard, msg);
                }
            }
        }
        let mut shards: ShardSet = 0;
        self.interest.matches(&message.topic, |set| shards |= *set);
        while shards != 0 {
            let shard = shards.trailing_zeros() as usize;
            shards &= shards - 1;
            let msg = match durable {
                None => ShardMsg::Publish(message.clone()),
                Some(token) => {
                    confirmations += 1;
                    ShardMsg::DurablePublish { message: message.clone(), origin: self.id, token }
                }
            };
            self.outbound.push(shard, msg);
        }
        confirmations
    }

    /// Whether `route` would deliver a message on `topic` to anyone, on any shard.
    fn has_subscribers(&self, topic: &str) -> bool {
        let mut any = false;
        self.subscribers.matches(topic, |subs| any |= !subs.is_empty());
        self.interest.matches(topic, |shards| any |= *shards != 0);
        any || self.shared.any_group_matches(topic)
    }

    fn store_retained(&mut self, message: &Arc<Message>) {
        if message.payload.is_empty() {
            self.retained.remove(&message.topic);
        } else {
            self.retained.insert(message.topic.clone(), message.clone());
        }
    }

    /// Delivers to this shard's subscribers: one copy per client at the highest QoS of its
    /// matching subscriptions (as Mosquitto does for overlapping filters).
    fn deliver_local(&mut self, message: &Arc<Message>) {
        let Shard {
            subscribers, sessions, limits, counters, congested, checks_reads, config, ..
        } = self;
        let upgrade = config.upgrade_outgoing_qos;
        let checks_reads = *checks_reads;
        let mut targets: SmallVec<[(&ByteString, SubscriptionOptions, SubscriptionIds); 8]> =
            SmallVec::new();
        // Where each client is in `targets`, once there are too many to search one by one (a
        // linear search made delivery quadratic: 1.6 µs per subscriber at 1,000 subscribers,
        // `cargo bench --bench fanout`).
        let mut index: Option<AHashMap<&ByteString, usize>> = None;
        subscribers.matches(&message.topic, |subs| {
            for (client_id, subscription) in subs {
                let options = subscription.options;
                if options.no_local && *client_id == message.publisher {
                    continue;
                }
                if targets.len() == TARGETS_SEARCHED_MAX && index.is_none() {
                    index =
                        Some(targets.iter().enumerate().map(|(i, (c, _, _))| (*c, i)).collect());
                }
                let found = match &index {
                    None => targets.iter().position(|(c, _, _)| *c == client_id),
                    Some(index) => index.get(client_id).copied(),
                };
                let ids = subscription.id.into_iter();
                match found {
                    Some(i) => {
                        // Invariant: `i` came from `targets` itself (a search, or the index
                        // kept in step with every push), and nothing is ever removed from it.
                        let (_, best, all_ids) = &mut targets[i];
                        best.qos = best.qos.max(options.qos);
                        best.retain_as_published |= options.retain_as_published;
                        all_ids.extend(ids);
                    }
                    None => {
                        if let Some(index) = &mut index {
                            index.insert(client_id, targets.len());
                        }
                        targets.push((client_id, options, ids.collect()));
                    }
                }
            }
        });
        let mut deliveries = Deliveries { limits, counters, congested, checks_reads };
        for (client_id, options, subscription_ids) in targets {
            let Some(session) = sessions.get_mut(client_id) else { continue };
            let outgoing = Outgoing {
                message: message.clone(),
                qos: delivery_qos(message.qos, options.qos, upgrade),
                // Retained messages reach existing subscriptions with retain 0 [MQTT-3.3.1-9].
                retain: options.retain_as_published && message.retain,
                subscription_ids,
                shared: None,
                seq: None,
            };
            deliveries.deliver(client_id, session, outgoing);
        }
    }

    /// The subscribers that the deliveries since the last call took past their high-water
    /// marks: the calling task (which made those deliveries) waits for them.
    pub fn take_congested(&mut self) -> Vec<Rc<ConnHandle>> {
        let congested = std::mem::take(&mut self.congested);
        for conn in &congested {
            conn.listed_congested.set(false);
        }
        congested
    }

    /// Whether `conn` still has more than its high-water mark waiting.
    pub fn is_congested(&self, conn: &ConnHandle) -> bool {
        let queued = self.sessions.get(&conn.client_id).map_or(0, |s| s.state.queued_len());
        conn.is_congested(queued)
    }

    // ---- Subscriptions ----------------------------------------------------------------------

    /// Applies a SUBSCRIBE and holds its SUBACK until every other shard has acknowledged a
    /// barrier sent after the interest updates. Each shard-to-shard queue is FIFO, so by then
    /// every other shard routes the new filters here, and this shard's retained replica holds
    /// every retained message other shards acknowledged before: retained messages are collected
    /// only then.
    fn subscribe(&mut self, conn: &Rc<ConnHandle>, subscribe: Subscribe) -> Result<(), Close> {
        let client_id = conn.client_id.clone();
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained_for = Vec::new();
        let id = subscribe.properties.subscription_identifiers.first().copied();
        for (filter, mut options) in subscribe.filters {
            let filter = conn.mounted_filter(filter)?;
            // Granted at most `max_qos`, as Mosquitto grants it.
            options.qos = options.qos.min(self.config.max_qos);
            let shared = filter.shared().is_some();
            // Mosquitto's loop prevention for bridges that set the bridge bit: never echo what
            // the bridge published, and keep the retain flag it needs to mirror retained state.
            if conn.is_bridge && !shared {
                options.no_local = true;
                options.retain_as_published = true;
            }
            // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4].
            if shared && options.no_local && conn.version.is_v5() {
                return Err(Close::ProtocolError(ReasonCode::ProtocolError));
            }
            let Some(session) = self.session_of(conn) else { return Ok(()) };
            // Mosquitto's subscribe line: client, QoS, filter.
            tracing::info!(target: crate::logging::SUBSCRIBE, "{client_id} {} {filter}", options.qos as u8);
            let subscription = Subscription { options, id };
            let existed =
                session.state.subscriptions.insert(filter.clone(), subscription).is_some();
            self.add_local_subscriber(&client_id, &filter, subscription);
            // Retained messages are not sent to shared subscriptions (as Mosquitto).
            let send_retained = !shared
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendAtSubscribeIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                retained_for.push((filter, subscription));
            }
            reasons.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQos1,
                QoS::ExactlyOnce => ReasonCode::GrantedQos2,
            });
        }
        if let Some(session) = self.session_of(conn) {
            session.store_record();
        }
        let suback = Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            properties: Properties::default(),
            reasons,
        });
        // Always through the other shards, even for a filter already routed here: its
        // earlier barrier may still be on its way.
        let reply = HeldReply::SubAck(Box::new(PendingSubAck {
            client_id,
            conn: conn.id,
            suback,
            retained_for,
        }));
        self.barrier(reply, true);
        Ok(())
    }

    fn complete_suback(&mut self, pending: PendingSubAck) {
        let Shard { sessions, retained, limits, counters, congested, checks_reads, config, .. } =
            self;
        let upgrade = config.upgrade_outgoing_qos;
        let Some(session) = sessions.get_mut(&pending.client_id) else { return };
        let Some(conn) = session.conn.clone().filter(|c| c.id == pending.conn) else { return };
        conn.send(&pending.suback);
        let checks_reads = *checks_reads;
        let mut deliveries = Deliveries { limits, counters, congested, checks_reads };
        for (filter, subscription) in &pending.retained_for {
            for message in retained.values().filter(|m| filter_matches(filter, &m.topic)) {
                let outgoing = Outgoing {
                    message: message.clone(),
                    qos: delivery_qos(message.qos, subscription.options.qos, upgrade),
                    retain: true,
                    subscription_ids: subscription.id.into_iter().collect(),
                    shared: None,
                    seq: None,
                };
                deliveries.deliver(&pending.client_id, session, outgoing);
            }
        }
    }

    /// Adds a subscriber to the local trie; when the filter is new on this shard, tells every
    /// other shard to route it here.
    fn add_local_subscriber(
        &mut self,
        client_id: &ByteString,
        filter: &TopicFilter,
        subscription: Subscription,
    ) {
        if let Some(share) = filter.shared() {
            if self.shared.add_member(share.filter, share.group, client_id, subscription) {
                self.broadcast_shared_interest(share.filter, share.group, true);
            }
            return;
        }
        let subscribers = self.subscribers.entry(filter, SmallVec::new);
        let first = subscribers.is_empty();
        match subscribers.iter_mut().find(|(c, _)| c == client_id) {
            Some((_, existing)) => *existing = subscription,
            None => subscribers.push((client_id.clone(), subscription)),
        }
        if first {
            self.broadcast_interest(filter, true);
        }
    }

    fn remove_local_subscriber(&mut self, client_id: &ByteString, filter: &TopicFilter) {
        if let Some(share) = filter.shared() {
            if self.shared.remove_member(share.filter, share.group, client_id) {
                self.broadcast_shared_interest(share.filter, share.group, false);
            }
            return;
        }
        let Some(subscribers) = self.subscribers.get_mut(filter) else { return };
        subscribers.retain(|(c, _)| c != client_id);
        if subscribers.is_empty() {
            self.subscribers.remove(filter);
            self.broadcast_interest(filter, false);
        }
    }

    fn broadcast_shared_interest(&mut self, filter: &str, group: &str, has_members: bool) {
        let (filter, group): (ByteString, ByteString) = (filter.into(), group.into());
        for shard in self.other_shards().collect::<SmallVec<[ShardId; 16]>>() {
            let msg = ShardMsg::SharedInterest {
                filter: filter.clone(),
                group: group.clone(),
                from: self.id,
                has_members,
            };
            self.outbound.push(shard, msg);
        }
    }

    fn broadcast_interest(&mut self, filter: &TopicFilter, added: bool) {
        let filter: ByteString = filter.as_str().into();
        for shard in self.other_shards().collect::<SmallVec<[ShardId; 16]>>() {
            let msg = ShardMsg::Interest { filter: filter.clone(), from: self.id, added };
            self.outbound.push(shard, msg);
        }
    }

    fn unsubscribe(&mut self, conn: &Rc<ConnHandle>, unsubscribe: Unsubscribe) {
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for filter in unsubscribe.filters {
            tracing::info!(target: crate::logging::UNSUBSCRIBE, "{} {filter}", conn.client_id);
            // A filter too long to take the mount point was never subscribed.
            let filter = conn.mounted_filter(filter).ok();
            let existed = filter.as_ref().is_some_and(|filter| {
                self.session_of(conn)
                    .is_some_and(|s| s.state.subscriptions.remove(filter).is_some())
            });
            if let (true, Some(filter)) = (existed, &filter) {
                self.remove_local_subscriber(&conn.client_id, filter);
            }
            reasons.push(if existed {
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            });
        }
        if let Some(session) = self.session_of(conn) {
            session.store_record();
        }
        let unsuback = Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            properties: Properties::default(),
            reasons: if conn.version.is_v5() { reasons } else { Vec::new() },
        });
        // With persistence, once the session's record without those filters is durable.
        self.acknowledge(conn, unsuback, None);
    }

    // ---- Messages from other shards ---------------------------------------------------------

    pub fn handle_shard_msg(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Publish(message) => self.deliver_local(&message),
            ShardMsg::Retain(message) => self.store_retained(&message),
            ShardMsg::Interest { filter, from, added } => {
                let bit: ShardSet = 1 << from;
                if added {
                    *self.interest.entry(&filter, || 0) |= bit;
                } else if let Some(set) = self.interest.get_mut(&filter) {
                    *set &= !bit;
                    if *set == 0 {
                        self.interest.remove(&filter);
                    }
                }
            }
            ShardMsg::SharedInterest { filter, group, from, has_members } => {
                self.shared.set_remote(&filter, &group, from, has_members);
            }
            ShardMsg::DurablePublish { message, origin, token } => {
                self.deliver_local(&message);
                self.confirm_durable(Some((origin, token)));
            }
            ShardMsg::Durable { token } => self.durable_confirmed(token),
            ShardMsg::Forget { client_id, epoch } => {
                if let Some(journal) = &self.journal {
                    journal.borrow_mut().push(StoreOp::ForgetSession { client_id, epoch });
                }
            }
            ShardMsg::SharedPublish { message, filter, group, hops, durable } => {
                self.deliver_shared(&message, &filter, &group, hops, durable);
            }
            ShardMsg::Barrier { from, token } => {
                self.dispatch(from, ShardMsg::BarrierAck { token })
            }
            ShardMsg::BarrierAck { token } => self.barrier_passed(token),
            ShardMsg::Claim { client_id, from, conn, clean_start } => {
                let entry = RegistryEntry { shard: from, conn };
                match self.registry.insert(client_id.clone(), entry) {
                    Some(previous) => self.dispatch(
                        previous.shard,
                        ShardMsg::Evict { client_id, to: from, conn, clean_start },
                    ),
                    None => self.dispatch(from, ShardMsg::Handoff { client_id, conn, state: None }),
                }
            }
            ShardMsg::Evict { client_id, to, conn, clean_start } => {
                let state = self.evict(&client_id, clean_start);
                self.dispatch(to, ShardMsg::Handoff { client_id, conn, state });
            }
            ShardMsg::Handoff { client_id, conn, state } => {
                // Invariant: a connection task waits for its claim's answer before anything
                // else, so the claim is always here.
                debug_assert!(
                    self.claims.contains_key(&conn),
                    "handoff without claim: {client_id}"
                );
                if let Some(claim) = self.claims.remove(&conn) {
                    *claim.state.borrow_mut() = Some(state);
                    claim.progressed.notify();
                }
            }
            ShardMsg::Release { client_id, conn } => {
                if self.registry.get(&client_id).is_some_and(|e| e.conn == conn) {
                    self.registry.remove(&client_id);
                }
            }
        }
    }

    /// Takes a session away from its current connection (closing it, publishing its will) and
    /// returns its state if the new connection resumes it.
    fn evict(&mut self, client_id: &ByteString, clean_start: bool) -> Option<Box<SessionState>> {
        let mut session = self.end_session(client_id)?;
        if let Some(conn) = session.conn.take() {
            tracing::info!(%client_id, "client already connected, closing old connection");
            conn.close(Close::TakenOver);
            if let Some(will) = session.will.take() {
                self.publish_will(client_id, will);
            }
        }
        if !clean_start && session.is_persistent() {
            let mut state = session.state;
            state.stored_at = session.stored.map(|stored| (self.id, stored.epoch));
            Some(Box::new(state))
        } else {
            forget_stored(&session);
            self.redeliver_shared(session.state);
            None
        }
    }

    /// A session ended with messages of shared subscriptions unacknowledged or queued: each goes
    /// to another member of its group (MQTT 5.0 section 4.8.2).
    fn redeliver_shared(&mut self, mut state: SessionState) {
        for outgoing in state.take_shared_unfinished() {
            if let Some(share) = outgoing.shared {
                self.deliver_shared(&outgoing.message, &share.0, &share.1, 0, None);
            }
        }
    }

    /// Delivers to one member of a group on this shard, or forwards to another shard with
    /// members if this one has none left. `durable`: who waits for it to be stored.
    fn deliver_shared(
        &mut self,
        message: &Arc<Message>,
        filter: &ByteString,
        group: &ByteString,
        hops: u8,
        durable: Option<(ShardId, u64)>,
    ) {
        if let Some((client_id, subscription)) = self.shared.pick_member(filter, group) {
            let upgrade = self.config.upgrade_outgoing_qos;
            let Shard { sessions, limits, counters, congested, checks_reads, .. } = self;
            if let Some(session) = sessions.get_mut(&client_id) {
                let outgoing = Outgoing {
                    message: message.clone(),
                    qos: delivery_qos(message.qos, subscription.options.qos, upgrade),
                    retain: subscription.options.retain_as_published && message.retain,
                    subscription_ids: subscription.id.into_iter().collect(),
                    shared: Some(Box::new((filter.clone(), group.clone()))),
                    seq: None,
                };
                let checks_reads = *checks_reads;
                Deliveries { limits, counters, congested, checks_reads }
                    .deliver(&client_id, session, outgoing);
            }
            self.confirm_durable(durable);
            return;
        }
        let others = self.shared.remote_shards(filter, group) & !(1 << self.id);
        if others == 0 || usize::from(hops) >= self.shard_count {
            self.counters.publish_dropped.add(1);
            self.confirm_durable(durable);
            return;
        }
        let to = others.trailing_zeros() as usize;
        let msg = ShardMsg::SharedPublish {
            message: message.clone(),
            filter: filter.clone(),
            group: group.clone(),
            hops: hops + 1,
            durable,
        };
        self.outbound.push(to, msg);
    }
}

/// A session ends for good: its records go too.
fn forget_stored(session: &Session) {
    if let Some(stored) = &session.stored {
        stored.forget();
    }
}

/// The shard keeping `client_id`'s registry entry. Fixed seeds, so that every shard (and
/// start-up, placing recovered sessions) agrees.
pub fn registry_owner(client_id: &str, shard_count: usize) -> ShardId {
    let hasher = ahash::RandomState::with_seeds(0x6375, 0x6c65, 0x7821, 0x2021);
    // Invariant: shard_count <= SHARDS_MAX, so the remainder fits usize.
    (hasher.hash_one(client_id) % shard_count as u64) as usize
}

/// The QoS a subscriber receives a message at: the lower of the two, or with Mosquitto's
/// `upgrade_outgoing_qos` the subscription's own.
fn delivery_qos(published: QoS, granted: QoS, upgrade: bool) -> QoS {
    if upgrade {
        granted
    } else {
        published.min(granted)
    }
}

/// A payload whose Payload Format Indicator says UTF-8 must be UTF-8 [MQTT-3.3.2-4].
fn payload_format_holds(properties: &Properties, payload: &[u8]) -> bool {
    properties.payload_format_indicator != Some(true) || std::str::from_utf8(payload).is_ok()
}

/// When a message with these properties expires (5.0 Message Expiry Interval).
fn expiry_deadline(properties: &Properties) -> Option<Instant> {
    let secs = properties.message_expiry_interval?;
    Some(Instant::now() + std::time::Duration::from_secs(u64::from(secs)))
}

/// The subscription ids of one delivery; usually none or one.
type SubscriptionIds = SmallVec<[crate::protocol::SubscriptionId; 1]>;

/// The topic of a client's PUBLISH, resolving or recording a 5.0 Topic Alias [MQTT-3.3.2.3.4].
fn resolve_topic_alias(conn: &ConnHandle, publish: &Publish) -> Result<TopicName, Close> {
    let Some(alias) = publish.properties.topic_alias.filter(|_| conn.version.is_v5()) else {
        return Ok(publish.topic.clone());
    };
    if alias.get() > TOPIC_ALIAS_MAXIMUM {
        return Err(Close::ProtocolError(ReasonCode::TopicAliasInvalid));
    }
    let mut aliases = conn.topic_aliases.borrow_mut();
    if publish.topic.is_empty() {
        // An alias never set on this connection is a protocol error [MQTT-3.3.2-8 context].
        aliases.get(&alias.get()).cloned().ok_or(Close::ProtocolError(ReasonCode::ProtocolError))
    } else {
        aliases.insert(alias.get(), publish.topic.clone());
        Ok(publish.topic.clone())
    }
}

/// Whether the ACL file of the listener the session last connected through lets it receive a
/// message on `topic` (a bridge's own session is not restricted).
fn may_read(client_id: &str, session: &Session, topic: &str) -> bool {
    session.reader.as_ref().is_none_or(|reader| {
        let who = Identity { client_id, username: reader.username.as_deref() };
        reader.credentials.allows(who, topic, Access::Read)
    })
}

/// What every delivery takes from its shard besides the session: live, shared and retained
/// deliveries all go through `deliver`, so they check the ACL, count drops and note congestion
/// alike (three copies of this had drifted apart).
struct Deliveries<'a> {
    limits: &'a Limits,
    counters: &'a ShardCounters,
    congested: &'a mut Vec<Rc<ConnHandle>>,
    /// An ACL file is configured: each delivery asks it.
    checks_reads: bool,
}

impl Deliveries<'_> {
    /// One message to `client_id`'s session. A message its ACL does not let it read is skipped
    /// and not counted as dropped: Mosquitto's `publish/messages/dropped` counts what queue
    /// limits refused, not what a client may not see. A delivery that takes the client past its
    /// high-water mark lists it as congested for the task making the delivery.
    fn deliver(&mut self, client_id: &str, session: &mut Session, outgoing: Outgoing) {
        if self.checks_reads && !may_read(client_id, session, &outgoing.message.topic) {
            return;
        }
        if session.deliver(outgoing, self.limits) == Delivery::Dropped {
            self.counters.publish_dropped.add(1);
        }
        let Some(conn) = &session.conn else { return };
        if !conn.listed_congested.get() && conn.is_congested(session.state.queued_len()) {
            conn.listed_congested.set(true);
            self.congested.push(conn.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    //! The shard's rules driven without sockets: one shard, whose connections are handles the
    //! test reads the outboxes of.

    use super::*;
    use crate::auth::Credentials;
    use crate::protocol::{Connect, PacketId, ProtocolVersion, Publish, Subscribe};
    use bytes::{Bytes, BytesMut};

    struct OneShard {
        shard: Shard,
        listener: ListenerContext,
        _acl: Option<RemovedOnDrop>,
    }

    /// A file removed when the test ends.
    struct RemovedOnDrop(std::path::PathBuf);

    impl Drop for RemovedOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    impl OneShard {
        fn new(acl: Option<&str>) -> OneShard {
            let mut config = Config::default();
            let acl = acl.map(|rules| {
                let path = std::env::temp_dir().join(format!(
                    "culex-shard-acl-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                std::fs::write(&path, rules).unwrap();
                RemovedOnDrop(path)
            });
            config.acl_file = acl.as_ref().map(|a| a.0.clone());
            let (credentials, _) = Credentials::load(config.auth()).unwrap();
            let listener = ListenerContext { mount_point: None, credentials };
            let shard = Shard::new(0, 1, Rc::new(config), None, Arc::default());
            OneShard { shard, listener, _acl: acl }
        }

        fn connect(&mut self, client_id: &str) -> Rc<ConnHandle> {
            let connect = Connect::new(ProtocolVersion::V311, client_id);
            let origin = Origin::Network { peer: "test", listener: &self.listener };
            let (conn, claim) = self.shard.begin_connect(&connect, origin).unwrap();
            self.shard.finish_connect(&conn, connect, claim);
            assert!(matches!(packets(&conn)[..], [Packet::ConnAck(_)]));
            conn
        }

        fn subscribe(&mut self, conn: &Rc<ConnHandle>, filter: &str) {
            let subscribe = Subscribe {
                packet_id: PacketId::MIN,
                properties: Properties::default(),
                filters: vec![(TopicFilter::new(filter).unwrap(), Default::default())],
            };
            self.shard.handle_packet(conn, Packet::Subscribe(subscribe)).unwrap();
        }

        fn publish(&mut self, conn: &Rc<ConnHandle>, topic: &str, payload_bytes: usize) {
            let publish = Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: topic.contains("retained"),
                topic: TopicName::new(topic).unwrap(),
                packet_id: None,
                properties: Properties::default(),
                payload: Bytes::from(vec![b'x'; payload_bytes]),
            };
            self.shard.handle_packet(conn, Packet::Publish(publish)).unwrap();
        }

        fn congested(&mut self) -> Vec<ByteString> {
            self.shard.take_congested().iter().map(|c| c.client_id.clone()).collect()
        }
    }

    /// What the shard queued for `conn` since the last call.
    fn packets(conn: &ConnHandle) -> Vec<Packet> {
        let mut out: BytesMut = conn.take_outbox();
        std::iter::from_fn(|| Packet::decode(&mut out, conn.version, u32::MAX).unwrap()).collect()
    }

    fn topics(conn: &ConnHandle) -> Vec<String> {
        packets(conn)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.topic.to_string()),
                _ => None,
            })
            .collect()
    }

    /// Live, shared and retained deliveries go through one function: each skips what the
    /// subscriber's ACL does not let it read, none counts that as a drop.
    #[test]
    fn every_delivery_path_skips_what_the_acl_denies_without_counting_a_drop() {
        let mut one = OneShard::new(Some("topic write #\ntopic read public/#\n"));
        let publisher = one.connect("publisher");
        one.publish(&publisher, "secret/retained", 10);
        one.publish(&publisher, "public/retained", 10);
        let subscriber = one.connect("subscriber");
        one.subscribe(&subscriber, "+/retained");
        one.subscribe(&subscriber, "secret/live");
        one.subscribe(&subscriber, "$share/g/secret/shared");
        one.subscribe(&subscriber, "public/live");
        assert_eq!(topics(&subscriber), ["public/retained"], "retained: only the readable one");
        for topic in ["secret/live", "secret/shared", "public/live"] {
            one.publish(&publisher, topic, 10);
        }
        assert_eq!(topics(&subscriber), ["public/live"]);
        assert_eq!(one.shard.counters.publish_dropped.get(), 0);
    }

    /// And each lists a subscriber its delivery took past the high-water mark as congested,
    /// for the task that made the delivery to wait for.
    #[test]
    fn every_delivery_path_notes_congestion() {
        let big = super::super::outbox::OUTBOX_HIGH_WATER_BYTES + 1;
        let mut one = OneShard::new(None);
        let publisher = one.connect("publisher");
        one.publish(&publisher, "big/retained", big);
        let live = one.connect("live");
        let shared = one.connect("shared");
        let retained = one.connect("retained");
        one.subscribe(&live, "big/live");
        one.subscribe(&shared, "$share/g/big/shared");
        assert_eq!(one.congested(), Vec::<ByteString>::new());
        one.subscribe(&retained, "big/retained");
        assert_eq!(one.congested(), ["retained"]);
        one.publish(&publisher, "big/live", big);
        assert_eq!(one.congested(), ["live"]);
        one.publish(&publisher, "big/shared", big);
        assert_eq!(one.congested(), ["shared"]);
    }
}
