//! Byte for byte with Mosquitto: every conversation in `table.rs` is played by raw sockets
//! against a real Mosquitto and a real Culex started with the same configuration, and every
//! byte each broker sends back is compared. Where MQTT leaves a choice, tools and test suites
//! written against Mosquitto expect its choice; where Culex answers otherwise on purpose, the
//! conversation is listed in `INTENDED` with the reason, and the list is checked to stay true
//! (an entry whose conversation no longer differs fails the test).

#[path = "../common/mod.rs"]
mod common;
mod packets;
mod table;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::node::{Kind, Node};

/// What a conversation does, step by step; clients are numbered from 0 (shown as A, B, ...) and
/// each opens its socket on its first `Send`.
pub enum Step {
    /// The client writes these bytes.
    Send(usize, Vec<u8>),
    /// The client reads this many packets, each recorded (or that it got nothing, or closed).
    Recv(usize, usize),
    /// The client waits for the broker to close its socket, recording what comes first.
    Gone(usize),
    /// The client records whatever arrives within `QUIET` (usually: nothing).
    Quiet(usize),
    /// The client closes its socket without a DISCONNECT.
    Drop(usize),
    /// Time passes (a will's delay, a message's expiry).
    Pause(Duration),
}

pub struct Conversation {
    pub name: String,
    pub steps: Vec<Step>,
}

/// Where the brokers differ on purpose: a conversation name prefix, and why. The README's
/// "Where Culex answers differently from Mosquitto" says the same for users.
const INTENDED: &[(&str, &str)] = &[
    // Session takeover.
    ("connect v5 takeover", TAKEN_OVER),
    ("will v5 sent when taken over", TAKEN_OVER),
    // Errors Mosquitto 2.0.11 answers by closing the connection without a word.
    ("bad connect v5 second CONNECT", SAYS_WHY),
    ("malformed v5 PUBACK with packet id 0", SAYS_WHY),
    ("malformed v5 PUBREL with packet id 0", SAYS_WHY),
    ("malformed v5 AUTH", SAYS_WHY),
    ("malformed v5 CONNACK from a client", SAYS_WHY),
    ("malformed v5 remaining length of five bytes", SAYS_WHY),
    ("malformed v5 DISCONNECT with", SAYS_WHY),
    ("malformed v5 PUBLISH user property not UTF-8", SAYS_WHY),
    // What Mosquitto 2.0.11 accepts and MQTT does not.
    (
        "malformed v3.1.1 PINGREQ with a body",
        "a PINGREQ has no body (Remaining Length 0): \
        Culex closes the connection as for any malformed packet; Mosquitto answers it",
    ),
    ("malformed v5 PINGREQ with a body", "as for 3.1.1, with DISCONNECT 0x81"),
    ("v3.1.1 shared subscription $share/", BAD_SHARE),
    ("v5 shared subscription $share/", BAD_SHARE),
    (
        "v5 shared subscription with no local",
        "No Local on a shared subscription is a Protocol \
        Error [MQTT-3.8.3-4]: Culex disconnects (0x82); Mosquitto grants it",
    ),
    ("v3.1.1 shared subscription", SHARED_RETAINED),
    ("v5 shared subscription", SHARED_RETAINED),
    (
        "v3.1.1 overlapping filters",
        "a message matching several of a 3.1.1 client's \
        subscriptions is delivered at the highest of their QoS [MQTT-3.3.5-1]; Mosquitto \
        2.0.11 delivers it once at the QoS of the first subscription",
    ),
    (
        "limits v5 receive maximum 2 exceeded",
        "a 5.0 client past the Receive Maximum it was \
        given is disconnected with 0x93, as MQTT 5.0 3.3.4 says; Mosquitto 2.0.11 refuses the \
        message (PUBREC 0x97) and keeps the connection",
    ),
    (
        "malformed v5 PUBLISH payload format 1, payload not UTF-8",
        "MQTT lets the receiver check \
        a payload that claims to be UTF-8 [MQTT-3.3.2-4]: Culex refuses it (PUBACK 0x99) \
        rather than pass a false claim on; Mosquitto passes it on",
    ),
    // Choices MQTT leaves open, where Culex's costs less.
    (
        "v5 overlapping filters",
        "a message matching several of a 5.0 client's subscriptions \
        goes once, at the highest QoS, with every subscription identifier (MQTT 5.0 3.3.4 \
        allows it); Mosquitto sends one copy per subscription",
    ),
    (
        "topic alias to a subscriber that allows them",
        "to a 5.0 client that announces a Topic \
        Alias Maximum, Culex sends a topic once and its alias after; Mosquitto 2.0 sends every \
        topic in full",
    ),
    (
        "v5 no local=false QoS 2 to own",
        "a QoS 2 message is delivered when its PUBLISH arrives \
        (MQTT 4.3.3 allows either moment); Mosquitto delivers it on PUBREL, a round trip later",
    ),
];

