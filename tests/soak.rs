//! A chaos soak: clients that connect with ids they share (taking each other's sessions over),
//! subscribe, publish at every QoS with retained messages and wills, acknowledge some of what
//! they get and not the rest, stop reading, vanish without DISCONNECT, or send garbage, for
//! `CULEX_SOAK_SECONDS` (20 by default, 120 in CI, 1800 for the long run in the README), against
//! one broker with persistence. Meanwhile a bystander's round trips must go on, and at the end
//! the broker runs, has logged no panic, and holds bounded memory. Every loop stops by itself.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{rss_kib, soak_seconds, Broker, ConnectOptions, RawClient, TempDir};
use culex::protocol::{
    Ack, Connect, Disconnect, LastWill, Packet, PacketId, Properties, ProtocolVersion, Publish,
    QoS, ReasonCode, Subscribe, SubscriptionOptions, TopicFilter, TopicName, Unsubscribe,
    PACKET_SIZE_MAX,
};

const WORKERS: usize = 6;
const CLIENT_IDS: u64 = 24;
const FILTERS: [&str; 6] =
    ["soak/#", "soak/+/x", "soak/a/b", "soak/+", "$share/g/soak/#", "soak/a/#"];
const TOPICS: [&str; 5] = ["soak/a/b", "soak/b/x", "soak/a", "soak/c/x", "soak/a/b/c"];

/// xorshift64: the same run for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn qos(&mut self) -> QoS {
        [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][self.below(3) as usize]
    }
}

/// One chaotic client connection: it writes whatever it likes and reads when it feels like it.
struct Chaos {
    stream: TcpStream,
    version: ProtocolVersion,
    buf: BytesMut,
    next_id: u16,
}

impl Chaos {
    fn connect(addr: SocketAddr, rng: &mut Rng) -> Option<Chaos> {
        let stream = TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_millis(20))).ok()?;
        stream.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
        let version = if rng.chance(50) { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
        let mut chaos = Chaos { stream, version, buf: BytesMut::new(), next_id: 0 };
        let will = rng.chance(30).then(|| LastWill {
            topic: TopicName::new("soak/will".to_string()).unwrap(),
            payload: Bytes::from_static(b"gone"),
            qos: rng.qos(),
            retain: rng.chance(50),
            properties: Properties::default(),
        });
        let mut properties = Properties::default();
        if version == ProtocolVersion::V5 && rng.chance(50) {
            properties.session_expiry_interval = Some(rng.below(30) as u32);
        }
        chaos.send(&Packet::Connect(Box::new(Connect {
            protocol: version,
            bridge: false,
            clean_start: rng.chance(50),
            keep_alive_secs: 30,
            properties,
            client_id: format!("chaos-{}", rng.below(CLIENT_IDS)).into(),
            will,
            username: None,
            password: None,
        })))?;
        Some(chaos)
    }

    fn send(&mut self, packet: &Packet) -> Option<()> {
        let mut out = BytesMut::new();
        packet.encode(self.version, &mut out);
        self.stream.write_all(&out).ok()
    }

    fn packet_id(&mut self) -> PacketId {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        PacketId::new(self.next_id).unwrap()
    }

    /// Reads what is there, acknowledging each PUBLISH with probability `ack_percent`.
    fn drain(&mut self, rng: &mut Rng, ack_percent: u64) -> Option<()> {
        let mut chunk = [0u8; 16 << 10];
        match self.stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Some(()),
        }
        while let Ok(Some(packet)) = Packet::decode(&mut self.buf, self.version, PACKET_SIZE_MAX) {
            let answer = match packet {
                Packet::Publish(p) if rng.chance(ack_percent) => match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => Some(Packet::PubAck(Ack::new(id))),
                    (QoS::ExactlyOnce, Some(id)) => Some(Packet::PubRec(Ack::new(id))),
                    _ => None,
                },
                Packet::PubRec(ack) => Some(Packet::PubRel(Ack::new(ack.packet_id))),
                Packet::PubRel(ack) => Some(Packet::PubComp(Ack::new(ack.packet_id))),
                _ => None,
            };
            if let Some(answer) = answer {
                self.send(&answer)?;
            }
        }
        Some(())
    }

    /// One random act; `None` when the connection is over.
    fn act(&mut self, rng: &mut Rng) -> Option<()> {
        match rng.below(100) {
            0..=14 => {
                let filter = FILTERS[rng.below(FILTERS.len() as u64) as usize];
                let options = SubscriptionOptions { qos: rng.qos(), ..Default::default() };
                let packet_id = self.packet_id();
                let filters = vec![(TopicFilter::new(filter.to_string()).unwrap(), options)];
                let properties = Properties::default();
                self.send(&Packet::Subscribe(Subscribe { packet_id, properties, filters }))
            }
            15..=19 => {
                let filter = FILTERS[rng.below(FILTERS.len() as u64) as usize];
                let packet_id = self.packet_id();
                let filters = vec![TopicFilter::new(filter.to_string()).unwrap()];
                let properties = Properties::default();
                self.send(&Packet::Unsubscribe(Unsubscribe { packet_id, properties, filters }))
            }
            20..=59 => {
                for _ in 0..rng.below(40) + 1 {
                    let qos = rng.qos();
                    let topic = TOPICS[rng.below(TOPICS.len() as u64) as usize];
                    let size = [8, 200, 4096, 32 << 10][rng.below(4) as usize];
                    let packet_id = (qos != QoS::AtMostOnce).then(|| self.packet_id());
                    self.send(&Packet::Publish(Publish {
                        dup: false,
                        qos,
                        retain: rng.chance(10),
                        topic: TopicName::new(topic.to_string()).unwrap(),
                        packet_id,
                        properties: Properties::default(),
                        payload: Bytes::from(vec![b'p'; size]),
                    }))?;
                }
                Some(())
            }
            60..=84 => self.drain(rng, 70),
            // Stops reading for a while: its publishers must not wait for it for long.
            85..=89 => {
                std::thread::sleep(Duration::from_millis(rng.below(300)));
                Some(())
            }
            90..=93 => {
                self.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
                None
            }
            // Gone without a word: its will goes out.
            94..=97 => None,
            _ => {
                let garbage: Vec<u8> = (0..rng.below(64) + 1).map(|_| rng.next() as u8).collect();
                let _ = self.stream.write_all(&garbage);
                None
            }
        }
    }
}

