//! Well-formed packets that ask for too much: each costs its sender its own connection (with
//! the reason code in 5.0) and nobody else anything.

mod common;

use common::{raw_subscription, rss_kib, Broker, ConnectOptions, RawClient};
use culex::protocol::{
    Packet, ProtocolVersion, QoS, ReasonCode, Subscribe, SubscriptionOptions, TopicFilter,
};

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

/// A subscriber that stops reading while a publisher floods it: the publisher waits for it at
/// most `flow::STUCK_AFTER` (500 ms), then it is stuck and its QoS 0 messages beyond its outbox
/// cap are dropped; another subscriber of the same topic, which reads, gets every message, and
/// the publisher's QoS 1 round trip afterwards still works.
#[test]
fn a_subscriber_that_stops_reading_costs_the_others_nothing() {
    const MESSAGES: usize = 20_000;
    let metrics = common::free_port();
    let broker = Broker::start(&format!(
        "max_queued_messages 0\nmax_inflight_messages 0\nsys_interval 1\nmetrics_listener {metrics}"
    ));
    let (mut stalled, _) = RawClient::connect(&broker, "stalled", ConnectOptions::default());
    stalled.subscribe("flood", QoS::AtMostOnce);
    let (mut reader, _) = RawClient::connect(&broker, "reader", ConnectOptions::default());
    reader.subscribe("flood", QoS::AtMostOnce);
    let (mut publisher, _) = RawClient::connect(&broker, "flooder", ConnectOptions::default());
    // 20,000 messages of 1 KiB: more than the stalled subscriber's socket buffers (loopback
    // autotuning grows them to a few MiB each way) and its 4 MiB outbox cap together hold.
    let payload = vec![b'x'; 1024];
    let reading = std::thread::spawn(move || {
        let mut count = 0;
        while count < MESSAGES {
            match reader.recv() {
                Some(Packet::Publish(p)) if p.topic.as_str() == "flood" => count += 1,
                other => panic!("after {count} messages: {other:?}"),
            }
        }
        count
    });
    for _ in 0..MESSAGES {
        publisher.publish("flood", &payload, QoS::AtMostOnce, false);
    }
    publisher.publish("after", b"still answered", QoS::AtLeastOnce, false);
    assert_eq!(reading.join().unwrap(), MESSAGES);
    // What the stalled one could not take was dropped, and counted.
    let (mut watcher, _) = RawClient::connect(&broker, "watcher", ConnectOptions::default());
    watcher.subscribe("$SYS/broker/publish/messages/dropped", QoS::AtMostOnce);
    // The retained value may predate the flood; the next one (sys_interval 1) follows it.
    for _ in 0..3 {
        let dropped: u64 = match watcher.recv() {
            Some(Packet::Publish(p)) => std::str::from_utf8(&p.payload).unwrap().parse().unwrap(),
            other => panic!("expected the dropped count, got {other:?}"),
        };
        if dropped > 0 {
            // Prometheus says why: the publisher waited, found it stuck, and its outbox
            // refused the rest.
            let text = common::scrape_metrics(metrics);
            assert!(common::metric_sum(&text, "culex_flow_waits_total", "") > 0, "{text}");
            assert!(common::metric_sum(&text, "culex_flow_stuck_total", "") > 0, "{text}");
            let outbox_full = r#"reason="outbox_full""#;
            let by_reason = common::metric_sum(&text, "culex_publish_dropped_total", outbox_full);
            assert!(by_reason > 0, "{text}");
            drop(stalled);
            return;
        }
    }
    panic!("nothing dropped: the stalled subscriber was never stuck");
}

