//! Mosquitto's logging options on the real binary: `log_dest`, `log_type`,
//! `connection_messages`, `log_timestamp`, `log_timestamp_format`, SIGHUP reopening log files.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Broker, RawClient};
use culex::protocol::QoS;

/// Waits until the file holds a line `wanted` accepts; returns the whole text either way.
fn wait_for_line(path: &Path, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + common::WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().any(&wanted) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects, subscribes, unsubscribes and disconnects one client.
fn client_session(broker: &Broker, client_id: &str) {
    let (mut client, _) = RawClient::connect(broker, client_id, Default::default());
    client.subscribe("logged/topic", QoS::AtLeastOnce);
    let packet_id = client.packet_id();
    client.send(&culex::protocol::Packet::Unsubscribe(culex::protocol::Unsubscribe {
        packet_id,
        properties: Default::default(),
        filters: vec![culex::protocol::TopicFilter::new("logged/topic".to_string()).unwrap()],
    }));
    assert!(matches!(client.recv(), Some(culex::protocol::Packet::UnsubAck(_))));
    client.disconnect();
}

#[test]
fn log_types_choose_what_reaches_the_file() {
    let broker = Broker::start_as_configured(
        "log_dest file {dir}/all.log\nlog_type subscribe\nlog_type unsubscribe\nlog_type notice",
    );
    client_session(&broker, "typed");
    let path = broker.dir().join("all.log");
    let text = wait_for_line(&path, |l| l.contains("typed logged/topic"));
    assert!(text.contains("typed 1 logged/topic"), "subscribe line: {text}");
    assert!(text.contains("typed logged/topic"), "unsubscribe line: {text}");
    assert!(text.contains("new client connecting"), "connection line: {text}");
    // Nothing goes to stderr once a log_dest is set.
    assert_eq!(broker.log_text(), "");

    let broker = Broker::start_as_configured("log_dest file {dir}/errors.log\nlog_type error");
    client_session(&broker, "quiet");
    std::thread::sleep(Duration::from_millis(300));
    let text = std::fs::read_to_string(broker.dir().join("errors.log")).unwrap();
    assert_eq!(text, "", "only errors, and there were none");
}

#[test]
fn connection_messages_false_leaves_connections_out() {
    let broker = Broker::start_as_configured(
        "log_dest file {dir}/c.log\nlog_type all\nconnection_messages false",
    );
    client_session(&broker, "silent");
    let text = wait_for_line(&broker.dir().join("c.log"), |l| l.contains("silent 1 logged/topic"));
    assert!(text.contains("silent 1 logged/topic"), "{text}");
    assert!(!text.contains("new client connecting"), "{text}");
    assert!(!text.contains("client disconnected"), "{text}");
}

#[test]
fn timestamps_follow_log_timestamp_and_its_format() {
    // Mosquitto's default: seconds since the epoch and a colon.
    let broker = Broker::start_as_configured("log_dest stderr");
    client_session(&broker, "stamped");
    let text = wait_for_line(&broker.log, |l| l.contains("client_id=stamped"));
    let line = text.lines().find(|l| l.contains("client_id=stamped")).unwrap();
    let (stamp, _) = line.split_once(": ").unwrap();
    let seconds: u64 = stamp.trim().parse().unwrap_or_else(|_| panic!("{line}"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    assert!(now.as_secs().abs_diff(seconds) < 60, "{line}");

    let broker = Broker::start_as_configured("log_timestamp_format %Y-%m-%dT%H:%M:%S");
    client_session(&broker, "formatted");
    let text = wait_for_line(&broker.log, |l| l.contains("client_id=formatted"));
    let line = text.lines().find(|l| l.contains("client_id=formatted")).unwrap();
    let stamp = line.split_whitespace().next().unwrap();
    assert_eq!((stamp.len(), &stamp[4..5], &stamp[10..11]), (19, "-", "T"), "{line}");

    let broker = Broker::start_as_configured("log_timestamp false");
    client_session(&broker, "unstamped");
    let text = wait_for_line(&broker.log, |l| l.contains("client_id=unstamped"));
    let line = text.lines().find(|l| l.contains("client_id=unstamped")).unwrap();
    assert!(line.trim_start().starts_with("INFO"), "{line}");
}

#[test]
fn log_dest_topic_publishes_on_sys_broker_log() {
    let broker = Broker::start_as_configured("log_dest topic\nlog_type all\nsys_interval 0");
    let (mut monitor, _) = RawClient::connect(&broker, "monitor", Default::default());
    monitor.subscribe("$SYS/broker/log/#", QoS::AtMostOnce);
    client_session(&broker, "published");
    let deadline = Instant::now() + common::WAIT;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let publish = monitor.receive();
        let line = String::from_utf8_lossy(&publish.payload).into_owned();
        seen.push(format!("{} {line}", publish.topic.as_str()));
        if publish.topic.as_str() == "$SYS/broker/log/M"
            && line.contains("published 1 logged/topic")
        {
            return;
        }
    }
    panic!("no subscribe line on $SYS/broker/log/M: {seen:#?}");
}

#[test]
fn sighup_reopens_log_files() {
    let broker = Broker::start_as_configured("log_dest file {dir}/rotated.log");
    let path = broker.dir().join("rotated.log");
    client_session(&broker, "before");
    wait_for_line(&path, |l| l.contains("client_id=before"));
    // What logrotate does: move the file away, then signal.
    std::fs::rename(&path, broker.dir().join("rotated.log.1")).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &broker.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(300));
    client_session(&broker, "after");
    let text = wait_for_line(&path, |l| l.contains("client_id=after"));
    assert!(text.contains("client_id=after") && !text.contains("client_id=before"), "{text}");
}
