//! Bridges: the seed tutorial's clusters as real processes on loopback aliases (127.0.0.53 the
//! master, 127.0.0.88 and 127.0.0.89 the leaves), with Culex and Mosquitto in every role, the
//! tutorial's configuration lines, and links cut and brokers restarted while QoS 1 and 2
//! streams flow. Every wait is bounded.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::node::{await_route, Kind, Node, LINK_WAIT};
use common::{mosquitto_tool, pki, rss_kib, soak_seconds, ConnectOptions, RawClient};
use culex::protocol::{
    ConnAck, Packet, Properties, ProtocolVersion, QoS, ReasonCode, SubAck, PACKET_SIZE_MAX,
};
use Kind::{Culex, Mosquitto};

/// The tutorial's `connection` block, pointing at `leaf`, with extra lines appended.
fn tutorial_connection(name: &str, leaf: &Node, protocol: &str, extra: &str) -> String {
    format!(
        "connection {name}\naddress {}\ntopic room1/# both 2 sensor/ myhouse/\n\
         bridge_protocol_version {protocol}\nnotifications true\ncleansession true\n\
         try_private true\nstart_type automatic\n{extra}",
        leaf.address()
    )
}

fn subscriber(node: &Node, client_id: &str, filter: &str) -> RawClient {
    subscriber_with(node, client_id, filter, ConnectOptions::default())
}

fn subscriber_with(
    node: &Node,
    client_id: &str,
    filter: &str,
    options: ConnectOptions,
) -> RawClient {
    let (mut client, _) = RawClient::connect_addr(node.addr(), client_id, options);
    let granted = client.subscribe(filter, QoS::ExactlyOnce);
    assert!(!granted[0].is_error(), "{filter} refused on {:?}", node.kind);
    client
}

fn publish(node: &Node, topic: &str, payload: &str, qos: QoS, retain: bool) {
    let (mut client, _) = RawClient::connect_addr(node.addr(), "", ConnectOptions::default());
    client.publish(topic, payload.as_bytes(), qos, retain);
    client.disconnect();
}

/// Drops what the subscribers still receive (probes on their way) until they are quiet.
fn drain(subscribers: &mut [&mut RawClient]) {
    for sub in subscribers {
        while let Some(packet) = sub.recv_within(Duration::from_millis(400)) {
            if let Packet::Publish(p) = packet {
                sub.acknowledge(&p);
            }
        }
    }
}

/// The subscriber receives exactly this message, and nothing else for a while.
fn expect_exactly(sub: &mut RawClient, topic: &str, payload: &str) {
    let publish = sub.receive();
    assert_eq!((&*publish.topic, &publish.payload[..]), (topic, payload.as_bytes()));
    sub.expect_silence();
}

// ---- The tutorial's two servers ---------------------------------------------------------------

fn two_servers(master_kind: Kind, leaf_kind: Kind, protocol: &str) {
    let Some(leaf) = Node::start(leaf_kind, "127.0.0.88", "") else { return };
    let bridge = tutorial_connection("master", &leaf, protocol, "");
    let Some(master) = Node::start(master_kind, "127.0.0.53", &bridge) else { return };
    let logs = [&master, &leaf];
    let mut on_leaf = subscriber(&leaf, "leaf-sub", "myhouse/room1/#");
    let mut on_master = subscriber(&master, "master-sub", "sensor/room1/#");
    await_route(&master, "sensor/room1/probe", &mut on_leaf, &logs);
    await_route(&leaf, "myhouse/room1/probe", &mut on_master, &logs);
    drain(&mut [&mut on_leaf, &mut on_master]);

    // Master to leaf, remapped; the master's own subscriber gets no echo from the leaf.
    publish(&master, "sensor/room1/temperature", "26.3", QoS::AtLeastOnce, false);
    expect_exactly(&mut on_leaf, "myhouse/room1/temperature", "26.3");
    expect_exactly(&mut on_master, "sensor/room1/temperature", "26.3");
    // And back (`both`), at QoS 2.
    publish(&leaf, "myhouse/room1/humidity", "40", QoS::ExactlyOnce, false);
    expect_exactly(&mut on_master, "sensor/room1/humidity", "40");
    expect_exactly(&mut on_leaf, "myhouse/room1/humidity", "40");
    // Topics outside the pattern stay home.
    publish(&master, "sensor/room2/temperature", "1", QoS::AtLeastOnce, false);
    on_leaf.expect_silence();

    // A retained message crosses with its retain flag: a later subscriber on the leaf gets it.
    publish(&master, "sensor/room1/setpoint", "21", QoS::AtLeastOnce, true);
    expect_exactly(&mut on_leaf, "myhouse/room1/setpoint", "21");
    let mut late = subscriber(&leaf, "late-sub", "myhouse/room1/setpoint");
    let retained = late.receive();
    assert!(retained.retain && &retained.payload[..] == b"21", "{retained:?}");
}

macro_rules! two_server_tests {
    ($($name:ident: $master:expr, $leaf:expr, $protocol:expr;)*) => {$(
        #[test]
        fn $name() {
            two_servers($master, $leaf, $protocol);
        }
    )*};
}

two_server_tests! {
    two_servers_culex_master_culex_leaf: Culex, Culex, "mqttv311";
    two_servers_culex_master_mosquitto_leaf: Culex, Mosquitto, "mqttv311";
    two_servers_mosquitto_master_culex_leaf: Mosquitto, Culex, "mqttv311";
    two_servers_mosquitto_master_mosquitto_leaf: Mosquitto, Mosquitto, "mqttv311";
    two_servers_mqttv50_culex_culex: Culex, Culex, "mqttv50";
    two_servers_mqttv50_culex_mosquitto: Culex, Mosquitto, "mqttv50";
    two_servers_mqttv50_mosquitto_culex: Mosquitto, Culex, "mqttv50";
    two_servers_mqttv31_culex_culex: Culex, Culex, "mqttv31";
    two_servers_mqttv31_culex_mosquitto: Culex, Mosquitto, "mqttv31";
}

// ---- The tutorial's master and two leaves -----------------------------------------------------

