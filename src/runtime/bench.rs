//! What `benches/` drive, not an API: the delivery path without sockets (one shard with N
//! subscribed connections, through the same `handle_packet` calls a connection task makes), and
//! executors and cross-shard queues sized as the broker sizes them.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};

use crate::auth::Credentials;
use crate::broker::counters::ShardCounters;
use crate::broker::outbox::{ConnHandle, ListenerContext};
use crate::broker::{Origin, Shard};
use crate::config::Config;
use crate::protocol::{
    Connect, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, Subscribe,
    SubscriptionOptions, TopicFilter, TopicName,
};

use crate::broker::messages::ShardId;
pub use crate::broker::messages::BATCHES_IN_FLIGHT_MAX;

/// An executor configured as a shard's (io_uring memory and ring depth), not pinned.
pub fn executor(name: &str) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(Placement::Unbound)
        .name(name)
        .io_memory(super::IO_MEMORY_BYTES)
        .ring_depth(super::ring_depth())
}

/// One publisher and `subscribers` clients subscribed to its topic, on a single shard (which
/// needs no other shard's answer to connect or subscribe).
pub struct FanOut {
    shard: Shard,
    publisher: Rc<ConnHandle>,
    subscribers: Vec<Rc<ConnHandle>>,
    publish: Publish,
}

impl FanOut {
    pub fn new(subscribers: usize, payload_bytes: usize) -> FanOut {
        let config = Rc::new(Config::default());
        let (credentials, _) = Credentials::load(config.auth()).expect("no files to read");
        let listener = ListenerContext::new(credentials);
        let counters = Arc::new(ShardCounters::default());
        let mut shard = Shard::new(ShardId::new(0), 1, config, None, counters);
        let topic = "fleet/7/telemetry";
        let publisher = connect(&mut shard, &listener, "publisher");
        let subscribers: Vec<Rc<ConnHandle>> = (0..subscribers)
            .map(|i| {
                let conn = connect(&mut shard, &listener, &format!("subscriber-{i}"));
                let subscribe = Subscribe {
                    packet_id: PacketId::MIN,
                    properties: Properties::default(),
                    filters: vec![(
                        TopicFilter::new(topic).expect("valid filter"),
                        SubscriptionOptions::default(),
                    )],
                };
                shard.handle_packet(&conn, Packet::Subscribe(subscribe)).expect("subscribed");
                conn.take_outbox();
                conn
            })
            .collect();
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: TopicName::new(topic).expect("valid topic"),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::from(vec![7u8; payload_bytes]),
        };
        FanOut { shard, publisher, subscribers, publish }
    }

    /// The publisher sends one message; every subscriber's connection task then takes what
    /// was queued for it. Returns the bytes queued.
    pub fn publish_once(&mut self) -> usize {
        let packet = Packet::Publish(self.publish.clone());
        self.shard.handle_packet(&self.publisher, packet).expect("published");
        self.subscribers.iter().map(|s| s.take_outbox().len()).sum()
    }
}

fn connect(shard: &mut Shard, listener: &ListenerContext, client_id: &str) -> Rc<ConnHandle> {
    let connect = Connect::new(ProtocolVersion::V311, client_id);
    let origin = Origin::Network { peer: "bench", listener, certificate_name: None };
    let (conn, claim) = shard.begin_connect(&connect, origin).expect("connection admitted");
    shard.finish_connect(&conn, connect, claim);
    conn.take_outbox();
    conn
}
