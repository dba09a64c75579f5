//! MQTT 3.1/3.1.1 behaviour of the real `culex` binary (two shards), driven by exact packets.
//! Where placement matters, clients are chosen on different shards by reading the broker's log.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{clients_on_different_shards, will, Broker, ConnectOptions, RawClient};
use culex::protocol::{Packet, ProtocolVersion, QoS, ReasonCode};

fn persistent() -> ConnectOptions {
    ConnectOptions { clean_start: false, ..Default::default() }
}

#[test]
fn every_qos_crosses_shards_at_the_lower_of_published_and_granted() {
    let broker = Broker::start("");
    let (mut sub, _, mut publisher, _) =
        clients_on_different_shards(&broker, "x", Default::default);
    for granted in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let filter = format!("q/{}", granted as u8);
        sub.subscribe(&filter, granted);
        for published in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            publisher.publish(&filter, b"m", published, false);
            let got = sub.receive();
            assert_eq!(
                got.qos,
                published.min(granted),
                "published {published:?}, granted {granted:?}"
            );
            assert_eq!((got.topic.as_str(), &got.payload[..]), (filter.as_str(), &b"m"[..]));
        }
    }
}

#[test]
fn one_publisher_keeps_its_order_across_shards() {
    let broker = Broker::start("max_inflight_messages 10");
    let (mut sub, _, mut publisher, _) =
        clients_on_different_shards(&broker, "o", Default::default);
    sub.subscribe("order/#", QoS::AtLeastOnce);
    for i in 0..300u32 {
        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][(i % 3) as usize];
        publisher.publish("order/t", &i.to_be_bytes(), qos, false);
    }
    for i in 0..300u32 {
        assert_eq!(&sub.receive().payload[..], &i.to_be_bytes(), "message {i} out of order");
    }
}

#[test]
fn a_message_reaches_each_subscriber_once_on_either_shard() {
    let broker = Broker::start("");
    let mut subscribers: Vec<RawClient> = (0..6)
        .map(|i| {
            let (mut c, _) = RawClient::connect(&broker, &format!("fan-{i}"), Default::default());
            c.subscribe("fan/#", QoS::AtLeastOnce);
            c
        })
        .collect();
    let shards: std::collections::BTreeSet<usize> =
        (0..6).map(|i| broker.shard_of(&format!("fan-{i}"))).collect();
    let (mut publisher, _) = RawClient::connect(&broker, "fan-pub", Default::default());
    publisher.publish("fan/out", b"hello", QoS::AtLeastOnce, false);
    for sub in &mut subscribers {
        assert_eq!(&sub.receive().payload[..], b"hello");
        sub.expect_silence();
    }
    eprintln!("subscribers spread over shards {shards:?}");
}

#[test]
fn retained_messages_are_stored_replaced_deleted_and_sent_first() {
    let broker = Broker::start("");
    let (mut publisher, _, mut other, _) =
        clients_on_different_shards(&broker, "r", Default::default);
    publisher.publish("ret/a", b"one", QoS::AtLeastOnce, true);
    publisher.publish("ret/a", b"two", QoS::AtLeastOnce, true);
    publisher.publish("ret/b", b"bee", QoS::ExactlyOnce, true);
    publisher.publish("ret/c", b"gone", QoS::AtMostOnce, true);
    publisher.publish("ret/c", b"", QoS::AtMostOnce, true);
    publisher.publish("unrelated", b"u", QoS::AtMostOnce, true);

    // The subscriber sits on the other shard: the retained store is seen from every shard.
    other.subscribe("ret/+", QoS::ExactlyOnce);
    let mut got: Vec<(String, Vec<u8>, QoS, bool)> = (0..2)
        .map(|_| {
            let p = other.receive();
            (p.topic.to_string(), p.payload.to_vec(), p.qos, p.retain)
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("ret/a".into(), b"two".to_vec(), QoS::AtLeastOnce, true),
            ("ret/b".into(), b"bee".to_vec(), QoS::ExactlyOnce, true),
        ]
    );
    other.expect_silence();

    // To an existing subscription a retained publish is delivered with retain 0.
    publisher.publish("ret/a", b"three", QoS::AtLeastOnce, true);
    let live = other.receive();
    assert_eq!((&live.payload[..], live.retain), (&b"three"[..], false));
}