#[test]
fn chaos_soak_leaves_a_bystander_served_and_memory_bounded() {
    let store = TempDir::new();
    let mut broker = Broker::start(&format!(
        "persistence true\npersistence_location {}/\nmax_queued_messages 200\n\
         max_subscriptions_per_client 4",
        store.0.display()
    ));
    let seconds = soak_seconds();
    let until = Instant::now() + Duration::from_secs(seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let connections = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let (addr, stop, connections) = (broker.addr(), stop.clone(), connections.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((worker as u64 + 1) * 0x1234_5678));
                while !stop.load(Ordering::Relaxed) {
                    let Some(mut chaos) = Chaos::connect(addr, &mut rng) else { continue };
                    connections.fetch_add(1, Ordering::Relaxed);
                    for _ in 0..rng.below(200) {
                        if stop.load(Ordering::Relaxed) || chaos.act(&mut rng).is_none() {
                            break;
                        }
                    }
                }
            })
        })
        .collect();

    let (mut bystander, _) = RawClient::connect(&broker, "bystander", ConnectOptions::default());
    bystander.subscribe("still/#", QoS::AtLeastOnce);
    let mut rounds = 0u64;
    let mut peak_mib = 0;
    while Instant::now() < until {
        let payload = rounds.to_string();
        // QoS 0: with persistence a QoS 1 PUBACK waits for the store, so the echo may come
        // first.
        bystander.publish("still/here", payload.as_bytes(), QoS::AtMostOnce, false);
        // Within the usual wait: a shard stalled by the chaos would miss it.
        let echo = bystander.receive();
        assert_eq!(&echo.payload[..], payload.as_bytes(), "round {rounds}");
        peak_mib = peak_mib.max(rss_kib(broker.pid()) >> 10);
        rounds += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    let made = connections.load(Ordering::Relaxed);
    eprintln!(
        "soak: {seconds} s, {made} chaotic connections, {rounds} round trips, peak {peak_mib} MiB"
    );
    assert!(made > 100, "the chaos made only {made} connections");
    assert!(broker.is_running(), "{}", broker.log_text());
    assert!(!broker.log_text().contains("panicked"), "{}", broker.log_text());
    // Bounded by the queues (200 messages of at most 32 KiB for each of 24 ids), outboxes and
    // read buffers, whatever the length of the run.
    assert!(peak_mib < 512, "peak {peak_mib} MiB");
    let (client, _) = RawClient::connect(&broker, "after", ConnectOptions::default());
    client.disconnect();
}