/// A subscriber that stops reading under a flood of 16 KiB messages, at QoS 0 and then QoS 1,
/// with Mosquitto's default limits (20 in flight, 1,000 queued): another subscriber gets every
/// message, and the broker's memory
/// stays within what the limits allow the stuck one: its outbox (4 MiB of QoS 0,
/// `OUTBOX_BYTES_MAX`, the rest dropped as outbox_full) and its session (20 + 1,000 QoS 1
/// messages, the rest dropped as queue_full). Batches between shards of 1,024 such messages
/// once overflowed the other subscriber's outbox too (`OUTBOUND_HIGH_WATER_BYTES`).
#[test]
fn a_stuck_subscriber_under_a_16_kib_flood_holds_bounded_memory() {
    const MESSAGES: usize = 4_000;
    let metrics = common::free_port();
    let broker = Broker::start(&format!("metrics_listener {metrics}"));
    let (mut stalled, _) = RawClient::connect(&broker, "stalled", ConnectOptions::default());
    stalled.subscribe("flood/#", QoS::AtLeastOnce);
    let (mut reader, _) = RawClient::connect(&broker, "reader", ConnectOptions::default());
    reader.subscribe("flood/#", QoS::AtLeastOnce);
    let before = rss_kib(broker.pid());
    let reading = std::thread::spawn(move || {
        let mut count = 0;
        while count < 2 * MESSAGES {
            match reader.recv() {
                Some(Packet::Publish(p)) => {
                    reader.acknowledge(&p);
                    count += 1;
                }
                other => panic!("after {count} messages: {other:?}"),
            }
        }
        count
    });
    let (mut publisher, _) = RawClient::connect(&broker, "flooder", ConnectOptions::default());
    let payload = vec![b'x'; 16 << 10];
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        for _ in 0..MESSAGES {
            publisher.publish(&format!("flood/{qos:?}"), &payload, qos, false);
        }
    }
    assert_eq!(reading.join().unwrap(), 2 * MESSAGES);
    // 128 MB went through. The stuck one may hold 4 MiB of outbox and 1,020 messages of 16
    // KiB, each pinning the read buffer it arrived in (up to twice its size): 39-64 MiB
    // measured, the same with half the flood. Anything kept of what went through would pass
    // 128 MiB.
    let grown_mib = rss_kib(broker.pid()).saturating_sub(before) >> 10;
    assert!(grown_mib < 96, "a stuck subscriber grew the broker {grown_mib} MiB");
    let text = common::scrape_metrics(metrics);
    for reason in ["outbox_full", "queue_full"] {
        let label = format!(r#"reason="{reason}""#);
        let dropped = common::metric_sum(&text, "culex_publish_dropped_total", &label);
        assert!(dropped > 0, "nothing dropped as {reason}:\n{text}");
    }
    drop(stalled);
}

/// A client whose round trips through the broker must go on while others misbehave.
struct Bystander {
    client: RawClient,
}

impl Bystander {
    fn connect(broker: &Broker) -> Bystander {
        let (mut client, _) = RawClient::connect(broker, "bystander", ConnectOptions::default());
        client.subscribe("still/#", QoS::AtLeastOnce);
        Bystander { client }
    }

    /// Publishes `n` to itself at QoS 1 and receives it.
    fn round_trip(&mut self, n: usize) {
        let payload = n.to_string();
        self.client.publish("still/here", payload.as_bytes(), QoS::AtLeastOnce, false);
        assert_eq!(self.client.receive().payload, payload.into_bytes());
    }
}

/// A Remaining Length of 256 MB announced and never sent reserves nothing: the broker buffers
/// only the bytes that arrive (at most `max_packet_size` of them, and the connection ends with
/// its keep alive). A hundred such clients cost the broker a few MiB, and a bystander's round
/// trip goes on.
#[test]
fn a_huge_announced_packet_reserves_nothing_up_front() {
    let broker = Broker::start("");
    let mut bystander = Bystander::connect(&broker);
    let before = rss_kib(broker.pid());
    let hogs: Vec<RawClient> = (0..100)
        .map(|i| {
            let (mut hog, _) =
                RawClient::connect(&broker, &format!("hog-{i}"), ConnectOptions::default());
            // PUBLISH, Remaining Length 268,435,455 (the most MQTT can say), then 1 KiB of it.
            hog.write_raw(&[0x30, 0xff, 0xff, 0xff, 0x7f]);
            hog.write_raw(&[b'x'; 1024]);
            hog
        })
        .collect();
    bystander.round_trip(0);
    let grown_kib = rss_kib(broker.pid()).saturating_sub(before);
    assert!(grown_kib < 64 << 10, "100 announced 256 MB packets grew the broker {grown_kib} KiB");
    drop(hogs);
}

