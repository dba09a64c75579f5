//! `persistence true`: what was acknowledged survives `kill -9`. Each test runs the real binary
//! on a store directory of its own, kills it with SIGKILL (dropping a `Broker`) in the middle
//! of the traffic, starts it again on the same port and store, and checks what comes out.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::node::{Kind, Node};
use common::{free_port, Broker, ConnectOptions, RawClient, TempDir};
use culex::protocol::{Ack, Packet, Properties, Publish, QoS, TopicName};

/// A broker configuration with a store, started and killed as often as a test likes.
struct Persistent {
    store: TempDir,
    port: u16,
    extra: String,
}

impl Persistent {
    fn new() -> Self {
        Self::with("")
    }

    fn with(extra: impl Into<String>) -> Self {
        Persistent { store: TempDir::new(), port: free_port(), extra: extra.into() }
    }

    fn config(&self) -> String {
        format!(
            "listener {} 127.0.0.1\nallow_anonymous true\nshards 2\nmax_queued_messages 100000\npersistence true\n\
             persistence_location {}\n{}",
            self.port,
            self.store.0.display(),
            self.extra
        )
    }

    fn start(&self) -> Broker {
        Broker::start_with_config(self.port, &self.config())
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn store_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.store.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".shard"))
            .collect();
        files.sort();
        files
    }

    fn store_bytes(&self) -> u64 {
        self.store_files().iter().map(|f| std::fs::metadata(f).unwrap().len()).sum()
    }
}

/// A 3.1.1 session that outlives its connection.
fn persistent() -> ConnectOptions {
    ConnectOptions { clean_start: false, ..Default::default() }
}

/// Publishes `topic` messages numbered 0, 1, ... one at a time until the broker goes away
/// (or `max`); returns the numbers the broker acknowledged (PUBACK; PUBREC for QoS 2).
fn publish_until_killed(addr: SocketAddr, client_id: &str, topic: &str, qos: QoS) -> Vec<u32> {
    const MAX: u32 = 5_000;
    let (mut client, _) = RawClient::connect_addr(addr, client_id, persistent());
    let mut acknowledged = Vec::new();
    for n in 0..MAX {
        let packet_id = client.packet_id();
        client.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: TopicName::new(topic.to_string()).unwrap(),
            packet_id: Some(packet_id),
            properties: Properties::default(),
            payload: Bytes::from(n.to_string()),
        }));
        match client.recv() {
            Some(Packet::PubAck(a)) | Some(Packet::PubRec(a)) if a.packet_id == packet_id => {
                acknowledged.push(n)
            }
            _ => break,
        }
        if qos == QoS::ExactlyOnce {
            client.send(&Packet::PubRel(Ack::new(packet_id)));
            if !matches!(client.recv(), Some(Packet::PubComp(_))) {
                break;
            }
        }
    }
    acknowledged
}

/// Receives (and acknowledges) until nothing comes for a while; returns the payload numbers.
fn drain_numbers(client: &mut RawClient) -> Vec<u32> {
    let mut numbers = Vec::new();
    while let Some(packet) = client.recv_within(Duration::from_millis(700)) {
        match packet {
            Packet::Publish(publish) => {
                client.acknowledge(&publish);
                numbers.push(std::str::from_utf8(&publish.payload).unwrap().parse().unwrap());
            }
            // A QoS 2 message whose PUBREC was sent before the crash: only its release is left.
            Packet::PubRel(ack) => client.send(&Packet::PubComp(Ack::new(ack.packet_id))),
            other => panic!("unexpected {other:?}"),
        }
    }
    numbers
}

/// Checks a subscriber's numbers against what the broker acknowledged: each acknowledged one
/// present (exactly once when `exactly_once`), and first deliveries in publishing order.
fn check_delivery(name: &str, got: &[u32], acknowledged: &[u32], exactly_once: bool) {
    let mut firsts = Vec::new();
    for n in got {
        if !firsts.contains(n) {
            firsts.push(*n);
        } else {
            assert!(!exactly_once, "{name}: {n} delivered twice");
        }
    }
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{name}: out of order: {firsts:?}");
    for n in acknowledged {
        assert!(firsts.contains(n), "{name}: acknowledged {n} lost (got {} messages)", got.len());
    }
}

