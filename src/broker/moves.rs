//! A persistent session moving to another shard: a client resumes it through a listener of a
//! shard other than the one holding it (each shard accepts its own connections). Nothing
//! routed to the session meanwhile may be lost, delivered twice or overtaken.
//!
//! Routing follows each shard's replica of where subscriptions are, and the replicas change
//! one queue at a time; so for a while some shards route the session's messages to the old
//! shard and others to the new one. Every pair of shards has one FIFO queue, and the move
//! cuts each shard's routing at one point:
//!
//! 1. The old shard (`Evict`) takes the session out but keeps its subscriptions, now marking
//!    a `MoveOut`: what they match is forwarded to the new shard (`Forward`).
//! 2. The new shard (`Handoff`) adds the subscriptions (its usual `Interest` updates go out)
//!    and a `MoveIn`, then sends `MoveStarted` to every other shard and `MoveSeen` to the old.
//! 3. Each other shard, at `MoveStarted` (after those interest updates, same queue), routes to
//!    the new shard from then on and marks that point in both queues: `MoveSeen` to the old
//!    shard, `SwitchedHere` to the new.
//! 4. The old shard forwards what a shard routed before its `MoveSeen`, skips what came after
//!    (the new shard gets it directly), and passes each `MoveSeen` on as `SeenBy`. When every
//!    shard has been seen, it drops the subscriptions and sends `MoveDone`.
//! 5. The new shard skips what a shard sent it directly before its `SwitchedHere` (the old
//!    shard forwards that) and holds what came after until that shard's `SeenBy`, so that it
//!    follows what was forwarded; what the old shard sends directly it skips until `MoveDone`.
//!    Its own routing switched at `Handoff`: its deliveries wait for its own `SeenBy`.
//!
//! The CONNACK waits for the move to end, so the session's subscriptions do not change during
//! it; so does a takeover of the session (`Evict`) that comes meanwhile. A resume on the same
//! shard keeps the subscriptions in place and only holds deliveries until the session is back.
//! Shared subscriptions move alike, more simply: each message of a group goes to one shard,
//! which picks one member, so nothing can come twice; the old shard forwards what it picks the
//! moving member for, and the new shard holds what comes before the session is installed.

use super::*;

/// The old shard's side of a move.
pub(super) struct MoveOut {
    to: ShardId,
    /// The session's subscriptions, kept in this shard's trie and shared groups until the end.
    filters: Vec<TopicFilter>,
    /// Shards whose `MoveSeen` came: what they route now reaches the new shard directly.
    seen: ShardSet,
}

/// The new shard's side of a move (or of a resume on the same shard).
pub(super) struct MoveIn {
    from: ShardId,
    /// `MoveDone` came: what the old shard sends directly is for the session too.
    old_done: bool,
    /// Shards whose `SwitchedHere` came: what they send directly from then on is for the session.
    switched: ShardSet,
    /// Shards whose `SeenBy` came: all they routed before their switch has been forwarded here.
    seen: ShardSet,
    /// Every shard but the old one: `switched` and `seen` end with all of these.
    others: ShardSet,
    /// The connection's `finish_connect` installed the session.
    installed: bool,
    /// Deliveries waiting for the session or for their shard's `SeenBy`, in arrival order.
    held: Vec<Held>,
    /// The barrier token the CONNACK waits on (it waits for the end of the move too).
    connack: Option<u64>,
    /// A takeover that came during the move: done when the move ends.
    evict: Option<Takeover>,
}

struct Held {
    /// The shard that routed it here directly, or `None`: forwarded by the old shard (or a
    /// shared message, which comes once whichever way).
    routed_by: Option<ShardId>,
    message: Arc<Message>,
    routing: Option<Routing>,
    durable: Option<(ShardId, u64)>,
    /// For a shared subscription: the member picked for it.
    shared: Option<Box<SharedPick>>,
}

/// What the new shard does with a delivery to the moving session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Way {
    Deliver,
    /// The old shard forwards it.
    Skip,
    /// It must follow what the old shard still forwards from its shard.
    Hold,
}