/// A packet trickled a byte at a time never completes, so it never counts as the client being
/// alive: the keep alive (1.5 times the interval without a whole packet) ends the connection
/// however steadily the bytes come, and a bystander's round trips go on meanwhile.
#[test]
fn a_packet_trickled_a_byte_at_a_time_ends_with_the_keep_alive() {
    let broker = Broker::start("");
    let mut bystander = Bystander::connect(&broker);
    let options = ConnectOptions { keep_alive_secs: 2, ..Default::default() };
    let (mut trickler, _) = RawClient::connect(&broker, "trickler", options);
    let started = std::time::Instant::now();
    // PUBLISH, Remaining Length 1,000, then a byte every 200 ms.
    trickler.write_raw(&[0x30, 0xe8, 0x07]);
    let mut round = 0;
    let closed_after = loop {
        let elapsed = started.elapsed();
        assert!(elapsed < std::time::Duration::from_secs(10), "still open after {elapsed:?}");
        if trickler.try_write_raw(b"x").is_err() {
            break elapsed;
        }
        bystander.round_trip(round);
        round += 1;
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    // 3 s of keep alive, and up to the sweep's 500 ms, and a write or two to see the close.
    assert!(closed_after >= std::time::Duration::from_secs(3), "closed after {closed_after:?}");
}

/// A SUBSCRIBE is checked against the retained messages through their index, so it costs what
/// it matches: with 100,000 retained topics, a client subscribing to 2,000 filters (20
/// SUBSCRIBEs of 100) gets its 2,000 retained messages while a bystander's round trips go on.
/// (Before the index each filter scanned the whole store: 200 million topic comparisons.)
#[test]
fn many_filters_against_many_retained_topics_cost_what_they_match() {
    const RETAINED: usize = 100_000;
    const SUBSCRIBES: usize = 20;
    const FILTERS_EACH: usize = 100;
    let broker = Broker::start("");
    let (mut loader, _) = RawClient::connect(&broker, "loader", ConnectOptions::default());
    for i in 0..RETAINED {
        loader.publish(&format!("fleet/{i}/last"), b"21.5", QoS::AtMostOnce, true);
    }
    loader.publish("fleet/fence", b"", QoS::AtLeastOnce, false);
    let mut bystander = Bystander::connect(&broker);
    let greedy = {
        let addr = broker.addr();
        std::thread::spawn(move || {
            let (mut client, _) =
                RawClient::connect_addr(addr, "greedy", ConnectOptions::default());
            for batch in 0..SUBSCRIBES {
                let filters = (0..FILTERS_EACH)
                    .map(|j| {
                        let topic = (batch * FILTERS_EACH + j) * (RETAINED / 2_000);
                        let filter = TopicFilter::new(format!("fleet/{topic}/+")).unwrap();
                        (filter, SubscriptionOptions::default())
                    })
                    .collect();
                let packet_id = client.packet_id();
                let properties = Default::default();
                client.send(&Packet::Subscribe(Subscribe { packet_id, properties, filters }));
            }
            let mut retained = 0;
            while retained < SUBSCRIBES * FILTERS_EACH {
                match client.recv() {
                    Some(Packet::Publish(_)) => retained += 1,
                    Some(Packet::SubAck(_)) => {}
                    other => panic!("after {retained} retained messages: {other:?}"),
                }
            }
            retained
        })
    };
    let mut slowest = std::time::Duration::ZERO;
    let mut round = 0;
    while !greedy.is_finished() {
        let began = std::time::Instant::now();
        bystander.round_trip(round);
        slowest = slowest.max(began.elapsed());
        round += 1;
    }
    assert_eq!(greedy.join().unwrap(), SUBSCRIBES * FILTERS_EACH);
    eprintln!("2,000 filters against {RETAINED} retained topics: {round} round trips meanwhile, the slowest {slowest:?}");
    assert!(slowest < std::time::Duration::from_secs(5), "a round trip took {slowest:?}");
}

/// Two thousand sockets that connect and never send CONNECT: each costs the broker a waiting
/// task until its CONNECT deadline (20 s), about 6 KiB (12 before the opening boxed its TLS and
/// WebSocket layers); a bystander's round trips go on.
#[test]
fn sockets_that_never_send_connect_cost_little() {
    const SOCKETS: u64 = 2_000;
    let broker = Broker::start("");
    let mut bystander = Bystander::connect(&broker);
    let before = rss_kib(broker.pid());
    let silent: Vec<std::net::TcpStream> =
        (0..SOCKETS).map(|_| std::net::TcpStream::connect(broker.addr()).unwrap()).collect();
    for round in 0..20 {
        bystander.round_trip(round);
    }
    let per_socket_kib = rss_kib(broker.pid()).saturating_sub(before) / SOCKETS;
    assert!(per_socket_kib < 10, "a silent socket costs {per_socket_kib} KiB");
    drop(silent);
}

/// One client id reconnecting in a tight loop, each connection taking the session over from
/// the one before (which is closed as taken over), 500 times: the broker keeps one session
/// for it, with its subscription, and a bystander's round trips go on throughout.
#[test]
fn a_client_id_reconnecting_in_a_tight_loop_takes_its_session_over_each_time() {
    const ROUNDS: usize = 500;
    let broker = Broker::start("");
    let mut bystander = Bystander::connect(&broker);
    let churn = {
        let addr = broker.addr();
        std::thread::spawn(move || {
            let options = || ConnectOptions { clean_start: false, ..Default::default() };
            let (mut first, _) = RawClient::connect_addr(addr, "flapping", options());
            first.subscribe("flapping/#", QoS::AtLeastOnce);
            let mut previous = first;
            for round in 0..ROUNDS {
                let (next, present) = RawClient::connect_addr(addr, "flapping", options());
                assert!(present, "round {round}: the session was not resumed");
                drop(previous);
                previous = next;
            }
            previous
        })
    };
    let mut round = 0;
    while !churn.is_finished() {
        bystander.round_trip(round);
        round += 1;
    }
    let mut last = churn.join().unwrap();
    bystander.client.publish("flapping/1", b"to the last one", QoS::AtLeastOnce, false);
    assert_eq!(&last.receive().payload[..], b"to the last one");
}

/// Garbage as the first bytes of a connection, on every kind of listener (TLS, PROXY versions 1
/// and 2, WebSocket, plain MQTT): each garbage connection is closed, and a subscriber connected
/// before goes on receiving. Bytes from a fixed xorshift sequence, some shaped like the start of
/// what the listener expects.
#[test]
fn garbage_on_every_kind_of_listener_costs_only_its_connection() {
    use std::io::{Read, Write};
    if !common::pki::available() {
        return;
    }
    let dir = common::TempDir::new();
    let ca = common::pki::Ca::new(&dir.0, "ca");
    let server = ca.server("server", common::pki::KeyType::EcP256);
    let ports: Vec<u16> = (0..5).map(|_| common::free_port()).collect();
    let config = format!(
        "listener {} 127.0.0.1\ncertfile {}\nkeyfile {}\n\
         listener {} 127.0.0.1\nenable_proxy_protocol 1\n\
         listener {} 127.0.0.1\nenable_proxy_protocol 2\n\
         listener {} 127.0.0.1\nprotocol websockets\n\
         listener {} 127.0.0.1\n",
        ports[0],
        server.cert.display(),
        server.key.display(),
        ports[1],
        ports[2],
        ports[3],
        ports[4]
    );
    let broker = Broker::start(&config);
    let mut bystander = Bystander::connect(&broker);
    // Starts a listener may see first: a TLS record header, the PROXY signatures, an HTTP GET.
    let shapes: [&[u8]; 5] = [
        b"\x16\x03\x01",
        b"PROXY TCP4 ",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11",
        b"GET / HTTP/1.1\r\n",
        b"\x10",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..250 {
        let port = ports[round % ports.len()];
        let mut garbage = shapes[(next() % 5) as usize].to_vec();
        garbage.extend((0..next() % 400).map(|_| next() as u8));
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let _ = stream.write_all(&garbage);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        // Whatever the broker answers (an alert, a 400), it then closes.
        let _ = stream.read_to_end(&mut Vec::new());
    }
    bystander.round_trip(0);
}

/// `max_subscriptions_per_client`: filters past it are refused one by one (3.x 0x80, 5.0
/// 0x97) while the rest of the SUBACK stands; a filter the session holds may be subscribed
/// again, and an unsubscription makes room.
#[test]
fn subscriptions_past_the_limit_are_refused_filter_by_filter() {
    use culex::protocol::{Properties, Subscribe, SubscriptionOptions, TopicFilter, Unsubscribe};
    let broker = Broker::start("max_subscriptions_per_client 3");
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let options = ConnectOptions { version, ..Default::default() };
        let (mut client, _) = RawClient::connect(&broker, "greedy", options);
        let filter = |name: &str| {
            (TopicFilter::new(name.to_string()).unwrap(), SubscriptionOptions::default())
        };
        let packet_id = client.packet_id();
        client.send(&Packet::Subscribe(Subscribe {
            packet_id,
            properties: Properties::default(),
            filters: ["a/#", "b/#", "c/#", "d/#"].map(filter).to_vec(),
        }));
        let Some(Packet::SubAck(suback)) = client.recv() else { panic!("no SUBACK") };
        let refused = match version {
            ProtocolVersion::V5 => ReasonCode::QuotaExceeded,
            _ => ReasonCode::UnspecifiedError,
        };
        assert_eq!(suback.reasons[..3], [ReasonCode::Success; 3], "{version:?}");
        assert_eq!(suback.reasons[3], refused, "{version:?}");
        assert_eq!(client.subscribe("a/#", QoS::AtLeastOnce), [ReasonCode::GrantedQos1]);
        assert_eq!(client.subscribe("e/#", QoS::AtMostOnce), [refused]);
        let packet_id = client.packet_id();
        client.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id,
            properties: Properties::default(),
            filters: vec![TopicFilter::new("b/#".to_string()).unwrap()],
        }));
        assert!(matches!(client.recv(), Some(Packet::UnsubAck(_))));
        assert_eq!(client.subscribe("e/#", QoS::AtMostOnce), [ReasonCode::Success]);
        client.publish("e/1", b"room made", QoS::AtLeastOnce, false);
        assert_eq!(&client.receive().payload[..], b"room made");
        client.disconnect();
    }
}

