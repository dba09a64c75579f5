//! Listener options on the real binary: addresses and families, `bind_interface`,
//! `max_connections`, `protocol websockets`.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::{answers_mqtt, free_port, Broker, RawClient};

fn has_ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

#[test]
fn a_listener_without_address_takes_ipv4_and_ipv6() {
    let port = free_port();
    let broker =
        Broker::start_with_config(port, &format!("listener {port}\nallow_anonymous true\n"));
    assert!(answers_mqtt(SocketAddr::from(([127, 0, 0, 1], port))));
    if has_ipv6_loopback() {
        assert!(answers_mqtt(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))));
    }
    drop(broker);
}

#[test]
fn socket_domain_ipv4_leaves_ipv6_out() {
    if !has_ipv6_loopback() {
        eprintln!("no IPv6 loopback here: nothing to leave out");
        return;
    }
    let port = free_port();
    let config = format!("listener {port}\nsocket_domain ipv4\nallow_anonymous true\n");
    let _broker = Broker::start_with_config(port, &config);
    assert!(TcpStream::connect((std::net::Ipv6Addr::LOCALHOST, port)).is_err());
}

#[test]
fn max_connections_closes_what_is_over_the_limit_and_frees_places() {
    let port = free_port();
    let config = format!("listener {port} 127.0.0.1\nmax_connections 2\nallow_anonymous true\n");
    let broker = Broker::start_with_config(port, &config);
    let (first, _) = RawClient::connect(&broker, "first", Default::default());
    let (_second, _) = RawClient::connect(&broker, "second", Default::default());
    // Over the limit: closed before any MQTT, whichever shard accepted it.
    for _ in 0..4 {
        let mut third = RawClient::open(&broker);
        assert!(third.is_closed_by_broker());
    }
    first.disconnect();
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let mut again = RawClient::open(&broker);
        if again.try_handshake("again", Default::default()).is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the place never came free");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(broker.log_text().contains("denied: max_connections exceeded"));
}

#[test]
fn bind_interface_binds_to_the_device() {
    let port = free_port();
    let config = format!("listener {port}\nbind_interface lo\nallow_anonymous true\n");
    let _broker = Broker::start_with_config(port, &config);
    assert!(answers_mqtt(SocketAddr::from(([127, 0, 0, 1], port))));

    let dir = common::TempDir::new();
    let conf = dir.0.join("bad.conf");
    std::fs::write(&conf, format!("listener {}\nbind_interface nosuch0\n", free_port())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_culex")).arg("-c").arg(&conf).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bind_interface nosuch0"), "{stderr}");
}

#[test]
fn a_websockets_listener_is_not_opened_and_says_so() {
    let port = free_port();
    let ws_port = free_port();
    let config = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\nlistener {ws_port} 127.0.0.1\nprotocol websockets\n"
    );
    let broker = Broker::start_with_config(port, &config);
    assert!(TcpStream::connect(("127.0.0.1", ws_port)).is_err());
    assert!(broker.log_text().contains("`protocol websockets` is not implemented yet"));
}
