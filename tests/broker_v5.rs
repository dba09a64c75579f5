//! MQTT 5.0 behaviour of the real `culex` binary (two shards), driven by exact packets.

// Properties are built one field at a time so each test shows exactly what it sets.
#![allow(clippy::field_reassign_with_default)]

mod common;

use std::num::NonZeroU16;
use std::time::Duration;

use bytes::Bytes;
use common::{clients_on_different_shards, will, Broker, ConnectOptions, RawClient};
use culex::protocol::{
    Ack, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, ReasonCode, Subscribe,
    SubscriptionId, SubscriptionOptions, TopicFilter, TopicName,
};

fn v5() -> ConnectOptions {
    ConnectOptions { version: ProtocolVersion::V5, ..Default::default() }
}

fn v5_session(expiry_secs: u32) -> ConnectOptions {
    let mut properties = Properties::default();
    properties.session_expiry_interval = Some(expiry_secs);
    ConnectOptions {
        version: ProtocolVersion::V5,
        clean_start: false,
        properties,
        ..Default::default()
    }
}

fn publish_with(client: &mut RawClient, topic: &str, properties: Properties, qos: QoS) {
    let packet_id = (qos != QoS::AtMostOnce).then(|| client.packet_id());
    client.send(&Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::new(topic.to_string()).unwrap(),
        packet_id,
        properties,
        payload: Bytes::from_static(b"v5"),
    }));
    if qos == QoS::AtLeastOnce {
        assert!(matches!(client.recv(), Some(Packet::PubAck(_))));
    }
}

fn subscribe_with(
    client: &mut RawClient,
    filter: &str,
    options: SubscriptionOptions,
    id: Option<u32>,
) {
    let packet_id = client.packet_id();
    let mut properties = Properties::default();
    properties.subscription_identifiers = id.and_then(SubscriptionId::new).into_iter().collect();
    client.send(&Packet::Subscribe(Subscribe {
        packet_id,
        properties,
        filters: vec![(TopicFilter::new(filter.to_string()).unwrap(), options)],
    }));
    assert!(matches!(client.recv(), Some(Packet::SubAck(a)) if a.packet_id == packet_id));
}

fn expect_disconnect(client: &mut RawClient, reason: ReasonCode) {
    match client.recv() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason),
        other => panic!("expected DISCONNECT {reason:?}, got {other:?}"),
    }
    assert!(client.is_closed_by_broker());
}

#[test]
fn connack_announces_what_the_broker_supports() {
    let broker = Broker::start("");
    let mut client = RawClient::open(&broker);
    let Packet::ConnAck(connack) = client.handshake("", v5()) else { panic!("no CONNACK") };
    assert_eq!(connack.reason, ReasonCode::Success);
    let p = &connack.properties;
    assert_eq!(p.topic_alias_maximum, Some(10));
    // Shared subscriptions are available: the property is left at its default (true).
    assert_eq!(p.shared_subscription_available, None);
    let assigned = p.assigned_client_identifier.as_ref().expect("an assigned client id");
    assert!(assigned.starts_with("auto-"));
}

#[test]
fn session_expiry_keeps_a_session_for_its_interval_only() {
    let broker = Broker::start("");
    let (mut sub, present) = RawClient::connect(&broker, "expiring", v5_session(1));
    assert!(!present);
    sub.subscribe("exp/#", QoS::AtLeastOnce);
    sub.disconnect();
    let (mut publisher, _) = RawClient::connect(&broker, "exp-pub", v5());
    publisher.publish("exp/t", b"kept", QoS::AtLeastOnce, false);
    let (mut sub, present) = RawClient::connect(&broker, "expiring", v5_session(1));
    assert!(present, "resumed within the interval");
    assert_eq!(&sub.receive().payload[..], b"kept");
    sub.disconnect();
    std::thread::sleep(Duration::from_millis(2500));
    let (_, present) = RawClient::connect(&broker, "expiring", v5_session(1));
    assert!(!present, "the session expired after its interval");
}

#[test]
fn expiry_zero_ends_the_session_at_disconnect_even_without_clean_start() {
    let broker = Broker::start("");
    let (mut sub, _) = RawClient::connect(&broker, "zero", v5_session(0));
    sub.subscribe("zero/#", QoS::AtLeastOnce);
    sub.disconnect();
    let (_, present) = RawClient::connect(&broker, "zero", v5_session(0));
    assert!(!present);
}

#[test]
fn disconnect_cannot_extend_a_session_that_ends_at_disconnect() {
    let broker = Broker::start("");
    let (mut client, _) = RawClient::connect(&broker, "extend", v5_session(0));
    let mut properties = Properties::default();
    properties.session_expiry_interval = Some(60);
    client.send(&Packet::Disconnect(culex::protocol::Disconnect {
        reason: ReasonCode::Success,
        properties,
    }));
    expect_disconnect(&mut client, ReasonCode::ProtocolError);
}