/// A 3.x client has no Receive Maximum: it may leave every packet id of its QoS 2 messages
/// unreleased. Each is routed once; a retransmission is acknowledged and not routed again;
/// what the 65,535 ids hold stays small, and others' round trips go on.
#[test]
fn a_3x_client_holding_every_qos2_id_unreleased_costs_little() {
    use culex::protocol::{PacketId, Properties, Publish, TopicName};
    let broker = Broker::start("");
    let mut bystander = Bystander::connect(&broker);
    let (mut counter, _) = RawClient::connect(&broker, "counter", ConnectOptions::default());
    counter.subscribe("held/#", QoS::AtMostOnce);
    let (mut holder, _) = RawClient::connect(&broker, "holder", ConnectOptions::default());
    let before = rss_kib(broker.pid());
    let publish = |id: u16, dup: bool| {
        Packet::Publish(Publish {
            dup,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: TopicName::new("held/x".to_string()).unwrap(),
            packet_id: PacketId::new(id),
            properties: Properties::default(),
            payload: bytes::Bytes::from_static(b"once"),
        })
    };
    let ids: Vec<u16> = (1..=u16::MAX).collect();
    for chunk in ids.chunks(1024) {
        for id in chunk {
            holder.send(&publish(*id, false));
        }
        for id in chunk {
            let answer = holder.recv();
            assert!(matches!(answer, Some(Packet::PubRec(ack)) if ack.packet_id.get() == *id));
        }
    }
    for id in [1, 30_000, u16::MAX] {
        holder.send(&publish(id, true));
        assert!(matches!(holder.recv(), Some(Packet::PubRec(_))), "retransmission of {id}");
    }
    bystander.round_trip(1);
    let mut delivered = 0;
    while let Some(Packet::Publish(_)) = counter.recv_within(std::time::Duration::from_millis(500))
    {
        delivered += 1;
    }
    assert_eq!(delivered, usize::from(u16::MAX), "each routed once");
    let grown_kib = rss_kib(broker.pid()).saturating_sub(before);
    eprintln!("65,535 unreleased QoS 2 ids: {grown_kib} KiB");
    assert!(grown_kib < 32 << 10, "{grown_kib} KiB");
}

