//! The same mosquitto.conf options under Mosquitto and under Culex, driven by the same client
//! script: each case writes down what a client observes (CONNACK and DISCONNECT reason codes,
//! CONNACK properties, what is delivered or queued) and both brokers must observe the same,
//! and what is written here. Culex-only tests of these options check finer detail elsewhere;
//! these keep the two brokers from drifting apart.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::node::{Kind, Node};
use common::{ConnectOptions, RawClient};
use culex::protocol::{Packet, Properties, ProtocolVersion, QoS};
use ProtocolVersion::{V311, V5};

/// Runs `script` against a Culex and a Mosquitto started with `config` on their listener, and
/// checks what each observes: `ours` for Culex, `theirs` for Mosquitto (the same but where
/// Culex differs on purpose).
fn same_outcomes(
    config: &str,
    script: fn(SocketAddr) -> Vec<String>,
    ours: &[&str],
    theirs: &[&str],
) {
    for (kind, expected) in [(Kind::Culex, ours), (Kind::Mosquitto, theirs)] {
        let Some(node) = Node::start(kind, "127.0.0.1", config) else { return };
        let observed = script(node.addr());
        assert_eq!(observed, expected, "{kind:?} with:\n{config}\nlog:\n{}", node.log());
    }
}

/// What Mosquitto should observe: the same as Culex unless written down apart.
macro_rules! mosquitto_sees {
    ($ours:expr) => {
        $ours
    };
    ($ours:expr, $theirs:expr) => {
        $theirs
    };
}

macro_rules! same_as_mosquitto {
    ($($name:ident: $config:expr, $script:expr => $ours:expr
        $(, but Mosquitto 2.0.11 => $theirs:expr)?;)*) => {$(
        #[test]
        fn $name() {
            same_outcomes($config, $script, &$ours, &mosquitto_sees!($ours $(, $theirs)?));
        }
    )*};
}