#[test]
fn acknowledged_messages_survive_kill_9_as_their_qos_promises() {
    let setup = Persistent::new();
    let broker = setup.start();
    // Persistent subscribers, offline while the streams run: everything queues for them.
    for (client_id, filter, qos) in
        [("keep-q1", "q1/#", QoS::AtLeastOnce), ("keep-q2", "q2/#", QoS::ExactlyOnce)]
    {
        let (mut client, _) = RawClient::connect(&broker, client_id, persistent());
        client.subscribe(filter, qos);
        client.disconnect();
    }
    let mut kept = RawClient::connect(&broker, "retainer", ConnectOptions::default()).0;
    kept.publish("state/door", b"open", QoS::AtLeastOnce, true);

    let addr = setup.addr();
    let q1 =
        std::thread::spawn(move || publish_until_killed(addr, "pub-q1", "q1/x", QoS::AtLeastOnce));
    let q2 =
        std::thread::spawn(move || publish_until_killed(addr, "pub-q2", "q2/x", QoS::ExactlyOnce));
    std::thread::sleep(Duration::from_millis(400));
    drop(broker); // SIGKILL, mid-stream
    let (acked_q1, acked_q2) = (q1.join().unwrap(), q2.join().unwrap());
    assert!(!acked_q1.is_empty() && !acked_q2.is_empty(), "the streams did not get going");
    eprintln!("acknowledged before the kill: {} QoS 1, {} QoS 2", acked_q1.len(), acked_q2.len());

    let broker = setup.start();
    // Before the subscriber is back, from connections on either shard: the restored session
    // must already be in every shard's interest replica.
    let mut acked_q1 = acked_q1;
    for n in 99_990..99_994u32 {
        let (mut early, _) = RawClient::connect(&broker, &format!("early-{n}"), persistent());
        early.publish("q1/early", n.to_string().as_bytes(), QoS::AtLeastOnce, false);
        acked_q1.push(n);
    }
    let (mut q1_sub, present) = RawClient::connect(&broker, "keep-q1", persistent());
    assert!(present, "the QoS 1 subscriber's session was lost");
    check_delivery("QoS 1", &drain_numbers(&mut q1_sub), &acked_q1, false);
    let (mut q2_sub, present) = RawClient::connect(&broker, "keep-q2", persistent());
    assert!(present, "the QoS 2 subscriber's session was lost");
    check_delivery("QoS 2", &drain_numbers(&mut q2_sub), &acked_q2, true);

    // Subscriptions and retained messages are back too.
    let mut publisher = RawClient::connect(&broker, "after", ConnectOptions::default()).0;
    publisher.publish("q1/after", b"99999", QoS::AtLeastOnce, false);
    assert_eq!(drain_numbers(&mut q1_sub), [99999]);
    let mut late = RawClient::connect(&broker, "late", ConnectOptions::default()).0;
    late.subscribe("state/#", QoS::AtLeastOnce);
    assert_eq!(&late.receive().payload[..], b"open");
}

