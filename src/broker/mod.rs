//! The sans-I/O core of a shard: its state, and the rules it applies to what its clients and
//! the other shards send it. Nothing here awaits or touches a socket: `crate::runtime`'s
//! connection tasks and mesh receivers call it, and it answers by writing into connection
//! outboxes and the outbound batches, so a unit test can drive it without either.
//!
//! `Shard` (here) owns the state; each room below holds the rules of one concern:
//! `clients` (CONNECT, the client-id registry, takeover, wills, expiry), `moves` (a session
//! moving between shards), `publish` (the packet rules of a connected client),
//! `subscriptions`, and `router` (where a message goes, and the one path by which it enters a
//! session). Barriers and the dispatch of shard messages are here.

mod clients;
pub mod counters;
pub mod journal;
mod latch;
pub mod messages;
mod moves;
pub mod outbox;
mod publish;
mod retain;
mod router;
pub mod session;
mod shared;
pub mod signal;
mod subscriptions;
#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use bytes::BytesMut;
use bytestring::ByteString;
use smallvec::SmallVec;

use self::counters::ShardCounters;
use self::journal::{retained_stamp, stored_message, SharedJournal, StoredAt, Waiter};
use self::latch::Latches;
use self::messages::{Outbound, Routing, ShardId, ShardMsg, ShardSet, SharedPick};
use self::outbox::{refusal, Close, ConnHandle, ConnId, ListenerContext};
use self::retain::RetainedStore;
use self::session::{
    Delivery, Limits, Message, Outgoing, Qos2Arrival, Reader, Session, SessionExpiry, SessionState,
    Source, Subscription,
};
use self::shared::SharedSubscriptions;
use self::signal::Signal;
use crate::auth::{Access, Identity};
use crate::config::Config;
use crate::protocol::trie::TopicTrie;
use crate::protocol::{
    Ack, ConnAck, Connect, Packet, Properties, Publish, QoS, ReasonCode, RetainHandling, SubAck,
    Subscribe, SubscriptionOptions, TopicFilter, TopicName, UnsubAck, Unsubscribe,
};
use crate::store::{RecoveredSession, StoreOp};

use clients::*;
use moves::*;
use publish::*;
use router::*;
use subscriptions::*;

pub use clients::{registry_owner, Origin, PendingClaim};

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

/// A reply held until every other shard has acknowledged a barrier sent after this shard's
/// interest updates (see `barrier`).
enum HeldReply {
    ConnAck { conn: Rc<ConnHandle>, session_present: bool, claim: Rc<PendingClaim> },
    SubAck(Box<PendingSubAck>),
}

pub struct Shard {
    id: ShardId,
    shard_count: usize,
    config: Rc<Config>,
    /// Some listener has an ACL file: deliveries are checked against the reader's.
    checks_reads: bool,
    limits: Limits,
    /// Boxed: a session inline (480 bytes) made the map's spare buckets cost as much as its
    /// sessions, 1 KB per connection in all (heaptrack, 4,000 idle connections).
    sessions: AHashMap<ByteString, Box<Session>>,
    subscribers: TopicTrie<Subscribers>,
    /// Replica of the cluster-wide interest map: filter -> other shards with a subscriber.
    interest: TopicTrie<ShardSet>,
    /// Shared subscription groups: members here, shards with members elsewhere.
    shared: SharedSubscriptions,
    /// Replica of the retained store (every shard holds all of it; see docs/ARCHITECTURE.md).
    retained: RetainedStore,
    registry: AHashMap<ByteString, RegistryEntry>,
    claims: AHashMap<ConnId, Rc<PendingClaim>>,
    /// Connections between `begin_connect` and `finish_connect`, with the takeover of their
    /// session that came meanwhile (done once it is installed).
    connecting: AHashMap<ConnId, Option<Takeover>>,
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
    /// Acknowledgements held until their message is durable everywhere it was stored.
    durable: Latches<DurableWaiter>,
    /// Sessions moving to another shard, and from another shard (or resumed here): see `moves`.
    moves_out: AHashMap<ByteString, MoveOut>,
    moves_in: AHashMap<ByteString, MoveIn>,
    /// The bridges this shard runs: each one's local session, its counters, and the flag
    /// that tells its task to stop.
    bridges: Vec<RunningBridge>,
    /// Notified when a reload replaced the configuration.
    reconfigured: Rc<signal::Event>,
}

/// Who waits for a message to be durable everywhere it went.
enum DurableWaiter {
    /// The publisher's connection, which holds the acknowledgement under the same token.
    Publisher(Rc<ConnHandle>),
    /// Another shard's token, confirmed once this shard and the shards it passed the message
    /// on to (a session moving away) have stored it.
    Relay { origin: ShardId, token: u64 },
}

