//! Test harness: the real `culex` binary on a free loopback port, a raw MQTT client built on our
//! codec (for exact packets and malformed input), and the Mosquitto tools when present. Every
//! wait has a timeout.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

pub mod node;
pub mod pki;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use culex::protocol::{
    Ack, Connect, LastWill, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, Subscribe,
    SubscriptionOptions, TopicFilter, TopicName, PACKET_SIZE_MAX,
};

pub const WAIT: Duration = Duration::from_secs(5);

/// A running broker, killed on drop.
pub struct Broker {
    pub port: u16,
    child: Child,
    pub log: PathBuf,
    dir: TempDir,
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "culex-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Broker {
    /// Starts `culex` with a listener on a free loopback port, anonymous access, two shards, and
    /// the extra config lines given.
    pub fn start(extra_config: &str) -> Broker {
        let port = free_port();
        let config =
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nshards 2\n{extra_config}\n");
        Self::start_with_config(port, &config)
    }

    pub fn start_with_config(port: u16, config: &str) -> Broker {
        Self::launch(port, config, true)
    }

    /// As `start`, without `-v` and the test log filter: the configuration's logging options
    /// alone decide what is logged (stderr still goes to `log_text`).
    pub fn start_as_configured(extra_config: &str) -> Broker {
        let port = free_port();
        let config = format!("listener {port} 127.0.0.1\nallow_anonymous true\n{extra_config}\n");
        Self::launch(port, &config, false)
    }

    fn launch(port: u16, config: &str, verbose: bool) -> Broker {
        let dir = TempDir::new();
        let conf = dir.0.join("culex.conf");
        std::fs::write(&conf, config.replace("{dir}", &dir.0.display().to_string())).unwrap();
        let log = dir.0.join("culex.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_culex"));
        command.arg("-c").arg(&conf).env_remove("CULEX_LOG");
        if verbose {
            command.arg("-v").env("CULEX_LOG", "info");
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("culex binary runs");
        let broker = Broker { port, child, log, dir };
        broker.wait_listening();
        broker
    }

    /// Waits for an MQTT answer, not just a TCP accept: the listener of a broker just killed
    /// on the same port lingers a moment and accepts without ever answering.
    fn wait_listening(&self) {
        let deadline = Instant::now() + WAIT;
        while !answers_mqtt(self.addr()) {
            assert!(Instant::now() < deadline, "broker did not listen: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The broker's own directory (configurations may name it as `{dir}`).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir.0
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The shard a client was placed on, read from the broker's connect log line.
    pub fn shard_of(&self, client_id: &str) -> usize {
        let needle = format!("client_id={client_id} ");
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.log_text();
            let line = text
                .lines()
                .rev()
                .find(|l| l.contains("new client connecting") && l.contains(&needle));
            if let Some(line) = line {
                let shard = line.split("shard=").nth(1).and_then(|r| r.split(' ').next()).unwrap();
                return shard.parse().unwrap();
            }
            assert!(Instant::now() < deadline, "no connect line for {client_id}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking MQTT client that speaks exact packets through our codec.
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    /// Packets that arrived while a handshake waited for another one, returned first.
    stash: std::collections::VecDeque<Packet>,
    pub version: ProtocolVersion,
    next_id: u16,
}

pub struct ConnectOptions {
    pub version: ProtocolVersion,
    pub clean_start: bool,
    pub keep_alive_secs: u16,
    pub will: Option<LastWill>,
    pub properties: Properties,
    /// Username and password.
    pub login: Option<(&'static str, &'static str)>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            version: ProtocolVersion::V311,
            clean_start: true,
            keep_alive_secs: 60,
            will: None,
            properties: Properties::default(),
            login: None,
        }
    }
}

pub fn will(topic: &str, payload: &str, qos: QoS, retain: bool) -> LastWill {
    LastWill {
        topic: TopicName::new(topic.to_string()).unwrap(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain,
        properties: Properties::default(),
    }
}

impl RawClient {
    pub fn open(broker: &Broker) -> RawClient {
        Self::open_addr(broker.addr())
    }

    pub fn open_addr(addr: SocketAddr) -> RawClient {
        Self::try_open_addr(addr).unwrap()
    }

    /// As `open_addr`, or the error while nothing listens at `addr` (a broker restarting).
    pub fn try_open_addr(addr: SocketAddr) -> std::io::Result<RawClient> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(WAIT)).unwrap();
        // A broker that stops reading fails the test instead of hanging it.
        stream.set_write_timeout(Some(WAIT * 6)).unwrap();
        stream.set_nodelay(true).unwrap();
        Ok(RawClient {
            stream,
            buf: BytesMut::new(),
            stash: Default::default(),
            version: ProtocolVersion::V311,
            next_id: 0,
        })
    }

    /// Opens a connection and completes CONNECT/CONNACK, asserting success.
    pub fn connect(broker: &Broker, client_id: &str, options: ConnectOptions) -> (RawClient, bool) {
        Self::connect_addr(broker.addr(), client_id, options)
    }

    pub fn connect_addr(
        addr: SocketAddr,
        client_id: &str,
        options: ConnectOptions,
    ) -> (RawClient, bool) {
        let mut client = RawClient::open_addr(addr);
        match client.handshake(client_id, options) {
            Packet::ConnAck(ack) if !ack.reason.is_error() => (client, ack.session_present),
            other => panic!("CONNECT of {client_id} refused: {other:?}"),
        }
    }

    pub fn handshake(&mut self, client_id: &str, options: ConnectOptions) -> Packet {
        self.try_handshake(client_id, options).expect("CONNACK")
    }

    /// Sends CONNECT; `None` when the broker closes the connection without a CONNACK.
    pub fn try_handshake(&mut self, client_id: &str, options: ConnectOptions) -> Option<Packet> {
        self.version = options.version;
        self.try_send(&Packet::Connect(Box::new(Connect {
            protocol: options.version,
            bridge: false,
            clean_start: options.clean_start,
            keep_alive_secs: options.keep_alive_secs,
            properties: options.properties,
            client_id: client_id.into(),
            will: options.will,
            username: options.login.map(|(username, _)| username.into()),
            password: options.login.map(|(_, password)| Bytes::from_static(password.as_bytes())),
        })))
        .ok()?;
        self.recv()
    }

    pub fn send(&mut self, packet: &Packet) {
        self.try_send(packet).unwrap();
    }

    /// As `send`, telling a closed connection as an error.
    pub fn try_send(&mut self, packet: &Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        packet.encode(self.version, &mut out);
        self.try_write_raw(&out)
    }

    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// As `write_raw`, telling a closed connection (a reset) as an error.
    pub fn try_write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next packet, or `None` if the broker closed the connection (or nothing came in time).
    pub fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT)
    }