/// A QoS 2 message in flight when the broker dies: sent and not acknowledged comes again with
/// DUP and the same packet id; PUBREC'd comes back as PUBREL only. Nothing twice.
#[test]
fn qos2_in_flight_resumes_where_it_stood_after_kill_9() {
    let setup = Persistent::new();
    let broker = setup.start();
    let (mut sub, _) = RawClient::connect(&broker, "inflight", persistent());
    sub.subscribe("f/#", QoS::ExactlyOnce);
    let mut publisher = RawClient::connect(&broker, "f-pub", ConnectOptions::default()).0;
    for n in 0..3u32 {
        publisher.publish("f/x", n.to_string().as_bytes(), QoS::ExactlyOnce, false);
    }
    let mut received = Vec::new();
    for _ in 0..3 {
        match sub.recv() {
            Some(Packet::Publish(p)) => received.push(p),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    // 0: completed. 1: PUBREC sent (the broker answers PUBREL). 2: not acknowledged at all.
    sub.acknowledge(&received[0]);
    sub.send(&Packet::PubRec(Ack::new(received[1].packet_id.unwrap())));
    assert!(matches!(sub.recv(), Some(Packet::PubRel(_))));
    std::thread::sleep(Duration::from_millis(200)); // let the PUBREC's new stage be written
    drop(sub);
    drop(broker);

    let broker = setup.start();
    let mut sub = RawClient::open_addr(setup.addr());
    let Some(Packet::ConnAck(connack)) = sub.try_handshake("inflight", persistent()) else {
        panic!("no CONNACK: {}", broker.log_text())
    };
    assert!(connack.session_present);
    match sub.recv() {
        Some(Packet::PubRel(ack)) => assert_eq!(Some(ack.packet_id), received[1].packet_id),
        other => panic!("expected PUBREL for message 1, got {other:?}"),
    }
    match sub.recv() {
        Some(Packet::Publish(p)) => {
            assert!(p.dup);
            assert_eq!((p.packet_id, &p.payload[..]), (received[2].packet_id, &b"2"[..]));
        }
        other => panic!("expected message 2 again, got {other:?}"),
    }
}

/// Steady publish and acknowledge: the store does not grow with the number of messages that
/// went through it (acknowledged messages are deleted and their space reused).
#[test]
fn the_store_does_not_grow_under_steady_publish_and_acknowledge() {
    let setup = Persistent::new();
    let _broker = setup.start();
    let (mut sub, _) = RawClient::connect_addr(setup.addr(), "steady-sub", persistent());
    sub.subscribe("steady", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect_addr(setup.addr(), "steady-pub", persistent());
    let payload = vec![b'x'; 200];
    let mut round = |rounds: usize| {
        for _ in 0..rounds {
            // 50 in flight at a time: the subscriber's window is 20, the rest queue.
            let ids: Vec<_> = (0..50).map(|_| publisher.packet_id()).collect();
            for id in &ids {
                publisher.send(&Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: TopicName::new("steady").unwrap(),
                    packet_id: Some(*id),
                    properties: Properties::default(),
                    payload: Bytes::from(payload.clone()),
                }));
            }
            for _ in &ids {
                assert!(matches!(publisher.recv(), Some(Packet::PubAck(_))));
            }
            for _ in &ids {
                sub.receive();
            }
        }
    };
    round(40); // 2,000 messages
    let early = setup.store_bytes();
    round(160); // 8,000 more
    let late = setup.store_bytes();
    assert!(late <= early + early / 2, "store grew from {early} to {late} bytes");
}

/// A store file cut short is refused at start with its name, and the broker does not listen.
#[test]
fn a_truncated_store_is_a_clear_error() {
    let setup = Persistent::new();
    let broker = setup.start();
    let (mut sub, _) = RawClient::connect(&broker, "t-sub", persistent());
    sub.subscribe("t/#", QoS::AtLeastOnce);
    drop(broker);
    let victim = setup.store_files().into_iter().next().expect("a store file");
    let len = std::fs::metadata(&victim).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&victim).unwrap().set_len(len / 3).unwrap();

    let conf = setup.store.0.join("culex.conf");
    std::fs::write(&conf, setup.config()).unwrap();
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_culex")).arg("-c").arg(&conf).output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&victim.display().to_string()), "{stderr}");
}

/// A persistent session that moved to the other shard (takeover) and then lived through
/// `kill -9`: its messages come back once, from its new shard's store, and the copy its old
/// shard had is gone (no message twice).
#[test]
fn a_session_moved_between_shards_is_stored_where_it_went() {
    let setup = Persistent::new();
    let broker = setup.start();
    let (mut first, _) = RawClient::connect(&broker, "mover", persistent());
    first.subscribe("mv/#", QoS::ExactlyOnce);
    let first_shard = broker.shard_of("mover");
    first.disconnect();
    let mut publisher = RawClient::connect(&broker, "mv-pub", ConnectOptions::default()).0;
    for n in 0..5u32 {
        publisher.publish("mv/x", n.to_string().as_bytes(), QoS::ExactlyOnce, false);
    }
    // Reconnect until the kernel puts the session's connection on the other shard.
    let mut moved = None;
    for _ in 0..64 {
        let mut client = RawClient::open(&broker);
        let Packet::ConnAck(connack) = client.handshake("mover", persistent()) else { panic!() };
        assert!(connack.session_present);
        if broker.shard_of("mover") != first_shard {
            moved = Some(client);
            break;
        }
        // Still on the first shard: take nothing, leave again.
        client.drop_connection();
        std::thread::sleep(Duration::from_millis(50));
    }
    let mover = moved.expect("64 connections all landed on one shard");
    std::thread::sleep(Duration::from_millis(300)); // the move's commit and the old shard's forget
    drop(mover);
    for n in 5..8u32 {
        publisher.publish("mv/x", n.to_string().as_bytes(), QoS::ExactlyOnce, false);
    }
    drop(broker);

    let broker = setup.start();
    let (mut back, present) = RawClient::connect(&broker, "mover", persistent());
    assert!(present);
    let got = drain_numbers(&mut back);
    check_delivery("moved session", &got, &(0..8).collect::<Vec<_>>(), true);
}

