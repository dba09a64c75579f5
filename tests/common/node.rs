//! A broker process of either kind, Culex or Mosquitto, on a loopback alias: for the tests
//! that run the same scenario against both, or mix them (bridges).

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{answers_mqtt, free_port, mosquitto_tool, ConnectOptions, RawClient, TempDir, WAIT};
use culex::protocol::{Packet, QoS};

/// Longest wait for a bridge to come up (Mosquitto's first attempt can lag a second).
pub const LINK_WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Culex,
    Mosquitto,
}

/// A free port never handed out before in this run: nodes of parallel tests share the
/// addresses 127.0.0.53/88/89, and a node stopped for a while (failover, restarts) must find
/// its port still its own.
fn unique_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = free_port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A broker process on `host:port`, killed on drop. It can be stopped and started again on the
/// same address.
pub struct Node {
    pub kind: Kind,
    program: PathBuf,
    pub host: &'static str,
    pub port: u16,
    pub dir: TempDir,
    pub child: Option<Child>,
}

impl Node {
    /// `None` when Mosquitto is not installed: a loud skip locally, a failure under CI.
    pub fn start(kind: Kind, host: &'static str, extra_config: &str) -> Option<Node> {
        let listener = |port| format!("listener {port} {host}\nallow_anonymous true\n");
        Self::start_configured(kind, host, |port| listener(port) + extra_config)
    }

    /// As `start`, with the whole configuration from `config` (given the node's port).
    pub fn start_configured(
        kind: Kind,
        host: &'static str,
        config: impl FnOnce(u16) -> String,
    ) -> Option<Node> {
        let program = match kind {
            Kind::Culex => PathBuf::from(env!("CARGO_BIN_EXE_culex")),
            Kind::Mosquitto => mosquitto_tool("mosquitto")?,
        };
        let dir = TempDir::new();
        // Mosquitto started as root runs as the `mosquitto` user: its persistence goes here.
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = unique_port();
        let mut config = config(port).replace("{dir}", &dir.0.display().to_string());
        if kind == Kind::Culex {
            config.insert_str(0, "shards 2\n");
        }
        std::fs::write(dir.0.join("node.conf"), config).unwrap();
        let mut node = Node { kind, program, host, port, dir, child: None };
        node.spawn();
        Some(node)
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("node.log"))
            .unwrap();
        let child = Command::new(&self.program)
            .arg("-c")
            .arg(self.dir.0.join("node.conf"))
            .arg("-v")
            .env("CULEX_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        // A CONNACK, not just a TCP connect: the listener of a broker just stopped on this
        // address outlives its process for a moment.
        let deadline = Instant::now() + WAIT;
        while !answers_mqtt(self.addr()) {
            assert!(Instant::now() < deadline, "{:?} did not listen: {}", self.kind, self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host.parse::<IpAddr>().unwrap(), self.port)
    }

    /// The `address` line value that points at this node.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("node.log")).unwrap_or_default()
    }

    /// SIGTERM, as an operator restarting a broker would, then waits for the process to end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) with a pid we own.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + WAIT;
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGKILL: the process dies without a word to anyone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Publishes probes on `from` until `sub` receives one: the link is up and both sides have
/// subscribed.
pub fn await_route(from: &Node, topic: &str, sub: &mut RawClient, logs: &[&Node]) {
    let deadline = Instant::now() + LINK_WAIT;
    let (mut prober, _) = RawClient::connect_addr(from.addr(), "", ConnectOptions::default());
    loop {
        prober.publish(topic, b"probe", QoS::AtMostOnce, false);
        if let Some(Packet::Publish(p)) = sub.recv_within(Duration::from_millis(250)) {
            sub.acknowledge(&p);
            if &p.payload[..] == b"probe" {
                break;
            }
        }
        if Instant::now() > deadline {
            let logs: Vec<String> =
                logs.iter().map(|n| format!("{:?}:\n{}", n.kind, n.log())).collect();
            panic!("no route from {:?} for {topic}\n{}", from.kind, logs.join("\n"));
        }
    }
    prober.disconnect();
}
