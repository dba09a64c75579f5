//! Listener options on the real binary: addresses and families, `bind_interface`,
//! `max_connections`, `mount_point` (WebSocket listeners: tests/websockets.rs).

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::{answers_mqtt, free_port, Broker, ConnectOptions, RawClient};
use culex::protocol::{Packet, QoS, TopicFilter};

fn has_ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

#[test]
fn a_listener_without_address_takes_ipv4_and_ipv6() {
    let port = free_port();
    let broker =
        Broker::start_with_config(port, &format!("listener {port}\nallow_anonymous true\n"));
    assert!(answers_mqtt(SocketAddr::from(([127, 0, 0, 1], port))));
    if has_ipv6_loopback() {
        assert!(answers_mqtt(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))));
    }
    drop(broker);
}

#[test]
fn socket_domain_ipv4_leaves_ipv6_out() {
    if !has_ipv6_loopback() {
        eprintln!("no IPv6 loopback here: nothing to leave out");
        return;
    }
    let port = free_port();
    let config = format!("listener {port}\nsocket_domain ipv4\nallow_anonymous true\n");
    let _broker = Broker::start_with_config(port, &config);
    assert!(TcpStream::connect((std::net::Ipv6Addr::LOCALHOST, port)).is_err());
}

#[test]
fn max_connections_closes_what_is_over_the_limit_and_frees_places() {
    let port = free_port();
    let config = format!("listener {port} 127.0.0.1\nmax_connections 2\nallow_anonymous true\n");
    let broker = Broker::start_with_config(port, &config);
    let (first, _) = RawClient::connect(&broker, "first", Default::default());
    let (_second, _) = RawClient::connect(&broker, "second", Default::default());
    // Over the limit: closed before any MQTT, whichever shard accepted it.
    for _ in 0..4 {
        let mut third = RawClient::open(&broker);
        assert!(third.is_closed_by_broker());
    }
    first.disconnect();
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let mut again = RawClient::open(&broker);
        if again.try_handshake("again", Default::default()).is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the place never came free");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(broker.log_text().contains("denied: max_connections exceeded"));
}

/// Culex's `max_connection_rate`: a second's worth of connections at once, then the rest of a
/// storm closed before any MQTT, counted by reason; the allowance comes back with time.
#[test]
fn max_connection_rate_admits_its_burst_and_refuses_the_rest_of_a_storm() {
    let port = free_port();
    let config =
        format!("listener {port} 127.0.0.1\nmax_connection_rate 5\nallow_anonymous true\n");
    let broker = Broker::start_with_config(port, &config);
    // What start-up's probes took comes back.
    std::thread::sleep(Duration::from_millis(1200));
    let storm: Vec<RawClient> = (0..20).map(|_| RawClient::open(&broker)).collect();
    let admitted = storm
        .into_iter()
        .enumerate()
        .filter_map(|(i, mut client)| {
            client.try_handshake(&format!("storm-{i}"), Default::default())
        })
        .count();
    // Five at once; more only as far as the storm took time (one each 200 ms).
    assert!((5..=12).contains(&admitted), "{admitted} of 20 admitted");
    std::thread::sleep(Duration::from_millis(1200));
    let mut later = RawClient::open(&broker);
    assert!(later.try_handshake("later", Default::default()).is_some(), "the rate came back");
}

#[test]
fn bind_interface_binds_to_the_device() {
    let port = free_port();
    let config = format!("listener {port}\nbind_interface lo\nallow_anonymous true\n");
    let _broker = Broker::start_with_config(port, &config);
    assert!(answers_mqtt(SocketAddr::from(([127, 0, 0, 1], port))));

    let dir = common::TempDir::new();
    let conf = dir.0.join("bad.conf");
    std::fs::write(&conf, format!("listener {}\nbind_interface nosuch0\n", free_port())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_culex")).arg("-c").arg(&conf).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bind_interface nosuch0"), "{stderr}");
}