same_as_mosquitto! {
    zero_length_client_ids_are_assigned_by_default:
        "", empty_client_ids => ["v3.1.1: CONNACK Success", "v5: CONNACK Success, assigned auto-"];
    allow_zero_length_clientid_false_refuses_them:
        "allow_zero_length_clientid false", empty_client_ids
        => ["v3.1.1: CONNACK ClientIdentifierNotValid", "v5: CONNACK ClientIdentifierNotValid"],
        // 0x85 is the code MQTT 5.0 gives for a refused client id (3.1.3-8); 0x80 says nothing.
        but Mosquitto 2.0.11 => ["v3.1.1: CONNACK ClientIdentifierNotValid", "v5: CONNACK UnspecifiedError"];
    auto_id_prefix_names_assigned_ids:
        "auto_id_prefix cx-", empty_client_ids
        => ["v3.1.1: CONNACK Success", "v5: CONNACK Success, assigned cx-"];
    qos_0_messages_are_not_queued_for_offline_clients_by_default:
        "", offline_queue => ["q/1 at QoS 1"];
    queue_qos0_messages_queues_them:
        "queue_qos0_messages true", offline_queue => ["q/0 at QoS 0", "q/1 at QoS 1"];
    max_queued_messages_bounds_the_offline_queue:
        "max_queued_messages 2", offline_queue_of_five => ["q/1 at QoS 1", "q/2 at QoS 1"];
    max_keepalive_caps_a_v5_keep_alive_and_admits_a_longer_v311_one:
        "max_keepalive 10", keep_alives
        => ["v5 asks 60: CONNACK Success, server keep alive Some(10)",
            "v3.1.1 asks 10: CONNACK Success",
            "v3.1.1 asks 60: CONNACK Success"];
    max_qos_downgrades_subscriptions_and_refuses_higher_publishes:
        "max_qos 1", qos_limits
        => ["v5: CONNACK Success, maximum QoS Some(AtLeastOnce)",
            "subscribe at 2: granted GrantedQos1",
            "v5 publish at 2: DISCONNECT QosNotSupported",
            "v3.1.1 publish at 2: closed"];
    retain_available_false_refuses_retained_publishes:
        "retain_available false", retained_publishes
        => ["v5: CONNACK Success, retain available Some(false)",
            "v5 retained publish: DISCONNECT RetainNotSupported",
            "v3.1.1 retained publish: closed"];
    message_size_limit_drops_larger_payloads:
        "message_size_limit 10", payload_sizes
        => ["10 bytes at QoS 1: PUBACK Success",
            "11 bytes at QoS 1: PUBACK Success",
            "delivered 10 bytes"];
    max_packet_size_is_announced_and_enforced:
        "max_packet_size 100", packet_sizes
        => ["v5: CONNACK Success, maximum packet size Some(100)",
            "v5 publish of 150 bytes: DISCONNECT PacketTooLarge"];
    upgrade_outgoing_qos_delivers_at_the_subscription_qos:
        "upgrade_outgoing_qos true", upgraded => ["up at QoS 2"];
    clientid_prefixes_admits_only_those_prefixes:
        "clientid_prefixes sec-", client_id_prefixes
        => ["other: CONNACK NotAuthorized", "sec-1: CONNACK Success"];
    use_username_as_clientid_makes_a_username_one_session:
        "use_username_as_clientid true", username_sessions
        => ["second connection of the same user: CONNACK Success", "first connection: closed"];
    topics_and_filters_of_more_than_201_levels_are_refused:
        "", topic_depths
        => ["v3.1.1 subscribe, 201 levels: SUBACK [GrantedQos1]",
            "v3.1.1 publish, 201 levels: PUBACK Success",
            "delivered, 201 levels: 201 levels at QoS 1",
            "v3.1.1 subscribe, 202 levels: closed",
            "v5 subscribe, 202 levels: DISCONNECT MalformedPacket",
            "v5 unsubscribe, 202 levels: DISCONNECT MalformedPacket",
            "v3.1.1 publish, 202 levels: closed",
            "v5 publish, 202 levels: DISCONNECT ProtocolError",
            "v3.1.1 will, 202 levels: closed",
            "v5 will, 202 levels: closed"];
    max_topic_alias_is_announced_and_enforced:
        "max_topic_alias 3", topic_alias_limits
        => ["v5: CONNACK Success, topic alias maximum Some(3)",
            "alias 3: accepted",
            "alias 4: DISCONNECT TopicAliasInvalid"];
    max_topic_alias_0_allows_none:
        "max_topic_alias 0", topic_alias_limits
        => ["v5: CONNACK Success, topic alias maximum None",
            "alias 3: DISCONNECT TopicAliasInvalid"];
    max_inflight_messages_limits_unacknowledged_deliveries:
        "max_inflight_messages 2", inflight_window
        => ["unacknowledged: 2", "after acknowledging them: 2"];
}