#[test]
fn disconnect_can_shorten_the_session_expiry() {
    let broker = Broker::start("");
    let (mut client, _) = RawClient::connect(&broker, "shorten", v5_session(600));
    client.subscribe("short/#", QoS::AtLeastOnce);
    let mut properties = Properties::default();
    properties.session_expiry_interval = Some(0);
    client.send(&Packet::Disconnect(culex::protocol::Disconnect {
        reason: ReasonCode::Success,
        properties,
    }));
    assert!(client.is_closed_by_broker());
    let (_, present) = RawClient::connect(&broker, "shorten", v5_session(600));
    assert!(!present);
}

#[test]
fn the_client_receive_maximum_caps_messages_in_flight() {
    let broker = Broker::start("");
    let mut options = v5();
    options.properties.receive_maximum = NonZeroU16::new(2);
    let (mut sub, _) = RawClient::connect(&broker, "small-window", options);
    sub.subscribe("rm/#", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect(&broker, "rm-pub", v5());
    for i in 0..4u8 {
        publisher.publish("rm/t", &[i], QoS::AtLeastOnce, false);
    }
    let Some(Packet::Publish(first)) = sub.recv() else { panic!() };
    let Some(Packet::Publish(_second)) = sub.recv() else { panic!() };
    sub.expect_silence();
    sub.acknowledge(&first);
    assert_eq!(&sub.receive().payload[..], &[2]);
}

#[test]
fn topic_aliases_from_the_client_are_resolved() {
    let broker = Broker::start("");
    let (mut sub, _, mut publisher, _) = clients_on_different_shards(&broker, "alias", v5);
    sub.subscribe("alias/#", QoS::AtMostOnce);
    let mut properties = Properties::default();
    properties.topic_alias = NonZeroU16::new(3);
    publish_with(&mut publisher, "alias/long/topic", properties.clone(), QoS::AtLeastOnce);
    publish_with(&mut publisher, "", properties, QoS::AtLeastOnce);
    for _ in 0..2 {
        let got = sub.receive();
        assert_eq!(got.topic.as_str(), "alias/long/topic");
        assert_eq!(got.properties.topic_alias, None, "the broker does not forward aliases");
    }
}

#[test]
fn invalid_topic_aliases_close_the_connection_with_their_reason() {
    let broker = Broker::start("");
    let (mut client, _) = RawClient::connect(&broker, "bad-alias", v5());
    let mut properties = Properties::default();
    properties.topic_alias = NonZeroU16::new(11);
    publish_with(&mut client, "a", properties, QoS::AtMostOnce);
    expect_disconnect(&mut client, ReasonCode::TopicAliasInvalid);

    let (mut client, _) = RawClient::connect(&broker, "unknown-alias", v5());
    let mut properties = Properties::default();
    properties.topic_alias = NonZeroU16::new(1);
    publish_with(&mut client, "", properties, QoS::AtMostOnce);
    expect_disconnect(&mut client, ReasonCode::ProtocolError);
}

#[test]
fn every_matching_subscription_identifier_is_delivered() {
    let broker = Broker::start("");
    let (mut sub, _) = RawClient::connect(&broker, "ids", v5());
    let options = SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() };
    subscribe_with(&mut sub, "ids/#", options, Some(5));
    subscribe_with(&mut sub, "ids/+", options, Some(7));
    subscribe_with(&mut sub, "ids/x", options, None);
    let (mut publisher, _) = RawClient::connect(&broker, "ids-pub", v5());
    publisher.publish("ids/x", b"m", QoS::AtLeastOnce, false);
    let got = sub.receive();
    let mut ids: Vec<u32> =
        got.properties.subscription_identifiers.iter().map(|i| i.get()).collect();
    ids.sort();
    assert_eq!(ids, [5, 7]);
    sub.expect_silence();
}

#[test]
fn message_expiry_counts_down_and_drops_expired_messages() {
    let broker = Broker::start("");
    let (mut sub, _) = RawClient::connect(&broker, "expiry-sub", v5_session(600));
    sub.subscribe("mexp/#", QoS::AtLeastOnce);
    sub.disconnect();
    let (mut publisher, _) = RawClient::connect(&broker, "expiry-pub", v5());
    let mut short = Properties::default();
    short.message_expiry_interval = Some(1);
    publish_with(&mut publisher, "mexp/short", short, QoS::AtLeastOnce);
    let mut long = Properties::default();
    long.message_expiry_interval = Some(60);
    publish_with(&mut publisher, "mexp/long", long, QoS::AtLeastOnce);
    std::thread::sleep(Duration::from_millis(2100));
    let (mut sub, present) = RawClient::connect(&broker, "expiry-sub", v5_session(600));
    assert!(present);
    let got = sub.receive();
    assert_eq!(got.topic.as_str(), "mexp/long", "the expired message was dropped");
    let left = got.properties.message_expiry_interval.expect("remaining interval");
    assert!(left <= 58, "interval counted down while queued: {left}");
    sub.expect_silence();
}

