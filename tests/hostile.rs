//! Well-formed packets that ask for too much: each costs its sender its own connection (with
//! the reason code in 5.0) and nobody else anything.

mod common;

use common::{raw_subscription, Broker, ConnectOptions, RawClient};
use culex::protocol::{Packet, ProtocolVersion, QoS, ReasonCode};

/// A filter of 30,000 levels (`+/+/.../+`, 60 KB, valid MQTT) once overflowed a shard's stack in
/// the topic trie and aborted the whole broker. It is refused before it reaches the trie, and
/// subscribers on both shards go on receiving.
#[test]
fn a_filter_of_30000_levels_loses_only_its_own_connection() {
    let broker = Broker::start("");
    let [mut first, mut second] = ["bystander-a", "bystander-b"].map(|id| {
        let (mut client, _) = RawClient::connect(&broker, id, ConnectOptions::default());
        client.subscribe("fleet/#", QoS::AtLeastOnce);
        client
    });
    let deep = vec!["+"; 30_000].join("/");
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        for (shard_hint, attacker) in ["attacker-1", "attacker-2", "attacker-3"].iter().enumerate()
        {
            let options = ConnectOptions { version, ..Default::default() };
            let (mut client, _) = RawClient::connect(&broker, attacker, options);
            client.write_raw(&raw_subscription(version, &deep, shard_hint % 2 == 1));
            match (version, client.recv()) {
                (ProtocolVersion::V5, Some(Packet::Disconnect(d))) => {
                    assert_eq!(d.reason, ReasonCode::MalformedPacket)
                }
                (ProtocolVersion::V5, other) => panic!("expected DISCONNECT 0x81, got {other:?}"),
                (_, other) => assert!(other.is_none(), "expected the connection closed: {other:?}"),
            }
            assert!(client.is_closed_by_broker());
        }
    }
    let (mut publisher, _) = RawClient::connect(&broker, "publisher", ConnectOptions::default());
    publisher.publish("fleet/1/tele", b"still here", QoS::AtLeastOnce, false);
    for bystander in [&mut first, &mut second] {
        assert_eq!(&bystander.receive().payload[..], b"still here");
    }
}