#[test]
fn retained_message_comes_before_newer_messages_on_the_subscription() {
    let broker = Broker::start("");
    let (mut publisher, _, mut sub, _) =
        clients_on_different_shards(&broker, "rf", Default::default);
    publisher.publish("first/t", b"retained", QoS::AtLeastOnce, true);
    sub.subscribe("first/#", QoS::AtLeastOnce);
    publisher.publish("first/t", b"live", QoS::AtLeastOnce, false);
    assert_eq!(&sub.receive().payload[..], b"retained");
    assert_eq!(&sub.receive().payload[..], b"live");
}

#[test]
fn will_is_published_on_abnormal_close_with_its_qos_and_retain() {
    let broker = Broker::start("");
    let (mut watcher, _) = RawClient::connect(&broker, "watcher", Default::default());
    watcher.subscribe("wills/#", QoS::ExactlyOnce);
    let options = || ConnectOptions {
        will: Some(will("wills/dying", "bye", QoS::AtLeastOnce, true)),
        ..Default::default()
    };
    let (dying, _) = RawClient::connect(&broker, "dying", options());
    dying.drop_connection();
    let got = watcher.receive();
    assert_eq!(
        (got.topic.as_str(), &got.payload[..], got.qos),
        ("wills/dying", &b"bye"[..], QoS::AtLeastOnce)
    );
    // The will was retained: a later subscriber gets it with the retain flag.
    let (mut late, _) = RawClient::connect(&broker, "late", Default::default());
    late.subscribe("wills/#", QoS::AtLeastOnce);
    assert!(late.receive().retain);

    // DISCONNECT discards the will.
    let (polite, _) = RawClient::connect(
        &broker,
        "polite",
        ConnectOptions {
            will: Some(will("wills/polite", "no", QoS::AtMostOnce, false)),
            ..Default::default()
        },
    );
    polite.disconnect();
    watcher.expect_silence();
}

#[test]
fn keep_alive_timeout_closes_and_publishes_the_will() {
    let broker = Broker::start("");
    let (mut watcher, _) = RawClient::connect(&broker, "ka-watcher", Default::default());
    watcher.subscribe("ka/#", QoS::AtMostOnce);
    let (mut silent, _) = RawClient::connect(
        &broker,
        "ka-silent",
        ConnectOptions {
            keep_alive_secs: 1,
            will: Some(will("ka/silent", "timeout", QoS::AtMostOnce, false)),
            ..Default::default()
        },
    );
    // 1.5 x 1 s without a packet: the broker closes the connection.
    assert!(silent.is_closed_by_broker());
    assert_eq!(&watcher.receive().payload[..], b"timeout");
}

#[test]
fn pings_keep_a_connection_alive() {
    let broker = Broker::start("");
    let (mut client, _) = RawClient::connect(
        &broker,
        "pinger",
        ConnectOptions { keep_alive_secs: 1, ..Default::default() },
    );
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(600));
        client.send(&Packet::PingReq);
        assert_eq!(client.recv(), Some(Packet::PingResp));
    }
}

#[test]
fn persistent_session_keeps_subscriptions_and_queued_messages() {
    let broker = Broker::start("");
    let (mut sub, present) = RawClient::connect(&broker, "keeper", persistent());
    assert!(!present);
    sub.subscribe("keep/#", QoS::ExactlyOnce);
    sub.disconnect();

    let (mut publisher, _) = RawClient::connect(&broker, "keep-pub", Default::default());
    publisher.publish("keep/1", b"q0 is not kept", QoS::AtMostOnce, false);
    publisher.publish("keep/1", b"a", QoS::AtLeastOnce, false);
    publisher.publish("keep/2", b"b", QoS::ExactlyOnce, false);

    let (mut sub, present) = RawClient::connect(&broker, "keeper", persistent());
    assert!(present, "session present after a persistent reconnect");
    assert_eq!(&sub.receive().payload[..], b"a");
    assert_eq!(&sub.receive().payload[..], b"b");
    sub.expect_silence();
    // The subscription survived too.
    publisher.publish("keep/3", b"c", QoS::AtLeastOnce, false);
    assert_eq!(&sub.receive().payload[..], b"c");
    sub.disconnect();

    // Clean session discards it all.
    let (mut fresh, present) = RawClient::connect(&broker, "keeper", Default::default());
    assert!(!present);
    publisher.publish("keep/4", b"d", QoS::AtLeastOnce, false);
    fresh.expect_silence();
}