#[test]
fn publish_properties_pass_through_and_3x_subscribers_get_plain_messages() {
    let broker = Broker::start("");
    let (mut sub5, _) = RawClient::connect(&broker, "pp-v5", v5());
    sub5.subscribe("pp/#", QoS::AtMostOnce);
    let (mut sub3, _) = RawClient::connect(&broker, "pp-v3", Default::default());
    sub3.subscribe("pp/#", QoS::AtMostOnce);
    let (mut publisher, _) = RawClient::connect(&broker, "pp-pub", v5());
    let mut properties = Properties::default();
    properties.payload_format_indicator = Some(true);
    properties.content_type = Some("text/plain".into());
    properties.response_topic = Some(TopicName::new("pp/reply").unwrap());
    properties.correlation_data = Some(Bytes::from_static(b"c-1"));
    properties.user_properties = vec![("z".into(), "1".into()), ("a".into(), "2".into())];
    publish_with(&mut publisher, "pp/t", properties.clone(), QoS::AtMostOnce);
    assert_eq!(sub5.receive().properties, properties);
    assert_eq!(sub3.receive().topic.as_str(), "pp/t");
}

#[test]
fn no_local_and_retain_as_published() {
    let broker = Broker::start("");
    let (mut client, _) = RawClient::connect(&broker, "self", v5());
    let no_local =
        SubscriptionOptions { qos: QoS::AtMostOnce, no_local: true, ..Default::default() };
    subscribe_with(&mut client, "nl/#", no_local, None);
    let rap = SubscriptionOptions { retain_as_published: true, ..Default::default() };
    subscribe_with(&mut client, "rap/#", rap, None);
    client.publish("nl/t", b"mine", QoS::AtMostOnce, false);
    client.expect_silence();
    let (mut other, _) = RawClient::connect(&broker, "other", v5());
    other.publish("rap/t", b"r", QoS::AtMostOnce, true);
    assert!(client.receive().retain, "retain as published keeps the flag");
}

#[test]
fn an_authentication_method_is_refused_with_0x8c() {
    let broker = Broker::start("");
    let mut options = v5();
    options.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let mut client = RawClient::open(&broker);
    let refused = client.handshake("auth", options);
    assert!(
        matches!(refused, Packet::ConnAck(a) if a.reason == ReasonCode::BadAuthenticationMethod)
    );
}

#[test]
fn a_taken_over_v5_client_is_told_0x8e() {
    let broker = Broker::start("");
    let (mut old, _) = RawClient::connect(&broker, "twice", v5());
    let (_new, _) = RawClient::connect(&broker, "twice", v5());
    expect_disconnect(&mut old, ReasonCode::SessionTakenOver);
}

#[test]
fn a_malformed_packet_from_a_v5_client_gets_0x81() {
    let broker = Broker::start("reason_strings true");
    let (mut client, _) = RawClient::connect(&broker, "garbled", v5());
    // A PUBLISH whose property length runs past the packet.
    client.write_raw(b"\x30\x05\x00\x01a\x09\x01");
    match client.recv() {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason, ReasonCode::MalformedPacket);
            // The Reason String is what the decoder found, not just the code's name.
            let said = d.properties.reason_string.expect("a reason string");
            assert_ne!(&*said, ReasonCode::MalformedPacket.description(), "{said}");
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(client.is_closed_by_broker());
}

