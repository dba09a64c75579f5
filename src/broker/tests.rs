//! The shard's rules driven without sockets: one shard, whose connections are handles the
//! test reads the outboxes of.

use super::*;
use crate::auth::Credentials;
use crate::protocol::{Connect, PacketId, ProtocolVersion, Publish, Subscribe};
use bytes::{Bytes, BytesMut};

struct OneShard {
    shard: Shard,
    listener: ListenerContext,
    _acl: Option<RemovedOnDrop>,
}

/// A file removed when the test ends.
struct RemovedOnDrop(std::path::PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl OneShard {
    fn new(acl: Option<&str>) -> OneShard {
        Self::of(1, acl)
    }

    /// Shard 0 of `shards` (connecting needs one shard: the others own some client ids).
    fn of(shards: usize, acl: Option<&str>) -> OneShard {
        let mut config = Config::default();
        let acl = acl.map(|rules| {
            let path = std::env::temp_dir().join(format!(
                "culex-shard-acl-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::write(&path, rules).unwrap();
            RemovedOnDrop(path)
        });
        config.acl_file = acl.as_ref().map(|a| a.0.clone());
        let (credentials, _) = Credentials::load(config.auth()).unwrap();
        let listener = ListenerContext::new(credentials);
        let shard = Shard::new(ShardId::new(0), shards, Rc::new(config), None, Arc::default());
        OneShard { shard, listener, _acl: acl }
    }

    fn connect(&mut self, client_id: &str) -> Rc<ConnHandle> {
        self.connect_with(client_id, true)
    }

    fn connect_with(&mut self, client_id: &str, clean_start: bool) -> Rc<ConnHandle> {
        let connect = Connect { clean_start, ..Connect::new(ProtocolVersion::V311, client_id) };
        let origin =
            Origin::Network { peer: "test", listener: &self.listener, certificate_name: None };
        let (conn, claim) = self.shard.begin_connect(&connect, origin).unwrap();
        self.shard.finish_connect(&conn, connect, claim);
        assert!(matches!(packets(&conn)[..], [Packet::ConnAck(_)]));
        conn
    }

    fn subscribe(&mut self, conn: &Rc<ConnHandle>, filter: &str) {
        let subscribe = Subscribe {
            packet_id: PacketId::MIN,
            properties: Properties::default(),
            filters: vec![(TopicFilter::new(filter).unwrap(), Default::default())],
        };
        self.shard.handle_packet(conn, Packet::Subscribe(subscribe)).unwrap();
    }

    fn publish(&mut self, conn: &Rc<ConnHandle>, topic: &str, payload_bytes: usize) {
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: topic.contains("retained"),
            topic: TopicName::new(topic).unwrap(),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::from(vec![b'x'; payload_bytes]),
        };
        self.shard.handle_packet(conn, Packet::Publish(publish)).unwrap();
    }

    fn congested(&mut self) -> Vec<ByteString> {
        self.shard.take_congested().iter().map(|c| c.client_id.clone()).collect()
    }
}

/// What the shard queued for `conn` since the last call.
fn packets(conn: &ConnHandle) -> Vec<Packet> {
    let mut out: BytesMut = conn.take_outbox();
    std::iter::from_fn(|| Packet::decode(&mut out, conn.version, u32::MAX).unwrap()).collect()
}

fn topics(conn: &ConnHandle) -> Vec<String> {
    packets(conn)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.topic.to_string()),
            _ => None,
        })
        .collect()
}

/// Live, shared and retained deliveries go through one function: each skips what the
/// subscriber's ACL does not let it read, none counts that as a drop.
#[test]
fn every_delivery_path_skips_what_the_acl_denies_without_counting_a_drop() {
    let mut one = OneShard::new(Some("topic write #\ntopic read public/#\n"));
    let publisher = one.connect("publisher");
    one.publish(&publisher, "secret/retained", 10);
    one.publish(&publisher, "public/retained", 10);
    let subscriber = one.connect("subscriber");
    one.subscribe(&subscriber, "+/retained");
    one.subscribe(&subscriber, "secret/live");
    one.subscribe(&subscriber, "$share/g/secret/shared");
    one.subscribe(&subscriber, "public/live");
    assert_eq!(topics(&subscriber), ["public/retained"], "retained: only the readable one");
    for topic in ["secret/live", "secret/shared", "public/live"] {
        one.publish(&publisher, topic, 10);
    }
    assert_eq!(topics(&subscriber), ["public/live"]);
    assert_eq!(one.shard.counters.publish_dropped.get(), 0);
}

