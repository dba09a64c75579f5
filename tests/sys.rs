//! `$SYS`: the tree shard 0 publishes from every shard's counters, checked after a known
//! workload, and its topics compared with a real Mosquitto's.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{clients_on_different_shards, free_port, Broker, ConnectOptions, RawClient};
use culex::protocol::{Packet, QoS};

/// The `$SYS/broker/...` topics a monitor has seen, with their latest payloads.
struct Monitor {
    client: RawClient,
    seen: BTreeMap<String, String>,
}

impl Monitor {
    fn connect(addr: std::net::SocketAddr, client_id: &str) -> Monitor {
        let (mut client, _) = RawClient::connect_addr(addr, client_id, Default::default());
        client.subscribe("$SYS/broker/#", QoS::AtMostOnce);
        Monitor { client, seen: BTreeMap::new() }
    }

    /// Reads `$SYS` until `holds` accepts what was seen, or `within` passes.
    fn until(
        &mut self,
        within: Duration,
        holds: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> bool {
        let deadline = Instant::now() + within;
        while !holds(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if let Some(Packet::Publish(publish)) = self.client.recv_within(left) {
                let topic = publish.topic.as_str().trim_start_matches("$SYS/broker/").to_string();
                self.seen.insert(topic, String::from_utf8_lossy(&publish.payload).into_owned());
            }
        }
        true
    }
}

#[test]
fn the_tree_reports_a_known_workload_summed_across_shards() {
    let broker = Broker::start("sys_interval 1");
    // A subscriber and a publisher on different shards, and a persistent session left offline.
    let (mut subscriber, _, mut publisher, _) =
        clients_on_different_shards(&broker, "w", Default::default);
    subscriber.subscribe("w/#", QoS::AtLeastOnce);
    let persistent = ConnectOptions { clean_start: false, ..Default::default() };
    let (mut offline, _) = RawClient::connect(&broker, "offline", persistent);
    offline.subscribe("w/#", QoS::AtLeastOnce);
    offline.disconnect();
    let payload = [7u8; 100];
    for _ in 0..10 {
        publisher.publish("w/t", &payload, QoS::AtLeastOnce, false);
    }
    publisher.publish("w/r", b"kept", QoS::AtLeastOnce, true);
    for _ in 0..11 {
        subscriber.receive();
    }

    let mut monitor = Monitor::connect(broker.addr(), "monitor");
    // Every topic Culex publishes is retained, the workload's one more.
    let sys_topics = 53;
    let expected: &[(&str, u64)] = &[
        ("clients/connected", 3),
        ("clients/disconnected", 1),
        ("clients/total", 4),
        ("clients/expired", 0),
        ("subscriptions/count", 3),
        ("shared_subscriptions/count", 0),
        ("retained messages/count", sys_topics + 1),
        // The offline session's queue and the retained messages.
        ("messages/stored", 11 + sys_topics + 1),
        ("publish/messages/received", 11),
        ("publish/bytes/received", 10 * 100 + 4),
        ("publish/messages/dropped", 0),
    ];
    // Counters that the monitor's own traffic keeps moving: at least the workload's.
    let at_least: &[(&str, u64)] = &[
        ("publish/messages/sent", 11),
        ("publish/bytes/sent", 10 * 100 + 4),
        ("messages/received", 11 + 4),
        ("bytes/received", 10 * 100 + 4),
        ("bytes/sent", 10 * 100 + 4),
        ("clients/maximum", 3),
        ("heap/current", 1),
    ];
    let number = |seen: &BTreeMap<String, String>, topic: &str| -> Option<u64> {
        seen.get(topic).and_then(|v| v.parse().ok())
    };
    // A publication arrives topic by topic: read until all of one is in.
    let settled = monitor.until(Duration::from_secs(8), |seen| {
        expected.iter().all(|(topic, value)| number(seen, topic) == Some(*value))
            && at_least.iter().all(|(topic, least)| number(seen, topic) >= Some(*least))
    });
    assert!(settled, "expected {expected:?} and at least {at_least:?}, saw {:#?}", monitor.seen);
    assert!(monitor.seen["version"].starts_with("culex version "), "{:?}", monitor.seen["version"]);
    assert!(monitor.seen["uptime"].ends_with(" seconds"));
    let connections: f64 = monitor.seen["load/connections/1min"].parse().unwrap();
    assert!(connections > 0.0, "load/connections/1min {connections}");
}

#[test]
fn sys_interval_0_publishes_nothing() {
    let broker = Broker::start("sys_interval 0");
    let mut monitor = Monitor::connect(broker.addr(), "monitor");
    assert!(!monitor.until(Duration::from_millis(1500), |seen| !seen.is_empty()));
}

#[test]
fn a_hash_subscription_does_not_receive_sys() {
    let broker = Broker::start("sys_interval 1");
    let (mut everything, _) = RawClient::connect(&broker, "all", Default::default());
    everything.subscribe("#", QoS::AtMostOnce);
    // [MQTT-4.7.2-1]: filters starting with a wildcard do not match topics starting with `$`.
    assert!(everything.recv_within(Duration::from_millis(1500)).is_none());
}

/// The same subscription on Mosquitto and on Culex, both with `sys_interval 1`, sees the same
/// topics. Culex differs only in the `version` text and in what it measures.
#[test]
fn the_topics_are_mosquittos() {
    let Some(mosquitto) = common::mosquitto_tool("mosquitto") else { return };
    let port = free_port();
    let dir = common::TempDir::new();
    let conf = dir.0.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nsys_interval 1\n"),
    )
    .unwrap();
    let mut child = Command::new(mosquitto)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + common::WAIT;
    while !common::answers_mqtt(addr) {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let topics_after_two_intervals = |addr| {
        let mut monitor = Monitor::connect(addr, "monitor");
        monitor.until(Duration::from_millis(2500), |_| false);
        monitor.seen
    };
    let theirs = topics_after_two_intervals(addr);
    let _ = child.kill();
    let _ = child.wait();
    let broker = Broker::start("sys_interval 1");
    let ours = topics_after_two_intervals(broker.addr());
    assert!(theirs["version"].starts_with("mosquitto version "));
    let names = |seen: &BTreeMap<String, String>| seen.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&ours), names(&theirs));
}