/// A 5.0 CONNACK byte for byte as Mosquitto 2.0.11 builds it (its properties in its order),
/// for the properties a configuration makes it carry.
#[test]
fn connack_bytes_are_mosquittos() {
    use std::io::{Read, Write};
    let configs = [
        "",
        "max_keepalive 30",
        "max_qos 1\nretain_available false\nmax_packet_size 1000\nmax_inflight_messages 5",
        "max_topic_alias 0\nmax_inflight_messages 0",
    ];
    for config in configs {
        let mut answers = Vec::new();
        for kind in [Kind::Culex, Kind::Mosquitto] {
            let Some(node) = Node::start(kind, "127.0.0.1", config) else { return };
            let mut stream = std::net::TcpStream::connect(node.addr()).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // CONNECT 5.0, clean start, keep alive 60, no properties, client id "abc".
            stream.write_all(b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03abc").unwrap();
            let mut head = [0u8; 2];
            stream.read_exact(&mut head).unwrap();
            let mut body = vec![0u8; usize::from(head[1])];
            stream.read_exact(&mut body).unwrap();
            answers.push([head.to_vec(), body].concat());
        }
        assert_eq!(answers[0], answers[1], "Culex, then Mosquitto, with:\n{config}");
    }
}

/// `set_tcp_nodelay`, read from the broker's own end of a connection. Culex's default differs
/// on purpose: it gathers each turn's packets into one write itself, so Nagle's algorithm would
/// only add delay.
#[test]
fn set_tcp_nodelay_sets_it_on_accepted_sockets() {
    for (kind, default) in [(Kind::Culex, true), (Kind::Mosquitto, false)] {
        let settings =
            [("", default), ("set_tcp_nodelay true", true), ("set_tcp_nodelay false", false)];
        for (config, expected) in settings {
            let Some(node) = Node::start(kind, "127.0.0.1", config) else { return };
            let client = connect(node.addr(), "nodelay", Default::default());
            let pid = node.child.as_ref().unwrap().id();
            let nodelay = common::broker_side_nodelay(pid, client.local_addr());
            assert_eq!(nodelay, expected, "{kind:?} with `{config}`");
        }
    }
}

/// A 5.0 client told its Topic Alias Maximum, then setting aliases 3 and 4 on QoS 1 PUBLISHes.
fn topic_alias_limits(addr: SocketAddr) -> Vec<String> {
    let (mut client, connack) = handshake_v5(addr, "aliases", v5(), |properties| {
        format!("topic alias maximum {:?}", properties.topic_alias_maximum)
    });
    let mut observed = vec![format!("v5: {connack}")];
    for alias in [3, 4] {
        let properties =
            Properties { topic_alias: std::num::NonZeroU16::new(alias), ..Default::default() };
        let packet_id = client.packet_id();
        client.send(&Packet::Publish(culex::protocol::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: culex::protocol::TopicName::new("t".to_string()).unwrap(),
            packet_id: Some(packet_id),
            properties,
            payload: bytes::Bytes::from_static(b"m"),
        }));
        let answer = match client.recv() {
            Some(Packet::PubAck(_)) => "accepted".to_string(),
            other => describe(other),
        };
        observed.push(format!("alias {alias}: {answer}"));
        if answer != "accepted" {
            break;
        }
    }
    observed
}

/// Mosquitto's bound on topic depth (200 `/` at most), met from both sides, with packets built by
/// hand since our encoder refuses what is too deep.
fn topic_depths(addr: SocketAddr) -> Vec<String> {
    use common::{raw_connect_with_will, raw_publish, raw_subscription};
    let levels = |n: usize, level: &str| vec![level; n].join("/");
    let mut observed = Vec::new();
    let mut subscriber = connect(addr, "deep-subscriber", Default::default());
    subscriber.write_raw(&raw_subscription(V311, &levels(201, "+"), false));
    observed.push(format!("v3.1.1 subscribe, 201 levels: {}", describe(subscriber.recv())));
    let mut publisher = connect(addr, "deep-publisher", Default::default());
    publisher.write_raw(&raw_publish(V311, &levels(201, "a"), b"m"));
    observed.push(format!("v3.1.1 publish, 201 levels: {}", describe(publisher.recv())));
    let delivered = deliveries(&mut subscriber).join(", ");
    observed.push(format!(
        "delivered, 201 levels: {}",
        delivered.replace(&levels(201, "a"), "201 levels")
    ));
    for (version, name) in [(V311, "v3.1.1"), (V5, "v5")] {
        let options = || ConnectOptions { version, ..Default::default() };
        let mut client = connect(addr, "deep", options());
        client.write_raw(&raw_subscription(version, &levels(202, "+"), false));
        observed.push(format!("{name} subscribe, 202 levels: {}", describe(client.recv())));
        if version == V5 {
            let mut client = connect(addr, "deep", options());
            client.write_raw(&raw_subscription(version, &levels(202, "+"), true));
            observed.push(format!("{name} unsubscribe, 202 levels: {}", describe(client.recv())));
        }
    }
    for (version, name) in [(V311, "v3.1.1"), (V5, "v5")] {
        let mut client = connect(addr, "deep", ConnectOptions { version, ..Default::default() });
        client.write_raw(&raw_publish(version, &levels(202, "a"), b"m"));
        observed.push(format!("{name} publish, 202 levels: {}", describe(client.recv())));
    }
    for (version, name) in [(V311, "v3.1.1"), (V5, "v5")] {
        let mut client = RawClient::open_addr(addr);
        client.version = version;
        client.write_raw(&raw_connect_with_will(version, "deep-will", &levels(202, "a")));
        observed.push(format!("{name} will, 202 levels: {}", describe(client.recv())));
    }
    observed
}