const TAKEN_OVER: &str = "the connection a new one with the same client id takes over is told \
    DISCONNECT 0x8E before it is closed [MQTT-3.1.4-3]; Mosquitto 2.0.11 closes it silently";
const SAYS_WHY: &str = "a 5.0 client whose packet breaks the protocol is told why, DISCONNECT \
    with the reason code, before the connection closes (MQTT 5.0 4.13.1: it SHOULD be)";
const BAD_SHARE: &str = "`$share/g` and `$share//t` are not shared subscriptions (a share name \
    of one character at least, then a filter [MQTT-4.8.2-1]): Culex refuses the SUBSCRIBE as \
    malformed; Mosquitto 2.0.11 grants a subscription to that text";
const SHARED_RETAINED: &str = "retained messages go to new non-shared subscriptions only (MQTT \
    5.0 3.3.1.3), for 3.1.1 clients too; Mosquitto 2.0.11 sends them to shared ones as well";

/// How long a client waits for a packet it expects, or for a close.
const EXPECT: Duration = Duration::from_secs(3);
/// How long `Quiet` listens.
const QUIET: Duration = Duration::from_millis(250);
/// Conversations played at once against one broker: they share nothing (each has its own
/// client ids and topics), so they may overlap.
const PARALLEL: usize = 16;

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

enum Got {
    Packet(Vec<u8>),
    Closed,
    Nothing,
}

impl Client {
    /// The next whole packet within `wait`.
    fn read(&mut self, wait: Duration) -> Got {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(len) = whole_packet(&self.buf) {
                return Got::Packet(self.buf.drain(..len).collect());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Nothing;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Got::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Got::Nothing
                }
                Err(_) => return Got::Closed,
            }
        }
    }
}

/// The length of the packet at the start of `buf`, once all of it is there.
fn whole_packet(buf: &[u8]) -> Option<usize> {
    let mut length = 0usize;
    for (i, byte) in buf.iter().enumerate().skip(1).take(4) {
        length |= usize::from(byte & 0x7f) << (7 * (i - 1));
        if byte & 0x80 == 0 {
            let total = i + 1 + length;
            return (buf.len() >= total).then_some(total);
        }
    }
    None
}

/// Plays `conversation` against the broker at `addr`: what the clients saw, a line each.
fn play(addr: SocketAddr, conversation: &Conversation) -> Vec<String> {
    let mut clients: Vec<Option<Client>> = Vec::new();
    let mut seen = Vec::new();
    let who = |k: usize| char::from(b'A' + k as u8);
    for step in &conversation.steps {
        match step {
            Step::Send(k, bytes) => {
                if clients.len() <= *k {
                    clients.resize_with(k + 1, || None);
                }
                let client = clients[*k].get_or_insert_with(|| Client {
                    stream: TcpStream::connect(addr).unwrap(),
                    buf: Vec::new(),
                });
                if client.stream.write_all(bytes).is_err() {
                    seen.push(format!("{}: could not send", who(*k)));
                }
            }
            Step::Recv(k, count) => {
                let client = clients[*k].as_mut().expect("receiving before sending");
                record(client, who(*k), Some(*count), |_| EXPECT, Some("nothing"), &mut seen);
            }
            Step::Gone(k) => {
                let client = clients[*k].as_mut().expect("closing before sending");
                record(client, who(*k), None, |_| EXPECT, Some("still open"), &mut seen);
            }
            Step::Quiet(k) => {
                let client = clients[*k].as_mut().expect("listening before sending");
                let deadline = Instant::now() + QUIET;
                let left = |now: Instant| deadline.saturating_duration_since(now);
                record(client, who(*k), None, left, None, &mut seen);
            }
            Step::Drop(k) => clients[*k] = None,
            Step::Pause(time) => std::thread::sleep(*time),
        }
    }
    seen
}