/// The queue of a bridge with `cleansession false`, on a Culex master with persistence:
/// messages acknowledged while the leaf is away survive `kill -9` of the master and reach the
/// leaf once both are back, QoS 1 at least once, QoS 2 exactly once, in order.
#[test]
fn a_bridge_queue_survives_kill_9() {
    for leaf_kind in [Kind::Culex, Kind::Mosquitto] {
        let Some(mut leaf) = Node::start(leaf_kind, "127.0.0.88", "") else { return };
        let bridge = format!(
            "persistence true\npersistence_location {{dir}}/\nmax_queued_messages 0\n\
             connection durable\naddress {}\ntopic q/# out 2\ncleansession false\n\
             restart_timeout 1\nremote_clientid durable-bridge\n",
            leaf.address()
        );
        let Some(mut master) = Node::start(Kind::Culex, "127.0.0.53", &bridge) else { return };
        let (mut collector, _) = RawClient::connect_addr(leaf.addr(), "collector", persistent());
        collector.subscribe("q/#", QoS::ExactlyOnce);
        // The bridge is up once a probe crosses.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut probe =
            RawClient::connect_addr(master.addr(), "probe", ConnectOptions::default()).0;
        loop {
            probe.publish("q/probe", b"1000000", QoS::AtLeastOnce, false);
            if let Some(Packet::Publish(p)) = collector.recv_within(Duration::from_millis(300)) {
                collector.acknowledge(&p);
                break;
            }
            assert!(Instant::now() < deadline, "the bridge never came up: {}", master.log());
        }
        drain_numbers(&mut collector);
        drop(collector);
        leaf.stop();

        let mut publisher =
            RawClient::connect_addr(master.addr(), "q-pub", ConnectOptions::default()).0;
        for n in 0..50u32 {
            publisher.publish("q/one", n.to_string().as_bytes(), QoS::AtLeastOnce, false);
            publisher.publish("q/two", n.to_string().as_bytes(), QoS::ExactlyOnce, false);
        }
        drop(publisher);
        master.kill();
        leaf.spawn();
        // The leaf has no persistence: its collector subscribes again.
        let (mut collector, _) = RawClient::connect_addr(leaf.addr(), "collector", persistent());
        collector.subscribe("q/#", QoS::ExactlyOnce);
        master.spawn();
        let mut got: [Vec<u32>; 2] = Default::default();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got[1].len() < 50 && Instant::now() < deadline {
            if let Some(Packet::Publish(p)) = collector.recv_within(Duration::from_millis(500)) {
                collector.acknowledge(&p);
                let n: u32 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                got[usize::from(&*p.topic == "q/two")].push(n);
            }
        }
        got.iter_mut().for_each(|g| g.retain(|n| *n != 1_000_000));
        let all: Vec<u32> = (0..50).collect();
        let context = || format!("{leaf_kind:?} leaf\n{}\n{}", master.log(), leaf.log());
        check_delivery(&format!("bridged QoS 1 {}", context()), &got[0], &all, false);
        assert_eq!(got[1], all, "bridged QoS 2 {}", context());
    }
}

/// A will waiting for its Will Delay Interval outlives `kill -9`: it is published when due,
/// after the restart.
#[test]
fn a_delayed_will_survives_kill_9() {
    let setup = Persistent::new();
    let broker = setup.start();
    let mut last_will = common::will("wills/gone", "bye", QoS::AtLeastOnce, false);
    last_will.properties.will_delay_interval = Some(2);
    let properties = Properties { session_expiry_interval: Some(60), ..Default::default() };
    let options = ConnectOptions {
        version: culex::protocol::ProtocolVersion::V5,
        clean_start: false,
        will: Some(last_will),
        properties,
        ..Default::default()
    };
    let (client, _) = RawClient::connect(&broker, "leaving", options);
    client.drop_connection(); // no DISCONNECT: the will is due in 2 s
    std::thread::sleep(Duration::from_millis(300)); // the delayed will is written
    drop(broker);

    let broker = setup.start();
    let mut watcher = RawClient::connect(&broker, "watcher", ConnectOptions::default()).0;
    watcher.subscribe("wills/#", QoS::AtLeastOnce);
    let will = watcher.recv_within(Duration::from_secs(5));
    assert!(
        matches!(&will, Some(Packet::Publish(p)) if &p.payload[..] == b"bye"),
        "{will:?}\n{}",
        broker.log_text()
    );
}

