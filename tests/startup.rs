//! What the `culex` binary does at start-up on a host that lacks something, and with signals.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{free_port, Broker, RawClient};

/// A memlock limit below glommio's minimum that cannot be raised: a clear error naming the
/// fix, and exit status 1, not a panic or a hang.
#[test]
fn a_memlock_limit_too_low_is_refused_with_the_fix() {
    let script = format!(
        "ulimit -S -l 256 && ulimit -H -l 256 && exec {} -p {}",
        env!("CARGO_BIN_EXE_culex"),
        free_port()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("memlock) is 256 KiB and cannot be raised")
            && stderr.contains("LimitMEMLOCK="),
        "{stderr}"
    );
}

/// A soft limit below the minimum is raised to it when the hard limit allows.
#[test]
fn a_low_soft_memlock_limit_is_raised() {
    let port = free_port();
    let script =
        format!("ulimit -S -l 64 && exec {} -p {port} -c /dev/null", env!("CARGO_BIN_EXE_culex"));
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + common::WAIT;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "culex did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (client, _) = RawClient::connect_addr(addr, "memlock", Default::default());
    client.disconnect();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("raised the soft memlock limit to the hard limit"), "{stderr}");
}

/// io_uring rings are deep (4096 entries) where memlock is no object and shallow (128) where an
/// unprivileged user's limit is shared by every process of the user: two brokers of `nobody`
/// with four shards each both start, and say why their rings are small; a root one does not.
#[test]
fn ring_depth_follows_what_memlock_allows() {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("\n!!!!!! SKIPPED: not root, cannot become another user !!!!!!\n");
        return;
    }
    let limited = "memlock limit keeps io_uring rings small";
    let brokers = [Broker::start("user nobody\nshards 4"), Broker::start("user nobody\nshards 4")];
    for broker in &brokers {
        let (client, _) = RawClient::connect(broker, "shallow", Default::default());
        client.disconnect();
        assert!(broker.log_text().contains(limited), "{}", broker.log_text());
    }
    let root = Broker::start("");
    assert!(!root.log_text().contains(limited), "{}", root.log_text());
}

/// `systemctl reload` sends SIGHUP: the broker logs it and keeps serving.
#[test]
fn sighup_does_not_stop_the_broker() {
    let mut broker = Broker::start("");
    // SAFETY: kill(2) with the pid of our own child.
    unsafe { libc::kill(broker.pid() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(300));
    assert!(broker.is_running(), "{}", broker.log_text());
    let (client, _) = RawClient::connect(&broker, "after-hup", Default::default());
    client.disconnect();
    assert!(broker.log_text().contains("SIGHUP"), "{}", broker.log_text());
}

/// The broker runs without transparent huge pages: mimalloc asks for them on its arenas, and
/// a huge page is resident whole where a few of its small pages hold anything (an idle
/// connection cost 3.1 KiB with them, 2.4 without; docs/ARCHITECTURE.md, "Capacity").
#[test]
fn the_broker_runs_without_transparent_huge_pages() {
    let broker = Broker::start("");
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.pid())).unwrap();
    let line = status.lines().find(|l| l.starts_with("THP_enabled:"));
    let Some(line) = line else {
        // A kernel that does not report it; the prctl is made all the same.
        eprintln!("SKIPPED: this kernel's /proc/PID/status has no THP_enabled line");
        return;
    };
    assert_eq!(line.split_whitespace().nth(1), Some("0"), "{status}");
}

/// A password file that cannot be read stops the broker with its path and the reason.
#[test]
fn an_unreadable_password_file_is_refused() {
    let dir = common::TempDir::new();
    let conf = dir.0.join("culex.conf");
    let missing = dir.0.join("no-such-passwords");
    let port = free_port();
    let text = format!("listener {port} 127.0.0.1\npassword_file {}\n", missing.display());
    std::fs::write(&conf, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_culex")).arg("-c").arg(&conf).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot read password file {}", missing.display())),
        "{stderr}"
    );
}

/// `pid_file`: written at start (with or without -d, as Mosquitto), removed at SIGTERM; one
/// that cannot be written stops the broker.
#[test]
fn pid_file_is_written_and_removed() {
    let dir = common::TempDir::new();
    let pid_file = dir.0.join("culex.pid");
    let mut broker = Broker::start(&format!("pid_file {}", pid_file.display()));
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), format!("{}\n", broker.pid()));
    // SAFETY: kill(2) with the pid of our own child.
    unsafe { libc::kill(broker.pid() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + common::WAIT;
    while broker.is_running() {
        assert!(std::time::Instant::now() < deadline, "culex did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!pid_file.exists(), "the pid file outlived the broker");

    let conf = dir.0.join("bad.conf");
    let unwritable = dir.0.join("no-such-dir").join("culex.pid");
    std::fs::write(&conf, format!("pid_file {}\n", unwritable.display())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_culex"))
        .arg("-c")
        .arg(&conf)
        .args(["-p", &free_port().to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot write pid file {}", unwritable.display())),
        "{stderr}"
    );
}

/// Mosquitto's `user`: started as root, the broker serves as that user once its sockets are
/// bound; a user that does not exist stops it.
#[test]
fn user_drops_root_after_binding() {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("\n!!!!!! SKIPPED: not root, nothing to drop !!!!!!\n");
        return;
    }
    let broker = Broker::start("user nobody");
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.pid())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    assert_eq!(uid.split_whitespace().nth(1), Some("65534"), "{uid}");
    let (client, _) = RawClient::connect(&broker, "after-drop", Default::default());
    client.disconnect();

    let dir = common::TempDir::new();
    let conf = dir.0.join("bad.conf");
    std::fs::write(&conf, format!("listener {} 127.0.0.1\nuser nosuchuser\n", free_port()))
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_culex")).arg("-c").arg(&conf).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot drop privileges: user `nosuchuser` does not exist"),
        "{stderr}"
    );
}
