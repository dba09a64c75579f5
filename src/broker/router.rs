//! Where a message goes: the retained replica, this shard's subscribers, once to each other
//! shard with interest, one member of each shared group; and `Deliveries::deliver`, the one
//! path by which a message, live, shared or retained, enters a session.

use super::counters::DropReason;
use super::*;

/// Matching clients a delivery searches one by one for a client seen twice (overlapping
/// filters); beyond this many it indexes them.
const TARGETS_SEARCHED_MAX: usize = 16;

/// The QoS a subscriber receives a message at: the lower of the two, or with Mosquitto's
/// `upgrade_outgoing_qos` the subscription's own.
pub(super) fn delivery_qos(published: QoS, granted: QoS, upgrade: bool) -> QoS {
    if upgrade {
        granted
    } else {
        published.min(granted)
    }
}

/// The subscription ids of one delivery; usually none or one.
type SubscriptionIds = SmallVec<[crate::protocol::SubscriptionId; 1]>;

/// What one client's subscriptions matching a message make of it (Mosquitto's rule for
/// overlapping filters): one copy, at the highest QoS, Retain As Published if any asks for it,
/// with every subscription identifier.
pub(super) struct Matched {
    options: SubscriptionOptions,
    ids: SubscriptionIds,
}

impl Matched {
    pub(super) fn of(subscription: &Subscription) -> Matched {
        Matched { options: subscription.options, ids: subscription.id.into_iter().collect() }
    }

    pub(super) fn add(&mut self, subscription: &Subscription) {
        self.options.qos = self.options.qos.max(subscription.options.qos);
        self.options.retain_as_published |= subscription.options.retain_as_published;
        self.ids.extend(subscription.id);
    }

    pub(super) fn outgoing(self, message: &Arc<Message>, upgrade: bool) -> Outgoing {
        Outgoing {
            message: message.clone(),
            qos: delivery_qos(message.qos, self.options.qos, upgrade),
            // Retained messages reach existing subscriptions with retain 0 [MQTT-3.3.1-9].
            retain: self.options.retain_as_published && message.retain,
            subscription_ids: self.ids,
            shared: None,
            seq: None,
        }
    }
}

/// Clients whose session is moving between shards, set aside by `deliver_local` for
/// `Shard::divert` (`moves`); nearly always empty.
pub(super) type Diverted = Vec<ByteString>;

/// Whether the ACL file of the listener the session last connected through lets it receive a
/// message on `topic` (a bridge's own session is not restricted).
fn may_read(client_id: &str, session: &Session, topic: &str) -> bool {
    session.reader.as_ref().is_none_or(|reader| {
        let who = Identity { client_id, username: reader.username.as_deref() };
        reader.credentials.allows(who, topic, Access::Read)
    })
}

/// Whether a retained message's publisher may still write its topic (`check_retain_source`),
/// asked of the ACL the subscriber's listener uses (one ACL unless `per_listener_settings`).
pub(super) fn source_may_write(message: &Message, session: &Session) -> bool {
    let Source::Client { username } = &message.source else { return true };
    session.reader.as_ref().is_none_or(|reader| {
        let who = Identity { client_id: &message.publisher, username: username.as_deref() };
        reader.credentials.allows(who, &message.topic, Access::Write)
    })
}

/// What every delivery takes from its shard besides the session: live, shared and retained
/// deliveries all go through `deliver`, so they check the ACL, count drops and note congestion
/// alike (three copies of this had drifted apart).
pub(super) struct Deliveries<'a> {
    pub(super) limits: &'a Limits,
    pub(super) counters: &'a ShardCounters,
    pub(super) congested: &'a mut Vec<Rc<ConnHandle>>,
    /// An ACL file is configured: each delivery asks it.
    pub(super) checks_reads: bool,
    /// How the message was routed, if it is a QoS 2 message from a stored session
    /// (`Session::admits`).
    pub(super) routing: Option<&'a Routing>,
}