/// As Mosquitto 2.0: no Reason String unless `reason_strings true` asks for them.
#[test]
fn refusals_carry_no_reason_string_by_default() {
    let broker = Broker::start("max_qos 1");
    let mut options = v5();
    options.will = Some(will("w/t", "x", QoS::ExactlyOnce, false));
    let mut client = RawClient::open(&broker);
    match client.handshake("plain-refusal", options) {
        Packet::ConnAck(connack) => {
            assert_eq!(connack.reason, ReasonCode::QosNotSupported);
            assert_eq!(connack.properties.reason_string, None);
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let (mut client, _) = RawClient::connect(&broker, "plain-garbled", v5());
    client.write_raw(b"\x30\x05\x00\x01a\x09\x01");
    match client.recv() {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason, ReasonCode::MalformedPacket);
            assert_eq!(d.properties.reason_string, None);
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    let mut utf8 = Properties::default();
    utf8.payload_format_indicator = Some(true);
    let (mut client, _) = RawClient::connect(&broker, "plain-pfi", v5());
    let ack = puback_of(&mut client, "pfi/bad", utf8, b"\xff");
    assert_eq!(
        (ack.reason, ack.properties.reason_string),
        (ReasonCode::PayloadFormatInvalid, None)
    );
}

fn with_delayed_will(expiry_secs: u32, delay_secs: u32) -> ConnectOptions {
    let mut options = v5_session(expiry_secs);
    let mut will = common::will("delayed/will", "late", QoS::AtLeastOnce, false);
    will.properties.will_delay_interval = Some(delay_secs);
    options.will = Some(will);
    options
}

#[test]
fn a_delayed_will_is_dropped_when_the_session_resumes_in_time() {
    let broker = Broker::start("");
    let (mut watcher, _) = RawClient::connect(&broker, "will-watcher", v5());
    watcher.subscribe("delayed/#", QoS::AtLeastOnce);
    let (client, _) = RawClient::connect(&broker, "delayer", with_delayed_will(60, 2));
    client.drop_connection();
    std::thread::sleep(Duration::from_millis(300));
    let (client, present) = RawClient::connect(&broker, "delayer", with_delayed_will(60, 2));
    assert!(present);
    assert!(watcher.recv_within(Duration::from_millis(2800)).is_none(), "will sent despite resume");
    // Dropped again and not resumed: the will comes after its delay.
    client.drop_connection();
    assert!(
        watcher.recv_within(Duration::from_millis(1000)).is_none(),
        "will sent before its delay"
    );
    assert_eq!(&watcher.receive().payload[..], b"late");
}

#[test]
fn a_delayed_will_is_sent_when_the_session_ends_first() {
    let broker = Broker::start("");
    let (mut watcher, _) = RawClient::connect(&broker, "end-watcher", v5());
    watcher.subscribe("delayed/#", QoS::AtLeastOnce);
    let (client, _) = RawClient::connect(&broker, "short-lived", with_delayed_will(1, 60));
    client.drop_connection();
    assert_eq!(&watcher.receive().payload[..], b"late");
}

#[test]
fn topic_aliases_toward_the_client_stay_within_its_maximum() {
    let broker = Broker::start("");
    let mut options = v5();
    options.properties.topic_alias_maximum = Some(2);
    let (mut sub, _) = RawClient::connect(&broker, "aliased", options);
    sub.subscribe("out/#", QoS::AtMostOnce);
    let (mut publisher, _) = RawClient::connect(&broker, "alias-pub", v5());
    for topic in ["out/a", "out/a", "out/b", "out/c", "out/b"] {
        publisher.publish(topic, b"x", QoS::AtMostOnce, false);
    }
    let got: Vec<(String, Option<u16>)> = (0..5)
        .map(|_| {
            let p = sub.receive();
            (p.topic.to_string(), p.properties.topic_alias.map(|a| a.get()))
        })
        .collect();
    assert_eq!(
        got,
        [
            ("out/a".to_string(), Some(1)),
            (String::new(), Some(1)),
            ("out/b".to_string(), Some(2)),
            ("out/c".to_string(), None),
            (String::new(), Some(2)),
        ]
    );
}

/// A client that allows every alias (65,535) gets `max_topic_alias_broker` of them (Mosquitto
/// 2.1's option, default 10): each one holds a topic for the connection's life, so a client
/// must not choose how many.
#[test]
fn topic_aliases_toward_the_client_are_bounded_by_max_topic_alias_broker() {
    for (config, bound) in [("", 10), ("max_topic_alias_broker 3\n", 3)] {
        let broker = Broker::start(config);
        let mut options = v5();
        options.properties.topic_alias_maximum = Some(u16::MAX);
        let (mut sub, _) = RawClient::connect(&broker, "greedy", options);
        sub.subscribe("many/#", QoS::AtMostOnce);
        let (mut publisher, _) = RawClient::connect(&broker, "many-pub", v5());
        let topics: Vec<String> = (0..bound + 5).map(|i| format!("many/{i}")).collect();
        for topic in topics.iter().chain(&topics) {
            publisher.publish(topic, b"x", QoS::AtMostOnce, false);
        }
        let mut aliases = Vec::new();
        for _ in 0..topics.len() * 2 {
            aliases.push(sub.receive().properties.topic_alias.map(|a| a.get()));
        }
        let mut used: Vec<u16> = aliases.iter().flatten().copied().collect();
        used.sort_unstable();
        used.dedup();
        assert_eq!(used, (1..=bound).collect::<Vec<_>>(), "{config:?}");
        let in_full = aliases.iter().filter(|alias| alias.is_none()).count();
        assert_eq!(in_full, 2 * 5, "{config:?}: the topics past the bound go in full");
    }
}

#[test]
fn shutdown_tells_v5_clients_0x8b() {
    let broker = Broker::start("");
    let (mut client, _) = RawClient::connect(&broker, "leaving", v5());
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(broker.pid().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    expect_disconnect(&mut client, ReasonCode::ServerShuttingDown);
}

/// Everything a client receives until it has been quiet for a moment, acknowledged.
fn drain_payloads(client: &mut RawClient) -> Vec<Vec<u8>> {
    let mut payloads = Vec::new();
    while let Some(packet) = client.recv_within(Duration::from_millis(400)) {
        if let Packet::Publish(publish) = packet {
            client.acknowledge(&publish);
            payloads.push(publish.payload.to_vec());
        }
    }
    payloads
}

#[test]
fn a_shared_group_gets_each_message_once_across_shards() {
    let broker = Broker::start("");
    let (mut a, _, mut b, _) = clients_on_different_shards(&broker, "member", v5);
    a.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce);
    b.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce);
    let (mut everyone, _) = RawClient::connect(&broker, "plain", v5());
    everyone.subscribe("jobs/#", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect(&broker, "boss", v5());
    for i in 0..20u8 {
        publisher.publish("jobs/new", &[i], QoS::AtLeastOnce, false);
    }
    let (got_a, got_b) = (drain_payloads(&mut a), drain_payloads(&mut b));
    assert!(!got_a.is_empty() && !got_b.is_empty(), "both members take turns: {got_a:?} {got_b:?}");
    let mut all: Vec<Vec<u8>> = got_a.into_iter().chain(got_b).collect();
    all.sort();
    assert_eq!(all, (0..20u8).map(|i| vec![i]).collect::<Vec<_>>(), "each message exactly once");
    assert_eq!(drain_payloads(&mut everyone).len(), 20, "a plain subscriber still gets all");
}

#[test]
fn mqtt_311_clients_may_use_shared_subscriptions() {
    let broker = Broker::start("");
    let (mut a, _, mut b, _) = clients_on_different_shards(&broker, "v3member", Default::default);
    a.subscribe("$share/g/v3/#", QoS::AtLeastOnce);
    b.subscribe("$share/g/v3/#", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect(&broker, "v3boss", Default::default());
    for i in 0..10u8 {
        publisher.publish("v3/x", &[i], QoS::AtLeastOnce, false);
    }
    assert_eq!(drain_payloads(&mut a).len() + drain_payloads(&mut b).len(), 10);
}

#[test]
fn a_member_that_leaves_stops_receiving_and_its_unacknowledged_messages_move() {
    let broker = Broker::start("");
    let (mut stays, _, mut leaves, _) = clients_on_different_shards(&broker, "churn", v5);
    stays.subscribe("$share/g/work", QoS::AtLeastOnce);
    leaves.subscribe("$share/g/work", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect(&broker, "churn-pub", v5());
    for i in 0..4u8 {
        publisher.publish("work", &[i], QoS::AtLeastOnce, false);
    }
    // The leaving member takes its share without acknowledging, then drops (clean session).
    let mut unacknowledged = 0;
    while let Some(Packet::Publish(_)) = leaves.recv_within(Duration::from_millis(400)) {
        unacknowledged += 1;
    }
    assert!(unacknowledged > 0);
    leaves.drop_connection();
    for i in 4..8u8 {
        publisher.publish("work", &[i], QoS::AtLeastOnce, false);
    }
    let mut got = drain_payloads(&mut stays);
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 8, "the remaining member got everything: {got:?}");
}

#[test]
fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let broker = Broker::start("");
    let (mut client, _) = RawClient::connect(&broker, "nl-share", v5());
    let options = SubscriptionOptions { no_local: true, ..Default::default() };
    let packet_id = client.packet_id();
    client.send(&Packet::Subscribe(Subscribe {
        packet_id,
        properties: Properties::default(),
        filters: vec![(TopicFilter::new("$share/g/t").unwrap(), options)],
    }));
    expect_disconnect(&mut client, ReasonCode::ProtocolError);
}

#[test]
fn packets_larger_than_the_client_accepts_are_not_sent_to_it() {
    let broker = Broker::start("");
    let mut options = v5();
    options.properties.maximum_packet_size = std::num::NonZeroU32::new(64);
    let (mut small, _) = RawClient::connect(&broker, "small-packets", options);
    small.subscribe("size/#", QoS::AtMostOnce);
    let (mut publisher, _) = RawClient::connect(&broker, "size-pub", v5());
    publisher.publish("size/t", &[7; 200], QoS::AtMostOnce, false);
    publisher.publish("size/t", b"fits", QoS::AtMostOnce, false);
    assert_eq!(&small.receive().payload[..], b"fits");
    small.expect_silence();
}

#[test]
fn the_broker_maximum_packet_size_is_announced_and_enforced_with_0x95() {
    let broker = Broker::start("max_packet_size 100");
    let mut client = RawClient::open(&broker);
    let Packet::ConnAck(connack) = client.handshake("big", v5()) else { panic!() };
    assert_eq!(connack.properties.maximum_packet_size.map(|m| m.get()), Some(100));
    client.publish("big/t", &[0; 200], QoS::AtMostOnce, false);
    expect_disconnect(&mut client, ReasonCode::PacketTooLarge);
}

#[test]
/// 5.0 clients are told the Receive Maximum and held to it. 3.1.1 clients never hear of it, and
/// Mosquitto 2.0.11 answers a 3.1.1 client's 40 unreleased QoS 2 messages with 40 PUBRECs
/// (checked by hand); its own bridges rely on that when they resend a backlog.
fn more_unreleased_qos2_messages_than_the_receive_maximum_are_refused_in_5_0() {
    let broker = Broker::start("");
    for (version, reason) in [
        (ProtocolVersion::V5, Some(ReasonCode::ReceiveMaximumExceeded)),
        (ProtocolVersion::V311, None),
    ] {
        let mut client = RawClient::open(&broker);
        let Packet::ConnAck(connack) =
            client.handshake("flood", ConnectOptions { version, ..Default::default() })
        else {
            panic!()
        };
        if version.is_v5() {
            // The default max_inflight_messages (20), announced as the Receive Maximum.
            assert_eq!(connack.properties.receive_maximum.map(|m| m.get()), Some(20));
        }
        let publish = |id: u16| {
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: TopicName::new("flood").unwrap(),
                packet_id: NonZeroU16::new(id),
                properties: Properties::default(),
                payload: Bytes::from_static(b"x"),
            })
        };
        for id in 1..=20 {
            client.send(&publish(id));
            assert!(matches!(client.recv(), Some(Packet::PubRec(_))));
        }
        client.send(&publish(21));
        match reason {
            Some(reason) => expect_disconnect(&mut client, reason),
            None => assert!(matches!(client.recv(), Some(Packet::PubRec(_)))),
        }
    }
}

