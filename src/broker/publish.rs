//! The packet rules of a connected client: each packet it sends, PUBLISH above all (topic
//! aliases, limits, the acknowledgement and when it may leave), and acknowledgements held until
//! what they acknowledge is durable.

use super::*;

/// A payload whose Payload Format Indicator says UTF-8 must be UTF-8 [MQTT-3.3.2-4].
pub(super) fn payload_format_holds(properties: &Properties, payload: &[u8]) -> bool {
    properties.payload_format_indicator != Some(true) || std::str::from_utf8(payload).is_ok()
}

/// Whether a client may publish to `topic` whatever the ACL says: `$SYS` is the broker's
/// (but for the link state a bridge publishes under `$SYS/broker/connection/`), and `$share`
/// names subscriptions, not topics. Mosquitto denies both the same way, before its ACL.
fn clients_may_write(topic: &str) -> bool {
    if topic.starts_with("$SYS") {
        topic.starts_with("$SYS/broker/connection/")
    } else {
        !topic.starts_with("$share")
    }
}

/// When a message with these properties expires (5.0 Message Expiry Interval).
pub(super) fn expiry_deadline(properties: &Properties) -> Option<Instant> {
    let secs = properties.message_expiry_interval?;
    Some(Instant::now() + std::time::Duration::from_secs(u64::from(secs)))
}

/// The topic of a client's PUBLISH, resolving or recording a 5.0 Topic Alias [MQTT-3.3.2.3.4].
fn resolve_topic_alias(conn: &ConnHandle, publish: &Publish) -> Result<TopicName, Close> {
    let Some(alias) = publish.properties.topic_alias.filter(|_| conn.version.is_v5()) else {
        return Ok(publish.topic.clone());
    };
    if alias.get() > conn.topic_aliases_accepted {
        return Err(Close::ProtocolError(ReasonCode::TopicAliasInvalid));
    }
    if publish.topic.is_empty() {
        // An alias never set on this connection is a protocol error [MQTT-3.3.2-8 context].
        conn.aliased_topic(alias.get()).ok_or(Close::ProtocolError(ReasonCode::ProtocolError))
    } else {
        conn.set_topic_alias(alias.get(), publish.topic.clone());
        Ok(publish.topic.clone())
    }
}

impl Shard {
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

    pub(super) fn session_of(&mut self, conn: &ConnHandle) -> Option<&mut Session> {
        self.sessions
            .get_mut(&conn.client_id)
            .filter(|s| s.conn.as_ref().is_some_and(|c| c.id == conn.id))
            .map(Box::as_mut)
    }

    fn client_publish(&mut self, conn: &Rc<ConnHandle>, publish: Publish) -> Result<(), Close> {
        self.counters.count_publish_received(publish.qos, publish.payload.len());
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
            self.counters.count_drop(super::counters::DropReason::MemoryLimit);
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
            let denied = (!conn.internal && !clients_may_write(&topic))
                || conn.credentials.as_ref().is_some_and(|c| !c.allows(who, &topic, Access::Write));
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
            source: if conn.internal {
                Source::Unchecked
            } else {
                Source::Client { username: conn.username.clone() }
            },
        });
        // Without persistence, a client subscribed to its own topic sees what Mosquitto sends
        // it: a QoS 1 message delivered, then its PUBACK; a QoS 2 one's PUBREC, then the
        // message. With persistence the acknowledgement waits until the message is durable
        // (`acknowledge`).
        match (publish.qos, publish.packet_id) {
            (QoS::AtLeastOnce, Some(packet_id)) => {
                let mut ack = Ack::new(packet_id);
                // As Mosquitto 2.0.11, a 5.0 publisher learns that nobody subscribes (0x10).
                if conn.version.is_v5() && !conn.internal && !self.has_subscribers(&message.topic) {
                    ack.reason = ReasonCode::NoMatchingSubscribers;
                }
                self.acknowledge(conn, Packet::PubAck(ack), Some((message, None)));
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
                let arrival = match self.session_of(conn) {
                    Some(session) => session
                        .receive_qos2(packet_id, receive_maximum)
                        .map_err(|_| Close::ProtocolError(ReasonCode::ReceiveMaximumExceeded))?,
                    None => Qos2Arrival::Route(None),
                };
                let routed = match arrival {
                    Qos2Arrival::Route(routing) => Some((message, routing)),
                    Qos2Arrival::Repeat => None,
                };
                self.acknowledge(conn, Packet::PubRec(Ack::new(packet_id)), routed);
            }
            _ => {
                self.route(message, None, None);
            }
        }
        Ok(())
    }

    /// Routes a QoS 1/2 message, if any (with its routing, see `Shard::admits`), and sends
    /// `ack`: at once without persistence, else once every shard that stored the message has
    /// made it durable, this one included (with the QoS 2 packet id, retained message or
    /// session change the ack confirms). PUBCOMP and UNSUBACK come here with no message.
    pub(super) fn acknowledge(
        &mut self,
        conn: &Rc<ConnHandle>,
        ack: Packet,
        message: Option<(Arc<Message>, Option<Routing>)>,
    ) {
        let Some(journal) = self.holding_journal() else {
            let delivered_first = matches!(ack, Packet::PubAck(_));
            if !delivered_first {
                conn.send(&ack);
            }
            if let Some((message, routing)) = message {
                self.route(message, None, routing);
            }
            if delivered_first {
                conn.send(&ack);
            }
            return;
        };
        let token = self.next_token;
        self.next_token += 1;
        conn.hold_ack(token, ack);
        if let Some((message, Some(routing))) = message {
            // A QoS 2 message from a stored session leaves once its packet id is durable, not
            // before: another shard that stored it first would, after a crash in between, store
            // the publisher's retransmission (new to the restarted session) a second time.
            // Routed at the commit, it is as if published then; what this publisher sends
            // meanwhile at QoS 0 or 1 may go first (MQTT orders messages of one QoS).
            let held = self.durable.hold(token, 1, DurableWaiter::Publisher(conn.clone()));
            debug_assert!(held.is_none());
            journal.borrow_mut().wait(Waiter::Route { token, message, routing: Box::new(routing) });
            return;
        }
        let remote =
            message.map_or(0, |(message, routing)| self.route(message, Some(token), routing));
        // Its own shard's commit, and each other shard's it went to.
        let held = self.durable.hold(token, remote + 1, DurableWaiter::Publisher(conn.clone()));
        debug_assert!(held.is_none());
        journal.borrow_mut().wait(Waiter::Local(token));
    }

    /// The packet id of a QoS 2 message held back by `acknowledge` is durable: it is routed,
    /// and its acknowledgement now waits for the copies' commits, here and on each shard it
    /// went to, in place of the commit that came.
    pub(super) fn route_durable(&mut self, token: u64, message: Arc<Message>, routing: Routing) {
        let remote = self.route(message, Some(token), Some(routing));
        self.durable.add(token, remote);
        if let Some(journal) = &self.journal {
            journal.borrow_mut().wait(Waiter::Local(token));
        }
    }

    /// One of the shards storing the message behind acknowledgement `token` made it durable.
    pub(super) fn durable_confirmed(&mut self, token: u64) {
        match self.durable.confirm(token) {
            Some(DurableWaiter::Publisher(conn)) => conn.release_ack(token),
            Some(DurableWaiter::Relay { origin, token }) => {
                self.dispatch(origin, ShardMsg::Durable { token })
            }
            None => {}
        }
    }
}
