//! Bridges: each `connection` of the configuration is a task on a bridge shard that joins a
//! session on this broker (the *local session*) to an MQTT client connection to a peer broker
//! (the *remote link*), as a Mosquitto bridge does.
//!
//! The local session is an ordinary persistent session of the shard, subscribed to the `out`
//! patterns with No Local and Retain As Published, whose connection is this task instead of a
//! socket. So the router needs no bridge path, and the QoS tracking of a bridge is the
//! session's own: the packet ids the session gives its PUBLISHes are the ids sent to the remote,
//! the remote's PUBACK/PUBREC/PUBCOMP complete them, and when the link drops the session goes
//! offline: unacknowledged messages are resent with DUP (QoS 2 resumes at PUBREL) when it
//! returns, and new ones wait in its queue within `max_queued_messages`/`max_queued_bytes`,
//! counted when dropped. In the other direction, what the remote delivers is published through
//! the same session, whose QoS 2 state keeps a retransmitted PUBLISH from being routed twice.
//! No Local keeps a message that came in over this bridge from going back out over it.

use std::cell::{Cell, RefCell};
use std::net::ToSocketAddrs;
use std::os::fd::IntoRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashSet;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::broker::counters::{BridgeCounters, ShardCounters};
use crate::broker::outbox::{Close, ConnHandle};
use crate::broker::session::{Message, Source};
use crate::broker::{BridgeStop, Origin, Shard};
use crate::config::{Address, Bridge, StartType};
use crate::protocol::{
    Ack, ConnAck, Connect, Disconnect, LastWill, Packet, PacketId, Properties, ProtocolVersion,
    Publish, QoS, ReasonCode, RetainHandling, Subscribe, SubscriptionOptions, TopicName,
    Unsubscribe, PACKET_SIZE_MAX,
};
use crate::runtime::{claim_answered, claim_connected, flow, write_out, PacketReader, Transport};

/// Starts `bridge`'s task on `shard` (`crate::runtime` calls this for each bridge a bridge
/// shard runs, and for those a reload adds), reporting its state in `counters`. It runs until
/// the broker shuts down or the shard stops it (`Shard::stop_bridge`).
pub fn spawn(shard: Rc<RefCell<Shard>>, bridge: Rc<Bridge>, counters: Arc<BridgeCounters>) {
    let stop = shard.borrow_mut().add_bridge(bridge.local_clientid().into(), counters.clone());
    glommio::spawn_local(async move {
        run(&shard, &bridge, counters, &stop).await;
        if stop.get() == BridgeStop::Removed {
            discard_local(&shard, &bridge).await;
        }
    })
    .detach();
}

/// Whether the bridge task should end: the broker is shutting down, or a reload stopped it.
fn stopping(stop: &Cell<BridgeStop>) -> bool {
    crate::runtime::is_shutting_down() || stop.get() != BridgeStop::Running
}

/// How long the TCP connect, and then the CONNACK, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// While on a secondary address (`round_robin false`), how often the primary is tried.
const PRIMARY_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// How often a waiting bridge looks at its queue (`start_type lazy`) and at shutdown.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Packet ids of the local session's SUBSCRIBE and UNSUBSCRIBE (answered at once, in the shard).
const SUBSCRIBE_ID: u16 = 1;
const UNSUBSCRIBE_ID: u16 = 2;

/// Runs one bridge until it is stopped (or, with `start_type once`, the link ends).
async fn run(
    shard: &Rc<RefCell<Shard>>,
    bridge: &Rc<Bridge>,
    state: Arc<BridgeCounters>,
    stop: &Cell<BridgeStop>,
) {
    let (shard, bridge) = (shard.clone(), bridge.clone());
    let local_id: ByteString = bridge.local_clientid().into();
    // The session exists from the start, so what is published for the remote while the link
    // is down waits in it. Unless it is to start clean, it resumes what the store kept.
    let clean = bridge.local_session_is_clean();
    let Some(local) = connect_local(&shard, &bridge, &local_id, clean, None).await else {
        return;
    };
    subscribe_local(&shard, &local, &bridge);
    disconnect_local(&shard, &local);

    let mut backoff = Backoff::new(&bridge);
    let mut addresses = AddressCursor::default();
    let mut private_refused = false;
    let counters = shard.borrow().counters.clone();
    loop {
        if bridge.start_type == StartType::Lazy
            && !wait_for_threshold(&shard, &local_id, bridge.threshold, stop).await
        {
            return;
        }
        if stopping(stop) {
            return;
        }
        report_dropped(&shard, &bridge, &local_id);
        let end =
            match connect_remote(&bridge, &counters, &mut addresses, &mut private_refused).await {
                Some(remote) => {
                    let began = Instant::now();
                    let stable = bridge.restart_timeout.stable;
                    if stable.is_none() {
                        backoff.reset();
                    }
                    let end = run_link(&shard, &bridge, &local_id, remote, &state, stop).await;
                    if stable.is_some_and(|stable| began.elapsed() >= stable) {
                        backoff.reset();
                    }
                    end
                }
                None => LinkEnd::Unreachable,
            };
        match end {
            LinkEnd::Shutdown => return,
            _ if bridge.start_type == StartType::Once => {
                tracing::info!(bridge = %bridge.name, "start_type once: not reconnecting");
                return;
            }
            // Back to the primary at once; an idle lazy bridge waits for its threshold.
            LinkEnd::PrimaryBack | LinkEnd::Idle => {}
            _ => {
                if !sleep_unless_stopped(backoff.next(), stop).await {
                    return;
                }
            }
        }
    }
}