    pub fn recv_within(&mut self, timeout: Duration) -> Option<Packet> {
        if let Some(packet) = self.stash.pop_front() {
            return Some(packet);
        }
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        loop {
            if let Some(packet) =
                Packet::decode(&mut self.buf, self.version, PACKET_SIZE_MAX).unwrap()
            {
                return Some(packet);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Asserts that nothing arrives for a short while.
    pub fn expect_silence(&mut self) {
        if let Some(packet) = self.recv_within(Duration::from_millis(300)) {
            panic!("expected nothing, got {packet:?}");
        }
    }

    /// Whether the broker closed the connection (reading gives EOF within the wait).
    pub fn is_closed_by_broker(&mut self) -> bool {
        self.stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut chunk = [0u8; 64];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    pub fn packet_id(&mut self) -> PacketId {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        PacketId::new(self.next_id).unwrap()
    }

    /// Subscribes and waits for the SUBACK, returning its reason codes.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<culex::protocol::ReasonCode> {
        let packet_id = self.packet_id();
        let options = SubscriptionOptions { qos, ..Default::default() };
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            properties: Properties::default(),
            filters: vec![(TopicFilter::new(filter.to_string()).unwrap(), options)],
        }));
        // "The Server is permitted to start sending PUBLISH Packets matching the Subscription
        // before the Server sends the SUBACK Packet" (MQTT 3.1.1, 3.8.4): those are kept for
        // the next `recv`.
        let mut early = Vec::new();
        loop {
            match self.recv() {
                Some(Packet::SubAck(suback)) if suback.packet_id == packet_id => {
                    self.stash.extend(early);
                    return suback.reasons;
                }
                Some(packet @ Packet::Publish(_)) => early.push(packet),
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
    }

    /// Publishes and completes the QoS handshake.
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.packet_id());
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: TopicName::new(topic.to_string()).unwrap(),
            packet_id,
            properties: Properties::default(),
            payload: Bytes::copy_from_slice(payload),
        }));
        match qos {
            QoS::AtMostOnce => {}
            // A client subscribed to its own topic may get the message first (as Mosquitto
            // sends it): it is kept for `recv`.
            QoS::AtLeastOnce => {
                self.await_packet(
                    |p| matches!(p, Packet::PubAck(a) if Some(a.packet_id) == packet_id),
                );
            }
            QoS::ExactlyOnce => {
                let id = packet_id.unwrap();
                self.await_packet(|p| matches!(p, Packet::PubRec(a) if a.packet_id == id));
                self.send(&Packet::PubRel(Ack::new(id)));
                self.await_packet(|p| matches!(p, Packet::PubComp(a) if a.packet_id == id));
            }
        }
    }

    /// Receives one PUBLISH and acknowledges it as its QoS requires.
    pub fn receive(&mut self) -> Publish {
        match self.recv() {
            Some(Packet::Publish(publish)) => {
                self.acknowledge(&publish);
                publish
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    pub fn acknowledge(&mut self, publish: &Publish) {
        match (publish.qos, publish.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.send(&Packet::PubAck(Ack::new(id))),
            (QoS::ExactlyOnce, Some(id)) => {
                self.send(&Packet::PubRec(Ack::new(id)));
                self.await_packet(|p| matches!(p, Packet::PubRel(a) if a.packet_id == id));
                self.send(&Packet::PubComp(Ack::new(id)));
            }
            _ => {}
        }
    }

    /// Waits for a packet `wanted` accepts; others that arrive meanwhile are kept for `recv`.
    fn await_packet(&mut self, wanted: impl Fn(&Packet) -> bool) {
        let mut others = Vec::new();
        loop {
            match self.recv() {
                Some(packet) if wanted(&packet) => break,
                Some(packet) => others.push(packet),
                None => panic!("connection ended while waiting; got {others:?}"),
            }
        }
        self.stash.extend(others);
    }

    pub fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Default::default()));
    }

    /// This end's address: the broker's socket for this connection has it as its peer.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    /// Drops the connection without DISCONNECT (an abnormal close).
    pub fn drop_connection(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// The bytes of a packet built by hand, for what our own encoder would refuse to build: the
/// first byte of the fixed header, then `body` after its Remaining Length.
pub fn raw_packet(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut packet = vec![first_byte];
    packet.extend(varint(body.len()));
    packet.extend_from_slice(body);
    packet
}

/// A Variable Byte Integer (a Remaining Length, a property length), built by hand.
pub fn varint(mut value: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            return out;
        }
    }
}