#[test]
fn disconnect_with_0x04_publishes_the_will() {
    let broker = Broker::start("");
    let (mut watcher, _) = RawClient::connect(&broker, "w04-watch", v5());
    watcher.subscribe("w04/#", QoS::AtMostOnce);
    let mut options = v5();
    options.will = Some(common::will("w04/gone", "asked for", QoS::AtMostOnce, false));
    let (mut client, _) = RawClient::connect(&broker, "w04", options);
    client.send(&Packet::Disconnect(culex::protocol::Disconnect::new(
        ReasonCode::DisconnectWithWillMessage,
    )));
    assert_eq!(&watcher.receive().payload[..], b"asked for");
}

#[test]
fn unsuback_says_which_subscriptions_existed() {
    let broker = Broker::start("");
    let (mut client, _) = RawClient::connect(&broker, "unsub5", v5());
    client.subscribe("u5/a", QoS::AtMostOnce);
    let packet_id = client.packet_id();
    client.send(&Packet::Unsubscribe(culex::protocol::Unsubscribe {
        packet_id,
        properties: Properties::default(),
        filters: vec![TopicFilter::new("u5/a").unwrap(), TopicFilter::new("u5/b").unwrap()],
    }));
    match client.recv() {
        Some(Packet::UnsubAck(ack)) => {
            assert_eq!(ack.reasons, [ReasonCode::Success, ReasonCode::NoSubscriptionExisted])
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
}

#[test]
fn max_keepalive_becomes_the_server_keep_alive_of_v5_clients_only() {
    let broker = Broker::start("max_keepalive 20");
    let mut client = RawClient::open(&broker);
    let options = ConnectOptions { keep_alive_secs: 100, ..v5() };
    let Packet::ConnAck(connack) = client.handshake("ka5", options) else { panic!() };
    assert_eq!(connack.properties.server_keep_alive, Some(20));
    let mut client = RawClient::open(&broker);
    let options = ConnectOptions { keep_alive_secs: 10, ..v5() };
    let Packet::ConnAck(connack) = client.handshake("ka5-ok", options) else { panic!() };
    assert_eq!(connack.properties.server_keep_alive, None);
    // 3.1.1 has no way to say it: the client's value stands.
    let (_, _) = RawClient::connect(
        &broker,
        "ka3",
        ConnectOptions { keep_alive_secs: 100, ..Default::default() },
    );
}

/// `retain_available false`: announced in CONNACK; a retained PUBLISH then gets DISCONNECT 0x9A
/// from a 5.0 client's broker and closes a 3.1.1 client's connection (as Mosquitto 2.0.11),
/// and nothing is delivered or stored. Without RETAIN, publishing works as usual.
#[test]
fn retained_publishes_are_refused_when_retain_is_unavailable() {
    let broker = Broker::start("retain_available false");
    let (mut watcher, _) = RawClient::connect(&broker, "ra-watch", v5());
    watcher.subscribe("ra/#", QoS::AtMostOnce);

    let mut client = RawClient::open(&broker);
    let Packet::ConnAck(connack) = client.handshake("ra-v5", v5()) else { panic!("no CONNACK") };
    assert_eq!(connack.properties.retain_available, Some(false));
    client.publish("ra/plain", b"fine", QoS::AtMostOnce, false);
    assert_eq!(&watcher.receive().payload[..], b"fine");
    client.publish("ra/kept", b"no", QoS::AtMostOnce, true);
    expect_disconnect(&mut client, ReasonCode::RetainNotSupported);

    let (mut old, _) = RawClient::connect(&broker, "ra-v311", ConnectOptions::default());
    old.publish("ra/kept", b"no", QoS::AtMostOnce, true);
    assert!(old.is_closed_by_broker());
    watcher.expect_silence();
    let mut late = RawClient::connect(&broker, "ra-late", v5()).0;
    late.subscribe("ra/#", QoS::AtMostOnce);
    late.expect_silence();
}

/// A QoS 1 PUBLISH and what the broker acknowledges it with.
fn puback_of(client: &mut RawClient, topic: &str, properties: Properties, payload: &[u8]) -> Ack {
    let packet_id = client.packet_id();
    client.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::new(topic.to_string()).unwrap(),
        packet_id: Some(packet_id),
        properties,
        payload: Bytes::copy_from_slice(payload),
    }));
    match client.recv() {
        Some(Packet::PubAck(ack)) if ack.packet_id == packet_id => ack,
        other => panic!("expected PUBACK {packet_id}, got {other:?}"),
    }
}

