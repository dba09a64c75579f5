//! A shard's clients coming and going: CONNECT (admission, the claim on the shard that owns
//! the client id, takeover across shards, resumed sessions), the client-id registry entries
//! this shard keeps, disconnection and wills, keep alive and session expiry.

use super::*;

/// Where a client id's session lives, kept by the shard that owns the id.
#[derive(Debug, Clone, Copy)]
pub(super) struct RegistryEntry {
    pub(super) shard: ShardId,
    pub(super) conn: ConnId,
}

/// A CONNECT on its way: first its claim comes back from the registry (with the previous
/// session's state, if resumed), then its CONNACK is sent once every shard routes the session's
/// subscriptions here.
#[derive(Default)]
pub struct PendingClaim {
    pub(super) progressed: Signal,
    pub(super) state: RefCell<Option<Option<Box<SessionState>>>>,
    pub(super) connected: Cell<bool>,
}

impl PendingClaim {
    /// The registry answered (the connection task may then `Shard::finish_connect`).
    pub fn is_answered(&self) -> bool {
        self.state.borrow().is_some()
    }

    /// The CONNACK went out (the connection task may then read the client's packets).
    pub fn is_connected(&self) -> bool {
        self.connected.get()
    }

    /// Notified at each step.
    pub fn progressed(&self) -> &Signal {
        &self.progressed
    }
}

