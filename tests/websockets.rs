//! MQTT over WebSockets (`protocol websockets`), plain and over TLS: raw frames for what client
//! libraries never send on purpose (packets split across frames, several in one, fragmented
//! messages, pings, text frames, the close handshake, bad upgrades, `http_dir`), then paho-mqtt
//! (Python) and MQTT.js (node, the browsers' client library) as third-party clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::pki::{self, Ca, KeyType};
use common::{free_port, mqtt_string, raw_packet, Broker, TempDir};

/// A WebSocket client that writes frames by hand (masked, as RFC 6455 requires of clients).
struct RawWs {
    stream: TcpStream,
    /// Bytes read and not yet taken as frames.
    read: Vec<u8>,
}

const BINARY: u8 = 0x2;
const TEXT: u8 = 0x1;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// An upgrade request with this path and extra header lines.
fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Sends `request` on a new connection and returns everything the broker answers until it
/// closes or goes quiet for a second.
fn http(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).to_string()
}

impl RawWs {
    /// Upgrades with the `mqtt` subprotocol; panics unless the broker switches protocols.
    fn open(port: u16) -> RawWs {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(common::WAIT)).unwrap();
        let request = upgrade_request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{head}");
        assert!(head.contains("Sec-WebSocket-Protocol: mqtt\r\n"), "{head}");
        RawWs { stream, read: Vec::new() }
    }

    /// Writes one frame: `fin`, `opcode`, masked `payload`.
    fn frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let mut frame = vec![u8::from(fin) << 7 | opcode];
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).unwrap();
    }

    /// The next frame from the broker: (opcode, payload); None when it closed the socket.
    fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.read) {
                self.read.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.read.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The payload of the next binary message (the broker sends unfragmented ones).
    fn next_binary(&mut self) -> Vec<u8> {
        loop {
            match self.next_frame() {
                Some((BINARY, payload)) => return payload,
                Some(_) => continue,
                None => panic!("closed before a binary frame"),
            }
        }
    }
}

/// A server frame (unmasked): ((opcode, payload), bytes used), or None when incomplete.
fn parse_frame(bytes: &[u8]) -> Option<((u8, Vec<u8>), usize)> {
    let (&first, &second) = (bytes.first()?, bytes.get(1)?);
    assert_eq!(second & 0x80, 0, "a server's frames are not masked");
    let (len, at) = match second & 0x7f {
        126 => (u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize, 10),
        len => (len as usize, 2),
    };
    let payload = bytes.get(at..at + len)?.to_vec();
    Some(((first & 0x0f, payload), at + len))
}

fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = mqtt_string("MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 60]);
    body.extend(mqtt_string(client_id));
    raw_packet(0x10, &body)
}

fn subscribe_packet(filter: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    body.extend(mqtt_string(filter));
    body.push(0);
    raw_packet(0x82, &body)
}

fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = mqtt_string(topic);
    body.extend_from_slice(payload);
    raw_packet(0x30, &body)
}

fn websocket_broker(extra: &str) -> (Broker, u16) {
    let port = free_port();
    let broker = Broker::start(&format!("listener {port} 127.0.0.1\nprotocol websockets\n{extra}"));
    (broker, port)
}

#[test]
fn packets_split_across_frames_and_frames_carrying_several_packets() {
    let (_broker, port) = websocket_broker("");
    let mut ws = RawWs::open(port);
    // CONNECT and SUBSCRIBE in one frame.
    ws.frame(true, BINARY, &[connect_packet("raw-ws"), subscribe_packet("ws/#")].concat());
    assert_eq!(ws.next_binary(), [0x20, 2, 0, 0], "CONNACK");
    assert_eq!(ws.next_binary(), [0x90, 3, 0, 1, 0], "SUBACK");
    // A PUBLISH split over two frames (two messages), then one fragmented into three frames
    // of one message, then two PUBLISHes and a PINGREQ in one frame.
    let first = publish_packet("ws/a", b"split across frames");
    ws.frame(true, BINARY, &first[..5]);
    ws.frame(true, BINARY, &first[5..]);
    let second = publish_packet("ws/b", &[7u8; 300]);
    ws.frame(false, BINARY, &second[..100]);
    ws.frame(false, CONTINUATION, &second[100..200]);
    ws.frame(true, CONTINUATION, &second[200..]);
    let third = publish_packet("ws/c", b"three");
    let fourth = publish_packet("ws/d", b"four");
    ws.frame(true, BINARY, &[third.clone(), fourth.clone(), vec![0xC0, 0]].concat());
    // What comes back may be framed differently: read the byte stream.
    let expected = [first, second, third, fourth, vec![0xD0, 0]].concat();
    let mut received = Vec::new();
    while received.len() < expected.len() {
        received.extend(ws.next_binary());
    }
    assert_eq!(received, expected);
    // A ping is answered with a pong carrying its payload, between MQTT packets.
    ws.frame(true, PING, b"are you there");
    assert_eq!(ws.next_frame(), Some((PONG, b"are you there".to_vec())));
    // The close handshake: the broker answers Close and closes the socket.
    ws.frame(true, CLOSE, &1000u16.to_be_bytes());
    let (opcode, _) = ws.next_frame().expect("a Close answered");
    assert_eq!(opcode, CLOSE);
    assert_eq!(ws.next_frame(), None);
}