fn qos2_publish(topic: &str, packet_id: PacketId) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: TopicName::new(topic.to_string()).unwrap(),
        packet_id: Some(packet_id),
        properties: Properties::default(),
        payload: Bytes::from_static(b"too high"),
    })
}

/// `max_qos 1`, compared by hand with Mosquitto 2.0.11: announced in CONNACK, subscriptions
/// granted at most 1, and a QoS 2 PUBLISH gets DISCONNECT 0x9B (5.0) or a closed connection
/// (3.1.1).
#[test]
fn max_qos_is_announced_granted_and_enforced() {
    let broker = Broker::start("max_qos 1");
    let mut client = RawClient::open(&broker);
    let Packet::ConnAck(connack) = client.handshake("mq-v5", v5()) else { panic!("no CONNACK") };
    assert_eq!(connack.properties.maximum_qos, Some(QoS::AtLeastOnce));
    assert_eq!(client.subscribe("mq/#", QoS::ExactlyOnce), [ReasonCode::GrantedQos1]);
    client.publish("mq/one", b"fine", QoS::AtLeastOnce, false);
    assert_eq!(client.receive().qos, QoS::AtLeastOnce);
    let packet_id = client.packet_id();
    client.send(&qos2_publish("mq/two", packet_id));
    expect_disconnect(&mut client, ReasonCode::QosNotSupported);

    let (mut old, _) = RawClient::connect(&broker, "mq-v311", ConnectOptions::default());
    assert_eq!(old.subscribe("mq/#", QoS::ExactlyOnce), [ReasonCode::GrantedQos1]);
    let packet_id = old.packet_id();
    old.send(&qos2_publish("mq/three", packet_id));
    assert!(old.is_closed_by_broker());
}