/// What a client observes of one packet from the broker.
fn describe(packet: Option<Packet>) -> String {
    match packet {
        None => "closed".to_string(),
        Some(Packet::ConnAck(ack)) => format!("CONNACK {:?}", ack.reason),
        Some(Packet::Disconnect(disconnect)) => format!("DISCONNECT {:?}", disconnect.reason),
        Some(Packet::PubAck(ack)) => format!("PUBACK {:?}", ack.reason),
        Some(Packet::SubAck(ack)) => format!("SUBACK {:?}", ack.reasons),
        Some(Packet::Publish(publish)) => {
            format!("{} at QoS {}", publish.topic.as_str(), publish.qos as u8)
        }
        Some(other) => format!("{other:?}"),
    }
}

fn v5() -> ConnectOptions {
    ConnectOptions { version: V5, ..Default::default() }
}

fn persistent() -> ConnectOptions {
    ConnectOptions { clean_start: false, ..Default::default() }
}

fn connect(addr: SocketAddr, client_id: &str, options: ConnectOptions) -> RawClient {
    RawClient::connect_addr(addr, client_id, options).0
}

/// Sends CONNECT and describes the answer.
fn handshake(addr: SocketAddr, client_id: &str, options: ConnectOptions) -> (RawClient, String) {
    let mut client = RawClient::open_addr(addr);
    let answer = describe(client.try_handshake(client_id, options));
    (client, answer)
}

/// Sends a 5.0 CONNECT and describes the answer; an accepting CONNACK with what `property`
/// picks from it.
fn handshake_v5(
    addr: SocketAddr,
    client_id: &str,
    options: ConnectOptions,
    property: impl Fn(&Properties) -> String,
) -> (RawClient, String) {
    let mut client = RawClient::open_addr(addr);
    let answer = match client.try_handshake(client_id, options) {
        Some(Packet::ConnAck(ack)) if !ack.reason.is_error() => {
            format!("CONNACK {:?}, {}", ack.reason, property(&ack.properties))
        }
        other => describe(other),
    };
    (client, answer)
}

/// Sends one PUBLISH without waiting and describes the broker's answer.
fn send_publish(client: &mut RawClient, payload: &[u8], qos: QoS, retain: bool) -> String {
    let packet_id = (qos != QoS::AtMostOnce).then(|| client.packet_id());
    client.send(&Packet::Publish(culex::protocol::Publish {
        dup: false,
        qos,
        retain,
        topic: culex::protocol::TopicName::new("t".to_string()).unwrap(),
        packet_id,
        properties: Default::default(),
        payload: bytes::Bytes::copy_from_slice(payload),
    }));
    describe(client.recv())
}

/// Everything delivered until a quiet half second, acknowledged.
fn deliveries(client: &mut RawClient) -> Vec<String> {
    let mut seen = Vec::new();
    while let Some(Packet::Publish(publish)) = client.recv_within(Duration::from_millis(500)) {
        client.acknowledge(&publish);
        seen.push(describe(Some(Packet::Publish(publish))));
    }
    seen
}

