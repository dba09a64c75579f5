//! `enable_proxy_protocol` (Mosquitto 2.1): listeners behind HAProxy read the PROXY header a
//! trusted proxy puts before each connection's bytes, version 1 (text) and 2 (binary, with the
//! proxy's TLS termination: version, certificate verified, common name). Raw sockets play the
//! proxy, sending the headers HAProxy's `send-proxy` and `send-proxy-v2-ssl-cn` send.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{free_port, mqtt_string, raw_packet, Broker};

fn connect_packet(client_id: &str, username: Option<&str>) -> Vec<u8> {
    let mut body = mqtt_string("MQTT");
    body.extend_from_slice(&[4, if username.is_some() { 0x82 } else { 0x02 }, 0, 60]);
    body.extend(mqtt_string(client_id));
    if let Some(username) = username {
        body.extend(mqtt_string(username));
    }
    raw_packet(0x10, &body)
}

/// A version 2 header for an IPv4 client; with `tls`, the SSL TLV HAProxy sends after
/// terminating TLS: (certificate verified, common name).
fn v2_header(source: [u8; 4], port: u16, tls: Option<(bool, &str)>) -> Vec<u8> {
    let tlv = |kind: u8, value: &[u8]| {
        let mut tlv = vec![kind];
        tlv.extend_from_slice(&(value.len() as u16).to_be_bytes());
        tlv.extend_from_slice(value);
        tlv
    };
    let mut body =
        [&source[..], &[127, 0, 0, 1], &port.to_be_bytes(), &1883u16.to_be_bytes()].concat();
    if let Some((verified, common_name)) = tls {
        // client: SSL | CERT_CONN; verify: 0 when the certificate was verified.
        let mut ssl = vec![0x01 | 0x02];
        ssl.extend_from_slice(&u32::from(!verified).to_be_bytes());
        ssl.extend(tlv(0x21, b"TLSv1.3"));
        ssl.extend(tlv(0x22, common_name.as_bytes()));
        body.extend(tlv(0x20, &ssl));
    }
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    header.extend_from_slice(&(body.len() as u16).to_be_bytes());
    header.extend(body);
    header
}

/// Sends `bytes` in one write (header and CONNECT in one segment, as a proxy may) and returns
/// the first packet's type byte, or None when the broker closed without answering.
fn first_answer(port: u16, bytes: &[u8]) -> Option<(u8, TcpStream)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(common::WAIT)).unwrap();
    stream.write_all(bytes).unwrap();
    let mut answer = [0u8; 4];
    match stream.read_exact(&mut answer) {
        Ok(()) => Some((answer[0], stream)),
        Err(_) => None,
    }
}

fn proxied_broker(extra: &str) -> (Broker, u16) {
    let port = free_port();
    let broker = Broker::start(&format!("listener {port} 127.0.0.1\n{extra}"));
    (broker, port)
}

#[test]
fn version_1_gives_the_clients_address() {
    let (broker, port) = proxied_broker("enable_proxy_protocol 1\n");
    let header = b"PROXY TCP4 192.0.2.5 127.0.0.1 6275 1883\r\n";
    let answer = first_answer(port, &[&header[..], &connect_packet("v1-client", None)].concat());
    assert_eq!(answer.map(|a| a.0), Some(0x20), "CONNACK");
    assert!(broker.log_text().contains("peer=192.0.2.5:6275"), "{}", broker.log_text());
    // Without a header, or with UNKNOWN: closed before any MQTT.
    assert!(first_answer(port, &connect_packet("bare", None)).is_none());
    let unknown = [&b"PROXY UNKNOWN\r\n"[..], &connect_packet("unknown", None)].concat();
    assert!(first_answer(port, &unknown).is_none());
    assert!(broker.log_text().contains("no PROXY protocol header"), "{}", broker.log_text());
}