/// Client ids and user names may be as long as MQTT lets them be (65,535 bytes), as Mosquitto
/// 2.0.11 accepts them (checked by hand); what one costs the broker is a copy or two of each,
/// shared by its session, its connection and its registry entry. A hundred clients at the
/// limit of both connect, subscribe and get their messages, and the broker grows by a few
/// times what they sent, not by the packets they could have sent.
#[test]
fn client_ids_and_user_names_at_the_protocol_limit_cost_their_length() {
    let broker = Broker::start("");
    let mut bystander = Bystander::connect(&broker);
    let before = rss_kib(broker.pid());
    let long = |i: usize, what: &str| {
        let mut text = format!("{what}-{i}-");
        text.extend(std::iter::repeat_n('x', usize::from(u16::MAX) - text.len()));
        text
    };
    let clients: Vec<RawClient> = (0..100)
        .map(|i| {
            let user: &'static str = Box::leak(long(i, "user").into_boxed_str());
            let options = ConnectOptions { login: Some((user, "secret")), ..Default::default() };
            let (mut client, _) = RawClient::connect(&broker, &long(i, "id"), options);
            client.subscribe(&format!("long/{i}"), QoS::AtLeastOnce);
            client
        })
        .collect();
    let grown_kib = rss_kib(broker.pid()).saturating_sub(before);
    let (mut publisher, _) = RawClient::connect(&broker, "publisher", ConnectOptions::default());
    for i in 0..clients.len() {
        publisher.publish(&format!("long/{i}"), b"to you", QoS::AtLeastOnce, false);
    }
    for mut client in clients {
        assert_eq!(client.receive().payload, b"to you".to_vec());
    }
    bystander.round_trip(1);
    // 100 clients sent 12.5 MiB of ids and names.
    eprintln!("100 clients with 64 KiB ids and user names: {grown_kib} KiB");
    assert!(grown_kib < 64 << 10, "{grown_kib} KiB");
}