/// Why a link ended (or never started).
#[derive(Debug, PartialEq, Eq)]
enum LinkEnd {
    Unreachable,
    RemoteClosed,
    KeepAliveTimeout,
    RemoteProtocolError(String),
    /// The local session was taken by a client with the same id.
    LocalClosed(Close),
    /// A lazy bridge saw no traffic for `idle_timeout`.
    Idle,
    /// The primary address answers again (`round_robin false`).
    PrimaryBack,
    Shutdown,
}

// ---- The local session ------------------------------------------------------------------------

/// Connects the bridge's session on this broker (a 5.0 session that never expires), resuming
/// it unless `clean_start`. `receive_maximum`: the remote broker's window, which caps the
/// session's in-flight messages.
async fn connect_local(
    shard: &Rc<RefCell<Shard>>,
    bridge: &Bridge,
    local_id: &ByteString,
    clean_start: bool,
    receive_maximum: Option<std::num::NonZeroU16>,
) -> Option<Rc<ConnHandle>> {
    let properties = Properties {
        session_expiry_interval: Some(u32::MAX),
        receive_maximum,
        ..Properties::default()
    };
    join_local(shard, bridge, local_connect(bridge, local_id, clean_start, properties)).await
}

/// The CONNECT of the bridge's local session (5.0).
fn local_connect(
    bridge: &Bridge,
    local_id: &ByteString,
    clean_start: bool,
    properties: Properties,
) -> Connect {
    Connect {
        protocol: ProtocolVersion::V5,
        bridge: false,
        clean_start,
        keep_alive_secs: 0,
        properties,
        client_id: local_id.clone(),
        will: None,
        username: bridge.local_username.as_deref().map(ByteString::from),
        password: bridge.local_password.clone().map(Bytes::from),
    }
}

/// Connects the local session as a client's CONNECT would be.
async fn join_local(
    shard: &Rc<RefCell<Shard>>,
    bridge: &Bridge,
    connect: Connect,
) -> Option<Rc<ConnHandle>> {
    let begun = shard.borrow_mut().begin_connect(&connect, Origin::Bridge(&bridge.name));
    let Ok((conn, claim)) = begun else {
        tracing::error!(bridge = %bridge.name, "the local session was refused");
        return None;
    };
    claim_answered(&claim).await;
    shard.borrow_mut().finish_connect(&conn, connect, claim.clone());
    claim_connected(&claim).await;
    Some(conn)
}

/// Subscribes the local session to the `out` patterns. Done on every connect, as Mosquitto
/// does, so retained messages are sent to the remote again each time the link comes up. A
/// resumed session drops the filters of `out` patterns the configuration no longer has (a
/// reload or a restart changed the `topic` lines).
fn subscribe_local(shard: &Rc<RefCell<Shard>>, local: &Rc<ConnHandle>, bridge: &Bridge) {
    let filters: Vec<_> = bridge
        .topics
        .iter()
        .filter(|t| t.direction.is_out())
        .map(|t| (t.local_filter.clone(), bridge_options(t.qos)))
        .collect();
    let mut stale = shard.borrow().subscriptions_of(&local.client_id);
    stale.retain(|filter| !filters.iter().any(|(f, _)| f == filter));
    if !stale.is_empty() {
        let unsubscribe = Unsubscribe {
            packet_id: packet_id(UNSUBSCRIBE_ID),
            properties: Properties::default(),
            filters: stale,
        };
        let unsubscribed =
            shard.borrow_mut().handle_packet(local, Packet::Unsubscribe(unsubscribe));
        if let Err(close) = unsubscribed {
            tracing::error!(bridge = %bridge.name, ?close, "local unsubscription refused");
        }
    }
    if filters.is_empty() {
        return;
    }
    let subscribe = Subscribe {
        packet_id: packet_id(SUBSCRIBE_ID),
        properties: Properties::default(),
        filters,
    };
    if let Err(close) = shard.borrow_mut().handle_packet(local, Packet::Subscribe(subscribe)) {
        tracing::error!(bridge = %bridge.name, ?close, "local subscription refused");
    }
}

/// No Local (what came in over the bridge never goes back over it) and Retain As Published
/// (the peer mirrors retained messages): Mosquitto's loop prevention, set explicitly.
fn bridge_options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::SendAtSubscribe,
    }
}

/// Ends the local session of a bridge a reload removed, with its subscriptions and what waits
/// in it for the remote: a 5.0 connect with Clean Start and no expiry, then a disconnect.
async fn discard_local(shard: &Rc<RefCell<Shard>>, bridge: &Bridge) {
    let local_id: ByteString = bridge.local_clientid().into();
    let held = shard.borrow().queued_messages(&local_id);
    let connect = local_connect(bridge, &local_id, true, Properties::default());
    if let Some(conn) = join_local(shard, bridge, connect).await {
        disconnect_local(shard, &conn);
        tracing::info!(bridge = %bridge.name, discarded = held, "bridge removed: its session ended");
    }
}