#[test]
fn unacknowledged_messages_are_resent_with_dup_on_reconnect() {
    let broker = Broker::start("");
    let (mut sub, _) = RawClient::connect(&broker, "forgetful", persistent());
    sub.subscribe("dup/#", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect(&broker, "dup-pub", Default::default());
    publisher.publish("dup/t", b"again", QoS::AtLeastOnce, false);
    let Some(Packet::Publish(first)) = sub.recv() else { panic!("no delivery") };
    assert!(!first.dup);
    sub.drop_connection(); // without PUBACK

    let (mut sub, present) = RawClient::connect(&broker, "forgetful", persistent());
    assert!(present);
    let again = sub.receive();
    assert!(again.dup, "a retransmission carries DUP");
    assert_eq!((again.packet_id, &again.payload[..]), (first.packet_id, &b"again"[..]));
}

#[test]
fn takeover_across_shards_moves_the_session() {
    let broker = Broker::start("");
    let (mut old, _) = RawClient::connect(&broker, "mover", persistent());
    let old_shard = broker.shard_of("mover");
    old.subscribe("move/#", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect(&broker, "move-pub", Default::default());

    // Reconnect with the same id until the kernel places the new connection on the other shard;
    // each attempt takes the session over from the one before.
    let mut current = old;
    for attempt in 0..64 {
        let (new, present) = RawClient::connect(&broker, "mover", persistent());
        assert!(present, "attempt {attempt}: session present on takeover");
        assert!(current.is_closed_by_broker(), "the previous connection is closed");
        current = new;
        if broker.shard_of("mover") != old_shard {
            publisher.publish("move/t", b"followed", QoS::AtLeastOnce, false);
            assert_eq!(&current.receive().payload[..], b"followed");
            return;
        }
    }
    panic!("never landed on another shard");
}

#[test]
fn queued_messages_move_with_a_taken_over_session() {
    let broker = Broker::start("");
    let (sub, _) = RawClient::connect(&broker, "carrier", persistent());
    drop(sub); // abnormal close: the session stays, offline
    let (mut sub, _) = RawClient::connect(&broker, "carrier", persistent());
    sub.subscribe("carry/#", QoS::AtLeastOnce);
    sub.disconnect();
    let (mut publisher, _) = RawClient::connect(&broker, "carry-pub", Default::default());
    for i in 0..5u8 {
        publisher.publish("carry/t", &[i], QoS::AtLeastOnce, false);
    }
    // Whatever shard this connection lands on, the queued messages follow it.
    let (mut sub, present) = RawClient::connect(&broker, "carrier", persistent());
    assert!(present);
    for i in 0..5u8 {
        assert_eq!(&sub.receive().payload[..], &[i]);
    }
}

#[test]
fn overlapping_subscriptions_deliver_one_copy_at_the_highest_qos() {
    let broker = Broker::start("");
    let (mut sub, _) = RawClient::connect(&broker, "overlap", Default::default());
    sub.subscribe("ov/#", QoS::AtMostOnce);
    sub.subscribe("ov/+", QoS::ExactlyOnce);
    sub.subscribe("ov/x", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect(&broker, "overlap-pub", Default::default());
    publisher.publish("ov/x", b"once", QoS::ExactlyOnce, false);
    assert_eq!(sub.receive().qos, QoS::ExactlyOnce);
    sub.expect_silence();
}

#[test]
fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let broker = Broker::start("");
    let (mut all, _) = RawClient::connect(&broker, "hash", Default::default());
    all.subscribe("#", QoS::AtMostOnce);
    all.subscribe("+/x", QoS::AtMostOnce);
    let (mut dollar, _) = RawClient::connect(&broker, "dollar", Default::default());
    dollar.subscribe("$app/#", QoS::AtMostOnce);
    let (mut publisher, _) = RawClient::connect(&broker, "dollar-pub", Default::default());
    publisher.publish("$app/x", b"d", QoS::AtMostOnce, false);
    assert_eq!(dollar.receive().topic.as_str(), "$app/x");
    all.expect_silence();
}

#[test]
fn unsubscribe_stops_delivery_on_every_shard() {
    let broker = Broker::start("");
    let (mut sub, _, mut publisher, _) =
        clients_on_different_shards(&broker, "u", Default::default);
    sub.subscribe("un/#", QoS::AtLeastOnce);
    publisher.publish("un/a", b"1", QoS::AtLeastOnce, false);
    assert_eq!(&sub.receive().payload[..], b"1");
    let packet_id = sub.packet_id();
    sub.send(&Packet::Unsubscribe(culex::protocol::Unsubscribe {
        packet_id,
        properties: Default::default(),
        filters: vec![culex::protocol::TopicFilter::new("un/#").unwrap()],
    }));
    assert!(matches!(sub.recv(), Some(Packet::UnsubAck(a)) if a.packet_id == packet_id));
    publisher.publish("un/a", b"2", QoS::AtLeastOnce, false);
    sub.expect_silence();
}

#[test]
fn a_malformed_packet_closes_only_its_own_connection() {
    let broker = Broker::start("");
    let (mut sub, _, mut publisher, _) =
        clients_on_different_shards(&broker, "m", Default::default);
    sub.subscribe("safe/#", QoS::AtLeastOnce);
    for garbage in [
        &b"\x30\x03\x00\x01+"[..],        // wildcard in a topic name
        &b"\x82\x02\x00\x01"[..],         // SUBSCRIBE without filters
        &b"\x30\xff\xff\xff\xff\x01"[..], // five-byte remaining length
        &b"\x00\x00"[..],                 // reserved packet type
        &b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"[..], // second CONNECT
    ] {
        let (mut bad, _) = RawClient::connect(&broker, "vandal", Default::default());
        bad.write_raw(garbage);
        assert!(bad.is_closed_by_broker(), "{garbage:x?} did not close the connection");
        publisher.publish("safe/t", b"still here", QoS::AtLeastOnce, false);
        assert_eq!(&sub.receive().payload[..], b"still here");
    }
    assert!(broker.log_text().contains("malformed packet") || !broker.log_text().is_empty());
}

#[test]
fn connack_return_codes() {
    let broker = Broker::start("");
    // Unsupported protocol level: return code 1 in 3.1.1 format.
    let mut client = RawClient::open(&broker);
    client.write_raw(b"\x10\x0c\x00\x04MQTT\x07\x02\x00\x3c\x00\x00");
    assert!(
        matches!(client.recv(), Some(Packet::ConnAck(a)) if a.reason == ReasonCode::UnsupportedProtocolVersion)
    );

    // Zero-length client id: assigned with clean session, refused without (and always in 3.1).
    let (_, _) = RawClient::connect(&broker, "", Default::default());
    let mut client = RawClient::open(&broker);
    let refused = client.handshake("", persistent());
    assert!(
        matches!(refused, Packet::ConnAck(a) if a.reason == ReasonCode::ClientIdentifierNotValid)
    );
    let mut client = RawClient::open(&broker);
    let refused = client
        .handshake("", ConnectOptions { version: ProtocolVersion::V31, ..Default::default() });
    assert!(
        matches!(refused, Packet::ConnAck(a) if a.reason == ReasonCode::ClientIdentifierNotValid)
    );

    // MQTT 3.1 clients are served, and talk with 3.1.1 clients.
    let v31 = || ConnectOptions { version: ProtocolVersion::V31, ..Default::default() };
    let (mut old_sub, _) = RawClient::connect(&broker, "old-sub", v31());
    old_sub.subscribe("v31", QoS::AtLeastOnce);
    let (mut old_pub, _) = RawClient::connect(&broker, "old-pub", v31());
    old_pub.publish("v31", b"ok", QoS::ExactlyOnce, false);
    assert_eq!(&old_sub.receive().payload[..], b"ok");
    let (mut new_pub, _) = RawClient::connect(&broker, "new-pub", Default::default());
    new_pub.publish("v31", b"mixed", QoS::AtLeastOnce, false);
    assert_eq!(&old_sub.receive().payload[..], b"mixed");
}

#[test]
fn anonymous_clients_are_refused_when_a_listener_does_not_allow_them() {
    let port = common::free_port();
    let broker = Broker::start_with_config(port, &format!("listener {port} 127.0.0.1\n"));
    let mut client = RawClient::open(&broker);
    let refused = client.handshake("anon", Default::default());
    assert!(matches!(refused, Packet::ConnAck(a) if a.reason == ReasonCode::NotAuthorized));
}

#[test]
fn offline_queue_is_bounded_by_max_queued_messages() {
    let broker = Broker::start("max_queued_messages 2");
    let (mut sub, _) = RawClient::connect(&broker, "bounded", persistent());
    sub.subscribe("bound/#", QoS::AtLeastOnce);
    sub.disconnect();
    let (mut publisher, _) = RawClient::connect(&broker, "bound-pub", Default::default());
    for i in 0..5u8 {
        publisher.publish("bound/t", &[i], QoS::AtLeastOnce, false);
    }
    let (mut sub, _) = RawClient::connect(&broker, "bounded", persistent());
    assert_eq!(&sub.receive().payload[..], &[0]);
    assert_eq!(&sub.receive().payload[..], &[1]);
    sub.expect_silence();
}

#[test]
fn inflight_window_holds_back_until_acknowledged() {
    let broker = Broker::start("max_inflight_messages 1");
    let (mut sub, _) = RawClient::connect(&broker, "window", Default::default());
    sub.subscribe("win/#", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect(&broker, "win-pub", Default::default());
    publisher.publish("win/t", b"1", QoS::AtLeastOnce, false);
    publisher.publish("win/t", b"2", QoS::AtLeastOnce, false);
    let Some(Packet::Publish(first)) = sub.recv() else { panic!() };
    sub.expect_silence();
    sub.acknowledge(&first);
    assert_eq!(&sub.receive().payload[..], b"2");
}

#[test]
fn a_restarted_broker_binds_its_port_again_at_once() {
    let port = common::free_port();
    let config = format!("listener {port} 127.0.0.1\nallow_anonymous true\n");
    let broker = Broker::start_with_config(port, &config);
    // Connections the broker closes leave TIME_WAIT sockets on its port.
    for _ in 0..3 {
        let (mut client, _) = RawClient::connect(&broker, "restart", Default::default());
        client.write_raw(b"\x00\x00");
        assert!(client.is_closed_by_broker());
    }
    drop(broker);
    let mut again = Broker::start_with_config(port, &config);
    assert!(again.is_running());
}

#[test]
fn a_port_in_use_and_a_bad_config_stop_the_broker_with_a_clear_error() {
    let broker = Broker::start("");
    let dir = common::TempDir::new();
    let conf = dir.0.join("dup.conf");
    std::fs::write(&conf, format!("listener {} 127.0.0.1\n", broker.port)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_culex")).arg("-c").arg(&conf).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in use"));

    std::fs::write(&conf, "listener 1883\nmax_inflight_messages ten\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_culex")).arg("-c").arg(&conf).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains(&format!("{}:2: invalid value for `max_inflight_messages`", conf.display())),
        "{stderr}"
    );
}