impl Deliveries<'_> {
    /// One message to `client_id`'s session. A message its ACL does not let it read is skipped
    /// and not counted as dropped: Mosquitto's `publish/messages/dropped` counts what queue
    /// limits refused, not what a client may not see. A delivery that takes the client past its
    /// high-water mark lists it as congested for the task making the delivery.
    pub(super) fn deliver(&mut self, client_id: &str, session: &mut Session, outgoing: Outgoing) {
        if self.checks_reads && !may_read(client_id, session, &outgoing.message.topic) {
            return;
        }
        if !session.admits(self.routing) {
            return;
        }
        if let Delivery::Dropped(reason) = session.deliver(outgoing, self.limits) {
            self.counters.count_drop(reason);
        }
        let Some(conn) = &session.conn else { return };
        if !conn.listed_congested.get() && conn.is_congested(session.state.queued_len()) {
            conn.listed_congested.set(true);
            self.congested.push(conn.clone());
        }
    }
}

impl Shard {
    /// Routes a message published on this shard: retained store (all replicas), local
    /// subscribers, and once to each other shard with a matching subscription. With `durable`
    /// (an acknowledgement token), the shards it is sent to confirm once they have stored it;
    /// returns how many. `routing`: a QoS 2 message from a stored session (`Session::admits`).
    pub(super) fn route(
        &mut self,
        message: Arc<Message>,
        durable: Option<u64>,
        routing: Option<Routing>,
    ) -> usize {
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
        let origin = durable.map(|token| (self.id, token));
        let diverted = self.deliver_local(&message, routing.as_ref(), self.id);
        if !diverted.is_empty() {
            confirmations += self.divert(diverted, &message, routing, self.id, origin);
        }
        if !self.shared.is_empty() {
            for pick in self.shared.pick_shards(&message.topic, self.id) {
                if pick.shard == self.id {
                    // Confirmed like another shard's delivery: it may go on to a member's
                    // new shard (`moves`).
                    confirmations += usize::from(durable.is_some());
                    self.deliver_shared(&message, &pick.filter, &pick.group, 0, origin);
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
        let mut shards = ShardSet::default();
        self.interest.matches(&message.topic, |set| shards = shards.union(*set));
        for shard in shards.iter() {
            let msg = match durable {
                None => ShardMsg::Publish(message.clone()),
                Some(token) => {
                    confirmations += 1;
                    ShardMsg::DurablePublish {
                        message: message.clone(),
                        origin: self.id,
                        token,
                        routing: routing.map(Box::new),
                    }
                }
            };
            self.outbound.push(shard, msg);
        }
        confirmations
    }

    /// Whether `route` would deliver a message on `topic` to anyone, on any shard.
    pub(super) fn has_subscribers(&self, topic: &str) -> bool {
        let mut any = false;
        self.subscribers.matches(topic, |subs| any |= !subs.is_empty());
        self.interest.matches(topic, |shards| any |= !shards.is_empty());
        any || self.shared.any_group_matches(topic)
    }

    pub(super) fn store_retained(&mut self, message: &Arc<Message>) {
        self.retained.store(message);
    }

    /// Delivers to this shard's subscribers: one copy per client at the highest QoS of its
    /// matching subscriptions (as Mosquitto does for overlapping filters). `by`: the shard that
    /// routed it here. Returns the clients whose sessions are moving (`divert` takes them).
    #[must_use]
    pub(super) fn deliver_local(
        &mut self,
        message: &Arc<Message>,
        routing: Option<&Routing>,
        by: ShardId,
    ) -> Diverted {
        let Shard {
            subscribers,
            sessions,
            limits,
            counters,
            congested,
            checks_reads,
            config,
            moves_in,
            id,
            ..
        } = self;
        let upgrade = config.upgrade_outgoing_qos;
        let checks_reads = *checks_reads;
        let mut targets: SmallVec<[(&ByteString, Matched); 8]> = SmallVec::new();
        // Where each client is in `targets`, once there are too many to search one by one (a
        // linear search made delivery quadratic: 1.6 µs per subscriber at 1,000 subscribers,
        // `cargo bench --bench fanout`).
        let mut index: Option<AHashMap<&ByteString, usize>> = None;
        subscribers.matches(&message.topic, |subs| {
            for (client_id, subscription) in subs {
                if subscription.options.no_local && *client_id == message.publisher {
                    continue;
                }
                if targets.len() == TARGETS_SEARCHED_MAX && index.is_none() {
                    index = Some(targets.iter().enumerate().map(|(i, (c, _))| (*c, i)).collect());
                }
                let found = match &index {
                    None => targets.iter().position(|(c, _)| *c == client_id),
                    Some(index) => index.get(client_id).copied(),
                };
                match found {
                    // Invariant: `i` came from `targets` itself (a search, or the index kept
                    // in step with every push), and nothing is ever removed from it.
                    Some(i) => targets[i].1.add(subscription),
                    None => {
                        if let Some(index) = &mut index {
                            index.insert(client_id, targets.len());
                        }
                        targets.push((client_id, Matched::of(subscription)));
                    }
                }
            }
        });
        let mut deliveries = Deliveries { limits, counters, congested, checks_reads, routing };
        let mut diverted = Diverted::new();
        for (client_id, matched) in targets {
            let way = match moves_in.is_empty() {
                true => Way::Deliver,
                false => moves_in.get(client_id).map_or(Way::Deliver, |m| m.way(by, *id)),
            };
            let session = sessions.get_mut(client_id).filter(|_| way == Way::Deliver);
            let Some(session) = session else {
                if way != Way::Skip {
                    diverted.push(client_id.clone());
                }
                continue;
            };
            deliveries.deliver(client_id, session, matched.outgoing(message, upgrade));
        }
        diverted
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

    /// A session ended with messages of shared subscriptions unacknowledged or queued: each goes
    /// to another member of its group (MQTT 5.0 section 4.8.2).
    pub(super) fn redeliver_shared(&mut self, mut state: SessionState) {
        for outgoing in state.take_shared_unfinished() {
            if let Some(share) = outgoing.shared {
                self.deliver_shared(&outgoing.message, &share.0, &share.1, 0, None);
            }
        }
    }

    /// Delivers to one member of a group on this shard, or forwards to another shard with
    /// members if this one has none left. `durable`: who waits for it to be stored. Shared
    /// deliveries carry no routing: a message forwarded between members' shards can overtake
    /// the routing shard's later ones, which marks cannot follow.
    pub(super) fn deliver_shared(
        &mut self,
        message: &Arc<Message>,
        filter: &ByteString,
        group: &ByteString,
        hops: u8,
        durable: Option<(ShardId, u64)>,
    ) {
        if let Some((client_id, subscription)) = self.shared.pick_member(filter, group) {
            let pick = SharedPick { filter: filter.clone(), group: group.clone(), subscription };
            if self.sessions.contains_key(&client_id) {
                self.deliver_to_member(&client_id, message, &pick);
                self.confirm_durable(durable);
            } else {
                // A member moving between shards (`moves`): it confirms once delivered.
                self.divert_shared(client_id, message, pick, durable);
            }
            return;
        }
        let others = self.shared.remote_shards(filter, group).without(self.id);
        let Some(to) = others.iter().next().filter(|_| usize::from(hops) < self.shard_count) else {
            self.counters.count_drop(DropReason::NoMember);
            self.confirm_durable(durable);
            return;
        };
        let msg = ShardMsg::SharedPublish {
            message: message.clone(),
            filter: filter.clone(),
            group: group.clone(),
            hops: hops + 1,
            durable,
        };
        self.outbound.push(to, msg);
    }

    /// One shared message to the member picked for it, on this shard.
    pub(super) fn deliver_to_member(
        &mut self,
        client_id: &ByteString,
        message: &Arc<Message>,
        pick: &SharedPick,
    ) {
        let upgrade = self.config.upgrade_outgoing_qos;
        let Shard { sessions, limits, counters, congested, checks_reads, .. } = self;
        let Some(session) = sessions.get_mut(client_id) else { return };
        let options = pick.subscription.options;
        let outgoing = Outgoing {
            message: message.clone(),
            qos: delivery_qos(message.qos, options.qos, upgrade),
            retain: options.retain_as_published && message.retain,
            subscription_ids: pick.subscription.id.into_iter().collect(),
            shared: Some(Box::new((pick.filter.clone(), pick.group.clone()))),
            seq: None,
        };
        let checks_reads = *checks_reads;
        Deliveries { limits, counters, congested, checks_reads, routing: None }
            .deliver(client_id, session, outgoing);
    }
}