/// [MQTT-6.0.0-1]: a text frame closes the connection.
#[test]
fn a_text_frame_closes_the_connection() {
    let (broker, port) = websocket_broker("");
    let mut ws = RawWs::open(port);
    ws.frame(true, BINARY, &connect_packet("texter"));
    assert_eq!(ws.next_binary(), [0x20, 2, 0, 0]);
    ws.frame(true, TEXT, b"hello");
    while ws.next_frame().is_some() {}
    assert!(common::answers_mqtt(broker.addr()), "the broker serves on");
}

#[test]
fn upgrades_are_checked_and_other_requests_refused() {
    let (broker, port) = websocket_broker("websockets_headers_size 2048\n");
    let answer = |request: String| http(port, request.as_bytes());
    let status = |request: String| answer(request).lines().next().unwrap_or("").to_string();
    // Any path; `mqttv3.1` too; a list with none of MQTT's is refused.
    assert!(status(upgrade_request("/", "")).starts_with("HTTP/1.1 101"));
    let v31 = answer(upgrade_request("/x/y", "Sec-WebSocket-Protocol: mqttv3.1\r\n"));
    assert!(v31.contains("Sec-WebSocket-Protocol: mqttv3.1\r\n"), "{v31}");
    assert!(status(upgrade_request("/", "Sec-WebSocket-Protocol: chat\r\n")).contains(" 400 "));
    // Version 13 only; a head beyond websockets_headers_size; not an upgrade, no http_dir.
    let old = upgrade_request("/", "").replace("Version: 13", "Version: 8");
    assert!(status(old).contains(" 426 "));
    let cookie = format!("Cookie: {}\r\n", "c".repeat(4096));
    assert!(status(upgrade_request("/", &cookie)).contains(" 431 "));
    assert!(status("GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n".into()).contains(" 404 "));
    // MQTT without the upgrade is not HTTP.
    assert!(!common::answers_mqtt(([127, 0, 0, 1], port).into()));
    assert!(broker.log_text().contains("no WebSocket upgrade"), "{}", broker.log_text());
}