fn empty_client_ids(addr: SocketAddr) -> Vec<String> {
    let (_, v311) = handshake(addr, "", ConnectOptions::default());
    let (_, v5) = handshake_v5(addr, "", v5(), |properties| {
        let assigned = properties.assigned_client_identifier.as_deref().unwrap_or_default();
        format!("assigned {}", assigned.split_inclusive('-').next().unwrap_or_default())
    });
    vec![format!("v3.1.1: {v311}"), format!("v5: {v5}")]
}

/// A persistent QoS 1 subscriber goes away and a QoS 0 message (q/0) and a QoS 1 one (q/1)
/// are published: which does it find when it returns?
fn offline_queue(addr: SocketAddr) -> Vec<String> {
    let mut subscriber = connect(addr, "offline", persistent());
    subscriber.subscribe("q/#", QoS::AtLeastOnce);
    subscriber.disconnect();
    let mut publisher = connect(addr, "publisher", Default::default());
    for n in 0..2 {
        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce][n];
        publisher.publish(&format!("q/{n}"), b"m", qos, false);
    }
    // A QoS 1 round trip after the last QoS 0 publish: it has been routed.
    publisher.publish("other", b"m", QoS::AtLeastOnce, false);
    let mut subscriber = connect(addr, "offline", persistent());
    deliveries(&mut subscriber)
}

/// A persistent QoS 1 subscriber goes away and five QoS 1 messages are published on q/1 to
/// q/5: which does it find when it returns?
fn offline_queue_of_five(addr: SocketAddr) -> Vec<String> {
    let mut subscriber = connect(addr, "offline", persistent());
    subscriber.subscribe("q/#", QoS::AtLeastOnce);
    subscriber.disconnect();
    let mut publisher = connect(addr, "publisher", Default::default());
    for n in 1..=5 {
        publisher.publish(&format!("q/{n}"), b"m", QoS::AtLeastOnce, false);
    }
    let mut subscriber = connect(addr, "offline", persistent());
    deliveries(&mut subscriber)
}

fn keep_alives(addr: SocketAddr) -> Vec<String> {
    let asks_60 = ConnectOptions { keep_alive_secs: 60, ..v5() };
    let (_, v5) = handshake_v5(addr, "v5", asks_60, |properties| {
        format!("server keep alive {:?}", properties.server_keep_alive)
    });
    let asks = |secs| {
        handshake(addr, "v311", ConnectOptions { keep_alive_secs: secs, ..Default::default() }).1
    };
    vec![
        format!("v5 asks 60: {v5}"),
        format!("v3.1.1 asks 10: {}", asks(10)),
        format!("v3.1.1 asks 60: {}", asks(60)),
    ]
}

fn qos_limits(addr: SocketAddr) -> Vec<String> {
    let (mut client, connack) = handshake_v5(addr, "v5", v5(), |properties| {
        format!("maximum QoS {:?}", properties.maximum_qos)
    });
    let granted = client.subscribe("t", QoS::ExactlyOnce);
    let v5_publish = send_publish(&mut client, b"m", QoS::ExactlyOnce, false);
    let mut v311 = connect(addr, "v311", Default::default());
    let v311_publish = send_publish(&mut v311, b"m", QoS::ExactlyOnce, false);
    vec![
        format!("v5: {connack}"),
        format!("subscribe at 2: granted {:?}", granted[0]),
        format!("v5 publish at 2: {v5_publish}"),
        format!("v3.1.1 publish at 2: {v311_publish}"),
    ]
}

fn retained_publishes(addr: SocketAddr) -> Vec<String> {
    let (mut client, connack) = handshake_v5(addr, "v5", v5(), |properties| {
        format!("retain available {:?}", properties.retain_available)
    });
    let v5_publish = send_publish(&mut client, b"m", QoS::AtLeastOnce, true);
    let mut v311 = connect(addr, "v311", Default::default());
    let v311_publish = send_publish(&mut v311, b"m", QoS::AtLeastOnce, true);
    vec![
        format!("v5: {connack}"),
        format!("v5 retained publish: {v5_publish}"),
        format!("v3.1.1 retained publish: {v311_publish}"),
    ]
}

