//! Sessions moving between shards under every order of events (`broker::moves`): shards driven
//! in one thread, each pair's queue kept FIFO as the mesh keeps it, but which queue moves next,
//! when a journal commits, when publishers publish and when the subscriber reconnects (on which
//! shard) chosen by a seeded generator. Whatever the order, the subscriber gets each message
//! once, in its publisher's order, and each publisher gets every acknowledgement.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::recovery::restored_shards;
use crate::auth::Credentials;
use crate::broker::journal::SharedJournal;
use crate::broker::messages::{Batch, ShardId};
use crate::broker::outbox::{Close, ConnHandle, ListenerContext};
use crate::broker::{Origin, PendingClaim, Shard};
use crate::config::Config;
use crate::protocol::{
    Ack, Connect, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, Subscribe,
    SubscriptionOptions, TopicFilter, TopicName,
};
use crate::store::ShardStore;

const SHARDS: usize = 3;
const SUBSCRIBER: &str = "mover";

/// xorshift64*: the schedule of a seed, the same on every machine.
struct Schedule(u64);

impl Schedule {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

struct Connection {
    shard: usize,
    conn: Rc<ConnHandle>,
    claim: Rc<PendingClaim>,
    connect: Option<Connect>,
}

struct Cluster {
    shards: Vec<Rc<RefCell<Shard>>>,
    /// With persistence: each shard's journal and store.
    stores: Vec<(SharedJournal, Arc<ShardStore>)>,
    /// Batches in flight, per (from, to), oldest first.
    queues: Vec<VecDeque<Batch>>,
    listener: ListenerContext,
    subscriber: Vec<Connection>,
    publishers: Vec<Rc<ConnHandle>>,
    /// What each publisher sent, and the acknowledgements it got.
    published: Vec<u16>,
    acknowledged: Vec<usize>,
    /// (publisher, sequence number, DUP) of each copy the subscriber got.
    received: Vec<(usize, u16, bool)>,
}

impl Cluster {
    fn start(config: Config) -> Cluster {
        let mut shards = Vec::new();
        let mut stores = Vec::new();
        if config.persistence {
            for (shard, journal, store) in restored_shards(&config, SHARDS) {
                shards.push(shard);
                stores.push((journal, store));
            }
        } else {
            let config = Rc::new(config.clone());
            for index in 0..SHARDS {
                let id = ShardId::new(index);
                let shard = Shard::new(id, SHARDS, config.clone(), None, Arc::default());
                shards.push(Rc::new(RefCell::new(shard)));
            }
        }
        let credentials = Credentials::load(config.auth()).unwrap().0;
        let mut cluster = Cluster {
            shards,
            stores,
            queues: (0..SHARDS * SHARDS).map(|_| VecDeque::new()).collect(),
            listener: ListenerContext::new(credentials),
            subscriber: Vec::new(),
            publishers: Vec::new(),
            published: vec![0; SHARDS],
            acknowledged: vec![0; SHARDS],
            received: Vec::new(),
        };
        for shard in 0..SHARDS {
            let conn = cluster.connect(shard, &format!("publisher-{shard}"), true);
            cluster.settle();
            cluster.publishers.push(conn);
        }
        cluster.connect(0, SUBSCRIBER, false);
        cluster.settle();
        let conn = cluster.subscriber[0].conn.clone();
        for filter in ["moving/#", "moving/+", "$share/pool/pooled/#"] {
            let subscribe = Subscribe {
                packet_id: PacketId::MIN,
                properties: Properties::default(),
                filters: vec![(
                    TopicFilter::new(filter).unwrap(),
                    SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
                )],
            };
            cluster.shards[0]
                .borrow_mut()
                .handle_packet(&conn, Packet::Subscribe(subscribe))
                .unwrap();
            cluster.settle();
        }
        cluster
    }

    fn connect(&mut self, shard: usize, client_id: &str, clean_start: bool) -> Rc<ConnHandle> {
        let connect = Connect { clean_start, ..Connect::new(ProtocolVersion::V311, client_id) };
        let origin =
            Origin::Network { peer: "test", listener: &self.listener, certificate_name: None };
        let (conn, claim) =
            self.shards[shard].borrow_mut().begin_connect(&connect, origin).unwrap();
        let connection = Connection { shard, conn: conn.clone(), claim, connect: Some(connect) };
        if client_id == SUBSCRIBER {
            self.subscriber.push(connection);
        } else {
            self.finish_when_answered(connection);
        }
        conn
    }