#[test]
fn offline_queue_is_bounded_by_max_queued_bytes() {
    // Each queued message counts its topic and payload: "bytes/t" (7) + 10 = 17 bytes.
    let broker = Broker::start("max_queued_bytes 40");
    let (mut sub, _) = RawClient::connect(&broker, "byte-bound", persistent());
    sub.subscribe("bytes/#", QoS::AtLeastOnce);
    sub.disconnect();
    let (mut publisher, _) = RawClient::connect(&broker, "byte-pub", Default::default());
    for i in 0..4u8 {
        publisher.publish("bytes/t", &[i; 10], QoS::AtLeastOnce, false);
    }
    let (mut sub, _) = RawClient::connect(&broker, "byte-bound", persistent());
    assert_eq!(&sub.receive().payload[..], &[0; 10]);
    assert_eq!(&sub.receive().payload[..], &[1; 10]);
    sub.expect_silence();
}

#[test]
fn sigterm_and_sigint_stop_the_broker() {
    for signal in ["-TERM", "-INT"] {
        let mut broker = Broker::start("");
        let (_client, _) = RawClient::connect(&broker, "bystander", Default::default());
        let status =
            Command::new("kill").arg(signal).arg(broker.pid().to_string()).status().unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + common::WAIT;
        while broker.is_running() {
            assert!(std::time::Instant::now() < deadline, "still running after kill {signal}");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(broker.log_text().contains("shutting down"));
    }
}

#[test]
fn daemon_mode_detaches_and_serves() {
    let port = common::free_port();
    let dir = common::TempDir::new();
    let conf = dir.0.join("daemon.conf");
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\n")).unwrap();
    // -d returns at once: the broker lives on in the background.
    let status =
        Command::new(env!("CARGO_BIN_EXE_culex")).arg("-c").arg(&conf).arg("-d").status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + common::WAIT;
    let stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("daemon did not listen: {e}"),
        }
    };
    drop(stream);
    // Find the daemon by its config path and stop it.
    let pids = Command::new("pgrep").arg("-f").arg(conf.to_str().unwrap()).output().unwrap();
    let pids = String::from_utf8_lossy(&pids.stdout).to_string();
    assert!(!pids.trim().is_empty(), "no daemon process found");
    for pid in pids.split_whitespace() {
        Command::new("kill").arg(pid).status().unwrap();
    }
}