impl MoveIn {
    fn new(from: ShardId, me: ShardId, shard_count: usize) -> MoveIn {
        let others = ShardSet::first(shard_count).without(from);
        let local = from == me;
        let mut switched = ShardSet::default();
        switched.insert(me);
        MoveIn {
            from,
            old_done: local,
            switched: if local { others } else { switched },
            seen: if local { others } else { ShardSet::default() },
            others,
            installed: false,
            held: Vec::new(),
            connack: None,
            evict: None,
        }
    }

    /// How a message that `by` routed here directly reaches the session.
    pub(super) fn way(&self, by: ShardId, me: ShardId) -> Way {
        let delivers = if by == self.from {
            if !self.old_done {
                return Way::Skip;
            }
            true
        } else if by == me {
            // This shard switched at `Handoff`.
            self.seen.contains(me)
        } else if !self.switched.contains(by) {
            return Way::Skip;
        } else {
            self.seen.contains(by)
        };
        if delivers && self.installed {
            Way::Deliver
        } else {
            Way::Hold
        }
    }

    /// Whether a held delivery may go, once the session is installed.
    fn releases(&self, held: &Held) -> bool {
        held.routed_by.is_none_or(|by| by == self.from || self.seen.contains(by))
    }

    fn is_over(&self) -> bool {
        self.installed && self.old_done && self.switched == self.others && self.seen == self.others
    }
}

/// The subscriptions that move with a session.
fn moving_filters(state: &SessionState) -> Vec<TopicFilter> {
    state.subscriptions.keys().cloned().collect()
}

impl Shard {
    /// `Evict` of a session that `to` resumes: takes it out of this shard, keeping its
    /// subscriptions (forwarding what they match, when `to` is another shard, until every shard
    /// routes to `to`).
    pub(super) fn move_out(&mut self, client_id: &ByteString, to: ShardId) -> Option<Session> {
        let session = *self.sessions.remove(client_id)?;
        let filters = moving_filters(&session.state);
        if to != self.id && !filters.is_empty() {
            let out = MoveOut { to, filters, seen: ShardSet::default() };
            self.moves_out.insert(client_id.clone(), out);
        }
        Some(session)
    }

    /// `Handoff` of a resumed session: routes its subscriptions here and starts the move.
    pub(super) fn move_in(&mut self, client_id: &ByteString, state: &SessionState, from: ShardId) {
        let filters = moving_filters(state);
        if filters.is_empty() {
            return;
        }
        let arriving = MoveIn::new(from, self.id, self.shard_count);
        self.moves_in.insert(client_id.clone(), arriving);
        if from == self.id {
            return;
        }
        for filter in &filters {
            if let Some(subscription) = state.subscriptions.get(filter) {
                self.add_local_subscriber(client_id, filter, *subscription);
            }
        }
        let me = self.id;
        for shard in self.other_shards().filter(|shard| *shard != from).collect::<Vec<_>>() {
            let msg = ShardMsg::MoveStarted { client_id: client_id.clone(), from, to: me };
            self.outbound.push(shard, msg);
        }
        self.outbound.push(from, ShardMsg::MoveSeen { client_id: client_id.clone(), by: me });
    }

    /// `finish_connect` installed the session: held deliveries that may go, go. Returns whether
    /// the move goes on (the CONNACK then waits for `moved_in`'s end).
    pub(super) fn moved_in_installed(&mut self, client_id: &ByteString) -> bool {
        let Some(arriving) = self.moves_in.get_mut(client_id) else { return false };
        arriving.installed = true;
        self.advance_move(client_id);
        self.moves_in.contains_key(client_id)
    }

    /// The CONNACK of the moving session waits on barrier `token` for the move's end too.
    pub(super) fn connack_waits_for_move(&mut self, client_id: &ByteString, token: u64) {
        if let Some(arriving) = self.moves_in.get_mut(client_id) {
            arriving.connack = Some(token);
        }
    }

    /// A takeover during the move waits for its end: returns it if there is none.
    pub(super) fn defer_takeover(
        &mut self,
        client_id: &ByteString,
        takeover: Takeover,
    ) -> Option<Takeover> {
        match self.moves_in.get_mut(client_id) {
            Some(arriving) => {
                arriving.evict = Some(takeover);
                None
            }
            None => Some(takeover),
        }
    }