/// An MQTT string (two length bytes, then the bytes), for `raw_packet` bodies.
pub fn mqtt_string(text: &str) -> Vec<u8> {
    let mut out = u16::try_from(text.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

/// A SUBSCRIBE (`unsubscribe`: an UNSUBSCRIBE) of one filter with packet id 1, whatever the
/// filter, built by hand.
pub fn raw_subscription(version: ProtocolVersion, filter: &str, unsubscribe: bool) -> Vec<u8> {
    let mut body = vec![0, 1];
    if version.is_v5() {
        body.push(0); // no properties
    }
    body.extend(mqtt_string(filter));
    if !unsubscribe {
        body.push(1); // QoS 1
    }
    raw_packet(if unsubscribe { 0xa2 } else { 0x82 }, &body)
}

/// A QoS 1 PUBLISH with packet id 1 to any topic, built by hand.
pub fn raw_publish(version: ProtocolVersion, topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = mqtt_string(topic);
    body.extend([0, 1]);
    if version.is_v5() {
        body.push(0);
    }
    body.extend_from_slice(payload);
    raw_packet(0x32, &body)
}

/// A clean-start CONNECT with a will on any topic, built by hand.
pub fn raw_connect_with_will(version: ProtocolVersion, client_id: &str, topic: &str) -> Vec<u8> {
    let mut body = mqtt_string("MQTT");
    body.extend([version.level(), 0x02 | 0x04, 0, 60]);
    let properties: &[u8] = if version.is_v5() { &[0] } else { &[] };
    body.extend_from_slice(properties);
    body.extend(mqtt_string(client_id));
    body.extend_from_slice(properties);
    body.extend(mqtt_string(topic));
    body.extend(mqtt_string("gone"));
    raw_packet(0x10, &body)
}

/// `mosquitto_pub` and `mosquitto_sub`.
pub struct MosquittoTools {
    pub publish: PathBuf,
    pub subscribe: PathBuf,
}

/// Both tools, or `None` (a loud skip locally, a failure under CI).
pub fn mosquitto_tools() -> Option<MosquittoTools> {
    Some(MosquittoTools {
        publish: mosquitto_tool("mosquitto_pub")?,
        subscribe: mosquitto_tool("mosquitto_sub")?,
    })
}

/// Starts `mosquitto_sub` against `port` with `args` and returns once `broker` has seen it
/// connect and subscribe.
pub fn mosquitto_sub(
    tools: &MosquittoTools,
    broker: &Broker,
    port: u16,
    client_id: &str,
    args: &[&str],
) -> Child {
    let child = Command::new(&tools.subscribe)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-i", client_id, "-W", "10"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    broker.shard_of(client_id);
    // mosquitto_sub subscribes right after CONNACK; give the SUBACK a moment.
    std::thread::sleep(Duration::from_millis(300));
    child
}

/// Whether python3 with paho-mqtt is here. Missing: a loud skip locally, a failure under CI.
pub fn paho_available() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import paho.mqtt.client"])
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let message = "python3 with paho-mqtt is not installed: pip install paho-mqtt";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message}");
        }
        eprintln!("\n!!!!!! SKIPPED: {message} !!!!!!\n");
    }
    found
}