    /// What each connection task does when it runs: a CONNECT whose claim was answered is
    /// finished, what a client was sent is read and acknowledged. Returns whether any did.
    fn run_tasks(&mut self) -> bool {
        let mut ran = false;
        for index in 0..self.subscriber.len() {
            let connection = &mut self.subscriber[index];
            if connection.claim.is_answered() {
                if let Some(connect) = connection.connect.take() {
                    let shard = self.shards[connection.shard].clone();
                    let claim = connection.claim.clone();
                    shard.borrow_mut().finish_connect(&connection.conn, connect, claim);
                    ran = true;
                }
            }
            ran |= self.read_subscriber(index);
        }
        for (index, conn) in self.publishers.clone().iter().enumerate() {
            for packet in packets(conn) {
                ran = true;
                match packet {
                    Packet::PubAck(_) | Packet::PubComp(_) => self.acknowledged[index] += 1,
                    Packet::PubRec(ack) => {
                        let release = Packet::PubRel(Ack::new(ack.packet_id));
                        self.shards[index].borrow_mut().handle_packet(conn, release).unwrap();
                    }
                    Packet::ConnAck(_) => {}
                    other => panic!("a publisher was sent {other:?}"),
                }
            }
        }
        self.collect();
        ran
    }

    fn finish_when_answered(&mut self, mut connection: Connection) {
        self.settle();
        assert!(connection.claim.is_answered());
        let connect = connection.connect.take().unwrap();
        let mut shard = self.shards[connection.shard].borrow_mut();
        shard.finish_connect(&connection.conn, connect, connection.claim.clone());
    }

    fn read_subscriber(&mut self, index: usize) -> bool {
        let connection = &self.subscriber[index];
        let (conn, shard) = (connection.conn.clone(), connection.shard);
        let packets = packets(&conn);
        let read = !packets.is_empty();
        for packet in packets {
            let Packet::Publish(publish) = packet else { continue };
            let text = std::str::from_utf8(&publish.payload).unwrap();
            let (publisher, sequence) = text.split_once(':').unwrap();
            let copy = (publisher.parse().unwrap(), sequence.parse().unwrap(), publish.dup);
            self.received.push(copy);
            // A client whose connection was taken over no longer answers.
            if !conn.is_closing() {
                let ack = Packet::PubAck(Ack::new(publish.packet_id.unwrap()));
                self.shards[shard].borrow_mut().handle_packet(&conn, ack).unwrap();
            }
        }
        read
    }

    fn publish(&mut self, publisher: usize) {
        let sequence = self.published[publisher];
        self.published[publisher] += 1;
        // Publisher 2 uses QoS 2 (routed with its tag, with persistence).
        let qos = if publisher == 2 { QoS::ExactlyOnce } else { QoS::AtLeastOnce };
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: TopicName::new(format!("{}/{publisher}", topic_of(sequence))).unwrap(),
            packet_id: PacketId::new(sequence % 60_000 + 1),
            properties: Properties::default(),
            payload: Bytes::from(format!("{publisher}:{sequence}")),
        };
        let conn = self.publishers[publisher].clone();
        self.shards[publisher].borrow_mut().handle_packet(&conn, Packet::Publish(publish)).unwrap();
    }

    /// Moves every shard's outbound batches into the queues.
    fn collect(&mut self) {
        for from in 0..SHARDS {
            for (to, batch) in self.shards[from].borrow_mut().outbound.take() {
                self.queues[from * SHARDS + to.index()].push_back(batch);
            }
        }
    }

    /// Applies the oldest batch of queue `queue`, if any.
    fn carry(&mut self, queue: usize) -> bool {
        let Some(batch) = self.queues[queue].pop_front() else { return false };
        let (from, to) = (queue / SHARDS, queue % SHARDS);
        let mut shard = self.shards[to].borrow_mut();
        for msg in batch {
            shard.handle_shard_msg(ShardId::new(from), msg);
        }
        true
    }

    fn commit(&mut self, index: usize) -> bool {
        let Some((journal, store)) = self.stores.get(index) else { return false };
        let (ops, waiters) = journal.borrow_mut().take();
        if ops.is_empty() && waiters.is_empty() {
            return false;
        }
        // Not synced: the test crashes nothing, and a sync per commit made it take minutes.
        store.apply(ops, false).unwrap();
        self.shards[index].borrow_mut().committed(waiters);
        true
    }

    /// Runs everything until nothing moves.
    fn settle(&mut self) {
        loop {
            let mut moved = self.run_tasks();
            for queue in 0..self.queues.len() {
                while self.carry(queue) {
                    moved = true;
                }
            }
            for index in 0..SHARDS {
                moved |= self.commit(index);
            }
            if !moved {
                return;
            }
        }
    }

