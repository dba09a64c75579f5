//! `password_file` with files made by the real `mosquitto_passwd`, driven by the real
//! `mosquitto_pub`/`mosquitto_sub`. The same configuration and the same client script run
//! against Culex and against Mosquitto must give the same outcomes, word for word.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::node::{Kind, Node};
use common::{mosquitto_tool, ConnectOptions, RawClient};
use culex::protocol::{Packet, QoS};

struct Tools {
    passwd: PathBuf,
    publish: PathBuf,
    subscribe: PathBuf,
}

fn tools() -> Option<Tools> {
    Some(Tools {
        passwd: mosquitto_tool("mosquitto_passwd")?,
        publish: mosquitto_tool("mosquitto_pub")?,
        subscribe: mosquitto_tool("mosquitto_sub")?,
    })
}

/// `mosquitto_passwd [-H sha512] -b FILE USER PASSWORD` (`-c` creates the file).
fn add_user(tools: &Tools, file: &Path, user: &str, password: &str, args: &[&str]) {
    let status = Command::new(&tools.passwd)
        .args(args)
        .arg("-b")
        .arg(file)
        .args([user, password])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A password file in a directory every broker user can read: alice with Mosquitto 2.0's
/// default hash ($7$), bob with Mosquitto 1.6's ($6$).
fn password_file(tools: &Tools, dir: &Path) -> PathBuf {
    let file = dir.join("passwords");
    add_user(tools, &file, "alice", "secret1", &["-c"]);
    add_user(tools, &file, "bob", "secret2", &["-H", "sha512"]);
    // Mosquitto started as root reads it as user `mosquitto`.
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    file
}

/// What `mosquitto_pub` says when it publishes with these credentials: "ok", or its error.
fn publish_as(tools: &Tools, node: &Node, version: &str, credentials: &[&str]) -> String {
    let out = Command::new(&tools.publish)
        .args(["-h", node.host, "-p", &node.port.to_string(), "-V", version])
        .args(["-t", "auth/test", "-m", "x"])
        .args(credentials)
        .output()
        .unwrap();
    if out.status.success() {
        "ok".to_string()
    } else {
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    }
}

const CASES: &[(&str, &[&str])] = &[
    ("alice, $7$", &["-u", "alice", "-P", "secret1"]),
    ("bob, $6$", &["-u", "bob", "-P", "secret2"]),
    ("wrong password", &["-u", "alice", "-P", "secret2"]),
    ("no password", &["-u", "alice"]),
    ("unknown user", &["-u", "mallory", "-P", "secret1"]),
    ("anonymous", &[]),
];

/// Each case against each protocol version, as (case, version, outcome).
fn outcomes(tools: &Tools, node: &Node) -> Vec<(String, String, String)> {
    let mut outcomes = Vec::new();
    for (case, credentials) in CASES {
        for version in ["mqttv311", "mqttv5"] {
            let outcome = publish_as(tools, node, version, credentials);
            outcomes.push((case.to_string(), version.to_string(), outcome));
        }
    }
    outcomes
}

fn same_outcomes_as_mosquitto(allow_anonymous: bool) {
    let Some(tools) = tools() else { return };
    let dir = common::TempDir::new();
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let file = password_file(&tools, &dir.0);
    let config = format!("password_file {}\nallow_anonymous {allow_anonymous}\n", file.display());
    let Some(culex) = Node::start(Kind::Culex, "127.0.0.1", &config) else { return };
    let Some(mosquitto) = Node::start(Kind::Mosquitto, "127.0.0.1", &config) else { return };
    let (ours, theirs) = (outcomes(&tools, &culex), outcomes(&tools, &mosquitto));
    assert_eq!(ours, theirs, "Culex (left) and Mosquitto (right) differ\n{}", culex.log());
    // And they are what Mosquitto's documentation promises.
    let ok = |case: &str| ours.iter().filter(|(c, _, o)| c == case && o == "ok").count() == 2;
    assert!(ok("alice, $7$") && ok("bob, $6$"), "{ours:?}");
    assert_eq!(ok("anonymous"), allow_anonymous, "{ours:?}");
    for case in ["wrong password", "no password", "unknown user"] {
        let refused: Vec<&str> =
            ours.iter().filter(|(c, _, _)| c == case).map(|(_, _, o)| o.as_str()).collect();
        assert_eq!(
            refused,
            [
                "Connection error: Connection Refused: not authorised.\n\
                 Error: The connection was refused.",
                "Connection error: Not authorized\n\
                 Error: A network protocol error occurred when communicating with the broker.",
            ],
            "{case}"
        );
    }
}

#[test]
fn password_file_gives_the_same_answers_as_mosquitto() {
    same_outcomes_as_mosquitto(false);
}

#[test]
fn anonymous_clients_beside_a_password_file_as_mosquitto() {
    same_outcomes_as_mosquitto(true);
}

/// SIGHUP reads the password file again: a user added since can log in, a connected client
/// stays connected, and a removed user is refused from then on.
#[test]
fn sighup_reloads_the_password_file_and_keeps_clients() {
    let Some(tools) = tools() else { return };
    let dir = common::TempDir::new();
    let file = password_file(&tools, &dir.0);
    let config = format!("password_file {}\nallow_anonymous false\n", file.display());
    let Some(culex) = Node::start(Kind::Culex, "127.0.0.1", &config) else { return };
    assert_ne!(publish_as(&tools, &culex, "mqttv311", &["-u", "carol", "-P", "secret3"]), "ok");

    let watcher = Command::new(&tools.subscribe)
        .args(["-h", culex.host, "-p", &culex.port.to_string(), "-u", "alice", "-P", "secret1"])
        .args(["-t", "auth/test", "-C", "1", "-W", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    add_user(&tools, &file, "carol", "secret3", &[]);
    let status = Command::new(&tools.passwd).arg("-D").arg(&file).arg("bob").status().unwrap();
    assert!(status.success());
    let pid = culex.child.as_ref().unwrap().id() as i32;
    // SAFETY: kill(2) with the pid of our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let deadline = Instant::now() + common::WAIT;
    while !culex.log().contains("password and acl files reloaded") {
        assert!(Instant::now() < deadline, "{}", culex.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let named = r#"users_added=["carol"] users_removed=["bob"] passwords_changed=[]"#;
    assert!(culex.log().contains(named), "{}", culex.log());
    assert_eq!(publish_as(&tools, &culex, "mqttv311", &["-u", "carol", "-P", "secret3"]), "ok");
    let out = watcher.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "x\n", "alice stayed connected");
    assert_ne!(publish_as(&tools, &culex, "mqttv311", &["-u", "bob", "-P", "secret2"]), "ok");
}

/// `per_listener_settings true`, under Culex and Mosquitto: each listener admits and restricts
/// by its own `allow_anonymous`, `password_file` and `acl_file` (none of them: anonymous clients
/// refused), and deliveries are checked against the ACL file of the subscriber's listener.
#[test]
fn per_listener_settings_give_each_listener_its_own_rules_as_mosquitto() {
    let Some(tools) = tools() else { return };
    let mut results = Vec::new();
    for kind in [Kind::Culex, Kind::Mosquitto] {
        let files = common::TempDir::new();
        let (acl, passwords) = (files.0.join("acl"), files.0.join("passwords"));
        std::fs::write(&acl, "topic read ro/#\ntopic readwrite rw/#\n").unwrap();
        add_user(&tools, &passwords, "alice", "a", &["-c"]);
        // Mosquitto started as root reads them as the `mosquitto` user.
        for (path, mode) in [(&files.0, 0o755), (&acl, 0o644), (&passwords, 0o644)] {
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .unwrap();
        }
        let second_port = common::free_port();
        let node = Node::start_configured(kind, "127.0.0.1", |port| {
            format!(
                "per_listener_settings true\n\
                 listener {port} 127.0.0.1\nallow_anonymous true\nacl_file {}\n\
                 listener {second_port} 127.0.0.1\npassword_file {}\n",
                acl.display(),
                passwords.display()
            )
        });
        let Some(node) = node else { return };
        results.push(per_listener_outcomes(&node, second_port));
    }
    let expected = (
        vec![false, true, true],
        vec!["ro/1".to_string(), "rw/1".into(), "rw/2".into()],
        vec!["other/1".to_string(), "ro/1".into(), "rw/1".into(), "rw/2".into()],
    );
    assert_eq!(results[0], expected, "Culex");
    if let Some(mosquitto) = results.get(1) {
        assert_eq!(mosquitto, &expected, "Mosquitto, to check the expectation");
    }
}

/// Who is admitted on the second listener (anonymous, alice, alice with a wrong password is
/// left out: refused by both), and what an anonymous subscriber on the first and alice on the
/// second receive after both publish.
fn per_listener_outcomes(node: &Node, second_port: u16) -> (Vec<bool>, Vec<String>, Vec<String>) {
    let second = std::net::SocketAddr::from(([127, 0, 0, 1], second_port));
    let admitted = |addr, login| {
        let mut client = RawClient::open_addr(addr);
        let options = ConnectOptions { login, ..Default::default() };
        matches!(client.try_handshake("probe", options), Some(Packet::ConnAck(a)) if !a.reason.is_error())
    };
    let admissions = vec![
        admitted(second, None),
        admitted(second, Some(("alice", "a"))),
        admitted(node.addr(), None),
    ];
    let (mut first_sub, _) = RawClient::connect_addr(node.addr(), "first-sub", Default::default());
    first_sub.subscribe("#", QoS::AtLeastOnce);
    let login = || ConnectOptions { login: Some(("alice", "a")), ..Default::default() };
    let (mut alice, _) = RawClient::connect_addr(second, "alice-sub", login());
    alice.subscribe("#", QoS::AtLeastOnce);
    let (mut alice_pub, _) = RawClient::connect_addr(second, "alice-pub", login());
    for topic in ["rw/1", "ro/1", "other/1"] {
        alice_pub.publish(topic, b"from alice", QoS::AtLeastOnce, false);
    }
    let (mut first_pub, _) = RawClient::connect_addr(node.addr(), "first-pub", Default::default());
    for topic in ["ro/2", "rw/2"] {
        first_pub.publish(topic, b"from the first listener", QoS::AtLeastOnce, false);
    }
    let drain = |client: &mut RawClient| {
        let mut topics = Vec::new();
        while let Some(Packet::Publish(publish)) = client.recv_within(Duration::from_millis(500)) {
            client.acknowledge(&publish);
            topics.push(publish.topic.as_str().to_string());
        }
        topics.sort();
        topics
    };
    (admissions, drain(&mut first_sub), drain(&mut alice))
}