/// A bridge task of this shard, as the shard knows it.
struct RunningBridge {
    local_id: ByteString,
    counters: Arc<counters::BridgeCounters>,
    stop: Rc<Cell<BridgeStop>>,
}

/// Whether a bridge task should go on: a reload stops the bridges it removes or changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeStop {
    Running,
    /// Changed: a new task takes the local session over, with its queue.
    Replaced,
    /// Removed: the local session and what waits in it for the remote go too.
    Removed,
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
            retained: RetainedStore::default(),
            registry: AHashMap::new(),
            claims: AHashMap::new(),
            connecting: AHashMap::new(),
            held: Latches::default(),
            next_token: 0,
            next_conn: 0,
            outbound: Outbound::new(shard_count),
            congested: Vec::new(),
            counters,
            journal,
            durable: Latches::default(),
            moves_out: AHashMap::new(),
            moves_in: AHashMap::new(),
            bridges: Vec::new(),
            reconfigured: Rc::default(),
        }
    }

    /// Puts a configuration read again (SIGHUP) in force: limits, checks and refusals apply
    /// from the next packet on; a session's window and queue from its next delivery.
    pub fn reconfigure(&mut self, config: Rc<Config>) {
        self.checks_reads = config.has_acl_file();
        self.limits = Limits::from_config(&config);
        self.config = config;
        self.reconfigured.notify_all();
    }

    /// Notified whenever `reconfigure` ran.
    pub fn reconfigured(&self) -> Rc<signal::Event> {
        self.reconfigured.clone()
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
            self.sessions.insert(client_id.clone(), Box::new(session));
            for (filter, subscription) in &filters {
                self.add_local_subscriber(&client_id, filter, *subscription);
            }
        }
        for (client_id, shard) in restored.registered {
            self.registry.insert(client_id, RegistryEntry { shard, conn: ConnId::NONE });
        }
        for (filter, shard) in restored.remote_interest {
            self.interest.entry(&filter, ShardSet::default).insert(shard);
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
            self.handle_shard_msg(self.id, msg);
        } else {
            self.outbound.push(to, msg);
        }
    }

    fn other_shards(&self) -> impl Iterator<Item = ShardId> {
        let me = self.id;
        (0..self.shard_count).map(ShardId::new).filter(move |s| *s != me)
    }

    /// Sends a barrier to every other shard when `routes_changed`; `reply` goes out when all
    /// have answered, and `also` other confirmations of the returned token have come. With
    /// persistence, it also waits for this shard's pending changes (the session or
    /// subscriptions the reply confirms) to be durable.
    fn barrier(&mut self, reply: HeldReply, routes_changed: bool, also: usize) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        let others: SmallVec<[ShardId; 16]> =
            if routes_changed { self.other_shards().collect() } else { SmallVec::new() };
        for shard in &others {
            self.outbound.push(*shard, ShardMsg::Barrier { from: self.id, token });
        }
        let mut waiting = others.len() + also;
        if let Some(journal) = self.holding_journal() {
            journal.borrow_mut().wait(Waiter::Barrier(token));
            waiting += 1;
        }
        if let Some(reply) = self.held.hold(token, waiting, reply) {
            self.release(reply);
        }
        token
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

    /// A bridge this shard runs, whose local session's held messages the sweep samples.
    /// Registers a bridge task of this shard; what it returns says when the task must stop.
    pub fn add_bridge(
        &mut self,
        local_id: ByteString,
        counters: Arc<counters::BridgeCounters>,
    ) -> Rc<Cell<BridgeStop>> {
        let stop = Rc::new(Cell::new(BridgeStop::Running));
        self.bridges.push(RunningBridge { local_id, counters, stop: stop.clone() });
        stop
    }

    /// Tells the bridge task of this local session to stop (`how`): a link that is up is
    /// closed as at shutdown, so the remote gets its DISCONNECT.
    pub fn stop_bridge(&mut self, local_id: &str, how: BridgeStop) {
        let Some(at) = self.bridges.iter().position(|b| *b.local_id == *local_id) else { return };
        self.bridges.remove(at).stop.set(how);
        if let Some(conn) = self.sessions.get(local_id).and_then(|s| s.conn.as_ref()) {
            conn.close(Close::ServerShuttingDown);
        }
    }

    /// Writes this shard's levels into its `$SYS` counters: clients, subscriptions and stored
    /// messages, and its bridges' held messages. Walks every session, so it runs on the sweep,
    /// not per event.
    pub fn sample_levels(&self) {
        for bridge in &self.bridges {
            let session = self.sessions.get(&bridge.local_id);
            bridge.counters.held_messages.set(session.map_or(0, |s| s.state.held_messages().0));
        }
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
        if self.id.index() == 0 {
            counters.retained.set(self.retained.len() as u64);
            messages += self.retained.len() as u64;
            bytes += self.retained.bytes() as u64;
        }
        counters.stored_messages.set(messages);
        counters.stored_bytes.set(bytes);
        counters.mesh_pending.set(self.outbound.pending() as u64);
    }

    /// Applies what shard `from` sent (or this shard itself).
    pub fn handle_shard_msg(&mut self, from: ShardId, msg: ShardMsg) {
        match msg {
            ShardMsg::Publish(message) => self.deliver_routed(&message, None, from, None),
            ShardMsg::Retain(message) => self.store_retained(&message),
            ShardMsg::Interest { filter, from, added } => {
                if added {
                    self.interest.entry(&filter, ShardSet::default).insert(from);
                } else if let Some(set) = self.interest.get_mut(&filter) {
                    set.remove(from);
                    if set.is_empty() {
                        self.interest.remove(&filter);
                    }
                }
            }
            ShardMsg::SharedInterest { filter, group, from, has_members } => {
                self.shared.set_remote(&filter, &group, from, has_members);
            }
            ShardMsg::DurablePublish { message, origin, token, routing } => {
                self.deliver_routed(&message, routing.map(|r| *r), from, Some((origin, token)));
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
                    Some(previous) => {
                        let evict = ShardMsg::Evict {
                            client_id,
                            to: from,
                            conn,
                            clean_start,
                            previous: previous.conn,
                        };
                        self.dispatch(previous.shard, evict);
                    }
                    None => {
                        let msg = ShardMsg::Handoff { client_id, conn, state: None, from: self.id };
                        self.dispatch(from, msg);
                    }
                }
            }
            ShardMsg::Evict { client_id, to, conn, clean_start, previous } => {
                let takeover = Takeover { to, conn, clean_start };
                match self.connecting.get_mut(&previous) {
                    // The connection it takes over has not installed its session yet.
                    Some(waiting) => *waiting = Some(takeover),
                    None => self.take_over(client_id, takeover),
                }
            }
            ShardMsg::Handoff { client_id, conn, state, from } => {
                if let Some(state) = &state {
                    self.move_in(&client_id, state, from);
                }
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
            msg @ (ShardMsg::Forward { .. }
            | ShardMsg::MoveStarted { .. }
            | ShardMsg::MoveSeen { .. }
            | ShardMsg::SwitchedHere { .. }
            | ShardMsg::SeenBy { .. }
            | ShardMsg::MoveDone { .. }) => self.handle_move_msg(msg),
        }
    }

    /// The journal, when what depends on a change waits for it (`persistence_sync ack`).
    fn holding_journal(&self) -> Option<SharedJournal> {
        self.journal.clone().filter(|journal| journal.borrow().holds())
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
                Waiter::Route { token, message, routing } => {
                    self.route_durable(token, message, *routing)
                }
            }
        }
    }

    /// A message that another shard routed here waits for this shard's commit.
    fn confirm_durable(&mut self, durable: Option<(ShardId, u64)>) {
        let (Some((shard, token)), Some(journal)) = (durable, &self.journal) else { return };
        journal.borrow_mut().wait(Waiter::Remote { shard, token });
    }

    /// Publishes a message the broker makes itself (bridge link state), as if `publisher` had.
    pub fn publish_internal(&mut self, message: Message) {
        self.route(Arc::new(message), None, None);
    }

    /// Messages waiting in an offline session's queue (a lazy bridge connects at a threshold).
    /// The filters a session of this shard subscribes to.
    pub fn subscriptions_of(&self, client_id: &str) -> Vec<crate::protocol::TopicFilter> {
        let session = self.sessions.get(client_id);
        session.map_or_else(Vec::new, |s| s.state.subscriptions.keys().cloned().collect())
    }

    pub fn queued_messages(&self, client_id: &str) -> usize {
        self.sessions.get(client_id).map_or(0, |s| s.state.queued_len())
    }

    /// Messages a session dropped (queue limits, expiry) since the last call.
    pub fn take_dropped(&mut self, client_id: &str) -> u64 {
        self.sessions.get_mut(client_id).map_or(0, |session| session.take_dropped())
    }

    /// The remote broker started a new session: QoS 2 packet ids it had not released yet will
    /// never be released, and must not make its next messages with those ids look like repeats.
    pub fn forget_unreleased_qos2(&mut self, conn: &ConnHandle) {
        if let Some(session) = self.session_of(conn) {
            session.forget_unreleased_qos2();
        }
    }
}