/// CONNECT with a username, answered by the CONNACK's reason (`None`: closed without one).
fn connect_as(broker: &Broker, client_id: &str, username: Option<&str>) -> (RawClient, ReasonCode) {
    let mut client = RawClient::open(broker);
    client.send(&Packet::Connect(Box::new(culex::protocol::Connect {
        protocol: ProtocolVersion::V311,
        bridge: false,
        clean_start: true,
        keep_alive_secs: 60,
        properties: Default::default(),
        client_id: client_id.into(),
        will: None,
        username: username.map(Into::into),
        password: None,
    })));
    match client.recv() {
        Some(Packet::ConnAck(connack)) => (client, connack.reason),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// `clientid_prefixes` and `use_username_as_clientid`, compared by hand with Mosquitto 2.0.11:
/// an id without the prefix is not authorised (return code 5); with the username as client id,
/// a client without a username is not authorised, and one with it takes over the session of
/// that name.
#[test]
fn client_id_prefixes_and_usernames_as_client_ids() {
    let broker = Broker::start("clientid_prefixes dev-\nuse_username_as_clientid true");
    assert_eq!(connect_as(&broker, "other", Some("dev-a")).1, ReasonCode::NotAuthorized);
    assert_eq!(connect_as(&broker, "dev-1", None).1, ReasonCode::NotAuthorized);
    let (mut first, reason) = connect_as(&broker, "dev-1", Some("dev-user"));
    assert_eq!(reason, ReasonCode::Success);
    // The broker's connect line names the client by its username (`shard_of` waits for it).
    broker.shard_of("dev-user");
    // Another id, same username: the same client as far as the broker is concerned.
    let (_second, reason) = connect_as(&broker, "dev-2", Some("dev-user"));
    assert_eq!(reason, ReasonCode::Success);
    assert!(first.is_closed_by_broker(), "the first connection was taken over");
}

/// `upgrade_outgoing_qos true`, as Mosquitto 2.0.11 (checked by hand): a QoS 0 message reaches a
/// QoS 2 subscription at QoS 2, retained messages included.
#[test]
fn upgrade_outgoing_qos_delivers_at_the_subscription_qos() {
    let broker = Broker::start("upgrade_outgoing_qos true");
    let (mut publisher, _) = RawClient::connect(&broker, "up-pub", ConnectOptions::default());
    publisher.publish("up/kept", b"r", QoS::AtMostOnce, true);
    let (mut sub, _) = RawClient::connect(&broker, "up-sub", ConnectOptions::default());
    sub.subscribe("up/#", QoS::ExactlyOnce);
    assert_eq!(sub.receive().qos, QoS::ExactlyOnce);
    publisher.publish("up/live", b"l", QoS::AtMostOnce, false);
    let live = sub.receive();
    assert_eq!((&live.payload[..], live.qos), (&b"l"[..], QoS::ExactlyOnce));
}