/// A will the broker could not honour is refused at CONNECT: 5.0 clients get the CONNACK
/// reason (0x9B above `max_qos`, 0x9A retained without `retain_available`, 0x99 a payload that
/// is not the UTF-8 it claims); a 3.1.1 client is closed without CONNACK, as Mosquitto 2.0.11
/// does (its return codes have no word for it).
#[test]
fn wills_the_broker_cannot_honour_are_refused_at_connect() {
    let broker = Broker::start("max_qos 1\nretain_available false\nreason_strings true");
    let mut not_utf8 = will("w/t", "", QoS::AtMostOnce, false);
    not_utf8.payload = Bytes::from_static(b"\xff\xfe");
    not_utf8.properties.payload_format_indicator = Some(true);
    for (last_will, reason) in [
        (will("w/t", "x", QoS::ExactlyOnce, false), ReasonCode::QosNotSupported),
        (will("w/t", "x", QoS::AtMostOnce, true), ReasonCode::RetainNotSupported),
        (not_utf8, ReasonCode::PayloadFormatInvalid),
    ] {
        let mut options = v5();
        options.will = Some(last_will.clone());
        let mut client = RawClient::open(&broker);
        match client.handshake("will-v5", options) {
            Packet::ConnAck(connack) => {
                assert_eq!(connack.reason, reason);
                let said = connack.properties.reason_string.expect("a reason string");
                assert_eq!(&*said, reason.description());
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        assert!(client.is_closed_by_broker());
        if last_will.properties.payload_format_indicator.is_none() {
            let options = ConnectOptions { will: Some(last_will), ..Default::default() };
            let mut old = RawClient::open(&broker);
            assert_eq!(old.try_handshake("will-v311", options), None);
        }
    }
    let mut fine = v5();
    fine.will = Some(will("w/t", "x", QoS::AtLeastOnce, false));
    RawClient::connect(&broker, "will-ok", fine);
}

/// A PUBLISH whose Payload Format Indicator claims UTF-8 must carry UTF-8: otherwise it is not
/// delivered and the publisher is told 0x99, with a Reason String unless it declined them
/// (Request Problem Information 0).
#[test]
fn a_payload_that_is_not_the_utf8_it_claims_is_refused_with_0x99() {
    let broker = Broker::start("reason_strings true");
    let (mut watcher, _) = RawClient::connect(&broker, "pfi-watch", v5());
    watcher.subscribe("pfi/#", QoS::AtLeastOnce);
    let mut utf8 = Properties::default();
    utf8.payload_format_indicator = Some(true);

    let (mut client, _) = RawClient::connect(&broker, "pfi", v5());
    let ack = puback_of(&mut client, "pfi/bad", utf8.clone(), b"\xc3\x28");
    assert_eq!(ack.reason, ReasonCode::PayloadFormatInvalid);
    assert_eq!(ack.properties.reason_string.as_deref(), Some("payload format invalid"));
    assert_eq!(
        puback_of(&mut client, "pfi/good", utf8.clone(), "héllo".as_bytes()).reason,
        ReasonCode::Success
    );
    assert_eq!(watcher.receive().payload, "héllo".as_bytes());
    watcher.expect_silence();

    let mut quiet = v5();
    quiet.properties.request_problem_information = Some(false);
    let (mut client, _) = RawClient::connect(&broker, "pfi-quiet", quiet);
    let ack = puback_of(&mut client, "pfi/bad", utf8, b"\xff");
    assert_eq!(ack.reason, ReasonCode::PayloadFormatInvalid);
    assert_eq!(ack.properties.reason_string, None);
}

/// As Mosquitto 2.0.11: a 5.0 publisher's PUBACK says 0x10 when nobody subscribes to the topic,
/// on any shard, and 0x00 once someone does (here a client on the other shard).
#[test]
fn puback_says_when_nobody_subscribes() {
    let broker = Broker::start("");
    let (mut publisher, _, mut subscriber, _) = clients_on_different_shards(&broker, "nms", v5);
    let ack = puback_of(&mut publisher, "nms/t", Properties::default(), b"x");
    assert_eq!(ack.reason, ReasonCode::NoMatchingSubscribers);
    subscriber.subscribe("nms/+", QoS::AtLeastOnce);
    let ack = puback_of(&mut publisher, "nms/t", Properties::default(), b"x");
    assert_eq!(ack.reason, ReasonCode::Success);
    assert_eq!(&subscriber.receive().payload[..], b"x");
}

/// `message_size_limit`, compared by hand with Mosquitto 2.0.11: a larger payload is dropped
/// and still acknowledged, and the connection stays. A 5.0 client is told 0x97 (Mosquitto's
/// 0x95 is not a PUBACK reason code).
#[test]
fn payloads_over_message_size_limit_are_dropped_and_acknowledged() {
    let broker = Broker::start("message_size_limit 10");
    let (mut watcher, _) = RawClient::connect(&broker, "msl-watch", v5());
    watcher.subscribe("msl/#", QoS::AtLeastOnce);
    let (mut client, _) = RawClient::connect(&broker, "msl-v5", v5());
    let ack = puback_of(&mut client, "msl/big", Properties::default(), &[b'x'; 11]);
    assert_eq!(ack.reason, ReasonCode::QuotaExceeded);
    let ack = puback_of(&mut client, "msl/small", Properties::default(), &[b'y'; 10]);
    assert_eq!(ack.reason, ReasonCode::Success);
    let (mut old, _) = RawClient::connect(&broker, "msl-v311", ConnectOptions::default());
    old.publish("msl/big", &[b'z'; 11], QoS::AtLeastOnce, false);
    assert_eq!(&watcher.receive().payload[..], &[b'y'; 10][..]);
    watcher.expect_silence();
}

/// `memory_limit`: once the heap passes it, a 5.0 publisher is told 0x97 and keeps its
/// connection, a 3.1.1 publisher is disconnected (as Mosquitto does when an allocation fails),
/// and new clients are refused.
#[test]
fn memory_limit_refuses_messages_and_clients_beyond_it() {
    let broker = Broker::start("memory_limit 67108864");
    let (mut old, _) = RawClient::connect(&broker, "ml-v311", ConnectOptions::default());
    let (mut client, _) = RawClient::connect(&broker, "ml-v5", v5());
    // Retained messages of 1 MiB each fill the heap; a small QoS 1 probe tells when it is full.
    let megabyte = vec![b'm'; 1 << 20];
    let mut over = false;
    for n in 0..200 {
        client.publish(&format!("ml/{n}"), &megabyte, QoS::AtLeastOnce, true);
        if n % 8 == 7 {
            // The sweep that notices runs every 500 ms.
            std::thread::sleep(Duration::from_millis(600));
            let ack = puback_of(&mut client, "ml/probe", Properties::default(), b"p");
            if ack.reason == ReasonCode::QuotaExceeded {
                over = true;
                break;
            }
        }
    }
    assert!(over, "200 MiB retained never passed a 64 MiB memory_limit");
    let ack = puback_of(&mut client, "ml/probe", Properties::default(), b"p");
    assert_eq!(ack.reason, ReasonCode::QuotaExceeded, "the 5.0 client stays connected");
    old.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::new("ml/old".to_string()).unwrap(),
        packet_id: PacketId::new(1),
        properties: Properties::default(),
        payload: Bytes::from_static(b"o"),
    }));
    assert!(old.is_closed_by_broker());
    let mut refused = RawClient::open(&broker);
    match refused.try_handshake("ml-new", v5()) {
        Some(Packet::ConnAck(connack)) => assert_eq!(connack.reason, ReasonCode::QuotaExceeded),
        other => panic!("expected CONNACK 0x97, got {other:?}"),
    }
}