/// Takes the local session offline: it keeps its subscriptions, in-flight messages and queue.
fn disconnect_local(shard: &Rc<RefCell<Shard>>, local: &ConnHandle) {
    shard.borrow_mut().connection_closed(local, Close::ClientDisconnect { publish_will: false });
}

/// Waits until `threshold` messages wait for a lazy bridge. False once it is stopped.
async fn wait_for_threshold(
    shard: &Rc<RefCell<Shard>>,
    local_id: &str,
    threshold: usize,
    stop: &Cell<BridgeStop>,
) -> bool {
    while shard.borrow().queued_messages(local_id) < threshold {
        if !sleep_unless_stopped(POLL_INTERVAL, stop).await {
            return false;
        }
    }
    true
}

/// Sleeps; false if the bridge was stopped meanwhile.
async fn sleep_unless_stopped(duration: Duration, stop: &Cell<BridgeStop>) -> bool {
    let until = Instant::now() + duration;
    loop {
        if stopping(stop) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        glommio::timer::sleep(left.min(POLL_INTERVAL)).await;
    }
}

/// Publishes the link state (`1` up, `0` down) on this broker: retained, QoS 1.
fn notify_local(shard: &Rc<RefCell<Shard>>, bridge: &Bridge, local_id: &ByteString, up: bool) {
    if !bridge.notifications {
        return;
    }
    let Some(topic) = notification_topic(bridge) else { return };
    shard.borrow_mut().publish_internal(Message {
        topic,
        payload: state_payload(up),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties::default(),
        publisher: local_id.clone(),
        source: Source::Unchecked,
        expires_at: None,
    });
}

fn notification_topic(bridge: &Bridge) -> Option<TopicName> {
    TopicName::new(bridge.notification_topic()).ok()
}

/// The link state as a retained PUBLISH to the remote: QoS 1 with a packet id, else QoS 0.
fn state_publish(topic: TopicName, up: bool, packet_id: Option<PacketId>) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: if packet_id.is_some() { QoS::AtLeastOnce } else { QoS::AtMostOnce },
        retain: true,
        topic,
        packet_id,
        properties: Properties::default(),
        payload: state_payload(up),
    })
}

fn state_payload(up: bool) -> Bytes {
    Bytes::from_static(if up { b"1" } else { b"0" })
}

fn packet_id(id: u16) -> PacketId {
    PacketId::new(id).unwrap_or(PacketId::MIN)
}

// ---- Connecting to the remote -----------------------------------------------------------------

/// Which address to try first. With `round_robin false` every attempt starts at the primary;
/// with `round_robin true` it starts after the one that last failed.
#[derive(Default)]
struct AddressCursor {
    next: usize,
}

/// A connected remote broker, after its CONNACK.
struct Remote {
    stream: Transport,
    reader: PacketReader,
    session_present: bool,
    /// Index of the address in use.
    address: usize,
    connack: Properties,
}

async fn connect_remote(
    bridge: &Bridge,
    counters: &Arc<ShardCounters>,
    cursor: &mut AddressCursor,
    private_refused: &mut bool,
) -> Option<Remote> {
    let count = bridge.addresses.len();
    let start = if bridge.round_robin { cursor.next % count } else { 0 };
    for offset in 0..count {
        let index = (start + offset) % count;
        let address = &bridge.addresses[index];
        // A peer that refuses the bridge bit gets a second try without it, as Mosquitto does.
        loop {
            let private = bridge.try_private && !*private_refused && !bridge.protocol.is_v5();
            match attempt(bridge, counters, address, private).await {
                Ok((stream, reader, connack)) => {
                    tracing::info!(
                        bridge = %bridge.name, %address, private,
                        session_present = connack.session_present, "bridge connected"
                    );
                    cursor.next = index;
                    return Some(Remote {
                        stream,
                        reader,
                        session_present: connack.session_present,
                        address: index,
                        connack: connack.properties,
                    });
                }
                Err(ConnectFailure::BridgeBit) if private => {
                    tracing::info!(bridge = %bridge.name, %address, "peer refused the bridge bit; retrying without it");
                    *private_refused = true;
                }
                Err(refused) => {
                    tracing::warn!(bridge = %bridge.name, %address, reason = %refused, "bridge cannot connect");
                    break;
                }
            }
        }
    }
    cursor.next = start + 1;
    None
}

#[derive(Debug, thiserror::Error)]
enum ConnectFailure {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("no CONNACK in time")]
    Timeout,
    /// Unacceptable protocol version, or closed before CONNACK, after a CONNECT with the
    /// bridge bit.
    #[error("the peer refused the bridge protocol level")]
    BridgeBit,
    #[error("CONNACK {0:?}")]
    ConnAck(ReasonCode),
    #[error("the peer did not answer CONNECT with CONNACK")]
    NotConnAck,
}