/// The text `GET /metrics` answers on a `metrics_listener` port.
pub fn scrape_metrics(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.split_once("\r\n\r\n").map_or(answer.clone(), |(_, body)| body.to_string())
}

/// `promtool check metrics` on `text` (names, types, units, help): panics with what it said
/// unless it accepts the text silently. Without promtool: a loud skip locally, a failure
/// under CI.
pub fn promtool_accepts(text: &str) {
    let Some(promtool) = tool("promtool", "prometheus") else { return };
    let mut check = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool: {said}");
}

/// The sum of a metric's samples over its labels (shards), of those whose labels contain
/// `labels` (e.g. `reason="offline"`; empty: all).
pub fn metric_sum(text: &str, name: &str, labels: &str) -> u64 {
    let prefix = format!("{name}{{");
    let samples = text.lines().filter(|line| line.starts_with(&prefix) && line.contains(labels));
    samples.filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok()).sum()
}

/// Finds a Mosquitto tool. Missing: a loud skip locally, a failure under CI.
pub fn mosquitto_tool(name: &str) -> Option<PathBuf> {
    tool(name, "mosquitto mosquitto-clients")
}

/// Finds a tool Debian's `packages` install. Missing: a loud skip locally, a failure under CI.
pub fn tool(name: &str, packages: &str) -> Option<PathBuf> {
    let found = ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"]
        .iter()
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|path| path.exists());
    if found.is_none() {
        let message = format!("{name} is not installed: apt-get install {packages}");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message}");
        }
        eprintln!("\n!!!!!! SKIPPED: {message} !!!!!!\n");
    }
    found
}

/// Connects clients with the given ids until two are on different shards; returns their ids'
/// indexes as (a, b). With SO_REUSEPORT the kernel picks the shard, so the test asks the log.
pub fn clients_on_different_shards(
    broker: &Broker,
    prefix: &str,
    options: impl Fn() -> ConnectOptions,
) -> (RawClient, String, RawClient, String) {
    let (first, _) = RawClient::connect(broker, &format!("{prefix}-0"), options());
    let first_shard = broker.shard_of(&format!("{prefix}-0"));
    for attempt in 1..64 {
        let id = format!("{prefix}-{attempt}");
        let (client, _) = RawClient::connect(broker, &id, options());
        if broker.shard_of(&id) != first_shard {
            return (first, format!("{prefix}-0"), client, id);
        }
        client.disconnect();
    }
    panic!("64 connections all landed on one shard");
}

/// Whether the broker process `pid` has TCP_NODELAY on its socket connected to `client`. The
/// socket is borrowed with pidfd_getfd(2), which needs root or the broker's own user.
pub fn broker_side_nodelay(pid: u32, client: SocketAddr) -> bool {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: pidfd_open returns a new descriptor (or -1), owned here from now on.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    assert!(pidfd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    let _pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if !is_socket {
            continue;
        }
        // SAFETY: pidfd_getfd returns a new descriptor (or -1) for the broker's socket, owned
        // by the TcpStream, which closes only this copy.
        let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) } as i32;
        if copy < 0 {
            continue;
        }
        let socket = unsafe { TcpStream::from_raw_fd(copy) };
        if socket.peer_addr().ok() == Some(client) {
            return socket.nodelay().unwrap();
        }
    }
    panic!("process {pid} has no socket connected to {client}");
}

/// Whether a broker on `addr` answers a CONNECT with a CONNACK (whatever its code).
/// Resident memory of process `pid`, in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// How long a soak runs: `CULEX_SOAK_SECONDS`, else 120 s under CI and 20 s otherwise.
pub fn soak_seconds() -> u64 {
    let default = if std::env::var_os("CI").is_some() { 120 } else { 20 };
    std::env::var("CULEX_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

pub fn answers_mqtt(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let connect = culex::protocol::Connect {
        keep_alive_secs: 10,
        ..culex::protocol::Connect::new(ProtocolVersion::V311, "readiness-probe")
    };
    let mut out = BytesMut::new();
    Packet::Connect(Box::new(connect)).encode(ProtocolVersion::V311, &mut out);
    let mut answer = [0u8; 4];
    stream.write_all(&out).is_ok() && stream.read_exact(&mut answer).is_ok() && answer[0] == 0x20
}