#[test]
fn version_2_gives_the_address_and_can_require_tls() {
    let (broker, port) =
        proxied_broker("enable_proxy_protocol 2\nproxy_protocol_v2_require_tls true\n");
    let plain = [v2_header([192, 0, 2, 7], 4000, None), connect_packet("plain", None)].concat();
    assert!(first_answer(port, &plain).is_none(), "a client that did not use TLS is refused");
    let tls = [v2_header([192, 0, 2, 7], 4001, Some((false, ""))), connect_packet("tls", None)];
    assert_eq!(first_answer(port, &tls.concat()).map(|a| a.0), Some(0x20));
    let log = broker.log_text();
    assert!(
        log.contains("client did not connect using TLS") && log.contains("peer=192.0.2.7:4001"),
        "{log}"
    );
    // The header split over several writes, as a slow proxy might send it.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(common::WAIT)).unwrap();
    let bytes =
        [v2_header([192, 0, 2, 8], 1, Some((false, ""))), connect_packet("slow", None)].concat();
    for piece in bytes.chunks(7) {
        stream.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut answer = [0u8; 4];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(answer, [0x20, 2, 0, 0]);
}

/// TLS terminated by the proxy with client certificates: `require_certificate` needs the
/// proxy's verified certificate, and `use_identity_as_username` makes its common name the user
/// name the ACL file applies to, whatever CONNECT said.
#[test]
fn the_proxys_client_certificate_names_the_user() {
    let dir = common::TempDir::new();
    let acl = dir.0.join("acl");
    std::fs::write(&acl, "user alice\ntopic readwrite alice/#\n").unwrap();
    let extra = format!(
        "enable_proxy_protocol 2\nrequire_certificate true\nuse_identity_as_username true\n\
         acl_file {}\n",
        acl.display()
    );
    let (_broker, port) = proxied_broker(&extra);
    let unverified =
        [v2_header([192, 0, 2, 9], 1, Some((false, "alice"))), connect_packet("u", None)];
    assert!(first_answer(port, &unverified.concat()).is_none());
    let as_alice = |id: &str| {
        let bytes = [
            v2_header([192, 0, 2, 9], 2, Some((true, "alice"))),
            connect_packet(id, Some("mallory")),
        ];
        first_answer(port, &bytes.concat())
    };
    let (code, mut subscriber) = as_alice("alice-sub").unwrap();
    assert_eq!(code, 0x20);
    let mut body = vec![0, 1];
    body.extend(mqtt_string("#"));
    body.push(0);
    subscriber.write_all(&raw_packet(0x82, &body)).unwrap();
    let mut suback = [0u8; 5];
    subscriber.read_exact(&mut suback).unwrap();
    let (_, mut publisher) = as_alice("alice-pub").unwrap();
    for topic in ["mallory/x", "alice/x"] {
        let mut body = mqtt_string(topic);
        body.extend_from_slice(b"m");
        publisher.write_all(&raw_packet(0x30, &body)).unwrap();
    }
    // Only alice/x is allowed: the first PUBLISH the subscriber gets is it.
    let mut head = [0u8; 2];
    subscriber.read_exact(&mut head).unwrap();
    let mut rest = vec![0u8; usize::from(head[1])];
    subscriber.read_exact(&mut rest).unwrap();
    assert_eq!(&rest[2..9], b"alice/x", "{rest:?}");
}

#[test]
fn the_proxy_header_comes_before_a_websocket_upgrade() {
    let (_broker, port) = proxied_broker("protocol websockets\nenable_proxy_protocol 1\n");
    let request = "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let bytes = [&b"PROXY TCP4 192.0.2.5 127.0.0.1 6275 80\r\n"[..], request.as_bytes()].concat();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(common::WAIT)).unwrap();
    stream.write_all(&bytes).unwrap();
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 101");
}

#[test]
fn tls_options_the_proxy_terminates_are_refused() {
    let dir = common::TempDir::new();
    for (extra, says) in [
        (
            "enable_proxy_protocol 2\ncertfile /c.pem\nkeyfile /k.pem\n",
            "cannot be used with `enable_proxy_protocol`",
        ),
        ("enable_proxy_protocol 1\nrequire_certificate true\n", "needs `enable_proxy_protocol 2`"),
        (
            "enable_proxy_protocol 1\nproxy_protocol_v2_require_tls true\n",
            "needs `enable_proxy_protocol 2`",
        ),
        ("enable_proxy_protocol 3\n", "expected 1 or 2"),
    ] {
        let conf = dir.0.join("proxy.conf");
        std::fs::write(&conf, format!("listener {} 127.0.0.1\n{extra}", free_port())).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_culex"))
            .arg("-c")
            .arg(&conf)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{extra}: {stderr}");
        assert!(stderr.contains(&format!("{}:", conf.display())), "names the file: {stderr}");
    }
}