/// `mount_point` as Mosquitto documents it (and 2.0.12 on does: 2.0.11 forgets to take the
/// prefix off what it sends, eclipse/mosquitto#2244): what a client of that listener publishes,
/// subscribes to or leaves as a will is under the prefix; what it receives comes without it;
/// nothing outside the prefix reaches it. The ACL file sees the mounted topics, as in Mosquitto.
#[test]
fn mount_point_puts_a_listeners_clients_under_a_prefix() {
    let (port, mounted_port) = (free_port(), free_port());
    let dir = common::TempDir::new();
    let acl = dir.0.join("acl");
    std::fs::write(&acl, "topic readwrite site1/#\ntopic readwrite plain/#\n").unwrap();
    let config = format!(
        "allow_anonymous true\nacl_file {}\nlistener {port} 127.0.0.1\n\
         listener {mounted_port} 127.0.0.1\nmount_point site1/\n",
        acl.display()
    );
    let broker = Broker::start_with_config(port, &config);
    let mounted = SocketAddr::from(([127, 0, 0, 1], mounted_port));
    let (mut outside, _) = RawClient::connect(&broker, "outside", Default::default());
    outside.subscribe("#", QoS::AtLeastOnce);
    // Retained before the mounted client subscribes: it must come stripped too.
    outside.publish("site1/state", b"retained", QoS::AtLeastOnce, true);

    let options = ConnectOptions {
        will: Some(common::will("status", "gone", QoS::AtLeastOnce, false)),
        ..Default::default()
    };
    let (mut inside, _) = RawClient::connect_addr(mounted, "inside", options);
    inside.subscribe("#", QoS::AtLeastOnce);
    let retained = inside.receive();
    assert_eq!((retained.topic.as_str(), &retained.payload[..]), ("state", &b"retained"[..]));

    inside.publish("temp", b"21", QoS::AtLeastOnce, false);
    let seen = outside.receive();
    assert_eq!(seen.topic.as_str(), "site1/state", "the retained message, first");
    let seen = outside.receive();
    assert_eq!((seen.topic.as_str(), &seen.payload[..]), ("site1/temp", &b"21"[..]));
    let echo = inside.receive();
    assert_eq!(echo.topic.as_str(), "temp", "its own message, without the prefix");

    outside.publish("plain/x", b"not for site1", QoS::AtLeastOnce, false);
    assert_eq!(outside.receive().topic.as_str(), "plain/x");
    outside.publish("site1/cmd", b"go", QoS::AtLeastOnce, false);
    assert_eq!(outside.receive().topic.as_str(), "site1/cmd");
    let command = inside.receive();
    assert_eq!((command.topic.as_str(), &command.payload[..]), ("cmd", &b"go"[..]));
    inside.expect_silence();

    // Unsubscribing takes the prefix too.
    let packet_id = inside.packet_id();
    inside.send(&Packet::Unsubscribe(culex::protocol::Unsubscribe {
        packet_id,
        properties: Default::default(),
        filters: vec![TopicFilter::new("#").unwrap()],
    }));
    assert!(matches!(inside.recv(), Some(Packet::UnsubAck(_))));
    outside.publish("site1/cmd", b"again", QoS::AtLeastOnce, false);
    assert_eq!(outside.receive().topic.as_str(), "site1/cmd");
    inside.expect_silence();

    inside.drop_connection();
    let will = outside.receive();
    assert_eq!((will.topic.as_str(), &will.payload[..]), ("site1/status", &b"gone"[..]));
}

#[test]
fn a_mount_point_with_wildcards_is_refused() {
    let dir = common::TempDir::new();
    let file = dir.0.join("bad.conf");
    std::fs::write(&file, "listener 1883\nmount_point site/+/\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_culex")).arg("-c").arg(&file).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.conf:2: invalid value for `mount_point`"), "{stderr}");
}

/// `listener 0 PATH`: a Unix socket, served beside TCP, with unmodified `mosquitto_pub --unix`
/// and `mosquitto_sub --unix`. A socket file a dead broker left is replaced; a live one, or a
/// file that is not a socket, stops the start.
#[test]
fn a_unix_socket_listener_serves_mosquitto_tools() {
    let Some(publish) = common::mosquitto_tool("mosquitto_pub") else { return };
    let Some(subscribe) = common::mosquitto_tool("mosquitto_sub") else { return };
    let dir = common::TempDir::new();
    let path = dir.0.join("culex.sock");
    // A stale socket file, as a killed broker leaves it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let broker = Broker::start(&format!("listener 0 {}\n", path.display()));
    let unix = path.to_str().unwrap();
    let sub = Command::new(&subscribe)
        .args(["--unix", unix, "-t", "local/#", "-C", "1", "-W", "10", "-i", "unix-sub"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    broker.shard_of("unix-sub");
    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new(&publish)
        .args(["--unix", unix, "-t", "local/x", "-m", "over a unix socket"])
        .status()
        .unwrap();
    assert!(status.success());
    let out = sub.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over a unix socket\n");
    assert!(broker.log_text().contains(&format!("peer=unix:{unix}")), "{}", broker.log_text());

    // A second broker on the same path: refused while the first one serves.
    let conf = dir.0.join("second.conf");
    let port = free_port();
    let second = format!("listener {port} 127.0.0.1\nlistener 0 {unix}\n");
    std::fs::write(&conf, second).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_culex")).arg("-c").arg(&conf).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("another process accepts"), "{stderr}");
    // A regular file at the path is never removed.
    let file = dir.0.join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nlistener 0 {}\n", file.display()))
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_culex")).arg("-c").arg(&conf).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    // Port 0 only.
    std::fs::write(&conf, format!("listener 1883 {}\n", path.display())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_culex")).arg("-c").arg(&conf).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("a Unix socket listener takes port 0"));
}

/// `accept_protocol_versions` (Mosquitto 2.1): a listener refuses the protocol levels it was not
/// given, with the return code for an unacceptable protocol version.
#[test]
fn accept_protocol_versions_refuses_the_others() {
    let port = free_port();
    let broker = Broker::start(&format!("listener {port} 127.0.0.1\naccept_protocol_versions 5\n"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let v311 = ConnectOptions::default();
    let answer = RawClient::open_addr(addr).try_handshake("old", v311);
    match answer {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.reason, culex::protocol::ReasonCode::UnsupportedProtocolVersion)
        }
        other => panic!("{other:?}"),
    }
    let v5 = ConnectOptions { version: culex::protocol::ProtocolVersion::V5, ..Default::default() };
    let answer = RawClient::open_addr(addr).try_handshake("new", v5);
    assert!(matches!(&answer, Some(Packet::ConnAck(ack)) if !ack.reason.is_error()), "{answer:?}");
    // The harness's own listener takes every version.
    assert!(answers_mqtt(broker.addr()));
}
