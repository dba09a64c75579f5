//! `password_file` with files made by the real `mosquitto_passwd`, driven by the real
//! `mosquitto_pub`/`mosquitto_sub`. The same configuration and the same client script run
//! against Culex and against Mosquitto must give the same outcomes, word for word.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::mosquitto_tool;
use common::node::{Kind, Node};

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
    assert!(culex.log().contains("users_before=2 users_now=2"), "{}", culex.log());
    assert_eq!(publish_as(&tools, &culex, "mqttv311", &["-u", "carol", "-P", "secret3"]), "ok");
    let out = watcher.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "x\n", "alice stayed connected");
    assert_ne!(publish_as(&tools, &culex, "mqttv311", &["-u", "bob", "-P", "secret2"]), "ok");
}