/// Retained messages are written by the shard they were published on; a later change made on
/// another shard (a replacement, a deletion) must still win after `kill -9`.
#[test]
fn the_newest_retained_message_wins_across_shards_after_kill_9() {
    let setup = Persistent::new();
    let broker = setup.start();
    let (mut a, _, mut b, _) =
        common::clients_on_different_shards(&broker, "rt", ConnectOptions::default);
    a.publish("r/deleted", b"old", QoS::AtLeastOnce, true);
    b.publish("r/deleted", b"", QoS::AtLeastOnce, true);
    b.publish("r/replaced", b"first", QoS::AtLeastOnce, true);
    a.publish("r/replaced", b"second", QoS::AtLeastOnce, true);
    drop(broker);

    let broker = setup.start();
    let mut late = RawClient::connect(&broker, "rt-late", ConnectOptions::default()).0;
    late.subscribe("r/#", QoS::AtLeastOnce);
    let publish = late.receive();
    assert_eq!((&*publish.topic, &publish.payload[..]), ("r/replaced", &b"second"[..]));
    late.expect_silence();
}

/// `check_retain_source true` across a restart: a retained message keeps the user name it was
/// published with in the store, so after `kill -9` it is still sent while that user may write
/// its topic, and no longer once the ACL (changed while the broker was down) says otherwise.
#[test]
fn a_retained_messages_source_survives_kill_9() {
    let Some(passwd) = common::mosquitto_tool("mosquitto_passwd") else { return };
    let files = TempDir::new();
    let (passwords, acl) = (files.0.join("passwd"), files.0.join("acl"));
    let made =
        Command::new(passwd).arg("-c").arg("-b").arg(&passwords).args(["writer", "w"]).status();
    assert!(made.unwrap().success());
    let extra = format!(
        "check_retain_source true\npassword_file {}\nacl_file {}\n",
        passwords.display(),
        acl.display()
    );
    let setup = Persistent::with(extra);
    let may_write = "topic read r/#\nuser writer\ntopic readwrite r/#\n";
    std::fs::write(&acl, may_write).unwrap();
    let broker = setup.start();
    let writer = ConnectOptions { login: Some(("writer", "w")), ..ConnectOptions::default() };
    let (mut publisher, _) = RawClient::connect(&broker, "rs-writer", writer);
    publisher.publish("r/kept", b"kept", QoS::AtLeastOnce, true);
    drop(broker);

    let late_subscriber = |broker: &Broker| {
        let mut late = RawClient::connect(broker, "rs-late", ConnectOptions::default()).0;
        late.subscribe("r/#", QoS::AtLeastOnce);
        late.recv_within(Duration::from_millis(500))
    };
    let broker = setup.start();
    let Some(Packet::Publish(kept)) = late_subscriber(&broker) else {
        panic!("the writer's retained message was not sent:\n{}", broker.log_text())
    };
    assert_eq!(&kept.payload[..], b"kept");
    drop(broker);

    std::fs::write(&acl, "topic read r/#\nuser writer\ntopic read r/#\n").unwrap();
    let broker = setup.start();
    assert_eq!(late_subscriber(&broker), None, "sent without its source's write access");
}

/// `persistence_sync interval`: changes are synced every `autosave_interval`; what is older
/// survives `kill -9`, what is newer may not (the trade Mosquitto's snapshots make).
#[test]
fn persistence_sync_interval_syncs_every_autosave_interval() {
    for (interval, survives) in [("1", true), ("3600", false)] {
        let extra = if survives {
            "persistence_sync interval\nautosave_interval 1\n"
        } else {
            "persistence_sync interval\nautosave_interval 3600\n"
        };
        let setup = Persistent::with(extra);
        let broker = setup.start();
        let (mut sub, _) = RawClient::connect(&broker, "iv-sub", persistent());
        sub.subscribe("iv/#", QoS::AtLeastOnce);
        sub.disconnect();
        let mut publisher = RawClient::connect(&broker, "iv-pub", ConnectOptions::default()).0;
        for n in 0..10u32 {
            publisher.publish("iv/x", n.to_string().as_bytes(), QoS::AtLeastOnce, false);
        }
        std::thread::sleep(Duration::from_millis(1600));
        drop(broker);

        let broker = setup.start();
        let (mut sub, present) = RawClient::connect(&broker, "iv-sub", persistent());
        assert_eq!(present, survives, "autosave_interval {interval}");
        let got = drain_numbers(&mut sub);
        let expected: Vec<u32> = if survives { (0..10).collect() } else { Vec::new() };
        assert_eq!(got, expected, "autosave_interval {interval}");
    }
}