async fn attempt(
    bridge: &Bridge,
    counters: &Arc<ShardCounters>,
    address: &Address,
    private: bool,
) -> Result<(Transport, PacketReader, ConnAck), ConnectFailure> {
    // Read at each connection, so that renewed files are used at the next reconnect.
    let tls = bridge.tls.as_ref().map(crate::tls::client_config).transpose()?.map(Arc::new);
    let socket = open_socket(bridge, address).await?;
    let mut stream = Transport::dial(socket, &address.host, tls).await?;
    let mut out = BytesMut::new();
    Packet::Connect(Box::new(remote_connect(bridge, private))).encode(bridge.protocol, &mut out);
    stream.write_all(&out).await?;
    stream.flush().await?;
    let mut reader = PacketReader::new(PACKET_SIZE_MAX, counters.clone());
    let answer = glommio::timer::timeout(CONNECT_TIMEOUT, async {
        Ok(reader.next(&mut stream, bridge.protocol).await)
    })
    .await
    .map_err(|_| ConnectFailure::Timeout)?;
    match answer {
        Ok(Some(Packet::ConnAck(connack))) if connack.reason == ReasonCode::Success => {
            Ok((stream, reader, connack))
        }
        Ok(Some(Packet::ConnAck(connack)))
            if private && connack.reason == ReasonCode::UnsupportedProtocolVersion =>
        {
            Err(ConnectFailure::BridgeBit)
        }
        Ok(Some(Packet::ConnAck(connack))) => Err(ConnectFailure::ConnAck(connack.reason)),
        // A connection closed before CONNACK is no refusal of the bridge bit, as for Mosquitto
        // (only CONNACK 0x01 is): taken for one, a link cut at that moment turned the bit off
        // for good, and with it the peer's loop prevention, so every message on a `both`
        // pattern came back over the bridge (the chaos soak through bridges: hundreds of QoS 2
        // messages delivered twice).
        Ok(_) | Err(_) => Err(ConnectFailure::NotConnAck),
    }
}

/// Resolves the host again (its addresses may have changed since the last connection), binds
/// (`bridge_bind_address`) and connects to each address in turn until one answers, on
/// glommio's blocking thread: name resolution and a bound connect have no io_uring path in
/// glommio.
async fn open_socket(bridge: &Bridge, address: &Address) -> Result<TcpStream, std::io::Error> {
    let (host, port) = (address.host.clone(), address.port);
    let (bind, keepalive, user_timeout) =
        (bridge.bind_address, bridge.tcp_keepalive, bridge.tcp_user_timeout);
    let socket = glommio::executor()
        .spawn_blocking(move || -> std::io::Result<socket2::Socket> {
            let mut last = std::io::Error::other("no address of the right family");
            let targets = (host.as_str(), port).to_socket_addrs()?;
            for target in targets.filter(|a| bind.is_none_or(|b| a.is_ipv4() == b.is_ipv4())) {
                let domain = socket2::Domain::for_address(target);
                let socket = socket2::Socket::new(
                    domain,
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                if let Some(bind) = bind {
                    socket.bind(&std::net::SocketAddr::new(bind, 0).into())?;
                }
                if let Some((idle, interval, count)) = keepalive {
                    let keepalive = socket2::TcpKeepalive::new()
                        .with_time(idle)
                        .with_interval(interval)
                        .with_retries(count);
                    socket.set_tcp_keepalive(&keepalive)?;
                }
                if let Some(timeout) = user_timeout {
                    socket.set_tcp_user_timeout(Some(timeout))?;
                }
                match socket.connect_timeout(&target.into(), CONNECT_TIMEOUT) {
                    Ok(()) => {
                        socket.set_nodelay(true)?;
                        return Ok(socket);
                    }
                    Err(error) => last = error,
                }
            }
            Err(last)
        })
        .await?;
    // SAFETY: the descriptor is a connected TCP socket whose ownership moves to glommio.
    Ok(unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(socket.into_raw_fd()) })
}

/// The CONNECT the bridge sends: its protocol (with the bridge bit when `private`), clean
/// session, keep alive, credentials, and the `0` state notification as its will.
fn remote_connect(bridge: &Bridge, private: bool) -> Connect {
    let mut properties = Properties::default();
    if bridge.protocol.is_v5() {
        properties.session_expiry_interval = match bridge.session_expiry_interval {
            Some(0) => None,
            Some(interval) => Some(interval),
            None => (!bridge.cleansession).then_some(u32::MAX),
        };
        properties.receive_maximum = bridge.receive_maximum;
    }
    let will = (bridge.notifications && !bridge.notifications_local_only)
        .then(|| notification_topic(bridge))
        .flatten()
        .map(|topic| LastWill {
            topic,
            payload: state_payload(false),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        });
    Connect {
        protocol: bridge.protocol,
        bridge: private,
        clean_start: bridge.cleansession,
        keep_alive_secs: bridge.keepalive_secs,
        properties,
        client_id: bridge.remote_clientid().into(),
        will,
        username: bridge.remote_username.as_deref().map(ByteString::from),
        password: bridge.remote_password.clone().map(Bytes::from),
    }
}

// ---- The link ---------------------------------------------------------------------------------