/// Where a CONNECT comes from.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// A client over the network, with its address, what its listener applies to it, and the
    /// name its TLS client certificate gives (for listeners whose user names come from them).
    Network { peer: &'a str, listener: &'a ListenerContext, certificate_name: Option<&'a str> },
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

/// A new connection (`conn`, on shard `to`) takes a client id over: `Evict`.
pub(super) struct Takeover {
    pub(super) to: ShardId,
    pub(super) conn: ConnId,
    pub(super) clean_start: bool,
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
    ShardId::new((hasher.hash_one(client_id) % shard_count as u64) as usize)
}

impl Shard {
    /// Checks a CONNECT and claims its client id. `Err` holds the CONNACK that refuses it.
    pub fn begin_connect(
        &mut self,
        connect: &Connect,
        origin: Origin<'_>,
    ) -> Result<(Rc<ConnHandle>, Rc<PendingClaim>), BytesMut> {
        let version = connect.protocol;
        let max_packet_size =
            connect.properties.maximum_packet_size.map_or(u32::MAX, |size| size.get());
        let explain = self.config.reason_strings;
        let counters = &self.counters;
        let refuse = |reason| {
            counters.count_refusal(super::counters::Refusal::of(reason));
            Err(refusal(version, reason, max_packet_size, explain))
        };
        let peer = origin;
        let (listener, certificate_name) = match origin {
            Origin::Network { listener, certificate_name, .. } => {
                (Some(listener), certificate_name)
            }
            Origin::Bridge(_) => (None, None),
        };
        let internal = listener.is_none();
        let levels = listener.and_then(|l| l.protocol_levels.as_deref());
        if levels.is_some_and(|levels| !levels.contains(&version.level())) {
            // `accept_protocol_versions`: the answer a broker gives a level it does not speak.
            tracing::info!(%peer, client_id = %connect.client_id, ?version, "refused: protocol version not accepted on this listener");
            return refuse(ReasonCode::UnsupportedProtocolVersion);
        }
        let credentials = listener.map(|l| l.credentials.clone());
        let from_certificate = listener.is_some_and(|l| l.username_from_certificate);
        let username = if from_certificate {
            // Mosquitto's use_identity_as_username: the certificate's name replaces whatever
            // user name and password the client sent, and the password file is not consulted.
            match certificate_name {
                Some(name) => Some(name),
                None => {
                    tracing::info!(%peer, client_id = %connect.client_id, "refused: no name in the client certificate");
                    return refuse(ReasonCode::BadUserNameOrPassword);
                }
            }
        } else {
            connect.username.as_deref()
        };
        let admitted = from_certificate
            || credentials.as_ref().is_none_or(|c| c.admits(username, connect.password.as_deref()));
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
        let username = username.map(ByteString::from);
        let client_id = if self.config.use_username_as_clientid && !internal {
            // Mosquitto: the username replaces the id; no username, no connection.
            match &username {
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
            // Its own copy: a slice of the read buffer would keep the whole buffer alive for
            // the session's life (1 KiB of every idle connection).
            ByteString::from(&*connect.client_id)
        };
        self.next_conn += 1;
        let conn_id = ConnId::new(self.id.index(), self.next_conn);
        // max_keepalive caps 5.0 clients through Server Keep Alive (Mosquitto 2.0: "This only
        // applies to MQTT v5 clients"); a keep alive of 0 (none) is above every cap, and such
        // a client is told the cap, as Mosquitto tells it.
        let max = self.config.max_keepalive;
        let asked = connect.keep_alive_secs;
        let capped = version.is_v5() && max > 0 && (asked > max || asked == 0);
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
        conn.username = username;
        if let Some(listener) = listener {
            conn.mount_point = listener.mount_point.clone();
            conn.topic_aliases_accepted = listener.topic_alias_maximum;
        }
        conn.credentials = credentials;
        if let Some(receive_maximum) = connect.properties.receive_maximum {
            conn.receive_maximum = usize::from(receive_maximum.get());
        }
        conn.topic_alias_maximum = connect.properties.topic_alias_maximum.unwrap_or(0);
        if let Some(listener) = listener {
            conn.topic_alias_maximum =
                conn.topic_alias_maximum.min(listener.topic_aliases_sent_max);
        }
        conn.problem_information = connect.properties.request_problem_information.unwrap_or(true);
        conn.reason_strings = self.config.reason_strings;
        let conn = Rc::new(conn);
        let claim = Rc::new(PendingClaim::default());
        self.claims.insert(conn_id, claim.clone());
        self.connecting.insert(conn_id, None);
        tracing::info!(
            target: crate::logging::CONNECTION,
            shard = self.id.index(), %peer, %client_id, ?version, "new client connecting"
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
        // Shaped as Mosquitto's (`auto-1A2B3C4D-...`, 36 characters after the prefix): tools
        // that check an assigned id's length or form against Mosquitto's accept ours.
        let (a1, a2, a3) = (a >> 32, (a >> 16) & 0xffff, a & 0xffff);
        let (b1, b2) = (b >> 48, b & 0xffff_ffff_ffff);
        format!("{prefix}{a1:08X}-{a2:04X}-{a3:04X}-{b1:04X}-{b2:012X}").into()
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
        let takeover = self.connecting.remove(&conn.id).flatten();
        let previous = claim.state.borrow_mut().take().flatten();
        // MQTT 3.1's CONNACK has no Session Present flag: that byte is reserved (Mosquitto
        // sends 0 whatever the session).
        let session_present =
            previous.is_some() && connect.protocol != crate::protocol::ProtocolVersion::V31;
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
        let stored_before = state.stored_at.take().map(|at| *at);
        // Its subscriptions are routed here since `Handoff` (`moves`).
        let routes_changed = !state.subscriptions.is_empty();
        let client_id = conn.client_id.clone();
        let mut session = Session::new(expiry, conn.id, state);
        let identity = Identity { client_id: &client_id, username: conn.username.as_deref() };
        // A will the client could not publish itself is dropped when it connects. Its topic
        // is under the listener's mount point, as what the client publishes.
        let will = connect.will.and_then(|mut will| {
            // Detached from the read buffer, as the client id: it may wait for a long time.
            will.topic = conn.mounted_topic(will.topic).ok()?.detached();
            will.payload = bytes::Bytes::copy_from_slice(&will.payload);
            Some(will)
        });
        session.will = will
            .filter(|will| {
                let allowed = conn
                    .credentials
                    .as_ref()
                    .is_none_or(|c| c.allows(identity, &will.topic, Access::Write));
                if !allowed {
                    tracing::info!(%client_id, topic = %will.topic, "will denied by the acl file");
                }
                allowed
            })
            .map(Box::new);
        session.reader = conn
            .credentials
            .clone()
            .map(|credentials| Reader { username: conn.username.clone(), credentials });
        self.store_session(&client_id, &mut session, stored_before);
        self.sessions.insert(client_id.clone(), Box::new(session));
        let moving = self.moved_in_installed(&client_id);
        let reply = HeldReply::ConnAck { conn: conn.clone(), session_present, claim };
        let token = self.barrier(reply, routes_changed, usize::from(moving));
        if moving {
            self.connack_waits_for_move(&client_id, token);
        }
        if let Some(takeover) = takeover {
            self.take_over(client_id, takeover);
        }
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
            let epoch = journal.borrow_mut().next_epoch(before.map(|(_, epoch)| epoch));
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

    /// What a 5.0 CONNACK tells the client about this broker (3.x: nothing).
    pub(super) fn connack_properties(&self, conn: &ConnHandle) -> Properties {
        let mut properties = Properties::default();
        if !conn.version.is_v5() {
            return properties;
        }
        if conn.assigned_client_id {
            properties.assigned_client_identifier = Some(conn.client_id.clone());
        }
        properties.topic_alias_maximum = Some(conn.topic_aliases_accepted).filter(|max| *max > 0);
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
                session.delayed_will = Some(Box::new((*will, due)));
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
        let session = *self.sessions.remove(client_id)?;
        for filter in session.state.subscriptions.keys() {
            self.remove_local_subscriber(client_id, filter);
        }
        Some(session)
    }

    fn publish_will(&mut self, client_id: &ByteString, will: Box<crate::protocol::LastWill>) {
        let will = *will;
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
            source: Source::Unchecked,
        };
        self.route(Arc::new(message), None, None);
    }

    /// Ends offline sessions whose expiry interval has passed [MQTT-3.1.2-23]
    /// and publishes delayed wills that fell due, or whose session ended first.
    pub fn expire_sessions(&mut self, now: Instant) {
        let due_wills: Vec<(ByteString, Box<crate::protocol::LastWill>)> = self
            .sessions
            .iter_mut()
            .filter(|(_, s)| s.delayed_will.as_ref().is_some_and(|delayed| delayed.1 <= now))
            .filter_map(|(client_id, s)| {
                let (will, _) = *s.delayed_will.take()?;
                s.store_record();
                Some((client_id.clone(), Box::new(will)))
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
                if let Some(delayed) = session.delayed_will {
                    self.publish_will(&client_id, Box::new(delayed.0));
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
        tracing::info!(shard = self.id.index(), received, dropped, "shard closing");
    }

    /// The sweep's round of the connections: those whose keep alive ran out (1.5 times the
    /// interval without a packet [MQTT-3.1.2-24 (3.1.1)]) are closed, and empty outboxes give
    /// their memory back (those of connections that write much are kept between turns).
    pub fn tend_connections(&mut self, now: Instant) {
        for session in self.sessions.values() {
            let Some(conn) = &session.conn else { continue };
            conn.release_idle_outbox();
            if conn.keep_alive_secs == 0 || conn.is_closing() {
                continue;
            }
            let allowed =
                std::time::Duration::from_secs(u64::from(conn.keep_alive_secs)).mul_f32(1.5);
            if now.duration_since(conn.last_seen.get()) > allowed {
                tracing::info!(client_id = %conn.client_id, "keep alive timed out");
                conn.close(Close::KeepAliveTimeout);
            }
        }
    }

    /// `Evict`: the session goes to a new connection, once it is not moving in here.
    pub(super) fn take_over(&mut self, client_id: ByteString, takeover: Takeover) {
        let Some(takeover) = self.defer_takeover(&client_id, takeover) else { return };
        let Takeover { to, conn, clean_start } = takeover;
        let state = self.evict(&client_id, clean_start, to);
        self.dispatch(to, ShardMsg::Handoff { client_id, conn, state, from: self.id });
    }

    /// Takes a session away from its current connection (closing it, publishing its will) and
    /// returns its state if the new connection, on shard `to`, resumes it.
    pub(super) fn evict(
        &mut self,
        client_id: &ByteString,
        clean_start: bool,
        to: ShardId,
    ) -> Option<Box<SessionState>> {
        let resumes = !clean_start && self.sessions.get(client_id)?.is_persistent();
        let mut session =
            if resumes { self.move_out(client_id, to)? } else { self.end_session(client_id)? };
        if let Some(conn) = session.conn.take() {
            tracing::info!(%client_id, "client already connected, closing old connection");
            conn.close(Close::TakenOver);
            if let Some(will) = session.will.take() {
                self.publish_will(client_id, will);
            }
        }
        if resumes {
            let mut state = session.state;
            state.stored_at = session.stored.map(|stored| Box::new((self.id, stored.epoch)));
            Some(Box::new(state))
        } else {
            forget_stored(&session);
            self.redeliver_shared(session.state);
            None
        }
    }
}