fn payload_sizes(addr: SocketAddr) -> Vec<String> {
    let mut subscriber = connect(addr, "subscriber", Default::default());
    subscriber.subscribe("t", QoS::AtLeastOnce);
    let mut v311 = connect(addr, "v311", Default::default());
    // 3.1.1 only: Mosquitto answers a 5.0 client with a PUBACK reason code that PUBACK cannot
    // carry (0x95), which our codec refuses; broker_v5.rs tests Culex's 0x97.
    let mut observed: Vec<String> = [10, 11]
        .into_iter()
        .map(|size| {
            let answer = send_publish(&mut v311, &vec![b'x'; size], QoS::AtLeastOnce, false);
            format!("{size} bytes at QoS 1: {answer}")
        })
        .collect();
    while let Some(Packet::Publish(publish)) = subscriber.recv_within(Duration::from_millis(500)) {
        subscriber.acknowledge(&publish);
        observed.push(format!("delivered {} bytes", publish.payload.len()));
    }
    observed
}

fn packet_sizes(addr: SocketAddr) -> Vec<String> {
    let (mut client, connack) = handshake_v5(addr, "v5", v5(), |properties| {
        format!("maximum packet size {:?}", properties.maximum_packet_size)
    });
    let publish = send_publish(&mut client, &[b'x'; 150], QoS::AtLeastOnce, false);
    vec![format!("v5: {connack}"), format!("v5 publish of 150 bytes: {publish}")]
}

fn upgraded(addr: SocketAddr) -> Vec<String> {
    let mut subscriber = connect(addr, "subscriber", Default::default());
    subscriber.subscribe("up", QoS::ExactlyOnce);
    let mut publisher = connect(addr, "publisher", Default::default());
    publisher.publish("up", b"m", QoS::AtMostOnce, false);
    deliveries(&mut subscriber)
}

fn client_id_prefixes(addr: SocketAddr) -> Vec<String> {
    ["other", "sec-1"]
        .iter()
        .map(|id| format!("{id}: {}", handshake(addr, id, Default::default()).1))
        .collect()
}

fn username_sessions(addr: SocketAddr) -> Vec<String> {
    let login = || ConnectOptions { login: Some(("carol", "pw")), ..Default::default() };
    let (mut first, _) = handshake(addr, "phone", login());
    let (_second, answer) = handshake(addr, "laptop", login());
    let first_closed = if first.is_closed_by_broker() { "closed" } else { "open" };
    vec![
        format!("second connection of the same user: {answer}"),
        format!("first connection: {first_closed}"),
    ]
}

/// Five QoS 1 messages to a subscriber that does not acknowledge: how many arrive, and how
/// many more once it acknowledges those.
fn inflight_window(addr: SocketAddr) -> Vec<String> {
    let mut subscriber = connect(addr, "subscriber", Default::default());
    subscriber.subscribe("t", QoS::AtLeastOnce);
    let mut publisher = connect(addr, "publisher", Default::default());
    for _ in 0..4 {
        publisher.publish("t", b"m", QoS::AtLeastOnce, false);
    }
    let mut unacknowledged = Vec::new();
    while let Some(Packet::Publish(publish)) = subscriber.recv_within(Duration::from_millis(500)) {
        unacknowledged.push(publish);
    }
    let held = unacknowledged.len();
    for publish in &unacknowledged {
        subscriber.acknowledge(publish);
    }
    vec![
        format!("unacknowledged: {held}"),
        format!("after acknowledging them: {}", deliveries(&mut subscriber).len()),
    ]
}