async fn run_link(
    shard: &Rc<RefCell<Shard>>,
    bridge: &Rc<Bridge>,
    local_id: &ByteString,
    remote: Remote,
    state: &BridgeCounters,
    stop: &Cell<BridgeStop>,
) -> LinkEnd {
    // Stopped while it dialled: the remote takes the closed socket as the link's end.
    if stopping(stop) {
        return LinkEnd::Shutdown;
    }
    let receive_maximum = remote.connack.receive_maximum;
    let Some(local) = connect_local(shard, bridge, local_id, false, receive_maximum).await else {
        return LinkEnd::LocalClosed(Close::TakenOver);
    };
    if !remote.session_present {
        shard.borrow_mut().forget_unreleased_qos2(&local);
    }
    let mut link = Link::new(shard.clone(), bridge.clone(), local, remote);
    link.start();
    notify_local(shard, bridge, local_id, true);
    state.up.set(1);
    state.links.add(1);
    let end = link.pump().await;
    state.up.set(0);
    tracing::info!(bridge = %bridge.name, reason = ?end, "bridge link down");
    // A bridge a reload changed goes on as a new task: the link is not down for anyone.
    let announce = stop.get() != BridgeStop::Replaced;
    link.finish(&end, announce).await;
    disconnect_local(shard, &link.local);
    if announce {
        notify_local(shard, bridge, local_id, false);
    }
    report_dropped(shard, bridge, local_id);
    end
}

/// Logs what the local session dropped for the remote: its queue is bounded by
/// `max_queued_messages`/`max_queued_bytes`, and like any session it drops the newest
/// messages when full (QoS 0 too, while the link is down, unless `queue_qos0_messages`).
fn report_dropped(shard: &Rc<RefCell<Shard>>, bridge: &Bridge, local_id: &str) {
    let dropped = shard.borrow_mut().take_dropped(local_id);
    if dropped > 0 {
        tracing::warn!(
            bridge = %bridge.name, dropped,
            "messages for the remote dropped (queue limits, or QoS 0 while the link was down)"
        );
    }
}

/// What the remote broker said it accepts (5.0 CONNACK), applied to what the bridge sends.
struct PeerLimits {
    maximum_qos: QoS,
    retain_available: bool,
    maximum_packet_size: usize,
}

struct Link {
    shard: Rc<RefCell<Shard>>,
    bridge: Rc<Bridge>,
    local: Rc<ConnHandle>,
    stream: Transport,
    reader: PacketReader,
    peer: PeerLimits,
    /// Encoded packets for the remote, written once per turn.
    out: BytesMut,
    /// The remote notification waits for this PUBACK, which is not the local session's.
    notification_ack: Option<PacketId>,
    /// QoS 2 messages the remote will never complete (too large, or above its maximum QoS),
    /// completed toward the local session: their PUBREL is answered here.
    completing: AHashSet<PacketId>,
    /// QoS 2 messages sent as QoS 1 to a peer whose maximum is 1: its PUBACK stands for
    /// PUBREC.
    downgraded: AHashSet<PacketId>,
    last_received: Instant,
    last_sent: Instant,
    ping_sent: Option<Instant>,
    /// Last PUBLISH either way (`idle_timeout`).
    last_traffic: Instant,
    /// Set by a probe when the primary address answers while this link uses another one.
    primary_back: Rc<Cell<bool>>,
    next_probe: Option<Instant>,
    dropped: u64,
}

enum Wake {
    Readable(std::io::Result<bool>),
    Local,
    Timer,
}

impl Link {
    fn new(
        shard: Rc<RefCell<Shard>>,
        bridge: Rc<Bridge>,
        local: Rc<ConnHandle>,
        remote: Remote,
    ) -> Self {
        let connack = &remote.connack;
        let mut maximum_packet_size = connack
            .maximum_packet_size
            .map_or(PACKET_SIZE_MAX as usize, |size| size.get() as usize);
        if bridge.max_packet_size > 0 {
            maximum_packet_size = maximum_packet_size.min(bridge.max_packet_size as usize);
        }
        let peer = PeerLimits {
            maximum_qos: connack.maximum_qos.unwrap_or(QoS::ExactlyOnce),
            retain_available: connack.retain_available.unwrap_or(true),
            maximum_packet_size,
        };
        let on_secondary = remote.address > 0 && !bridge.round_robin;
        let now = Instant::now();
        Link {
            shard,
            local,
            stream: remote.stream,
            reader: remote.reader,
            peer,
            out: BytesMut::with_capacity(4096),
            notification_ack: None,
            completing: AHashSet::new(),
            downgraded: AHashSet::new(),
            last_received: now,
            last_sent: now,
            ping_sent: None,
            last_traffic: now,
            primary_back: Rc::new(Cell::new(false)),
            next_probe: on_secondary.then(|| now + PRIMARY_PROBE_INTERVAL),
            dropped: 0,
            bridge,
        }
    }

    /// What follows CONNACK, as Mosquitto sends it: the `1` notification on the remote, then
    /// for each `topic` line in order a SUBSCRIBE of its remote filter (`in`, `both`) or an
    /// UNSUBSCRIBE (`out`, with `bridge_attempt_unsubscribe`); then the local subscriptions,
    /// which send the retained messages again.
    ///
    /// Their packet ids count from 1 on every connection, as Mosquitto's do. The local
    /// session's messages number themselves and may meet these ids: a SUBACK is told from a
    /// PUBACK by its type, and the notification's PUBACK comes first, since acknowledgements
    /// come back in order [MQTT-4.6.0-2] and the notification is sent before anything else.
    fn start(&mut self) {
        let bridge = self.bridge.clone();
        let mut last_id = 0u16;
        let mut next_id = || {
            last_id = last_id.wrapping_add(1);
            packet_id(last_id)
        };
        if bridge.notifications && !bridge.notifications_local_only {
            if let Some(topic) = notification_topic(&bridge) {
                let id = next_id();
                self.send(&state_publish(topic, true, Some(id)));
                self.notification_ack = Some(id);
            }
        }
        for topic in &bridge.topics {
            let filter = topic.remote_filter.clone();
            if topic.direction.is_in() {
                self.send(&Packet::Subscribe(Subscribe {
                    packet_id: next_id(),
                    properties: Properties::default(),
                    filters: vec![(filter, bridge_options(topic.qos))],
                }));
            } else if bridge.attempt_unsubscribe {
                self.send(&Packet::Unsubscribe(Unsubscribe {
                    packet_id: next_id(),
                    properties: Properties::default(),
                    filters: vec![filter],
                }));
            }
        }
        subscribe_local(&self.shard, &self.local, &bridge);
    }

