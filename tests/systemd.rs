//! `Type=notify`: the real broker talks sd_notify(3) to a socket that plays systemd's part.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{answers_mqtt, free_port, TempDir};

/// Datagrams received within `wait`, until `enough` says so.
fn receive_until(
    socket: &UnixDatagram,
    wait: Duration,
    enough: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + wait;
    let mut received = Vec::new();
    let mut buf = [0u8; 512];
    while !enough(&received) && Instant::now() < deadline {
        socket.set_read_timeout(Some(deadline - Instant::now())).unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => received.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => break,
        }
    }
    received
}

#[test]
fn ready_once_serving_then_watchdog_pings_then_stopping() {
    let dir = TempDir::new();
    let notify_path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&notify_path).unwrap();
    let port = free_port();
    let conf = dir.0.join("culex.conf");
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\nshards 2\n"))
        .unwrap();
    let mut broker = Command::new(env!("CARGO_BIN_EXE_culex"))
        .arg("-c")
        .arg(&conf)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = receive_until(&socket, Duration::from_secs(10), |r| !r.is_empty());
    let ready = first.first().expect("a READY notification");
    assert!(ready.starts_with("READY=1\nSTATUS="), "{ready:?}");
    // Ready means serving: a client is answered at once.
    assert!(answers_mqtt(([127, 0, 0, 1], port).into()));
    // Every shard sweeps every 500 ms: pings come at least once a second.
    let pings = receive_until(&socket, Duration::from_secs(5), |r| {
        r.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3
    });
    assert!(pings.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3, "{pings:?}");
    // A stopped process (as a wedged broker would be) sends no more.
    let pid = broker.id().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    receive_until(&socket, Duration::from_millis(300), |_| false);
    let while_stopped = receive_until(&socket, Duration::from_secs(1), |_| false);
    assert!(while_stopped.is_empty(), "{while_stopped:?}");
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let last =
        receive_until(&socket, Duration::from_secs(5), |r| r.iter().any(|m| m == "STOPPING=1"));
    assert!(last.iter().any(|m| m == "STOPPING=1"), "{last:?}");
    let status = broker.wait().unwrap();
    assert!(status.success(), "{status}");
}