    /// One step chosen by `schedule`.
    fn step(&mut self, schedule: &mut Schedule) {
        match schedule.below(100) {
            0..=44 => {
                let start = schedule.below(self.queues.len());
                let queues = self.queues.len();
                let _ = (0..queues).any(|i| self.carry((start + i) % queues));
            }
            45..=69 => self.publish(schedule.below(SHARDS)),
            70..=84 => {
                let _ = self.commit(schedule.below(SHARDS));
            }
            85..=95 => {
                self.run_tasks();
            }
            96..=97 => {
                self.connect(schedule.below(SHARDS), SUBSCRIBER, false);
            }
            _ => {
                // The subscriber's connection is lost.
                if let Some(connection) = self.subscriber.last().filter(|c| c.claim.is_connected())
                {
                    let (conn, shard) = (connection.conn.clone(), connection.shard);
                    if !conn.is_closing() {
                        conn.close(Close::ConnectionLost);
                        self.shards[shard]
                            .borrow_mut()
                            .connection_closed(&conn, Close::ConnectionLost);
                    }
                }
            }
        }
        self.collect();
    }
}

/// Every third message goes to the subscriber's shared subscription, the rest to its two
/// overlapping ones.
fn topic_of(sequence: u16) -> &'static str {
    if sequence % 3 == 2 {
        "pooled"
    } else {
        "moving"
    }
}

fn packets(conn: &ConnHandle) -> Vec<Packet> {
    let mut out: BytesMut = conn.take_outbox();
    std::iter::from_fn(|| Packet::decode(&mut out, conn.version, u32::MAX).unwrap()).collect()
}

fn run(mut config: Config, seed: u64) {
    // The subscriber may be offline for a while: its queue takes everything.
    config.max_queued_messages = 100_000;
    let mut schedule = Schedule(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut cluster = Cluster::start(config);
    for _ in 0..4_000 {
        cluster.step(&mut schedule);
    }
    cluster.settle();
    // Back online, wherever it is, to take what waits for it.
    cluster.connect(schedule.below(SHARDS), SUBSCRIBER, false);
    cluster.settle();
    cluster.settle();
    let mut expected: Vec<(usize, u16)> = Vec::new();
    for (publisher, count) in cluster.published.iter().enumerate() {
        expected.extend((0..*count).map(|sequence| (publisher, sequence)));
        assert_eq!(
            cluster.acknowledged[publisher],
            usize::from(*count),
            "seed {seed}: acknowledgements of publisher {publisher}"
        );
    }
    for publisher in 0..SHARDS {
        let copies = cluster.received.iter().filter(|(p, _, _)| *p == publisher);
        // A resumed session sends again, as DUP, what the client had not acknowledged, which
        // it may have got; each message comes first once, without DUP at most once; in its
        // publisher's order but for the shared subscription's, which promises no order.
        let mut first = Vec::new();
        let mut fresh = std::collections::HashSet::new();
        for (_, sequence, dup) in copies {
            if !first.contains(sequence) {
                first.push(*sequence);
            }
            assert!(
                *dup || fresh.insert(*sequence),
                "seed {seed}: {publisher}:{sequence} twice without DUP"
            );
        }
        let (mut pooled, ordered): (Vec<u16>, Vec<u16>) =
            first.into_iter().partition(|sequence| topic_of(*sequence) == "pooled");
        let (mut sent_pooled, sent): (Vec<u16>, Vec<u16>) =
            (0..cluster.published[publisher]).partition(|sequence| topic_of(*sequence) == "pooled");
        assert_eq!(ordered, sent, "seed {seed}: publisher {publisher}'s messages, in order");
        pooled.sort_unstable();
        sent_pooled.sort_unstable();
        assert_eq!(pooled, sent_pooled, "seed {seed}: publisher {publisher}'s shared messages");
    }
    for shard in &cluster.shards {
        assert_eq!(shard.borrow().counters.publish_dropped.get(), 0, "seed {seed}: dropped");
    }
    let moves = cluster.subscriber.len();
    assert!(moves > 10, "seed {seed}: only {moves} connections");
}

#[test]
fn a_moving_session_gets_every_message_once_in_order() {
    for seed in 0..30 {
        run(Config::default(), seed);
    }
}

#[test]
fn a_moving_session_with_persistence_gets_every_message_once_in_order_and_every_ack_goes_out() {
    for seed in 0..8 {
        let dir = std::env::temp_dir().join(format!("culex-moves-{}-{seed}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = Config { persistence: true, ..Config::default() };
        config.persistence_location = dir.clone();
        run(config, seed);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
