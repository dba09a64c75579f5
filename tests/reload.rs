//! SIGHUP reads the configuration file again and applies what needs no restart: a bridge added
//! to a running master, its topic line changed, then removed; limits; and a file with errors
//! refused whole. Real processes on loopback aliases, a real Mosquitto as the seed leaf.

mod common;

use std::time::{Duration, Instant};

use common::node::{Kind, Node, LINK_WAIT};
use common::{Broker, ConnectOptions, RawClient, WAIT};
use culex::protocol::{Packet, QoS};

fn hup(pid: u32) {
    // SAFETY: kill(2) with the pid of our own child.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
}

/// Waits until `log()` has one more line containing `needle` than `before` had.
fn await_log(log: impl Fn() -> String, needle: &str, before: usize) {
    let deadline = Instant::now() + WAIT;
    while log().matches(needle).count() <= before {
        assert!(Instant::now() < deadline, "no {needle:?} in the log:\n{}", log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rewrites the master's configuration and sends SIGHUP, then waits until the reload is logged.
fn reconfigure(master: &Node, text: &str, logged: &str) {
    let before = master.log().matches(logged).count();
    let config =
        format!("shards 2\nlistener {} {}\nallow_anonymous true\n{text}", master.port, master.host);
    std::fs::write(master.dir.0.join("node.conf"), config).unwrap();
    hup(master.child.as_ref().unwrap().id());
    await_log(|| master.log(), logged, before);
}

fn bridge_to(leaf: &Node, topic: &str, clean: bool) -> String {
    format!(
        "connection seed\naddress {}\ntopic {topic} both 1 sensor/ myhouse/\n\
         notifications true\ncleansession {clean}\n",
        leaf.address()
    )
}

/// Publishes `topic` on `from` until `sub` gets it (the bridge is up and subscribed), then
/// drops what else is on its way.
fn await_route(from: &Node, topic: &str, sub: &mut RawClient, master: &Node) {
    common::node::await_route(from, topic, sub, &[master]);
    while let Some(packet) = sub.recv_within(Duration::from_millis(400)) {
        if let Packet::Publish(p) = packet {
            sub.acknowledge(&p);
        }
    }
}

/// Publishes `topic` on `from` until `sub` stops getting it: the route is gone.
fn await_no_route(from: &Node, topic: &str, sub: &mut RawClient, master: &Node) {
    let deadline = Instant::now() + LINK_WAIT;
    let (mut prober, _) = RawClient::connect_addr(from.addr(), "", ConnectOptions::default());
    loop {
        prober.publish(topic, b"probe", QoS::AtMostOnce, false);
        let mut got = false;
        while let Some(packet) = sub.recv_within(Duration::from_millis(400)) {
            if let Packet::Publish(p) = packet {
                sub.acknowledge(&p);
                got |= *p.topic == topic.replace("sensor/", "myhouse/");
            }
        }
        if !got {
            break;
        }
        assert!(Instant::now() < deadline, "{topic} still crosses:\n{}", master.log());
    }
    prober.disconnect();
}

/// A master started without bridges gets one to the seed by SIGHUP (on a worker shard: there
/// is no bridge shard), then the rest of `bridge_changes`.
#[test]
fn a_bridge_added_to_a_master_without_bridges() {
    let Some(leaf) = Node::start(Kind::Mosquitto, "127.0.0.88", "") else { return };
    let Some(master) = Node::start(Kind::Culex, "127.0.0.53", "") else { return };
    bridge_changes(&leaf, &master, "", true);
}

/// The same, on a master started with another bridge, so with a bridge shard, and with a
/// session the bridge keeps (`cleansession false`): the filter of the old `topic` line goes.
#[test]
fn a_bridge_added_beside_a_running_one() {
    let Some(leaf) = Node::start(Kind::Mosquitto, "127.0.0.89", "") else { return };
    let other = format!("connection other\naddress {}\ntopic other/# out 0\n", leaf.address());
    let Some(master) = Node::start(Kind::Culex, "127.0.0.54", &other) else { return };
    bridge_changes(&leaf, &master, &other, false);
    // The other bridge, in every file, kept its link throughout.
    assert!(!master.log().contains("bridge link down bridge=other"), "{}", master.log());
}

/// The scenario: a bridge to the seed added by SIGHUP; its topic line changed; a file
/// with an error changes nothing; the bridge removed. A client of the master stays connected
/// throughout. `kept`: lines every file has.
fn bridge_changes(leaf: &Node, master: &Node, kept: &str, clean: bool) {
    let apply = |text: &str, logged: &str| reconfigure(master, &format!("{kept}{text}"), logged);
    let (mut on_leaf, _) = RawClient::connect_addr(leaf.addr(), "leaf-sub", Default::default());
    on_leaf.subscribe("myhouse/#", QoS::AtLeastOnce);
    let (mut on_master, _) = RawClient::connect_addr(master.addr(), "stays", Default::default());
    on_master.subscribe("sensor/#", QoS::AtLeastOnce);

    apply(&bridge_to(leaf, "room1/#", clean), "configuration reloaded");
    await_route(master, "sensor/room1/t", &mut on_leaf, master);
    // Both ways, and the master's client was never dropped.
    let (mut leaf_publisher, _) = RawClient::connect_addr(leaf.addr(), "", Default::default());
    leaf_publisher.publish("myhouse/room1/h", b"40", QoS::AtLeastOnce, false);
    assert_eq!(&await_topic(&mut on_master, "sensor/room1/h").payload[..], b"40");

    apply(&bridge_to(leaf, "room2/#", clean), "configuration reloaded");
    await_route(master, "sensor/room2/t", &mut on_leaf, master);
    await_no_route(master, "sensor/room1/t", &mut on_leaf, master);
    // The old line's filter went with it, even from a session the bridge kept: nothing on
    // room1 reaches the bridge to be dropped there.
    assert!(!master.log().contains("no out pattern matches"), "{}", master.log());

    // An unknown option: refused whole, the bridge stays as it was.
    let before = master.log().matches("the configuration in force stays").count();
    let broken = format!("no_such_option 1\n{}", bridge_to(leaf, "room3/#", clean));
    apply(&broken, "the configuration in force stays");
    assert_eq!(master.log().matches("the configuration in force stays").count(), before + 1);
    await_route(master, "sensor/room2/t", &mut on_leaf, master);
    await_no_route(master, "sensor/room3/t", &mut on_leaf, master);

    apply("", "configuration reloaded");
    await_log(|| master.log(), "bridge removed", 0);
    await_no_route(master, "sensor/room2/t", &mut on_leaf, master);
    let (mut state, _) = RawClient::connect_addr(leaf.addr(), "state", Default::default());
    state.subscribe("$SYS/broker/connection/+/state", QoS::AtLeastOnce);
    let seed = loop {
        let message = state.receive();
        if message.topic.ends_with(".seed/state") {
            break message;
        }
    };
    assert_eq!(&seed.payload[..], b"0", "the leaf is told the bridge went");
    let (mut publisher, _) = RawClient::connect_addr(master.addr(), "", Default::default());
    publisher.publish("sensor/still", b"here", QoS::AtLeastOnce, false);
    await_topic(&mut on_master, "sensor/still");
}

/// Receives (and acknowledges) until a message on `topic` comes.
fn await_topic(sub: &mut RawClient, topic: &str) -> culex::protocol::Publish {
    loop {
        let message = sub.receive();
        if &*message.topic == topic {
            return message;
        }
    }
}

/// Limits apply from the reload on; options that need a restart are named in the log and keep
/// their running values.
#[test]
fn limits_apply_and_restart_options_are_named() {
    let broker = Broker::start("");
    let config = broker.dir().join("culex.conf");
    let (mut sub, _) = RawClient::connect(&broker, "sub", Default::default());
    sub.subscribe("limits/#", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect(&broker, "pub", Default::default());
    let big = [b'x'; 100];
    publisher.publish("limits/big", &big, QoS::AtLeastOnce, false);
    assert_eq!(sub.receive().payload.len(), 100);

    let text = std::fs::read_to_string(&config).unwrap();
    let port = broker.port;
    let text = text.replace(
        &format!("listener {port} 127.0.0.1\n"),
        &format!("listener {port} 127.0.0.1\nmax_connections 3\n"),
    ) + &format!(
        "message_size_limit 10\npersistence true\npersistence_location {}/\nshards 3\n",
        broker.dir().display()
    );
    std::fs::write(&config, text).unwrap();
    let before = broker.log_text().matches("configuration reloaded").count();
    hup(broker.pid());
    await_log(|| broker.log_text(), "configuration reloaded", before);
    let log = broker.log_text();
    let restart = log.lines().find(|l| l.contains("apply only when the broker starts")).unwrap();
    assert!(restart.contains("persistence") && restart.contains("shards"), "{restart}");

    // The shards apply it at their next sweep.
    let deadline = Instant::now() + WAIT;
    loop {
        publisher.publish("limits/big", &big, QoS::AtLeastOnce, false);
        match sub.recv_within(Duration::from_millis(300)) {
            Some(Packet::Publish(p)) => sub.acknowledge(&p),
            _ => break,
        }
        assert!(Instant::now() < deadline, "message_size_limit not applied");
    }
    publisher.publish("limits/small", b"ok", QoS::AtLeastOnce, false);
    assert_eq!(&*sub.receive().topic, "limits/small");
    // Two connected, a third fits, a fourth is closed before CONNACK.
    let (third, _) = RawClient::connect(&broker, "third", Default::default());
    let mut fourth = RawClient::open(&broker);
    assert!(fourth.try_handshake("fourth", ConnectOptions::default()).is_none());
    third.disconnect();
    assert!(!std::fs::read_dir(broker.dir())
        .unwrap()
        .any(|entry| { entry.unwrap().file_name().to_string_lossy().contains(".shard") }));
}

/// Logging options change with a reload: the types logged at once, and a new destination.
#[test]
fn logging_follows_a_reload() {
    let broker = Broker::start_as_configured("log_type error\nlog_dest stderr\n");
    let (client, _) = RawClient::connect(&broker, "quiet", Default::default());
    client.disconnect();
    let file = broker.dir().join("more.log");
    let config = broker.dir().join("culex.conf");
    let text = std::fs::read_to_string(&config).unwrap().replace("log_type error\n", "")
        + &format!("log_type all\nlog_dest file {}\n", file.display());
    std::fs::write(&config, text).unwrap();
    hup(broker.pid());
    await_log(|| broker.log_text(), "configuration reloaded", 0);
    let (client, _) = RawClient::connect(&broker, "heard", Default::default());
    client.disconnect();
    let connecting = |text: &str, id: &str| {
        text.lines().any(|l| l.contains("new client connecting") && l.contains(id))
    };
    let deadline = Instant::now() + WAIT;
    while !connecting(&std::fs::read_to_string(&file).unwrap_or_default(), "client_id=heard") {
        assert!(Instant::now() < deadline, "nothing in {}", file.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = broker.log_text();
    assert!(connecting(&log, "client_id=heard") && !connecting(&log, "client_id=quiet"), "{log}");
}

/// `sys_interval 0` leaves `$SYS` unpublished until a reload sets an interval.
#[test]
fn sys_interval_follows_a_reload() {
    let broker = Broker::start("sys_interval 0");
    let (mut watcher, _) = RawClient::connect(&broker, "watcher", Default::default());
    watcher.subscribe("$SYS/broker/uptime", QoS::AtMostOnce);
    assert!(watcher.recv_within(Duration::from_millis(1500)).is_none(), "$SYS is off");
    let config = broker.dir().join("culex.conf");
    let text =
        std::fs::read_to_string(&config).unwrap().replace("sys_interval 0", "sys_interval 1");
    std::fs::write(&config, text).unwrap();
    hup(broker.pid());
    await_log(|| broker.log_text(), "configuration reloaded", 0);
    let uptime = watcher.receive();
    assert_eq!(&*uptime.topic, "$SYS/broker/uptime");
}
