//! SUBSCRIBE and UNSUBSCRIBE: the local trie and shared groups, the interest other shards are
//! told of, the SUBACK held behind a barrier, and the retained messages a new subscription
//! receives.

use super::*;

/// A SUBACK held back until every other shard acknowledged the barrier (see `subscribe`).
pub(super) struct PendingSubAck {
    pub(super) client_id: ByteString,
    pub(super) conn: ConnId,
    pub(super) suback: Packet,
    /// Filters whose retained messages follow the SUBACK, with their subscriptions.
    pub(super) retained_for: Vec<(TopicFilter, Subscription)>,
}

impl Shard {
    /// Applies a SUBSCRIBE and holds its SUBACK until every other shard has acknowledged a
    /// barrier sent after the interest updates. Each shard-to-shard queue is FIFO, so by then
    /// every other shard routes the new filters here, and this shard's retained replica holds
    /// every retained message other shards acknowledged before: retained messages are collected
    /// only then.
    pub(super) fn subscribe(
        &mut self,
        conn: &Rc<ConnHandle>,
        subscribe: Subscribe,
    ) -> Result<(), Close> {
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
            let max = self.config.max_subscriptions_per_client;
            let Some(session) = self.session_of(conn) else { return Ok(()) };
            let holds = &session.state.subscriptions;
            if max > 0 && !conn.internal && holds.len() >= max && !holds.contains_key(&filter) {
                // Refused alone: the SUBACK's other filters stand (3.x: 0x80).
                tracing::info!(%client_id, %filter, max, "subscription refused: max_subscriptions_per_client");
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            // Mosquitto's subscribe line: client, QoS, filter.
            tracing::info!(target: crate::logging::SUBSCRIBE, "{client_id} {} {filter}", options.qos as u8);
            let subscription = Subscription { options, id };
            let existed =
                session.state.subscriptions.insert(filter.clone(), subscription).is_some();
            self.add_local_subscriber(&client_id, &filter, subscription);
            // Retained messages go to new non-shared subscriptions only (MQTT 5.0 3.3.1.3;
            // Mosquitto 2.0.11 sends them to shared ones too: tests/differential).
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
        self.barrier(reply, true, 0);
        Ok(())
    }

    pub(super) fn complete_suback(&mut self, pending: PendingSubAck) {
        let Shard { sessions, retained, limits, counters, congested, checks_reads, config, .. } =
            self;
        let upgrade = config.upgrade_outgoing_qos;
        let check_source = *checks_reads && config.check_retain_source;
        let Some(session) = sessions.get_mut(&pending.client_id) else { return };
        let Some(conn) = session.conn.clone().filter(|c| c.id == pending.conn) else { return };
        conn.send(&pending.suback);
        let checks_reads = *checks_reads;
        let mut deliveries =
            Deliveries { limits, counters, congested, checks_reads, routing: None };
        for (filter, subscription) in &pending.retained_for {
            retained.matching(filter, |message| {
                if check_source && !super::router::source_may_write(message, session) {
                    return;
                }
                let outgoing = Outgoing {
                    message: message.clone(),
                    qos: delivery_qos(message.qos, subscription.options.qos, upgrade),
                    retain: true,
                    subscription_ids: subscription.id.into_iter().collect(),
                    shared: None,
                    seq: None,
                };
                deliveries.deliver(&pending.client_id, session, outgoing);
            });
        }
    }

    /// Adds a subscriber to the local trie; when the filter is new on this shard, tells every
    /// other shard to route it here.
    pub(super) fn add_local_subscriber(
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

    pub(super) fn remove_local_subscriber(&mut self, client_id: &ByteString, filter: &TopicFilter) {
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

    pub(super) fn unsubscribe(&mut self, conn: &Rc<ConnHandle>, unsubscribe: Unsubscribe) {
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
}