/// Writes into `seen` what `client` (shown as `who`) reads: up to `count` packets (all that
/// come, if `None`), each read waiting `wait(now)`; then `closed` if the broker closed the
/// connection, or `silence` if nothing came within the wait.
fn record(
    client: &mut Client,
    who: char,
    count: Option<usize>,
    wait: impl Fn(Instant) -> Duration,
    silence: Option<&str>,
    seen: &mut Vec<String>,
) {
    for _ in 0..count.unwrap_or(usize::MAX) {
        match client.read(wait(Instant::now())) {
            Got::Packet(p) => seen.push(format!("{who} <- {}", show(&p))),
            Got::Closed => {
                seen.push(format!("{who}: closed"));
                return;
            }
            Got::Nothing => {
                seen.extend(silence.map(|s| format!("{who}: {s}")));
                return;
            }
        }
    }
}

/// A packet as hex after its type's name, with what is random in it masked: the value of an
/// Assigned Client Identifier.
fn show(packet: &[u8]) -> String {
    const NAMES: [&str; 16] = [
        "RESERVED",
        "CONNECT",
        "CONNACK",
        "PUBLISH",
        "PUBACK",
        "PUBREC",
        "PUBREL",
        "PUBCOMP",
        "SUBSCRIBE",
        "SUBACK",
        "UNSUBSCRIBE",
        "UNSUBACK",
        "PINGREQ",
        "PINGRESP",
        "DISCONNECT",
        "AUTH",
    ];
    let mut bytes: Vec<String> = packet.iter().map(|b| format!("{b:02x}")).collect();
    if packet[0] == 0x20 {
        mask_assigned_id(packet, &mut bytes);
    }
    format!("{} {}", NAMES[usize::from(packet[0] >> 4)], bytes.join(" "))
}

/// In a 5.0 CONNACK (fixed header of two bytes, flags, reason code, properties), the Assigned
/// Client Identifier's characters become `..`.
fn mask_assigned_id(packet: &[u8], shown: &mut [String]) {
    let Some(&properties_len) = packet.get(4) else { return };
    let mut at = 5;
    let end = (5 + usize::from(properties_len)).min(packet.len());
    while at < end {
        let id = packet[at];
        at += 1;
        let len = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => 1,
            0x13 | 0x21 | 0x22 | 0x23 => 2,
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            0x0b => packet[at..].iter().position(|b| b & 0x80 == 0).map_or(1, |p| p + 1),
            0x26 => {
                let name = 2 + usize::from(u16::from_be_bytes([packet[at], packet[at + 1]]));
                let value = packet[at + name..]
                    .get(..2)
                    .map_or(0, |l| 2 + usize::from(u16::from_be_bytes([l[0], l[1]])));
                name + value
            }
            _ => 2 + usize::from(u16::from_be_bytes([packet[at], packet[at + 1]])),
        };
        if id == 0x12 {
            for byte in shown.iter_mut().take((at + len).min(end)).skip(at + 2) {
                *byte = "..".to_string();
            }
        }
        at += len;
    }
}