#[test]
fn http_dir_serves_its_files_and_nothing_outside_it() {
    let dir = TempDir::new();
    let www = dir.0.join("www");
    std::fs::create_dir_all(www.join("app")).unwrap();
    std::fs::write(www.join("index.html"), "<h1>dashboard</h1>").unwrap();
    std::fs::write(www.join("app/main.js"), "connect()").unwrap();
    std::fs::write(dir.0.join("secret.txt"), "private").unwrap();
    std::os::unix::fs::symlink(dir.0.join("secret.txt"), www.join("link.txt")).unwrap();
    let big = std::fs::File::create(www.join("big.bin")).unwrap();
    big.set_len(culex::websocket::FILE_BYTES_MAX + 1).unwrap();
    let extra = format!("http_dir {}\nwebsockets_origin http://app.example\n", www.display());
    let (_broker, port) = websocket_broker(&extra);
    let get = |path: &str| http(port, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    let index = get("/");
    assert!(index.starts_with("HTTP/1.1 200 ") && index.ends_with("<h1>dashboard</h1>"), "{index}");
    assert!(index.contains("Content-Type: text/html"), "{index}");
    let script = get("/app/main.js?v=3");
    assert!(script.contains("text/javascript") && script.ends_with("connect()"), "{script}");
    for outside in ["/../secret.txt", "/%2e%2e/secret.txt", "/link.txt", "/missing.html"] {
        let answer = get(outside);
        assert!(
            answer.starts_with("HTTP/1.1 404 ") && !answer.contains("private"),
            "{outside}: {answer}"
        );
    }
    assert!(get("/big.bin").starts_with("HTTP/1.1 403 "), "files beyond the bound are refused");
    // websockets_origin: an upgrade from another origin is refused.
    let from = |origin: &str| {
        http(port, upgrade_request("/", &format!("Origin: {origin}\r\n")).as_bytes())
    };
    assert!(from("http://app.example").starts_with("HTTP/1.1 101 "));
    assert!(from("http://evil.example").starts_with("HTTP/1.1 403 "));
}

// ---- Third-party clients --------------------------------------------------------------------

/// A plain WebSocket listener and a TLS one (wss), with their CA.
struct Listeners {
    broker: Broker,
    ws: u16,
    wss: u16,
    cafile: std::path::PathBuf,
    _dir: TempDir,
}

fn ws_and_wss() -> Option<Listeners> {
    if !pki::available() {
        return None;
    }
    let dir = TempDir::new();
    let ca = Ca::new(&dir.0, "ca");
    let server = ca.server("server", KeyType::EcP256);
    let (ws, wss) = (free_port(), free_port());
    let config = format!(
        "listener {ws} 127.0.0.1\nprotocol websockets\nlistener {wss} 127.0.0.1\n\
         protocol websockets\ncertfile {}\nkeyfile {}\n",
        server.cert.display(),
        server.key.display()
    );
    let broker = Broker::start(&config);
    Some(Listeners { broker, ws, wss, cafile: ca.cert.clone(), _dir: dir })
}

#[test]
fn paho_mqtt_over_ws_and_wss() {
    if !common::paho_available() {
        return;
    }
    let Some(listeners) = ws_and_wss() else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/paho/test_websockets.py");
    let output = Command::new("python3")
        .arg(script)
        .env("CULEX_WS_PORT", listeners.ws.to_string())
        .env("CULEX_WSS_PORT", listeners.wss.to_string())
        .env("CULEX_CAFILE", &listeners.cafile)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{report}\n{}", listeners.broker.log_text());
}

/// MQTT.js from node, as a browser's page uses it, over ws and wss. Its package is installed by
/// `.ci/run` (npm) into target/mqttjs.
#[test]
fn mqtt_js_over_ws_and_wss() {
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mqttjs/node_modules/mqtt");
    let node = common::tool("node", "nodejs");
    if node.is_none() || !module.exists() {
        let message = format!("MQTT.js is not installed in {}: see .ci/run", module.display());
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("\n!!!!!! SKIPPED: {message} !!!!!!\n");
        return;
    }
    let Some(listeners) = ws_and_wss() else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mqttjs/roundtrip.js");
    for url in [
        format!("ws://127.0.0.1:{}/mqtt", listeners.ws),
        format!("wss://127.0.0.1:{}/mqtt", listeners.wss),
    ] {
        for version in ["4", "5"] {
            let output = Command::new(node.as_ref().unwrap())
                .arg(&script)
                .env("MQTTJS", &module)
                .env("URL", &url)
                .env("CAFILE", &listeners.cafile)
                .env("PROTOCOL_VERSION", version)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "{url} v{version}: {stdout}{stderr}");
            assert!(stdout.contains("round trip ok"), "{url} v{version}: {stdout}{stderr}");
        }
    }
}

/// A WebSocket message is bounded as a packet is (`max_packet_size`): a larger one closes the
/// connection, before it is buffered whole.
#[test]
fn a_message_larger_than_max_packet_size_closes_the_connection() {
    let (broker, port) = websocket_broker("max_packet_size 1000\n");
    let mut ws = RawWs::open(port);
    ws.frame(true, BINARY, &connect_packet("big-frames"));
    assert_eq!(ws.next_binary(), [0x20, 2, 0, 0]);
    ws.frame(true, BINARY, &publish_packet("ws/big", &[0u8; 2000]));
    while let Some((opcode, _)) = ws.next_frame() {
        assert_ne!(opcode, BINARY, "nothing is answered to a message over the bound");
    }
    assert!(common::answers_mqtt(broker.addr()), "the broker serves on: {}", broker.log_text());
}

/// Garbage after the upgrade (bad opcodes, unmasked frames, lengths past the end, control
/// frames too long) costs its own connection and nothing else.
#[test]
fn garbage_frames_cost_only_their_connection() {
    let (broker, port) = websocket_broker("max_packet_size 4096\n");
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..200 {
        let mut ws = RawWs::open(port);
        let len = (next() % 300) as usize;
        let mut garbage: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Half of them start as a plausible frame header.
        if round % 2 == 0 && garbage.len() > 2 {
            garbage[0] = 0x80 | (next() % 16) as u8;
            garbage[1] = (next() % 256) as u8;
        }
        let _ = ws.stream.write_all(&garbage);
        let _ = ws.stream.shutdown(std::net::Shutdown::Write);
        ws.stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        while ws.next_frame().is_some() {}
    }
    assert!(common::answers_mqtt(broker.addr()), "the broker serves on: {}", broker.log_text());
    let mut ws = RawWs::open(port);
    ws.frame(true, BINARY, &connect_packet("after-garbage"));
    assert_eq!(ws.next_binary(), [0x20, 2, 0, 0]);
}