    /// The move messages (see the module), as `handle_shard_msg` receives them.
    pub(super) fn handle_move_msg(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Forward { client_id, message, routing, durable, shared } => {
                let routing = routing.map(|r| *r);
                let arriving = self.moves_in.get_mut(&client_id);
                match arriving {
                    Some(arriving) if !arriving.installed => {
                        let held = Held { routed_by: None, message, routing, durable, shared };
                        arriving.held.push(held);
                    }
                    _ => self.deliver_held(&client_id, &message, routing.as_ref(), shared, durable),
                }
            }
            ShardMsg::MoveStarted { client_id, from, to } => {
                let by = self.id;
                self.outbound.push(from, ShardMsg::MoveSeen { client_id: client_id.clone(), by });
                self.outbound.push(to, ShardMsg::SwitchedHere { client_id, by });
            }
            ShardMsg::MoveSeen { client_id, by } => self.move_seen(client_id, by),
            ShardMsg::SwitchedHere { client_id, by } => {
                if let Some(arriving) = self.moves_in.get_mut(&client_id) {
                    arriving.switched.insert(by);
                    self.advance_move(&client_id);
                }
            }
            ShardMsg::SeenBy { client_id, by } => {
                if let Some(arriving) = self.moves_in.get_mut(&client_id) {
                    arriving.seen.insert(by);
                    self.advance_move(&client_id);
                }
            }
            ShardMsg::MoveDone { client_id } => {
                if let Some(arriving) = self.moves_in.get_mut(&client_id) {
                    arriving.old_done = true;
                    self.advance_move(&client_id);
                }
            }
            other => debug_assert!(false, "not a move message: {other:?}"),
        }
    }

    /// The old shard: `by` switched. When all have, the subscriptions go.
    fn move_seen(&mut self, client_id: ByteString, by: ShardId) {
        let Some(out) = self.moves_out.get_mut(&client_id) else { return };
        out.seen.insert(by);
        let to = out.to;
        self.outbound.push(to, ShardMsg::SeenBy { client_id: client_id.clone(), by });
        if out.seen != ShardSet::first(self.shard_count).without(self.id) {
            return;
        }
        if let Some(out) = self.moves_out.remove(&client_id) {
            for filter in &out.filters {
                self.remove_local_subscriber(&client_id, filter);
            }
        }
        self.outbound.push(to, ShardMsg::MoveDone { client_id });
    }

    /// Delivers what may go now and, at the move's end, releases the CONNACK and a takeover
    /// that waited.
    fn advance_move(&mut self, client_id: &ByteString) {
        let Some(arriving) = self.moves_in.get_mut(client_id) else { return };
        if !arriving.installed {
            return;
        }
        let (mut ready, waiting): (Vec<Held>, Vec<Held>) =
            std::mem::take(&mut arriving.held).into_iter().partition(|h| arriving.releases(h));
        arriving.held = waiting;
        // What the old shard forwarded first: a shard's direct deliveries may have been held
        // before what it routed earlier came forwarded (and only the order within one shard's
        // deliveries matters: a publisher is on one shard).
        ready.sort_by_key(|held| held.routed_by.is_some());
        let over = arriving.is_over();
        for held in ready {
            let Held { message, routing, durable, shared, .. } = held;
            self.deliver_held(client_id, &message, routing.as_ref(), shared, durable);
        }
        if !over {
            return;
        }
        let Some(arriving) = self.moves_in.remove(client_id) else { return };
        debug_assert!(arriving.held.is_empty(), "a move ended holding messages");
        if let Some(token) = arriving.connack {
            self.barrier_passed(token);
        }
        if let Some(takeover) = arriving.evict {
            self.take_over(client_id.clone(), takeover);
        }
    }

    /// Deliveries `deliver_local` set aside for sessions moving out of or into this shard:
    /// forwarded, held or skipped (see the module). Each forwarded or held delivery waits to be
    /// stored for `durable`, if any: returns how many do. Never confirms anything itself.
    pub(super) fn divert(
        &mut self,
        diverted: Diverted,
        message: &Arc<Message>,
        routing: Option<Routing>,
        by: ShardId,
        durable: Option<(ShardId, u64)>,
    ) -> usize {
        let mut waits = 0;
        for client_id in diverted {
            if let Some(out) = self.moves_out.get(&client_id) {
                if out.seen.contains(by) {
                    continue;
                }
                let msg = ShardMsg::Forward {
                    client_id,
                    message: message.clone(),
                    routing: routing.map(Box::new),
                    durable,
                    shared: None,
                };
                self.outbound.push(out.to, msg);
            } else if let Some(arriving) = self.moves_in.get_mut(&client_id) {
                if arriving.way(by, self.id) == Way::Skip {
                    continue;
                }
                let message = message.clone();
                let held = Held { routed_by: Some(by), message, routing, durable, shared: None };
                arriving.held.push(held);
            } else {
                continue;
            }
            waits += usize::from(durable.is_some());
        }
        waits
    }

    /// A shared message whose picked member is moving out of this shard (forwarded) or into it
    /// (held until installed). `durable` is confirmed where it is delivered.
    pub(super) fn divert_shared(
        &mut self,
        client_id: ByteString,
        message: &Arc<Message>,
        pick: SharedPick,
        durable: Option<(ShardId, u64)>,
    ) {
        let message = message.clone();
        let shared = Some(Box::new(pick));
        if let Some(out) = self.moves_out.get(&client_id) {
            let msg = ShardMsg::Forward { client_id, message, routing: None, durable, shared };
            self.outbound.push(out.to, msg);
        } else if let Some(arriving) = self.moves_in.get_mut(&client_id) {
            arriving.held.push(Held { routed_by: None, message, routing: None, durable, shared });
        } else {
            self.confirm_durable(durable);
        }
    }

    /// A forwarded or held delivery reaches the session, and is confirmed stored.
    fn deliver_held(
        &mut self,
        client_id: &ByteString,
        message: &Arc<Message>,
        routing: Option<&Routing>,
        shared: Option<Box<SharedPick>>,
        durable: Option<(ShardId, u64)>,
    ) {
        match shared {
            Some(pick) => self.deliver_to_member(client_id, message, &pick),
            None => self.deliver_to(client_id, message, routing),
        }
        self.confirm_durable(durable);
    }

    /// A message another shard (`by`) routed here, to this shard's subscribers. `durable`: who
    /// waits for it to be stored here; a delivery set aside for a moving session is waited for
    /// too, under a token of this shard relayed to `durable` when all are stored.
    pub(super) fn deliver_routed(
        &mut self,
        message: &Arc<Message>,
        routing: Option<Routing>,
        by: ShardId,
        durable: Option<(ShardId, u64)>,
    ) {
        let diverted = self.deliver_local(message, routing.as_ref(), by);
        if diverted.is_empty() {
            self.confirm_durable(durable);
            return;
        }
        let Some((origin, token)) = durable else {
            self.divert(diverted, message, routing, by, None);
            return;
        };
        let relay = self.next_token;
        self.next_token += 1;
        let waits = self.divert(diverted, message, routing, by, Some((self.id, relay)));
        // Its own commit, and each diverted delivery's.
        let held = self.durable.hold(relay, waits + 1, DurableWaiter::Relay { origin, token });
        debug_assert!(held.is_none());
        self.confirm_durable(Some((self.id, relay)));
    }

    /// One message to one session, as `deliver_local` would deliver it there: at the highest
    /// QoS of its matching subscriptions (not shared), with all their identifiers.
    fn deliver_to(
        &mut self,
        client_id: &ByteString,
        message: &Arc<Message>,
        routing: Option<&Routing>,
    ) {
        let upgrade = self.config.upgrade_outgoing_qos;
        let Shard { sessions, limits, counters, congested, checks_reads, .. } = self;
        let Some(session) = sessions.get_mut(client_id) else { return };
        let mut matched: Option<Matched> = None;
        for (filter, subscription) in &session.state.subscriptions {
            let skipped = filter.shared().is_some()
                || (subscription.options.no_local && *client_id == message.publisher)
                || !crate::protocol::filter_matches(filter, &message.topic);
            match &mut matched {
                _ if skipped => {}
                Some(matched) => matched.add(subscription),
                None => matched = Some(Matched::of(subscription)),
            }
        }
        let Some(matched) = matched else { return };
        let outgoing = matched.outgoing(message, upgrade);
        let checks_reads = *checks_reads;
        Deliveries { limits, counters, congested, checks_reads, routing }
            .deliver(client_id, session, outgoing);
    }
}