/// A configuration both brokers start with, and the conversations played against it.
pub struct Setting {
    pub name: &'static str,
    /// mosquitto.conf lines after the listener (with `{files}` for the folder of `files`).
    pub config: &'static str,
    /// Users and passwords for `{files}/passwd`, written by the real `mosquitto_passwd`.
    pub users: &'static [(&'static str, &'static str)],
    /// Other files the configuration names, written before the brokers start: name, contents.
    pub files: Vec<(&'static str, String)>,
    pub conversations: Vec<Conversation>,
}

/// Plays every conversation of `setting` against a broker of `kind`: the transcripts in order.
fn transcripts(kind: Kind, setting: &Setting, files: &std::path::Path) -> Option<Vec<Vec<String>>> {
    let config = setting.config.replace("{files}", &files.display().to_string());
    let node = Node::start_configured(kind, "127.0.0.1", |port| {
        format!("listener {port} 127.0.0.1\n{config}\n")
    })?;
    let addr = node.addr();
    let conversations = &setting.conversations;
    let mut seen = vec![Vec::new(); conversations.len()];
    for (chunk, out) in conversations.chunks(PARALLEL).zip(seen.chunks_mut(PARALLEL)) {
        std::thread::scope(|scope| {
            let played: Vec<_> = chunk.iter().map(|c| scope.spawn(move || play(addr, c))).collect();
            for (slot, handle) in out.iter_mut().zip(played) {
                *slot = handle.join().unwrap();
            }
        });
    }
    Some(seen)
}

#[test]
fn every_conversation_gets_the_bytes_mosquitto_sends() {
    let mut differences = Vec::new();
    let mut stale: Vec<&str> = INTENDED.iter().map(|(name, _)| *name).collect();
    let mut played = 0;
    let mut intended = 0;
    for setting in table::settings() {
        let files = common::TempDir::new();
        for (name, contents) in &setting.files {
            std::fs::write(files.0.join(name), contents).unwrap();
        }
        for (user, password) in setting.users {
            let Some(passwd) = common::mosquitto_tool("mosquitto_passwd") else { return };
            let file = files.0.join("passwd");
            let create = if file.exists() { None } else { Some("-c") };
            let status = std::process::Command::new(passwd)
                .args(create)
                .arg("-b")
                .arg(&file)
                .args([user, password])
                .status()
                .unwrap();
            assert!(status.success(), "mosquitto_passwd failed");
            // Mosquitto started as root reads it as user `mosquitto`.
            let readable = std::os::unix::fs::PermissionsExt::from_mode(0o644);
            std::fs::set_permissions(&file, readable).unwrap();
        }
        let Some(ours) = transcripts(Kind::Culex, &setting, &files.0) else { return };
        let Some(theirs) = transcripts(Kind::Mosquitto, &setting, &files.0) else { return };
        for ((conversation, ours), theirs) in setting.conversations.iter().zip(ours).zip(theirs) {
            played += 1;
            let listed = INTENDED.iter().find(|(prefix, _)| conversation.name.starts_with(prefix));
            if ours == theirs {
                continue;
            }
            match listed {
                Some((prefix, _)) => {
                    intended += 1;
                    stale.retain(|p| p != prefix);
                }
                None => differences.push(format!(
                    "[{}] {}\n  Culex:\n    {}\n  Mosquitto:\n    {}",
                    setting.name,
                    conversation.name,
                    ours.join("\n    "),
                    theirs.join("\n    ")
                )),
            }
        }
    }
    eprintln!(
        "{played} conversations: {} differ unlisted, {intended} differ as listed",
        differences.len()
    );
    assert!(
        differences.is_empty(),
        "{} of {played} conversations differ from Mosquitto:\n{}",
        differences.len(),
        differences.join("\n")
    );
    assert!(stale.is_empty(), "listed as different, yet the same as Mosquitto: {stale:?}");
}

/// How long a bridge may take to dial its peer after its broker starts: generous, as twenty
/// brokers start at once beside the conversations' own (10 s once ran out for a Mosquitto in
/// CI on two loaded cores).
const DIAL: Duration = Duration::from_secs(30);
/// A bridge has said all it says on connecting once it is silent this long.
const SETTLED: Duration = Duration::from_millis(1500);

/// What a bridge sends the peer it dials, its broker started with `bridge` (lines after
/// `connection` and `address`): a raw socket plays the peer, answers CONNACK, SUBACK, PUBACK
/// and PINGRESP as a broker would, and records every packet until the bridge settles.
fn bridge_says(kind: Kind, bridge: &str) -> Option<Vec<String>> {
    let peer = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let v5 = bridge.contains("mqttv50");
    let _node = Node::start_configured(kind, "127.0.0.1", |port| {
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nconnection differential\n\
             address {peer_addr}\n{bridge}\n"
        )
    })?;
    peer.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + DIAL;
    let stream = loop {
        match peer.accept() {
            Ok((stream, _)) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{kind:?} did not dial its bridge peer: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    let mut link = Client { stream, buf: Vec::new() };
    let mut seen = Vec::new();
    loop {
        let packet = match link.read(SETTLED) {
            Got::Packet(packet) => packet,
            Got::Closed => {
                seen.push("closed".to_string());
                break;
            }
            Got::Nothing => break,
        };
        seen.push(show(&packet));
        let body = &packet[whole_packet_header_len(&packet)..];
        let answer = match packet[0] >> 4 {
            1 if v5 => vec![0x20, 3, 0, 0, 0],
            1 => vec![0x20, 2, 0, 0],
            3 if packet[0] & 0x06 == 0x02 => {
                let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let id = &body[2 + topic_len..4 + topic_len];
                if v5 {
                    vec![0x40, 3, id[0], id[1], 0]
                } else {
                    vec![0x40, 2, id[0], id[1]]
                }
            }
            8 => suback(body, v5),
            10 => {
                let mut unsuback = vec![0xb0, 2, body[0], body[1]];
                if v5 {
                    unsuback = vec![0xb0, 4, body[0], body[1], 0, 0];
                }
                unsuback
            }
            12 => vec![0xd0, 0],
            _ => Vec::new(),
        };
        link.stream.write_all(&answer).unwrap();
    }
    Some(seen)
}

/// The length of a packet's fixed header.
fn whole_packet_header_len(packet: &[u8]) -> usize {
    1 + packet[1..].iter().position(|b| b & 0x80 == 0).unwrap() + 1
}

/// A SUBACK granting every filter of the SUBSCRIBE `body` the QoS it asked for.
fn suback(body: &[u8], v5: bool) -> Vec<u8> {
    let mut at = 2;
    if v5 {
        at += 1 + usize::from(body[2]);
    }
    let mut granted = Vec::new();
    while at < body.len() {
        at += 2 + usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
        granted.push(body[at] & 0x03);
        at += 1;
    }
    let mut out = body[..2].to_vec();
    if v5 {
        out.push(0);
    }
    out.extend(granted);
    common::raw_packet(0x90, &out)
}

/// Bridges Mosquitto users write, each as the peer sees it connect.
const BRIDGES: &[(&str, &str)] = &[
    ("3.1.1, one pattern both ways", "topic room1/# both 2 sensor/ myhouse/"),
    ("3.1.1, in and out", "topic a/# in 1\ntopic b/# out 0\ntopic c both 1"),
    ("5.0, in and out", "bridge_protocol_version mqttv50\ntopic a/# in 1\ntopic b/# out 2"),
    ("3.1", "bridge_protocol_version mqttv31\ntopic a/# in 0"),
    ("3.1.1, no notifications", "notifications false\ntopic a/# in 1"),
    ("3.1.1, not private", "try_private false\ntopic a/# in 1"),
    (
        "3.1.1, credentials, client id, keep alive",
        "remote_username bu\nremote_password bp\nremote_clientid leaf-1\n\
         keepalive_interval 30\ntopic a/# in 2",
    ),
    ("3.1.1, not clean", "cleansession false\ntopic a/# in 1"),
    ("3.1.1, notification topic", "notification_topic links/leaf\ntopic a/# in 1"),
    ("5.0, not clean", "bridge_protocol_version mqttv50\ncleansession false\ntopic a/# both 1"),
];

/// Where a bridge's connection differs on purpose: the bridge's name, and why.
const BRIDGES_INTENDED: &[(&str, &str)] =
    &[("5.0, in and out", KEEPS_SESSION), ("5.0, not clean", KEEPS_SESSION)];

const KEEPS_SESSION: &str = "a 5.0 bridge with `cleansession false` (the default) asks its \
    peer to keep its session (Session Expiry Interval 0xFFFFFFFF), as the option means; \
    Mosquitto 2.0.11 asks for none, so its peer ends the session at every disconnect. Mosquitto \
    announces a Receive Maximum of 20; Culex none (65,535), not to throttle a busy link";

#[test]
fn every_bridge_connects_as_mosquitto_connects() {
    let mut differences = Vec::new();
    let mut stale: Vec<&str> = BRIDGES_INTENDED.iter().map(|(name, _)| *name).collect();
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let runs: Vec<_> = BRIDGES
            .iter()
            .map(|(name, bridge)| {
                let ours = scope.spawn(|| bridge_says(Kind::Culex, bridge));
                let theirs = scope.spawn(|| bridge_says(Kind::Mosquitto, bridge));
                (name, ours, theirs)
            })
            .collect();
        runs.into_iter()
            .map(|(name, ours, theirs)| (name, ours.join().unwrap(), theirs.join().unwrap()))
            .collect()
    });
    for (name, ours, theirs) in outcomes {
        let (Some(ours), Some(theirs)) = (ours, theirs) else { return };
        if ours == theirs {
            continue;
        }
        if BRIDGES_INTENDED.iter().any(|(listed, _)| listed == name) {
            stale.retain(|listed| listed != name);
            continue;
        }
        differences.push(format!(
            "{name}\n  Culex:\n    {}\n  Mosquitto:\n    {}",
            ours.join("\n    "),
            theirs.join("\n    ")
        ));
    }
    assert!(
        differences.is_empty(),
        "{} of {} bridges connect otherwise than Mosquitto's:\n{}",
        differences.len(),
        BRIDGES.len(),
        differences.join("\n")
    );
    assert!(stale.is_empty(), "listed as different, yet the same as Mosquitto: {stale:?}");
}