/// A TLS listener with `require_certificate`, a CRL and `use_identity_as_username` driving the
/// ACL file, the same files under both brokers: unmodified `mosquitto_pub` and `mosquitto_sub`
/// with each kind of client certificate see the same answers.
#[test]
fn tls_client_certificates_are_judged_alike() {
    use common::pki::{self, Ca, KeyType};
    let (Some(publish), Some(subscribe)) =
        (common::mosquitto_tool("mosquitto_pub"), common::mosquitto_tool("mosquitto_sub"))
    else {
        return;
    };
    if !pki::available() {
        return;
    }
    let dir = common::TempDir::new();
    let ca = Ca::new(&dir.0, "ca");
    let other = Ca::new(&dir.0, "other");
    let server = ca.server("server", KeyType::EcP256);
    let alice = ca.client("alice", "/CN=alice");
    let revoked = ca.client("revoked", "/CN=revoked");
    let stranger = other.client("stranger", "/CN=alice");
    let crl = ca.revoke(&revoked);
    let acl = dir.0.join("acl");
    std::fs::write(&acl, "user alice\ntopic readwrite allowed/#\ntopic read denied/#\n").unwrap();
    // A port of its own for each broker: a Culex just stopped may hold its port a moment.
    let config_on = |tls_port: u16| {
        format!(
            "acl_file {}\nlistener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\ncafile {}\n\
         crlfile {}\nrequire_certificate true\nuse_identity_as_username true\n",
            acl.display(),
            server.cert.display(),
            server.key.display(),
            ca.cert.display(),
            crl.display()
        )
    };
    let client_args = |tls_port: u16, client: Option<&pki::Issued>| {
        let mut args =
            vec!["-h".to_string(), "127.0.0.1".into(), "-p".into(), tls_port.to_string()];
        args.extend(["--cafile".into(), ca.cert.display().to_string()]);
        if let Some(client) = client {
            args.extend(["--cert".into(), client.cert.display().to_string()]);
            args.extend(["--key".into(), client.key.display().to_string()]);
        }
        args
    };
    let mut outcomes = Vec::new();
    for kind in [Kind::Culex, Kind::Mosquitto] {
        let tls_port = common::free_port();
        let Some(node) = Node::start(kind, "127.0.0.1", &config_on(tls_port)) else { return };
        let mut seen = Vec::new();
        for (name, client) in [
            ("alice", Some(&alice)),
            ("no certificate", None),
            ("revoked", Some(&revoked)),
            ("another CA", Some(&stranger)),
        ] {
            let status = std::process::Command::new(&publish)
                .args(client_args(tls_port, client))
                .args(["-t", "allowed/probe", "-m", "x", "-q", "1"])
                .output()
                .unwrap()
                .status;
            seen.push(format!(
                "{name}: {}",
                if status.success() { "connected" } else { "refused" }
            ));
        }
        // What alice may publish reaches her own subscription; what she may only read does not.
        let sub = std::process::Command::new(&subscribe)
            .args(client_args(tls_port, Some(&alice)))
            .args(["-t", "allowed/#", "-t", "denied/#", "-C", "1", "-W", "5", "-v"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        for topic in ["denied/x", "allowed/x"] {
            let status = std::process::Command::new(&publish)
                .args(client_args(tls_port, Some(&alice)))
                .args(["-t", topic, "-m", topic, "-q", "1", "-u", "mallory", "-P", "x"])
                .status()
                .unwrap();
            assert!(status.success(), "{kind:?}: {}", node.log());
        }
        let delivered = String::from_utf8(sub.wait_with_output().unwrap().stdout).unwrap();
        seen.push(format!("delivered: {}", delivered.trim()));
        outcomes.push(seen);
    }
    if let [culex, mosquitto] = &outcomes[..] {
        assert_eq!(culex, mosquitto);
        assert_eq!(
            culex,
            &[
                "alice: connected",
                "no certificate: refused",
                "revoked: refused",
                "another CA: refused",
                "delivered: allowed/x allowed/x"
            ]
        );
    }
}