    /// The protocol of the remote link.
    fn version(&self) -> ProtocolVersion {
        self.bridge.protocol
    }

    fn send(&mut self, packet: &Packet) {
        let before = self.out.len();
        packet.encode(self.version(), &mut self.out);
        let counters = &self.shard.borrow().counters;
        counters.packets_sent.add(1);
        counters.bytes_sent.add((self.out.len() - before) as u64);
    }

    /// Moves packets both ways until the link ends. Shaped like a client connection's loop:
    /// write what is pending, wait for the subscribers a turn of publishes congested, handle
    /// what the remote sent, then wait for the socket, the local session or a timer.
    async fn pump(&mut self) -> LinkEnd {
        let mut congested = Vec::new();
        let mut published = false;
        // Whether the remote sent bytes since the link last wrote.
        let mut read = false;
        loop {
            let local_out = self.local.take_outbox();
            let took_local = !local_out.is_empty();
            if took_local {
                self.forward_local(local_out);
            }
            if !self.out.is_empty() {
                let out = self.out.split();
                let keepalive = Duration::from_secs(u64::from(self.bridge.keepalive_secs));
                // The local session drains as the remote takes the bytes: publishers waiting
                // for this subscriber see that progress.
                let local = self.local.clone();
                match glommio::timer::timeout(keepalive, async {
                    Ok(write_out(&local, &mut self.stream, &out).await)
                })
                .await
                {
                    Ok(Ok(())) => {
                        self.last_sent = Instant::now();
                        read = false;
                    }
                    Ok(Err(_)) => return LinkEnd::RemoteClosed,
                    Err(_) => return LinkEnd::KeepAliveTimeout,
                }
            }
            if let Some(close) = self.local.close_reason() {
                return match close {
                    Close::ServerShuttingDown => LinkEnd::Shutdown,
                    other => LinkEnd::LocalClosed(other),
                };
            }
            if std::mem::take(&mut published) {
                flow::wait_after_publishing(
                    &self.shard,
                    std::mem::take(&mut congested),
                    self.local.id,
                )
                .await;
            }
            glommio::yield_if_needed().await;
            loop {
                match self.reader.decode(self.bridge.protocol) {
                    Ok(Some(packet)) => {
                        self.last_received = Instant::now();
                        self.ping_sent = None;
                        published |= matches!(packet, Packet::Publish(_));
                        if let Err(end) = self.handle_remote(packet) {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(error) => return LinkEnd::RemoteProtocolError(error.to_string()),
                }
            }
            congested = self.shard.borrow_mut().take_congested();
            if self.local.has_outbox() || !self.out.is_empty() || self.local.is_closing() {
                continue;
            }
            // As a client connection does: an unanswered read is acknowledged at once, or a
            // peer with Nagle's algorithm on (Mosquitto's default) holds its next packet.
            if std::mem::take(&mut read) {
                self.stream.acknowledge_now();
            }
            let deadline = self.next_deadline();
            let wake = {
                let Link { reader, stream, local, .. } = self;
                let readable = async { Wake::Readable(reader.fill(stream).await) };
                let woken = async {
                    local.wake().wait().await;
                    Wake::Local
                };
                let timer = async {
                    glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
                    Wake::Timer
                };
                futures_lite::future::or(readable, futures_lite::future::or(woken, timer)).await
            };
            match wake {
                Wake::Readable(Ok(true)) => read = true,
                Wake::Local => {}
                Wake::Readable(Ok(false)) | Wake::Readable(Err(_)) => return LinkEnd::RemoteClosed,
                Wake::Timer => {
                    if let Some(end) = self.tick() {
                        return end;
                    }
                }
            }
        }
    }

    /// The next instant a timer matters: a ping, a ping unanswered, idleness, a probe.
    fn next_deadline(&self) -> Instant {
        let keepalive = Duration::from_secs(u64::from(self.bridge.keepalive_secs));
        let mut deadline = match self.ping_sent {
            Some(sent) => sent + keepalive,
            None => self.last_sent.min(self.last_received) + keepalive,
        };
        if self.bridge.start_type == StartType::Lazy {
            deadline = deadline.min(self.last_traffic + self.bridge.idle_timeout);
        }
        if let Some(probe) = self.next_probe {
            deadline = deadline.min(probe);
        }
        deadline
    }

    /// Keep alive (a PINGREQ when either side has been quiet for the interval; the link is
    /// dead when it goes unanswered as long), idleness, and probing the primary address.
    fn tick(&mut self) -> Option<LinkEnd> {
        let now = Instant::now();
        let keepalive = Duration::from_secs(u64::from(self.bridge.keepalive_secs));
        if let Some(sent) = self.ping_sent {
            if now >= sent + keepalive {
                return Some(LinkEnd::KeepAliveTimeout);
            }
        } else if now >= self.last_sent.min(self.last_received) + keepalive {
            self.send(&Packet::PingReq);
            self.ping_sent = Some(now);
        }
        if self.bridge.start_type == StartType::Lazy
            && now >= self.last_traffic + self.bridge.idle_timeout
        {
            return Some(LinkEnd::Idle);
        }
        if self.primary_back.get() {
            return Some(LinkEnd::PrimaryBack);
        }
        if self.next_probe.is_some_and(|probe| now >= probe) {
            self.next_probe = Some(now + PRIMARY_PROBE_INTERVAL);
            let bridge = self.bridge.clone();
            let answered = self.primary_back.clone();
            glommio::spawn_local(async move {
                if open_socket(&bridge, &bridge.addresses[0]).await.is_ok() {
                    answered.set(true);
                }
            })
            .detach();
        }
        None
    }

    /// Packets the shard wrote for the local session, on their way to the remote: PUBLISHes
    /// remapped by the `out` patterns, acknowledgements as they are.
    fn forward_local(&mut self, mut encoded: BytesMut) {
        loop {
            let packet = match Packet::decode(&mut encoded, ProtocolVersion::V5, u32::MAX) {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(error) => {
                    // The shard's own encoding: a failure here is a bug, not the peer's doing.
                    debug_assert!(false, "bridge cannot decode its own session: {error}");
                    tracing::error!(bridge = %self.bridge.name, %error, "undecodable local packet");
                    break;
                }
            };
            match packet {
                Packet::Publish(publish) => self.forward_publish(publish),
                Packet::PubRel(ack) if self.completing.remove(&ack.packet_id) => {
                    self.complete_local(Packet::PubComp(Ack::new(ack.packet_id)));
                }
                Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => {
                    self.send(&packet)
                }
                // CONNACK, SUBACK of the local subscriptions, PINGRESP: nothing for the remote.
                _ => {}
            }
        }
    }

    fn forward_publish(&mut self, mut publish: Publish) {
        self.last_traffic = Instant::now();
        let Some((_, remote_topic)) = self.bridge.outgoing(&publish.topic) else {
            // Not one of the `out` patterns (cannot happen: the session subscribes to those
            // alone, `subscribe_local`); finish it so it does not hold the window.
            self.drop_outgoing(&publish, "no out pattern matches");
            return;
        };
        let Ok(topic) = TopicName::new(remote_topic) else {
            self.drop_outgoing(&publish, "remapped topic is invalid");
            return;
        };
        publish.topic = topic;
        publish.retain &= self.bridge.outgoing_retain && self.peer.retain_available;
        // Subscription ids are this broker's; the remote sets its own.
        publish.properties.subscription_identifiers.clear();
        if publish.qos > self.peer.maximum_qos {
            // The peer takes no higher QoS (5.0 Maximum QoS): sent lower. At QoS 0 it is
            // complete at once; at QoS 1 the peer's PUBACK completes it.
            match (self.peer.maximum_qos, publish.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => {
                    self.downgraded.insert(id);
                }
                _ => {
                    self.complete_outgoing(&publish);
                    publish.packet_id = None;
                }
            }
            publish.qos = self.peer.maximum_qos;
        }
        let packet = Packet::Publish(publish);
        if packet.encoded_len(self.version()) > self.peer.maximum_packet_size {
            if let Packet::Publish(publish) = &packet {
                self.drop_outgoing(publish, "larger than the peer accepts");
            }
            return;
        }
        self.send(&packet);
    }

    /// Drops a message the remote cannot take, counted and logged, completing it locally.
    fn drop_outgoing(&mut self, publish: &Publish, why: &str) {
        self.dropped += 1;
        tracing::warn!(bridge = %self.bridge.name, topic = %publish.topic, why, dropped = self.dropped, "message not bridged");
        self.complete_outgoing(publish);
    }

    /// Acknowledges toward the local session a message the remote will not acknowledge.
    fn complete_outgoing(&mut self, publish: &Publish) {
        let Some(id) = publish.packet_id else { return };
        match publish.qos {
            QoS::AtLeastOnce => self.complete_local(Packet::PubAck(Ack::new(id))),
            QoS::ExactlyOnce => {
                self.completing.insert(id);
                self.complete_local(Packet::PubRec(Ack::new(id)));
            }
            QoS::AtMostOnce => {}
        }
    }

    fn complete_local(&mut self, ack: Packet) {
        // Acknowledgements never fail; only PUBLISH and SUBSCRIBE can break the protocol.
        let _ = self.shard.borrow_mut().handle_packet(&self.local, ack);
    }

    /// A packet from the remote: PUBLISHes remapped by the `in` patterns and published through
    /// the local session, acknowledgements handed to it.
    fn handle_remote(&mut self, packet: Packet) -> Result<(), LinkEnd> {
        match packet {
            Packet::Publish(mut publish) => {
                self.last_traffic = Instant::now();
                let local_topic = self.bridge.incoming(&publish.topic).map(|(_, t)| t);
                let Some(topic) = local_topic.and_then(|t| TopicName::new(t).ok()) else {
                    // Nothing here wants it (the peer sent what no `in` pattern covers):
                    // acknowledged so the peer can finish; a PUBREL then finds nothing.
                    tracing::debug!(bridge = %self.bridge.name, topic = %publish.topic, "unmatched incoming message");
                    match (publish.qos, publish.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => self.send(&Packet::PubAck(Ack::new(id))),
                        (QoS::ExactlyOnce, Some(id)) => self.send(&Packet::PubRec(Ack::new(id))),
                        _ => {}
                    }
                    return Ok(());
                };
                publish.topic = topic;
                let result =
                    self.shard.borrow_mut().handle_packet(&self.local, Packet::Publish(publish));
                result.map_err(|close| LinkEnd::RemoteProtocolError(format!("{close:?}")))
            }
            Packet::PubAck(ack) if self.notification_ack == Some(ack.packet_id) => {
                self.notification_ack = None;
                Ok(())
            }
            Packet::PubAck(ack) if self.downgraded.remove(&ack.packet_id) => {
                self.completing.insert(ack.packet_id);
                self.complete_local(Packet::PubRec(Ack::new(ack.packet_id)));
                Ok(())
            }
            Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => {
                self.complete_local(packet);
                Ok(())
            }
            Packet::SubAck(suback) => {
                let refused = suback.reasons.iter().filter(|r| (**r as u8) >= 0x80).count();
                if refused > 0 {
                    tracing::warn!(bridge = %self.bridge.name, refused, "the peer refused subscriptions");
                }
                Ok(())
            }
            Packet::UnsubAck(_) | Packet::PingResp => Ok(()),
            Packet::Disconnect(disconnect) => {
                tracing::info!(bridge = %self.bridge.name, reason = ?disconnect.reason, "peer sent DISCONNECT");
                Err(LinkEnd::RemoteClosed)
            }
            other => {
                Err(LinkEnd::RemoteProtocolError(format!("unexpected {:?}", other.packet_type())))
            }
        }
    }

    /// A link that ends by this broker's choice says goodbye: the `0` state (a clean
    /// DISCONNECT does not publish the will that would say it) and DISCONNECT.
    async fn finish(&mut self, end: &LinkEnd, announce: bool) {
        if !matches!(end, LinkEnd::Shutdown | LinkEnd::Idle | LinkEnd::PrimaryBack) {
            return;
        }
        let bridge = self.bridge.clone();
        if announce && bridge.notifications && !bridge.notifications_local_only {
            if let Some(topic) = notification_topic(&bridge) {
                self.send(&state_publish(topic, false, None));
            }
        }
        self.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
        let out = self.out.split();
        let _ = glommio::timer::timeout(POLL_INTERVAL, async {
            let _ = self.stream.write_all(&out).await;
            let _ = self.stream.close().await;
            Ok(())
        })
        .await;
    }
}

/// `restart_timeout`: a constant delay, or with a cap a jittered backoff from base to cap
/// (each delay random between the base and three times the previous, at most the cap).
struct Backoff {
    base: Duration,
    cap: Option<Duration>,
    previous: Duration,
    random: ahash::RandomState,
    draws: u64,
}

impl Backoff {
    fn new(bridge: &Bridge) -> Self {
        let timeout = bridge.restart_timeout;
        Backoff {
            base: timeout.base,
            cap: timeout.cap,
            previous: timeout.base,
            random: ahash::RandomState::new(),
            draws: 0,
        }
    }

    fn reset(&mut self) {
        self.previous = self.base;
    }

    fn next(&mut self) -> Duration {
        let Some(cap) = self.cap else { return self.base };
        self.draws += 1;
        let high = (self.previous * 3).min(cap).max(self.base);
        let span = (high - self.base).as_millis() as u64;
        let jitter = if span == 0 { 0 } else { self.random.hash_one(self.draws) % (span + 1) };
        self.previous = self.base + Duration::from_millis(jitter);
        self.previous
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(config: &str) -> Backoff {
        let text = format!("connection b\naddress h\ntopic #\nrestart_timeout {config}\n");
        let (config, _) =
            crate::config::Config::parse(&text, std::path::Path::new("t.conf")).unwrap();
        Backoff::new(&config.bridges[0])
    }

    #[test]
    fn a_single_restart_timeout_is_constant() {
        let mut backoff = backoff("7");
        assert!((0..5).all(|_| backoff.next() == Duration::from_secs(7)));
    }

    #[test]
    fn base_and_cap_give_a_jittered_backoff_within_them_that_resets() {
        let mut backoff = backoff("2 30");
        let delays: Vec<Duration> = (0..50).map(|_| backoff.next()).collect();
        let (base, cap) = (Duration::from_secs(2), Duration::from_secs(30));
        assert!(delays.iter().all(|d| *d >= base && *d <= cap), "{delays:?}");
        assert!(delays.iter().any(|d| *d > Duration::from_secs(10)), "it grows: {delays:?}");
        // Each delay is at most three times the one before.
        assert!(delays.windows(2).all(|w| w[1] <= (w[0] * 3).max(base)), "{delays:?}");
        backoff.reset();
        assert!(backoff.next() <= Duration::from_secs(6));
    }
}