/// And each lists a subscriber its delivery took past the high-water mark as congested,
/// for the task that made the delivery to wait for.
#[test]
fn every_delivery_path_notes_congestion() {
    let big = super::outbox::OUTBOX_HIGH_WATER_BYTES + 1;
    let mut one = OneShard::new(None);
    let publisher = one.connect("publisher");
    one.publish(&publisher, "big/retained", big);
    let live = one.connect("live");
    let shared = one.connect("shared");
    let retained = one.connect("retained");
    one.subscribe(&live, "big/live");
    one.subscribe(&shared, "$share/g/big/shared");
    assert_eq!(one.congested(), Vec::<ByteString>::new());
    one.subscribe(&retained, "big/retained");
    assert_eq!(one.congested(), ["retained"]);
    one.publish(&publisher, "big/live", big);
    assert_eq!(one.congested(), ["live"]);
    one.publish(&publisher, "big/shared", big);
    assert_eq!(one.congested(), ["shared"]);
}

/// A message goes once to each other shard with a matching subscription, however many of its
/// filters match there, and to none without; this shard's subscribers get it directly.
#[test]
fn a_message_goes_once_to_each_interested_shard() {
    let mut one = OneShard::of(3, None);
    for filter in ["fleet/#", "fleet/+/tele"] {
        let filter = ByteString::from(filter);
        one.shard.handle_shard_msg(
            ShardId::new(1),
            ShardMsg::Interest { filter, from: ShardId::new(1), added: true },
        );
    }
    let other = ByteString::from("other/#");
    one.shard.handle_shard_msg(
        ShardId::new(1),
        ShardMsg::Interest { filter: other, from: ShardId::new(2), added: true },
    );
    one.shard.outbound.take();
    one.shard.publish_internal(Message {
        topic: TopicName::new("fleet/7/tele").unwrap(),
        payload: Bytes::from_static(b"26.3"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
        publisher: ByteString::from("device-7"),
        source: Source::Unchecked,
        expires_at: None,
    });
    let sent: Vec<(ShardId, usize)> = one
        .shard
        .outbound
        .take()
        .into_iter()
        .map(|(to, batch)| (to, batch.iter().filter(|m| matches!(m, ShardMsg::Publish(_))).count()))
        .collect();
    assert_eq!(sent, [(ShardId::new(1), 1)]);
}

/// A second connection with the same client id takes the session over: the first is closed
/// as taken over, and a persistent session's subscriptions carry on to the second.
#[test]
fn a_second_connection_takes_the_session_over() {
    let mut one = OneShard::new(None);
    let first = one.connect_with("device", false);
    one.subscribe(&first, "cmd/device");
    packets(&first);
    let second = one.connect_with("device", false);
    assert_eq!(first.close_reason(), Some(Close::TakenOver));
    let publisher = one.connect("backend");
    one.publish(&publisher, "cmd/device", 4);
    assert_eq!(topics(&second), ["cmd/device"]);
    assert_eq!(topics(&first), Vec::<String>::new());
}

/// A retained message reaches a new subscription once, with its retain flag, and a later
/// empty retained message clears it for the next.
#[test]
fn retained_messages_reach_new_subscriptions_until_cleared() {
    let mut one = OneShard::new(None);
    let publisher = one.connect("publisher");
    one.publish(&publisher, "room1/retained", 4);
    let subscriber = one.connect("subscriber");
    one.subscribe(&subscriber, "room1/#");
    let retained: Vec<bool> = packets(&subscriber)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.retain),
            _ => None,
        })
        .collect();
    assert_eq!(retained, [true]);
    one.publish(&publisher, "room1/retained", 0);
    let later = one.connect("later");
    one.subscribe(&later, "room1/#");
    assert_eq!(topics(&later), Vec::<String>::new());
}

/// A message the subscriber's outbox refuses (QoS 0 past `OUTBOX_BYTES_MAX`) is one drop,
/// counted once.
#[test]
fn a_message_the_outbox_refuses_counts_one_drop() {
    let mut one = OneShard::new(None);
    let publisher = one.connect("publisher");
    let subscriber = one.connect("subscriber");
    one.subscribe(&subscriber, "big");
    packets(&subscriber);
    let big = super::outbox::OUTBOX_BYTES_MAX + 1;
    one.publish(&publisher, "big", big);
    one.publish(&publisher, "big", big);
    assert_eq!(topics(&subscriber), ["big"], "the first fits, the second is over the bound");
    let counters = &one.shard.counters;
    assert_eq!(counters.publish_dropped.get(), 1);
    assert_eq!(counters.dropped_outbox_full.get(), 1, "and its reason");
}

/// Each drop is counted under its reason, and the reasons sum to the total `$SYS` shows.
#[test]
fn drops_are_counted_by_reason() {
    let mut one = OneShard::new(None);
    let publisher = one.connect("publisher");
    let away = one.connect_with("away", false);
    one.subscribe(&away, "news");
    one.shard.connection_closed(&away, super::outbox::Close::ConnectionLost);
    // QoS 0 for a client not connected.
    one.publish(&publisher, "news", 4);
    let counters = &one.shard.counters;
    assert_eq!(counters.dropped_offline.get(), 1);
    let reasons: u64 =
        super::counters::DropReason::ALL.iter().map(|reason| reason.counter(counters).get()).sum();
    assert_eq!(reasons, counters.publish_dropped.get());
}