fn master_and_two_leaves(master_kind: Kind, kind_88: Kind, kind_89: Kind) {
    let Some(leaf_88) = Node::start(kind_88, "127.0.0.88", "") else { return };
    let Some(leaf_89) = Node::start(kind_89, "127.0.0.89", "") else { return };
    let bridges = tutorial_connection("mytest", &leaf_88, "mqttv311", "")
        + &tutorial_connection("mytest2", &leaf_89, "mqttv311", "");
    let Some(master) = Node::start(master_kind, "127.0.0.53", &bridges) else { return };
    let logs = [&master, &leaf_88, &leaf_89];
    let mut on_88 = subscriber(&leaf_88, "sub-88", "myhouse/room1/#");
    let mut on_89 = subscriber(&leaf_89, "sub-89", "myhouse/room1/#");
    let mut on_53 = subscriber(&master, "sub-53", "sensor/room1/#");
    await_route(&master, "sensor/room1/probe", &mut on_88, &logs);
    await_route(&master, "sensor/room1/probe", &mut on_89, &logs);
    await_route(&leaf_88, "myhouse/room1/probe", &mut on_53, &logs);
    await_route(&leaf_89, "myhouse/room1/probe", &mut on_53, &logs);
    drain(&mut [&mut on_88, &mut on_89, &mut on_53]);

    // The tutorial's check, with Mosquitto's own tools when they are installed.
    if let (Some(pub_tool), Some(sub_tool)) =
        (mosquitto_tool("mosquitto_pub"), mosquitto_tool("mosquitto_sub"))
    {
        let watch = |leaf: &Node| {
            Command::new(&sub_tool)
                .args(["-h", leaf.host, "-p", &leaf.port.to_string()])
                .args(["-t", "myhouse/room1/#", "-C", "1", "-W", "10"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (watch_88, watch_89) = (watch(&leaf_88), watch(&leaf_89));
        std::thread::sleep(Duration::from_millis(500));
        let status = Command::new(&pub_tool)
            .args(["-h", master.host, "-p", &master.port.to_string()])
            .args(["-t", "sensor/room1/temperature", "-m", "26.3"])
            .status()
            .unwrap();
        assert!(status.success());
        for watch in [watch_88, watch_89] {
            let out = watch.wait_with_output().unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), "26.3\n");
        }
        expect_exactly(&mut on_88, "myhouse/room1/temperature", "26.3");
        expect_exactly(&mut on_89, "myhouse/room1/temperature", "26.3");
        expect_exactly(&mut on_53, "sensor/room1/temperature", "26.3");
    }

    // From one leaf to the other through the master: exactly once everywhere, no loop back.
    publish(&leaf_88, "myhouse/room1/door", "open", QoS::AtLeastOnce, false);
    expect_exactly(&mut on_89, "myhouse/room1/door", "open");
    expect_exactly(&mut on_53, "sensor/room1/door", "open");
    expect_exactly(&mut on_88, "myhouse/room1/door", "open");
    publish(&leaf_89, "myhouse/room1/window", "shut", QoS::ExactlyOnce, false);
    expect_exactly(&mut on_88, "myhouse/room1/window", "shut");
    expect_exactly(&mut on_53, "sensor/room1/window", "shut");
    expect_exactly(&mut on_89, "myhouse/room1/window", "shut");
}

macro_rules! three_node_tests {
    ($($name:ident: $master:expr, $a:expr, $b:expr;)*) => {$(
        #[test]
        fn $name() {
            master_and_two_leaves($master, $a, $b);
        }
    )*};
}

three_node_tests! {
    three_nodes_culex_culex_culex: Culex, Culex, Culex;
    three_nodes_culex_culex_mosquitto: Culex, Culex, Mosquitto;
    three_nodes_culex_mosquitto_culex: Culex, Mosquitto, Culex;
    three_nodes_culex_mosquitto_mosquitto: Culex, Mosquitto, Mosquitto;
    three_nodes_mosquitto_culex_culex: Mosquitto, Culex, Culex;
    three_nodes_mosquitto_culex_mosquitto: Mosquitto, Culex, Mosquitto;
    three_nodes_mosquitto_mosquitto_culex: Mosquitto, Mosquitto, Culex;
    three_nodes_mosquitto_mosquitto_mosquitto: Mosquitto, Mosquitto, Mosquitto;
}

// ---- Streams through a link cut and a restart -------------------------------------------------

/// A TCP forwarder between a bridge and its peer that the test cuts and restores: a failed
/// link with both brokers still running. While cut, connections are accepted and closed. It
/// can also stall: nothing passes, nothing is closed, as when a link drops packets silently;
/// the connections go on after it unless an end gave up on its keep alive meanwhile.
struct Proxy {
    host: &'static str,
    port: u16,
    cut: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(host: &'static str, target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind((host, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Proxy {
            host,
            port,
            cut: Arc::default(),
            stalled: Arc::default(),
            stop: Arc::default(),
            live: Arc::default(),
        };
        let (cut, stop, live) = (proxy.cut.clone(), proxy.stop.clone(), proxy.live.clone());
        let stalled = proxy.stalled.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                if cut.load(Ordering::Relaxed) {
                    continue; // dropped: the link stays down
                }
                let Ok(server) = TcpStream::connect(target) else { continue };
                client.set_nonblocking(false).unwrap();
                let mut live = live.lock().unwrap();
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    let (stalled, stop) = (stalled.clone(), stop.clone());
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 << 10];
                        while let Ok(n @ 1..) = from.read(&mut buf) {
                            // Stalled: held here, and nothing more is read (TCP pushes back).
                            while stalled.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
                live.extend([client, server]);
            }
        });
        proxy
    }

    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        for stream in self.live.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn stall(&self) {
        self.stalled.store(true, Ordering::Relaxed);
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::Relaxed);
        self.stalled.store(false, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

/// Messages per QoS in each stream.
const STREAM_LEN: u32 = 150;

/// A subscriber that keeps its QoS 2 state across reconnections, as a real client must: a
/// PUBLISH whose id still awaits PUBREL is a resend, not a new message.
struct Collector {
    addr: SocketAddr,
    client_id: &'static str,
    client: Option<RawClient>,
    awaiting_pubrel: std::collections::HashSet<u16>,
    received: Vec<(String, QoS, u32)>,
}

impl Collector {
    fn connect(node: &Node, client_id: &'static str, filter: &str) -> Collector {
        let options = ConnectOptions { clean_start: false, ..Default::default() };
        // A clean start first, so no session of an earlier run remains.
        drop(subscriber(node, client_id, filter));
        let client = subscriber_with(node, client_id, filter, options);
        Collector {
            addr: node.addr(),
            client_id,
            client: Some(client),
            awaiting_pubrel: Default::default(),
            received: Vec::new(),
        }
    }

    fn reconnect(&mut self) {
        let options = ConnectOptions { clean_start: false, ..Default::default() };
        let (client, session_present) = RawClient::connect_addr(self.addr, self.client_id, options);
        assert!(session_present, "{} lost its session", self.client_id);
        self.client = Some(client);
    }

    /// Handles what has come: waits up to 20 ms for a first packet, then takes every packet
    /// already there (one packet per call fell behind a soak's streams, and the broker dropped
    /// what overflowed the collector's queue).
    fn poll(&mut self) {
        let mut wait = Duration::from_millis(20);
        while self.take_one(wait) {
            wait = Duration::from_millis(1);
        }
    }

    /// Handles one packet, if one comes within `wait`.
    fn take_one(&mut self, wait: Duration) -> bool {
        let Some(client) = &mut self.client else { return false };
        let Some(packet) = client.recv_within(wait) else { return false };
        match packet {
            Packet::Publish(p) => {
                let fresh = match (p.qos, p.packet_id) {
                    (QoS::ExactlyOnce, Some(id)) => {
                        client.send(&Packet::PubRec(culex::protocol::Ack::new(id)));
                        self.awaiting_pubrel.insert(id.get())
                    }
                    (QoS::AtLeastOnce, Some(id)) => {
                        client.send(&Packet::PubAck(culex::protocol::Ack::new(id)));
                        true
                    }
                    _ => true,
                };
                let payload = std::str::from_utf8(&p.payload).unwrap_or_default();
                if let (true, Ok(n)) = (fresh, payload.parse()) {
                    self.received.push((p.topic.to_string(), p.qos, n));
                }
            }
            Packet::PubRel(ack) => {
                self.awaiting_pubrel.remove(&ack.packet_id.get());
                client.send(&Packet::PubComp(culex::protocol::Ack::new(ack.packet_id)));
            }
            _ => {}
        }
        true
    }

    /// The numbers received on `topic`, in arrival order.
    fn stream(&self, topic: &str) -> Vec<u32> {
        self.received.iter().filter(|(t, _, _)| t == topic).map(|(_, _, n)| *n).collect()
    }

    /// Whether messages `0..len` of both streams under `prefix` have all come.
    fn complete(&self, prefix: &str, len: u32) -> bool {
        let distinct = |topic: &str| {
            self.stream(&format!("{prefix}/{topic}"))
                .into_iter()
                .collect::<std::collections::HashSet<_>>()
                .len()
        };
        distinct("q1") == len as usize && distinct("q2") == len as usize
    }

    /// What `complete` still waits for, and the order things came in, for a failure message.
    fn missing(&self, prefix: &str, len: u32) -> String {
        let lacking = |topic: &str| {
            let stream = self.stream(&format!("{prefix}/{topic}"));
            let absent: Vec<u32> = (0..len).filter(|n| !stream.contains(n)).collect();
            format!("{topic} lacks {absent:?} (received {stream:?})")
        };
        format!("{}; {}", lacking("q1"), lacking("q2"))
    }

    /// QoS 1: every message, first arrivals in order (resends after a reconnect may repeat
    /// some). QoS 2: every message exactly once, in order.
    fn check(&self, prefix: &str, len: u32, logs: &[&Node]) {
        let logs = || {
            let logs: Vec<String> =
                logs.iter().map(|n| format!("{:?}:\n{}", n.kind, n.log())).collect();
            logs.join("\n")
        };
        // The verdict goes after the logs too: CI keeps only the tail of a long message.
        let q1 = self.stream(&format!("{prefix}/q1"));
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<u32> = q1.iter().copied().filter(|n| seen.insert(*n)).collect();
        let all: Vec<u32> = (0..len).collect();
        let verdict = |stream: &[u32]| stream_faults(stream, len);
        assert!(
            firsts == all,
            "QoS 1 on {prefix}: {q1:?}\n{}\nQoS 1 on {prefix}: {}",
            logs(),
            verdict(&firsts)
        );
        let q2 = self.stream(&format!("{prefix}/q2"));
        assert!(
            q2 == all,
            "QoS 2 on {prefix}: {q2:?}\n{}\nQoS 2 on {prefix}: {}",
            logs(),
            verdict(&q2)
        );
    }
}

/// How `stream` differs from `0..len`: the numbers repeated, missing, and each place where one
/// arrived before a smaller one, with what came around it.
fn stream_faults(stream: &[u32], len: u32) -> String {
    let mut counts = vec![0u32; len as usize];
    for n in stream.iter().filter(|n| **n < len) {
        counts[*n as usize] += 1;
    }
    let repeated: Vec<u32> = (0..len).filter(|n| counts[*n as usize] > 1).collect();
    let missing: Vec<u32> = (0..len).filter(|n| counts[*n as usize] == 0).collect();
    let disorder: Vec<String> = stream
        .windows(2)
        .enumerate()
        .filter(|(_, pair)| pair[1] <= pair[0])
        .map(|(i, _)| format!("{:?}", &stream[i.saturating_sub(3)..(i + 5).min(stream.len())]))
        .collect();
    format!("repeated {repeated:?}, missing {missing:?}, out of order at {disorder:?}")
}

/// Publishes `STREAM_LEN` QoS 1 and QoS 2 messages, interleaved and paced, on its own thread.
fn stream_publisher(node: &Node, prefix: &'static str) -> std::thread::JoinHandle<u32> {
    publish_stream(node, prefix, STREAM_LEN, Arc::new(AtomicBool::new(true)))
}

/// Publishes messages numbered from 0, each at QoS 1 and at QoS 2 (`prefix/q1`, `prefix/q2`),
/// interleaved and paced, on its own thread, until `len` are sent or `running` turns false.
/// Returns how many were sent, each acknowledged by the broker. A broker killed meanwhile is
/// waited for and the publisher's session resumed, as a client library does it (`Publisher`).
fn publish_stream(
    node: &Node,
    prefix: &'static str,
    len: u32,
    running: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u32> {
    let addr = node.addr();
    std::thread::spawn(move || {
        let mut publisher =
            Publisher::connect(addr, &format!("{}-publisher", prefix.replace('/', "-")));
        let mut sent = 0;
        while sent < len && running.load(Ordering::Relaxed) {
            let payload = sent.to_string();
            publisher.deliver(&format!("{prefix}/q1"), &payload, QoS::AtLeastOnce);
            publisher.deliver(&format!("{prefix}/q2"), &payload, QoS::ExactlyOnce);
            sent += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        // The broker may be down as the run ends: the session is left as it is then.
        let _ = publisher.client.try_send(&Packet::Disconnect(Default::default()));
        sent
    })
}

/// A publisher with a persistent session that outlives its broker: when the connection fails
/// it connects again (while the broker restarts) and finishes what was under way, a PUBLISH
/// sent again with DUP until acknowledged (PUBACK, PUBREC), a PUBREL until PUBCOMP.
struct Publisher {
    addr: SocketAddr,
    client_id: String,
    client: RawClient,
}

impl Publisher {
    fn connect(addr: SocketAddr, client_id: &str) -> Publisher {
        // A clean start first, so no session of an earlier run remains.
        RawClient::connect_addr(addr, client_id, ConnectOptions::default()).0.disconnect();
        let options = ConnectOptions { clean_start: false, ..Default::default() };
        let (client, _) = RawClient::connect_addr(addr, client_id, options);
        Publisher { addr, client_id: client_id.to_string(), client }
    }

    /// Connects again, waiting for the broker to come back (at most a minute).
    fn reconnect(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "{} could not reconnect", self.client_id);
            if let Ok(mut client) = RawClient::try_open_addr(self.addr) {
                let options = ConnectOptions { clean_start: false, ..Default::default() };
                if let Some(Packet::ConnAck(ack)) = client.try_handshake(&self.client_id, options) {
                    assert!(ack.session_present, "{} lost its session", self.client_id);
                    self.client = client;
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn deliver(&mut self, topic: &str, payload: &str, qos: QoS) {
        let packet_id = self.client.packet_id();
        let publish = culex::protocol::Publish {
            dup: false,
            qos,
            retain: false,
            topic: culex::protocol::TopicName::new(topic.to_string()).unwrap(),
            packet_id: Some(packet_id),
            properties: Default::default(),
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        };
        // PUBREC came: what is left is the release.
        let mut received = false;
        let mut resent = false;
        loop {
            let packet = if received {
                Packet::PubRel(culex::protocol::Ack::new(packet_id))
            } else {
                Packet::Publish(culex::protocol::Publish { dup: resent, ..publish.clone() })
            };
            if self.client.try_send(&packet).is_ok() {
                loop {
                    match self.client.recv_within(Duration::from_secs(10)) {
                        Some(Packet::PubAck(ack)) if ack.packet_id == packet_id => return,
                        Some(Packet::PubComp(ack)) if ack.packet_id == packet_id => return,
                        Some(Packet::PubRec(ack)) if ack.packet_id == packet_id => {
                            received = true;
                            let release = Packet::PubRel(culex::protocol::Ack::new(packet_id));
                            if self.client.try_send(&release).is_err() {
                                break;
                            }
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
            }
            self.reconnect();
            resent = true;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Disruption {
    /// The link between the brokers fails for a while (a proxy between them is cut).
    CutLink,
    /// The leaf is stopped and started again (it keeps its sessions: persistence).
    RestartLeaf,
    /// The leaf is killed with SIGKILL and started again: what it acknowledged must survive.
    KillLeaf,
}

/// QoS 1 and QoS 2 streams cross the bridge (both ways when the leaf stays up) while the link
/// is cut or the leaf restarts: everything arrives, in order, QoS 2 exactly once.
///
/// Mosquitto nodes run with `max_inflight_messages 0` (no window). With its default window of
/// 20, Mosquitto 2.0.11 itself reorders what it sends its own subscribers when the window is
/// full and messages move up from the queue: seen in these tests, its log shows the PUBLISHes
/// from the bridge received in order and given ids in order (m585..m597 to the collector), then
/// m597 sent before m585..m596. That is not what these tests are about.
fn streams_survive(master_kind: Kind, leaf_kind: Kind, disruption: Disruption) {
    let unlimited_window = |kind| if kind == Mosquitto { "max_inflight_messages 0\n" } else { "" };
    let mut leaf_config = unlimited_window(leaf_kind).to_string();
    let restarts_leaf = disruption != Disruption::CutLink;
    if restarts_leaf {
        leaf_config.push_str("persistence true\npersistence_location {dir}/\n");
    }
    let Some(mut leaf) = Node::start(leaf_kind, "127.0.0.88", &leaf_config) else { return };
    let proxy = Proxy::start("127.0.0.89", leaf.addr());
    let address = if restarts_leaf { leaf.address() } else { proxy.address() };
    // cleansession false: both brokers keep the bridge's session across the outage, which is
    // what exactly-once delivery through a reconnection needs.
    let bridge = format!(
        "{}connection stream\naddress {address}\ntopic room1/# both 2 sensor/ myhouse/\n\
         cleansession false\nrestart_timeout 1\nkeepalive_interval 5\nremote_clientid stream-bridge\n",
        unlimited_window(master_kind)
    );
    let Some(master) = Node::start(master_kind, "127.0.0.53", &bridge) else { return };
    let logs = [&master, &leaf];
    let mut on_leaf = Collector::connect(&leaf, "leaf-collector", "myhouse/room1/#");
    let mut on_master = Collector::connect(&master, "master-collector", "sensor/room1/#");
    await_route(&master, "sensor/room1/probe", on_leaf.client.as_mut().unwrap(), &logs);
    if disruption == Disruption::CutLink {
        await_route(&leaf, "myhouse/room1/probe", on_master.client.as_mut().unwrap(), &logs);
    }
    drain(&mut [on_leaf.client.as_mut().unwrap(), on_master.client.as_mut().unwrap()]);

    let mut publishers = vec![stream_publisher(&master, "sensor/room1/down")];
    if disruption == Disruption::CutLink {
        publishers.push(stream_publisher(&leaf, "myhouse/room1/up"));
    }
    let start = Instant::now();
    let (mut disrupted, mut restored) = (false, false);
    let deadline = start + Duration::from_secs(60);
    while !(on_leaf.complete("myhouse/room1/down", STREAM_LEN)
        && (restarts_leaf || on_master.complete("sensor/room1/up", STREAM_LEN)))
    {
        assert!(
            Instant::now() < deadline,
            "streams incomplete: leaf {}, master {}\n{}\n{}",
            on_leaf.missing("myhouse/room1/down", STREAM_LEN),
            on_master.missing("sensor/room1/up", STREAM_LEN),
            master.log(),
            leaf.log()
        );
        let elapsed = start.elapsed();
        if !disrupted && elapsed > Duration::from_millis(600) {
            disrupted = true;
            match disruption {
                Disruption::CutLink => proxy.cut(),
                Disruption::RestartLeaf => {
                    on_leaf.client = None;
                    leaf.stop();
                }
                Disruption::KillLeaf => {
                    on_leaf.client = None;
                    leaf.kill();
                }
            }
        }
        if disrupted && !restored && elapsed > Duration::from_millis(2000) {
            restored = true;
            match disruption {
                Disruption::CutLink => proxy.restore(),
                Disruption::RestartLeaf | Disruption::KillLeaf => {
                    leaf.spawn();
                    on_leaf.reconnect();
                }
            }
        }
        on_leaf.poll();
        on_master.poll();
    }
    for publisher in publishers {
        publisher.join().unwrap();
    }
    assert!(restored, "the streams ended before the disruption was over");
    on_leaf.check("myhouse/room1/down", STREAM_LEN, &[&master, &leaf]);
    if disruption == Disruption::CutLink {
        on_master.check("sensor/room1/up", STREAM_LEN, &[&master, &leaf]);
    }
}

#[test]
fn link_cut_culex_master_culex_leaf() {
    streams_survive(Culex, Culex, Disruption::CutLink);
}

#[test]
fn link_cut_culex_master_mosquitto_leaf() {
    streams_survive(Culex, Mosquitto, Disruption::CutLink);
}

#[test]
fn link_cut_mosquitto_master_culex_leaf() {
    streams_survive(Mosquitto, Culex, Disruption::CutLink);
}

#[test]
fn leaf_restart_culex_master_mosquitto_leaf() {
    streams_survive(Culex, Mosquitto, Disruption::RestartLeaf);
}

#[test]
fn leaf_restart_culex_master_culex_leaf() {
    streams_survive(Culex, Culex, Disruption::RestartLeaf);
}

/// Mosquitto is not in this one: a leaf killed between snapshots loses what it acknowledged.
#[test]
fn leaf_kill_9_culex_master_culex_leaf() {
    streams_survive(Culex, Culex, Disruption::KillLeaf);
}

/// The chaos soak through bridges: the tutorial's three servers, Culex in every role, two
/// shards each, with persistence. QoS 1 and QoS 2 streams go down from the master to both
/// leaves and up from one leaf, while, at random, that leaf's link is cut or stalls (silently,
/// at times past the bridge's keep alive), the other leaf is killed with SIGKILL, or the master
/// is (its publisher and collector wait for it and resume their sessions), and each is
/// restored; a subscriber on the master to everything never
/// reads. At the end nothing the brokers acknowledged is lost, QoS 2 arrives exactly once and
/// in order, and the master's memory is back near where it started. `CULEX_SOAK_SECONDS` long
/// (120 under CI, 20 otherwise); the seed of its schedule is printed, and taken from
/// `CULEX_SOAK_SEED` to replay one.
///
/// It found a bridge that turned its bridge bit off for good after a cut and then delivered
/// hundreds of QoS 2 messages twice, and a persistent session (the bridge's, on a leaf) that
/// lost a message published to it while it moved to the other shard after a cut (both fixed;
/// docs/ARCHITECTURE.md).
#[test]
fn chaos_soak_through_bridges() {
    let seconds = soak_seconds();
    let persistent = "persistence true\npersistence_location {dir}/\n";
    // Queues with room for every outage, so that what the soak counts is loss, not the queue
    // limit's policy.
    let persistent = format!("shards 2\n{persistent}max_queued_messages 100000\n");
    let Some(mut restarted) = Node::start(Culex, "127.0.0.88", &persistent) else { return };
    let Some(cut) = Node::start(Culex, "127.0.0.89", &persistent) else { return };
    let proxy = Proxy::start("127.0.0.89", cut.addr());
    let bridge = |name: &str, address: String| {
        format!(
            "connection {name}\naddress {address}\ntopic room1/# both 2 sensor/ myhouse/\n\
             cleansession false\nrestart_timeout 1\nkeepalive_interval 5\n\
             remote_clientid {name}-bridge\n"
        )
    };
    let master_config = format!(
        "{persistent}{}{}",
        bridge("to-restarted", restarted.address()),
        bridge("to-cut", proxy.address())
    );
    let Some(mut master) = Node::start(Culex, "127.0.0.53", &master_config) else { return };
    let (down, up) = ("myhouse/room1/down", "sensor/room1/up");
    let mut on_restarted =
        Collector::connect(&restarted, "restarted-collector", &format!("{down}/#"));
    let mut on_cut = Collector::connect(&cut, "cut-collector", &format!("{down}/#"));
    let mut on_master = Collector::connect(&master, "master-collector", &format!("{up}/#"));
    {
        let logs = [&master, &restarted, &cut];
        let probe = "sensor/room1/down/probe";
        await_route(&master, probe, on_restarted.client.as_mut().unwrap(), &logs);
        await_route(&master, probe, on_cut.client.as_mut().unwrap(), &logs);
        await_route(&cut, "myhouse/room1/up/probe", on_master.client.as_mut().unwrap(), &logs);
    }
    let mut clients = [&mut on_restarted, &mut on_cut, &mut on_master];
    drain(&mut clients.each_mut().map(|c| c.client.as_mut().unwrap()));
    let mut stalled = subscriber(&master, "stalled", "sensor/#");
    let rss_start = rss_kib(master.child.as_ref().unwrap().id());

    let running = Arc::new(AtomicBool::new(true));
    let downstream = publish_stream(&master, "sensor/room1/down", u32::MAX, running.clone());
    let upstream = publish_stream(&cut, "myhouse/room1/up", u32::MAX, running.clone());
    let seed = std::env::var("CULEX_SOAK_SEED").ok().and_then(|s| s.parse().ok());
    let seed: u64 = seed.unwrap_or_else(|| u64::from(std::process::id()) << 20 ^ 0x9e37_79b9);
    eprintln!("chaos soak through bridges: {seconds} s, seed {seed} (CULEX_SOAK_SEED)");
    let mut random = seed | 1;
    let mut next_random = |below: u64| {
        // xorshift64*: a schedule that a seed replays.
        random ^= random >> 12;
        random ^= random << 25;
        random ^= random >> 27;
        random.wrapping_mul(0x2545_f491_4f6c_dd1d) % below
    };
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    // Each disruption lasts 0.5-2.5 s (a stall up to 10 s), with 0.5-3 s of calm after it.
    let (mut restarts, mut cuts, mut stalls, mut master_restarts) = (0, 0, 0, 0);
    let mut next_change = start + Duration::from_millis(500 + next_random(2500));
    let (mut leaf_down, mut link_down, mut master_down) = (false, false, false);
    while Instant::now() < end || leaf_down || link_down || master_down {
        if Instant::now() >= next_change {
            if leaf_down || link_down || master_down {
                if leaf_down {
                    restarted.spawn();
                    on_restarted.reconnect();
                }
                if link_down {
                    proxy.restore();
                }
                if master_down {
                    master.spawn();
                    on_master.reconnect();
                    stalled = subscriber(&master, "stalled", "sensor/#");
                }
                (leaf_down, link_down, master_down) = (false, false, false);
                next_change = Instant::now() + Duration::from_millis(500 + next_random(2500));
            } else {
                // The leaf, the link, both at once, or the master (killed, its publisher and
                // subscribers waiting for it).
                let what = next_random(4);
                if what == 0 || what == 2 {
                    on_restarted.client = None;
                    restarted.kill();
                    (leaf_down, restarts) = (true, restarts + 1);
                }
                let mut lasts = 500 + next_random(2000);
                if what == 1 || what == 2 {
                    if next_random(2) == 0 {
                        proxy.cut();
                        cuts += 1;
                    } else {
                        // Silent: up to 10 s, past the bridge's keep alive (1.5 x 5 s) at times.
                        proxy.stall();
                        stalls += 1;
                        lasts = 500 + next_random(9500);
                    }
                    link_down = true;
                }
                if what == 3 {
                    on_master.client = None;
                    master.kill();
                    (master_down, master_restarts) = (true, master_restarts + 1);
                }
                next_change = Instant::now() + Duration::from_millis(lasts);
            }
        }
        on_restarted.poll();
        on_cut.poll();
        on_master.poll();
    }
    running.store(false, Ordering::Relaxed);
    let (sent_down, sent_up) = (downstream.join().unwrap(), upstream.join().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let logs = [&master, &restarted, &cut];
    while !(on_restarted.complete(down, sent_down)
        && on_cut.complete(down, sent_down)
        && on_master.complete(up, sent_up))
    {
        assert!(
            Instant::now() < deadline,
            "streams incomplete after the soak: restarted leaf {}; cut leaf {}; master {}\n{}\n\
             incomplete: master's QoS 2 {}; restarted leaf's {}; cut leaf's {}",
            on_restarted.missing(down, sent_down),
            on_cut.missing(down, sent_down),
            on_master.missing(up, sent_up),
            logs.map(|node| format!("{:?} {}:\n{}", node.kind, node.address(), node.log()))
                .join("\n"),
            // Again after the logs: CI keeps only the tail of a long message.
            stream_faults(&on_master.stream(&format!("{up}/q2")), sent_up),
            stream_faults(&on_restarted.stream(&format!("{down}/q2")), sent_down),
            stream_faults(&on_cut.stream(&format!("{down}/q2")), sent_down),
        );
        for _ in 0..25 {
            on_restarted.poll();
            on_cut.poll();
            on_master.poll();
        }
    }
    on_restarted.check(down, sent_down, &logs);
    on_cut.check(down, sent_down, &logs);
    on_master.check(up, sent_up, &logs);
    drop(stalled);
    std::thread::sleep(Duration::from_secs(1));
    let rss_end = rss_kib(master.child.as_ref().unwrap().id());
    eprintln!(
        "chaos soak through bridges: {restarts} leaf kills, {master_restarts} master kills, \
         {cuts} link cuts, {stalls} link stalls, {sent_down} messages down and {sent_up} up at \
         QoS 1 and at QoS 2, all delivered; the master's memory {} MiB at the start, {} MiB at \
         the end",
        rss_start >> 10,
        rss_end >> 10
    );
    assert!(cuts + stalls > 0 && restarts > 0, "{seconds} s is too short to disrupt");
    assert!(rss_end < rss_start + (32 << 10), "{rss_start} KiB -> {rss_end} KiB");
}

// ---- Notifications, start types, failover, try_private -----------------------------------------

/// Waits until `sub` receives `payload` (other messages may come first), acknowledging all.
fn await_payload(sub: &mut RawClient, payload: &str, what: &str, logs: &[&Node]) {
    let deadline = Instant::now() + LINK_WAIT;
    while Instant::now() < deadline {
        if let Some(Packet::Publish(p)) = sub.recv_within(Duration::from_millis(250)) {
            sub.acknowledge(&p);
            if &p.payload[..] == payload.as_bytes() {
                return;
            }
        }
    }
    let logs: Vec<String> = logs.iter().map(|n| format!("{:?}:\n{}", n.kind, n.log())).collect();
    panic!("{what}: never got {payload}\n{}", logs.join("\n"));
}

/// The link state is published as `1`/`0`, retained, on the master (local) and on the leaf
/// (remote, `0` being the bridge's will).
fn link_state_notifications(master_kind: Kind, leaf_kind: Kind) {
    let Some(mut leaf) = Node::start(leaf_kind, "127.0.0.88", "") else { return };
    let bridge = tutorial_connection(
        "master",
        &leaf,
        "mqttv311",
        "remote_clientid bridging-master\nrestart_timeout 1\n",
    );
    let Some(mut master) = Node::start(master_kind, "127.0.0.53", &bridge) else { return };
    let topic = "$SYS/broker/connection/bridging-master/state";
    let mut local = subscriber(&master, "state-local", topic);
    await_payload(&mut local, "1", "local state after connect", &[&master, &leaf]);
    let mut remote = subscriber(&leaf, "state-remote", topic);
    await_payload(&mut remote, "1", "remote state after connect", &[&master, &leaf]);

    leaf.stop();
    await_payload(&mut local, "0", "local state with the leaf gone", &[&master]);
    leaf.spawn();
    await_payload(&mut local, "1", "local state after reconnect", &[&master, &leaf]);

    // The master dies without a word: the leaf publishes the bridge's will.
    let mut remote = subscriber(&leaf, "state-remote-2", topic);
    await_payload(&mut remote, "1", "remote state after reconnect", &[&master, &leaf]);
    master.kill();
    await_payload(&mut remote, "0", "remote state from the will", &[&leaf]);
}

#[test]
fn link_state_notifications_culex_master_culex_leaf() {
    link_state_notifications(Culex, Culex);
}

#[test]
fn link_state_notifications_culex_master_mosquitto_leaf() {
    link_state_notifications(Culex, Mosquitto);
}

#[test]
fn link_state_notifications_mosquitto_master_culex_leaf() {
    link_state_notifications(Mosquitto, Culex);
}

/// Prometheus sees each bridge: its link (`culex_bridge_up`), the links it made, and what its
/// local session holds for the remote while the link is down; `promtool` accepts the text.
#[test]
fn a_bridge_shows_its_link_and_what_it_holds_to_prometheus() {
    let Some(mut leaf) = Node::start(Culex, "127.0.0.88", "") else { return };
    let metrics = common::free_port();
    let bridge = format!(
        "metrics_listener {metrics}\nconnection watched\naddress {}\n\
         topic room1/# out 1 sensor/ myhouse/\nrestart_timeout 1\nremote_clientid watched\n",
        leaf.address()
    );
    let Some(master) = Node::start(Culex, "127.0.0.53", &bridge) else { return };
    let mut on_leaf = subscriber(&leaf, "watched-sub", "myhouse/room1/#");
    await_route(&master, "sensor/room1/probe", &mut on_leaf, &[&master, &leaf]);
    let sample = |name: &str| {
        let text = common::scrape_metrics(metrics);
        common::metric_sum(&text, name, r#"bridge="watched""#)
    };
    let await_samples = |what: &str, expected: [u64; 3]| {
        let names = ["culex_bridge_up", "culex_bridge_links_total", "culex_bridge_held_messages"];
        let deadline = Instant::now() + LINK_WAIT;
        loop {
            let samples = names.map(sample);
            if samples == expected {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {samples:?}\n{}", master.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    await_samples("link up", [1, 1, 0]);
    leaf.stop();
    await_samples("link down", [0, 1, 0]);
    for n in 0..5 {
        publish(&master, "sensor/room1/t", &n.to_string(), QoS::AtLeastOnce, false);
    }
    // Sampled on the sweep (500 ms).
    await_samples("messages held for the leaf", [0, 1, 5]);
    leaf.spawn();
    await_samples("link up again, queue delivered", [1, 2, 0]);
    common::promtool_accepts(&common::scrape_metrics(metrics));
}

#[test]
fn lazy_bridge_connects_at_the_threshold_and_leaves_when_idle() {
    let Some(leaf) = Node::start(Culex, "127.0.0.88", "") else { return };
    let bridge = format!(
        "connection lazy\naddress {}\ntopic room1/# out 1 sensor/ myhouse/\nstart_type lazy\n\
         threshold 5\nidle_timeout 2\nremote_clientid lazy-bridge\n",
        leaf.address()
    );
    let Some(master) = Node::start(Culex, "127.0.0.53", &bridge) else { return };
    let mut on_leaf = subscriber(&leaf, "lazy-sub", "myhouse/room1/#");
    let mut state = subscriber(&master, "lazy-state", "$SYS/broker/connection/lazy-bridge/state");
    for n in 0..4 {
        publish(&master, "sensor/room1/t", &n.to_string(), QoS::AtLeastOnce, false);
    }
    // Four waiting messages are below the threshold: no link.
    assert!(on_leaf.recv_within(Duration::from_secs(1)).is_none(), "{}", master.log());
    publish(&master, "sensor/room1/t", "4", QoS::AtLeastOnce, false);
    // Five publishers, each its own connection and perhaps on another shard: no order between
    // them is promised, only that all five cross.
    let mut crossed: Vec<String> =
        (0..5).map(|_| String::from_utf8(on_leaf.receive().payload.to_vec()).unwrap()).collect();
    crossed.sort();
    assert_eq!(crossed, ["0", "1", "2", "3", "4"]);
    await_payload(&mut state, "1", "lazy link up", &[&master]);
    // Two seconds without traffic: the bridge disconnects.
    await_payload(&mut state, "0", "lazy link idle", &[&master]);
    assert!(master.log().contains("reason=Idle"), "{}", master.log());
}

#[test]
fn once_bridge_does_not_reconnect() {
    let Some(mut leaf) = Node::start(Culex, "127.0.0.88", "") else { return };
    let bridge = format!(
        "connection once\naddress {}\ntopic room1/# out 1 sensor/ myhouse/\nstart_type once\n\
         restart_timeout 1\n",
        leaf.address()
    );
    let Some(master) = Node::start(Culex, "127.0.0.53", &bridge) else { return };
    let mut on_leaf = subscriber(&leaf, "once-sub", "myhouse/room1/#");
    await_route(&master, "sensor/room1/probe", &mut on_leaf, &[&master, &leaf]);
    leaf.stop();
    leaf.spawn();
    let mut on_leaf = subscriber(&leaf, "once-sub", "myhouse/room1/#");
    std::thread::sleep(Duration::from_secs(2));
    publish(&master, "sensor/room1/t", "after", QoS::AtLeastOnce, false);
    on_leaf.expect_silence();
    assert!(master.log().contains("start_type once: not reconnecting"), "{}", master.log());
}

/// `addresses`: the secondary while the primary is down; with `round_robin false` back to the
/// primary when it answers (probed every 5 s, as Mosquitto does); with `round_robin true` the
/// bridge stays where it works.
fn failover(round_robin: bool) {
    let Some(mut primary) = Node::start(Culex, "127.0.0.88", "") else { return };
    let Some(secondary) = Node::start(Culex, "127.0.0.89", "") else { return };
    primary.stop();
    let bridge = format!(
        "connection failover\naddresses {} {}\ntopic room1/# out 1 sensor/ myhouse/\n\
         restart_timeout 1\nround_robin {round_robin}\n",
        primary.address(),
        secondary.address()
    );
    let Some(master) = Node::start(Culex, "127.0.0.53", &bridge) else { return };
    let mut on_secondary = subscriber(&secondary, "fo-secondary", "myhouse/room1/#");
    await_route(&master, "sensor/room1/probe", &mut on_secondary, &[&master, &secondary]);

    primary.spawn();
    let mut on_primary = subscriber(&primary, "fo-primary", "myhouse/room1/#");
    let (mut now_on, mut not_on) = if round_robin {
        // Longer than a probe interval: a bridge that moved would have moved by now.
        std::thread::sleep(Duration::from_secs(7));
        (on_secondary, on_primary)
    } else {
        await_route(&master, "sensor/room1/probe", &mut on_primary, &[&master, &primary]);
        (on_primary, on_secondary)
    };
    drain(&mut [&mut now_on, &mut not_on]);
    publish(&master, "sensor/room1/t", "here", QoS::AtLeastOnce, false);
    expect_exactly(&mut now_on, "myhouse/room1/t", "here");
    not_on.expect_silence();
}

#[test]
fn failover_to_the_secondary_address_and_back_to_the_primary() {
    failover(false);
}

#[test]
fn round_robin_stays_on_the_address_that_works() {
    failover(true);
}

/// Reads one packet from a socket the test serves as a fake broker.
fn read_packet(stream: &mut TcpStream, buf: &mut BytesMut) -> Packet {
    loop {
        if let Some(packet) = Packet::decode(buf, ProtocolVersion::V311, PACKET_SIZE_MAX).unwrap() {
            return packet;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the bridge closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn write_packet(stream: &mut TcpStream, packet: &Packet) {
    let mut out = BytesMut::new();
    packet.encode(ProtocolVersion::V311, &mut out);
    stream.write_all(&out).unwrap();
}

/// A peer that answers the bridge bit with "unacceptable protocol version" (as brokers other
/// than Mosquitto do) gets a plain 3.1.1 CONNECT next, and the bridge works over it.
#[test]
fn a_peer_refusing_the_bridge_bit_gets_plain_mqtt() {
    let listener = TcpListener::bind("127.0.0.88:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bridge = format!(
        "connection plain\naddress 127.0.0.88:{port}\ntopic room1/# both 1 sensor/ myhouse/\n\
         topic room2/# out 0\nremote_clientid plain-bridge\nrestart_timeout 1\n\
         remote_username bridge-user\nremote_password secret\n"
    );
    let Some(_master) = Node::start(Culex, "127.0.0.53", &bridge) else { return };
    let accept = || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(common::WAIT)).unwrap();
        stream
    };
    let mut first = accept();
    let mut buf = BytesMut::new();
    let Packet::Connect(connect) = read_packet(&mut first, &mut buf) else { panic!("CONNECT") };
    assert!(connect.bridge && connect.protocol == ProtocolVersion::V311, "{connect:?}");
    assert_eq!(&*connect.client_id, "plain-bridge");
    // Mosquitto's defaults: a persistent remote session, keep alive 60.
    assert!(!connect.clean_start && connect.keep_alive_secs == 60, "{connect:?}");
    assert_eq!(connect.username.as_deref(), Some("bridge-user"));
    assert_eq!(connect.password.as_deref(), Some(&b"secret"[..]));
    let will = connect.will.expect("the state notification is the will");
    assert_eq!(
        (&*will.topic, &will.payload[..]),
        ("$SYS/broker/connection/plain-bridge/state", &b"0"[..])
    );
    assert!(will.retain);
    let refuse = ConnAck {
        session_present: false,
        reason: ReasonCode::UnsupportedProtocolVersion,
        properties: Properties::default(),
    };
    write_packet(&mut first, &Packet::ConnAck(refuse));
    drop(first);

    let mut second = accept();
    let mut buf = BytesMut::new();
    let Packet::Connect(connect) = read_packet(&mut second, &mut buf) else { panic!("CONNECT") };
    assert!(!connect.bridge, "the retry must not set the bridge bit");
    let accepted = ConnAck {
        session_present: false,
        reason: ReasonCode::Success,
        properties: Properties::default(),
    };
    write_packet(&mut second, &Packet::ConnAck(accepted));
    // The `1` notification, then the subscription to the `in` side of the pattern.
    let Packet::Publish(state) = read_packet(&mut second, &mut buf) else { panic!("PUBLISH") };
    assert_eq!((&state.payload[..], state.retain, state.qos), (&b"1"[..], true, QoS::AtLeastOnce));
    write_packet(&mut second, &Packet::PubAck(culex::protocol::Ack::new(state.packet_id.unwrap())));
    let Packet::Subscribe(subscribe) = read_packet(&mut second, &mut buf) else {
        panic!("SUBSCRIBE")
    };
    assert_eq!(subscribe.filters[0].0.as_str(), "myhouse/room1/#");
    assert_eq!(subscribe.filters[0].1.qos, QoS::AtLeastOnce);
    let granted = SubAck {
        packet_id: subscribe.packet_id,
        properties: Properties::default(),
        reasons: vec![ReasonCode::GrantedQos1],
    };
    write_packet(&mut second, &Packet::SubAck(granted));
    // An `out`-only pattern is unsubscribed remotely (bridge_attempt_unsubscribe).
    let Packet::Unsubscribe(unsubscribe) = read_packet(&mut second, &mut buf) else {
        panic!("UNSUBSCRIBE")
    };
    assert_eq!(unsubscribe.filters[0].as_str(), "room2/#");
}

/// While the link is down the bridge's queue holds `max_queued_messages`; what does not fit is
/// dropped, counted and logged, and what was queued goes out in order when the link returns.
#[test]
fn a_full_bridge_queue_drops_the_newest_and_says_so() {
    let Some(mut leaf) = Node::start(Culex, "127.0.0.88", "") else { return };
    let bridge = format!(
        "max_queued_messages 5\nconnection queue\naddress {}\ntopic room1/# out 1 sensor/ myhouse/\n\
         restart_timeout 1\ncleansession false\n",
        leaf.address()
    );
    let Some(master) = Node::start(Culex, "127.0.0.53", &bridge) else { return };
    let mut on_leaf = subscriber_with(
        &leaf,
        "queue-sub",
        "myhouse/room1/#",
        ConnectOptions { clean_start: false, ..Default::default() },
    );
    await_route(&master, "sensor/room1/probe", &mut on_leaf, &[&master, &leaf]);
    drop(on_leaf);
    leaf.kill();
    // The master notices at once (the socket closes); then eight messages for five places.
    // One publisher: MQTT orders the messages of one client, not those of several (one per
    // message, on different shards, may reach the bridge's shard in either order).
    std::thread::sleep(Duration::from_millis(300));
    let (mut publisher, _) = RawClient::connect_addr(master.addr(), "", ConnectOptions::default());
    for n in 0..8 {
        publisher.publish("sensor/room1/q", n.to_string().as_bytes(), QoS::AtLeastOnce, false);
    }
    publisher.disconnect();
    // The leaf returns empty (no persistence): the subscriber subscribes again.
    leaf.spawn();
    let mut on_leaf = subscriber(&leaf, "queue-sub", "myhouse/room1/#");
    let mut got = Vec::new();
    let deadline = Instant::now() + LINK_WAIT;
    while got.len() < 5 && Instant::now() < deadline {
        if let Some(Packet::Publish(p)) = on_leaf.recv_within(Duration::from_millis(250)) {
            on_leaf.acknowledge(&p);
            if &p.payload[..] != b"probe" {
                got.push(String::from_utf8_lossy(&p.payload).into_owned());
            }
        }
    }
    assert_eq!(got, ["0", "1", "2", "3", "4"], "{}", master.log());
    on_leaf.expect_silence();
    assert!(master.log().contains("dropped=3"), "{}", master.log());
}

/// `bridge_outgoing_retain false` strips the retain flag on the way out; a topic line with an
/// empty pattern renames one topic; `bridge_max_packet_size` keeps larger messages home
/// (counted, logged); `bridge_bind_address` is the link's source address.
#[test]
fn outgoing_options() {
    let Some(leaf) = Node::start(Culex, "127.0.0.88", "") else { return };
    let bridge = format!(
        "connection options\naddress {}\ntopic \"\" out 1 plant/line1/temp remote/t1\n\
         topic probe out 0\ntopic big/# out 1\nbridge_outgoing_retain false\n\
         bridge_max_packet_size 100\nbridge_bind_address 127.0.0.77\nremote_clientid opts-bridge\n",
        leaf.address()
    );
    let Some(master) = Node::start(Culex, "127.0.0.53", &bridge) else { return };
    let mut on_leaf = subscriber(&leaf, "options-sub", "#");
    await_route(&master, "probe", &mut on_leaf, &[&master, &leaf]);
    drain(&mut [&mut on_leaf]);
    publish(&master, "plant/line1/temp", "80", QoS::AtLeastOnce, true);
    let publish_ = on_leaf.receive();
    assert_eq!((&*publish_.topic, &publish_.payload[..]), ("remote/t1", &b"80"[..]));
    assert!(!publish_.retain, "bridge_outgoing_retain false must strip the flag");
    on_leaf.expect_silence();

    publish(&master, "big/a", &"x".repeat(200), QoS::AtLeastOnce, false);
    publish(&master, "big/b", "small", QoS::AtLeastOnce, false);
    expect_exactly(&mut on_leaf, "big/b", "small");
    assert!(master.log().contains("larger than the peer accepts"), "{}", master.log());

    let bridge_line = leaf
        .log()
        .lines()
        .find(|l| l.contains("new client connecting") && l.contains("client_id=opts-bridge"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(bridge_line.contains("peer=127.0.0.77:"), "{bridge_line}");
}

/// `notification_topic` replaces the `$SYS` topic; `notifications_local_only` keeps the state
/// off the remote (and out of the bridge's will).
#[test]
fn notification_topic_and_local_only() {
    let Some(leaf) = Node::start(Culex, "127.0.0.88", "") else { return };
    let bridge = tutorial_connection(
        "nt",
        &leaf,
        "mqttv311",
        "notification_topic bridges/nt/state\nnotifications_local_only true\n",
    );
    let Some(master) = Node::start(Culex, "127.0.0.53", &bridge) else { return };
    let mut local = subscriber(&master, "nt-local", "bridges/nt/state");
    await_payload(&mut local, "1", "local state on notification_topic", &[&master, &leaf]);
    let mut on_leaf = subscriber(&leaf, "nt-sub", "myhouse/room1/#");
    await_route(&master, "sensor/room1/probe", &mut on_leaf, &[&master, &leaf]);
    let mut remote = subscriber(&leaf, "nt-remote", "bridges/#");
    remote.expect_silence();
}

/// A peer that stops answering (SIGSTOP: its sockets stay open) is noticed by keep alive:
/// PINGREQ after `keepalive_interval` quiet, the link given up when it goes unanswered as
/// long; the link returns when the peer does.
#[test]
fn keep_alive_notices_a_frozen_peer() {
    let Some(leaf) = Node::start(Culex, "127.0.0.88", "") else { return };
    let bridge = tutorial_connection(
        "ka",
        &leaf,
        "mqttv311",
        "keepalive_interval 5\nremote_clientid ka-bridge\nrestart_timeout 1\n",
    );
    let Some(master) = Node::start(Culex, "127.0.0.53", &bridge) else { return };
    let mut state = subscriber(&master, "ka-state", "$SYS/broker/connection/ka-bridge/state");
    await_payload(&mut state, "1", "link up", &[&master, &leaf]);
    let pid = leaf.child.as_ref().unwrap().id() as i32;
    // SAFETY: kill(2) with a pid we own.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    await_payload(&mut state, "0", "frozen peer noticed", &[&master]);
    assert!(master.log().contains("reason=KeepAliveTimeout"), "{}", master.log());
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    await_payload(&mut state, "1", "link back", &[&master, &leaf]);
}

/// The ACL file does not apply to a bridge's own session in Mosquitto 2.0: `local_username`
/// names that session and restricts nothing (probed on 2.0.11). Culex does the same, so a
/// master moved from Mosquitto to Culex forwards what it forwarded before.
fn acl_file_leaves_the_bridge_unrestricted(master_kind: Kind) {
    let files = common::TempDir::new();
    let acl = files.0.join("acl");
    // Anonymous clients may do anything; the bridge's user only allowed/#.
    std::fs::write(&acl, "topic readwrite #\nuser bridge-user\ntopic readwrite allowed/#\n")
        .unwrap();
    // Mosquitto started as root reads it as the `mosquitto` user.
    for (path, mode) in [(&files.0, 0o755), (&acl, 0o644)] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let Some(leaf) = Node::start(Culex, "127.0.0.88", "") else { return };
    let bridge = format!(
        "acl_file {}\nconnection acl\naddress {}\ntopic # both 1\nlocal_username bridge-user\n",
        acl.display(),
        leaf.address()
    );
    let Some(master) = Node::start(master_kind, "127.0.0.53", &bridge) else { return };
    let logs = [&master, &leaf];
    let mut on_leaf = subscriber(&leaf, "acl-leaf-sub", "#");
    let mut on_master = subscriber(&master, "acl-master-sub", "#");
    await_route(&master, "allowed/probe", &mut on_leaf, &logs);
    await_route(&leaf, "allowed/probe", &mut on_master, &logs);
    drain(&mut [&mut on_leaf, &mut on_master]);

    publish(&master, "denied/out", "m", QoS::AtLeastOnce, false);
    expect_exactly(&mut on_leaf, "denied/out", "m");
    expect_exactly(&mut on_master, "denied/out", "m");
    publish(&leaf, "denied/in", "l", QoS::AtLeastOnce, false);
    expect_exactly(&mut on_master, "denied/in", "l");
    expect_exactly(&mut on_leaf, "denied/in", "l");
}

#[test]
fn acl_file_leaves_the_bridge_unrestricted_culex_master() {
    acl_file_leaves_the_bridge_unrestricted(Culex);
}

#[test]
fn acl_file_leaves_the_bridge_unrestricted_mosquitto_master() {
    acl_file_leaves_the_bridge_unrestricted(Mosquitto);
}

// ---- Over TLS ----------------------------------------------------------------------------------

/// The leaf's TLS listener, requiring a client certificate from `ca`, beside its plain one.
fn tls_leaf(kind: Kind, ca: &pki::Ca, host: &str, port: u16, server: &pki::Issued) -> Option<Node> {
    let listener = format!(
        "listener {port} {host}\ncertfile {}\nkeyfile {}\ncafile {}\nrequire_certificate true\n",
        server.cert.display(),
        server.key.display(),
        ca.cert.display()
    );
    Node::start(kind, "127.0.0.88", &listener)
}

/// The tutorial's connection over TLS, with the bridge's own certificate.
fn tls_connection(address: &str, ca: &pki::Ca, client: &pki::Issued, extra: &str) -> String {
    format!(
        "connection master\naddress {address}\ntopic room1/# both 2 sensor/ myhouse/\n\
         cleansession true\nrestart_timeout 1\nbridge_cafile {}\nbridge_certfile {}\n\
         bridge_keyfile {}\n{extra}",
        ca.cert.display(),
        client.cert.display(),
        client.key.display()
    )
}

/// The tutorial's two servers bridged over TLS, a client certificate on the bridge and the leaf
/// requiring one: messages cross both ways at QoS 2.
fn two_servers_over_tls(master_kind: Kind, leaf_kind: Kind) {
    if !pki::available() {
        return;
    }
    let dir = common::TempDir::new();
    let ca = pki::Ca::new(&dir.0, "ca");
    let server = ca.server("leaf", pki::KeyType::EcP256);
    let client = ca.client("bridge", "/CN=bridge");
    let tls_port = common::free_port();
    let Some(leaf) = tls_leaf(leaf_kind, &ca, "127.0.0.88", tls_port, &server) else { return };
    let bridge = tls_connection(&format!("127.0.0.88:{tls_port}"), &ca, &client, "");
    let Some(master) = Node::start(master_kind, "127.0.0.53", &bridge) else { return };
    let logs = [&master, &leaf];
    let mut on_leaf = subscriber(&leaf, "leaf-sub", "myhouse/room1/#");
    let mut on_master = subscriber(&master, "master-sub", "sensor/room1/#");
    await_route(&master, "sensor/room1/probe", &mut on_leaf, &logs);
    await_route(&leaf, "myhouse/room1/probe", &mut on_master, &logs);
    drain(&mut [&mut on_leaf, &mut on_master]);
    publish(&master, "sensor/room1/temperature", "26.3", QoS::ExactlyOnce, false);
    expect_exactly(&mut on_leaf, "myhouse/room1/temperature", "26.3");
    expect_exactly(&mut on_master, "sensor/room1/temperature", "26.3");
    publish(&leaf, "myhouse/room1/humidity", "40", QoS::ExactlyOnce, false);
    expect_exactly(&mut on_master, "sensor/room1/humidity", "40");
    expect_exactly(&mut on_leaf, "myhouse/room1/humidity", "40");
}

#[test]
fn over_tls_culex_master_culex_leaf() {
    two_servers_over_tls(Culex, Culex);
}

#[test]
fn over_tls_culex_master_mosquitto_leaf() {
    two_servers_over_tls(Culex, Mosquitto);
}

#[test]
fn over_tls_mosquitto_master_culex_leaf() {
    two_servers_over_tls(Mosquitto, Culex);
}

/// The peer's certificate is checked against the CA and against the host name dialled (which
/// also goes out in SNI); `bridge_insecure true` lets a name that does not match pass, never a
/// certificate from another CA.
#[test]
fn a_culex_bridge_checks_the_peers_certificate_and_name() {
    if !pki::available() {
        return;
    }
    let dir = common::TempDir::new();
    let ca = pki::Ca::new(&dir.0, "ca");
    let other = pki::Ca::new(&dir.0, "other");
    let client = ca.client("bridge", "/CN=bridge");
    // A certificate for `localhost` only: dialled as 127.0.0.88 its name does not match.
    let server = ca.server_for("leaf", pki::KeyType::EcP256, "DNS:localhost");
    let tls_port = common::free_port();
    let Some(leaf) = tls_leaf(Culex, &ca, "127.0.0.1", tls_port, &server) else { return };
    let mut on_leaf = subscriber(&leaf, "leaf-sub", "myhouse/room1/#");
    let mut crosses = |bridge: String| {
        let master = Node::start(Culex, "127.0.0.53", &bridge).unwrap();
        let deadline = Instant::now() + Duration::from_secs(4);
        let (mut prober, _) = RawClient::connect_addr(master.addr(), "", ConnectOptions::default());
        while Instant::now() < deadline {
            prober.publish("sensor/room1/probe", b"probe", QoS::AtMostOnce, false);
            if let Some(Packet::Publish(_)) = on_leaf.recv_within(Duration::from_millis(250)) {
                drain(&mut [&mut on_leaf]);
                return (true, master.log());
            }
        }
        (false, master.log())
    };
    let by_name = format!("localhost:{tls_port}");
    let by_address = format!("127.0.0.1:{tls_port}");
    let (crossed, log) = crosses(tls_connection(&by_name, &ca, &client, ""));
    assert!(crossed, "dialled by the name in its certificate: {log}");
    let (crossed, log) = crosses(tls_connection(&by_address, &ca, &client, ""));
    assert!(!crossed && log.contains("bridge cannot connect"), "an address not in it: {log}");
    let insecure = "bridge_insecure true\n";
    let (crossed, log) = crosses(tls_connection(&by_address, &ca, &client, insecure));
    assert!(crossed, "bridge_insecure lets the name pass: {log}");
    assert!(log.contains("bridge_insecure true"), "and says so: {log}");
    let stranger = tls_connection(&by_name, &other, &client, insecure);
    let (crossed, log) = crosses(stranger);
    assert!(!crossed, "a peer from another CA is refused, insecure or not: {log}");
}
